//! Which KeyManager has served each drive, so that a drive that moves does not leave its
//! keys behind.
//!
//! A tape drive reads its old tapes with the keys of the KeyManager that served it when
//! they were written. If the drive is simply listed under another KeyManager, that one has
//! none of those keys: the tapes become unreadable there. So each KeyManager keeps a
//! history of the drives it has served, kept even when the KeyManager is deleted, and a
//! drive another KeyManager still answers for is held back until its keys are carried
//! over (or it is put back).
//!
//! A KeyManager is named `namespace/name` here, since histories are compared across
//! namespaces.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::key_groups::POOL_ATTRIBUTE;
use crate::keystore::{Kek, Key, Keystore, KeystoreError};

/// The file the history is stored under (in a ConfigMap of its KeyManager).
pub const HISTORY_FILE: &str = "drives.json";

/// Storage key of the attribute the key server puts on keys a drive creates.
pub const DRIVE_KEY_GROUP_ATTRIBUTE: &str = "kmip:y-KeyGroup#0";

const FORMAT: u32 = 1;

/// The drives one KeyManager has served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveHistory {
    /// Format version; only 1 exists.
    pub format: u32,
    /// By drive serial number.
    pub drives: BTreeMap<String, DriveRecord>,
}

/// One drive a KeyManager has served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DriveRecord {
    /// When the KeyManager first served the drive (or received its keys).
    pub since: Timestamp,
    /// The KeyGroup the drive used here, when it had one: its keys are the drive's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_group: Option<String>,
    /// The KeyManager (`namespace/name`) the drive's keys were carried from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carried_from: Option<String>,
    /// The KeyManager (`namespace/name`) the drive and its keys were carried to. The
    /// record stays: the keys stay here too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_to: Option<String>,
}

/// A history that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Not the JSON of a history.
    #[error("drive history is not valid: {0}")]
    Invalid(String),
    /// Written by a newer release.
    #[error("drive history has format {0}; this release reads format {FORMAT}")]
    Format(u32),
}

/// An empty history of the current format (a derived default would say format 0, which
/// no release reads back).
impl Default for DriveHistory {
    fn default() -> Self {
        Self::new()
    }
}

impl DriveHistory {
    /// An empty history.
    pub fn new() -> Self {
        Self {
            format: FORMAT,
            drives: BTreeMap::new(),
        }
    }

    /// Reads a stored history; empty text is an empty history.
    pub fn from_json(text: &str) -> Result<Self, HistoryError> {
        if text.trim().is_empty() {
            return Ok(Self::new());
        }
        let history: Self =
            serde_json::from_str(text).map_err(|e| HistoryError::Invalid(e.to_string()))?;
        if history.format != FORMAT {
            return Err(HistoryError::Format(history.format));
        }
        Ok(history)
    }

    /// The stored form (stable: drives sorted by serial).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Whether this KeyManager answers for `serial`: it served the drive and did not hand
    /// it on.
    pub fn serves(&self, serial: &str) -> bool {
        self.drives
            .get(serial)
            .is_some_and(|r| r.moved_to.is_none())
    }

    /// Records that this KeyManager serves `serial`. Returns whether the history changed;
    /// a drive already recorded keeps its record.
    pub fn record(&mut self, serial: &str, key_group: Option<&str>, now: Timestamp) -> bool {
        if self.drives.contains_key(serial) {
            return false;
        }
        self.drives.insert(
            serial.to_owned(),
            DriveRecord {
                since: now,
                key_group: key_group.map(str::to_owned),
                carried_from: None,
                moved_to: None,
            },
        );
        true
    }

    /// Records that `serial` and its keys went to KeyManager `to`. Returns whether the
    /// history changed.
    pub fn moved(&mut self, serial: &str, to: &str) -> bool {
        match self.drives.get_mut(serial) {
            Some(r) if r.moved_to.as_deref() != Some(to) => {
                r.moved_to = Some(to.to_owned());
                true
            }
            _ => false,
        }
    }

    /// Records that `serial`'s keys arrived from KeyManager `from` and that this
    /// KeyManager now serves it. Returns whether the history changed.
    pub fn carried(
        &mut self,
        serial: &str,
        from: &str,
        key_group: Option<&str>,
        now: Timestamp,
    ) -> bool {
        let record = DriveRecord {
            since: now,
            key_group: key_group.map(str::to_owned),
            carried_from: Some(from.to_owned()),
            moved_to: None,
        };
        match self.drives.get(serial) {
            Some(r) if r.carried_from.as_deref() == Some(from) && r.moved_to.is_none() => false,
            _ => {
                self.drives.insert(serial.to_owned(), record);
                true
            }
        }
    }
}

/// Whether `key` belongs to KeyGroup `group`: a pool key the operator generated for it,
/// or a key a drive of the group created.
pub fn in_key_group(key: &Key, group: &str) -> bool {
    let tagged = serde_json::json!({ "TextString": group }).to_string();
    [POOL_ATTRIBUTE, DRIVE_KEY_GROUP_ATTRIBUTE]
        .iter()
        .any(|a| key.attribute(a) == Some(tagged.as_str()))
}

/// Copies a drive's keys from one keystore to another: the keys of `group`, or every key
/// when the drive had no group. Each key keeps its id, name, state and attributes, and
/// its material is re-sealed under the receiving KEK. Keys the receiver already holds are
/// left as they are (sealing again would make a second, conflicting record of them).
/// Returns how many keys were added.
pub fn carry_keys(
    from: &Keystore,
    from_kek: &Kek,
    to: &mut Keystore,
    to_kek: &Kek,
    group: Option<&str>,
) -> Result<usize, KeystoreError> {
    let mut carried = 0;
    for key in from.keys() {
        if to.get(&key.id).is_some() || group.is_some_and(|g| !in_key_group(key, g)) {
            continue;
        }
        let plaintext = from_kek.open(&key.id, &key.material)?;
        let mut copy = key.clone();
        copy.material = to_kek.seal(&key.id, &plaintext)?;
        to.insert(copy)?;
        carried += 1;
    }
    Ok(carried)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_groups::{Pool, maintain};
    use crate::keystore::Algorithm;

    #[test]
    fn a_default_history_reads_back() {
        let stored = DriveHistory::default().to_json();
        assert_eq!(
            DriveHistory::from_json(&stored).unwrap(),
            DriveHistory::new()
        );
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_790_000_000).unwrap()
    }

    fn pool(name: &str) -> Pool<'_> {
        Pool {
            name,
            prefix: name,
            length: 256,
            count: 3,
            rotation: None,
        }
    }

    #[test]
    fn a_history_round_trips_and_refuses_what_it_cannot_read() {
        let mut history = DriveHistory::new();
        assert!(history.record("1013000123", Some("lto"), now()));
        assert!(
            !history.record("1013000123", None, now()),
            "a record is kept"
        );
        assert!(history.moved("1013000123", "site-b/dr-keys"));
        assert!(!history.moved("1013000123", "site-b/dr-keys"));
        let text = history.to_json();
        assert_eq!(DriveHistory::from_json(&text).unwrap(), history);
        assert_eq!(DriveHistory::from_json("").unwrap(), DriveHistory::new());
        let newer = text.replace("\"format\": 1", "\"format\": 2");
        assert!(matches!(
            DriveHistory::from_json(&newer),
            Err(HistoryError::Format(2))
        ));
        let unknown = text.replace("\"since\"", "\"sinse\"");
        let err = DriveHistory::from_json(&unknown).unwrap_err().to_string();
        assert!(err.contains("sinse"), "{err}");
    }

    #[test]
    fn a_drive_handed_on_is_no_longer_served_until_it_comes_back() {
        let mut history = DriveHistory::new();
        assert!(!history.serves("D1"));
        history.record("D1", None, now());
        assert!(history.serves("D1"));
        history.moved("D1", "ns/other");
        assert!(!history.serves("D1"));
        assert!(history.carried("D1", "ns/other", None, now()));
        assert!(history.serves("D1"));
        assert!(!history.carried("D1", "ns/other", None, now()));
        assert_eq!(
            history.drives["D1"].carried_from.as_deref(),
            Some("ns/other")
        );
    }

    #[test]
    fn carrying_copies_the_groups_keys_resealed_and_is_idempotent() {
        let (old_kek, new_kek) = (Kek::generate(), Kek::generate());
        let mut old = Keystore::new();
        maintain(&old_kek, &mut old, &pool("lto"), now()).unwrap();
        maintain(&old_kek, &mut old, &pool("other"), now()).unwrap();
        let mut unrelated = Key::generate(&old_kek, "loose", Algorithm::Aes, 256, now()).unwrap();
        unrelated.attributes.clear();
        old.insert(unrelated).unwrap();
        let lto: Vec<&Key> = old.keys().filter(|k| in_key_group(k, "lto")).collect();
        assert_eq!(lto.len(), 4, "an active key and three spares");

        let mut new = Keystore::new();
        maintain(&new_kek, &mut new, &pool("lto-here"), now()).unwrap();
        let before = new.len();
        let carried = carry_keys(&old, &old_kek, &mut new, &new_kek, Some("lto")).unwrap();
        assert_eq!(carried, 4);
        assert_eq!(new.len(), before + 4);
        for key in &lto {
            let copy = new.get(&key.id).unwrap();
            assert_eq!(
                (&copy.name, copy.state, &copy.attributes),
                (&key.name, key.state, &key.attributes)
            );
            assert_eq!(
                *new_kek.open(&key.id, &copy.material).unwrap(),
                *old_kek.open(&key.id, &key.material).unwrap(),
                "the same material, sealed under the new KEK"
            );
            assert!(old_kek.open(&key.id, &copy.material).is_err());
        }
        // Again: nothing more, and no conflicting second record.
        assert_eq!(
            carry_keys(&old, &old_kek, &mut new, &new_kek, Some("lto")).unwrap(),
            0
        );
        assert!(new.quarantined().unwrap().is_empty());

        // Without a group, every key goes.
        let mut all = Keystore::new();
        assert_eq!(
            carry_keys(&old, &old_kek, &mut all, &new_kek, None).unwrap(),
            old.len()
        );
        // The wrong KEK carries nothing and says which.
        let err = carry_keys(&old, &new_kek, &mut Keystore::new(), &new_kek, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(old_kek.fingerprint()), "{err}");
    }
}
