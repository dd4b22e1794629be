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

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use shadowkeep_api::crd::{DriveTable, KeyGroup};
use shadowkeep_api::drive_history::DriveHistory;

use super::conditions::{condition, reasons, types};
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

/// Whether annotation `key` lists `serial` (comma- or space-separated).
pub fn lists(annotations: &BTreeMap<String, String>, key: &str, serial: &str) -> bool {
    annotations
        .get(key)
        .is_some_and(|v| v.split([',', ' ']).any(|s| s.trim() == serial))
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

/// Records in `history` every drive the KeyManager of `inputs` serves now, with the
/// KeyGroup its keys come from. Returns whether the history changed.
pub fn record_served(
    history: &mut DriveHistory,
    inputs: &Inputs<'_>,
    groups: &[KeyGroup],
    now: Timestamp,
) -> bool {
    let name = inputs.name();
    let mut changed = false;
    for table in &inputs.drive_tables {
        for drive in &table.spec.drives {
            let group = key_group_of(&name, drive.key_group.as_ref(), groups);
            changed |= history.record(&drive.serial, group.as_deref(), now);
        }
    }
    changed
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
