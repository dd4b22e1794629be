//! Drives and the KeyManagers that hold their keys: the rules, with no client.
//!
//! Each KeyManager keeps a history of the drives it has served, which outlives the
//! KeyManager. A drive in this KeyManager's tables is held back, with `KeyHistoryAtRisk`,
//! when
//! - a DriveTable of another KeyManager in the namespace lists it too, and this one does
//!   not serve it yet (the one that does keeps it), or
//! - another KeyManager, in any namespace the operator watches, served it and did not
//!   hand it on: it moved, and its keys are there.
//!
//! A move is resolved by putting the drive back, or by accepting it with the annotation
//! [`ACCEPT_DRIVE_MOVES`] on the DriveTable that now lists it: its keys (its KeyGroup's
//! keys, or all keys when it had no group) are then carried from the old KeyManager's
//! keystore into this one's, re-sealed under this KEK, the drive is marked as handed on in
//! the old history, and it is served here.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use shadowkeep_api::crd::{DriveTable, KeyGroup, KeyManager};
use shadowkeep_api::drive_history::DriveHistory;
use shadowkeep_api::estate::Estate;
use shadowkeep_api::manifest::Resource as Object;

use super::Error;
use super::conditions::{condition, reasons, types};
use super::keystore::Canonical;
use super::keystore_sync::{self, Replicas};
use super::state::{Owner, State, StateError};
use crate::build::Inputs;

/// Annotation on a DriveTable listing the serials (comma-separated) whose move from
/// another KeyManager is accepted: their keys are carried here.
pub const ACCEPT_DRIVE_MOVES: &str = "shadowkeep.io/accept-drive-moves";

/// Annotation on a KeyManager (or on a deleted one's drive history) listing the serials
/// (comma-separated) whose keys may be carried to a KeyManager in another namespace.
pub const RELEASE_DRIVES: &str = "shadowkeep.io/release-drives";

/// Condition reason and Event reason: a drive's keys were carried from another KeyManager.
pub const KEY_HISTORY_CARRIED: &str = "KeyHistoryCarried";

/// A KeyManager as histories name it.
pub fn key_manager_ref(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Why a drive of this KeyManager is at risk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// A DriveTable of another KeyManager in this namespace lists it too.
    Table {
        /// That table.
        other_table: String,
    },
    /// Another KeyManager served it and holds its keys.
    History {
        /// Whether this drive's table accepts the move (its keys are to be carried).
        accepted: bool,
        /// Why carrying the keys failed, when it did.
        carry_error: Option<String>,
    },
}

/// A drive of this KeyManager that another KeyManager claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveRisk {
    /// The drive's serial.
    pub serial: String,
    /// This KeyManager's table listing it.
    pub table: String,
    /// The other KeyManager: its name for a table claim, `namespace/name` for a history.
    pub other_key_manager: String,
    /// What the claim is.
    pub claim: Claim,
    /// Whether this KeyManager keeps serving the drive (it is where its keys are).
    pub kept: bool,
}

impl DriveRisk {
    /// Whether this is an accepted move whose keys are still to be carried.
    pub fn is_accepted_move(&self) -> bool {
        matches!(self.claim, Claim::History { accepted: true, .. })
    }
}

/// Which KeyManagers serve each drive, across every history.
///
/// Kept up to date as histories change, so that a reconcile looks up its own drives
/// instead of reading every other history: with 1,000 KeyManagers of 100 drives, parsing
/// them all on each reconcile would cost more than the reconcile.
#[derive(Debug, Default)]
pub struct DriveIndex {
    /// KeyManagers (`namespace/name`), by their number in `serving`.
    key_managers: Vec<String>,
    numbers: HashMap<String, u32>,
    /// Drive serial → the KeyManager that serves it. 100,000 drives are a few MiB.
    serving: HashMap<Box<str>, u32>,
    /// Drive serial → further KeyManagers that serve it, for drives already split.
    also: HashMap<Box<str>, Vec<u32>>,
}

impl DriveIndex {
    fn number(&mut self, key_manager: &str) -> u32 {
        if let Some(n) = self.numbers.get(key_manager) {
            return *n;
        }
        let n = u32::try_from(self.key_managers.len()).unwrap_or(u32::MAX);
        self.key_managers.push(key_manager.to_owned());
        self.numbers.insert(key_manager.to_owned(), n);
        n
    }

    /// Takes in the history of KeyManager `reference` (`namespace/name`) as it is now.
    pub fn apply(&mut self, reference: &str, history: &DriveHistory) {
        let n = self.number(reference);
        for (serial, record) in &history.drives {
            if record.moved_to.is_none() {
                self.add(serial, n);
            } else {
                self.remove(serial, n);
            }
        }
    }

    fn add(&mut self, serial: &str, n: u32) {
        match self.serving.get(serial) {
            None => {
                self.serving.insert(serial.into(), n);
            }
            Some(first) if *first == n => {}
            Some(_) => {
                let also = self.also.entry(serial.into()).or_default();
                if !also.contains(&n) {
                    also.push(n);
                }
            }
        }
    }

    fn remove(&mut self, serial: &str, n: u32) {
        if let Some(also) = self.also.get_mut(serial) {
            also.retain(|k| *k != n);
            if self.serving.get(serial) == Some(&n)
                && let Some(next) = also.pop()
            {
                self.serving.insert(serial.into(), next);
                if also.is_empty() {
                    self.also.remove(serial);
                }
                return;
            }
            if also.is_empty() {
                self.also.remove(serial);
            }
        }
        if self.serving.get(serial) == Some(&n) {
            self.serving.remove(serial);
        }
    }

    /// Forgets the history of KeyManager `reference`, which was deleted.
    pub fn delete(&mut self, reference: &str, history: &DriveHistory) {
        let Some(n) = self.numbers.get(reference).copied() else {
            return;
        };
        for serial in history.drives.keys() {
            self.remove(serial, n);
        }
    }

    /// The KeyManagers other than `me` that serve `serial`.
    pub fn others_serving(&self, serial: &str, me: &str) -> Vec<String> {
        self.serving
            .get(serial)
            .into_iter()
            .chain(self.also.get(serial).into_iter().flatten())
            .filter_map(|n| self.key_managers.get(usize::try_from(*n).ok()?))
            .filter(|k| *k != me)
            .cloned()
            .collect()
    }
}

/// Whether annotation `key` lists `serial`.
pub fn lists(annotations: &BTreeMap<String, String>, key: &str, serial: &str) -> bool {
    annotations.get(key).is_some_and(|v| listed(v, serial))
}

/// Whether a list of serials (comma- or space-separated) names `serial`.
fn listed(list: &str, serial: &str) -> bool {
    list.split([',', ' ']).any(|s| s.trim() == serial)
}

fn accepted(table: &DriveTable, serial: &str) -> bool {
    lists(table.annotations(), ACCEPT_DRIVE_MOVES, serial)
}

/// The drives of `name`'s tables that another KeyManager claims, by table or by history.
/// `others_serving` names the other KeyManagers that serve a serial.
pub fn conflicts(
    name: &str,
    tables: &[DriveTable],
    history: &DriveHistory,
    others_serving: impl Fn(&str) -> Vec<String>,
) -> Vec<DriveRisk> {
    let mut risks = Vec::new();
    for mine in tables
        .iter()
        .filter(|t| t.spec.key_manager_ref.name == name)
    {
        for drive in &mine.spec.drives {
            let serves = history.serves(&drive.serial);
            for other in tables
                .iter()
                .filter(|t| t.spec.key_manager_ref.name != name)
            {
                if other.spec.drives.iter().any(|d| d.serial == drive.serial) {
                    risks.push(DriveRisk {
                        serial: drive.serial.clone(),
                        table: mine.name_any(),
                        other_key_manager: other.spec.key_manager_ref.name.clone(),
                        claim: Claim::Table {
                            other_table: other.name_any(),
                        },
                        kept: serves,
                    });
                }
            }
            // Served here and by another: two KeyManagers took it at the same moment (from
            // different namespaces, where no table check sees both), and its keys are
            // split. It stays here, flagged, until the other's keys are carried.
            for other in others_serving(&drive.serial) {
                risks.push(DriveRisk {
                    serial: drive.serial.clone(),
                    table: mine.name_any(),
                    other_key_manager: other,
                    claim: Claim::History {
                        accepted: accepted(mine, &drive.serial),
                        carry_error: None,
                    },
                    kept: serves,
                });
            }
        }
    }
    risks
}

/// A copy of `table` without the drives held back from this KeyManager.
pub fn without_blocked(table: &DriveTable, name: &str, risks: &[DriveRisk]) -> DriveTable {
    let mut table = table.clone();
    if table.spec.key_manager_ref.name == name {
        table
            .spec
            .drives
            .retain(|d| !risks.iter().any(|r| !r.kept && r.serial == d.serial));
    }
    table
}

/// The KeyGroup a drive's keys come from here: its own, or the KeyManager's default.
fn key_group_of(name: &str, drive_group: Option<&String>, groups: &[KeyGroup]) -> Option<String> {
    drive_group.cloned().or_else(|| {
        groups
            .iter()
            .find(|g| g.spec.key_manager_ref.name == name && g.spec.default_group)
            .map(ResourceExt::name_any)
    })
}

/// Records in `history` every drive of KeyManager `name`'s `served` tables (its own, less
/// the drives held back), with the KeyGroup its keys come from. Returns whether the
/// history changed.
pub fn record_served(
    history: &mut DriveHistory,
    name: &str,
    served: &[DriveTable],
    groups: &[KeyGroup],
    now: Timestamp,
) -> bool {
    let mut changed = false;
    for table in served
        .iter()
        .filter(|t| t.spec.key_manager_ref.name == name)
    {
        for drive in &table.spec.drives {
            let group = key_group_of(name, drive.key_group.as_ref(), groups);
            changed |= history.record(&drive.serial, group.as_deref(), now);
        }
    }
    changed
}

/// What a carry asks of the shell about the KeyManager a drive comes from.
pub trait Origins: Send + Sync {
    /// KeyManager `owner` as declared now; `None` once it is deleted.
    fn key_manager(
        &self,
        owner: &Owner,
    ) -> impl Future<Output = Result<Option<KeyManager>, Error>> + Send;

    /// How to ask the replicas of the KeyManager of `inputs` for their keys.
    fn replicas(&self, inputs: &Inputs<'_>)
    -> impl Future<Output = Result<Replicas, Error>> + Send;
}

/// A drive whose keys were carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Carried {
    /// The drive's serial.
    pub serial: String,
    /// The KeyManager the keys came from, whose history is to hand the drive on.
    pub from: Owner,
    /// The DriveTable listing the drive, for an Event.
    pub table: String,
    /// What was carried, from where.
    pub note: String,
}

/// What [`carry_accepted`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Carries {
    /// The drives whose keys were carried.
    pub carried: Vec<Carried>,
    /// Whether the history changed (and must be written).
    pub history_changed: bool,
}

/// Carries the keys of every accepted move into `keystore` and records each drive as
/// carried in `history`, both in memory. A move whose keys cannot be carried stays held
/// back, with the reason in its risk; a carried one is no longer a risk.
///
/// The caller commits `keystore`, then calls [`hand_on`]: the old KeyManager gives up a
/// drive only once its keys are stored here.
pub async fn carry_accepted<S: State, O: Origins>(
    state: &S,
    origins: &O,
    inputs: &Inputs<'_>,
    keystore: &mut Canonical,
    history: &mut DriveHistory,
    risks: &mut Vec<DriveRisk>,
) -> Result<Carries, Error> {
    let me = key_manager_ref(&inputs.namespace(), &inputs.name());
    let mut carried = Vec::new();
    let mut history_changed = false;
    let mut done = Vec::new();
    for risk in risks.iter_mut() {
        let Claim::History {
            accepted: true,
            carry_error,
        } = &mut risk.claim
        else {
            continue;
        };
        let from = match Owner::parse(&risk.other_key_manager) {
            Ok(from) => from,
            Err(e) => {
                *carry_error = Some(e.to_string());
                continue;
            }
        };
        let outcome = async {
            released(state, origins, &from, &inputs.namespace(), &risk.serial).await?;
            let group = state
                .read_history(&from)
                .await?
                .and_then(|h| h.history.drives.get(&risk.serial)?.key_group.clone());
            let count = carry(state, origins, keystore, &from, group.as_deref()).await?;
            Ok::<_, Error>((group, count))
        }
        .await;
        let (group, count) = match outcome {
            Ok(done) => done,
            Err(e) => {
                *carry_error = Some(e.to_string());
                continue;
            }
        };
        history_changed |= history.carried(
            &risk.serial,
            &risk.other_key_manager,
            group.as_deref(),
            Timestamp::now(),
        );
        let note = format!(
            "drive {:?}: {count} key(s){} carried from KeyManager {:?}; it is served here now",
            risk.serial,
            group
                .as_deref()
                .map(|g| format!(" of KeyGroup {g:?}"))
                .unwrap_or_default(),
            risk.other_key_manager
        );
        tracing::info!(key_manager = %me, %note, "drive moved");
        carried.push(Carried {
            serial: risk.serial.clone(),
            from,
            table: risk.table.clone(),
            note,
        });
        done.push(risk.serial.clone());
    }
    risks.retain(|r| !done.contains(&r.serial));
    Ok(Carries {
        carried,
        history_changed,
    })
}

/// Whether KeyManager `from` lets `serial`'s keys go to namespace `to_ns`. Within one
/// namespace, whoever may edit its DriveTables answers for both KeyManagers. Across
/// namespaces the owners of the old one must agree, or anyone who can edit a DriveTable
/// could copy another namespace's keys into a keystore they can read: the old KeyManager
/// (or, once it is deleted, its drive history) must carry [`RELEASE_DRIVES`] naming the
/// drive.
async fn released<S: State, O: Origins>(
    state: &S,
    origins: &O,
    from: &Owner,
    to_ns: &str,
    serial: &str,
) -> Result<(), Error> {
    if from.namespace == to_ns {
        return Ok(());
    }
    let ok = match origins.key_manager(from).await? {
        Some(km) => lists(km.annotations(), RELEASE_DRIVES, serial),
        None => state
            .read_history(from)
            .await?
            .and_then(|h| h.released)
            .is_some_and(|r| listed(&r, serial)),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::Carry(format!(
            "KeyManager {from} is in another namespace, whose owners must release the drive first: annotate KeyManager {} in namespace {} (or, if it was deleted, {}) with {RELEASE_DRIVES}: {serial:?}",
            from.name,
            from.namespace,
            state.history_location(from),
        )))
    }
}

/// Copies the keys of `group` (every key when `None`) from KeyManager `from`'s keystore
/// into `keystore`. Returns how many keys were added.
///
/// When the old KeyManager still runs, its replicas may hold keys its canonical keystore
/// does not have yet (a drive's own keys, created since the last sync): they are pulled
/// into its keystore first, and the carry waits until every replica has answered. A
/// deleted KeyManager's replicas are gone; its canonical keystore is all there is.
async fn carry<S: State, O: Origins>(
    state: &S,
    origins: &O,
    keystore: &mut Canonical,
    from: &Owner,
    group: Option<&str>,
) -> Result<usize, Error> {
    let old = origins.key_manager(from).await?;
    let retention = old.as_ref().map_or(1, |km| {
        usize::try_from(km.spec.backup.retention).unwrap_or(1)
    });
    let mut source = Canonical::read(state, from, retention)
        .await?
        .ok_or_else(|| Error::Carry(format!("KeyManager {from} has no KEK or keystore")))?;
    if let Some(old) = old {
        let mut estate = Estate::new();
        estate.add(Object::KeyManager(old));
        if let Some(old_inputs) = Inputs::from_estate(&estate).into_iter().next() {
            let replicas = origins.replicas(&old_inputs).await?;
            let now = Time(Timestamp::now());
            let synced = keystore_sync::sync(&mut source, &replicas, None, &now).await?;
            source.commit(state).await?;
            if !synced.all_answered {
                return Err(Error::Carry(format!(
                    "the replicas of KeyManager {from} may hold keys of the drive that its keystore does not have yet: {}",
                    synced.condition.message
                )));
            }
        }
    }
    keystore.carry_from(&source, group)
}

/// Marks each carried drive as handed on to the KeyManager of `inputs` in the history of
/// the KeyManager it came from. Call it once the carried keys are committed.
pub async fn hand_on<S: State>(
    state: &S,
    inputs: &Inputs<'_>,
    carried: &[Carried],
) -> Result<(), Error> {
    let me = key_manager_ref(&inputs.namespace(), &inputs.name());
    for drive in carried {
        mark_moved(state, &drive.from, &drive.serial, &me).await?;
    }
    Ok(())
}

/// Marks `serial` as handed on to `to` in KeyManager `from`'s history, from a fresh read,
/// written only if the history did not change since (read again if it did).
async fn mark_moved<S: State>(
    state: &S,
    from: &Owner,
    serial: &str,
    to: &str,
) -> Result<(), Error> {
    const ATTEMPTS: usize = 5;
    for attempt in 1..=ATTEMPTS {
        let Some(mut stored) = state.read_history(from).await? else {
            return Err(Error::Carry(format!(
                "the drive history of KeyManager {from} is gone"
            )));
        };
        if !stored.history.moved(serial, to) {
            return Ok(());
        }
        match state
            .write_history(from, &stored.history, Some(&stored.version))
            .await
        {
            Ok(()) => return Ok(()),
            Err(StateError::Conflict { .. }) if attempt < ATTEMPTS => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Records every drive of `owner`'s `served` tables in its history and writes the history
/// when it changed (`carried`: the carry changed it already). `version` is the version read
/// (`None`: there was none), so a change made since fails the write.
pub async fn write_served<S: State>(
    state: &S,
    owner: &Owner,
    served: &[DriveTable],
    groups: &[KeyGroup],
    mut history: DriveHistory,
    version: Option<&str>,
    carried: bool,
) -> Result<(), Error> {
    let recorded = record_served(&mut history, &owner.name, served, groups, Timestamp::now());
    if recorded || carried {
        state.write_history(owner, &history, version).await?;
    }
    Ok(())
}

/// What the risks of one DriveTable say, for its condition.
pub fn risk_message(risks: &[DriveRisk], name: &str) -> String {
    risks
        .iter()
        .map(|r| match &r.claim {
            Claim::Table { other_table } => format!(
                "drive {:?} is listed under KeyManager {name:?} (DriveTable {}) and KeyManager {:?} (DriveTable {other_table}); {}",
                r.serial,
                r.table,
                r.other_key_manager,
                if r.kept {
                    "it stays here, where its keys are"
                } else {
                    "it is not served here until resolved, so its key history is not split"
                }
            ),
            Claim::History { carry_error: Some(error), .. } => format!(
                "drive {:?} (DriveTable {}) was served by KeyManager {:?}, and the move is accepted, but its keys could not be carried: {error}; {}",
                r.serial,
                r.table,
                r.other_key_manager,
                if r.kept {
                    "it stays served here, its key history split, until they are"
                } else {
                    "it is not served here until they are"
                }
            ),
            Claim::History { .. } if r.kept => format!(
                "drive {:?} (DriveTable {}) is served here and by KeyManager {:?} too, each holding keys it made: its key history is split; take it out of {:?}'s tables and annotate DriveTable {} with {ACCEPT_DRIVE_MOVES}: {:?} to carry those keys here",
                r.serial, r.table, r.other_key_manager, r.other_key_manager, r.table, r.serial
            ),
            Claim::History { .. } => format!(
                "drive {:?} (DriveTable {}) was served by KeyManager {:?}, which holds its keys; it is not served here until they are carried: annotate DriveTable {} with {ACCEPT_DRIVE_MOVES}: {:?} to carry them, or put the drive back",
                r.serial, r.table, r.other_key_manager, r.table, r.serial
            ),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `KeyHistoryAtRisk`: True with `risk` as its message, or False.
pub fn at_risk(risk: Option<String>, generation: Option<i64>, now: &Time) -> Condition {
    match risk {
        None => condition(
            types::KEY_HISTORY_AT_RISK,
            false,
            reasons::AS_EXPECTED,
            "every drive has one KeyManager",
            generation,
            now,
        ),
        Some(message) => condition(
            types::KEY_HISTORY_AT_RISK,
            true,
            reasons::KEY_HISTORY_AT_RISK,
            message,
            generation,
            now,
        ),
    }
}

/// The KeyManager's `KeyHistoryAtRisk` condition.
pub fn risk_condition(risks: &[DriveRisk], generation: Option<i64>, now: &Time) -> Condition {
    at_risk(
        (!risks.is_empty())
            .then(|| format!("{} drive(s) claimed by another KeyManager", risks.len())),
        generation,
        now,
    )
}

/// What one DriveTable of the KeyManager reports: its `KeyHistoryAtRisk` condition and how
/// many of its drives are served.
pub fn table_report(
    table: &DriveTable,
    name: &str,
    risks: &[DriveRisk],
    now: &Time,
) -> (Condition, usize) {
    let table_name = table.name_any();
    let mine: Vec<DriveRisk> = risks
        .iter()
        .filter(|r| r.table == table_name)
        .cloned()
        .collect();
    let c = at_risk(
        (!mine.is_empty()).then(|| risk_message(&mine, name)),
        table.metadata.generation,
        now,
    );
    let held_back = table
        .spec
        .drives
        .iter()
        .filter(|d| mine.iter().any(|r| !r.kept && r.serial == d.serial))
        .count();
    (c, table.spec.drives.len() - held_back)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(served: &[&str], moved: &[&str]) -> DriveHistory {
        let mut history = DriveHistory::new();
        for serial in served.iter().chain(moved) {
            history.record(serial, None, Timestamp::UNIX_EPOCH);
        }
        for serial in moved {
            history.moved(serial, "elsewhere/km");
        }
        history
    }

    #[test]
    fn the_index_follows_histories_as_they_change_and_go() {
        let mut index = DriveIndex::default();
        index.apply("a/x", &history(&["D1", "D2"], &[]));
        index.apply("b/y", &history(&["D2"], &[]));
        assert_eq!(index.others_serving("D1", "b/y"), ["a/x"]);
        assert!(index.others_serving("D1", "a/x").is_empty(), "never itself");
        let mut d2 = index.others_serving("D2", "c/z");
        d2.sort();
        assert_eq!(d2, ["a/x", "b/y"], "a split drive names both");
        // x hands D1 on: it no longer serves it.
        index.apply("a/x", &history(&["D2"], &["D1"]));
        assert!(index.others_serving("D1", "b/y").is_empty());
        // y's history is deleted.
        index.delete("b/y", &history(&["D2"], &[]));
        assert_eq!(index.others_serving("D2", "c/z"), ["a/x"]);
        // Split again, and the first one hands it on: the second still serves it.
        index.apply("b/y", &history(&["D2"], &[]));
        index.apply("a/x", &history(&[], &["D1", "D2"]));
        assert_eq!(index.others_serving("D2", "c/z"), ["b/y"]);
        index.apply("b/y", &history(&[], &["D2"]));
        assert!(index.others_serving("D2", "c/z").is_empty());
    }
}
