//! The credentials a branch is fetched with, read from a Secret's keys by either shell
//! (the operator from the API, `up` from `--secrets DIR`) and checked here, once, for both.
//!
//! - https: `username` and `password` (a token is a password), and optionally `ca.crt`: the
//!   PEM certificates of a private CA trusted for this repository alone. With it, the
//!   server's certificate must chain to one of them; without it, the system's trust decides.
//!   Nothing process-wide changes: the check runs in this fetch's certificate callback.
//! - ssh: `identity` (an unencrypted OpenSSH private key) and `known_hosts` (required): a
//!   host key not listed there for the host is refused, never accepted on first use.
//!
//! No message built here holds a secret's value: they name the Secret and the key.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use git2::{Cred, CredentialType};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::Digest as _;
use zeroize::Zeroizing;

/// The key holding the https user name.
pub const USERNAME: &str = "username";
/// The key holding the https password or token.
pub const PASSWORD: &str = "password";
/// The key holding the PEM certificates of a private CA, for https.
pub const CA: &str = "ca.crt";
/// The key holding the ssh private key.
pub const IDENTITY: &str = "identity";
/// The key holding the ssh host keys trusted, in `known_hosts` format.
pub const KNOWN_HOSTS: &str = "known_hosts";

/// The most a credentials key may hold.
pub const KEY_LIMIT: usize = 64 * 1024;

/// The user an ssh URL without one logs in as.
const DEFAULT_SSH_USER: &str = "git";

/// How a URL is fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `https://` (or `http://`).
    Https,
    /// `ssh://`, `git+ssh://` or `user@host:path`.
    Ssh,
    /// `file://` or a local path: no credentials.
    Local,
}

impl Transport {
    /// The transport `url` needs.
    pub fn of(url: &str) -> Self {
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("https://") || lower.starts_with("http://") {
            Self::Https
        } else if lower.starts_with("ssh://")
            || lower.starts_with("git+ssh://")
            || (!lower.contains("://") && !lower.starts_with('/') && lower.contains('@'))
        {
            Self::Ssh
        } else {
            Self::Local
        }
    }
}

/// Credentials for one repository. Debug shows where they came from, never a value.
#[derive(Clone)]
pub struct Credentials {
    origin: String,
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Https {
        username: Zeroizing<String>,
        password: Zeroizing<String>,
        ca: Option<Arc<WebPkiServerVerifier>>,
    },
    Ssh {
        identity: Zeroizing<String>,
        known_hosts: KnownHosts,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Https { .. } => "https",
            Kind::Ssh { .. } => "ssh",
        };
        f.debug_struct("Credentials")
            .field("origin", &self.origin)
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

/// Reads one key of the Secret: `Ok(None)` when it has no such key.
pub type KeyReader<'a> = dyn FnMut(&str) -> Result<Option<Zeroizing<Vec<u8>>>, String> + 'a;

impl Credentials {
    /// The credentials to fetch `url` with, from the keys `read` returns. `origin` names
    /// the Secret (and what refers to it) in every message; none holds a value.
    pub fn read(url: &str, origin: &str, read: &mut KeyReader<'_>) -> Result<Self, String> {
        let mut text = |key: &str, required: bool| -> Result<Option<Zeroizing<String>>, String> {
            let Some(value) = read(key)? else {
                return if required {
                    Err(format!("{origin} has no key {key:?}"))
                } else {
                    Ok(None)
                };
            };
            if value.len() > KEY_LIMIT {
                return Err(format!(
                    "{origin} key {key:?} is larger than {KEY_LIMIT} bytes"
                ));
            }
            let text = std::str::from_utf8(&value)
                .map_err(|_| format!("{origin} key {key:?} is not text"))?;
            if text.trim().is_empty() {
                return Err(format!("{origin} key {key:?} is empty"));
            }
            Ok(Some(Zeroizing::new(text.to_owned())))
        };
        let kind = match Transport::of(url) {
            Transport::Local => {
                return Err(format!(
                    "{origin} is given for a local repository, which is read without credentials"
                ));
            }
            Transport::Https if !url.to_ascii_lowercase().starts_with("https://") => {
                return Err(format!(
                    "{origin} is given for {}, a plain http URL: a password is sent only over https",
                    redact(url)
                ));
            }
            Transport::Https => {
                let username = text(USERNAME, true)?.unwrap_or_default();
                let password = text(PASSWORD, true)?.unwrap_or_default();
                let ca = text(CA, false)?
                    .map(|pem| ca_verifier(pem.as_bytes()))
                    .transpose()
                    .map_err(|e| format!("{origin} key {CA:?} {e}"))?;
                Kind::Https {
                    username: Zeroizing::new(username.trim().to_owned()),
                    password: Zeroizing::new(password.trim_end_matches(['\r', '\n']).to_owned()),
                    ca,
                }
            }
            Transport::Ssh => {
                let identity = text(IDENTITY, true)?.unwrap_or_default();
                check_identity(&identity).map_err(|e| format!("{origin} key {IDENTITY:?} {e}"))?;
                let known_hosts = text(KNOWN_HOSTS, true)?.unwrap_or_default();
                let known_hosts = KnownHosts::parse(&known_hosts)
                    .map_err(|e| format!("{origin} key {KNOWN_HOSTS:?} {e}"))?;
                Kind::Ssh {
                    identity,
                    known_hosts,
                }
            }
        };
        Ok(Self {
            origin: origin.to_owned(),
            kind,
        })
    }

    /// Where they were read, for messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The credential libgit2 asks for, `attempt` counting from 1: a second attempt means
    /// the server refused the first, and asking again would only loop.
    pub(super) fn cred(
        &self,
        user_from_url: Option<&str>,
        allowed: CredentialType,
        attempt: u32,
    ) -> Result<Cred, String> {
        let origin = &self.origin;
        let git = |e: git2::Error| format!("failed to use {origin}: {}", e.message());
        match &self.kind {
            Kind::Https {
                username, password, ..
            } if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) => {
                if attempt > 1 {
                    return Err(format!(
                        "the server refused user {:?} with key {PASSWORD:?} of {origin}",
                        username.as_str()
                    ));
                }
                Cred::userpass_plaintext(username, password).map_err(git)
            }
            Kind::Ssh { .. } if allowed.contains(CredentialType::USERNAME) => {
                Cred::username(user_from_url.unwrap_or(DEFAULT_SSH_USER)).map_err(git)
            }
            Kind::Ssh { identity, .. } if allowed.contains(CredentialType::SSH_MEMORY) => {
                let user = user_from_url.unwrap_or(DEFAULT_SSH_USER);
                if attempt > 1 {
                    return Err(format!(
                        "the server refused user {user:?} with key {IDENTITY:?} of {origin}"
                    ));
                }
                Cred::ssh_key_from_memory(user, None, identity, None).map_err(git)
            }
            _ => Err(format!(
                "the server asks for credentials of another kind than {origin} holds"
            )),
        }
    }

    /// Checks the server's host key or certificate: `Ok(true)` accepts it, `Ok(false)`
    /// leaves the decision to libgit2 (the system's trust, for https without `ca.crt`).
    pub(super) fn check(
        credentials: Option<&Self>,
        cert: &git2::cert::Cert<'_>,
        host: &str,
        port: u16,
    ) -> Result<bool, String> {
        if let Some(hostkey) = cert.as_hostkey() {
            let Some(Self {
                origin,
                kind: Kind::Ssh { known_hosts, .. },
            }) = credentials
            else {
                return Err(format!(
                    "no known_hosts to check the host key of {host} against: an ssh repository needs credentials with key {KNOWN_HOSTS:?}"
                ));
            };
            let key = hostkey
                .hostkey()
                .ok_or_else(|| format!("{host} offered no host key"))?;
            return known_hosts
                .check(host, port, key)
                .map(|()| true)
                .map_err(|e| format!("{e} (key {KNOWN_HOSTS:?} of {origin})"));
        }
        if let Some(x509) = cert.as_x509()
            && let Some(Self {
                origin,
                kind: Kind::Https { ca: Some(ca), .. },
            }) = credentials
        {
            let name = ServerName::try_from(host.to_owned())
                .map_err(|_| format!("{host} is not a host name a certificate can name"))?;
            return ca
                .verify_server_cert(
                    &CertificateDer::from(x509.data()),
                    &[],
                    &name,
                    &[],
                    UnixTime::now(),
                )
                .map(|_| true)
                .map_err(|e| {
                    format!(
                        "the certificate of {host} is not trusted by key {CA:?} of {origin}: {e}"
                    )
                });
        }
        Ok(false)
    }
}

/// A verifier trusting only the certificates of `pem`.
fn ca_verifier(pem: &[u8]) -> Result<Arc<WebPkiServerVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("is not PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("holds a certificate that cannot be used: {e}"))?;
    }
    if roots.is_empty() {
        return Err("holds no PEM certificate".to_owned());
    }
    WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| format!("cannot be used: {e}"))
}

/// Refuses what libssh2 could not log in with: not an OpenSSH private key, or an
/// encrypted one (there is no passphrase to give).
fn check_identity(text: &str) -> Result<(), String> {
    let key = ssh_key::PrivateKey::from_openssh(text.trim()).map_err(|_| {
        "is not an OpenSSH private key (-----BEGIN OPENSSH PRIVATE KEY-----)".to_owned()
    })?;
    if key.is_encrypted() {
        return Err(
            "is encrypted: give the key without a passphrase (ssh-keygen -p -N '')".to_owned(),
        );
    }
    Ok(())
}

/// The host keys of a `known_hosts` text.
#[derive(Clone, Debug)]
struct KnownHosts {
    entries: Vec<HostEntry>,
}

#[derive(Clone, Debug)]
struct HostEntry {
    hosts: Hosts,
    revoked: bool,
    /// The key as the SSH wire format encodes it: what the server sends.
    key: Vec<u8>,
}

#[derive(Clone, Debug)]
enum Hosts {
    Patterns(Vec<String>),
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
}

impl KnownHosts {
    /// Reads every entry; a line that is none is an error naming it. `@cert-authority`
    /// lines are skipped: host certificates are not checked, so they trust nothing.
    fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| format!("line {}: {why}", number + 1);
            let mut fields = line.split_whitespace().peekable();
            let marker = fields.next_if(|f| f.starts_with('@'));
            let revoked = match marker {
                None => false,
                Some("@revoked") => true,
                Some("@cert-authority") => continue,
                Some(other) => return Err(bad(&format!("unknown marker {other}"))),
            };
            let (Some(hosts), Some(_), Some(key)) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(bad("expected hosts, key type and key"));
            };
            let key = base64::engine::general_purpose::STANDARD
                .decode(key)
                .map_err(|_| bad("the key is not base64"))?;
            let hosts = if let Some(hashed) = hosts.strip_prefix("|1|") {
                let (salt, hash) = hashed
                    .split_once('|')
                    .ok_or_else(|| bad("a hashed host is |1|salt|hash"))?;
                let decode = |s| {
                    base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .map_err(|_| bad("a hashed host is not base64"))
                };
                Hosts::Hashed {
                    salt: decode(salt)?,
                    hash: decode(hash)?,
                }
            } else {
                Hosts::Patterns(hosts.split(',').map(str::to_ascii_lowercase).collect())
            };
            entries.push(HostEntry {
                hosts,
                revoked,
                key,
            });
        }
        if !entries.iter().any(|e| !e.revoked) {
            return Err("lists no host key".to_owned());
        }
        Ok(Self { entries })
    }

    /// Accepts `key` for `host` on `port` only when an entry for the host lists it and
    /// none revokes it.
    fn check(&self, host: &str, port: u16, key: &[u8]) -> Result<(), String> {
        let name = if port == 22 {
            host.to_ascii_lowercase()
        } else {
            format!("[{}]:{port}", host.to_ascii_lowercase())
        };
        let fingerprint = format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha2::Sha256::digest(key))
        );
        let listed: Vec<&HostEntry> = self
            .entries
            .iter()
            .filter(|e| e.hosts.matches(&name))
            .collect();
        if listed.iter().any(|e| e.revoked && e.key == key) {
            return Err(format!(
                "the host key {fingerprint} of {name} is revoked in known_hosts"
            ));
        }
        if listed.iter().any(|e| !e.revoked && e.key == key) {
            return Ok(());
        }
        if listed.iter().any(|e| !e.revoked) {
            return Err(format!(
                "the host key {fingerprint} of {name} is not the one known_hosts lists for it: refused"
            ));
        }
        Err(format!(
            "{name} is not listed in known_hosts: its host key {fingerprint} is refused"
        ))
    }
}

impl Hosts {
    fn matches(&self, name: &str) -> bool {
        match self {
            Self::Hashed { salt, hash } => {
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, salt);
                ring::hmac::verify(&key, name.as_bytes(), hash).is_ok()
            }
            Self::Patterns(patterns) => {
                let mut matched = false;
                for pattern in patterns {
                    if let Some(negated) = pattern.strip_prefix('!') {
                        if glob(negated.as_bytes(), name.as_bytes()) {
                            return false;
                        }
                    } else if glob(pattern.as_bytes(), name.as_bytes()) {
                        matched = true;
                    }
                }
                matched
            }
        }
    }
}

/// `*` and `?` wildcards, as `known_hosts` patterns use them.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.split_first(), name.split_first()) {
        (None, None) => true,
        (Some((b'*', rest)), _) => {
            glob(rest, name) || name.split_first().is_some_and(|(_, n)| glob(pattern, n))
        }
        (Some((b'?', rest)), Some((_, n))) => glob(rest, n),
        (Some((p, rest)), Some((c, n))) if p == c => glob(rest, n),
        _ => false,
    }
}

/// The port of an ssh URL (22 unless `ssh://host:port/` names one).
pub(super) fn ssh_port(url: &str) -> u16 {
    let Some((_, rest)) = url.split_once("://") else {
        return 22;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host_port
        .rsplit_once(':')
        .filter(|(host, _)| !host.ends_with(':') && (!host.contains(':') || host.ends_with(']')))
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or(22)
}

/// `url` with any user information (`https://user:token@host/...`) masked, for messages
/// and statuses: a token put in a URL must not reach them.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_in_a_url_are_masked() {
        assert_eq!(
            super::redact("https://bot:s3cret@git.example.org/estate.git"),
            "https://***@git.example.org/estate.git"
        );
        assert_eq!(
            super::redact("ssh://git@git.example.org/a@b"),
            "ssh://***@git.example.org/a@b"
        );
        assert_eq!(
            super::redact("file:///srv/estate.git"),
            "file:///srv/estate.git"
        );
    }

    use zeroize::Zeroizing;

    use super::{Credentials, KnownHosts, Transport, glob, ssh_port};

    #[test]
    fn debug_names_where_credentials_came_from_never_a_value() {
        let mut read = |key: &str| {
            Ok((key != super::CA).then(|| Zeroizing::new(format!("{key}-s3cret").into_bytes())))
        };
        let credentials =
            Credentials::read("https://git.example.org/r.git", "Secret a/b", &mut read).unwrap();
        let shown = format!("{credentials:?}");
        assert!(
            shown.contains("Secret a/b") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn a_password_is_never_given_to_plain_http_or_a_local_repository() {
        let mut read = |_: &str| Ok(Some(Zeroizing::new(b"value".to_vec())));
        let e =
            Credentials::read("http://git.example.org/r.git", "Secret a/b", &mut read).unwrap_err();
        assert!(e.contains("a password is sent only over https"), "{e}");
        let e = Credentials::read("file:///srv/r.git", "Secret a/b", &mut read).unwrap_err();
        assert!(e.contains("local repository"), "{e}");
    }

    #[test]
    fn transports_are_told_from_the_url() {
        assert_eq!(Transport::of("https://example.org/r.git"), Transport::Https);
        assert_eq!(Transport::of("ssh://git@example.org/r.git"), Transport::Ssh);
        assert_eq!(Transport::of("git@example.org:estate.git"), Transport::Ssh);
        assert_eq!(Transport::of("file:///srv/estate.git"), Transport::Local);
        assert_eq!(Transport::of("/srv/estate"), Transport::Local);
    }

    #[test]
    fn ports_are_read_from_ssh_urls() {
        assert_eq!(ssh_port("ssh://git@127.0.0.1:2222/srv/r.git"), 2222);
        assert_eq!(ssh_port("ssh://example.org/r.git"), 22);
        assert_eq!(ssh_port("git@example.org:r.git"), 22);
        assert_eq!(ssh_port("ssh://git@[::1]:2200/r.git"), 2200);
    }

    #[test]
    fn known_hosts_patterns_hashes_and_revocations() {
        // A key blob need not be a real key for matching; base64 of "key-a" / "key-b".
        let text = "\
# comment
example.org,*.example.net,!bad.example.net ssh-ed25519 a2V5LWE=
[127.0.0.1]:2222 ssh-ed25519 a2V5LWI=
|1|AAECAwQFBgcICQoLDA0ODxAREhM=|0000000000000000000000000000 ssh-ed25519 a2V5LWE=
@revoked example.org ssh-ed25519 a2V5LWI=
@cert-authority *.example.com ssh-ed25519 a2V5LWE=
";
        let known = KnownHosts::parse(text).unwrap();
        assert!(known.check("example.org", 22, b"key-a").is_ok());
        assert!(known.check("Git.Example.NET", 22, b"key-a").is_ok());
        assert!(known.check("bad.example.net", 22, b"key-a").is_err());
        assert!(known.check("127.0.0.1", 2222, b"key-b").is_ok());
        assert!(known.check("127.0.0.1", 22, b"key-b").is_err());
        let revoked = known.check("example.org", 22, b"key-b").unwrap_err();
        assert!(revoked.contains("revoked"), "{revoked}");
        let other = known.check("127.0.0.1", 2222, b"key-a").unwrap_err();
        assert!(other.contains("not the one"), "{other}");
        let unknown = known.check("elsewhere.org", 22, b"key-a").unwrap_err();
        assert!(unknown.contains("not listed"), "{unknown}");
        assert!(KnownHosts::parse("# nothing\n").is_err());
        assert!(KnownHosts::parse("host ssh-ed25519 !!!").is_err());
    }

    #[test]
    fn hashed_hosts_match_as_ssh_keygen_hashes_them() {
        // `ssh-keygen -H` of "[127.0.0.1]:2222": HMAC-SHA1 keyed by the salt.
        let salt = [7u8; 20];
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt);
        let tag = ring::hmac::sign(&key, b"[127.0.0.1]:2222");
        let b64 = |b: &[u8]| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(b)
        };
        let text = format!(
            "|1|{}|{} ssh-ed25519 a2V5LWE=\n",
            b64(&salt),
            b64(tag.as_ref())
        );
        let known = KnownHosts::parse(&text).unwrap();
        assert!(known.check("127.0.0.1", 2222, b"key-a").is_ok());
        assert!(known.check("127.0.0.2", 2222, b"key-a").is_err());
    }

    #[test]
    fn wildcards() {
        assert!(glob(b"*.example.org", b"git.example.org"));
        assert!(glob(b"git?.example.org", b"git1.example.org"));
        assert!(!glob(b"*.example.org", b"example.org"));
    }
}
