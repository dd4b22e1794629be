//! Backups kept apart from the KeyManager: each change of the canonical keystore written
//! as a new, never-overwritten object to every target the KeyManager names, with the KEK
//! sealed to the user's recovery keys.
//!
//! - [`archive`]: one backup as one self-contained object; sealed, opened, verified.
//! - [`s3`]: an S3-compatible bucket as a target (both shells).
//! - [`restore`]: a backup merged back into its KeyManager, or a lost one rebuilt.
//!
//! [`back_up`] decides and writes, the same in both shells: a target whose newest backup
//! (as the status remembers it, else as its own listing says) does not hold the canonical
//! keystore gets a new one, then keeps the newest `retention`. A target that fails is
//! reported in the status and a condition; it never fails the reconcile, so serving and
//! keystore sync go on.

pub mod archive;
pub mod restore;
pub mod s3;

use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use shadowkeep_api::crd::{
    BackupSpec, BackupTarget, BackupTargetStatus, DriveTable, KeyGroup, KeyManager, Shadow,
};

use super::conditions::{condition, reasons, types};
use super::state::Owner;
use archive::{Contents, Sealed, digest_prefix_of, keystore_digest, parse_recipients};

/// How long one target may take in one reconcile (listing, writing, pruning): a target
/// that hangs delays its own backup, never the next reconcile for long.
const TARGET_TIME_LIMIT: Duration = Duration::from_secs(90);

/// Why a target could not do what was asked. Messages name the target's place, never a
/// credential.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// An object of that name exists: it is never overwritten.
    #[error("failed to write: the backup exists and is never overwritten")]
    Exists,
    /// The target refused or failed.
    #[error("{0}")]
    Failed(String),
}

/// A place backups are written to.
pub trait Target: Send + Sync {
    /// The names of the backups it holds ([`archive::is_backup_name`]), in any order.
    fn list(&self) -> BoxFuture<'_, Result<Vec<String>, TargetError>>;
    /// Writes a new backup `name`; [`TargetError::Exists`], changing nothing, when one of
    /// that name exists.
    fn create<'a>(
        &'a self,
        name: &'a str,
        bytes: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), TargetError>>;
    /// Deletes backup `name`.
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), TargetError>>;
    /// Reads backup `name`.
    fn read<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<u8>, TargetError>>;
}

/// How a shell reaches a KeyManager's targets: the credentials and clients are its own
/// (Secrets, or files), the rules are [`back_up`]'s.
pub trait Targets: Send + Sync {
    /// Target `target` of `owner`, or why it cannot be used.
    fn open<'a>(
        &'a self,
        owner: &'a Owner,
        target: &'a BackupTarget,
    ) -> BoxFuture<'a, Result<Box<dyn Target>, String>>;
}

/// What the backups of one reconcile came to, for the status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Backups {
    /// Each target, in the order the spec lists them.
    pub targets: Vec<BackupTargetStatus>,
    /// `KekEscrowed` and `BackupsCurrent`.
    pub conditions: Vec<Condition>,
    /// The targets that failed, with why, for a Warning Event each.
    pub failures: Vec<(String, String)>,
}

/// The KeyManager's manifests, as a backup holds them: it, and the DriveTables, KeyGroups
/// and Shadows of its namespace (`tables`, `groups`, `shadows`) that name it, as YAML
/// without status or server-side fields. No Secrets.
pub fn manifests(
    key_manager: &KeyManager,
    tables: &[DriveTable],
    groups: &[KeyGroup],
    shadows: &[Shadow],
) -> Vec<String> {
    fn yaml<K: kube::Resource + serde::Serialize + Clone>(
        object: &K,
        strip: impl Fn(&mut K),
    ) -> Option<String> {
        let mut object = object.clone();
        let meta = object.meta_mut();
        meta.managed_fields = None;
        meta.resource_version = None;
        meta.uid = None;
        meta.generation = None;
        meta.creation_timestamp = None;
        strip(&mut object);
        serde_yaml::to_string(&object).ok()
    }
    let own = key_manager.metadata.name.as_deref().unwrap_or_default();
    let mine = |name: &str| name == own;
    let mut out = Vec::new();
    out.extend(yaml(key_manager, |o| o.status = None));
    for t in tables.iter().filter(|t| mine(&t.spec.key_manager_ref.name)) {
        out.extend(yaml(t, |o| o.status = None));
    }
    for g in groups.iter().filter(|g| mine(&g.spec.key_manager_ref.name)) {
        out.extend(yaml(g, |o| o.status = None));
    }
    for s in shadows
        .iter()
        .filter(|s| mine(&s.spec.key_manager_ref.name))
    {
        out.extend(yaml(s, |o| o.status = None));
    }
    out
}

/// What [`back_up`] backs up.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    /// The KeyManager.
    pub owner: &'a Owner,
    /// Its backup spec.
    pub spec: &'a BackupSpec,
    /// The canonical keystore exactly as stored.
    pub keystore: &'a [u8],
    /// The KEK.
    pub kek: &'a [u8],
    /// Its manifests ([`manifests`]).
    pub manifests: &'a [String],
    /// Its generation, for the conditions.
    pub generation: Option<i64>,
}

impl std::fmt::Debug for Source<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("owner", self.owner)
            .field("targets", &self.spec.targets.len())
            .finish_non_exhaustive()
    }
}

/// Writes a backup of `source` to every target that does not hold its keystore, and
/// applies retention; `previous` is what the status said of each target. Never fails:
/// what went wrong is in the result.
pub async fn back_up(
    targets: &dyn Targets,
    source: &Source<'_>,
    previous: &[BackupTargetStatus],
    now: &Time,
) -> Backups {
    let digest = keystore_digest(source.keystore);
    let recipients = parse_recipients(&source.spec.recovery_recipients);
    let mut sealed: Option<Result<Sealed, String>> = None;
    let mut out = Backups::default();
    for target in &source.spec.targets {
        let before = previous.iter().find(|p| p.name == target.name);
        let mut status = before.cloned().unwrap_or_else(|| BackupTargetStatus {
            name: target.name.clone(),
            ..BackupTargetStatus::default()
        });
        if before.is_some_and(|b| {
            b.error.is_none() && b.keystore_sha256.as_deref() == Some(&digest[..12])
        }) {
            out.targets.push(status);
            continue;
        }
        let attempt = tokio::time::timeout(
            TARGET_TIME_LIMIT,
            one_target(targets, source, target, &digest, &mut sealed, &mut status),
        )
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "failed to finish within {}s; trying again at the next reconcile",
                TARGET_TIME_LIMIT.as_secs()
            ))
        });
        match attempt {
            Ok(()) => status.error = None,
            Err(e) => {
                tracing::warn!(target = %target.name, error = %e, "backup target failed");
                out.failures.push((target.name.clone(), e.clone()));
                status.error = Some(e);
            }
        }
        out.targets.push(status);
    }
    out.conditions = vec![
        escrow_condition(source, recipients.err().map(|e| e.to_string()), now),
        current_condition(source, &out.failures, now),
    ];
    out
}

/// One target: adopt its newest backup when it holds the keystore, else write one; then
/// retention.
async fn one_target(
    targets: &dyn Targets,
    source: &Source<'_>,
    target: &BackupTarget,
    digest: &str,
    sealed: &mut Option<Result<Sealed, String>>,
    status: &mut BackupTargetStatus,
) -> Result<(), String> {
    let store = targets.open(source.owner, target).await?;
    let mut names = store.list().await.map_err(|e| e.to_string())?;
    names.sort();
    let holds_it = names
        .last()
        .is_some_and(|newest| digest_prefix_of(newest) == Some(&digest[..12]));
    if !holds_it {
        let backup = sealed
            .get_or_insert_with(|| {
                archive::seal(&Contents {
                    owner: source.owner,
                    keystore: source.keystore,
                    kek: source.kek,
                    recipients: &source.spec.recovery_recipients,
                    manifests: source.manifests,
                    created_at: Timestamp::now(),
                })
                .map_err(|e| e.to_string())
            })
            .clone()?;
        match store.create(&backup.name, backup.bytes).await {
            // The same name is the same keystore at the same millisecond: it is there.
            Ok(()) | Err(TargetError::Exists) => {}
            Err(e) => return Err(e.to_string()),
        }
        tracing::info!(target = %target.name, backup = %backup.name, "backup written");
        names.push(backup.name.clone());
        names.sort();
        names.dedup();
        status.escrowed = !source.spec.recovery_recipients.is_empty();
    } else if status.last_backup.as_deref() != names.last().map(String::as_str) {
        // Adopted from the listing: whether it holds the KEK is in the object.
        let newest = names.last().map(String::as_str).unwrap_or_default();
        status.escrowed = store
            .read(newest)
            .await
            .ok()
            .and_then(|b| archive::open(&b).ok())
            .is_some_and(|o| o.escrowed);
    }
    let newest = names.last().cloned().unwrap_or_default();
    status.last_backup = Some(newest.clone());
    status.keystore_sha256 = Some(digest[..12].to_owned());
    status.last_backup_at = created_at_of(&newest).map(Time);
    let keep = usize::try_from(source.spec.retention).unwrap_or(1).max(1);
    let excess = names.len().saturating_sub(keep);
    // Oldest first, and never the newest: retention is at least one.
    for name in names.iter().take(excess) {
        store.delete(name).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// When a backup was made, from its name.
fn created_at_of(name: &str) -> Option<Timestamp> {
    let millis = name.strip_prefix("keystore-")?.get(..16)?.parse().ok()?;
    Timestamp::from_millisecond(millis).ok()
}

fn escrow_condition(source: &Source<'_>, invalid: Option<String>, now: &Time) -> Condition {
    let count = source.spec.recovery_recipients.len();
    let (status, reason, message) = match invalid {
        Some(e) => (false, reasons::INVALID_RECIPIENT, e),
        None if count == 0 => (
            false,
            reasons::NO_RECOVERY_KEY,
            "no recovery recipient: the KEK exists only in the cluster, so losing the cluster would lose every key (spec.backup.recoveryRecipients)".to_owned(),
        ),
        None => (
            true,
            reasons::RECOVERY_KEYS_SET,
            format!("every backup written to a target holds the KEK sealed to {count} recovery recipient(s)"),
        ),
    };
    condition(
        types::KEK_ESCROWED,
        status,
        reason,
        message,
        source.generation,
        now,
    )
}

fn current_condition(source: &Source<'_>, failures: &[(String, String)], now: &Time) -> Condition {
    let targets = &source.spec.targets;
    let (status, reason, message) = if targets.is_empty() {
        (
            false,
            reasons::NO_BACKUP_TARGET,
            "no backup target: every copy of the keystore is in the cluster (spec.backup.targets)"
                .to_owned(),
        )
    } else if failures.is_empty() {
        (
            true,
            reasons::BACKUPS_CURRENT,
            format!(
                "every target ({}) holds the current keystore",
                targets
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    } else {
        (
            false,
            reasons::BACKUP_TARGET_FAILED,
            failures
                .iter()
                .map(|(name, e)| format!("target {name}: {e}"))
                .collect::<Vec<_>>()
                .join("; "),
        )
    };
    condition(
        types::BACKUPS_CURRENT,
        status,
        reason,
        message,
        source.generation,
        now,
    )
}
