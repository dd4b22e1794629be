//! The core's state interface, implemented twice — Kubernetes objects (against the
//! in-memory API server) and a data directory — and the core's scenarios run against
//! both: material made once, a KeyGroup pool generated then left alone (a fixed point),
//! an outdated keystore never overwritten, a drive's keys carried from a deleted KeyManager,
//! and the whole stateful step (`core::prepare`) reaching a fixed point.
//! Then what only one shell has: the directory's modes, names and damaged files, and the
//! Kubernetes objects exactly as the operator has always written them.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams};
use kube_fake_client::ClientBuilder;
use shadowkeep::build::Inputs;
use shadowkeep::controller::state::Kube;
use shadowkeep::core::Error;
use shadowkeep::core::drive_moves::{self, DriveIndex, Origins};
use shadowkeep::core::keystore::Canonical;
use shadowkeep::core::keystore_sync::Replicas;
use shadowkeep::core::material;
use shadowkeep::core::prepare::{Declared, Outcome, Surroundings, prepare};
use shadowkeep::core::state::dir::DataDir;
use shadowkeep::core::state::{Fields, Item, Owner, State, StateError};
use shadowkeep_api::crd::{DriveTable, KeyManager};
use shadowkeep_api::drive_history::{DriveHistory, in_key_group};
use shadowkeep_api::estate::Estate;
use shadowkeep_api::keystore::Keystore;
use shadowkeep_api::manifest::Resource;

const NS: &str = "default";

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("state-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn kube_state() -> Kube {
    Kube::new(ClientBuilder::new().build().await.unwrap())
}

/// KeyManager `name` with a default KeyGroup `NAME-lto` of `keys` keys and a DriveTable
/// `NAME-drives` of `drives`, whose moves from elsewhere it accepts.
fn estate(name: &str, keys: u32, drives: &[&str]) -> Estate {
    let mut estate = Estate::new();
    estate.add(Resource::KeyManager(
        serde_json::from_value(serde_json::json!({
            "apiVersion": "shadowkeep.io/v1alpha1", "kind": "KeyManager",
            "metadata": {"name": name, "namespace": NS,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"serverId": name, "replicas": 2},
        }))
        .unwrap(),
    ));
    estate.add(Resource::KeyGroup(
        serde_json::from_value(serde_json::json!({
            "apiVersion": "shadowkeep.io/v1alpha1", "kind": "KeyGroup",
            "metadata": {"name": format!("{name}-lto"), "namespace": NS},
            "spec": {"keyManagerRef": {"name": name}, "keyCount": keys, "default": true},
        }))
        .unwrap(),
    ));
    let accepted = drives.join(",");
    let drives: Vec<_> = drives
        .iter()
        .map(|d| serde_json::json!({"serial": d}))
        .collect();
    estate.add(Resource::DriveTable(
        serde_json::from_value(serde_json::json!({
            "apiVersion": "shadowkeep.io/v1alpha1", "kind": "DriveTable",
            "metadata": {"name": format!("{name}-drives"), "namespace": NS,
                         "annotations": {"shadowkeep.io/accept-drive-moves": accepted}},
            "spec": {"keyManagerRef": {"name": name}, "drives": drives},
        }))
        .unwrap(),
    ));
    estate
}

fn inputs(estate: &Estate) -> Inputs<'_> {
    Inputs::from_estate(estate).into_iter().next().unwrap()
}

fn tables_of(inputs: &Inputs<'_>) -> Vec<DriveTable> {
    inputs.drive_tables.iter().map(|t| (*t).clone()).collect()
}

fn owner(name: &str) -> Owner {
    Owner::new(NS, name)
}

fn fields(value: &str) -> Fields {
    Fields::of([("kek", value.as_bytes().to_vec())])
}

fn keystore_fields(value: &[u8]) -> Fields {
    Fields::of([("keystore", value.to_vec())])
}

/// Every KeyManager named is deleted: its replicas cannot be asked.
struct Deleted;

impl Origins for Deleted {
    async fn key_manager(&self, _: &Owner) -> Result<Option<KeyManager>, Error> {
        Ok(None)
    }

    async fn replicas(&self, _: &Inputs<'_>) -> Result<Replicas, Error> {
        Ok(Replicas::Skip {
            reason: "NoReplicaReady",
            message: "deleted".to_owned(),
        })
    }
}

/// An item is made once: a second create returns the first, whatever it is given.
async fn material_is_made_once<S: State>(state: &S) {
    let me = owner("once");
    assert_eq!(state.read(&me, Item::Kek).await.unwrap(), None);
    let first = state.create(&me, Item::Kek, fields("first")).await.unwrap();
    assert_eq!(first.get("kek"), b"first");
    let second = state
        .create(&me, Item::Kek, fields("second"))
        .await
        .unwrap();
    assert_eq!(
        second.get("kek"),
        b"first",
        "an item once made is never overwritten"
    );
    assert_eq!(
        state
            .read(&me, Item::Kek)
            .await
            .unwrap()
            .unwrap()
            .get("kek"),
        b"first"
    );
    let tls = Fields::of([
        ("tls.crt", b"crt".to_vec()),
        ("tls.key", b"key".to_vec()),
        ("ca.crt", b"ca".to_vec()),
    ]);
    assert_eq!(
        state.create(&me, Item::Tls, tls.clone()).await.unwrap(),
        tls
    );
    assert_eq!(state.read(&me, Item::Tls).await.unwrap().unwrap(), tls);
}

/// The keystore is replaced only from what is stored, with one backup each time, and the
/// newest `retention` backups are kept.
async fn the_keystore_is_replaced_from_what_is_stored<S: State>(state: &S) {
    let me = owner("replaced");
    state
        .create(&me, Item::Keystore, keystore_fields(b"k0"))
        .await
        .unwrap();
    state.replace_keystore(&me, b"k0", b"k1", 3).await.unwrap();
    let outdated = state
        .replace_keystore(&me, b"k0", b"k2", 3)
        .await
        .unwrap_err();
    assert!(
        matches!(outdated, StateError::Conflict { .. }),
        "{outdated}"
    );
    assert!(outdated.to_string().starts_with("failed to "), "{outdated}");
    assert_eq!(
        state
            .read(&me, Item::Keystore)
            .await
            .unwrap()
            .unwrap()
            .get("keystore"),
        b"k1",
        "an outdated replace changes nothing"
    );
    assert_eq!(state.backups(&me).await.unwrap(), [b"k0".to_vec()]);
    for (old, new) in [("k1", "k2"), ("k2", "k3"), ("k3", "k4")] {
        state
            .replace_keystore(&me, old.as_bytes(), new.as_bytes(), 3)
            .await
            .unwrap();
    }
    assert_eq!(
        state.backups(&me).await.unwrap(),
        [b"k1".to_vec(), b"k2".to_vec(), b"k3".to_vec()],
        "the newest three, oldest first"
    );
}

/// A history is created once and changed only from the version read.
async fn a_history_changes_only_from_the_version_read<S: State>(state: &S) {
    let me = owner("history");
    assert_eq!(state.read_history(&me).await.unwrap(), None);
    let mut history = DriveHistory::new();
    history.record("D1", Some("g"), Timestamp::UNIX_EPOCH);
    state.write_history(&me, &history, None).await.unwrap();
    let again = state.write_history(&me, &history, None).await.unwrap_err();
    assert!(matches!(again, StateError::Conflict { .. }), "{again}");
    let stored = state.read_history(&me).await.unwrap().unwrap();
    assert_eq!(stored.history, history);
    assert_eq!(stored.released, None);
    history.record("D2", None, Timestamp::UNIX_EPOCH);
    state
        .write_history(&me, &history, Some(&stored.version))
        .await
        .unwrap();
    let outdated = state
        .write_history(&me, &DriveHistory::new(), Some(&stored.version))
        .await
        .unwrap_err();
    assert!(
        matches!(outdated, StateError::Conflict { .. }),
        "{outdated}"
    );
    assert_eq!(
        state.read_history(&me).await.unwrap().unwrap().history,
        history
    );
}

/// Material is made once and read back the same; a KeyGroup's pool is generated with one
/// backup, and a second pass changes nothing; a handle opened on an older keystore cannot
/// overwrite a newer one.
async fn key_groups_reach_a_fixed_point<S: State>(state: &S) {
    let estate = estate("tape-keys", 10, &["D1"]);
    let inputs = inputs(&estate);
    let made = material::ensure(state, &inputs).await.unwrap();
    let again = material::ensure(state, &inputs).await.unwrap();
    assert_eq!(made.kek, again.kek);
    assert_eq!(made.keystore, again.keystore);
    assert_eq!(made.tls, again.tls);
    assert_eq!(made.license, again.license);
    assert!(made.tls.is_some(), "a generated replica certificate");
    assert!(
        state
            .read(&owner("tape-keys"), Item::Ca)
            .await
            .unwrap()
            .is_some_and(|ca| String::from_utf8_lossy(ca.get("ca.key")).contains("PRIVATE KEY")),
        "its CA, key included"
    );

    let mut keystore = Canonical::of(&inputs, &made).unwrap();
    let statuses = keystore
        .maintain_groups(&inputs.key_groups, Timestamp::now())
        .unwrap();
    assert_eq!(statuses[0].pool.keys, 11, "ten ready and one active");
    assert!(keystore.commit(state).await.unwrap());
    assert_eq!(
        state.backups(&owner("tape-keys")).await.unwrap(),
        std::slice::from_ref(&made.keystore),
        "one backup: the empty keystore it replaced"
    );

    let mut reopened = Canonical::read(state, &owner("tape-keys"), 30)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reopened.keystore().len(), 11);
    reopened
        .maintain_groups(&inputs.key_groups, Timestamp::now())
        .unwrap();
    assert!(!reopened.changed());
    assert!(!reopened.commit(state).await.unwrap(), "nothing to write");
    assert_eq!(state.backups(&owner("tape-keys")).await.unwrap().len(), 1);

    let mut outdated = Canonical::of(&inputs, &made).unwrap();
    outdated
        .maintain_groups(&inputs.key_groups, Timestamp::now())
        .unwrap();
    let refused = outdated.commit(state).await.unwrap_err();
    assert!(
        matches!(refused, Error::State(StateError::Conflict { .. })),
        "{refused}"
    );
    let stored = state
        .read(&owner("tape-keys"), Item::Keystore)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        Keystore::from_bytes(stored.get("keystore"))
            .unwrap()
            .digest()
            .unwrap(),
        reopened.keystore().digest().unwrap(),
        "the newer keystore stands"
    );
}

/// A drive served by a KeyManager that was deleted is held back from its new one; once
/// accepted, its KeyGroup's keys are carried, re-sealed, and the old history hands it on.
#[allow(clippy::too_many_lines)] // one story: served, deleted, held back, carried, handed on
async fn a_deleted_key_managers_drive_carries_its_keys<S: State>(state: &S) {
    let old_estate = estate("old", 2, &["D1"]);
    let old = inputs(&old_estate);
    let old_material = material::ensure(state, &old).await.unwrap();
    let mut old_keys = Canonical::of(&old, &old_material).unwrap();
    old_keys
        .maintain_groups(&old.key_groups, Timestamp::now())
        .unwrap();
    old_keys.commit(state).await.unwrap();
    drive_moves::write_served(
        state,
        &owner("old"),
        &tables_of(&old),
        &[(*old.key_groups[0]).clone()],
        DriveHistory::new(),
        None,
        false,
    )
    .await
    .unwrap();
    let old_history = state.read_history(&owner("old")).await.unwrap().unwrap();
    assert!(old_history.history.serves("D1"));

    // The old KeyManager is gone; a new one in the same namespace lists its drive.
    let new_estate = estate("new", 1, &["D1"]);
    let new = inputs(&new_estate);
    let mut index = DriveIndex::default();
    index.apply(&owner("old").reference(), &old_history.history);
    let tables: Vec<DriveTable> = new.drive_tables.iter().map(|t| (*t).clone()).collect();
    let mut history = DriveHistory::new();
    let mut risks = drive_moves::conflicts("new", &tables, &history, |serial| {
        index.others_serving(serial, "default/new")
    });
    assert_eq!(risks.len(), 1);
    assert!(risks[0].is_accepted_move());

    let new_material = material::ensure(state, &new).await.unwrap();
    let mut keystore = Canonical::of(&new, &new_material).unwrap();
    let carries = drive_moves::carry_accepted(
        state,
        &Deleted,
        &new,
        &mut keystore,
        &mut history,
        &mut risks,
    )
    .await
    .unwrap();
    assert!(risks.is_empty(), "carried: no longer at risk");
    assert!(carries.history_changed);
    assert_eq!(carries.carried.len(), 1);
    assert!(
        carries.carried[0]
            .note
            .contains("3 key(s) of KeyGroup \"old-lto\" carried from KeyManager \"default/old\""),
        "{}",
        carries.carried[0].note
    );
    assert!(
        state
            .read_history(&owner("old"))
            .await
            .unwrap()
            .unwrap()
            .history
            .serves("D1"),
        "the old KeyManager keeps the drive until the keys are stored here"
    );
    assert!(keystore.commit(state).await.unwrap());
    drive_moves::hand_on(state, &new, &carries.carried)
        .await
        .unwrap();

    let received = Canonical::read(state, &owner("new"), 30)
        .await
        .unwrap()
        .unwrap();
    for key in old_keys
        .keystore()
        .keys()
        .filter(|k| in_key_group(k, "old-lto"))
    {
        let copy = received
            .keystore()
            .get(&key.id)
            .expect("every key of the group");
        assert_eq!(
            *received.kek().open(&key.id, &copy.material).unwrap(),
            *old_keys.kek().open(&key.id, &key.material).unwrap(),
            "the same material, sealed under the new KEK"
        );
    }
    assert_eq!(
        state
            .read_history(&owner("old"))
            .await
            .unwrap()
            .unwrap()
            .history
            .drives["D1"]
            .moved_to
            .as_deref(),
        Some("default/new")
    );
    assert_eq!(
        history.drives["D1"].carried_from.as_deref(),
        Some("default/old")
    );
}

/// The whole stateful step, as both shells run it: the first run makes the material, the
/// pool and the drive history; a second run from what is stored writes nothing.
async fn the_whole_step_reaches_a_fixed_point<S: State>(state: &S) {
    let estate = estate("whole", 5, &["D9"]);
    let km = &estate.key_managers()[0];
    let nobody = |_: &str, _: &str| Vec::new();
    let unasked = |_: &shadowkeep::build::Material| Replicas::Skip {
        reason: "NoReplicaReady",
        message: "none runs".to_owned(),
    };
    let targets = shadowkeep::local::backup::LocalTargets { secrets: None };
    let around = Surroundings {
        origins: &Deleted,
        others_serving: &nobody,
        replicas: &unasked,
        targets: &targets,
    };
    let run = |history: DriveHistory, version: Option<String>| {
        let around = &around;
        let estate = &estate;
        async move {
            let declared = Declared {
                key_manager: km,
                namespace: NS,
                name: "whole",
                tables: estate.drive_tables(),
                groups: estate.key_groups(),
                shadows: estate.shadows(),
                history: &history,
                history_version: version.as_deref(),
            };
            match prepare(state, around, &declared, &Time(Timestamp::now()))
                .await
                .unwrap()
            {
                Outcome::Ready(p) => p,
                Outcome::Waiting(w) => panic!("waiting: {}", w.message),
            }
        }
    };
    let first = run(DriveHistory::new(), None).await;
    assert_eq!(first.keys, 6, "five ready and one active");
    assert!(first.risks.is_empty());
    let stored = state.read_history(&owner("whole")).await.unwrap().unwrap();
    assert!(stored.history.serves("D9"), "the drive served is recorded");
    assert_eq!(state.backups(&owner("whole")).await.unwrap().len(), 1);

    let second = run(stored.history.clone(), Some(stored.version.clone())).await;
    assert_eq!(second.digest, first.digest);
    assert_eq!(second.material.keystore, first.material.keystore);
    assert_eq!(
        state.backups(&owner("whole")).await.unwrap().len(),
        1,
        "no new write"
    );
    assert_eq!(
        state
            .read_history(&owner("whole"))
            .await
            .unwrap()
            .unwrap()
            .version,
        stored.version,
        "the history is left alone"
    );
}

/// A shadow's credential record is made once, a rotation step is stored before it is
/// acted on and resumes from what is stored, a stale write changes nothing, one rotation
/// per KeyManager runs at a time, and replicas accept only declared Shadows' verifiers.
async fn shadow_credentials_rotate_from_what_is_stored<S: State>(state: &S) {
    use shadowkeep::core::shadow::rotation::{ReplicaSees, Wanted, reasons};
    use shadowkeep::core::shadow::supervise::{self, Step};
    let owner = owner("rotating");
    let signer = shadowkeep_api::license::LicenseSigner::generate();
    state
        .create(
            &owner,
            Item::LicenseSigning,
            Fields::of([("seed", signer.seed().to_vec())]),
        )
        .await
        .unwrap();
    let stored = supervise::signer(state, &owner).await.unwrap().unwrap();
    let now = Timestamp::from_second(1_800_000_000).unwrap();
    let (first, version) = supervise::ensure(state, &owner, "dr-a", &stored, "rotating", now)
        .await
        .unwrap();
    let (again, same) = supervise::ensure(state, &owner, "dr-a", &stored, "rotating", now)
        .await
        .unwrap();
    assert_eq!((&first, &version), (&again, &same), "made once");
    let declared = vec!["dr-a".to_owned(), "dr-b".to_owned()];
    let wanted = |shadow: &str| Wanted {
        interval: std::time::Duration::from_hours(24 * 30),
        request: Some("now".to_owned()),
        disabled: false,
        reference: format!("{NS}/{shadow}"),
    };
    let (wanted_a, wanted_b) = (wanted("dr-a"), wanted("dr-b"));
    let step = |wanted, observed| Step {
        server_id: "rotating",
        signer: &stored,
        wanted,
        observed,
        declared: &declared,
        now,
    };
    let started = supervise::rotate(state, &owner, "dr-a", &step(&wanted_a, None))
        .await
        .unwrap();
    assert!(started.changed);
    let next_id = started.record.rotation.as_ref().unwrap().next.id();
    let (stored_a, _) = supervise::ensure(state, &owner, "dr-a", &stored, "rotating", now)
        .await
        .unwrap();
    assert_eq!(
        stored_a, started.record,
        "the step is stored before it is acted on"
    );
    let held = supervise::rotate(state, &owner, "dr-b", &step(&wanted_b, None))
        .await
        .unwrap();
    assert_eq!(held.verdict.reason, reasons::WAITING_FOR_SIBLING);
    let accepted = supervise::accepted(state, &owner, &declared).await.unwrap();
    let ids =
        |shadow: &str| -> Vec<String> { accepted[shadow].iter().map(|a| a.id.clone()).collect() };
    assert_eq!(ids("dr-a"), vec![first.current.id(), next_id.clone()]);
    assert_eq!(ids("dr-b").len(), 1);
    let only_a = supervise::accepted(state, &owner, &declared[..1])
        .await
        .unwrap();
    assert!(
        !only_a.contains_key("dr-b"),
        "an undeclared Shadow's verifier is dropped"
    );
    let outdated = state
        .write_shadow(&owner, "dr-a", &first.to_bytes(), Some(&version))
        .await;
    assert!(
        matches!(outdated, Err(StateError::Conflict { .. })),
        "{outdated:?}"
    );
    let observed = vec![(
        "rotating-0".to_owned(),
        Ok(ReplicaSees {
            accepted: vec![first.current.id(), next_id.clone()],
            registered_with: None,
        }),
    )];
    let handed = supervise::rotate(state, &owner, "dr-a", &step(&wanted_a, Some(&observed)))
        .await
        .unwrap();
    assert!(handed.hand_over);
    assert_eq!(handed.record.current.id(), next_id);
}

async fn every_scenario<S: State>(state: &S) {
    material_is_made_once(state).await;
    the_keystore_is_replaced_from_what_is_stored(state).await;
    a_history_changes_only_from_the_version_read(state).await;
    key_groups_reach_a_fixed_point(state).await;
    a_deleted_key_managers_drive_carries_its_keys(state).await;
    the_whole_step_reaches_a_fixed_point(state).await;
    shadow_credentials_rotate_from_what_is_stored(state).await;
}

#[tokio::test]
async fn the_core_scenarios_hold_on_kubernetes_objects() {
    every_scenario(&kube_state().await).await;
}

#[tokio::test]
async fn the_core_scenarios_hold_in_a_data_directory() {
    let dir = temp_dir("scenarios");
    every_scenario(&DataDir::new(&dir)).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every file and directory under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all.extend(walk(&path));
        }
        all.push(path);
    }
    all
}

#[tokio::test]
async fn a_data_directory_keeps_secrets_private_and_leaves_no_temporary_files() {
    let dir = temp_dir("modes");
    let state = DataDir::new(&dir);
    key_groups_reach_a_fixed_point(&state).await;
    let files = walk(&dir);
    let mut seen = 0;
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(
            !name.starts_with('.'),
            "a temporary file was left: {}",
            path.display()
        );
        if path.is_dir() {
            assert_eq!(mode(path), 0o700, "{}", path.display());
        } else {
            assert_eq!(mode(path), 0o600, "{}", path.display());
            seen += 1;
        }
    }
    assert!(
        seen >= 9,
        "kek, keystore, ca (2), tls (3), seed, a backup: {files:?}"
    );
    let owner_dir = dir.join("key-managers/default/tape-keys");
    assert!(owner_dir.join("kek/kek").is_file());
    assert!(owner_dir.join("tls/tls.crt").is_file());
    assert_eq!(
        std::fs::read_dir(owner_dir.join("backups"))
            .unwrap()
            .count(),
        1
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_data_directory_refuses_names_that_leave_it_and_says_what_is_damaged() {
    let dir = temp_dir("hostile");
    let state = DataDir::new(&dir);
    for (ns, name) in [
        ("..", "x"),
        ("default", "../../etc"),
        ("default", ""),
        ("a/b", "x"),
        ("default", "Upper"),
    ] {
        let refused = state
            .create(&Owner::new(ns, name), Item::Kek, fields("k"))
            .await
            .unwrap_err();
        assert!(matches!(refused, StateError::Invalid(_)), "{refused}");
        assert!(
            refused.to_string().contains("is not a Kubernetes name"),
            "{refused}"
        );
    }
    assert!(!dir.exists(), "nothing was written");

    let me = owner("damaged");
    let mut history = DriveHistory::new();
    history.record("D1", None, Timestamp::UNIX_EPOCH);
    state.write_history(&me, &history, None).await.unwrap();
    let file = dir.join("key-managers/default/damaged/drives.json");
    std::fs::write(&file, b"{\"format\": 1, \"drives\": ").unwrap();
    let damaged = state.read_history(&me).await.unwrap_err();
    assert!(matches!(damaged, StateError::Corrupt { .. }), "{damaged}");
    assert!(
        damaged.to_string().contains(&file.display().to_string()),
        "{damaged}"
    );

    state
        .create(
            &me,
            Item::Tls,
            Fields::of([
                ("tls.crt", b"c".to_vec()),
                ("tls.key", b"k".to_vec()),
                ("ca.crt", b"a".to_vec()),
            ]),
        )
        .await
        .unwrap();
    std::fs::remove_file(dir.join("key-managers/default/damaged/tls/tls.key")).unwrap();
    let missing = state.read(&me, Item::Tls).await.unwrap_err();
    assert!(
        missing.to_string().contains("tls.key is missing"),
        "{missing}"
    );
    // A damaged item is not made again over what is left of it.
    assert!(
        state
            .create(&me, Item::Tls, Fields::default())
            .await
            .is_err()
    );

    // The release list the local shell keeps beside a history.
    std::fs::write(&file, history.to_json()).unwrap();
    std::fs::write(file.with_file_name("release-drives"), "D1, D2\n").unwrap();
    assert_eq!(
        state
            .read_history(&me)
            .await
            .unwrap()
            .unwrap()
            .released
            .as_deref(),
        Some("D1, D2")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What the Secrets and ConfigMaps look like: the names, keys, labels, annotations and
/// types the operator has always written, so that existing clusters keep working.
#[tokio::test]
#[allow(clippy::too_many_lines)] // one list of every object and its shape
async fn kubernetes_objects_are_written_as_they_always_were() {
    let client = ClientBuilder::new().build().await.unwrap();
    let state = Kube::new(client.clone());
    key_groups_reach_a_fixed_point(&state).await;
    drive_moves::write_served(
        &state,
        &owner("tape-keys"),
        &tables_of(&inputs(&estate("tape-keys", 10, &["D1"]))),
        &[],
        DriveHistory::new(),
        None,
        false,
    )
    .await
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let labels = |extra: &[(&str, &str)]| {
        let mut labels: std::collections::BTreeMap<String, String> = [
            ("app.kubernetes.io/instance", "tape-keys"),
            ("shadowkeep.io/key-manager", "tape-keys"),
            ("app.kubernetes.io/name", "shadowkeep-server"),
            ("app.kubernetes.io/component", "key-server"),
            ("app.kubernetes.io/managed-by", "shadowkeep-operator"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        labels.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        labels
    };
    for (name, type_, keys, immutable) in [
        ("tape-keys-kek", Some("Opaque"), vec!["kek"], Some(true)),
        ("tape-keys-keystore", Some("Opaque"), vec!["keystore"], None),
        (
            "tape-keys-ca",
            Some("Opaque"),
            vec!["ca.crt", "ca.key"],
            None,
        ),
        (
            "tape-keys-tls",
            Some("kubernetes.io/tls"),
            vec!["ca.crt", "tls.crt", "tls.key"],
            None,
        ),
        ("tape-keys-license-signing", None, vec!["seed"], None),
    ] {
        let s = secrets.get(name).await.unwrap();
        assert_eq!(s.type_.as_deref(), type_, "{name}");
        assert_eq!(s.immutable, immutable, "{name}");
        assert_eq!(
            s.data
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            keys,
            "{name}"
        );
        assert_eq!(s.metadata.labels.unwrap(), labels(&[]), "{name}");
        assert_eq!(
            s.metadata.annotations.unwrap(),
            [("shadowkeep.io/keep-on-delete".to_owned(), "true".to_owned())].into(),
            "{name}"
        );
        assert!(
            s.metadata.owner_references.is_none(),
            "{name} outlives its KeyManager"
        );
    }
    let backups = secrets
        .list(&ListParams::default().labels("shadowkeep.io/keystore-backup-of=tape-keys"))
        .await
        .unwrap()
        .items;
    assert_eq!(backups.len(), 1);
    let backup = &backups[0];
    assert!(
        backup
            .metadata
            .name
            .as_deref()
            .unwrap()
            .starts_with("tape-keys-keystore-backup-")
    );
    assert_eq!(backup.immutable, Some(true));
    assert_eq!(
        backup.metadata.labels.clone().unwrap(),
        labels(&[("shadowkeep.io/keystore-backup-of", "tape-keys")])
    );
    let history = Api::<ConfigMap>::namespaced(client, NS)
        .get("tape-keys-drive-history")
        .await
        .unwrap();
    assert_eq!(
        history.metadata.labels.unwrap(),
        labels(&[("shadowkeep.io/drive-history-of", "tape-keys")])
    );
    assert!(history.metadata.owner_references.is_none());
    assert!(
        DriveHistory::from_json(&history.data.unwrap()["drives.json"])
            .unwrap()
            .serves("D1")
    );
}
