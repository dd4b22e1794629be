//! Reconcile benchmark: N KeyManagers (one per namespace), each with a DriveTable of D
//! drives and a KeyGroup of 10 keys, reconciled against the in-memory API server
//! (kube-fake-client). Prints the total time, reconcile latency percentiles, and the
//! process's peak resident memory, as one JSON line.
//!
//! ```sh
//! cargo run --release -p shadowkeep --example reconcile_bench -- 1000 100
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use kube_fake_client::ClientBuilder;
use serde_json::json;
use shadowkeep::controller::{Context, key_manager, telemetry::Metrics};
use shadowkeep_api::crd::{DriveTable, KeyGroup, KeyManager, Shadow};

/// A `/proc/self/status` figure in KiB (`VmHWM` peak, `VmRSS` now).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    f64::from(u32::try_from(kib).unwrap_or(u32::MAX)) / 1024.0
}

/// The JSON size of every object the in-memory API server holds, inputs and children.
async fn stored_bytes(client: &kube::Client) -> Result<usize, Box<dyn std::error::Error>> {
    let mut stored_bytes = 0usize;
    macro_rules! size {
        ($t:ty) => {
            for o in Api::<$t>::all(client.clone())
                .list(&ListParams::default())
                .await?
            {
                stored_bytes += serde_json::to_vec(&o)?.len();
            }
        };
    }
    size!(KeyManager);
    size!(DriveTable);
    size!(KeyGroup);
    size!(k8s_openapi::api::core::v1::Secret);
    size!(k8s_openapi::api::core::v1::ConfigMap);
    size!(k8s_openapi::api::core::v1::Service);
    size!(k8s_openapi::api::apps::v1::StatefulSet);
    size!(k8s_openapi::api::policy::v1::PodDisruptionBudget);
    Ok(stored_bytes)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().map_or(Ok(1000), |a| a.parse())?;
    let drives: usize = args.next().map_or(Ok(100), |a| a.parse())?;
    let client = ClientBuilder::new()
        .with_resource::<KeyManager>()
        .with_resource::<DriveTable>()
        .with_resource::<KeyGroup>()
        .with_resource::<Shadow>()
        .build()
        .await?;
    let setup = Instant::now();
    for i in 0..count {
        let ns = format!("site-{i:04}");
        let km: KeyManager = serde_json::from_value(json!({
            "apiVersion": "shadowkeep.io/v1alpha1", "kind": "KeyManager",
            "metadata": {"name": "tape-keys", "namespace": ns},
            "spec": {"serverId": format!("tape-{i:04}"), "replicas": 2,
                     "placement": {"zones": ["a", "b"]}},
        }))?;
        Api::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &km)
            .await?;
        let list: Vec<_> = (0..drives)
            .map(|d| {
                json!({"serial": format!("S{i:04}{d:04}"), "keyGroup": "lto",
                            "certificateIdentity": format!("library-{i}.example.com")})
            })
            .collect();
        let table: DriveTable = serde_json::from_value(json!({
            "apiVersion": "shadowkeep.io/v1alpha1", "kind": "DriveTable",
            "metadata": {"name": "library", "namespace": ns},
            "spec": {"keyManagerRef": {"name": "tape-keys"}, "drives": list},
        }))?;
        Api::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &table)
            .await?;
        let group: KeyGroup = serde_json::from_value(json!({
            "apiVersion": "shadowkeep.io/v1alpha1", "kind": "KeyGroup",
            "metadata": {"name": "lto", "namespace": ns},
            "spec": {"keyManagerRef": {"name": "tape-keys"}, "keyCount": 10, "default": true},
        }))?;
        Api::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &group)
            .await?;
    }
    let setup = setup.elapsed();
    // What the in-memory API server holds before the operator does anything.
    let rss_after_setup = status_kib("VmRSS:");
    let (store, mut writer) = reflector::store();
    let all = Api::<KeyManager>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    for km in all.items.iter().cloned() {
        writer.apply_watcher_event(&Event::Apply(km));
    }
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics: Metrics::new(),
        namespace: None,
        key_managers: store,
        recorder: kube::runtime::events::Recorder::new(client.clone(), "shadowkeep-test".into()),
        server_image: None,
    });
    let started = Instant::now();
    // As the controller runs them: a few reconciles at a time.
    let mut latencies: Vec<Duration> = futures::stream::iter(all.items.into_iter())
        .map(|km| {
            let ctx = Arc::clone(&ctx);
            async move {
                let t = Instant::now();
                key_manager::reconcile(Arc::new(km), ctx)
                    .await
                    .map(|_| t.elapsed())
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let total = started.elapsed();
    let peak_kib = status_kib("VmHWM:");
    let stored_bytes = stored_bytes(&client).await?;
    latencies.sort();
    let pct = |p: usize| latencies[(latencies.len() - 1) * p / 100].as_secs_f64() * 1000.0;
    println!(
        "{{\"key_managers\":{count},\"drives_each\":{drives},\"setup_s\":{:.2},\"reconcile_total_s\":{:.2},\"reconciles_per_s\":{:.1},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"rss_after_setup_mib\":{:.1},\"peak_rss_mib\":{:.1},\"api_objects_mib\":{:.1}}}",
        setup.as_secs_f64(),
        total.as_secs_f64(),
        f64::from(u32::try_from(latencies.len())?) / total.as_secs_f64(),
        pct(50),
        pct(99),
        mib(rss_after_setup),
        mib(peak_kib),
        mib(u64::try_from(stored_bytes / 1024)?),
    );
    Ok(())
}
