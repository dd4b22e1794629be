//! The listeners under attack, with real server processes on 127.0.0.1: unwritable stdout
//! and stderr take nothing down.
//!
//! Waits are on conditions, with generous limits.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{V12, connector, free_port};
use shadowkeep_server::client::{self, KmipClient, batch_items, payload, request};
use shadowkeep_server::kmip::enums::operation;
use shadowkeep_server::kmip::tag;
use shadowkeep_server::ttlv::Item;
use tokio_rustls::TlsConnector;

/// How long any condition may take to come true on a busy 2-core machine.
const BOUND: Duration = Duration::from_secs(30);

/// Waits until `check` holds, at most [`BOUND`]; panics with `what` otherwise.
async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {BOUND:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait().unwrap()
}

/// Opens `/dev/full` for writing: every write fails with "no space left on device".
fn dev_full() -> Stdio {
    Stdio::from(
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap(),
    )
}

/// Creates a key and reads it back on a fresh connection.
async fn create_and_get(addr: SocketAddr, connector: &TlsConnector) -> bool {
    let Ok(mut c) = KmipClient::connect(addr, connector).await else {
        return false;
    };
    let Ok(response) = c
        .call(&request(
            V12,
            vec![(operation::CREATE, client::create_aes(256, vec![]))],
        ))
        .await
    else {
        return false;
    };
    let Some(uid) = payload(batch_items(&response)[0])
        .and_then(|p| p.child(tag::UNIQUE_IDENTIFIER))
        .and_then(Item::as_text)
        .map(str::to_owned)
    else {
        return false;
    };
    common::material(&mut c, &uid).await.is_some()
}

// Issue #12, item 13: with stderr unwritable the server panicked at start (exit 101) and
// dropped replies; stdout, where it announces its ports, must not matter either.
#[tokio::test]
async fn unwritable_stderr_and_stdout_take_nothing_down() {
    let certs = common::certificates("listeners-full");
    let connector = connector(&certs);
    // stderr unwritable, debug logging (a line per operation): the port is read from stdout.
    let mut child = Command::new(env!("CARGO_BIN_EXE_shadowkeep-server"))
        .args([
            "--dev",
            "--data-dir",
            certs.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(dev_full())
        .spawn()
        .unwrap();
    let kmip: SocketAddr = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("kmip listening on ").map(str::to_owned))
        .expect("the server starts with stderr unwritable")
        .parse()
        .unwrap();
    assert!(create_and_get(kmip, &connector).await);
    assert!(sigterm(&mut child).success());

    // Both unwritable: the port is chosen here, and the server is asked until it answers.
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shadowkeep-server"))
        .args([
            "--dev",
            "--data-dir",
            certs.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "debug")
        .stdout(dev_full())
        .stderr(dev_full())
        .spawn()
        .unwrap();
    let kmip = SocketAddr::from(([127, 0, 0, 1], port));
    eventually(
        "the server serves with stdout and stderr unwritable",
        || {
            let connector = connector.clone();
            async move { create_and_get(kmip, &connector).await }
        },
    )
    .await;
    assert!(child.try_wait().unwrap().is_none(), "still running");
    assert!(sigterm(&mut child).success());
}
