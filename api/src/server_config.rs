//! The key server's configuration file: the one contract between the operator, which
//! renders it from a KeyManager, its DriveTables and KeyGroups, and the server, which reads
//! it. Every replica of a KeyManager gets the same file.
//!
//! The file is YAML, decoded strictly: an unknown field is an error, so a setting the
//! server does not understand never goes unnoticed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::shadow::registration::AcceptedVerifier;

/// Largest configuration a server takes, from its file or pushed to its admin API: a
/// ConfigMap's own limit, so that whatever the operator can render fits.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// The fields a running server applies without restarting: the drive policy, `drives`
/// (`drives.acceptUnknown`, `drives.drives`, `drives.keyGroups`). They are everything
/// DriveTables and KeyGroups render into a server configuration, so that a change to either
/// reaches a running server without a restart. Any other field only takes effect when the
/// server starts.
pub const LIVE_FIELDS: &[&str] = &["drives"];

/// The hex SHA-256 of a drive policy, the live part of a configuration ([`LIVE_FIELDS`]):
/// what a server reports as its configuration digest and the operator compares with what it
/// rendered. Computed over the policy's JSON, so that the same policy has the same digest
/// however its file was written.
pub fn live_digest(policy: &DrivePolicy) -> String {
    // A DrivePolicy is plain strings and booleans: its JSON cannot fail.
    let json = serde_json::to_vec(policy).unwrap_or_default();
    hex::encode(Sha256::digest(json))
}

/// The hex SHA-256 of everything in a configuration but its live part: what only a restart
/// applies. A change of it (TLS, KEK, listeners, peers, ...) must restart the server; a
/// change of the live part alone must not.
pub fn restart_digest(config: &ServerConfig) -> String {
    let json = serde_json::to_vec(&config.restart_part()).unwrap_or_default();
    hex::encode(Sha256::digest(json))
}

/// The configuration a server runs with, as `GET /v1/state` and `PUT /v1/configuration`
/// report it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigurationReport {
    /// [`live_digest`] of the drive policy in force: on a replica, its configuration's; on
    /// a shadow, the one it mirrors from the replicas.
    pub digest: String,
    /// When the drive policy in force was taken.
    pub applied_at: Timestamp,
    /// Why the last configuration read or pushed was refused (the one in force stays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Fields of the last configuration taken that differ from those the server started
    /// with and only a restart applies; the live part was applied all the same.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart_needed: Vec<String>,
}

/// The whole configuration of one key server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerConfig {
    /// The KeyManager's server id, reported by Query and written into licenses.
    pub server_id: String,
    /// Where the server listens for KMIP clients.
    #[serde(default)]
    pub kmip: KmipConfig,
    /// Certificate, key and the CA that client certificates must chain to.
    pub tls: TlsFiles,
    /// Directory of the durable keystore (snapshot and log). Created if missing.
    pub data_dir: PathBuf,
    /// File holding the 32-byte key-encryption key.
    pub kek_file: PathBuf,
    /// Who may ask for keys.
    #[serde(default)]
    pub drives: DrivePolicy,
    /// The admin and replication API and the peer replicas; absent for a lone server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationConfig>,
    /// A keystore file the operator writes from its canonical keystore Secret. It is merged
    /// into the store at start and whenever it changes; it never replaces what the store
    /// holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keystore_file: Option<PathBuf>,
    /// The signed licence that decides whether this server is a replica or a shadow. The
    /// server refuses to start, naming the file and the reason, when it is missing, altered,
    /// signed by another key or issued for another server id. Without it the server is an
    /// unlicensed replica (development, and configurations rendered before licences).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licence: Option<LicenceConfig>,
    /// What a shadow needs besides its licence: its KeyManager's replicas, its timings and
    /// password. Required with a shadow licence, refused with a replica's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowConfig>,
}

/// Where the licence is and the key it must verify under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LicenceConfig {
    /// The licence file (`skl1.…`), as the operator issued it.
    pub file: PathBuf,
    /// The KeyManager's licence verifying key: 32 bytes, hex. Replicas also check shadow
    /// registrations against it.
    pub public_key: String,
}

/// A shadow's settings. The operator renders them from the Shadow resource; `shadowkeep
/// up` builds them the same way. The shadow's admin API (state, sync, desired state) and
/// the certificate it registers with are `replication.listen`, `clientCert` and
/// `clientKey`; a shadow has no peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShadowConfig {
    /// The admin API addresses of the KeyManager's replicas: the shadow registers with,
    /// mirrors from and judges reachability by these.
    pub replicas: Vec<PeerConfig>,
    /// Admin API addresses of sibling shadows (same KeyManager) known in advance. The
    /// replicas tell the shadow about the others; it keeps what it learned on disk, so it
    /// still finds its siblings when the replicas are gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub siblings: Vec<PeerConfig>,
    /// Rank among siblings: the higher serves first, ties by name.
    #[serde(default)]
    pub priority: i32,
    /// File holding the shadow's password (the operator's Secret). It is sent only to the
    /// replicas at registration, over mutual TLS; the shadow keeps no other copy.
    pub password_file: PathBuf,
    /// Seconds without an answer from any replica before the shadow serves.
    #[serde(default = "default_grace")]
    pub takeover_grace_period_secs: u64,
    /// Milliseconds between polls of the replicas and siblings.
    #[serde(default = "default_poll_interval")]
    pub poll_interval_ms: u64,
    /// Milliseconds a replica has to answer a poll: one that accepts the connection but does
    /// not answer in time (hung, stopped) counts as gone.
    #[serde(default = "default_poll_timeout")]
    pub poll_timeout_ms: u64,
    /// Longest stretch of service, in seconds, before the shadow goes Inactive.
    #[serde(default = "default_continuous_limit")]
    pub continuous_service_limit_secs: u64,
    /// Longest time, in seconds, without an answer from any replica before the shadow
    /// disables itself for good.
    #[serde(default = "default_standalone_limit")]
    pub standalone_limit_secs: u64,
}

fn default_grace() -> u64 {
    300
}

fn default_poll_interval() -> u64 {
    5000
}

fn default_poll_timeout() -> u64 {
    1000
}

fn default_continuous_limit() -> u64 {
    7 * 86_400
}

fn default_standalone_limit() -> u64 {
    60 * 86_400
}

/// The admin and replication API (HTTPS) and the mirrors of this replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Where the admin API listens: health, readiness and metrics for anyone; keystore
    /// digest, delta and merge for peers. It uses the KMIP listener's certificate.
    pub listen: SocketAddr,
    /// The certificate and key this replica presents to its peers.
    pub client_cert: PathBuf,
    /// The key of `clientCert`.
    pub client_key: PathBuf,
    /// Certificate identities allowed to read and merge the keystore (the peers', and the
    /// operator's).
    pub allowed_identities: Vec<String>,
    /// The replicas of the KeyManager. A replica leaves out the entry named like itself
    /// (environment `SHADOWKEEP_REPLICA_NAME`, else `HOSTNAME`), so that every replica can
    /// share one configuration.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// How many peers must hold a new key before Create or Register succeeds. Defaults to
    /// 1 when there are peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_acknowledgements: Option<usize>,
    /// Seconds between anti-entropy rounds with every peer.
    #[serde(default = "default_sync_interval")]
    pub sync_interval_secs: u64,
    /// Milliseconds to wait for peer acknowledgements before a Create fails.
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout_ms: u64,
    /// The Argon2id verifiers of the passwords this replica accepts, by shadow name: during
    /// a rotation the new one without a not-after and the old one until its not-after.
    /// Verifiers only; no password is in the configuration.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shadow_verifiers: BTreeMap<String, Vec<AcceptedVerifier>>,
    /// A JSON file of further verifiers (`shadow::verifiers::ShadowVerifiers`), appended
    /// shadow by shadow to `shadowVerifiers`. The replica reads it at start (and refuses to
    /// start without it) and again whenever its content changes, so that the operator
    /// rotates a shadow's password without restarting a replica. Needs the licence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_verifiers_file: Option<PathBuf>,
    /// How many registered shadows must hold a new key before Create or Register succeeds
    /// (within `ackTimeoutMs`, else the key is aborted). New keys are pushed to every
    /// registered shadow either way. Needs a licence: shadows register against it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shadow_acknowledgements: usize,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde passes a reference
fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl ReplicationConfig {
    /// The acknowledgements a new key needs: as configured, else 1 when there are peers.
    pub fn required_acks(&self) -> usize {
        self.peer_acknowledgements
            .unwrap_or_else(|| usize::from(!self.peers.is_empty()))
    }
}

fn default_sync_interval() -> u64 {
    30
}

fn default_ack_timeout() -> u64 {
    2000
}

/// Another replica of the same KeyManager.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerConfig {
    /// A name for logs and metrics.
    pub name: String,
    /// `host:port` of the peer's admin API; the host must match its certificate.
    pub address: String,
}

/// The KMIP listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KmipConfig {
    /// Address and port; KMIP's registered port is 5696.
    #[serde(default = "default_kmip_listen")]
    pub listen: SocketAddr,
    /// Seconds a connection may stay silent (between or within messages) before it is closed.
    /// The admin API's connections are held to it too.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Connections served at once; further clients wait in the listen queue.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds a client may take over its TLS handshake, on this listener and the admin
    /// API's. Apart from, and much shorter than, the idle timeout: a connection that has
    /// not authenticated should not hold a slot for long.
    #[serde(
        default = "default_handshake_timeout",
        skip_serializing_if = "is_default_handshake_timeout"
    )]
    pub handshake_timeout_secs: u64,
    /// Of `maxConnections`, how many may be connections still in their TLS handshake;
    /// the rest is kept for clients that have authenticated. When these are all taken, a
    /// new connection takes the place of the oldest. Defaults to a quarter of
    /// `maxConnections` (see [`KmipConfig::handshakes`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_handshakes: Option<usize>,
}

impl KmipConfig {
    /// Connections that may be in their TLS handshake at once: as configured, else a
    /// quarter of `max_connections` (at least 1).
    pub fn handshakes(&self) -> usize {
        self.max_handshakes
            .unwrap_or((self.max_connections / 4).max(1))
    }
}

impl Default for KmipConfig {
    fn default() -> Self {
        Self {
            listen: default_kmip_listen(),
            idle_timeout_secs: default_idle_timeout(),
            max_connections: default_max_connections(),
            handshake_timeout_secs: default_handshake_timeout(),
            max_handshakes: None,
        }
    }
}

fn default_kmip_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 5696))
}

fn default_idle_timeout() -> u64 {
    120
}

fn default_max_connections() -> usize {
    1024
}

fn default_handshake_timeout() -> u64 {
    5
}

// Configurations rendered before the field existed stay byte for byte the same.
#[allow(clippy::trivially_copy_pass_by_ref)] // serde passes a reference
fn is_default_handshake_timeout(secs: &u64) -> bool {
    *secs == default_handshake_timeout()
}

/// PEM files for mutual TLS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsFiles {
    /// The server certificate chain.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// CA certificates that client certificates must chain to.
    pub client_ca: PathBuf,
}

/// The drive table as the server applies it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DrivePolicy {
    /// Serve clients that match no entry. Off, they get a KMIP permission error.
    #[serde(default)]
    pub accept_unknown: bool,
    /// The known drives and libraries.
    #[serde(default)]
    pub drives: Vec<DriveEntry>,
    /// The key groups drives belong to; keys a drive creates are tagged with its group.
    #[serde(default)]
    pub key_groups: Vec<KeyGroupEntry>,
}

/// A key group, as the server knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyGroupEntry {
    /// The KeyGroup's name.
    pub name: String,
    /// The group of drives that name none, and of accepted unknown drives.
    #[serde(default)]
    pub default: bool,
}

/// One known drive or library.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DriveEntry {
    /// Serial number, matched against a Device credential's serial number.
    pub serial: String,
    /// Identity in the client certificate (subject common name or a subject alternative
    /// name), matched against the connection's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_identity: Option<String>,
    /// Without a certificate identity: whether a Device credential's serial alone admits
    /// the client, whatever certificate (from the client CA) it presents. Off, the entry
    /// admits no one unless `acceptUnknown` is on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accept_any_certificate: bool,
    /// The key group of the drive's keys; the default group when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_group: Option<String>,
}

/// Why a configuration file is refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid server configuration: {0}")]
pub struct ConfigError(String);

impl ServerConfig {
    /// Parses a configuration file's text.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = serde_yaml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        if config.server_id.is_empty() {
            return Err(ConfigError("serverId: must not be empty".to_owned()));
        }
        let groups = &config.drives.key_groups;
        if groups.iter().filter(|g| g.default).count() > 1 {
            return Err(ConfigError(
                "drives.keyGroups: more than one default group".to_owned(),
            ));
        }
        for (i, drive) in config.drives.drives.iter().enumerate() {
            if drive.accept_any_certificate && drive.certificate_identity.is_some() {
                return Err(ConfigError(format!(
                    "drives.drives[{i}].acceptAnyCertificate: is only for an entry without a certificateIdentity"
                )));
            }
            if let Some(group) = &drive.key_group
                && !groups.iter().any(|g| &g.name == group)
            {
                return Err(ConfigError(format!(
                    "drives.drives[{i}].keyGroup: {group:?} is not in drives.keyGroups"
                )));
            }
        }
        if let Some(r) = &config.replication {
            if r.required_acks() > r.peers.len() {
                return Err(ConfigError(format!(
                    "replication.peerAcknowledgements: {} acknowledgements asked of {} peers",
                    r.required_acks(),
                    r.peers.len()
                )));
            }
            if r.sync_interval_secs == 0 || r.ack_timeout_ms == 0 {
                return Err(ConfigError(
                    "replication: syncIntervalSecs and ackTimeoutMs must be greater than 0"
                        .to_owned(),
                ));
            }
        }
        if config.licence.is_none()
            && config
                .replication
                .as_ref()
                .is_some_and(|r| r.shadow_acknowledgements > 0)
        {
            return Err(ConfigError(
                "replication.shadowAcknowledgements: needs licence (shadows register against its key)"
                    .to_owned(),
            ));
        }
        if config.licence.is_none()
            && config
                .replication
                .as_ref()
                .is_some_and(|r| r.shadow_verifiers_file.is_some())
        {
            return Err(ConfigError(
                "replication.shadowVerifiersFile: needs licence (shadows register against its key)"
                    .to_owned(),
            ));
        }
        if let Some(r) = &config.replication {
            check_verifier_ids(&r.shadow_verifiers)?;
        }
        if let Some(shadow) = &config.shadow {
            check_shadow(shadow, config.replication.as_ref())?;
        }
        let kmip = &config.kmip;
        if kmip.max_connections == 0
            || kmip.idle_timeout_secs == 0
            || kmip.handshake_timeout_secs == 0
        {
            return Err(ConfigError(
                "kmip: maxConnections, idleTimeoutSecs and handshakeTimeoutSecs must be greater than 0"
                    .to_owned(),
            ));
        }
        if let Some(n) = kmip.max_handshakes
            && (n == 0 || n > kmip.max_connections)
        {
            return Err(ConfigError(format!(
                "kmip.maxHandshakes: {n} must be between 1 and maxConnections ({})",
                kmip.max_connections
            )));
        }
        Ok(config)
    }

    /// The file's text.
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        serde_yaml::to_string(self).map_err(|e| ConfigError(e.to_string()))
    }

    /// The configuration without its live part ([`LIVE_FIELDS`]): what only a restart
    /// applies.
    #[must_use]
    pub fn restart_part(&self) -> Self {
        Self {
            drives: DrivePolicy::default(),
            ..self.clone()
        }
    }

    /// The fields of `other`, by their names in the file, that differ from this one's and
    /// need a restart to apply; empty when only the live part differs.
    pub fn needs_restart_for(&self, other: &Self) -> Vec<String> {
        let fields = [
            ("serverId", self.server_id != other.server_id),
            ("kmip", self.kmip != other.kmip),
            ("tls", self.tls != other.tls),
            ("dataDir", self.data_dir != other.data_dir),
            ("kekFile", self.kek_file != other.kek_file),
            ("replication", self.replication != other.replication),
            ("keystoreFile", self.keystore_file != other.keystore_file),
            ("licence", self.licence != other.licence),
            ("shadow", self.shadow != other.shadow),
        ];
        let differ: Vec<String> = fields
            .iter()
            .filter(|(_, differs)| *differs)
            .map(|(name, _)| (*name).to_owned())
            .collect();
        debug_assert_eq!(
            differ.is_empty(),
            self.restart_part() == other.restart_part(),
            "a field of ServerConfig is missing from needs_restart_for"
        );
        differ
    }
}

/// The ids of the inline verifiers are bounded as the verifiers file's are.
fn check_verifier_ids(
    verifiers: &BTreeMap<String, Vec<AcceptedVerifier>>,
) -> Result<(), ConfigError> {
    use crate::shadow::verifiers::MAX_VERIFIER_ID_CHARS;
    for (shadow, list) in verifiers {
        for (i, v) in list.iter().enumerate() {
            let len = v.id.as_deref().map_or(0, |id| id.chars().count());
            if len > MAX_VERIFIER_ID_CHARS {
                return Err(ConfigError(format!(
                    "replication.shadowVerifiers.{shadow}[{i}].id: {len} characters, at most {MAX_VERIFIER_ID_CHARS}"
                )));
            }
        }
    }
    Ok(())
}

fn check_shadow(
    shadow: &ShadowConfig,
    replication: Option<&ReplicationConfig>,
) -> Result<(), ConfigError> {
    let Some(replication) = replication else {
        return Err(ConfigError(
            "shadow: needs replication (its admin API listener and the certificate it registers with)"
                .to_owned(),
        ));
    };
    if !replication.peers.is_empty() {
        return Err(ConfigError(
            "replication.peers: a shadow has no peers; its KeyManager's replicas go in shadow.replicas"
                .to_owned(),
        ));
    }
    if shadow.replicas.is_empty() {
        return Err(ConfigError(
            "shadow.replicas: at least one replica to mirror".to_owned(),
        ));
    }
    for (name, value) in [
        ("takeoverGracePeriodSecs", shadow.takeover_grace_period_secs),
        ("pollIntervalMs", shadow.poll_interval_ms),
        ("pollTimeoutMs", shadow.poll_timeout_ms),
        (
            "continuousServiceLimitSecs",
            shadow.continuous_service_limit_secs,
        ),
        ("standaloneLimitSecs", shadow.standalone_limit_secs),
    ] {
        if value == 0 {
            return Err(ConfigError(format!(
                "shadow.{name}: must be greater than 0"
            )));
        }
    }
    if shadow.poll_timeout_ms >= shadow.takeover_grace_period_secs.saturating_mul(1000) {
        return Err(ConfigError(
            "shadow.pollTimeoutMs: must be shorter than the takeover grace period".to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_part_is_the_drive_policy_and_nothing_else_restarts_for_it() {
        let base = "serverId: tape\ntls: {cert: s.pem, key: s.key, clientCa: ca.pem}\ndataDir: /d\nkekFile: /k\n";
        let config = ServerConfig::from_yaml(base).unwrap();
        let drives = "drives:\n  keyGroups: [{name: lto, default: true}]\n  drives: [{serial: D1, certificateIdentity: lib}]\n";
        let more = ServerConfig::from_yaml(&format!("{base}{drives}")).unwrap();
        assert!(config.needs_restart_for(&more).is_empty());
        assert_eq!(restart_digest(&config), restart_digest(&more));
        assert_ne!(live_digest(&config.drives), live_digest(&more.drives));
        assert_eq!(live_digest(&more.drives).len(), 64);
        // The same policy written another way (JSON, other spacing) has the same digest.
        let json = serde_json::to_string(&more).unwrap();
        let again = ServerConfig::from_yaml(&json).unwrap();
        assert_eq!(live_digest(&again.drives), live_digest(&more.drives));
        let moved = ServerConfig::from_yaml(
            &format!("{base}{drives}").replace("kekFile: /k", "kekFile: /other"),
        )
        .unwrap();
        assert_eq!(more.needs_restart_for(&moved), vec!["kekFile".to_owned()]);
        assert_ne!(restart_digest(&more), restart_digest(&moved));
        let tls = ServerConfig::from_yaml(&base.replace("s.pem", "t.pem")).unwrap();
        assert_eq!(config.needs_restart_for(&tls), vec!["tls".to_owned()]);
    }

    #[test]
    fn round_trips_and_refuses_unknown_fields() {
        let text = "serverId: tape\ntls: {cert: s.pem, key: s.key, clientCa: ca.pem}\ndataDir: /data\nkekFile: /kek\n";
        let config = ServerConfig::from_yaml(text).unwrap();
        assert_eq!(config.kmip.listen.port(), 5696);
        assert!(!config.drives.accept_unknown);
        let again = ServerConfig::from_yaml(&config.to_yaml().unwrap()).unwrap();
        assert_eq!(again, config);
        let err = ServerConfig::from_yaml(&format!("{text}peerz: []\n")).unwrap_err();
        assert!(err.to_string().contains("unknown field `peerz`"), "{err}");
        let err = ServerConfig::from_yaml(&text.replace("tape", "''")).unwrap_err();
        assert!(err.to_string().contains("serverId"), "{err}");
    }

    #[test]
    fn listener_bounds_default_and_are_checked() {
        let base = "serverId: tape\ntls: {cert: s.pem, key: s.key, clientCa: ca.pem}\ndataDir: /d\nkekFile: /k\n";
        let config = ServerConfig::from_yaml(base).unwrap();
        assert_eq!(config.kmip.handshake_timeout_secs, 5);
        assert_eq!(config.kmip.handshakes(), 256);
        // Rendered configurations do not change for the new fields' defaults.
        let yaml = config.to_yaml().unwrap();
        assert!(!yaml.contains("handshake"), "{yaml}");
        let small =
            ServerConfig::from_yaml(&format!("{base}kmip: {{maxConnections: 2}}\n")).unwrap();
        assert_eq!(small.kmip.handshakes(), 1);
        let set = "kmip: {maxConnections: 8, maxHandshakes: 3, handshakeTimeoutSecs: 2}\n";
        let config = ServerConfig::from_yaml(&format!("{base}{set}")).unwrap();
        assert_eq!(
            (config.kmip.handshakes(), config.kmip.handshake_timeout_secs),
            (3, 2)
        );
        assert_eq!(
            ServerConfig::from_yaml(&config.to_yaml().unwrap()).unwrap(),
            config
        );
        let err = ServerConfig::from_yaml(&format!(
            "{base}kmip: {{maxConnections: 8, maxHandshakes: 9}}\n"
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid server configuration: kmip.maxHandshakes: 9 must be between 1 and maxConnections (8)"
        );
        let err = ServerConfig::from_yaml(&format!("{base}kmip: {{handshakeTimeoutSecs: 0}}\n"))
            .unwrap_err();
        assert!(err.to_string().contains("handshakeTimeoutSecs"), "{err}");
    }

    #[test]
    fn drive_key_groups_must_exist_and_one_default_at_most() {
        let base = "serverId: tape\ntls: {cert: s.pem, key: s.key, clientCa: ca.pem}\ndataDir: /d\nkekFile: /k\n";
        let drives = "drives:\n  keyGroups: [{name: lto, default: true}]\n  drives: [{serial: D1, keyGroup: gold}]\n";
        let err = ServerConfig::from_yaml(&format!("{base}{drives}")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid server configuration: drives.drives[0].keyGroup: \"gold\" is not in drives.keyGroups"
        );
        let two = "drives:\n  keyGroups: [{name: a, default: true}, {name: b, default: true}]\n";
        let err = ServerConfig::from_yaml(&format!("{base}{two}")).unwrap_err();
        assert!(err.to_string().contains("more than one default"), "{err}");
        let peers = "replication: {listen: \"127.0.0.1:1\", clientCert: c, clientKey: k, allowedIdentities: [], peerAcknowledgements: 2, peers: [{name: b, address: \"h:1\"}]}\n";
        let err = ServerConfig::from_yaml(&format!("{base}{peers}")).unwrap_err();
        assert!(
            err.to_string()
                .contains("2 acknowledgements asked of 1 peers"),
            "{err}"
        );
    }

    #[test]
    fn accept_any_certificate_is_only_for_entries_without_an_identity() {
        let base = "serverId: tape\ntls: {cert: s.pem, key: s.key, clientCa: ca.pem}\ndataDir: /d\nkekFile: /k\n";
        let alone = "drives:\n  drives: [{serial: D1, acceptAnyCertificate: true}]\n";
        let config = ServerConfig::from_yaml(&format!("{base}{alone}")).unwrap();
        assert!(config.drives.drives[0].accept_any_certificate);
        let both = "drives:\n  drives: [{serial: D1, certificateIdentity: lib, acceptAnyCertificate: true}]\n";
        let err = ServerConfig::from_yaml(&format!("{base}{both}")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid server configuration: drives.drives[0].acceptAnyCertificate: is only for an entry without a certificateIdentity"
        );
    }
    #[test]
    fn a_shadow_configuration_is_checked_and_names_the_field() {
        let base = "serverId: tape\ntls: {cert: s.pem, key: s.key, clientCa: ca.pem}\ndataDir: /d\nkekFile: /k\nlicence: {file: l, publicKey: \"00\"}\n";
        let admin = "replication: {listen: \"127.0.0.1:1\", clientCert: c, clientKey: k, allowedIdentities: [op]}\n";
        let shadow = "shadow: {passwordFile: p, replicas: [{name: r0, address: \"h:1\"}]}\n";
        let config = ServerConfig::from_yaml(&format!("{base}{admin}{shadow}")).unwrap();
        let s = config.shadow.as_ref().unwrap();
        assert_eq!(
            (
                s.takeover_grace_period_secs,
                s.poll_interval_ms,
                s.poll_timeout_ms
            ),
            (300, 5000, 1000)
        );
        assert_eq!(
            ServerConfig::from_yaml(&config.to_yaml().unwrap()).unwrap(),
            config
        );
        let refused = |text: String| ServerConfig::from_yaml(&text).unwrap_err().to_string();
        assert!(refused(format!("{base}{shadow}")).contains("shadow: needs replication"));
        let with_peers = admin.replace("allowedIdentities: [op]", "allowedIdentities: [op], peers: [{name: x, address: \"h:2\"}], peerAcknowledgements: 0");
        assert!(
            refused(format!("{base}{with_peers}{shadow}"))
                .contains("replication.peers: a shadow has no peers")
        );
        let none = "shadow: {passwordFile: p, replicas: []}\n";
        assert!(refused(format!("{base}{admin}{none}")).contains("shadow.replicas"));
        let zero = shadow.replace("passwordFile: p", "passwordFile: p, pollIntervalMs: 0");
        assert!(
            refused(format!("{base}{admin}{zero}"))
                .contains("shadow.pollIntervalMs: must be greater than 0")
        );
        let slow = shadow.replace(
            "passwordFile: p",
            "passwordFile: p, takeoverGracePeriodSecs: 1, pollTimeoutMs: 1000",
        );
        assert!(refused(format!("{base}{admin}{slow}")).contains("shadow.pollTimeoutMs"));
        let unknown = shadow.replace("passwordFile: p", "passwordFile: p, password: hunter2");
        assert!(refused(format!("{base}{admin}{unknown}")).contains("unknown field `password`"));
        // Shadow acknowledgements need the licence the shadows register against.
        let acks = admin.replace(
            "allowedIdentities: [op]",
            "allowedIdentities: [op], shadowAcknowledgements: 1",
        );
        let unlicensed = base.replace("licence: {file: l, publicKey: \"00\"}\n", "");
        assert!(
            refused(format!("{unlicensed}{acks}"))
                .contains("replication.shadowAcknowledgements: needs licence")
        );
        assert!(ServerConfig::from_yaml(&format!("{base}{acks}")).is_ok());
    }

    #[test]
    fn a_verifiers_file_needs_the_licence_and_inline_ids_are_bounded() {
        let base = "serverId: tape\ntls: {cert: s.pem, key: s.key, clientCa: ca.pem}\ndataDir: /d\nkekFile: /k\nlicence: {file: l, publicKey: \"00\"}\n";
        let admin = "replication: {listen: \"127.0.0.1:1\", clientCert: c, clientKey: k, allowedIdentities: [op], shadowVerifiersFile: /v/verifiers.json}\n";
        let config = ServerConfig::from_yaml(&format!("{base}{admin}")).unwrap();
        assert_eq!(
            config.replication.as_ref().unwrap().shadow_verifiers_file,
            Some(PathBuf::from("/v/verifiers.json"))
        );
        assert!(config.to_yaml().unwrap().contains("shadowVerifiersFile"));
        let unlicensed = base.replace("licence: {file: l, publicKey: \"00\"}\n", "");
        let err = ServerConfig::from_yaml(&format!("{unlicensed}{admin}")).unwrap_err();
        assert!(
            err.to_string()
                .contains("replication.shadowVerifiersFile: needs licence"),
            "{err}"
        );
        let long = format!(
            "replication: {{listen: \"127.0.0.1:1\", clientCert: c, clientKey: k, allowedIdentities: [op], shadowVerifiers: {{a: [{{verifier: v, id: {}}}]}}}}\n",
            "x".repeat(65)
        );
        let err = ServerConfig::from_yaml(&format!("{base}{long}")).unwrap_err();
        assert!(
            err.to_string()
                .contains("replication.shadowVerifiers.a[0].id: 65 characters, at most 64"),
            "{err}"
        );
    }
}
