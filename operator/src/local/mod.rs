//! `shadowkeep up`: an estate's manifests run as local processes, on the operator's control
//! core (DESIGN.md, "One control core, two shells"). Every replica is a key server on its
//! own loopback address; the state lives in a data directory.
//!
//! - [`layout`]: what is where in the data directory.
//! - [`addresses`]: each server's loopback address, kept across runs.
//! - [`backup`]: the backup targets, with credentials from files.
//! - [`certificates`]: server and client certificates from each KeyManager's CA.
//! - [`reconcile`]: the local shell around [`crate::core::prepare`].
//! - [`shadows`]: the Shadows, their credentials and rotation, run by the core.
//! - [`supervise`]: the server processes.
//! - [`estate_file`]: `estate.json`, what runs where.
//! - [`git`]: `up --git`, following a branch with the core's git sync.
//! - [`up`]: the command, and [`status`]: `shadowkeep status`.

pub mod addresses;
pub mod backup;
pub mod certificates;
pub mod estate_file;
pub mod git;
pub mod layout;
pub mod reconcile;
pub mod shadows;
pub mod status;
pub mod supervise;
pub mod up;
