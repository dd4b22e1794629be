//! The durable keystore: every key record is appended to a log and fsynced before anyone
//! can see it, and the log is folded into a snapshot from time to time.
//!
//! Files in the data directory:
//! - `keystore.snapshot`: a [`Keystore`] serialisation, replaced atomically (write to a
//!   temporary file, fsync, rename, fsync the directory).
//! - `keystore.log`: records appended since the snapshot. A record is
//!   `len: u32 BE | crc32(payload): u32 BE | payload` where the payload is one key as JSON.
//!
//! Because the keystore merges records as a grow-only set, replaying the log over the
//! snapshot is order-insensitive and idempotent: a crash between writing a snapshot and
//! truncating the log only means some records are applied twice, harmlessly.
//!
//! Writes go through one writer thread that commits everything queued in one fsync (group
//! commit), so concurrent creates share the cost of a disk flush.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use shadowkeep_api::keystore::{Key, KeyId, Keystore, KeystoreError};
use tokio::sync::{mpsc, oneshot};

const SNAPSHOT: &str = "keystore.snapshot";
const LOG: &str = "keystore.log";
/// Log records after which the log is folded into a new snapshot.
const COMPACT_AFTER: usize = 50_000;
/// Most records committed by one fsync.
const MAX_GROUP: usize = 512;
/// Largest record a key may have, enforced when it is written and when it is replayed: one
/// limit, so that nothing acknowledged can be refused at the next start. A tape key is a few
/// hundred bytes; the KMIP layer keeps objects well below this with its own attribute limits.
pub const MAX_RECORD: usize = 1 << 20;

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
    /// A record in the middle of the log is damaged: refusing to guess what was lost.
    #[error(
        "keystore log {path} is damaged at byte {offset} with valid records after it; refusing to start (restore from a replica or backup)"
    )]
    Corrupt {
        /// The log.
        path: String,
        /// Where the damage starts.
        offset: u64,
    },
    /// A snapshot or record that is not a keystore.
    #[error("failed to read {path}: {source}")]
    Decode {
        /// The file.
        path: String,
        /// The cause.
        source: KeystoreError,
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
    /// starts the writer thread.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(io_error("create", dir))?;
        let snapshot_path = dir.join(SNAPSHOT);
        let mut keystore = match std::fs::read(&snapshot_path) {
            Ok(bytes) => Keystore::from_bytes(&bytes).map_err(|source| StoreError::Decode {
                path: snapshot_path.display().to_string(),
                source,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Keystore::new(),
            Err(e) => return Err(io_error("read", &snapshot_path)(e)),
        };
        let log_path = dir.join(LOG);
        let (records, valid_len) = replay(&log_path, &mut keystore)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_error("open", &log_path))?;
        if log.metadata().map_err(io_error("stat", &log_path))?.len() > valid_len {
            tracing::warn!(
                log = %log_path.display(),
                valid_len,
                "keystore log ends in a torn record (a write that was never acknowledged); truncating it"
            );
            log.set_len(valid_len)
                .map_err(io_error("truncate", &log_path))?;
            log.sync_all().map_err(io_error("fsync", &log_path))?;
        }
        let state = Arc::new(RwLock::new(keystore));
        let (tx, rx) = mpsc::channel(4096);
        let writer = Writer {
            dir: dir.to_owned(),
            log,
            records,
            state: Arc::clone(&state),
        };
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
            encode_record(key, &mut records)?;
        }
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

/// Reads the log into `keystore`. Returns the number of records and the length of the
/// valid prefix. A damaged record at the very end is a write that never completed (and was
/// never acknowledged); damage followed by valid records is corruption.
fn replay(path: &Path, keystore: &mut Keystore) -> Result<(usize, u64), StoreError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes).map_err(io_error("read", path))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(io_error("open", path)(e)),
    }
    let mut offset = 0usize;
    let mut records = 0;
    while offset < bytes.len() {
        let Some((payload, next)) = record_at(&bytes, offset) else {
            if valid_record_after(&bytes, offset) {
                return Err(StoreError::Corrupt {
                    path: path.display().to_string(),
                    offset: offset as u64,
                });
            }
            break;
        };
        let key: Key = serde_json::from_slice(payload).map_err(|e| StoreError::Decode {
            path: path.display().to_string(),
            source: KeystoreError::Decode(e.to_string()),
        })?;
        keystore.insert(key).map_err(|source| StoreError::Decode {
            path: path.display().to_string(),
            source,
        })?;
        records += 1;
        offset = next;
    }
    Ok((records, offset as u64))
}

/// The payload of the record at `offset` and where the next one starts, if it is whole and
/// its checksum matches.
fn record_at(bytes: &[u8], offset: usize) -> Option<(&[u8], usize)> {
    let header = bytes.get(offset..offset.checked_add(8)?)?;
    let len = u32::from_be_bytes(header.get(..4)?.try_into().ok()?);
    let crc = u32::from_be_bytes(header.get(4..8)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    if len > MAX_RECORD {
        return None;
    }
    let start = offset + 8;
    let end = start.checked_add(len)?;
    let payload = bytes.get(start..end)?;
    (crc32fast::hash(payload) == crc).then_some((payload, end))
}

/// Whether any valid record starts after a damaged one at `offset`.
fn valid_record_after(bytes: &[u8], offset: usize) -> bool {
    (offset + 1..bytes.len()).any(|at| {
        record_at(bytes, at).is_some_and(|(p, _)| serde_json::from_slice::<Key>(p).is_ok())
    })
}

/// Appends `key`'s log record to `out`, refusing a record over [`MAX_RECORD`].
fn encode_record(key: &Key, out: &mut Vec<u8>) -> Result<(), StoreError> {
    let payload = serde_json::to_vec(key).map_err(|e| StoreError::Decode {
        path: LOG.to_owned(),
        source: KeystoreError::Encode(e.to_string()),
    })?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|_| payload.len() <= MAX_RECORD)
        .ok_or_else(|| StoreError::TooLarge {
            id: key.id.to_string(),
            bytes: payload.len(),
            limit: MAX_RECORD,
        })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

struct Writer {
    dir: PathBuf,
    log: File,
    records: usize,
    state: Arc<RwLock<Keystore>>,
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
            if self.records >= COMPACT_AFTER
                && let Err(e) = self.compact()
            {
                tracing::error!(error = %e, "failed to compact the keystore log; it keeps growing");
            }
        }
    }

    fn commit(&mut self, group: &[Write]) -> Result<(), String> {
        let bytes: Vec<u8> = group
            .iter()
            .flat_map(|w| w.records.iter().copied())
            .collect();
        self.log
            .write_all(&bytes)
            .map_err(|e| format!("failed to append to the keystore log: {e}"))?;
        self.log
            .sync_data()
            .map_err(|e| format!("failed to fsync the keystore log: {e}"))?;
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

    /// Writes the whole keystore as the new snapshot and empties the log.
    fn compact(&mut self) -> Result<(), StoreError> {
        let bytes = {
            let state = self
                .state
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            state.to_bytes().map_err(|source| StoreError::Decode {
                path: SNAPSHOT.to_owned(),
                source,
            })?
        };
        write_atomically(&self.dir, SNAPSHOT, &bytes)?;
        let log_path = self.dir.join(LOG);
        self.log
            .set_len(0)
            .map_err(io_error("truncate", &log_path))?;
        self.log.sync_all().map_err(io_error("fsync", &log_path))?;
        self.records = 0;
        Ok(())
    }
}

/// Replaces `dir/name` with `bytes` so that a crash leaves either the old or the new file.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = File::create(&tmp).map_err(io_error("create", &tmp))?;
    file.write_all(bytes).map_err(io_error("write", &tmp))?;
    file.sync_all().map_err(io_error("fsync", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_error("rename", &tmp))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("fsync", dir))
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use shadowkeep_api::keystore::{Algorithm, Kek, KeyState};

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

    #[tokio::test]
    async fn committed_keys_survive_reopening_and_compaction() {
        let dir = tempdir("reopen");
        let kek = Kek::generate();
        let store = Store::open(&dir).unwrap();
        let a = key(&kek, "A");
        let mut b = key(&kek, "B");
        store.commit(vec![a.clone(), b.clone()]).await.unwrap();
        b.state = KeyState::Active;
        store.commit(vec![b.clone()]).await.unwrap();
        assert_eq!(store.get(&b.id).unwrap().state, KeyState::Active);
        drop(store);

        let store = Store::open(&dir).unwrap();
        assert_eq!(store.read(Keystore::len), 2);
        assert_eq!(store.get(&a.id), Some(a.clone()));
        assert_eq!(store.get(&b.id).unwrap().state, KeyState::Active);
        drop(store);

        // Fold the log into a snapshot by hand, as the writer does, and read it back.
        let mut ks = Keystore::new();
        replay(&dir.join(LOG), &mut ks).unwrap();
        write_atomically(&dir, SNAPSHOT, &ks.to_bytes().unwrap()).unwrap();
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.read(Keystore::len), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_torn_last_record_is_dropped_and_damage_in_the_middle_refused() {
        let dir = tempdir("torn");
        let kek = Kek::generate();
        let store = Store::open(&dir).unwrap();
        store.commit(vec![key(&kek, "A")]).await.unwrap();
        store.commit(vec![key(&kek, "B")]).await.unwrap();
        drop(store);
        let log = dir.join(LOG);
        let whole = std::fs::read(&log).unwrap();

        // A crash mid-append: the tail is cut. The first record survives.
        std::fs::write(&log, &whole[..whole.len() - 10]).unwrap();
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.read(Keystore::len), 1);
        drop(store);

        // A flipped byte inside the first record with a valid record after it.
        let mut damaged = whole.clone();
        damaged[20] ^= 0xff;
        std::fs::write(&log, &damaged).unwrap();
        let err = Store::open(&dir).unwrap_err();
        assert!(
            matches!(err, StoreError::Corrupt { offset: 0, .. }),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
