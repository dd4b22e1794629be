//! The DriveTable and KeyGroup controllers. Their work is done by the reconcile of the
//! KeyManager they name (which renders drives into the configuration and generates keys);
//! what is theirs alone is saying so when that KeyManager does not exist.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt as _};
use shadowkeep_api::crd::{DriveTable, DriveTableStatus, KeyGroup, KeyGroupStatus, KeyManager};

use super::{Context, Error, ReadError, StatusError};
use crate::core::conditions::{condition, merge, reasons, types};

/// Reason: the KeyManager named is not there.
pub const KEY_MANAGER_NOT_FOUND: &str = "KeyManagerNotFound";

/// Something that names a KeyManager and carries conditions.
pub trait References:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
{
    /// The KeyManager named.
    fn key_manager(&self) -> &str;
    /// The current conditions.
    fn conditions(&self) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>;
    /// Its status type.
    type Status: serde::Serialize + std::fmt::Debug;
    /// A status holding only `conditions`, to merge into the stored one.
    fn with_conditions(
        conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    ) -> Self::Status;
}

impl References for DriveTable {
    type Status = DriveTableStatus;
    fn with_conditions(
        conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    ) -> DriveTableStatus {
        DriveTableStatus {
            conditions,
            ..DriveTableStatus::default()
        }
    }
    fn key_manager(&self) -> &str {
        &self.spec.key_manager_ref.name
    }
    fn conditions(&self) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        self.status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default()
    }
}

impl References for KeyGroup {
    type Status = KeyGroupStatus;
    fn with_conditions(
        conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    ) -> KeyGroupStatus {
        KeyGroupStatus {
            conditions,
            ..KeyGroupStatus::default()
        }
    }
    fn key_manager(&self) -> &str {
        &self.spec.key_manager_ref.name
    }
    fn conditions(&self) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        self.status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default()
    }
}

/// Sets `Ready` on the object: False (`KeyManagerNotFound`) when the KeyManager it names is
/// missing, True once it exists (its reconcile reports the rest).
///
/// The controller watches only the objects' metadata (a DriveTable of hundreds of drives
/// need not sit in the operator's memory); the object itself is read here.
pub async fn reconcile<K>(
    meta: Arc<PartialObjectMeta<K>>,
    ctx: Arc<Context>,
) -> Result<Action, Error>
where
    K: References + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let ns = meta.namespace().unwrap_or_else(|| "default".to_owned());
    let name = meta.name_any();
    let Some(object) = Api::<K>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&name)
        .await
        .map_err(ReadError::of(format!("read {} {name}", K::kind(&()))))?
    else {
        // Deleted since the event: nothing to report on.
        return Ok(Action::await_change());
    };
    let km = Api::<KeyManager>::namespaced(ctx.client.clone(), &ns)
        .get_opt(object.key_manager())
        .await
        .map_err(ReadError::of("read the KeyManager"))?;
    let now = Time(jiff::Timestamp::now());
    let generation = object.meta().generation;
    let ready = if km.is_some() {
        condition(
            types::READY,
            true,
            reasons::AS_EXPECTED,
            format!("KeyManager {:?} found", object.key_manager()),
            generation,
            &now,
        )
    } else {
        condition(
            types::READY,
            false,
            KEY_MANAGER_NOT_FOUND,
            format!(
                "spec.keyManagerRef.name: KeyManager {:?} not found in namespace {ns:?}",
                object.key_manager()
            ),
            generation,
            &now,
        )
    };
    // Already said: nothing to write.
    if merge(&object.conditions(), vec![ready.clone()]) != object.conditions() {
        super::conditions::update_status(
            &Api::<K>::namespaced(ctx.client.clone(), &ns),
            &name,
            |fresh| K::with_conditions(merge(&fresh.conditions(), vec![ready.clone()])),
        )
        .await
        .map_err(StatusError::of(format!(
            "update {} {name} status",
            K::kind(&())
        )))?;
    }
    // A KeyManager that appears later wakes this object through the KeyManager watch.
    Ok(if km.is_some() {
        Action::await_change()
    } else {
        Action::requeue(std::time::Duration::from_mins(5))
    })
}
