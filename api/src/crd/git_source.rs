//! The GitSource resource: a branch of a Git repository the operator follows, applying
//! the shadowkeep objects it holds — for clusters without Flux or Argo CD.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Interval, interval_rule};

/// A branch the operator follows: each new head is planned against the last applied
/// revision with the same code as `shadowkeep plan`, held while it has risks nobody
/// accepted, and otherwise applied in domain order.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "shadowkeep.io",
    version = "v1alpha1",
    kind = "GitSource",
    namespaced,
    status = "GitSourceStatus",
    shortname = "gs",
    category = "shadowkeep",
    doc = "A Git branch the operator follows: each new head is planned, held while it has unaccepted risks, and applied in domain order.",
    printcolumn(
        name = "Revision",
        type_ = "string",
        json_path = ".status.lastAppliedRevision"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    derive = "PartialEq",
    cel
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!self.url.startsWith('file://') || !has(self.credentialsRef)").message("is not used with a file:// URL").field_path(".credentialsRef"))]
pub struct GitSourceSpec {
    /// The repository: `https://`, `ssh://` (or `user@host:path`), or `file://` for a
    /// repository on the operator's own file system (tests, air-gapped mirrors). Credentials
    /// go in the Secret `credentialsRef` names, never in the URL.
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('https://') || self.startsWith('ssh://') || self.startsWith('file:///') || self.matches('^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^/].*$')").message("must be an https://, ssh://, file:/// or user@host:path URL"))]
    #[x_kube(validation = kube::core::Rule::new("!self.matches('^https://[^/]*@')").message("must not hold credentials: put them in the Secret credentialsRef names"))]
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,

    /// The branch followed. A force push to it is applied like any other new head, and
    /// reported.
    #[serde(default = "default_branch")]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9._/-]*$') && !self.contains('..') && !self.endsWith('/') && !self.endsWith('.lock')").message("must be a branch name: letters, digits, '.', '_', '/' or '-', without '..'"))]
    #[schemars(length(min = 1, max = 255))]
    pub branch: String,

    /// The directory of the repository holding the manifests; the whole repository when
    /// unset. Only shadowkeep kinds are applied; other YAML is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("!self.startsWith('/') && !self.split('/').exists(p, p == '..')").message("must be a path inside the repository: relative, without '..'"))]
    #[schemars(length(min = 1, max = 1024))]
    pub path: Option<String>,

    /// How often the branch is fetched.
    #[serde(default = "default_interval")]
    #[x_kube(validation = interval_rule!(min "10s", max "24h"))]
    pub interval: Interval,

    /// A Secret in the same namespace with the credentials. https: `username` and
    /// `password` (a token is a password), and optionally `ca.crt`, the PEM certificate of
    /// a private CA trusted for this repository only. ssh (required for it): `identity`,
    /// an unencrypted OpenSSH private key, and `known_hosts`, the host keys accepted (a
    /// host key not listed for the host is refused). Never for file://.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_ref: Option<SecretRef>,

    /// Verify the head commit's signature before anything of it is applied: an unsigned
    /// head, or one signed by a key not allowed, is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<GitVerify>,
}

fn default_branch() -> String {
    "main".to_owned()
}

fn default_interval() -> Interval {
    Interval::from_secs(60)
}

/// A Secret in the GitSource's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// How the head commit's signature is checked.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.mode == 'ssh' ? (has(self.allowedSignersRef) && !has(self.keyRingRef)) : (has(self.keyRingRef) && !has(self.allowedSignersRef))").message("ssh needs allowedSignersRef, openpgp needs keyRingRef, and not the other"))]
pub struct GitVerify {
    /// `ssh` (commits signed with `gpg.format=ssh`) or `openpgp` (signed with gpg, Git's
    /// default `gpg.format`).
    pub mode: VerifyMode,

    /// For `ssh`: a Secret whose `allowed_signers` key holds the allowed signers, in the
    /// format of `git config gpg.ssh.allowedSignersFile` (one `principal key-type key` a
    /// line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_signers_ref: Option<SecretRef>,

    /// For `openpgp`: a Secret whose `keyring.asc` key holds the armored public keys
    /// allowed to sign (`gpg --armor --export KEY...`; one or more keys, in one or more
    /// blocks, at most 1 MiB). A signature by a key's primary key or by a subkey bound for
    /// signing is accepted; a revoked key, or one expired when it signed, is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ring_ref: Option<SecretRef>,
}

/// The kind of commit signature checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    /// SSH signatures (`git config gpg.format ssh`).
    Ssh,
    /// OpenPGP signatures.
    Openpgp,
}

/// A risk of a held revision, as `shadowkeep plan` states it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeldRisk {
    /// `high`, `medium` or `low`.
    pub severity: String,
    /// The risk's stable name, as in `shadowkeep plan --format json` (`drive-moved`,
    /// `key-manager-deleted`, ...).
    pub code: String,
    /// What could be lost.
    pub message: String,
}

/// An object applied from the repository, by which removals from it are found.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct AppliedObject {
    /// KeyManager, KeyGroup, DriveTable or Shadow.
    pub kind: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl std::fmt::Display for AppliedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// What the operator observed of a GitSource.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitSourceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, Reconciling, Stalled (kstatus).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The head last fetched, applied or not: `<branch>@sha1:<commit>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_revision: Option<String>,

    /// The revision whose objects were last applied: `<branch>@sha1:<commit>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_revision: Option<String>,

    /// The risks of the head being held, until the annotation
    /// `shadowkeep.io/accept-risks` names its commit.
    // Written even when empty, so that a status patch clears what was there.
    #[serde(default)]
    pub held_risks: Vec<HeldRisk>,

    /// The objects applied from the last applied revision: what a later revision that
    /// no longer holds one of them prunes.
    // Written even when empty, so that a status patch clears what was there.
    #[serde(default)]
    pub inventory: Vec<AppliedObject>,

    /// Objects removed from the repository that were not deleted because deleting them
    /// could lose keys (KeyManagers): delete them by hand once their keys are safe.
    // Written even when empty, so that a status patch clears what was there.
    #[serde(default)]
    pub orphaned: Vec<AppliedObject>,
}
