//! The canonical keystore: every key any replica of a KeyManager ever held, and the
//! KeyGroup pools the operator generates into it.

use jiff::Timestamp;
use kube::ResourceExt as _;
use shadowkeep_api::crd::{Interval, KeyGroup};
use shadowkeep_api::key_groups::{Pool, PoolStatus, maintain};
use shadowkeep_api::keystore::{Kek, Keystore};

use super::Error;

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
pub fn maintain_groups(
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
