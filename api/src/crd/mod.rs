//! The custom resources of the `shadowkeep.io/v1alpha1` API, and their CRDs: the four
//! kinds of the estate, and the GitSource that can follow a branch holding them.
//!
//! Rules that types cannot say (ranges, immutability, cross-field constraints) are CEL
//! rules in the schema, so the API server enforces them and `shadowkeep validate` checks
//! the same rules offline.

mod common;
mod drive_table;
mod git_source;
mod key_group;
mod key_manager;
mod shadow;

pub use common::{API_VERSION, GROUP, Interval, IntervalError, KeyManagerRef, VERSION};
pub use drive_table::{Drive, DriveTable, DriveTableSpec, DriveTableStatus};
pub use git_source::{
    AppliedObject, GitSource, GitSourceSpec, GitSourceStatus, GitVerify, HeldRisk, SecretRef,
    VerifyMode,
};
pub use key_group::{KeyGroup, KeyGroupSpec, KeyGroupStatus};
pub use key_manager::{
    BackupSpec, BackupTarget, BackupTargetStatus, DurabilitySpec, IssuerKind, IssuerRef, KMIP_PORT,
    KeyManager, KeyManagerShadow, KeyManagerSpec, KeyManagerStatus, KmipServiceSpec, PlacementSpec,
    ReplicaSyncStatus, S3BackupTarget, S3CredentialsRef, SecretBackupTarget, ServiceType,
    StorageSpec, TlsSource, TlsSpec,
};
pub use shadow::{
    DesiredShadowState, MAX_HINTS, Shadow, ShadowPlacement, ShadowSpec, ShadowState, ShadowStatus,
    hint_list,
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The CRDs of all five kinds, in a fixed order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        KeyManager::crd(),
        Shadow::crd(),
        DriveTable::crd(),
        KeyGroup::crd(),
        GitSource::crd(),
    ]
}
