//! The `shadowkeep` command: the operator's control core, its Kubernetes shell, and the
//! command-line tools around them.
//!
//! - [`core`]: the estate's rules with no Kubernetes client — material, the canonical
//!   keystore, drive moves, keystore sync, following a Git branch — and the one interface
//!   for the state they keep, implemented by Kubernetes objects and by a data directory.
//! - [`build`]: pure builders, from a KeyManager and the objects naming it to the
//!   Kubernetes objects applied for it.
//! - [`controller`]: the Kubernetes shell — each reconcile a pipeline of dereference,
//!   validate, material and carry (the core), build, apply and status.
//! - [`local`]: the local shell — `shadowkeep up` runs an estate's replicas as local
//!   key servers on the same core (from files, or from a Git branch with `--git`), and
//!   `shadowkeep status` asks them.
//! - [`manifests`]: reading and validating manifests, for every command that takes them.
//! - [`plan`]: `shadowkeep plan`, a change between two Git revisions of the estate, its
//!   diff and its risks.
//! - [`cli`]: one module per subcommand (`crds`, `render`, `plan`; `validate` is
//!   [`manifests::validate`]), each a function from arguments to an exit code, so tests
//!   drive them without a process.
//!
//! The domain model and the resource types live in `shadowkeep-api`.

pub mod build;
pub mod cli;
pub mod controller;
pub mod core;
pub mod local;
pub mod manifests;
pub mod plan;
