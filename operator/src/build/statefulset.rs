//! The StatefulSet of the replicas: one data volume each, spread over hosts and zones,
//! locked down (non-root, read-only root file system, no capabilities), probed on the
//! admin API, and rolled when a part of the configuration that only a restart applies
//! changes. The container, the lock-down and the data volume are the shadows' too
//! (`build::shadow`).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm,
    PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecretVolumeSource, SecurityContext, TopologySpreadConstraint, Volume,
    VolumeMount, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use shadowkeep_api::crd::{KeyManagerSpec, StorageSpec};

use super::config::{
    CONFIG_DIR, CONFIG_FILE, DATA_DIR, KEK_DIR, KEYSTORE_DIR, LICENSE_DIR, SHADOW_VERIFIERS_DIR,
    TLS_DIR,
};
use super::{ADMIN_PORT, DEFAULT_IMAGE, Inputs, KMIP_PORT};

/// Annotation carrying the configuration hash on the pod template.
pub const CONFIG_HASH: &str = "shadowkeep.io/config-hash";
/// The user and group the server runs as (the distroless `nonroot` user).
const NONROOT: i64 = 65532;

/// The node label of a node's own name.
pub(super) const HOSTNAME: &str = "kubernetes.io/hostname";

/// The pods `selector` selects, grouped by the node label `topology_key`: a term of pod
/// (anti-)affinity.
pub(super) fn pods_by(selector: &BTreeMap<String, String>, topology_key: &str) -> PodAffinityTerm {
    PodAffinityTerm {
        topology_key: topology_key.to_owned(),
        label_selector: Some(LabelSelector {
            match_labels: Some(selector.clone()),
            ..LabelSelector::default()
        }),
        ..PodAffinityTerm::default()
    }
}

/// The mount of volume `name` at `path`; read-only but for the data volume.
pub(super) fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(path != DATA_DIR),
        ..VolumeMount::default()
    }
}

/// The volume `name` of Secret `secret`, readable by the server's group only.
pub(super) fn secret_volume(name: &str, secret: &str, optional: bool) -> Volume {
    Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            optional: optional.then_some(true),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// An HTTPS probe of the admin API's `path`.
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

/// The image of a KeyManager's servers, replicas and shadows alike: the KeyManager's, else
/// `default_image`, else [`DEFAULT_IMAGE`].
pub(super) fn image(key_manager: &KeyManagerSpec, default_image: Option<&String>) -> String {
    key_manager
        .image
        .clone()
        .or_else(|| default_image.cloned())
        .unwrap_or_else(|| DEFAULT_IMAGE.to_owned())
}

/// The server container, replica or shadow: locked down, probed on the admin API, with
/// `mounts`.
pub(super) fn server_container(
    image: String,
    resources: Option<ResourceRequirements>,
    mounts: Vec<VolumeMount>,
) -> Container {
    Container {
        name: "server".to_owned(),
        image: Some(image),
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
        resources,
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
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

/// A server pod, replica or shadow, locked down: non-root, no service account token, no
/// service links, the runtime's seccomp profile. Placement is the caller's.
pub(super) fn locked_down_pod(container: Container, volumes: Vec<Volume>) -> PodSpec {
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
        containers: vec![container],
        volumes: Some(volumes),
        ..PodSpec::default()
    }
}

/// The volume of the ConfigMap `config_map`.
pub(super) fn config_volume(config_map: &str) -> Volume {
    Volume {
        name: "config".to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.to_owned(),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The pod: locked down, spread over hosts and zones, with its volumes.
fn pod(inputs: &Inputs<'_>) -> PodSpec {
    let km = &inputs.key_manager.spec;
    let names = inputs.names();
    let tls_secret = inputs.tls_secret_name();
    let selector = inputs.selector();
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
    let container = server_container(
        image(km, inputs.default_image.as_ref()),
        km.resources.clone(),
        vec![
            mount("config", CONFIG_DIR),
            mount("tls", TLS_DIR),
            mount("kek", KEK_DIR),
            mount("keystore", KEYSTORE_DIR),
            mount("license", LICENSE_DIR),
            mount("shadow-verifiers", SHADOW_VERIFIERS_DIR),
            mount("data", DATA_DIR),
        ],
    );
    let volumes = vec![
        config_volume(&names.config),
        secret_volume("tls", &tls_secret, false),
        secret_volume("kek", &names.kek, false),
        secret_volume("keystore", &names.keystore, true),
        secret_volume("license", &names.license, false),
        secret_volume("shadow-verifiers", &names.shadow_verifiers, false),
    ];
    PodSpec {
        // Soft on hosts so that a small cluster still runs every replica, but spread
        // whenever the scheduler can.
        affinity: Some(Affinity {
            node_affinity,
            pod_anti_affinity: Some(PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    WeightedPodAffinityTerm {
                        weight: 100,
                        pod_affinity_term: pods_by(&selector, HOSTNAME),
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
        ..locked_down_pod(container, volumes)
    }
}

/// The data volume template of a server, replica or shadow, labelled `labels`.
pub(super) fn data_claim(
    storage: &StorageSpec,
    labels: BTreeMap<String, String>,
) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".to_owned()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    storage.size.clone(),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// The StatefulSet; `config_hash` is [`super::config_hash`] of the configuration: it rolls
/// the pods for what only a restart applies, never for a DriveTable or KeyGroup change.
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
            volume_claim_templates: Some(vec![data_claim(&km.storage, inputs.labels())]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}
