//! Backup targets in the Kubernetes shell: S3 credentials from a Secret in the
//! KeyManager's namespace, and immutable Secrets in another namespace as a target. What
//! is written when is the control core's ([`crate::core::backup::back_up`]).

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use shadowkeep_api::crd::BackupTarget;

use crate::controller::state::bytes;
use crate::core::backup::archive::is_backup_name;
use crate::core::backup::s3::{self, Credentials};
use crate::core::backup::{Target, TargetError, Targets};
use crate::core::state::Owner;

/// Label on a backup Secret: the KeyManager's namespace.
pub const BACKUP_OF_NAMESPACE_LABEL: &str = "shadowkeep.io/backup-of-namespace";
/// Label on a backup Secret: the KeyManager's name.
pub const BACKUP_OF_LABEL: &str = "shadowkeep.io/backup-of";
/// Annotation on a backup Secret: the backup's name.
pub const BACKUP_NAME_ANNOTATION: &str = "shadowkeep.io/backup-name";
/// The key of a backup Secret holding the backup.
pub const BACKUP_KEY: &str = "backup";

/// The most a backup Secret may hold: the API server refuses a Secret over 1 MiB, and
/// its metadata takes some of that.
const SECRET_LIMIT: usize = 1_000_000;

/// The targets of the KeyManagers the operator reconciles.
#[derive(Clone)]
pub struct KubeTargets {
    client: kube::Client,
}

impl KubeTargets {
    /// Targets reached with `client`.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

impl Targets for KubeTargets {
    fn open<'a>(
        &'a self,
        owner: &'a Owner,
        target: &'a BackupTarget,
    ) -> BoxFuture<'a, Result<Box<dyn Target>, String>> {
        Box::pin(async move {
            if let Some(spec) = &target.s3 {
                let keys = &spec.credentials_secret_ref;
                let what = format!("Secret {}/{}", owner.namespace, keys.name);
                let secret = Api::<Secret>::namespaced(self.client.clone(), &owner.namespace)
                    .get_opt(&keys.name)
                    .await
                    .map_err(|e| format!("failed to read {what}: {e}"))?
                    .ok_or_else(|| {
                        format!("{what}, which credentialsSecretRef names, does not exist")
                    })?;
                let value = |key: &str| {
                    secret
                        .data
                        .as_ref()
                        .and_then(|d| d.get(key))
                        .map(|b| b.0.clone())
                };
                let id = value(keys.access_key_id_key());
                let key = zeroize::Zeroizing::new(value(keys.secret_access_key_key()));
                let credentials = Credentials::of(id.as_deref(), key.as_deref(), spec, &what)?;
                return Ok(Box::new(s3::open(owner, spec, &credentials)?) as Box<dyn Target>);
            }
            let Some(spec) = &target.secret else {
                return Err("names neither secret nor s3".to_owned());
            };
            if spec.namespace == owner.namespace {
                return Err(format!(
                    "namespace {} is the KeyManager's own: a backup beside its keystore is lost with it; name another namespace",
                    spec.namespace
                ));
            }
            Ok(Box::new(SecretTarget {
                api: Api::namespaced(self.client.clone(), &spec.namespace),
                namespace: spec.namespace.clone(),
                owner: owner.clone(),
            }) as Box<dyn Target>)
        })
    }
}

/// Immutable Secrets in another namespace, one per backup, labelled with the KeyManager.
struct SecretTarget {
    api: Api<Secret>,
    namespace: String,
    owner: Owner,
}

impl SecretTarget {
    fn selector(&self) -> String {
        format!(
            "{BACKUP_OF_NAMESPACE_LABEL}={},{BACKUP_OF_LABEL}={}",
            self.owner.namespace, self.owner.name
        )
    }

    /// The Secret of backup `name`: `NAMESPACE.NAME.BACKUP` (dots keep the parts apart,
    /// and a backup's name is a valid part).
    fn secret_name(&self, name: &str) -> String {
        format!("{}.{}.{name}", self.owner.namespace, self.owner.name)
    }
}

impl Target for SecretTarget {
    fn list(&self) -> BoxFuture<'_, Result<Vec<String>, TargetError>> {
        Box::pin(async move {
            let listed = self
                .api
                .list_metadata(&ListParams::default().labels(&self.selector()))
                .await
                .map_err(|e| {
                    TargetError::Failed(format!(
                        "failed to list backup Secrets in namespace {}: {e}",
                        self.namespace
                    ))
                })?;
            Ok(listed
                .items
                .iter()
                .filter_map(|s| s.annotations().get(BACKUP_NAME_ANNOTATION).cloned())
                .filter(|n| is_backup_name(n))
                .collect())
        })
    }

    fn create<'a>(
        &'a self,
        name: &'a str,
        backup: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), TargetError>> {
        Box::pin(async move {
            let secret_name = self.secret_name(name);
            if backup.len() > SECRET_LIMIT {
                return Err(TargetError::Failed(format!(
                    "failed to write Secret {}/{secret_name}: the backup is {} bytes and a Secret holds at most 1 MiB; use an s3 target",
                    self.namespace,
                    backup.len()
                )));
            }
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(secret_name.clone()),
                    namespace: Some(self.namespace.clone()),
                    labels: Some(BTreeMap::from([
                        (
                            BACKUP_OF_NAMESPACE_LABEL.to_owned(),
                            self.owner.namespace.clone(),
                        ),
                        (BACKUP_OF_LABEL.to_owned(), self.owner.name.clone()),
                    ])),
                    annotations: Some(BTreeMap::from([(
                        BACKUP_NAME_ANNOTATION.to_owned(),
                        name.to_owned(),
                    )])),
                    ..ObjectMeta::default()
                },
                immutable: Some(true),
                data: Some(BTreeMap::from([(
                    BACKUP_KEY.to_owned(),
                    ByteString(backup),
                )])),
                ..Secret::default()
            };
            match self.api.create(&PostParams::default(), &secret).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => Err(TargetError::Exists),
                Err(e) => Err(TargetError::Failed(format!(
                    "failed to create Secret {}/{secret_name}: {e}",
                    self.namespace
                ))),
            }
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), TargetError>> {
        Box::pin(async move {
            let secret_name = self.secret_name(name);
            match self
                .api
                .delete(&secret_name, &DeleteParams::default())
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                Err(e) => Err(TargetError::Failed(format!(
                    "failed to delete Secret {}/{secret_name}: {e}",
                    self.namespace
                ))),
            }
        })
    }

    fn read<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<u8>, TargetError>> {
        Box::pin(async move {
            let secret_name = self.secret_name(name);
            let secret = self.api.get(&secret_name).await.map_err(|e| {
                TargetError::Failed(format!(
                    "failed to read Secret {}/{secret_name}: {e}",
                    self.namespace
                ))
            })?;
            Ok(bytes(&secret, BACKUP_KEY))
        })
    }
}
