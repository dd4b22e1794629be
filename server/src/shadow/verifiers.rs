//! A replica's shadow verifiers file (`replication.shadowVerifiersFile`): read at start,
//! where a missing or malformed file stops the start, and re-read whenever its content
//! changes, so that the operator rotates a shadow's password without restarting a replica.
//!
//! The content is compared, not the modification time: Kubernetes swaps a mounted Secret by
//! a symlink, and a file can change within one timestamp tick. A file that turns unreadable
//! or malformed while the replica runs changes nothing: the set in force stays, and the
//! problem is logged (never the content) and counted as `refused`.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use sha2::{Digest as _, Sha256};
use shadowkeep_api::shadow::verifiers::{MAX_FILE_BYTES, ShadowVerifiers};
use tokio_util::sync::CancellationToken;

use super::registry::{Accepted, Registry};
use crate::metrics::Metrics;

/// How often the file is read for changes.
const POLL: Duration = Duration::from_secs(1);

/// Why the verifiers file refused the start.
#[derive(Debug, thiserror::Error)]
#[error("failed to start: shadowVerifiersFile {path}: {reason}")]
pub struct VerifiersFileError {
    /// The file.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// What the watch last saw in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    /// Content with this SHA-256.
    Content([u8; 32]),
    /// No content: why.
    Unreadable(String),
}

/// The file and what to do when it changes.
#[derive(Debug)]
pub struct VerifiersFile {
    path: PathBuf,
    /// The configuration's `shadowVerifiers`, which the file's are appended to.
    inline: Accepted,
    last: Seen,
}

impl VerifiersFile {
    /// Reads `path` for a starting replica: the accepted set is `inline` with the file's
    /// verifiers appended. A file that cannot be read or decoded refuses the start.
    pub fn load(path: &Path, inline: &Accepted) -> Result<(Self, Accepted), VerifiersFileError> {
        let refuse = |reason: String| VerifiersFileError {
            path: path.display().to_string(),
            reason,
        };
        let bytes = read(path).map_err(refuse)?;
        let file = ShadowVerifiers::decode(&bytes).map_err(|e| refuse(e.to_string()))?;
        Ok((
            Self {
                path: path.to_owned(),
                inline: inline.clone(),
                last: Seen::Content(Sha256::digest(&bytes).into()),
            },
            file.appended_to(inline),
        ))
    }

    /// Re-reads the file about once a second until `cancel`, and gives `registry` each new
    /// set it decodes. Counts the read at start as `loaded`.
    pub async fn watch(
        mut self,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
    ) {
        // The read at start, which the metrics did not exist for yet.
        metrics.verifier_reload("loaded");
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(POLL) => {}
            }
            let path = self.path.clone();
            let Ok(read) = tokio::task::spawn_blocking(move || {
                read(&path).map(|bytes| {
                    let hash: [u8; 32] = Sha256::digest(&bytes).into();
                    (hash, ShadowVerifiers::decode(&bytes))
                })
            })
            .await
            else {
                continue;
            };
            let file = self.path.display().to_string();
            match read {
                Err(reason) => {
                    let seen = Seen::Unreadable(reason.clone());
                    if seen != self.last {
                        self.last = seen;
                        metrics.verifier_reload("refused");
                        tracing::error!(file, error = %reason, "shadow verifiers file refused; the verifiers in force stay accepted");
                    }
                }
                Ok((hash, decoded)) => {
                    let seen = Seen::Content(hash);
                    if seen == self.last {
                        continue;
                    }
                    self.last = seen;
                    match decoded {
                        Err(e) => {
                            metrics.verifier_reload("refused");
                            tracing::error!(file, error = %e, "shadow verifiers file refused; the verifiers in force stay accepted");
                        }
                        Ok(verifiers) => {
                            let dropped = registry.set_accepted(
                                verifiers.appended_to(&self.inline),
                                Timestamp::now(),
                            );
                            metrics.verifier_reload("loaded");
                            tracing::info!(
                                file,
                                shadows = verifiers.shadows.len(),
                                "shadow verifiers file loaded"
                            );
                            for shadow in dropped {
                                tracing::warn!(
                                    shadow,
                                    "shadow registration dropped: the verifier its password matched is no longer accepted; it must register again"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The file's bytes, at most one more than the bound (which the decoder then refuses).
fn read(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("failed to read it: {e}"))?;
    let mut bytes = Vec::new();
    file.take(u64::try_from(MAX_FILE_BYTES).unwrap_or(u64::MAX) + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("failed to read it: {e}"))?;
    Ok(bytes)
}
