//! Pure builders of a Shadow's children: a Shadow and its KeyManager in, the Kubernetes
//! objects that run it as an emergency key server out. As for the replicas, what must be
//! generated (the licence, the password, the certificate) is passed in as
//! [`ShadowMaterial`]; only [`shadow_tls`] makes something, and it is called apart.
//!
//! Every child is owned by the Shadow, not the KeyManager: a Shadow outlives its KeyManager
//! (that is what it is for) and keeps its data volume after either is deleted.

mod config;
mod secret;
mod tls;
mod workload;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource as _, ResourceExt as _};
use shadowkeep_api::crd::{KeyManager, Shadow};

pub use config::{PASSWORD_DIR, shadow_config, shadow_config_map};
pub use secret::{license_secret, password_secret, tls_secret};
pub use tls::{shadow_certificate, shadow_tls, shadow_tls_names};
pub use workload::{admin_service, kmip_service, statefulset};

use super::{BuildError, Child, FIELD_MANAGER, Inputs, config_hash};

/// A Shadow and the KeyManager it mirrors: what its children are built from.
#[derive(Clone, Debug)]
pub struct ShadowInputs<'a> {
    /// The Shadow.
    pub shadow: &'a Shadow,
    /// Its KeyManager (`spec.keyManagerRef`).
    pub key_manager: &'a KeyManager,
    /// The key-server image for a KeyManager that names none; [`super::DEFAULT_IMAGE`]
    /// when unset.
    pub default_image: Option<String>,
}

/// The names of a Shadow's children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowNames {
    /// The StatefulSet (of one pod, `<shadow>-0`).
    pub statefulset: String,
    /// The headless Service of the admin API, and the StatefulSet's `serviceName`.
    pub admin: String,
    /// The Service for KMIP clients.
    pub kmip: String,
    /// The ConfigMap with the server configuration.
    pub config: String,
    /// The Secret with the shadow's certificate.
    pub tls: String,
    /// The Secret with the shadow licence.
    pub license: String,
    /// The Secret with the shadow's password.
    pub password: String,
}

impl ShadowNames {
    /// The names derived from a Shadow's name.
    pub fn of(name: &str) -> Self {
        Self {
            statefulset: name.to_owned(),
            admin: format!("{name}-admin"),
            kmip: format!("{name}-kmip"),
            config: format!("{name}-config"),
            tls: format!("{name}-tls"),
            license: format!("{name}-license"),
            password: format!("{name}-password"),
        }
    }
}

/// What must be generated rather than built: the signed shadow licence, the password, the
/// KeyManager's licence key and the shadow's certificate (when the operator makes it).
#[derive(Clone, Default)]
pub struct ShadowMaterial {
    /// The signed shadow licence.
    pub license: Vec<u8>,
    /// The shadow's current password.
    pub password: Vec<u8>,
    /// The KeyManager's licence verifying key, 64 hex digits.
    pub license_public_key: String,
    /// The shadow's certificate, when generated ([`shadow_tls`]).
    pub tls: Option<Pem>,
}

/// A certificate, its key and its CA's certificate, PEM: the `tls.crt`, `tls.key` and
/// `ca.crt` of a TLS Secret.
pub type Pem = (Vec<u8>, Vec<u8>, Vec<u8>);

impl std::fmt::Debug for ShadowMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShadowMaterial(<redacted>)")
    }
}

impl<'a> ShadowInputs<'a> {
    /// The Shadow's name.
    pub fn name(&self) -> String {
        self.shadow.name_any()
    }

    /// The Shadow's namespace (`default` when the manifest names none): its KeyManager's.
    pub fn namespace(&self) -> String {
        self.shadow
            .namespace()
            .unwrap_or_else(|| "default".to_owned())
    }

    /// Names of the children.
    pub fn names(&self) -> ShadowNames {
        ShadowNames::of(&self.name())
    }

    /// The KeyManager's own inputs, for what the shadow shares with its replicas (their
    /// names and addresses, the identity they present).
    pub fn key_manager_inputs(&self) -> Inputs<'a> {
        let mut inputs = Inputs::of_key_manager(self.key_manager);
        inputs.default_image.clone_from(&self.default_image);
        inputs
    }

    /// The labels that select the shadow's pod. Not the KeyManager's selector: its
    /// Services and disruption budget must not take the shadow for a replica.
    pub fn selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/instance".to_owned(), self.name()),
            ("shadowkeep.io/shadow".to_owned(), self.name()),
        ])
    }

    /// The labels every child carries: the shadow's and its KeyManager's names.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.selector();
        labels.insert(
            "shadowkeep.io/key-manager".to_owned(),
            self.key_manager.name_any(),
        );
        labels.insert(
            "app.kubernetes.io/name".to_owned(),
            "shadowkeep-server".to_owned(),
        );
        labels.insert(
            "app.kubernetes.io/component".to_owned(),
            "shadow".to_owned(),
        );
        labels.insert(
            "app.kubernetes.io/managed-by".to_owned(),
            FIELD_MANAGER.to_owned(),
        );
        labels
    }

    /// Metadata for a child: name, namespace, labels and an owner reference to the Shadow.
    pub fn meta(&self, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.namespace()),
            labels: Some(self.labels()),
            owner_references: Some(vec![OwnerReference {
                api_version: Shadow::api_version(&()).into_owned(),
                kind: Shadow::kind(&()).into_owned(),
                name: self.name(),
                uid: self.shadow.uid().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        }
    }
}

/// The Shadow's children, in apply order: the licence, password and (generated)
/// certificate Secrets or the cert-manager Certificate, the ConfigMap, the admin and KMIP
/// Services, the StatefulSet. What the StatefulSet mounts comes before it.
pub fn shadow_children(
    inputs: &ShadowInputs<'_>,
    material: &ShadowMaterial,
) -> Result<Vec<Child>, BuildError> {
    let mut out = vec![
        Child::Secret(license_secret(inputs, material)),
        Child::Secret(password_secret(inputs, material)),
    ];
    if let Some(tls) = tls_secret(inputs, material) {
        out.push(Child::Secret(tls));
    }
    if let Some(certificate) = shadow_certificate(inputs)? {
        out.push(Child::Certificate(certificate));
    }
    out.push(Child::ConfigMap(shadow_config_map(
        inputs,
        &material.license_public_key,
    )?));
    let hash = config_hash(&shadow_config(inputs, &material.license_public_key));
    out.push(Child::Service(admin_service(inputs)));
    out.push(Child::Service(kmip_service(inputs)));
    out.push(Child::StatefulSet(statefulset(inputs, &hash)));
    Ok(out)
}

#[cfg(test)]
mod tests;
