//! `shadowkeep operator` as a process, against the in-memory API server served over HTTP
//! with watches: the quickstart converges, the operator then changes nothing while nothing
//! else does, an edited DriveTable reaches the rendered configuration through the watch, a
//! reconcile at rest writes only its status, a deleted child comes back, and SIGTERM stops
//! it cleanly.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

#[path = "../examples/reconcile_bench/apiserver.rs"]
mod apiserver;
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use shadowkeep_api::crd::{DriveTable, KeyManager};

use common::{NS, cluster};

/// Polls `check` until it holds, or fails after `limit` naming `what`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn operator_process_converges_settles_follows_watches_and_stops_on_sigterm() {
    let fake = cluster(|_| {}).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = apiserver::ApiServer::new(fake.clone());
    tokio::spawn(Arc::clone(&server).serve(listener));

    let dir = std::env::temp_dir().join(format!("operator-process-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{address}\"}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
        ),
    )
    .unwrap();
    let mut operator = tokio::process::Command::new(env!("CARGO_BIN_EXE_shadowkeep"))
        .args(["operator", "--listen", "127.0.0.1:0"])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let kms: Api<KeyManager> = Api::namespaced(fake.clone(), NS);
    eventually(Duration::from_mins(1), "the first full reconcile", || {
        let kms = kms.clone();
        async move {
            kms.get("tape-keys")
                .await
                .unwrap()
                .status
                .is_some_and(|s| s.keystore_digest.is_some())
        }
    })
    .await;

    // Everything went through the HTTP server.
    assert!(server.writes() >= server.changes() && server.changes() > 10);
    // Settled: with nothing else changing, the operator changes nothing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.changes();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        server.changes() - before,
        0,
        "the operator kept changing objects while nothing else did"
    );

    // An edit through the API server reaches the configuration by the watch alone. (The
    // test links both rustls providers: one must be chosen before a client is built.)
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = kube::Client::try_from(kube::Config::new(
        format!("http://{address}").parse().unwrap(),
    ))
    .unwrap();
    let tables: Api<DriveTable> = Api::namespaced(http.clone(), NS);
    let mut table = tables.get("library-a").await.unwrap();
    let mut drive = table.spec.drives[0].clone();
    drive.serial = "1013000999".to_owned();
    drive.wwn = None;
    table.spec.drives.push(drive);
    tables
        .replace("library-a", &PostParams::default(), &table)
        .await
        .unwrap();
    let configs: Api<ConfigMap> = Api::namespaced(fake.clone(), NS);
    eventually(
        Duration::from_secs(30),
        "the new drive in the configuration",
        || {
            let configs = configs.clone();
            async move {
                configs
                    .get("tape-keys-config")
                    .await
                    .unwrap()
                    .data
                    .unwrap_or_default()
                    .values()
                    .any(|v| v.contains("1013000999"))
            }
        },
    )
    .await;

    reconciles_at_rest_and_restores_children(&server, &http, &fake).await;

    let pid = operator.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), operator.wait())
        .await
        .expect("the operator did not stop within 20 s of SIGTERM")
        .unwrap();
    assert!(exit.success(), "the operator stopped with {exit}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Once settled: a reconcile asked for while nothing changed writes only the status that
/// says it ran, and a child deleted behind the operator's back is applied again.
async fn reconciles_at_rest_and_restores_children(
    server: &Arc<apiserver::ApiServer>,
    http: &kube::Client,
    fake: &kube::Client,
) {
    let kms: Api<KeyManager> = Api::namespaced(fake.clone(), NS);
    let configs: Api<ConfigMap> = Api::namespaced(fake.clone(), NS);
    let settled = |server: &Arc<apiserver::ApiServer>| {
        let server = Arc::clone(server);
        async move {
            let mut last = server.writes();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = server.writes();
                if now == last {
                    return now;
                }
                last = now;
            }
        }
    };
    let before = settled(server).await;
    let requests = server.requests();
    let http_kms: Api<KeyManager> = Api::namespaced(http.clone(), NS);
    common::annotate(
        &http_kms,
        "tape-keys",
        "shadowkeep.io/reconcile-requested-at",
        "at-rest",
    )
    .await;
    eventually(Duration::from_secs(30), "the requested reconcile", || {
        let kms = kms.clone();
        async move {
            kms.get("tape-keys")
                .await
                .unwrap()
                .status
                .and_then(|s| s.last_handled_reconcile_at)
                .as_deref()
                == Some("at-rest")
        }
    })
    .await;
    assert_eq!(
        settled(server).await - before,
        2,
        "the annotation and the status that echoes it, and no other write"
    );
    assert!(
        server.requests() - requests > 2,
        "the reconcile read what it works from"
    );

    // A child deleted behind the operator's back is applied again: the watch of the owned
    // kind says it is gone.
    Api::<ConfigMap>::namespaced(http.clone(), NS)
        .delete("tape-keys-config", &kube::api::DeleteParams::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "the configuration again", || {
        let configs = configs.clone();
        async move { configs.get_opt("tape-keys-config").await.unwrap().is_some() }
    })
    .await;
}
