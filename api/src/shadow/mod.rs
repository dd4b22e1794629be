//! Shadows of a KeyManager, as pure rules: the state machine a shadow runs ([`state`]) and
//! the decision a replica makes on a shadow's registration ([`registration`]).
//!
//! The server wires these to the network, the clock and the disk; nothing here does I/O.

pub mod registration;
pub mod state;
