//! The keystore: every key a KeyManager ever held, as a grow-only set keyed by id.
//!
//! Replicas that accepted writes independently converge by [`Keystore::merge`], the union
//! by id. Nothing is ever removed: destroying a key is a state, and a record that claims an
//! existing id with different material is a conflict that is reported and quarantined —
//! the key already held stays as it was, and the other record is kept beside it.

mod seal;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use seal::{KEK_LEN, Kek, SealError, SealedMaterial};

/// The serialisation format written by [`Keystore::to_bytes`].
pub const FORMAT_VERSION: u32 = 1;

/// A key's unique id (a random UUID for keys made here; any 1-128 printable ASCII
/// characters without spaces for keys imported from elsewhere).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyId(String);

impl KeyId {
    /// A fresh random id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for KeyId {
    type Error = KeystoreError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.is_empty() || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(KeystoreError::InvalidId {
                id: s.escape_debug().to_string(),
            });
        }
        Ok(Self(s))
    }
}

impl From<KeyId> for String {
    fn from(id: KeyId) -> Self {
        id.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Symmetric ciphers a key can be for.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
pub enum Algorithm {
    /// AES, the cipher LTO and enterprise tape drives use.
    #[default]
    #[serde(rename = "AES")]
    Aes,
}

impl Algorithm {
    /// Whether `bits` is a valid key length for this cipher.
    pub fn valid_length(self, bits: u16) -> bool {
        match self {
            Self::Aes => matches!(bits, 128 | 192 | 256),
        }
    }
}

/// The KMIP life-cycle states a key passes through, in order. A key only moves forward,
/// which is what lets replicas merge state by taking the later one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum KeyState {
    /// Created, not yet usable for protecting new data.
    PreActive,
    /// Usable for new data.
    Active,
    /// Only for processing existing data (reading old tapes).
    Deactivated,
    /// Revoked because the key (or its CA) may be known to others; still readable for
    /// old data, never for new.
    Compromised,
    /// Material no longer served; the record and sealed material stay.
    Destroyed,
}

/// One value of a custom attribute, with the time it was set so replicas agree on the
/// latest write. `None` records a deletion.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeValue {
    /// Milliseconds since the Unix epoch when the value was set (the ordering key).
    pub updated_at_ms: i64,
    /// The value, or `None` once deleted.
    pub value: Option<String>,
}

/// A key record.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    /// Unique id.
    pub id: KeyId,
    /// Name (KMIP Name attribute; tape libraries put the barcode here).
    pub name: String,
    /// Cipher.
    pub algorithm: Algorithm,
    /// Length in bits.
    pub length: u16,
    /// Life-cycle state.
    pub state: KeyState,
    /// When the key was created.
    pub created_at: Timestamp,
    /// Other attributes (application-specific information, `x-` attributes, key group).
    #[serde(default)]
    pub attributes: BTreeMap<String, AttributeValue>,
    /// The material, sealed under the KEK.
    pub material: SealedMaterial,
}

impl Key {
    /// Makes a new pre-active key with random material of `length` bits, sealed under `kek`.
    pub fn generate(
        kek: &Kek,
        name: impl Into<String>,
        algorithm: Algorithm,
        length: u16,
        created_at: Timestamp,
    ) -> Result<Self, KeystoreError> {
        use aes_gcm::aead::{OsRng, rand_core::RngCore as _};

        let mut plaintext = zeroize::Zeroizing::new(vec![0u8; usize::from(length / 8)]);
        OsRng.fill_bytes(&mut plaintext);
        Self::from_material(kek, name, algorithm, length, &plaintext, created_at)
    }

    /// Makes a new pre-active key from material a client supplied (KMIP Register).
    pub fn from_material(
        kek: &Kek,
        name: impl Into<String>,
        algorithm: Algorithm,
        length: u16,
        plaintext: &[u8],
        created_at: Timestamp,
    ) -> Result<Self, KeystoreError> {
        if !algorithm.valid_length(length) || plaintext.len() * 8 != usize::from(length) {
            return Err(KeystoreError::InvalidLength { algorithm, length });
        }
        let id = KeyId::generate();
        let material = kek.seal(&id, plaintext)?;
        Ok(Self {
            id,
            name: name.into(),
            algorithm,
            length,
            state: KeyState::PreActive,
            created_at,
            attributes: BTreeMap::new(),
            material,
        })
    }

    /// Whether `other` is the same key: equal in everything a replica may not change.
    /// Two records with one id that differ here are a conflict.
    pub fn same_key(&self, other: &Self) -> bool {
        self.id == other.id
            && self.name == other.name
            && self.algorithm == other.algorithm
            && self.length == other.length
            && self.created_at == other.created_at
            && self.material == other.material
    }

    /// The value of attribute `name`, unless it was deleted.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name)?.value.as_deref()
    }

    /// Whether merging this record into `theirs` would change what `theirs`' holder keeps:
    /// a later state, a newer attribute value, or a conflicting record to quarantine.
    fn advances(&self, theirs: &Self) -> bool {
        !self.same_key(theirs) || theirs.clone().join(self)
    }

    /// Joins the mutable parts of two records of the same key: the later state, and the
    /// latest value of each attribute. Returns whether `self` changed.
    fn join(&mut self, other: &Self) -> bool {
        let mut changed = false;
        if other.state > self.state {
            self.state = other.state;
            changed = true;
        }
        for (name, theirs) in &other.attributes {
            match self.attributes.get_mut(name) {
                Some(ours) if *ours >= *theirs => {}
                Some(ours) => {
                    ours.clone_from(theirs);
                    changed = true;
                }
                None => {
                    self.attributes.insert(name.clone(), theirs.clone());
                    changed = true;
                }
            }
        }
        changed
    }
}

/// A record that claimed an existing id with different material or identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The contested id.
    pub id: KeyId,
    /// Name of the record kept.
    pub kept: String,
    /// Name of the record quarantined.
    pub quarantined: String,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key {} ({:?}) conflicts with an incoming record ({:?}) of the same id but different material; kept the existing key and quarantined the other",
            self.id, self.kept, self.quarantined
        )
    }
}

/// What a merge did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Ids that were not held before.
    pub added: Vec<KeyId>,
    /// Ids whose state or attributes moved forward.
    pub updated: Vec<KeyId>,
    /// Records refused for a conflict (quarantined, not lost).
    pub conflicts: Vec<Conflict>,
}

impl MergeReport {
    /// Whether the merge changed the keystore.
    pub fn changed(&self) -> bool {
        !self.added.is_empty() || !self.updated.is_empty() || !self.conflicts.is_empty()
    }
}

/// A keystore digest: equal for two keystores exactly when their contents are equal.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Every key a KeyManager holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keystore {
    keys: BTreeMap<KeyId, Key>,
    quarantine: BTreeSet<QuarantinedKey>,
}

/// Orders quarantined records by their canonical bytes so the set is deterministic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct QuarantinedKey {
    id: KeyId,
    canonical: Vec<u8>,
}

impl QuarantinedKey {
    fn new(key: &Key) -> Result<Self, KeystoreError> {
        Ok(Self {
            id: key.id.clone(),
            canonical: serde_json::to_vec(key).map_err(KeystoreError::encode)?,
        })
    }

    fn key(&self) -> Result<Key, KeystoreError> {
        serde_json::from_slice(&self.canonical).map_err(KeystoreError::decode)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    format: u32,
    keys: Vec<Key>,
    #[serde(default)]
    quarantine: Vec<Key>,
}

#[derive(Deserialize)]
struct FormatOnly {
    format: Option<u32>,
}

impl Keystore {
    /// An empty keystore.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keys held, destroyed ones included.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key with this id.
    pub fn get(&self, id: &KeyId) -> Option<&Key> {
        self.keys.get(id)
    }

    /// All keys, in id order.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.keys.values()
    }

    /// All ids, in order.
    pub fn ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.keys()
    }

    /// Records quarantined by conflicts, in canonical order.
    pub fn quarantined(&self) -> Result<Vec<Key>, KeystoreError> {
        self.quarantine.iter().map(QuarantinedKey::key).collect()
    }

    /// Adds one record, by the same rule as [`Keystore::merge`].
    pub fn insert(&mut self, key: Key) -> Result<MergeReport, KeystoreError> {
        let mut report = MergeReport::default();
        self.merge_key(key, &mut report)?;
        Ok(report)
    }

    /// Merges `other` into this keystore: the union by id. Keys held here are never
    /// replaced; their state and attributes move forward to the later of the two.
    pub fn merge(&mut self, other: &Self) -> Result<MergeReport, KeystoreError> {
        let mut report = MergeReport::default();
        for key in other.keys.values() {
            self.merge_key(key.clone(), &mut report)?;
        }
        for q in &other.quarantine {
            self.quarantine.insert(q.clone());
        }
        Ok(report)
    }

    fn merge_key(&mut self, key: Key, report: &mut MergeReport) -> Result<(), KeystoreError> {
        match self.keys.get_mut(&key.id) {
            None => {
                report.added.push(key.id.clone());
                self.keys.insert(key.id.clone(), key);
            }
            Some(ours) if ours.same_key(&key) => {
                if ours.join(&key) {
                    report.updated.push(key.id.clone());
                }
            }
            Some(ours) => {
                let conflict = Conflict {
                    id: key.id.clone(),
                    kept: ours.name.clone(),
                    quarantined: key.name.clone(),
                };
                if self.quarantine.insert(QuarantinedKey::new(&key)?) {
                    report.conflicts.push(conflict);
                }
            }
        }
        Ok(())
    }

    /// The records held here that `other` lacks or holds in an earlier state: what `other`
    /// needs to catch up. Merging the result into `other` makes it hold everything this
    /// keystore holds.
    #[must_use]
    pub fn delta_for(&self, other: &Self) -> Self {
        let keys = self
            .keys
            .values()
            .filter(|k| {
                other
                    .keys
                    .get(&k.id)
                    .is_none_or(|theirs| k.advances(theirs))
            })
            .map(|k| (k.id.clone(), k.clone()))
            .collect();
        let quarantine = self
            .quarantine
            .difference(&other.quarantine)
            .cloned()
            .collect();
        Self { keys, quarantine }
    }

    /// The digest of the canonical serialisation.
    pub fn digest(&self) -> Result<Digest, KeystoreError> {
        let bytes = self.to_bytes()?;
        let hash = Sha256::new_with_prefix(b"shadowkeep.io/keystore-digest/v1\0")
            .chain_update(&bytes)
            .finalize();
        Ok(Digest(hash.into()))
    }

    /// The canonical, versioned serialisation (JSON with keys in id order).
    pub fn to_bytes(&self) -> Result<Vec<u8>, KeystoreError> {
        let envelope = Envelope {
            format: FORMAT_VERSION,
            keys: self.keys.values().cloned().collect(),
            quarantine: self.quarantined()?,
        };
        serde_json::to_vec(&envelope).map_err(KeystoreError::encode)
    }

    /// Reads a serialisation written by [`Keystore::to_bytes`] of this or an earlier format.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeystoreError> {
        let format = serde_json::from_slice::<FormatOnly>(bytes)
            .map_err(KeystoreError::decode)?
            .format;
        match format {
            Some(FORMAT_VERSION) => {}
            Some(found) => return Err(KeystoreError::UnsupportedFormat { found }),
            None => return Err(KeystoreError::decode("missing field `format`")),
        }
        let envelope: Envelope = serde_json::from_slice(bytes).map_err(KeystoreError::decode)?;
        let mut store = Self::new();
        for key in envelope.keys {
            if store.keys.contains_key(&key.id) {
                return Err(KeystoreError::DuplicateId { id: key.id });
            }
            store.keys.insert(key.id.clone(), key);
        }
        for key in &envelope.quarantine {
            store.quarantine.insert(QuarantinedKey::new(key)?);
        }
        Ok(store)
    }
}

/// Why a keystore operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeystoreError {
    /// A key id that is empty, too long or not printable.
    #[error("invalid key id {id:?}: expected 1-128 printable ASCII characters without spaces")]
    InvalidId {
        /// The id, escaped.
        id: String,
    },
    /// A key length the cipher does not have.
    #[error("invalid key length {length} for {algorithm:?}")]
    InvalidLength {
        /// The cipher.
        algorithm: Algorithm,
        /// The length asked for.
        length: u16,
    },
    /// A serialisation of a format this version does not read.
    #[error(
        "failed to read keystore: format {found} is newer than this version reads ({FORMAT_VERSION})"
    )]
    UnsupportedFormat {
        /// The format found.
        found: u32,
    },
    /// The same id twice in one serialisation.
    #[error("failed to read keystore: key id {id} appears twice")]
    DuplicateId {
        /// The id.
        id: KeyId,
    },
    /// Malformed serialisation.
    #[error("failed to read keystore: {0}")]
    Decode(String),
    /// Serialisation failed.
    #[error("failed to write keystore: {0}")]
    Encode(String),
    /// Sealing or opening material failed.
    #[error(transparent)]
    Seal(#[from] SealError),
}

impl KeystoreError {
    fn decode(e: impl fmt::Display) -> Self {
        Self::Decode(e.to_string())
    }

    fn encode(e: impl fmt::Display) -> Self {
        Self::Encode(e.to_string())
    }
}
