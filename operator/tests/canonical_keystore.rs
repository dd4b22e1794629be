//! The canonical keystore is opened once per reconcile: a carry, KeyGroup maintenance and
//! pulled keys change it in memory, and it is written once, with one backup.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams};
use shadowkeep::controller::{Context, key_manager::reconcile};
use shadowkeep_api::crd::{DriveTable, KeyGroup, KeyManager};
use shadowkeep_api::keystore::Keystore;

use common::{NS, annotate, cluster, create, data, edit, served};

async fn reconcile_named(client: &kube::Client, name: &str) {
    let km = Api::<KeyManager>::namespaced(client.clone(), NS)
        .get(name)
        .await
        .unwrap();
    let ctx = Context::listed(client.clone(), "shadowkeep-test")
        .await
        .unwrap();
    reconcile(Arc::new(km), Arc::new(ctx)).await.unwrap();
}

async fn backups(client: &kube::Client, name: &str) -> Vec<Secret> {
    Api::<Secret>::namespaced(client.clone(), NS)
        .list(&ListParams::default().labels(&format!("shadowkeep.io/keystore-backup-of={name}")))
        .await
        .unwrap()
        .items
}

#[tokio::test]
async fn a_carry_and_new_pool_keys_in_one_reconcile_are_written_once() {
    let client = cluster(|_| {}).await;
    reconcile_named(&client, "tape-keys").await;
    Api::<KeyManager>::namespaced(client.clone(), NS)
        .delete("tape-keys", &DeleteParams::default())
        .await
        .unwrap();
    // Its successor takes over its drives, accepted at once, and has a pool of its own.
    create::<KeyManager>(
        &client,
        serde_json::json!({
            "apiVersion": "shadowkeep.io/v1alpha1", "kind": "KeyManager",
            "metadata": {"name": "successor", "namespace": NS},
            "spec": {"serverId": "successor", "replicas": 2},
        }),
    )
    .await;
    create::<KeyGroup>(
        &client,
        serde_json::json!({
            "apiVersion": "shadowkeep.io/v1alpha1", "kind": "KeyGroup",
            "metadata": {"name": "successor-lto", "namespace": NS},
            "spec": {"keyManagerRef": {"name": "successor"}, "keyCount": 2},
        }),
    )
    .await;
    let tables = Api::<DriveTable>::namespaced(client.clone(), NS);
    edit(&tables, "library-a", |t: &mut DriveTable| {
        t.spec.key_manager_ref.name = "successor".to_owned();
    })
    .await;
    edit(
        &Api::<KeyGroup>::namespaced(client.clone(), NS),
        "lto-default",
        |g: &mut KeyGroup| g.spec.key_manager_ref.name = "successor".to_owned(),
    )
    .await;
    let serials: Vec<String> = tables
        .get("library-a")
        .await
        .unwrap()
        .spec
        .drives
        .iter()
        .map(|d| d.serial.clone())
        .collect();
    annotate(
        &tables,
        "library-a",
        "shadowkeep.io/accept-drive-moves",
        &serials.join(","),
    )
    .await;

    reconcile_named(&client, "successor").await;
    let mut now_served = served(&client, "successor").await;
    now_served.sort();
    assert_eq!(now_served, serials, "carried and served");
    let keystore = Keystore::from_bytes(&data(
        &Api::<Secret>::namespaced(client.clone(), NS)
            .get("successor-keystore")
            .await
            .unwrap(),
        "keystore",
    ))
    .unwrap();
    assert_eq!(keystore.len(), 11 + 3, "the carried pool and the new one");
    let written = backups(&client, "successor").await;
    assert_eq!(
        written.len(),
        1,
        "one write of the keystore, so one backup (of the empty keystore it replaced)"
    );
    assert!(
        Keystore::from_bytes(&data(&written[0], "keystore"))
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_keystore_changed_by_another_writer_is_not_overwritten_and_the_reconcile_waits() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use kube::runtime::controller::Action;
    use kube_fake_client::interceptor::Funcs;

    // Every replace of the keystore Secret finds it changed since it was read.
    let client = common::cluster_with(
        |_| {},
        Funcs::new().replace(|r| {
            if r.name == "tape-keys-keystore" {
                Err(kube_fake_client::Error::Conflict(
                    "the object has been modified".to_owned(),
                ))
            } else {
                Ok(None)
            }
        }),
    )
    .await;
    let km = Api::<KeyManager>::namespaced(client.clone(), NS)
        .get("tape-keys")
        .await
        .unwrap();
    let ctx = Context::listed(client.clone(), "shadowkeep-test")
        .await
        .unwrap();
    let action = reconcile(Arc::new(km), Arc::new(ctx))
        .await
        .expect("a conflict is a wait, not a failure");
    assert_eq!(
        action,
        Action::requeue(shadowkeep::controller::key_manager::WAIT)
    );
    let status = Api::<KeyManager>::namespaced(client.clone(), NS)
        .get("tape-keys")
        .await
        .unwrap()
        .status
        .unwrap();
    let progressing = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_str()),
        ("True", "StateChanged")
    );
    assert!(
        progressing.message.contains("Secret tape-keys-keystore"),
        "{}",
        progressing.message
    );
    assert!(
        Api::<StatefulSet>::namespaced(client.clone(), NS)
            .get_opt("tape-keys")
            .await
            .unwrap()
            .is_none(),
        "nothing is applied from a keystore that was not written"
    );
    let stored = Keystore::from_bytes(&data(
        &Api::<Secret>::namespaced(client.clone(), NS)
            .get("tape-keys-keystore")
            .await
            .unwrap(),
        "keystore",
    ))
    .unwrap();
    assert!(stored.is_empty(), "the other writer's keystore stands");
}
