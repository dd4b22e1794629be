//! The GitSource controller: the cluster shell of git sync ([`crate::core::git_sync`]).
//!
//! One reconcile: read (the credentials and verification Secrets) → the core's step, with this cluster as
//! its [`Applier`] (server-side apply under [`FIELD_MANAGER`], deletes for what may be
//! pruned) → status and Events → again after `spec.interval`. A fetch that fails changes
//! nothing and prunes nothing; the status says why and the next interval tries again.

use std::path::PathBuf;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource as _, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use shadowkeep_api::crd::{
    AppliedObject, DriveTable, GitSource, GitSourceStatus, KeyGroup, Shadow, VerifyMode,
};
use shadowkeep_api::manifest::Resource as Object;

use super::state::write_status;
use super::{Context, Error, ReadError, StatusError};
use crate::core::git_sync::credentials::Credentials;
use crate::core::git_sync::status::{self as sync_status, reasons, types};
use crate::core::git_sync::{
    ACCEPT_RISKS, Applier, Branch, FIELD_MANAGER, Input, Outcome, Verification, commit_of, sync,
};

/// The key of the allowed-signers Secret that holds them.
pub const ALLOWED_SIGNERS_KEY: &str = "allowed_signers";
pub use crate::core::git_sync::verify::KEYRING_KEY;

/// The cluster as git sync's applier.
struct Cluster<'c> {
    client: &'c kube::Client,
}

fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn apply_typed<K>(client: &kube::Client, object: &K) -> Result<(), String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let ns = object.namespace().unwrap_or_default();
    Api::<K>::namespaced(client.clone(), &ns)
        .patch(&object.name_any(), &params(), &Patch::Apply(object))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn delete_typed<K>(client: &kube::Client, object: &AppliedObject) -> Result<(), String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    match Api::<K>::namespaced(client.clone(), &object.namespace)
        .delete(&object.name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

impl Applier for Cluster<'_> {
    async fn apply(&mut self, object: &Object) -> Result<(), String> {
        match object {
            Object::KeyManager(o) => apply_typed(self.client, o).await,
            Object::KeyGroup(o) => apply_typed(self.client, o).await,
            Object::DriveTable(o) => apply_typed(self.client, o).await,
            Object::Shadow(o) => apply_typed(self.client, o).await,
        }
    }

    async fn delete(&mut self, object: &AppliedObject) -> Result<(), String> {
        match object.kind.as_str() {
            "KeyGroup" => delete_typed::<KeyGroup>(self.client, object).await,
            "DriveTable" => delete_typed::<DriveTable>(self.client, object).await,
            "Shadow" => delete_typed::<Shadow>(self.client, object).await,
            // The core never asks; refused here too, so no path deletes a KeyManager.
            other => Err(format!("git sync does not delete a {other}")),
        }
    }
}

/// Where a GitSource's cache is under the operator's git cache directory.
pub fn cache_dir(root: &std::path::Path, source: &GitSource) -> PathBuf {
    root.join(source.namespace().unwrap_or_default())
        .join(source.name_any())
}

/// The verification the spec asks for, with its Secret read; `Err` is an invalid spec.
async fn verification(
    ctx: &Context,
    source: &GitSource,
    ns: &str,
) -> Result<Result<Option<Verification>, String>, Error> {
    let Some(verify) = &source.spec.verify else {
        return Ok(Ok(None));
    };
    let (secret_ref, field, key) = match verify.mode {
        VerifyMode::Ssh => (
            &verify.allowed_signers_ref,
            "verify.allowedSignersRef",
            ALLOWED_SIGNERS_KEY,
        ),
        VerifyMode::Openpgp => (&verify.key_ring_ref, "verify.keyRingRef", KEYRING_KEY),
    };
    let Some(secret_ref) = secret_ref else {
        return Ok(Err(format!(
            "{field} is required for verify.mode {}",
            match verify.mode {
                VerifyMode::Ssh => "ssh",
                VerifyMode::Openpgp => "openpgp",
            }
        )));
    };
    let secret = secret(ctx, ns, &secret_ref.name).await?;
    let Some(secret) = secret else {
        return Ok(Err(format!(
            "Secret {ns}/{} ({field}) does not exist: nothing fetched or applied",
            secret_ref.name
        )));
    };
    let text = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned());
    let Some(text) = text else {
        return Ok(Err(format!(
            "Secret {ns}/{} ({field}) has no {key} key: nothing fetched or applied",
            secret_ref.name
        )));
    };
    Ok(Ok(Some(match verify.mode {
        VerifyMode::Ssh => Verification::Ssh {
            allowed_signers: text,
        },
        VerifyMode::Openpgp => Verification::OpenPgp { keyring: text },
    })))
}

/// Secret `name` in `ns`, if it exists.
async fn secret(ctx: &Context, ns: &str, name: &str) -> Result<Option<Secret>, Error> {
    Ok(Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(ReadError::of(format!("read Secret {ns}/{name}")))?)
}

/// The credentials `spec.credentialsRef` names, read from its Secret; `Err` names what is
/// missing or wrong (the GitSource, the Secret and the key), never a value.
async fn credentials(
    ctx: &Context,
    source: &GitSource,
    ns: &str,
) -> Result<Result<Option<Credentials>, String>, Error> {
    let Some(secret_ref) = &source.spec.credentials_ref else {
        return Ok(Ok(None));
    };
    let secret = secret(ctx, ns, &secret_ref.name).await?;
    let origin = format!(
        "Secret {ns}/{} (credentialsRef of GitSource {ns}/{})",
        secret_ref.name,
        source.name_any()
    );
    let Some(secret) = secret else {
        return Ok(Err(format!(
            "{origin} does not exist: nothing fetched or applied"
        )));
    };
    let data = secret.data.unwrap_or_default();
    let read = Credentials::read(&source.spec.url, &origin, &mut |key| {
        Ok(data.get(key).map(|v| zeroize::Zeroizing::new(v.0.clone())))
    });
    Ok(read
        .map(Some)
        .map_err(|e| format!("{e}: nothing fetched or applied")))
}

/// Fetches the GitSource's branch and applies its head when the plan allows it.
pub async fn reconcile(source: Arc<GitSource>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = source.namespace().unwrap_or_else(|| "default".to_owned());
    let interval = source.spec.interval.as_duration();
    let previous = source.status.clone().unwrap_or_default();
    let now = Time(Timestamp::now());
    let generation = source.metadata.generation;
    let verification = match verification(&ctx, &source, &ns).await? {
        Ok(v) => v,
        Err(message) => {
            let next = sync_status::invalid_spec(&previous, &message, generation, &now);
            write(&ctx, &source, &next).await?;
            // The Secret it names is not watched: look again at the next interval.
            return Ok(Action::requeue(interval));
        }
    };
    let credentials = match credentials(&ctx, &source, &ns).await? {
        Ok(c) => c,
        Err(message) => {
            let next = sync_status::invalid_spec(&previous, &message, generation, &now);
            write(&ctx, &source, &next).await?;
            return Ok(Action::requeue(interval));
        }
    };
    let branch = Branch {
        url: source.spec.url.clone(),
        branch: source.spec.branch.clone(),
        path: source.spec.path.clone(),
    };
    let cache = cache_dir(&ctx.git_cache, &source);
    let accepted = source.annotations().get(ACCEPT_RISKS).cloned();
    let input = Input {
        branch: &branch,
        cache: &cache,
        namespace: &ns,
        last_applied: previous
            .last_applied_revision
            .as_deref()
            .and_then(commit_of),
        inventory: &previous.inventory,
        orphaned: &previous.orphaned,
        accepted: accepted.as_deref(),
        verification: verification.as_ref(),
        credentials: credentials.as_ref(),
    };
    let step = sync(
        &input,
        &mut Cluster {
            client: &ctx.client,
        },
    )
    .await;
    let next = sync_status::after(&previous, &branch, &step, generation, &now);
    let new_head = next.last_attempted_revision != previous.last_attempted_revision;
    if let Some(force_push) = &step.force_push
        && new_head
    {
        ctx.publish(
            &source.object_ref(&()),
            EventType::Warning,
            reasons::FORCE_PUSHED,
            "Sync",
            force_push,
        )
        .await;
    }
    if let Outcome::Applied { pruned, .. } = &step.outcome
        && !pruned.is_empty()
    {
        let names: Vec<String> = pruned.iter().map(ToString::to_string).collect();
        ctx.publish(
            &source.object_ref(&()),
            EventType::Normal,
            "Pruned",
            "Sync",
            &format!("deleted, removed from the branch: {}", names.join(", ")),
        )
        .await;
    }
    if let Outcome::Held { risks, .. } = &step.outcome
        && new_head
        && previous_reason(&previous) == Some(reasons::RISK_HELD)
    {
        // A new held head after a held one: the Ready transition publishes nothing, yet
        // these are other risks.
        let text: Vec<String> = risks
            .iter()
            .map(|r| format!("{}: {}", r.severity, r.message))
            .collect();
        ctx.publish(
            &source.object_ref(&()),
            EventType::Warning,
            reasons::RISK_HELD,
            "Sync",
            &text.join("; "),
        )
        .await;
    }
    write(&ctx, &source, &next).await?;
    Ok(Action::requeue(interval))
}

fn previous_reason(status: &GitSourceStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == types::READY)
        .map(|c| c.reason.as_str())
}

/// Ready=False and Reconciling or Stalled=True are trouble.
fn is_warning(c: &Condition) -> bool {
    match c.type_.as_str() {
        types::READY => c.status == "False",
        _ => c.status == "True",
    }
}

/// Writes the status unless it has it already, with an Event for each condition whose
/// status or reason changed.
async fn write(
    ctx: &Context,
    source: &GitSource,
    status: &GitSourceStatus,
) -> Result<(), StatusError> {
    write_status(
        ctx,
        source,
        source.status.as_ref(),
        status,
        |s| s.conditions.as_slice(),
        FIELD_MANAGER,
        is_warning,
    )
    .await
}
