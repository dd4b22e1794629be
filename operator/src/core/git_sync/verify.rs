//! The head commit's signature, checked before anything of it is applied.
//!
//! SSH signatures (`git config gpg.format ssh`) are checked with the `ssh-key` crate's
//! sshsig verification, in Git's `git` namespace, against an allowed-signers file: the
//! signing key must be listed there and the signature must verify over the commit as
//! signed. Ed25519 keys are supported; other key types are refused by name. OpenPGP is not
//! built in: a GitSource asking for it is refused, never applied unchecked.

use std::path::Path;

use git2::{Oid, Repository};
use ssh_key::{PublicKey, SshSig};

use super::Verification;

/// The namespace Git signs commits in.
const GIT_NAMESPACE: &str = "git";

/// Why the head's signature is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The head carries no signature.
    #[error("failed to verify commit {0}: it is not signed")]
    Unsigned(String),
    /// The signature is not one this mode reads.
    #[error("failed to verify commit {commit}: {why}")]
    Malformed {
        /// The commit.
        commit: String,
        /// Why.
        why: String,
    },
    /// The signing key is not an allowed signer, or the signature does not verify.
    #[error("failed to verify commit {commit}: {why}")]
    NotAllowed {
        /// The commit.
        commit: String,
        /// Why.
        why: String,
    },
    /// The allowed signers could not be read.
    #[error("failed to read the allowed signers: {0}")]
    AllowedSigners(String),
    /// OpenPGP is not built in.
    #[error(
        "failed to verify commit {0}: OpenPGP signatures are not supported by this build; sign commits with SSH keys and set verify.mode to ssh"
    )]
    OpenPgpUnsupported(String),
    /// The cache could not be read.
    #[error("failed to read commit {commit}: {message}")]
    Read {
        /// The commit.
        commit: String,
        /// What libgit2 said.
        message: String,
    },
}

/// Checks the signature of `commit` in the repository at `repo` as `verification` asks.
pub fn verify_head(
    repo: &Path,
    commit: &str,
    verification: &Verification,
) -> Result<(), VerifyError> {
    let allowed = match verification {
        Verification::OpenPgp => return Err(VerifyError::OpenPgpUnsupported(commit.to_owned())),
        Verification::Ssh { allowed_signers } => allowed_signers_keys(allowed_signers)?,
    };
    let read = |e: git2::Error| VerifyError::Read {
        commit: commit.to_owned(),
        message: e.message().to_owned(),
    };
    let repository = Repository::open(repo).map_err(read)?;
    let oid = Oid::from_str(commit).map_err(read)?;
    let (signature, signed) = match repository.extract_signature(&oid, None) {
        Ok(pair) => pair,
        Err(e) if e.code() == git2::ErrorCode::NotFound => {
            return Err(VerifyError::Unsigned(commit.to_owned()));
        }
        Err(e) => return Err(read(e)),
    };
    verify_ssh(commit, &signature, &signed, &allowed)
}

/// Verifies an armored SSH signature over `signed` against the allowed keys.
pub fn verify_ssh(
    commit: &str,
    signature: &[u8],
    signed: &[u8],
    allowed: &[PublicKey],
) -> Result<(), VerifyError> {
    let malformed = |why: String| VerifyError::Malformed {
        commit: commit.to_owned(),
        why,
    };
    let text = std::str::from_utf8(signature)
        .map_err(|_| malformed("the signature is not text".to_owned()))?;
    if !text
        .trim_start()
        .starts_with("-----BEGIN SSH SIGNATURE-----")
    {
        return Err(malformed(
            "the signature is not an SSH signature (an OpenPGP one?), and verify.mode is ssh"
                .to_owned(),
        ));
    }
    let sig =
        SshSig::from_pem(text).map_err(|e| malformed(format!("unreadable SSH signature: {e}")))?;
    if sig.namespace() != GIT_NAMESPACE {
        return Err(malformed(format!(
            "signed in namespace {:?}, not {GIT_NAMESPACE:?}",
            sig.namespace()
        )));
    }
    let Some(key) = allowed.iter().find(|k| k.key_data() == sig.public_key()) else {
        return Err(VerifyError::NotAllowed {
            commit: commit.to_owned(),
            why: format!(
                "signed by {} key {}, which is not an allowed signer",
                sig.public_key().algorithm(),
                PublicKey::from(sig.public_key().clone()).fingerprint(ssh_key::HashAlg::default())
            ),
        });
    };
    key.verify(GIT_NAMESPACE, signed, &sig)
        .map_err(|e| VerifyError::NotAllowed {
            commit: commit.to_owned(),
            why: format!("the signature does not verify: {e}"),
        })
}

/// The keys of an allowed-signers text (`principals [options] key-type base64 [comment]`
/// a line; `#` comments and blank lines skipped).
pub fn allowed_signers_keys(text: &str) -> Result<Vec<PublicKey>, VerifyError> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(at) = fields.iter().position(|f| is_key_type(f)) else {
            return Err(VerifyError::AllowedSigners(format!(
                "line {}: no key type (ssh-ed25519 ...)",
                n + 1
            )));
        };
        let Some(blob) = fields.get(at + 1) else {
            return Err(VerifyError::AllowedSigners(format!(
                "line {}: a key type without its key",
                n + 1
            )));
        };
        let key = PublicKey::from_openssh(&format!("{} {blob}", fields[at]))
            .map_err(|e| VerifyError::AllowedSigners(format!("line {}: {e}", n + 1)))?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(VerifyError::AllowedSigners(
            "no key listed: every head would be refused".to_owned(),
        ));
    }
    Ok(keys)
}

fn is_key_type(field: &str) -> bool {
    field.starts_with("ssh-") || field.starts_with("ecdsa-") || field.starts_with("sk-")
}
