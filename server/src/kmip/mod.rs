//! KMIP messages: requests parsed from TTLV, responses built, batches run with the ID
//! Placeholder carried from item to item.
//!
//! - [`tag`] and [`enums`]: the protocol's numbers.
//! - [`attributes`]: how KMIP attributes map onto a keystore [`Key`](shadowkeep_api::keystore::Key),
//!   and the limits on a client's attributes (128-byte names, 64 instances and 256 KiB per
//!   object).
//! - [`ops`]: one function per operation.
//!
//! # Response limits
//!
//! A response is at most [`MAX_RESPONSE_LEN`] (1 MiB), or the request header's Maximum
//! Response Size when that is smaller. The limit is kept while the batch runs: each item
//! is answered only if it fits in what is left once every later item is allowed a failure
//! (at most [`MAX_FAILURE_LEN`] bytes: Result Messages are cut to [`MAX_RESULT_MESSAGE`]
//! bytes and Unique Batch Item IDs are at most [`MAX_BATCH_ITEM_ID`] bytes); an item that
//! does not fit fails with Response Too Large. Locate measures its answer before building
//! it, and an item that would change a key is refused, changing nothing, unless room is left
//! for its answer. A Locate without Maximum Items answers at most [`DEFAULT_LOCATE_ITEMS`]
//! (1,000) identifiers, newest first; from KMIP 1.3 the answer says how many keys matched
//! (Located Items), and Offset Items pages through the rest.

pub mod attributes;
pub mod enums;
pub mod ops;
pub mod tag;

use std::fmt;

use enums::{batch_error, operation, result_reason, result_status};

use crate::ttlv::{HEADER_LEN, Item, Tag, Value, padded_len};

/// Most items in one batch; more is refused as an invalid message.
pub const MAX_BATCH_ITEMS: usize = 32;

/// Longest Unique Batch Item ID accepted: it is echoed in the response.
pub const MAX_BATCH_ITEM_ID: usize = 64;

/// Longest Result Message sent; longer ones (naming a long field from the request) are cut.
pub const MAX_RESULT_MESSAGE: usize = 1024;

/// The largest failed batch item: operation, Unique Batch Item ID, status, reason and
/// message.
pub const MAX_FAILURE_LEN: usize =
    8 + 16 + (8 + MAX_BATCH_ITEM_ID) + 16 + 16 + (8 + MAX_RESULT_MESSAGE);

/// Largest response message sent: the largest request accepted, and what this project's
/// client reads.
pub const MAX_RESPONSE_LEN: usize = crate::ttlv::MAX_MESSAGE_LEN;

/// Identifiers a Locate answers with when the request gives no Maximum Items.
pub const DEFAULT_LOCATE_ITEMS: usize = 1000;

/// Protocol versions served, newest first (Discover Versions answers in this order).
pub const VERSIONS: [(i32, i32); 5] = [(1, 4), (1, 3), (1, 2), (1, 1), (1, 0)];

/// A failed operation: the KMIP result reason and a message for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmipError {
    /// KMIP Result Reason.
    pub reason: u32,
    /// Result Message: what was wrong, naming the field.
    pub message: String,
}

impl KmipError {
    /// An error with this reason and message, cut to [`MAX_RESULT_MESSAGE`] bytes.
    pub fn new(reason: u32, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_RESULT_MESSAGE {
            let mut end = MAX_RESULT_MESSAGE - '…'.len_utf8();
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        Self { reason, message }
    }

    /// An answer that does not fit in what is left of the response.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(result_reason::RESPONSE_TOO_LARGE, message)
    }

    /// A malformed or out-of-place field.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(result_reason::INVALID_FIELD, message)
    }

    /// A required field that is absent.
    pub fn missing(field: &str) -> Self {
        Self::new(result_reason::MISSING_DATA, format!("{field} is required"))
    }

    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self.reason {
            result_reason::ITEM_NOT_FOUND => "item_not_found",
            result_reason::RESPONSE_TOO_LARGE => "response_too_large",
            result_reason::INVALID_MESSAGE => "invalid_message",
            result_reason::OPERATION_NOT_SUPPORTED => "operation_not_supported",
            result_reason::MISSING_DATA => "missing_data",
            result_reason::INVALID_FIELD => "invalid_field",
            result_reason::FEATURE_NOT_SUPPORTED => "feature_not_supported",
            result_reason::PERMISSION_DENIED => "permission_denied",
            _ => "failure",
        }
    }
}

impl fmt::Display for KmipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (result reason {:#x})", self.message, self.reason)
    }
}

/// One item of a request batch.
#[derive(Clone, Debug)]
pub struct BatchItem {
    /// The operation.
    pub operation: u32,
    /// Echoed in the response so the client can match items.
    pub unique_id: Option<Vec<u8>>,
    /// The request payload (absent payloads are allowed, e.g. a Get on the ID Placeholder).
    pub payload: Item,
}

/// A parsed request message.
#[derive(Clone, Debug)]
pub struct Request {
    /// The protocol version of the request header.
    pub version: (i32, i32),
    /// Keep going after a failed item (Continue), or stop (Stop and Undo; undo is not
    /// offered: a durable key is never taken back).
    pub continue_on_error: bool,
    /// A Device credential's serial number, when the header carries one.
    pub device_serial: Option<String>,
    /// The largest response the client takes (Maximum Response Size), when it says.
    pub max_response_size: Option<usize>,
    /// The batch.
    pub items: Vec<BatchItem>,
}

/// Parses a request message, or says why it is not one.
pub fn parse_request(message: &Item) -> Result<Request, KmipError> {
    let invalid = |m: &str| KmipError::new(result_reason::INVALID_MESSAGE, m);
    if message.tag != tag::REQUEST_MESSAGE {
        return Err(invalid("expected a Request Message"));
    }
    let header = message
        .child(tag::REQUEST_HEADER)
        .ok_or_else(|| invalid("Request Header is required"))?;
    let version = header
        .child(tag::PROTOCOL_VERSION)
        .and_then(parse_version)
        .ok_or_else(|| invalid("Request Header needs a Protocol Version"))?;
    let declared = header
        .child(tag::BATCH_COUNT)
        .and_then(Item::as_int)
        .ok_or_else(|| invalid("Request Header needs a Batch Count"))?;
    let max_response_size = match header.child(tag::MAXIMUM_RESPONSE_SIZE) {
        None => None,
        Some(size) => Some(
            size.as_int()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid("Maximum Response Size must be a positive Integer"))?,
        ),
    };
    let continue_on_error = header
        .child(tag::BATCH_ERROR_CONTINUATION_OPTION)
        .and_then(Item::as_enum)
        == Some(batch_error::CONTINUE);
    let device_serial = header
        .child(tag::AUTHENTICATION)
        .and_then(|a| a.child(tag::CREDENTIAL))
        .filter(|c| {
            c.child(tag::CREDENTIAL_TYPE).and_then(Item::as_enum) == Some(enums::credential::DEVICE)
        })
        .and_then(|c| c.child(tag::CREDENTIAL_VALUE))
        .and_then(|v| v.child(tag::DEVICE_SERIAL_NUMBER))
        .and_then(Item::as_text)
        .map(str::to_owned);
    let mut items = Vec::new();
    for item in message.children_with(tag::BATCH_ITEM) {
        if items.len() == MAX_BATCH_ITEMS {
            return Err(invalid("a batch holds at most 32 items"));
        }
        let operation = item
            .child(tag::OPERATION)
            .and_then(Item::as_enum)
            .ok_or_else(|| invalid("every Batch Item needs an Operation"))?;
        let unique_id = item
            .child(tag::UNIQUE_BATCH_ITEM_ID)
            .and_then(Item::as_bytes)
            .map(<[u8]>::to_vec);
        if let Some(id) = unique_id.as_ref().filter(|id| id.len() > MAX_BATCH_ITEM_ID) {
            return Err(invalid(&format!(
                "Unique Batch Item ID is {} bytes long, over the limit of {MAX_BATCH_ITEM_ID} bytes",
                id.len()
            )));
        }
        let payload = item
            .child(tag::REQUEST_PAYLOAD)
            .cloned()
            .unwrap_or_else(|| Item::structure(tag::REQUEST_PAYLOAD, Vec::new()));
        items.push(BatchItem {
            operation,
            unique_id,
            payload,
        });
    }
    if items.is_empty() {
        return Err(invalid("a request needs at least one Batch Item"));
    }
    if usize::try_from(declared).ok() != Some(items.len()) {
        return Err(invalid(&format!(
            "Batch Count says {declared} but the message holds {} Batch Items",
            items.len()
        )));
    }
    Ok(Request {
        version,
        continue_on_error,
        device_serial,
        max_response_size,
        items,
    })
}

/// Reads a Protocol Version structure.
pub fn parse_version(item: &Item) -> Option<(i32, i32)> {
    Some((
        item.child(tag::PROTOCOL_VERSION_MAJOR)?.as_int()?,
        item.child(tag::PROTOCOL_VERSION_MINOR)?.as_int()?,
    ))
}

/// Encodes a Protocol Version structure.
pub fn version_item((major, minor): (i32, i32)) -> Item {
    Item::structure(
        tag::PROTOCOL_VERSION,
        vec![
            Item::integer(tag::PROTOCOL_VERSION_MAJOR, major),
            Item::integer(tag::PROTOCOL_VERSION_MINOR, minor),
        ],
    )
}

/// The outcome of one batch item.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The operation, echoed.
    pub operation: Option<u32>,
    /// The client's batch item id, echoed.
    pub unique_id: Option<Vec<u8>>,
    /// The response payload, or why it failed.
    pub result: Result<Vec<Item>, KmipError>,
}

impl Outcome {
    /// The size of this outcome's Batch Item in the response [`response`] builds, computed
    /// without building it.
    pub fn encoded_len(&self) -> usize {
        // An Enumeration takes its header and 4 bytes padded to 8.
        let enumeration = HEADER_LEN + 8;
        let bytes = |len: usize| HEADER_LEN + padded_len(len);
        let head = HEADER_LEN
            + self.operation.map_or(0, |_| enumeration)
            + self.unique_id.as_ref().map_or(0, |id| bytes(id.len()))
            + enumeration;
        head + match &self.result {
            Ok(payload) => HEADER_LEN + payload.iter().map(Item::encoded_len).sum::<usize>(),
            Err(e) => enumeration + bytes(e.message.len()),
        }
    }

    /// The size of a Batch Item answering `payload` for `item`: what [`Outcome::encoded_len`]
    /// gives for a success, before the payload is known.
    pub fn success_overhead(item: &BatchItem) -> usize {
        Outcome {
            operation: Some(item.operation),
            unique_id: item.unique_id.clone(),
            result: Ok(Vec::new()),
        }
        .encoded_len()
    }
}

/// The size of a response message without its batch items.
pub fn response_overhead(version: (i32, i32)) -> usize {
    response(version, 0, Vec::new()).encoded_len()
}

/// Builds a response message.
pub fn response(version: (i32, i32), now: i64, outcomes: Vec<Outcome>) -> Item {
    let count = i32::try_from(outcomes.len()).unwrap_or(i32::MAX);
    let header = Item::structure(
        tag::RESPONSE_HEADER,
        vec![
            version_item(version),
            Item::date_time(tag::TIME_STAMP, now),
            Item::integer(tag::BATCH_COUNT, count),
        ],
    );
    let mut children = vec![header];
    for outcome in outcomes {
        let mut item = Vec::new();
        if let Some(op) = outcome.operation {
            item.push(Item::enumeration(tag::OPERATION, op));
        }
        if let Some(id) = outcome.unique_id {
            item.push(Item::bytes(tag::UNIQUE_BATCH_ITEM_ID, id));
        }
        match outcome.result {
            Ok(payload) => {
                item.push(Item::enumeration(
                    tag::RESULT_STATUS,
                    result_status::SUCCESS,
                ));
                item.push(Item::structure(tag::RESPONSE_PAYLOAD, payload));
            }
            Err(e) => {
                item.push(Item::enumeration(
                    tag::RESULT_STATUS,
                    result_status::OPERATION_FAILED,
                ));
                item.push(Item::enumeration(tag::RESULT_REASON, e.reason));
                item.push(Item::text(tag::RESULT_MESSAGE, e.message));
            }
        }
        children.push(Item::structure(tag::BATCH_ITEM, item));
    }
    Item::structure(tag::RESPONSE_MESSAGE, children)
}

/// A response to a message that could not be parsed at all: one failed item.
pub fn error_response(now: i64, error: KmipError) -> Item {
    response(
        VERSIONS[VERSIONS.len() - 1],
        now,
        vec![Outcome {
            operation: None,
            unique_id: None,
            result: Err(error),
        }],
    )
}

/// Whether this server speaks `version`.
pub fn supported(version: (i32, i32)) -> bool {
    VERSIONS.contains(&version)
}

/// The operation's name, for logs.
pub fn operation_name(op: u32) -> &'static str {
    operation::name(op)
}

/// A text field of a payload.
pub fn text_field<'a>(
    payload: &'a Item,
    tag: Tag,
    name: &str,
) -> Result<Option<&'a str>, KmipError> {
    match payload.child(tag) {
        None => Ok(None),
        Some(item) => item
            .as_text()
            .map(Some)
            .ok_or_else(|| KmipError::invalid(format!("{name} must be a Text String"))),
    }
}

/// An enumeration field of a payload.
pub fn enum_field(payload: &Item, tag: Tag, name: &str) -> Result<Option<u32>, KmipError> {
    match payload.child(tag) {
        None => Ok(None),
        Some(item) => item
            .as_enum()
            .map(Some)
            .ok_or_else(|| KmipError::invalid(format!("{name} must be an Enumeration"))),
    }
}

/// An integer field of a payload.
pub fn int_field(payload: &Item, tag: Tag, name: &str) -> Result<Option<i32>, KmipError> {
    match payload.child(tag) {
        None => Ok(None),
        Some(item) => item
            .as_int()
            .map(Some)
            .ok_or_else(|| KmipError::invalid(format!("{name} must be an Integer"))),
    }
}

/// Whether `value` is a structure.
pub fn is_structure(item: &Item) -> bool {
    matches!(item.value, Value::Structure(_))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_outcomes_encoded_len_is_the_size_of_its_batch_item() {
        let id = Item::text(
            tag::UNIQUE_IDENTIFIER,
            "0b1c2d3e-0000-4000-8000-000000000000",
        );
        let outcomes = [
            Outcome {
                operation: Some(operation::LOCATE),
                unique_id: Some(vec![1, 2, 3]),
                result: Ok(vec![id.clone(), id]),
            },
            Outcome {
                operation: Some(operation::GET),
                unique_id: None,
                result: Ok(Vec::new()),
            },
            Outcome {
                operation: Some(operation::ADD_ATTRIBUTE),
                unique_id: Some(vec![9; MAX_BATCH_ITEM_ID]),
                result: Err(KmipError::invalid("x".repeat(5000))),
            },
        ];
        for outcome in outcomes {
            let alone = response((1, 4), 0, vec![outcome.clone()]).encoded_len();
            assert_eq!(alone - response_overhead((1, 4)), outcome.encoded_len());
            if outcome.result.is_err() {
                assert_eq!(outcome.encoded_len(), MAX_FAILURE_LEN);
            }
        }
    }

    #[test]
    fn result_messages_are_cut_at_a_character_boundary() {
        let e = KmipError::invalid("é".repeat(MAX_RESULT_MESSAGE));
        assert!(e.message.len() <= MAX_RESULT_MESSAGE);
        assert!(e.message.ends_with('…'));
        let short = KmipError::invalid("short");
        assert_eq!(short.message, "short");
    }
}
