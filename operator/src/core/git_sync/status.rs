//! A GitSource's status after a step, computed purely from the previous status and the
//! step, so that the operator and `up --git` report the same.
//!
//! Conditions follow kstatus: `Ready`; `Reconciling` while a failure may pass by itself
//! (a fetch or an apply is retried); `Stalled` while only a person can move it on (a held,
//! invalid, unsigned or empty head).

use std::fmt::Write as _;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use shadowkeep_api::crd::{AppliedObject, GitSourceStatus};

use super::{Branch, Outcome, Step, short};
use crate::core::conditions::{condition, merge};

/// Condition types.
pub mod types {
    /// The last applied revision is the branch's head.
    pub const READY: &str = "Ready";
    /// A step failed in a way the next one may get past.
    pub const RECONCILING: &str = "Reconciling";
    /// The head waits for a person: accept its risks, fix it, sign it.
    pub const STALLED: &str = "Stalled";
}

/// Condition reasons.
pub mod reasons {
    /// The head is applied.
    pub const SUCCEEDED: &str = "Succeeded";
    /// The head has risks nobody accepted.
    pub const RISK_HELD: &str = "RiskHeld";
    /// The head does not validate.
    pub const INVALID_HEAD: &str = "InvalidHead";
    /// The head's signature is missing or not allowed.
    pub const VERIFICATION_FAILED: &str = "VerificationFailed";
    /// The head holds no shadowkeep object.
    pub const EMPTY_SOURCE: &str = "EmptySource";
    /// The branch could not be fetched.
    pub const FETCH_FAILED: &str = "FetchFailed";
    /// An object of the head was refused.
    pub const APPLY_FAILED: &str = "ApplyFailed";
    /// The spec cannot be acted on (a Secret it names is missing or lacks a key).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Nothing to report.
    pub const AS_EXPECTED: &str = "AsExpected";
    /// The branch was force-pushed (an Event's reason).
    pub const FORCE_PUSHED: &str = "ForcePushed";
}

/// The status after `step`, from `previous`.
pub fn after(
    previous: &GitSourceStatus,
    branch: &Branch,
    step: &Step,
    generation: Option<i64>,
    now: &Time,
) -> GitSourceStatus {
    let mut next = previous.clone();
    next.observed_generation = generation;
    let force = step
        .force_push
        .as_ref()
        .map(|f| format!(" ({f})"))
        .unwrap_or_default();
    let c = |type_, status, reason, message: &str| {
        condition(type_, status, reason, message.to_owned(), generation, now)
    };
    let (ready, reconciling, stalled) = match &step.outcome {
        Outcome::Applied {
            commit,
            inventory,
            pruned,
            orphaned,
            signed_by,
        } => {
            next.last_attempted_revision = Some(branch.revision(commit));
            next.last_applied_revision = Some(branch.revision(commit));
            next.held_risks.clear();
            next.inventory.clone_from(inventory);
            next.orphaned.clone_from(orphaned);
            let mut message = applied_message(branch, commit, inventory.len(), pruned, orphaned);
            if let Some(signer) = signed_by {
                let _ = write!(message, " (signed by {signer})");
            }
            message.push_str(&force);
            (
                c(types::READY, true, reasons::SUCCEEDED, &message),
                c(types::RECONCILING, false, reasons::AS_EXPECTED, ""),
                c(types::STALLED, false, reasons::AS_EXPECTED, ""),
            )
        }
        Outcome::Held { commit, risks } => {
            next.last_attempted_revision = Some(branch.revision(commit));
            next.held_risks.clone_from(risks);
            let listed: Vec<String> = risks
                .iter()
                .map(|r| format!("{}: {}", r.severity, r.message))
                .collect();
            let message = format!(
                "{} is held for {} risks ({}); to apply it anyway, accept them: annotate the GitSource shadowkeep.io/accept-risks={commit}{force}",
                branch.revision(commit),
                risks.len(),
                listed.join("; ")
            );
            (
                c(types::READY, false, reasons::RISK_HELD, &message),
                c(types::RECONCILING, false, reasons::AS_EXPECTED, ""),
                c(types::STALLED, true, reasons::RISK_HELD, &message),
            )
        }
        Outcome::Refused {
            commit,
            reason,
            message,
        } => {
            if let Some(commit) = commit {
                next.last_attempted_revision = Some(branch.revision(commit));
            }
            next.held_risks.clear();
            let message = format!("{message}{force}");
            (
                c(types::READY, false, reason, &message),
                c(types::RECONCILING, false, reasons::AS_EXPECTED, ""),
                c(types::STALLED, true, reason, &message),
            )
        }
        Outcome::Failed { message } => {
            let message = format!("{message}; nothing applied, nothing pruned");
            (
                c(types::READY, false, reasons::FETCH_FAILED, &message),
                c(types::RECONCILING, true, reasons::FETCH_FAILED, &message),
                c(types::STALLED, false, reasons::AS_EXPECTED, ""),
            )
        }
        Outcome::ApplyFailed { commit, message } => {
            next.last_attempted_revision = Some(branch.revision(commit));
            let message = format!("{}: {message}{force}", short(commit));
            (
                c(types::READY, false, reasons::APPLY_FAILED, &message),
                c(types::RECONCILING, true, reasons::APPLY_FAILED, &message),
                c(types::STALLED, false, reasons::AS_EXPECTED, ""),
            )
        }
    };
    next.conditions = merge(&previous.conditions, vec![ready, reconciling, stalled]);
    next
}

fn applied_message(
    branch: &Branch,
    commit: &str,
    objects: usize,
    pruned: &[AppliedObject],
    orphaned: &[AppliedObject],
) -> String {
    let mut message = format!("applied {}: {objects} objects", branch.revision(commit));
    if !pruned.is_empty() {
        let _ = write!(message, ", {} pruned", pruned.len());
    }
    if !orphaned.is_empty() {
        let names: Vec<String> = orphaned.iter().map(ToString::to_string).collect();
        let _ = write!(
            message,
            "; removed from the branch but kept (never deleted by sync): {}",
            names.join(", ")
        );
    }
    message
}

/// The status when the spec cannot be acted on: nothing fetched, applied or pruned.
pub fn invalid_spec(
    previous: &GitSourceStatus,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> GitSourceStatus {
    let mut next = previous.clone();
    next.observed_generation = generation;
    let c = |type_, status, reason, message: &str| {
        condition(type_, status, reason, message.to_owned(), generation, now)
    };
    next.conditions = merge(
        &previous.conditions,
        vec![
            c(types::READY, false, reasons::INVALID_SPEC, message),
            c(types::RECONCILING, false, reasons::AS_EXPECTED, ""),
            c(types::STALLED, true, reasons::INVALID_SPEC, message),
        ],
    );
    next
}
