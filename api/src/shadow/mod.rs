//! Shadows of a KeyManager, as pure rules: the state machine a shadow runs ([`state`]).
//!
//! The server wires these to the network, the clock and the disk; nothing here does I/O.

pub mod state;
