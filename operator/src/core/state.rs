//! What the core keeps, behind one small interface: material made once (the KEK, the
//! canonical keystore, the CA and replica certificate, the license signing key), the
//! canonical keystore's versioned backups, drive histories, and each KeyManager's status.
//!
//! Two implementations: Kubernetes objects (`crate::controller::state`, the Secrets and
//! ConfigMaps the operator has always written) and files in a data directory
//! ([`dir::DataDir`]). The core's rules are written once against [`State`].

pub mod dir;

use std::collections::BTreeMap;
use std::future::Future;

use shadowkeep_api::crd::KeyManagerStatus;
use shadowkeep_api::drive_history::DriveHistory;

/// A KeyManager whose state is kept: its namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    /// The namespace.
    pub namespace: String,
    /// The KeyManager's name.
    pub name: String,
}

impl Owner {
    /// The KeyManager `name` in `namespace`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The KeyManager a reference (`namespace/name`, as drive histories name one) names.
    pub fn parse(reference: &str) -> Result<Self, StateError> {
        match reference.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Ok(Self::new(ns, name)),
            _ => Err(StateError::Invalid(format!(
                "{reference:?} does not name a KeyManager (namespace/name)"
            ))),
        }
    }

    /// `namespace/name`, as drive histories name a KeyManager.
    pub fn reference(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A piece of material, made once and never overwritten (the canonical keystore is
/// replaced only through [`State::replace_keystore`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Item {
    /// The key-encryption key: `kek`.
    Kek,
    /// The canonical keystore: `keystore`.
    Keystore,
    /// The generated CA: `ca.crt`, `ca.key`.
    Ca,
    /// The generated replica certificate: `tls.crt`, `tls.key`, `ca.crt`.
    Tls,
    /// The license signing key: `seed`.
    LicenseSigning,
}

impl Item {
    /// Every item, in the order they are made.
    pub const ALL: [Self; 5] = [
        Self::Kek,
        Self::Keystore,
        Self::Ca,
        Self::Tls,
        Self::LicenseSigning,
    ];

    /// The fields the item holds.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            Self::Kek => &["kek"],
            Self::Keystore => &["keystore"],
            Self::Ca => &["ca.crt", "ca.key"],
            Self::Tls => &["tls.crt", "tls.key", "ca.crt"],
            Self::LicenseSigning => &["seed"],
        }
    }

    /// A short name, for file names and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kek => "kek",
            Self::Keystore => "keystore",
            Self::Ca => "ca",
            Self::Tls => "tls",
            Self::LicenseSigning => "license-signing",
        }
    }
}

/// The values of an item, by field. Secret: never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Fields(BTreeMap<String, Vec<u8>>);

impl Fields {
    /// Fields from `(name, value)` pairs.
    pub fn of<'a>(pairs: impl IntoIterator<Item = (&'a str, Vec<u8>)>) -> Self {
        Self(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    /// A field's value (empty when missing).
    pub fn get(&self, field: &str) -> &[u8] {
        self.0.get(field).map_or(&[], Vec::as_slice)
    }

    /// Every field and its value.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }
}

impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// A drive history as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredHistory {
    /// The history.
    pub history: DriveHistory,
    /// The drives the KeyManager's owners released to other namespaces (the
    /// `shadowkeep.io/release-drives` list kept with the history, which outlives the
    /// KeyManager).
    pub released: Option<String>,
    /// The version read, for a write that must fail if another changed it since.
    pub version: String,
}

/// A shadow's credential record as stored: secret bytes the core reads
/// (`core::shadow::credentials::Record`), and the version to write it back at.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredShadow {
    /// The Shadow's name.
    pub shadow: String,
    /// The record.
    pub bytes: Vec<u8>,
    /// The version read, for a write that must fail if another changed it since.
    pub version: String,
}

impl std::fmt::Debug for StoredShadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredShadow")
            .field("shadow", &self.shadow)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store (API server, file system) refused or failed.
    #[error("failed to {action}: {source}")]
    Store {
        /// What was being done, naming the object or file.
        action: String,
        /// The cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The stored value changed since it was read; nothing was written.
    #[error("failed to {action}: it changed since it was read; retrying")]
    Conflict {
        /// What was being done.
        action: String,
    },
    /// A stored value cannot be read.
    #[error("failed to read {what}: {reason}")]
    Corrupt {
        /// The object or file.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An owner or value that cannot be stored (a name that is no path component).
    #[error("failed to store: {0}")]
    Invalid(String),
}

impl StateError {
    /// A store failure while doing `action`.
    pub fn store<E>(action: impl Into<String>) -> impl FnOnce(E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let action = action.into();
        move |source| Self::Store {
            action,
            source: Box::new(source),
        }
    }
}

/// What the core keeps. Every method is one read or one change of the store: a change
/// either happens whole or not at all.
pub trait State: Send + Sync {
    /// The item of `owner`, or `None` when it was never made.
    fn read(
        &self,
        owner: &Owner,
        item: Item,
    ) -> impl Future<Output = Result<Option<Fields>, StateError>> + Send;

    /// Stores `fields` as the item of `owner` unless it exists, and returns what is
    /// stored: an item once made is never overwritten.
    fn create(
        &self,
        owner: &Owner,
        item: Item,
        fields: Fields,
    ) -> impl Future<Output = Result<Fields, StateError>> + Send;

    /// Replaces the canonical keystore of `owner`, `old` by `new`, after keeping `old` as
    /// a backup, then keeps the newest `retention` backups. Fails with
    /// [`StateError::Conflict`], writing nothing, when the stored keystore is not `old`.
    fn replace_keystore(
        &self,
        owner: &Owner,
        old: &[u8],
        new: &[u8],
        retention: usize,
    ) -> impl Future<Output = Result<(), StateError>> + Send;

    /// The keystore backups of `owner`, oldest first.
    fn backups(
        &self,
        owner: &Owner,
    ) -> impl Future<Output = Result<Vec<Vec<u8>>, StateError>> + Send;

    /// The drive history of `owner`, or `None` when it has none yet.
    fn read_history(
        &self,
        owner: &Owner,
    ) -> impl Future<Output = Result<Option<StoredHistory>, StateError>> + Send;

    /// Where the drive history of `owner` is kept, for a message telling a person where
    /// to release its drives once the KeyManager is deleted.
    fn history_location(&self, owner: &Owner) -> String;

    /// The last status written for `owner`, or `None` when none was.
    fn read_status(
        &self,
        owner: &Owner,
    ) -> impl Future<Output = Result<Option<KeyManagerStatus>, StateError>> + Send;

    /// Writes the status of `owner` whole (the reconcile owns all of it).
    fn write_status(
        &self,
        owner: &Owner,
        status: &KeyManagerStatus,
    ) -> impl Future<Output = Result<(), StateError>> + Send;

    /// Writes the drive history of `owner`: created when `version` is `None`, replaced
    /// when the stored one is still at `version`. Fails with [`StateError::Conflict`],
    /// writing nothing, when it was created or changed since.
    fn write_history(
        &self,
        owner: &Owner,
        history: &DriveHistory,
        version: Option<&str>,
    ) -> impl Future<Output = Result<(), StateError>> + Send;

    /// The credential record of Shadow `shadow` of `owner`, or `None` when none was made.
    fn read_shadow(
        &self,
        owner: &Owner,
        shadow: &str,
    ) -> impl Future<Output = Result<Option<StoredShadow>, StateError>> + Send;

    /// Every shadow credential record of `owner`, by Shadow name.
    fn shadows(
        &self,
        owner: &Owner,
    ) -> impl Future<Output = Result<Vec<StoredShadow>, StateError>> + Send;

    /// Writes the credential record of Shadow `shadow` of `owner`: created when `version`
    /// is `None`, replaced when the stored one is still at `version`. Fails with
    /// [`StateError::Conflict`], writing nothing, when it was created or changed since.
    fn write_shadow(
        &self,
        owner: &Owner,
        shadow: &str,
        bytes: &[u8],
        version: Option<&str>,
    ) -> impl Future<Output = Result<(), StateError>> + Send;
}
