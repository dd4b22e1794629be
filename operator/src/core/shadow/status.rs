//! A Shadow's status — the KeyServer "Shadows" window — computed purely from what the
//! shell found: the shadow's own `GET /v1/state`, the duplicates its replicas saw, its
//! placement risks and the rotation step's verdict. The same in both shells.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use shadowkeep_api::crd::{KeyManager, Shadow, ShadowState, ShadowStatus};
use shadowkeep_api::shadow::wire::{Duplicate, DuplicateKind, ShadowStateReport};

use super::credentials::Record;
use super::rotation::Verdict;
use crate::core::conditions::{condition, merge, reasons as common};

/// Condition types of a Shadow.
pub mod types {
    /// The shadow answers and holds a licence its KeyManager's replicas accept.
    pub const READY: &str = "Ready";
    /// The shadow serves KMIP (its KeyManager is unreachable from it).
    pub const SERVING: &str = "Serving";
    /// The shadow's zone gives no protection against losing its KeyManager's site.
    pub const PLACEMENT_RISK: &str = "PlacementRisk";
    /// How the password rotation goes.
    pub const PASSWORD_ROTATION: &str = "PasswordRotation";
    /// Two running servers claim to be this shadow.
    pub const DUPLICATE_SERVER_ID: &str = "DuplicateServerId";
}

/// Condition reasons of a Shadow besides the rotation's.
pub mod reasons {
    /// The shadow answered.
    pub const ANSWERING: &str = "Answering";
    /// The shadow's admin API did not answer.
    pub const UNREACHABLE: &str = "Unreachable";
    /// The KeyManager it names does not exist.
    pub const KEY_MANAGER_MISSING: &str = "KeyManagerMissing";
    /// The shadow is Disabled: it needs a new licence.
    pub const DISABLED: &str = "Disabled";
    /// Serving, or why not: the state's name.
    pub const SERVING: &str = "Serving";
    /// Not serving.
    pub const NOT_SERVING: &str = "NotServing";
    /// A placement rule is broken.
    pub const PLACEMENT_RISK: &str = "PlacementRisk";
    /// Two instances registered as this shadow.
    pub const DUPLICATE: &str = "DuplicateInstance";
}

/// The placement risks of Shadow `name` among `shadows` (its KeyManager's), one message
/// each: the one rule `validate` and `plan` apply too.
pub fn placement_of(key_manager: &KeyManager, shadows: &[&Shadow], name: &str) -> Vec<String> {
    shadowkeep_api::placement::placement_risks(key_manager, shadows)
        .into_iter()
        .filter(|r| r.shadow == name)
        .map(|r| r.message)
        .collect()
}

/// What the shell found.
#[derive(Clone, Debug)]
pub struct Found<'a> {
    /// The spec is refused (field and why): nothing was built.
    pub invalid: Option<String>,
    /// Its KeyManager is missing (the shadow keeps its data).
    pub key_manager_missing: bool,
    /// The shadow's `/v1/state`, or why it could not be read.
    pub state: Result<&'a ShadowStateReport, String>,
    /// The address clients reach its KMIP listener at.
    pub address: Option<String>,
    /// Duplicates the KeyManager's replicas reported (of every kind; this one's are kept).
    pub duplicates: &'a [Duplicate],
    /// Placement risks: one message each.
    pub placement: &'a [String],
    /// The credential record, once made.
    pub record: Option<&'a Record>,
    /// The rotation's verdict, when a step ran.
    pub rotation: Option<&'a Verdict>,
}

/// The status of Shadow `name` (generation `generation`) from what was found, merged with
/// the previous one so that transition times move only when a condition's status does.
pub fn report(
    name: &str,
    generation: Option<i64>,
    previous: Option<&ShadowStatus>,
    found: &Found<'_>,
    now: &Time,
) -> ShadowStatus {
    let mut status = previous.cloned().unwrap_or_default();
    status.observed_generation = generation;
    let c = |type_: &str, ok: bool, reason: &str, message: String| {
        condition(type_, ok, reason, message, generation, now)
    };
    let mut conditions: Vec<Condition> = Vec::new();
    if let Some(invalid) = &found.invalid {
        conditions.push(c(
            types::READY,
            false,
            common::INVALID_SPEC,
            invalid.clone(),
        ));
        status.conditions = merge(&status.conditions, conditions);
        return status;
    }
    conditions.extend(state_conditions(&mut status, found, generation, now));
    status.address.clone_from(&found.address);
    conditions.push(if found.placement.is_empty() {
        c(
            types::PLACEMENT_RISK,
            false,
            common::AS_EXPECTED,
            "the shadow is at another site than its KeyManager's replicas".to_owned(),
        )
    } else {
        c(
            types::PLACEMENT_RISK,
            true,
            reasons::PLACEMENT_RISK,
            found.placement.join("; "),
        )
    });
    let duplicates: Vec<String> = found
        .duplicates
        .iter()
        .filter(|d| d.kind == DuplicateKind::Shadow && d.name == name)
        .map(|d| {
            format!(
                "two running servers registered as this shadow, from {} and {} (instances {} and {}); neither is stopped",
                d.addresses[0], d.addresses[1], d.instance_ids[0], d.instance_ids[1]
            )
        })
        .collect();
    conditions.push(if duplicates.is_empty() {
        c(
            types::DUPLICATE_SERVER_ID,
            false,
            common::AS_EXPECTED,
            "one server registers as this shadow".to_owned(),
        )
    } else {
        c(
            types::DUPLICATE_SERVER_ID,
            true,
            reasons::DUPLICATE,
            duplicates.join("; "),
        )
    });
    if let Some(record) = found.record {
        status.password_rotated_at =
            Some(Time(record.rotated_at.unwrap_or(record.current.issued_at)));
    }
    if let Some(verdict) = found.rotation {
        conditions.push(c(
            types::PASSWORD_ROTATION,
            verdict.ok,
            verdict.reason,
            verdict.message.clone(),
        ));
    }
    status.conditions = merge(&status.conditions, conditions);
    status
}

/// Ready and Serving, from the shadow's own report; the window's state fields with them.
fn state_conditions(
    status: &mut ShadowStatus,
    found: &Found<'_>,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let c = |type_: &str, ok: bool, reason: &str, message: String| {
        condition(type_, ok, reason, message, generation, now)
    };
    let mut conditions = Vec::new();
    match &found.state {
        Ok(report) => {
            status.state = Some(report.state);
            status.last_synchronized = report.last_synchronized.map(Time);
            status.serving_since = report.serving_since.map(Time);
            let ready = if found.key_manager_missing {
                c(
                    types::READY,
                    false,
                    reasons::KEY_MANAGER_MISSING,
                    "its KeyManager does not exist; the shadow keeps its keys and data".to_owned(),
                )
            } else if report.state == ShadowState::Disabled {
                c(
                    types::READY,
                    false,
                    reasons::DISABLED,
                    "the shadow is Disabled; it needs a new licence (set spec.state Disabled, then Active)".to_owned(),
                )
            } else {
                c(
                    types::READY,
                    true,
                    reasons::ANSWERING,
                    format!("{:?} since {}", report.state, report.since),
                )
            };
            conditions.push(ready);
            conditions.push(if report.state == ShadowState::Serving {
                c(
                    types::SERVING,
                    true,
                    reasons::SERVING,
                    format!(
                        "serving existing keys read-only since {}: no replica answered it",
                        report.serving_since.unwrap_or(report.since)
                    ),
                )
            } else {
                c(
                    types::SERVING,
                    false,
                    reasons::NOT_SERVING,
                    format!("{:?}", report.state),
                )
            });
        }
        Err(problem) => {
            conditions.push(c(
                types::READY,
                false,
                if found.key_manager_missing {
                    reasons::KEY_MANAGER_MISSING
                } else {
                    reasons::UNREACHABLE
                },
                problem.clone(),
            ));
            conditions.push(c(
                types::SERVING,
                false,
                reasons::UNREACHABLE,
                "the shadow did not answer".to_owned(),
            ));
        }
    }
    conditions
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + secs).unwrap())
    }

    fn shadow_report(state: ShadowState) -> ShadowStateReport {
        ShadowStateReport {
            name: "dr".to_owned(),
            key_manager: "prod".to_owned(),
            priority: 0,
            state,
            desired: shadowkeep_api::crd::DesiredShadowState::Active,
            since: at(0).0,
            last_synchronized: Some(at(5).0),
            serving_since: (state == ShadowState::Serving).then_some(at(3).0),
            last_contact: at(5).0,
            licence_issued_at: at(0).0,
            replicas: Vec::new(),
        }
    }

    fn found<'a>(
        state: Result<&'a ShadowStateReport, String>,
        duplicates: &'a [Duplicate],
        placement: &'a [String],
    ) -> Found<'a> {
        Found {
            invalid: None,
            key_manager_missing: false,
            state,
            address: Some("127.0.0.9:5696".to_owned()),
            duplicates,
            placement,
            record: None,
            rotation: None,
        }
    }

    fn get<'a>(status: &'a ShadowStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn the_window_shows_the_state_and_keeps_transition_times() {
        let serving = shadow_report(ShadowState::Serving);
        let first = report("dr", Some(2), None, &found(Ok(&serving), &[], &[]), &at(10));
        assert_eq!(first.state, Some(ShadowState::Serving));
        assert_eq!(first.serving_since, Some(at(3)));
        assert_eq!(first.last_synchronized, Some(at(5)));
        assert_eq!(get(&first, types::SERVING).status, "True");
        assert_eq!(get(&first, types::READY).observed_generation, Some(2));
        let again = report(
            "dr",
            Some(2),
            Some(&first),
            &found(Ok(&serving), &[], &[]),
            &at(20),
        );
        assert_eq!(
            again, first,
            "a second look at the same shadow changes nothing"
        );
        let shadowing = shadow_report(ShadowState::Shadowing);
        let back = report(
            "dr",
            Some(2),
            Some(&first),
            &found(Ok(&shadowing), &[], &[]),
            &at(30),
        );
        assert_eq!(get(&back, types::SERVING).status, "False");
        assert_eq!(get(&back, types::SERVING).last_transition_time, at(30));
        assert_eq!(get(&back, types::READY).last_transition_time, at(10));
    }

    #[test]
    fn duplicates_placement_and_silence_are_reported() {
        let duplicate = Duplicate {
            kind: DuplicateKind::Shadow,
            name: "dr".to_owned(),
            instance_ids: [uuid::Uuid::nil(), uuid::Uuid::max()],
            addresses: ["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()],
            at: at(0).0,
        };
        let other = Duplicate {
            name: "other".to_owned(),
            ..duplicate.clone()
        };
        let risks = vec!["zone \"a\" is where KeyManager \"prod\" runs".to_owned()];
        let status = report(
            "dr",
            None,
            None,
            &found(
                Err("connection refused".to_owned()),
                &[duplicate, other],
                &risks,
            ),
            &at(0),
        );
        let dup = get(&status, types::DUPLICATE_SERVER_ID);
        assert_eq!(dup.status, "True");
        assert!(dup.message.contains("10.0.0.1") && dup.message.contains("10.0.0.2"));
        assert!(!dup.message.contains("other"));
        assert_eq!(get(&status, types::PLACEMENT_RISK).status, "True");
        assert_eq!(get(&status, types::READY).reason, reasons::UNREACHABLE);
        let invalid = report(
            "dr",
            None,
            None,
            &Found {
                invalid: Some("spec.priority: must be between 0 and 1000".to_owned()),
                ..found(Err(String::new()), &[], &[])
            },
            &at(0),
        );
        assert_eq!(invalid.conditions.len(), 1);
        assert_eq!(invalid.conditions[0].reason, "InvalidSpec");
    }
}
