//! Live configuration: a running server takes a new configuration, from its file (re-read
//! whenever its content changes) or pushed to `PUT /v1/configuration`, without restarting.
//!
//! Only the live part ([`LIVE_FIELDS`]: the drive policy, which DriveTables and KeyGroups
//! render into) is applied: the drive table is swapped whole, so that a request in flight
//! judges by the old table or the new one, never a mix, and a licensed replica's shadows
//! mirror the new policy from their next poll. Any other field that differs from the
//! configuration the server started with waits for a restart and is reported as such
//! (`restartNeeded`); the live part is applied all the same. A configuration that cannot
//! be read or is invalid changes nothing: the one in force stays, and the problem is logged
//! and reported, naming the file or the push and the field.
//!
//! A shadow serves by the drive policy it mirrors from the replicas, not its own file's:
//! on a shadow a new configuration only reports what would need a restart, and the digest
//! reported is the mirrored policy's.
//!
//! The file's content is compared, not its modification time: Kubernetes swaps a mounted
//! ConfigMap by a symlink, and a file can change within one timestamp tick.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use shadowkeep_api::server_config::{
    ConfigurationReport, LIVE_FIELDS, MAX_CONFIG_BYTES, ServerConfig, live_digest,
};
use tokio_util::sync::CancellationToken;

use crate::auth::DriveTable;
use crate::shadow::registry::Registry;

/// How often the configuration file is read for changes.
pub const POLL: Duration = Duration::from_millis(250);

/// The configuration in force and what became of the last one offered.
#[derive(Debug)]
pub struct LiveConfig {
    /// The configuration the server started with: its fields other than the live part are
    /// the ones in force until a restart.
    started: ServerConfig,
    /// The drive table KMIP judges by (on a shadow, the mirrored one, which this only
    /// reads).
    drives: Arc<RwLock<Arc<DriveTable>>>,
    /// On a licensed replica: its shadows, which mirror its drive policy.
    registry: Option<Arc<Registry>>,
    /// What the last configuration offered left to report.
    outcome: Mutex<Outcome>,
    /// Serialises applications, so that two at once cannot interleave their swaps.
    applying: Mutex<()>,
}

#[derive(Debug, Default)]
struct Outcome {
    problem: Option<String>,
    restart_needed: Vec<String>,
}

/// Why a configuration offered was not applied.
#[derive(Debug, thiserror::Error)]
#[error("failed to apply the configuration from {origin}: {reason}")]
pub struct Refused {
    /// The file, or the push.
    pub origin: String,
    /// Why, naming the field at fault, never a value.
    pub reason: String,
}

impl LiveConfig {
    /// The configuration `started` in force, the drive table KMIP judges by and, on a
    /// licensed replica, its register of shadows.
    pub fn new(
        started: &ServerConfig,
        drives: &Arc<RwLock<Arc<DriveTable>>>,
        registry: Option<&Arc<Registry>>,
    ) -> Self {
        Self {
            started: started.clone(),
            drives: Arc::clone(drives),
            registry: registry.cloned(),
            outcome: Mutex::default(),
            applying: Mutex::new(()),
        }
    }

    fn is_shadow(&self) -> bool {
        self.started.shadow.is_some()
    }

    fn outcome(&self) -> std::sync::MutexGuard<'_, Outcome> {
        self.outcome
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The configuration in force, as `GET /v1/state` reports it.
    pub fn report(&self) -> ConfigurationReport {
        let table = Arc::clone(
            &self
                .drives
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let outcome = self.outcome();
        ConfigurationReport {
            digest: table.digest().to_owned(),
            applied_at: table.built_at(),
            problem: outcome.problem.clone(),
            restart_needed: outcome.restart_needed.clone(),
        }
    }

    /// Takes configuration `bytes` from `source` (a file's path, or the push): applies its
    /// live part and reports what needs a restart; refuses it whole, keeping the one in
    /// force, when it is too large, not UTF-8 or invalid.
    pub fn apply(&self, bytes: &[u8], source: &str) -> Result<ConfigurationReport, Refused> {
        let refuse = |reason: String| {
            let refused = Refused {
                origin: source.to_owned(),
                reason,
            };
            tracing::error!(
                source,
                error = %refused.reason,
                "configuration refused; the one in force stays"
            );
            self.outcome().problem = Some(refused.to_string());
            refused
        };
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(refuse(format!(
                "{} bytes or more, at most {MAX_CONFIG_BYTES}",
                bytes.len()
            )));
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|e| refuse(format!("not UTF-8 text (at byte {})", e.valid_up_to())))?;
        let config = ServerConfig::from_yaml(text).map_err(|e| refuse(e.to_string()))?;
        let _applying = self
            .applying
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let restart_needed = self.started.needs_restart_for(&config);
        if !restart_needed.is_empty() {
            tracing::warn!(
                source,
                fields = ?restart_needed,
                live = ?LIVE_FIELDS,
                "configuration changes that need a restart: not applied until the server restarts; its live part is applied"
            );
        }
        if !self.is_shadow() {
            self.swap(&config);
        }
        {
            let mut outcome = self.outcome();
            outcome.problem = None;
            outcome.restart_needed = restart_needed;
        }
        Ok(self.report())
    }

    /// Swaps the drive table, and the policy the shadows mirror, when the new policy
    /// differs from the one in force.
    fn swap(&self, config: &ServerConfig) {
        let digest = live_digest(&config.drives);
        let old = self
            .drives
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .digest()
            .to_owned();
        if digest == old {
            return;
        }
        let table = Arc::new(DriveTable::new(&config.drives));
        *self
            .drives
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = table;
        if let Some(registry) = &self.registry {
            registry.set_drives(config.drives.clone());
        }
        tracing::info!(
            digest,
            previous = old,
            drives = config.drives.drives.len(),
            key_groups = config.drives.key_groups.len(),
            accept_unknown = config.drives.accept_unknown,
            "drive table applied without a restart"
        );
    }

    /// Re-reads `path` every [`POLL`] until `cancel`, and applies its content whenever it
    /// differs from what was last read (`started`, the bytes the server started with).
    pub async fn watch(self: Arc<Self>, path: PathBuf, started: &[u8], cancel: CancellationToken) {
        let mut last: Seen = Seen::Content(Sha256::digest(started).into());
        let file = path.display().to_string();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(POLL) => {}
            }
            let p = path.clone();
            let Ok(read) = tokio::task::spawn_blocking(move || read(&p)).await else {
                continue;
            };
            match read {
                Err(reason) => {
                    let seen = Seen::Unreadable(reason.clone());
                    if seen != last {
                        last = seen;
                        tracing::error!(
                            file,
                            error = %reason,
                            "configuration file unreadable; the configuration in force stays"
                        );
                        self.outcome().problem =
                            Some(format!("failed to read the configuration {file}: {reason}"));
                    }
                }
                Ok(bytes) => {
                    let seen = Seen::Content(Sha256::digest(&bytes).into());
                    if seen == last {
                        continue;
                    }
                    last = seen;
                    // A refusal is logged and reported by `apply`.
                    if let Ok(report) = self.apply(&bytes, &file) {
                        tracing::info!(file, digest = report.digest, "configuration file read");
                    }
                }
            }
        }
    }
}

/// What the watch last saw in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Content([u8; 32]),
    Unreadable(String),
}

/// The file's bytes, at most one more than the bound (which `apply` then refuses).
fn read(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("failed to read it: {e}"))?;
    let mut bytes = Vec::new();
    file.take(u64::try_from(MAX_CONFIG_BYTES).unwrap_or(u64::MAX) + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("failed to read it: {e}"))?;
    Ok(bytes)
}
