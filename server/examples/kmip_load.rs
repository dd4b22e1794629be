//! A KMIP load generator: N connections issue Get (or Create) requests back to back for a
//! fixed time, and it prints throughput and latency percentiles as one JSON line.
//!
//! ```sh
//! cargo run --release -p shadowkeep-server --example kmip_load -- \
//!     --addr 127.0.0.1:5696 --certs DIR --op get --connections 8 --seconds 5
//! ```
//! `DIR` holds `ca.pem`, `client.pem` and `client-key.pem` (what `--dev` writes).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use shadowkeep_server::client::{
    self, KmipClient, batch_items, create_aes, payload, request, status, uids,
};
use shadowkeep_server::https::{self, ClientFiles};
use shadowkeep_server::kmip::enums::operation;
use shadowkeep_server::kmip::tag;
use shadowkeep_server::ttlv::Item;

struct Args {
    addr: SocketAddr,
    certs: PathBuf,
    op: String,
    connections: usize,
    seconds: u64,
    version: (i32, i32),
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 5696)),
        certs: PathBuf::from("."),
        op: "get".to_owned(),
        connections: 1,
        seconds: 5,
        version: (1, 2),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--addr" => args.addr = value.parse().map_err(|e| format!("--addr: {e}"))?,
            "--certs" => args.certs = value.into(),
            "--op" => args.op = value,
            "--connections" => {
                args.connections = value.parse().map_err(|e| format!("--connections: {e}"))?;
            }
            "--seconds" => args.seconds = value.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--version" => {
                let (a, b) = value.split_once('.').ok_or("--version: like 1.2")?;
                args.version = (
                    a.parse().map_err(|_| "--version")?,
                    b.parse().map_err(|_| "--version")?,
                );
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if !matches!(args.op.as_str(), "get" | "create") {
        return Err("--op is get or create".to_owned());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kmip_load: {e}");
            return ExitCode::from(2);
        }
    };
    let Ok(runtime) = tokio::runtime::Runtime::new() else {
        eprintln!("kmip_load: no runtime");
        return ExitCode::FAILURE;
    };
    match runtime.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kmip_load: {e}");
            ExitCode::FAILURE
        }
    }
}

fn create_request(version: (i32, i32)) -> Item {
    // PyKMIP's server insists on a usage mask: Encrypt | Decrypt.
    let mask = client::attribute(
        "Cryptographic Usage Mask",
        Item::integer(tag::ATTRIBUTE_VALUE, 0x0C),
    );
    request(
        version,
        vec![(operation::CREATE, create_aes(256, vec![mask]))],
    )
}

async fn run(args: &Args) -> Result<(), String> {
    let connector = https::connector(&ClientFiles::dev(&args.certs)).map_err(|e| e.to_string())?;
    let mut setup = KmipClient::connect(args.addr, &connector)
        .await
        .map_err(|e| e.to_string())?;
    let response = setup
        .call(&create_request(args.version))
        .await
        .map_err(|e| e.to_string())?;
    let item = batch_items(&response)
        .first()
        .copied()
        .ok_or("no batch item in the Create response")?;
    if status(item) != Some(0) {
        return Err(format!("setup Create failed: {:?}", client::message(item)));
    }
    let uid = uids(payload(item).ok_or("no payload")?)
        .pop()
        .ok_or("no uid")?;
    let message = match args.op.as_str() {
        "get" => request(
            args.version,
            vec![(
                operation::GET,
                vec![Item::text(tag::UNIQUE_IDENTIFIER, uid)],
            )],
        ),
        _ => create_request(args.version),
    };
    let bytes = shadowkeep_server::ttlv::encode(&message);
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let connector = connector.clone();
        let bytes = bytes.clone();
        let addr = args.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = KmipClient::connect(addr, &connector)
                .await
                .map_err(|e| e.to_string())?;
            let mut latencies = Vec::new();
            let mut failures = 0u64;
            while Instant::now() < deadline {
                let started = Instant::now();
                let response = c.send_raw(&bytes).await.map_err(|e| e.to_string())?;
                latencies.push(started.elapsed());
                if batch_items(&response).first().and_then(|i| status(i)) != Some(0) {
                    failures += 1;
                }
            }
            Ok::<_, String>((latencies, failures))
        }));
    }
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut failures = 0;
    for task in tasks {
        let (l, f) = task.await.map_err(|e| e.to_string())??;
        latencies.extend(l);
        failures += f;
    }
    let elapsed = started
        .elapsed()
        .as_secs_f64()
        .max(f64::from(u32::try_from(args.seconds).unwrap_or(1)));
    latencies.sort();
    let pct = |p: usize| {
        latencies
            .get(latencies.len().saturating_sub(1) * p / 100)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let n = latencies.len();
    println!(
        "{{\"op\":\"{}\",\"connections\":{},\"requests\":{n},\"failures\":{failures},\"ops_per_sec\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}",
        args.op,
        args.connections,
        f64::from(u32::try_from(n).unwrap_or(u32::MAX)) / elapsed,
        pct(50),
        pct(99),
    );
    Ok(())
}
