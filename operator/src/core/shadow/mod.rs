//! Shadows in the control core: their credentials (a password and the licence carrying
//! its verifier) and the rotation of those without outage. Both shells — the operator's
//! Shadow controller and `shadowkeep up` — run these rules.
//!
//! - [`credentials`]: issuing a pair, and the record kept of a shadow's pairs.
//! - [`observe`]: what the core asks replicas and shadows, and tells shadows.
//! - [`rotation`]: the pure step that moves a rotation on.
//! - [`status`]: the Shadows window, computed purely from what the shell found.
//! - [`supervise`]: that step against the stored state, and what replicas are to accept.
//! - [`tick`]: one look after a Shadow, with what only a shell can do passed in.

pub mod credentials;
pub mod observe;
pub mod rotation;
pub mod status;
pub mod supervise;
pub mod tick;

/// Annotation on a Shadow that asks it to poll and mirror its KeyManager now; its value is
/// echoed in `status.lastHandledSyncAt`.
pub const SYNC_REQUESTED_AT: &str = "shadowkeep.io/sync-requested-at";
/// Annotation on a Shadow that asks for a new password (and licence) now; its value is
/// echoed in `status.lastHandledRotationAt`.
pub const ROTATE_PASSWORD_REQUESTED_AT: &str = "shadowkeep.io/rotate-password-requested-at";
