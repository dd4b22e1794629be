//! Shadows as real processes on 127.0.0.1: replicas and shadows started from configuration
//! files with real licences, certificates and passwords; KMIP spoken by the crate's client,
//! the admin API over mutual TLS. Registration refusals, takeover when every replica hangs
//! (SIGSTOP) and hand-back (SIGCONT), two shadows, the limits, the desired state.

// Helpers outside #[test] functions fail loudly too; that is what a test wants. A scenario
// reads best top to bottom, however long.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Proc, V12, free_port, material};
use hyper::{Method, StatusCode};
use jiff::Timestamp;
use shadowkeep_api::license::{License, LicenseSigner};
use shadowkeep_api::password::Password;
use shadowkeep_api::pki::{Authority, Usage};
use shadowkeep_api::replica_sync::DigestReply;
use shadowkeep_api::shadow::registration::{
    AcceptedVerifier, PasswordText, RefusalCode, RegistrationReply, ShadowRegistration,
};
use shadowkeep_api::shadow::state::ShadowState;
use shadowkeep_api::shadow::verifiers::ShadowVerifiers;
use shadowkeep_api::shadow::wire::{
    DuplicateKind, HintsReply, RegisteredShadow, ShadowsReply, StateReport,
};
use shadowkeep_server::client::{
    KmipClient, batch_items, create_aes, message, payload, reason, request, status, uids,
};
use shadowkeep_server::https::{self, ClientFiles};
use shadowkeep_server::kmip::enums::{operation, result_reason};
use shadowkeep_server::kmip::tag;
use shadowkeep_server::ttlv::Item;
use tokio_rustls::TlsConnector;

const SERVER_ID: &str = "tape";
const PEER: &str = "replica-peer";
const OPERATOR: &str = "operator";

/// Certificates, KEK, licence key and passwords for one KeyManager and its shadows.
struct Estate {
    dir: PathBuf,
    signer: LicenseSigner,
    passwords: BTreeMap<String, Password>,
}

impl Estate {
    fn new(name: &str, shadows: &[&str]) -> Self {
        Self::with_addresses(name, shadows, &[])
    }

    /// An estate whose server certificate also names `addresses` (besides 127.0.0.1).
    fn with_addresses(name: &str, shadows: &[&str], addresses: &[String]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("shadowkeep-shadows-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Authority::generate("test CA").unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
        write("ca.pem", ca.cert_pem());
        let mut sans = vec!["127.0.0.1".to_owned()];
        sans.extend_from_slice(addresses);
        let server = ca.leaf("localhost", &sans, Usage::Server).unwrap();
        write("server.pem", &server.cert_pem);
        write("server-key.pem", &server.key_pem);
        let mut identities = vec![PEER, OPERATOR, "kmip-client", "shadow-x"];
        identities.extend_from_slice(shadows);
        for id in identities {
            let pair = ca.leaf(id, &[id.to_owned()], Usage::Client).unwrap();
            write(&format!("{id}.pem"), &pair.cert_pem);
            write(&format!("{id}-key.pem"), &pair.key_pem);
        }
        std::fs::write(
            dir.join("kek.bin"),
            shadowkeep_api::keystore::Kek::generate().as_bytes(),
        )
        .unwrap();
        let signer = LicenseSigner::generate();
        let replica = signer
            .sign(&License::primary(SERVER_ID, Timestamp::now()))
            .unwrap();
        write("replica.lic", &replica);
        let mut passwords = BTreeMap::new();
        for s in shadows {
            let password = Password::generate();
            let licence = License::shadow(
                SERVER_ID,
                *s,
                password.verifier().unwrap(),
                Timestamp::now(),
            );
            write(&format!("{s}.lic"), &signer.sign(&licence).unwrap());
            write(&format!("{s}.password"), password.expose());
            passwords.insert((*s).to_owned(), password);
        }
        Self {
            dir,
            signer,
            passwords,
        }
    }

    fn public_key(&self) -> String {
        hex::encode(self.signer.verifier().to_bytes())
    }

    fn connector(&self, identity: &str) -> TlsConnector {
        https::connector(&ClientFiles {
            ca: self.dir.join("ca.pem"),
            cert: Some(self.dir.join(format!("{identity}.pem"))),
            key: Some(self.dir.join(format!("{identity}-key.pem"))),
        })
        .unwrap()
    }

    /// The settings every server shares, KMIP listening on `ip`.
    fn common_on(&self, data: &str, ip: [u8; 4]) -> String {
        let d = self.dir.display();
        let kmip = SocketAddr::from((ip, 0));
        format!(
            "serverId: {SERVER_ID}\n\
             kmip: {{listen: \"{kmip}\"}}\n\
             tls: {{cert: {d}/server.pem, key: {d}/server-key.pem, clientCa: {d}/ca.pem}}\n\
             dataDir: {d}/{data}\n\
             kekFile: {d}/kek.bin\n"
        )
    }

    /// Replica configurations sharing one peer list. `verifiers` are the accepted verifiers
    /// by shadow.
    fn replicas(
        &self,
        n: usize,
        verifiers: &BTreeMap<String, Vec<AcceptedVerifier>>,
    ) -> Vec<(PathBuf, SocketAddr)> {
        self.replicas_on([127, 0, 0, 1], n, verifiers)
    }

    /// Replicas listening on `ip`.
    fn replicas_on(
        &self,
        ip: [u8; 4],
        n: usize,
        verifiers: &BTreeMap<String, Vec<AcceptedVerifier>>,
    ) -> Vec<(PathBuf, SocketAddr)> {
        let admins: Vec<SocketAddr> = (0..n)
            .map(|_| SocketAddr::from((ip, free_port())))
            .collect();
        let peers = (0..n)
            .map(|j| format!("    - {{name: r{j}, address: \"{}\"}}", admins[j]))
            .collect::<Vec<_>>()
            .join("\n");
        let verifiers = serde_json::to_string(verifiers).unwrap();
        let d = self.dir.display();
        (0..n)
            .map(|i| {
                let text = format!(
                    "{}drives: {{acceptUnknown: true}}\n\
                     licence: {{file: {d}/replica.lic, publicKey: \"{}\"}}\n\
                     replication:\n  listen: \"{}\"\n  clientCert: {d}/{PEER}.pem\n  clientKey: {d}/{PEER}-key.pem\n  allowedIdentities: [{PEER}, {OPERATOR}]\n  peerAcknowledgements: {}\n  syncIntervalSecs: 1\n  ackTimeoutMs: 1500\n  shadowVerifiers: {verifiers}\n  peers:\n{peers}\n",
                    self.common_on(&format!("r{i}"), ip),
                    self.public_key(),
                    admins[i],
                    usize::from(n > 1),
                );
                let path = self.dir.join(format!("r{i}.yaml"));
                std::fs::write(&path, text).unwrap();
                (path, admins[i])
            })
            .collect()
    }

    /// The verifiers replicas accept: each shadow's current password.
    fn verifiers(&self) -> BTreeMap<String, Vec<AcceptedVerifier>> {
        self.passwords
            .iter()
            .map(|(name, p)| {
                (
                    name.clone(),
                    vec![AcceptedVerifier {
                        verifier: p.verifier().unwrap(),
                        not_after: None,
                        id: None,
                    }],
                )
            })
            .collect()
    }

    /// A shadow configuration. `extra` is appended to its `shadow:` section.
    fn shadow(&self, name: &str, replicas: &[SocketAddr], priority: i32, extra: &str) -> PathBuf {
        self.shadow_on([127, 0, 0, 1], name, replicas, priority, extra)
    }

    /// A shadow configuration, its listeners on `ip`.
    fn shadow_on(
        &self,
        ip: [u8; 4],
        name: &str,
        replicas: &[SocketAddr],
        priority: i32,
        extra: &str,
    ) -> PathBuf {
        let d = self.dir.display();
        let admin = SocketAddr::from((ip, free_port()));
        let replicas = replicas
            .iter()
            .enumerate()
            .map(|(i, a)| format!("    - {{name: r{i}, address: \"{a}\"}}"))
            .collect::<Vec<_>>()
            .join("\n");
        let text = format!(
            "{}licence: {{file: {d}/{name}.lic, publicKey: \"{}\"}}\n\
             replication:\n  listen: \"{admin}\"\n  clientCert: {d}/{name}.pem\n  clientKey: {d}/{name}-key.pem\n  allowedIdentities: [{OPERATOR}, {PEER}]\n\
             shadow:\n  passwordFile: {d}/{name}.password\n  priority: {priority}\n  takeoverGracePeriodSecs: 2\n  pollIntervalMs: 250\n  pollTimeoutMs: 500\n{extra}  replicas:\n{replicas}\n",
            self.common_on(name, ip),
            self.public_key(),
        );
        let path = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Estate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn signal(p: &Proc, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &p.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

async fn admin(
    connector: &TlsConnector,
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    https::https(&addr.to_string(), connector, method, path, body)
        .await
        .unwrap()
}

async fn state_of(estate: &Estate, shadow: &Proc) -> StateReport {
    let (status, body) = admin(
        &estate.connector(OPERATOR),
        shadow.admin.unwrap(),
        Method::GET,
        "/v1/state",
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_slice(&body).unwrap()
}

/// Waits (up to `bound`) until the shadow reports `state`; returns how long it took.
async fn wait_state(
    estate: &Estate,
    shadow: &Proc,
    want: ShadowState,
    bound: Duration,
) -> Duration {
    let start = tokio::time::Instant::now();
    loop {
        let report = state_of(estate, shadow).await;
        let s = report.shadow.as_ref().unwrap();
        if s.state == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < bound,
            "shadow did not become {want:?} within {bound:?}: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create(c: &mut KmipClient) -> Item {
    c.call(&request(
        V12,
        vec![(operation::CREATE, create_aes(256, vec![]))],
    ))
    .await
    .unwrap()
}

fn uid_of(response: &Item) -> String {
    let item = batch_items(response)[0];
    assert_eq!(status(item), Some(0), "{:?}", message(item));
    uids(payload(item).unwrap())[0].clone()
}

async fn one(c: &mut KmipClient, op: u32, uid: &str) -> (Option<u32>, Option<u32>, String) {
    let response = c
        .call(&request(
            V12,
            vec![(op, vec![Item::text(tag::UNIQUE_IDENTIFIER, uid)])],
        ))
        .await
        .unwrap();
    let item = batch_items(&response)[0];
    (
        status(item),
        reason(item),
        message(item).unwrap_or("").to_owned(),
    )
}

/// The keystore digest a server reports to the operator.
async fn digest(estate: &Estate, addr: SocketAddr) -> DigestReply {
    let (status, body) = admin(
        &estate.connector(OPERATOR),
        addr,
        Method::GET,
        "/v1/keystore/digest",
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// Waits until the shadow holds exactly what replica `replica` holds, `n` keys.
async fn mirrored(estate: &Estate, shadow: &Proc, replica: SocketAddr, n: usize) {
    let start = tokio::time::Instant::now();
    loop {
        let (theirs, mine) = (
            digest(estate, replica).await,
            digest(estate, shadow.admin.unwrap()).await,
        );
        if theirs.keys == n && theirs == mine {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "shadow did not mirror the {n} keys: replica {theirs:?}, shadow {mine:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_licence_that_does_not_verify_refuses_the_start_naming_file_and_reason() {
    let estate = Estate::new("licence", &["shadow-a"]);
    let configs = estate.replicas(1, &estate.verifiers());
    let (config, _) = &configs[0];
    let run = |config: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_shadowkeep-server"))
            .args(["--config", config.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let lic = estate.dir.join("replica.lic");
    let good = std::fs::read_to_string(&lic).unwrap();
    // One changed byte in the body.
    let mut tampered = good.clone().into_bytes();
    tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
    for (text, reason) in [
        (
            String::from_utf8(tampered).unwrap(),
            "signature does not verify",
        ),
        (
            LicenseSigner::generate()
                .sign(&License::primary(SERVER_ID, Timestamp::now()))
                .unwrap(),
            "signature does not verify",
        ),
        (
            estate
                .signer
                .sign(&License::primary("another", Timestamp::now()))
                .unwrap(),
            "issued for server \"another\"",
        ),
    ] {
        std::fs::write(&lic, text).unwrap();
        let out = run(config);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(lic.to_str().unwrap()), "{stderr}");
        assert!(stderr.contains(reason), "{stderr}");
    }
    std::fs::remove_file(&lic).unwrap();
    let out = run(config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("replica.lic") && stderr.contains("failed to read it"),
        "{stderr}"
    );
    // A shadow's licence with a replica's configuration: the roles disagree.
    std::fs::copy(estate.dir.join("shadow-a.lic"), &lic).unwrap();
    let out = run(config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("it is a shadow licence"), "{stderr}");
    // Nothing was served on any of these: the store was never made.
    assert!(!estate.dir.join("r0").join("log").exists());
}

#[tokio::test]
async fn registration_refuses_each_bad_credential_with_its_reason_and_accepts_the_right_pair() {
    let estate = Estate::new("register", &["shadow-a", "shadow-b"]);
    let mut verifiers = estate.verifiers();
    // shadow-b's password is accepted only until yesterday.
    verifiers.get_mut("shadow-b").unwrap()[0].not_after = Some(
        Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_hours(24))
            .unwrap(),
    );
    let configs = estate.replicas(1, &verifiers);
    let _replica = Proc::start_as(&configs[0].0, Some("r0"));
    let addr = configs[0].1;
    let licence_a = std::fs::read_to_string(estate.dir.join("shadow-a.lic")).unwrap();
    let password_a = &estate.passwords["shadow-a"];
    let body = |licence: &str, password: &Password| {
        serde_json::to_vec(&ShadowRegistration {
            licence: licence.to_owned(),
            password: PasswordText::new(password),
            instance_id: uuid::Uuid::new_v4(),
        })
        .unwrap()
    };
    let register = |identity: &'static str, body: Vec<u8>| {
        let connector = estate.connector(identity);
        async move {
            let (status, reply) =
                admin(&connector, addr, Method::POST, "/v1/shadow/register", body).await;
            (status, RegistrationReply::from_json(&reply).ok(), reply)
        }
    };
    let refused = |reply: Option<RegistrationReply>| match reply {
        Some(RegistrationReply::Refused { reason, message }) => (reason, message),
        other => panic!("expected a refusal, got {other:?}"),
    };
    // Asking before registering.
    let (status, reply) = admin(
        &estate.connector("shadow-a"),
        addr,
        Method::POST,
        "/v1/shadow/report",
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&reply).starts_with("not-registered"));
    // Wrong password.
    let wrong = Password::generate();
    let (status, reply, raw) = register("shadow-a", body(&licence_a, &wrong)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(refused(reply).0, RefusalCode::PasswordWrong);
    assert!(!String::from_utf8_lossy(&raw).contains(wrong.expose()));
    // Every changed byte of the licence (a sample across its length).
    let bytes = licence_a.as_bytes();
    for i in (0..bytes.len()).step_by(bytes.len() / 12) {
        let mut changed = bytes.to_vec();
        changed[i] = if changed[i] == b'x' { b'y' } else { b'x' };
        let (status, reply, _) = register(
            "shadow-a",
            body(&String::from_utf8(changed).unwrap(), password_a),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (code, _) = refused(reply);
        assert!(
            matches!(
                code,
                RefusalCode::LicenceBadSignature | RefusalCode::LicenceInvalid
            ),
            "byte {i}: {code}"
        );
    }
    // Another signer.
    let other = LicenseSigner::generate()
        .sign(&License::shadow(
            SERVER_ID,
            "shadow-a",
            password_a.verifier().unwrap(),
            Timestamp::now(),
        ))
        .unwrap();
    let (_, reply, _) = register("shadow-a", body(&other, password_a)).await;
    assert_eq!(refused(reply).0, RefusalCode::LicenceBadSignature);
    // shadow-a's licence shown with shadow-b's certificate: a copied licence.
    let (_, reply, _) = register("shadow-b", body(&licence_a, password_a)).await;
    assert_eq!(refused(reply).0, RefusalCode::IdentityMismatch);
    // An expired verifier.
    let licence_b = std::fs::read_to_string(estate.dir.join("shadow-b.lic")).unwrap();
    let (_, reply, _) = register("shadow-b", body(&licence_b, &estate.passwords["shadow-b"])).await;
    assert_eq!(refused(reply).0, RefusalCode::VerifierExpired);
    // A malformed and an oversized body.
    let (status, _, raw) = register("shadow-a", b"{\"licence\": 1}".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&raw).contains("licence"));
    // Refused from its announced length; the server may close before the client has
    // written it all, which the client sees as a broken connection.
    let oversized = https::https(
        &addr.to_string(),
        &estate.connector("shadow-a"),
        Method::POST,
        "/v1/shadow/register",
        vec![b' '; 64 * 1024],
    )
    .await;
    assert!(
        oversized
            .as_ref()
            .map_or(true, |(status, _)| *status == StatusCode::PAYLOAD_TOO_LARGE),
        "{oversized:?}"
    );
    // Nothing registered so far.
    let operator = estate.connector(OPERATOR);
    let (_, list) = admin(&operator, addr, Method::GET, "/v1/shadows", vec![]).await;
    let list: ShadowsReply = serde_json::from_slice(&list).unwrap();
    assert!(list.shadows.is_empty(), "{list:?}");
    // The right pair.
    let (status, reply, _) = register("shadow-a", body(&licence_a, password_a)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        matches!(reply, Some(RegistrationReply::Registered { ref shadow, .. }) if shadow == "shadow-a")
    );
    let (_, list) = admin(&operator, addr, Method::GET, "/v1/shadows", vec![]).await;
    let list: ShadowsReply = serde_json::from_slice(&list).unwrap();
    assert_eq!(list.shadows.len(), 1);
    // Counted by reason.
    let (_, metrics) = admin(&operator, addr, Method::GET, "/metrics", vec![]).await;
    let metrics = String::from_utf8(metrics).unwrap();
    for line in [
        "shadowkeep_shadow_registrations_total{outcome=\"password-wrong\"} 1",
        "shadowkeep_shadow_registrations_total{outcome=\"identity-mismatch\"} 1",
        "shadowkeep_shadow_registrations_total{outcome=\"verifier-expired\"} 1",
        "shadowkeep_shadow_registrations_total{outcome=\"registered\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    assert!(!metrics.contains(password_a.expose()));
}

#[tokio::test]
async fn a_shadow_takes_over_read_only_when_every_replica_hangs_and_hands_back() {
    let estate = Estate::new("takeover", &["shadow-a"]);
    let configs = estate.replicas(2, &estate.verifiers());
    let r0 = Proc::start_as(&configs[0].0, Some("r0"));
    let r1 = Proc::start_as(&configs[1].0, Some("r1"));
    let shadow = Proc::start(&estate.shadow("shadow-a", &[configs[0].1, configs[1].1], 0, ""));
    let kmip = estate.connector("kmip-client");
    let mut c = KmipClient::connect(r0.kmip, &kmip).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(uid_of(&create(&mut c).await));
    }
    let mut originals = Vec::new();
    for id in &ids {
        originals.push(material(&mut c, id).await.unwrap());
    }
    mirrored(&estate, &shadow, configs[0].1, ids.len()).await;
    // Shadowing: KMIP refused so that a client moves on.
    let mut s = KmipClient::connect(shadow.kmip, &kmip).await.unwrap();
    let (st, why, text) = one(&mut s, operation::GET, &ids[0]).await;
    assert_eq!(
        (st, why),
        (Some(1), Some(result_reason::PERMISSION_DENIED)),
        "{text}"
    );
    assert!(
        text.contains("emergency shadow") && text.contains("Shadowing"),
        "{text}"
    );
    // Every replica hangs: it accepts connections but never answers.
    signal(&r0, "-STOP");
    signal(&r1, "-STOP");
    // Grace 2 s + poll 0.25 s + poll timeout 0.5 s; the bound is generous.
    wait_state(
        &estate,
        &shadow,
        ShadowState::Serving,
        Duration::from_secs(15),
    )
    .await;
    // Counted and shown as a gauge.
    let (_, metrics) = admin(
        &estate.connector(OPERATOR),
        shadow.admin.unwrap(),
        Method::GET,
        "/metrics",
        vec![],
    )
    .await;
    let metrics = String::from_utf8(metrics).unwrap();
    for line in [
        "shadowkeep_shadow_transitions_total{from=\"Shadowing\",to=\"Serving\",reason=\"replicas-silent\"} 1",
        "shadowkeep_shadow_state{state=\"Serving\"} 1",
        "shadowkeep_shadow_state{state=\"Shadowing\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    for (id, original) in ids.iter().zip(&originals) {
        assert_eq!(
            material(&mut s, id).await.as_ref(),
            Some(original),
            "key {id}"
        );
    }
    let response = create(&mut s).await;
    let item = batch_items(&response)[0];
    assert_eq!(reason(item), Some(result_reason::PERMISSION_DENIED));
    assert!(
        message(item).unwrap().contains("Create refused"),
        "{:?}",
        message(item)
    );
    let (st, why, text) = one(&mut s, operation::DESTROY, &ids[0]).await;
    assert_eq!(
        (st, why),
        (Some(1), Some(result_reason::PERMISSION_DENIED)),
        "{text}"
    );
    assert!(
        material(&mut s, &ids[0]).await.is_some(),
        "Destroy changed nothing"
    );
    // The replicas come back: the shadow hands back and refuses KMIP again.
    signal(&r0, "-CONT");
    signal(&r1, "-CONT");
    wait_state(
        &estate,
        &shadow,
        ShadowState::Shadowing,
        Duration::from_secs(15),
    )
    .await;
    let (st, why, _) = one(&mut s, operation::GET, &ids[0]).await;
    assert_eq!((st, why), (Some(1), Some(result_reason::PERMISSION_DENIED)));
    // The replicas list it, with its KMIP address as a hint.
    let operator = estate.connector(OPERATOR);
    let (_, list) = admin(&operator, configs[0].1, Method::GET, "/v1/shadows", vec![]).await;
    let list: ShadowsReply = serde_json::from_slice(&list).unwrap();
    assert_eq!(list.shadows[0].name, "shadow-a");
    let (_, hints) = admin(&operator, configs[0].1, Method::GET, "/v1/hints", vec![]).await;
    let hints: HintsReply = serde_json::from_slice(&hints).unwrap();
    assert_eq!(hints.addresses, vec![shadow.kmip]);
}

/// SIGTERM, wait for a clean exit, start again on the same configuration and data.
fn restart(p: &mut Proc) {
    signal(p, "-TERM");
    let status = p.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    *p = Proc::start(&p.config.clone());
}

#[tokio::test]
async fn of_two_shadows_one_serves_and_the_other_defers_until_it_is_gone() {
    let estate = Estate::new("siblings", &["shadow-a", "shadow-b"]);
    let configs = estate.replicas(1, &estate.verifiers());
    let r0 = Proc::start_as(&configs[0].0, Some("r0"));
    let a = Proc::start(&estate.shadow("shadow-a", &[configs[0].1], 10, ""));
    let mut b = Proc::start(&estate.shadow("shadow-b", &[configs[0].1], 0, ""));
    // Both registered and each learned of the other from the replica.
    let operator = estate.connector(OPERATOR);
    let start = tokio::time::Instant::now();
    loop {
        let (_, list) = admin(&operator, configs[0].1, Method::GET, "/v1/shadows", vec![]).await;
        let list: ShadowsReply = serde_json::from_slice(&list).unwrap();
        if list.shadows.iter().filter(|s| s.state.is_some()).count() == 2 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{list:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One more round each, so that each has the other in its replica's answer.
    for shadow in [&a, &b] {
        let addr = shadow.admin.unwrap();
        let (status, _) = admin(&operator, addr, Method::POST, "/v1/shadow/sync", vec![]).await;
        assert_eq!(status, StatusCode::OK);
    }
    signal(&r0, "-STOP");
    // The higher priority serves, the other defers; it stays so.
    wait_state(&estate, &a, ShadowState::Serving, Duration::from_secs(15)).await;
    wait_state(&estate, &b, ShadowState::Deferring, Duration::from_secs(15)).await;
    for _ in 0..10 {
        let (sa, sb) = (state_of(&estate, &a).await, state_of(&estate, &b).await);
        assert_eq!(
            (sa.shadow.unwrap().state, sb.shadow.unwrap().state),
            (ShadowState::Serving, ShadowState::Deferring)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let kmip = estate.connector("kmip-client");
    let mut cb = KmipClient::connect(b.kmip, &kmip).await.unwrap();
    let (_, why, text) = one(&mut cb, operation::LOCATE, "x").await;
    assert_eq!(why, Some(result_reason::PERMISSION_DENIED), "{text}");
    assert!(text.contains("Deferring"), "{text}");
    // The serving one is gone (crashed): the other takes over.
    let mut a = a;
    a.crash();
    wait_state(&estate, &b, ShadowState::Serving, Duration::from_secs(15)).await;
    // Nothing changes the state across a restart of the deferring one's data either.
    signal(&r0, "-CONT");
    wait_state(&estate, &b, ShadowState::Shadowing, Duration::from_secs(15)).await;
    restart(&mut b);
    wait_state(&estate, &b, ShadowState::Shadowing, Duration::from_secs(15)).await;
}

#[tokio::test]
async fn limits_in_seconds_make_a_shadow_inactive_then_disabled_for_good() {
    let estate = Estate::new("limits", &["shadow-a"]);
    let configs = estate.replicas(1, &estate.verifiers());
    let r0 = Proc::start_as(&configs[0].0, Some("r0"));
    let extra = "  continuousServiceLimitSecs: 3\n  standaloneLimitSecs: 14\n";
    let mut shadow = Proc::start(&estate.shadow("shadow-a", &[configs[0].1], 0, extra));
    let operator = estate.connector(OPERATOR);
    let addr = shadow.admin.unwrap();
    let (status, _) = admin(&operator, addr, Method::POST, "/v1/shadow/sync", vec![]).await;
    assert_eq!(status, StatusCode::OK);
    signal(&r0, "-STOP");
    wait_state(
        &estate,
        &shadow,
        ShadowState::Serving,
        Duration::from_secs(15),
    )
    .await;
    wait_state(
        &estate,
        &shadow,
        ShadowState::Inactive,
        Duration::from_secs(15),
    )
    .await;
    // A restart re-enables after the continuous-service limit: it serves again after a
    // grace period it watches.
    restart(&mut shadow);
    let after = state_of(&estate, &shadow).await.shadow.unwrap();
    assert_eq!(after.state, ShadowState::Shadowing);
    wait_state(
        &estate,
        &shadow,
        ShadowState::Serving,
        Duration::from_secs(15),
    )
    .await;
    // The standalone limit runs from the last contact, across the restart.
    let report = state_of(&estate, &shadow).await.shadow.unwrap();
    wait_state(
        &estate,
        &shadow,
        ShadowState::Disabled,
        Duration::from_secs(20),
    )
    .await;
    let disabled = state_of(&estate, &shadow).await.shadow.unwrap();
    let waited = disabled.since.duration_since(report.last_contact);
    assert!(waited >= jiff::SignedDuration::from_secs(14), "{waited:?}");
    // Permanent: a restart, a replica answering, an activation change nothing.
    restart(&mut shadow);
    signal(&r0, "-CONT");
    let addr = shadow.admin.unwrap();
    let (status, body) = admin(
        &operator,
        addr,
        Method::PUT,
        "/v1/shadow/desired-state",
        br#"{"state":"Active"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let (status, body) = admin(&operator, addr, Method::POST, "/v1/shadow/sync", vec![]).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(String::from_utf8_lossy(&body).starts_with("not-polling"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        state_of(&estate, &shadow).await.shadow.unwrap().state,
        ShadowState::Disabled
    );
    let mut s = KmipClient::connect(shadow.kmip, &estate.connector("kmip-client"))
        .await
        .unwrap();
    let (_, why, _) = one(&mut s, operation::LOCATE, "x").await;
    assert_eq!(why, Some(result_reason::PERMISSION_DENIED));
}

#[tokio::test]
async fn the_desired_state_is_one_of_three_is_for_the_operator_and_deactivation_stops_polling() {
    let estate = Estate::new("desired", &["shadow-a"]);
    let configs = estate.replicas(1, &estate.verifiers());
    let _r0 = Proc::start_as(&configs[0].0, Some("r0"));
    let mut shadow = Proc::start(&estate.shadow("shadow-a", &[configs[0].1], 0, ""));
    let operator = estate.connector(OPERATOR);
    let addr = shadow.admin.unwrap();
    let (status, _) = admin(&operator, addr, Method::POST, "/v1/shadow/sync", vec![]).await;
    assert_eq!(status, StatusCode::OK);
    let put = |connector: TlsConnector, body: &'static [u8], addr: SocketAddr| async move {
        let (status, body) = admin(
            &connector,
            addr,
            Method::PUT,
            "/v1/shadow/desired-state",
            body.to_vec(),
        )
        .await;
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    // Not the operator.
    let (status, _) = put(
        estate.connector("shadow-x"),
        br#"{"state":"Disabled"}"#,
        addr,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Not one of the three, or not JSON.
    for bad in [
        &br#"{"state":"Serving"}"#[..],
        b"{}",
        b"Inactive",
        br#"{"state":"Inactive","x":1}"#,
    ] {
        let (status, text) = put(operator.clone(), bad, addr).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert!(text.contains("Active, Inactive, Disabled"), "{text}");
    }
    // Oversized: refused from its announced length (or the connection closed on it).
    let oversized = https::https(
        &addr.to_string(),
        &operator,
        Method::PUT,
        "/v1/shadow/desired-state",
        vec![b' '; 8 * 1024],
    )
    .await;
    assert!(
        oversized
            .as_ref()
            .map_or(true, |(status, _)| *status == StatusCode::PAYLOAD_TOO_LARGE),
        "{oversized:?}"
    );
    assert_eq!(
        state_of(&estate, &shadow).await.shadow.unwrap().state,
        ShadowState::Shadowing
    );
    let (status, text) = put(operator.clone(), br#"{"state":"Inactive"}"#, addr).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    wait_state(
        &estate,
        &shadow,
        ShadowState::Inactive,
        Duration::from_secs(5),
    )
    .await;
    // It does not poll: the replica stops hearing from it.
    let seen = |estate: &Estate| {
        let connector = estate.connector(OPERATOR);
        let replica = configs[0].1;
        async move {
            let (_, list) = admin(&connector, replica, Method::GET, "/v1/shadows", vec![]).await;
            let list: ShadowsReply = serde_json::from_slice(&list).unwrap();
            list.shadows[0].last_seen
        }
    };
    let before = seen(&estate).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(seen(&estate).await, before);
    let (status, _) = put(operator.clone(), br#"{"state":"Active"}"#, addr).await;
    assert_eq!(status, StatusCode::OK);
    wait_state(
        &estate,
        &shadow,
        ShadowState::Shadowing,
        Duration::from_secs(5),
    )
    .await;
    // Deactivated, then restarted: a restart re-enables.
    let (status, _) = put(operator.clone(), br#"{"state":"Inactive"}"#, addr).await;
    assert_eq!(status, StatusCode::OK);
    restart(&mut shadow);
    assert_eq!(
        state_of(&estate, &shadow).await.shadow.unwrap().state,
        ShadowState::Shadowing
    );
    // Disabled by hand survives a restart.
    let (status, _) = put(operator.clone(), br#"{"state":"Disabled"}"#, addr).await;
    assert_eq!(status, StatusCode::OK);
    restart(&mut shadow);
    assert_eq!(
        state_of(&estate, &shadow).await.shadow.unwrap().state,
        ShadowState::Disabled
    );
}

#[tokio::test]
async fn two_instances_registering_as_one_shadow_are_reported_and_both_keep_running() {
    let estate = Estate::new("duplicates", &["shadow-a"]);
    let configs = estate.replicas(1, &estate.verifiers());
    let _r0 = Proc::start_as(&configs[0].0, Some("r0"));
    let first = estate.shadow("shadow-a", &[configs[0].1], 0, "");
    let mut one = Proc::start(&first);
    // The same licence, certificate and password from a second data directory (another
    // host, say): another instance id.
    let text = std::fs::read_to_string(&first).unwrap();
    let port = |t: &str| {
        let after = t.split("listen: \"127.0.0.1:").nth(2).unwrap();
        after.split('"').next().unwrap().to_owned()
    };
    let second = estate.dir.join("shadow-a-copy.yaml");
    std::fs::write(
        &second,
        text.replace("/shadow-a\n", "/shadow-a-copy\n")
            .replace(&port(&text), &free_port().to_string()),
    )
    .unwrap();
    let mut two = Proc::start(&second);
    let operator = estate.connector(OPERATOR);
    let replica = configs[0].1;
    let start = tokio::time::Instant::now();
    let report = loop {
        let (_, body) = admin(&operator, replica, Method::GET, "/v1/state", vec![]).await;
        let report: StateReport = serde_json::from_slice(&body).unwrap();
        if !report.duplicates.is_empty() {
            break report;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{report:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let d = &report.duplicates[0];
    assert_eq!(
        (d.kind, d.name.as_str()),
        (DuplicateKind::Shadow, "shadow-a")
    );
    let ids = [
        state_of(&estate, &one).await.instance_id,
        state_of(&estate, &two).await.instance_id,
    ];
    assert!(
        ids.contains(&d.instance_ids[0]) && ids.contains(&d.instance_ids[1]),
        "{d:?} {ids:?}"
    );
    assert_ne!(d.instance_ids[0], d.instance_ids[1]);
    let (_, metrics) = admin(&operator, replica, Method::GET, "/metrics", vec![]).await;
    assert!(
        String::from_utf8(metrics)
            .unwrap()
            .contains("shadowkeep_shadow_duplicates 1")
    );
    // Warned about, never shut down.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(one.alive() && two.alive());
}

/// Two "sites" on one machine: network namespaces for the replicas (10.77.N.1) and for the
/// shadow (10.77.N.2), each joined by a veth pair to a bridge here, where the clients are
/// (10.77.N.3). Cutting the sites apart leaves the clients reaching both. Deleted, with their
/// links and the bridge, when dropped.
struct Sites {
    replicas: String,
    shadow: String,
    bridge: String,
    net: u8,
}

impl Sites {
    /// `None` (and a line saying why) where namespaces cannot be made: not root, no `ip`.
    fn new() -> Option<Self> {
        let id = std::process::id() % 100_000;
        let sites = Self {
            replicas: format!("skrep{id}"),
            shadow: format!("skshd{id}"),
            bridge: format!("skbr{id}"),
            net: u8::try_from(id % 200).unwrap() + 20,
        };
        let n = sites.net;
        let args = |text: &str| text.split(' ').map(str::to_owned).collect::<Vec<_>>();
        let mut steps = vec![
            args(&format!("link add {} type bridge", sites.bridge)),
            args(&format!("addr add 10.77.{n}.3/24 dev {}", sites.bridge)),
            args(&format!("link set {} up", sites.bridge)),
        ];
        for (ns, tag) in [(&sites.replicas, "r"), (&sites.shadow, "s")] {
            let (here, there) = (format!("skh{tag}{id}"), format!("sks{tag}{id}"));
            steps.push(args(&format!("netns add {ns}")));
            steps.push(args(&format!(
                "link add {here} type veth peer name {there}"
            )));
            steps.push(args(&format!("link set {there} netns {ns}")));
            steps.push(args(&format!("link set {here} master {}", sites.bridge)));
            steps.push(args(&format!("link set {here} up")));
        }
        for step in steps {
            if let Err(why) = ip(&step) {
                eprintln!("SKIPPED: network namespaces are not available here ({why})");
                return None;
            }
        }
        for (ns, tag, last) in [(&sites.replicas, "r", 1), (&sites.shadow, "s", 2)] {
            let there = format!("sks{tag}{id}");
            for step in [
                format!("addr add 10.77.{n}.{last}/24 dev {there}"),
                format!("link set {there} up"),
                "link set lo up".to_owned(),
            ] {
                exec_in(ns, &args(&step)).unwrap();
            }
        }
        Some(sites)
    }

    fn address(&self, last: u8) -> [u8; 4] {
        [10, 77, self.net, last]
    }

    /// Each site drops what it sends to the other; the clients reach both.
    fn cut(&self) {
        self.routes("add");
    }

    fn heal(&self) {
        self.routes("del");
    }

    fn routes(&self, verb: &str) {
        let n = self.net;
        for (ns, to) in [(&self.shadow, 1), (&self.replicas, 2)] {
            let step = format!("route {verb} blackhole 10.77.{n}.{to}/32");
            let step: Vec<String> = step.split(' ').map(str::to_owned).collect();
            exec_in(ns, &step).unwrap();
        }
    }

    /// Starts a server inside namespace `ns`, under replica name `replica` if given.
    fn start(ns: &str, config: &Path, replica: Option<&str>) -> Proc {
        use std::io::{BufRead as _, BufReader};
        let mut command = std::process::Command::new("ip");
        if let Some(name) = replica {
            command.env("SHADOWKEEP_REPLICA_NAME", name);
        }
        let mut child = command
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_shadowkeep-server")])
            .args(["--config", config.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut field = |prefix: &str| -> SocketAddr {
            loop {
                let line = lines
                    .next()
                    .expect("server exited before listening")
                    .unwrap();
                if let Some(addr) = line.strip_prefix(prefix) {
                    return addr.parse().unwrap();
                }
            }
        };
        let kmip = field("kmip listening on ");
        let admin = field("admin listening on ");
        Proc {
            child,
            kmip,
            admin: Some(admin),
            config: config.to_owned(),
        }
    }
}

impl Drop for Sites {
    fn drop(&mut self) {
        for ns in [&self.replicas, &self.shadow] {
            let _ = ip(&["netns".to_owned(), "del".into(), ns.clone()]);
        }
        let _ = ip(&["link".to_owned(), "del".into(), self.bridge.clone()]);
    }
}

/// `ip ARGS` inside namespace `ns`.
fn exec_in(ns: &str, args: &[String]) -> Result<(), String> {
    let mut all = vec![
        "netns".to_owned(),
        "exec".into(),
        ns.to_owned(),
        "ip".into(),
    ];
    all.extend_from_slice(args);
    ip(&all)
}

fn ip(args: &[String]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[tokio::test]
async fn cut_off_from_the_replicas_a_shadow_serves_read_only_while_they_go_on_and_catches_up() {
    let Some(sites) = Sites::new() else {
        return;
    };
    let ips: Vec<String> = [1, 2]
        .map(|last| std::net::Ipv4Addr::from(sites.address(last)).to_string())
        .to_vec();
    let estate = Estate::with_addresses("partition", &["shadow-a"], &ips);
    let configs = estate.replicas_on(sites.address(1), 2, &estate.verifiers());
    let r0 = Sites::start(&sites.replicas, &configs[0].0, Some("r0"));
    let _r1 = Sites::start(&sites.replicas, &configs[1].0, Some("r1"));
    let config = estate.shadow_on(
        sites.address(2),
        "shadow-a",
        &[configs[0].1, configs[1].1],
        0,
        "",
    );
    let shadow = Sites::start(&sites.shadow, &config, None);
    let kmip = estate.connector("kmip-client");
    let mut c = KmipClient::connect(r0.kmip, &kmip).await.unwrap();
    let mut before = Vec::new();
    for _ in 0..3 {
        before.push(uid_of(&create(&mut c).await));
    }
    mirrored(&estate, &shadow, configs[0].1, 3).await;
    sites.cut();
    // The clients still reach the replicas and go on creating.
    let mut after = Vec::new();
    for _ in 0..3 {
        after.push(uid_of(&create(&mut c).await));
    }
    wait_state(
        &estate,
        &shadow,
        ShadowState::Serving,
        Duration::from_secs(20),
    )
    .await;
    // Both answer: the shadow, read-only, with what it held before the cut.
    let mut s = KmipClient::connect(shadow.kmip, &kmip).await.unwrap();
    for id in &before {
        assert_eq!(
            material(&mut s, id).await,
            material(&mut c, id).await,
            "{id}"
        );
    }
    for id in &after {
        let (_, why, _) = one(&mut s, operation::GET, id).await;
        assert_eq!(why, Some(result_reason::ITEM_NOT_FOUND), "{id}");
        assert!(material(&mut c, id).await.is_some());
    }
    let refused = create(&mut s).await;
    assert_eq!(
        reason(batch_items(&refused)[0]),
        Some(result_reason::PERMISSION_DENIED)
    );
    after.push(uid_of(&create(&mut c).await));
    sites.heal();
    wait_state(
        &estate,
        &shadow,
        ShadowState::Shadowing,
        Duration::from_secs(20),
    )
    .await;
    // It holds every key, and exactly those (the same digest): nothing was created on it.
    mirrored(&estate, &shadow, configs[0].1, 7).await;
}

#[tokio::test]
async fn with_shadow_acknowledgements_a_create_succeeds_only_once_a_shadow_holds_the_key() {
    let estate = Estate::new("acks", &["shadow-a"]);
    let configs = estate.replicas(1, &estate.verifiers());
    let text = std::fs::read_to_string(&configs[0].0).unwrap();
    std::fs::write(
        &configs[0].0,
        text.replace(
            "  shadowVerifiers:",
            "  shadowAcknowledgements: 1\n  shadowVerifiers:",
        ),
    )
    .unwrap();
    let r0 = Proc::start_as(&configs[0].0, Some("r0"));
    let shadow = Proc::start(&estate.shadow("shadow-a", &[configs[0].1], 0, ""));
    let kmip = estate.connector("kmip-client");
    let mut c = KmipClient::connect(r0.kmip, &kmip).await.unwrap();
    // Before the shadow has reported where it listens, no shadow can acknowledge.
    let operator = estate.connector(OPERATOR);
    let start = tokio::time::Instant::now();
    while {
        let (_, list) = admin(&operator, configs[0].1, Method::GET, "/v1/shadows", vec![]).await;
        let list: ShadowsReply = serde_json::from_slice(&list).unwrap();
        list.shadows.iter().all(|s| s.state.is_none())
    } {
        assert!(start.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Running: the Create succeeds, and the shadow holds the key by then.
    let id = uid_of(&create(&mut c).await);
    let on_shadow = digest(&estate, shadow.admin.unwrap()).await;
    assert_eq!(on_shadow, digest(&estate, configs[0].1).await);
    assert_eq!(on_shadow.keys, 1);
    // Stopped: the Create fails clearly and no key becomes visible.
    signal(&shadow, "-STOP");
    let response = create(&mut c).await;
    let item = batch_items(&response)[0];
    assert_eq!(status(item), Some(1));
    let text = message(item).unwrap();
    assert!(text.contains("0 of the 1 required shadows"), "{text}");
    assert!(text.contains("shadowAcknowledgements"), "{text}");
    let located = c
        .call(&request(V12, vec![(operation::LOCATE, vec![])]))
        .await
        .unwrap();
    assert_eq!(uids(payload(batch_items(&located)[0]).unwrap()), vec![id]);
    signal(&shadow, "-CONT");
}

/// p50 and p99 of `samples`, in milliseconds.
fn percentiles(samples: &mut [Duration]) -> (f64, f64, f64) {
    samples.sort();
    // Nearest rank: the smallest sample at or above that percentage of them.
    let at = |percent: usize| {
        let rank = (percent * samples.len())
            .div_ceil(100)
            .clamp(1, samples.len());
        samples[rank - 1].as_secs_f64() * 1000.0
    };
    (
        at(50),
        at(99),
        samples.last().unwrap().as_secs_f64() * 1000.0,
    )
}

/// Benchmark (bench/shadows.sh): from the last replica hanging (SIGSTOP) to the shadow
/// answering a Get, and from the replicas answering again (SIGCONT) to the shadow refusing
/// one; `SHADOW_BENCH_TRIALS` trials (20) at a 2 s grace period. Prints figures; asserts
/// only that every trial completed.
#[tokio::test]
#[ignore = "benchmark: bench/shadows.sh"]
async fn bench_takeover_and_hand_back() {
    let trials: usize = std::env::var("SHADOW_BENCH_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(20);
    let estate = Estate::new("bench-takeover", &["shadow-a"]);
    let configs = estate.replicas(2, &estate.verifiers());
    let r0 = Proc::start_as(&configs[0].0, Some("r0"));
    let r1 = Proc::start_as(&configs[1].0, Some("r1"));
    let shadow = Proc::start(&estate.shadow("shadow-a", &[configs[0].1, configs[1].1], 0, ""));
    let kmip = estate.connector("kmip-client");
    let mut c = KmipClient::connect(r0.kmip, &kmip).await.unwrap();
    let id = uid_of(&create(&mut c).await);
    mirrored(&estate, &shadow, configs[0].1, 1).await;
    let mut s = KmipClient::connect(shadow.kmip, &kmip).await.unwrap();
    let (mut takeovers, mut hand_backs) = (Vec::new(), Vec::new());
    for _ in 0..trials {
        wait_state(
            &estate,
            &shadow,
            ShadowState::Shadowing,
            Duration::from_secs(30),
        )
        .await;
        signal(&r0, "-STOP");
        signal(&r1, "-STOP");
        let hung = tokio::time::Instant::now();
        while one(&mut s, operation::GET, &id).await.0 != Some(0) {
            assert!(hung.elapsed() < Duration::from_secs(30), "no takeover");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        takeovers.push(hung.elapsed());
        signal(&r0, "-CONT");
        signal(&r1, "-CONT");
        let back = tokio::time::Instant::now();
        while one(&mut s, operation::GET, &id).await.0 == Some(0) {
            assert!(back.elapsed() < Duration::from_secs(30), "no hand-back");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        hand_backs.push(back.elapsed());
    }
    let (t50, t99, tmax) = percentiles(&mut takeovers);
    let (h50, h99, hmax) = percentiles(&mut hand_backs);
    println!(
        "{{\"bench\":\"shadow_takeover\",\"trials\":{trials},\"grace_ms\":2000,\"poll_interval_ms\":250,\"poll_timeout_ms\":500,\"takeover_p50_ms\":{t50:.0},\"takeover_p99_ms\":{t99:.0},\"takeover_max_ms\":{tmax:.0},\"hand_back_p50_ms\":{h50:.0},\"hand_back_p99_ms\":{h99:.0},\"hand_back_max_ms\":{hmax:.0}}}"
    );
}

/// Benchmark (bench/shadows.sh): mirror lag — 8 concurrent creators at a replica for
/// `SHADOW_BENCH_SECONDS` (5); the lag of a key is from its Create's Success to the shadow
/// holding it. The shadow's key count is watched (its metrics every 2 ms), so the n-th key
/// acknowledged is taken as held when the shadow holds n keys. Prints figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: bench/shadows.sh"]
async fn bench_mirror_lag() {
    let seconds: u64 = std::env::var("SHADOW_BENCH_SECONDS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(5);
    let estate = Estate::new("bench-lag", &["shadow-a"]);
    let configs = estate.replicas(1, &estate.verifiers());
    let r0 = Proc::start_as(&configs[0].0, Some("r0"));
    let shadow = Proc::start(&estate.shadow("shadow-a", &[configs[0].1], 0, ""));
    let operator = estate.connector(OPERATOR);
    // The replica pushes only to shadows that have reported where they listen.
    let (status, _) = admin(
        &operator,
        shadow.admin.unwrap(),
        Method::POST,
        "/v1/shadow/sync",
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<tokio::time::Instant>::new()));
    let end = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let mut creators = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (kmip, acked, addr) = (estate.connector("kmip-client"), acked.clone(), r0.kmip);
        creators.spawn(async move {
            let mut c = KmipClient::connect(addr, &kmip).await.unwrap();
            while tokio::time::Instant::now() < end {
                let _ = uid_of(&create(&mut c).await);
                acked.lock().unwrap().push(tokio::time::Instant::now());
            }
        });
    }
    let mut lags = Vec::new();
    let shadow_admin = shadow.admin.unwrap();
    let connector = estate.connector(OPERATOR);
    let mut sender = https::http1_connect(&shadow_admin.to_string(), &connector)
        .await
        .unwrap();
    loop {
        let (_, body) = https::send(
            &mut sender,
            &shadow_admin.to_string(),
            Method::GET,
            "/metrics",
            vec![],
        )
        .await
        .unwrap();
        let now = tokio::time::Instant::now();
        let held: usize = String::from_utf8(body)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("shadowkeep_keystore_keys "))
            .unwrap()
            .parse()
            .unwrap();
        let mut times = acked.lock().unwrap().clone();
        times.sort();
        while lags.len() < held.min(times.len()) {
            lags.push(now.saturating_duration_since(times[lags.len()]));
        }
        if now > end && creators.is_empty() && lags.len() == times.len() {
            break;
        }
        while creators.try_join_next().is_some() {}
        assert!(
            now < end + Duration::from_mins(1),
            "the shadow did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let n = lags.len();
    let (p50, p99, max) = percentiles(&mut lags);
    println!(
        "{{\"bench\":\"shadow_mirror_lag\",\"creators\":8,\"seconds\":{seconds},\"keys\":{n},\"lag_p50_ms\":{p50:.1},\"lag_p99_ms\":{p99:.1},\"lag_max_ms\":{max:.1}}}"
    );
}

/// A replica's admin API that answers registration and polls while `answering`, and never
/// answers a keystore delta: a replica that hangs in the middle of a sync. Counts the deltas
/// asked for.
async fn replica_hanging_in_delta(
    estate: &Estate,
    answering: std::sync::Arc<std::sync::atomic::AtomicBool>,
    deltas: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> SocketAddr {
    use std::sync::atomic::Ordering;

    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper_util::rt::TokioIo;
    use shadowkeep_api::server_config::{DrivePolicy, TlsFiles};
    use shadowkeep_api::shadow::wire::ShadowView;
    use shadowkeep_server::tls::{ClientAuth, server_config};

    let tls = server_config(
        &TlsFiles {
            cert: estate.dir.join("server.pem"),
            key: estate.dir.join("server-key.pem"),
            client_ca: estate.dir.join("ca.pem"),
        },
        ClientAuth::Required,
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let registered = serde_json::to_vec(&RegistrationReply::Registered {
        shadow: "shadow-a".to_owned(),
        verifier_not_after: None,
        licence_issued_at: Timestamp::now(),
    })
    .unwrap();
    let view = serde_json::to_vec(&ShadowView {
        drives: DrivePolicy::default(),
        siblings: vec![],
    })
    .unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, answering, deltas) =
                (acceptor.clone(), answering.clone(), deltas.clone());
            let (registered, view) = (registered.clone(), view.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let (answering, deltas) = (answering.clone(), deltas.clone());
                        let body = match request.uri().path() {
                            "/v1/shadow/register" => Some(registered.clone()),
                            "/v1/shadow/report" => Some(view.clone()),
                            _ => None,
                        };
                        async move {
                            if body.is_none() {
                                deltas.fetch_add(1, Ordering::SeqCst);
                            }
                            match body.filter(|_| answering.load(Ordering::SeqCst)) {
                                Some(body) => Ok::<_, std::convert::Infallible>(
                                    hyper::Response::new(Full::new(Bytes::from(body))),
                                ),
                                None => std::future::pending().await,
                            }
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_replica_hanging_in_the_middle_of_a_sync_does_not_hold_up_the_takeover() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let estate = Estate::new("hung-delta", &["shadow-a"]);
    let answering = Arc::new(AtomicBool::new(true));
    let deltas = Arc::new(AtomicUsize::new(0));
    let replica = replica_hanging_in_delta(&estate, answering.clone(), deltas.clone()).await;
    let shadow = Proc::start(&estate.shadow("shadow-a", &[replica], 0, ""));
    let start = tokio::time::Instant::now();
    while deltas.load(Ordering::SeqCst) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no delta asked for"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The replica now answers nothing: the shadow takes over after the grace period (2 s),
    // not after the sync in flight gives up.
    answering.store(false, Ordering::SeqCst);
    wait_state(
        &estate,
        &shadow,
        ShadowState::Serving,
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test]
async fn two_running_replicas_with_one_name_are_reported_by_their_peer_and_keep_running() {
    let estate = Estate::new("replica-duplicates", &[]);
    let configs = estate.replicas(2, &BTreeMap::new());
    let mut r0 = Proc::start_as(&configs[0].0, Some("r0"));
    let mut r1 = Proc::start_as(&configs[1].0, Some("r1"));
    // A second r1 (its data directory copied, another host): its own store and admin
    // address, the same name and peers.
    let text = std::fs::read_to_string(&configs[1].0).unwrap();
    let copy = estate.dir.join("r1-copy.yaml");
    let admin_copy = SocketAddr::from(([127, 0, 0, 1], free_port()));
    std::fs::write(
        &copy,
        text.replace("/r1\n", "/r1-copy\n").replace(
            &format!("listen: \"{}\"", configs[1].1),
            &format!("listen: \"{admin_copy}\""),
        ),
    )
    .unwrap();
    let mut r1_copy = Proc::start_as(&copy, Some("r1"));
    let operator = estate.connector(OPERATOR);
    let start = tokio::time::Instant::now();
    let report = loop {
        let (_, body) = admin(&operator, configs[0].1, Method::GET, "/v1/state", vec![]).await;
        let report: StateReport = serde_json::from_slice(&body).unwrap();
        if !report.duplicates.is_empty() {
            break report;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{report:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let d = &report.duplicates[0];
    assert_eq!((d.kind, d.name.as_str()), (DuplicateKind::Replica, "r1"));
    let ids = [
        state_of_replica(&estate, configs[1].1).await,
        state_of_replica(&estate, admin_copy).await,
    ];
    assert!(
        ids.contains(&d.instance_ids[0]) && ids.contains(&d.instance_ids[1]),
        "{d:?}"
    );
    let (_, metrics) = admin(&operator, configs[0].1, Method::GET, "/metrics", vec![]).await;
    assert!(
        String::from_utf8(metrics)
            .unwrap()
            .contains("shadowkeep_replica_duplicates 1")
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(r0.alive() && r1.alive() && r1_copy.alive());
}

async fn state_of_replica(estate: &Estate, addr: SocketAddr) -> uuid::Uuid {
    let (_, body) = admin(
        &estate.connector(OPERATOR),
        addr,
        Method::GET,
        "/v1/state",
        vec![],
    )
    .await;
    serde_json::from_slice::<StateReport>(&body)
        .unwrap()
        .instance_id
}

#[tokio::test]
async fn a_replica_that_restarts_forgets_its_shadows_and_they_register_again() {
    let estate = Estate::new("replica-restart", &["shadow-a"]);
    let configs = estate.replicas(1, &estate.verifiers());
    let mut r0 = Proc::start_as(&configs[0].0, Some("r0"));
    let shadow = Proc::start(&estate.shadow("shadow-a", &[configs[0].1], 0, ""));
    let operator = estate.connector(OPERATOR);
    let replica = configs[0].1;
    let listed = move |operator: TlsConnector| async move {
        let (_, list) = admin(&operator, replica, Method::GET, "/v1/shadows", vec![]).await;
        let list: ShadowsReply = serde_json::from_slice(&list).unwrap();
        list.shadows
            .iter()
            .any(|s| s.name == "shadow-a" && s.state.is_some())
    };
    let (status, _) = admin(
        &operator,
        shadow.admin.unwrap(),
        Method::POST,
        "/v1/shadow/sync",
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(listed(operator.clone()).await);
    signal(&r0, "-TERM");
    assert!(r0.child.wait().unwrap().success());
    r0 = Proc::start_as(&configs[0].0, Some("r0"));
    let start = tokio::time::Instant::now();
    while !listed(operator.clone()).await {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the shadow did not register again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = admin(&operator, configs[0].1, Method::GET, "/metrics", vec![]).await;
    assert!(
        String::from_utf8(metrics)
            .unwrap()
            .contains("shadowkeep_shadow_registrations_total{outcome=\"registered\"} 1")
    );
    assert!(r0.alive());
}

// Password rotation: the replica's verifiers file and the shadow's licence and password
// files, changed while every process runs.

/// Writes `bytes` to `path` whole (through a rename, as a Secret mount swaps its files).
fn replace_file(path: &Path, bytes: &[u8]) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, bytes).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// Writes a verifiers file: for each shadow, its passwords' verifiers with their ids.
fn write_verifiers(path: &Path, entries: &[(&str, &Password, &str)]) {
    let mut file = ShadowVerifiers::default();
    for (shadow, password, id) in entries {
        file.shadows
            .entry((*shadow).to_owned())
            .or_default()
            .push(AcceptedVerifier {
                verifier: password.verifier().unwrap(),
                not_after: None,
                id: Some((*id).to_owned()),
            });
    }
    replace_file(path, &file.encode());
}

/// One replica that accepts no verifier in its configuration and reads `file`.
fn replica_with_file(estate: &Estate, file: &Path) -> (PathBuf, SocketAddr) {
    let (config, addr) = estate.replicas(1, &BTreeMap::new()).remove(0);
    let text = std::fs::read_to_string(&config).unwrap();
    let text = format!("{text}  shadowVerifiersFile: {}\n", file.display());
    std::fs::write(&config, text).unwrap();
    (config, addr)
}

/// The `issuedAt` of a licence file in the estate.
fn issued_at(estate: &Estate, file: &str) -> Timestamp {
    let text = std::fs::read_to_string(estate.dir.join(file)).unwrap();
    estate
        .signer
        .verifier()
        .verify_for_server(&text, SERVER_ID)
        .unwrap()
        .issued_at
}

/// A shadow licence for `shadow` holding `password`'s verifier, issued at `at`.
fn licence_for(estate: &Estate, shadow: &str, password: &Password, at: Timestamp) -> String {
    estate
        .signer
        .sign(&License::shadow(
            SERVER_ID,
            shadow,
            password.verifier().unwrap(),
            at,
        ))
        .unwrap()
}

async fn get_json<T: serde::de::DeserializeOwned>(
    estate: &Estate,
    addr: SocketAddr,
    path: &str,
) -> (T, String) {
    let (status, body) = admin(&estate.connector(OPERATOR), addr, Method::GET, path, vec![]).await;
    let text = String::from_utf8(body).unwrap();
    assert_eq!(status, StatusCode::OK, "{text}");
    (serde_json::from_str(&text).unwrap(), text)
}

async fn metrics_of(estate: &Estate, addr: SocketAddr) -> String {
    let (status, body) = admin(
        &estate.connector(OPERATOR),
        addr,
        Method::GET,
        "/metrics",
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    String::from_utf8(body).unwrap()
}

/// The value of the sample `series` (name and labels) in a metrics text; 0 when absent.
fn sample(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Waits (up to 30 s) until `check` gives a value.
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let bound = Duration::from_secs(30);
    let start = tokio::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The ids of the verifiers a replica reports it accepts for `shadow`.
async fn accepted_ids(estate: &Estate, replica: SocketAddr, shadow: &str) -> Vec<Option<String>> {
    let (state, text): (StateReport, String) = get_json(estate, replica, "/v1/state").await;
    assert!(
        !text.contains("$argon2id"),
        "a PHC string in /v1/state: {text}"
    );
    state
        .accepted_verifiers
        .get(shadow)
        .map(|l| l.iter().map(|v| v.id.clone()).collect())
        .unwrap_or_default()
}

/// `shadow`'s row in a replica's Shadows window.
async fn row_of(estate: &Estate, replica: SocketAddr, shadow: &str) -> Option<RegisteredShadow> {
    let (list, _): (ShadowsReply, String) = get_json(estate, replica, "/v1/shadows").await;
    list.shadows.into_iter().find(|s| s.name == shadow)
}

/// Registrations a replica refused, whatever the reason.
fn refusals(metrics: &str) -> u64 {
    RefusalCode::ALL
        .iter()
        .map(|c| {
            sample(
                metrics,
                &format!("shadowkeep_shadow_registrations_total{{outcome=\"{c}\"}}"),
            )
        })
        .sum()
}

#[tokio::test]
async fn a_password_rotation_by_files_keeps_the_shadow_registered_and_the_old_password_is_refused()
{
    let estate = Estate::new("rotation", &["shadow-a"]);
    let old = estate.passwords["shadow-a"].clone();
    let old_licence = std::fs::read_to_string(estate.dir.join("shadow-a.lic")).unwrap();
    let t0 = issued_at(&estate, "shadow-a.lic");
    let id0 = t0.to_string();
    let file = estate.dir.join("verifiers.json");
    write_verifiers(&file, &[("shadow-a", &old, &id0)]);
    let (config, replica_addr) = replica_with_file(&estate, &file);
    let _replica = Proc::start_as(&config, Some("r0"));
    let shadow = Proc::start(&estate.shadow("shadow-a", &[replica_addr], 0, ""));
    let row = eventually("shadow-a registers with the old password", async || {
        row_of(&estate, replica_addr, "shadow-a").await
    })
    .await;
    assert_eq!(
        (row.verifier_id.as_deref(), row.licence_issued_at),
        (Some(id0.as_str()), t0)
    );
    assert_eq!(
        state_of(&estate, &shadow)
            .await
            .shadow
            .unwrap()
            .licence_issued_at,
        t0
    );

    // 1. Every replica accepts the old and the new verifier.
    let new = Password::generate();
    let t1 = t0.checked_add(jiff::SignedDuration::from_secs(60)).unwrap();
    let id1 = t1.to_string();
    write_verifiers(&file, &[("shadow-a", &old, &id0), ("shadow-a", &new, &id1)]);
    let both = vec![Some(id0.clone()), Some(id1.clone())];
    eventually("the replica accepts both verifiers", async || {
        (accepted_ids(&estate, replica_addr, "shadow-a").await == both).then_some(())
    })
    .await;

    // 2. The shadow gets the new licence and password, and registers with them.
    replace_file(
        &estate.dir.join("shadow-a.lic"),
        licence_for(&estate, "shadow-a", &new, t1).as_bytes(),
    );
    replace_file(
        &estate.dir.join("shadow-a.password"),
        new.expose().as_bytes(),
    );
    eventually("shadow-a registers with the new password", async || {
        row_of(&estate, replica_addr, "shadow-a")
            .await
            .filter(|r| r.verifier_id.as_deref() == Some(id1.as_str()) && r.licence_issued_at == t1)
    })
    .await;
    let report = state_of(&estate, &shadow).await.shadow.unwrap();
    assert_eq!(report.licence_issued_at, t1);
    assert_eq!(report.state, ShadowState::Shadowing);

    // 3. The old verifier is retired; the shadow stays registered and polls on.
    write_verifiers(&file, &[("shadow-a", &new, &id1)]);
    eventually("the replica accepts only the new verifier", async || {
        (accepted_ids(&estate, replica_addr, "shadow-a").await == [Some(id1.clone())]).then_some(())
    })
    .await;
    let retired = Timestamp::now();
    let row = eventually("shadow-a polls after the retirement", async || {
        row_of(&estate, replica_addr, "shadow-a")
            .await
            .filter(|r| r.last_seen.is_some_and(|at| at > retired))
    })
    .await;
    assert_eq!(row.verifier_id.as_deref(), Some(id1.as_str()));
    let report = state_of(&estate, &shadow).await.shadow.unwrap();
    assert_eq!(report.replicas[0].problem, None, "{report:?}");
    let metrics = metrics_of(&estate, replica_addr).await;
    assert_eq!(refusals(&metrics), 0, "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            "shadowkeep_shadow_verifier_reloads_total{outcome=\"loaded\"}"
        ),
        3,
        "{metrics}"
    );
    assert!(!metrics.contains(new.expose()) && !metrics.contains(old.expose()));
    let metrics = metrics_of(&estate, shadow.admin.unwrap()).await;
    assert_eq!(
        sample(
            &metrics,
            "shadowkeep_shadow_credential_reloads_total{outcome=\"loaded\"}"
        ),
        1,
        "{metrics}"
    );

    // 4. A second process holding only the old pair is refused.
    std::fs::write(estate.dir.join("old.lic"), &old_licence).unwrap();
    std::fs::write(estate.dir.join("old.password"), old.expose()).unwrap();
    let d = estate.dir.display();
    let stale_config = estate.shadow("shadow-a", &[replica_addr], 0, "");
    let text = std::fs::read_to_string(&stale_config)
        .unwrap()
        .replace(&format!("{d}/shadow-a.lic"), &format!("{d}/old.lic"))
        .replace(
            &format!("{d}/shadow-a.password"),
            &format!("{d}/old.password"),
        )
        .replace(
            &format!("dataDir: {d}/shadow-a\n"),
            &format!("dataDir: {d}/old\n"),
        );
    let stale_config = estate.dir.join("old.yaml");
    std::fs::write(&stale_config, text).unwrap();
    let stale = Proc::start(&stale_config);
    eventually("the old pair is refused", async || {
        let report = state_of(&estate, &stale).await.shadow.unwrap();
        (report.replicas[0].problem.as_deref() == Some("registration refused: password-wrong"))
            .then_some(())
    })
    .await;
    let metrics = metrics_of(&estate, replica_addr).await;
    assert!(
        sample(
            &metrics,
            "shadowkeep_shadow_registrations_total{outcome=\"password-wrong\"}"
        ) >= 1,
        "{metrics}"
    );
    let row = row_of(&estate, replica_addr, "shadow-a").await.unwrap();
    assert_eq!(row.verifier_id.as_deref(), Some(id1.as_str()));
}

#[tokio::test]
async fn a_verifiers_file_that_goes_bad_while_the_replica_runs_keeps_the_set_in_force() {
    let estate = Estate::new("verifiers-file", &["shadow-a"]);
    let password = estate.passwords["shadow-a"].clone();
    let file = estate.dir.join("verifiers.json");
    let (config, replica_addr) = replica_with_file(&estate, &file);
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_shadowkeep-server"))
            .args(["--config", config.to_str().unwrap()])
            .output()
            .unwrap()
    };
    // Missing or malformed at start: no start, the file and the problem named, no value.
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let prefix = format!("failed to start: shadowVerifiersFile {}: ", file.display());
    assert!(
        stderr.contains(&format!("{prefix}failed to read it")),
        "{stderr}"
    );
    std::fs::write(
        &file,
        format!(
            "{{\"shadows\": {{\"shadow-a\": [{{\"verifier\": \"{}\"}}]}}}}",
            password.expose()
        ),
    )
    .unwrap();
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "{prefix}failed to read the verifiers: `shadows.shadow-a[0].verifier` is not an Argon2id PHC string"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains(password.expose()), "{stderr}");
    assert!(!estate.dir.join("r0").join("log").exists());

    write_verifiers(&file, &[("shadow-a", &password, "v1")]);
    let _replica = Proc::start_as(&config, Some("r0"));
    let shadow = Proc::start(&estate.shadow("shadow-a", &[replica_addr], 0, ""));
    eventually("shadow-a registers", async || {
        row_of(&estate, replica_addr, "shadow-a").await
    })
    .await;
    let licence = std::fs::read_to_string(estate.dir.join("shadow-a.lic")).unwrap();
    let register = async || {
        let body = serde_json::to_vec(&ShadowRegistration {
            licence: licence.clone(),
            password: PasswordText::new(&password),
            instance_id: uuid::Uuid::new_v4(),
        })
        .unwrap();
        admin(
            &estate.connector("shadow-a"),
            replica_addr,
            Method::POST,
            "/v1/shadow/register",
            body,
        )
        .await
        .0
    };
    let refused = "shadowkeep_shadow_verifier_reloads_total{outcome=\"refused\"}";
    // Torn, then gone: each refused once, and the set in force still registers.
    for (n, change) in [1, 2].into_iter().zip([true, false]) {
        if change {
            std::fs::write(&file, b"{\"shadows\": {\"shadow-a\": [{\"verif").unwrap();
        } else {
            std::fs::remove_file(&file).unwrap();
        }
        eventually("the change is refused", async || {
            (sample(&metrics_of(&estate, replica_addr).await, refused) == n).then_some(())
        })
        .await;
        assert_eq!(register().await, StatusCode::OK);
        assert_eq!(
            accepted_ids(&estate, replica_addr, "shadow-a").await,
            [Some("v1".to_owned())]
        );
    }
    // Back, with another id: loaded.
    write_verifiers(&file, &[("shadow-a", &password, "v2")]);
    eventually("the file is loaded again", async || {
        (accepted_ids(&estate, replica_addr, "shadow-a").await == [Some("v2".to_owned())])
            .then_some(())
    })
    .await;
    let metrics = metrics_of(&estate, replica_addr).await;
    assert_eq!(sample(&metrics, refused), 2, "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            "shadowkeep_shadow_verifier_reloads_total{outcome=\"loaded\"}"
        ),
        2,
        "{metrics}"
    );
    // A set without the shadow's verifier retires its registration: it is dropped, and
    // registering again with the password it holds is refused.
    write_verifiers(&file, &[("shadow-a", &Password::generate(), "v3")]);
    eventually("the registration is retired", async || {
        let report = state_of(&estate, &shadow).await.shadow.unwrap();
        let refused =
            report.replicas[0].problem.as_deref() == Some("registration refused: password-wrong");
        (refused && row_of(&estate, replica_addr, "shadow-a").await.is_none()).then_some(())
    })
    .await;
    assert_eq!(register().await, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_shadow_keeps_its_pair_against_a_torn_older_or_mismatched_one_and_falls_back_where_the_new_is_refused()
 {
    let estate = Estate::new("credentials", &["shadow-a"]);
    let configs = estate.replicas(1, &estate.verifiers());
    let (config, replica_addr) = configs[0].clone();
    let mut replica = Proc::start_as(&config, Some("r0"));
    let shadow = Proc::start(&estate.shadow("shadow-a", &[replica_addr], 0, ""));
    let t0 = issued_at(&estate, "shadow-a.lic");
    eventually("shadow-a registers", async || {
        row_of(&estate, replica_addr, "shadow-a").await
    })
    .await;
    let lic = estate.dir.join("shadow-a.lic");
    let pw = estate.dir.join("shadow-a.password");
    let new = Password::generate();
    let t1 = t0.checked_add(jiff::SignedDuration::from_secs(60)).unwrap();
    let new_licence = licence_for(&estate, "shadow-a", &new, t1);
    let older = licence_for(
        &estate,
        "shadow-a",
        &new,
        t0.checked_sub(jiff::SignedDuration::from_hours(1)).unwrap(),
    );
    let refused = "shadowkeep_shadow_credential_reloads_total{outcome=\"refused\"}";
    let other = Password::generate();
    // A torn licence; an older one; a newer licence with a password it does not hold.
    let torn = &new_licence[..new_licence.len() / 2];
    for (n, (licence, password)) in [
        (torn, &new),
        (older.as_str(), &new),
        (new_licence.as_str(), &other),
    ]
    .into_iter()
    .enumerate()
    {
        // The password first: no moment between the two writes holds a valid pair (a
        // newer licence beside the password it was issued for), which the shadow, reading
        // whenever it likes, would rightly take. Each state it reads is refused, so the
        // count may grow by more than one per step.
        replace_file(&pw, password.expose().as_bytes());
        replace_file(&lic, licence.as_bytes());
        eventually("the pair is refused", async || {
            let metrics = metrics_of(&estate, shadow.admin.unwrap()).await;
            (sample(&metrics, refused) > u64::try_from(n).unwrap()).then_some(())
        })
        .await;
        let report = state_of(&estate, &shadow).await.shadow.unwrap();
        assert_eq!(report.licence_issued_at, t0);
    }
    // The pair in force is the old one: a restarted replica, which forgot the shadow, has
    // it register again with it.
    replica.crash();
    let replica = Proc::start_as(&config, Some("r0"));
    let row = eventually("shadow-a registers again", async || {
        row_of(&estate, replica_addr, "shadow-a").await
    })
    .await;
    assert_eq!(row.licence_issued_at, t0);
    assert_eq!(refusals(&metrics_of(&estate, replica_addr).await), 0);

    // A valid new pair the replica does not accept yet: taken, refused there, and the
    // shadow registers with the previous pair in the same round.
    replace_file(&pw, new.expose().as_bytes());
    eventually("the new pair is taken", async || {
        let report = state_of(&estate, &shadow).await.shadow.unwrap();
        (report.licence_issued_at == t1).then_some(())
    })
    .await;
    eventually("the replica refused the new password", async || {
        let metrics = metrics_of(&estate, replica_addr).await;
        (sample(
            &metrics,
            "shadowkeep_shadow_registrations_total{outcome=\"password-wrong\"}",
        ) >= 1)
            .then_some(())
    })
    .await;
    let row = row_of(&estate, replica_addr, "shadow-a").await.unwrap();
    assert_eq!(row.licence_issued_at, t0, "{row:?}");
    let since = Timestamp::now();
    eventually("shadow-a polls on with the previous pair", async || {
        let row = row_of(&estate, replica_addr, "shadow-a").await?;
        let report = state_of(&estate, &shadow).await.shadow.unwrap();
        (row.last_seen.is_some_and(|at| at > since) && report.replicas[0].problem.is_none())
            .then_some(())
    })
    .await;
    drop(replica);
}

#[tokio::test]
async fn a_disabled_shadow_is_re_enabled_by_a_newer_licence_and_password_given_while_it_runs() {
    let estate = Estate::new("relicence", &["shadow-a"]);
    let old = estate.passwords["shadow-a"].clone();
    let new = Password::generate();
    let t0 = issued_at(&estate, "shadow-a.lic");
    let t1 = t0.checked_add(jiff::SignedDuration::from_secs(60)).unwrap();
    let file = estate.dir.join("verifiers.json");
    write_verifiers(
        &file,
        &[("shadow-a", &old, "old"), ("shadow-a", &new, "new")],
    );
    let (config, replica_addr) = replica_with_file(&estate, &file);
    let _replica = Proc::start_as(&config, Some("r0"));
    let shadow = Proc::start(&estate.shadow("shadow-a", &[replica_addr], 0, ""));
    eventually("shadow-a registers", async || {
        row_of(&estate, replica_addr, "shadow-a").await
    })
    .await;
    let (status, body) = admin(
        &estate.connector(OPERATOR),
        shadow.admin.unwrap(),
        Method::PUT,
        "/v1/shadow/desired-state",
        br#"{"state":"Disabled"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    wait_state(
        &estate,
        &shadow,
        ShadowState::Disabled,
        Duration::from_secs(10),
    )
    .await;
    // A disabled shadow does not poll, yet takes a newer licence with its password.
    replace_file(
        &estate.dir.join("shadow-a.password"),
        new.expose().as_bytes(),
    );
    replace_file(
        &estate.dir.join("shadow-a.lic"),
        licence_for(&estate, "shadow-a", &new, t1).as_bytes(),
    );
    wait_state(
        &estate,
        &shadow,
        ShadowState::Shadowing,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        state_of(&estate, &shadow)
            .await
            .shadow
            .unwrap()
            .licence_issued_at,
        t1
    );
    let metrics = metrics_of(&estate, shadow.admin.unwrap()).await;
    assert_eq!(
        sample(
            &metrics,
            "shadowkeep_shadow_transitions_total{from=\"Disabled\",to=\"Shadowing\",reason=\"relicensed\"}"
        ),
        1,
        "{metrics}"
    );
    assert!(!metrics.contains(new.expose()));
    // And polls again, registered with the new pair.
    eventually("shadow-a registers with the new pair", async || {
        row_of(&estate, replica_addr, "shadow-a")
            .await
            .filter(|r| r.verifier_id.as_deref() == Some("new") && r.licence_issued_at == t1)
    })
    .await;
}
