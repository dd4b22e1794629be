//! Leader election over a Lease in an in-memory API, and the telemetry endpoints.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use kube_fake_client::ClientBuilder;
use shadowkeep::controller::lease::LeaderLease;
use shadowkeep::controller::telemetry::{self, Metrics};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[tokio::test]
async fn one_operator_leads_and_another_takes_over_an_expired_lease() {
    let client = ClientBuilder::new().build().await.unwrap();
    let a = LeaderLease::new(client.clone(), "ops", "shadowkeep-operator", "pod-a");
    let b = LeaderLease::new(client.clone(), "ops", "shadowkeep-operator", "pod-b");
    assert!(a.try_acquire().await.unwrap(), "a free lease is taken");
    assert!(!b.try_acquire().await.unwrap(), "a held lease is not");
    assert!(a.try_acquire().await.unwrap(), "the holder renews");

    // The holder stops renewing: its lease runs out and the other replica takes it.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "ops");
    let mut lease = leases.get("shadowkeep-operator").await.unwrap();
    let spec = lease.spec.as_mut().unwrap();
    spec.renew_time = Some(MicroTime(Timestamp::now() - Duration::from_mins(1)));
    leases
        .replace("shadowkeep-operator", &PostParams::default(), &lease)
        .await
        .unwrap();
    assert!(b.try_acquire().await.unwrap());
    let lease = leases
        .get("shadowkeep-operator")
        .await
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some("pod-b"));
    assert_eq!(lease.lease_transitions, Some(1));
    assert!(
        !a.try_acquire().await.unwrap(),
        "the old holder does not take it back"
    );
}

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn telemetry_serves_health_readiness_and_reconcile_metrics() {
    let metrics = Metrics::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(telemetry::serve(listener, metrics.clone()));
    assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
    telemetry::set_ready(&metrics);
    assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
    metrics.record("KeyManager", Duration::from_millis(12), None);
    metrics.record("KeyManager", Duration::from_millis(40), Some("kube"));
    let text = get(addr, "/metrics").await;
    assert!(
        text.contains("shadowkeep_operator_reconciles_total{kind=\"KeyManager\"} 2"),
        "{text}"
    );
    assert!(
        text.contains(
            "shadowkeep_operator_reconcile_failures_total{kind=\"KeyManager\",category=\"kube\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "shadowkeep_operator_reconcile_duration_seconds_count{kind=\"KeyManager\"} 2"
        ),
        "{text}"
    );
}
