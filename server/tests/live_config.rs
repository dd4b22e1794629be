//! Live configuration with real server processes on 127.0.0.1: a drive added to the
//! configuration file, or pushed to `PUT /v1/configuration`, is admitted by the same
//! process; a malformed, oversized or invalid configuration changes nothing, is reported
//! and the server serves on; a change that needs a restart is reported and not applied,
//! while its live part is.
//!
//! Waits are on conditions, with generous bounds.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Proc, V12, connector, free_port, peer_connector};
use shadowkeep_api::server_config::{
    ConfigurationReport, MAX_CONFIG_BYTES, ServerConfig, live_digest,
};
use shadowkeep_api::shadow::wire::StateReport;
use shadowkeep_server::client::{KmipClient, batch_items, reason, request, status};
use shadowkeep_server::https;
use shadowkeep_server::kmip::enums::{operation, result_reason};
use tokio_rustls::TlsConnector;

/// How long any condition may take to come true on a busy 2-core machine.
const BOUND: Duration = Duration::from_secs(30);

/// The development client certificate's identity.
const CLIENT: &str = "shadowkeep-dev-client";

/// A drive table naming another library only: the development client is refused.
const OTHERS_ONLY: &str =
    "drives:\n  drives:\n  - {serial: LIB9, certificateIdentity: another-library}\n";

/// The same table with the development client's library added.
fn with_client() -> String {
    format!("{OTHERS_ONLY}  - {{serial: LIB1, certificateIdentity: {CLIENT}}}\n")
}

/// One server with the admin API, started from a configuration file it watches.
struct Live {
    proc: Proc,
    certs: PathBuf,
    admin: SocketAddr,
    /// The configuration but its drive policy.
    base: String,
}

impl Live {
    fn start(name: &str, drives: &str) -> Self {
        let certs = common::certificates(&format!("live-{name}"));
        let d = certs.display();
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let base = format!(
            "serverId: live\n\
             kmip: {{listen: \"127.0.0.1:0\"}}\n\
             tls: {{cert: {d}/server.pem, key: {d}/server-key.pem, clientCa: {d}/ca.pem}}\n\
             dataDir: {d}/store\n\
             kekFile: {d}/kek.bin\n\
             replication:\n  listen: \"{admin}\"\n  clientCert: {d}/peer.pem\n  clientKey: {d}/peer-key.pem\n  allowedIdentities: [shadowkeep-dev-peer]\n"
        );
        let path = certs.join("server.yaml");
        std::fs::write(&path, format!("{base}{drives}")).unwrap();
        let proc = Proc::start(&path);
        Self {
            proc,
            certs,
            admin,
            base,
        }
    }

    fn path(&self) -> &Path {
        &self.proc.config
    }

    /// Replaces the file as the kubelet does: a new file renamed over the old one.
    fn rewrite(&self, text: &str) {
        let next = self.certs.join("server.yaml.next");
        std::fs::write(&next, text).unwrap();
        std::fs::rename(&next, self.path()).unwrap();
    }

    async fn admitted(&self) -> bool {
        admitted(self.proc.kmip, &connector(&self.certs)).await
    }

    async fn state(&self) -> ConfigurationReport {
        let (code, body) = https::https(
            &self.admin.to_string(),
            &peer_connector(&self.certs),
            hyper::Method::GET,
            "/v1/state",
            Vec::new(),
        )
        .await
        .unwrap();
        assert_eq!(code, hyper::StatusCode::OK);
        let report: StateReport = serde_json::from_slice(&body).unwrap();
        report.configuration.unwrap()
    }

    async fn push(&self, connector: &TlsConnector, body: Vec<u8>) -> (hyper::StatusCode, String) {
        let (code, body) = https::https(
            &self.admin.to_string(),
            connector,
            hyper::Method::PUT,
            "/v1/configuration",
            body,
        )
        .await
        .unwrap();
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    /// The process is the one started: it never exited (a restart would be a new child).
    fn same_process(&mut self, pid: u32) {
        assert!(self.proc.alive(), "the server exited");
        assert_eq!(self.proc.child.id(), pid);
    }
}

/// Whether the development client gets a Locate answered; `false` when the drive table
/// refuses it (permission denied).
async fn admitted(addr: SocketAddr, connector: &TlsConnector) -> bool {
    let mut c = KmipClient::connect(addr, connector).await.unwrap();
    let response = c
        .call(&request(V12, vec![(operation::LOCATE, vec![])]))
        .await
        .unwrap();
    let item = batch_items(&response)[0];
    if status(item) == Some(0) {
        return true;
    }
    assert_eq!(reason(item), Some(result_reason::PERMISSION_DENIED));
    false
}

/// The digest a server reports for the drive policy of configuration `text`.
fn digest_of(text: &str) -> String {
    live_digest(&ServerConfig::from_yaml(text).unwrap().drives)
}

async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {BOUND:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_drive_added_to_the_file_is_admitted_by_the_same_process() {
    let mut live = Live::start("file", OTHERS_ONLY);
    let pid = live.proc.child.id();
    assert!(!live.admitted().await, "refused before the edit");
    let before = live.state().await;
    assert_eq!(
        before.digest,
        digest_of(&format!("{}{OTHERS_ONLY}", live.base))
    );
    let next = format!("{}{}", live.base, with_client());
    live.rewrite(&next);
    eventually("the new drive is admitted", || live.admitted()).await;
    let after = live.state().await;
    assert_eq!(after.digest, digest_of(&next));
    assert!(after.applied_at > before.applied_at);
    assert_eq!((after.problem, after.restart_needed), (None, Vec::new()));
    live.same_process(pid);
}

#[tokio::test]
async fn a_bad_file_changes_nothing_and_is_reported_and_a_restart_field_is_not_applied() {
    let mut live = Live::start("bad-file", &with_client());
    let pid = live.proc.child.id();
    assert!(live.admitted().await);
    let in_force = live.state().await.digest;
    let file = live.path().display().to_string();

    // Malformed: not YAML at all.
    live.rewrite("serverId: [unclosed\n");
    eventually("the malformed file is reported", || async {
        live.state().await.problem.is_some()
    })
    .await;
    let report = live.state().await;
    let problem = report.problem.unwrap();
    assert!(problem.contains(&file), "{problem}");
    assert_eq!(report.digest, in_force);
    assert!(live.admitted().await, "the table in force stays");

    // Valid YAML, invalid configuration: the field is named.
    let bad_group = format!(
        "{}drives:\n  drives: [{{serial: LIB1, certificateIdentity: {CLIENT}, keyGroup: gold}}]\n",
        live.base
    );
    live.rewrite(&bad_group);
    eventually("the invalid file is reported", || async {
        live.state()
            .await
            .problem
            .is_some_and(|p| p.contains("drives.drives[0].keyGroup"))
    })
    .await;
    assert_eq!(live.state().await.digest, in_force);
    assert!(live.admitted().await);

    // A field only a restart applies, with a live change: the live part is applied, the
    // rest reported and not applied.
    let moved = format!("{}{OTHERS_ONLY}", live.base).replace("kek.bin", "other-kek.bin");
    live.rewrite(&moved);
    eventually("the live part is applied", || async {
        !live.admitted().await
    })
    .await;
    let report = live.state().await;
    assert_eq!(report.restart_needed, vec!["kekFile".to_owned()]);
    assert_eq!(report.problem, None);
    assert_eq!(report.digest, digest_of(&moved));
    live.same_process(pid);
}

#[tokio::test]
async fn a_pushed_configuration_is_applied_and_bad_pushes_change_nothing() {
    let mut live = Live::start("push", OTHERS_ONLY);
    let pid = live.proc.child.id();
    let peer = peer_connector(&live.certs);
    assert!(!live.admitted().await);
    let in_force = live.state().await.digest;

    // A client that is not a peer may not push.
    let next = format!("{}{}", live.base, with_client());
    let (code, _) = live
        .push(&connector(&live.certs), next.clone().into_bytes())
        .await;
    assert_eq!(code, hyper::StatusCode::FORBIDDEN);
    // Over the bound: refused from its announced length, before it is read. The server
    // may close before the client has written it all, which the client sees as a broken
    // connection; either way the state below shows nothing was applied.
    let oversized = https::https(
        &live.admin.to_string(),
        &peer,
        hyper::Method::PUT,
        "/v1/configuration",
        vec![b'#'; MAX_CONFIG_BYTES + 1],
    )
    .await;
    assert!(
        oversized.as_ref().map_or(true, |(code, _)| *code
            == hyper::StatusCode::PAYLOAD_TOO_LARGE),
        "{oversized:?}"
    );
    assert_eq!(live.state().await.digest, in_force);
    // Malformed: refused, naming what.
    let (code, body) = live.push(&peer, b"drives: {drives: 7}\n".to_vec()).await;
    assert_eq!(code, hyper::StatusCode::BAD_REQUEST, "{body}");
    assert!(body.starts_with("invalid-configuration: "), "{body}");
    assert!(body.contains("the admin API push"), "{body}");
    let report = live.state().await;
    assert_eq!(report.digest, in_force);
    assert!(report.problem.is_some());
    assert!(!live.admitted().await);

    // The file's content, pushed: applied before the answer.
    let (code, body) = live.push(&peer, next.clone().into_bytes()).await;
    assert_eq!(code, hyper::StatusCode::OK, "{body}");
    let answered: ConfigurationReport = serde_json::from_str(&body).unwrap();
    assert_eq!(answered.digest, digest_of(&next));
    assert_eq!(answered.problem, None);
    assert!(live.admitted().await, "admitted once the push is answered");

    // JSON is YAML: the same configuration as JSON is taken too.
    let json = serde_json::to_vec(&ServerConfig::from_yaml(&next).unwrap()).unwrap();
    let (code, body) = live.push(&peer, json).await;
    assert_eq!(code, hyper::StatusCode::OK, "{body}");
    // A push that also changes the TLS files: reported, the live part applied.
    let tls = format!("{}{OTHERS_ONLY}", live.base).replace("server.pem", "other.pem");
    let (code, body) = live.push(&peer, tls.into_bytes()).await;
    assert_eq!(code, hyper::StatusCode::OK, "{body}");
    let answered: ConfigurationReport = serde_json::from_str(&body).unwrap();
    assert_eq!(answered.restart_needed, vec!["tls".to_owned()]);
    assert!(!live.admitted().await);
    live.same_process(pid);
}
