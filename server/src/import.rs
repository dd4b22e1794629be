//! The keystore file the operator writes from its canonical keystore Secret: merged into
//! the store at start and whenever it changes. Merging only adds and advances records, so
//! an old or partial file can never take a key away.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use shadowkeep_api::keystore::{Kek, Key, Keystore};
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// How often the file is checked for changes (a mounted Secret changes by symlink swap).
const POLL: Duration = Duration::from_secs(2);

/// Merges the file into the store now. A missing or unreadable file is logged, not fatal:
/// the store already holds everything it held.
pub async fn merge_file(path: &Path, store: &Store, kek: &Kek) {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "keystore file not readable; keeping the store as it is");
            return;
        }
    };
    let incoming = match Keystore::from_bytes(&bytes) {
        Ok(ks) => ks,
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "keystore file is not a keystore; ignored");
            return;
        }
    };
    let wanted: Vec<Key> = store.read(|local| incoming.delta_for(local).keys().cloned().collect());
    let n = wanted.len();
    if n == 0 {
        return;
    }
    match store.commit_from_elsewhere(wanted, kek).await {
        Ok(refused) => {
            for r in &refused {
                tracing::error!(file = %path.display(), key = %r.id, reason = %r.reason, "refused a record of the keystore file");
            }
            tracing::info!(file = %path.display(), records = n - refused.len(), "merged keystore file");
        }
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "failed to merge keystore file");
        }
    }
}

/// Watches the file and merges it whenever its modification time or size changes.
pub async fn watch(path: PathBuf, store: Store, kek: Kek, cancel: CancellationToken) {
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    };
    let mut last = stamp(&path);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
        let now = stamp(&path);
        if now != last {
            last = now;
            merge_file(&path, &store, &kek).await;
        }
    }
}
