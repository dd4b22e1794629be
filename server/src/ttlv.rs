//! KMIP TTLV: the binary encoding of the OASIS Key Management Interoperability Protocol
//! (KMIP 1.0–1.4 and 2.0).
//!
//! Every KMIP message is a single *item* (usually a Request Message or Response Message
//! structure). An item is laid out as
//!
//! ```text
//! +-----------+--------+-------------+---------------------------------+
//! | tag       | type   | length      | value, zero-padded to 8 bytes   |
//! | 3 bytes   | 1 byte | 4 bytes     | `length` bytes + 0..=7 padding  |
//! +-----------+--------+-------------+---------------------------------+
//! ```
//!
//! All integers are big-endian. The tag names the field (for example `0x420078` is a
//! Request Message), the type byte says how to read the value, and the length counts the
//! value's bytes *without* the padding. The types are:
//!
//! | byte   | type               | value                                                 |
//! |--------|--------------------|-------------------------------------------------------|
//! | `0x01` | Structure          | the concatenated encodings of its child items         |
//! | `0x02` | Integer            | `i32`, length 4, padded to 8                          |
//! | `0x03` | Long Integer       | `i64`, length 8                                       |
//! | `0x04` | Big Integer        | two's-complement bytes, length a positive multiple of 8 |
//! | `0x05` | Enumeration        | `u32`, length 4, padded to 8                          |
//! | `0x06` | Boolean            | `u64` that is 0 or 1, length 8                        |
//! | `0x07` | Text String        | UTF-8, any length, padded                             |
//! | `0x08` | Byte String        | any bytes, any length, padded                         |
//! | `0x09` | Date-Time          | `i64` seconds since the Unix epoch, length 8          |
//! | `0x0A` | Interval           | `u32` seconds, length 4, padded to 8                  |
//! | `0x0B` | Date-Time Extended | `i64` microseconds since the Unix epoch, length 8 (KMIP 2.0) |
//!
//! Because every item's encoded size is a multiple of 8, so is every structure's length.
//!
//! The decoder is strict and is written for hostile input: it accepts exactly one
//! canonical encoding of each [`Item`] (so `encode(&decode(b)?) == b` for every accepted
//! `b`), never panics, never trusts a declared length before checking it against the bytes
//! actually present, refuses messages larger than [`MAX_MESSAGE_LEN`] and structures nested
//! deeper than [`MAX_DEPTH`]. Every error says at which byte it was found; see
//! [`DecodeError`].
//!
//! For framing on a stream, read 8 bytes, pass them to [`read_header`] to learn (and
//! bound) the value length, read [`padded_len`] of it more, then [`decode`] the whole
//! message.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Largest message the server accepts (1 MiB).
pub const MAX_MESSAGE_LEN: usize = 1 << 20;

/// Deepest nesting of structures accepted: a top-level structure counts as one level, so
/// sixteen structures, each inside the previous one, decode and seventeen do not.
pub const MAX_DEPTH: usize = 16;

/// Size of an item's header: 3 tag bytes, 1 type byte, 4 length bytes.
pub const HEADER_LEN: usize = 8;

/// The item type bytes of the TTLV encoding.
pub mod item_type {
    /// Structure: the value is a sequence of child items.
    pub const STRUCTURE: u8 = 0x01;
    /// Integer: a signed 32-bit integer.
    pub const INTEGER: u8 = 0x02;
    /// Long Integer: a signed 64-bit integer.
    pub const LONG_INTEGER: u8 = 0x03;
    /// Big Integer: a two's-complement big-endian integer of a multiple of 8 bytes.
    pub const BIG_INTEGER: u8 = 0x04;
    /// Enumeration: an unsigned 32-bit value.
    pub const ENUMERATION: u8 = 0x05;
    /// Boolean: a 64-bit value that is 0 or 1.
    pub const BOOLEAN: u8 = 0x06;
    /// Text String: UTF-8 text.
    pub const TEXT_STRING: u8 = 0x07;
    /// Byte String: arbitrary bytes.
    pub const BYTE_STRING: u8 = 0x08;
    /// Date-Time: signed 64-bit seconds since the Unix epoch.
    pub const DATE_TIME: u8 = 0x09;
    /// Interval: unsigned 32-bit seconds.
    pub const INTERVAL: u8 = 0x0A;
    /// Date-Time Extended (KMIP 2.0): signed 64-bit microseconds since the Unix epoch.
    pub const DATE_TIME_EXTENDED: u8 = 0x0B;
}

/// The KMIP name of an item type byte (`"Integer"`, `"Text String"`, …), or `None` if the
/// byte is not a known type.
pub const fn type_name(item_type: u8) -> Option<&'static str> {
    match item_type {
        item_type::STRUCTURE => Some("Structure"),
        item_type::INTEGER => Some("Integer"),
        item_type::LONG_INTEGER => Some("Long Integer"),
        item_type::BIG_INTEGER => Some("Big Integer"),
        item_type::ENUMERATION => Some("Enumeration"),
        item_type::BOOLEAN => Some("Boolean"),
        item_type::TEXT_STRING => Some("Text String"),
        item_type::BYTE_STRING => Some("Byte String"),
        item_type::DATE_TIME => Some("Date-Time"),
        item_type::INTERVAL => Some("Interval"),
        item_type::DATE_TIME_EXTENDED => Some("Date-Time Extended"),
        _ => None,
    }
}

/// `len` rounded up to the next multiple of 8: how many bytes a value of `len` bytes
/// occupies once padded. Saturates at the largest multiple of 8 that fits in `usize`.
pub const fn padded_len(len: usize) -> usize {
    match len.checked_next_multiple_of(8) {
        Some(n) => n,
        None => usize::MAX - 7,
    }
}

/// A KMIP tag: the 3-byte field identifier at the start of every item.
///
/// Only the low 24 bits are encoded; the high byte should be zero (a tag built with
/// [`Tag::new`] always is). Displays as hex, e.g. `0x420078`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Tag(pub u32);

impl Tag {
    /// A tag from its numeric value, keeping only the low 24 bits.
    pub const fn new(value: u32) -> Self {
        Self(value & 0x00FF_FFFF)
    }

    /// The three bytes that encode this tag (the low 24 bits, big-endian).
    pub const fn to_bytes(self) -> [u8; 3] {
        let [_, a, b, c] = self.0.to_be_bytes();
        [a, b, c]
    }

    /// The tag encoded by three big-endian bytes.
    pub const fn from_bytes(bytes: [u8; 3]) -> Self {
        let [a, b, c] = bytes;
        Self(u32::from_be_bytes([0, a, b, c]))
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:06X}", self.0)
    }
}

/// The value of an item, one variant per TTLV type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    /// A structure: its child items in order.
    Structure(Vec<Item>),
    /// A signed 32-bit integer.
    Integer(i32),
    /// A signed 64-bit integer.
    LongInteger(i64),
    /// A two's-complement big-endian integer. Decoded values are always a non-zero multiple
    /// of 8 bytes long, exactly as on the wire; when encoding, other lengths are
    /// sign-extended on the left to a multiple of 8 (an empty vector encodes as zero).
    BigInteger(Vec<u8>),
    /// An enumeration value (or a bit mask sent as an enumeration).
    Enumeration(u32),
    /// A boolean.
    Boolean(bool),
    /// UTF-8 text.
    TextString(String),
    /// Arbitrary bytes.
    ByteString(Vec<u8>),
    /// Seconds since the Unix epoch.
    DateTime(i64),
    /// A number of seconds.
    Interval(u32),
    /// Microseconds since the Unix epoch (KMIP 2.0).
    DateTimeExtended(i64),
}

impl Value {
    /// The type byte that encodes this value (one of the [`item_type`] constants).
    pub const fn item_type(&self) -> u8 {
        match self {
            Value::Structure(_) => item_type::STRUCTURE,
            Value::Integer(_) => item_type::INTEGER,
            Value::LongInteger(_) => item_type::LONG_INTEGER,
            Value::BigInteger(_) => item_type::BIG_INTEGER,
            Value::Enumeration(_) => item_type::ENUMERATION,
            Value::Boolean(_) => item_type::BOOLEAN,
            Value::TextString(_) => item_type::TEXT_STRING,
            Value::ByteString(_) => item_type::BYTE_STRING,
            Value::DateTime(_) => item_type::DATE_TIME,
            Value::Interval(_) => item_type::INTERVAL,
            Value::DateTimeExtended(_) => item_type::DATE_TIME_EXTENDED,
        }
    }

    /// The KMIP name of this value's type, e.g. `"Text String"`.
    pub const fn type_name(&self) -> &'static str {
        match type_name(self.item_type()) {
            Some(name) => name,
            None => "Unknown",
        }
    }

    /// The length field this value encodes with: its byte count without padding.
    fn value_len(&self) -> usize {
        match self {
            Value::Structure(children) => children.iter().map(Item::encoded_len).sum(),
            Value::Integer(_) | Value::Enumeration(_) | Value::Interval(_) => 4,
            Value::LongInteger(_)
            | Value::Boolean(_)
            | Value::DateTime(_)
            | Value::DateTimeExtended(_) => 8,
            Value::BigInteger(b) => big_integer_len(b.len()),
            Value::TextString(s) => s.len(),
            Value::ByteString(b) => b.len(),
        }
    }
}

/// The encoded length of a big integer of `n` significant bytes: at least 8, a multiple
/// of 8.
fn big_integer_len(n: usize) -> usize {
    padded_len(n).max(8)
}

/// One TTLV item: a tag and a typed value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The field this item is.
    pub tag: Tag,
    /// Its value.
    pub value: Value,
}

impl Item {
    /// An item from a tag and a value.
    pub fn new(tag: Tag, value: Value) -> Self {
        Self { tag, value }
    }

    /// A Structure item with these children.
    pub fn structure(tag: Tag, children: Vec<Item>) -> Self {
        Self::new(tag, Value::Structure(children))
    }

    /// A Text String item.
    pub fn text(tag: Tag, s: impl Into<String>) -> Self {
        Self::new(tag, Value::TextString(s.into()))
    }

    /// An Enumeration item.
    pub fn enumeration(tag: Tag, v: u32) -> Self {
        Self::new(tag, Value::Enumeration(v))
    }

    /// An Integer item.
    pub fn integer(tag: Tag, v: i32) -> Self {
        Self::new(tag, Value::Integer(v))
    }

    /// A Long Integer item.
    pub fn long_integer(tag: Tag, v: i64) -> Self {
        Self::new(tag, Value::LongInteger(v))
    }

    /// A Big Integer item from two's-complement big-endian bytes.
    pub fn big_integer(tag: Tag, v: impl Into<Vec<u8>>) -> Self {
        Self::new(tag, Value::BigInteger(v.into()))
    }

    /// A Byte String item.
    pub fn bytes(tag: Tag, v: impl Into<Vec<u8>>) -> Self {
        Self::new(tag, Value::ByteString(v.into()))
    }

    /// A Date-Time item (seconds since the Unix epoch).
    pub fn date_time(tag: Tag, secs: i64) -> Self {
        Self::new(tag, Value::DateTime(secs))
    }

    /// A Date-Time Extended item (microseconds since the Unix epoch).
    pub fn date_time_extended(tag: Tag, micros: i64) -> Self {
        Self::new(tag, Value::DateTimeExtended(micros))
    }

    /// An Interval item (seconds).
    pub fn interval(tag: Tag, secs: u32) -> Self {
        Self::new(tag, Value::Interval(secs))
    }

    /// A Boolean item.
    pub fn boolean(tag: Tag, v: bool) -> Self {
        Self::new(tag, Value::Boolean(v))
    }

    /// Children of a structure (empty slice for other types).
    pub fn children(&self) -> &[Item] {
        match &self.value {
            Value::Structure(children) => children,
            _ => &[],
        }
    }

    /// First child with this tag.
    pub fn child(&self, tag: Tag) -> Option<&Item> {
        self.children().iter().find(|c| c.tag == tag)
    }

    /// All children with this tag, in order.
    pub fn children_with(&self, tag: Tag) -> impl Iterator<Item = &Item> {
        self.children().iter().filter(move |c| c.tag == tag)
    }

    /// The text of a Text String item.
    pub fn as_text(&self) -> Option<&str> {
        match &self.value {
            Value::TextString(s) => Some(s),
            _ => None,
        }
    }

    /// The value of an Enumeration item.
    pub fn as_enum(&self) -> Option<u32> {
        match self.value {
            Value::Enumeration(v) => Some(v),
            _ => None,
        }
    }

    /// The value of an Integer item.
    pub fn as_int(&self) -> Option<i32> {
        match self.value {
            Value::Integer(v) => Some(v),
            _ => None,
        }
    }

    /// The value of a Long Integer item.
    pub fn as_long(&self) -> Option<i64> {
        match self.value {
            Value::LongInteger(v) => Some(v),
            _ => None,
        }
    }

    /// The two's-complement big-endian bytes of a Big Integer item.
    pub fn as_big_integer(&self) -> Option<&[u8]> {
        match &self.value {
            Value::BigInteger(v) => Some(v),
            _ => None,
        }
    }

    /// The bytes of a Byte String item.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match &self.value {
            Value::ByteString(v) => Some(v),
            _ => None,
        }
    }

    /// The value of a Boolean item.
    pub fn as_bool(&self) -> Option<bool> {
        match self.value {
            Value::Boolean(v) => Some(v),
            _ => None,
        }
    }

    /// The seconds since the Unix epoch of a Date-Time item.
    pub fn as_date_time(&self) -> Option<i64> {
        match self.value {
            Value::DateTime(v) => Some(v),
            _ => None,
        }
    }

    /// The microseconds since the Unix epoch of a Date-Time Extended item.
    pub fn as_date_time_extended(&self) -> Option<i64> {
        match self.value {
            Value::DateTimeExtended(v) => Some(v),
            _ => None,
        }
    }

    /// The seconds of an Interval item.
    pub fn as_interval(&self) -> Option<u32> {
        match self.value {
            Value::Interval(v) => Some(v),
            _ => None,
        }
    }

    /// Encoded length including the 8-byte header and padding.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN.saturating_add(padded_len(self.value.value_len()))
    }
}

/// Why a byte sequence is not a valid TTLV message.
///
/// Every `offset` is a byte position in the input given to [`decode`] (for
/// [`read_header`], in its 8-byte header).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ends before the item starting at `offset` does: it needs `needed` bytes
    /// from there (header, value and padding) and only `available` are left.
    #[error(
        "failed to decode TTLV at byte {offset}: truncated item, needs {needed} bytes but only {available} remain"
    )]
    Truncated {
        /// Where the incomplete item starts.
        offset: usize,
        /// Bytes the item needs from `offset`.
        needed: usize,
        /// Bytes present from `offset`.
        available: usize,
    },
    /// The item at `offset` declares a length its type does not allow (for example an
    /// Integer that is not 4 bytes, a Big Integer that is not a positive multiple of 8, or
    /// a Structure that is not a multiple of 8).
    #[error(
        "failed to decode TTLV at byte {offset}: item {tag} of type {item_type:#04x} ({kind}) has invalid length {len}",
        kind = type_name(*item_type).unwrap_or("unknown")
    )]
    BadLength {
        /// Where the item starts.
        offset: usize,
        /// The item's tag.
        tag: Tag,
        /// The item's type byte.
        item_type: u8,
        /// The length it declares.
        len: u32,
    },
    /// The item at `offset` has a type byte that is not a TTLV type.
    #[error("failed to decode TTLV at byte {offset}: item {tag} has unknown type {item_type:#04x}")]
    UnknownType {
        /// Where the item starts.
        offset: usize,
        /// The item's tag.
        tag: Tag,
        /// The unknown type byte.
        item_type: u8,
    },
    /// The padding after the value of item `tag` is not all zero; `offset` is the first
    /// non-zero padding byte.
    #[error("failed to decode TTLV at byte {offset}: non-zero padding after item {tag}")]
    NonZeroPadding {
        /// The first non-zero padding byte.
        offset: usize,
        /// The padded item's tag.
        tag: Tag,
    },
    /// The Text String item `tag` is not valid UTF-8; `offset` is the first byte that is
    /// not part of a valid UTF-8 sequence.
    #[error("failed to decode TTLV at byte {offset}: text string {tag} is not valid UTF-8")]
    InvalidUtf8 {
        /// The first invalid byte.
        offset: usize,
        /// The text item's tag.
        tag: Tag,
    },
    /// The Boolean item `tag` has a value other than 0 or 1; `offset` is where its value
    /// starts.
    #[error("failed to decode TTLV at byte {offset}: boolean {tag} is neither 0 nor 1")]
    InvalidBoolean {
        /// Where the boolean's value starts.
        offset: usize,
        /// The boolean item's tag.
        tag: Tag,
    },
    /// The structure starting at `offset` is nested deeper than [`MAX_DEPTH`].
    #[error(
        "failed to decode TTLV at byte {offset}: structures nested deeper than {MAX_DEPTH} levels"
    )]
    TooDeep {
        /// Where the structure that is one level too deep starts.
        offset: usize,
    },
    /// The message is `len` bytes long (for [`read_header`]: the header plus the declared
    /// value length), more than [`MAX_MESSAGE_LEN`].
    #[error(
        "failed to decode TTLV: message of {len} bytes is larger than the limit of {MAX_MESSAGE_LEN} bytes"
    )]
    TooLarge {
        /// The message length in bytes.
        len: usize,
    },
    /// Bytes follow the end of the message's single top-level item, from `offset` on.
    #[error("failed to decode TTLV at byte {offset}: trailing bytes after the message")]
    TrailingBytes {
        /// Where the first extra byte is.
        offset: usize,
    },
    /// The child item starting at `offset` runs past the end of the enclosing structure
    /// `tag` (or, if fewer than 8 bytes of the structure remain, its header does).
    #[error(
        "failed to decode TTLV at byte {offset}: child item overruns the end of structure {tag}"
    )]
    StructureOverrun {
        /// Where the overrunning child starts.
        offset: usize,
        /// The enclosing structure's tag.
        tag: Tag,
    },
}

/// Encodes an item (infallible).
///
/// TTLV cannot express a value longer than `u32::MAX` bytes; such an item (far beyond
/// [`MAX_MESSAGE_LEN`]) gets a saturated length field and will not decode. Encoding
/// recurses once per level of nesting, which is fine for the items a server builds and
/// for anything [`decode`] returns (at most [`MAX_DEPTH`] deep).
pub fn encode(item: &Item) -> Vec<u8> {
    let mut out = Vec::with_capacity(item.encoded_len());
    encode_into(item, &mut out);
    out
}

/// Overwrites every byte string and big integer in `item` (key material travels as byte
/// strings) with zeros and empties it, so that a message's copy of a key does not linger
/// in freed memory.
pub fn wipe(item: &mut Item) {
    use zeroize::Zeroize as _;

    match &mut item.value {
        Value::Structure(children) => children.iter_mut().for_each(wipe),
        Value::ByteString(bytes) | Value::BigInteger(bytes) => bytes.zeroize(),
        _ => {}
    }
}

/// Appends the encoding of `item` to `out`.
pub fn encode_into(item: &Item, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&item.tag.to_bytes());
    out.push(item.value.item_type());
    match &item.value {
        Value::Structure(children) => {
            // Placeholder length, patched once the children are written.
            out.extend_from_slice(&[0; 4]);
            for child in children {
                encode_into(child, out);
            }
            let len = len_u32(out.len().saturating_sub(start.saturating_add(HEADER_LEN)));
            if let Some(slot) = out.get_mut(start.saturating_add(4)..start.saturating_add(8)) {
                for (dst, src) in slot.iter_mut().zip(len.to_be_bytes()) {
                    *dst = src;
                }
            }
        }
        Value::Integer(v) => put_padded(out, &v.to_be_bytes()),
        Value::LongInteger(v) | Value::DateTime(v) | Value::DateTimeExtended(v) => {
            put_padded(out, &v.to_be_bytes());
        }
        Value::Enumeration(v) | Value::Interval(v) => put_padded(out, &v.to_be_bytes()),
        Value::Boolean(v) => put_padded(out, &u64::from(*v).to_be_bytes()),
        Value::BigInteger(b) => {
            let len = big_integer_len(b.len());
            out.extend_from_slice(&len_u32(len).to_be_bytes());
            let fill = if b.first().is_some_and(|&x| x & 0x80 != 0) {
                0xFF
            } else {
                0x00
            };
            out.extend(std::iter::repeat_n(fill, len.saturating_sub(b.len())));
            out.extend_from_slice(b);
        }
        Value::TextString(s) => put_padded(out, s.as_bytes()),
        Value::ByteString(b) => put_padded(out, b),
    }
}

/// A length as the 4-byte length field holds it (saturating; see [`encode`]).
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Writes a length field, the value and its zero padding.
fn put_padded(out: &mut Vec<u8>, value: &[u8]) {
    out.extend_from_slice(&len_u32(value.len()).to_be_bytes());
    out.extend_from_slice(value);
    let pad = padded_len(value.len()).saturating_sub(value.len());
    out.extend(std::iter::repeat_n(0u8, pad));
}

/// Decodes exactly one item that must span all of `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Item, DecodeError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(DecodeError::TooLarge { len: bytes.len() });
    }
    let (item, end) = decode_at(bytes, 0, bytes.len(), 0, None)?;
    if end < bytes.len() {
        return Err(DecodeError::TrailingBytes { offset: end });
    }
    Ok(item)
}

/// Reads the 8-byte header of a message to learn how many bytes follow (for framing on a
/// stream): returns (tag, item type byte, value length). Refuses lengths above
/// `MAX_MESSAGE_LEN - 8` and unknown type bytes, without reading further.
///
/// It also refuses a length that the type cannot have (for example an Integer that is not
/// 4 bytes), as [`decode`] would. The number of bytes that follow the header on the wire is
/// [`padded_len`] of the value length.
pub fn read_header(header: &[u8; 8]) -> Result<(Tag, u8, u32), DecodeError> {
    let (tag, ty, len) = split_header(*header);
    if type_name(ty).is_none() {
        return Err(DecodeError::UnknownType {
            offset: 0,
            tag,
            item_type: ty,
        });
    }
    let value_len = usize::try_from(len).unwrap_or(usize::MAX);
    if value_len > MAX_MESSAGE_LEN - HEADER_LEN {
        return Err(DecodeError::TooLarge {
            len: value_len.saturating_add(HEADER_LEN),
        });
    }
    check_len(0, tag, ty, len)?;
    Ok((tag, ty, len))
}

/// Splits a header into tag, type byte and length.
fn split_header(header: [u8; 8]) -> (Tag, u8, u32) {
    let [t0, t1, t2, ty, l0, l1, l2, l3] = header;
    (
        Tag::from_bytes([t0, t1, t2]),
        ty,
        u32::from_be_bytes([l0, l1, l2, l3]),
    )
}

/// Checks that `len` is a length an item of type `ty` can have.
fn check_len(offset: usize, tag: Tag, ty: u8, len: u32) -> Result<(), DecodeError> {
    let ok = match ty {
        item_type::INTEGER | item_type::ENUMERATION | item_type::INTERVAL => len == 4,
        item_type::LONG_INTEGER
        | item_type::BOOLEAN
        | item_type::DATE_TIME
        | item_type::DATE_TIME_EXTENDED => len == 8,
        item_type::BIG_INTEGER => len != 0 && len.is_multiple_of(8),
        item_type::STRUCTURE => len.is_multiple_of(8),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(DecodeError::BadLength {
            offset,
            tag,
            item_type: ty,
            len,
        })
    }
}

/// Copies `N` bytes of `bytes` from `at`, if they are there.
fn array_at<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// Decodes the item starting at `offset`, which must end by `limit` (the end of the
/// enclosing structure, or of the input when `parent` is `None`). `depth` counts the
/// structures enclosing this item. Returns the item and the offset just past it.
fn decode_at(
    bytes: &[u8],
    offset: usize,
    limit: usize,
    depth: usize,
    parent: Option<Tag>,
) -> Result<(Item, usize), DecodeError> {
    let available = limit.saturating_sub(offset);
    let overrun = |needed: usize| match parent {
        Some(tag) => DecodeError::StructureOverrun { offset, tag },
        None => DecodeError::Truncated {
            offset,
            needed,
            available,
        },
    };

    if available < HEADER_LEN {
        return Err(overrun(HEADER_LEN));
    }
    let header = array_at::<HEADER_LEN>(bytes, offset).ok_or_else(|| overrun(HEADER_LEN))?;
    let (tag, ty, len) = split_header(header);
    if type_name(ty).is_none() {
        return Err(DecodeError::UnknownType {
            offset,
            tag,
            item_type: ty,
        });
    }
    check_len(offset, tag, ty, len)?;
    if ty == item_type::STRUCTURE && depth >= MAX_DEPTH {
        return Err(DecodeError::TooDeep { offset });
    }

    let value_len = usize::try_from(len).unwrap_or(usize::MAX);
    let needed = HEADER_LEN.saturating_add(padded_len(value_len));
    if needed > available {
        return Err(overrun(needed));
    }
    // All of these are within `limit`, which is within `bytes`, by the check above.
    let value_start = offset.saturating_add(HEADER_LEN);
    let value_end = value_start.saturating_add(value_len);
    let end = offset.saturating_add(needed);
    let value = bytes
        .get(value_start..value_end)
        .ok_or_else(|| overrun(needed))?;
    let padding = bytes.get(value_end..end).ok_or_else(|| overrun(needed))?;
    if let Some(i) = padding.iter().position(|&b| b != 0) {
        return Err(DecodeError::NonZeroPadding {
            offset: value_end.saturating_add(i),
            tag,
        });
    }

    let value = if ty == item_type::STRUCTURE {
        Value::Structure(decode_children(bytes, value_start, value_end, depth, tag)?)
    } else {
        let header = Header {
            offset,
            tag,
            item_type: ty,
            len,
        };
        decode_scalar(&header, value_start, value)?
    };
    Ok((Item { tag, value }, end))
}

/// An item's header, with where it starts.
struct Header {
    offset: usize,
    tag: Tag,
    item_type: u8,
    len: u32,
}

impl Header {
    fn bad_length(&self) -> DecodeError {
        DecodeError::BadLength {
            offset: self.offset,
            tag: self.tag,
            item_type: self.item_type,
            len: self.len,
        }
    }

    /// The value as a fixed-size array (its length has already been checked).
    fn fixed<const N: usize>(&self, value: &[u8]) -> Result<[u8; N], DecodeError> {
        value.try_into().map_err(|_| self.bad_length())
    }
}

/// Decodes the children of the structure `tag` (of nesting `depth`), whose value spans
/// `start..end`; they must fill it exactly.
fn decode_children(
    bytes: &[u8],
    start: usize,
    end: usize,
    depth: usize,
    tag: Tag,
) -> Result<Vec<Item>, DecodeError> {
    // Grows with what is actually decoded: each child takes at least 8 input bytes.
    let mut children = Vec::new();
    let mut pos = start;
    while pos < end {
        let (child, next) = decode_at(bytes, pos, end, depth.saturating_add(1), Some(tag))?;
        children.push(child);
        pos = next;
    }
    Ok(children)
}

/// Decodes the value of a non-structure item whose length and padding have been checked;
/// `value` starts at byte `value_start` of the input.
fn decode_scalar(header: &Header, value_start: usize, value: &[u8]) -> Result<Value, DecodeError> {
    let tag = header.tag;
    Ok(match header.item_type {
        item_type::INTEGER => Value::Integer(i32::from_be_bytes(header.fixed(value)?)),
        item_type::ENUMERATION => Value::Enumeration(u32::from_be_bytes(header.fixed(value)?)),
        item_type::INTERVAL => Value::Interval(u32::from_be_bytes(header.fixed(value)?)),
        item_type::LONG_INTEGER => Value::LongInteger(i64::from_be_bytes(header.fixed(value)?)),
        item_type::DATE_TIME => Value::DateTime(i64::from_be_bytes(header.fixed(value)?)),
        item_type::DATE_TIME_EXTENDED => {
            Value::DateTimeExtended(i64::from_be_bytes(header.fixed(value)?))
        }
        item_type::BOOLEAN => match u64::from_be_bytes(header.fixed(value)?) {
            0 => Value::Boolean(false),
            1 => Value::Boolean(true),
            _ => {
                return Err(DecodeError::InvalidBoolean {
                    offset: value_start,
                    tag,
                });
            }
        },
        item_type::BIG_INTEGER => Value::BigInteger(value.to_vec()),
        item_type::TEXT_STRING => match std::str::from_utf8(value) {
            Ok(s) => Value::TextString(s.to_owned()),
            Err(e) => {
                return Err(DecodeError::InvalidUtf8 {
                    offset: value_start.saturating_add(e.valid_up_to()),
                    tag,
                });
            }
        },
        item_type::BYTE_STRING => Value::ByteString(value.to_vec()),
        _ => {
            return Err(DecodeError::UnknownType {
                offset: header.offset,
                tag,
                item_type: header.item_type,
            });
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    const T: Tag = Tag(0x42_0020);

    /// Parses hex with optional spaces and `|` separators.
    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        assert_eq!(digits.len() % 2, 0, "odd number of hex digits in {s:?}");
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    #[test]
    fn wipe_clears_byte_strings_and_big_integers_at_any_depth_and_nothing_else() {
        let inner = Item::new(
            T,
            Value::Structure(vec![
                Item::new(T, Value::ByteString(vec![0xAB; 32])),
                Item::new(T, Value::TextString("name".to_owned())),
            ]),
        );
        let mut item = Item::new(
            T,
            Value::Structure(vec![
                inner,
                Item::new(T, Value::BigInteger(vec![7; 8])),
                Item::new(T, Value::Integer(5)),
            ]),
        );
        wipe(&mut item);
        let Value::Structure(top) = &item.value else {
            panic!()
        };
        let Value::Structure(inner) = &top[0].value else {
            panic!()
        };
        assert_eq!(
            inner[0].value,
            Value::ByteString(Vec::new()),
            "zeroed, then emptied"
        );
        assert_eq!(inner[1].value, Value::TextString("name".to_owned()));
        assert_eq!(top[1].value, Value::BigInteger(Vec::new()));
        assert_eq!(top[2].value, Value::Integer(5));
    }

    /// Checks both directions: `item` encodes to `wire` and `wire` decodes to `item`.
    fn both_ways(item: &Item, wire: &str) {
        let wire = hex(wire);
        assert_eq!(encode(item), wire, "encoding of {item:?}");
        assert_eq!(item.encoded_len(), wire.len());
        assert_eq!(decode(&wire), Ok(item.clone()));
    }

    // --- KMIP 1.0 / 1.2 specification, section 9.1.2 (encoding examples) ---

    #[test]
    fn spec_vector_integer() {
        both_ways(
            &Item::integer(T, 8),
            "42 00 20 | 02 | 00 00 00 04 | 00 00 00 08 00 00 00 00",
        );
    }

    #[test]
    fn spec_vector_long_integer() {
        both_ways(
            &Item::long_integer(T, 123_456_789_000_000_000),
            "42 00 20 | 03 | 00 00 00 08 | 01 B6 9B 4B A5 74 92 00",
        );
    }

    #[test]
    fn spec_vector_big_integer() {
        // 1234567890000000000000000000
        both_ways(
            &Item::big_integer(T, hex("00 00 00 00 03 FD 35 EB 6B C2 DF 46 18 08 00 00")),
            "42 00 20 | 04 | 00 00 00 10 | 00 00 00 00 03 FD 35 EB 6B C2 DF 46 18 08 00 00",
        );
    }

    #[test]
    fn spec_vector_enumeration() {
        both_ways(
            &Item::enumeration(T, 255),
            "42 00 20 | 05 | 00 00 00 04 | 00 00 00 FF 00 00 00 00",
        );
    }

    #[test]
    fn spec_vector_boolean() {
        both_ways(
            &Item::boolean(T, true),
            "42 00 20 | 06 | 00 00 00 08 | 00 00 00 00 00 00 00 01",
        );
        both_ways(
            &Item::boolean(T, false),
            "42 00 20 | 06 | 00 00 00 08 | 00 00 00 00 00 00 00 00",
        );
    }

    #[test]
    fn spec_vector_text_string() {
        both_ways(
            &Item::text(T, "Hello World"),
            "42 00 20 | 07 | 00 00 00 0B | 48 65 6C 6C 6F 20 57 6F 72 6C 64 00 00 00 00 00",
        );
    }

    #[test]
    fn spec_vector_byte_string() {
        both_ways(
            &Item::bytes(T, [1u8, 2, 3]),
            "42 00 20 | 08 | 00 00 00 03 | 01 02 03 00 00 00 00 00",
        );
    }

    #[test]
    fn spec_vector_date_time() {
        // Friday, March 14, 2008, 11:56:40 GMT
        both_ways(
            &Item::date_time(T, 1_205_495_800),
            "42 00 20 | 09 | 00 00 00 08 | 00 00 00 00 47 DA 67 F8",
        );
    }

    #[test]
    fn spec_vector_interval() {
        // 10 days
        both_ways(
            &Item::interval(T, 864_000),
            "42 00 20 | 0A | 00 00 00 04 | 00 0D 2F 00 00 00 00 00",
        );
    }

    #[test]
    fn spec_vector_structure() {
        let item = Item::structure(
            T,
            vec![
                Item::enumeration(Tag(0x42_0004), 254),
                Item::integer(Tag(0x42_0005), 255),
            ],
        );
        both_ways(
            &item,
            "42 00 20 | 01 | 00 00 00 20 | 42 00 04 | 05 | 00 00 00 04 | 00 00 00 FE 00 00 00 00 \
             | 42 00 05 | 02 | 00 00 00 04 | 00 00 00 FF 00 00 00 00",
        );
    }

    #[test]
    fn date_time_extended_vector() {
        // Not a specification example: 2008-03-14 11:56:40.123456 UTC in microseconds.
        both_ways(
            &Item::date_time_extended(T, 1_205_495_800_123_456),
            "42 00 20 | 0B | 00 00 00 08 | 00 04 48 64 5C F1 D0 40",
        );
    }

    #[test]
    fn empty_structure_and_strings() {
        both_ways(&Item::structure(T, vec![]), "42 00 20 | 01 | 00 00 00 00");
        both_ways(&Item::text(T, ""), "42 00 20 | 07 | 00 00 00 00");
        both_ways(&Item::bytes(T, []), "42 00 20 | 08 | 00 00 00 00");
        // Exactly 8 bytes: no padding.
        both_ways(
            &Item::bytes(T, [0xAA; 8]),
            "42 00 20 | 08 | 00 00 00 08 | AA AA AA AA AA AA AA AA",
        );
    }

    #[test]
    fn big_integer_encoding_sign_extends() {
        // Short values are sign-extended to 8 bytes; decoding gives back the wire form.
        let positive = encode(&Item::big_integer(T, [0x01, 0x02]));
        assert_eq!(positive, hex("420020 04 00000008 00 00 00 00 00 00 01 02"));
        let negative = encode(&Item::big_integer(T, [0x80]));
        assert_eq!(negative, hex("420020 04 00000008 FF FF FF FF FF FF FF 80"));
        let zero = encode(&Item::big_integer(T, []));
        assert_eq!(zero, hex("420020 04 00000008 00 00 00 00 00 00 00 00"));
        assert_eq!(Item::big_integer(T, [0x80]).encoded_len(), 16);
        assert_eq!(Item::big_integer(T, []).encoded_len(), 16);
        assert_eq!(
            decode(&negative).unwrap().as_big_integer(),
            Some(&hex("FF FF FF FF FF FF FF 80")[..])
        );
    }

    // --- Real client messages ---

    /// KMIP tags used by the request messages below.
    const REQUEST_MESSAGE: Tag = Tag(0x42_0078);
    const REQUEST_HEADER: Tag = Tag(0x42_0077);
    const PROTOCOL_VERSION: Tag = Tag(0x42_0069);
    const PROTOCOL_VERSION_MAJOR: Tag = Tag(0x42_006A);
    const PROTOCOL_VERSION_MINOR: Tag = Tag(0x42_006B);
    const BATCH_COUNT: Tag = Tag(0x42_000D);
    const BATCH_ITEM: Tag = Tag(0x42_000F);
    const OPERATION: Tag = Tag(0x42_005C);
    const REQUEST_PAYLOAD: Tag = Tag(0x42_0079);
    const UNIQUE_IDENTIFIER: Tag = Tag(0x42_0094);
    const OBJECT_TYPE: Tag = Tag(0x42_0057);
    const TEMPLATE_ATTRIBUTE: Tag = Tag(0x42_0091);
    const ATTRIBUTE: Tag = Tag(0x42_0008);
    const ATTRIBUTE_NAME: Tag = Tag(0x42_000A);
    const ATTRIBUTE_VALUE: Tag = Tag(0x42_000B);

    fn version(major: i32, minor: i32) -> Item {
        Item::structure(
            PROTOCOL_VERSION,
            vec![
                Item::integer(PROTOCOL_VERSION_MAJOR, major),
                Item::integer(PROTOCOL_VERSION_MINOR, minor),
            ],
        )
    }

    fn request(operation: u32, payload: Vec<Item>) -> Item {
        Item::structure(
            REQUEST_MESSAGE,
            vec![
                Item::structure(
                    REQUEST_HEADER,
                    vec![version(1, 2), Item::integer(BATCH_COUNT, 1)],
                ),
                Item::structure(
                    BATCH_ITEM,
                    vec![
                        Item::enumeration(OPERATION, operation),
                        Item::structure(REQUEST_PAYLOAD, payload),
                    ],
                ),
            ],
        )
    }

    /// A Discover Versions request (KMIP 1.2, offering 1.2 and 1.1) as encoded by `PyKMIP`
    /// 0.11.0's `RequestMessage.write`.
    const PYKMIP_DISCOVER_VERSIONS: &str = "\
        42007801000000b04200770100000038420069010000002042006a0200000004000000010000000042006b\
        0200000004000000020000000042000d0200000004000000010000000042000f010000006842005c0500\
        0000040000001e000000004200790100000050420069010000002042006a02000000040000000100000000\
        42006b02000000040000000200000000420069010000002042006a0200000004000000010000000042006b\
        02000000040000000100000000";

    /// A Get request for one unique identifier, encoded by `PyKMIP` 0.11.0.
    const PYKMIP_GET: &str = "\
        42007801000000904200770100000038420069010000002042006a0200000004000000010000000042006b\
        0200000004000000020000000042000d0200000004000000010000000042000f010000004842005c0500\
        0000040000000a000000004200790100000030420094070000002431663136356436352d636262642d3462\
        64362d393836372d38306530623339306163663900000000";

    /// A Create request for a 256-bit AES key (with a template of algorithm, length, usage
    /// mask and name), encoded by `PyKMIP` 0.11.0.
    const PYKMIP_CREATE: &str = "\
        42007801000001604200770100000038420069010000002042006a0200000004000000010000000042006b\
        0200000004000000020000000042000d0200000004000000010000000042000f010000011842005c0500\
        0000040000000100000000420079010000010042005705000000040000000200000000420091010000\
        00e8420008010000003042000a070000001743727970746f6772617068696320416c676f726974686d00\
        42000b05000000040000000300000000420008010000003042000a070000001443727970746f6772617068\
        6963204c656e6774680000000042000b02000000040000010000000000420008010000003042000a0700\
        00001843727970746f67726170686963205573616765204d61736b42000b02000000040000000c000000\
        00420008010000003842000a07000000044e616d650000000042000b010000002042005507000000046b\
        6579310000000042005405000000040000000100000000";

    #[test]
    fn pykmip_discover_versions_request() {
        let expected = request(0x1E, vec![version(1, 2), version(1, 1)]);
        both_ways(&expected, PYKMIP_DISCOVER_VERSIONS);
        let header = expected.child(REQUEST_HEADER).unwrap();
        let v = header.child(PROTOCOL_VERSION).unwrap();
        assert_eq!(v.child(PROTOCOL_VERSION_MAJOR).unwrap().as_int(), Some(1));
        assert_eq!(v.child(PROTOCOL_VERSION_MINOR).unwrap().as_int(), Some(2));
        let payload = expected
            .child(BATCH_ITEM)
            .and_then(|b| b.child(REQUEST_PAYLOAD))
            .unwrap();
        assert_eq!(payload.children_with(PROTOCOL_VERSION).count(), 2);
    }

    #[test]
    fn pykmip_get_request() {
        let expected = request(
            0x0A,
            vec![Item::text(
                UNIQUE_IDENTIFIER,
                "1f165d65-cbbd-4bd6-9867-80e0b390acf9",
            )],
        );
        both_ways(&expected, PYKMIP_GET);
    }

    #[test]
    fn pykmip_create_request() {
        let attribute = |name: &str, value: Item| {
            Item::structure(ATTRIBUTE, vec![Item::text(ATTRIBUTE_NAME, name), value])
        };
        let expected = request(
            0x01,
            vec![
                Item::enumeration(OBJECT_TYPE, 2),
                Item::structure(
                    TEMPLATE_ATTRIBUTE,
                    vec![
                        attribute(
                            "Cryptographic Algorithm",
                            Item::enumeration(ATTRIBUTE_VALUE, 3),
                        ),
                        attribute("Cryptographic Length", Item::integer(ATTRIBUTE_VALUE, 256)),
                        attribute(
                            "Cryptographic Usage Mask",
                            Item::integer(ATTRIBUTE_VALUE, 12),
                        ),
                        attribute(
                            "Name",
                            Item::structure(
                                ATTRIBUTE_VALUE,
                                vec![
                                    Item::text(Tag(0x42_0055), "key1"),
                                    Item::enumeration(Tag(0x42_0054), 1),
                                ],
                            ),
                        ),
                    ],
                ),
            ],
        );
        both_ways(&expected, PYKMIP_CREATE);
    }

    #[test]
    fn pykmip_messages_frame_with_read_header() {
        for wire in [PYKMIP_DISCOVER_VERSIONS, PYKMIP_GET, PYKMIP_CREATE] {
            let wire = hex(wire);
            let header: [u8; 8] = wire[..8].try_into().unwrap();
            let (tag, ty, len) = read_header(&header).unwrap();
            assert_eq!(tag, REQUEST_MESSAGE);
            assert_eq!(ty, item_type::STRUCTURE);
            assert_eq!(
                HEADER_LEN + padded_len(usize::try_from(len).unwrap()),
                wire.len()
            );
        }
    }

    // --- Accessors and helpers ---

    #[test]
    fn accessors_match_only_their_type() {
        let s = Item::structure(
            T,
            vec![
                Item::text(Tag(1), "a"),
                Item::integer(Tag(2), 5),
                Item::text(Tag(1), "b"),
            ],
        );
        assert_eq!(s.children().len(), 3);
        assert_eq!(s.child(Tag(1)).and_then(Item::as_text), Some("a"));
        assert_eq!(s.child(Tag(3)), None);
        let texts: Vec<_> = s.children_with(Tag(1)).filter_map(Item::as_text).collect();
        assert_eq!(texts, ["a", "b"]);
        assert!(Item::integer(T, 1).children().is_empty());
        assert_eq!(Item::integer(T, 1).child(T), None);

        assert_eq!(Item::integer(T, -3).as_int(), Some(-3));
        assert_eq!(Item::integer(T, -3).as_enum(), None);
        assert_eq!(Item::enumeration(T, 7).as_enum(), Some(7));
        assert_eq!(Item::enumeration(T, 7).as_int(), None);
        assert_eq!(Item::long_integer(T, -9).as_long(), Some(-9));
        assert_eq!(Item::date_time(T, 9).as_long(), None);
        assert_eq!(Item::date_time(T, 9).as_date_time(), Some(9));
        assert_eq!(Item::date_time_extended(T, 9).as_date_time(), None);
        assert_eq!(
            Item::date_time_extended(T, 9).as_date_time_extended(),
            Some(9)
        );
        assert_eq!(Item::interval(T, 60).as_interval(), Some(60));
        assert_eq!(Item::bytes(T, [1u8]).as_bytes(), Some(&[1u8][..]));
        assert_eq!(Item::big_integer(T, [1u8]).as_bytes(), None);
        assert_eq!(
            Item::big_integer(T, [1u8]).as_big_integer(),
            Some(&[1u8][..])
        );
        assert_eq!(Item::text(T, "x").as_bytes(), None);
        assert_eq!(Item::boolean(T, true).as_bool(), Some(true));
        assert_eq!(Item::integer(T, 1).as_bool(), None);
        assert_eq!(Item::integer(T, 1).as_text(), None);
    }

    #[test]
    fn tag_display_and_bytes() {
        assert_eq!(Tag(0x42_0078).to_string(), "0x420078");
        assert_eq!(Tag(0x1).to_string(), "0x000001");
        assert_eq!(Tag::new(0xFF42_0078), Tag(0x42_0078));
        assert_eq!(Tag(0x42_0078).to_bytes(), [0x42, 0x00, 0x78]);
        assert_eq!(Tag::from_bytes([0x42, 0x00, 0x78]), Tag(0x42_0078));
    }

    #[test]
    fn type_names_and_padding() {
        assert_eq!(
            type_name(item_type::DATE_TIME_EXTENDED),
            Some("Date-Time Extended")
        );
        assert_eq!(type_name(0), None);
        assert_eq!(type_name(0x0C), None);
        assert_eq!(Value::TextString(String::new()).type_name(), "Text String");
        assert_eq!(padded_len(0), 0);
        assert_eq!(padded_len(1), 8);
        assert_eq!(padded_len(8), 8);
        assert_eq!(padded_len(9), 16);
        assert_eq!(padded_len(usize::MAX), usize::MAX - 7);
    }

    #[test]
    fn encode_into_appends() {
        let mut out = vec![0xEE];
        encode_into(&Item::structure(T, vec![Item::integer(T, 8)]), &mut out);
        assert_eq!(
            out,
            hex("EE 420020 01 00000010 420020 02 00000004 00000008 00000000")
        );
    }

    #[test]
    fn serde_round_trip() {
        let item = request(0x1E, vec![version(1, 4), Item::boolean(T, true)]);
        let json = serde_json::to_string(&item).unwrap();
        let back: Item = serde_json::from_str(&json).unwrap();
        assert_eq!(back, item);
    }

    // --- Every error case ---

    #[test]
    fn error_truncated() {
        assert_eq!(
            decode(&[]),
            Err(DecodeError::Truncated {
                offset: 0,
                needed: 8,
                available: 0
            })
        );
        assert_eq!(
            decode(&hex("42 00 20 02 00 00 00")),
            Err(DecodeError::Truncated {
                offset: 0,
                needed: 8,
                available: 7
            })
        );
        // Value present but padding missing.
        assert_eq!(
            decode(&hex("42 00 20 | 02 | 00 00 00 04 | 00 00 00 08")),
            Err(DecodeError::Truncated {
                offset: 0,
                needed: 16,
                available: 12
            })
        );
        // A huge declared length is refused without allocating.
        assert_eq!(
            decode(&hex("42 00 20 | 08 | FF FF FF FF | 00")),
            Err(DecodeError::Truncated {
                offset: 0,
                needed: 8 + padded_len(0xFFFF_FFFF),
                available: 9
            })
        );
        // A structure declaring more than there is.
        assert_eq!(
            decode(&hex(
                "42 00 20 | 01 | 00 00 00 10 | 42 00 20 | 02 | 00 00 00 04"
            )),
            Err(DecodeError::Truncated {
                offset: 0,
                needed: 24,
                available: 16
            })
        );
    }

    #[test]
    fn error_bad_length() {
        let cases: [(u8, u32); 14] = [
            (item_type::INTEGER, 8),
            (item_type::INTEGER, 0),
            (item_type::ENUMERATION, 8),
            (item_type::INTERVAL, 2),
            (item_type::LONG_INTEGER, 4),
            (item_type::DATE_TIME, 4),
            (item_type::DATE_TIME_EXTENDED, 16),
            (item_type::BOOLEAN, 4),
            (item_type::BOOLEAN, 1),
            (item_type::BIG_INTEGER, 0),
            (item_type::BIG_INTEGER, 12),
            (item_type::BIG_INTEGER, 7),
            (item_type::STRUCTURE, 12),
            (item_type::STRUCTURE, 4),
        ];
        for (ty, len) in cases {
            let mut wire = vec![0x42, 0x00, 0x20, ty];
            wire.extend_from_slice(&len.to_be_bytes());
            wire.extend(std::iter::repeat_n(0u8, padded_len(len as usize)));
            let expected = DecodeError::BadLength {
                offset: 0,
                tag: T,
                item_type: ty,
                len,
            };
            assert_eq!(decode(&wire), Err(expected.clone()), "type {ty} len {len}");
            let header: [u8; 8] = wire[..8].try_into().unwrap();
            assert_eq!(
                read_header(&header),
                Err(expected),
                "header type {ty} len {len}"
            );
        }
        // Nested: the offset is the child's.
        assert_eq!(
            decode(&hex(
                "42 00 20 | 01 | 00 00 00 10 | 42 00 05 | 02 | 00 00 00 05 | 00 00 00 00 00 00 00 00"
            )),
            Err(DecodeError::BadLength {
                offset: 8,
                tag: Tag(0x42_0005),
                item_type: item_type::INTEGER,
                len: 5
            })
        );
    }

    #[test]
    fn error_unknown_type() {
        for ty in [0x00, 0x0C, 0x80, 0xFF] {
            let wire = [0x42, 0x00, 0x20, ty, 0, 0, 0, 0];
            let expected = DecodeError::UnknownType {
                offset: 0,
                tag: T,
                item_type: ty,
            };
            assert_eq!(decode(&wire), Err(expected.clone()));
            assert_eq!(read_header(&wire), Err(expected));
        }
        assert_eq!(
            decode(&hex(
                "42 00 20 | 01 | 00 00 00 08 | 42 00 21 | 0C | 00 00 00 00"
            )),
            Err(DecodeError::UnknownType {
                offset: 8,
                tag: Tag(0x42_0021),
                item_type: 0x0C
            })
        );
    }

    #[test]
    fn error_non_zero_padding() {
        assert_eq!(
            decode(&hex(
                "42 00 20 | 02 | 00 00 00 04 | 00 00 00 08 00 00 01 00"
            )),
            Err(DecodeError::NonZeroPadding { offset: 14, tag: T })
        );
        assert_eq!(
            decode(&hex(
                "42 00 20 | 07 | 00 00 00 0B | 48 65 6C 6C 6F 20 57 6F 72 6C 64 20 00 00 00 00"
            )),
            Err(DecodeError::NonZeroPadding { offset: 19, tag: T })
        );
        assert_eq!(
            decode(&hex(
                "42 00 20 | 08 | 00 00 00 01 | 01 00 00 00 00 00 00 FF"
            )),
            Err(DecodeError::NonZeroPadding { offset: 15, tag: T })
        );
        assert_eq!(
            decode(&hex(
                "42 00 20 | 05 | 00 00 00 04 | 00 00 00 FF 80 00 00 00"
            )),
            Err(DecodeError::NonZeroPadding { offset: 12, tag: T })
        );
        assert_eq!(
            decode(&hex(
                "42 00 20 | 0A | 00 00 00 04 | 00 00 00 FF 00 00 00 01"
            )),
            Err(DecodeError::NonZeroPadding { offset: 15, tag: T })
        );
    }

    #[test]
    fn error_invalid_utf8() {
        // "ab" then a lone continuation byte.
        assert_eq!(
            decode(&hex(
                "42 00 20 | 07 | 00 00 00 03 | 61 62 80 00 00 00 00 00"
            )),
            Err(DecodeError::InvalidUtf8 { offset: 10, tag: T })
        );
        // A multi-byte sequence cut short by the length.
        assert_eq!(
            decode(&hex(
                "42 00 20 | 07 | 00 00 00 01 | E2 00 00 00 00 00 00 00"
            )),
            Err(DecodeError::InvalidUtf8 { offset: 8, tag: T })
        );
        // Valid multi-byte text.
        both_ways(
            &Item::text(T, "€"),
            "42 00 20 | 07 | 00 00 00 03 | E2 82 AC 00 00 00 00 00",
        );
    }

    #[test]
    fn error_invalid_boolean() {
        for value in [
            "00 00 00 00 00 00 00 02",
            "01 00 00 00 00 00 00 01",
            "FF FF FF FF FF FF FF FF",
        ] {
            assert_eq!(
                decode(&hex(&format!("42 00 20 | 06 | 00 00 00 08 | {value}"))),
                Err(DecodeError::InvalidBoolean { offset: 8, tag: T })
            );
        }
    }

    /// `levels` structures, each inside the previous one, the innermost holding an integer.
    fn nested(levels: usize) -> Item {
        let mut item = Item::integer(T, 1);
        for _ in 0..levels {
            item = Item::structure(T, vec![item]);
        }
        item
    }

    #[test]
    fn error_too_deep() {
        let ok = nested(MAX_DEPTH);
        assert_eq!(decode(&encode(&ok)), Ok(ok));
        let deep = encode(&nested(MAX_DEPTH + 1));
        assert_eq!(
            decode(&deep),
            Err(DecodeError::TooDeep {
                offset: 8 * MAX_DEPTH
            })
        );
        // Far too deep (built by hand: the encoder and `Drop` recurse): still an error,
        // found without descending further than MAX_DEPTH.
        let levels = 100_000;
        let mut wire = Vec::new();
        for level in 0..levels {
            let len = u32::try_from(8 * (levels - level - 1) + 16).unwrap();
            wire.extend_from_slice(&[0x42, 0x00, 0x20, item_type::STRUCTURE]);
            wire.extend_from_slice(&len.to_be_bytes());
        }
        wire.extend(encode(&Item::integer(T, 1)));
        assert!(wire.len() <= MAX_MESSAGE_LEN);
        assert_eq!(
            decode(&wire),
            Err(DecodeError::TooDeep {
                offset: 8 * MAX_DEPTH
            })
        );
    }

    #[test]
    fn error_too_large() {
        // The largest message accepted: a byte string filling exactly MAX_MESSAGE_LEN.
        let biggest = Item::bytes(T, vec![7u8; MAX_MESSAGE_LEN - HEADER_LEN]);
        let wire = encode(&biggest);
        assert_eq!(wire.len(), MAX_MESSAGE_LEN);
        assert_eq!(decode(&wire), Ok(biggest));

        let too_big = vec![0u8; MAX_MESSAGE_LEN + 1];
        assert_eq!(
            decode(&too_big),
            Err(DecodeError::TooLarge {
                len: MAX_MESSAGE_LEN + 1
            })
        );
        let wire = encode(&Item::bytes(T, vec![7u8; MAX_MESSAGE_LEN - HEADER_LEN + 1]));
        assert_eq!(
            decode(&wire),
            Err(DecodeError::TooLarge {
                len: MAX_MESSAGE_LEN + 8
            })
        );
    }

    #[test]
    fn error_trailing_bytes() {
        assert_eq!(
            decode(&hex(
                "42 00 20 | 02 | 00 00 00 04 | 00 00 00 08 00 00 00 00 | 00"
            )),
            Err(DecodeError::TrailingBytes { offset: 16 })
        );
        // Two items back to back are not one message.
        let mut two = encode(&Item::integer(T, 1));
        two.extend(encode(&Item::integer(T, 2)));
        assert_eq!(decode(&two), Err(DecodeError::TrailingBytes { offset: 16 }));
    }

    #[test]
    fn error_structure_overrun() {
        // The structure claims 16 bytes; its child needs 24 (a 9-byte byte string).
        let mut wire = hex("42 00 20 | 01 | 00 00 00 10 | 42 00 21 | 08 | 00 00 00 09");
        wire.extend([0u8; 16]);
        assert_eq!(
            decode(&wire),
            Err(DecodeError::StructureOverrun { offset: 8, tag: T })
        );
        // Children that fill the structure exactly, then an item outside it: the structure
        // is fine and the extra item is trailing.
        let wire = hex(
            "42 00 20 | 01 | 00 00 00 10 | 42 00 05 | 02 | 00 00 00 04 | 00 00 00 FF 00 00 00 00 \
             | 42 00 06 | 02 | 00 00 00 04 | 00 00 00 FF 00 00 00 00",
        );
        assert_eq!(
            decode(&wire),
            Err(DecodeError::TrailingBytes { offset: 24 })
        );
        // Nested: the inner structure overruns the outer one.
        let wire = hex("42 00 20 | 01 | 00 00 00 10 | 42 00 21 | 01 | 00 00 00 10 \
             | 42 00 05 | 02 | 00 00 00 04 | 00 00 00 FF 00 00 00 00");
        assert_eq!(
            decode(&wire),
            Err(DecodeError::StructureOverrun { offset: 8, tag: T })
        );
    }

    #[test]
    fn read_header_limits() {
        let header = |ty: u8, len: u32| {
            let mut h = [0x42, 0x00, 0x78, ty, 0, 0, 0, 0];
            h[4..].copy_from_slice(&len.to_be_bytes());
            h
        };
        let max = u32::try_from(MAX_MESSAGE_LEN - HEADER_LEN).unwrap();
        assert_eq!(
            read_header(&header(item_type::STRUCTURE, max)),
            Ok((Tag(0x42_0078), item_type::STRUCTURE, max))
        );
        assert_eq!(
            read_header(&header(item_type::BYTE_STRING, max)),
            Ok((Tag(0x42_0078), item_type::BYTE_STRING, max))
        );
        assert_eq!(
            read_header(&header(item_type::BYTE_STRING, max + 1)),
            Err(DecodeError::TooLarge {
                len: MAX_MESSAGE_LEN + 1
            })
        );
        assert_eq!(
            read_header(&header(item_type::STRUCTURE, u32::MAX)),
            Err(DecodeError::TooLarge {
                len: usize::try_from(u32::MAX).unwrap() + 8
            })
        );
        assert_eq!(
            read_header(&header(item_type::INTEGER, 4)),
            Ok((Tag(0x42_0078), item_type::INTEGER, 4))
        );
    }

    #[test]
    fn error_messages() {
        let cases = [
            (
                DecodeError::Truncated {
                    offset: 3,
                    needed: 16,
                    available: 12,
                },
                "failed to decode TTLV at byte 3: truncated item, needs 16 bytes but only 12 remain",
            ),
            (
                DecodeError::BadLength {
                    offset: 8,
                    tag: Tag(0x42_0005),
                    item_type: 2,
                    len: 5,
                },
                "failed to decode TTLV at byte 8: item 0x420005 of type 0x02 (Integer) has invalid length 5",
            ),
            (
                DecodeError::UnknownType {
                    offset: 0,
                    tag: T,
                    item_type: 0x0C,
                },
                "failed to decode TTLV at byte 0: item 0x420020 has unknown type 0x0c",
            ),
            (
                DecodeError::NonZeroPadding { offset: 14, tag: T },
                "failed to decode TTLV at byte 14: non-zero padding after item 0x420020",
            ),
            (
                DecodeError::InvalidUtf8 { offset: 10, tag: T },
                "failed to decode TTLV at byte 10: text string 0x420020 is not valid UTF-8",
            ),
            (
                DecodeError::InvalidBoolean { offset: 8, tag: T },
                "failed to decode TTLV at byte 8: boolean 0x420020 is neither 0 nor 1",
            ),
            (
                DecodeError::TooDeep { offset: 128 },
                "failed to decode TTLV at byte 128: structures nested deeper than 16 levels",
            ),
            (
                DecodeError::TooLarge { len: 2_000_000 },
                "failed to decode TTLV: message of 2000000 bytes is larger than the limit of 1048576 bytes",
            ),
            (
                DecodeError::TrailingBytes { offset: 16 },
                "failed to decode TTLV at byte 16: trailing bytes after the message",
            ),
            (
                DecodeError::StructureOverrun { offset: 8, tag: T },
                "failed to decode TTLV at byte 8: child item overruns the end of structure 0x420020",
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message);
        }
    }

    // --- Properties ---

    fn arb_tag() -> impl Strategy<Value = Tag> {
        (0u32..=0x00FF_FFFF).prop_map(Tag)
    }

    fn arb_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i32>().prop_map(Value::Integer),
            any::<i64>().prop_map(Value::LongInteger),
            (1usize..=3)
                .prop_flat_map(|words| prop::collection::vec(any::<u8>(), words * 8))
                .prop_map(Value::BigInteger),
            any::<u32>().prop_map(Value::Enumeration),
            any::<bool>().prop_map(Value::Boolean),
            ".{0,24}".prop_map(Value::TextString),
            prop::collection::vec(any::<u8>(), 0..40).prop_map(Value::ByteString),
            any::<i64>().prop_map(Value::DateTime),
            any::<u32>().prop_map(Value::Interval),
            any::<i64>().prop_map(Value::DateTimeExtended),
        ]
    }

    /// Items up to 6 structures deep and about 64 leaves.
    fn arb_item() -> impl Strategy<Value = Item> {
        let leaf = (arb_tag(), arb_leaf()).prop_map(|(tag, value)| Item::new(tag, value));
        leaf.prop_recursive(6, 64, 8, |inner| {
            (arb_tag(), prop::collection::vec(inner, 0..8))
                .prop_map(|(tag, children)| Item::structure(tag, children))
        })
    }

    /// Byte strings that look like TTLV: a run of plausible headers and values, so the
    /// decoder gets past the first header more often than with uniform noise.
    fn arb_ttlv_like() -> impl Strategy<Value = Vec<u8>> {
        let piece = (
            any::<u8>(),
            0u8..=0x0D,
            prop_oneof![0u32..=48, any::<u32>()],
            prop::collection::vec(any::<u8>(), 0..24),
        )
            .prop_map(|(tag_low, ty, len, rest)| {
                let mut v = vec![0x42, 0x00, tag_low, ty];
                v.extend_from_slice(&len.to_be_bytes());
                v.extend(rest);
                v
            });
        prop::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
    }

    /// Decoding must not panic; whatever it accepts must re-encode to the same bytes.
    fn check_decode(bytes: &[u8]) -> Result<(), TestCaseError> {
        if let Ok(item) = decode(bytes) {
            prop_assert_eq!(encode(&item), bytes);
            prop_assert_eq!(item.encoded_len(), bytes.len());
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn prop_round_trip(item in arb_item()) {
            let wire = encode(&item);
            prop_assert_eq!(wire.len(), item.encoded_len());
            prop_assert_eq!(wire.len() % 8, 0);
            prop_assert_eq!(decode(&wire), Ok(item));
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            check_decode(&bytes)?;
        }

        #[test]
        fn prop_ttlv_like_bytes_never_panic(bytes in arb_ttlv_like()) {
            check_decode(&bytes)?;
            if bytes.len() >= 8 {
                let header: [u8; 8] = bytes[..8].try_into().unwrap();
                let _ = read_header(&header);
            }
        }

        #[test]
        fn prop_single_byte_mutation(
            item in arb_item(),
            index in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let mut wire = encode(&item);
            let i = index.index(wire.len());
            wire[i] ^= flip;
            if let Ok(other) = decode(&wire) {
                prop_assert_ne!(&other, &item);
                prop_assert_eq!(encode(&other), wire);
            }
        }

        #[test]
        fn prop_truncation_is_an_error(item in arb_item(), cut in any::<prop::sample::Index>()) {
            let wire = encode(&item);
            let keep = cut.index(wire.len());
            prop_assert!(decode(&wire[..keep]).is_err());
        }
    }
}
