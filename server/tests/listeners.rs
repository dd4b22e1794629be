//! The listeners under attack, with real server processes on 127.0.0.1: the admin API
//! judges a caller before it reads a body, bounds and times out its connections and backs
//! off when it cannot accept; the KMIP listener keeps serving clients with certificates
//! while idle TCP connections pile up; a merge says what it did not store; unwritable
//! stdout and stderr take nothing down.
//!
//! Bounds are set small in each test's configuration so the tests run quickly; waits are
//! on conditions, with generous limits.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Proc, V12, connector, free_port, peer_connector};
use rustls_pki_types::ServerName;
use shadowkeep_api::keystore::{Algorithm, Kek, Key, Keystore};
use shadowkeep_server::client::{self, KmipClient, batch_items, payload, request};
use shadowkeep_server::https::{self, ClientFiles};
use shadowkeep_server::kmip::enums::operation;
use shadowkeep_server::kmip::tag;
use shadowkeep_server::ttlv::Item;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How long any condition may take to come true on a busy 2-core machine.
const BOUND: Duration = Duration::from_secs(30);

/// The server under attack: one with the admin API, from a configuration written for the
/// test.
struct Target {
    proc: Proc,
    certs: PathBuf,
    admin: SocketAddr,
}

impl Target {
    /// `kmip` is extra YAML inside the `kmip:` mapping, e.g. `, maxConnections: 8`.
    fn start(name: &str, kmip: &str) -> Self {
        let certs = common::certificates(&format!("listeners-{name}"));
        let path = write_config(&certs, kmip, "127.0.0.1:0");
        let proc = Proc::start(&path);
        let admin = proc.admin.unwrap();
        Self { proc, certs, admin }
    }

    fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    fn anonymous(&self) -> TlsConnector {
        anonymous(&self.certs)
    }

    async fn https(
        &self,
        connector: &TlsConnector,
        method: hyper::Method,
        path: &str,
        body: Vec<u8>,
    ) -> (hyper::StatusCode, String) {
        let (status, body) = https::https(&self.admin.to_string(), connector, method, path, body)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn metrics(&self) -> String {
        let (status, text) = self
            .https(&self.anonymous(), hyper::Method::GET, "/metrics", vec![])
            .await;
        assert_eq!(status, hyper::StatusCode::OK);
        text
    }

    /// A Locate and a Get on a fresh KMIP connection with the client certificate.
    async fn kmip_serves(&self) -> bool {
        kmip_serves(self.proc.kmip, &connector(&self.certs)).await
    }
}

/// Writes a configuration with the admin API on a free port; `kmip_listen` is where KMIP
/// listens.
fn write_config(certs: &Path, kmip: &str, kmip_listen: &str) -> PathBuf {
    let d = certs.display();
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let text = format!(
        "serverId: listeners\n\
         kmip: {{listen: \"{kmip_listen}\"{kmip}}}\n\
         tls: {{cert: {d}/server.pem, key: {d}/server-key.pem, clientCa: {d}/ca.pem}}\n\
         dataDir: {d}/store\n\
         kekFile: {d}/kek.bin\n\
         drives: {{acceptUnknown: true}}\n\
         replication:\n  listen: \"{admin}\"\n  clientCert: {d}/peer.pem\n  clientKey: {d}/peer-key.pem\n  allowedIdentities: [shadowkeep-dev-peer]\n"
    );
    let path = certs.join("server.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn anonymous(certs: &Path) -> TlsConnector {
    https::connector(&ClientFiles {
        ca: certs.join("ca.pem"),
        cert: None,
        key: None,
    })
    .unwrap()
}

/// Whether a client with a certificate gets a Locate answered on a fresh connection.
async fn kmip_serves(addr: SocketAddr, connector: &TlsConnector) -> bool {
    let Ok(mut c) = KmipClient::connect(addr, connector).await else {
        return false;
    };
    c.call(&request(V12, vec![(operation::LOCATE, vec![])]))
        .await
        .is_ok_and(|r| batch_items(&r).len() == 1)
}

/// A TLS connection that has completed its handshake.
async fn tls(addr: SocketAddr, connector: &TlsConnector) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut stream = connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .unwrap();
    stream.flush().await.unwrap();
    stream
}

/// Reads an HTTP response head (up to the blank line), or what came before the end of the
/// stream.
async fn response_head(stream: &mut (impl AsyncRead + Unpin)) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Whether the peer has closed `stream` (end of stream or an error on read).
async fn closed(stream: &mut (impl AsyncRead + Unpin)) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
    }
}

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

/// File descriptors the process holds.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A server process started here rather than by [`Proc`], killed when dropped, so that a
/// failed assertion leaves no process behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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

// Issue #12, item 6: a 250 MB POST without a client certificate was answered 403 only
// after the whole body had been buffered.
#[tokio::test]
async fn a_caller_is_judged_before_its_body_is_read() {
    let server = Target::start("body", "");
    let kmip_client = connector(&server.certs);
    // Headers announcing 250 MB, and no body at all: the answer must not wait for it.
    for connector in [server.anonymous(), kmip_client] {
        let mut stream = tls(server.admin, &connector).await;
        stream
            .write_all(b"POST /v1/keystore/merge HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 262144000\r\n\r\n")
            .await
            .unwrap();
        stream.flush().await.unwrap();
        let head = tokio::time::timeout(BOUND, response_head(&mut stream))
            .await
            .expect("the refusal comes before the body");
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    }
    // A peer may send a whole keystore, but not more than the limit, and it learns that
    // before sending it.
    let mut stream = tls(server.admin, &peer_connector(&server.certs)).await;
    stream
        .write_all(b"POST /v1/keystore/merge HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 314572800\r\n\r\n")
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let head = tokio::time::timeout(BOUND, response_head(&mut stream))
        .await
        .expect("the refusal comes before the body");
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"shadowkeep_refusals_total{listener="admin",reason="forbidden"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"shadowkeep_refusals_total{listener="admin",reason="body_too_large"} 1"#),
        "{metrics}"
    );
}

// Issue #12, item 7: admin connections had no idle timeout.
#[tokio::test]
async fn silent_admin_connections_are_closed() {
    let server = Target::start("idle", ", idleTimeoutSecs: 2");
    // A connection that never sends a request.
    let mut silent = tls(server.admin, &server.anonymous()).await;
    // One that sends a request, reads the answer and then stays silent.
    let mut kept = tls(server.admin, &server.anonymous()).await;
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    kept.flush().await.unwrap();
    let head = response_head(&mut kept).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    for stream in [&mut silent, &mut kept] {
        tokio::time::timeout(BOUND, closed(stream))
            .await
            .expect("the server closes a silent connection");
    }
}

// A peer's body that stalls is not waited for past the idle timeout.
#[tokio::test]
async fn a_stalled_body_is_refused_after_the_idle_timeout() {
    let server = Target::start("stall", ", idleTimeoutSecs: 2");
    let mut stream = tls(server.admin, &peer_connector(&server.certs)).await;
    stream
        .write_all(b"POST /v1/keystore/merge HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 1000\r\n\r\n{\"format\"")
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let head = tokio::time::timeout(BOUND, response_head(&mut stream))
        .await
        .expect("the stalled request is answered");
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"shadowkeep_refusals_total{listener="admin",reason="body_timeout"} 1"#),
        "{metrics}"
    );
}

// Issue #12, item 7: admin connections had no limit; idle ones could use up the file
// descriptors.
#[tokio::test]
async fn admin_connections_are_bounded_and_peers_still_served() {
    let server = Target::start("crowd", "");
    let before = open_fds(server.pid());
    let anonymous = server.anonymous();
    let mut crowd = Vec::new();
    for _ in 0..150 {
        crowd.push(tls(server.admin, &anonymous).await);
    }
    let pid = server.pid();
    eventually(
        "the server holds at most 64 admin connections",
        || async move { open_fds(pid) <= before + 64 },
    )
    .await;
    let (status, _) = server
        .https(
            &peer_connector(&server.certs),
            hyper::Method::GET,
            "/v1/keystore/digest",
            vec![],
        )
        .await;
    assert_eq!(status, hyper::StatusCode::OK, "a peer is served");
    let (status, _) = server
        .https(&anonymous, hyper::Method::GET, "/healthz", vec![])
        .await;
    assert_eq!(status, hyper::StatusCode::OK, "a probe is served");
    assert!(server.kmip_serves().await);
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"shadowkeep_refusals_total{listener="admin",reason="evicted"}"#),
        "{metrics}"
    );
    drop(crowd);
}

// Issue #12, item 7: out of file descriptors, the admin accept loop spun and logged
// millions of lines. The server runs with 32 descriptors; connections that never
// handshake fill them until the handshake timeout frees them.
#[tokio::test]
async fn an_accept_loop_out_of_file_descriptors_backs_off_and_recovers() {
    let certs = common::certificates("listeners-emfile");
    let config = write_config(&certs, "", "127.0.0.1:0");
    let stderr_path = certs.join("stderr.log");
    let mut child = Running(
        Command::new("sh")
            .args([
                "-c",
                "ulimit -n 32 && exec \"$0\" --config \"$1\"",
                env!("CARGO_BIN_EXE_shadowkeep-server"),
                config.to_str().unwrap(),
            ])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let admin: SocketAddr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("admin listening on ").map(str::to_owned))
        .expect("the server starts with 32 descriptors")
        .parse()
        .unwrap();
    let mut crowd = Vec::new();
    for _ in 0..60 {
        crowd.push(TcpStream::connect(admin).await.unwrap());
    }
    let log = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let count = |text: &str, what: &str| text.lines().filter(|l| l.contains(what)).count();
    eventually("the server accepts again once descriptors are free", || {
        let text = log();
        let failures = count(&text, "failed to accept");
        assert!(failures < 1000, "{failures} lines about failing to accept");
        async move { count(&text, "accepting connections again") > 0 }
    })
    .await;
    let text = log();
    let (failures, recoveries) = (
        count(&text, "failed to accept"),
        count(&text, "accepting connections again"),
    );
    assert!(
        failures <= recoveries + 1,
        "one warning per run of failures: {failures} warnings, {recoveries} recoveries"
    );
    drop(crowd);
}

// Replicas keep their admin connections to each other open between pushes; the admin
// API now closes them after the idle timeout, and a Create after that must still get its
// peer's acknowledgement.
#[tokio::test]
async fn replicas_acknowledge_creates_across_the_admin_idle_timeout() {
    let certs = common::certificates("listeners-peers");
    let d = certs.display();
    let admins: Vec<SocketAddr> = (0..2)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let procs: Vec<Proc> = (0..2)
        .map(|i| {
            let text = format!(
                "serverId: mirror\n\
                 kmip: {{listen: \"127.0.0.1:0\", idleTimeoutSecs: 1}}\n\
                 tls: {{cert: {d}/server.pem, key: {d}/server-key.pem, clientCa: {d}/ca.pem}}\n\
                 dataDir: {d}/r{i}\n\
                 kekFile: {d}/kek.bin\n\
                 drives: {{acceptUnknown: true}}\n\
                 replication:\n  listen: \"{}\"\n  clientCert: {d}/peer.pem\n  clientKey: {d}/peer-key.pem\n  allowedIdentities: [shadowkeep-dev-peer]\n  peerAcknowledgements: 1\n  ackTimeoutMs: 5000\n  peers:\n    - {{name: r0, address: \"{}\"}}\n    - {{name: r1, address: \"{}\"}}\n",
                admins[i], admins[0], admins[1]
            );
            let path = certs.join(format!("r{i}.yaml"));
            std::fs::write(&path, text).unwrap();
            Proc::start_as(&path, Some(&format!("r{i}")))
        })
        .collect();
    let connector = connector(&certs);
    for _ in 0..3 {
        let mut c = KmipClient::connect(procs[0].kmip, &connector)
            .await
            .unwrap();
        let response = c
            .call(&request(
                V12,
                vec![(operation::CREATE, client::create_aes(256, vec![]))],
            ))
            .await
            .unwrap();
        assert_eq!(
            client::status(batch_items(&response)[0]),
            Some(0),
            "acknowledged by the peer"
        );
        // Long enough for the peer to close the pusher's connection as idle.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

// Issue #12, item 8: the KMIP connection slot was taken before the TLS handshake and held
// up to the idle timeout, so idle TCP connections locked out every real client.
#[tokio::test]
async fn idle_tcp_connections_do_not_lock_kmip_clients_out() {
    let server = Target::start("kmip-crowd", ", maxConnections: 8");
    let before = open_fds(server.pid());
    let mut crowd = Vec::new();
    for _ in 0..40 {
        crowd.push(TcpStream::connect(server.proc.kmip).await.unwrap());
    }
    let answered = tokio::time::timeout(BOUND, server.kmip_serves()).await;
    assert_eq!(answered, Ok(true), "a client with a certificate is served");
    let pid = server.pid();
    eventually(
        "the server holds at most 8 KMIP connections",
        || async move { open_fds(pid) <= before + 8 },
    )
    .await;
    drop(crowd);
}

// Slots come free by making room, not by waiting out the handshake timeout; clients that
// have authenticated keep theirs.
#[tokio::test]
async fn unauthenticated_connections_make_room_and_authenticated_ones_keep_their_slots() {
    let server = Target::start(
        "kmip-reserve",
        ", maxConnections: 8, maxHandshakes: 4, handshakeTimeoutSecs: 600",
    );
    let connector = connector(&server.certs);
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = KmipClient::connect(server.proc.kmip, &connector)
            .await
            .unwrap();
        c.call(&request(V12, vec![(operation::LOCATE, vec![])]))
            .await
            .unwrap();
        held.push(c);
    }
    let mut crowd = Vec::new();
    for _ in 0..40 {
        crowd.push(TcpStream::connect(server.proc.kmip).await.unwrap());
    }
    for _ in 0..4 {
        let answered = tokio::time::timeout(BOUND, server.kmip_serves()).await;
        assert_eq!(answered, Ok(true), "a client with a certificate is served");
    }
    for c in &mut held {
        let answer = c
            .call(&request(V12, vec![(operation::LOCATE, vec![])]))
            .await;
        assert!(answer.is_ok(), "an authenticated connection keeps its slot");
    }
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"shadowkeep_refusals_total{listener="kmip",reason="evicted"}"#),
        "{metrics}"
    );
    drop(crowd);
}

// Issue #12, item 12: a merge answered "stored" for a record whose id was held with other
// material, and stored records whose material does not open under the server's KEK.
#[tokio::test]
async fn a_merge_answers_what_it_did_not_store() {
    let server = Target::start("merge", "");
    let peer = peer_connector(&server.certs);
    let kek = Kek::from_bytes(&std::fs::read(server.certs.join("kek.bin")).unwrap()).unwrap();
    let now = jiff::Timestamp::now();
    let held = Key::generate(&kek, "TAPE0001", Algorithm::Aes, 256, now).unwrap();
    let merge = async |keys: &[&Key]| {
        let mut keystore = Keystore::new();
        for key in keys {
            keystore.insert((*key).clone()).unwrap();
        }
        let (status, body) = server
            .https(
                &peer,
                hyper::Method::POST,
                "/v1/keystore/merge",
                keystore.to_bytes().unwrap(),
            )
            .await;
        let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
        (status, reply, body)
    };
    let (status, reply, _) = merge(&[&held]).await;
    assert_eq!(status, hyper::StatusCode::OK);
    assert_eq!(
        reply,
        serde_json::json!({"received": 1, "stored": 1, "conflicts": [], "refused": []})
    );

    // The same id with other material (sealed under the right KEK): a conflict.
    let mut rival = held.clone();
    rival.name = "TAPE0002".to_owned();
    rival.material = kek.seal(&held.id, &[7u8; 32]).unwrap();
    // Material sealed under another KEK: refused.
    let foreign = Key::generate(&Kek::generate(), "TAPE0003", Algorithm::Aes, 256, now).unwrap();
    let fresh = Key::generate(&kek, "TAPE0004", Algorithm::Aes, 256, now).unwrap();
    let (status, reply, body) = merge(&[&rival, &foreign, &fresh]).await;
    assert_eq!(status, hyper::StatusCode::CONFLICT, "{body}");
    assert_eq!(reply["received"], 3, "{body}");
    assert_eq!(reply["stored"], 1, "{body}");
    assert_eq!(
        reply["conflicts"],
        serde_json::json!([held.id.as_str()]),
        "{body}"
    );
    let refused = reply["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{body}");
    assert_eq!(refused[0]["id"], foreign.id.as_str(), "{body}");
    assert!(
        refused[0]["reason"]
            .as_str()
            .unwrap()
            .contains("does not open"),
        "{body}"
    );
    assert!(
        !body.contains("ciphertext") && !body.contains("nonce"),
        "{body}"
    );

    // Target: the key held before, with its own material, and the new one; never the
    // record that does not open.
    let mut c = KmipClient::connect(server.proc.kmip, &connector(&server.certs))
        .await
        .unwrap();
    let mut ids = common::all_ids(server.proc.kmip, &connector(&server.certs)).await;
    ids.sort();
    let mut expected = vec![held.id.to_string(), fresh.id.to_string()];
    expected.sort();
    assert_eq!(ids, expected);
    let material = common::material(&mut c, held.id.as_str()).await.unwrap();
    assert_eq!(
        material,
        kek.open(&held.id, &held.material).unwrap().to_vec()
    );
    let metrics = server.metrics().await;
    for outcome in ["stored\"} 2", "conflict\"} 1", "refused\"} 1"] {
        assert!(
            metrics.contains(&format!(
                "shadowkeep_merge_records_total{{outcome=\"{outcome}"
            )),
            "{metrics}"
        );
    }
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
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_shadowkeep-server"))
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
            .unwrap(),
    );
    let kmip: SocketAddr = BufReader::new(child.0.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("kmip listening on ").map(str::to_owned))
        .expect("the server starts with stderr unwritable")
        .parse()
        .unwrap();
    assert!(create_and_get(kmip, &connector).await);
    assert!(sigterm(&mut child.0).success());

    // Both unwritable: the port is chosen here, and the server is asked until it answers.
    let port = free_port();
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_shadowkeep-server"))
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
            .unwrap(),
    );
    let kmip = SocketAddr::from(([127, 0, 0, 1], port));
    eventually(
        "the server serves with stdout and stderr unwritable",
        || {
            let connector = connector.clone();
            async move { create_and_get(kmip, &connector).await }
        },
    )
    .await;
    assert!(child.0.try_wait().unwrap().is_none(), "still running");
    assert!(sigterm(&mut child.0).success());
}
