//! The Secrets. The KEK, the keystore and the generated certificate authority outlive the
//! KeyManager (no owner reference): deleting a KeyManager by mistake must not delete the
//! only key that opens its keys. The license is owned and rebuilt.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use shadowkeep_api::crd::TlsSource;

use super::Inputs;

/// Annotation on Secrets the operator never deletes.
pub const KEEP_ANNOTATION: &str = "shadowkeep.io/keep-on-delete";

/// What must be generated or read rather than built: the KEK, the canonical keystore,
/// the replica certificate (when the operator makes it) and the signed server license.
#[derive(Clone, Default)]
pub struct Material {
    /// The 32-byte KEK.
    pub kek: Vec<u8>,
    /// The canonical keystore serialisation.
    pub keystore: Vec<u8>,
    /// PEM certificate chain, key and CA of the replicas, when generated.
    pub tls: Option<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    /// The signed server license.
    pub license: Vec<u8>,
    /// PEM key of the generated CA, kept apart from what pods mount.
    pub ca_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Material(<redacted>)")
    }
}

fn secret(inputs: &Inputs<'_>, name: &str, owned: bool, data: Vec<(&str, &[u8])>) -> Secret {
    let mut metadata = inputs.meta(name, owned);
    if !owned {
        metadata.annotations = Some(BTreeMap::from([(
            KEEP_ANNOTATION.to_owned(),
            "true".to_owned(),
        )]));
    }
    Secret {
        metadata,
        type_: Some("Opaque".to_owned()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_owned(), ByteString(v.to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// The KEK. Immutable: it is generated once and never replaced.
pub fn kek_secret(inputs: &Inputs<'_>, material: &Material) -> Secret {
    let mut s = secret(
        inputs,
        &inputs.names().kek,
        false,
        vec![("kek", &material.kek)],
    );
    s.immutable = Some(true);
    s
}

/// The canonical keystore, merged into every replica.
pub fn keystore_secret(inputs: &Inputs<'_>, material: &Material) -> Secret {
    secret(
        inputs,
        &inputs.names().keystore,
        false,
        vec![("keystore", &material.keystore)],
    )
}

/// The replica certificate, when the operator generates it (otherwise the user's Secret
/// or cert-manager's is mounted instead).
pub fn tls_secret(inputs: &Inputs<'_>, material: &Material) -> Option<Secret> {
    if inputs.key_manager.spec.tls.source != TlsSource::Generated {
        return None;
    }
    let (crt, key, ca) = material.tls.as_ref()?;
    let mut s = secret(
        inputs,
        &inputs.names().tls,
        false,
        vec![("tls.crt", crt), ("tls.key", key), ("ca.crt", ca)],
    );
    s.type_ = Some("kubernetes.io/tls".to_owned());
    Some(s)
}

/// The generated CA (certificate and key), which signs replica certificates. No pod
/// mounts it.
pub fn ca_secret(inputs: &Inputs<'_>, material: &Material) -> Option<Secret> {
    if inputs.key_manager.spec.tls.source != TlsSource::Generated {
        return None;
    }
    let (_, _, ca) = material.tls.as_ref()?;
    let key = material.ca_key.as_ref()?;
    Some(secret(
        inputs,
        &inputs.names().ca,
        false,
        vec![("ca.crt", ca), ("ca.key", key)],
    ))
}

/// The signed server license.
pub fn license_secret(inputs: &Inputs<'_>, material: &Material) -> Secret {
    secret(
        inputs,
        &inputs.names().license,
        true,
        vec![("license", &material.license)],
    )
}
