//! The status step: the KeyManager's typed status, its DriveTables' risks and its
//! KeyGroups' pools computed purely from what the reconcile found, then written, with an
//! Event for each change someone should hear of.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Resource as _, ResourceExt as _};
use serde::Serialize;
use shadowkeep_api::crd::{
    DriveTable, DriveTableStatus, KeyGroup, KeyGroupStatus, KeyManager, KeyManagerStatus,
};

use super::RECONCILE_REQUESTED_AT;
use super::dereference::Dereferenced;
use super::material::{Prepared, Waiting};
use crate::build::{FIELD_MANAGER, Inputs};
use crate::controller::conditions::update_status;
use crate::controller::{Context, StatusError};
use crate::core::conditions::{condition, merge, reasons, types};
use crate::core::drive_moves::{Carried, KEY_HISTORY_CARRIED, risk_condition, table_report};
use crate::core::keystore::GroupStatus;

/// One DriveTable's report.
#[derive(Clone, Debug)]
pub struct TableReport {
    /// The table.
    pub name: String,
    /// Its `KeyHistoryAtRisk`.
    pub condition: Condition,
    /// Its drives served.
    pub drives: i32,
    /// Its generation.
    pub generation: Option<i64>,
}

/// Everything the status step writes.
#[derive(Clone, Debug)]
pub struct Report {
    /// The KeyManager's status.
    pub status: KeyManagerStatus,
    /// Its DriveTables.
    pub tables: Vec<TableReport>,
    /// Its KeyGroups.
    pub groups: Vec<(String, KeyGroupStatus)>,
    /// The drives whose keys were carried here, for an Event each.
    pub carried: Vec<Carried>,
}

/// The KeyManager's status: `conditions` merged into the previous ones, and `observe`
/// applied to the rest.
fn next_status(
    read: &Dereferenced,
    conditions: Vec<Condition>,
    observe: impl FnOnce(&mut KeyManagerStatus),
) -> KeyManagerStatus {
    let km = &read.key_manager;
    let mut status = km.status.clone().unwrap_or_default();
    status.observed_generation = km.metadata.generation;
    status.conditions = merge(&status.conditions, conditions);
    observe(&mut status);
    if let Some(at) = km.annotations().get(RECONCILE_REQUESTED_AT) {
        status.last_handled_reconcile_at = Some(at.clone());
    }
    status
}

/// What the reconcile reports. Pure.
pub fn report(read: &Dereferenced, inputs: &Inputs<'_>, prepared: &Prepared, now: &Time) -> Report {
    let km = &read.key_manager;
    let (replicas, ready) = read
        .statefulset
        .as_ref()
        .map_or((0, 0), |s| (s.replicas, s.ready_replicas.unwrap_or(0)));
    let mut conditions = key_manager_conditions(km, inputs, ready, replicas, &read.twins, now);
    conditions.push(risk_condition(&prepared.risks, km.metadata.generation, now));
    conditions.push(prepared.synced.condition.clone());
    let status = next_status(read, conditions, |s| {
        s.replicas = Some(replicas);
        s.ready_replicas = Some(ready);
        s.key_count = Some(i64::try_from(prepared.keys).unwrap_or(i64::MAX));
        s.keystore_digest = Some(prepared.digest.clone());
        s.replica_sync.clone_from(&prepared.synced.replicas);
    });
    let tables = read
        .tables
        .iter()
        .filter(|t| t.spec.key_manager_ref.name == read.name)
        .map(|t| {
            let (condition, served) = table_report(t, &read.name, &prepared.risks, now);
            TableReport {
                name: t.name_any(),
                condition,
                drives: i32::try_from(served).unwrap_or(i32::MAX),
                generation: t.metadata.generation,
            }
        })
        .collect();
    Report {
        status,
        tables,
        groups: prepared.groups.iter().map(group_status).collect(),
        carried: prepared.carried.clone(),
    }
}

fn group_status(group: &GroupStatus) -> (String, KeyGroupStatus) {
    (
        group.name.clone(),
        KeyGroupStatus {
            observed_generation: group.generation,
            conditions: Vec::new(),
            keys: Some(i32::try_from(group.pool.keys).unwrap_or(i32::MAX)),
            active_key: group.pool.active_key.clone(),
            last_rotated_at: group.pool.last_rotated_at.map(Time),
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
    now: &Time,
) -> Vec<Condition> {
    let generation = km.metadata.generation;
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
fn is_warning(c: &Condition) -> bool {
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
    previous: &[Condition],
    next: &[Condition],
) {
    for c in next {
        let before = previous.iter().find(|p| p.type_ == c.type_);
        let changed = before.is_none_or(|p| p.status != c.status || p.reason != c.reason);
        let first_and_quiet = before.is_none() && !is_warning(c);
        if !changed || first_and_quiet {
            continue;
        }
        let type_ = if is_warning(c) {
            EventType::Warning
        } else {
            EventType::Normal
        };
        ctx.publish(
            &km.object_ref(&()),
            type_,
            &c.reason,
            "Reconcile",
            &c.message,
        )
        .await;
    }
}

/// The status as server-side apply takes it: the operator owns the whole status.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusApply<'a> {
    api_version: &'a str,
    kind: &'a str,
    status: &'a KeyManagerStatus,
}

/// Writes the KeyManager's status, publishing an Event for each condition that changed;
/// a status the KeyManager already has is not written again.
async fn write_status(
    ctx: &Context,
    read: &Dereferenced,
    status: &KeyManagerStatus,
) -> Result<(), StatusError> {
    let km = &read.key_manager;
    if km.status.as_ref() == Some(status) {
        return Ok(());
    }
    let previous = km
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    publish_transitions(ctx, km, previous, &status.conditions).await;
    let apply = StatusApply {
        api_version: &KeyManager::api_version(&()),
        kind: &KeyManager::kind(&()),
        status,
    };
    Api::<KeyManager>::namespaced(ctx.client.clone(), &read.namespace)
        .patch_status(
            &read.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&apply),
        )
        .await
        .map_err(StatusError::of("update the KeyManager status"))?;
    Ok(())
}

/// Writes the report: the KeyManager's status, each DriveTable's risk (with a Warning Event
/// when a new one appears) and drive count, each KeyGroup's pool, and an Event for each
/// drive carried here.
pub async fn write(ctx: &Context, read: &Dereferenced, report: Report) -> Result<(), StatusError> {
    for table in &report.tables {
        write_table(ctx, read, table).await?;
    }
    let groups: Api<KeyGroup> = Api::namespaced(ctx.client.clone(), &read.namespace);
    for (name, status) in &report.groups {
        let listed = read
            .groups
            .iter()
            .find(|g| g.name_any() == *name)
            .and_then(|g| g.status.as_ref());
        if listed.is_some_and(|l| {
            (
                &l.observed_generation,
                &l.keys,
                &l.active_key,
                &l.last_rotated_at,
            ) == (
                &status.observed_generation,
                &status.keys,
                &status.active_key,
                &status.last_rotated_at,
            )
        }) {
            continue;
        }
        groups
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(&GroupPatch { status }),
            )
            .await
            .map_err(StatusError::of(format!("update KeyGroup {name} status")))?;
    }
    for done in &report.carried {
        if let Some(table) = read.tables.iter().find(|t| t.name_any() == done.table) {
            ctx.publish(
                &table.object_ref(&()),
                EventType::Normal,
                KEY_HISTORY_CARRIED,
                "CarryKeys",
                &done.note,
            )
            .await;
        }
    }
    write_status(ctx, read, &report.status).await
}

/// A KeyGroup status to merge: the conditions the KeyGroup controller writes are left alone.
#[derive(Debug, Serialize)]
struct GroupPatch<'a> {
    status: &'a KeyGroupStatus,
}

/// Writes a DriveTable's risk and drive count, unless the table as listed has them
/// already; from a fresh read otherwise, since the DriveTable controller writes its
/// conditions too.
async fn write_table(
    ctx: &Context,
    read: &Dereferenced,
    table: &TableReport,
) -> Result<(), StatusError> {
    let api: Api<DriveTable> = Api::namespaced(ctx.client.clone(), &read.namespace);
    let c = &table.condition;
    let status_of = |object: &DriveTable| {
        let previous = object
            .status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default();
        DriveTableStatus {
            observed_generation: table.generation,
            conditions: merge(previous, vec![c.clone()]),
            drives: Some(table.drives),
        }
    };
    let listed = read.tables.iter().find(|t| t.name_any() == table.name);
    if listed.is_some_and(|t| t.status.as_ref() == Some(&status_of(t))) {
        return Ok(());
    }
    let before = update_status(&api, &table.name, status_of)
        .await
        .map_err(StatusError::of(format!(
            "update DriveTable {} status",
            table.name
        )))?;
    let was_at_risk = before.and_then(|t| t.status).is_some_and(|s| {
        s.conditions.iter().any(|p| {
            p.type_ == types::KEY_HISTORY_AT_RISK && p.status == "True" && p.message == c.message
        })
    });
    if c.status == "True"
        && !was_at_risk
        && let Some(t) = read.tables.iter().find(|t| t.name_any() == table.name)
    {
        {
            ctx.publish(
                &t.object_ref(&()),
                EventType::Warning,
                reasons::KEY_HISTORY_AT_RISK,
                "HoldBackDrive",
                &c.message,
            )
            .await;
        }
    }
    Ok(())
}

/// Reports a spec that cannot be applied: `Ready` False with the reason; nothing else
/// changes.
pub async fn invalid(
    ctx: &Context,
    read: &Dereferenced,
    message: String,
    now: &Time,
) -> Result<(), StatusError> {
    tracing::info!(%message, "invalid spec; nothing changed");
    let ready = condition(
        types::READY,
        false,
        reasons::INVALID_SPEC,
        message,
        read.key_manager.metadata.generation,
        now,
    );
    write_status(ctx, read, &next_status(read, vec![ready], |_| {})).await
}

/// Reports a reconcile that stopped to try again soon: `Progressing` True with why.
pub async fn waiting(
    ctx: &Context,
    read: &Dereferenced,
    waiting: &Waiting,
    now: &Time,
) -> Result<(), StatusError> {
    tracing::info!(message = %waiting.message, "waiting; trying again soon");
    let progressing = condition(
        types::PROGRESSING,
        true,
        reasons::STATE_CHANGED,
        waiting.message.clone(),
        read.key_manager.metadata.generation,
        now,
    );
    write_status(ctx, read, &next_status(read, vec![progressing], |_| {})).await
}
