//! The Shadow controller's rotation against real servers on 127.0.0.1: the in-memory API
//! (kube-fake-client) holds the quickstart with its KeyManager reduced to one replica; after
//! the KeyManager's and the Shadow's reconciles a replica and a shadow start in this process
//! from the ConfigMaps the operator rendered, every path pointed at a file written from the
//! cluster's Secrets. The test is the kubelet: after every reconcile it copies the Secrets'
//! values into those files (a temporary file renamed over the old one, as a projected
//! volume changes), so the servers re-read them as they would in a pod.
//!
//! Then: the shadow registers and its status says Ready and Shadowing; a requested
//! rotation completes with no registration refused, the shadow Shadowing throughout, the
//! replica's verifiers holding only the new pair and the old password refused; an Inactive
//! `spec.state` is pushed to the shadow, and a requested sync is echoed.
//!
//! The one change beyond listen addresses, file paths and the shadow's poll interval: the
//! replica's certificate is issued by the cluster's CA Secret with the names of the one in
//! the replica's Secret plus 127.0.0.1, because the shadow reaches the replica at the
//! address its configuration names, and here that is an IP address, not a pod DNS name.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use shadowkeep::controller::{Context, key_manager, shadow};
use shadowkeep::core::keystore_sync::ReplicaAddress;
use shadowkeep::core::shadow::credentials::Record;
use shadowkeep::core::shadow::{ROTATE_PASSWORD_REQUESTED_AT, SYNC_REQUESTED_AT};
use shadowkeep_api::crd::{DesiredShadowState, KeyManager, Shadow, ShadowState, ShadowStatus};
use shadowkeep_api::password::Password;
use shadowkeep_api::pki::{Authority, Usage};
use shadowkeep_api::server_config::ServerConfig;
use shadowkeep_api::shadow::registration::{
    PasswordText, RefusalCode, RegistrationReply, ShadowRegistration,
};
use shadowkeep_api::shadow::verifiers::ShadowVerifiers;
use shadowkeep_api::shadow::wire::StateReport;
use shadowkeep_server::https::{connector_from_pem, http1_connect_as, send};
use tokio_rustls::TlsConnector;

use common::{NS, annotate, cluster, data, edit};

const KEY_MANAGER: &str = "tape-keys";
const SHADOW: &str = "tape-keys-dr";
const REPLICA_NAME: &str = "tape-keys-0.tape-keys-peers.default.svc";
/// The bound of every wait: far above what any step takes.
const BOUND: Duration = Duration::from_mins(3);

async fn secret(client: &kube::Client, name: &str) -> Secret {
    Api::<Secret>::namespaced(client.clone(), NS)
        .get(name)
        .await
        .unwrap()
}

async fn rendered(client: &kube::Client, name: &str) -> ServerConfig {
    let map = Api::<ConfigMap>::namespaced(client.clone(), NS)
        .get(name)
        .await
        .unwrap();
    ServerConfig::from_yaml(&map.data.unwrap()["server.yaml"]).unwrap()
}

/// A Secret's key projected into a file of a pod.
struct Mount {
    secret: &'static str,
    key: &'static str,
    file: PathBuf,
}

fn mount(secret: &'static str, key: &'static str, dir: &Path, file: &str) -> Mount {
    Mount {
        secret,
        key,
        file: dir.join(file),
    }
}

/// What the kubelet does for `mounts`: each file whose Secret value changed is replaced
/// at once, by a temporary file renamed over it.
async fn kubelet(client: &kube::Client, mounts: &[Mount]) {
    for m in mounts {
        let Some(secret) = Api::<Secret>::namespaced(client.clone(), NS)
            .get_opt(m.secret)
            .await
            .unwrap()
        else {
            continue;
        };
        let Some(value) = secret.data.as_ref().and_then(|d| d.get(m.key)) else {
            continue;
        };
        if std::fs::read(&m.file).ok().as_deref() == Some(value.0.as_slice()) {
            continue;
        }
        let mut temporary = m.file.clone().into_os_string();
        temporary.push(".kubelet");
        std::fs::write(&temporary, &value.0).unwrap();
        std::fs::rename(&temporary, &m.file).unwrap();
    }
}

/// Starts `config` in this process; the admin API's address.
async fn start(config: &ServerConfig) -> SocketAddr {
    let server = shadowkeep_server::Server::new(config).unwrap();
    let (admin, address) = server.bind_admin().await.unwrap().unwrap();
    let kmip = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    tokio::spawn(server.serve(kmip, Some(admin), std::future::pending()));
    address
}

/// An admin API, asked as the holder of one certificate.
struct Admin {
    address: String,
    server_name: String,
    connector: TlsConnector,
}

impl Admin {
    /// `address`, known by `server_name`, asked with the certificate in TLS Secret `tls`.
    async fn new(client: &kube::Client, address: SocketAddr, server_name: &str, tls: &str) -> Self {
        let tls = secret(client, tls).await;
        Self {
            address: address.to_string(),
            server_name: server_name.to_owned(),
            connector: connector_from_pem(
                &data(&tls, "ca.crt"),
                Some((&data(&tls, "tls.crt"), &data(&tls, "tls.key"))),
            )
            .unwrap(),
        }
    }

    async fn call(&self, method: hyper::Method, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        let mut sender = http1_connect_as(&self.address, &self.server_name, &self.connector)
            .await
            .unwrap();
        let (status, reply) = send(&mut sender, &self.address, method, path, body)
            .await
            .unwrap();
        (status.as_u16(), reply)
    }

    async fn get(&self, path: &str) -> Vec<u8> {
        let (status, body) = self.call(hyper::Method::GET, path, Vec::new()).await;
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        body
    }

    async fn state(&self) -> StateReport {
        serde_json::from_slice(&self.get("/v1/state").await).unwrap()
    }
}

/// Waits until `done` says so, at most [`BOUND`]; `what` names what was awaited.
async fn until<F, T>(what: &str, mut done: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + BOUND;
    loop {
        if let Some(t) = done().await {
            return t;
        }
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A context whose replica and shadow are the servers running here (`None`: nowhere).
async fn context(client: &kube::Client, servers: Option<(SocketAddr, SocketAddr)>) -> Arc<Context> {
    let mut ctx = Context::listed(client.clone(), "shadowkeep-test")
        .await
        .unwrap();
    match servers {
        Some((replica, own)) => {
            ctx.replica_resolver = Some(Arc::new(move |_| {
                vec![ReplicaAddress {
                    replica: "tape-keys-0".to_owned(),
                    address: replica.to_string(),
                    server_name: REPLICA_NAME.to_owned(),
                }]
            }));
            ctx.shadow_resolver = Some(Arc::new(move |ns, name| {
                Some(ReplicaAddress {
                    address: own.to_string(),
                    ..shadow::in_cluster(ns, name)
                })
            }));
        }
        None => ctx.shadow_resolver = Some(Arc::new(|_, _| None)),
    }
    Arc::new(ctx)
}

async fn reconcile_key_manager(client: &kube::Client, servers: Option<(SocketAddr, SocketAddr)>) {
    let km = Api::<KeyManager>::namespaced(client.clone(), NS)
        .get(KEY_MANAGER)
        .await
        .unwrap();
    key_manager::reconcile(Arc::new(km), context(client, servers).await)
        .await
        .unwrap();
}

/// Reconciles the Shadow, then does what the kubelet does; its status after.
async fn reconcile_shadow(
    client: &kube::Client,
    servers: Option<(SocketAddr, SocketAddr)>,
    mounts: &[Mount],
) -> ShadowStatus {
    let shadows = Api::<Shadow>::namespaced(client.clone(), NS);
    let s = shadows.get(SHADOW).await.unwrap();
    shadow::reconcile(Arc::new(s), context(client, servers).await)
        .await
        .unwrap();
    kubelet(client, mounts).await;
    shadows.get(SHADOW).await.unwrap().status.unwrap()
}

fn condition<'a>(status: &'a ShadowStatus, type_: &str) -> (&'a str, &'a str) {
    let c = status.conditions.iter().find(|c| c.type_ == type_).unwrap();
    (c.status.as_str(), c.reason.as_str())
}

async fn record(client: &kube::Client) -> Record {
    Record::from_bytes(&data(
        &secret(client, &format!("{SHADOW}-credentials")).await,
        "record",
    ))
    .unwrap()
}

/// The replica's `shadowkeep_shadow_registrations_total`, by outcome.
async fn registrations(replica: &Admin) -> Vec<(String, f64)> {
    let text = String::from_utf8(replica.get("/metrics").await).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("shadowkeep_shadow_registrations_total{outcome=\""))
        .map(|l| {
            let (outcome, rest) = l.split_once('"').unwrap();
            let value = rest.rsplit(' ').next().unwrap().parse().unwrap();
            (outcome.to_owned(), value)
        })
        .collect()
}

/// The outcomes of the replica's refused registrations that happened, with their counts.
async fn refused(replica: &Admin) -> Vec<(String, f64)> {
    registrations(replica)
        .await
        .into_iter()
        .filter(|(outcome, n)| outcome != "registered" && *n > 0.0)
        .collect()
}

/// The replica's mounts (its certificate is written once, see the module's doc) and
/// configuration.
async fn replica_pod(client: &kube::Client, dir: &Path) -> (Vec<Mount>, ServerConfig) {
    let ca = secret(client, "tape-keys-ca").await;
    let text = |k: &str| String::from_utf8(data(&ca, k)).unwrap();
    let leaf = Authority::from_pem(&text("ca.crt"), &text("ca.key"))
        .unwrap()
        .leaf(
            "tape-keys.default",
            &[
                shadowkeep::build::Inputs::of_key_manager(
                    &Api::<KeyManager>::namespaced(client.clone(), NS)
                        .get(KEY_MANAGER)
                        .await
                        .unwrap(),
                )
                .peer_identity(),
                REPLICA_NAME.to_owned(),
                "127.0.0.1".to_owned(),
            ],
            Usage::ServerAndClient,
        )
        .unwrap();
    std::fs::write(dir.join("tls.crt"), leaf.cert_pem.as_bytes()).unwrap();
    std::fs::write(dir.join("tls.key"), leaf.key_pem.as_bytes()).unwrap();
    let mounts = vec![
        mount("tape-keys-tls", "ca.crt", dir, "ca.crt"),
        mount("tape-keys-kek", "kek", dir, "kek"),
        mount("tape-keys-license", "license", dir, "license"),
        mount("tape-keys-keystore", "keystore", dir, "keystore"),
        mount(
            "tape-keys-shadow-verifiers",
            "verifiers.json",
            dir,
            "verifiers.json",
        ),
    ];
    kubelet(client, &mounts).await;
    let mut config = rendered(client, "tape-keys-config").await;
    config.kmip.listen = "127.0.0.1:0".parse().unwrap();
    config.tls.cert = dir.join("tls.crt");
    config.tls.key = dir.join("tls.key");
    config.tls.client_ca = dir.join("ca.crt");
    config.data_dir = dir.join("store");
    config.kek_file = dir.join("kek");
    assert!(config.keystore_file.is_some());
    config.keystore_file = Some(dir.join("keystore"));
    config.licence.as_mut().unwrap().file = dir.join("license");
    let replication = config.replication.as_mut().unwrap();
    assert!(replication.shadow_verifiers_file.is_some());
    replication.shadow_verifiers_file = Some(dir.join("verifiers.json"));
    replication.listen = "127.0.0.1:0".parse().unwrap();
    replication.client_cert = dir.join("tls.crt");
    replication.client_key = dir.join("tls.key");
    // The one peer rendered is this replica itself, which a pod leaves out by its name.
    replication.peers.clear();
    (mounts, config)
}

/// The shadow's mounts and configuration, its replica at `replica`.
async fn shadow_pod(
    client: &kube::Client,
    dir: &Path,
    replica: SocketAddr,
) -> (Vec<Mount>, ServerConfig) {
    let mounts = vec![
        mount("tape-keys-dr-tls", "tls.crt", dir, "tls.crt"),
        mount("tape-keys-dr-tls", "tls.key", dir, "tls.key"),
        mount("tape-keys-dr-tls", "ca.crt", dir, "ca.crt"),
        mount("tape-keys-kek", "kek", dir, "kek"),
        mount("tape-keys-dr-license", "license", dir, "license"),
        mount("tape-keys-dr-password", "password", dir, "password"),
    ];
    kubelet(client, &mounts).await;
    let mut config = rendered(client, "tape-keys-dr-config").await;
    config.kmip.listen = "127.0.0.1:0".parse().unwrap();
    config.tls.cert = dir.join("tls.crt");
    config.tls.key = dir.join("tls.key");
    config.tls.client_ca = dir.join("ca.crt");
    config.data_dir = dir.join("store");
    config.kek_file = dir.join("kek");
    config.licence.as_mut().unwrap().file = dir.join("license");
    let replication = config.replication.as_mut().unwrap();
    replication.listen = "127.0.0.1:0".parse().unwrap();
    replication.client_cert = dir.join("tls.crt");
    replication.client_key = dir.join("tls.key");
    let settings = config.shadow.as_mut().unwrap();
    assert_eq!(settings.replicas.len(), 1, "one replica rendered");
    settings.replicas[0].address = replica.to_string();
    settings.password_file = dir.join("password");
    // Polls every 200 ms rather than every 5 s, so that the test takes seconds.
    settings.poll_interval_ms = 200;
    (mounts, config)
}

#[tokio::test]
#[allow(clippy::too_many_lines)] // one story: registered, rotated, deactivated, synced
async fn a_shadow_rotates_its_password_against_running_servers_without_a_refusal() {
    let client = cluster(|km| {
        km.spec.replicas = 1;
        km.spec.durability.peer_acknowledgements = None;
    })
    .await;
    reconcile_key_manager(&client, None).await;
    reconcile_shadow(&client, None, &[]).await;

    let dir = std::env::temp_dir().join(format!("shadowkeep-rotation-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (replica_dir, shadow_dir) = (dir.join("replica"), dir.join("shadow"));
    std::fs::create_dir_all(&replica_dir).unwrap();
    std::fs::create_dir_all(&shadow_dir).unwrap();
    let (replica_mounts, config) = replica_pod(&client, &replica_dir).await;
    let replica_address = start(&config).await;
    let (shadow_mounts, config) = shadow_pod(&client, &shadow_dir, replica_address).await;
    let shadow_address = start(&config).await;
    let servers = Some((replica_address, shadow_address));
    let mounts: Vec<Mount> = replica_mounts.into_iter().chain(shadow_mounts).collect();
    let replica = Admin::new(&client, replica_address, REPLICA_NAME, "tape-keys-tls").await;
    let own = shadow::in_cluster(NS, SHADOW);
    let shadow = Admin::new(&client, shadow_address, &own.server_name, "tape-keys-tls").await;

    // 1. The shadow registers; its status says Ready and Shadowing.
    until("the shadow registered with the replica", || async {
        let body = replica.get("/v1/shadows").await;
        let reply: serde_json::Value = serde_json::from_slice(&body).unwrap();
        reply["shadows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == SHADOW)
            .then_some(())
    })
    .await;
    reconcile_key_manager(&client, servers).await;
    until("the Shadow is Ready and Shadowing", || async {
        let status = reconcile_shadow(&client, servers, &mounts).await;
        (condition(&status, "Ready").0 == "True" && status.state == Some(ShadowState::Shadowing))
            .then_some(())
    })
    .await;

    // 2. A requested rotation completes with no refusal, the shadow Shadowing throughout.
    let first = record(&client).await;
    let shadows = Api::<Shadow>::namespaced(client.clone(), NS);
    annotate(&shadows, SHADOW, ROTATE_PASSWORD_REQUESTED_AT, "rotate-1").await;
    let mut steps = 0;
    until("the rotation completed", || {
        steps += 1;
        let (client, mounts, shadow, replica) = (&client, &mounts, &shadow, &replica);
        async move {
            let status = reconcile_shadow(client, servers, mounts).await;
            let (_, reason) = condition(&status, "PasswordRotation");
            // Ready: the state is the one the shadow answered now, not the last one known.
            assert_eq!(
                (condition(&status, "Ready"), status.state),
                (("True", "Answering"), Some(ShadowState::Shadowing)),
                "the Shadow's status left Ready and Shadowing during the rotation ({reason})"
            );
            assert_eq!(
                shadow.state().await.shadow.unwrap().state,
                ShadowState::Shadowing,
                "the shadow left Shadowing during the rotation ({reason})"
            );
            let refused = refused(replica).await;
            assert!(
                refused.is_empty(),
                "registrations refused during the rotation ({reason}): {refused:?}"
            );
            (reason == "Rotated").then_some(())
        }
    })
    .await;
    assert!(steps > 1, "the rotation took more than one reconcile");
    let rotated = record(&client).await;
    assert!(rotated.rotation.is_none() && rotated.retiring.is_none());
    assert_ne!(
        rotated.current.id(),
        first.current.id(),
        "a new pair is in force"
    );
    let refused = refused(&replica).await;
    assert!(refused.is_empty(), "registrations refused: {refused:?}");
    let outcomes = registrations(&replica).await;
    let registered = outcomes
        .iter()
        .find(|(outcome, _)| outcome == "registered")
        .map_or(0.0, |(_, n)| *n);
    assert!(
        registered >= 2.0,
        "the shadow registered with both pairs ({registered})"
    );
    let verifiers = ShadowVerifiers::decode(&data(
        &secret(&client, "tape-keys-shadow-verifiers").await,
        "verifiers.json",
    ))
    .unwrap();
    let ids: Vec<_> = verifiers.shadows[SHADOW]
        .iter()
        .map(|v| v.id.clone().unwrap())
        .collect();
    assert_eq!(ids, [rotated.current.id()], "only the new pair is accepted");
    // The replica has read that file: it accepts the new id alone.
    until("the replica accepts the new pair alone", || async {
        let accepted: Vec<_> = replica.state().await.accepted_verifiers[SHADOW]
            .iter()
            .filter_map(|v| v.id.clone())
            .collect();
        (accepted == [rotated.current.id()]).then_some(())
    })
    .await;
    // The old password, presented as the shadow with its licence in force, is refused.
    let impostor = Admin::new(&client, replica_address, REPLICA_NAME, "tape-keys-dr-tls").await;
    let request = ShadowRegistration {
        licence: rotated.current.licence.clone(),
        password: PasswordText::new(&Password::parse(&first.current.password).unwrap()),
        instance_id: shadow.state().await.instance_id,
    };
    let (status, body) = impostor
        .call(
            hyper::Method::POST,
            "/v1/shadow/register",
            serde_json::to_vec(&request).unwrap(),
        )
        .await;
    let reply = RegistrationReply::from_json(&body).unwrap();
    assert!(
        status == 403
            && matches!(
                reply,
                RegistrationReply::Refused {
                    reason: RefusalCode::PasswordWrong,
                    ..
                }
            ),
        "the old password was not refused as password-wrong: {status}"
    );

    // 3. A requested sync is done and echoed; Inactive is pushed to the shadow, and the
    // status follows.
    annotate(&shadows, SHADOW, SYNC_REQUESTED_AT, "sync-1").await;
    let status = reconcile_shadow(&client, servers, &mounts).await;
    assert_eq!(status.last_handled_sync_at.as_deref(), Some("sync-1"));
    edit(&shadows, SHADOW, |s: &mut Shadow| {
        s.spec.state = DesiredShadowState::Inactive;
    })
    .await;
    reconcile_shadow(&client, servers, &mounts).await;
    until("the shadow is Inactive", || async {
        let report = shadow.state().await.shadow.unwrap();
        (report.state == ShadowState::Inactive && report.desired == DesiredShadowState::Inactive)
            .then_some(())
    })
    .await;
    until("the Shadow's status says Inactive", || async {
        let status = reconcile_shadow(&client, servers, &mounts).await;
        (status.state == Some(ShadowState::Inactive)).then_some(())
    })
    .await;
    // An Inactive shadow does not poll, so it refuses to sync now: the request stays
    // unhandled (asked again at each reconcile) rather than echoed as done.
    annotate(&shadows, SHADOW, SYNC_REQUESTED_AT, "sync-2").await;
    let status = reconcile_shadow(&client, servers, &mounts).await;
    assert_eq!(status.last_handled_sync_at.as_deref(), Some("sync-1"));
    std::fs::remove_dir_all(&dir).unwrap();
}
