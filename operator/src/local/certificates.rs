//! The certificates of a local estate, signed by each KeyManager's CA (made once by the
//! control core): a server certificate per key server carrying its loopback address, and a
//! client certificate for every certificate identity the KeyManager's DriveTables name.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use shadowkeep_api::pki::{Authority, Usage};
use shadowkeep_server::durable::{read_optional, write_atomically};

use crate::core::state::dir::DataDir;
use crate::core::state::{Fields, Item, Owner, State as _};

/// Why a certificate could not be made or kept.
#[derive(Debug, thiserror::Error)]
#[error("failed to {what}: {reason}")]
pub struct CertificateError {
    what: String,
    reason: String,
}

fn failed(what: impl Into<String>) -> impl FnOnce(String) -> CertificateError {
    let what = what.into();
    move |reason| CertificateError { what, reason }
}

/// The certificate and key files of one server or client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Files {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, mode 0600).
    pub key: PathBuf,
    /// The CA that signed it, which it trusts in turn.
    pub ca: PathBuf,
}

/// The CA of `owner`, as the control core stored it.
pub async fn authority(
    state: &DataDir,
    owner: &Owner,
) -> Result<(Authority, Fields), CertificateError> {
    let what = format!("read the CA of KeyManager {owner}");
    let stored = state
        .read(owner, Item::Ca)
        .await
        .map_err(|e| failed(&what)(e.to_string()))?
        .ok_or_else(|| failed(&what)("it was never made".to_owned()))?;
    let text =
        |field: &str| String::from_utf8(stored.get(field).to_vec()).map_err(|e| e.to_string());
    let authority = Authority::from_pem(
        &text("ca.crt").map_err(failed(&what))?,
        &text("ca.key").map_err(failed(&what))?,
    )
    .map_err(|e| failed(&what)(e.to_string()))?;
    Ok((authority, stored))
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, CertificateError> {
    write_atomically(dir, name, bytes)
        .map_err(|e| failed(format!("write {}", dir.join(name).display()))(e.to_string()))?;
    Ok(dir.join(name))
}

fn make_dir(dir: &Path) -> Result<(), CertificateError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| failed(format!("create {}", dir.display()))(e.to_string()))
}

/// The certificate of server `name` in `dir`, for `ip` and `identity` (the peer identity
/// its KeyManager's replicas accept): made again when the address, the identity or the CA
/// changed, kept otherwise.
pub fn server(
    dir: &Path,
    authority: &Authority,
    name: &str,
    ip: Ipv4Addr,
    identity: &str,
) -> Result<Files, CertificateError> {
    make_dir(dir)?;
    let issued_for = format!(
        "{ip}\n{identity}\n{}\n",
        hex::encode(Sha256::digest(authority.cert_pem().as_bytes()))
    );
    let files = Files {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
        ca: dir.join("ca.crt"),
    };
    let kept = read_optional(&dir.join("issued-for"))
        .map_err(|e| failed(format!("read {}", dir.display()))(e.to_string()))?;
    if kept.as_deref() == Some(issued_for.as_bytes())
        && files.cert.is_file()
        && files.key.is_file()
        && files.ca.is_file()
    {
        return Ok(files);
    }
    let leaf = authority
        .leaf(
            name,
            &[ip.to_string(), identity.to_owned()],
            Usage::ServerAndClient,
        )
        .map_err(|e| failed(format!("make the certificate of server {name}"))(e.to_string()))?;
    write(dir, "tls.key", leaf.key_pem.as_bytes())?;
    write(dir, "tls.crt", leaf.cert_pem.as_bytes())?;
    write(dir, "ca.crt", authority.cert_pem().as_bytes())?;
    write(dir, "issued-for", issued_for.as_bytes())?;
    Ok(files)
}

/// A file name for `identity`: itself when it is a plain name, else a digest of it.
fn file_stem(identity: &str) -> String {
    let plain = !identity.is_empty()
        && identity.len() <= 200
        && !identity.starts_with('.')
        && identity
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if plain {
        identity.to_owned()
    } else {
        format!(
            "id-{}",
            &hex::encode(Sha256::digest(identity.as_bytes()))[..16]
        )
    }
}

/// The client certificate for `identity` in `dir`, made once.
pub fn client(
    dir: &Path,
    authority: &Authority,
    identity: &str,
) -> Result<Files, CertificateError> {
    make_dir(dir)?;
    let stem = file_stem(identity);
    let files = Files {
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}-key.pem")),
        ca: dir.join("ca.pem"),
    };
    if !(files.cert.is_file() && files.key.is_file() && files.ca.is_file()) {
        let leaf = authority
            .leaf(identity, &[identity.to_owned()], Usage::Client)
            .map_err(|e| {
                failed(format!("make the client certificate {identity:?}"))(e.to_string())
            })?;
        write(dir, &format!("{stem}-key.pem"), leaf.key_pem.as_bytes())?;
        write(dir, &format!("{stem}.pem"), leaf.cert_pem.as_bytes())?;
        write(dir, "ca.pem", authority.cert_pem().as_bytes())?;
    }
    Ok(files)
}

/// How the control core reaches a KeyManager's servers: presenting its replica certificate
/// (`None` before it is made).
pub async fn connector(
    state: &DataDir,
    owner: &Owner,
) -> Result<Option<tokio_rustls::TlsConnector>, String> {
    let Some(tls) = state
        .read(owner, Item::Tls)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    shadowkeep_server::https::connector_from_pem(
        tls.get("ca.crt"),
        Some((tls.get("tls.crt"), tls.get("tls.key"))),
    )
    .map(Some)
    .map_err(|e| format!("the replica certificate of {owner}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_identities_get_safe_file_names() {
        assert_eq!(
            file_stem("library-a.tape.example.com"),
            "library-a.tape.example.com"
        );
        for odd in ["../x", "a/b", "", ".hidden", "CN=x, O=y"] {
            let stem = file_stem(odd);
            assert!(
                stem.starts_with("id-") && !stem.contains('/'),
                "{odd:?} → {stem}"
            );
        }
    }

    #[test]
    fn a_server_certificate_is_made_again_only_when_its_address_changes() {
        let dir = std::env::temp_dir().join(format!("sk-certs-{}", std::process::id()));
        let ca = Authority::generate("test").unwrap();
        let ip = Ipv4Addr::new(127, 0, 9, 2);
        let first = server(&dir, &ca, "a-0", ip, "peer").unwrap();
        let cert = std::fs::read(&first.cert).unwrap();
        server(&dir, &ca, "a-0", ip, "peer").unwrap();
        assert_eq!(std::fs::read(&first.cert).unwrap(), cert);
        server(&dir, &ca, "a-0", Ipv4Addr::new(127, 0, 9, 3), "peer").unwrap();
        assert_ne!(std::fs::read(&first.cert).unwrap(), cert);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
