//! The Shadow resource: an emergency key server that mirrors a KeyManager and serves its
//! keys, read-only, when the KeyManager cannot be reached.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Interval, KeyManagerRef, interval_rule};

/// A shadow server: it mirrors its KeyManager and serves existing keys only while the
/// KeyManager is unreachable, within time limits, and never creates keys.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "shadowkeep.io",
    version = "v1alpha1",
    kind = "Shadow",
    namespaced,
    status = "ShadowStatus",
    shortname = "shd",
    category = "shadowkeep",
    selectable = ".spec.keyManagerRef.name",
    doc = "A shadow key server that mirrors a KeyManager and serves its keys read-only while the KeyManager is unreachable.",
    printcolumn(
        name = "Location",
        type_ = "string",
        json_path = ".spec.placement.zone"
    ),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(
        name = "Last Synchronized",
        type_ = "date",
        json_path = ".status.lastSynchronized"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    derive = "PartialEq",
    cel
)]
#[serde(rename_all = "camelCase")]
pub struct ShadowSpec {
    /// The KeyManager this shadow mirrors. A shadow's license is bound to it, so it cannot
    /// change; make a new Shadow instead.
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("is immutable"))]
    pub key_manager_ref: KeyManagerRef,

    /// Where the shadow runs. A shadow is for when the KeyManager's site is gone, so it
    /// belongs at another site.
    pub placement: ShadowPlacement,

    /// Among shadows of one KeyManager that could take over, the highest priority serves
    /// and the others defer to it.
    #[serde(default)]
    #[x_kube(validation = kube::core::Rule::new("self >= 0 && self <= 1000").message("must be between 0 and 1000"))]
    pub priority: i32,

    /// `Active`: mirror and take over when needed. `Inactive`: mirror, never serve.
    /// `Disabled`: neither; re-enabling needs a new license.
    #[serde(default)]
    pub state: DesiredShadowState,

    /// How often the shadow's password and license are replaced. The old password stays
    /// valid until the shadow has authenticated with the new one.
    #[serde(default = "default_password_rotation_interval")]
    #[x_kube(validation = interval_rule!(min "1h"))]
    pub password_rotation_interval: Interval,

    /// How long the KeyManager must be unreachable before the shadow starts serving. Short
    /// network blips should not make two servers answer.
    #[serde(default = "default_takeover_grace_period")]
    #[x_kube(validation = interval_rule!(positive))]
    pub takeover_grace_period: Interval,

    /// Longest stretch of continuous service; then the shadow goes Inactive. Shadows are
    /// for emergencies, not a second primary.
    #[serde(default = "default_continuous_service_limit")]
    #[x_kube(validation = interval_rule!(positive))]
    pub continuous_service_limit: Interval,

    /// Longest time without contact with the KeyManager; then the shadow is Disabled and
    /// needs a new license.
    #[serde(default = "default_standalone_limit")]
    #[x_kube(validation = interval_rule!(positive))]
    pub standalone_limit: Interval,

    /// IP addresses at which clients can reach this shadow, published in the KeyManager's
    /// hint list. Addresses, not host names: DNS may be down when a shadow is needed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = kube::core::Rule::new("self.size() <= 100").message("must list at most 100 addresses"))]
    #[x_kube(validation = kube::core::Rule::new("self.all(a, isIP(a))").message("must be IP addresses, not host names: DNS may be down when a shadow is needed"))]
    #[schemars(length(max = 100), inner(length(max = 45)))]
    pub hint_addresses: Vec<String>,
}

fn default_password_rotation_interval() -> Interval {
    Interval::from_hours(30 * 24)
}

fn default_takeover_grace_period() -> Interval {
    Interval::from_secs(5 * 60)
}

fn default_continuous_service_limit() -> Interval {
    Interval::from_hours(7 * 24)
}

fn default_standalone_limit() -> Interval {
    Interval::from_hours(60 * 24)
}

/// Where a shadow is scheduled.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowPlacement {
    /// The zone (value of the node label `topology.kubernetes.io/zone`) the shadow runs in.
    #[x_kube(validation = kube::core::Rule::new("self.size() > 0 && self.size() <= 63").message("must be 1-63 characters"))]
    #[schemars(length(max = 63))]
    pub zone: String,

    /// Further node labels the shadow's node must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Taints of the shadow's nodes that it tolerates. A site kept for emergencies often
    /// taints its nodes so that nothing else lands there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

/// What the user wants a shadow to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DesiredShadowState {
    /// Mirror the KeyManager and take over when it is unreachable.
    #[default]
    Active,
    /// Mirror the KeyManager but never serve.
    Inactive,
    /// Do nothing; the license is revoked.
    Disabled,
}

/// What a shadow is doing, as in the KeyServer "Shadows" window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ShadowState {
    /// The KeyManager is reachable; the shadow mirrors it.
    Shadowing,
    /// The KeyManager is unreachable but a shadow of higher priority is serving.
    Deferring,
    /// The KeyManager is unreachable past the grace period; the shadow serves existing keys.
    Serving,
    /// Deactivated, or the continuous-service limit ran out.
    Inactive,
    /// Disabled, or the standalone limit ran out; needs a new license.
    Disabled,
}

/// What the operator observed of a Shadow.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShadowStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, Serving, PlacementRisk, PasswordRotation, DuplicateServerId.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// What the shadow is doing now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ShadowState>,

    /// When the shadow last held every key of its KeyManager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_synchronized: Option<Time>,

    /// When the shadow started serving, while it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_since: Option<Time>,

    /// The address the shadow serves KMIP on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,

    /// When the shadow's password was last replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_rotated_at: Option<Time>,

    /// The last `shadowkeep.io/sync-requested-at` annotation value acted on, so that a
    /// user who asked for a sync can see it was done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_sync_at: Option<String>,

    /// The last `shadowkeep.io/rotate-password-requested-at` annotation value acted on, so
    /// that a user who asked for a new password can see it was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_rotation_at: Option<String>,
}

/// Most addresses in a hint list (KeyServer's limit).
pub const MAX_HINTS: usize = 100;

/// A KeyManager's hint list: the `hintAddresses` of its Shadows, highest priority first
/// (ties by name), each address once, at most [`MAX_HINTS`]. What its
/// status and its `<keymanager>-shadow-hints` ConfigMap publish.
pub fn hint_list(shadows: &[&Shadow]) -> Vec<String> {
    use kube::ResourceExt as _;
    let mut ranked: Vec<&&Shadow> = shadows.iter().collect();
    ranked.sort_by(|a, b| {
        b.spec
            .priority
            .cmp(&a.spec.priority)
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
    let mut out: Vec<String> = Vec::new();
    for address in ranked.iter().flat_map(|s| s.spec.hint_addresses.iter()) {
        if out.len() == MAX_HINTS {
            break;
        }
        if !out.contains(address) {
            out.push(address.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shadow(name: &str, priority: i32, addresses: &[&str]) -> Shadow {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "shadowkeep.io/v1alpha1", "kind": "Shadow",
            "metadata": {"name": name},
            "spec": {"keyManagerRef": {"name": "km"}, "placement": {"zone": "z"},
                     "priority": priority, "hintAddresses": addresses},
        }))
        .unwrap()
    }

    #[test]
    fn the_hint_list_ranks_by_priority_then_name_once_each_and_stops_at_a_hundred() {
        let low = shadow("a-low", 1, &["10.0.0.3", "10.0.0.1"]);
        let high = shadow("z-high", 9, &["10.0.0.1", "10.0.0.2"]);
        let tie = shadow("b-tie", 1, &["10.0.0.4"]);
        assert_eq!(
            hint_list(&[&low, &high, &tie]),
            ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
        );
        let many: Vec<String> = (0..100).map(|i| format!("10.1.0.{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let full = shadow("full", 5, &refs);
        let list = hint_list(&[&full, &low]);
        assert_eq!(list.len(), 100);
        assert!(!list.contains(&"10.0.0.3".to_owned()));
    }
}
