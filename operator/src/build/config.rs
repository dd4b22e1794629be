//! The server configuration, rendered from the KeyManager, its DriveTables and KeyGroups
//! into one ConfigMap that every replica mounts: identical by construction.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt as _;
use shadowkeep_api::server_config::{
    DriveEntry, DrivePolicy, KeyGroupEntry, KmipConfig, LicenceConfig, PeerConfig,
    ReplicationConfig, ServerConfig, TlsFiles, restart_digest,
};

use super::{ADMIN_PORT, BuildError, Inputs, KMIP_PORT};

/// Where the configuration is mounted, and its file name.
pub const CONFIG_DIR: &str = "/etc/shadowkeep/config";
/// The configuration file's key in the ConfigMap.
pub const CONFIG_FILE: &str = "server.yaml";
/// Where the replica certificate is mounted (`tls.crt`, `tls.key`, `ca.crt`).
pub const TLS_DIR: &str = "/etc/shadowkeep/tls";
/// Where the KEK Secret is mounted (key `kek`).
pub const KEK_DIR: &str = "/etc/shadowkeep/kek";
/// Where the canonical keystore Secret is mounted (key `keystore`).
pub const KEYSTORE_DIR: &str = "/etc/shadowkeep/keystore";
/// The data volume.
pub const DATA_DIR: &str = "/var/lib/shadowkeep";
/// Where the license Secret is mounted (key `license`).
pub const LICENSE_DIR: &str = "/etc/shadowkeep/license";
/// Where the shadow verifiers Secret is mounted (key `verifiers.json`).
pub const SHADOW_VERIFIERS_DIR: &str = "/etc/shadowkeep/shadow-verifiers";
/// The verifiers file's key in its Secret, and its name where it is mounted.
pub const VERIFIERS_FILE: &str = "verifiers.json";

/// The licence section: the mounted license, and the KeyManager's licence key
/// (`license_public_key`, 64 hex digits) it and every shadow registration must verify under.
pub fn licence(license_public_key: &str) -> LicenceConfig {
    LicenceConfig {
        file: PathBuf::from(format!("{LICENSE_DIR}/license")),
        public_key: license_public_key.to_owned(),
    }
}

/// The server configuration of the KeyManager's replicas; `license_public_key` is the
/// KeyManager's licence key (64 hex digits).
pub fn server_config(inputs: &Inputs<'_>, license_public_key: &str) -> ServerConfig {
    let km = inputs.key_manager;
    let replicas = usize::try_from(km.spec.replicas).unwrap_or(1);
    let tls = |f: &str| PathBuf::from(format!("{TLS_DIR}/{f}"));
    let mut drives: Vec<DriveEntry> = inputs
        .drive_tables
        .iter()
        .flat_map(|t| t.spec.drives.iter())
        .map(|d| DriveEntry {
            serial: d.serial.clone(),
            certificate_identity: d.certificate_identity.clone(),
            accept_any_certificate: d.accept_any_certificate,
            key_group: d.key_group.clone(),
        })
        .collect();
    drives.sort_by(|a, b| a.serial.cmp(&b.serial));
    let mut key_groups: Vec<KeyGroupEntry> = inputs
        .key_groups
        .iter()
        .map(|g| KeyGroupEntry {
            name: g.name_any(),
            default: g.spec.default_group,
        })
        .collect();
    key_groups.sort_by(|a, b| a.name.cmp(&b.name));
    let peers = replicas_of(inputs);
    let acks = km
        .spec
        .durability
        .peer_acknowledgements
        .map_or(usize::from(replicas > 1), |n| {
            usize::try_from(n).unwrap_or(0)
        });
    ServerConfig {
        server_id: km.spec.server_id.clone(),
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
        kek_file: PathBuf::from(format!("{KEK_DIR}/kek")),
        drives: DrivePolicy {
            // Tables of one KeyManager are one drive table; any of them may open it up.
            accept_unknown: inputs
                .drive_tables
                .iter()
                .any(|t| t.spec.accept_unknown_drives),
            drives,
            key_groups,
        },
        replication: Some(ReplicationConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], port(ADMIN_PORT))),
            client_cert: tls("tls.crt"),
            client_key: tls("tls.key"),
            allowed_identities: vec![inputs.peer_identity()],
            peers,
            peer_acknowledgements: Some(acks),
            sync_interval_secs: km.spec.sync_interval.as_duration().as_secs().max(1),
            ack_timeout_ms: 2000,
            shadow_verifiers: std::collections::BTreeMap::new(),
            shadow_verifiers_file: Some(PathBuf::from(format!(
                "{SHADOW_VERIFIERS_DIR}/{VERIFIERS_FILE}"
            ))),
            shadow_acknowledgements: km
                .spec
                .durability
                .shadow_acknowledgements
                .map_or(0, |n| usize::try_from(n).unwrap_or(0)),
        }),
        keystore_file: Some(PathBuf::from(format!("{KEYSTORE_DIR}/keystore"))),
        licence: Some(licence(license_public_key)),
        shadow: None,
    }
}

/// A port constant of the pod ([`KMIP_PORT`], [`ADMIN_PORT`]) as a socket's port.
pub fn port(p: i32) -> u16 {
    u16::try_from(p).unwrap_or_default()
}

/// Every replica by pod name, with the address of its admin API (replication, keystore).
pub fn replicas_of(inputs: &Inputs<'_>) -> Vec<PeerConfig> {
    let names = inputs.names();
    let ns = inputs.namespace();
    (0..inputs.key_manager.spec.replicas)
        .map(|i| PeerConfig {
            name: format!("{}-{i}", names.statefulset),
            address: format!(
                "{}-{i}.{}.{ns}.svc:{ADMIN_PORT}",
                names.statefulset, names.peers
            ),
        })
        .collect()
}

/// The ConfigMap holding the configuration file of `config`.
pub fn config_map(inputs: &Inputs<'_>, config: &ServerConfig) -> Result<ConfigMap, BuildError> {
    let yaml = config.to_yaml().map_err(|e| BuildError(e.to_string()))?;
    Ok(ConfigMap {
        metadata: inputs.meta(&inputs.names().config, true),
        data: Some(BTreeMap::from([(CONFIG_FILE.to_owned(), yaml)])),
        ..ConfigMap::default()
    })
}

/// The most addresses the hint list carries, as the replicas' `GET /v1/hints` does.
pub const MAX_SHADOW_HINTS: usize = 100;

/// The KeyManager's shadow hint list: the first [`MAX_SHADOW_HINTS`] of `addresses` (IP
/// addresses of its shadows, highest priority first), one per line under `addresses`, for
/// tape library administrators and tools to read without asking a replica.
pub fn shadow_hints_config_map(inputs: &Inputs<'_>, addresses: &[String]) -> ConfigMap {
    let mut text = String::new();
    for address in addresses.iter().take(MAX_SHADOW_HINTS) {
        text.push_str(address);
        text.push('\n');
    }
    ConfigMap {
        metadata: inputs.meta(&inputs.names().shadow_hints, true),
        data: Some(BTreeMap::from([("addresses".to_owned(), text)])),
        ..ConfigMap::default()
    }
}

/// A hash of the parts of `config` that only a restart applies, put on the pod template so
/// that a change of them rolls the pods. The live part (the drive policy: DriveTables and
/// KeyGroups) is left out: servers re-read it from the ConfigMap, and the operator pushes
/// it, without a restart.
pub fn config_hash(config: &ServerConfig) -> String {
    restart_digest(config)[..32].to_owned()
}
