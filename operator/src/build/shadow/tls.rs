//! A Shadow's certificate. Its identity is the Shadow's name: a replica judges a shadow's
//! registration by the name its client certificate carries, and the licence names the
//! same shadow. It also names the shadow's Services, for clients that reach it by them.

use serde_json::{Value, json};
use shadowkeep_api::crd::{IssuerKind, TlsSource};
use shadowkeep_api::pki::{Authority, Usage};

use super::super::BuildError;
use super::{Pem, ShadowInputs};

/// The names of the shadow's certificate: the Shadow's name first (its identity), then its
/// admin Service (the pod's own name under it too) and its KMIP Service.
pub fn shadow_tls_names(inputs: &ShadowInputs<'_>) -> Vec<String> {
    let names = inputs.names();
    let ns = inputs.namespace();
    vec![
        inputs.name(),
        names.admin.clone(),
        format!("{}.{ns}", names.admin),
        format!("{}.{ns}.svc", names.admin),
        format!("*.{}.{ns}.svc", names.admin),
        names.kmip.clone(),
        format!("{}.{ns}", names.kmip),
        format!("{}.{ns}.svc", names.kmip),
    ]
}

/// A new certificate for the shadow, signed by its KeyManager's CA `ca` (the replicas and
/// clients trust that CA alone), for server and client use: the shadow serves KMIP and its
/// admin API and calls the replicas. Certificate, key and CA certificate, PEM. Unlike the
/// other builders this generates a key: call it once and keep what it made.
pub fn shadow_tls(inputs: &ShadowInputs<'_>, ca: &Authority) -> Result<Pem, BuildError> {
    let leaf = ca
        .leaf(
            &inputs.name(),
            &shadow_tls_names(inputs),
            Usage::ServerAndClient,
        )
        .map_err(|e| {
            BuildError(format!(
                "failed to make the certificate of Shadow {}: {e}",
                inputs.name()
            ))
        })?;
    Ok((
        leaf.cert_pem.into_bytes(),
        leaf.key_pem.as_bytes().to_vec(),
        ca.cert_pem().as_bytes().to_vec(),
    ))
}

/// The cert-manager Certificate (cert-manager.io/v1) of the shadow, from its KeyManager's
/// issuer, or `None` when the KeyManager's TLS comes from elsewhere.
pub fn shadow_certificate(inputs: &ShadowInputs<'_>) -> Result<Option<Value>, BuildError> {
    let tls = &inputs.key_manager.spec.tls;
    if tls.source != TlsSource::CertManager {
        return Ok(None);
    }
    let Some(issuer) = tls.issuer_ref.as_ref() else {
        return Ok(None);
    };
    let names = inputs.names();
    let meta =
        serde_json::to_value(inputs.meta(&names.tls)).map_err(|e| BuildError(e.to_string()))?;
    Ok(Some(json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": meta,
        "spec": {
            "secretName": names.tls,
            "commonName": inputs.name(),
            "dnsNames": shadow_tls_names(inputs),
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
    })))
}
