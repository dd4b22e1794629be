//! Keystore sync against the cluster: the replica certificate is read from its Secret, the
//! replicas are found by their pod DNS names (or the context's resolver), and the
//! canonical keystore Secret is rewritten, after a backup, when a replica held keys it
//! lacked. The exchange itself is [`crate::core::keystore_sync`].

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use shadowkeep_server::client::connector_from_pem;

use super::store::{bytes, replace_keystore};
use super::{Context, Error};
use crate::build::{Inputs, Material};
use crate::core::conditions::{condition, reasons, types};
use crate::core::keystore;
use crate::core::keystore_sync::{Synced, in_cluster, pull, report};

/// The ready replicas of a KeyManager's StatefulSet (0 when it has none yet).
pub async fn ready_replicas(client: &kube::Client, inputs: &Inputs<'_>) -> Result<i32, Error> {
    Ok(
        Api::<StatefulSet>::namespaced(client.clone(), &inputs.namespace())
            .get_opt(&inputs.names().statefulset)
            .await
            .map_err(Error::kube("read the StatefulSet"))?
            .and_then(|s| s.status)
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
    )
}

/// Pulls every replica's keys into the canonical keystore (when `ready` replicas are),
/// writes the Secret when it grew, and reports: `KeystoreInSync` is True when every
/// replica answered and holds exactly the canonical keystore. Only a failure to write the
/// Secret fails the reconcile; an unreachable replica is reported.
pub async fn sync(
    client: &kube::Client,
    ctx: &Context,
    inputs: &Inputs<'_>,
    material: &mut Material,
    ready: i32,
    generation: Option<i64>,
    now: &Time,
) -> Result<Synced, Error> {
    let ns = inputs.namespace();
    let not_synced = |reason: &str, message: String| Synced {
        condition: condition(
            types::KEYSTORE_IN_SYNC,
            false,
            reason,
            message,
            generation,
            now,
        ),
        all_answered: false,
        replicas: Vec::new(),
    };
    if ready == 0 && ctx.replica_resolver.is_none() {
        return Ok(not_synced(
            reasons::NO_REPLICA_READY,
            "no replica is ready to be asked for its keys".to_owned(),
        ));
    }
    let secret_name = inputs.tls_secret_name();
    let Some(secret) = Api::<Secret>::namespaced(client.clone(), &ns)
        .get_opt(&secret_name)
        .await
        .map_err(Error::kube(format!("read Secret {secret_name}")))?
    else {
        return Ok(not_synced(
            reasons::REPLICA_UNREACHABLE,
            format!("Secret {secret_name} (the replica certificate) not found"),
        ));
    };
    let field = |k: &str| bytes(&secret, k);
    let connector = match connector_from_pem(
        &field("ca.crt"),
        Some((&field("tls.crt"), &field("tls.key"))),
    ) {
        Ok(c) => c,
        Err(e) => {
            return Ok(not_synced(
                reasons::REPLICA_UNREACHABLE,
                format!("Secret {secret_name}: {e}"),
            ));
        }
    };
    let replicas = match &ctx.replica_resolver {
        Some(resolve) => resolve(inputs),
        None => in_cluster(inputs),
    };
    let mut keystore = keystore::open(&material.keystore)?;
    let pulled = pull(&replicas, &connector, &mut keystore).await;
    let added: usize = pulled
        .iter()
        .filter_map(|p| p.outcome.as_ref().ok())
        .map(|a| a.pulled)
        .sum();
    if added > 0 {
        replace_keystore(client, inputs, material, &keystore).await?;
        tracing::info!(key_manager = %inputs.name(), namespace = %ns, added, "keys pulled from replicas");
    }
    Ok(report(&pulled, &keystore, generation, now)?)
}
