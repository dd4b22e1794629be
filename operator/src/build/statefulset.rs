//! The StatefulSet of the replicas: one data volume each, spread over hosts and zones,
//! locked down (non-root, read-only root file system, no capabilities), probed on the
//! admin API, and rolled when the configuration changes.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm,
    PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    SecretVolumeSource, SecurityContext, TopologySpreadConstraint, VolumeMount,
    VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::{CONFIG_DIR, CONFIG_FILE, DATA_DIR, KEK_DIR, KEYSTORE_DIR, TLS_DIR};
use super::{ADMIN_PORT, DEFAULT_IMAGE, Inputs, KMIP_PORT};

/// Annotation carrying the configuration hash on the pod template.
pub const CONFIG_HASH: &str = "shadowkeep.io/config-hash";
/// The user and group the server runs as (the distroless `nonroot` user).
const NONROOT: i64 = 65532;

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(path != DATA_DIR),
        ..VolumeMount::default()
    }
}

fn secret_volume(name: &str, secret: &str, optional: bool) -> k8s_openapi::api::core::v1::Volume {
    k8s_openapi::api::core::v1::Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            optional: optional.then_some(true),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..k8s_openapi::api::core::v1::Volume::default()
    }
}

fn probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("admin".to_owned()),
            scheme: Some("HTTPS".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// The server container.
fn container(inputs: &Inputs<'_>) -> Container {
    let km = &inputs.key_manager.spec;
    Container {
        name: "server".to_owned(),
        image: Some(
            km.image
                .clone()
                .or_else(|| inputs.default_image.clone())
                .unwrap_or_else(|| DEFAULT_IMAGE.to_owned()),
        ),
        args: Some(vec![
            "--config".to_owned(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        ]),
        env: Some(vec![EnvVar {
            name: "SHADOWKEEP_REPLICA_NAME".to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".to_owned(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        ports: Some(vec![
            ContainerPort {
                name: Some("kmip".to_owned()),
                container_port: KMIP_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("admin".to_owned()),
                container_port: ADMIN_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(probe("/readyz", 5)),
        liveness_probe: Some(probe("/healthz", 10)),
        resources: km.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            mount("config", CONFIG_DIR),
            mount("tls", TLS_DIR),
            mount("kek", KEK_DIR),
            mount("keystore", KEYSTORE_DIR),
            mount("data", DATA_DIR),
        ]),
        ..Container::default()
    }
}

/// The pod: locked down, spread over hosts and zones, with its volumes.
fn pod(inputs: &Inputs<'_>) -> PodSpec {
    let km = &inputs.key_manager.spec;
    let names = inputs.names();
    let tls_secret = inputs.tls_secret_name();
    let selector = inputs.selector();
    let spread_over = |key: &str| PodAffinityTerm {
        topology_key: key.to_owned(),
        label_selector: Some(LabelSelector {
            match_labels: Some(selector.clone()),
            ..LabelSelector::default()
        }),
        ..PodAffinityTerm::default()
    };
    let zones = &km.placement.zones;
    let node_affinity = (!zones.is_empty()).then(|| NodeAffinity {
        required_during_scheduling_ignored_during_execution: Some(NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_expressions: Some(vec![NodeSelectorRequirement {
                    key: km.placement.topology_key.clone(),
                    operator: "In".to_owned(),
                    values: Some(zones.clone()),
                }]),
                ..NodeSelectorTerm::default()
            }],
        }),
        ..NodeAffinity::default()
    });
    PodSpec {
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(45),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(NONROOT),
            run_as_group: Some(NONROOT),
            fs_group: Some(NONROOT),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        // Soft on hosts so that a small cluster still runs every replica, but spread
        // whenever the scheduler can.
        affinity: Some(Affinity {
            node_affinity,
            pod_anti_affinity: Some(PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    WeightedPodAffinityTerm {
                        weight: 100,
                        pod_affinity_term: spread_over("kubernetes.io/hostname"),
                    },
                ]),
                ..PodAntiAffinity::default()
            }),
            ..Affinity::default()
        }),
        topology_spread_constraints: Some(vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: km.placement.topology_key.clone(),
            when_unsatisfiable: "ScheduleAnyway".to_owned(),
            label_selector: Some(LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            }),
            ..TopologySpreadConstraint::default()
        }]),
        node_selector: (!km.placement.node_selector.is_empty())
            .then(|| km.placement.node_selector.clone()),
        containers: vec![container(inputs)],
        volumes: Some(vec![
            k8s_openapi::api::core::v1::Volume {
                name: "config".to_owned(),
                config_map: Some(ConfigMapVolumeSource {
                    name: names.config.clone(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..k8s_openapi::api::core::v1::Volume::default()
            },
            secret_volume("tls", &tls_secret, false),
            secret_volume("kek", &names.kek, false),
            secret_volume("keystore", &names.keystore, true),
        ]),
        ..PodSpec::default()
    }
}

/// The data volume template.
fn claim(inputs: &Inputs<'_>) -> PersistentVolumeClaim {
    let km = &inputs.key_manager.spec;
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".to_owned()),
            labels: Some(inputs.labels()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            storage_class_name: km.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    km.storage.size.clone(),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// The StatefulSet; `config_hash` is the hash of the rendered ConfigMap.
pub fn statefulset(inputs: &Inputs<'_>, config_hash: &str) -> StatefulSet {
    let km = &inputs.key_manager.spec;
    let names = inputs.names();
    let selector = inputs.selector();
    StatefulSet {
        metadata: inputs.meta(&names.statefulset, true),
        spec: Some(StatefulSetSpec {
            replicas: Some(km.replicas),
            service_name: Some(names.peers.clone()),
            // Replicas are peers, not a chain: start them together.
            pod_management_policy: Some("Parallel".to_owned()),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            // The volumes hold keystores: they stay when the set is deleted or scaled down.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".to_owned()),
                    when_scaled: Some("Retain".to_owned()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(inputs.labels()),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH.to_owned(),
                        config_hash.to_owned(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod(inputs)),
            },
            volume_claim_templates: Some(vec![claim(inputs)]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}
