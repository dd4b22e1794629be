//! `shadowkeep operator`: the controllers, watching KeyManagers and the objects that
//! refer to them, until SIGTERM or Ctrl-C.

use std::sync::Arc;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client};
use shadowkeep_api::crd::{DriveTable, KeyGroup, KeyManager, Shadow};

use super::{Context, error_policy, key_manager};

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The KeyManager a DriveTable, KeyGroup or Shadow names: a change to it reconciles that
/// KeyManager.
fn owner<K: kube::Resource>(o: &K, name: &str) -> Option<ObjectRef<KeyManager>> {
    Some(ObjectRef::new(name).within(&o.meta().namespace.clone()?))
}

/// Runs the KeyManager controller, in `namespace` only when given.
pub async fn run(namespace: Option<String>) -> Result<(), kube::Error> {
    let client = Client::try_default().await?;
    let ns = namespace.as_deref();
    let config = watcher::Config::default();
    let ctx = Arc::new(Context {
        client: client.clone(),
    });
    Controller::new(api::<KeyManager>(&client, ns), config.clone())
        .owns(api::<StatefulSet>(&client, ns), config.clone())
        .owns(api::<ConfigMap>(&client, ns), config.clone())
        .owns(api::<Service>(&client, ns), config.clone())
        .owns(api::<PodDisruptionBudget>(&client, ns), config.clone())
        .watches(api::<DriveTable>(&client, ns), config.clone(), |o| {
            owner(&o, &o.spec.key_manager_ref.name)
        })
        .watches(api::<KeyGroup>(&client, ns), config.clone(), |o| {
            owner(&o, &o.spec.key_manager_ref.name)
        })
        .watches(api::<Shadow>(&client, ns), config, |o| {
            owner(&o, &o.spec.key_manager_ref.name)
        })
        .shutdown_on_signal()
        .run(key_manager::reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::info!(key_manager = %object.name, namespace = ?object.namespace, "reconciled"),
                Err(e) => tracing::warn!(error = %e, "reconcile failed"),
            }
        })
        .await;
    Ok(())
}
