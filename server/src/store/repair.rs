//! `shadowkeep-server --repair DIR`: the way back for a store that refuses to start.
//!
//! It keeps a copy of the store's files as they were, recovers every intact record (the
//! snapshot if its checksum holds; every whole, checksummed record of the log, skipping
//! damaged bytes), writes a consistent snapshot and log from them, and says exactly what it
//! could not recover. A replica then pulls what it lacks from its peers (anti-entropy) when
//! it starts, so on a replicated KeyManager only keys that no other replica holds can be
//! lost — and the report says how many keys the unrecoverable parts held, where known.

use std::fmt;
use std::path::{Path, PathBuf};

use shadowkeep_api::keystore::Keystore;

use super::log::{self, SnapshotRef};
use super::{LOG, SNAPSHOT, StoreError, io_error, read_optional, replace_log, snapshot};

/// What became of the snapshot.
#[derive(Debug, PartialEq, Eq)]
pub enum SnapshotOutcome {
    /// There was none, and the log named none.
    None,
    /// Read and checked.
    Recovered {
        /// Its generation.
        generation: u64,
        /// Keys it held.
        keys: usize,
    },
    /// Present but damaged: not trusted, kept in the copy.
    Damaged {
        /// What is wrong.
        problem: String,
    },
    /// Absent.
    Missing,
}

/// What a repair did.
#[derive(Debug)]
pub struct RepairReport {
    /// Where the files were copied before anything changed.
    pub copy: PathBuf,
    /// The snapshot.
    pub snapshot: SnapshotOutcome,
    /// The snapshot the log said it continued, if the log's header survived.
    pub expected_snapshot: Option<SnapshotRef>,
    /// Key records recovered from the log.
    pub log_records: usize,
    /// Log byte ranges `[start, end)` that held no whole record.
    pub damaged: Vec<(u64, u64)>,
    /// Keys in the repaired store.
    pub keys: usize,
}

impl RepairReport {
    /// Whether everything the files held was recovered.
    pub fn complete(&self) -> bool {
        self.damaged.is_empty() && self.snapshot_lost().is_none()
    }

    /// The keys of a snapshot that could not be used, when the log says how many it held.
    fn snapshot_lost(&self) -> Option<String> {
        let expected = self.expected_snapshot.as_ref();
        match (&self.snapshot, expected) {
            (SnapshotOutcome::Recovered { generation, .. }, Some(e))
                if *generation < e.generation =>
            {
                Some(format!(
                    "the snapshot is generation {generation}, older than the generation {} of {} keys the log continued: keys compacted into the newer one and nowhere else are not recovered",
                    e.generation, e.keys
                ))
            }
            (SnapshotOutcome::Recovered { .. } | SnapshotOutcome::None, _)
            | (SnapshotOutcome::Missing, None) => None,
            (outcome, e) => {
                let held = e.map_or_else(
                    || "an unknown number of keys".to_owned(),
                    |e| format!("{} keys (generation {})", e.keys, e.generation),
                );
                let why = match outcome {
                    SnapshotOutcome::Damaged { problem } => format!("damaged ({problem})"),
                    _ => "missing".to_owned(),
                };
                Some(format!(
                    "the snapshot is {why}: it held {held}, which are not recovered from it"
                ))
            }
        }
    }
}

impl fmt::Display for RepairReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "copied the files as they were to {}",
            self.copy.display()
        )?;
        match &self.snapshot {
            SnapshotOutcome::None => writeln!(f, "snapshot: none")?,
            SnapshotOutcome::Recovered { generation, keys } => {
                writeln!(f, "snapshot: generation {generation}, {keys} keys, intact")?;
            }
            SnapshotOutcome::Damaged { problem } => {
                writeln!(f, "snapshot: damaged, not used ({problem})")?;
            }
            SnapshotOutcome::Missing => writeln!(f, "snapshot: missing")?,
        }
        writeln!(f, "log: {} key records recovered", self.log_records)?;
        for (start, end) in &self.damaged {
            writeln!(
                f,
                "log: bytes {start}..{end} ({} bytes) held no whole record and were skipped",
                end - start
            )?;
        }
        if let Some(lost) = self.snapshot_lost() {
            writeln!(f, "NOT RECOVERED: {lost}")?;
        }
        if !self.damaged.is_empty() {
            writeln!(
                f,
                "NOT RECOVERED: whatever records the skipped log bytes held (changes to keys, or keys made since the snapshot)"
            )?;
        }
        writeln!(f, "the store now holds {} keys and starts", self.keys)?;
        if !self.complete() {
            writeln!(
                f,
                "a replica pulls every key its peers hold when it starts; restore keys no peer holds from a backup"
            )?;
        }
        Ok(())
    }
}

/// Repairs the store in `dir`: see the module documentation.
pub fn repair(dir: &Path) -> Result<RepairReport, StoreError> {
    if !dir.is_dir() {
        return Err(io_error("open the data directory", dir)(
            std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        ));
    }
    let _lock = super::lock(dir)?;
    let copy = keep_copy(dir)?;
    let (snapshot, mut keystore, snapshot_generation) = match read_optional(&dir.join(SNAPSHOT))? {
        None => (SnapshotOutcome::Missing, Keystore::new(), 0),
        Some(bytes) => match snapshot::decode(&bytes) {
            Ok(s) => (
                SnapshotOutcome::Recovered {
                    generation: s.generation,
                    keys: s.keystore.len(),
                },
                s.keystore,
                s.generation,
            ),
            Err(problem) => (SnapshotOutcome::Damaged { problem }, Keystore::new(), 0),
        },
    };
    let salvage = log::salvage(&read_optional(&dir.join(LOG))?.unwrap_or_default());
    let expected_snapshot = salvage.header.and_then(|h| h.snapshot);
    let snapshot = match (snapshot, &expected_snapshot) {
        (SnapshotOutcome::Missing, None) => SnapshotOutcome::None,
        (s, _) => s,
    };
    let log_records = salvage.keys.len();
    for key in salvage.keys {
        // A conflicting record is quarantined by the merge, not dropped.
        keystore.insert(key).map_err(|source| StoreError::Encode {
            what: "a recovered record".to_owned(),
            source,
        })?;
    }
    let generation =
        snapshot_generation.max(expected_snapshot.as_ref().map_or(0, |e| e.generation)) + 1;
    let written = super::write_snapshot(dir, generation, &keystore)?;
    replace_log(dir, written).map_err(|e| e.error)?;
    // The result must be a store that opens.
    super::load(dir)?;
    Ok(RepairReport {
        copy,
        snapshot,
        expected_snapshot,
        log_records,
        damaged: salvage.damaged,
        keys: keystore.len(),
    })
}

/// Copies the snapshot, the log and any kept torn tails to a new directory beside them.
fn keep_copy(dir: &Path) -> Result<PathBuf, StoreError> {
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let mut copy = dir.join(format!("repair-{stamp}"));
    let mut n = 1;
    while copy.exists() {
        n += 1;
        copy = dir.join(format!("repair-{stamp}-{n}"));
    }
    std::fs::create_dir(&copy).map_err(io_error("create", &copy))?;
    let entries = std::fs::read_dir(dir).map_err(io_error("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_error("list", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == SNAPSHOT || name == LOG || name.starts_with(&format!("{LOG}.torn-")) {
            let bytes = std::fs::read(entry.path()).map_err(io_error("read", &entry.path()))?;
            super::write_atomically(&copy, &name, &bytes)?;
        }
    }
    Ok(copy)
}
