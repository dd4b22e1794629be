//! The manifest files that command-line paths name, and reading them.
//!
//! Manifests come from checkouts anyone may have shaped, and a directory symlink loop, a
//! FIFO or a link to a device named `*.yaml` must get a clear error, never a hang or a read
//! without end. So a directory is walked once however many links lead to it, a file is read
//! once however many paths name it, only regular files are opened, and a file's size is
//! capped.

use std::collections::BTreeSet;
use std::fs::{File, Metadata};
use std::io::Read as _;
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};

/// The most a manifest file may hold. A DriveTable at its limits is a few hundred KiB and
/// the API server takes no object over 3 MiB, so this leaves room for a whole estate in one
/// file while bounding what a stray file can make the command read.
pub const MAX_MANIFEST_BYTES: u64 = 8 << 20;

/// The manifest files under some paths, and what could not be listed.
#[derive(Debug, Default)]
pub struct ManifestFiles {
    /// Regular files to read, each once: in the order the paths were given, sorted within
    /// a directory, a file reached by several paths under the first.
    pub files: Vec<PathBuf>,
    /// `(path, why)` for each path that could not be listed or is not a regular file.
    pub unreadable: Vec<(String, String)>,
    /// Canonical paths of the directories walked and the files listed.
    seen: BTreeSet<PathBuf>,
}

impl ManifestFiles {
    /// Lists each path: a file as itself, a directory as the `*.yaml` and `*.yml` files
    /// under it, following links to directories not walked yet.
    pub fn collect(paths: &[PathBuf]) -> Self {
        Self::collect_except(paths, &[])
    }

    /// Like [`Self::collect`], never entering the directories `skip` (a data directory
    /// inside the manifests' tree holds YAML that is not a manifest).
    pub fn collect_except(paths: &[PathBuf], skip: &[PathBuf]) -> Self {
        let mut found = Self::default();
        found
            .seen
            .extend(skip.iter().filter_map(|d| std::fs::canonicalize(d).ok()));
        for path in paths {
            found.add_path(path);
        }
        found
    }

    fn add_path(&mut self, path: &Path) {
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) => return self.refuse(path, format!("failed to read: {e}")),
        };
        if !meta.is_dir() {
            return self.add_file(path, &meta);
        }
        // `None`: named twice, and listed the first time.
        if self.walk(path) == Some(0) {
            self.refuse(path, "no *.yaml or *.yml files found".to_owned());
        }
    }

    /// Lists the manifests under `dir` unless it was walked before; returns how many
    /// `*.yaml` and `*.yml` names it holds, whether listed now, before, or refused.
    fn walk(&mut self, dir: &Path) -> Option<usize> {
        match std::fs::canonicalize(dir) {
            Ok(real) => {
                if !self.seen.insert(real) {
                    return None;
                }
            }
            Err(e) => {
                self.refuse(dir, format!("failed to read directory: {e}"));
                return Some(0);
            }
        }
        let entries = std::fs::read_dir(dir).and_then(|entries| {
            entries
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<Vec<_>, _>>()
        });
        let mut entries = match entries {
            Ok(entries) => entries,
            Err(e) => {
                self.refuse(dir, format!("failed to read directory: {e}"));
                return Some(0);
            }
        };
        entries.sort();
        let mut manifests = 0;
        for entry in entries {
            let yaml = entry
                .extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml");
            // Follows links: a link is judged by what it leads to.
            match std::fs::metadata(&entry) {
                Ok(meta) if meta.is_dir() => manifests += self.walk(&entry).unwrap_or(0),
                Ok(meta) if yaml => {
                    manifests += 1;
                    self.add_file(&entry, &meta);
                }
                Err(e) if yaml => {
                    manifests += 1;
                    self.refuse(&entry, format!("failed to read: {e}"));
                }
                // Not a manifest: other files, and links to nothing or to themselves.
                _ => {}
            }
        }
        Some(manifests)
    }

    fn add_file(&mut self, path: &Path, meta: &Metadata) {
        if !meta.is_file() {
            return self.refuse(path, not_regular(meta));
        }
        match std::fs::canonicalize(path) {
            Ok(real) => {
                if self.seen.insert(real) {
                    self.files.push(path.to_owned());
                }
            }
            Err(e) => self.refuse(path, format!("failed to read: {e}")),
        }
    }

    fn refuse(&mut self, path: &Path, why: String) {
        self.unreadable.push((path.display().to_string(), why));
    }
}

/// Reads a listed manifest file: a regular file of at most [`MAX_MANIFEST_BYTES`].
pub fn read_manifest(path: &Path) -> Result<String, String> {
    let fail = |e: std::io::Error| format!("failed to read: {e}");
    let file = File::open(path).map_err(fail)?;
    // It was a regular file when listed; what was opened may have been put in its place
    // since. (A FIFO put there in between would block the open itself; that takes someone
    // changing the tree while the command runs.)
    let meta = file.metadata().map_err(fail)?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(format!(
            "failed to read: {} bytes, {}",
            meta.len(),
            too_large()
        ));
    }
    let mut text = String::new();
    // A file may grow while it is read, and some claim a length of 0: the cap holds anyway.
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(fail)?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(format!("failed to read: {}", too_large()));
    }
    Ok(text)
}

fn too_large() -> String {
    format!(
        "more than the {} MiB a manifest file may hold",
        MAX_MANIFEST_BYTES >> 20
    )
}

fn not_regular(meta: &Metadata) -> String {
    let kind = meta.file_type();
    let what = if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_dir() {
        "a directory"
    } else {
        "a special file"
    };
    format!("failed to read: {what}, not a regular file")
}
