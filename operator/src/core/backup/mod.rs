//! Backups kept apart from the KeyManager: each change of the canonical keystore written
//! as a new, never-overwritten object to every target the KeyManager names, with the KEK
//! sealed to the user's recovery keys.
//!
//! - [`archive`]: one backup as one self-contained object; sealed, opened, verified.
//! - [`restore`]: a backup merged back into its KeyManager, or a lost one rebuilt.

pub mod archive;
pub mod restore;
