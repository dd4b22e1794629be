//! The Shadow reconcile against an in-memory API server (kube-fake-client), after its
//! KeyManager's: the quickstart Shadow gets its children and a credential record, the
//! replicas' verifiers name it, a second reconcile changes nothing, an invalid spec or a
//! missing KeyManager changes nothing and says so, and a rotation asked for while no
//! replica can be asked backs off, keeping the working password.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use shadowkeep::controller::{Context, key_manager, shadow};
use shadowkeep::core::shadow::credentials::Record;
use shadowkeep_api::crd::{KeyManager, Shadow, ShadowStatus};
use shadowkeep_api::server_config::ServerConfig;
use shadowkeep_api::shadow::verifiers::ShadowVerifiers;

mod common;

use common::{NS, annotate, cluster, data, edit};

async fn context(client: &kube::Client) -> Arc<Context> {
    let mut ctx = Context::listed(client.clone(), "shadowkeep-test")
        .await
        .unwrap();
    // No shadow process runs here: its admin API is nowhere.
    ctx.shadow_resolver = Some(Arc::new(|_, _| None));
    Arc::new(ctx)
}

async fn reconcile_key_manager(client: &kube::Client) {
    let km = Api::<KeyManager>::namespaced(client.clone(), NS)
        .get("tape-keys")
        .await
        .unwrap();
    key_manager::reconcile(Arc::new(km), context(client).await)
        .await
        .unwrap();
}

async fn reconcile_shadow(client: &kube::Client) -> Action {
    let s = Api::<Shadow>::namespaced(client.clone(), NS)
        .get("tape-keys-dr")
        .await
        .unwrap();
    shadow::reconcile(Arc::new(s), context(client).await)
        .await
        .unwrap()
}

async fn status(client: &kube::Client) -> ShadowStatus {
    Api::<Shadow>::namespaced(client.clone(), NS)
        .get("tape-keys-dr")
        .await
        .unwrap()
        .status
        .unwrap()
}

fn condition<'a>(
    status: &'a ShadowStatus,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    status.conditions.iter().find(|c| c.type_ == type_).unwrap()
}

async fn record(client: &kube::Client) -> Record {
    let secret = Api::<Secret>::namespaced(client.clone(), NS)
        .get("tape-keys-dr-credentials")
        .await
        .unwrap();
    Record::from_bytes(&data(&secret, "record")).unwrap()
}

/// The Shadow's children and the KeyManager's verifiers, without fields the fake server
/// bumps; Secret values by digest (never printed).
async fn snapshot(client: &kube::Client) -> Vec<serde_json::Value> {
    use sha2::{Digest as _, Sha256};
    let lp = ListParams::default();
    let mut out = Vec::new();
    let mut push = |mut v: serde_json::Value| {
        if let Some(m) = v["metadata"].as_object_mut() {
            m.remove("resourceVersion");
            m.remove("managedFields");
            m.remove("generation");
        }
        if let Some(d) = v.get_mut("data").and_then(serde_json::Value::as_object_mut) {
            for value in d.values_mut() {
                *value =
                    format!("sha256:{}", hex::encode(Sha256::digest(value.to_string()))).into();
            }
        }
        out.push(v);
    };
    for o in Api::<Secret>::namespaced(client.clone(), NS)
        .list(&lp)
        .await
        .unwrap()
    {
        push(serde_json::to_value(o).unwrap());
    }
    for o in Api::<ConfigMap>::namespaced(client.clone(), NS)
        .list(&lp)
        .await
        .unwrap()
    {
        push(serde_json::to_value(o).unwrap());
    }
    for o in Api::<Service>::namespaced(client.clone(), NS)
        .list(&lp)
        .await
        .unwrap()
    {
        push(serde_json::to_value(o).unwrap());
    }
    for o in Api::<StatefulSet>::namespaced(client.clone(), NS)
        .list(&lp)
        .await
        .unwrap()
    {
        push(serde_json::to_value(o).unwrap());
    }
    for o in Api::<Shadow>::namespaced(client.clone(), NS)
        .list(&lp)
        .await
        .unwrap()
    {
        push(serde_json::to_value(o).unwrap());
    }
    out
}

#[tokio::test]
async fn the_quickstart_shadow_converges_to_a_fixed_point() {
    let client = cluster(|_| {}).await;
    reconcile_key_manager(&client).await;
    assert_eq!(
        reconcile_shadow(&client).await,
        Action::requeue(shadow::AT_REST)
    );

    let sts = Api::<StatefulSet>::namespaced(client.clone(), NS)
        .get("tape-keys-dr")
        .await
        .unwrap();
    assert_eq!(sts.spec.as_ref().unwrap().replicas, Some(1));
    let owner = &sts.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Shadow", "tape-keys-dr")
    );
    let config = Api::<ConfigMap>::namespaced(client.clone(), NS)
        .get("tape-keys-dr-config")
        .await
        .unwrap();
    let parsed = ServerConfig::from_yaml(&config.data.unwrap()["server.yaml"]).unwrap();
    assert_eq!(parsed.shadow.as_ref().unwrap().priority, 10);
    assert_eq!(parsed.licence.as_ref().unwrap().public_key.len(), 64);
    let secrets = Api::<Secret>::namespaced(client.clone(), NS);
    let record = record(&client).await;
    assert_eq!(
        data(
            &secrets.get("tape-keys-dr-password").await.unwrap(),
            "password"
        ),
        record.current.password.as_bytes(),
        "the shadow holds the record's pair"
    );
    assert_eq!(
        data(
            &secrets.get("tape-keys-dr-license").await.unwrap(),
            "license"
        ),
        record.current.licence.as_bytes()
    );
    let tls = String::from_utf8(data(
        &secrets.get("tape-keys-dr-tls").await.unwrap(),
        "tls.crt",
    ))
    .unwrap();
    assert!(tls.starts_with("-----BEGIN CERTIFICATE-----"));
    let verifiers = ShadowVerifiers::decode(&data(
        &secrets.get("tape-keys-shadow-verifiers").await.unwrap(),
        "verifiers.json",
    ))
    .unwrap();
    let ids: Vec<_> = verifiers.shadows["tape-keys-dr"]
        .iter()
        .map(|v| v.id.clone().unwrap())
        .collect();
    assert_eq!(ids, vec![record.current.id()]);

    let status = status(&client).await;
    assert_eq!(
        condition(&status, "Ready").status,
        "False",
        "no shadow process answers here"
    );
    assert_eq!(condition(&status, "PlacementRisk").status, "False");
    assert_eq!(condition(&status, "PasswordRotation").reason, "Scheduled");
    assert_eq!(
        status.password_rotated_at.as_ref().unwrap().0.as_second(),
        record.current.issued_at.as_second()
    );
    assert_eq!(
        status.address.as_deref(),
        Some("tape-keys-dr-kmip.default.svc:5696")
    );

    // The KeyManager's next reconcile keeps the same verifiers; a second Shadow reconcile
    // changes nothing.
    reconcile_key_manager(&client).await;
    let before = snapshot(&client).await;
    reconcile_shadow(&client).await;
    reconcile_key_manager(&client).await;
    let after = snapshot(&client).await;
    let changed: Vec<String> = after
        .iter()
        .filter(|v| !before.contains(v))
        .map(|v| format!("{} {}", v["kind"], v["metadata"]["name"]))
        .collect();
    assert!(changed.is_empty(), "a second reconcile changed {changed:?}");
    assert_eq!(after.len(), before.len());
}

#[tokio::test]
async fn the_key_manager_lists_its_shadow_and_publishes_its_hints() {
    let client = cluster(|_| {}).await;
    reconcile_key_manager(&client).await;
    reconcile_shadow(&client).await;
    reconcile_key_manager(&client).await;
    let km = Api::<KeyManager>::namespaced(client.clone(), NS)
        .get("tape-keys")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(km.shadow_hints, ["192.0.2.10"]);
    let listed: Vec<_> = km
        .shadows
        .iter()
        .map(|s| (s.name.as_str(), s.zone.as_str()))
        .collect();
    assert_eq!(listed, [("tape-keys-dr", "eu-central-1a")]);
    let hints = Api::<ConfigMap>::namespaced(client.clone(), NS)
        .get("tape-keys-shadow-hints")
        .await
        .unwrap();
    assert_eq!(hints.data.unwrap()["addresses"], "192.0.2.10\n");
}

#[tokio::test]
async fn an_invalid_shadow_changes_nothing_and_says_which_field() {
    let client = cluster(|_| {}).await;
    reconcile_key_manager(&client).await;
    let shadows = Api::<Shadow>::namespaced(client.clone(), NS);
    edit(&shadows, "tape-keys-dr", |s: &mut Shadow| {
        s.spec.priority = 5000;
    })
    .await;
    let before = snapshot(&client).await;
    assert_eq!(reconcile_shadow(&client).await, Action::await_change());
    let status = status(&client).await;
    let ready = condition(&status, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(ready.message.contains("spec.priority"), "{}", ready.message);
    let after = snapshot(&client).await;
    let children = |all: &[serde_json::Value]| {
        all.iter()
            .filter(|v| v["kind"] != "Shadow")
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        children(&after),
        children(&before),
        "nothing created or changed"
    );
    assert!(
        Api::<Secret>::namespaced(client.clone(), NS)
            .get_opt("tape-keys-dr-credentials")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_shadow_naming_no_key_manager_is_refused_and_builds_nothing() {
    let client = cluster(|_| {}).await;
    let shadows = Api::<Shadow>::namespaced(client.clone(), NS);
    edit(&shadows, "tape-keys-dr", |s: &mut Shadow| {
        s.spec.key_manager_ref.name = "gone".to_owned();
    })
    .await;
    assert_eq!(reconcile_shadow(&client).await, Action::await_change());
    let status = status(&client).await;
    let ready = condition(&status, "Ready");
    assert_eq!(ready.reason, "InvalidSpec");
    assert!(ready.message.contains("keyManagerRef"), "{}", ready.message);
    assert!(
        Api::<StatefulSet>::namespaced(client.clone(), NS)
            .get_opt("tape-keys-dr")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_shadow_whose_key_manager_is_deleted_keeps_its_data_and_says_so() {
    let client = cluster(|_| {}).await;
    reconcile_key_manager(&client).await;
    reconcile_shadow(&client).await;
    Api::<KeyManager>::namespaced(client.clone(), NS)
        .delete("tape-keys", &kube::api::DeleteParams::default())
        .await
        .unwrap();
    reconcile_shadow(&client).await;
    let status = status(&client).await;
    let ready = condition(&status, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "KeyManagerMissing")
    );
    assert!(
        ready.message.contains("keeps its data"),
        "{}",
        ready.message
    );
    for name in ["tape-keys-dr", "tape-keys-dr-credentials"] {
        let kept = match name {
            "tape-keys-dr" => Api::<StatefulSet>::namespaced(client.clone(), NS)
                .get_opt(name)
                .await
                .unwrap()
                .is_some(),
            _ => Api::<Secret>::namespaced(client.clone(), NS)
                .get_opt(name)
                .await
                .unwrap()
                .is_some(),
        };
        assert!(kept, "{name} is kept");
    }
}

#[tokio::test]
async fn a_rotation_no_replica_can_answer_backs_off_and_keeps_the_working_password() {
    let client = cluster(|_| {}).await;
    reconcile_key_manager(&client).await;
    reconcile_shadow(&client).await;
    let first = record(&client).await;
    let shadows = Api::<Shadow>::namespaced(client.clone(), NS);
    annotate(
        &shadows,
        "tape-keys-dr",
        "shadowkeep.io/rotate-password-requested-at",
        "now",
    )
    .await;
    // The first step issues the new pair; the next finds no replica to ask.
    assert_eq!(
        reconcile_shadow(&client).await,
        Action::requeue(shadow::SOON)
    );
    assert_eq!(
        reconcile_shadow(&client).await,
        Action::requeue(shadow::SOON)
    );
    let started = record(&client).await;
    assert!(started.rotation.is_some());
    let status = status(&client).await;
    let rotation = condition(&status, "PasswordRotation");
    assert_eq!(
        (rotation.status.as_str(), rotation.reason.as_str()),
        ("False", "ReplicaUnreachable"),
        "{}",
        rotation.message
    );
    assert!(rotation.message.contains("still works"));
    assert_eq!(started.current, first.current, "nothing handed over");
    let secrets = Api::<Secret>::namespaced(client.clone(), NS);
    assert_eq!(
        data(
            &secrets.get("tape-keys-dr-password").await.unwrap(),
            "password"
        ),
        first.current.password.as_bytes()
    );
    let verifiers = ShadowVerifiers::decode(&data(
        &secrets.get("tape-keys-shadow-verifiers").await.unwrap(),
        "verifiers.json",
    ))
    .unwrap();
    assert_eq!(
        verifiers.shadows["tape-keys-dr"].len(),
        2,
        "old and new accepted meanwhile"
    );
    assert_eq!(status.last_handled_rotation_at.as_deref(), Some("now"));
    // Nothing secret in the status or the Events.
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap();
    let text = format!("{:?}{:?}", serde_json::to_string(&status), events.items);
    for secret in [
        first.current.password.as_str(),
        started.rotation.as_ref().unwrap().next.password.as_str(),
    ] {
        assert!(
            !text.contains(secret),
            "a password reached the status or an Event"
        );
    }
    assert!(
        !text.contains("$argon2id$"),
        "a verifier reached the status or an Event"
    );
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("PasswordRotationFailed")
                && e.type_.as_deref() == Some("Warning"))
    );
}
