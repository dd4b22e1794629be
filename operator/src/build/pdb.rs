//! The PodDisruptionBudget: voluntary disruptions (node drains, upgrades) take at most one
//! replica at a time.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Inputs;

/// Keeps at least `replicas - 1` replicas available.
pub fn pod_disruption_budget(inputs: &Inputs<'_>) -> PodDisruptionBudget {
    let replicas = inputs.key_manager.spec.replicas;
    PodDisruptionBudget {
        metadata: inputs.meta(&inputs.names().statefulset, true),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int((replicas - 1).max(0))),
            selector: Some(LabelSelector {
                match_labels: Some(inputs.selector()),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}
