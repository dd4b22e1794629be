//! The KeyManager controller: a KeyManager and the DriveTables, KeyGroups and Shadows that
//! name it become running key-server replicas.
//!
//! One reconcile is six steps, each in its module with its own error:
//! [`dereference`] (every read) → [`validate`] (pure) → [`material`] (the control core:
//! material, carries, the canonical keystore — the only stateful step) → build (pure, in
//! [`crate::build`]) → [`apply`] (children in the order the builder gives) → [`status`]
//! (computed purely, then written).

pub mod apply;
pub mod dereference;
pub mod material;
pub mod status;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::controller::Action;
use kube::{Resource as _, ResourceExt as _};
use shadowkeep_api::crd::{DesiredShadowState, KeyManager};
use shadowkeep_api::estate::Estate;
use shadowkeep_api::server_config::live_digest;

use super::{Context, Error};
use crate::build::{self, BuildError, Inputs};
use crate::core::conditions::reasons;
use crate::core::configuration::{self, Target};
use crate::core::keystore_sync::Replicas;
use crate::core::status::Observed;
use material::{Outcome, Prepared};

/// How soon a reconcile that waits (a drive not yet released, a keystore changed under it)
/// runs again.
pub const WAIT: Duration = Duration::from_secs(15);

/// Reconciles one KeyManager.
#[tracing::instrument(skip_all, fields(key_manager = %km.name_any(), namespace = km.namespace().unwrap_or_default()))]
pub async fn reconcile(km: Arc<KeyManager>, ctx: Arc<Context>) -> Result<Action, Error> {
    if km.meta().deletion_timestamp.is_some() {
        // Owned children go with it; the KEK, keystore and CA stay (no owner reference).
        return Ok(Action::await_change());
    }
    let now = Time(Timestamp::now());
    // Client required: every read.
    let read = dereference::dereference(&ctx, km).await?;
    // No client required.
    if let Err(invalid) = validate::validate(&read) {
        status::invalid(&ctx, &read, invalid, &now).await?;
        return Ok(Action::await_change());
    }
    // Client required: the control core makes material, carries keys, keeps the keystore.
    // Boxed: the core's step is a large future, kept off the reconcile's stack.
    let prepared = match Box::pin(material::prepare(&ctx, &read, &now)).await? {
        Outcome::Ready(prepared) => prepared,
        Outcome::Waiting(waiting) => {
            status::waiting(&ctx, &read, &waiting, &now).await?;
            return Ok(Action::requeue(WAIT));
        }
    };
    // No client required.
    let estate = read.declared().estate(&prepared.risks);
    let inputs = inputs(&estate, &ctx)?;
    let children = build::applied(&inputs, &prepared.material)?;
    // Client required.
    apply::apply(&ctx, &inputs.namespace(), &children).await?;
    // The servers take the drive table now, not at the kubelet's refresh of the ConfigMap.
    let configuration = push_configuration(&ctx, &inputs, &prepared, &now).await;
    // No client required.
    let (replicas, ready) = read
        .statefulset
        .as_ref()
        .map_or((0, 0), |s| (s.replicas, s.ready_replicas.unwrap_or(0)));
    let shadows = crate::core::status::shadows_window(
        &inputs
            .shadows
            .iter()
            .map(|s| (*s, s.status.as_ref()))
            .collect::<Vec<_>>(),
    );
    // What the replicas report of duplicates.
    let duplicates = crate::core::shadow::observe::duplicates(&prepared.replicas).await;
    let observed = Observed {
        replicas,
        ready,
        twins: &read.twins,
        shadows: &shadows,
        duplicates: &duplicates,
        configuration: Some(&configuration),
    };
    let report = crate::core::status::report(
        &read.declared(),
        read.key_manager.status.as_ref(),
        &inputs,
        &prepared,
        &observed,
        &now,
    );
    // Client required.
    status::write(&ctx, &read, report).await?;
    Ok(Action::requeue(if prepared.waiting() {
        WAIT
    } else {
        crate::core::prepare::resync_after(&read.key_manager)
    }))
}

/// Brings every replica, and every active Shadow, to the configuration just applied,
/// without a restart; `ConfigurationApplied` says how it went.
async fn push_configuration(
    ctx: &Context,
    inputs: &Inputs<'_>,
    prepared: &Prepared,
    now: &Time,
) -> Condition {
    let generation = inputs.key_manager.metadata.generation;
    let (addresses, connector) = match &prepared.replicas {
        Replicas::Ask {
            addresses,
            connector,
        } => (addresses, connector),
        Replicas::Skip { reason, message } => {
            return configuration::not_asked(reason, message, generation, now);
        }
    };
    let config = build::server_config(inputs, &prepared.material.license_public_key);
    let file = match config.to_yaml() {
        Ok(yaml) => yaml.into_bytes(),
        Err(e) => {
            return configuration::not_asked(
                reasons::SERVERS_BEHIND,
                &format!("failed to write the configuration: {e}"),
                generation,
                now,
            );
        }
    };
    let namespace = inputs.namespace();
    let mut targets: Vec<Target> = addresses
        .iter()
        .map(|server| Target::Replica {
            server: server.clone(),
            file: file.clone(),
        })
        .collect();
    for shadow in inputs
        .shadows
        .iter()
        .filter(|s| s.spec.state == DesiredShadowState::Active)
    {
        let name = shadow.name_any();
        let server = match &ctx.shadow_resolver {
            Some(resolve) => resolve(&namespace, &name),
            None => Some(super::shadow::in_cluster(&namespace, &name)),
        };
        targets.extend(server.map(|server| Target::Shadow { server }));
    }
    let outcomes = configuration::apply(&targets, connector, &live_digest(&config.drives)).await;
    configuration::applied_condition(&outcomes, generation, now)
}

fn inputs<'a>(estate: &'a Estate, ctx: &Context) -> Result<Inputs<'a>, BuildError> {
    let mut inputs = Inputs::from_estate(estate)
        .into_iter()
        .next()
        .ok_or_else(|| BuildError("the KeyManager vanished from its own estate".to_owned()))?;
    inputs.default_image.clone_from(&ctx.server_image);
    Ok(inputs)
}
