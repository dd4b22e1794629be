//! The apply step: every child the builder made, in the order it gave, with server-side
//! apply under one field manager — unless it is exactly what was last applied and has not
//! changed since ([`crate::controller::applied`]): an estate at rest costs the API server
//! no write.

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use kube::{Resource, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::build::{Child, FIELD_MANAGER};
use crate::controller::applied::Applied;
use crate::controller::{ApplyError, Context};

fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn apply_one<K>(ctx: &Context, ns: &str, object: &K) -> Result<(), ApplyError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let name = object.name_any();
    let failed = |e| ApplyError {
        kind: K::kind(&()).into_owned(),
        name: name.clone(),
        source: Box::new(e),
    };
    let key = Applied::key::<K>(ns, &name);
    let hash = Applied::hash(object).map_err(|e| failed(kube::Error::SerdeError(e)))?;
    if ctx.applied.is_current(&key, &hash) {
        return Ok(());
    }
    let stored = Api::<K>::namespaced(ctx.client.clone(), ns)
        .patch(&name, &params(), &Patch::Apply(object))
        .await
        .map_err(failed)?;
    ctx.applied
        .record(key, hash, stored.meta().resource_version.clone());
    Ok(())
}

async fn apply_certificate(
    ctx: &Context,
    ns: &str,
    certificate: &serde_json::Value,
) -> Result<(), ApplyError> {
    let resource = ApiResource {
        group: "cert-manager.io".to_owned(),
        version: "v1".to_owned(),
        api_version: "cert-manager.io/v1".to_owned(),
        kind: "Certificate".to_owned(),
        plural: "certificates".to_owned(),
    };
    let name = certificate["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Api::<DynamicObject>::namespaced_with(ctx.client.clone(), ns, &resource)
        .patch(&name, &params(), &Patch::Apply(certificate))
        .await
        .map_err(|e| ApplyError {
            kind: "cert-manager Certificate (is cert-manager installed?)".to_owned(),
            name,
            source: Box::new(e),
        })?;
    Ok(())
}

/// Applies `children` in `ns`, in their order; stops at the first refused.
pub async fn apply(ctx: &Context, ns: &str, children: &[Child]) -> Result<(), ApplyError> {
    for child in children {
        match child {
            Child::Secret(o) => apply_one(ctx, ns, o).await?,
            Child::Certificate(o) => apply_certificate(ctx, ns, o).await?,
            Child::ConfigMap(o) => apply_one(ctx, ns, o).await?,
            Child::Service(o) => apply_one(ctx, ns, o).await?,
            Child::StatefulSet(o) => apply_one(ctx, ns, o).await?,
            Child::PodDisruptionBudget(o) => apply_one(ctx, ns, o).await?,
        }
    }
    Ok(())
}
