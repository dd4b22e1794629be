//! The KeyManager controller: a KeyManager and the DriveTables, KeyGroups and Shadows that
//! name it become running key-server replicas.
//!
//! read → validate → material (created once, never overwritten) → build → apply → status.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use shadowkeep_api::crd::{DriveTable, KeyGroup, KeyManager, Shadow};
use shadowkeep_api::drive_history::DriveHistory;
use shadowkeep_api::estate::Estate;
use shadowkeep_api::keystore::Keystore;
use shadowkeep_api::manifest::Resource as Object;

use super::state::Kube;
use super::{Context, Error, drive_moves};
use crate::build::{
    self, FIELD_MANAGER, Inputs, Material, client_service, config_hash, config_map, license_secret,
    peer_service, pod_disruption_budget, statefulset,
};
use crate::core::conditions::{condition, merge, reasons, types};
use crate::core::drive_moves::{self as rules, key_manager_ref};
use crate::core::keystore::{Canonical, GroupStatus};
use crate::core::keystore_sync;
use crate::core::material as core_material;
use crate::core::state::{Owner, State as _};

/// Annotation that asks for an immediate reconcile; its value is echoed in
/// `status.lastHandledReconcileAt`.
pub const RECONCILE_REQUESTED_AT: &str = "shadowkeep.io/reconcile-requested-at";

/// Reconciles one KeyManager.
#[allow(clippy::too_many_lines)] // one reconcile, read to status, in the order it runs
pub async fn reconcile(km: Arc<KeyManager>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = km.namespace().unwrap_or_else(|| "default".to_owned());
    let name = km.name_any();
    if km.meta().deletion_timestamp.is_some() {
        // Owned children go with it; the KEK, keystore and CA stay (no owner reference).
        return Ok(Action::await_change());
    }
    let client = ctx.client.clone();
    let tables = list::<DriveTable>(&client, &ns).await?;
    let groups = list::<KeyGroup>(&client, &ns).await?;
    let shadows = list::<Shadow>(&client, &ns).await?;
    let all_kms: Vec<KeyManager> = ctx
        .key_managers
        .state()
        .iter()
        .map(|k| (**k).clone())
        .collect();

    let now = Time(Timestamp::now());
    let generation = km.meta().generation;
    if let Some(invalid) = invalid_spec(&km, &tables, &groups, &shadows) {
        tracing::info!(key_manager = %name, namespace = %ns, %invalid, "invalid spec; nothing changed");
        let ready = condition(
            types::READY,
            false,
            reasons::INVALID_SPEC,
            invalid,
            generation,
            &now,
        );
        patch_status(&client, &ctx, &km, vec![ready], None).await?;
        return Ok(Action::await_change());
    }

    let state = Kube::new(client.clone());
    let me = key_manager_ref(&ns, &name);
    let (mut history, version) = state
        .read_history(&Owner::new(&ns, &name))
        .await?
        .map_or((DriveHistory::new(), None), |s| {
            (s.history, Some(s.version))
        });
    let mut risks = rules::conflicts(&name, &tables, &history, |serial| {
        ctx.drive_index.others_serving(serial, &me)
    });
    let sts = Api::<StatefulSet>::namespaced(client.clone(), &ns)
        .get_opt(&km.name_any())
        .await
        .map_err(Error::kube("read the StatefulSet"))?
        .and_then(|s| s.status);

    // The material and the keystore do not depend on which drives are served.
    let base = Inputs {
        key_manager: &km,
        drive_tables: Vec::new(),
        key_groups: Vec::new(),
        shadows: Vec::new(),
        default_image: None,
    };
    let mut material = core_material::ensure(&state, &base).await?;
    let mut keystore = Canonical::of(&base, &material)?;
    let carries = if risks.iter().any(rules::DriveRisk::is_accepted_move) {
        rules::carry_accepted(
            &state,
            ctx.as_ref(),
            &base,
            &mut keystore,
            &mut history,
            &mut risks,
        )
        .await?
    } else {
        rules::Carries::default()
    };
    let estate = estate_of(&km, &tables, &groups, &shadows, &name, &risks);
    let inputs = inputs_of(&estate, &ctx).ok_or_else(vanished)?;
    let group_statuses = keystore.maintain_groups(&inputs.key_groups, Timestamp::now())?;
    let ready = sts.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
    let replicas = super::state::replicas(&ctx, &inputs, ready)
        .await
        .map_err(Error::kube("read the replica certificate"))?;
    let in_sync = keystore_sync::sync(&mut keystore, replicas, generation, &now).await?;
    // One write, with one backup, before anything depends on it: an accepted move's drive
    // is handed on, and served here, only once its keys are stored here.
    keystore.commit(&state).await?;
    material.keystore = keystore.stored().to_vec();
    rules::hand_on(&state, &inputs, &carries.carried).await?;
    // Recorded before the configuration serves them: a drive is never served by a
    // KeyManager whose history does not say so.
    rules::write_served(
        &state,
        &inputs,
        &groups,
        history,
        version.as_deref(),
        carries.history_changed,
    )
    .await?;
    publish_carried(&ctx, &tables, carries.carried).await;
    patch_group_statuses(&client, &ns, group_statuses).await?;
    apply_children(&client, &inputs, &material).await?;
    let mut status = status(&km, &inputs, &all_kms, &material, sts, generation, &now);
    status
        .0
        .push(rules::risk_condition(&risks, generation, &now));
    status.0.push(in_sync.condition);
    status.1.replica_sync = in_sync.replicas;
    drive_moves::report_risks(&client, &ctx, &ns, &name, &tables, &risks, &now).await?;
    patch_status(&client, &ctx, &km, status.0, Some(status.1)).await?;
    let interval = km
        .spec
        .sync_interval
        .as_duration()
        .max(Duration::from_secs(30));
    Ok(Action::requeue(interval))
}

/// Publishes an Event on the table of each drive whose keys were carried here.
async fn publish_carried(ctx: &Context, tables: &[DriveTable], carried: Vec<rules::Carried>) {
    for done in carried {
        if let Some(table) = tables.iter().find(|t| t.name_any() == done.table) {
            drive_moves::publish(
                ctx,
                table,
                kube::runtime::events::EventType::Normal,
                rules::KEY_HISTORY_CARRIED,
                "CarryKeys",
                done.note,
            )
            .await;
        }
    }
}

/// The estate this KeyManager is reconciled from, without the drives held back.
fn estate_of(
    km: &KeyManager,
    tables: &[DriveTable],
    groups: &[KeyGroup],
    shadows: &[Shadow],
    name: &str,
    risks: &[rules::DriveRisk],
) -> Estate {
    let mut estate = Estate::new();
    estate.add(Object::KeyManager(km.clone()));
    for t in tables {
        estate.add(Object::DriveTable(rules::without_blocked(t, name, risks)));
    }
    for g in groups {
        estate.add(Object::KeyGroup(g.clone()));
    }
    for s in shadows {
        estate.add(Object::Shadow(s.clone()));
    }
    estate
}

fn inputs_of<'a>(estate: &'a Estate, ctx: &Context) -> Option<Inputs<'a>> {
    let mut inputs = Inputs::from_estate(estate).into_iter().next()?;
    inputs.default_image.clone_from(&ctx.server_image);
    Some(inputs)
}

fn vanished() -> Error {
    Error::Build("the KeyManager vanished from its own estate".to_owned())
}

async fn list<K>(client: &kube::Client, ns: &str) -> Result<Vec<K>, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    Ok(Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map_err(Error::kube(format!("list {}", K::kind(&()))))?
        .items)
}

/// The first reason the spec cannot be applied, naming the field: the CRD's CEL rules (the
/// API server checks them too, but an object may predate a rule) and the estate rules that
/// concern this KeyManager.
fn invalid_spec(
    km: &KeyManager,
    tables: &[DriveTable],
    groups: &[KeyGroup],
    shadows: &[Shadow],
) -> Option<String> {
    if let Err(errors) = km.validate_cel() {
        let mut all: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.field_path.trim_start_matches('.'), e.message))
            .collect();
        all.sort();
        return Some(all.join("; "));
    }
    let name = km.name_any();
    let mine = |r: &str| r == name;
    let mut estate = Estate::new();
    estate.add(Object::KeyManager(km.clone()));
    for t in tables.iter().filter(|t| mine(&t.spec.key_manager_ref.name)) {
        estate.add(Object::DriveTable(t.clone()));
    }
    for g in groups.iter().filter(|g| mine(&g.spec.key_manager_ref.name)) {
        estate.add(Object::KeyGroup(g.clone()));
    }
    for s in shadows
        .iter()
        .filter(|s| mine(&s.spec.key_manager_ref.name))
    {
        estate.add(Object::Shadow(s.clone()));
    }
    estate
        .validate()
        .into_iter()
        .find(shadowkeep_api::finding::Finding::is_error)
        .map(|f| f.to_string().trim_start_matches("error: ").to_owned())
}

/// Reports each KeyGroup's pool in its status.
async fn patch_group_statuses(
    client: &kube::Client,
    ns: &str,
    statuses: Vec<GroupStatus>,
) -> Result<(), Error> {
    let groups: Api<KeyGroup> = Api::namespaced(client.clone(), ns);
    for status in statuses {
        let patch = json!({"status": {
            "observedGeneration": status.generation,
            "keys": i32::try_from(status.pool.keys).unwrap_or(i32::MAX),
            "activeKey": status.pool.active_key,
            "lastRotatedAt": status.pool.last_rotated_at.map(Time),
        }});
        groups
            .patch_status(&status.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(Error::kube(format!(
                "update KeyGroup {} status",
                status.name
            )))?;
    }
    Ok(())
}

async fn apply<K>(client: &kube::Client, ns: &str, object: &K) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let name = object.name_any();
    let mut value = serde_json::to_value(object).map_err(|e| Error::Build(e.to_string()))?;
    value["apiVersion"] = json!(K::api_version(&()));
    value["kind"] = json!(K::kind(&()));
    Api::<K>::namespaced(client.clone(), ns)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&value),
        )
        .await
        .map_err(Error::kube(format!("apply {} {name}", K::kind(&()))))?;
    Ok(())
}

/// Applies every child built from the inputs (the created-once Secrets are not reapplied).
async fn apply_children(
    client: &kube::Client,
    inputs: &Inputs<'_>,
    material: &Material,
) -> Result<(), Error> {
    let ns = inputs.namespace();
    apply(client, &ns, &license_secret(inputs, material)).await?;
    if let Some(certificate) = build::certificate(inputs) {
        let resource = kube::discovery::ApiResource {
            group: "cert-manager.io".to_owned(),
            version: "v1".to_owned(),
            api_version: "cert-manager.io/v1".to_owned(),
            kind: "Certificate".to_owned(),
            plural: "certificates".to_owned(),
        };
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(client.clone(), &ns, &resource);
        api.patch(
            &inputs.names().tls,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&certificate),
        )
        .await
        .map_err(Error::kube(
            "apply the cert-manager Certificate (is cert-manager installed?)",
        ))?;
    }
    let config = config_map(inputs).map_err(|e| Error::Build(e.to_string()))?;
    let hash = config_hash(&config);
    apply::<ConfigMap>(client, &ns, &config).await?;
    apply::<Service>(client, &ns, &peer_service(inputs)).await?;
    apply::<Service>(client, &ns, &client_service(inputs)).await?;
    apply::<StatefulSet>(client, &ns, &statefulset(inputs, &hash)).await?;
    apply::<PodDisruptionBudget>(client, &ns, &pod_disruption_budget(inputs)).await?;
    Ok(())
}

/// The fields of `status` other than the conditions.
struct Observed {
    replicas: i32,
    ready: i32,
    keys: i64,
    digest: String,
    replica_sync: Vec<shadowkeep_api::crd::ReplicaSyncStatus>,
}

fn status(
    km: &KeyManager,
    inputs: &Inputs<'_>,
    all: &[KeyManager],
    material: &Material,
    sts: Option<k8s_openapi::api::apps::v1::StatefulSetStatus>,
    generation: Option<i64>,
    now: &Time,
) -> (
    Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    Observed,
) {
    let (replicas, ready) = sts.map_or((0, 0), |s| (s.replicas, s.ready_replicas.unwrap_or(0)));
    let keystore = Keystore::from_bytes(&material.keystore).unwrap_or_default();
    let digest = keystore.digest().map(|d| d.to_string()).unwrap_or_default();
    let twins: Vec<String> = all
        .iter()
        .filter(|o| o.spec.server_id == km.spec.server_id && o.uid() != km.uid())
        .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
        .collect();
    let conditions = key_manager_conditions(km, inputs, ready, replicas, &twins, generation, now);
    (
        conditions,
        Observed {
            replicas,
            ready,
            keys: i64::try_from(keystore.len()).unwrap_or(i64::MAX),
            digest,
            replica_sync: Vec::new(),
        },
    )
}

/// The conditions of a KeyManager whose spec was applied.
fn key_manager_conditions(
    km: &KeyManager,
    inputs: &Inputs<'_>,
    ready: i32,
    replicas: i32,
    twins: &[String],
    generation: Option<i64>,
    now: &Time,
) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    let wanted = km.spec.replicas;
    let single = wanted == 1 && inputs.shadows.is_empty();
    let all_ready = ready >= wanted;
    vec![
        condition(
            types::READY,
            all_ready,
            if all_ready {
                reasons::REPLICAS_READY
            } else {
                reasons::REPLICAS_NOT_READY
            },
            format!("{ready} of {wanted} replicas ready"),
            generation,
            now,
        ),
        condition(
            types::PROGRESSING,
            !all_ready,
            if all_ready {
                reasons::AS_EXPECTED
            } else {
                reasons::REPLICAS_NOT_READY
            },
            format!("{ready} of {wanted} replicas ready"),
            generation,
            now,
        ),
        condition(
            types::DEGRADED,
            wanted > 1 && ready < wanted - 1 && replicas > 0,
            if ready < wanted - 1 {
                reasons::REPLICAS_MISSING
            } else {
                reasons::AS_EXPECTED
            },
            format!("{} replicas missing", (wanted - ready).max(0)),
            generation,
            now,
        ),
        condition(
            types::SINGLE_SERVER,
            single,
            if single {
                reasons::SINGLE_SERVER
            } else {
                reasons::AS_EXPECTED
            },
            if single {
                "one replica and no Shadow: if it is lost, every key it created is lost with it"
            } else {
                "keys have a second home"
            },
            generation,
            now,
        ),
        condition(
            types::DUPLICATE_SERVER_ID,
            !twins.is_empty(),
            if twins.is_empty() {
                reasons::AS_EXPECTED
            } else {
                reasons::DUPLICATE_SERVER_ID
            },
            if twins.is_empty() {
                "server id is unique".to_owned()
            } else {
                format!(
                    "server id {:?} is also used by {}",
                    km.spec.server_id,
                    twins.join(", ")
                )
            },
            generation,
            now,
        ),
    ]
}

/// Whether a condition in this state is news someone should hear of: a Warning Event.
fn is_warning(c: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition) -> bool {
    match c.type_.as_str() {
        types::READY => c.reason == reasons::INVALID_SPEC,
        types::PROGRESSING => false,
        _ => c.status == "True",
    }
}

/// Publishes an Event for every condition whose status or reason changed: a Warning when
/// it signals trouble, Normal otherwise.
async fn publish_transitions(
    ctx: &Context,
    km: &KeyManager,
    previous: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    next: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) {
    for c in next {
        let changed = previous
            .iter()
            .find(|p| p.type_ == c.type_)
            .is_none_or(|p| p.status != c.status || p.reason != c.reason);
        let first_and_quiet = !previous.iter().any(|p| p.type_ == c.type_) && !is_warning(c);
        if !changed || first_and_quiet {
            continue;
        }
        let event = kube::runtime::events::Event {
            type_: if is_warning(c) {
                kube::runtime::events::EventType::Warning
            } else {
                kube::runtime::events::EventType::Normal
            },
            reason: c.reason.clone(),
            note: Some(c.message.chars().take(1000).collect()),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &km.object_ref(&())).await {
            tracing::warn!(error = %e, "failed to publish an Event");
        }
    }
}

async fn patch_status(
    client: &kube::Client,
    ctx: &Context,
    km: &KeyManager,
    conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    observed: Option<Observed>,
) -> Result<(), Error> {
    let previous = km
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    publish_transitions(ctx, km, &previous, &conditions).await;
    let all = merge(&previous, conditions);
    let mut status = json!({
        "observedGeneration": km.meta().generation,
        "conditions": all,
    });
    if let Some(o) = observed {
        status["replicas"] = json!(o.replicas);
        status["readyReplicas"] = json!(o.ready);
        status["keyCount"] = json!(o.keys);
        status["keystoreDigest"] = json!(o.digest);
        status["replicaSync"] = json!(o.replica_sync);
    }
    if let Some(at) = km.annotations().get(RECONCILE_REQUESTED_AT) {
        status["lastHandledReconcileAt"] = json!(at);
    }
    let ns = km.namespace().unwrap_or_else(|| "default".to_owned());
    Api::<KeyManager>::namespaced(client.clone(), &ns)
        .patch_status(
            &km.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .map_err(Error::kube("update the KeyManager status"))?;
    Ok(())
}
