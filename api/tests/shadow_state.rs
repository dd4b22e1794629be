//! The shadow state machine: each documented transition by example, and over arbitrary
//! sequences of polls, desired states, restarts and clock advances the properties the product
//! promises — fencing, permanent disablement, one server among siblings, determinism.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use jiff::Timestamp;
use proptest::prelude::*;
use shadowkeep_api::shadow::state::{
    DesiredShadowState, DisableReason, Identity, LimitClocks, Machine, Poll, Reason, ShadowState,
    SiblingReport, StaleLicence, Timings, TimingsError, Transition,
};

const GRACE: i64 = 10;
const POLL: i64 = 2;
const CONTINUOUS: i64 = 100;
const STANDALONE: i64 = 1000;
const BASE: i64 = 1_790_000_000;

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(BASE + secs).unwrap()
}

fn timings() -> Timings {
    let s = |n: i64| Duration::from_secs(n.unsigned_abs());
    Timings::new(s(GRACE), s(POLL), s(CONTINUOUS), s(STANDALONE)).unwrap()
}

fn identity(name: &str, priority: i32) -> Identity {
    Identity {
        name: name.to_owned(),
        priority,
    }
}

fn licence_time() -> Timestamp {
    t(-1)
}

fn machine(name: &str, priority: i32) -> Machine {
    let clocks = LimitClocks::registered(licence_time(), t(0));
    let (m, transition) = Machine::start(identity(name, priority), timings(), clocks, t(0));
    assert_eq!(transition, None);
    m
}

fn silent() -> Poll {
    Poll::default()
}

fn answered() -> Poll {
    Poll {
        replicas_answered: vec!["tape-eu1-0".to_owned()],
        siblings: vec![],
    }
}

fn sibling(name: &str, priority: i32, state: ShadowState) -> Poll {
    Poll {
        replicas_answered: vec![],
        siblings: vec![SiblingReport {
            name: name.to_owned(),
            priority,
            state,
        }],
    }
}

/// Polls with no replica answering every poll interval from `from` up to `to`, returning the
/// first time the machine was Serving.
fn poll_silently(m: &mut Machine, from: i64, to: i64) -> Option<i64> {
    let mut first = None;
    for s in (from..=to).step_by(usize::try_from(POLL).unwrap()) {
        m.poll(&silent(), t(s));
        if m.serves() && first.is_none() {
            first = Some(s);
        }
    }
    first
}

/// A machine that has been Serving since `t(GRACE)`.
fn serving() -> Machine {
    let mut m = machine("dr-site", 0);
    assert_eq!(poll_silently(&mut m, 0, GRACE), Some(GRACE));
    m
}

#[test]
fn a_new_shadow_shadows_and_serves_once_no_replica_answered_for_the_grace_period() {
    let mut m = machine("dr-site", 0);
    assert_eq!(m.state(), ShadowState::Shadowing);
    assert!(!m.serves());
    assert_eq!(m.next_poll(), Some(t(POLL)));
    assert_eq!(m.poll(&answered(), t(2)), None);
    // Last contact at 2: the grace period ends at 2 + GRACE, and not a second before.
    assert_eq!(m.poll(&silent(), t(2 + GRACE - 1)), None);
    let took_over = m.poll(&silent(), t(2 + GRACE)).unwrap();
    assert_eq!(
        (took_over.from, took_over.to, took_over.reason),
        (
            ShadowState::Shadowing,
            ShadowState::Serving,
            Reason::ReplicasSilent
        )
    );
    assert_eq!(took_over.reason.code(), "replicas-silent");
    assert_eq!(m.clocks().serving_since, Some(t(2 + GRACE)));
    assert_eq!(m.since(), t(2 + GRACE));
}

#[test]
fn takeover_comes_within_grace_plus_one_poll_interval_of_the_last_answer() {
    let mut m = machine("dr-site", 0);
    m.poll(&answered(), t(3));
    let first = poll_silently(&mut m, 4, 100).unwrap();
    assert!((3 + GRACE..=3 + GRACE + POLL).contains(&first), "{first}");
}

#[test]
fn a_serving_shadow_hands_back_as_soon_as_a_replica_answers() {
    let mut m = serving();
    let back = m.poll(&answered(), t(30)).unwrap();
    assert_eq!(
        (back.from, back.to, back.reason),
        (
            ShadowState::Serving,
            ShadowState::Shadowing,
            Reason::ReplicaAnswered
        )
    );
    assert_eq!(m.clocks().last_contact, t(30));
    assert_eq!(m.clocks().serving_since, None);
    // And it waits a full grace period again before serving.
    assert_eq!(poll_silently(&mut m, 31, 30 + GRACE - 1), None);
    assert!(m.poll(&silent(), t(30 + GRACE)).is_some());
}

#[test]
fn a_tick_never_starts_or_stops_serving_without_a_poll() {
    let mut m = machine("dr-site", 0);
    assert_eq!(m.tick(t(GRACE * 3)), None);
    assert_eq!(m.state(), ShadowState::Shadowing);
    let mut m = serving();
    assert_eq!(m.tick(t(GRACE + 5)), None);
    assert!(m.serves());
}

#[test]
fn a_shadow_defers_to_a_higher_priority_sibling_that_serves() {
    let mut m = machine("dr-site", 5);
    poll_silently(&mut m, 0, GRACE - 1);
    let deferred = m
        .poll(&sibling("branch", 9, ShadowState::Serving), t(GRACE))
        .unwrap();
    assert_eq!(
        (deferred.to, deferred.reason),
        (ShadowState::Deferring, Reason::SiblingServing)
    );
    // The sibling stops answering: this one takes over at the next poll.
    let took_over = m.poll(&silent(), t(GRACE + POLL)).unwrap();
    assert_eq!(
        (took_over.from, took_over.to),
        (ShadowState::Deferring, ShadowState::Serving)
    );
}

#[test]
fn equal_priorities_are_ranked_by_name() {
    // "alpha" outranks "bravo": bravo defers to a serving alpha and steps down for a ready one.
    let mut bravo = serving_as("bravo", 1);
    let step = bravo
        .poll(
            &sibling("alpha", 1, ShadowState::Deferring),
            t(GRACE + POLL),
        )
        .unwrap();
    assert_eq!(step.to, ShadowState::Deferring);
    // alpha keeps serving when it meets a serving bravo (the race of simultaneous takeovers).
    let mut alpha = serving_as("alpha", 1);
    assert_eq!(
        alpha.poll(&sibling("bravo", 1, ShadowState::Serving), t(GRACE + POLL)),
        None
    );
    assert!(alpha.serves());
}

fn serving_as(name: &str, priority: i32) -> Machine {
    let mut m = machine(name, priority);
    assert_eq!(poll_silently(&mut m, 0, GRACE), Some(GRACE));
    m
}

#[test]
fn a_shadow_never_joins_a_serving_sibling_even_one_of_lower_priority() {
    let mut high = machine("dr-site", 9);
    poll_silently(&mut high, 0, GRACE - 1);
    let step = high
        .poll(&sibling("branch", 1, ShadowState::Serving), t(GRACE))
        .unwrap();
    assert_eq!(step.to, ShadowState::Deferring);
    // The lower one, seeing the higher one ready, steps down; then the higher one serves.
    let mut low = serving_as("branch", 1);
    let down = low
        .poll(&sibling("dr-site", 9, ShadowState::Deferring), t(GRACE + 1))
        .unwrap();
    assert_eq!(down.to, ShadowState::Deferring);
    let up = high
        .poll(&sibling("branch", 1, ShadowState::Deferring), t(GRACE + 2))
        .unwrap();
    assert_eq!(up.to, ShadowState::Serving);
}

#[test]
fn deactivation_stops_polling_and_activation_or_a_restart_re_enables() {
    let mut m = serving();
    let off = m
        .set_desired(DesiredShadowState::Inactive, t(GRACE + 1))
        .unwrap();
    assert_eq!(
        (off.from, off.to, off.reason),
        (
            ShadowState::Serving,
            ShadowState::Inactive,
            Reason::Deactivated
        )
    );
    assert_eq!(m.next_poll(), None);
    // Polls that arrive anyway do not make it serve.
    assert_eq!(m.poll(&silent(), t(GRACE + 20)), None);
    let on = m.set_desired(DesiredShadowState::Active, t(50)).unwrap();
    assert_eq!(
        (on.to, on.reason),
        (ShadowState::Shadowing, Reason::Activated)
    );
    assert_eq!(m.next_poll(), Some(t(50 + POLL)));
    // It saw nothing while deactivated, so it watches a full grace period before serving.
    assert_eq!(poll_silently(&mut m, 51, 50 + GRACE - 1), None);
    assert!(m.poll(&silent(), t(50 + GRACE)).is_some());

    let mut m = serving();
    m.set_desired(DesiredShadowState::Inactive, t(GRACE + 1));
    let (restarted, _) =
        Machine::start(m.identity().clone(), m.timings(), m.clocks().clone(), t(40));
    assert_eq!(restarted.state(), ShadowState::Shadowing);
    assert!(restarted.next_poll().is_some());
}

#[test]
fn the_continuous_service_limit_makes_the_shadow_inactive_until_activated_or_restarted() {
    let mut m = serving();
    poll_silently(&mut m, GRACE + 1, GRACE + CONTINUOUS - 1);
    assert!(m.serves());
    let limit = m.poll(&silent(), t(GRACE + CONTINUOUS)).unwrap();
    assert_eq!(
        (limit.from, limit.to, limit.reason),
        (
            ShadowState::Serving,
            ShadowState::Inactive,
            Reason::ContinuousServiceLimit
        )
    );
    // Still polling, so a returning replica is seen.
    assert!(m.next_poll().is_some());
    let end = GRACE + CONTINUOUS;

    let mut activated = m.clone();
    let on = activated
        .set_desired(DesiredShadowState::Active, t(end + 5))
        .unwrap();
    assert_eq!(on.reason, Reason::Activated);
    let again = activated.poll(&silent(), t(end + 6)).unwrap();
    assert_eq!(again.to, ShadowState::Serving);
    assert_eq!(activated.clocks().serving_since, Some(t(end + 6)));

    let (mut restarted, _) = Machine::start(
        m.identity().clone(),
        m.timings(),
        m.clocks().clone(),
        t(end + 5),
    );
    assert_eq!(restarted.clocks().serving_since, None);
    // Restarted, it watches a full grace period before serving again.
    let first = poll_silently(&mut restarted, end + 6, end + 5 + GRACE + POLL).unwrap();
    assert!(
        (end + 5 + GRACE..=end + 5 + GRACE + POLL).contains(&first),
        "{first}"
    );

    let mut handed_back = m.clone();
    let back = handed_back.poll(&answered(), t(end + 5)).unwrap();
    assert_eq!(back.to, ShadowState::Shadowing);
}

#[test]
fn a_restart_mid_stretch_does_not_reset_the_continuous_service_clock() {
    let m = serving();
    let (mut restarted, _) =
        Machine::start(m.identity().clone(), m.timings(), m.clocks().clone(), t(40));
    assert_eq!(restarted.clocks().serving_since, Some(t(GRACE)));
    poll_silently(&mut restarted, 41, GRACE + CONTINUOUS - 1);
    assert!(restarted.serves());
    let limit = restarted.poll(&silent(), t(GRACE + CONTINUOUS)).unwrap();
    assert_eq!(limit.reason, Reason::ContinuousServiceLimit);
}

#[test]
fn disabled_by_hand_is_permanent_until_a_newer_licence() {
    let mut m = serving();
    let off = m
        .set_desired(DesiredShadowState::Disabled, t(GRACE + 1))
        .unwrap();
    assert_eq!(
        (off.to, off.reason),
        (ShadowState::Disabled, Reason::DisabledByHand)
    );
    assert_eq!(m.next_poll(), None);
    assert_eq!(m.set_desired(DesiredShadowState::Active, t(30)), None);
    assert_eq!(m.poll(&answered(), t(31)), None);
    assert_eq!(
        m.clocks().last_contact,
        t(0),
        "a disabled shadow does not poll"
    );
    let (restarted, transition) =
        Machine::start(m.identity().clone(), m.timings(), m.clocks().clone(), t(40));
    assert_eq!(
        (restarted.state(), transition),
        (ShadowState::Disabled, None)
    );
    let mut m = restarted;
    assert_eq!(
        m.relicense(licence_time(), t(41)),
        Err(StaleLicence {
            offered: licence_time(),
            current: licence_time()
        })
    );
    assert_eq!(m.state(), ShadowState::Disabled);
    let on = m.relicense(t(41), t(42)).unwrap().unwrap();
    assert_eq!(
        (on.from, on.to, on.reason),
        (
            ShadowState::Disabled,
            ShadowState::Shadowing,
            Reason::Relicensed
        )
    );
    assert_eq!(m.clocks(), &LimitClocks::registered(t(41), t(42)));
}

#[test]
fn the_standalone_limit_disables_and_a_restart_does_not_reset_it() {
    let mut m = machine("dr-site", 0);
    m.poll(&answered(), t(5));
    // Deactivated, it does not poll, but the standalone limit still runs.
    m.set_desired(DesiredShadowState::Inactive, t(6));
    assert_eq!(m.tick(t(5 + STANDALONE - 1)), None);
    let off = m.tick(t(5 + STANDALONE)).unwrap();
    assert_eq!(
        (off.from, off.to, off.reason),
        (
            ShadowState::Inactive,
            ShadowState::Disabled,
            Reason::StandaloneLimit
        )
    );
    assert_eq!(
        m.clocks().disabled.map(|d| d.reason),
        Some(DisableReason::StandaloneLimit)
    );
    let (restarted, _) = Machine::start(
        m.identity().clone(),
        m.timings(),
        m.clocks().clone(),
        t(5 + STANDALONE + 1),
    );
    assert_eq!(restarted.state(), ShadowState::Disabled);

    // A restart long after the last contact cannot reset the clock either: it starts Disabled.
    let m = machine("dr-site", 0);
    let (restarted, transition) = Machine::start(
        m.identity().clone(),
        m.timings(),
        m.clocks().clone(),
        t(STANDALONE),
    );
    assert_eq!(restarted.state(), ShadowState::Disabled);
    assert_eq!(
        transition.map(|t| (t.from, t.to, t.reason)),
        Some((
            ShadowState::Shadowing,
            ShadowState::Disabled,
            Reason::StandaloneLimit
        ))
    );
}

#[test]
fn limit_clocks_round_trip_and_refuse_unknown_fields() {
    let mut m = serving();
    m.set_desired(DesiredShadowState::Disabled, t(GRACE + 1));
    let json = serde_json::to_string(m.clocks()).unwrap();
    let back: LimitClocks = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, m.clocks());
    let err = serde_json::from_str::<LimitClocks>(
        r#"{"licenceIssuedAt":"2026-09-21T00:00:00Z","lastContact":"2026-09-21T00:00:00Z","servingSinse":null}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("servingSinse"), "{err}");
}

#[test]
fn zero_durations_are_refused_by_name() {
    let s = Duration::from_secs;
    assert_eq!(
        Timings::new(s(10), s(0), s(10), s(10)).unwrap_err(),
        TimingsError {
            name: "pollInterval",
            reason: "is zero"
        }
    );
    assert_eq!(
        Timings::new(s(10), s(1), s(10), Duration::MAX)
            .unwrap_err()
            .to_string(),
        "failed to accept shadow timings: standaloneLimit is too long"
    );
}

// ---- properties over arbitrary histories ----

#[derive(Clone, Debug)]
enum Op {
    Advance(i64),
    Poll {
        replica: bool,
        sibling: Option<ShadowState>,
    },
    Tick,
    Desired(DesiredShadowState),
    Restart,
    Relicense,
}

fn op() -> impl Strategy<Value = Op> {
    let state = prop_oneof![
        Just(ShadowState::Shadowing),
        Just(ShadowState::Deferring),
        Just(ShadowState::Serving),
        Just(ShadowState::Inactive),
        Just(ShadowState::Disabled),
    ];
    let desired = prop_oneof![
        Just(DesiredShadowState::Active),
        Just(DesiredShadowState::Inactive),
        Just(DesiredShadowState::Disabled),
    ];
    prop_oneof![
        6 => (0..=GRACE * 2).prop_map(Op::Advance),
        1 => (0..=STANDALONE).prop_map(Op::Advance),
        8 => (any::<bool>(), proptest::option::of(state))
            .prop_map(|(replica, sibling)| Op::Poll { replica, sibling }),
        1 => Just(Op::Tick),
        1 => desired.prop_map(Op::Desired),
        1 => Just(Op::Restart),
        1 => Just(Op::Relicense),
    ]
}

/// Runs `ops` on one machine, checking fencing and permanence at every step; returns the
/// transitions and the final clocks, for determinism.
fn run(ops: &[Op]) -> Result<(Vec<Transition>, LimitClocks), TestCaseError> {
    let mut now = 0;
    let mut m = machine("dr-site", 3);
    let mut last_answer = 0;
    let mut last_blind = 0;
    let mut licence = licence_time();
    let mut deactivated = false;
    let mut transitions = vec![];
    for op in ops {
        let was_disabled = m.state() == ShadowState::Disabled;
        let mut relicensed = false;
        let step = match op {
            Op::Advance(s) => {
                now += s;
                None
            }
            Op::Poll { replica, sibling } => {
                let poll = Poll {
                    replicas_answered: if *replica {
                        vec!["tape-eu1-1".to_owned()]
                    } else {
                        vec![]
                    },
                    siblings: sibling
                        .iter()
                        .map(|&state| SiblingReport {
                            name: "branch".to_owned(),
                            priority: 3,
                            state,
                        })
                        .collect(),
                };
                if *replica && !was_disabled {
                    last_answer = now;
                }
                m.poll(&poll, t(now))
            }
            Op::Tick => m.tick(t(now)),
            Op::Desired(d) => {
                // Deactivated by hand it stopped polling, so activation leaves it blind.
                if *d == DesiredShadowState::Active && deactivated {
                    last_blind = now;
                }
                deactivated = *d == DesiredShadowState::Inactive
                    || (deactivated && *d != DesiredShadowState::Active);
                m.set_desired(*d, t(now))
            }
            Op::Restart => {
                // Through the persisted form, as the server would.
                let json = serde_json::to_vec(m.clocks()).unwrap();
                let clocks = serde_json::from_slice(&json).unwrap();
                let (restarted, step) =
                    Machine::start(m.identity().clone(), timings(), clocks, t(now));
                m = restarted;
                last_blind = now;
                deactivated = false;
                step
            }
            Op::Relicense => {
                licence = licence
                    .max(t(now))
                    .checked_add(jiff::SignedDuration::from_secs(1))
                    .unwrap();
                relicensed = was_disabled;
                let step = m.relicense(licence, t(now)).unwrap();
                last_answer = now;
                if relicensed {
                    last_blind = now;
                }
                step
            }
        };
        if let Some(step) = step {
            prop_assert_eq!(step.to, m.state());
            prop_assert_ne!(step.from, step.to);
            transitions.push(step);
        }
        if m.serves() {
            // Fencing: never Serving while a replica answered within the grace period, nor
            // before a full grace period watched since a start, activation or re-licence.
            prop_assert!(
                now - last_answer >= GRACE,
                "served {}s after an answer",
                now - last_answer
            );
            prop_assert!(
                now - last_blind >= GRACE,
                "served {}s after going blind",
                now - last_blind
            );
        }
        if was_disabled && !relicensed {
            prop_assert_eq!(m.state(), ShadowState::Disabled);
        }
        if m.state() == ShadowState::Disabled {
            prop_assert!(m.clocks().disabled.is_some());
            prop_assert_eq!(m.next_poll(), None);
        }
    }
    Ok((transitions, m.clocks().clone()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn fencing_and_permanent_disablement_hold_over_any_history(ops in prop::collection::vec(op(), 0..80)) {
        run(&ops)?;
    }

    #[test]
    fn the_machine_is_deterministic(ops in prop::collection::vec(op(), 0..80)) {
        prop_assert_eq!(run(&ops)?, run(&ops)?);
    }

    /// Two sibling shadows that see each other (each poll reports the other's current state)
    /// are never both Serving, whatever the replicas, priorities and order of polls.
    #[test]
    fn siblings_that_see_each_other_never_both_serve(
        priorities in (0..3i32, 0..3i32),
        steps in prop::collection::vec((any::<bool>(), any::<bool>(), 0..=GRACE), 0..120),
    ) {
        let mut a = machine("alpha", priorities.0);
        let mut b = machine("bravo", priorities.1);
        let mut now = 0;
        for (which, replica, advance) in steps {
            now += advance;
            let (this, other) = if which { (&mut a, &b) } else { (&mut b, &a) };
            let poll = Poll {
                replicas_answered: if replica { vec!["tape-eu1-0".to_owned()] } else { vec![] },
                siblings: vec![SiblingReport {
                    name: other.identity().name.clone(),
                    priority: other.identity().priority,
                    state: other.state(),
                }],
            };
            this.poll(&poll, t(now));
            prop_assert!(!(a.serves() && b.serves()), "both serve at {}", now);
        }
    }
}
