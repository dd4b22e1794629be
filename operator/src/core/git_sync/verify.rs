//! The head commit's signature, checked before anything of it is applied.
//!
//! SSH signatures (`git config gpg.format ssh`) are checked with the `ssh-key` crate's
//! sshsig verification, in Git's `git` namespace, against an allowed-signers file: the
//! signing key must be listed there and the signature must verify over the commit as
//! signed. Ed25519 keys are supported; other key types are refused by name.
//!
//! OpenPGP signatures (`gpg.format=openpgp`, Git's default) are checked with the `pgp`
//! crate against an armored keyring: the signature must verify over the commit as signed,
//! by a keyring key's primary key or one of its subkeys that is bound to it for signing
//! (with the subkey's back signature), neither revoked nor expired when the signature was
//! made. Which key signed is reported.

use std::path::Path;

use git2::{Oid, Repository};
use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey, SignedPublicSubKey};
use pgp::packet::{Signature, SignatureType};
use pgp::types::{KeyDetails, Tag, Timestamp};
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
    /// The OpenPGP keyring could not be read.
    #[error("failed to read the OpenPGP keyring ({KEYRING_KEY}): {0}")]
    KeyRing(String),
    /// The cache could not be read.
    #[error("failed to read commit {commit}: {message}")]
    Read {
        /// The commit.
        commit: String,
        /// What libgit2 said.
        message: String,
    },
}

/// Where an OpenPGP keyring is read from: the key of the GitSource's `keyRingRef` Secret,
/// named in errors whichever shell read it.
pub const KEYRING_KEY: &str = "keyring.asc";

/// The largest keyring read: a few hundred keys fit in far less, and a larger text is a
/// mistake (or an attempt to make every step slow), refused before it is parsed.
pub const MAX_KEYRING_BYTES: usize = 1024 * 1024;

/// Checks the signature of `commit` in the repository at `repo` as `verification` asks;
/// says which key signed.
pub fn verify_head(
    repo: &Path,
    commit: &str,
    verification: &Verification,
) -> Result<String, VerifyError> {
    // The keys are read before the commit, so that a bad keyring is named as such
    // whatever the head is.
    let keys = match verification {
        Verification::OpenPgp { keyring } => Keys::OpenPgp(keyring_keys(keyring)?),
        Verification::Ssh { allowed_signers } => Keys::Ssh(allowed_signers_keys(allowed_signers)?),
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
    match keys {
        Keys::Ssh(allowed) => verify_ssh(commit, &signature, &signed, &allowed),
        Keys::OpenPgp(ring) => verify_openpgp(commit, &signature, &signed, &ring),
    }
}

enum Keys {
    Ssh(Vec<PublicKey>),
    OpenPgp(Vec<SignedPublicKey>),
}

/// The signature as armored text beginning with `header`; `Err` says why not (`other`
/// when it is armored text of another kind).
fn armored<'a>(signature: &'a [u8], header: &str, other: &str) -> Result<&'a str, String> {
    let text =
        std::str::from_utf8(signature).map_err(|_| "the signature is not text".to_owned())?;
    if text.trim_start().starts_with(header) {
        Ok(text)
    } else {
        Err(other.to_owned())
    }
}

/// Verifies an armored SSH signature over `signed` against the allowed keys; says which
/// key signed.
pub fn verify_ssh(
    commit: &str,
    signature: &[u8],
    signed: &[u8],
    allowed: &[PublicKey],
) -> Result<String, VerifyError> {
    let malformed = |why: String| VerifyError::Malformed {
        commit: commit.to_owned(),
        why,
    };
    let text = armored(
        signature,
        "-----BEGIN SSH SIGNATURE-----",
        "the signature is not an SSH signature (an OpenPGP one?), and verify.mode is ssh",
    )
    .map_err(malformed)?;
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
        })?;
    Ok(format!(
        "SSH key {}",
        key.fingerprint(ssh_key::HashAlg::default())
    ))
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

/// Verifies an armored OpenPGP signature over `signed` against the keyring's keys; says
/// which key signed (`OpenPGP key <fingerprint>`, and its primary key's when a subkey did).
pub fn verify_openpgp(
    commit: &str,
    signature: &[u8],
    signed: &[u8],
    ring: &[SignedPublicKey],
) -> Result<String, VerifyError> {
    let malformed = |why: String| VerifyError::Malformed {
        commit: commit.to_owned(),
        why,
    };
    let not_allowed = |why: String| VerifyError::NotAllowed {
        commit: commit.to_owned(),
        why,
    };
    let text = armored(
        signature,
        "-----BEGIN PGP SIGNATURE-----",
        "the signature is not an OpenPGP signature (an SSH or X.509 one?), and verify.mode is openpgp",
    )
    .map_err(malformed)?;
    let (detached, _) = DetachedSignature::from_armor_single(text.as_bytes())
        .map_err(|e| malformed(format!("unreadable OpenPGP signature: {e}")))?;
    let sig = &detached.signature;
    if !matches!(sig.typ(), Some(SignatureType::Binary | SignatureType::Text)) {
        return Err(malformed(format!(
            "the signature is of type {:?}, not a signature over data",
            sig.typ()
        )));
    }
    let Some(made) = sig.created() else {
        return Err(malformed(
            "the signature carries no creation time".to_owned(),
        ));
    };
    let issuers = issuers(sig);
    if issuers.is_empty() {
        return Err(malformed("the signature names no issuer key".to_owned()));
    }
    let mut refused = Vec::new();
    for key in ring {
        for candidate in candidates(key) {
            if !issuers
                .iter()
                .any(|i| i.matches(&candidate.fingerprint(key), candidate.key_id(key)))
            {
                continue;
            }
            if let Err(why) = candidate.usable(key, made) {
                refused.push(why);
                continue;
            }
            let verified = match candidate {
                Candidate::Primary => sig.verify(&key.primary_key, signed),
                Candidate::Subkey(sub) => sig.verify(sub, signed),
            };
            verified.map_err(|e| not_allowed(format!("the signature does not verify: {e}")))?;
            if let Some(expires) = sig.signature_expiration_time()
                && expires.as_secs() != 0
                && u64::from(made.as_secs()) + u64::from(expires.as_secs()) <= now_secs()
            {
                return Err(not_allowed(format!(
                    "the signature by {} has expired",
                    candidate.describe(key)
                )));
            }
            return Ok(candidate.describe(key));
        }
    }
    if let Some(why) = refused.into_iter().next() {
        return Err(not_allowed(why));
    }
    Err(not_allowed(format!(
        "signed by OpenPGP key {}, which is not in the keyring",
        issuers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" / ")
    )))
}

/// The public keys of an armored keyring text: one or more `PUBLIC KEY BLOCK`s, each with
/// one or more keys. Every key must carry a valid self-signature; a keyring holding none,
/// or something else, is refused, naming what is wrong.
pub fn keyring_keys(text: &str) -> Result<Vec<SignedPublicKey>, VerifyError> {
    const BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
    let bad = |why: String| VerifyError::KeyRing(why);
    if text.len() > MAX_KEYRING_BYTES {
        return Err(bad(format!(
            "{} bytes, more than the {MAX_KEYRING_BYTES} bytes a keyring may hold",
            text.len()
        )));
    }
    if text.contains("-----BEGIN PGP PRIVATE KEY BLOCK-----") {
        return Err(bad(
            "it holds a private key: export only public keys (gpg --armor --export)".to_owned(),
        ));
    }
    let starts: Vec<usize> = text.match_indices(BEGIN).map(|(at, _)| at).collect();
    if starts.is_empty() {
        return Err(bad(format!(
            "no {BEGIN} found: expected armored public keys (gpg --armor --export)"
        )));
    }
    let mut keys = Vec::new();
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(text.len());
        let block = &text[start..end];
        let (parsed, _) = SignedPublicKey::from_armor_many(block.as_bytes())
            .map_err(|e| bad(format!("armor block {}: {e}", n + 1)))?;
        let before = keys.len();
        for key in parsed {
            let key = key.map_err(|e| bad(format!("armor block {}: {e}", n + 1)))?;
            if !has_self_signature(&key) {
                return Err(bad(format!(
                    "key {:X} carries no valid self-signature",
                    key.fingerprint()
                )));
            }
            keys.push(key);
        }
        if keys.len() == before {
            return Err(bad(format!("armor block {} holds no key", n + 1)));
        }
    }
    Ok(keys)
}

/// Who a signature says made it.
enum Issuer {
    Fingerprint(pgp::types::Fingerprint),
    KeyId(pgp::types::KeyId),
}

impl Issuer {
    fn matches(&self, fingerprint: &pgp::types::Fingerprint, key_id: pgp::types::KeyId) -> bool {
        match self {
            Issuer::Fingerprint(f) => f == fingerprint,
            Issuer::KeyId(k) => *k == key_id,
        }
    }
}

impl std::fmt::Display for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Issuer::Fingerprint(fp) => write!(f, "{fp:X}"),
            Issuer::KeyId(id) => write!(f, "{}", hex::encode_upper(id.as_ref())),
        }
    }
}

fn issuers(sig: &Signature) -> Vec<Issuer> {
    let fingerprints: Vec<Issuer> = sig
        .issuer_fingerprint()
        .into_iter()
        .map(|f| Issuer::Fingerprint(f.clone()))
        .collect();
    // A fingerprint names the key exactly; the 8-byte key id is only the fallback.
    if fingerprints.is_empty() {
        sig.issuer_key_id()
            .into_iter()
            .map(|k| Issuer::KeyId(*k))
            .collect()
    } else {
        fingerprints
    }
}

/// A key of the keyring that may have made a signature.
#[derive(Clone, Copy)]
enum Candidate<'a> {
    Primary,
    Subkey(&'a SignedPublicSubKey),
}

fn candidates(key: &SignedPublicKey) -> impl Iterator<Item = Candidate<'_>> {
    std::iter::once(Candidate::Primary).chain(key.public_subkeys.iter().map(Candidate::Subkey))
}

impl Candidate<'_> {
    fn fingerprint(self, key: &SignedPublicKey) -> pgp::types::Fingerprint {
        match self {
            Candidate::Primary => key.fingerprint(),
            Candidate::Subkey(sub) => sub.fingerprint(),
        }
    }

    fn key_id(self, key: &SignedPublicKey) -> pgp::types::KeyId {
        match self {
            Candidate::Primary => key.legacy_key_id(),
            Candidate::Subkey(sub) => sub.legacy_key_id(),
        }
    }

    fn describe(self, key: &SignedPublicKey) -> String {
        match self {
            Candidate::Primary => format!("OpenPGP key {:X}", key.fingerprint()),
            Candidate::Subkey(sub) => format!(
                "OpenPGP key {:X} (a subkey of {:X})",
                sub.fingerprint(),
                key.fingerprint()
            ),
        }
    }

    /// Whether this key could sign data at `made`: bound for signing, made before, not
    /// expired then, and neither it nor its primary key revoked.
    fn usable(self, key: &SignedPublicKey, made: Timestamp) -> Result<(), String> {
        let name = self.describe(key);
        if revoked(key) {
            return Err(format!("{name} is revoked"));
        }
        let Some(primary_binding) = primary_binding(key) else {
            return Err(format!("{name} carries no valid self-signature"));
        };
        alive(
            &name,
            key.created_at(),
            primary_binding.key_expiration_time(),
            made,
        )?;
        let binding = match self {
            Candidate::Primary => primary_binding,
            Candidate::Subkey(sub) => {
                if sub.signatures.iter().any(|s| {
                    s.typ() == Some(SignatureType::SubkeyRevocation)
                        && s.verify_subkey_binding(&key.primary_key, &sub.key).is_ok()
                }) {
                    return Err(format!("{name} is revoked"));
                }
                let Some(binding) = subkey_binding(key, sub) else {
                    return Err(format!(
                        "{name} is not bound to its primary key for signing"
                    ));
                };
                alive(&name, sub.created_at(), binding.key_expiration_time(), made)?;
                binding
            }
        };
        if !binding.key_flags().sign() {
            return Err(format!("{name} is not a signing key"));
        }
        Ok(())
    }
}

fn alive(
    name: &str,
    created: Timestamp,
    expires_after: Option<pgp::types::Duration>,
    made: Timestamp,
) -> Result<(), String> {
    if made.as_secs() < created.as_secs() {
        return Err(format!("the signature predates {name}"));
    }
    if let Some(after) = expires_after
        && after.as_secs() != 0
        && u64::from(made.as_secs()) >= u64::from(created.as_secs()) + u64::from(after.as_secs())
    {
        return Err(format!("{name} had expired when the signature was made"));
    }
    Ok(())
}

fn has_self_signature(key: &SignedPublicKey) -> bool {
    primary_binding(key).is_some()
}

/// The primary key's newest valid self-signature: a certification of one of its user ids,
/// or a direct-key signature. Signatures by other keys (certifications) are skipped.
fn primary_binding(key: &SignedPublicKey) -> Option<&Signature> {
    let certifications = key.details.users.iter().flat_map(|user| {
        user.signatures.iter().filter(|s| {
            s.verify_certification(&key.primary_key, Tag::UserId, &user.id)
                .is_ok()
        })
    });
    let direct = key
        .details
        .direct_signatures
        .iter()
        .filter(|s| s.verify_key(&key.primary_key).is_ok());
    certifications
        .chain(direct)
        .max_by_key(|s| s.created().map_or(0, Timestamp::as_secs))
}

/// The subkey's newest valid binding signature, with its back signature when it is bound
/// for signing (without one, anybody could claim another's signing key as a subkey).
fn subkey_binding<'a>(key: &SignedPublicKey, sub: &'a SignedPublicSubKey) -> Option<&'a Signature> {
    sub.signatures
        .iter()
        .filter(|s| {
            s.typ() == Some(SignatureType::SubkeyBinding)
                && s.verify_subkey_binding(&key.primary_key, &sub.key).is_ok()
                && (!s.key_flags().sign()
                    || s.embedded_signature().is_some_and(|back| {
                        back.verify_primary_key_binding(&sub.key, &key.primary_key)
                            .is_ok()
                    }))
        })
        .max_by_key(|s| s.created().map_or(0, Timestamp::as_secs))
}

/// Whether the key carries a valid revocation by itself. Any reason counts: a retired key
/// is not trusted for new commits, and the revocation's reason is not worth a wrong guess.
fn revoked(key: &SignedPublicKey) -> bool {
    key.details
        .revocation_signatures
        .iter()
        .any(|s| s.verify_key(&key.primary_key).is_ok())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    //! Real signatures: keys made by `gpg` in a throwaway home, commits signed by `git
    //! commit -S` through it, the public keys exported armored as a user would.

    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::*;

    /// A `GnuPG` home of its own, its agent stopped when dropped.
    struct Gpg {
        home: PathBuf,
    }

    impl Drop for Gpg {
        fn drop(&mut self) {
            let _ = Command::new("gpgconf")
                .arg("--homedir")
                .arg(&self.home)
                .args(["--kill", "gpg-agent"])
                .output();
        }
    }

    /// A scratch directory, removed first if an earlier run left it. Short: the agent's
    /// socket path must fit in a socket address.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("skpgp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// `gpg` in a home under `root`; `None` (the test skips, saying so) when there is no
    /// gpg, except under CI (`SHADOWKEEP_CI=1`), where that is a failure.
    fn gpg(root: &Path) -> Option<Gpg> {
        if Command::new("gpg").arg("--version").output().is_err() {
            assert!(
                std::env::var_os("SHADOWKEEP_CI").is_none(),
                "gpg is required under CI (apt-get install gnupg)"
            );
            eprintln!("skipped: no gpg on PATH");
            return None;
        }
        let home = root.join("gnupg");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        Some(Gpg { home })
    }

    impl Gpg {
        fn run(&self, args: &[&str]) -> String {
            let out = Command::new("gpg")
                .arg("--homedir")
                .arg(&self.home)
                .args(["--batch", "--passphrase", ""])
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "gpg {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }

        /// A new key, `algo` and `usage` as `--quick-gen-key` takes them; its fingerprint.
        fn key(&self, uid: &str, algo: &str, usage: &str) -> String {
            self.run(&["--quick-gen-key", uid, algo, usage, "never"]);
            self.fingerprints(uid)[0].clone()
        }

        /// The fingerprints of `uid`'s key: the primary key's first, then its subkeys'.
        fn fingerprints(&self, uid: &str) -> Vec<String> {
            self.run(&["--with-colons", "--list-keys", uid])
                .lines()
                .filter_map(|l| l.strip_prefix("fpr:"))
                .map(|l| l.trim_matches(':').to_owned())
                .collect()
        }

        fn export(&self, fingerprints: &[&str]) -> String {
            let mut args = vec!["--armor", "--export"];
            args.extend(fingerprints);
            self.run(&args)
        }
    }

    /// A repository with commits made by `git`, signing through `gpg`'s home.
    struct Repo {
        dir: PathBuf,
        gnupg: PathBuf,
    }

    impl Repo {
        fn new(root: &Path, gpg: &Gpg) -> Self {
            let repo = Self {
                dir: root.join("repo"),
                gnupg: gpg.home.clone(),
            };
            std::fs::create_dir_all(&repo.dir).unwrap();
            repo.git(&["init", "-q", "-b", "main"]);
            repo
        }

        fn git(&self, args: &[&str]) -> String {
            let out = Command::new("git")
                .current_dir(&self.dir)
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GNUPGHOME", &self.gnupg)
                .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
                .args(["-c", "gpg.program=gpg", "-c", "commit.gpgsign=false"])
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        }

        /// A commit signed by `key` (`None`: unsigned); its id.
        fn commit(&self, key: Option<&str>, message: &str) -> String {
            let signing = key.map(|k| format!("user.signingkey={k}"));
            let mut args = Vec::new();
            if let Some(signing) = &signing {
                args.extend(["-c", signing.as_str()]);
            }
            args.extend(["commit", "-q", "--allow-empty", "-m", message]);
            if key.is_some() {
                args.push("-S");
            }
            self.git(&args);
            self.git(&["rev-parse", "HEAD"])
        }

        fn verify(&self, commit: &str, keyring: &str) -> Result<String, VerifyError> {
            verify_head(
                &self.dir,
                commit,
                &Verification::OpenPgp {
                    keyring: keyring.to_owned(),
                },
            )
        }
    }

    #[test]
    fn a_commit_signed_by_a_keyring_key_is_accepted_and_its_key_named() {
        let root = scratch("accept");
        let Some(gpg) = gpg(&root) else { return };
        let ed = gpg.key("Ed <ed@example.com>", "ed25519", "sign");
        let rsa = gpg.key("Rsa <rsa@example.com>", "rsa3072", "sign");
        let repo = Repo::new(&root, &gpg);
        let by_ed = repo.commit(Some(&ed), "signed by ed25519");
        let by_rsa = repo.commit(Some(&rsa), "signed by rsa");

        // One armor block holding both keys, and two blocks of one key each.
        let one_block = gpg.export(&[&ed, &rsa]);
        let two_blocks = format!("{}\n{}", gpg.export(&[&rsa]), gpg.export(&[&ed]));
        for ring in [&one_block, &two_blocks] {
            assert_eq!(keyring_keys(ring).unwrap().len(), 2);
            assert_eq!(
                repo.verify(&by_ed, ring).unwrap(),
                format!("OpenPGP key {ed}")
            );
            assert_eq!(
                repo.verify(&by_rsa, ring).unwrap(),
                format!("OpenPGP key {rsa}")
            );
        }
    }

    #[test]
    fn a_signing_subkey_is_accepted_and_named_with_its_primary_key() {
        let root = scratch("subkey");
        let Some(gpg) = gpg(&root) else { return };
        let primary = gpg.key("Sub <sub@example.com>", "ed25519", "cert");
        gpg.run(&["--quick-add-key", &primary, "ed25519", "sign", "never"]);
        let fingerprints = gpg.fingerprints(&primary);
        let subkey = &fingerprints[1];
        let repo = Repo::new(&root, &gpg);
        // The trailing `!` makes gpg sign with exactly this subkey.
        let commit = repo.commit(Some(&format!("{subkey}!")), "signed by the subkey");
        assert_eq!(
            repo.verify(&commit, &gpg.export(&[&primary])).unwrap(),
            format!("OpenPGP key {subkey} (a subkey of {primary})")
        );
    }

    #[test]
    fn unsigned_foreign_tampered_and_ssh_signed_commits_are_refused() {
        let root = scratch("refuse");
        let Some(gpg) = gpg(&root) else { return };
        let known = gpg.key("Known <known@example.com>", "ed25519", "sign");
        let stranger = gpg.key("Stranger <stranger@example.com>", "ed25519", "sign");
        let ring = gpg.export(&[&known]);
        let repo = Repo::new(&root, &gpg);

        let unsigned = repo.commit(None, "unsigned");
        let e = repo.verify(&unsigned, &ring).unwrap_err();
        assert!(matches!(e, VerifyError::Unsigned(_)), "{e}");
        assert_eq!(
            e.to_string(),
            format!("failed to verify commit {unsigned}: it is not signed")
        );

        let foreign = repo.commit(Some(&stranger), "signed by a stranger");
        let e = repo.verify(&foreign, &ring).unwrap_err();
        assert!(matches!(e, VerifyError::NotAllowed { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!(
                "failed to verify commit {foreign}: signed by OpenPGP key {stranger}, which is not in the keyring"
            )
        );

        // The signed commit rewritten with another message, its signature kept.
        let good = repo.commit(Some(&known), "signed");
        assert!(repo.verify(&good, &ring).is_ok());
        let object = repo.git(&["cat-file", "commit", &good]);
        assert!(object.contains("gpgsig "));
        let forged_file = root.join("forged");
        std::fs::write(
            &forged_file,
            format!("{}\n", object.replace("signed", "forged")),
        )
        .unwrap();
        let forged = repo.git(&[
            "hash-object",
            "-t",
            "commit",
            "-w",
            forged_file.to_str().unwrap(),
        ]);
        let e = repo.verify(&forged, &ring).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "failed to verify commit {forged}: the signature does not verify"
            )),
            "{e}"
        );

        // The verifier fed other data than the signature covers.
        let repository = Repository::open(&repo.dir).unwrap();
        let (signature, signed) = repository
            .extract_signature(&Oid::from_str(&good).unwrap(), None)
            .unwrap();
        let keys = keyring_keys(&ring).unwrap();
        assert!(verify_openpgp(&good, &signature, &signed, &keys).is_ok());
        let mut other = signed.to_vec();
        other.extend_from_slice(b"more");
        let e = verify_openpgp(&good, &signature, &other, &keys).unwrap_err();
        assert!(matches!(e, VerifyError::NotAllowed { .. }), "{e}");

        // An SSH signature under verify.mode openpgp.
        let e = verify_openpgp(
            &good,
            b"-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----\n",
            &signed,
            &keys,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not an OpenPGP signature"), "{e}");
        // And the reverse: an OpenPGP signature under verify.mode ssh.
        let e = verify_ssh(&good, &signature, &signed, &[]).unwrap_err();
        assert!(e.to_string().contains("not an SSH signature"), "{e}");
    }

    #[test]
    fn a_revoked_key_is_refused() {
        let root = scratch("revoked");
        let Some(gpg) = gpg(&root) else { return };
        let key = gpg.key("Revoked <revoked@example.com>", "ed25519", "sign");
        let repo = Repo::new(&root, &gpg);
        let commit = repo.commit(Some(&key), "signed before the revocation");
        assert!(repo.verify(&commit, &gpg.export(&[&key])).is_ok());
        // gpg stores a revocation certificate for each new key, its armor line guarded
        // by a leading ':' against an accidental import.
        let certificate =
            std::fs::read_to_string(gpg.home.join("openpgp-revocs.d").join(format!("{key}.rev")))
                .unwrap()
                .replace(":-----BEGIN", "-----BEGIN");
        let file = root.join("revocation.asc");
        std::fs::write(&file, certificate).unwrap();
        gpg.run(&["--import", file.to_str().unwrap()]);
        let e = repo.verify(&commit, &gpg.export(&[&key])).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("failed to verify commit {commit}: OpenPGP key {key} is revoked")
        );
    }

    #[test]
    fn a_key_is_judged_as_it_was_when_it_signed() {
        let root = scratch("expiry");
        let Some(gpg) = gpg(&root) else { return };
        let at = |time: &str| format!("--faked-system-time={time}!");
        gpg.run(&[
            &at("20200101T000000"),
            "--quick-gen-key",
            "Old <old@example.com>",
            "ed25519",
            "sign",
            "never",
        ]);
        let key = gpg.fingerprints("old@example.com")[0].clone();
        let data = root.join("data");
        std::fs::write(&data, b"signed data").unwrap();
        let sign = |time: &str, name: &str| {
            let out = root.join(name);
            gpg.run(&[
                &at(time),
                "--armor",
                "--detach-sign",
                "--local-user",
                &key,
                "--output",
                out.to_str().unwrap(),
                data.to_str().unwrap(),
            ]);
            std::fs::read(out).unwrap()
        };
        let early = sign("20200101T060000", "early.asc");
        // Signed while the key did not expire yet; then it is given an expiry of one day
        // (a self-signature made on 1 January at noon), long past now.
        let late = sign("20200105T000000", "late.asc");
        gpg.run(&[&at("20200101T120000"), "--quick-set-expire", &key, "1d"]);
        let keys = keyring_keys(&gpg.export(&[&key])).unwrap();

        // Expired now, valid when it signed: accepted.
        assert_eq!(
            verify_openpgp("c", &early, b"signed data", &keys).unwrap(),
            format!("OpenPGP key {key}")
        );
        let e = verify_openpgp("c", &late, b"signed data", &keys).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "failed to verify commit c: OpenPGP key {key} had expired when the signature was made"
            )
        );
    }

    #[test]
    fn a_malformed_or_oversized_keyring_is_refused_naming_it() {
        let root = scratch("keyring");
        let Some(gpg) = gpg(&root) else { return };
        let key = gpg.key("Ring <ring@example.com>", "ed25519", "sign");
        let armored = gpg.export(&[&key]);
        let secret = gpg.run(&["--armor", "--export-secret-keys", &key]);
        let damaged = {
            // A character of the key's base64 changed: the checksum or the packets break.
            let at = armored.find("\n\n").unwrap() + 40;
            let mut bytes = armored.clone().into_bytes();
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            String::from_utf8(bytes).unwrap()
        };
        let truncated = armored[..armored.len() / 2].to_owned();
        let cases = [
            ("", "no -----BEGIN PGP PUBLIC KEY BLOCK----- found"),
            (
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ",
                "no -----BEGIN PGP PUBLIC KEY BLOCK----- found",
            ),
            (&secret, "it holds a private key"),
            (&truncated, "armor block 1: "),
            (
                "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n-----END PGP PUBLIC KEY BLOCK-----\n",
                "armor block 1",
            ),
        ];
        for (ring, expected) in cases {
            let e = keyring_keys(ring).unwrap_err().to_string();
            assert!(
                e.starts_with("failed to read the OpenPGP keyring (keyring.asc): "),
                "{e}"
            );
            assert!(e.contains(expected), "{e} does not say {expected:?}");
            assert!(!e.contains("PRIVATE KEY BLOCK-----\n"), "{e}");
        }
        // Where the changed character lands decides what breaks: the packets, or a
        // self-signature; either way the keyring is refused.
        let e = keyring_keys(&damaged).unwrap_err().to_string();
        assert!(
            e.contains("armor block 1: ") || e.contains("carries no valid self-signature"),
            "{e}"
        );
        let oversized = format!("{armored}{}", " ".repeat(MAX_KEYRING_BYTES));
        let e = keyring_keys(&oversized).unwrap_err().to_string();
        assert!(e.contains("more than the 1048576 bytes"), "{e}");

        // The keyring is read before the commit: a bad one is named even for a good head.
        let repo = Repo::new(&root, &gpg);
        let commit = repo.commit(Some(&key), "signed");
        let e = repo.verify(&commit, &damaged).unwrap_err();
        assert!(matches!(e, VerifyError::KeyRing(_)), "{e}");
    }
}
