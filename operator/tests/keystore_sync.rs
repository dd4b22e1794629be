//! Keystore sync against a real key server on 127.0.0.1: a key that exists only on a
//! replica is pulled into the canonical keystore Secret (with a backup first), a replica
//! that does not answer is named in `KeystoreInSync`, one that lacks keys gets them pushed
//! once the canonical keystore is stored, and a sync with nothing new writes nothing.
//!
//! The replica runs the configuration the operator rendered for the quickstart, with its
//! certificate, CA and KEK taken from the Secrets the operator made; only the listen
//! addresses and file paths are changed to fit this machine.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams};
use shadowkeep::controller::{Context, key_manager::reconcile};
use shadowkeep::core::keystore_sync::ReplicaAddress;
use shadowkeep_api::crd::KeyManager;
use shadowkeep_api::keystore::{Algorithm, Kek, Key, Keystore};
use shadowkeep_api::server_config::ServerConfig;
use shadowkeep_server::https::{connector_from_pem, http1_connect_as, send};

use common::{NS, cluster, data};

const REPLICA_NAME: &str = "tape-keys-0.tape-keys-peers.default.svc";

async fn secret(client: &kube::Client, name: &str) -> Secret {
    Api::<Secret>::namespaced(client.clone(), NS)
        .get(name)
        .await
        .unwrap()
}

/// Runs one replica of the quickstart's `tape-keys` on 127.0.0.1; returns its admin API
/// address.
async fn start_replica(client: &kube::Client, dir: &Path) -> std::net::SocketAddr {
    let tls = secret(client, "tape-keys-tls").await;
    for (file, key) in [
        ("tls.crt", "tls.crt"),
        ("tls.key", "tls.key"),
        ("ca.crt", "ca.crt"),
    ] {
        std::fs::write(dir.join(file), data(&tls, key)).unwrap();
    }
    std::fs::write(
        dir.join("kek"),
        data(&secret(client, "tape-keys-kek").await, "kek"),
    )
    .unwrap();
    let rendered = Api::<ConfigMap>::namespaced(client.clone(), NS)
        .get("tape-keys-config")
        .await
        .unwrap();
    let mut config = ServerConfig::from_yaml(&rendered.data.unwrap()["server.yaml"]).unwrap();
    config.kmip.listen = "127.0.0.1:0".parse().unwrap();
    config.tls.cert = dir.join("tls.crt");
    config.tls.key = dir.join("tls.key");
    config.tls.client_ca = dir.join("ca.crt");
    config.data_dir = dir.join("store");
    config.kek_file = dir.join("kek");
    // Where the mounted keystore Secret would be; nothing is there until the test says.
    config.keystore_file = Some(dir.join("keystore"));
    // The license the operator signed, which must verify under the key in the config.
    std::fs::write(
        dir.join("license"),
        data(&secret(client, "tape-keys-license").await, "license"),
    )
    .unwrap();
    config.licence.as_mut().unwrap().file = dir.join("license");
    std::fs::write(
        dir.join("verifiers.json"),
        data(
            &secret(client, "tape-keys-shadow-verifiers").await,
            "verifiers.json",
        ),
    )
    .unwrap();
    let replication = config.replication.as_mut().unwrap();
    replication.shadow_verifiers_file = Some(dir.join("verifiers.json"));
    replication.listen = "127.0.0.1:0".parse().unwrap();
    replication.client_cert = dir.join("tls.crt");
    replication.client_key = dir.join("tls.key");
    // Alone: no peer to acknowledge or to pull from.
    replication.peers.clear();
    replication.peer_acknowledgements = Some(0);
    let server = shadowkeep_server::Server::new(&config).unwrap();
    let (admin, address) = server.bind_admin().await.unwrap().unwrap();
    let kmip = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    tokio::spawn(server.serve(kmip, Some(admin), std::future::pending()));
    address
}

/// Puts `key` on the replica through its admin API, as a peer would.
async fn put_on_replica(client: &kube::Client, address: std::net::SocketAddr, key: Key) {
    let tls = secret(client, "tape-keys-tls").await;
    let connector = connector_from_pem(
        &data(&tls, "ca.crt"),
        Some((&data(&tls, "tls.crt"), &data(&tls, "tls.key"))),
    )
    .unwrap();
    let mut keystore = Keystore::new();
    keystore.insert(key).unwrap();
    let address = address.to_string();
    let mut sender = http1_connect_as(&address, REPLICA_NAME, &connector)
        .await
        .unwrap();
    let (status, reply) = send(
        &mut sender,
        &address,
        hyper::Method::POST,
        "/v1/keystore/merge",
        keystore.to_bytes().unwrap(),
    )
    .await
    .unwrap();
    assert!(
        status.is_success(),
        "{status}: {}",
        String::from_utf8_lossy(&reply)
    );
}

async fn reconcile_with(client: &kube::Client, replicas: Vec<ReplicaAddress>) -> (String, String) {
    let (status, message, _) = reconcile_reporting(client, replicas).await;
    (status, message)
}

/// Reconciles `tape-keys` and returns its `KeystoreInSync` status, reason and message, and
/// its `status.replicaSync`.
async fn reconcile_reporting(
    client: &kube::Client,
    replicas: Vec<ReplicaAddress>,
) -> (String, String, Vec<shadowkeep_api::crd::ReplicaSyncStatus>) {
    let km = Api::<KeyManager>::namespaced(client.clone(), NS)
        .get("tape-keys")
        .await
        .unwrap();
    let mut ctx = Context::listed(client.clone(), "shadowkeep-test")
        .await
        .unwrap();
    if !replicas.is_empty() {
        ctx.replica_resolver = Some(Arc::new(move |_| replicas.clone()));
    }
    reconcile(Arc::new(km), Arc::new(ctx)).await.unwrap();
    let status = Api::<KeyManager>::namespaced(client.clone(), NS)
        .get("tape-keys")
        .await
        .unwrap()
        .status
        .unwrap();
    let c = status
        .conditions
        .into_iter()
        .find(|c| c.type_ == "KeystoreInSync")
        .unwrap();
    (
        c.status,
        format!("{}: {}", c.reason, c.message),
        status.replica_sync,
    )
}

async fn canonical(client: &kube::Client) -> Keystore {
    Keystore::from_bytes(&data(
        &secret(client, "tape-keys-keystore").await,
        "keystore",
    ))
    .unwrap()
}

async fn backups(client: &kube::Client) -> usize {
    Api::<Secret>::namespaced(client.clone(), NS)
        .list(&ListParams::default().labels("shadowkeep.io/keystore-backup-of=tape-keys"))
        .await
        .unwrap()
        .items
        .len()
}

#[tokio::test]
#[allow(clippy::too_many_lines)] // one story: not ready, pulled, unreachable, behind, in sync, impostor
async fn a_key_only_a_replica_holds_is_pulled_into_the_canonical_keystore() {
    let client = cluster(|_| {}).await;
    let (status, message) = reconcile_with(&client, Vec::new()).await;
    assert_eq!(status, "False");
    assert!(message.starts_with("NoReplicaReady"), "{message}");

    let dir = std::env::temp_dir().join(format!("keystore-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let admin = start_replica(&client, &dir).await;
    let kek = Kek::from_bytes(&data(&secret(&client, "tape-keys-kek").await, "kek")).unwrap();
    let key = Key::generate(&kek, "TAPE0001L9", Algorithm::Aes, 256, Timestamp::now()).unwrap();
    put_on_replica(&client, admin, key.clone()).await;
    assert!(canonical(&client).await.get(&key.id).is_none());

    // A second replica that does not answer.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let replica = |name: &str, address: std::net::SocketAddr| ReplicaAddress {
        replica: name.to_owned(),
        address: address.to_string(),
        server_name: format!("{name}.tape-keys-peers.default.svc"),
    };
    let before = backups(&client).await;
    let (status, message) = reconcile_with(
        &client,
        vec![
            replica("tape-keys-0", admin),
            replica("tape-keys-1", closed),
        ],
    )
    .await;
    let pulled = canonical(&client).await;
    let copy = pulled
        .get(&key.id)
        .expect("the replica's key is in the canonical keystore");
    assert!(
        copy.same_key(&key),
        "the same record, material sealed as it was"
    );
    assert_eq!(
        backups(&client).await,
        before + 1,
        "a backup before the change"
    );
    assert_eq!(status, "False");
    assert!(
        message.starts_with("ReplicaUnreachable") && message.contains("tape-keys-1: connect"),
        "{message}"
    );
    assert!(!message.contains("tape-keys-0"), "{message}");

    // The replica answered but lacked the KeyGroup's keys, which only the canonical keystore
    // had: they were pushed to it once the canonical keystore was stored, without waiting
    // for the kubelet to refresh the mounted Secret (this test never writes that file).
    let (status, message, replicas) =
        reconcile_reporting(&client, vec![replica("tape-keys-0", admin)]).await;
    assert_eq!(status, "True", "{message}");
    assert!(
        message.starts_with(
            "ReplicasSynced: every replica holds exactly the canonical keystore (1 replica(s)"
        ),
        "{message}"
    );
    assert!(
        !dir.join("keystore").exists(),
        "no Secret import: the keys were pushed"
    );
    let canonical_now = canonical(&client).await;
    assert_eq!(replicas[0].keys, i64::try_from(canonical_now.len()).ok());
    assert_eq!(
        replicas[0].digest.as_deref(),
        Some(canonical_now.digest().unwrap().to_string().as_str())
    );
    assert!(replicas[0].in_sync);
    assert_eq!(replicas[0].keys_pulled, Some(0));
    assert_eq!(backups(&client).await, before + 1, "nothing new to write");
    assert_eq!(canonical_now.digest().unwrap(), pulled.digest().unwrap());

    // A replica whose certificate does not carry the name asked for is not trusted.
    let (status, message) = reconcile_with(
        &client,
        vec![ReplicaAddress {
            server_name: "impostor.example.com".to_owned(),
            ..replica("tape-keys-0", admin)
        }],
    )
    .await;
    assert_eq!(status, "False");
    assert!(message.contains("tape-keys-0: TLS"), "{message}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_moved_drive_takes_the_keys_only_its_old_replicas_held() {
    use shadowkeep_api::crd::DriveTable;
    use shadowkeep_api::keystore::AttributeValue;

    let client = cluster(|_| {}).await;
    reconcile_with(&client, Vec::new()).await;
    let dir = std::env::temp_dir().join(format!("keystore-carry-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let admin = start_replica(&client, &dir).await;
    // A key the drive created on the replica: tagged with its KeyGroup, in no Secret yet.
    let kek = Kek::from_bytes(&data(&secret(&client, "tape-keys-kek").await, "kek")).unwrap();
    let mut key = Key::generate(&kek, "TAPE0002L9", Algorithm::Aes, 256, Timestamp::now()).unwrap();
    key.attributes.insert(
        "kmip:y-KeyGroup#0".to_owned(),
        AttributeValue {
            updated_at_ms: Timestamp::now().as_millisecond(),
            value: Some(r#"{"TextString":"lto-default"}"#.to_owned()),
        },
    );
    put_on_replica(&client, admin, key.clone()).await;

    // Drive 1013000123 moves to dr-keys in site-b; the move is released and accepted.
    common::annotate(
        &Api::<KeyManager>::namespaced(client.clone(), NS),
        "tape-keys",
        "shadowkeep.io/release-drives",
        "1013000123",
    )
    .await;
    common::edit(
        &Api::<DriveTable>::namespaced(client.clone(), NS),
        "library-a",
        |t: &mut DriveTable| t.spec.drives.retain(|d| d.serial != "1013000123"),
    )
    .await;
    common::create::<KeyManager>(
        &client,
        serde_json::json!({"apiVersion": "shadowkeep.io/v1alpha1", "kind": "KeyManager",
            "metadata": {"name": "dr-keys", "namespace": "site-b"},
            "spec": {"serverId": "dr-keys", "replicas": 2}}),
    )
    .await;
    common::create::<DriveTable>(
        &client,
        serde_json::json!({"apiVersion": "shadowkeep.io/v1alpha1", "kind": "DriveTable",
            "metadata": {"name": "moved", "namespace": "site-b",
                         "annotations": {"shadowkeep.io/accept-drive-moves": "1013000123"}},
            "spec": {"keyManagerRef": {"name": "dr-keys"}, "drives": [{"serial": "1013000123"}]}}),
    )
    .await;
    let km = Api::<KeyManager>::namespaced(client.clone(), "site-b")
        .get("dr-keys")
        .await
        .unwrap();
    let mut ctx = Context::listed(client.clone(), "shadowkeep-test")
        .await
        .unwrap();
    ctx.replica_resolver = Some(Arc::new(move |inputs| {
        if inputs.name() == "tape-keys" {
            vec![ReplicaAddress {
                replica: "tape-keys-0".to_owned(),
                address: admin.to_string(),
                server_name: REPLICA_NAME.to_owned(),
            }]
        } else {
            Vec::new()
        }
    }));
    reconcile(Arc::new(km), Arc::new(ctx)).await.unwrap();

    let secrets = Api::<Secret>::namespaced(client.clone(), "site-b");
    let new_kek =
        Kek::from_bytes(&data(&secrets.get("dr-keys-kek").await.unwrap(), "kek")).unwrap();
    let new = Keystore::from_bytes(&data(
        &secrets.get("dr-keys-keystore").await.unwrap(),
        "keystore",
    ))
    .unwrap();
    let carried = new.get(&key.id).expect("the replica-only key was carried");
    assert_eq!(
        *new_kek.open(&key.id, &carried.material).unwrap(),
        *kek.open(&key.id, &key.material).unwrap()
    );
    assert!(
        canonical(&client).await.get(&key.id).is_some(),
        "and the old KeyManager's own keystore has it now"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
