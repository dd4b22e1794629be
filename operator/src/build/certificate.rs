//! The cert-manager Certificate, when a KeyManager asks cert-manager for its replica
//! certificate. It writes the same Secret the generated certificate would, so the
//! StatefulSet mounts one name whatever the source.

use serde_json::{Value, json};
use shadowkeep_api::crd::{IssuerKind, TlsSource};

use super::Inputs;

/// The Certificate (cert-manager.io/v1), or `None` when the KeyManager's TLS comes from
/// elsewhere.
pub fn certificate(inputs: &Inputs<'_>) -> Option<Value> {
    let tls = &inputs.key_manager.spec.tls;
    if tls.source != TlsSource::CertManager {
        return None;
    }
    let issuer = tls.issuer_ref.as_ref()?;
    let names = inputs.names();
    let ns = inputs.namespace();
    let meta = serde_json::to_value(inputs.meta(&names.tls, true)).ok()?;
    Some(json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": meta,
        "spec": {
            "secretName": names.tls,
            "commonName": format!("{}.{ns}", inputs.name()),
            "dnsNames": [
                names.kmip,
                format!("{}.{ns}", names.kmip),
                format!("{}.{ns}.svc", names.kmip),
                inputs.peer_identity(),
                format!("*.{}", names.peers),
            ],
            // Replicas serve KMIP and the admin API, and call their peers.
            "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "issuerRef": {
                "name": issuer.name,
                "kind": match issuer.kind {
                    IssuerKind::Issuer => "Issuer",
                    IssuerKind::ClusterIssuer => "ClusterIssuer",
                },
                "group": "cert-manager.io",
            },
        },
    }))
}
