//! The shadow builders' configuration runs: a replica started from the configuration the
//! operator renders for its KeyManager and a shadow started from the one it renders for
//! the Shadow, with a licence, password and certificates made as the operator makes them,
//! both in this process on 127.0.0.1. The shadow registers with the replica, so the
//! licence key, the shadow's identity (its certificate) and the replica's admin API
//! address all fit. Only listen addresses and file paths are changed to fit this machine,
//! and the replica is given the shadow's verifier, which the rotation will provide.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use shadowkeep::build::{Inputs, ShadowInputs, server_config, shadow_config, shadow_tls};
use shadowkeep::core::shadow::credentials::Accept;
use shadowkeep::core::shadow::supervise::verifiers_file;
use shadowkeep_api::crd::{KeyManager, Shadow};
use shadowkeep_api::keystore::Kek;
use shadowkeep_api::license::{License, LicenseSigner};
use shadowkeep_api::password::Password;
use shadowkeep_api::pki::{Authority, Usage};
use shadowkeep_api::server_config::ServerConfig;
use shadowkeep_server::https::{connector_from_pem, http1_connect_as, send};

const KEY_MANAGER: &str = "
apiVersion: shadowkeep.io/v1alpha1
kind: KeyManager
metadata: {name: vault, namespace: tapes}
spec: {serverId: vault-a, replicas: 1, placement: {zones: [site-a]}}
";

const SHADOW: &str = "
apiVersion: shadowkeep.io/v1alpha1
kind: Shadow
metadata: {name: vault-dr, namespace: tapes}
spec: {keyManagerRef: {name: vault}, placement: {zone: site-b}, priority: 7}
";

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Starts `config` in this process; the admin API's address.
async fn start(config: &ServerConfig) -> std::net::SocketAddr {
    let server = shadowkeep_server::Server::new(config).unwrap();
    let (admin, address) = server.bind_admin().await.unwrap().unwrap();
    let kmip = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    tokio::spawn(server.serve(kmip, Some(admin), std::future::pending()));
    address
}

/// The shadows the replica at `replica_admin` lists as registered, asked with its own
/// certificate (the identity the shadow's config allows), once one is listed or after a
/// minute.
async fn registered(
    replica_admin: std::net::SocketAddr,
    ca: &Authority,
    replica_tls: &shadowkeep_api::pki::Pair,
) -> Vec<String> {
    let connector = connector_from_pem(
        ca.cert_pem().as_bytes(),
        Some((
            replica_tls.cert_pem.as_bytes(),
            replica_tls.key_pem.as_bytes(),
        )),
    )
    .unwrap();
    let address = replica_admin.to_string();
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let mut sender = http1_connect_as(&address, "127.0.0.1", &connector)
            .await
            .unwrap();
        let (status, body) = send(
            &mut sender,
            &address,
            hyper::Method::GET,
            "/v1/shadows",
            Vec::new(),
        )
        .await
        .unwrap();
        assert!(
            status.is_success(),
            "{status}: {}",
            String::from_utf8_lossy(&body)
        );
        let reply: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let names: Vec<String> = reply["shadows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect();
        if !names.is_empty() || Instant::now() > deadline {
            return names;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_shadow_from_the_rendered_configuration_registers_with_a_rendered_replica() {
    let dir = std::env::temp_dir().join(format!("shadowkeep-shadow-config-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let km: KeyManager = serde_yaml::from_str(KEY_MANAGER).unwrap();
    let shadow: Shadow = serde_yaml::from_str(SHADOW).unwrap();
    let inputs = Inputs::of_key_manager(&km);
    let shadow_inputs = ShadowInputs {
        shadow: &shadow,
        key_manager: &km,
        default_image: None,
    };

    // What the operator makes: the CA, the replica's and the shadow's certificates, the
    // KEK, the licence key and the licences, the shadow's password.
    let ca = Authority::generate("vault CA").unwrap();
    let ca_file = write(&dir, "ca.crt", ca.cert_pem().as_bytes());
    // The replica's certificate as generated, plus this machine's address.
    let replica_tls = ca
        .leaf(
            "vault.tapes",
            &["127.0.0.1".to_owned(), inputs.peer_identity()],
            Usage::ServerAndClient,
        )
        .unwrap();
    let replica_crt = write(&dir, "replica.crt", replica_tls.cert_pem.as_bytes());
    let replica_key = write(&dir, "replica.key", replica_tls.key_pem.as_bytes());
    let (shadow_crt, shadow_key, _) = shadow_tls(&shadow_inputs, &ca).unwrap();
    let shadow_crt = write(&dir, "shadow.crt", &shadow_crt);
    let shadow_key = write(&dir, "shadow.key", &shadow_key);
    let kek = write(&dir, "kek", Kek::generate().as_bytes());
    let signer = LicenseSigner::generate();
    let public_key = hex::encode(signer.verifier().to_bytes());
    let replica_licence = shadowkeep::core::material::license(&inputs, &signer.seed()[..]).unwrap();
    let replica_licence = write(&dir, "replica.license", &replica_licence);
    let password = Password::generate();
    let shadow_licence = signer
        .sign(&License::shadow(
            "vault-a",
            "vault-dr",
            password.verifier().unwrap(),
            Timestamp::now(),
        ))
        .unwrap();
    let shadow_licence = write(&dir, "shadow.license", shadow_licence.as_bytes());
    let password_file = write(&dir, "password", password.expose().as_bytes());

    let mut replica = server_config(&inputs, &public_key);
    replica.kmip.listen = "127.0.0.1:0".parse().unwrap();
    replica.tls.cert.clone_from(&replica_crt);
    replica.tls.key.clone_from(&replica_key);
    replica.tls.client_ca.clone_from(&ca_file);
    replica.data_dir = dir.join("replica-store");
    replica.kek_file.clone_from(&kek);
    replica.keystore_file = None;
    replica.licence.as_mut().unwrap().file = replica_licence;
    let replication = replica.replication.as_mut().unwrap();
    replication.listen = "127.0.0.1:0".parse().unwrap();
    replication.client_cert.clone_from(&replica_crt);
    replication.client_key.clone_from(&replica_key);
    replication.peers.clear();
    replication.peer_acknowledgements = Some(0);
    // The verifiers file as the control core writes it, where the rendered config names it.
    let accepted = BTreeMap::from([(
        "vault-dr".to_owned(),
        vec![Accept {
            verifier: password.verifier().unwrap(),
            id: "first".to_owned(),
            not_after: None,
        }],
    )]);
    let verifiers = write(&dir, "verifiers.json", &verifiers_file(&accepted));
    assert!(replication.shadow_verifiers_file.is_some());
    replication.shadow_verifiers_file = Some(verifiers);
    let replica_admin = start(&replica).await;

    let mut config = shadow_config(&shadow_inputs, &public_key);
    config.kmip.listen = "127.0.0.1:0".parse().unwrap();
    config.tls.cert.clone_from(&shadow_crt);
    config.tls.key.clone_from(&shadow_key);
    config.tls.client_ca.clone_from(&ca_file);
    config.data_dir = dir.join("shadow-store");
    config.kek_file.clone_from(&kek);
    config.licence.as_mut().unwrap().file = shadow_licence;
    let replication = config.replication.as_mut().unwrap();
    replication.listen = "127.0.0.1:0".parse().unwrap();
    replication.client_cert.clone_from(&shadow_crt);
    replication.client_key.clone_from(&shadow_key);
    let settings = config.shadow.as_mut().unwrap();
    assert_eq!(settings.replicas.len(), 1);
    settings.replicas[0].address = replica_admin.to_string();
    settings.password_file = password_file;
    settings.poll_interval_ms = 200;
    start(&config).await;

    let shadows = registered(replica_admin, &ca, &replica_tls).await;
    assert_eq!(shadows, ["vault-dr"], "the shadow registered by its name");
    std::fs::remove_dir_all(dir).unwrap();
}
