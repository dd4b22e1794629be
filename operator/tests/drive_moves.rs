//! Drives that move between KeyManagers, against the in-memory API server: the drive is
//! held back from its new KeyManager (in another namespace too) until the move is
//! accepted, then its keys are carried and it is served there, once; a deleted
//! KeyManager's history still holds its drives back.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams};
use shadowkeep::controller::{Context, key_manager::reconcile};
use shadowkeep_api::crd::{DriveTable, KeyGroup, KeyManager};
use shadowkeep_api::drive_history::{DriveHistory, in_key_group};
use shadowkeep_api::keystore::{Kek, Keystore};

use common::{NS, annotate, cluster, create, data, edit, served, served_in};

const MOVED: &str = "1013000123";
const SITE_B: &str = "site-b";

async fn reconcile_in(client: &kube::Client, ns: &str, name: &str) {
    reconcile_with(client, ns, name, false).await;
}

/// With `replicas_answered`, every KeyManager's replicas (none here) count as having
/// answered the keystore sync; without, none is ready, as in the in-memory API server.
async fn reconcile_with(client: &kube::Client, ns: &str, name: &str, replicas_answered: bool) {
    let km = Api::<KeyManager>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap();
    let mut ctx = Context::listed(client.clone(), "shadowkeep-test")
        .await
        .unwrap();
    if replicas_answered {
        ctx.replica_resolver = Some(Arc::new(|_| Vec::new()));
    }
    reconcile(Arc::new(km), Arc::new(ctx)).await.unwrap();
}

async fn history(client: &kube::Client, ns: &str, name: &str) -> (ConfigMap, DriveHistory) {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get(&format!("{name}-drive-history"))
        .await
        .unwrap();
    let history = DriveHistory::from_json(&cm.data.clone().unwrap()["drives.json"]).unwrap();
    (cm, history)
}

async fn keystore(client: &kube::Client, ns: &str, name: &str) -> (Kek, Keystore) {
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    let kek = Kek::from_bytes(&data(
        &secrets.get(&format!("{name}-kek")).await.unwrap(),
        "kek",
    ))
    .unwrap();
    let keystore = Keystore::from_bytes(&data(
        &secrets.get(&format!("{name}-keystore")).await.unwrap(),
        "keystore",
    ))
    .unwrap();
    (kek, keystore)
}

fn condition(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> (String, String) {
    let c = conditions.iter().find(|c| c.type_ == type_).unwrap();
    (c.status.clone(), c.message.clone())
}

/// The quickstart's `library-a` without drive [`MOVED`], and a KeyManager `dr-keys` in
/// namespace `site-b` (with its own default KeyGroup) whose table `moved` lists it.
async fn move_the_drive_to_site_b(client: &kube::Client) {
    let tables = Api::<DriveTable>::namespaced(client.clone(), NS);
    edit(&tables, "library-a", |t: &mut DriveTable| {
        t.spec.drives.retain(|d| d.serial != MOVED);
    })
    .await;
    create::<KeyManager>(
        client,
        serde_json::json!({
            "apiVersion": "shadowkeep.io/v1alpha1", "kind": "KeyManager",
            "metadata": {"name": "dr-keys", "namespace": SITE_B},
            "spec": {"serverId": "dr-keys", "replicas": 2},
        }),
    )
    .await;
    create::<KeyGroup>(
        client,
        serde_json::json!({
            "apiVersion": "shadowkeep.io/v1alpha1", "kind": "KeyGroup",
            "metadata": {"name": "site-b-lto", "namespace": SITE_B},
            "spec": {"keyManagerRef": {"name": "dr-keys"}, "keyCount": 2, "default": true},
        }),
    )
    .await;
    create::<DriveTable>(
        client,
        serde_json::json!({
            "apiVersion": "shadowkeep.io/v1alpha1", "kind": "DriveTable",
            "metadata": {"name": "moved", "namespace": SITE_B},
            "spec": {"keyManagerRef": {"name": "dr-keys"},
                     "drives": [{"serial": MOVED}, {"serial": "2000000001"}]},
        }),
    )
    .await;
}

/// Annotates DriveTable `name` to accept the moves of `serials`.
async fn accept(tables: &Api<DriveTable>, name: &str, serials: &str) {
    annotate(tables, name, "shadowkeep.io/accept-drive-moves", serials).await;
}

/// Every key of `old` (of `group`, when given) is in `new` with the same material under
/// `new`'s KEK. Returns how many.
fn assert_carried(old: &(Kek, Keystore), new: &(Kek, Keystore), group: Option<&str>) -> usize {
    let mut count = 0;
    for key in old
        .1
        .keys()
        .filter(|k| group.is_none_or(|g| in_key_group(k, g)))
    {
        let copy = new.1.get(&key.id).expect("every key of the drive's group");
        assert_eq!(
            *new.0.open(&key.id, &copy.material).unwrap(),
            *old.0.open(&key.id, &key.material).unwrap(),
            "the same material, sealed under the new KEK"
        );
        count += 1;
    }
    assert!(count > 0);
    count
}

/// The Events with `reason` about DriveTable `table`.
async fn events(client: &kube::Client, ns: &str, table: &str, reason: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("DriveTable") && r.name.as_deref() == Some(table)
                })
        })
        .collect()
}

#[tokio::test]
#[allow(clippy::too_many_lines)] // one story: held back, accepted, carried once, put back
async fn a_moved_drive_is_held_back_until_accepted_then_its_keys_are_carried_once() {
    let client = cluster(|_| {}).await;
    reconcile_in(&client, NS, "tape-keys").await;

    // The history: every served drive with its KeyGroup, in a ConfigMap nothing owns.
    let (cm, old) = history(&client, NS, "tape-keys").await;
    assert!(cm.metadata.owner_references.unwrap_or_default().is_empty());
    assert_eq!(
        cm.metadata.labels.unwrap()["shadowkeep.io/drive-history-of"],
        "tape-keys"
    );
    assert!(old.serves(MOVED));
    assert_eq!(old.drives[MOVED].key_group.as_deref(), Some("lto-default"));
    assert_eq!(
        old.drives["1013000125"].key_group.as_deref(),
        Some("lto-default"),
        "a drive without a group is recorded with the default group"
    );

    // Moved to another namespace's KeyManager: held back there, and said so.
    move_the_drive_to_site_b(&client).await;
    reconcile_in(&client, SITE_B, "dr-keys").await;
    assert_eq!(served_in(&client, SITE_B, "dr-keys").await, ["2000000001"]);
    let km = Api::<KeyManager>::namespaced(client.clone(), SITE_B)
        .get("dr-keys")
        .await
        .unwrap();
    assert_eq!(
        condition(&km.status.unwrap().conditions, "KeyHistoryAtRisk").0,
        "True"
    );
    let tables = Api::<DriveTable>::namespaced(client.clone(), SITE_B);
    let status = tables.get("moved").await.unwrap().status.unwrap();
    let (risk, message) = condition(&status.conditions, "KeyHistoryAtRisk");
    assert_eq!(risk, "True");
    for needle in [
        "\"1013000123\"",
        "\"default/tape-keys\"",
        "shadowkeep.io/accept-drive-moves",
        "put the drive back",
    ] {
        assert!(message.contains(needle), "{needle} missing from: {message}");
    }
    assert_eq!(status.drives, Some(1));
    assert_eq!(
        events(&client, SITE_B, "moved", "KeyHistoryAtRisk")
            .await
            .len(),
        1
    );
    // Nothing was carried yet.
    let (_, before) = keystore(&client, SITE_B, "dr-keys").await;
    assert!(!before.keys().any(|k| in_key_group(k, "lto-default")));

    // The old KeyManager no longer lists it, and its history keeps it.
    reconcile_in(&client, NS, "tape-keys").await;
    assert!(
        !served(&client, "tape-keys")
            .await
            .contains(&MOVED.to_owned())
    );
    assert!(history(&client, NS, "tape-keys").await.1.serves(MOVED));

    // Accepted: the drive's keys are carried, re-sealed, and the drive is served.
    accept(&tables, "moved", &format!("{MOVED}, 9999999999")).await;
    // Not from another namespace without its owners' consent.
    reconcile_in(&client, SITE_B, "dr-keys").await;
    assert_eq!(served_in(&client, SITE_B, "dr-keys").await, ["2000000001"]);
    let status = tables.get("moved").await.unwrap().status.unwrap();
    let (_, message) = condition(&status.conditions, "KeyHistoryAtRisk");
    assert!(
        message.contains("another namespace")
            && message.contains("shadowkeep.io/release-drives: \"1013000123\""),
        "{message}"
    );
    annotate(
        &Api::<KeyManager>::namespaced(client.clone(), NS),
        "tape-keys",
        "shadowkeep.io/release-drives",
        MOVED,
    )
    .await;
    // Nor while the old KeyManager's replicas, which may hold the drive's newest keys,
    // cannot be asked for them.
    reconcile_in(&client, SITE_B, "dr-keys").await;
    assert_eq!(served_in(&client, SITE_B, "dr-keys").await, ["2000000001"]);
    let status = tables.get("moved").await.unwrap().status.unwrap();
    let (_, message) = condition(&status.conditions, "KeyHistoryAtRisk");
    assert!(
        message.contains("could not be carried")
            && message.contains("replicas of KeyManager default/tape-keys may hold keys"),
        "{message}"
    );
    reconcile_with(&client, SITE_B, "dr-keys", true).await;
    let mut now_served = served_in(&client, SITE_B, "dr-keys").await;
    now_served.sort();
    assert_eq!(now_served, ["1013000123", "2000000001"]);

    let old_keys = keystore(&client, NS, "tape-keys").await;
    let new_keys = keystore(&client, SITE_B, "dr-keys").await;
    let group = assert_carried(&old_keys, &new_keys, Some("lto-default"));
    assert_eq!(
        new_keys.1.len(),
        before.len() + group,
        "only the drive's group's keys were carried"
    );
    assert!(
        !Api::<Secret>::namespaced(client.clone(), SITE_B)
            .list(&ListParams::default().labels("shadowkeep.io/keystore-backup-of=dr-keys"))
            .await
            .unwrap()
            .items
            .is_empty(),
        "the keystore was backed up before the carry"
    );
    let (_, old) = history(&client, NS, "tape-keys").await;
    assert_eq!(
        old.drives[MOVED].moved_to.as_deref(),
        Some("site-b/dr-keys")
    );
    let (_, new) = history(&client, SITE_B, "dr-keys").await;
    assert!(new.serves(MOVED));
    assert_eq!(
        new.drives[MOVED].carried_from.as_deref(),
        Some("default/tape-keys")
    );
    let status = tables.get("moved").await.unwrap().status.unwrap();
    assert_eq!(condition(&status.conditions, "KeyHistoryAtRisk").0, "False");
    assert_eq!(status.drives, Some(2));
    let carried = events(&client, SITE_B, "moved", "KeyHistoryCarried").await;
    assert_eq!(carried.len(), 1);
    let note = carried[0].note.clone().unwrap();
    assert!(
        note.contains(&format!("{group} key(s) of KeyGroup \"lto-default\"")),
        "{note}"
    );

    // Once: again, nothing more is carried and nothing conflicts.
    reconcile_in(&client, SITE_B, "dr-keys").await;
    let (_, again) = keystore(&client, SITE_B, "dr-keys").await;
    assert_eq!(again.digest().unwrap(), new_keys.1.digest().unwrap());
    assert!(again.quarantined().unwrap().is_empty());
    assert_eq!(
        events(&client, SITE_B, "moved", "KeyHistoryCarried")
            .await
            .len(),
        1
    );

    // Put back under the old KeyManager without accepting: now that one holds it back.
    let old_tables = Api::<DriveTable>::namespaced(client.clone(), NS);
    edit(&old_tables, "library-a", |t: &mut DriveTable| {
        let mut drive = t.spec.drives[0].clone();
        drive.serial = MOVED.to_owned();
        t.spec.drives.push(drive);
    })
    .await;
    reconcile_in(&client, NS, "tape-keys").await;
    assert!(
        !served(&client, "tape-keys")
            .await
            .contains(&MOVED.to_owned())
    );
    let status = old_tables.get("library-a").await.unwrap().status.unwrap();
    let (risk, message) = condition(&status.conditions, "KeyHistoryAtRisk");
    assert_eq!(risk, "True");
    assert!(message.contains("\"site-b/dr-keys\""), "{message}");
}

#[tokio::test]
async fn a_deleted_key_managers_history_still_holds_its_drives_back() {
    let client = cluster(|_| {}).await;
    reconcile_in(&client, NS, "tape-keys").await;
    Api::<KeyManager>::namespaced(client.clone(), NS)
        .delete("tape-keys", &DeleteParams::default())
        .await
        .unwrap();
    let (_, kept) = history(&client, NS, "tape-keys").await;
    assert!(kept.serves(MOVED), "the history outlives its KeyManager");

    // Its table and group now name a successor, which has none of the keys.
    create::<KeyManager>(
        &client,
        serde_json::json!({
            "apiVersion": "shadowkeep.io/v1alpha1", "kind": "KeyManager",
            "metadata": {"name": "successor", "namespace": NS},
            "spec": {"serverId": "successor", "replicas": 2},
        }),
    )
    .await;
    let tables = Api::<DriveTable>::namespaced(client.clone(), NS);
    edit(&tables, "library-a", |t: &mut DriveTable| {
        t.spec.key_manager_ref.name = "successor".to_owned();
    })
    .await;
    let groups = Api::<KeyGroup>::namespaced(client.clone(), NS);
    edit(&groups, "lto-default", |g: &mut KeyGroup| {
        g.spec.key_manager_ref.name = "successor".to_owned();
    })
    .await;
    reconcile_in(&client, NS, "successor").await;
    assert!(
        served(&client, "successor").await.is_empty(),
        "none of the deleted KeyManager's drives is served without its keys"
    );
    let status = tables.get("library-a").await.unwrap().status.unwrap();
    let (risk, message) = condition(&status.conditions, "KeyHistoryAtRisk");
    assert_eq!(risk, "True");
    assert!(message.contains("\"default/tape-keys\""), "{message}");

    // Accepting carries them from the Secrets the deleted KeyManager left behind.
    let serials: Vec<String> = tables
        .get("library-a")
        .await
        .unwrap()
        .spec
        .drives
        .iter()
        .map(|d| d.serial.clone())
        .collect();
    accept(&tables, "library-a", &serials.join(",")).await;
    reconcile_in(&client, NS, "successor").await;
    let mut now_served = served(&client, "successor").await;
    now_served.sort();
    assert_eq!(now_served, serials);
    assert_carried(
        &keystore(&client, NS, "tape-keys").await,
        &keystore(&client, NS, "successor").await,
        None,
    );
}

#[tokio::test]
async fn a_deleted_key_managers_drives_leave_its_namespace_only_once_released() {
    let client = cluster(|_| {}).await;
    reconcile_in(&client, NS, "tape-keys").await;
    Api::<KeyManager>::namespaced(client.clone(), NS)
        .delete("tape-keys", &DeleteParams::default())
        .await
        .unwrap();
    create::<KeyManager>(
        &client,
        serde_json::json!({"apiVersion": "shadowkeep.io/v1alpha1", "kind": "KeyManager",
            "metadata": {"name": "heir", "namespace": "site-c"},
            "spec": {"serverId": "heir", "replicas": 2}}),
    )
    .await;
    create::<DriveTable>(
        &client,
        serde_json::json!({"apiVersion": "shadowkeep.io/v1alpha1", "kind": "DriveTable",
            "metadata": {"name": "inherited", "namespace": "site-c",
                         "annotations": {"shadowkeep.io/accept-drive-moves": MOVED}},
            "spec": {"keyManagerRef": {"name": "heir"}, "drives": [{"serial": MOVED}]}}),
    )
    .await;
    reconcile_in(&client, "site-c", "heir").await;
    assert!(served_in(&client, "site-c", "heir").await.is_empty());
    let tables = Api::<DriveTable>::namespaced(client.clone(), "site-c");
    let status = tables.get("inherited").await.unwrap().status.unwrap();
    let (_, message) = condition(&status.conditions, "KeyHistoryAtRisk");
    assert!(
        message.contains("ConfigMap tape-keys-drive-history"),
        "{message}"
    );

    // The deleted KeyManager's history is where its namespace releases the drive.
    annotate(
        &Api::<ConfigMap>::namespaced(client.clone(), NS),
        "tape-keys-drive-history",
        "shadowkeep.io/release-drives",
        MOVED,
    )
    .await;
    reconcile_in(&client, "site-c", "heir").await;
    assert_eq!(served_in(&client, "site-c", "heir").await, [MOVED]);
    assert_carried(
        &keystore(&client, NS, "tape-keys").await,
        &keystore(&client, "site-c", "heir").await,
        Some("lto-default"),
    );
}

#[tokio::test]
async fn a_drive_two_key_managers_both_took_is_flagged_as_split_and_can_be_joined() {
    let client = cluster(|_| {}).await;
    reconcile_in(&client, NS, "tape-keys").await;
    // Another namespace's KeyManager took the same drive at the same moment: its history
    // serves it too (written as its reconcile would have written it).
    create::<KeyManager>(
        &client,
        serde_json::json!({"apiVersion": "shadowkeep.io/v1alpha1", "kind": "KeyManager",
            "metadata": {"name": "rogue", "namespace": "site-x",
                         "annotations": {"shadowkeep.io/release-drives": MOVED}},
            "spec": {"serverId": "rogue", "replicas": 2}}),
    )
    .await;
    create::<KeyGroup>(
        &client,
        serde_json::json!({"apiVersion": "shadowkeep.io/v1alpha1", "kind": "KeyGroup",
            "metadata": {"name": "rogue-lto", "namespace": "site-x"},
            "spec": {"keyManagerRef": {"name": "rogue"}, "keyCount": 2, "default": true}}),
    )
    .await;
    reconcile_in(&client, "site-x", "rogue").await;
    let mut rogue = DriveHistory::new();
    rogue.record(MOVED, None, jiff::Timestamp::now());
    create::<ConfigMap>(
        &client,
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "rogue-drive-history", "namespace": "site-x",
                         "labels": {"shadowkeep.io/drive-history-of": "rogue"}},
            "data": {"drives.json": rogue.to_json()}}),
    )
    .await;

    reconcile_in(&client, NS, "tape-keys").await;
    assert!(
        served(&client, "tape-keys")
            .await
            .contains(&MOVED.to_owned()),
        "a split drive stays where it is served"
    );
    let tables = Api::<DriveTable>::namespaced(client.clone(), NS);
    let status = tables.get("library-a").await.unwrap().status.unwrap();
    let (risk, message) = condition(&status.conditions, "KeyHistoryAtRisk");
    assert_eq!(risk, "True");
    assert!(
        message.contains("served here and by KeyManager \"site-x/rogue\" too")
            && message.contains("split"),
        "{message}"
    );

    // Joined: the other's keys are carried here, and its history hands the drive on.
    accept(&tables, "library-a", MOVED).await;
    reconcile_with(&client, NS, "tape-keys", true).await;
    let (_, history_x) = history(&client, "site-x", "rogue").await;
    assert_eq!(
        history_x.drives[MOVED].moved_to.as_deref(),
        Some("default/tape-keys")
    );
    let status = tables.get("library-a").await.unwrap().status.unwrap();
    assert_eq!(condition(&status.conditions, "KeyHistoryAtRisk").0, "False");
    assert_carried(
        &keystore(&client, "site-x", "rogue").await,
        &keystore(&client, NS, "tape-keys").await,
        None,
    );
}
