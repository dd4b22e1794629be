//! The control core: the estate's rules with no Kubernetes client, so that the operator
//! and a local shell call the same functions.
//!
//! - [`material`]: what is generated once — the KEK, the replica certificate and its CA,
//!   the license.
//! - [`backup`]: backups kept apart (another namespace, an S3 bucket), the KEK escrowed.
//! - [`keystore`]: the canonical keystore and the KeyGroup pools kept in it.
//! - [`drive_moves`]: which KeyManager holds a drive's keys, and when a drive is held back.
//! - [`git_sync`]: following a Git branch — fetch, verify, plan, apply or hold, prune
//!   safely — for the GitSource controller and `up --git`.
//! - [`keystore_sync`]: pulling the keys each replica holds into the canonical keystore.
//! - [`configuration`]: bringing every server to a new drive table without a restart.
//! - [`prepare`]: the stateful step of a KeyManager's reconcile, run by both shells.
//! - [`shadow`]: shadow credentials and their rotation without outage.
//! - [`status`]: the KeyManager's status, computed purely from what its reconcile found.
//! - [`conditions`]: status conditions, computed fresh and merged with the previous ones.
//! - [`state`]: what the core keeps, behind one interface with two implementations
//!   (Kubernetes objects, a data directory).
//!
//! The controllers (`crate::controller`) depend on this module, never the other way.

pub mod backup;
pub mod conditions;
pub mod configuration;
pub mod drive_moves;
pub mod git_sync;
pub mod keystore;
pub mod keystore_sync;
pub mod material;
pub mod prepare;
pub mod shadow;
pub mod state;
pub mod status;

use shadowkeep_api::keystore::{KeystoreError, SealError};

pub use state::StateError;

/// Why a step of the core failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The canonical keystore could not be read or written.
    #[error("failed to read or write the canonical keystore: {0}")]
    Keystore(#[source] KeystoreError),
    /// The KEK stored for a KeyManager is not a KEK.
    #[error("failed to read the KEK of KeyManager {key_manager}: {source}")]
    Kek {
        /// The KeyManager (`namespace/name`).
        key_manager: String,
        /// The cause.
        #[source]
        source: SealError,
    },
    /// A KeyGroup's keys could not be generated or rotated.
    #[error("failed to maintain the keys of KeyGroup {group}: {source}")]
    KeyGroup {
        /// The KeyGroup.
        group: String,
        /// The cause.
        #[source]
        source: KeystoreError,
    },
    /// The state could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// A drive's keys cannot be carried (yet): the reason, for the drive's risk.
    #[error("failed to carry the drive's keys: {0}")]
    Carry(String),
    /// Material could not be made or read back.
    #[error("failed to make {what}: {reason}")]
    Material {
        /// What was being made.
        what: String,
        /// Why it failed.
        reason: String,
    },
}
