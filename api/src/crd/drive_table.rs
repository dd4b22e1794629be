//! The DriveTable resource: which drives and libraries may ask a KeyManager for keys.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::KeyManagerRef;

/// The drives (tape drives, libraries, arrays) known to a KeyManager and the key group each
/// one uses.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "shadowkeep.io",
    version = "v1alpha1",
    kind = "DriveTable",
    namespaced,
    status = "DriveTableStatus",
    shortname = "dt",
    category = "shadowkeep",
    selectable = ".spec.keyManagerRef.name",
    doc = "The drives known to a KeyManager: who may ask it for keys, and from which key group.",
    printcolumn(
        name = "KeyManager",
        type_ = "string",
        json_path = ".spec.keyManagerRef.name"
    ),
    printcolumn(name = "Drives", type_ = "integer", json_path = ".status.drives"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    derive = "PartialEq",
    cel
)]
#[serde(rename_all = "camelCase")]
pub struct DriveTableSpec {
    /// The KeyManager these drives ask for keys. Keys written by a drive live in that
    /// KeyManager's keystore: moving a drive to another KeyManager without its keys makes
    /// its old tapes unreadable, so the operator refuses such a move.
    pub key_manager_ref: KeyManagerRef,

    /// The drives, each once.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["serial"]))]
    #[x_kube(validation = kube::core::Rule::new("self.size() <= 300").message("must list at most 300 drives; split larger estates into several tables"))]
    #[x_kube(validation = kube::core::Rule::new("self.all(d, self.exists_one(e, e.serial == d.serial))").message("drive serial numbers must be unique within a table"))]
    #[schemars(length(max = 300))]
    pub drives: Vec<Drive>,

    /// Whether a client that is not in any table may get keys. Off, an unknown drive is
    /// refused with a KMIP permission error and logged; on, it is served from the default
    /// key group (the EKM `drive.acceptUnknownDrives` setting).
    #[serde(default)]
    pub accept_unknown_drives: bool,
}

/// One drive or library.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.acceptAnyCertificate) || !self.acceptAnyCertificate || !has(self.certificateIdentity)").message("is only for a drive without a certificateIdentity").field_path(".acceptAnyCertificate"))]
pub struct Drive {
    /// The drive's serial number, as it presents it.
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$')").message("must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"))]
    #[schemars(length(min = 1, max = 64))]
    pub serial: String,

    /// World Wide Name, 16 hexadecimal digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^(0x)?[0-9A-Fa-f]{16}$')").message("must be 16 hexadecimal digits"))]
    #[schemars(length(max = 18))]
    pub wwn: Option<String>,

    /// The identity in the client certificate the drive or its library presents (subject
    /// common name or a subject alternative name). KMIP clients are identified by their
    /// certificate, so this is how a request is tied to this entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self.size() > 0 && self.size() <= 256").message("must be 1-256 characters"))]
    #[schemars(length(max = 256))]
    pub certificate_identity: Option<String>,

    /// Admits this drive by its serial alone, for a drive without a `certificateIdentity`:
    /// any client certificate from the KeyManager's CA that presents this serial in a
    /// request's Device credential gets this drive's keys. The serial is only what the
    /// client claims, so without this (or `acceptUnknownDrives`) the key server refuses a
    /// drive that names no certificate identity.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accept_any_certificate: bool,

    /// The KeyGroup (of the same KeyManager) this drive's keys come from; the default group
    /// when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub key_group: Option<String>,

    /// Free text for people: where the drive is, what it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self.size() <= 256").message("must be at most 256 characters"))]
    #[schemars(length(max = 256))]
    pub description: Option<String>,
}

/// What the operator observed of a DriveTable.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DriveTableStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, KeyHistoryAtRisk.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Drives rendered into the KeyManager's configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drives: Option<i32>,
}
