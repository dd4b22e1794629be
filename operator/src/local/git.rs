//! `shadowkeep up --git URL[#branch][:path]`: the local shell of git sync
//! ([`crate::core::git_sync`]).
//!
//! The same step as the GitSource controller, with files for a cluster: the applier
//! writes each applied object as a manifest into `DIR/git/estate/`, which `up` reads as it
//! reads any manifest directory (an edit there is applied as `kubectl apply` would be), and
//! deletes the file of an object pruned. The status is `DIR/git/status.json`, the
//! GitSource status the operator would write; a held revision is accepted by writing its
//! commit into `DIR/git/accept-risks` while `up` runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use shadowkeep_api::crd::{AppliedObject, GitSourceStatus};
use shadowkeep_api::manifest::Resource;

use super::backup::read_key;
use super::layout::write_if_changed;
use super::reconcile::DEFAULT_NAMESPACE;
use crate::core::git_sync::credentials::Credentials;
use crate::core::git_sync::status::{after, types};
use crate::core::git_sync::verify::MAX_KEYRING_BYTES;
use crate::core::git_sync::{Applier, Branch, Input, Outcome, Verification, commit_of, sync};

/// What `up` follows.
#[derive(Clone, Debug)]
pub struct Follow {
    /// The branch.
    pub branch: Branch,
    /// How often it is fetched.
    pub interval: Duration,
    /// Who may sign the head: when set, a head not signed by one of its keys is refused.
    pub signers: Option<Signers>,
    /// The Secret the branch is fetched with, as `--secrets` files.
    pub credentials: Option<SecretFiles>,
}

/// A Secret in the default namespace, read from files as `up --secrets DIR` lays them out
/// (`DIR/default/NAME/KEY`), as S3 backup credentials are.
#[derive(Clone, Debug)]
pub struct SecretFiles {
    /// The `--secrets` directory.
    pub secrets: PathBuf,
    /// The Secret's name.
    pub name: String,
}

impl SecretFiles {
    /// The credentials for `url`, read again at each step so that a changed file counts.
    fn read(&self, url: &str) -> Result<Credentials, String> {
        let origin = format!(
            "Secret {DEFAULT_NAMESPACE}/{} ({}, --git-credentials)",
            self.name,
            self.secrets
                .join(DEFAULT_NAMESPACE)
                .join(&self.name)
                .display()
        );
        Credentials::read(url, &origin, &mut |key| {
            read_key(&self.secrets, DEFAULT_NAMESPACE, &self.name, key)
        })
    }
}

/// The file of keys allowed to sign the head.
#[derive(Clone, Debug)]
pub enum Signers {
    /// An allowed-signers file (`gpg.ssh.allowedSignersFile`), for SSH signatures.
    Ssh(PathBuf),
    /// An armored OpenPGP keyring (`gpg --armor --export`), for OpenPGP signatures.
    OpenPgp(PathBuf),
}

/// The verification `signers` asks for, its file read; `Err` is the line to print.
fn verification(signers: Option<&Signers>) -> Result<Option<Verification>, String> {
    let (file, what) = match signers {
        None => return Ok(None),
        Some(Signers::Ssh(file)) => (file, "allowed signers"),
        Some(Signers::OpenPgp(file)) => (file, "OpenPGP keyring"),
    };
    let too_large = |len: u64| {
        format!(
            "git: failed to read the {what} {}: {len} bytes, more than the {MAX_KEYRING_BYTES} bytes it may hold; nothing fetched or applied",
            file.display()
        )
    };
    // Checked before reading, so that a huge file is not read into memory every step.
    if let Ok(meta) = std::fs::metadata(file)
        && meta.len() > MAX_KEYRING_BYTES as u64
    {
        return Err(too_large(meta.len()));
    }
    let text = std::fs::read_to_string(file).map_err(|e| {
        format!(
            "git: failed to read the {what} {}: {e}; nothing fetched or applied",
            file.display()
        )
    })?;
    Ok(Some(match signers {
        Some(Signers::OpenPgp(_)) => Verification::OpenPgp { keyring: text },
        _ => Verification::Ssh {
            allowed_signers: text,
        },
    }))
}

/// Why `--git` could not be understood.
#[derive(Debug, thiserror::Error)]
#[error(
    "failed to read --git {0:?}: expected URL[#branch][:path], e.g. file:///srv/estate.git#main:clusters/site-a"
)]
pub struct ParseError(String);

/// Reads `URL[#branch][:path]`: the branch defaults to `main`. Without `#`, a `:path` is
/// read only in the path part of a URL with a scheme (`file:///r.git:dir`): a plain path
/// may hold a colon, and a URL's authority may hold a port or credentials.
/// A local path is made absolute, so that `up` can be started from anywhere.
pub fn parse(spec: &str) -> Result<Branch, ParseError> {
    let fail = || ParseError(spec.to_owned());
    let (url, rest) = match spec.split_once('#') {
        Some((url, rest)) => (url, Some(rest)),
        None => (spec, None),
    };
    let (url, branch, path) = if let Some(rest) = rest {
        let (branch, path) = match rest.split_once(':') {
            Some((b, p)) => (b, Some(p)),
            None => (rest, None),
        };
        (url.to_owned(), branch.to_owned(), path.map(str::to_owned))
    } else {
        // Past the scheme and the authority (which may hold a port or user:password).
        let path_start = url
            .find("://")
            .and_then(|i| url[i + 3..].find('/').map(|j| i + 3 + j));
        match path_start.and_then(|start| url[start..].rfind(':').map(|i| start + i)) {
            Some(colon) => (
                url[..colon].to_owned(),
                "main".to_owned(),
                Some(url[colon + 1..].to_owned()),
            ),
            None => (url.to_owned(), "main".to_owned(), None),
        }
    };
    if url.is_empty() || branch.is_empty() || path.as_deref() == Some("") {
        return Err(fail());
    }
    let url = if url.contains("://") || url.contains('@') {
        url
    } else {
        std::path::absolute(&url)
            .map_err(|_| fail())?
            .display()
            .to_string()
    };
    Ok(Branch { url, branch, path })
}

/// Where git sync keeps things in `up`'s data directory.
#[derive(Clone, Debug)]
pub struct GitDirs {
    root: PathBuf,
}

impl GitDirs {
    /// Under the data directory `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("git"),
        }
    }

    /// The bare repository the branch is fetched into.
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// The applied objects, one manifest each: what `up` reads.
    pub fn estate(&self) -> PathBuf {
        self.root.join("estate")
    }

    /// The status, as a GitSource's.
    pub fn status_file(&self) -> PathBuf {
        self.root.join("status.json")
    }

    /// Where a user writes the commit whose risks they accept.
    pub fn accept_file(&self) -> PathBuf {
        self.root.join("accept-risks")
    }

    /// The status last written.
    pub fn status(&self) -> GitSourceStatus {
        std::fs::read(self.status_file())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
}

/// The estate directory as git sync's applier.
struct Files {
    dir: PathBuf,
}

fn file_name(o: &AppliedObject) -> String {
    format!(
        "{}-{}-{}.yaml",
        o.kind.to_ascii_lowercase(),
        o.namespace,
        o.name
    )
}

impl Applier for Files {
    async fn apply(&mut self, object: &Resource) -> Result<(), String> {
        let text = match object {
            Resource::KeyManager(o) => serde_yaml::to_string(o),
            Resource::KeyGroup(o) => serde_yaml::to_string(o),
            Resource::DriveTable(o) => serde_yaml::to_string(o),
            Resource::Shadow(o) => serde_yaml::to_string(o),
        }
        .map_err(|e| format!("failed to write the manifest: {e}"))?;
        let name = file_name(&crate::core::git_sync::applied_object(object));
        write_if_changed(&self.dir, &name, text.as_bytes()).map(|_| ())
    }

    async fn delete(&mut self, object: &AppliedObject) -> Result<(), String> {
        let path = self.dir.join(file_name(object));
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("failed to remove {}: {e}", path.display())),
        }
    }
}

/// One step of following the branch: fetched, planned, applied or held; the status
/// written; the lines to print (none when nothing changed since the last step).
pub async fn step(dirs: &GitDirs, follow: &Follow) -> Vec<String> {
    let previous = dirs.status();
    let mut lines = Vec::new();
    let verification = match verification(follow.signers.as_ref()) {
        Ok(verification) => verification,
        Err(line) => return vec![line],
    };
    let credentials = match follow
        .credentials
        .as_ref()
        .map(|c| c.read(&follow.branch.url))
        .transpose()
    {
        Ok(credentials) => credentials,
        Err(e) => return vec![format!("git: {e}; nothing fetched or applied")],
    };
    let accepted = std::fs::read_to_string(dirs.accept_file()).ok();
    let cache = dirs.cache();
    let input = Input {
        branch: &follow.branch,
        cache: &cache,
        namespace: DEFAULT_NAMESPACE,
        last_applied: previous
            .last_applied_revision
            .as_deref()
            .and_then(commit_of),
        inventory: &previous.inventory,
        orphaned: &previous.orphaned,
        accepted: accepted.as_deref(),
        verification: verification.as_ref(),
        credentials: credentials.as_ref(),
    };
    let step = sync(&input, &mut Files { dir: dirs.estate() }).await;
    let now = Time(Timestamp::now());
    let next = after(&previous, &follow.branch, &step, None, &now);
    // Said once per head and outcome, not at every fetch.
    let ready = |s: &GitSourceStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == types::READY)
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    let news = |s: &GitSourceStatus| {
        (
            ready(s).map(|(reason, _)| reason),
            s.last_attempted_revision.clone(),
        )
    };
    if news(&next) != news(&previous) {
        if let Some((_, message)) = ready(&next) {
            lines.push(format!("git: {message}"));
        }
        if let Outcome::Held { commit, .. } = &step.outcome {
            lines.push(format!(
                "git: to apply it, write its commit into {}: echo {commit} > {}",
                dirs.accept_file().display(),
                dirs.accept_file().display()
            ));
        }
        if let Outcome::Applied { pruned, .. } = &step.outcome
            && !pruned.is_empty()
        {
            let names: Vec<String> = pruned.iter().map(ToString::to_string).collect();
            lines.push(format!("git: pruned {}", names.join(", ")));
        }
    }
    match serde_json::to_vec_pretty(&next) {
        Ok(bytes) => {
            let root = &dirs.root;
            if let Err(e) = write_if_changed(root, "status.json", &bytes) {
                lines.push(format!("git: {e}"));
            }
        }
        Err(e) => lines.push(format!("git: failed to write the status: {e}")),
    }
    lines
}

/// Whether a revision was ever applied here: `up` can start from it when the branch
/// cannot be applied now.
pub fn applied_before(dirs: &GitDirs) -> bool {
    dirs.status().last_applied_revision.is_some()
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn git_specs_name_url_branch_and_path() {
        let b = parse("file:///srv/estate.git#prod:sites/a").unwrap();
        assert_eq!(
            (b.url.as_str(), b.branch.as_str(), b.path.as_deref()),
            ("file:///srv/estate.git", "prod", Some("sites/a"))
        );
        let b = parse("file:///srv/estate.git").unwrap();
        assert_eq!((b.branch.as_str(), b.path), ("main", None));
        let b = parse("file:///srv/estate.git:examples").unwrap();
        assert_eq!(
            (b.url.as_str(), b.path.as_deref()),
            ("file:///srv/estate.git", Some("examples"))
        );
        // A port or credentials are no path.
        for url in [
            "https://git.example.org:8443/estate.git",
            "https://bot:token@git.example.org/estate.git",
        ] {
            let b = parse(url).unwrap();
            assert_eq!((b.url.as_str(), b.path), (url, None));
        }
        let b = parse("/srv/estate#dev").unwrap();
        assert_eq!((b.url.as_str(), b.branch.as_str()), ("/srv/estate", "dev"));
        assert!(parse("#main").is_err());
        assert!(parse("file:///r#").is_err());
        assert!(parse("file:///r#main:").is_err());
    }
}
