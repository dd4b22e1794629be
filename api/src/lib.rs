//! The shadowkeep API: custom resource types and the domain model, with no I/O.
//!
//! - [`crd`]: the four custom resources of the estate (KeyManager, Shadow, DriveTable,
//!   KeyGroup), the GitSource that follows a branch holding them, and
//!   their generated CRDs, CEL rules included.
//! - [`manifest`]: strict decoding of YAML manifests into those types, every problem
//!   reported with its field path.
//! - [`estate`]: rules over a whole set of manifests (references, drives in two
//!   KeyManagers, duplicate server ids, risky placement).
//! - [`keystore`]: keys and their sealed material, merged as a grow-only set.
//! - [`key_groups`]: pools of keys generated ahead of need and rotated on schedule.
//! - [`drive_history`]: the drives each KeyManager has served, and carrying their keys.
//! - [`license`] and [`password`]: signed server and shadow licenses, shadow passwords.
//! - [`pki`]: certificate authorities and the certificates they sign.
//! - [`placement`]: where a KeyManager's Shadows run, judged against its replicas.
//! - [`server_config`]: the key server's configuration file, rendered by the operator.
//! - [`replica_sync`]: the admin API's sync contract (summary, delta, digest and merge
//!   replies), shared by the server and the operator.
//! - [`shadow`]: the shadow state machine and the replica's rules for registering a shadow.
//!
//! Nothing here touches the network, the file system or a Kubernetes client, so the server,
//! the operator and the command line share one model and it can be tested exhaustively.

pub mod crd;
pub mod drive_history;
pub mod estate;
pub mod finding;
pub mod key_groups;
pub mod keystore;
pub mod license;
pub mod manifest;
pub mod password;
pub mod pki;
pub mod placement;
pub mod replica_sync;
pub mod server_config;
pub mod shadow;
