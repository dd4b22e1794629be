//! A Shadow's Services and StatefulSet: one pod with its own data volume, in the Shadow's
//! zone, kept away from its KeyManager's replicas when the scheduler can, and locked down
//! and probed like the replicas.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Affinity, KeyToPath, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    PodAntiAffinity, PodSpec, PodTemplateSpec, Service, ServicePort, ServiceSpec,
    WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use shadowkeep_api::crd::ServiceType;

use super::super::config::{CONFIG_DIR, DATA_DIR, KEK_DIR, LICENSE_DIR, TLS_DIR};
use super::super::statefulset::{
    CONFIG_HASH, HOSTNAME, config_volume, data_claim, image, locked_down_pod, mount, pods_by,
    secret_volume, server_container,
};
use super::super::{ADMIN_PORT, KMIP_PORT};
use super::{PASSWORD_DIR, ShadowInputs};

/// Port `port` of the Service, to the container's port `name`.
fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

/// The headless Service of the shadow's StatefulSet. The not-ready pod is published too:
/// the replicas push keys to a shadow that is still catching up.
pub fn admin_service(inputs: &ShadowInputs<'_>) -> Service {
    Service {
        metadata: inputs.meta(&inputs.names().admin),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(inputs.selector()),
            ports: Some(vec![
                service_port("admin", ADMIN_PORT),
                service_port("kmip", KMIP_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The shadow's KMIP Service, of the KeyManager's type, port and annotations: the tape
/// libraries that reach the replicas must reach the shadow the same way.
pub fn kmip_service(inputs: &ShadowInputs<'_>) -> Service {
    let spec = &inputs.key_manager.spec.service;
    let mut meta = inputs.meta(&inputs.names().kmip);
    if !spec.annotations.is_empty() {
        meta.annotations = Some(spec.annotations.clone());
    }
    let type_ = match spec.type_ {
        ServiceType::ClusterIP => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    };
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some(type_.to_owned()),
            selector: Some(inputs.selector()),
            ports: Some(vec![service_port("kmip", spec.port)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Where the shadow may run: only in its zone (a shadow elsewhere than asked is no
/// emergency server at the other site), and preferably on no host and in no zone of its
/// KeyManager's replicas.
fn affinity(inputs: &ShadowInputs<'_>) -> Affinity {
    let placement = &inputs.shadow.spec.placement;
    let zone_label = &inputs.key_manager.spec.placement.topology_key;
    let replicas = inputs.key_manager_inputs().selector();
    let away = |weight, key: &str| WeightedPodAffinityTerm {
        weight,
        pod_affinity_term: pods_by(&replicas, key),
    };
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: zone_label.clone(),
                        operator: "In".to_owned(),
                        values: Some(vec![placement.zone.clone()]),
                    }]),
                    ..NodeSelectorTerm::default()
                }],
            }),
            ..NodeAffinity::default()
        }),
        // Preferred, not required: a shadow in a small cluster still runs, and the
        // PlacementRisk condition says what it shares with the replicas.
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                away(100, HOSTNAME),
                away(50, zone_label),
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

/// The shadow's pod.
fn pod(inputs: &ShadowInputs<'_>) -> PodSpec {
    let km = &inputs.key_manager.spec;
    let names = inputs.names();
    let container = server_container(
        image(km, inputs.default_image.as_ref()),
        km.resources.clone(),
        vec![
            mount("config", CONFIG_DIR),
            mount("tls", TLS_DIR),
            mount("kek", KEK_DIR),
            mount("license", LICENSE_DIR),
            mount("password", PASSWORD_DIR),
            mount("data", DATA_DIR),
        ],
    );
    let mut password = secret_volume("password", &names.password, false);
    if let Some(source) = password.secret.as_mut() {
        // Only the password: the rotation keeps its bookkeeping in other keys of the
        // Secret, which the shadow must not see.
        source.items = Some(vec![KeyToPath {
            key: "password".to_owned(),
            path: "password".to_owned(),
            ..KeyToPath::default()
        }]);
    }
    let volumes = vec![
        config_volume(&names.config),
        // With a KeyManager whose TLS source is `Secret`, the user provides this one too:
        // the shadow's identity is its own name, not the replicas'.
        secret_volume("tls", &names.tls, false),
        secret_volume("kek", &inputs.key_manager_inputs().names().kek, false),
        secret_volume("license", &names.license, false),
        password,
    ];
    let placement = &inputs.shadow.spec.placement;
    PodSpec {
        affinity: Some(affinity(inputs)),
        // On nodes with the Shadow's labels, tolerating its taints.
        node_selector: (!placement.node_selector.is_empty())
            .then(|| placement.node_selector.clone()),
        tolerations: (!placement.tolerations.is_empty()).then(|| placement.tolerations.clone()),
        ..locked_down_pod(container, volumes)
    }
}

/// The StatefulSet of the one shadow pod; `config_hash` is [`crate::build::config_hash`] of
/// its configuration.
pub fn statefulset(inputs: &ShadowInputs<'_>, config_hash: &str) -> StatefulSet {
    let names = inputs.names();
    StatefulSet {
        metadata: inputs.meta(&names.statefulset),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(names.admin.clone()),
            selector: LabelSelector {
                match_labels: Some(inputs.selector()),
                ..LabelSelector::default()
            },
            // The volume holds the mirrored keystore and the shadow's limit clocks: it
            // stays when the set is deleted.
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
            volume_claim_templates: Some(vec![data_claim(
                &inputs.key_manager.spec.storage,
                inputs.labels(),
            )]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}
