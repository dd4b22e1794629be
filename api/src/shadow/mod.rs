//! Shadows of a KeyManager, as pure rules: the state machine a shadow runs ([`state`]),
//! the decision a replica makes on a shadow's registration ([`registration`]) against the
//! verifiers it accepts ([`verifiers`]), and the admin API contract between shadows,
//! replicas and the operator ([`wire`]).
//!
//! The server wires these to the network, the clock and the disk; nothing here does I/O.

pub mod registration;
pub mod state;
pub mod verifiers;
pub mod wire;
