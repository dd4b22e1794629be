//! A Shadow's Secrets: its licence, its password and its generated certificate, all owned
//! by the Shadow and rebuilt from [`ShadowMaterial`].

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use shadowkeep_api::crd::TlsSource;

use super::{ShadowInputs, ShadowMaterial};

fn secret(inputs: &ShadowInputs<'_>, name: &str, data: &[(&str, &[u8])]) -> Secret {
    Secret {
        metadata: inputs.meta(name),
        type_: Some("Opaque".to_owned()),
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Secret::default()
    }
}

/// The shadow licence (key `license`).
pub fn license_secret(inputs: &ShadowInputs<'_>, material: &ShadowMaterial) -> Secret {
    secret(
        inputs,
        &inputs.names().license,
        &[("license", &material.license)],
    )
}

/// The shadow's password (key `password`). The pod mounts that key alone, so that the
/// rotation may keep its bookkeeping in other keys of this Secret.
pub fn password_secret(inputs: &ShadowInputs<'_>, material: &ShadowMaterial) -> Secret {
    secret(
        inputs,
        &inputs.names().password,
        &[("password", &material.password)],
    )
}

/// The shadow's certificate, when the operator generates it: the KeyManager's TLS source
/// is `Generated` and `material` holds one.
pub fn tls_secret(inputs: &ShadowInputs<'_>, material: &ShadowMaterial) -> Option<Secret> {
    if inputs.key_manager.spec.tls.source != TlsSource::Generated {
        return None;
    }
    let (crt, key, ca) = material.tls.as_ref()?;
    let mut s = secret(
        inputs,
        &inputs.names().tls,
        &[("tls.crt", crt), ("tls.key", key), ("ca.crt", ca)],
    );
    s.type_ = Some("kubernetes.io/tls".to_owned());
    Some(s)
}
