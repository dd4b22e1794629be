//! The shadowkeep key server: KMIP over mutual TLS in front of a durable keystore.
//!
//! - [`ttlv`]: the KMIP binary encoding, strict and bounded.
//! - [`kmip`]: requests, responses and the operations, over the store.
//! - [`store`]: the durable keystore (fsynced log and snapshot, group commit).
//! - [`tls`] and [`auth`]: mutual TLS, and the drive table's verdict on each client.
//! - [`net`]: KMIP connections — framing, timeouts, graceful shutdown; `listener` holds
//!   what it shares with the admin API (connection slots, accept with backoff).
//! - [`cli`]: the command line, for both binaries that run the server.
//! - [`shadow`]: the licence that makes a server a replica or a shadow, a replica's register
//!   of its shadows, and a shadow's poll loop around the state machine.
//! - [`dev`]: the files a local development server needs.
//! - [`client`]: a small KMIP client, for tests and the load generator.
//! - [`https`]: client connections over TLS, and HTTP/1.1 over them for the admin API.
//!
//! [`run`] is the whole server: the binary parses arguments and calls it, and tests bind
//! port 0 and call it too.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod client;
pub mod dev;
pub mod durable;
pub mod https;
pub mod import;
pub mod instance;
pub mod kmip;
mod listener;
pub mod live;
pub mod metrics;
pub mod net;
pub mod replication;
pub mod shadow;
pub mod store;
pub mod tls;
pub mod ttlv;

pub use net::{Server, ServerError, run};
