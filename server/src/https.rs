//! Client connections over TLS: connectors from PEM files or bytes, and HTTP/1.1 over
//! them for the admin API — replicas to their peers and shadows, shadows to the replicas,
//! the operator and `shadowkeep up` to the replicas. The KMIP client of the tests and the
//! load generator ([`crate::client`]) connects with the same connectors.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{PrivateKeyDer, ServerName};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

use crate::ttlv;

/// The PEM files a client presents and trusts.
#[derive(Clone, Debug)]
pub struct ClientFiles {
    /// CA that signed the server certificate.
    pub ca: PathBuf,
    /// Client certificate; `None` connects without one (to test refusal).
    pub cert: Option<PathBuf>,
    /// Client key.
    pub key: Option<PathBuf>,
}

impl ClientFiles {
    /// The files a development server writes into its data directory.
    pub fn dev(dir: &Path) -> Self {
        Self {
            ca: dir.join(crate::dev::CA_CERT),
            cert: Some(dir.join(crate::dev::CLIENT_CERT)),
            key: Some(dir.join(crate::dev::CLIENT_KEY)),
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting, TLS or the stream failed.
    #[error("failed to talk to the server: {0}")]
    Io(#[from] std::io::Error),
    /// The files could not be loaded.
    #[error("failed to load client TLS files: {0}")]
    Tls(String),
    /// The server's answer is not TTLV.
    #[error("failed to decode the response: {0}")]
    Decode(#[from] ttlv::DecodeError),
}

/// Builds the TLS connector for `files`.
pub fn connector(files: &ClientFiles) -> Result<TlsConnector, ClientError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))
    };
    let ca = read(&files.ca)?;
    let identity = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        _ => None,
    };
    connector_from_pem(
        &ca,
        identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
    )
}

/// Builds a TLS connector trusting the CA certificates in `ca_pem` and, when given,
/// presenting the certificate chain and key of `identity` (both PEM).
pub fn connector_from_pem(
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> Result<TlsConnector, ClientError> {
    use rustls_pki_types::CertificateDer;

    let tls = |what: &str, e: &dyn std::fmt::Display| ClientError::Tls(format!("{what}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(ca.map_err(|e| tls("the CA", &e))?)
            .map_err(|e| tls("the CA", &e))?;
    }
    if roots.is_empty() {
        return Err(ClientError::Tls("the CA: no certificate".to_owned()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls("TLS versions", &e))?
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls("the client certificate", &e))?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| tls("the client key", &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls("the client certificate", &e))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// An open HTTP/1.1 connection to another server, for [`send`].
pub type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>;

/// The address this process calls other servers from, when it listens on one address.
static CALL_FROM: OnceLock<IpAddr> = OnceLock::new();

/// Makes this process call other servers from `ip` (its admin listener's address). Several
/// servers on one machine (`shadowkeep up` gives each its own loopback address) are told
/// apart by the address they call from: a replica learns where a shadow is from the
/// address it registers from. The first call wins; later ones change nothing.
pub fn call_from(ip: IpAddr) {
    let _ = CALL_FROM.set(ip);
}

/// A TCP connection to `address`, from [`call_from`]'s address when one is set.
async fn tcp_connect(address: &str) -> std::io::Result<TcpStream> {
    let Some(source) = CALL_FROM.get() else {
        return TcpStream::connect(address).await;
    };
    let mut last = None;
    for target in tokio::net::lookup_host(address).await? {
        if target.is_ipv4() != source.is_ipv4() {
            continue;
        }
        let socket = if source.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(*source, 0))?;
        match socket.connect(target).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("{address} has no address of the family of {source}"),
        )
    }))
}

/// Opens an HTTP/1.1 connection over TLS to `address` (`host:port`, the host checked
/// against the server certificate) and drives it in the background.
pub async fn http1_connect(address: &str, connector: &TlsConnector) -> Result<Sender, String> {
    let host = address
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .ok_or_else(|| format!("address {address:?} needs a port"))?;
    http1_connect_as(address, host, connector).await
}

/// Like [`http1_connect`], but checks the server's certificate for `server_name` rather
/// than the address's host (a replica reached by IP, say, known by its DNS name).
pub async fn http1_connect_as(
    address: &str,
    server_name: &str,
    connector: &TlsConnector,
) -> Result<Sender, String> {
    use std::time::Duration;

    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| format!("{server_name:?}: {e}"))?;
    let tcp = tokio::time::timeout(Duration::from_secs(5), tcp_connect(address))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_owned())?
        .map_err(|e| format!("TLS: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One HTTPS request on a fresh connection: the status and body.
pub async fn https(
    address: &str,
    connector: &TlsConnector,
    method: hyper::Method,
    path: &str,
    body: Vec<u8>,
) -> Result<(hyper::StatusCode, Vec<u8>), String> {
    let mut sender = http1_connect(address, connector).await?;
    send(&mut sender, address, method, path, body).await
}

/// Sends one request on an open connection (waiting at most 30 seconds for the answer)
/// and reads the whole response: the status and body.
pub async fn send(
    sender: &mut Sender,
    address: &str,
    method: hyper::Method,
    path: &str,
    body: Vec<u8>,
) -> Result<(hyper::StatusCode, Vec<u8>), String> {
    send_with(sender, address, method, path, body, &[]).await
}

/// Like [`send`], with extra request `headers`.
pub async fn send_with(
    sender: &mut Sender,
    address: &str,
    method: hyper::Method,
    path: &str,
    body: Vec<u8>,
    headers: &[(&'static str, String)],
) -> Result<(hyper::StatusCode, Vec<u8>), String> {
    use http_body_util::BodyExt as _;

    sender.ready().await.map_err(|e| e.to_string())?;
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, address);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request = request
        .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        sender.send_request(request),
    )
    .await
    .map_err(|_| "request timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, bytes.to_vec()))
}
