//! Password rotation without outage, as one pure step over a shadow's [`Record`] and what
//! its KeyManager's replicas answered. The shells persist the record the step returns
//! before doing anything it asks, so an operator restarted mid-rotation resumes where it
//! stopped.
//!
//! A rotation goes:
//! 1. **Accepting** — a new pair is issued and kept in the record; the replicas are given
//!    its verifier beside the current one. The shadow still holds the current pair.
//! 2. **Hand-over** — once every replica says it accepts the new verifier, the shadow is
//!    given the new pair; the old verifier stays accepted until a bounded not-after.
//! 3. **Retirement** — once every replica has seen the shadow register with the new
//!    licence, the old verifier goes. If that does not happen within the overlap, the old
//!    one goes anyway at its not-after (the replicas enforce it themselves), and that is
//!    reported: the shadow holds the new pair and registers with it when it next can.
//!
//! So the shadow always holds a pair every replica accepts (Vault's static roles went
//! down when a password changed before its users had it: vault#18738). A replica that
//! cannot be asked stops the rotation before the hand-over: it backs off with jitter and
//! the working password stays. Rotations of one KeyManager's shadows never overlap, and
//! each shadow's schedule is offset by its name, so shadows created together do not rotate
//! together.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kube::ResourceExt as _;
use shadowkeep_api::crd::{DesiredShadowState, Shadow};

use super::ROTATE_PASSWORD_REQUESTED_AT;
use super::credentials::{Cause, Issued, Problem, Record, Retiring, Rotation};
use crate::core::Error;

/// How long the old verifier stays accepted after the hand-over at most.
pub const OVERLAP: Duration = Duration::from_hours(1);
/// How long replicas that answer may take to accept a new verifier before it counts as a
/// failure (a Secret mounted in a pod can take a minute or two to change).
pub const ACCEPT_BOUND: Duration = Duration::from_mins(10);
/// The first backoff after a failure; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(10);
/// The longest backoff.
pub const MAX_BACKOFF: Duration = Duration::from_mins(10);

/// Condition reasons of `PasswordRotation`.
pub mod reasons {
    /// The last rotation completed; the next is scheduled.
    pub const ROTATED: &str = "Rotated";
    /// No rotation yet; the first is scheduled.
    pub const SCHEDULED: &str = "Scheduled";
    /// A rotation is under way.
    pub const IN_PROGRESS: &str = "InProgress";
    /// Another shadow of the KeyManager is rotating; this one waits its turn.
    pub const WAITING_FOR_SIBLING: &str = "WaitingForSibling";
    /// A replica could not be asked; the rotation backs off and the password in force stays.
    pub const REPLICA_UNREACHABLE: &str = "ReplicaUnreachable";
    /// Replicas answer but did not accept the new verifier within the bound.
    pub const REPLICA_NOT_ACCEPTING: &str = "ReplicaNotAccepting";
    /// The shadow did not register with the new pair within the overlap; the old verifier
    /// was retired at its not-after.
    pub const OVERLAP_EXPIRED: &str = "OverlapExpired";
    /// The shadow is disabled; it is not rotated until it is enabled again.
    pub const DISABLED: &str = "ShadowDisabled";
}

/// What one replica answered about this shadow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaSees {
    /// The ids of the verifiers it accepts for the shadow.
    pub accepted: Vec<String>,
    /// The `issuedAt` of the licence the shadow last registered with there, if registered.
    pub registered_with: Option<Timestamp>,
}

/// What the replicas answered, one entry per replica of the KeyManager (an error is why
/// it could not be asked).
pub type Observed = Vec<(String, Result<ReplicaSees, String>)>;

/// What the user asks of the shadow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// `spec.passwordRotationInterval`.
    pub interval: Duration,
    /// The `shadowkeep.io/rotate-password-requested-at` annotation.
    pub request: Option<String>,
    /// Whether `spec.state` is `Disabled`.
    pub disabled: bool,
    /// The shadow's `namespace/name`: it offsets its schedule.
    pub reference: String,
}

impl Wanted {
    /// What Shadow `shadow` of `namespace` asks: its spec and rotation annotation.
    pub fn of(shadow: &Shadow, namespace: &str) -> Self {
        Self {
            interval: shadow.spec.password_rotation_interval.as_duration(),
            request: shadow
                .annotations()
                .get(ROTATE_PASSWORD_REQUESTED_AT)
                .cloned(),
            disabled: shadow.spec.state == DesiredShadowState::Disabled,
            reference: format!("{namespace}/{}", shadow.name_any()),
        }
    }
}

/// An Event for the shell to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Warning rather than Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// The message; never a secret.
    pub message: String,
}

/// The `PasswordRotation` condition as this step sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// True unless the rotation failed.
    pub ok: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// The message.
    pub message: String,
}

/// What a step decided.
#[derive(Debug)]
pub struct Stepped {
    /// The record to persist (before acting on it).
    pub record: Record,
    /// Whether it differs from the one given.
    pub changed: bool,
    /// Whether the shadow must be given `record.current` (it changed at this step).
    pub hand_over: bool,
    /// Events to publish.
    pub events: Vec<Event>,
    /// The condition.
    pub verdict: Verdict,
}

/// When the next scheduled rotation is due: an interval after the last one (or the first
/// issue), plus an offset of up to a tenth of the interval drawn from the shadow's name.
pub fn due_at(record: &Record, wanted: &Wanted) -> Timestamp {
    let base = record.rotated_at.unwrap_or(record.current.issued_at);
    let interval = SignedDuration::try_from(wanted.interval).unwrap_or(SignedDuration::MAX);
    let offset = offset(&wanted.reference, wanted.interval / 10);
    base.checked_add(interval)
        .and_then(|t| t.checked_add(offset))
        .unwrap_or(Timestamp::MAX)
}

fn offset(reference: &str, span: Duration) -> SignedDuration {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::digest(reference.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let fraction = u64::from_be_bytes(first);
    let span_ms = u64::try_from(span.as_millis()).unwrap_or(u64::MAX);
    let ms = if span_ms == 0 { 0 } else { fraction % span_ms };
    SignedDuration::from_millis(i64::try_from(ms).unwrap_or(0))
}

/// The backoff after `failures` failures, scaled by `jitter` (in `[0, 1)`: from half to
/// one and a half times the base).
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let doubling = FIRST_BACKOFF.saturating_mul(1 << failures.saturating_sub(1).min(16));
    let base = doubling.min(MAX_BACKOFF);
    base.mul_f64(0.5 + jitter.clamp(0.0, 1.0))
}

fn after(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// One step of the rotation of a shadow.
///
/// `observed` is what the replicas answered now (`None` when they were not asked: no step
/// that needs them is taken). `sibling_rotating` says whether another shadow of the
/// KeyManager is rotating. `issue` makes a new pair issued at the time it is given;
/// `jitter` is a random number in `[0, 1)`.
///
/// # Errors
/// When a new pair cannot be issued; the record is then unchanged.
pub fn step(
    record: &Record,
    wanted: &Wanted,
    observed: Option<&Observed>,
    sibling_rotating: bool,
    now: Timestamp,
    issue: impl FnOnce(Timestamp) -> Result<Issued, Error>,
    jitter: f64,
) -> Result<Stepped, Error> {
    let mut next = record.clone();
    let mut events = Vec::new();
    let mut hand_over = false;
    let reenabled = record.disabled && !wanted.disabled;
    next.disabled = wanted.disabled;
    let verdict = if next.retiring.is_some() {
        retire(&mut next, observed, now, &mut events)
    } else if next.rotation.is_some() {
        let verdict = accept(&mut next, observed, now, jitter, &mut events);
        hand_over = next.rotation.is_none();
        verdict
    } else if wanted.disabled {
        Verdict {
            ok: true,
            reason: reasons::DISABLED,
            message: "the shadow is disabled; enabling it issues a new licence and password"
                .to_owned(),
        }
    } else {
        let requested = wanted
            .request
            .as_ref()
            .filter(|r| record.handled_request.as_ref() != Some(*r));
        let cause = if reenabled {
            Some(Cause::Reenabled)
        } else if requested.is_some() {
            Some(Cause::Requested)
        } else if now >= due_at(record, wanted) {
            Some(Cause::Schedule)
        } else {
            None
        };
        match cause {
            Some(_) if sibling_rotating => Verdict {
                ok: true,
                reason: reasons::WAITING_FOR_SIBLING,
                message:
                    "a rotation is due; it waits while another shadow of the KeyManager rotates"
                        .to_owned(),
            },
            Some(cause) => {
                let issued = issue(record.next_issue_time(now))?;
                let id = issued.id();
                next.rotation = Some(Rotation {
                    next: issued,
                    started_at: now,
                    cause,
                });
                next.failures = 0;
                next.retry_at = None;
                if cause == Cause::Requested {
                    next.handled_request.clone_from(&wanted.request);
                }
                events.push(Event {
                    warning: false,
                    reason: "PasswordRotationStarted",
                    message: format!(
                        "issued licence {id} ({}); the replicas are given its verifier before the shadow gets it",
                        cause_text(cause)
                    ),
                });
                Verdict {
                    ok: true,
                    reason: reasons::IN_PROGRESS,
                    message: format!(
                        "rotating to licence {id}: waiting for every replica to accept it"
                    ),
                }
            }
            None => idle(&next, wanted),
        }
    };
    let changed = next != *record;
    Ok(Stepped {
        record: next,
        changed,
        hand_over,
        events,
        verdict,
    })
}

fn cause_text(cause: Cause) -> &'static str {
    match cause {
        Cause::Schedule => "passwordRotationInterval ran out",
        Cause::Requested => "requested by annotation",
        Cause::Reenabled => "the shadow was enabled again",
    }
}

fn idle(record: &Record, wanted: &Wanted) -> Verdict {
    let due = due_at(record, wanted);
    if let Some(problem) = &record.problem {
        return Verdict {
            ok: false,
            reason: reason_of(&problem.reason),
            message: format!("{}; next rotation due at {due}", problem.message),
        };
    }
    match record.rotated_at {
        Some(at) => Verdict {
            ok: true,
            reason: reasons::ROTATED,
            message: format!("rotated at {at}; next rotation due at {due}"),
        },
        None => Verdict {
            ok: true,
            reason: reasons::SCHEDULED,
            message: format!("first rotation due at {due}"),
        },
    }
}

/// The stored problem's reason as one of [`reasons`] (a record written by an older
/// version may carry another).
fn reason_of(reason: &str) -> &'static str {
    [
        reasons::REPLICA_UNREACHABLE,
        reasons::REPLICA_NOT_ACCEPTING,
        reasons::OVERLAP_EXPIRED,
    ]
    .into_iter()
    .find(|r| *r == reason)
    .unwrap_or(reasons::REPLICA_UNREACHABLE)
}

/// Step 1: waits until every replica accepts the new verifier, then hands it over.
fn accept(
    record: &mut Record,
    observed: Option<&Observed>,
    now: Timestamp,
    jitter: f64,
    events: &mut Vec<Event>,
) -> Verdict {
    let Some(rotation) = record.rotation.clone() else {
        return Verdict {
            ok: true,
            reason: reasons::IN_PROGRESS,
            message: String::new(),
        };
    };
    let id = rotation.next.id();
    if let Some(retry_at) = record.retry_at.filter(|t| now < *t) {
        let problem = record.problem.clone().unwrap_or(Problem {
            reason: reasons::REPLICA_UNREACHABLE.to_owned(),
            message: String::new(),
        });
        return Verdict {
            ok: false,
            reason: reason_of(&problem.reason),
            message: format!(
                "{}; the password in force still works; retrying at {retry_at}",
                problem.message
            ),
        };
    }
    let Some(observed) = observed else {
        return Verdict {
            ok: true,
            reason: reasons::IN_PROGRESS,
            message: format!("rotating to licence {id}: waiting for every replica to accept it"),
        };
    };
    let (failure, behind) = judge(&id, rotation.started_at, observed, now);
    if let Some(problem) = failure {
        record.failures = record.failures.saturating_add(1);
        let retry_at = after(now, backoff(record.failures, jitter));
        record.retry_at = Some(retry_at);
        events.push(Event {
            warning: true,
            reason: "PasswordRotationFailed",
            message: format!(
                "{}; the password in force still works; retrying at {retry_at}",
                problem.message
            ),
        });
        let verdict = Verdict {
            ok: false,
            reason: reason_of(&problem.reason),
            message: format!(
                "{}; the password in force still works; retrying at {retry_at}",
                problem.message
            ),
        };
        record.problem = Some(problem);
        return verdict;
    }
    if !behind.is_empty() {
        return Verdict {
            ok: true,
            reason: reasons::IN_PROGRESS,
            message: format!(
                "rotating to licence {id}: waiting for replica {} to accept it",
                behind.join(", ")
            ),
        };
    }
    let old = std::mem::replace(&mut record.current, rotation.next);
    record.retiring = Some(Retiring {
        verifier: old.verifier.clone(),
        id: old.id(),
        not_after: after(now, OVERLAP),
        handed_over_at: now,
        withdrawn: false,
    });
    record.rotation = None;
    record.retry_at = None;
    events.push(Event {
        warning: false,
        reason: "PasswordHandedOver",
        message: format!(
            "every replica accepts licence {id}; the shadow is given it, and licence {} stays accepted until the shadow registers with the new one (at most until {})",
            old.id(),
            after(now, OVERLAP)
        ),
    });
    Verdict {
        ok: true,
        reason: reasons::IN_PROGRESS,
        message: format!("rotating to licence {id}: waiting for the shadow to register with it"),
    }
}

/// Whether the replicas accept pair `id` yet: the replicas still behind, and a failure when
/// one could not be asked or has been behind longer than [`ACCEPT_BOUND`].
fn judge(
    id: &str,
    started_at: Timestamp,
    observed: &Observed,
    now: Timestamp,
) -> (Option<Problem>, Vec<String>) {
    let unreachable: Vec<String> = observed
        .iter()
        .filter_map(|(name, seen)| seen.as_ref().err().map(|e| format!("{name} ({e})")))
        .collect();
    let behind: Vec<String> = observed
        .iter()
        .filter(|(_, seen)| {
            seen.as_ref()
                .is_ok_and(|s| !s.accepted.iter().any(|a| a == id))
        })
        .map(|(name, _)| name.clone())
        .collect();
    let problem = |reason: &str, why: String| {
        Some(Problem {
            reason: reason.to_owned(),
            message: format!("rotation to licence {id} cannot go on: {why}"),
        })
    };
    let failure = if !unreachable.is_empty() {
        problem(
            reasons::REPLICA_UNREACHABLE,
            format!("replica {} could not be asked", unreachable.join(", ")),
        )
    } else if observed.is_empty() {
        problem(
            reasons::REPLICA_UNREACHABLE,
            "the KeyManager has no replica to ask".to_owned(),
        )
    } else if !behind.is_empty() && now >= after(started_at, ACCEPT_BOUND) {
        problem(
            reasons::REPLICA_NOT_ACCEPTING,
            format!(
                "replica {} answers but has not accepted the new verifier since {started_at}",
                behind.join(", ")
            ),
        )
    } else {
        None
    };
    (failure, behind)
}

/// Step 3: withdraws the old verifier once the shadow registered with the new pair at
/// every replica, or at its not-after; step 4: done once no replica accepts it any more.
fn retire(
    record: &mut Record,
    observed: Option<&Observed>,
    now: Timestamp,
    events: &mut Vec<Event>,
) -> Verdict {
    let Some(mut retiring) = record.retiring.clone() else {
        return Verdict {
            ok: true,
            reason: reasons::IN_PROGRESS,
            message: String::new(),
        };
    };
    let id = record.current.id();
    if !retiring.withdrawn {
        let waiting = replicas_where(observed, |s| {
            s.registered_with != Some(record.current.issued_at)
        });
        if observed.is_some_and(|o| !o.is_empty()) && waiting.is_empty() {
            retiring.withdrawn = true;
            record.problem = None;
        } else if now > retiring.not_after {
            retiring.withdrawn = true;
            let problem = Problem {
                reason: reasons::OVERLAP_EXPIRED.to_owned(),
                message: format!(
                    "the shadow did not register with licence {id} at every replica before {} (still waiting: {}); licence {} was retired then, and the shadow, which holds the new password, registers with it when it next can",
                    retiring.not_after,
                    listed(&waiting),
                    retiring.id
                ),
            };
            events.push(Event {
                warning: true,
                reason: "PasswordOverlapExpired",
                message: problem.message.clone(),
            });
            record.problem = Some(problem);
        } else {
            return Verdict {
                ok: true,
                reason: reasons::IN_PROGRESS,
                message: format!(
                    "rotating to licence {id}: waiting for the shadow to register with it at {}; licence {} stays accepted until {}",
                    listed(&waiting),
                    retiring.id,
                    retiring.not_after
                ),
            };
        }
        record.retiring = Some(retiring.clone());
    }
    // Withdrawn: the replicas' verifiers no longer name it; done once none accepts it, or
    // once its not-after has passed (the replicas refuse it themselves then).
    let holding = replicas_where(observed, |s| s.accepted.contains(&retiring.id));
    let dropped = observed.is_some_and(|o| !o.is_empty()) && holding.is_empty();
    if !dropped && now <= retiring.not_after {
        return Verdict {
            ok: true,
            reason: reasons::IN_PROGRESS,
            message: format!(
                "rotating to licence {id}: the shadow registered with it; waiting for {} to stop accepting licence {}",
                listed(&holding),
                retiring.id
            ),
        };
    }
    record.retiring = None;
    record.rotated_at = Some(now);
    record.failures = 0;
    if let Some(problem) = &record.problem {
        return Verdict {
            ok: false,
            reason: reason_of(&problem.reason),
            message: problem.message.clone(),
        };
    }
    events.push(Event {
        warning: false,
        reason: "PasswordRotated",
        message: format!(
            "the shadow registered with licence {id} at every replica, and none accepts licence {} any more",
            retiring.id
        ),
    });
    Verdict {
        ok: true,
        reason: reasons::ROTATED,
        message: format!("rotated at {now}"),
    }
}

/// The replicas that answered with `what` true, or could not be asked (`None`: none
/// were asked).
fn replicas_where(observed: Option<&Observed>, what: impl Fn(&ReplicaSees) -> bool) -> Vec<&str> {
    observed.map_or_else(Vec::new, |o| {
        o.iter()
            .filter(|(_, seen)| seen.as_ref().map_or(true, &what))
            .map(|(name, _)| name.as_str())
            .collect()
    })
}

fn listed(replicas: &[&str]) -> String {
    if replicas.is_empty() {
        "every replica".to_owned()
    } else {
        replicas.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    fn pair(at: Timestamp, n: u32) -> Issued {
        Issued {
            password: Zeroizing::new(format!("password-{n}-secret")),
            licence: format!("skl1.licence-{n}"),
            verifier: format!("$argon2id$verifier-{n}"),
            issued_at: at,
        }
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn wanted() -> Wanted {
        Wanted {
            interval: Duration::from_hours(30 * 24),
            request: None,
            disabled: false,
            reference: "sites/dr-shadow".to_owned(),
        }
    }

    #[allow(clippy::unnecessary_wraps)] // what a replica's answer is
    fn sees(
        accepted: &[String],
        registered_with: Option<Timestamp>,
    ) -> Result<ReplicaSees, String> {
        Ok(ReplicaSees {
            accepted: accepted.to_vec(),
            registered_with,
        })
    }

    fn run(
        record: &Record,
        wanted: &Wanted,
        observed: Option<&Observed>,
        sibling: bool,
        now: Timestamp,
    ) -> Stepped {
        let mut n = 1;
        step(
            record,
            wanted,
            observed,
            sibling,
            now,
            |at| {
                n += 1;
                Ok(pair(at, n))
            },
            0.5,
        )
        .unwrap()
    }

    fn ids(record: &Record) -> Vec<(String, bool)> {
        record
            .accepted()
            .into_iter()
            .map(|a| (a.id, a.not_after.is_some()))
            .collect()
    }

    #[test]
    fn a_rotation_hands_over_only_once_every_replica_accepts_and_retires_after_registration() {
        let first = Record::first(pair(t(0), 1));
        let w = wanted();
        let due = due_at(&first, &w);
        let before = run(&first, &w, None, false, t(10));
        assert!(!before.changed, "nothing is due yet");
        let started = run(&first, &w, None, false, due);
        assert!(started.changed && !started.hand_over);
        let record = started.record;
        let new_id = record.rotation.as_ref().unwrap().next.id();
        assert_eq!(
            ids(&record),
            vec![(t(0).to_string(), false), (new_id.clone(), false)]
        );
        assert_eq!(record.current.issued_at, t(0), "the shadow keeps its pair");

        let old = vec![t(0).to_string()];
        let both = vec![t(0).to_string(), new_id.clone()];
        let one_behind: Observed = vec![
            ("km-0".to_owned(), sees(&both, Some(t(0)))),
            ("km-1".to_owned(), sees(&old, Some(t(0)))),
        ];
        let waiting = run(&record, &w, Some(&one_behind), false, due);
        assert!(!waiting.hand_over && waiting.verdict.ok);
        assert!(
            waiting.verdict.message.contains("km-1"),
            "{}",
            waiting.verdict.message
        );

        let all: Observed = vec![
            ("km-0".to_owned(), sees(&both, Some(t(0)))),
            ("km-1".to_owned(), sees(&both, Some(t(0)))),
        ];
        let handed = run(&record, &w, Some(&all), false, due);
        assert!(handed.hand_over);
        let record = handed.record;
        assert_eq!(record.current.id(), new_id);
        assert_eq!(
            ids(&record),
            vec![(new_id.clone(), false), (t(0).to_string(), true)]
        );

        let half: Observed = vec![
            (
                "km-0".to_owned(),
                sees(&both, Some(record.current.issued_at)),
            ),
            ("km-1".to_owned(), sees(&both, Some(t(0)))),
        ];
        let still = run(&record, &w, Some(&half), false, due);
        assert!(
            still.record.retiring.is_some(),
            "km-1 has not seen the new pair"
        );
        let everywhere: Observed = vec![
            (
                "km-0".to_owned(),
                sees(&both, Some(record.current.issued_at)),
            ),
            (
                "km-1".to_owned(),
                sees(&both, Some(record.current.issued_at)),
            ),
        ];
        let withdrawn = run(&record, &w, Some(&everywhere), false, due);
        assert_eq!(ids(&withdrawn.record), vec![(new_id.clone(), false)]);
        assert!(
            withdrawn.record.rotating(),
            "done only once no replica accepts the old one"
        );
        assert_eq!(withdrawn.verdict.reason, reasons::IN_PROGRESS);
        let dropped: Observed = vec![
            (
                "km-0".to_owned(),
                sees(
                    std::slice::from_ref(&new_id),
                    Some(record.current.issued_at),
                ),
            ),
            (
                "km-1".to_owned(),
                sees(
                    std::slice::from_ref(&new_id),
                    Some(record.current.issued_at),
                ),
            ),
        ];
        let done = run(&withdrawn.record, &w, Some(&dropped), false, due);
        assert!(!done.record.rotating());
        assert_eq!(done.record.rotated_at, Some(due));
        assert_eq!(done.verdict.reason, reasons::ROTATED);
        assert!(done.events.iter().any(|e| e.reason == "PasswordRotated"));
    }

    #[test]
    fn an_unreachable_replica_backs_off_and_keeps_the_working_password() {
        let mut record = Record::first(pair(t(0), 1));
        let w = Wanted {
            request: Some("now".to_owned()),
            ..wanted()
        };
        record = run(&record, &w, None, false, t(5)).record;
        let new_id = record.rotation.as_ref().unwrap().next.id();
        let observed: Observed = vec![
            (
                "km-0".to_owned(),
                sees(&[t(0).to_string(), new_id.clone()], None),
            ),
            ("km-1".to_owned(), Err("connection refused".to_owned())),
        ];
        let failed = run(&record, &w, Some(&observed), false, t(6));
        assert!(!failed.verdict.ok);
        assert_eq!(failed.verdict.reason, reasons::REPLICA_UNREACHABLE);
        assert!(failed.verdict.message.contains("km-1"));
        assert!(failed.events.iter().any(|e| e.warning));
        let record = failed.record;
        assert_eq!(record.current.issued_at, t(0), "the working pair stays");
        let retry_at = record.retry_at.unwrap();
        assert!(retry_at > t(6) && retry_at <= t(6 + 15));
        // Before the retry, even replicas that all answer are not acted on.
        let fine: Observed = vec![
            ("km-0".to_owned(), sees(std::slice::from_ref(&new_id), None)),
            ("km-1".to_owned(), sees(std::slice::from_ref(&new_id), None)),
        ];
        assert!(!run(&record, &w, Some(&fine), false, t(7)).hand_over);
        let again = run(&record, &w, Some(&observed), false, retry_at);
        assert_eq!(again.record.failures, 2);
        assert!(again.record.retry_at.unwrap() > retry_at);
        let resumed = run(
            &again.record,
            &w,
            Some(&fine),
            false,
            again.record.retry_at.unwrap(),
        );
        assert!(resumed.hand_over);
    }

    #[test]
    fn replicas_that_never_accept_fail_after_the_bound() {
        let mut record = Record::first(pair(t(0), 1));
        let w = Wanted {
            request: Some("now".to_owned()),
            ..wanted()
        };
        record = run(&record, &w, None, false, t(0)).record;
        let stale: Observed = vec![("km-0".to_owned(), sees(&[t(0).to_string()], None))];
        let early = run(&record, &w, Some(&stale), false, t(60));
        assert!(early.verdict.ok && early.record.problem.is_none());
        let late = run(&record, &w, Some(&stale), false, after(t(0), ACCEPT_BOUND));
        assert_eq!(late.verdict.reason, reasons::REPLICA_NOT_ACCEPTING);
        assert!(
            late.record.rotation.is_some(),
            "the rotation is kept, not dropped"
        );
    }

    #[test]
    fn two_shadows_of_one_key_manager_never_rotate_at_once() {
        let record = Record::first(pair(t(0), 1));
        let w = Wanted {
            request: Some("now".to_owned()),
            ..wanted()
        };
        let held = run(&record, &w, None, true, t(1));
        assert!(held.record.rotation.is_none());
        assert_eq!(held.verdict.reason, reasons::WAITING_FOR_SIBLING);
        assert!(
            held.record.handled_request.is_none(),
            "the request stays pending"
        );
        assert!(
            run(&record, &w, None, false, t(2))
                .record
                .rotation
                .is_some()
        );
    }

    #[test]
    fn a_request_is_acted_on_once() {
        let record = Record::first(pair(t(0), 1));
        let w = Wanted {
            request: Some("2026-12-02T20:00:00Z".to_owned()),
            ..wanted()
        };
        let started = run(&record, &w, None, false, t(1)).record;
        assert_eq!(started.handled_request, w.request);
        let mut idle = started.clone();
        idle.rotation = None;
        assert!(run(&idle, &w, None, false, t(2)).record.rotation.is_none());
    }

    #[test]
    fn the_overlap_is_bounded_and_its_expiry_reported() {
        let mut record = Record::first(pair(t(1000), 2));
        record.retiring = Some(Retiring {
            verifier: "$argon2id$verifier-1".to_owned(),
            id: t(0).to_string(),
            not_after: t(3600),
            handed_over_at: t(0),
            withdrawn: false,
        });
        let silent: Observed = vec![("km-0".to_owned(), Err("timed out".to_owned()))];
        assert!(
            run(&record, &wanted(), Some(&silent), false, t(3600))
                .record
                .retiring
                .is_some()
        );
        let expired = run(&record, &wanted(), Some(&silent), false, t(3601));
        assert!(expired.record.retiring.is_none());
        assert!(!expired.verdict.ok);
        assert_eq!(expired.verdict.reason, reasons::OVERLAP_EXPIRED);
        assert!(expired.verdict.message.contains("km-0"));
        let later = run(&expired.record, &wanted(), None, false, t(3700));
        assert_eq!(
            later.verdict.reason,
            reasons::OVERLAP_EXPIRED,
            "reported until the next rotation"
        );
    }

    #[test]
    fn a_disabled_shadow_is_not_rotated_and_enabling_it_issues_a_new_pair() {
        let record = Record::first(pair(t(0), 1));
        let off = Wanted {
            disabled: true,
            interval: Duration::from_hours(1),
            ..wanted()
        };
        let disabled = run(&record, &off, None, false, t(100_000));
        assert!(disabled.record.rotation.is_none());
        assert!(disabled.record.disabled);
        let on = Wanted {
            disabled: false,
            ..off
        };
        let enabled = run(&disabled.record, &on, None, false, t(100_001));
        assert_eq!(
            enabled.record.rotation.as_ref().unwrap().cause,
            Cause::Reenabled
        );
    }

    #[test]
    fn schedules_of_shadows_created_together_are_offset() {
        let record = Record::first(pair(t(0), 1));
        let a = due_at(
            &record,
            &Wanted {
                reference: "sites/a".to_owned(),
                ..wanted()
            },
        );
        let b = due_at(
            &record,
            &Wanted {
                reference: "sites/b".to_owned(),
                ..wanted()
            },
        );
        assert_ne!(a, b);
        let interval = after(t(0), wanted().interval);
        let latest = after(interval, wanted().interval / 10);
        assert!(a >= interval && a < latest && b >= interval && b < latest);
    }

    #[test]
    fn a_record_read_back_resumes_the_rotation_and_shows_no_secret() {
        let mut record = Record::first(pair(t(0), 1));
        record = run(
            &record,
            &Wanted {
                request: Some("x".to_owned()),
                ..wanted()
            },
            None,
            false,
            t(0),
        )
        .record;
        let read = Record::from_bytes(&record.to_bytes()).unwrap();
        assert_eq!(read, record);
        let debug = format!("{read:?}");
        for secret in ["password-", "licence-", "verifier-"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(
            Record::from_bytes(b"{\"format\": 1")
                .unwrap_err()
                .contains("line")
        );
        assert!(record.next_issue_time(t(-5)) > record.current.issued_at);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_ceiling() {
        assert_eq!(backoff(1, 0.5), FIRST_BACKOFF);
        assert_eq!(backoff(2, 0.5), FIRST_BACKOFF * 2);
        assert_eq!(backoff(30, 0.5), MAX_BACKOFF);
        assert!(backoff(1, 0.0) < backoff(1, 0.99));
    }
}
