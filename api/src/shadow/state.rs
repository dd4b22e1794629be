//! The shadow state machine (KeyServer's Shadowing, Serving, Deferring, Inactive, Disabled) as
//! a pure type: the server feeds it poll results, the operator's desired state and the time,
//! and logs, counts and persists what it returns.
//!
//! The rules, in the order they are applied at each step:
//!
//! 1. **Disabled** stays Disabled until a newer licence is accepted ([`Machine::relicense`]).
//!    A shadow becomes Disabled by hand, or when no replica answered for the standalone limit.
//! 2. **Inactive** while deactivated by hand (no polling; activation or a restart re-enables).
//! 3. **Shadowing** while a replica answered within the takeover grace period, and for one
//!    grace period after a start or an activation, before which the shadow has seen nothing.
//! 4. **Inactive** when the current stretch of service reached the continuous-service limit
//!    (polling continues; activation, a restart or a replica answering re-enables).
//! 5. **Deferring** when a sibling shadow that answers outranks this one (priority, then name)
//!    and is Serving or Deferring (ready to serve), or when any answering sibling is Serving
//!    and this one is not yet: a serving sibling is never joined, only relieved.
//! 6. **Serving** otherwise.
//!
//! Fencing rests on rule 3: Serving needs a full grace period in which no replica answered.
//! Rule 5 keeps two shadows that see each other from serving at once; priority decides who
//! serves, by the lower one stepping down when the higher one is ready.
//!
//! The limit clocks ([`LimitClocks`]) are the part to persist: the standalone limit runs from
//! the last contact, whatever happens to the process.

use std::fmt;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

pub use crate::crd::{DesiredShadowState, ShadowState};

/// The durations that drive the machine, from the Shadow's spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    takeover_grace_period: SignedDuration,
    poll_interval: SignedDuration,
    continuous_service_limit: SignedDuration,
    standalone_limit: SignedDuration,
}

impl Timings {
    /// Checks that every duration is positive and representable.
    pub fn new(
        takeover_grace_period: Duration,
        poll_interval: Duration,
        continuous_service_limit: Duration,
        standalone_limit: Duration,
    ) -> Result<Self, TimingsError> {
        let check = |name: &'static str, d: Duration| {
            if d.is_zero() {
                return Err(TimingsError {
                    name,
                    reason: "is zero",
                });
            }
            SignedDuration::try_from(d).map_err(|_| TimingsError {
                name,
                reason: "is too long",
            })
        };
        Ok(Self {
            takeover_grace_period: check("takeoverGracePeriod", takeover_grace_period)?,
            poll_interval: check("pollInterval", poll_interval)?,
            continuous_service_limit: check("continuousServiceLimit", continuous_service_limit)?,
            standalone_limit: check("standaloneLimit", standalone_limit)?,
        })
    }

    /// How long no replica may answer before the shadow serves.
    pub fn takeover_grace_period(&self) -> SignedDuration {
        self.takeover_grace_period
    }

    /// How often the shadow polls the replicas and siblings.
    pub fn poll_interval(&self) -> SignedDuration {
        self.poll_interval
    }

    /// Longest stretch of service before the shadow goes Inactive.
    pub fn continuous_service_limit(&self) -> SignedDuration {
        self.continuous_service_limit
    }

    /// Longest time without contact before the shadow disables itself.
    pub fn standalone_limit(&self) -> SignedDuration {
        self.standalone_limit
    }
}

/// Why a set of timings is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("failed to accept shadow timings: {name} {reason}")]
pub struct TimingsError {
    /// The field at fault.
    pub name: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Who this shadow is among its siblings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The Shadow's name.
    pub name: String,
    /// The Shadow's priority; higher serves first.
    pub priority: i32,
}

impl Identity {
    /// Whether `other` serves before this shadow: higher priority, then the smaller name.
    fn outranked_by(&self, other: &SiblingReport) -> bool {
        (other.priority, std::cmp::Reverse(other.name.as_str()))
            > (self.priority, std::cmp::Reverse(self.name.as_str()))
    }
}

/// A sibling shadow (same KeyManager) that answered a poll, and what it said it was doing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SiblingReport {
    /// The sibling's Shadow name.
    pub name: String,
    /// The sibling's priority.
    pub priority: i32,
    /// The sibling's state as it reported it.
    pub state: ShadowState,
}

/// What one round of polling found. Only those that answered on the admin API count: a
/// replica that accepts a connection but does not answer is gone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Poll {
    /// The replicas of the KeyManager that answered.
    pub replicas_answered: Vec<String>,
    /// The sibling shadows that answered.
    pub siblings: Vec<SiblingReport>,
}

/// Why a shadow was disabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DisableReason {
    /// The operator (or a person) disabled it.
    ByHand,
    /// No replica answered for the standalone limit.
    StandaloneLimit,
}

/// A permanent disablement, cleared only by a newer licence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Disablement {
    /// Why.
    pub reason: DisableReason,
    /// When.
    pub at: Timestamp,
}

/// The clocks a restart must not reset. The server persists them (fsynced) after every
/// transition and every contact, and hands them back to [`Machine::start`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitClocks {
    /// The `issuedAt` of the licence these clocks belong to: only a newer one re-enables a
    /// disabled shadow.
    pub licence_issued_at: Timestamp,
    /// When a replica last answered (registration counts).
    pub last_contact: Timestamp,
    /// Start of the current stretch of service, while one runs or after it hit the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_since: Option<Timestamp>,
    /// Set once the shadow is disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<Disablement>,
}

impl LimitClocks {
    /// The clocks of a shadow that has just registered with licence `licence_issued_at`.
    pub fn registered(licence_issued_at: Timestamp, at: Timestamp) -> Self {
        Self {
            licence_issued_at,
            last_contact: at,
            serving_since: None,
            disabled: None,
        }
    }
}

/// Why the state changed. [`Reason::code`] is a stable label for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The process started (or restarted) and judges nothing for one grace period.
    Started,
    /// A replica answered.
    ReplicaAnswered,
    /// No replica answered for the takeover grace period.
    ReplicasSilent,
    /// A sibling shadow serves, or outranks this one and is ready to.
    SiblingServing,
    /// The operator deactivated the shadow.
    Deactivated,
    /// The operator activated the shadow.
    Activated,
    /// The stretch of service reached the continuous-service limit.
    ContinuousServiceLimit,
    /// The operator disabled the shadow.
    DisabledByHand,
    /// No replica answered for the standalone limit.
    StandaloneLimit,
    /// A newer licence was accepted.
    Relicensed,
}

impl Reason {
    /// The stable label.
    pub fn code(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::ReplicaAnswered => "replica-answered",
            Self::ReplicasSilent => "replicas-silent",
            Self::SiblingServing => "sibling-serving",
            Self::Deactivated => "deactivated",
            Self::Activated => "activated",
            Self::ContinuousServiceLimit => "continuous-service-limit",
            Self::DisabledByHand => "disabled-by-hand",
            Self::StandaloneLimit => "standalone-limit",
            Self::Relicensed => "relicensed",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A change of state, for the server to log and count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    /// The state before.
    pub from: ShadowState,
    /// The state after.
    pub to: ShadowState,
    /// Why.
    pub reason: Reason,
    /// When.
    pub at: Timestamp,
}

/// Why a licence did not re-enable the shadow.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "failed to re-enable the shadow: the licence was issued at {offered}, not after the current one ({current})"
)]
pub struct StaleLicence {
    /// `issuedAt` of the licence offered.
    pub offered: Timestamp,
    /// `issuedAt` of the licence in force.
    pub current: Timestamp,
}

/// One shadow's state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    identity: Identity,
    timings: Timings,
    clocks: LimitClocks,
    state: ShadowState,
    since: Timestamp,
    /// Deactivated by hand; deliberately not persisted, since a restart re-enables.
    deactivated: bool,
    /// Since when the shadow has been watching the replicas; before that it saw nothing, so
    /// silence before it is no evidence that they are gone.
    watching_since: Timestamp,
    last_step: Timestamp,
}

impl Machine {
    /// The machine of a process starting at `now` with persisted `clocks`. A restart
    /// re-enables a shadow whose stretch of service reached the continuous-service limit;
    /// nothing else of the clocks is forgiven. The transition, if any, is the standalone limit
    /// running out while the process was down.
    pub fn start(
        identity: Identity,
        timings: Timings,
        mut clocks: LimitClocks,
        now: Timestamp,
    ) -> (Self, Option<Transition>) {
        if clocks
            .serving_since
            .is_some_and(|s| now.duration_since(s) >= timings.continuous_service_limit)
        {
            clocks.serving_since = None;
        }
        let state = if clocks.disabled.is_some() {
            ShadowState::Disabled
        } else {
            ShadowState::Shadowing
        };
        let mut machine = Self {
            identity,
            timings,
            clocks,
            state,
            since: now,
            deactivated: false,
            watching_since: now,
            last_step: now,
        };
        let transition = machine.tick(now);
        (machine, transition)
    }

    /// The current state.
    pub fn state(&self) -> ShadowState {
        self.state
    }

    /// The state the operator last asked for, as far as it still holds: `Disabled` while a
    /// disablement by hand stands, `Inactive` while deactivated (a restart forgets it),
    /// else `Active`. The operator tells the shadow again whenever this differs from what it
    /// wants, so a restarted shadow is deactivated again, and one that went Inactive at its
    /// continuous-service limit is not re-activated by a repeated `Active`.
    pub fn desired(&self) -> DesiredShadowState {
        if self
            .clocks
            .disabled
            .is_some_and(|d| d.reason == DisableReason::ByHand)
        {
            DesiredShadowState::Disabled
        } else if self.deactivated {
            DesiredShadowState::Inactive
        } else {
            DesiredShadowState::Active
        }
    }

    /// When the current state began.
    pub fn since(&self) -> Timestamp {
        self.since
    }

    /// The clocks to persist.
    pub fn clocks(&self) -> &LimitClocks {
        &self.clocks
    }

    /// The shadow's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The timings in force.
    pub fn timings(&self) -> Timings {
        self.timings
    }

    /// Whether the shadow may answer KMIP now.
    pub fn serves(&self) -> bool {
        self.state == ShadowState::Serving
    }

    /// When to poll next; `None` while deactivated by hand or disabled, which do not poll.
    pub fn next_poll(&self) -> Option<Timestamp> {
        if self.deactivated || self.clocks.disabled.is_some() {
            return None;
        }
        self.last_step.checked_add(self.timings.poll_interval).ok()
    }

    /// Takes in one round of polling done at `now`.
    pub fn poll(&mut self, poll: &Poll, now: Timestamp) -> Option<Transition> {
        if self.clocks.disabled.is_none() && !poll.replicas_answered.is_empty() {
            self.clocks.last_contact = self.clocks.last_contact.max(now);
            self.clocks.serving_since = None;
        }
        let decided = self.decide(now, Some(&poll.siblings));
        self.apply(decided, now)
    }

    /// Re-judges the limits at `now` without new evidence: it may make the shadow Inactive
    /// or Disabled, never make it serve or stop serving for lack of a poll.
    pub fn tick(&mut self, now: Timestamp) -> Option<Transition> {
        let decided = self.decide(now, None);
        self.apply(decided, now)
    }

    /// Takes in the state the operator wants.
    pub fn set_desired(
        &mut self,
        desired: DesiredShadowState,
        now: Timestamp,
    ) -> Option<Transition> {
        match desired {
            DesiredShadowState::Active => {
                if self.deactivated {
                    self.deactivated = false;
                    // It did not poll while deactivated, so it has seen nothing since.
                    self.watching_since = now;
                }
                if self.exhausted(now) {
                    self.clocks.serving_since = None;
                }
            }
            DesiredShadowState::Inactive => self.deactivated = true,
            DesiredShadowState::Disabled => {
                if self.clocks.disabled.is_none() {
                    self.clocks.disabled = Some(Disablement {
                        reason: DisableReason::ByHand,
                        at: now,
                    });
                }
            }
        }
        let (to, reason) = self.decide(now, None);
        let reason = match (desired, to) {
            (DesiredShadowState::Active, ShadowState::Shadowing) if self.state != to => {
                Reason::Activated
            }
            _ => reason,
        };
        self.apply((to, reason), now)
    }

    /// Accepts a newer licence (and with it a new password, checked at registration): clears
    /// a disablement and counts as contact. A licence not newer than the current one changes
    /// nothing.
    pub fn relicense(
        &mut self,
        issued_at: Timestamp,
        now: Timestamp,
    ) -> Result<Option<Transition>, StaleLicence> {
        if issued_at <= self.clocks.licence_issued_at {
            return Err(StaleLicence {
                offered: issued_at,
                current: self.clocks.licence_issued_at,
            });
        }
        let was_disabled = self.clocks.disabled.is_some();
        self.clocks = LimitClocks::registered(issued_at, self.clocks.last_contact.max(now));
        if was_disabled {
            self.watching_since = now;
        }
        let (to, reason) = self.decide(now, None);
        let reason = if was_disabled {
            Reason::Relicensed
        } else {
            reason
        };
        Ok(self.apply((to, reason), now))
    }

    fn exhausted(&self, now: Timestamp) -> bool {
        self.clocks
            .serving_since
            .is_some_and(|s| now.duration_since(s) >= self.timings.continuous_service_limit)
    }

    /// The state the rules give at `now`. `siblings` is `None` when there is no fresh poll,
    /// in which case the shadow neither starts nor stops serving on that account.
    fn decide(
        &mut self,
        now: Timestamp,
        siblings: Option<&[SiblingReport]>,
    ) -> (ShadowState, Reason) {
        if let Some(disabled) = self.clocks.disabled {
            return (ShadowState::Disabled, disabled_reason(disabled.reason));
        }
        if now.duration_since(self.clocks.last_contact) >= self.timings.standalone_limit {
            self.clocks.disabled = Some(Disablement {
                reason: DisableReason::StandaloneLimit,
                at: now,
            });
            self.clocks.serving_since = None;
            return (ShadowState::Disabled, Reason::StandaloneLimit);
        }
        if self.deactivated {
            return (ShadowState::Inactive, Reason::Deactivated);
        }
        let grace = self.timings.takeover_grace_period;
        if now.duration_since(self.clocks.last_contact) < grace {
            return (ShadowState::Shadowing, Reason::ReplicaAnswered);
        }
        if now.duration_since(self.watching_since) < grace {
            return (ShadowState::Shadowing, Reason::Started);
        }
        if self.exhausted(now) {
            return (ShadowState::Inactive, Reason::ContinuousServiceLimit);
        }
        let Some(siblings) = siblings else {
            return match self.state {
                // Leaving Inactive or Disabled for lack of evidence goes to the state that
                // cannot serve; the next poll decides the rest.
                ShadowState::Inactive | ShadowState::Disabled => {
                    (ShadowState::Shadowing, Reason::Activated)
                }
                state => (state, Reason::ReplicasSilent),
            };
        };
        let serving = self.state == ShadowState::Serving;
        let defer = siblings
            .iter()
            .filter(|s| s.name != self.identity.name)
            .any(|s| match s.state {
                ShadowState::Serving => !serving || self.identity.outranked_by(s),
                ShadowState::Deferring => self.identity.outranked_by(s),
                ShadowState::Shadowing | ShadowState::Inactive | ShadowState::Disabled => false,
            });
        if defer {
            self.clocks.serving_since = None;
            (ShadowState::Deferring, Reason::SiblingServing)
        } else {
            self.clocks.serving_since.get_or_insert(now);
            (ShadowState::Serving, Reason::ReplicasSilent)
        }
    }

    fn apply(&mut self, (to, reason): (ShadowState, Reason), now: Timestamp) -> Option<Transition> {
        self.last_step = self.last_step.max(now);
        if to == self.state {
            return None;
        }
        let transition = Transition {
            from: self.state,
            to,
            reason,
            at: now,
        };
        self.state = to;
        self.since = now;
        Some(transition)
    }
}

fn disabled_reason(reason: DisableReason) -> Reason {
    match reason {
        DisableReason::ByHand => Reason::DisabledByHand,
        DisableReason::StandaloneLimit => Reason::StandaloneLimit,
    }
}
