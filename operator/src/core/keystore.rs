//! The canonical keystore: every key any replica of a KeyManager ever held, and the
//! KeyGroup pools the operator generates into it.

use jiff::Timestamp;
use kube::ResourceExt as _;
use shadowkeep_api::crd::{Interval, KeyGroup};
use shadowkeep_api::drive_history::carry_keys;
use shadowkeep_api::key_groups::{Pool, PoolStatus, maintain};
use shadowkeep_api::keystore::{Kek, Keystore, MergeReport};

use super::Error;
use super::state::{Item, Owner, State};
use crate::build::{Inputs, Material};

/// Reads a canonical keystore serialisation.
pub fn open(bytes: &[u8]) -> Result<Keystore, Error> {
    Keystore::from_bytes(bytes).map_err(Error::Keystore)
}

/// What one KeyGroup holds after maintenance, for its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    /// The KeyGroup's name.
    pub name: String,
    /// The KeyGroup's `metadata.generation` the status describes.
    pub generation: Option<i64>,
    /// What its pool holds.
    pub pool: PoolStatus,
}

/// Generates and rotates every KeyGroup's keys in `keystore` at time `now`. Returns each
/// group's status and whether the keystore changed.
fn maintain_groups(
    kek: &Kek,
    keystore: &mut Keystore,
    groups: &[&KeyGroup],
    now: Timestamp,
) -> Result<(Vec<GroupStatus>, bool), Error> {
    let mut changed = false;
    let mut statuses = Vec::new();
    for group in groups {
        let name = group.name_any();
        let pool = Pool {
            name: &name,
            prefix: group.spec.name_prefix.as_deref().unwrap_or(&name),
            length: u16::try_from(group.spec.length).unwrap_or(256),
            count: usize::try_from(group.spec.key_count).unwrap_or(1),
            rotation: group.spec.rotation_interval.map(Interval::as_duration),
        };
        let (pool, group_changed) =
            maintain(kek, keystore, &pool, now).map_err(|source| Error::KeyGroup {
                group: name.clone(),
                source,
            })?;
        changed |= group_changed;
        statuses.push(GroupStatus {
            name,
            generation: group.metadata.generation,
            pool,
        });
    }
    Ok((statuses, changed))
}

/// The canonical keystore of one KeyManager, opened once: KeyGroup maintenance, pulled
/// keys and carried keys change it in memory, and [`Canonical::commit`] stores the result
/// with one backup of what it replaces.
pub struct Canonical {
    owner: Owner,
    kek: Kek,
    /// What the state holds: the commit replaces exactly this, or fails.
    stored: Vec<u8>,
    keystore: Keystore,
    retention: usize,
    changed: bool,
}

impl std::fmt::Debug for Canonical {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Canonical")
            .field("owner", &self.owner)
            .field("keys", &self.keystore.len())
            .field("changed", &self.changed)
            .finish_non_exhaustive()
    }
}

impl Canonical {
    /// The keystore `stored` of `owner`, sealed under `kek`, keeping `retention` backups.
    pub fn open(
        owner: Owner,
        kek: &[u8],
        stored: Vec<u8>,
        retention: usize,
    ) -> Result<Self, Error> {
        Ok(Self {
            kek: super::material::kek(&owner.reference(), kek)?,
            keystore: open(&stored)?,
            owner,
            stored,
            retention,
            changed: false,
        })
    }

    /// The keystore of the KeyManager of `inputs`, from its `material`.
    pub fn of(inputs: &Inputs<'_>, material: &Material) -> Result<Self, Error> {
        Self::open(
            Owner::new(inputs.namespace(), inputs.name()),
            &material.kek,
            material.keystore.clone(),
            usize::try_from(inputs.key_manager.spec.backup.retention).unwrap_or(1),
        )
    }

    /// Reads the keystore of `owner` from the state; `None` when it has no KEK or keystore
    /// (it never ran).
    pub async fn read<S: State>(
        state: &S,
        owner: &Owner,
        retention: usize,
    ) -> Result<Option<Self>, Error> {
        let Some(kek) = state.read(owner, Item::Kek).await? else {
            return Ok(None);
        };
        let Some(stored) = state.read(owner, Item::Keystore).await? else {
            return Ok(None);
        };
        Ok(Some(Self::open(
            owner.clone(),
            kek.get("kek"),
            stored.get("keystore").to_vec(),
            retention,
        )?))
    }

    /// The KeyManager whose keystore this is.
    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// The keystore as it is now in memory.
    pub fn keystore(&self) -> &Keystore {
        &self.keystore
    }

    /// The KEK its keys are sealed under.
    pub fn kek(&self) -> &Kek {
        &self.kek
    }

    /// The serialisation the state holds (as of the last commit).
    pub fn stored(&self) -> &[u8] {
        &self.stored
    }

    /// Whether it changed since it was opened or last committed.
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// Generates and rotates every KeyGroup's keys at time `now`; each group's status.
    pub fn maintain_groups(
        &mut self,
        groups: &[&KeyGroup],
        now: Timestamp,
    ) -> Result<Vec<GroupStatus>, Error> {
        let (statuses, changed) = maintain_groups(&self.kek, &mut self.keystore, groups, now)?;
        self.changed |= changed;
        Ok(statuses)
    }

    /// Merges keys pulled from a replica; how many were new.
    pub fn merge(&mut self, pulled: &Keystore) -> Result<MergeReport, Error> {
        let report = self.keystore.merge(pulled).map_err(Error::Keystore)?;
        self.changed |= !report.added.is_empty();
        Ok(report)
    }

    /// Merges a backup's keystore: keys it lacks, states that moved forward and conflicts
    /// to quarantine all change what is stored.
    pub fn merge_backup(&mut self, backup: &Keystore) -> Result<MergeReport, Error> {
        let report = self.keystore.merge(backup).map_err(Error::Keystore)?;
        self.changed |=
            !report.added.is_empty() || !report.updated.is_empty() || !report.conflicts.is_empty();
        Ok(report)
    }

    /// Copies the keys of `group` (every key when `None`) from another KeyManager's
    /// keystore, re-sealed under this KEK; how many were added.
    pub fn carry_from(&mut self, from: &Self, group: Option<&str>) -> Result<usize, Error> {
        let count = carry_keys(
            &from.keystore,
            &from.kek,
            &mut self.keystore,
            &self.kek,
            group,
        )
        .map_err(Error::Keystore)?;
        self.changed |= count > 0;
        Ok(count)
    }

    /// Stores the keystore if it changed, after one backup of what it replaces. Returns
    /// whether it wrote. A keystore changed by another since it was read is not
    /// overwritten: the commit fails with a conflict, and the next reconcile starts again
    /// from what is stored.
    pub async fn commit<S: State>(&mut self, state: &S) -> Result<bool, Error> {
        if !self.changed {
            return Ok(false);
        }
        let bytes = self.keystore.to_bytes().map_err(Error::Keystore)?;
        state
            .replace_keystore(&self.owner, &self.stored, &bytes, self.retention)
            .await?;
        self.stored = bytes;
        self.changed = false;
        Ok(true)
    }
}
