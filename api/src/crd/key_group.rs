//! The KeyGroup resource: a pool of keys the operator creates and rotates for drives.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Interval, KeyManagerRef, interval_rule};
use crate::keystore::Algorithm;

/// A pool of keys in one KeyManager's keystore, generated and rotated by the operator.
/// Old keys are never removed: tapes written with them must stay readable.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "shadowkeep.io",
    version = "v1alpha1",
    kind = "KeyGroup",
    namespaced,
    status = "KeyGroupStatus",
    shortname = "kg",
    category = "shadowkeep",
    selectable = ".spec.keyManagerRef.name",
    doc = "A pool of keys in a KeyManager's keystore, generated and rotated by the operator; old keys stay readable forever.",
    printcolumn(
        name = "KeyManager",
        type_ = "string",
        json_path = ".spec.keyManagerRef.name"
    ),
    printcolumn(name = "Keys", type_ = "integer", json_path = ".status.keys"),
    printcolumn(name = "Active Key", type_ = "string", json_path = ".status.activeKey"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    derive = "PartialEq",
    cel
)]
#[serde(rename_all = "camelCase")]
pub struct KeyGroupSpec {
    /// The KeyManager whose keystore holds this group's keys.
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("is immutable: a group's keys stay in the keystore they were made in"))]
    pub key_manager_ref: KeyManagerRef,

    /// Cipher of the group's keys. Fixed once keys exist, since drives expect it.
    #[serde(default)]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("is immutable"))]
    pub algorithm: Algorithm,

    /// Key length in bits: 128 or 256.
    #[serde(default = "default_length")]
    #[x_kube(validation = kube::core::Rule::new("self == 128 || self == 256").message("must be 128 or 256"))]
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("is immutable"))]
    pub length: i32,

    /// How many unused keys the group keeps ready for new tapes.
    #[serde(default = "default_key_count")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1 && self <= 10000").message("must be between 1 and 10000"))]
    pub key_count: i32,

    /// Prefix of the generated key names (`<prefix>-<number>`); defaults to the KeyGroup's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$')").message("must be 1-32 letters, digits, '_' or '-', starting with a letter or digit"))]
    #[schemars(length(max = 32))]
    pub name_prefix: Option<String>,

    /// How often a new key becomes the active one. Unset: never rotated on a schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = interval_rule!(min "1h"))]
    pub rotation_interval: Option<Interval>,

    /// Whether drives without a key group (and accepted unknown drives) use this group. At
    /// most one group per KeyManager is the default.
    #[serde(default, rename = "default")]
    pub default_group: bool,
}

fn default_length() -> i32 {
    256
}

fn default_key_count() -> i32 {
    10
}

/// What the operator observed of a KeyGroup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyGroupStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, Rotating.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Keys in the group, old ones included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<i32>,

    /// Name of the key handed out for new tapes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_key: Option<String>,

    /// When the active key last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotated_at: Option<Time>,
}
