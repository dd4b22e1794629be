//! The replica sync contract: what replicas, and the operator's keystore sync, send each
//! other over the admin API. One set of types for both ends, so neither picks fields out of
//! loose JSON.
//!
//! - `POST /v1/keystore/delta`: body a [`Summary`]; answer the records the caller lacks or
//!   holds differently ([`delta`]), as a keystore serialisation.
//! - `GET /v1/keystore/digest`: answer a [`DigestReply`].
//! - `POST /v1/keystore/merge`: body a keystore serialisation; answer a [`MergeReply`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::keystore::{Key, Keystore};

/// What a caller of the delta endpoint holds: a hash of every record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    /// Key id to the SHA-256 of the record's canonical JSON ([`record_hash`]).
    pub have: BTreeMap<String, String>,
}

/// The hash of a record, as carried in a [`Summary`].
pub fn record_hash(key: &Key) -> String {
    // A key of strings and integers always serialises.
    let json = serde_json::to_vec(key).unwrap_or_default();
    hex::encode(Sha256::digest(&json))
}

/// The summary of a keystore.
pub fn summary(keystore: &Keystore) -> Summary {
    Summary {
        have: keystore
            .keys()
            .map(|k| (k.id.to_string(), record_hash(k)))
            .collect(),
    }
}

/// The records of `keystore` that a holder of `summary` lacks or holds differently.
pub fn delta(keystore: &Keystore, summary: &Summary) -> Keystore {
    let mut out = Keystore::new();
    for key in keystore.keys() {
        if summary.have.get(key.id.as_str()) != Some(&record_hash(key)) {
            // Records of one keystore never conflict with each other.
            let _ = out.insert(key.clone());
        }
    }
    out
}

/// The answer to `GET /v1/keystore/digest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestReply {
    /// The keystore's digest (`sha256:…`), equal on two replicas exactly when they hold the
    /// same records.
    pub digest: String,
    /// Keys held, destroyed ones included.
    pub keys: usize,
}

/// The answer to `POST /v1/keystore/merge`: `200 OK` when every record was taken or
/// already held, `409 Conflict` when any is listed in `conflicts` or `refused`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeReply {
    /// Records in the request.
    pub received: usize,
    /// Records taken: keys new here, and later states or attributes of keys held.
    pub stored: usize,
    /// Ids held here with other material or identity. The key held stays as it was and is
    /// served; the incoming record is quarantined (kept aside, never served).
    pub conflicts: Vec<String>,
    /// Records not stored at all, and why.
    pub refused: Vec<RefusedRecord>,
}

/// A record a merge did not store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefusedRecord {
    /// The record's key id.
    pub id: String,
    /// Why (never any material).
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;
    use crate::keystore::{Algorithm, Kek, KeyState};

    #[test]
    fn a_delta_carries_exactly_what_the_summary_lacks_or_holds_differently() {
        let kek = Kek::generate();
        let key =
            |n: &str| Key::generate(&kek, n, Algorithm::Aes, 256, Timestamp::UNIX_EPOCH).unwrap();
        let (a, b, c) = (key("A"), key("B"), key("C"));
        let mut theirs = Keystore::new();
        theirs.insert(a.clone()).unwrap();
        theirs.insert(b.clone()).unwrap();
        let mut ours = theirs.clone();
        ours.insert(c.clone()).unwrap();
        let mut b2 = b.clone();
        b2.state = KeyState::Active;
        ours.insert(b2).unwrap();
        let d = delta(&ours, &summary(&theirs));
        let ids: Vec<_> = d.ids().cloned().collect();
        let mut want = vec![b.id, c.id];
        want.sort();
        assert_eq!(ids, want);
        assert!(delta(&ours, &summary(&ours)).is_empty());
    }

    #[test]
    fn replies_refuse_unknown_fields() {
        assert!(serde_json::from_str::<DigestReply>(r#"{"digest":"sha256:00","keys":1}"#).is_ok());
        assert!(
            serde_json::from_str::<DigestReply>(r#"{"digest":"x","keys":1,"more":2}"#).is_err()
        );
        assert!(serde_json::from_str::<Summary>(r#"{"have":{},"x":1}"#).is_err());
    }
}
