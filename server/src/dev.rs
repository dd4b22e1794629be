//! Development mode: everything a KMIP client needs to talk to a local server, made once
//! in a data directory — a CA, a server certificate for 127.0.0.1 and localhost, a client
//! certificate and key, a certificate for replicas to present to each other, and a KEK —
//! and a configuration that uses them.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use shadowkeep_api::keystore::Kek;
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
    #[error("failed to generate {what}: {source}")]
    Generate {
        /// Which certificate.
        what: &'static str,
        /// The cause.
        source: rcgen::Error,
    },
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
    })
}

fn generate(dir: &Path) -> Result<(), DevError> {
    let gen_err = |what| move |source| DevError::Generate { what, source };
    let ca_key = KeyPair::generate().map_err(gen_err("the CA key"))?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(gen_err("the CA"))?;
    ca.distinguished_name
        .push(DnType::CommonName, "shadowkeep dev CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(gen_err("the CA"))?;
    let issuer = Issuer::new(ca, ca_key);

    let leaf = |cn: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose, what: &'static str| {
        let key = KeyPair::generate().map_err(gen_err(what))?;
        let mut params = CertificateParams::new(sans).map_err(gen_err(what))?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).map_err(gen_err(what))?;
        Ok::<_, DevError>((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf(
        "localhost",
        vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
        ExtendedKeyUsagePurpose::ServerAuth,
        "the server certificate",
    )?;
    let (client_cert, client_key) = leaf(
        CLIENT_IDENTITY,
        vec![CLIENT_IDENTITY.to_owned()],
        ExtendedKeyUsagePurpose::ClientAuth,
        "the client certificate",
    )?;
    let (peer_cert, peer_key) = leaf(
        PEER_IDENTITY,
        vec![PEER_IDENTITY.to_owned()],
        ExtendedKeyUsagePurpose::ClientAuth,
        "the peer certificate",
    )?;
    write(dir, PEER_CERT, peer_cert.as_bytes(), false)?;
    write(dir, PEER_KEY, peer_key.as_bytes(), true)?;
    write(dir, SERVER_CERT, server_cert.as_bytes(), false)?;
    write(dir, SERVER_KEY, server_key.as_bytes(), true)?;
    write(dir, CLIENT_CERT, client_cert.as_bytes(), false)?;
    write(dir, CLIENT_KEY, client_key.as_bytes(), true)?;
    write(dir, KEK, Kek::generate().as_bytes(), true)?;
    // The CA last: its presence is what says the set is complete.
    write(dir, CA_CERT, ca_cert.pem().as_bytes(), false)
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
