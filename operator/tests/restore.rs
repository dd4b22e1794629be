//! Restore (`core::backup::restore`) against both state shells — Kubernetes Secrets in the
//! in-memory API server, and `up`'s data directory: a lost KeyManager rebuilt exactly, a
//! backup merged back grow-only under the same KEK, a backup re-sealed into a KeyManager
//! made again with a new KEK, and the refusals (another KeyManager's backup, keys that do
//! not open under the backup's KEK, a dry run) that change nothing.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use jiff::Timestamp;
use kube_fake_client::ClientBuilder;
use shadowkeep::controller::state::Kube;
use shadowkeep::core::backup::archive::{self, Contents, Opened};
use shadowkeep::core::backup::restore::{RestoreError, restore};
use shadowkeep::core::state::dir::DataDir;
use shadowkeep::core::state::{Fields, Item, Owner, State};
use shadowkeep_api::keystore::{Algorithm, Kek, Key, KeyState, Keystore};

const OLD_KEK: [u8; 32] = [0x11; 32];
const NEW_KEK: [u8; 32] = [0x22; 32];

fn owner() -> Owner {
    Owner::new("tapes", "tape-keys")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("restore-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A keystore of `names`, sealed under `kek`.
fn keystore(kek: &[u8], names: &[&str]) -> Keystore {
    let kek = Kek::from_bytes(kek).unwrap();
    let mut store = Keystore::new();
    for name in names {
        let key = Key::generate(&kek, *name, Algorithm::Aes, 256, Timestamp::UNIX_EPOCH).unwrap();
        store.insert(key).unwrap();
    }
    store
}

/// A backup of `owner`'s keystore `store`, its KEK `kek` escrowed to a fresh identity.
fn backup(of: &Owner, kek: &[u8], store: &Keystore) -> (Opened, Vec<u8>) {
    let identity = age::x25519::Identity::generate();
    let sealed = archive::seal(&Contents {
        owner: of,
        keystore: &store.to_bytes().unwrap(),
        kek,
        recipients: &[identity.to_public().to_string()],
        manifests: &["kind: KeyManager\n".to_owned()],
        created_at: "2026-12-02T10:00:00Z".parse().unwrap(),
    })
    .unwrap();
    let opened = archive::open(&sealed.bytes).unwrap();
    let kek = opened.kek(&[identity]).unwrap().to_vec();
    (opened, kek)
}

/// The plaintext of every key of `store` under `kek`, by name.
fn plaintexts(kek: &[u8], store: &Keystore) -> Vec<(String, Vec<u8>)> {
    let kek = Kek::from_bytes(kek).unwrap();
    let mut out: Vec<_> = store
        .keys()
        .map(|k| {
            (
                k.name.clone(),
                kek.open(&k.id, &k.material).unwrap().to_vec(),
            )
        })
        .collect();
    out.sort();
    out
}

async fn stored<S: State>(state: &S) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let kek = state.read(&owner(), Item::Kek).await.unwrap();
    let keystore = state.read(&owner(), Item::Keystore).await.unwrap();
    (
        kek.map(|f| f.get("kek").to_vec()),
        keystore.map(|f| f.get("keystore").to_vec()),
    )
}

async fn make<S: State>(state: &S, kek: &[u8], store: &Keystore) {
    state
        .create(&owner(), Item::Kek, Fields::of([("kek", kek.to_vec())]))
        .await
        .unwrap();
    state
        .create(
            &owner(),
            Item::Keystore,
            Fields::of([("keystore", store.to_bytes().unwrap())]),
        )
        .await
        .unwrap();
}

async fn a_lost_key_manager_is_rebuilt_with_its_kek_and_keystore<S: State>(state: S) {
    let store = keystore(&OLD_KEK, &["TAPE01", "TAPE02", "TAPE03"]);
    let (opened, kek) = backup(&owner(), &OLD_KEK, &store);

    let dry = restore(&state, &opened, &kek, &owner(), 5, true)
        .await
        .unwrap();
    assert!(dry.rebuilt && !dry.written && dry.added == 3, "{dry:?}");
    assert_eq!(
        stored(&state).await,
        (None, None),
        "a dry run writes nothing"
    );

    let done = restore(&state, &opened, &kek, &owner(), 5, false)
        .await
        .unwrap();
    assert!(done.rebuilt && done.written && done.added == 3, "{done:?}");
    let (kek_after, keystore_after) = stored(&state).await;
    assert_eq!(kek_after.unwrap(), OLD_KEK);
    assert_eq!(
        keystore_after.unwrap(),
        opened.keystore,
        "the keystore exactly as it was"
    );

    // Again: nothing new, nothing written.
    let again = restore(&state, &opened, &kek, &owner(), 5, false)
        .await
        .unwrap();
    assert!(
        !again.rebuilt && !again.written && again.added == 0,
        "{again:?}"
    );
}

async fn a_backup_merges_back_only_what_was_lost<S: State>(state: S) {
    let mut then = keystore(&OLD_KEK, &["TAPE01", "TAPE02"]);
    let mut now = then.clone();
    // Since the backup: TAPE03 made (not in the backup), and TAPE02 lost.
    let lost = now.keys().find(|k| k.name == "TAPE02").unwrap().id.clone();
    let mut kept = Keystore::new();
    for key in now.keys().filter(|k| k.id != lost) {
        kept.insert(key.clone()).unwrap();
    }
    kept.merge(&keystore(&OLD_KEK, &["TAPE03"])).unwrap();
    now = kept;
    // The backup saw TAPE01 activated: a state that moved forward comes back too.
    let mut activated = then.keys().find(|k| k.name == "TAPE01").unwrap().clone();
    activated.state = KeyState::Active;
    then.insert(activated).unwrap();
    make(&state, &OLD_KEK, &now).await;
    let (opened, kek) = backup(&owner(), &OLD_KEK, &then);

    let done = restore(&state, &opened, &kek, &owner(), 5, false)
        .await
        .unwrap();
    assert!(!done.rebuilt && !done.resealed && done.written, "{done:?}");
    assert_eq!(
        (done.added, done.updated, done.conflicts),
        (1, 1, 0),
        "{done:?}"
    );
    let after = Keystore::from_bytes(&stored(&state).await.1.unwrap()).unwrap();
    let names: Vec<_> = plaintexts(&OLD_KEK, &after)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        ["TAPE01", "TAPE02", "TAPE03"],
        "grow-only: TAPE03 stays"
    );
    assert_eq!(
        after.get(&lost).unwrap(),
        then.get(&lost).unwrap(),
        "the very record"
    );
    let tape01 = after.keys().find(|k| k.name == "TAPE01").unwrap();
    assert_eq!(tape01.state, KeyState::Active);
    // The version replaced is kept.
    assert_eq!(state.backups(&owner()).await.unwrap().len(), 1);
}

async fn a_backup_is_resealed_into_a_key_manager_made_again<S: State>(state: S) {
    let then = keystore(&OLD_KEK, &["TAPE01", "TAPE02"]);
    let fresh = keystore(&NEW_KEK, &["LTO0001"]);
    make(&state, &NEW_KEK, &fresh).await;
    let (opened, kek) = backup(&owner(), &OLD_KEK, &then);

    let done = restore(&state, &opened, &kek, &owner(), 5, false)
        .await
        .unwrap();
    assert!(done.resealed && done.written && done.added == 2, "{done:?}");
    let (kek_after, keystore_after) = stored(&state).await;
    assert_eq!(
        kek_after.unwrap(),
        NEW_KEK,
        "the KeyManager keeps its own KEK"
    );
    let after = Keystore::from_bytes(&keystore_after.unwrap()).unwrap();
    let mut expected = plaintexts(&OLD_KEK, &then);
    expected.extend(plaintexts(&NEW_KEK, &fresh));
    expected.sort();
    assert_eq!(
        plaintexts(&NEW_KEK, &after),
        expected,
        "the same material, same ids"
    );
    for key in then.keys() {
        assert!(
            after.get(&key.id).is_some(),
            "key {} keeps its id",
            key.name
        );
    }
}

async fn refusals_change_nothing<S: State>(state: S) {
    let now = keystore(&OLD_KEK, &["TAPE01"]);
    make(&state, &OLD_KEK, &now).await;
    let before = stored(&state).await;

    let other = Owner::new("tapes", "vault-keys");
    let (theirs, kek) = backup(&other, &OLD_KEK, &keystore(&OLD_KEK, &["V1"]));
    let refused = restore(&state, &theirs, &kek, &owner(), 5, false)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, RestoreError::OtherKeyManager { .. }),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("tapes/vault-keys"),
        "{refused}"
    );

    // Keys sealed under another KEK than the one the backup carries: none is merged.
    let (mismatched, kek) = backup(&owner(), &OLD_KEK, &keystore(&NEW_KEK, &["X1"]));
    let refused = restore(&state, &mismatched, &kek, &owner(), 5, false)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, RestoreError::Unreadable { .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains("nothing merged"), "{refused}");

    let dry = restore(
        &state,
        &backup(&owner(), &OLD_KEK, &keystore(&OLD_KEK, &["T9"])).0,
        &OLD_KEK,
        &owner(),
        5,
        true,
    )
    .await
    .unwrap();
    assert!(dry.added == 1 && !dry.written, "{dry:?}");
    assert_eq!(stored(&state).await, before, "nothing changed");
}

/// A rebuild that stopped after storing the KEK (a full disk, a killed process) is made
/// whole by the next restore of that backup; a KEK of another without a keystore is refused.
async fn a_half_rebuild_is_completed_by_the_next_restore<S: State>(state: S) {
    let store = keystore(&OLD_KEK, &["TAPE01", "TAPE02"]);
    let (opened, kek) = backup(&owner(), &OLD_KEK, &store);
    state
        .create(&owner(), Item::Kek, Fields::of([("kek", NEW_KEK.to_vec())]))
        .await
        .unwrap();
    let refused = restore(&state, &opened, &kek, &owner(), 5, false)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, RestoreError::Inconsistent { .. }),
        "{refused}"
    );
    assert_eq!(stored(&state).await, (Some(NEW_KEK.to_vec()), None));

    let other = Owner::new("tapes", "tape-keys-2");
    let (opened, kek) = backup(&other, &OLD_KEK, &store);
    state
        .create(&other, Item::Kek, Fields::of([("kek", OLD_KEK.to_vec())]))
        .await
        .unwrap();
    let done = restore(&state, &opened, &kek, &other, 5, false)
        .await
        .unwrap();
    assert!(done.rebuilt && done.written && done.added == 2, "{done:?}");
    let keystore_after = state.read(&other, Item::Keystore).await.unwrap().unwrap();
    assert_eq!(keystore_after.get("keystore"), opened.keystore);
}

#[tokio::test]
async fn half_rebuild_kube() {
    a_half_rebuild_is_completed_by_the_next_restore(kube().await).await;
}

#[tokio::test]
async fn half_rebuild_dir() {
    a_half_rebuild_is_completed_by_the_next_restore(DataDir::new(temp_dir("half"))).await;
}

async fn kube() -> Kube {
    Kube::new(ClientBuilder::new().build().await.unwrap())
}

#[tokio::test]
async fn rebuild_kube() {
    a_lost_key_manager_is_rebuilt_with_its_kek_and_keystore(kube().await).await;
}

#[tokio::test]
async fn rebuild_dir() {
    a_lost_key_manager_is_rebuilt_with_its_kek_and_keystore(DataDir::new(temp_dir("rebuild")))
        .await;
}

#[tokio::test]
async fn merge_kube() {
    a_backup_merges_back_only_what_was_lost(kube().await).await;
}

#[tokio::test]
async fn merge_dir() {
    a_backup_merges_back_only_what_was_lost(DataDir::new(temp_dir("merge"))).await;
}

#[tokio::test]
async fn reseal_kube() {
    a_backup_is_resealed_into_a_key_manager_made_again(kube().await).await;
}

#[tokio::test]
async fn reseal_dir() {
    a_backup_is_resealed_into_a_key_manager_made_again(DataDir::new(temp_dir("reseal"))).await;
}

#[tokio::test]
async fn refusals_kube() {
    refusals_change_nothing(kube().await).await;
}

#[tokio::test]
async fn refusals_dir() {
    refusals_change_nothing(DataDir::new(temp_dir("refusals"))).await;
}

/// The in-memory API server holding KeyManager tapes/tape-keys, its backups escrowed to
/// `identity`, with a `secret` target `vault` holding two backups of it (the newest with
/// two keys); and the restore command's cluster shell over it.
async fn cluster_with_two_backups(
    identity: &age::x25519::Identity,
) -> (kube::Client, shadowkeep::cli::restore::Cluster) {
    use kube::api::{Api, PostParams};
    use shadowkeep::cli::restore::Cluster;
    use shadowkeep::controller::backup::KubeTargets;
    use shadowkeep::core::backup::Targets as _;
    use shadowkeep_api::crd::KeyManager;

    let client = ClientBuilder::new()
        .with_resource::<KeyManager>()
        .build()
        .await
        .unwrap();
    let key_manager: KeyManager = serde_yaml::from_str(&format!(
        "apiVersion: shadowkeep.io/v1alpha1\nkind: KeyManager\nmetadata: {{name: tape-keys, namespace: tapes}}\n\
         spec:\n  serverId: tape-keys-eu1\n  backup:\n    recoveryRecipients: [{}]\n    targets:\n      - {{name: vault, secret: {{namespace: vault}}}}\n",
        identity.to_public()
    ))
    .unwrap();
    Api::<KeyManager>::namespaced(client.clone(), "tapes")
        .create(&PostParams::default(), &key_manager)
        .await
        .unwrap();
    let targets = KubeTargets::new(client.clone());
    let vault = &key_manager.spec.backup.targets[0];
    let target = targets.open(&owner(), vault).await.unwrap();
    for (names, at) in [
        (&["TAPE01"][..], "2026-12-02T10:00:00Z"),
        (&["TAPE01", "TAPE02"][..], "2026-12-02T11:00:00Z"),
    ] {
        let sealed = archive::seal(&Contents {
            owner: &owner(),
            keystore: &keystore(&OLD_KEK, names).to_bytes().unwrap(),
            kek: &OLD_KEK,
            recipients: &[identity.to_public().to_string()],
            manifests: &[],
            created_at: at.parse().unwrap(),
        })
        .unwrap();
        target.create(&sealed.name, sealed.bytes).await.unwrap();
    }
    (client.clone(), Cluster { client, targets })
}

/// `shadowkeep restore` in the cluster shell, against the in-memory API server: the newest
/// backup of the KeyManager's `secret` target (another namespace) rebuilds its lost KEK and
/// keystore, the KeyManager is annotated to wake the operator, a second restore adds
/// nothing, and a target it does not declare is refused naming what it declares.
#[tokio::test]
async fn the_restore_command_rebuilds_from_a_secret_target_in_the_cluster() {
    use kube::api::Api;
    use shadowkeep::cli::restore::{RESTORED_ANNOTATION, Source, restore_in};
    use shadowkeep_api::crd::KeyManager;

    let identity = age::x25519::Identity::generate();
    let (client, shell) = cluster_with_two_backups(&identity).await;
    let state = Kube::new(client.clone());
    let from = |name: &str| Source::Target {
        name: name.into(),
        backup: None,
    };
    let identities = std::slice::from_ref(&identity);

    let done = restore_in(
        &state,
        &shell,
        &from("vault"),
        Some(owner()),
        identities,
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        (done.how, done.keys_in_backup, done.added, done.written),
        ("rebuilt", 2, 2, true),
        "{done:?}"
    );
    let (kek, keystore_bytes) = stored(&state).await;
    assert_eq!(kek.unwrap(), OLD_KEK);
    assert_eq!(
        Keystore::from_bytes(&keystore_bytes.unwrap())
            .unwrap()
            .len(),
        2
    );
    let annotated = Api::<KeyManager>::namespaced(client.clone(), "tapes")
        .get("tape-keys")
        .await
        .unwrap();
    assert_eq!(
        annotated
            .metadata
            .annotations
            .unwrap_or_default()
            .get(RESTORED_ANNOTATION),
        Some(&done.backup)
    );

    let again = restore_in(
        &state,
        &shell,
        &from("vault"),
        Some(owner()),
        identities,
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        (again.how, again.added, again.written),
        ("merged", 0, false)
    );

    let unknown = restore_in(
        &state,
        &shell,
        &from("offsite"),
        Some(owner()),
        identities,
        false,
    )
    .await
    .unwrap_err();
    assert!(
        unknown.contains("declares no backup target \"offsite\"") && unknown.contains("vault"),
        "{unknown}"
    );
}
