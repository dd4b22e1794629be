//! A small KMIP client over mutual TLS: what the byte-level tests and the load generator
//! speak, and what a later replica-to-replica check can reuse.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::kmip::{tag, version_item};
use crate::ttlv::{self, Item};

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

/// One KMIP connection.
pub struct KmipClient {
    stream: TlsStream<TcpStream>,
}

impl std::fmt::Debug for KmipClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmipClient").finish_non_exhaustive()
    }
}

impl KmipClient {
    /// Connects and completes the TLS handshake (the server name is checked against the
    /// server certificate; `127.0.0.1` for a development server).
    pub async fn connect(addr: SocketAddr, connector: &TlsConnector) -> Result<Self, ClientError> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::IpAddress(addr.ip().into());
        let mut stream = connector.connect(name, tcp).await?;
        // With TLS 1.3 a refused client certificate only shows on the first read; a flush
        // makes the handshake complete here for both versions.
        stream.flush().await?;
        Ok(Self { stream })
    }

    /// Sends raw bytes and reads one framed response.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<Item, ClientError> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        self.read_response().await
    }

    /// Reads one framed response.
    pub async fn read_response(&mut self) -> Result<Item, ClientError> {
        let mut header = [0u8; ttlv::HEADER_LEN];
        self.stream.read_exact(&mut header).await?;
        let (_, _, len) = ttlv::read_header(&header)?;
        let len = usize::try_from(len).map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut bytes = vec![0u8; ttlv::HEADER_LEN + len];
        bytes[..ttlv::HEADER_LEN].copy_from_slice(&header);
        self.stream
            .read_exact(&mut bytes[ttlv::HEADER_LEN..])
            .await?;
        Ok(ttlv::decode(&bytes)?)
    }

    /// Sends a request message and returns the response message.
    pub async fn call(&mut self, request: &Item) -> Result<Item, ClientError> {
        self.send_raw(&ttlv::encode(request)).await
    }

    /// Whether the server has closed the connection (reads end of stream or an error).
    pub async fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        !matches!(self.stream.read(&mut byte).await, Ok(n) if n > 0)
    }
}

/// Opens an HTTP/1.1 connection over TLS to `address` (`host:port`, the host checked
/// against the server certificate) and drives it in the background.
pub async fn http1_connect(
    address: &str,
    connector: &TlsConnector,
) -> Result<hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>, String>
{
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
) -> Result<hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>, String>
{
    use std::time::Duration;

    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| format!("{server_name:?}: {e}"))?;
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(address))
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
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>,
    address: &str,
    method: hyper::Method,
    path: &str,
    body: Vec<u8>,
) -> Result<(hyper::StatusCode, Vec<u8>), String> {
    send_with(sender, address, method, path, body, &[]).await
}

/// Like [`send`], with extra request `headers`.
pub async fn send_with(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>,
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

/// Builds a request message of KMIP `version` with one batch item per `(operation, payload)`.
pub fn request(version: (i32, i32), items: Vec<(u32, Vec<Item>)>) -> Item {
    let count = i32::try_from(items.len()).unwrap_or(i32::MAX);
    let mut children = vec![Item::structure(
        tag::REQUEST_HEADER,
        vec![
            version_item(version),
            Item::integer(tag::BATCH_COUNT, count),
        ],
    )];
    for (op, payload) in items {
        children.push(Item::structure(
            tag::BATCH_ITEM,
            vec![
                Item::enumeration(tag::OPERATION, op),
                Item::structure(tag::REQUEST_PAYLOAD, payload),
            ],
        ));
    }
    Item::structure(tag::REQUEST_MESSAGE, children)
}

/// An Attribute structure.
pub fn attribute(name: &str, value: Item) -> Item {
    let value = Item::new(tag::ATTRIBUTE_VALUE, value.value);
    Item::structure(
        tag::ATTRIBUTE,
        vec![Item::text(tag::ATTRIBUTE_NAME, name), value],
    )
}

/// The payload of a Create for an AES key of `bits`, with more template attributes.
pub fn create_aes(bits: i32, more: Vec<Item>) -> Vec<Item> {
    use crate::kmip::enums::{algorithm, object_type};
    let mut attrs = vec![
        attribute(
            "Cryptographic Algorithm",
            Item::enumeration(tag::ATTRIBUTE_VALUE, algorithm::AES),
        ),
        attribute(
            "Cryptographic Length",
            Item::integer(tag::ATTRIBUTE_VALUE, bits),
        ),
    ];
    attrs.extend(more);
    vec![
        Item::enumeration(tag::OBJECT_TYPE, object_type::SYMMETRIC_KEY),
        Item::structure(tag::TEMPLATE_ATTRIBUTE, attrs),
    ]
}

/// A Name attribute value.
pub fn name(value: &str) -> Item {
    Item::structure(
        tag::ATTRIBUTE_VALUE,
        vec![
            Item::text(tag::NAME_VALUE, value),
            Item::enumeration(tag::NAME_TYPE, 1),
        ],
    )
}

/// An Application Specific Information attribute value.
pub fn application_specific(namespace: &str, data: &str) -> Item {
    Item::structure(
        tag::ATTRIBUTE_VALUE,
        vec![
            Item::text(tag::APPLICATION_NAMESPACE, namespace),
            Item::text(tag::APPLICATION_DATA, data),
        ],
    )
}

/// The batch items of a response message.
pub fn batch_items(response: &Item) -> Vec<&Item> {
    response.children_with(tag::BATCH_ITEM).collect()
}

/// Result Status of a response batch item (0 success).
pub fn status(item: &Item) -> Option<u32> {
    item.child(tag::RESULT_STATUS).and_then(Item::as_enum)
}

/// Result Reason of a failed batch item.
pub fn reason(item: &Item) -> Option<u32> {
    item.child(tag::RESULT_REASON).and_then(Item::as_enum)
}

/// Result Message of a failed batch item.
pub fn message(item: &Item) -> Option<&str> {
    item.child(tag::RESULT_MESSAGE).and_then(Item::as_text)
}

/// The response payload of a batch item.
pub fn payload(item: &Item) -> Option<&Item> {
    item.child(tag::RESPONSE_PAYLOAD)
}

/// The Unique Identifiers in a payload.
pub fn uids(payload: &Item) -> Vec<String> {
    payload
        .children_with(tag::UNIQUE_IDENTIFIER)
        .filter_map(Item::as_text)
        .map(str::to_owned)
        .collect()
}

/// The key material in a Get response payload.
pub fn material(payload: &Item) -> Option<&[u8]> {
    payload
        .child(tag::SYMMETRIC_KEY)?
        .child(tag::KEY_BLOCK)?
        .child(tag::KEY_VALUE)?
        .child(tag::KEY_MATERIAL)?
        .as_bytes()
}
