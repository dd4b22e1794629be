//! The KeyManager reconcile against an in-memory API server (kube-fake-client): the
//! quickstart converges, a second reconcile changes nothing, key material survives the
//! KeyManager's deletion, and an invalid spec changes nothing.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::Action;
use sha2::{Digest as _, Sha256};
use shadowkeep::controller::{Context, key_manager::reconcile};
use shadowkeep_api::crd::{DriveTable, KeyGroup, KeyManager};
use shadowkeep_api::keystore::Kek;
use shadowkeep_api::server_config::ServerConfig;

mod common;

use common::{NS, cluster, create, data, served};

/// A Context over the in-memory API, its stores filled as a watch would fill them.
async fn context(client: &kube::Client) -> Arc<Context> {
    Arc::new(
        Context::listed(client.clone(), "shadowkeep-test")
            .await
            .unwrap(),
    )
}

/// What a metadata-only watch hands the DriveTable and KeyGroup controllers.
fn partial<K: kube::Resource<DynamicType = ()>>(object: &K) -> kube::core::PartialObjectMeta<K> {
    use kube::core::PartialObjectMetaExt as _;
    object.meta().clone().into_request_partial::<K>()
}

async fn run(client: &kube::Client) -> Action {
    let km = Api::<KeyManager>::namespaced(client.clone(), NS)
        .get("tape-keys")
        .await
        .unwrap();
    let ctx = context(client).await;
    reconcile(Arc::new(km), ctx).await.unwrap()
}

/// Everything the reconcile writes, without the fields the fake server bumps.
async fn snapshot(client: &kube::Client) -> Vec<serde_json::Value> {
    let lp = ListParams::default();
    let mut out = Vec::new();
    let strip = |v: &mut serde_json::Value| {
        if let Some(m) = v["metadata"].as_object_mut() {
            m.remove("resourceVersion");
            m.remove("managedFields");
            m.remove("generation");
        }
        // Key material must never reach test output, even in a failed assertion: data is
        // compared by digest.
        if let Some(data) = v.get_mut("data").and_then(serde_json::Value::as_object_mut) {
            for value in data.values_mut() {
                let digest = Sha256::digest(value.to_string());
                *value = serde_json::Value::String(format!("sha256:{}", hex::encode(digest)));
            }
        }
    };
    macro_rules! take {
        ($t:ty) => {
            for o in Api::<$t>::namespaced(client.clone(), NS)
                .list(&lp)
                .await
                .unwrap()
            {
                let mut v = serde_json::to_value(o).unwrap();
                strip(&mut v);
                out.push(v);
            }
        };
    }
    take!(Secret);
    take!(ConfigMap);
    take!(Service);
    take!(StatefulSet);
    take!(PodDisruptionBudget);
    out
}

#[tokio::test]
async fn the_quickstart_converges_to_a_fixed_point() {
    let client = cluster(|_| {}).await;
    run(&client).await;

    let sts = Api::<StatefulSet>::namespaced(client.clone(), NS)
        .get("tape-keys")
        .await
        .unwrap();
    assert_eq!(sts.spec.as_ref().unwrap().replicas, Some(2));
    let secrets = Api::<Secret>::namespaced(client.clone(), NS);
    let kek = secrets.get("tape-keys-kek").await.unwrap();
    let tls = secrets.get("tape-keys-tls").await.unwrap();
    let cert = String::from_utf8(data(&tls, "tls.crt")).unwrap();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
    let ca = secrets.get("tape-keys-ca").await.unwrap();
    assert!(
        String::from_utf8(data(&ca, "ca.key"))
            .unwrap()
            .contains("PRIVATE KEY")
    );
    let config = Api::<ConfigMap>::namespaced(client.clone(), NS)
        .get("tape-keys-config")
        .await
        .unwrap();
    let parsed = ServerConfig::from_yaml(&config.data.unwrap()["server.yaml"]).unwrap();
    assert_eq!(parsed.drives.drives.len(), 3);
    let km = Api::<KeyManager>::namespaced(client.clone(), NS)
        .get("tape-keys")
        .await
        .unwrap();
    let status = km.status.unwrap();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "ReplicasNotReady")
    );
    let single = status
        .conditions
        .iter()
        .find(|c| c.type_ == "SingleServer")
        .unwrap();
    assert_eq!(single.status, "False");
    // The KeyGroup's pool: one active key and ten spares, in the canonical keystore.
    assert_eq!(status.key_count, Some(11));
    let group = Api::<KeyGroup>::namespaced(client.clone(), NS)
        .get("lto-default")
        .await
        .unwrap();
    let group_status = group.status.unwrap();
    assert_eq!(group_status.keys, Some(11));
    assert_eq!(group_status.active_key.as_deref(), Some("LTO-000001"));
    let keystore = shadowkeep_api::keystore::Keystore::from_bytes(&data(
        &secrets.get("tape-keys-keystore").await.unwrap(),
        "keystore",
    ))
    .unwrap();
    assert_eq!(keystore.len(), 11);
    let kek = Kek::from_bytes(&data(&kek, "kek")).unwrap();
    assert!(
        keystore
            .keys()
            .all(|k| kek.open(&k.id, &k.material).is_ok())
    );
    // The empty keystore it replaced was kept as a backup.
    let backups = secrets
        .list(&ListParams::default().labels("shadowkeep.io/keystore-backup-of=tape-keys"))
        .await
        .unwrap();
    assert_eq!(backups.items.len(), 1);
    assert!(status.keystore_digest.unwrap().starts_with("sha256:"));

    // A second reconcile writes the same objects: the KEK and certificates are not remade.
    let before = snapshot(&client).await;
    run(&client).await;
    let after = snapshot(&client).await;
    let changed: Vec<String> = after
        .iter()
        .filter(|o| !before.contains(o))
        .map(|o| format!("{} {}", o["kind"], o["metadata"]["name"]))
        .collect();
    assert_eq!(
        changed,
        Vec::<String>::new(),
        "changed by the second reconcile"
    );
    assert_eq!(after.len(), before.len());
    let again = Api::<KeyManager>::namespaced(client.clone(), NS)
        .get("tape-keys")
        .await
        .unwrap();
    let ready_again = again
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        ready_again.last_transition_time, ready.last_transition_time,
        "unchanged conditions keep their time"
    );
}

#[tokio::test]
async fn key_material_survives_deleting_the_key_manager() {
    let client = cluster(|_| {}).await;
    run(&client).await;
    let secrets = Api::<Secret>::namespaced(client.clone(), NS);
    let kek = data(&secrets.get("tape-keys-kek").await.unwrap(), "kek");
    Api::<KeyManager>::namespaced(client.clone(), NS)
        .delete("tape-keys", &DeleteParams::default())
        .await
        .unwrap();
    for name in [
        "tape-keys-kek",
        "tape-keys-keystore",
        "tape-keys-ca",
        "tape-keys-tls",
        "tape-keys-license-signing",
    ] {
        assert!(
            secrets.get_opt(name).await.unwrap().is_some(),
            "{name} was deleted"
        );
    }
    // Recreated, the KeyManager finds its old KEK instead of making a new one.
    let km: KeyManager = serde_yaml::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart/keymanager.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    Api::<KeyManager>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &km)
        .await
        .unwrap();
    run(&client).await;
    assert_eq!(
        data(&secrets.get("tape-keys-kek").await.unwrap(), "kek"),
        kek
    );
}

#[tokio::test]
async fn an_invalid_spec_changes_nothing_and_waits_for_a_change() {
    let client = cluster(|km| km.spec.replicas = 0).await;
    let action = run(&client).await;
    assert_eq!(action, Action::await_change());
    assert!(snapshot(&client).await.is_empty(), "no child was created");
    let km = Api::<KeyManager>::namespaced(client.clone(), NS)
        .get("tape-keys")
        .await
        .unwrap();
    let ready = km
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.reason, "InvalidSpec");
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap();
    let invalid = events
        .items
        .iter()
        .find(|e| e.reason.as_deref() == Some("InvalidSpec"))
        .expect("a Warning Event says the spec was refused");
    assert_eq!(invalid.type_.as_deref(), Some("Warning"));
    assert!(
        invalid
            .note
            .as_deref()
            .unwrap_or("")
            .contains("spec.replicas")
    );
    assert_eq!(
        ready.message,
        "spec.durability.peerAcknowledgements: durability.peerAcknowledgements must be less than replicas: a replica cannot acknowledge its own key; spec.replicas: must be between 1 and 16"
    );
}

#[tokio::test]
async fn two_key_managers_with_one_server_id_are_both_flagged_and_both_served() {
    let client = cluster(|_| {}).await;
    let mut twin: KeyManager = serde_yaml::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart/keymanager.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    twin.metadata.namespace = Some("dr".to_owned());
    Api::<KeyManager>::namespaced(client.clone(), "dr")
        .create(&PostParams::default(), &twin)
        .await
        .unwrap();
    let ctx = context(&client).await;
    for ns in [NS, "dr"] {
        let km = Api::<KeyManager>::namespaced(client.clone(), ns)
            .get("tape-keys")
            .await
            .unwrap();
        reconcile(Arc::new(km), Arc::clone(&ctx)).await.unwrap();
    }
    for (ns, other) in [(NS, "dr/tape-keys"), ("dr", "default/tape-keys")] {
        let km = Api::<KeyManager>::namespaced(client.clone(), ns)
            .get("tape-keys")
            .await
            .unwrap();
        let dup = km
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.type_ == "DuplicateServerId")
            .unwrap();
        assert_eq!(
            (dup.status.as_str(), dup.reason.as_str()),
            ("True", "DuplicateServerId")
        );
        let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .unwrap();
        assert!(
            events
                .items
                .iter()
                .any(|e| e.reason.as_deref() == Some("DuplicateServerId")),
            "a DuplicateServerId Event in {ns}"
        );
        assert!(dup.message.contains(other), "{}", dup.message);
        // Flagged, not stopped: its replicas are still there.
        assert!(
            Api::<StatefulSet>::namespaced(client.clone(), ns)
                .get_opt("tape-keys")
                .await
                .unwrap()
                .is_some()
        );
    }
}

/// A second KeyManager, `dr-keys`, whose table `moved` lists drive 1013000123 of the
/// quickstart's `tape-keys` and a drive of its own.
async fn second_key_manager_claiming_a_drive(client: &kube::Client) {
    create::<KeyManager>(
        client,
        serde_json::json!({
            "apiVersion": "shadowkeep.io/v1alpha1", "kind": "KeyManager",
            "metadata": {"name": "dr-keys", "namespace": NS},
            "spec": {"serverId": "dr-keys"},
        }),
    )
    .await;
    create::<DriveTable>(
        client,
        serde_json::json!({
            "apiVersion": "shadowkeep.io/v1alpha1", "kind": "DriveTable",
            "metadata": {"name": "moved", "namespace": NS},
            "spec": {"keyManagerRef": {"name": "dr-keys"},
                     "drives": [{"serial": "1013000123"}, {"serial": "2000000001"}]},
        }),
    )
    .await;
}

#[tokio::test]
async fn a_drive_claimed_by_a_second_key_manager_stays_where_its_keys_are() {
    use k8s_openapi::api::events::v1::Event;

    let client = cluster(|_| {}).await;
    run(&client).await;
    let tables = Api::<DriveTable>::namespaced(client.clone(), NS);
    second_key_manager_claiming_a_drive(&client).await;
    let ctx = context(&client).await;
    let moved = tables.get("moved").await.unwrap();
    shadowkeep::controller::references::reconcile(Arc::new(partial(&moved)), Arc::clone(&ctx))
        .await
        .unwrap();
    for name in ["dr-keys", "tape-keys"] {
        let km = Api::<KeyManager>::namespaced(client.clone(), NS)
            .get(name)
            .await
            .unwrap();
        reconcile(Arc::new(km), Arc::clone(&ctx)).await.unwrap();
    }
    assert!(
        served(&client, "tape-keys")
            .await
            .contains(&"1013000123".to_owned()),
        "the drive stays with its keys"
    );
    assert_eq!(
        served(&client, "dr-keys").await,
        vec!["2000000001".to_owned()],
        "held back from the new KeyManager"
    );
    let status = tables.get("moved").await.unwrap().status.unwrap();
    let risk = status
        .conditions
        .iter()
        .find(|c| c.type_ == "KeyHistoryAtRisk")
        .unwrap();
    assert_eq!(risk.status, "True");
    for needle in [
        "\"1013000123\"",
        "\"dr-keys\"",
        "\"tape-keys\"",
        "not served here",
    ] {
        assert!(
            risk.message.contains(needle),
            "{needle} missing from: {}",
            risk.message
        );
    }
    assert_eq!(status.drives, Some(1));
    assert!(
        status.conditions.iter().any(|c| c.type_ == "Ready"),
        "the risk report keeps the conditions other controllers set"
    );
    let events = Api::<Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("KeyHistoryAtRisk")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("moved")),
        "a Warning Event on the DriveTable"
    );
    let km = Api::<KeyManager>::namespaced(client.clone(), NS)
        .get("dr-keys")
        .await
        .unwrap();
    let c = km
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "KeyHistoryAtRisk")
        .unwrap();
    assert_eq!(c.status, "True");

    // Resolved by taking the drive out of the second table.
    let mut table = tables.get("moved").await.unwrap();
    table.spec.drives.retain(|d| d.serial != "1013000123");
    tables
        .replace("moved", &PostParams::default(), &table)
        .await
        .unwrap();
    let km = Api::<KeyManager>::namespaced(client.clone(), NS)
        .get("dr-keys")
        .await
        .unwrap();
    reconcile(Arc::new(km), Arc::clone(&ctx)).await.unwrap();
    let status = tables.get("moved").await.unwrap().status.unwrap();
    let risk = status
        .conditions
        .iter()
        .find(|c| c.type_ == "KeyHistoryAtRisk")
        .unwrap();
    assert_eq!(risk.status, "False");
}

#[tokio::test]
async fn a_table_or_group_naming_a_missing_key_manager_says_so() {
    let client = cluster(|_| {}).await;
    let ctx = context(&client).await;
    let orphan: DriveTable = serde_json::from_value(serde_json::json!({
        "apiVersion": "shadowkeep.io/v1alpha1", "kind": "DriveTable",
        "metadata": {"name": "orphan", "namespace": NS},
        "spec": {"keyManagerRef": {"name": "no-such-km"}, "drives": [{"serial": "X1"}]},
    }))
    .unwrap();
    let tables = Api::<DriveTable>::namespaced(client.clone(), NS);
    let orphan = tables
        .create(&PostParams::default(), &orphan)
        .await
        .unwrap();
    shadowkeep::controller::references::reconcile(Arc::new(partial(&orphan)), Arc::clone(&ctx))
        .await
        .unwrap();
    let ready = tables
        .get("orphan")
        .await
        .unwrap()
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "KeyManagerNotFound")
    );
    assert!(ready.message.contains("\"no-such-km\""));

    let groups = Api::<KeyGroup>::namespaced(client.clone(), NS);
    let group = groups.get("lto-default").await.unwrap();
    shadowkeep::controller::references::reconcile(Arc::new(partial(&group)), ctx)
        .await
        .unwrap();
    let ready = groups
        .get("lto-default")
        .await
        .unwrap()
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True");
}
