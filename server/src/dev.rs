//! Development mode: everything a KMIP client needs to talk to a local server, made once
//! in a data directory — a CA, a server certificate for 127.0.0.1 and localhost, a client
//! certificate and key, a certificate for replicas to present to each other, and a KEK —
//! and a configuration that uses them.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use shadowkeep_api::keystore::Kek;
use shadowkeep_api::pki::{Authority, PkiError, Usage};
use shadowkeep_api::server_config::{DrivePolicy, KmipConfig, ServerConfig, TlsFiles};

/// File names in the data directory.
pub const CA_CERT: &str = "ca.pem";
/// The server certificate.
pub const SERVER_CERT: &str = "server.pem";
/// The server key.
pub const SERVER_KEY: &str = "server-key.pem";
/// The client certificate.
pub const CLIENT_CERT: &str = "client.pem";
/// The client key.
pub const CLIENT_KEY: &str = "client-key.pem";
/// The certificate replicas present to each other.
pub const PEER_CERT: &str = "peer.pem";
/// Its key.
pub const PEER_KEY: &str = "peer-key.pem";
/// The KEK.
pub const KEK: &str = "kek.bin";
/// The identity in the dev peer certificate.
pub const PEER_IDENTITY: &str = "shadowkeep-dev-peer";
/// The identity in the dev client certificate.
pub const CLIENT_IDENTITY: &str = "shadowkeep-dev-client";

/// Why the development files could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// Certificate generation failed.
    #[error(transparent)]
    Generate(#[from] PkiError),
    /// Writing a file failed.
    #[error("failed to write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Makes the development files in `dir` unless the CA already exists there (so clients
/// keep trusting the same CA across restarts), and returns a configuration using them.
pub fn prepare(dir: &Path, listen: SocketAddr) -> Result<ServerConfig, DevError> {
    std::fs::create_dir_all(dir).map_err(|source| DevError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    if !dir.join(CA_CERT).exists() {
        generate(dir)?;
    }
    Ok(ServerConfig {
        server_id: "dev".to_owned(),
        kmip: KmipConfig {
            listen,
            ..KmipConfig::default()
        },
        tls: TlsFiles {
            cert: dir.join(SERVER_CERT),
            key: dir.join(SERVER_KEY),
            client_ca: dir.join(CA_CERT),
        },
        data_dir: dir.join("store"),
        kek_file: dir.join(KEK),
        drives: DrivePolicy {
            accept_unknown: true,
            ..DrivePolicy::default()
        },
        replication: None,
        keystore_file: None,
        licence: None,
        shadow: None,
    })
}

fn generate(dir: &Path) -> Result<(), DevError> {
    let ca = Authority::generate("shadowkeep dev CA")?;
    let server = ca.leaf(
        "localhost",
        &["127.0.0.1".to_owned(), "localhost".to_owned()],
        Usage::Server,
    )?;
    let client = ca.leaf(
        CLIENT_IDENTITY,
        &[CLIENT_IDENTITY.to_owned()],
        Usage::Client,
    )?;
    let peer = ca.leaf(PEER_IDENTITY, &[PEER_IDENTITY.to_owned()], Usage::Client)?;
    let (server_cert, server_key) = (server.cert_pem, server.key_pem);
    let (client_cert, client_key) = (client.cert_pem, client.key_pem);
    let (peer_cert, peer_key) = (peer.cert_pem, peer.key_pem);
    write(dir, PEER_CERT, peer_cert.as_bytes(), false)?;
    write(dir, PEER_KEY, peer_key.as_bytes(), true)?;
    write(dir, SERVER_CERT, server_cert.as_bytes(), false)?;
    write(dir, SERVER_KEY, server_key.as_bytes(), true)?;
    write(dir, CLIENT_CERT, client_cert.as_bytes(), false)?;
    write(dir, CLIENT_KEY, client_key.as_bytes(), true)?;
    write(dir, KEK, Kek::generate().as_bytes(), true)?;
    // The CA last: its presence is what says the set is complete.
    write(dir, CA_CERT, ca.cert_pem().as_bytes(), false)
}

fn write(dir: &Path, name: &str, bytes: &[u8], secret: bool) -> Result<(), DevError> {
    use std::os::unix::fs::OpenOptionsExt as _;

    let path: PathBuf = dir.join(name);
    let err = |source| DevError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&path)
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)
}
