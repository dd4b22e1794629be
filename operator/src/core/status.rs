//! The KeyManager's status, computed purely from what its reconcile found: the same in
//! both shells. The operator writes it to the KeyManager's status subresource (with its
//! DriveTables' and KeyGroups' parts, and Events); `shadowkeep up` keeps it in the data
//! directory, where `shadowkeep status` reads it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt as _;
use shadowkeep_api::crd::{
    KeyGroupStatus, KeyManager, KeyManagerShadow, KeyManagerStatus, Shadow, ShadowStatus, hint_list,
};

use shadowkeep_api::shadow::wire::{Duplicate, DuplicateKind};

use super::conditions::{condition, merge, reasons, types};
use super::drive_moves::{Carried, risk_condition, table_report};
use super::keystore::GroupStatus;
use super::prepare::{Declared, Prepared};
use crate::build::Inputs;

/// Annotation that asks for an immediate reconcile; its value is echoed in
/// `status.lastHandledReconcileAt`.
pub const RECONCILE_REQUESTED_AT: &str = "shadowkeep.io/reconcile-requested-at";

/// What the shell observed of the KeyManager's servers.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    /// Replicas that exist (pods, processes).
    pub replicas: i32,
    /// Replicas ready.
    pub ready: i32,
    /// Other KeyManagers (`namespace/name`) with its server id.
    pub twins: &'a [String],
    /// Its Shadows as they last reported (the Shadows window).
    pub shadows: &'a [KeyManagerShadow],
    /// Duplicates its replicas reported: two running servers claiming one shadow's or one
    /// replica's identity.
    pub duplicates: &'a [Duplicate],
    /// `ConfigurationApplied`, when the servers were brought to the configuration.
    pub configuration: Option<&'a Condition>,
}

/// The Shadows window of a KeyManager: each of its Shadows with its zone, and the state
/// and last synchronization its status last reported, by name.
pub fn shadows_window(shadows: &[(&Shadow, Option<&ShadowStatus>)]) -> Vec<KeyManagerShadow> {
    let mut out: Vec<KeyManagerShadow> = shadows
        .iter()
        .map(|(shadow, status)| KeyManagerShadow {
            name: shadow.name_any(),
            zone: shadow.spec.placement.zone.clone(),
            state: status.and_then(|s| s.state),
            last_synchronized: status.and_then(|s| s.last_synchronized.clone()),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

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
    /// The backup targets that failed, with why, for a Warning Event each.
    pub backup_failures: Vec<(String, String)>,
}

/// The KeyManager's status: `conditions` merged into the `previous` ones, and `observe`
/// applied to the rest.
pub fn next_status(
    key_manager: &KeyManager,
    previous: Option<&KeyManagerStatus>,
    conditions: Vec<Condition>,
    observe: impl FnOnce(&mut KeyManagerStatus),
) -> KeyManagerStatus {
    let km = key_manager;
    let mut status = previous.cloned().unwrap_or_default();
    status.observed_generation = km.metadata.generation;
    status.conditions = merge(&status.conditions, conditions);
    observe(&mut status);
    if let Some(at) = km.annotations().get(RECONCILE_REQUESTED_AT) {
        status.last_handled_reconcile_at = Some(at.clone());
    }
    status
}

/// What the reconcile reports, over the `previous` status. Pure.
pub fn report(
    read: &Declared<'_>,
    previous: Option<&KeyManagerStatus>,
    inputs: &Inputs<'_>,
    prepared: &Prepared,
    observed: &Observed<'_>,
    now: &Time,
) -> Report {
    let km = read.key_manager;
    let (replicas, ready) = (observed.replicas, observed.ready);
    let mut conditions = key_manager_conditions(km, inputs, ready, replicas, observed.twins, now);
    report_duplicates(&mut conditions, observed.duplicates);
    conditions.push(risk_condition(&prepared.risks, km.metadata.generation, now));
    conditions.push(prepared.synced.condition.clone());
    conditions.extend(observed.configuration.cloned());
    conditions.extend(prepared.backups.conditions.iter().cloned());
    let status = next_status(km, previous, conditions, |s| {
        s.replicas = Some(replicas);
        s.ready_replicas = Some(ready);
        s.key_count = Some(i64::try_from(prepared.keys).unwrap_or(i64::MAX));
        s.keystore_digest = Some(prepared.digest.clone());
        s.replica_sync.clone_from(&prepared.synced.replicas);
        s.backups.clone_from(&prepared.backups.targets);
        s.shadows = observed.shadows.to_vec();
        s.shadow_hints = hint_list(&inputs.shadows);
    });
    let tables = read
        .tables
        .iter()
        .filter(|t| t.spec.key_manager_ref.name == read.name)
        .map(|t| {
            let (condition, served) = table_report(t, read.name, &prepared.risks, now);
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
        backup_failures: prepared.backups.failures.clone(),
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

/// Folds the duplicates the replicas reported into `DuplicateServerId`, naming both
/// addresses. Nothing is stopped: both go on serving (KeyServer: warn, never shut down).
fn report_duplicates(conditions: &mut [Condition], duplicates: &[Duplicate]) {
    if duplicates.is_empty() {
        return;
    }
    let Some(c) = conditions
        .iter_mut()
        .find(|c| c.type_ == types::DUPLICATE_SERVER_ID)
    else {
        return;
    };
    let seen: Vec<String> = duplicates
        .iter()
        .map(|d| {
            format!(
                "two running servers claim to be {} {:?}, from {} and {}",
                match d.kind {
                    DuplicateKind::Shadow => "shadow",
                    DuplicateKind::Replica => "replica",
                },
                d.name,
                d.addresses[0],
                d.addresses[1]
            )
        })
        .collect();
    let mut message = if c.status == "True" {
        format!("{}; ", c.message)
    } else {
        String::new()
    };
    message.push_str(&seen.join("; "));
    message.push_str("; neither is stopped");
    "True".clone_into(&mut c.status);
    reasons::DUPLICATE_SERVER_ID.clone_into(&mut c.reason);
    c.message = message;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duplicate_a_replica_saw_is_reported_with_both_addresses_and_stops_nothing() {
        let now = Time(jiff::Timestamp::UNIX_EPOCH);
        let unique = condition(
            types::DUPLICATE_SERVER_ID,
            false,
            reasons::AS_EXPECTED,
            "server id is unique",
            None,
            &now,
        );
        let mut conditions = vec![unique.clone()];
        report_duplicates(&mut conditions, &[]);
        assert_eq!(conditions, vec![unique]);
        let duplicate = Duplicate {
            kind: DuplicateKind::Shadow,
            name: "dr".to_owned(),
            instance_ids: [uuid::Uuid::nil(), uuid::Uuid::max()],
            addresses: ["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()],
            at: jiff::Timestamp::UNIX_EPOCH,
        };
        report_duplicates(&mut conditions, &[duplicate]);
        let c = &conditions[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "DuplicateServerId")
        );
        assert!(c.message.contains("10.0.0.1") && c.message.contains("10.0.0.2"));
        assert!(c.message.contains("shadow \"dr\"") && c.message.contains("neither is stopped"));
    }
}
