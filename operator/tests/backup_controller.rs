//! The KeyManager reconcile's backups against an in-memory API server: a `secret` target
//! gets one immutable Secret per keystore change in another namespace, which opens with
//! the recovery identity to the canonical keystore and its KEK; a target that cannot be
//! written is reported by name while the KeyManager is still served.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use shadowkeep::build::Names;
use shadowkeep::controller::backup::{BACKUP_KEY, BACKUP_OF_LABEL};
use shadowkeep::controller::{Context, key_manager::reconcile};
use shadowkeep::core::backup::archive;
use shadowkeep::core::state::Owner;
use shadowkeep_api::crd::{BackupTarget, KeyManager, SecretBackupTarget};

mod common;

use common::{NS, cluster, data};

const VAULT: &str = "tape-backups";

fn secret_target(name: &str, namespace: &str) -> BackupTarget {
    BackupTarget {
        name: name.to_owned(),
        secret: Some(SecretBackupTarget {
            namespace: namespace.to_owned(),
        }),
        s3: None,
    }
}

async fn run(client: &kube::Client) -> KeyManager {
    let api = Api::<KeyManager>::namespaced(client.clone(), NS);
    let km = api.get("tape-keys").await.unwrap();
    let ctx = Arc::new(
        Context::listed(client.clone(), "shadowkeep-test")
            .await
            .unwrap(),
    );
    reconcile(Arc::new(km), ctx).await.unwrap();
    api.get("tape-keys").await.unwrap()
}

async fn backups(client: &kube::Client) -> Vec<Secret> {
    Api::<Secret>::namespaced(client.clone(), VAULT)
        .list(&ListParams::default().labels(&format!("{BACKUP_OF_LABEL}=tape-keys")))
        .await
        .unwrap()
        .items
}

fn condition<'a>(km: &'a KeyManager, type_: &str) -> (&'a str, &'a str, &'a str) {
    let c = km
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap();
    (c.status.as_str(), c.reason.as_str(), c.message.as_str())
}

#[tokio::test]
async fn a_secret_target_in_another_namespace_holds_a_backup_that_opens_with_the_recovery_key() {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let client = cluster(|km| {
        km.spec.backup.recovery_recipients = vec![recipient.clone()];
        km.spec.backup.targets = vec![secret_target("vault", VAULT)];
    })
    .await;
    let km = run(&client).await;
    let written = backups(&client).await;
    assert_eq!(written.len(), 1);
    let secret = &written[0];
    assert_eq!(secret.immutable, Some(true));
    let opened = archive::open(&data(secret, BACKUP_KEY)).unwrap();
    let names = Names::of("tape-keys");
    let secrets = Api::<Secret>::namespaced(client.clone(), NS);
    let canonical = data(&secrets.get(&names.keystore).await.unwrap(), "keystore");
    let kek = data(&secrets.get(&names.kek).await.unwrap(), "kek");
    assert_eq!(opened.owner, Owner::new(NS, "tape-keys"));
    assert_eq!(opened.keystore, canonical);
    assert!(
        opened
            .kek(std::slice::from_ref(&identity))
            .unwrap()
            .as_slice()
            == kek.as_slice()
    );
    assert!(
        opened
            .manifests
            .iter()
            .any(|m| m.contains("kind: KeyManager"))
    );
    assert!(
        opened
            .manifests
            .iter()
            .any(|m| m.contains("kind: DriveTable"))
    );
    assert!(!opened.manifests.iter().any(|m| m.contains("kind: Secret")));

    let status = km.status.as_ref().unwrap();
    let target = &status.backups[0];
    assert_eq!(target.name, "vault");
    assert_eq!(target.last_backup.as_deref(), Some(opened.name().as_str()));
    assert_eq!(
        target.keystore_sha256.as_deref(),
        Some(&opened.keystore_digest[..12])
    );
    assert!(target.escrowed && target.error.is_none());
    assert_eq!(condition(&km, "BackupsCurrent").0, "True");
    assert_eq!(condition(&km, "KekEscrowed").0, "True");

    // At rest: no second backup.
    run(&client).await;
    assert_eq!(backups(&client).await.len(), 1);
}

#[tokio::test]
async fn a_target_that_refuses_writes_is_named_and_the_key_manager_still_served() {
    let refuse = kube_fake_client::interceptor::Funcs::new().create(|x| {
        if x.namespace == "locked" {
            Err(kube_fake_client::Error::InvalidRequest(
                "secrets is forbidden in namespace locked".to_owned(),
            ))
        } else {
            Ok(None)
        }
    });
    let client = common::cluster_with(
        |km| {
            km.spec.backup.targets = vec![
                secret_target("locked", "locked"),
                secret_target("vault", VAULT),
            ];
        },
        refuse,
    )
    .await;
    let km = run(&client).await;
    let (status, reason, message) = condition(&km, "BackupsCurrent");
    assert_eq!((status, reason), ("False", "BackupTargetFailed"));
    assert!(
        message.contains("target locked") && message.contains("forbidden"),
        "{message}"
    );
    let (status, reason, message) = condition(&km, "KekEscrowed");
    assert_eq!((status, reason), ("False", "NoRecoveryKey"));
    assert!(
        message.contains("losing the cluster would lose every key"),
        "{message}"
    );
    let targets = &km.status.as_ref().unwrap().backups;
    assert!(targets[0].error.is_some() && targets[0].last_backup.is_none());
    // The other target is written, and the KeyManager is served all the same.
    assert!(targets[1].error.is_none() && !targets[1].escrowed);
    assert_eq!(backups(&client).await.len(), 1);
    assert!(
        Api::<StatefulSet>::namespaced(client.clone(), NS)
            .get_opt(&Names::of("tape-keys").statefulset)
            .await
            .unwrap()
            .is_some()
    );
    // A Warning Event names the failing target; the escrow warning has its own.
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let warned = |reason: &str, text: &str| {
        events.iter().any(|e| {
            e.type_.as_deref() == Some("Warning")
                && e.reason.as_deref() == Some(reason)
                && e.note.as_deref().unwrap_or("").contains(text)
        })
    };
    assert!(
        warned("BackupTargetFailed", "backup target locked"),
        "{events:?}"
    );
    assert!(warned("NoRecoveryKey", "losing the cluster"), "{events:?}");
    // At the next reconcile the same failure is no news: no second Event for it.
    run(&client).await;
    let again = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let failed = |items: &[k8s_openapi::api::events::v1::Event]| {
        items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("BackupTargetFailed"))
            .map(|e| e.series.as_ref().map_or(1, |s| s.count))
            .sum::<i32>()
    };
    assert_eq!(failed(&again), failed(&events));
}

#[tokio::test]
async fn a_secret_target_in_the_key_managers_own_namespace_is_refused_naming_it() {
    let client = cluster(|km| km.spec.backup.targets = vec![secret_target("beside", NS)]).await;
    let km = run(&client).await;
    let (status, reason, message) = condition(&km, "Ready");
    assert_eq!((status, reason), ("False", "InvalidSpec"));
    assert!(
        message.contains("\"beside\"") && message.contains("own namespace"),
        "{message}"
    );
    assert!(
        Api::<StatefulSet>::namespaced(client.clone(), NS)
            .get_opt(&Names::of("tape-keys").statefulset)
            .await
            .unwrap()
            .is_none()
    );
}
