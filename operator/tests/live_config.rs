//! Live configuration against a real key server on 127.0.0.1: after a DriveTable edit the
//! KeyManager reconcile pushes the new configuration to a replica whose configuration file
//! is never refreshed (it runs in this process, from the configuration the operator
//! rendered, with no file to re-read), without touching the pod template;
//! `ConfigurationApplied` says so, and names a replica that cannot be reached.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use shadowkeep::controller::{Context, key_manager::reconcile};
use shadowkeep::core::keystore_sync::ReplicaAddress;
use shadowkeep_api::crd::{DriveTable, KeyManager};
use shadowkeep_api::server_config::{ServerConfig, live_digest};
use shadowkeep_api::shadow::wire::StateReport;
use shadowkeep_server::https::{connector_from_pem, http1_connect_as, send};

use common::{NS, cluster, data, edit};

async fn secret(client: &kube::Client, name: &str) -> Secret {
    Api::<Secret>::namespaced(client.clone(), NS)
        .get(name)
        .await
        .unwrap()
}

/// The configuration the operator rendered into the ConfigMap.
async fn rendered(client: &kube::Client) -> ServerConfig {
    let map = Api::<ConfigMap>::namespaced(client.clone(), NS)
        .get("tape-keys-config")
        .await
        .unwrap();
    ServerConfig::from_yaml(&map.data.unwrap()["server.yaml"]).unwrap()
}

/// Runs one replica of `tape-keys` in this process, from the rendered configuration with
/// this machine's addresses and files; returns its admin API address.
async fn start_replica(client: &kube::Client, dir: &Path) -> SocketAddr {
    let tls = secret(client, "tape-keys-tls").await;
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        std::fs::write(dir.join(key), data(&tls, key)).unwrap();
    }
    let file = |secret_name: &'static str, key: &'static str| async move {
        std::fs::write(dir.join(key), data(&secret(client, secret_name).await, key)).unwrap();
        dir.join(key)
    };
    let mut config = rendered(client).await;
    config.kek_file = file("tape-keys-kek", "kek").await;
    config.licence.as_mut().unwrap().file = file("tape-keys-license", "license").await;
    let verifiers = file("tape-keys-shadow-verifiers", "verifiers.json").await;
    config.kmip.listen = "127.0.0.1:0".parse().unwrap();
    config.tls.cert = dir.join("tls.crt");
    config.tls.key = dir.join("tls.key");
    config.tls.client_ca = dir.join("ca.crt");
    config.data_dir = dir.join("store");
    config.keystore_file = None;
    let replication = config.replication.as_mut().unwrap();
    replication.shadow_verifiers_file = Some(verifiers);
    replication.listen = "127.0.0.1:0".parse().unwrap();
    replication.client_cert = dir.join("tls.crt");
    replication.client_key = dir.join("tls.key");
    replication.peers.clear();
    replication.peer_acknowledgements = Some(0);
    let server = shadowkeep_server::Server::new(&config).unwrap();
    let (admin, address) = server.bind_admin().await.unwrap().unwrap();
    let kmip = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    tokio::spawn(server.serve(kmip, Some(admin), std::future::pending()));
    address
}

fn replica(name: &str, address: SocketAddr) -> ReplicaAddress {
    ReplicaAddress {
        replica: name.to_owned(),
        address: address.to_string(),
        server_name: format!("{name}.tape-keys-peers.default.svc"),
    }
}

/// The replica's drive policy digest, as it reports it.
async fn digest_on(client: &kube::Client, admin: SocketAddr) -> String {
    let tls = secret(client, "tape-keys-tls").await;
    let connector = connector_from_pem(
        &data(&tls, "ca.crt"),
        Some((&data(&tls, "tls.crt"), &data(&tls, "tls.key"))),
    )
    .unwrap();
    let address = admin.to_string();
    let name = "tape-keys-0.tape-keys-peers.default.svc";
    let mut sender = http1_connect_as(&address, name, &connector).await.unwrap();
    let (status, body) = send(
        &mut sender,
        &address,
        hyper::Method::GET,
        "/v1/state",
        Vec::new(),
    )
    .await
    .unwrap();
    assert!(status.is_success());
    let state: StateReport = serde_json::from_slice(&body).unwrap();
    state.configuration.unwrap().digest
}

/// Reconciles `tape-keys` with its replicas at `replicas` (its shadow not asked: none runs
/// here) and returns `ConfigurationApplied` as `status: reason: message`.
async fn reconcile_with(client: &kube::Client, replicas: Vec<ReplicaAddress>) -> String {
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
    ctx.shadow_resolver = Some(Arc::new(|_, _| None));
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
        .find(|c| c.type_ == "ConfigurationApplied")
        .unwrap();
    format!("{}: {}: {}", c.status, c.reason, c.message)
}

async fn template(client: &kube::Client) -> String {
    let sts = Api::<StatefulSet>::namespaced(client.clone(), NS)
        .get("tape-keys")
        .await
        .unwrap();
    serde_json::to_string(&sts.spec.unwrap().template).unwrap()
}

#[tokio::test]
async fn a_drive_table_edit_is_pushed_to_a_replica_whose_file_is_never_refreshed() {
    let client = cluster(|_| {}).await;
    let first = reconcile_with(&client, Vec::new()).await;
    assert!(first.starts_with("False: NoReplicaReady"), "{first}");
    let dir = std::env::temp_dir().join(format!("live-config-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let admin = start_replica(&client, &dir).await;
    let started = rendered(&client).await;
    assert_eq!(
        digest_on(&client, admin).await,
        live_digest(&started.drives)
    );
    let at = vec![replica("tape-keys-0", admin)];
    let condition = reconcile_with(&client, at.clone()).await;
    assert!(
        condition.starts_with("True: ConfigurationInForce"),
        "{condition}"
    );
    let template_before = template(&client).await;

    // A new drive identity in the DriveTable.
    edit(
        &Api::<DriveTable>::namespaced(client.clone(), NS),
        "library-a",
        |t| {
            t.spec.drives.push(
                serde_json::from_value(serde_json::json!({
                    "serial": "1013000199",
                    "certificateIdentity": "library-z.tape.example.com",
                }))
                .unwrap(),
            );
        },
    )
    .await;
    let condition = reconcile_with(&client, at.clone()).await;
    assert!(
        condition.starts_with("True: ConfigurationInForce"),
        "{condition}"
    );
    let next = rendered(&client).await;
    assert_ne!(
        next.drives, started.drives,
        "the ConfigMap holds the new drive"
    );
    assert_eq!(
        digest_on(&client, admin).await,
        live_digest(&next.drives),
        "the push reached the replica"
    );
    assert_eq!(template(&client).await, template_before, "no pod roll");

    // A replica that cannot be reached is named; the one that answers keeps the table.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut both = at;
    both.push(replica("tape-keys-1", closed));
    let condition = reconcile_with(&client, both).await;
    assert!(
        condition.starts_with("False: ServersBehind: tape-keys-1: "),
        "{condition}"
    );
    assert!(!condition.contains("tape-keys-0"), "{condition}");
    std::fs::remove_dir_all(dir).unwrap();
}
