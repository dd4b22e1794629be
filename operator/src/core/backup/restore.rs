//! Restore: a backup merged back into its KeyManager's canonical keystore, or a lost
//! KeyManager rebuilt from it. One rule for the cluster and for `up`, written against
//! [`State`].
//!
//! A restore only ever adds: keys the KeyManager lacks are added, keys whose state moved on
//! in the backup move on, and nothing the KeyManager holds is removed or rolled back. A
//! KeyManager that still has its KEK keeps it: when the backup's KEK differs (the
//! KeyManager was made again before the restore), the backup's keys are re-sealed under the
//! KeyManager's own KEK. A KeyManager with no KEK yet gets the backup's KEK and keystore as
//! they were, so it starts serving exactly the old keys once it is declared.
//!
//! Every key of the backup is opened with the recovered KEK before anything is written: a
//! backup whose keys do not open under it changes nothing.

use shadowkeep_api::crd::BackupSpec;
use shadowkeep_api::keystore::Keystore;

use super::Targets;
use super::archive::{Opened, is_backup_name};
use crate::core::Error;
use crate::core::keystore::Canonical;
use crate::core::material;
use crate::core::state::{Fields, Item, Owner, State};

/// Why a restore changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The backup belongs to another KeyManager.
    #[error(
        "failed to restore backup {backup} into KeyManager {into}: it is a backup of KeyManager {of}; nothing merged"
    )]
    OtherKeyManager {
        /// The backup.
        backup: String,
        /// The KeyManager it belongs to.
        of: String,
        /// The KeyManager asked for.
        into: String,
    },
    /// The backup's keystore does not read, or a key does not open under its KEK.
    #[error("failed to restore backup {backup}: {reason}; nothing merged")]
    Unreadable {
        /// The backup.
        backup: String,
        /// What is wrong (never key material).
        reason: String,
    },
    /// The KeyManager's state is half made: a keystore without a KEK, or the reverse.
    #[error("failed to restore into KeyManager {into}: {reason}; nothing merged")]
    Inconsistent {
        /// The KeyManager.
        into: String,
        /// What is wrong.
        reason: String,
    },
    /// The state could not be read or written.
    #[error("failed to restore into KeyManager {into}: {source}")]
    Core {
        /// The KeyManager.
        into: String,
        /// The cause.
        #[source]
        source: Box<Error>,
    },
}

/// How a restore went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// The KeyManager restored into.
    pub owner: Option<Owner>,
    /// The KeyManager had no KEK: the backup's KEK and keystore were stored as they were.
    pub rebuilt: bool,
    /// The backup's keys were re-sealed under the KeyManager's own, different KEK.
    pub resealed: bool,
    /// Keys in the backup.
    pub in_backup: usize,
    /// Keys the KeyManager did not hold before.
    pub added: usize,
    /// Keys whose state or attributes moved forward.
    pub updated: usize,
    /// Records refused for a conflict (quarantined by the keystore, not lost).
    pub conflicts: usize,
    /// Whether the canonical keystore was written (false for a dry run or nothing new).
    pub written: bool,
}

/// Restores `backup` (opened, its KEK `kek` recovered) into `into`'s canonical keystore in
/// `state`, keeping `retention` versions of what it replaces. `dry_run` checks everything
/// and counts, writing nothing.
pub async fn restore<S: State>(
    state: &S,
    backup: &Opened,
    kek: &[u8],
    into: &Owner,
    retention: usize,
    dry_run: bool,
) -> Result<Restored, RestoreError> {
    let name = backup.name();
    if backup.owner != *into {
        return Err(RestoreError::OtherKeyManager {
            backup: name,
            of: backup.owner.reference(),
            into: into.reference(),
        });
    }
    let core = |source: Error| RestoreError::Core {
        into: into.reference(),
        source: Box::new(source),
    };
    let archived = verified(backup, kek)?;
    let in_backup = archived.keystore().len();
    let stored_kek = state
        .read(into, Item::Kek)
        .await
        .map_err(|e| core(e.into()))?;
    let stored_keystore = state
        .read(into, Item::Keystore)
        .await
        .map_err(|e| core(e.into()))?;
    let mut restored = Restored {
        owner: Some(into.clone()),
        in_backup,
        ..Restored::default()
    };
    // Lost, or half rebuilt by a restore that stopped between its two writes (the KEK
    // stored is the backup's): made whole.
    let lost = stored_keystore.is_none() && stored_kek.as_ref().is_none_or(|f| f.get("kek") == kek);
    match (stored_kek, stored_keystore) {
        (_, None) if lost && dry_run => {
            restored.rebuilt = true;
            restored.added = in_backup;
        }
        (_, None) if lost => {
            restored.rebuilt = true;
            if rebuild(state, into, kek, &backup.keystore)
                .await
                .map_err(core)?
            {
                restored.added = in_backup;
                restored.written = true;
            } else {
                // Its keystore was made (empty, by a reconcile) between the two writes:
                // the backup's keys are merged into it, under the KEK just stored.
                let mut current = Canonical::read(state, into, retention)
                    .await
                    .map_err(core)?
                    .ok_or_else(|| RestoreError::Inconsistent {
                        into: into.reference(),
                        reason: "its keystore vanished while the restore ran".into(),
                    })?;
                let report = current.merge_backup(archived.keystore()).map_err(core)?;
                restored.added = report.added.len();
                restored.updated = report.updated.len();
                restored.conflicts = report.conflicts.len();
                restored.written = current.commit(state).await.map_err(core)?;
            }
        }
        (_, None) | (None, Some(_)) => {
            return Err(RestoreError::Inconsistent {
                into: into.reference(),
                reason: "it has a KEK (not the backup's) without a keystore, or a keystore without a KEK".into(),
            });
        }
        (Some(kek_fields), Some(keystore_fields)) => {
            let mut current = Canonical::open(
                into.clone(),
                kek_fields.get("kek"),
                keystore_fields.get("keystore").to_vec(),
                retention,
            )
            .map_err(core)?;
            if current.kek().fingerprint() == archived.kek().fingerprint() {
                let report = current.merge_backup(archived.keystore()).map_err(core)?;
                restored.added = report.added.len();
                restored.updated = report.updated.len();
                restored.conflicts = report.conflicts.len();
            } else {
                restored.resealed = true;
                restored.added = current.carry_from(&archived, None).map_err(core)?;
            }
            if !dry_run {
                restored.written = current.commit(state).await.map_err(core)?;
            }
        }
    }
    Ok(restored)
}

/// Reads a backup from target `target` of `owner` (as `spec` declares it, reached through
/// the shell's `targets`): backup `backup` when named, else the newest it holds. Returns its
/// name and bytes.
pub async fn fetch(
    targets: &dyn Targets,
    owner: &Owner,
    spec: &BackupSpec,
    target: &str,
    backup: Option<&str>,
) -> Result<(String, Vec<u8>), String> {
    let declared = spec
        .targets
        .iter()
        .find(|t| t.name == target)
        .ok_or_else(|| {
            let names: Vec<&str> = spec.targets.iter().map(|t| t.name.as_str()).collect();
            format!(
                "KeyManager {owner} declares no backup target {target:?} (spec.backup.targets: {})",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            )
        })?;
    let what = format!("target {target} of KeyManager {owner}");
    let store = targets
        .open(owner, declared)
        .await
        .map_err(|e| format!("failed to open {what}: {e}"))?;
    let name = match backup {
        Some(name) if !is_backup_name(name) => {
            return Err(format!(
                "{name:?} is not a backup's name (keystore-MILLIS-DIGEST.skb)"
            ));
        }
        Some(name) => name.to_owned(),
        None => {
            let mut names = store
                .list()
                .await
                .map_err(|e| format!("failed to list {what}: {e}"))?;
            names.sort();
            names
                .pop()
                .ok_or_else(|| format!("{what} holds no backup"))?
        }
    };
    let bytes = store
        .read(&name)
        .await
        .map_err(|e| format!("failed to read backup {name} from {what}: {e}"))?;
    Ok((name, bytes))
}

/// The backup's keystore under its KEK, every key opened once to prove it.
fn verified(backup: &Opened, kek: &[u8]) -> Result<Canonical, RestoreError> {
    let unreadable = |reason: String| RestoreError::Unreadable {
        backup: backup.name(),
        reason,
    };
    let archived = Canonical::open(backup.owner.clone(), kek, backup.keystore.clone(), 1)
        .map_err(|e| unreadable(e.to_string()))?;
    for key in archived.keystore().keys() {
        archived
            .kek()
            .open(&key.id, &key.material)
            .map_err(|e| unreadable(format!("key {}: {e}", key.id.as_str())))?;
    }
    Ok(archived)
}

/// Stores the backup's KEK and keystore as the KeyManager's own; false when a keystore was
/// made by another in between (the backup's keys are then merged into it). The KEK first: a
/// keystore without its KEK is unreadable, a KEK without a keystore is made whole by the
/// next step or the next restore.
async fn rebuild<S: State>(
    state: &S,
    into: &Owner,
    kek: &[u8],
    keystore: &[u8],
) -> Result<bool, Error> {
    material::kek(&into.reference(), kek)?;
    Keystore::from_bytes(keystore).map_err(Error::Keystore)?;
    let stored = state
        .create(into, Item::Kek, Fields::of([("kek", kek.to_vec())]))
        .await?;
    if stored.get("kek") != kek {
        return Err(Error::Material {
            what: format!("the KEK of KeyManager {into}"),
            reason: "another KEK was stored while the restore ran; run the restore again to merge into it".into(),
        });
    }
    let stored = state
        .create(
            into,
            Item::Keystore,
            Fields::of([("keystore", keystore.to_vec())]),
        )
        .await?;
    Ok(stored.get("keystore") == keystore)
}
