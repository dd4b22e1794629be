//! A small KMIP client over mutual TLS: what the byte-level tests and the load generator
//! speak. Its connectors come from [`crate::https`].

use std::net::SocketAddr;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::https::ClientError;
use crate::kmip::{tag, version_item};
use crate::ttlv::{self, Item};

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
