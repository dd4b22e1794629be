//! Status writes that must not lose another controller's conditions, and the Events that
//! tell of conditions that changed.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use kube::runtime::events::EventType;
use serde::Serialize;

/// A merge patch of a status, made on a fresh read: its resourceVersion makes the write
/// fail rather than overwrite a change made since.
#[derive(Debug, Serialize)]
struct Conditional<S> {
    metadata: ObjectMeta,
    status: S,
}

/// Writes a status computed from a fresh read of the object, with its resourceVersion as
/// a precondition, and tries again on a conflict. Two controllers write conditions of a
/// DriveTable (and of a KeyGroup), and the status patch replaces the whole list: a patch
/// made from a stale copy would drop the other controller's condition, which would write
/// it back, forever.
///
/// `status` gets the fresh object and returns the status to merge. Returns the object as
/// it was before the write, or `None` when it does not exist.
pub async fn update_status<K, S>(
    api: &kube::Api<K>,
    name: &str,
    mut status: impl FnMut(&K) -> S,
) -> Result<Option<K>, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: Serialize + std::fmt::Debug,
{
    const ATTEMPTS: usize = 5;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some(fresh) = api.get_opt(name).await? else {
            return Ok(None);
        };
        let patch = Conditional {
            metadata: ObjectMeta {
                resource_version: fresh.meta().resource_version.clone(),
                ..ObjectMeta::default()
            },
            status: status(&fresh),
        };
        match api
            .patch_status(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => return Ok(Some(fresh)),
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < ATTEMPTS => {}
            Err(e) => return Err(e),
        }
    }
}

/// Publishes an Event about `object` for every condition of `next` whose status or reason
/// differs from `previous`: a Warning when `is_warning` says it signals trouble, Normal
/// otherwise. A first condition that signals nothing is not news.
pub async fn publish_transitions(
    ctx: &super::Context,
    object: &ObjectReference,
    previous: &[Condition],
    next: &[Condition],
    is_warning: fn(&Condition) -> bool,
) {
    for c in next {
        let before = previous.iter().find(|p| p.type_ == c.type_);
        let changed = before.is_none_or(|p| p.status != c.status || p.reason != c.reason);
        if !changed || (before.is_none() && !is_warning(c)) {
            continue;
        }
        let type_ = if is_warning(c) {
            EventType::Warning
        } else {
            EventType::Normal
        };
        ctx.publish(object, type_, &c.reason, "Reconcile", &c.message)
            .await;
    }
}
