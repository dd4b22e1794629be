//! The snapshot file: the whole keystore behind a header that lets a reader tell a damaged
//! or substituted file from a good one.
//!
//! Layout: `MAGIC (8) | generation: u64 BE | payload length: u64 BE | sha256 (32) | payload`,
//! where the hash covers everything before it and the payload, and the payload is a
//! [`Keystore`] serialisation. The generation grows by one at every compaction; the log's
//! header names the generation and hash it was cut against (see [`super::log`]), so a missing,
//! older or damaged snapshot is refused instead of silently serving fewer keys.
//!
//! Snapshots written before this header existed are bare keystore JSON; they are read as
//! generation 0, and the store rewrites them in this format as soon as it opens them.

use sha2::{Digest as _, Sha256};
use shadowkeep_api::keystore::Keystore;

/// The first bytes of a snapshot in this format.
const MAGIC: [u8; 8] = *b"SKSNAP\0\x02";
const HEADER: usize = 8 + 8 + 8 + 32;

/// A snapshot read back and checked.
#[derive(Debug)]
pub struct Snapshot {
    /// The compaction that wrote it; 0 for a snapshot from before the header existed.
    pub generation: u64,
    /// The hash its header carries (empty for a legacy snapshot).
    pub digest: String,
    /// The keys.
    pub keystore: Keystore,
}

/// Encodes `payload` (a keystore serialisation) as snapshot `generation`; returns the bytes
/// and the hash the log's header records.
pub fn encode(generation: u64, payload: &[u8]) -> (Vec<u8>, String) {
    let len = payload.len() as u64;
    let hash = digest(generation, len, payload);
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&generation.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&hash);
    out.extend_from_slice(payload);
    (out, hex::encode(hash))
}

fn digest(generation: u64, len: u64, payload: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(MAGIC)
        .chain_update(generation.to_be_bytes())
        .chain_update(len.to_be_bytes())
        .chain_update(payload)
        .finalize()
        .into()
}

/// Reads and checks a snapshot. The error says what is wrong, for a message that names the
/// file.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, String> {
    if bytes.first() == Some(&b'{') {
        let keystore = Keystore::from_bytes(bytes).map_err(|e| e.to_string())?;
        return Ok(Snapshot {
            generation: 0,
            digest: String::new(),
            keystore,
        });
    }
    let header = bytes
        .get(..HEADER)
        .ok_or_else(|| format!("{} bytes is shorter than a snapshot header", bytes.len()))?;
    if header[..8] != MAGIC {
        return Err("it does not start with the snapshot header".to_owned());
    }
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let generation = word(8);
    let len = word(16);
    let payload = &bytes[HEADER..];
    if payload.len() as u64 != len {
        return Err(format!(
            "its header promises {len} bytes of keys but {} follow (truncated or extended)",
            payload.len()
        ));
    }
    let hash = digest(generation, len, payload);
    if header[24..56] != hash {
        return Err("its checksum does not match its contents (the file is damaged)".to_owned());
    }
    let keystore = Keystore::from_bytes(payload).map_err(|e| e.to_string())?;
    Ok(Snapshot {
        generation,
        digest: hex::encode(hash),
        keystore,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flipped_bit_is_refused() {
        let payload = Keystore::new().to_bytes().unwrap();
        let (bytes, digest) = encode(7, &payload);
        let snapshot = decode(&bytes).unwrap();
        assert_eq!((snapshot.generation, snapshot.digest), (7, digest));
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[at] ^= 1 << bit;
                assert!(
                    decode(&damaged).is_err(),
                    "flip at byte {at} bit {bit} went unseen"
                );
            }
        }
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn a_legacy_snapshot_reads_as_generation_zero() {
        let payload = Keystore::new().to_bytes().unwrap();
        assert_eq!(decode(&payload).unwrap().generation, 0);
    }
}
