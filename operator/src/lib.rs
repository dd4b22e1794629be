//! The `shadowkeep` command: the operator's controllers and the command-line tools around
//! them.
//!
//! - [`cli`]: one module per subcommand (`crds`, `validate`), each a function from
//!   arguments to an exit code, so tests drive them without a process.
//!
//! The domain model and the resource types live in `shadowkeep-api`; this crate adds the
//! file system and, later, the Kubernetes client.

pub mod build;
pub mod cli;
pub mod controller;
pub mod core;
