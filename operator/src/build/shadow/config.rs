//! A Shadow's server configuration: the KeyManager's server id, KEK and replicas, the
//! shadow's own certificate, licence and password, and the timings of its Shadow resource.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::ConfigMap;
use shadowkeep_api::crd::Interval;
use shadowkeep_api::server_config::{
    DrivePolicy, KmipConfig, ReplicationConfig, ServerConfig, ShadowConfig, TlsFiles,
};

use super::super::config::{CONFIG_FILE, DATA_DIR, KEK_DIR, TLS_DIR, licence};
use super::super::{ADMIN_PORT, BuildError, KMIP_PORT, port, replicas_of};
use super::ShadowInputs;

/// Where the password Secret's `password` key is mounted.
pub const PASSWORD_DIR: &str = "/etc/shadowkeep/password";

/// The longest a replica may take to answer a poll, unless the grace period is shorter.
const POLL_TIMEOUT_MS: u64 = 1000;
/// Between polls of the replicas and siblings.
const POLL_INTERVAL_MS: u64 = 5000;

/// Whole seconds of `interval`, at least one: the server takes seconds, and 0 would
/// mean "at once".
fn secs(interval: Interval) -> u64 {
    interval.as_duration().as_secs().max(1)
}

/// The shadow's server configuration; `license_public_key` is the KeyManager's licence key
/// (64 hex digits).
pub fn shadow_config(inputs: &ShadowInputs<'_>, license_public_key: &str) -> ServerConfig {
    let spec = &inputs.shadow.spec;
    let km = inputs.key_manager_inputs();
    let tls = |f: &str| PathBuf::from(format!("{TLS_DIR}/{f}"));
    let grace = secs(spec.takeover_grace_period);
    ServerConfig {
        // The shadow serves the KeyManager's keys as the KeyManager: clients see one server id.
        server_id: inputs.key_manager.spec.server_id.clone(),
        kmip: KmipConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], port(KMIP_PORT))),
            ..KmipConfig::default()
        },
        tls: TlsFiles {
            cert: tls("tls.crt"),
            key: tls("tls.key"),
            client_ca: tls("ca.crt"),
        },
        data_dir: PathBuf::from(format!("{DATA_DIR}/store")),
        // What it mirrors is sealed under the KeyManager's KEK, as on the replicas.
        kek_file: PathBuf::from(format!("{KEK_DIR}/kek")),
        // A shadow serves by the drive table it mirrors from the replicas.
        drives: DrivePolicy::default(),
        replication: Some(ReplicationConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], port(ADMIN_PORT))),
            client_cert: tls("tls.crt"),
            client_key: tls("tls.key"),
            // The replicas push keys to it and the operator, presenting the replicas'
            // certificate, asks it to sync and sets its desired state.
            allowed_identities: vec![km.peer_identity()],
            peers: Vec::new(),
            peer_acknowledgements: None,
            sync_interval_secs: inputs
                .key_manager
                .spec
                .sync_interval
                .as_duration()
                .as_secs()
                .max(1),
            ack_timeout_ms: 2000,
            shadow_verifiers: BTreeMap::new(),
            shadow_verifiers_file: None,
            shadow_acknowledgements: 0,
        }),
        keystore_file: None,
        licence: Some(licence(license_public_key)),
        shadow: Some(ShadowConfig {
            replicas: replicas_of(&km),
            siblings: Vec::new(),
            priority: spec.priority,
            password_file: PathBuf::from(format!("{PASSWORD_DIR}/password")),
            takeover_grace_period_secs: grace,
            poll_interval_ms: POLL_INTERVAL_MS,
            // The server refuses a poll timeout as long as the grace period.
            poll_timeout_ms: POLL_TIMEOUT_MS.min(grace * 1000 / 2),
            continuous_service_limit_secs: secs(spec.continuous_service_limit),
            standalone_limit_secs: secs(spec.standalone_limit),
        }),
    }
}

/// The ConfigMap holding the shadow's configuration file.
pub fn shadow_config_map(
    inputs: &ShadowInputs<'_>,
    license_public_key: &str,
) -> Result<ConfigMap, BuildError> {
    let yaml = shadow_config(inputs, license_public_key)
        .to_yaml()
        .map_err(|e| BuildError(e.to_string()))?;
    Ok(ConfigMap {
        metadata: inputs.meta(&inputs.names().config),
        data: Some(BTreeMap::from([(CONFIG_FILE.to_owned(), yaml)])),
        ..ConfigMap::default()
    })
}
