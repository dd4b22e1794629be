//! The status step: the KeyManager's typed status, its DriveTables' risks and its
//! KeyGroups' pools, computed purely by the control core ([`crate::core::status`]), then
//! written, with an Event for each change someone should hear of.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Resource as _, ResourceExt as _};
use serde::Serialize;
use shadowkeep_api::crd::{
    DriveTable, DriveTableStatus, KeyGroup, KeyGroupStatus, KeyManagerStatus,
};

use super::dereference::Dereferenced;
use super::material::Waiting;
use crate::controller::conditions::{publish_transitions, update_status};
use crate::controller::state::Kube;
use crate::controller::{Context, StatusError};
use crate::core::conditions::{condition, merge, reasons, types};
use crate::core::drive_moves::KEY_HISTORY_CARRIED;
use crate::core::state::{Owner, State as _};
use crate::core::status::{Report, TableReport, next_status};

/// Whether a condition in this state is news someone should hear of: a Warning Event.
fn is_warning(c: &Condition) -> bool {
    match c.type_.as_str() {
        types::READY => c.reason == reasons::INVALID_SPEC,
        types::PROGRESSING => false,
        // Trouble when False: the KEK escrowed to nobody, a target behind.
        types::KEK_ESCROWED | types::BACKUPS_CURRENT => c.status == "False",
        _ => c.status == "True",
    }
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
    publish_transitions(
        ctx,
        &km.object_ref(&()),
        previous,
        &status.conditions,
        is_warning,
    )
    .await;
    Kube::new(ctx.client.clone())
        .write_status(&Owner::new(&read.namespace, &read.name), status)
        .await
        .map_err(StatusError::state)?;
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
    // A failure is news when the target was not failing: its messages carry timings and
    // names that differ at every attempt, so a changed message is not news.
    let before = read
        .key_manager
        .status
        .as_ref()
        .map(|s| s.backups.as_slice())
        .unwrap_or_default();
    for (target, error) in &report.backup_failures {
        if before
            .iter()
            .any(|b| b.name == *target && b.error.is_some())
        {
            continue;
        }
        ctx.publish(
            &read.key_manager.object_ref(&()),
            EventType::Warning,
            reasons::BACKUP_TARGET_FAILED,
            "BackUp",
            &format!("backup target {target}: {error}"),
        )
        .await;
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

/// Writes the KeyManager's status with `condition` merged in, the rest as it was.
async fn write_condition(
    ctx: &Context,
    read: &Dereferenced,
    condition: Condition,
) -> Result<(), StatusError> {
    let km = &read.key_manager;
    let status = next_status(km, km.status.as_ref(), vec![condition], |_| {});
    write_status(ctx, read, &status).await
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
    write_condition(ctx, read, ready).await
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
    write_condition(ctx, read, progressing).await
}
