//! The keystore log: records appended since the snapshot, each
//! `len: u32 BE | crc32(payload): u32 BE | payload`.
//!
//! The first record is a [`Header`] naming the snapshot the log continues (its generation,
//! hash and key count); every other record is one key as JSON. Logs written before the
//! header existed start with a key, and are read as continuing whatever snapshot is there.
//!
//! Reading tells three endings apart, because they call for opposite responses:
//! - a **torn tail**, a record cut short (or never-written zeros) at the very end: a write
//!   that crashed before its fsync and was never acknowledged. It is cut off, after a copy
//!   is kept beside the log.
//! - **damage**, a whole record whose checksum fails, an impossible length, or a checksummed
//!   record that is not a key: something changed bytes that were acknowledged. The store
//!   refuses to start and leaves the file as it is, for `--repair`.
//! - a clean end.

use serde::{Deserialize, Serialize};
use shadowkeep_api::keystore::Key;

/// Largest record a key may have, enforced when it is written and when it is replayed: one
/// limit, so that nothing acknowledged can be refused at the next start. A tape key is a few
/// hundred bytes; the KMIP layer keeps objects well below this with its own attribute limits.
pub const MAX_RECORD: usize = 1 << 20;

/// Largest record `--repair` tries to recover: records written before [`MAX_RECORD`] was
/// enforced on the write path could be larger.
const MAX_SALVAGED_RECORD: usize = 64 << 20;

/// The format this version writes in a log's header.
const FORMAT: u32 = 2;

/// The first record of a log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// The log format.
    pub log: u32,
    /// The snapshot this log continues; `None` when there was none.
    pub snapshot: Option<SnapshotRef>,
}

impl Header {
    /// The header of a log that continues `snapshot`.
    pub fn new(snapshot: Option<SnapshotRef>) -> Self {
        Self {
            log: FORMAT,
            snapshot,
        }
    }
}

/// What the log knows of the snapshot it continues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRef {
    /// The compaction that wrote it.
    pub generation: u64,
    /// The hash in its header.
    pub digest: String,
    /// How many keys it holds, for the messages when it is missing.
    pub keys: usize,
}

/// Appends one record with `payload` to `out`.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    // Callers bound payloads by MAX_RECORD, far below u32::MAX.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    out.extend_from_slice(payload);
}

/// A log's header record, encoded.
pub fn encode_header(header: &Header) -> Vec<u8> {
    let mut out = Vec::new();
    // A struct of integers and strings always serialises.
    encode(&serde_json::to_vec(header).unwrap_or_default(), &mut out);
    out
}

/// Where reading a log stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// At the end of the file.
    Clean,
    /// At a torn tail starting at this offset.
    Torn(u64),
}

/// A log read in full.
#[derive(Debug)]
pub struct Replayed {
    /// Its header, if it has one (a log from before headers has none).
    pub header: Option<Header>,
    /// Key records read.
    pub records: usize,
    /// Length of the part made of whole records.
    pub valid_len: u64,
    /// How it ended.
    pub end: End,
}

/// Acknowledged bytes that changed: where, and how.
#[derive(Debug, PartialEq, Eq)]
pub struct Damage {
    /// Offset of the damaged record.
    pub offset: u64,
    /// What is wrong with it.
    pub problem: String,
}

/// Reads a log, handing each key record to `apply` in order. Stops at a torn tail; returns
/// [`Damage`] for anything else that is not a whole, checksummed record.
pub fn replay(
    bytes: &[u8],
    mut apply: impl FnMut(Key) -> Result<(), String>,
) -> Result<Replayed, Damage> {
    let mut at = 0usize;
    let mut header = None;
    let mut records = 0;
    while at < bytes.len() {
        let damage = |problem: String| Damage {
            offset: at as u64,
            problem,
        };
        let payload = match classify(&bytes[at..]) {
            Record::Whole(payload) => payload,
            Record::Torn => {
                return Ok(Replayed {
                    header,
                    records,
                    valid_len: at as u64,
                    end: End::Torn(at as u64),
                });
            }
            Record::Damaged(problem) => return Err(damage(problem)),
        };
        if at == 0
            && let Ok(h) = serde_json::from_slice::<Header>(payload)
        {
            if h.log > FORMAT {
                return Err(damage(format!(
                    "the log is format {} and this version reads up to {FORMAT}",
                    h.log
                )));
            }
            header = Some(h);
        } else {
            let key: Key = serde_json::from_slice(payload).map_err(|e| {
                damage(format!("a record with a valid checksum is not a key ({e})"))
            })?;
            apply(key).map_err(damage)?;
            records += 1;
        }
        at += 8 + payload.len();
    }
    Ok(Replayed {
        header,
        records,
        valid_len: at as u64,
        end: End::Clean,
    })
}

enum Record<'a> {
    Whole(&'a [u8]),
    Torn,
    Damaged(String),
}

/// What the bytes at the start of `rest` are.
fn classify(rest: &[u8]) -> Record<'_> {
    // Space a crash allocated but never filled reads back as zeros.
    if rest.len() < 8 || rest.iter().all(|b| *b == 0) {
        return Record::Torn;
    }
    let (len, crc) = header_words(rest);
    if len == 0 || len > MAX_RECORD {
        return Record::Damaged(format!(
            "its length field says {len} bytes, which this server never writes"
        ));
    }
    let Some(payload) = rest.get(8..8 + len) else {
        // Cut short, unless the bytes that are there are a whole record whose length field
        // was damaged: a torn write never has a matching checksum over what follows.
        if crc32fast::hash(&rest[8..]) == crc {
            return Record::Damaged(format!(
                "its length field says {len} bytes but the {} bytes after it are a whole record",
                rest.len() - 8
            ));
        }
        return Record::Torn;
    };
    if crc32fast::hash(payload) != crc {
        return Record::Damaged(format!(
            "the checksum of its {len} bytes does not match (the record was changed after it was written)"
        ));
    }
    Record::Whole(payload)
}

fn header_words(rest: &[u8]) -> (usize, u32) {
    let word = |at: usize| u32::from_be_bytes([rest[at], rest[at + 1], rest[at + 2], rest[at + 3]]);
    (word(0) as usize, word(4))
}

/// What `--repair` could take from a damaged log.
#[derive(Debug, Default)]
pub struct Salvage {
    /// The header, if it survived.
    pub header: Option<Header>,
    /// Every whole, checksummed key record, in log order.
    pub keys: Vec<Key>,
    /// Byte ranges `[start, end)` that are not whole records.
    pub damaged: Vec<(u64, u64)>,
}

/// Recovers every whole record of a damaged log: at each offset a record with a matching
/// checksum that decodes is taken, and anything else is skipped a byte at a time.
pub fn salvage(bytes: &[u8]) -> Salvage {
    let mut out = Salvage::default();
    let mut at = 0usize;
    let mut bad_from: Option<usize> = None;
    while at < bytes.len() {
        let Some((payload, entry)) = whole_record(&bytes[at..]) else {
            bad_from.get_or_insert(at);
            at += 1;
            continue;
        };
        if let Some(from) = bad_from.take() {
            out.damaged.push((from as u64, at as u64));
        }
        match entry {
            Entry::Header(h) if at == 0 => out.header = Some(h),
            Entry::Header(_) => {}
            Entry::Key(k) => out.keys.push(*k),
        }
        at += 8 + payload;
    }
    if let Some(from) = bad_from {
        out.damaged.push((from as u64, bytes.len() as u64));
    }
    out
}

enum Entry {
    Header(Header),
    Key(Box<Key>),
}

/// A whole record at the start of `rest` that decodes, and its payload length.
fn whole_record(rest: &[u8]) -> Option<(usize, Entry)> {
    if rest.len() < 9 {
        return None;
    }
    let (len, crc) = header_words(rest);
    if len == 0 || len > MAX_SALVAGED_RECORD || rest[8] != b'{' {
        return None;
    }
    let payload = rest.get(8..8 + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    if let Ok(key) = serde_json::from_slice::<Key>(payload) {
        return Some((len, Entry::Key(Box::new(key))));
    }
    serde_json::from_slice::<Header>(payload)
        .ok()
        .map(|h| (len, Entry::Header(h)))
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use shadowkeep_api::keystore::{Algorithm, Kek};

    use super::*;

    fn log_of(n: usize) -> (Vec<u8>, Vec<usize>) {
        let kek = Kek::generate();
        let mut bytes = encode_header(&Header::new(None));
        let mut starts = Vec::new();
        for i in 0..n {
            starts.push(bytes.len());
            let key = Key::generate(
                &kek,
                format!("K{i}"),
                Algorithm::Aes,
                256,
                Timestamp::UNIX_EPOCH,
            )
            .unwrap();
            encode(&serde_json::to_vec(&key).unwrap(), &mut bytes);
        }
        (bytes, starts)
    }

    fn count(bytes: &[u8]) -> Result<Replayed, Damage> {
        replay(bytes, |_| Ok(()))
    }

    #[test]
    fn a_log_reads_back_whole() {
        let (bytes, _) = log_of(3);
        let r = count(&bytes).unwrap();
        assert_eq!(
            (r.records, r.end, r.valid_len),
            (3, End::Clean, bytes.len() as u64)
        );
        assert_eq!(r.header, Some(Header::new(None)));
    }

    #[test]
    fn every_cut_of_the_last_record_is_a_torn_tail() {
        let (bytes, starts) = log_of(2);
        let last = starts[1];
        for cut in last + 1..bytes.len() {
            let r = count(&bytes[..cut]).unwrap();
            assert_eq!(
                (r.records, r.end),
                (1, End::Torn(last as u64)),
                "cut at {cut}"
            );
        }
        let mut zeros = bytes[..last].to_vec();
        zeros.resize(last + 4096, 0);
        assert_eq!(count(&zeros).unwrap().end, End::Torn(last as u64));
    }

    #[test]
    fn a_flipped_bit_in_the_last_whole_record_is_damage() {
        let (bytes, starts) = log_of(2);
        let last = starts[1];
        for at in last..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[at] ^= 1 << bit;
                let result = count(&damaged);
                assert!(
                    matches!(&result, Err(Damage { offset, .. }) if *offset == last as u64),
                    "flip at byte {at} bit {bit}: {result:?}"
                );
            }
        }
    }

    #[test]
    fn salvage_takes_every_whole_record_around_damage() {
        let (mut bytes, starts) = log_of(5);
        bytes[starts[2] + 20] ^= 0x40;
        let s = salvage(&bytes);
        assert_eq!(s.keys.len(), 4);
        assert_eq!(s.header, Some(Header::new(None)));
        assert_eq!(s.damaged, vec![(starts[2] as u64, starts[3] as u64)]);
    }
}
