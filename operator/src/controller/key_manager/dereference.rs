//! The dereference step: every object the reconcile reads, read here and nowhere else
//! (the control core's carries aside, which read the KeyManager a drive comes from).

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use kube::{Resource, ResourceExt as _};
use serde::de::DeserializeOwned;
use shadowkeep_api::crd::{DriveTable, KeyGroup, KeyManager, Shadow, TlsSource};
use shadowkeep_api::drive_history::DriveHistory;

use crate::build::{Inputs, Names};
use crate::controller::state::Kube;
use crate::controller::{Context, ReadError};
use crate::core::prepare::Declared;
use crate::core::state::{Owner, State as _};

/// What one reconcile works from.
#[derive(Clone, Debug)]
pub struct Dereferenced {
    /// The KeyManager reconciled.
    pub key_manager: Arc<KeyManager>,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Every DriveTable of the namespace: its own are rendered, and a drive another one
    /// lists too is held back.
    pub tables: Vec<DriveTable>,
    /// Every KeyGroup of the namespace: its own are generated into its keystore, and a
    /// drive's keys are those of its group or the default one.
    pub groups: Vec<KeyGroup>,
    /// Every Shadow of the namespace: a KeyManager of one replica without any is a single
    /// server.
    pub shadows: Vec<Shadow>,
    /// The other KeyManagers (`namespace/name`) with its server id, from the watch of
    /// every KeyManager rather than a list.
    pub twins: Vec<String>,
    /// Its drive history: which drives it has served (empty when it has none yet).
    pub history: DriveHistory,
    /// The version of the stored history, so that writing it fails if it changed since;
    /// `None` when there is none yet.
    pub history_version: Option<String>,
    /// Its StatefulSet's status: replicas for the status, and whether any is ready to be
    /// asked for keys.
    pub statefulset: Option<StatefulSetStatus>,
    /// The replica certificate, when the user's Secret or cert-manager's provides it (a
    /// generated one comes with the material): the keystore sync presents it.
    pub replica_certificate: Option<Secret>,
}

async fn list<K>(client: &kube::Client, ns: &str) -> Result<Vec<K>, ReadError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    Ok(Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map_err(ReadError::of(format!("list {}", K::kind(&()))))?
        .items)
}

impl Dereferenced {
    /// What the control core works from.
    pub fn declared(&self) -> Declared<'_> {
        Declared {
            key_manager: &self.key_manager,
            namespace: &self.namespace,
            name: &self.name,
            tables: &self.tables,
            groups: &self.groups,
            shadows: &self.shadows,
            history: &self.history,
            history_version: self.history_version.as_deref(),
        }
    }
}

/// Reads what the reconcile of `km` works from.
pub async fn dereference(ctx: &Context, km: Arc<KeyManager>) -> Result<Dereferenced, ReadError> {
    let namespace = km.namespace().unwrap_or_else(|| "default".to_owned());
    let name = km.name_any();
    let client = &ctx.client;
    let tables = list::<DriveTable>(client, &namespace).await?;
    let groups = list::<KeyGroup>(client, &namespace).await?;
    let shadows = list::<Shadow>(client, &namespace).await?;
    let twins = ctx
        .key_managers
        .state()
        .iter()
        .filter(|o| o.spec.server_id == km.spec.server_id && o.uid() != km.uid())
        .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
        .collect();
    let (history, history_version) = Kube::new(client.clone())
        .read_history(&Owner::new(&namespace, &name))
        .await
        .map_err(ReadError::of("read the drive history"))?
        .map_or((DriveHistory::new(), None), |s| {
            (s.history, Some(s.version))
        });
    let statefulset = Api::<StatefulSet>::namespaced(client.clone(), &namespace)
        .get_opt(&Names::of(&name).statefulset)
        .await
        .map_err(ReadError::of("read the StatefulSet"))?
        .and_then(|s| s.status);
    let replica_certificate = if km.spec.tls.source == TlsSource::Generated {
        None
    } else {
        let secret = Inputs::of_key_manager(&km).tls_secret_name();
        Api::<Secret>::namespaced(client.clone(), &namespace)
            .get_opt(&secret)
            .await
            .map_err(ReadError::of(format!("read Secret {secret}")))?
    };
    Ok(Dereferenced {
        key_manager: km,
        namespace,
        name,
        tables,
        groups,
        shadows,
        twins,
        history,
        history_version,
        statefulset,
        replica_certificate,
    })
}
