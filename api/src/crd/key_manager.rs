//! The KeyManager resource: a set of mirrored key-server replicas serving the same drives.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Interval, interval_rule};
use super::shadow::ShadowState;

/// The KMIP port registered with IANA; tape libraries default to it.
pub const KMIP_PORT: i32 = 5696;

/// A key manager: replicas that serve the same drives as mirror images of one another.
///
/// Every replica holds the same keystore, configuration, drive table and key groups; the
/// operator keeps them identical and keeps versioned backups of the keystore.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "shadowkeep.io",
    version = "v1alpha1",
    kind = "KeyManager",
    namespaced,
    status = "KeyManagerStatus",
    shortname = "km",
    category = "shadowkeep",
    doc = "A key manager: mirrored key-server replicas that serve the same drives and hold identical keystores.",
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Keys", type_ = "integer", json_path = ".status.keyCount"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    derive = "PartialEq",
    validation = kube::core::Rule::new("self.metadata.name.size() <= 47").message("metadata.name must be at most 47 characters: Service and StatefulSet names are derived from it"),
    cel
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.durability) || !has(self.durability.peerAcknowledgements) || self.durability.peerAcknowledgements < self.replicas"
).message("durability.peerAcknowledgements must be less than replicas: a replica cannot acknowledge its own key").field_path(".durability.peerAcknowledgements"))]
pub struct KeyManagerSpec {
    /// How many mirrored replicas serve keys. Two or more keep keys available when one
    /// replica is down; one is allowed but flagged, because a single server that is lost
    /// takes every key it created with it.
    #[serde(default = "default_replicas")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1 && self <= 16").message("must be between 1 and 16"))]
    pub replicas: i32,

    /// The identity of this key manager, shared by its replicas and written into its
    /// licenses. Two key managers with one server id confuse every client, so it is
    /// unique across the estate and cannot change once set.
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("is immutable"))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')").message("must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"))]
    #[schemars(length(min = 1, max = 63))]
    pub server_id: String,

    /// Container image of the key server. Defaults to the server image released with the
    /// operator, so operator and server versions move together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// CPU and memory for each replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// How clients (tape libraries, storage arrays) reach the KMIP port.
    #[serde(default)]
    pub service: KmipServiceSpec,

    /// Where the server certificate comes from. Clients pin the CA, so the source matters
    /// more than the certificate itself.
    #[serde(default)]
    pub tls: TlsSpec,

    /// How often every replica's keystore is compared with the others and the union pushed
    /// back. Changes are also pushed as they happen; this bounds how long a missed push can
    /// leave a replica behind. The operator pulls every replica's keys into the canonical
    /// keystore (and pushes it back) at each reconcile of the KeyManager: after every change
    /// to it, and otherwise every syncInterval but never more often than every 30 s.
    #[serde(default = "default_sync_interval")]
    #[x_kube(validation = interval_rule!(min "1s", max "24h"))]
    pub sync_interval: Interval,

    /// Versioned keystore backups, kept apart from the live keystore.
    #[serde(default)]
    pub backup: BackupSpec,

    /// What a replica waits for before it tells a client that a new key exists.
    #[serde(default)]
    pub durability: DurabilitySpec,

    /// Where replicas run. Replicas are always spread over hosts; zones spread them over
    /// failure domains, so that one site going dark leaves the others serving.
    #[serde(default)]
    pub placement: PlacementSpec,

    /// Each replica's data volume, which holds its keystore.
    #[serde(default)]
    pub storage: StorageSpec,
}

/// The persistent volume of each replica.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each replica's volume. A keystore of a million keys takes about 1 GiB.
    #[serde(default = "default_storage_size")]
    pub size: Quantity,

    /// Storage class of the volumes; the cluster's default class when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

fn default_storage_size() -> Quantity {
    Quantity("1Gi".to_owned())
}

fn default_replicas() -> i32 {
    2
}

fn default_sync_interval() -> Interval {
    Interval::from_secs(30)
}

/// How clients reach the KMIP port of the replicas.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KmipServiceSpec {
    /// Kubernetes Service type for the KMIP endpoint. Tape libraries outside the cluster
    /// usually need `LoadBalancer` or `NodePort`.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,

    /// TCP port of the KMIP endpoint; 5696 is the registered KMIP port.
    #[serde(default = "default_kmip_port")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1 && self <= 65535").message("must be a port number between 1 and 65535"))]
    pub port: i32,

    /// Annotations for the Service, for load-balancer settings of the cloud provider.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for KmipServiceSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::default(),
            port: KMIP_PORT,
            annotations: BTreeMap::new(),
        }
    }
}

fn default_kmip_port() -> i32 {
    KMIP_PORT
}

/// Kubernetes Service types that can expose the KMIP port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    #[default]
    ClusterIP,
    /// A port on every node.
    NodePort,
    /// An external load balancer.
    LoadBalancer,
}

/// Where the server's TLS certificate and CA come from.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.source == 'Secret' ? has(self.secretName) : !has(self.secretName)").message("secretName is required when source is Secret and not allowed otherwise").field_path(".secretName"))]
#[x_kube(validation = kube::core::Rule::new("self.source == 'CertManager' ? has(self.issuerRef) : !has(self.issuerRef)").message("issuerRef is required when source is CertManager and not allowed otherwise").field_path(".issuerRef"))]
pub struct TlsSpec {
    /// `Generated`: the operator makes a CA and certificates and keeps them in Secrets.
    /// `Secret`: an existing Secret with `tls.crt`, `tls.key` and `ca.crt`.
    /// `CertManager`: the operator asks cert-manager for a Certificate from `issuerRef`.
    #[serde(default)]
    pub source: TlsSource,

    /// Name of the existing TLS Secret in the KeyManager's namespace; only with `Secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,

    /// cert-manager issuer to request the certificate from; only with `CertManager`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
}

/// The origin of the server certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TlsSource {
    /// The operator generates and keeps a CA and the certificates.
    #[default]
    Generated,
    /// An existing Secret supplied by the user.
    Secret,
    /// A cert-manager Certificate.
    CertManager,
}

/// A cert-manager issuer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the Issuer or ClusterIssuer.
    pub name: String,
    /// `Issuer` (namespaced) or `ClusterIssuer`.
    #[serde(default)]
    pub kind: IssuerKind,
}

/// Kinds of cert-manager issuer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum IssuerKind {
    /// An issuer in the KeyManager's namespace.
    #[default]
    Issuer,
    /// A cluster-wide issuer.
    ClusterIssuer,
}

/// Versioned keystore backups: kept in the KeyManager's namespace before every change,
/// and written to targets kept apart from it, with the KEK sealed to recovery keys that
/// never touch the cluster.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// How many versions of the canonical keystore to keep, in the KeyManager's namespace
    /// and in each target. A version is written before every change, so this is how many
    /// changes can be rolled back; a target's newest backup is never deleted.
    #[serde(default = "default_retention")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1 && self <= 1000").message("must be between 1 and 1000"))]
    pub retention: i32,

    /// Public keys (`age1...`, made with `age-keygen` or `shadowkeep recovery-key new`) the
    /// KEK is sealed to in every backup written to a target. Without one, a backup holds
    /// keys nobody outside the cluster can open: losing the cluster would lose every key.
    /// The private recovery keys stay off the cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = kube::core::Rule::new("self.size() <= 16").message("must list at most 16 recipients"))]
    #[x_kube(validation = kube::core::Rule::new("self.all(r, r.matches('^age1[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{58}$'))").message("each must be an age X25519 public key (age1 followed by 58 characters), never a private key"))]
    #[schemars(length(max = 16), inner(length(max = 62)))]
    pub recovery_recipients: Vec<String>,

    /// Where backups are written, apart from the KeyManager: every change of the canonical
    /// keystore becomes a new, never-overwritten object in each target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = kube::core::Rule::new("self.size() <= 8").message("must list at most 8 targets"))]
    #[schemars(length(max = 8), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub targets: Vec<BackupTarget>,
}

impl Default for BackupSpec {
    fn default() -> Self {
        Self {
            retention: default_retention(),
            recovery_recipients: Vec::new(),
            targets: Vec::new(),
        }
    }
}

/// One place backups are written to: exactly one of `secret` and `s3`.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.secret) != has(self.s3)").message("exactly one of secret and s3 must be set"))]
pub struct BackupTarget {
    /// The target's name, for status, conditions and Events.
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')").message("must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"))]
    #[schemars(length(min = 1, max = 63))]
    pub name: String,

    /// Backups as immutable Secrets in another namespace, which those who may read the
    /// KeyManager's namespace need not be able to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretBackupTarget>,

    /// Backups as objects in an S3-compatible bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3BackupTarget>,
}

/// Backups as Secrets in another namespace. A Secret holds at most 1 MiB, so this suits
/// keystores of up to a few thousand keys; larger ones belong in a bucket.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretBackupTarget {
    /// The namespace the Secrets are written to; never the KeyManager's own, since a
    /// backup beside what it backs up is lost with it (`shadowkeep validate` and the
    /// operator refuse it: CEL cannot see a resource's namespace).
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')").message("must be a namespace name"))]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
}

/// Backups as objects in an S3-compatible bucket, written with a conditional create so
/// that an object once written is never overwritten.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.endpoint) || self.endpoint.startsWith('https://') || (self.endpoint.startsWith('http://') && has(self.allowHttp) && self.allowHttp)").message("endpoint must be an https:// URL, or http:// with allowHttp: true").field_path(".endpoint"))]
pub struct S3BackupTarget {
    /// The S3 endpoint URL; AWS's endpoint for `region` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub endpoint: Option<String>,

    /// The bucket's region; `us-east-1` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub region: Option<String>,

    /// The bucket. It must exist: the operator never creates one.
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$')").message("must be an S3 bucket name: 3-63 lowercase letters, digits, '.' or '-'"))]
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,

    /// A path prefix inside the bucket, before the KeyManager's `NAMESPACE/NAME/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("!self.startsWith('/') && !self.contains('..') && !self.contains('//')").message("must be a relative path without '..' or empty segments"))]
    #[schemars(length(max = 512))]
    pub prefix: Option<String>,

    /// The Secret, in the KeyManager's namespace, holding the access key (under `up`: the
    /// files `--secrets DIR/NAMESPACE/NAME/KEY`).
    pub credentials_secret_ref: S3CredentialsRef,

    /// Allows an `http://` endpoint (a test server on the same machine); credentials and
    /// backups then cross the network in the clear.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_http: bool,
}

/// Where an S3 target's credentials are.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct S3CredentialsRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// The key holding the access key id; `accessKeyId` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub access_key_id_key: Option<String>,

    /// The key holding the secret access key; `secretAccessKey` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_access_key_key: Option<String>,
}

impl S3CredentialsRef {
    /// The key holding the access key id.
    pub fn access_key_id_key(&self) -> &str {
        self.access_key_id_key.as_deref().unwrap_or("accessKeyId")
    }

    /// The key holding the secret access key.
    pub fn secret_access_key_key(&self) -> &str {
        self.secret_access_key_key
            .as_deref()
            .unwrap_or("secretAccessKey")
    }
}

fn default_retention() -> i32 {
    30
}

/// What a replica waits for before it answers a Create or Register with success.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DurabilitySpec {
    /// How many other replicas must hold a new key before the client is told it exists.
    /// A tape written with a key that then dies with its replica is unreadable forever, so
    /// this defaults to 1 when there are peers and 0 with a single replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self >= 0").message("must not be negative"))]
    pub peer_acknowledgements: Option<i32>,
    /// How many of the KeyManager's shadows must hold a new key before the client is told
    /// it exists, so that a key is at the other site before a tape is written with it. On
    /// timeout the key is aborted and the client gets an error. 0 (the default) waits for
    /// none; replicas still push new keys to their shadows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self >= 0").message("must not be negative"))]
    pub shadow_acknowledgements: Option<i32>,
}

/// Where replicas are scheduled.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementSpec {
    /// Zones the replicas may run in; they are spread evenly over them. Empty means any
    /// zone, still spread as evenly as the cluster allows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = kube::core::Rule::new("self.size() <= 16").message("must list at most 16 zones"))]
    #[schemars(length(max = 16), inner(length(max = 63)))]
    pub zones: Vec<String>,

    /// Node label whose values are the failure domains that `zones` names.
    #[serde(default = "default_topology_key")]
    pub topology_key: String,

    /// Node labels a replica's node must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
}

impl Default for PlacementSpec {
    fn default() -> Self {
        Self {
            zones: Vec::new(),
            topology_key: default_topology_key(),
            node_selector: BTreeMap::new(),
        }
    }
}

fn default_topology_key() -> String {
    "topology.kubernetes.io/zone".to_owned()
}

/// What the operator observed of a KeyManager.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyManagerStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, Progressing, Degraded, KeystoreInSync, SingleServer, DuplicateServerId.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Replicas that exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// Replicas that pass their readiness probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,

    /// Keys in the canonical keystore, destroyed ones included (they are never removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_count: Option<i64>,

    /// Digest of the canonical keystore; replicas reporting the same digest hold the same keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keystore_digest: Option<String>,

    /// Addresses of this key manager's shadows, for clients to try when the replicas cannot
    /// be reached. Addresses, not names: DNS may be down when they are needed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadow_hints: Vec<String>,

    /// This key manager's shadows as their Shadow resources report them, so that one
    /// `kubectl get` of the KeyManager shows where its keys can still be served from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub shadows: Vec<KeyManagerShadow>,

    /// The last `shadowkeep.io/reconcile-requested-at` annotation value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,

    /// The last backup each target holds, and why the last attempt failed when it did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub backups: Vec<BackupTargetStatus>,

    /// What each replica answered at the last keystore sync.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub replica_sync: Vec<ReplicaSyncStatus>,
}

/// One shadow of a KeyManager, as its Shadow resource reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyManagerShadow {
    /// The Shadow's name.
    pub name: String,

    /// The zone it runs in (`spec.placement.zone`).
    pub zone: String,

    /// What it is doing, when it has said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ShadowState>,

    /// When it last held every key of this key manager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_synchronized: Option<Time>,
}

/// One backup target, as the last reconcile found it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupTargetStatus {
    /// The target (`spec.backup.targets[].name`).
    pub name: String,

    /// The newest backup it holds (object or Secret name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<String>,

    /// The first 12 hex digits of the SHA-256 of the keystore in that backup; a new
    /// backup is written when the canonical keystore's differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keystore_sha256: Option<String>,

    /// When that backup was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_at: Option<Time>,

    /// Whether that backup holds the KEK sealed to recovery recipients.
    #[serde(default)]
    pub escrowed: bool,

    /// Why the last attempt failed; unset when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One replica's keystore, as the last keystore sync found it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSyncStatus {
    /// The replica (pod) name.
    pub name: String,

    /// Keys the replica holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<i64>,

    /// Digest of the replica's keystore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,

    /// Whether the replica holds exactly the canonical keystore. A replica that lacks keys
    /// gets them from the canonical keystore Secret, which it imports within a minute.
    #[serde(default)]
    pub in_sync: bool,

    /// Keys the canonical keystore took from this replica at the last sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_pulled: Option<i64>,

    /// Why the replica could not be asked, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
