//! The core's state as Kubernetes objects, as the operator has always written them:
//! material in Secrets that outlive their KeyManager (`NAME-kek`, `NAME-keystore`,
//! `NAME-ca`, `NAME-tls`, `NAME-license-signing`), keystore backups in immutable Secrets
//! labelled [`BACKUP_LABEL`], and drive histories in ConfigMaps labelled
//! [`HISTORY_LABEL`].

use jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use shadowkeep_api::crd::{KeyManager, KeyManagerStatus};
use shadowkeep_api::drive_history::{DriveHistory, HISTORY_FILE};

use super::conditions::publish_transitions;
use super::{Context, StatusError};
use crate::build::{self, Inputs, Names};
use crate::core::drive_moves::{Origins, RELEASE_DRIVES};
use crate::core::keystore_sync::{Replicas, ask, in_cluster};
use crate::core::state::{Fields, Item, Owner, State, StateError, StoredHistory, StoredShadow};

/// Label on keystore backups, naming their KeyManager.
pub const BACKUP_LABEL: &str = "shadowkeep.io/keystore-backup-of";

/// Label on drive-history ConfigMaps, naming their KeyManager.
pub const HISTORY_LABEL: &str = "shadowkeep.io/drive-history-of";

/// Label on Shadow credential Secrets, naming their KeyManager.
pub const SHADOW_CREDENTIALS_LABEL: &str = "shadowkeep.io/shadow-credentials-of";

/// The key of a Shadow credential Secret holding the record.
const RECORD_KEY: &str = "record";

/// The name of a Shadow's credential Secret (its record: passwords, licences, the
/// rotation in progress). Never mounted: the shadow gets its password and licence from
/// Secrets built from it.
pub fn credentials_name(shadow: &str) -> String {
    format!("{shadow}-credentials")
}

/// The name of a KeyManager's drive-history ConfigMap.
pub fn history_name(key_manager: &str) -> String {
    format!("{key_manager}-drive-history")
}

/// A value of a Secret (empty when missing).
pub fn bytes(secret: &Secret, key: &str) -> Vec<u8> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .unwrap_or_default()
}

/// The state in the Secrets and ConfigMaps of the KeyManager's namespace.
#[derive(Clone)]
pub struct Kube {
    client: kube::Client,
}

impl std::fmt::Debug for Kube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kube").finish_non_exhaustive()
    }
}

fn secret_name(owner: &Owner, item: Item) -> String {
    let names = Names::of(&owner.name);
    match item {
        Item::Kek => names.kek,
        Item::Keystore => names.keystore,
        Item::Ca => names.ca,
        Item::Tls => names.tls,
        Item::LicenseSigning => names.signing,
    }
}

/// The Secret that holds `fields` as `owner`'s item.
fn secret_of(owner: &Owner, item: Item, fields: &Fields) -> Secret {
    let (ns, name) = (owner.namespace.as_str(), owner.name.as_str());
    let f = |field| fields.get(field);
    match item {
        Item::Kek => build::kek_secret_of(ns, name, f("kek")),
        Item::Keystore => build::keystore_secret_of(ns, name, f("keystore")),
        Item::Ca => build::ca_secret_of(ns, name, f("ca.crt"), f("ca.key")),
        Item::Tls => build::tls_secret_of(ns, name, f("tls.crt"), f("tls.key"), f("ca.crt")),
        Item::LicenseSigning => build::signing_secret_of(ns, name, f("seed")),
    }
}

fn fields_of(secret: &Secret, item: Item) -> Fields {
    Fields::of(item.fields().iter().map(|f| (*f, bytes(secret, f))))
}

fn conflict_or(action: String) -> impl FnOnce(kube::Error) -> StateError {
    move |e| match e {
        kube::Error::Api(status) if status.code == 409 => StateError::Conflict { action },
        e => StateError::store(action)(e),
    }
}

impl Kube {
    /// The state behind `client`.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    fn secrets(&self, ns: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), ns)
    }

    async fn prune_backups(&self, owner: &Owner, retention: usize) -> Result<(), StateError> {
        let secrets = self.secrets(&owner.namespace);
        let mut backups: Vec<String> = self
            .backup_secrets(owner)
            .await?
            .iter()
            .map(kube::ResourceExt::name_any)
            .collect();
        // Names end in a millisecond stamp of equal width: name order is age order.
        backups.sort();
        let excess = backups.len().saturating_sub(retention);
        for name in backups.into_iter().take(excess) {
            secrets
                .delete(&name, &DeleteParams::default())
                .await
                .map_err(StateError::store(format!("prune keystore backup {name}")))?;
        }
        Ok(())
    }

    async fn backup_secrets(&self, owner: &Owner) -> Result<Vec<Secret>, StateError> {
        Ok(self
            .secrets(&owner.namespace)
            .list(&ListParams::default().labels(&format!("{BACKUP_LABEL}={}", owner.name)))
            .await
            .map_err(StateError::store("list keystore backups"))?
            .items)
    }
}

/// `status` as server-side apply takes it for the status subresource of a `K`: the
/// operator owns the whole status.
pub fn status_apply<K, S>(status: &S) -> serde_json::Value
where
    K: kube::Resource<DynamicType = ()>,
    S: serde::Serialize,
{
    serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    })
}

/// Writes `next` as the status of `object` (whose status now is `current`) by server-side
/// apply under `field_manager`, unless it has it already, with an Event for each condition
/// (`conditions` of a status) whose status or reason changed, a Warning when `is_warning`.
pub async fn write_status<K, S>(
    ctx: &Context,
    object: &K,
    current: Option<&S>,
    next: &S,
    conditions: fn(&S) -> &[Condition],
    field_manager: &str,
    is_warning: fn(&Condition) -> bool,
) -> Result<(), StatusError>
where
    K: kube::Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    S: serde::Serialize + PartialEq,
{
    if current == Some(next) {
        return Ok(());
    }
    publish_transitions(
        ctx,
        &object.object_ref(&()),
        current.map(conditions).unwrap_or_default(),
        conditions(next),
        is_warning,
    )
    .await;
    let namespace = object.namespace().unwrap_or_else(|| "default".to_owned());
    Api::<K>::namespaced(ctx.client.clone(), &namespace)
        .patch_status(
            &object.name_any(),
            &PatchParams::apply(field_manager).force(),
            &Patch::Apply(&status_apply::<K, _>(next)),
        )
        .await
        .map_err(StatusError::of(format!(
            "update the status of {} {namespace}/{}",
            K::kind(&()),
            object.name_any()
        )))?;
    Ok(())
}

impl State for Kube {
    async fn read_status(&self, owner: &Owner) -> Result<Option<KeyManagerStatus>, StateError> {
        Ok(
            Api::<KeyManager>::namespaced(self.client.clone(), &owner.namespace)
                .get_opt(&owner.name)
                .await
                .map_err(StateError::store(format!("read KeyManager {owner}")))?
                .and_then(|km| km.status),
        )
    }

    async fn write_status(
        &self,
        owner: &Owner,
        status: &KeyManagerStatus,
    ) -> Result<(), StateError> {
        let apply = status_apply::<KeyManager, _>(status);
        Api::<KeyManager>::namespaced(self.client.clone(), &owner.namespace)
            .patch_status(
                &owner.name,
                &PatchParams::apply(build::FIELD_MANAGER).force(),
                &Patch::Apply(&apply),
            )
            .await
            .map_err(StateError::store(format!(
                "update the status of KeyManager {owner}"
            )))?;
        Ok(())
    }

    async fn read(&self, owner: &Owner, item: Item) -> Result<Option<Fields>, StateError> {
        let name = secret_name(owner, item);
        Ok(self
            .secrets(&owner.namespace)
            .get_opt(&name)
            .await
            .map_err(StateError::store(format!("read Secret {name}")))?
            .map(|s| fields_of(&s, item)))
    }

    async fn create(
        &self,
        owner: &Owner,
        item: Item,
        fields: Fields,
    ) -> Result<Fields, StateError> {
        let secrets = self.secrets(&owner.namespace);
        let name = secret_name(owner, item);
        if let Some(existing) = secrets
            .get_opt(&name)
            .await
            .map_err(StateError::store(format!("read Secret {name}")))?
        {
            return Ok(fields_of(&existing, item));
        }
        match secrets
            .create(&PostParams::default(), &secret_of(owner, item, &fields))
            .await
        {
            Ok(created) => Ok(fields_of(&created, item)),
            // Another reconcile made it first: use that one.
            Err(kube::Error::Api(e)) if e.code == 409 => secrets
                .get(&name)
                .await
                .map(|s| fields_of(&s, item))
                .map_err(StateError::store(format!("read Secret {name}"))),
            Err(e) => Err(StateError::store(format!("create Secret {name}"))(e)),
        }
    }

    /// The replace carries the Secret's resourceVersion, so a change made between the
    /// read and the write makes it fail rather than lose keys.
    async fn replace_keystore(
        &self,
        owner: &Owner,
        old: &[u8],
        new: &[u8],
        retention: usize,
    ) -> Result<(), StateError> {
        let secrets = self.secrets(&owner.namespace);
        let name = Names::of(&owner.name).keystore;
        let mut current = secrets
            .get(&name)
            .await
            .map_err(StateError::store(format!("read Secret {name}")))?;
        if bytes(&current, "keystore") != old {
            return Err(StateError::Conflict {
                action: format!("update Secret {name}"),
            });
        }
        let stamp = Timestamp::now().as_millisecond();
        let mut backup = build::keystore_secret_of(&owner.namespace, &owner.name, old);
        backup.metadata.name = Some(format!("{name}-backup-{stamp}"));
        backup
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(BACKUP_LABEL.to_owned(), owner.name.clone());
        backup.immutable = Some(true);
        secrets
            .create(&PostParams::default(), &backup)
            .await
            .map_err(StateError::store("create a keystore backup"))?;
        current.data =
            Some([("keystore".to_owned(), k8s_openapi::ByteString(new.to_vec()))].into());
        secrets
            .replace(&name, &PostParams::default(), &current)
            .await
            .map_err(conflict_or(format!("update Secret {name}")))?;
        self.prune_backups(owner, retention).await
    }

    async fn backups(&self, owner: &Owner) -> Result<Vec<Vec<u8>>, StateError> {
        let mut backups = self.backup_secrets(owner).await?;
        backups.sort_by_key(kube::ResourceExt::name_any);
        Ok(backups.iter().map(|s| bytes(s, "keystore")).collect())
    }

    async fn read_history(&self, owner: &Owner) -> Result<Option<StoredHistory>, StateError> {
        let name = history_name(&owner.name);
        let Some(cm) = Api::<ConfigMap>::namespaced(self.client.clone(), &owner.namespace)
            .get_opt(&name)
            .await
            .map_err(StateError::store(format!("read ConfigMap {name}")))?
        else {
            return Ok(None);
        };
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get(HISTORY_FILE))
            .map_or("", String::as_str);
        let history = DriveHistory::from_json(text).map_err(|e| StateError::Corrupt {
            what: format!("ConfigMap {name}"),
            reason: e.to_string(),
        })?;
        Ok(Some(StoredHistory {
            history,
            released: cm.annotations().get(RELEASE_DRIVES).cloned(),
            version: cm.metadata.resource_version.clone().unwrap_or_default(),
        }))
    }

    fn history_location(&self, owner: &Owner) -> String {
        format!("ConfigMap {}", history_name(&owner.name))
    }

    /// Created with the KeyManager's labels but no owner, so that it outlives it; changed
    /// with its resourceVersion as a precondition, keeping what else is on it (the
    /// release annotation).
    async fn write_history(
        &self,
        owner: &Owner,
        history: &DriveHistory,
        version: Option<&str>,
    ) -> Result<(), StateError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &owner.namespace);
        let name = history_name(&owner.name);
        let data = Some([(HISTORY_FILE.to_owned(), history.to_json())].into());
        let mut metadata = build::kept_meta(&owner.namespace, &owner.name, &name);
        metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(HISTORY_LABEL.to_owned(), owner.name.clone());
        metadata.annotations =
            Some([(build::KEEP_ANNOTATION.to_owned(), "true".to_owned())].into());
        write_at(
            &api,
            &name,
            version,
            |metadata| ConfigMap {
                metadata,
                data: data.clone(),
                ..ConfigMap::default()
            },
            metadata,
        )
        .await
    }

    async fn read_shadow(
        &self,
        owner: &Owner,
        shadow: &str,
    ) -> Result<Option<StoredShadow>, StateError> {
        let name = credentials_name(shadow);
        let secret = self
            .secrets(&owner.namespace)
            .get_opt(&name)
            .await
            .map_err(StateError::store(format!("read Secret {name}")))?;
        Ok(secret.map(|s| stored_shadow(shadow, &s)))
    }

    async fn shadows(&self, owner: &Owner) -> Result<Vec<StoredShadow>, StateError> {
        let selector = format!("{SHADOW_CREDENTIALS_LABEL}={}", owner.name);
        let list = self
            .secrets(&owner.namespace)
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(StateError::store(format!(
                "list the Shadow credential Secrets of {owner}"
            )))?;
        let mut out: Vec<StoredShadow> = list
            .items
            .iter()
            .filter_map(|s| {
                let shadow = s.name_any().strip_suffix("-credentials")?.to_owned();
                Some(stored_shadow(&shadow, s))
            })
            .collect();
        out.sort_by(|a, b| a.shadow.cmp(&b.shadow));
        Ok(out)
    }

    /// Created with the KeyManager's labels and no owner; replaced with its
    /// resourceVersion as a precondition.
    async fn write_shadow(
        &self,
        owner: &Owner,
        shadow: &str,
        bytes: &[u8],
        version: Option<&str>,
    ) -> Result<(), StateError> {
        let api = self.secrets(&owner.namespace);
        let name = credentials_name(shadow);
        let data = Some(
            [(
                RECORD_KEY.to_owned(),
                k8s_openapi::ByteString(bytes.to_vec()),
            )]
            .into(),
        );
        let mut metadata = build::kept_meta(&owner.namespace, &owner.name, &name);
        metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(SHADOW_CREDENTIALS_LABEL.to_owned(), owner.name.clone());
        write_at(
            &api,
            &name,
            version,
            |metadata| Secret {
                metadata,
                data: data.clone(),
                ..Secret::default()
            },
            metadata,
        )
        .await
    }
}

/// Writes object `name`: created with `metadata` when `version` is `None`, else its data
/// merged in with `version` as a precondition (keeping what else is on it). Another writer
/// first: [`StateError::Conflict`], nothing written.
async fn write_at<K>(
    api: &Api<K>,
    name: &str,
    version: Option<&str>,
    object: impl Fn(ObjectMeta) -> K,
    metadata: ObjectMeta,
) -> Result<(), StateError>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    match version {
        None => {
            api.create(&PostParams::default(), &object(metadata))
                .await
                .map_err(conflict_or(format!("create {kind} {name}")))?;
        }
        Some(version) => {
            let patch = object(ObjectMeta {
                resource_version: Some(version.to_owned()),
                ..ObjectMeta::default()
            });
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(conflict_or(format!("update {kind} {name}")))?;
        }
    }
    Ok(())
}

fn stored_shadow(shadow: &str, secret: &Secret) -> StoredShadow {
    StoredShadow {
        shadow: shadow.to_owned(),
        bytes: bytes(secret, RECORD_KEY),
        version: secret.metadata.resource_version.clone().unwrap_or_default(),
    }
}

/// The ready replicas of a KeyManager's StatefulSet (0 when it has none yet).
pub async fn ready_replicas(
    client: &kube::Client,
    inputs: &Inputs<'_>,
) -> Result<i32, kube::Error> {
    Ok(
        Api::<StatefulSet>::namespaced(client.clone(), &inputs.namespace())
            .get_opt(&inputs.names().statefulset)
            .await?
            .and_then(|s| s.status)
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
    )
}

/// How to ask the replicas of the KeyManager of `inputs`, `ready` of which are ready,
/// presenting `certificate` (the replica certificate: chain, key and CA, from the Secret
/// named `secret`; `None` when it is missing): at their pod DNS names, or where the
/// context's resolver says.
pub fn replicas(
    ctx: &Context,
    inputs: &Inputs<'_>,
    ready: i32,
    certificate: Option<(&[u8], &[u8], &[u8])>,
    secret: &str,
) -> Replicas {
    let addresses = match &ctx.replica_resolver {
        Some(resolve) => resolve(inputs),
        None => in_cluster(inputs),
    };
    let any_ready = ready > 0 || ctx.replica_resolver.is_some();
    ask(
        addresses,
        any_ready,
        certificate,
        &format!("Secret {secret}"),
    )
}

/// The parts of a replica certificate Secret: chain, key, CA.
pub fn certificate_of(secret: &Secret) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    (
        bytes(secret, "tls.crt"),
        bytes(secret, "tls.key"),
        bytes(secret, "ca.crt"),
    )
}

impl Origins for Context {
    async fn key_manager(&self, owner: &Owner) -> Result<Option<KeyManager>, crate::core::Error> {
        Api::<KeyManager>::namespaced(self.client.clone(), &owner.namespace)
            .get_opt(&owner.name)
            .await
            .map_err(|e| StateError::store(format!("read KeyManager {owner}"))(e).into())
    }

    async fn replicas(&self, inputs: &Inputs<'_>) -> Result<Replicas, crate::core::Error> {
        let failed = |what: &str| {
            let action = format!(
                "{what} of KeyManager {}/{}",
                inputs.namespace(),
                inputs.name()
            );
            move |e| crate::core::Error::from(StateError::store(action)(e))
        };
        let ready = ready_replicas(&self.client, inputs)
            .await
            .map_err(failed("read the StatefulSet"))?;
        let secret = inputs.tls_secret_name();
        let certificate = Api::<Secret>::namespaced(self.client.clone(), &inputs.namespace())
            .get_opt(&secret)
            .await
            .map_err(failed("read the replica certificate"))?
            .map(|s| certificate_of(&s));
        Ok(replicas(
            self,
            inputs,
            ready,
            certificate
                .as_ref()
                .map(|(crt, key, ca)| (crt.as_slice(), key.as_slice(), ca.as_slice())),
            &secret,
        ))
    }
}
