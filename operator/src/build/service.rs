//! The Services: a headless one through which replicas find each other by name, and one
//! for KMIP clients, of the type and port the KeyManager asks for.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use shadowkeep_api::crd::ServiceType;

use super::{ADMIN_PORT, Inputs, KMIP_PORT};

fn port(name: &str, port: i32, target: &str) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(target.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

/// The headless Service of the StatefulSet. Not-ready replicas are published too: a
/// replica catching up at start must reach its peers before it is ready.
pub fn peer_service(inputs: &Inputs<'_>) -> Service {
    Service {
        metadata: inputs.meta(&inputs.names().peers, true),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(inputs.selector()),
            ports: Some(vec![
                port("admin", ADMIN_PORT, "admin"),
                port("kmip", KMIP_PORT, "kmip"),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The KMIP Service tape libraries are configured with.
pub fn client_service(inputs: &Inputs<'_>) -> Service {
    let spec = &inputs.key_manager.spec.service;
    let mut meta = inputs.meta(&inputs.names().kmip, true);
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
            ports: Some(vec![port("kmip", spec.port, "kmip")]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}
