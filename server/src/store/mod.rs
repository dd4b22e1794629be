//! The durable keystore: every key record is appended to a log and fsynced before anyone
//! can see it, and the log is folded into a snapshot from time to time.
//!
//! - [`log`]: the log's records, and how a torn tail is told from damage.
//! - [`snapshot`]: the snapshot file and its integrity check.
//! - [`repair`]: `shadowkeep-server --repair`, for a store that refuses to start.
//!
//! Files in the data directory:
//! - `keystore.snapshot`: the whole keystore with a checksummed header, replaced atomically
//!   (write to a temporary file, fsync, rename, fsync the directory).
//! - `keystore.log`: a header naming the snapshot it continues, then the records appended
//!   since. It is replaced atomically by compaction too, so it is never absent once a store
//!   exists.
//!
//! Because the keystore merges records as a grow-only set, replaying the log over the
//! snapshot is order-insensitive and idempotent: a crash between writing a snapshot and
//! replacing the log only means some records are applied twice, harmlessly.
//!
//! What the store refuses to start on, rather than serve fewer keys than it acknowledged:
//! damage anywhere in the log (a torn tail — an unacknowledged write — is cut off, after a
//! copy is kept), a snapshot the log names that is missing, older or damaged, and a missing
//! log beside a snapshot. Every refusal names the file and says to run `--repair`.
//!
//! Writes go through one writer thread that commits everything queued in one fsync (group
//! commit), so concurrent creates share the cost of a disk flush. A write that fails (a
//! full disk) is cut back to the last acknowledged byte before anything else is written,
//! and reads are served from memory throughout.

pub mod log;
pub mod repair;
pub mod snapshot;

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use shadowkeep_api::keystore::{Kek, Key, KeyId, Keystore, KeystoreError};
use shadowkeep_api::replica_sync::RefusedRecord;
use tokio::sync::{mpsc, oneshot};

pub use self::log::MAX_RECORD;
use self::log::{End, Header, SnapshotRef};
use crate::durable;

/// The snapshot file.
pub const SNAPSHOT: &str = "keystore.snapshot";
/// The log file.
pub const LOG: &str = "keystore.log";
/// Log records after which the log is folded into a new snapshot.
const COMPACT_AFTER: usize = 50_000;
/// Log size after which the log is folded into a new snapshot, whatever its record count:
/// the log is read whole at start.
const COMPACT_BYTES: u64 = 64 << 20;
/// The lock file that keeps two processes off one store.
const LOCK: &str = "keystore.lock";
/// How long opening waits for a store another writer is releasing (a store just dropped
/// in this process releases it as its writer thread ends).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
/// Most records committed by one fsync.
const MAX_GROUP: usize = 512;

/// Why the store could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file system refused.
    #[error("failed to {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// The files say that acknowledged keys were damaged or lost: the store does not start
    /// with fewer keys than it acknowledged, and changes nothing.
    #[error(
        "refusing to open the keystore in {dir}: {file} {problem}. Nothing was changed; `shadowkeep-server --repair {dir}` keeps a copy of the files and recovers every intact record (see docs/repair.md)"
    )]
    Refused {
        /// The data directory.
        dir: String,
        /// The file at fault.
        file: &'static str,
        /// Where in the log the damage is, if it is in the log.
        offset: Option<u64>,
        /// What is wrong.
        problem: String,
    },
    /// A keystore that would not serialise.
    #[error("failed to encode {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: String,
        /// The cause.
        source: KeystoreError,
    },
    /// Another process (a server, or a repair) has the store open.
    #[error(
        "the keystore in {dir} is in use by another process (a server or a repair holds {LOCK})"
    )]
    InUse {
        /// The data directory.
        dir: String,
    },
    /// A key whose record would exceed [`MAX_RECORD`]: refused before anything is written.
    #[error("key {id} would take {bytes} bytes in the keystore log, over the limit of {limit}")]
    TooLarge {
        /// The key.
        id: String,
        /// Its encoded size.
        bytes: usize,
        /// [`MAX_RECORD`].
        limit: usize,
    },
    /// The writer thread is gone (the server is shutting down).
    #[error("keystore writer stopped")]
    WriterGone,
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError + use<> {
    let path = path.display().to_string();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

fn refused(dir: &Path, file: &'static str, offset: Option<u64>, problem: String) -> StoreError {
    StoreError::Refused {
        dir: dir.display().to_string(),
        file,
        offset,
        problem,
    }
}

struct Write {
    keys: Vec<Key>,
    /// The keys' log records, encoded by the caller so the writer thread only writes.
    records: Vec<u8>,
    done: oneshot::Sender<Result<(), String>>,
}

/// A keystore whose every visible record is on disk.
#[derive(Clone)]
pub struct Store {
    state: Arc<RwLock<Keystore>>,
    writer: mpsc::Sender<Write>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, replaying its snapshot and log, and
    /// starts the writer thread. Refuses ([`StoreError::Refused`]) a store whose files show
    /// damage or loss, changing nothing.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(io_error("create", dir))?;
        let lock = lock(dir)?;
        let loaded = load(dir)?;
        let log_path = dir.join(LOG);
        if let End::Torn(offset) = loaded.end {
            keep_torn_tail(dir, offset)?;
        }
        let mut writer = Writer {
            dir: dir.to_owned(),
            log: open_log(&log_path)?,
            len: loaded.valid_len,
            dirty: loaded.valid_len < loaded.file_len,
            dir_unsynced: false,
            records: loaded.records,
            generation: loaded.generation,
            compact_at: COMPACT_AFTER,
            state: Arc::new(RwLock::new(loaded.keystore)),
            _lock: lock,
        };
        if writer.dirty {
            writer.cut_back().map_err(io_error("truncate", &log_path))?;
        }
        if loaded.rewrite {
            // A log from before headers, or one a newer snapshot already holds: write the
            // pair that names each other now, so damage from here on is caught.
            writer.compact()?;
        } else if writer.len == 0 {
            // A new store: its log starts with a header like every later one.
            let header = log::encode_header(&Header::new(None));
            writer
                .log
                .write_all(&header)
                .and_then(|()| writer.log.sync_all())
                .map_err(io_error("write", &log_path))?;
            sync_dir(dir)?;
            writer.len = header.len() as u64;
        }
        let state = Arc::clone(&writer.state);
        let (tx, rx) = mpsc::channel(4096);
        std::thread::Builder::new()
            .name("keystore-writer".to_owned())
            .spawn(move || writer.run(rx))
            .map_err(io_error("start the writer for", dir))?;
        Ok(Self { state, writer: tx })
    }

    /// Makes `keys` durable and then visible: merged into the store after they are on disk.
    /// Returns only once that is done; on error nothing of `keys` became visible.
    pub async fn commit(&self, keys: Vec<Key>) -> Result<(), StoreError> {
        let mut records = Vec::new();
        for key in &keys {
            encode_key(key, &mut records)?;
        }
        self.write(keys, records).await
    }

    /// [`Store::commit`] for records from elsewhere (a peer, the operator's keystore file),
    /// one rule for every way in. A record is left out, and returned with the reason, when
    /// its material does not open under `kek` (a key this server could hold but never serve,
    /// whose id would then quarantine the real record), or when it is over [`MAX_RECORD`]
    /// (only a server from before the limit could have made one); the rest is committed,
    /// so that one bad record cannot keep every other from arriving.
    pub async fn commit_from_elsewhere(
        &self,
        keys: Vec<Key>,
        kek: &Kek,
    ) -> Result<Vec<RefusedRecord>, StoreError> {
        let mut fitting = Vec::with_capacity(keys.len());
        let mut refused = Vec::new();
        let mut records = Vec::new();
        for key in keys {
            // The plaintext is wiped as soon as it is dropped.
            if let Err(e) = kek.open(&key.id, &key.material) {
                refused.push(RefusedRecord {
                    id: key.id.to_string(),
                    reason: e.to_string(),
                });
                continue;
            }
            match encode_key(&key, &mut records) {
                Ok(()) => fitting.push(key),
                Err(e @ StoreError::TooLarge { .. }) => refused.push(RefusedRecord {
                    id: key.id.to_string(),
                    reason: e.to_string(),
                }),
                Err(e) => return Err(e),
            }
        }
        if !fitting.is_empty() {
            self.write(fitting, records).await?;
        }
        Ok(refused)
    }

    async fn write(&self, keys: Vec<Key>, records: Vec<u8>) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.writer
            .send(Write {
                keys,
                records,
                done,
            })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(StoreError::Io {
                action: "commit keys to",
                path: "keystore log".to_owned(),
                source: io::Error::other(message),
            }),
            Err(_) => Err(StoreError::WriterGone),
        }
    }

    /// Runs `f` on the visible keystore.
    pub fn read<T>(&self, f: impl FnOnce(&Keystore) -> T) -> T {
        let guard = self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&guard)
    }

    /// A copy of one key.
    pub fn get(&self, id: &KeyId) -> Option<Key> {
        self.read(|ks| ks.get(id).cloned())
    }
}

/// A store's files, read and checked against each other.
struct Loaded {
    keystore: Keystore,
    /// The newest snapshot generation either file knows of.
    generation: u64,
    records: usize,
    valid_len: u64,
    file_len: u64,
    end: End,
    /// Whether the snapshot and log should be rewritten as a pair at once.
    rewrite: bool,
}

/// Takes the store's lock: two writers appending to one log would interleave records.
fn lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error("open", &path))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::InUse {
                    dir: dir.display().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_error("lock", &path)(e)),
        }
    }
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    durable::read_optional(path).map_err(io_error("read", path))
}

fn load(dir: &Path) -> Result<Loaded, StoreError> {
    let snapshot = read_optional(&dir.join(SNAPSHOT))?
        .map(|bytes| {
            snapshot::decode(&bytes)
                .map_err(|problem| refused(dir, SNAPSHOT, None, format!("is damaged: {problem}")))
        })
        .transpose()?;
    let log_bytes = read_optional(&dir.join(LOG))?;
    if log_bytes.is_none() && snapshot.is_some() {
        return Err(refused(
            dir,
            LOG,
            None,
            format!(
                "is missing beside {SNAPSHOT}: the keys acknowledged since the snapshot would be lost"
            ),
        ));
    }
    let log_bytes = log_bytes.unwrap_or_default();
    let (snapshot_generation, mut keystore) = snapshot.map_or((None, Keystore::new()), |s| {
        (Some((s.generation, s.digest)), s.keystore)
    });
    let replayed = log::replay(&log_bytes, |key| {
        let report = keystore.insert(key).map_err(|e| e.to_string())?;
        for conflict in &report.conflicts {
            tracing::error!(key = %conflict.id, "{conflict}");
        }
        Ok(())
    })
    .map_err(|d| {
        refused(
            dir,
            LOG,
            Some(d.offset),
            format!("is damaged at byte {}: {}", d.offset, d.problem),
        )
    })?;
    let expected = replayed.header.as_ref().and_then(|h| h.snapshot.as_ref());
    check_snapshot(dir, expected, snapshot_generation.as_ref())?;
    let found = snapshot_generation.as_ref().map_or(0, |(g, _)| *g);
    let named = expected.map_or(0, |r| r.generation);
    Ok(Loaded {
        keystore,
        generation: found.max(named),
        records: replayed.records,
        valid_len: replayed.valid_len,
        file_len: log_bytes.len() as u64,
        end: replayed.end,
        rewrite: replayed.header.is_none()
            && (snapshot_generation.is_some() || replayed.records > 0)
            || found > named,
    })
}

/// Refuses a snapshot that is not the one the log continues: missing, older, or another
/// file of the same generation. A newer one is a compaction that crashed before replacing
/// the log, and holds everything the log does.
fn check_snapshot(
    dir: &Path,
    expected: Option<&SnapshotRef>,
    found: Option<&(u64, String)>,
) -> Result<(), StoreError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let problem = match found {
        None => format!(
            "is missing, but {LOG} continues snapshot generation {} of {} keys",
            expected.generation, expected.keys
        ),
        Some((generation, _)) if *generation < expected.generation => format!(
            "is generation {generation}, older than the generation {} of {} keys that {LOG} continues (was an old copy put back?)",
            expected.generation, expected.keys
        ),
        Some((generation, digest))
            if *generation == expected.generation && *digest != expected.digest =>
        {
            format!(
                "is not the generation {generation} snapshot that {LOG} continues (its checksum differs)"
            )
        }
        Some(_) => return Ok(()),
    };
    Err(refused(dir, SNAPSHOT, None, problem))
}

/// Keeps a copy of a torn tail beside the log before it is cut off: it was never
/// acknowledged, but a person investigating a crash may want it.
fn keep_torn_tail(dir: &Path, offset: u64) -> Result<(), StoreError> {
    let log_path = dir.join(LOG);
    let bytes = std::fs::read(&log_path).map_err(io_error("read", &log_path))?;
    let tail = bytes
        .get(usize::try_from(offset).unwrap_or(usize::MAX)..)
        .unwrap_or_default();
    let name = format!(
        "{LOG}.torn-at-{offset}-{}",
        jiff::Timestamp::now().as_second()
    );
    write_atomically(dir, &name, tail)?;
    tracing::warn!(
        log = %log_path.display(),
        offset,
        bytes = tail.len(),
        copy = %dir.join(&name).display(),
        "keystore log ends in a torn record (a write that was never acknowledged); cutting it off"
    );
    Ok(())
}

fn open_log(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error("open", path))
}

/// Appends `key`'s log record to `out`, refusing a record over [`MAX_RECORD`].
fn encode_key(key: &Key, out: &mut Vec<u8>) -> Result<(), StoreError> {
    let payload = serde_json::to_vec(key).map_err(|e| StoreError::Encode {
        what: format!("key {}", key.id),
        source: KeystoreError::Encode(e.to_string()),
    })?;
    if payload.len() > MAX_RECORD {
        return Err(StoreError::TooLarge {
            id: key.id.to_string(),
            bytes: payload.len(),
            limit: MAX_RECORD,
        });
    }
    log::encode(&payload, out);
    Ok(())
}

/// Writes `keystore` as snapshot `generation`, atomically, and returns what the log's
/// header says of it.
fn write_snapshot(
    dir: &Path,
    generation: u64,
    keystore: &Keystore,
) -> Result<SnapshotRef, StoreError> {
    let payload = keystore.to_bytes().map_err(|source| StoreError::Encode {
        what: "the keystore snapshot".to_owned(),
        source,
    })?;
    let (bytes, digest) = snapshot::encode(generation, &payload);
    write_atomically(dir, SNAPSHOT, &bytes)?;
    Ok(SnapshotRef {
        generation,
        digest,
        keys: keystore.len(),
    })
}

/// A log open for appending, and its length.
struct OpenLog {
    file: File,
    len: u64,
}

/// Why a log could not be replaced, and the new log if it is in place all the same (only
/// the directory fsync failed: its name may not be durable yet).
struct ReplaceError {
    error: StoreError,
    in_place: Option<OpenLog>,
}

/// Replaces the log with one holding only a header naming `snapshot`, and returns it open
/// for appending. The handle is opened before the rename, so appends can never go to the
/// replaced file.
fn replace_log(dir: &Path, snapshot: SnapshotRef) -> Result<OpenLog, ReplaceError> {
    let header = log::encode_header(&Header::new(Some(snapshot)));
    let tmp = durable::temporary(dir, LOG);
    let path = dir.join(LOG);
    let result = (|| {
        durable::write_new(&tmp, &header).map_err(io_error("write", &tmp))?;
        let appender = open_log(&tmp)?;
        std::fs::rename(&tmp, &path).map_err(io_error("rename", &tmp))?;
        Ok(appender)
    })();
    let file = result.map_err(|error| {
        let _ = std::fs::remove_file(&tmp);
        ReplaceError {
            error,
            in_place: None,
        }
    })?;
    let new = OpenLog {
        file,
        len: header.len() as u64,
    };
    match sync_dir(dir) {
        Ok(()) => Ok(new),
        Err(error) => Err(ReplaceError {
            error,
            in_place: Some(new),
        }),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    durable::sync_dir(dir).map_err(io_error("fsync", dir))
}

struct Writer {
    dir: PathBuf,
    log: File,
    /// Length of the log up to the last acknowledged record.
    len: u64,
    /// Whether bytes of a failed write may lie past `len`.
    dirty: bool,
    /// Whether the directory must be fsynced before the next acknowledgement (a replaced
    /// log's name is not durable until it is).
    dir_unsynced: bool,
    records: usize,
    generation: u64,
    /// Record count at which the next compaction is tried.
    compact_at: usize,
    state: Arc<RwLock<Keystore>>,
    /// Held as long as the writer runs.
    _lock: File,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Write>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(more) => group.push(more),
                    Err(_) => break,
                }
            }
            let result = self.commit(&group);
            for write in group {
                let _ = write.done.send(result.clone());
            }
            if (self.records >= self.compact_at || self.len >= COMPACT_BYTES)
                && let Err(e) = self.compact()
            {
                // Retried after more records rather than after every commit: on a full
                // disk each try writes the whole keystore.
                self.compact_at = self.records + COMPACT_AFTER / 10;
                tracing::error!(error = %e, "failed to compact the keystore log; it keeps growing");
            }
        }
    }

    fn commit(&mut self, group: &[Write]) -> Result<(), String> {
        if self.dir_unsynced {
            sync_dir(&self.dir).map_err(|e| e.to_string())?;
            self.dir_unsynced = false;
        }
        if self.dirty {
            self.cut_back().map_err(|e| {
                format!("failed to cut an earlier failed write off the keystore log: {e}")
            })?;
        }
        let bytes: Vec<u8> = group
            .iter()
            .flat_map(|w| w.records.iter().copied())
            .collect();
        if let Err(e) = self
            .log
            .write_all(&bytes)
            .and_then(|()| self.log.sync_data())
        {
            // Whatever part of this write reached the file must go before anything else is
            // appended, or the next start finds damage with valid records after it.
            let cut = match self.cut_back() {
                Ok(()) => String::new(),
                Err(cut) => format!(
                    "; cutting the partial write off failed too ({cut}) and is retried before the next write"
                ),
            };
            return Err(format!("failed to append to the keystore log: {e}{cut}"));
        }
        self.len += bytes.len() as u64;
        let mut state = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for write in group {
            for key in &write.keys {
                let report = state.insert(key.clone()).map_err(|e| e.to_string())?;
                for conflict in &report.conflicts {
                    // Kept and quarantined, never overwritten; a person has to look.
                    tracing::error!(key = %conflict.id, "{conflict}");
                }
                self.records += 1;
            }
        }
        Ok(())
    }

    /// Truncates the log to its last acknowledged byte and makes that durable.
    fn cut_back(&mut self) -> io::Result<()> {
        self.dirty = true;
        self.log.set_len(self.len)?;
        self.log.sync_all()?;
        self.dirty = false;
        Ok(())
    }

    /// Writes the whole keystore as the next snapshot and starts an empty log naming it.
    fn compact(&mut self) -> Result<(), StoreError> {
        let generation = self.generation + 1;
        let written = {
            let state = self
                .state
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            write_snapshot(&self.dir, generation, &state)?
        };
        // The snapshot is in place: its generation is spent even if the log is not replaced
        // (the old log names an older one, which load accepts), so generations only grow.
        self.generation = generation;
        match replace_log(&self.dir, written) {
            Ok(new) => {
                self.use_log(new);
                Ok(())
            }
            Err(ReplaceError {
                error,
                in_place: Some(new),
            }) => {
                self.dir_unsynced = true;
                self.use_log(new);
                Err(error)
            }
            Err(ReplaceError { error, .. }) => Err(error),
        }
    }

    fn use_log(&mut self, new: OpenLog) {
        self.log = new.file;
        self.len = new.len;
        self.dirty = false;
        self.records = 0;
        self.compact_at = COMPACT_AFTER;
    }
}

/// Replaces `dir/name` with `bytes` so that a crash leaves either the old or the new file
/// (see [`durable::write_atomically`]).
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    durable::write_atomically(dir, name, bytes).map_err(io_error("write", &dir.join(name)))
}
#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use shadowkeep_api::keystore::{Algorithm, AttributeValue, Kek, KeyState};

    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("shadowkeep-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn key(kek: &Kek, name: &str) -> Key {
        Key::generate(kek, name, Algorithm::Aes, 256, Timestamp::UNIX_EPOCH).unwrap()
    }

    /// A store with keys A and B in a snapshot (generation 1) and C and D in the log.
    async fn compacted_store(name: &str) -> (PathBuf, Vec<Key>) {
        let dir = tempdir(name);
        let kek = Kek::generate();
        let keys: Vec<Key> = ["A", "B", "C", "D"].iter().map(|n| key(&kek, n)).collect();
        let store = Store::open(&dir).unwrap();
        store.commit(keys[..2].to_vec()).await.unwrap();
        drop(store);
        let ks = Store::open(&dir).unwrap().read(Clone::clone);
        let written = write_snapshot(&dir, 1, &ks).unwrap();
        assert!(replace_log(&dir, written).is_ok());
        let store = Store::open(&dir).unwrap();
        store.commit(vec![keys[2].clone()]).await.unwrap();
        store.commit(vec![keys[3].clone()]).await.unwrap();
        drop(store);
        (dir, keys)
    }

    fn refusal(dir: &Path) -> (String, Option<u64>, String) {
        match Store::open(dir).unwrap_err() {
            StoreError::Refused {
                file,
                offset,
                problem,
                ..
            } => (file.to_owned(), offset, problem),
            other => panic!("expected a refusal, got {other}"),
        }
    }

    #[tokio::test]
    async fn committed_keys_survive_reopening_and_compaction() {
        let (dir, keys) = compacted_store("reopen").await;
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.read(Keystore::len), 4);
        for k in &keys {
            assert_eq!(store.get(&k.id).as_ref(), Some(k));
        }
        let mut b = keys[1].clone();
        b.state = KeyState::Active;
        store.commit(vec![b.clone()]).await.unwrap();
        drop(store);
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.get(&b.id).unwrap().state, KeyState::Active);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_new_store_starts_its_log_with_a_header_and_reopens_without_compacting() {
        let dir = tempdir("fresh");
        let kek = Kek::generate();
        let store = Store::open(&dir).unwrap();
        store.commit(vec![key(&kek, "A")]).await.unwrap();
        drop(store);
        for _ in 0..2 {
            assert_eq!(Store::open(&dir).unwrap().read(Keystore::len), 1);
        }
        assert!(!dir.join(SNAPSHOT).exists());
        let bytes = std::fs::read(dir.join(LOG)).unwrap();
        let replayed = log::replay(&bytes, |_| Ok(())).unwrap();
        assert_eq!(replayed.header, Some(Header::new(None)));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_torn_last_record_is_cut_off_and_kept_aside() {
        let (dir, _) = compacted_store("torn").await;
        let log_path = dir.join(LOG);
        let whole = std::fs::read(&log_path).unwrap();
        std::fs::write(&log_path, &whole[..whole.len() - 10]).unwrap();
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.read(Keystore::len), 3);
        drop(store);
        let kept: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.starts_with("keystore.log.torn-at-").then_some(name)
            })
            .collect();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert!(std::fs::read(&log_path).unwrap().len() < whole.len() - 10);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn damage_anywhere_in_the_log_is_refused_and_the_file_kept() {
        let (dir, _) = compacted_store("damage").await;
        let log_path = dir.join(LOG);
        let whole = std::fs::read(&log_path).unwrap();
        // The last byte of the last whole record: before, this was taken for a torn tail.
        for at in [whole.len() - 1, 40] {
            let mut damaged = whole.clone();
            damaged[at] ^= 0x01;
            std::fs::write(&log_path, &damaged).unwrap();
            let (file, offset, problem) = refusal(&dir);
            assert_eq!(file, LOG);
            assert!(
                offset.is_some_and(|o| o <= at as u64),
                "{offset:?} {problem}"
            );
            assert_eq!(
                std::fs::read(&log_path).unwrap(),
                damaged,
                "the file changed"
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_missing_older_or_damaged_snapshot_is_refused() {
        let (dir, _) = compacted_store("snapshot").await;
        let snap = dir.join(SNAPSHOT);
        let good = std::fs::read(&snap).unwrap();

        std::fs::remove_file(&snap).unwrap();
        let (file, _, problem) = refusal(&dir);
        assert_eq!(file, SNAPSHOT);
        assert!(
            problem.contains("missing") && problem.contains("2 keys"),
            "{problem}"
        );

        let mut flipped = good.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x20;
        std::fs::write(&snap, &flipped).unwrap();
        assert!(refusal(&dir).2.contains("damaged"));

        let (older, _) = snapshot::encode(0, &Keystore::new().to_bytes().unwrap());
        std::fs::write(&snap, older).unwrap();
        assert!(refusal(&dir).2.contains("older"));

        let (other, _) = snapshot::encode(1, &Keystore::new().to_bytes().unwrap());
        std::fs::write(&snap, other).unwrap();
        assert!(refusal(&dir).2.contains("checksum differs"));

        std::fs::write(&snap, &good).unwrap();
        std::fs::remove_file(dir.join(LOG)).unwrap();
        assert_eq!(refusal(&dir).0, LOG);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_store_from_before_headers_opens_and_is_rewritten_with_them() {
        let dir = tempdir("legacy");
        std::fs::create_dir_all(&dir).unwrap();
        let kek = Kek::generate();
        let (a, b) = (key(&kek, "A"), key(&kek, "B"));
        let mut snapshot = Keystore::new();
        snapshot.insert(a.clone()).unwrap();
        std::fs::write(dir.join(SNAPSHOT), snapshot.to_bytes().unwrap()).unwrap();
        let mut log_bytes = Vec::new();
        log::encode(&serde_json::to_vec(&b).unwrap(), &mut log_bytes);
        std::fs::write(dir.join(LOG), log_bytes).unwrap();

        let store = Store::open(&dir).unwrap();
        assert_eq!(store.read(Keystore::len), 2);
        drop(store);
        // Now the pair names each other: losing the snapshot is caught.
        std::fs::remove_file(dir.join(SNAPSHOT)).unwrap();
        assert_eq!(refusal(&dir).0, SNAPSHOT);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_record_over_the_limit_is_refused_before_it_is_written() {
        let dir = tempdir("large");
        let kek = Kek::generate();
        let store = Store::open(&dir).unwrap();
        let mut big = key(&kek, "BIG");
        for i in 0..300 {
            big.attributes.insert(
                format!("x-{i}"),
                AttributeValue {
                    updated_at_ms: 0,
                    value: Some("v".repeat(4096)),
                },
            );
        }
        let before = std::fs::read(dir.join(LOG)).unwrap();
        let ok = key(&kek, "OK");
        let err = store
            .commit(vec![ok.clone(), big.clone()])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
        assert_eq!(std::fs::read(dir.join(LOG)).unwrap(), before);
        assert_eq!(store.read(Keystore::len), 0);

        // From a peer, the record that fits still arrives; one sealed under another KEK is
        // refused too.
        let foreign = key(&Kek::generate(), "FOREIGN");
        let refused = store
            .commit_from_elsewhere(vec![big.clone(), ok.clone(), foreign.clone()], &kek)
            .await
            .unwrap();
        let ids: Vec<_> = refused.iter().map(|r| r.id.clone()).collect();
        assert_eq!(ids, [big.id.to_string(), foreign.id.to_string()]);
        assert_eq!(store.read(Keystore::len), 1);
        assert!(store.get(&ok.id).is_some());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn repair_recovers_every_intact_record_and_says_what_it_could_not() {
        let (dir, keys) = compacted_store("repair").await;
        let log_path = dir.join(LOG);
        let mut damaged = std::fs::read(&log_path).unwrap();
        // Damage the record of C (the first key record after the header).
        let header_len = 8 + u32::from_be_bytes(damaged[..4].try_into().unwrap()) as usize;
        damaged[header_len + 30] ^= 0x04;
        std::fs::write(&log_path, &damaged).unwrap();
        assert_eq!(refusal(&dir).0, LOG);

        let report = repair::repair(&dir).unwrap();
        assert!(!report.complete());
        assert_eq!(report.log_records, 1);
        assert_eq!(report.damaged.len(), 1);
        assert_eq!(std::fs::read(report.copy.join(LOG)).unwrap(), damaged);
        let text = report.to_string();
        assert!(text.contains("NOT RECOVERED"), "{text}");

        let store = Store::open(&dir).unwrap();
        let held: Vec<_> = keys.iter().map(|k| store.get(&k.id).is_some()).collect();
        assert_eq!(held, [true, true, false, true]);
        drop(store);

        // A repair of a healthy store loses nothing and says so.
        let report = repair::repair(&dir).unwrap();
        assert!(report.complete(), "{report}");
        assert_eq!(report.keys, 3);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
