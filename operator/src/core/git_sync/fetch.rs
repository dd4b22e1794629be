//! Fetching a branch into a bare cache repository with libgit2: over https (OpenSSL),
//! ssh (libssh2), or from a local path or `file://` URL, with the [`Credentials`] the
//! shell read. The host key or certificate is checked in this fetch's own callback, so
//! that one repository's `known_hosts` or private CA trusts nothing for another.

use std::cell::RefCell;
use std::path::Path;

use git2::{CertificateCheckStatus, FetchOptions, Oid, RemoteCallbacks, Repository};

use super::Branch;
use super::credentials::{Credentials, Transport, redact, ssh_port};

/// The ref the cache keeps the last applied commit under, so that it stays readable
/// after a force push removed it from the branch.
pub const APPLIED_REF: &str = "refs/shadowkeep/applied";

/// Why a branch could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// An ssh URL without credentials: there is no `known_hosts` to check the host with.
    #[error(
        "failed to fetch {url}: an ssh repository needs credentials, a Secret with keys identity and known_hosts"
    )]
    NoSshCredentials {
        /// The URL.
        url: String,
    },
    /// The cache could not be made or opened.
    #[error("failed to use the cache {path}: {message}")]
    Cache {
        /// The cache directory.
        path: String,
        /// What libgit2 said.
        message: String,
    },
    /// The fetch itself failed: unreachable, not a repository, refused.
    #[error("failed to fetch branch {branch} from {url}: {message}")]
    Fetch {
        /// The URL.
        url: String,
        /// The branch.
        branch: String,
        /// What libgit2 said.
        message: String,
    },
    /// The repository has no such branch.
    #[error("failed to find branch {branch} in {url}")]
    NoBranch {
        /// The URL.
        url: String,
        /// The branch.
        branch: String,
    },
}

/// The last applied commit, as the fetched head relates to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LastApplied {
    /// None was applied, or the head descends from it (or is it).
    Ancestor,
    /// The head does not descend from it: the branch was force-pushed.
    NotDescendant,
    /// It is in neither the cache nor the branch.
    Missing,
}

/// A fetched branch.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// The head commit, 40 hexadecimal digits.
    pub head: String,
    /// How the head relates to the last applied commit.
    pub last_applied: LastApplied,
}

/// Fetches `branch` into the bare repository at `cache` (made when missing), with
/// `credentials` when the server asks, and tells how its head relates to `last_applied`.
pub fn fetch(
    branch: &Branch,
    cache: &Path,
    last_applied: Option<&str>,
    credentials: Option<&Credentials>,
) -> Result<Fetched, FetchError> {
    if Transport::of(&branch.url) == Transport::Ssh && credentials.is_none() {
        return Err(FetchError::NoSshCredentials {
            url: redact(&branch.url),
        });
    }
    let cache_error = |e: git2::Error| FetchError::Cache {
        path: cache.display().to_string(),
        message: e.message().to_owned(),
    };
    let repo = if let Ok(repo) = Repository::open_bare(cache) {
        repo
    } else {
        std::fs::create_dir_all(cache).map_err(|e| FetchError::Cache {
            path: cache.display().to_string(),
            message: e.to_string(),
        })?;
        Repository::init_bare(cache).map_err(cache_error)?
    };
    let tracking = format!("refs/remotes/origin/{}", branch.branch);
    // A branch deleted upstream must not leave its old head here to be applied again.
    if let Ok(mut old) = repo.find_reference(&tracking) {
        old.delete().map_err(cache_error)?;
    }
    // What a callback refused, said instead of libgit2's shorter account of it.
    let refused: RefCell<Option<String>> = RefCell::new(None);
    let fetch_error = |e: git2::Error| {
        FetchError::Fetch {
        url: redact(&branch.url),
        branch: branch.branch.clone(),
        message: refused.borrow_mut().take().unwrap_or_else(|| {
            // libgit2's own check (the system's trust) refused the server's certificate.
            if e.class() == git2::ErrorClass::Ssl && e.message().contains("certificate") {
                format!(
                    "{}; a private CA's certificate is trusted for this repository as key ca.crt of its credentials Secret",
                    e.message()
                )
            } else {
                e.message().to_owned()
            }
        }),
    }
    };
    let mut remote = repo.remote_anonymous(&branch.url).map_err(fetch_error)?;
    let refspec = format!("+refs/heads/{}:{tracking}", branch.branch);
    let mut callbacks = RemoteCallbacks::new();
    let refuse = |message: String| {
        let error = git2::Error::from_str(&message);
        *refused.borrow_mut() = Some(message);
        error
    };
    let mut attempt = 0;
    callbacks.credentials(|_, user, allowed| {
        let Some(credentials) = credentials else {
            return Err(refuse(
                "the server asks for credentials and none are given".to_owned(),
            ));
        };
        if !allowed.contains(git2::CredentialType::USERNAME) {
            attempt += 1;
        }
        credentials.cred(user, allowed, attempt).map_err(refuse)
    });
    let port = ssh_port(&branch.url);
    callbacks.certificate_check(|cert, host| {
        match Credentials::check(credentials, cert, host, port) {
            Ok(true) => Ok(CertificateCheckStatus::CertificateOk),
            Ok(false) => Ok(CertificateCheckStatus::CertificatePassthrough),
            Err(message) => Err(refuse(message)),
        }
    });
    let mut options = FetchOptions::new();
    options.download_tags(git2::AutotagOption::None);
    options.remote_callbacks(callbacks);
    remote
        .fetch(&[refspec.as_str()], Some(&mut options), None)
        .map_err(fetch_error)?;
    let head = repo
        .refname_to_id(&tracking)
        .map_err(|_| FetchError::NoBranch {
            url: redact(&branch.url),
            branch: branch.branch.clone(),
        })?;
    let relation = match last_applied.map(Oid::from_str) {
        None => LastApplied::Ancestor,
        Some(Err(_)) => LastApplied::Missing,
        Some(Ok(last)) if repo.find_commit(last).is_err() => LastApplied::Missing,
        Some(Ok(last)) if last == head => LastApplied::Ancestor,
        Some(Ok(last)) => match repo.graph_descendant_of(head, last) {
            Ok(true) => LastApplied::Ancestor,
            Ok(false) => LastApplied::NotDescendant,
            Err(e) => return Err(cache_error(e)),
        },
    };
    Ok(Fetched {
        head: head.to_string(),
        last_applied: relation,
    })
}

/// Marks `commit` as applied in the cache, so that it stays readable after a force push.
pub fn mark_applied(cache: &Path, commit: &str) -> Result<(), String> {
    let repo = Repository::open_bare(cache).map_err(|e| e.message().to_owned())?;
    let oid = Oid::from_str(commit).map_err(|e| e.message().to_owned())?;
    repo.reference(APPLIED_REF, oid, true, "applied")
        .map(|_| ())
        .map_err(|e| e.message().to_owned())
}
