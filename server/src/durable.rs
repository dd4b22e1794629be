//! Files that survive a crash whole: written to a temporary name, fsynced, renamed into
//! place, and their directory fsynced, so a crash leaves the old file or the new one, never
//! half of one. New files are mode 0600: what they hold is key material (sealed or not).
//!
//! The key server's store and the operator's data-directory state both write this way.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Temporary names unique within the process (the pid makes them unique across).
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A fresh temporary name for `name` in `dir`, hidden and unique to this write.
pub fn temporary(dir: &Path, name: &str) -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Makes the entries of `dir` (new, renamed or removed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to a new file `path` (mode 0600; it must not exist) and fsyncs it.
pub fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Replaces `dir/name` with `bytes`, whole or not at all. On failure the temporary file is
/// removed, so a full disk is not made fuller.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = temporary(dir, name);
    let result = write_new(&tmp, bytes).and_then(|()| fs::rename(&tmp, dir.join(name)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir)
}

/// The contents of `path`, or `None` when it does not exist.
pub fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
