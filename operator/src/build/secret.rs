//! The Secrets. The KEK, the keystore and the generated certificate authority outlive the
//! KeyManager (no owner reference): deleting a KeyManager by mistake must not delete the
//! only key that opens its keys. The license is owned and rebuilt.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use shadowkeep_api::crd::TlsSource;

use super::{Inputs, Names};

/// Annotation on Secrets the operator never deletes.
pub const KEEP_ANNOTATION: &str = "shadowkeep.io/keep-on-delete";

/// What must be generated or read rather than built: the KEK, the canonical keystore,
/// the replica certificate (when the operator makes it), the signed server license with
/// the key it verifies under, and the verifiers of the shadows' passwords.
#[derive(Clone, Default)]
pub struct Material {
    /// The 32-byte KEK, wiped from memory when dropped.
    pub kek: zeroize::Zeroizing<Vec<u8>>,
    /// The canonical keystore serialisation.
    pub keystore: Vec<u8>,
    /// PEM certificate chain, key and CA of the replicas, when generated.
    pub tls: Option<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    /// The signed server license.
    pub license: Vec<u8>,
    /// PEM key of the generated CA, kept apart from what pods mount.
    pub ca_key: Option<Vec<u8>>,
    /// The KeyManager's licence verifying key, 64 hex digits: the license and every shadow
    /// registration must verify under it. Public, so it goes into the configuration.
    pub license_public_key: String,
    /// The verifiers of the shadows' passwords (`verifiers.json`), as the rotation keeps
    /// them; the replicas hold these, never a password.
    pub shadow_verifiers: Vec<u8>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Material(<redacted>)")
    }
}

fn secret(inputs: &Inputs<'_>, name: &str, owned: bool, data: Vec<(&str, &[u8])>) -> Secret {
    if !owned {
        return kept_secret(&inputs.namespace(), &inputs.name(), name, data);
    }
    Secret {
        metadata: inputs.meta(name, owned),
        type_: Some("Opaque".to_owned()),
        data: Some(byte_strings(data)),
        ..Secret::default()
    }
}

fn byte_strings(data: Vec<(&str, &[u8])>) -> BTreeMap<String, ByteString> {
    data.into_iter()
        .map(|(k, v)| (k.to_owned(), ByteString(v.to_vec())))
        .collect()
}

/// A Secret of KeyManager `key_manager` that outlives it: no owner reference, and
/// [`KEEP_ANNOTATION`].
fn kept_secret(namespace: &str, key_manager: &str, name: &str, data: Vec<(&str, &[u8])>) -> Secret {
    let mut metadata = super::kept_meta(namespace, key_manager, name);
    metadata.annotations = Some(BTreeMap::from([(
        KEEP_ANNOTATION.to_owned(),
        "true".to_owned(),
    )]));
    Secret {
        metadata,
        type_: Some("Opaque".to_owned()),
        data: Some(byte_strings(data)),
        ..Secret::default()
    }
}

/// The KEK. Immutable: it is generated once and never replaced.
pub fn kek_secret(inputs: &Inputs<'_>, material: &Material) -> Secret {
    kek_secret_of(&inputs.namespace(), &inputs.name(), &material.kek)
}

/// The KEK Secret of KeyManager `key_manager` in `namespace`.
pub fn kek_secret_of(namespace: &str, key_manager: &str, kek: &[u8]) -> Secret {
    let mut s = kept_secret(
        namespace,
        key_manager,
        &Names::of(key_manager).kek,
        vec![("kek", kek)],
    );
    s.immutable = Some(true);
    s
}

/// The canonical keystore, merged into every replica.
pub fn keystore_secret(inputs: &Inputs<'_>, material: &Material) -> Secret {
    keystore_secret_of(&inputs.namespace(), &inputs.name(), &material.keystore)
}

/// The canonical keystore Secret of KeyManager `key_manager` in `namespace`.
pub fn keystore_secret_of(namespace: &str, key_manager: &str, keystore: &[u8]) -> Secret {
    kept_secret(
        namespace,
        key_manager,
        &Names::of(key_manager).keystore,
        vec![("keystore", keystore)],
    )
}

/// The replica certificate, when the operator generates it (otherwise the user's Secret
/// or cert-manager's is mounted instead).
pub fn tls_secret(inputs: &Inputs<'_>, material: &Material) -> Option<Secret> {
    if inputs.key_manager.spec.tls.source != TlsSource::Generated {
        return None;
    }
    let (crt, key, ca) = material.tls.as_ref()?;
    Some(tls_secret_of(
        &inputs.namespace(),
        &inputs.name(),
        crt,
        key,
        ca,
    ))
}

/// The generated replica certificate Secret of KeyManager `key_manager` in `namespace`.
pub fn tls_secret_of(
    namespace: &str,
    key_manager: &str,
    crt: &[u8],
    key: &[u8],
    ca: &[u8],
) -> Secret {
    let mut s = kept_secret(
        namespace,
        key_manager,
        &Names::of(key_manager).tls,
        vec![("tls.crt", crt), ("tls.key", key), ("ca.crt", ca)],
    );
    s.type_ = Some("kubernetes.io/tls".to_owned());
    s
}

/// The generated CA (certificate and key), which signs replica certificates. No pod
/// mounts it.
pub fn ca_secret(inputs: &Inputs<'_>, material: &Material) -> Option<Secret> {
    if inputs.key_manager.spec.tls.source != TlsSource::Generated {
        return None;
    }
    let (_, _, ca) = material.tls.as_ref()?;
    let key = material.ca_key.as_ref()?;
    Some(ca_secret_of(&inputs.namespace(), &inputs.name(), ca, key))
}

/// The generated CA Secret of KeyManager `key_manager` in `namespace`.
pub fn ca_secret_of(namespace: &str, key_manager: &str, crt: &[u8], key: &[u8]) -> Secret {
    kept_secret(
        namespace,
        key_manager,
        &Names::of(key_manager).ca,
        vec![("ca.crt", crt), ("ca.key", key)],
    )
}

/// The license signing key Secret of KeyManager `key_manager` in `namespace`. It has
/// always been written without a type (the API server reads that as Opaque).
pub fn signing_secret_of(namespace: &str, key_manager: &str, seed: &[u8]) -> Secret {
    let mut s = kept_secret(
        namespace,
        key_manager,
        &Names::of(key_manager).signing,
        vec![("seed", seed)],
    );
    s.type_ = None;
    s
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

/// The verifiers of the shadows' passwords, which every replica mounts to judge shadow
/// registrations. Owned and rebuilt: the rotation keeps its own record.
pub fn shadow_verifiers_secret(inputs: &Inputs<'_>, material: &Material) -> Secret {
    shadow_verifiers_secret_of(inputs, &material.shadow_verifiers)
}

/// [`shadow_verifiers_secret`] from the verifiers file itself: what a Shadow's reconcile
/// applies when its rotation changes what the replicas accept.
pub fn shadow_verifiers_secret_of(inputs: &Inputs<'_>, verifiers: &[u8]) -> Secret {
    secret(
        inputs,
        &inputs.names().shadow_verifiers,
        true,
        vec![(super::config::VERIFIERS_FILE, verifiers)],
    )
}
