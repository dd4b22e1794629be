//! Pure builders: a KeyManager with its DriveTables, KeyGroups and Shadows in, the
//! Kubernetes objects the operator applies out. No client, no clock, no randomness: what
//! must be generated (the KEK, certificates, the license) is passed in, so the same input
//! always builds the same objects, and `shadowkeep render` shows exactly what the
//! controller would apply.

mod certificate;
mod config;
mod pdb;
mod secret;
mod service;
pub mod shadow;
mod statefulset;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource as _, ResourceExt as _};
use shadowkeep_api::crd::{DriveTable, KeyGroup, KeyManager, Shadow};
use shadowkeep_api::estate::Estate;

pub use certificate::certificate;
pub use config::{
    CONFIG_FILE, MAX_SHADOW_HINTS, config_hash, config_map, licence, port, replicas_of,
    server_config, shadow_hints_config_map,
};
pub use pdb::pod_disruption_budget;
pub use secret::{
    KEEP_ANNOTATION, Material, ca_secret, ca_secret_of, kek_secret, kek_secret_of, keystore_secret,
    keystore_secret_of, license_secret, shadow_verifiers_secret, shadow_verifiers_secret_of,
    signing_secret_of, tls_secret, tls_secret_of,
};
pub use service::{client_service, peer_service};
pub use shadow::{
    ShadowInputs, ShadowMaterial, ShadowNames, shadow_children, shadow_config, shadow_tls,
};
pub use statefulset::statefulset;

/// The server image used when a KeyManager names none: the one released with this operator.
pub const DEFAULT_IMAGE: &str = concat!(
    "ghcr.io/shadowkeep/shadowkeep-server:",
    env!("CARGO_PKG_VERSION")
);
/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "shadowkeep-operator";
/// Port of KMIP inside the pod.
pub const KMIP_PORT: i32 = 5696;
/// Port of the admin API (health, metrics, replication) inside the pod.
pub const ADMIN_PORT: i32 = 9443;

/// A KeyManager and the objects that refer to it: what its children are built from.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// The KeyManager.
    pub key_manager: &'a KeyManager,
    /// Its drive tables.
    pub drive_tables: Vec<&'a DriveTable>,
    /// Its key groups.
    pub key_groups: Vec<&'a KeyGroup>,
    /// Its shadows.
    pub shadows: Vec<&'a Shadow>,
    /// The key-server image for a KeyManager that names none; [`DEFAULT_IMAGE`] when unset.
    pub default_image: Option<String>,
}

impl<'a> Inputs<'a> {
    /// Gathers, for every KeyManager of `estate`, the objects that refer to it.
    pub fn from_estate(estate: &'a Estate) -> Vec<Self> {
        estate
            .key_managers()
            .iter()
            .map(|km| {
                let ns = km.namespace();
                let name = km.name_any();
                let mine = |o_ns: Option<String>, r: &str| o_ns == ns && r == name;
                Self {
                    key_manager: km,
                    drive_tables: estate
                        .drive_tables()
                        .iter()
                        .filter(|t| mine(t.namespace(), &t.spec.key_manager_ref.name))
                        .collect(),
                    key_groups: estate
                        .key_groups()
                        .iter()
                        .filter(|g| mine(g.namespace(), &g.spec.key_manager_ref.name))
                        .collect(),
                    shadows: estate
                        .shadows()
                        .iter()
                        .filter(|s| mine(s.namespace(), &s.spec.key_manager_ref.name))
                        .collect(),
                    default_image: None,
                }
            })
            .collect()
    }

    /// The KeyManager alone, without the objects that refer to it: enough for what does
    /// not depend on them (its names, material, replicas).
    pub fn of_key_manager(key_manager: &'a KeyManager) -> Self {
        Self {
            key_manager,
            drive_tables: Vec::new(),
            key_groups: Vec::new(),
            shadows: Vec::new(),
            default_image: None,
        }
    }

    /// The KeyManager's name.
    pub fn name(&self) -> String {
        self.key_manager.name_any()
    }

    /// The KeyManager's namespace (`default` when the manifest names none).
    pub fn namespace(&self) -> String {
        self.key_manager
            .namespace()
            .unwrap_or_else(|| "default".to_owned())
    }

    /// Names of the children.
    pub fn names(&self) -> Names {
        Names::of(&self.name())
    }

    /// The labels every child carries.
    pub fn labels(&self) -> BTreeMap<String, String> {
        labels(&self.name())
    }

    /// The labels that select the KeyManager's pods.
    pub fn selector(&self) -> BTreeMap<String, String> {
        selector(&self.name())
    }

    /// Metadata for a child: name, namespace, labels, and — unless the child must outlive
    /// the KeyManager — an owner reference so Kubernetes removes it with the KeyManager.
    pub fn meta(&self, name: &str, owned: bool) -> ObjectMeta {
        let mut meta = kept_meta(&self.namespace(), &self.name(), name);
        meta.owner_references = owned.then(|| vec![self.owner_reference()]);
        meta
    }

    fn owner_reference(&self) -> OwnerReference {
        let km = self.key_manager;
        OwnerReference {
            api_version: KeyManager::api_version(&()).into_owned(),
            kind: KeyManager::kind(&()).into_owned(),
            name: self.name(),
            uid: km.uid().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    /// The Secret holding the replica certificate (`tls.crt`, `tls.key`, `ca.crt`).
    pub fn tls_secret_name(&self) -> String {
        let tls = &self.key_manager.spec.tls;
        match tls.source {
            shadowkeep_api::crd::TlsSource::Secret => {
                tls.secret_name.clone().unwrap_or_else(|| self.names().tls)
            }
            shadowkeep_api::crd::TlsSource::Generated
            | shadowkeep_api::crd::TlsSource::CertManager => self.names().tls,
        }
    }

    /// The identity replicas present to each other (a subject alternative name of the
    /// replica certificate).
    pub fn peer_identity(&self) -> String {
        format!("*.{}.{}.svc", self.names().peers, self.namespace())
    }
}

/// The labels every child of KeyManager `key_manager` carries.
pub fn labels(key_manager: &str) -> BTreeMap<String, String> {
    let mut labels = selector(key_manager);
    labels.insert(
        "app.kubernetes.io/name".to_owned(),
        "shadowkeep-server".to_owned(),
    );
    labels.insert(
        "app.kubernetes.io/component".to_owned(),
        "key-server".to_owned(),
    );
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        FIELD_MANAGER.to_owned(),
    );
    labels
}

/// The labels that select the pods of KeyManager `key_manager`.
pub fn selector(key_manager: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/instance".to_owned(),
            key_manager.to_owned(),
        ),
        (
            "shadowkeep.io/key-manager".to_owned(),
            key_manager.to_owned(),
        ),
    ])
}

/// Metadata of object `name`, a child of KeyManager `key_manager` in `namespace` that
/// outlives it: its labels, and no owner reference. The KeyManager object itself is not
/// needed, so the state of a deleted KeyManager is written the same way.
pub fn kept_meta(namespace: &str, key_manager: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(labels(key_manager)),
        ..ObjectMeta::default()
    }
}

/// The names of a KeyManager's children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// StatefulSet and PodDisruptionBudget.
    pub statefulset: String,
    /// Headless Service for the replicas to find each other.
    pub peers: String,
    /// Service for KMIP clients.
    pub kmip: String,
    /// ConfigMap with the server configuration.
    pub config: String,
    /// Secret with the KEK.
    pub kek: String,
    /// Secret with the replica certificate.
    pub tls: String,
    /// Secret with the generated CA's key.
    pub ca: String,
    /// Secret with the license signing key.
    pub signing: String,
    /// Secret with the canonical keystore.
    pub keystore: String,
    /// Secret with the server license.
    pub license: String,
    /// Secret with the verifiers of the shadows' passwords.
    pub shadow_verifiers: String,
    /// ConfigMap with the shadows' hint addresses.
    pub shadow_hints: String,
}

impl Names {
    /// The names derived from a KeyManager's name (at most 47 characters, so these fit).
    pub fn of(name: &str) -> Self {
        Self {
            statefulset: name.to_owned(),
            peers: format!("{name}-peers"),
            kmip: format!("{name}-kmip"),
            config: format!("{name}-config"),
            kek: format!("{name}-kek"),
            tls: format!("{name}-tls"),
            ca: format!("{name}-ca"),
            signing: format!("{name}-license-signing"),
            keystore: format!("{name}-keystore"),
            license: format!("{name}-license"),
            shadow_verifiers: format!("{name}-shadow-verifiers"),
            shadow_hints: format!("{name}-shadow-hints"),
        }
    }
}

/// A child the controller applies on every reconcile.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // a handful per reconcile, each built and applied once
pub enum Child {
    /// The license Secret.
    Secret(Secret),
    /// The cert-manager Certificate (a kind this crate has no type for).
    Certificate(serde_json::Value),
    /// The server configuration.
    ConfigMap(ConfigMap),
    /// The headless or the client Service.
    Service(Service),
    /// The replicas.
    StatefulSet(StatefulSet),
    /// The disruption budget.
    PodDisruptionBudget(PodDisruptionBudget),
}

impl Child {
    /// The object as JSON, as it is applied (`apiVersion` and `kind` included).
    pub fn to_value(&self) -> Result<serde_json::Value, BuildError> {
        let value = match self {
            Self::Secret(o) => serde_json::to_value(o),
            Self::Certificate(o) => Ok(o.clone()),
            Self::ConfigMap(o) => serde_json::to_value(o),
            Self::Service(o) => serde_json::to_value(o),
            Self::StatefulSet(o) => serde_json::to_value(o),
            Self::PodDisruptionBudget(o) => serde_json::to_value(o),
        };
        value.map_err(|e| BuildError(e.to_string()))
    }
}

/// The children applied on every reconcile, in apply order: the license and shadow
/// verifiers Secrets, the cert-manager Certificate (when asked for), ConfigMap, Services,
/// StatefulSet, PodDisruptionBudget. What the StatefulSet mounts comes before it.
pub fn applied(inputs: &Inputs<'_>, material: &Material) -> Result<Vec<Child>, BuildError> {
    let mut out = vec![
        Child::Secret(license_secret(inputs, material)),
        Child::Secret(shadow_verifiers_secret(inputs, material)),
    ];
    if let Some(certificate) = certificate(inputs) {
        out.push(Child::Certificate(certificate));
    }
    out.push(Child::ConfigMap(shadow_hints_config_map(
        inputs,
        &shadowkeep_api::crd::hint_list(&inputs.shadows),
    )));
    let server = server_config(inputs, &material.license_public_key);
    out.push(Child::ConfigMap(config_map(inputs, &server)?));
    let hash = config_hash(&server);
    out.push(Child::Service(peer_service(inputs)));
    out.push(Child::Service(client_service(inputs)));
    out.push(Child::StatefulSet(statefulset(inputs, &hash)));
    out.push(Child::PodDisruptionBudget(pod_disruption_budget(inputs)));
    Ok(out)
}

/// Every object of one KeyManager, in apply order: the Secrets made once (KEK, keystore,
/// CA, replica certificate), then what [`applied`] builds. `material` holds what must be
/// generated.
pub fn children(
    inputs: &Inputs<'_>,
    material: &Material,
) -> Result<Vec<serde_json::Value>, BuildError> {
    let mut once = vec![
        kek_secret(inputs, material),
        keystore_secret(inputs, material),
    ];
    once.extend(ca_secret(inputs, material));
    once.extend(tls_secret(inputs, material));
    let mut out = once
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BuildError(e.to_string()))?;
    for child in applied(inputs, material)? {
        out.push(child.to_value()?);
    }
    Ok(out)
}

/// A child could not be built.
#[derive(Debug, thiserror::Error)]
#[error("failed to build: {0}")]
pub struct BuildError(pub String);
