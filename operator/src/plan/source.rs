//! A revision's manifests read straight from a Git repository's objects: no checkout and no
//! work tree, so it works in a bare clone and on a pull request's merge ref alike.
//!
//! A repository is shaped by whoever wrote the pull request, so it is read as cautiously as
//! a checkout: symbolic links are followed inside the tree only (never out of it, never
//! more than [`MAX_LINK_HOPS`] deep), a directory is walked once however many links lead
//! to it, a file is read once, and only text blobs of at most
//! [`MAX_MANIFEST_BYTES`](crate::manifests::files::MAX_MANIFEST_BYTES) are read.

use std::collections::BTreeSet;
use std::path::Path;

use git2::{ObjectType, Oid, Repository, Tree};

use crate::manifests::files::MAX_MANIFEST_BYTES;

/// How many symbolic links one path may pass through, as Linux allows (`ELOOP`).
pub const MAX_LINK_HOPS: u32 = 40;

const LINK_MODE: i32 = 0o120_000;

/// Why a revision could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Not a Git repository, or one libgit2 cannot open.
    #[error("failed to open the repository at {path}: {message}")]
    Repository {
        /// The directory given.
        path: String,
        /// What libgit2 said.
        message: String,
    },
    /// The revision does not name a commit.
    #[error("failed to find revision {rev:?}: {message}")]
    Revision {
        /// The revision as given.
        rev: String,
        /// What libgit2 said.
        message: String,
    },
    /// A path that cannot be used: absolute, or leading out of the repository.
    #[error("failed to use path {path:?}: {why}")]
    Path {
        /// The path as given.
        path: String,
        /// Why.
        why: String,
    },
    /// A file or directory of the revision that cannot be read as manifests.
    #[error("failed to read {path} at {rev}: {why}")]
    File {
        /// The revision as given.
        rev: String,
        /// The path in the repository.
        path: String,
        /// Why.
        why: String,
    },
}

/// A Git repository opened for reading revisions.
pub struct Source {
    repo: Repository,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("path", &self.repo.path())
            .finish()
    }
}

/// One revision's manifests.
#[derive(Debug)]
pub struct Revision {
    /// The revision as given (`main`, `HEAD~1`, `refs/pull/7/merge`).
    pub rev: String,
    /// The commit it names, as 40 hexadecimal digits.
    pub commit: String,
    /// The first line of the commit's message.
    pub subject: String,
    /// The manifest files under the paths asked for, in path order.
    pub files: Vec<Blob>,
    /// Whether any path asked for exists in this revision.
    pub any_path_found: bool,
}

/// One manifest file of a revision.
#[derive(Debug)]
pub struct Blob {
    /// Its path in the repository, symbolic links resolved.
    pub path: String,
    /// Its object id: equal ids are equal texts.
    pub oid: Oid,
    /// Its text.
    pub text: String,
}

/// A tree entry, links resolved.
enum Node {
    Dir(Oid),
    File(Oid),
}

impl Revision {
    /// No revision: an estate with no manifests, for a change that starts from nothing.
    pub fn empty() -> Self {
        Self {
            rev: "(none)".to_owned(),
            commit: String::new(),
            subject: String::new(),
            files: Vec::new(),
            any_path_found: false,
        }
    }
}

impl Source {
    /// Opens the repository at `dir` (a work tree, any directory in one, or a bare
    /// repository).
    pub fn open(dir: &Path) -> Result<Self, SourceError> {
        Repository::discover(dir)
            .map(|repo| Self { repo })
            .map_err(|e| SourceError::Repository {
                path: dir.display().to_string(),
                message: e.message().to_owned(),
            })
    }

    /// Reads the manifests under `paths` (the whole tree when empty) at `rev`.
    pub fn revision(&self, rev: &str, paths: &[String]) -> Result<Revision, SourceError> {
        let revision_error = |e: git2::Error| SourceError::Revision {
            rev: rev.to_owned(),
            message: e.message().to_owned(),
        };
        let commit = self
            .repo
            .revparse_single(rev)
            .and_then(|o| o.peel_to_commit())
            .map_err(revision_error)?;
        let tree = commit.tree().map_err(revision_error)?;
        let mut walk = Walk {
            repo: &self.repo,
            root: &tree,
            rev,
            seen: BTreeSet::new(),
            files: Vec::new(),
        };
        let roots = if paths.is_empty() {
            vec![String::new()]
        } else {
            paths.to_vec()
        };
        let mut any_path_found = false;
        for path in &roots {
            let parts = relative_parts(path)?;
            match walk.resolve(parts, path)? {
                None => {}
                Some((canonical, Node::Dir(oid))) => {
                    any_path_found = true;
                    walk.dir(&canonical, oid)?;
                }
                Some((canonical, Node::File(oid))) => {
                    any_path_found = true;
                    walk.file(canonical, oid)?;
                }
            }
        }
        Ok(Revision {
            rev: rev.to_owned(),
            commit: commit.id().to_string(),
            subject: commit
                .summary_bytes()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
            files: walk.files,
            any_path_found,
        })
    }
}

/// A path's components, refused when it is absolute or climbs out of the repository.
fn relative_parts(path: &str) -> Result<Vec<String>, SourceError> {
    if path.starts_with('/') {
        return Err(SourceError::Path {
            path: path.to_owned(),
            why: "must be relative to the repository's top directory".to_owned(),
        });
    }
    let mut depth = 0_usize;
    let mut parts = Vec::new();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            depth = depth.checked_sub(1).ok_or_else(|| SourceError::Path {
                path: path.to_owned(),
                why: "leads out of the repository".to_owned(),
            })?;
        } else {
            depth += 1;
        }
        parts.push(part.to_owned());
    }
    Ok(parts)
}

struct Walk<'r> {
    repo: &'r Repository,
    root: &'r Tree<'r>,
    rev: &'r str,
    /// Canonical paths of the directories walked and the files listed.
    seen: BTreeSet<String>,
    files: Vec<Blob>,
}

impl Walk<'_> {
    fn fail(&self, path: &str, why: impl Into<String>) -> SourceError {
        SourceError::File {
            rev: self.rev.to_owned(),
            path: if path.is_empty() { "." } else { path }.to_owned(),
            why: why.into(),
        }
    }

    fn git(&self, path: &str) -> impl Fn(git2::Error) -> SourceError + '_ {
        let path = path.to_owned();
        move |e| self.fail(&path, format!("failed to read: {}", e.message()))
    }

    /// Follows `parts` from the top of the tree, links included, to a directory or file
    /// and its canonical path; `None` when nothing is there.
    fn resolve(
        &self,
        parts: Vec<String>,
        shown: &str,
    ) -> Result<Option<(String, Node)>, SourceError> {
        let mut pending: Vec<String> = parts.into_iter().rev().collect();
        // The directories from the top down to where the walk stands, with their names.
        let mut trail: Vec<(String, Oid)> = Vec::new();
        let mut hops = 0;
        let here = |trail: &[(String, Oid)]| {
            trail
                .iter()
                .map(|(name, _)| name.as_str())
                .collect::<Vec<_>>()
                .join("/")
        };
        while let Some(part) = pending.pop() {
            if part == "." {
                continue;
            }
            if part == ".." {
                if trail.pop().is_none() {
                    return Err(self.fail(shown, "a symbolic link leads out of the repository"));
                }
                continue;
            }
            let tree_id = trail.last().map_or(self.root.id(), |(_, oid)| *oid);
            let tree = self.repo.find_tree(tree_id).map_err(self.git(shown))?;
            let Some(entry) = tree.get_name(&part) else {
                return Ok(None);
            };
            let at = if trail.is_empty() {
                part.clone()
            } else {
                format!("{}/{part}", here(&trail))
            };
            match entry.kind() {
                Some(ObjectType::Tree) => trail.push((part, entry.id())),
                Some(ObjectType::Blob) if entry.filemode() == LINK_MODE => {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Err(self.fail(
                            shown,
                            format!("symbolic link loop (more than {MAX_LINK_HOPS} links)"),
                        ));
                    }
                    let blob = self.repo.find_blob(entry.id()).map_err(self.git(&at))?;
                    let target = String::from_utf8_lossy(blob.content()).into_owned();
                    if target.starts_with('/') {
                        return Err(self.fail(
                            &at,
                            format!("symbolic link to {target} leads out of the repository"),
                        ));
                    }
                    pending.extend(
                        target
                            .split('/')
                            .filter(|p| !p.is_empty())
                            .map(str::to_owned)
                            .rev(),
                    );
                }
                Some(ObjectType::Blob) if pending.is_empty() => {
                    return Ok(Some((at, Node::File(entry.id()))));
                }
                Some(ObjectType::Blob) => {
                    return Err(self.fail(shown, format!("{at} is a file, not a directory")));
                }
                _ => return Err(self.fail(&at, "is a submodule, which is not read")),
            }
        }
        let dir = here(&trail);
        let oid = trail.last().map_or(self.root.id(), |(_, oid)| *oid);
        Ok(Some((dir, Node::Dir(oid))))
    }

    /// Lists the `*.yaml` and `*.yml` files under a directory not walked yet.
    fn dir(&mut self, path: &str, oid: Oid) -> Result<(), SourceError> {
        if !self.seen.insert(format!("{path}/")) {
            return Ok(());
        }
        let tree = self.repo.find_tree(oid).map_err(self.git(path))?;
        let mut entries: Vec<(String, Option<ObjectType>, i32, Oid)> = tree
            .iter()
            .map(|e| {
                let name = String::from_utf8_lossy(e.name_bytes()).into_owned();
                (name, e.kind(), e.filemode(), e.id())
            })
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, kind, mode, id) in entries {
            let at = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}/{name}")
            };
            let yaml = is_manifest_name(&name);
            match kind {
                Some(ObjectType::Tree) => self.dir(&at, id)?,
                Some(ObjectType::Blob) if mode == LINK_MODE => {
                    let parts = at.split('/').map(str::to_owned).collect();
                    match self.resolve(parts, &at) {
                        Ok(Some((real, Node::Dir(oid)))) => self.dir(&real, oid)?,
                        Ok(Some((real, Node::File(oid)))) if yaml => self.file(real, oid)?,
                        Ok(None) if yaml => {
                            return Err(self.fail(&at, "symbolic link to nothing"));
                        }
                        Err(e) if yaml => return Err(e),
                        // Not a manifest: links to other files, to nothing, or in a loop.
                        _ => {}
                    }
                }
                Some(ObjectType::Blob) if yaml => self.file(at, id)?,
                // Other files, and submodules.
                _ => {}
            }
        }
        Ok(())
    }

    /// Reads a file once: a text blob of at most [`MAX_MANIFEST_BYTES`].
    fn file(&mut self, path: String, oid: Oid) -> Result<(), SourceError> {
        if !self.seen.insert(path.clone()) {
            return Ok(());
        }
        let odb = self.repo.odb().map_err(self.git(&path))?;
        let (size, _) = odb.read_header(oid).map_err(self.git(&path))?;
        if size as u64 > MAX_MANIFEST_BYTES {
            return Err(self.fail(
                &path,
                format!(
                    "{size} bytes, more than the {} MiB a manifest file may hold",
                    MAX_MANIFEST_BYTES >> 20
                ),
            ));
        }
        let blob = self.repo.find_blob(oid).map_err(self.git(&path))?;
        let content = blob.content();
        let text = if blob.is_binary() {
            None
        } else {
            std::str::from_utf8(content).ok()
        };
        let Some(text) = text else {
            return Err(self.fail(&path, "binary content, not a YAML manifest"));
        };
        self.files.push(Blob {
            text: text.to_owned(),
            path,
            oid,
        });
        Ok(())
    }
}

fn is_manifest_name(name: &str) -> bool {
    Path::new(name)
        .extension()
        .is_some_and(|ext| ext == "yaml" || ext == "yml")
}
