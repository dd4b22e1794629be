//! Reconcile benchmark: N KeyManagers (one per namespace), each with a DriveTable of D
//! drives and a KeyGroup of 10 keys, reconciled against the in-memory API server
//! (kube-fake-client). Prints one JSON line.
//!
//! In-process (the reconcile function called directly, a few at a time): total time,
//! latency percentiles, and the peak memory of the process, API server included.
//!
//! ```sh
//! cargo run --release -p shadowkeep --example reconcile_bench -- 1000 100
//! ```
//!
//! Out of process (`--operator BIN`): the in-memory API server is served over HTTP with
//! watches, `BIN operator` runs against it as its own process with a kubeconfig, and the
//! figures are the time until every KeyManager has a full status, the time until the
//! operator stops changing anything, the writes and changes it makes in the 10 s after that,
//! the requests and writes per second over 40 s at rest (every KeyManager is reconciled
//! periodically in that time: it keeps reading, and an estate at rest should cost next to
//! no write; writes also per 100 KeyManagers), and the operator process's own peak memory.
//!
//! ```sh
//! cargo build --release -p shadowkeep
//! cargo run --release -p shadowkeep --example reconcile_bench -- 1000 100 --operator target/release/shadowkeep
//! ```
//!
//! Arguments after a second `--` are passed to `BIN operator` (`-- --concurrency 8`).

mod apiserver;

/// How long the estate is watched at rest, after it settled: longer than the 30 s between
/// periodic reconciles, so that every KeyManager is reconciled at rest at least once.
const IDLE: Duration = Duration::from_secs(40);

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use kube::api::{Api, ListParams, PostParams};
use kube_fake_client::ClientBuilder;
use serde_json::json;
use shadowkeep::controller::{Context, key_manager};
use shadowkeep_api::crd::{DriveTable, KeyGroup, KeyManager, Shadow};

/// A `/proc/self/status` figure in KiB (`VmHWM` peak, `VmRSS` now).
fn status_kib(field: &str) -> u64 {
    process_kib("self", field)
}

/// A `/proc/PID/status` figure in KiB.
fn process_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
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
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // Everything after `--` goes to `BIN operator`.
    let extra = args
        .iter()
        .position(|a| a == "--")
        .map(|i| args.split_off(i).into_iter().skip(1).collect::<Vec<_>>())
        .unwrap_or_default();
    let operator = args
        .iter()
        .position(|a| a == "--operator")
        .map(|i| args.get(i + 1).cloned().ok_or("--operator needs a path"))
        .transpose()?;
    let mut numbers = args
        .iter()
        .take_while(|a| *a != "--operator")
        .map(|a| a.parse::<usize>());
    let count = numbers.next().unwrap_or(Ok(1000))?;
    let drives = numbers.next().unwrap_or(Ok(100))?;
    let setup = Instant::now();
    let client = seed(count, drives).await?;
    let setup = setup.elapsed();
    match operator {
        Some(bin) => out_of_process(&client, &bin, &extra, count, drives, setup).await,
        None => in_process(&client, count, drives, setup).await,
    }
}

/// A fresh in-memory API server holding `count` estates.
async fn seed(count: usize, drives: usize) -> Result<kube::Client, Box<dyn std::error::Error>> {
    let client = ClientBuilder::new()
        .with_resource::<KeyManager>()
        .with_resource::<DriveTable>()
        .with_resource::<KeyGroup>()
        .with_resource::<Shadow>()
        .build()
        .await?;
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
    Ok(client)
}

async fn in_process(
    client: &kube::Client,
    count: usize,
    drives: usize,
    setup: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    // What the in-memory API server holds before the operator does anything.
    let rss_after_setup = status_kib("VmRSS:");
    let all = Api::<KeyManager>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let ctx = Arc::new(Context::listed(client.clone(), "reconcile-bench").await?);
    let started = Instant::now();
    // As the controller runs them: a few reconciles at a time.
    let mut latencies: Vec<Duration> = futures::stream::iter(all.items)
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
    let stored_bytes = stored_bytes(client).await?;
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

/// Whether every KeyManager carries the status only a complete reconcile writes.
async fn all_reconciled(client: &kube::Client, count: usize) -> Result<bool, kube::Error> {
    let done = Api::<KeyManager>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|km| {
            km.status
                .as_ref()
                .is_some_and(|s| s.keystore_digest.is_some())
        })
        .count();
    Ok(done == count)
}

async fn out_of_process(
    client: &kube::Client,
    bin: &str,
    extra: &[String],
    count: usize,
    drives: usize,
    setup: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let server = apiserver::ApiServer::new(client.clone());
    tokio::spawn(Arc::clone(&server).serve(listener));
    let dir = std::env::temp_dir().join(format!("reconcile-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{address}\"}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake, namespace: default}}\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
        ),
    )?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(bin)
        .args(["operator", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or("the operator exited at once")?.to_string();
    let deadline = Duration::from_mins(10);
    let converged = loop {
        if let Some(exit) = child.try_wait()? {
            return Err(format!("the operator exited: {exit}").into());
        }
        if all_reconciled(client, count).await? {
            break started.elapsed();
        }
        if started.elapsed() > deadline {
            return Err(format!("not every KeyManager reconciled within {deadline:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let peak_converged = process_kib(&pid, "VmHWM:");
    // Every KeyManager has a status; the reconciles its new children set off may still be
    // running. Settled: no change for 5 s.
    let mut last = (server.changes(), Instant::now());
    let settled = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let changes = server.changes();
        if changes != last.0 {
            last = (changes, Instant::now());
        } else if last.1.elapsed() >= Duration::from_secs(5) {
            break last.1 - started;
        }
        if started.elapsed() > deadline {
            return Err("the operator kept writing".into());
        }
    };
    // Steady state: watches open, periodic reconciles finding everything as they left it,
    // nothing changed.
    let (requests, writes, changes) = (server.requests(), server.writes(), server.changes());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle_writes = server.writes() - writes;
    let idle_changes = server.changes() - changes;
    tokio::time::sleep(IDLE.saturating_sub(Duration::from_secs(10))).await;
    let idle_requests = server.requests() - requests;
    let all_idle_writes = server.writes() - writes;
    let per_s = |n: u64| f64::from(u32::try_from(n).unwrap_or(u32::MAX)) / IDLE.as_secs_f64();
    let per_100 = f64::from(u32::try_from(count).unwrap_or(u32::MAX)) / 100.0;
    let rss_idle = process_kib(&pid, "VmRSS:");
    let peak = process_kib(&pid, "VmHWM:");
    // SIGTERM, as Kubernetes stops it (and as a profiler wrapping it needs to write its
    // report); SIGKILL if it does not stop.
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()?;
    if tokio::time::timeout(Duration::from_mins(1), child.wait())
        .await
        .is_err()
    {
        child.kill().await?;
    }
    std::fs::remove_dir_all(&dir)?;
    println!(
        "{{\"key_managers\":{count},\"drives_each\":{drives},\"setup_s\":{:.2},\"converged_s\":{:.2},\"settled_s\":{:.2},\"operator_peak_rss_mib\":{:.1},\"operator_peak_rss_at_convergence_mib\":{:.1},\"operator_idle_rss_mib\":{:.1},\"writes_in_10s_after\":{idle_writes},\"changes_in_10s_after\":{idle_changes},\"idle_requests_per_s\":{:.1},\"idle_writes_per_s\":{:.2},\"idle_writes_per_s_per_100_key_managers\":{:.2}}}",
        setup.as_secs_f64(),
        converged.as_secs_f64(),
        settled.as_secs_f64(),
        mib(peak),
        mib(peak_converged),
        mib(rss_idle),
        per_s(idle_requests),
        per_s(all_idle_writes),
        per_s(all_idle_writes) / per_100,
    );
    Ok(())
}
