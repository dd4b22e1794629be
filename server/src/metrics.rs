//! Prometheus metrics: KMIP requests by operation and result, their latency, keys held,
//! how far behind each peer the replica is, connections and admin requests refused, and
//! what merges did with the records they received.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of a KMIP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// The operation, e.g. `Get`.
    pub operation: String,
    /// `ok`, or the failure's label (e.g. `permission_denied`).
    pub result: String,
}

/// Labels naming a peer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// The peer's configured name.
    pub peer: String,
}

/// Labels naming an operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// The operation.
    pub operation: String,
}

/// Labels of a refusal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `kmip` or `admin`.
    pub listener: String,
    /// Why, e.g. `handshake_timeout` or `forbidden`.
    pub reason: String,
}

/// Labels of a merged record's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `stored`, `conflict` or `refused`.
    pub outcome: String,
}

/// Labels of a shadow's change of state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    /// The state before.
    pub from: String,
    /// The state after.
    pub to: String,
    /// The reason code.
    pub reason: String,
}

/// Labels naming a shadow state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// The state.
    pub state: String,
}

/// Registers `metric` under `name` and hands it back.
fn registered<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// The shadow metrics, registered apart from the rest.
struct ShadowMetrics {
    shadow_state: Family<StateLabels, Gauge>,
    shadow_transitions: Family<TransitionLabels, Counter>,
    shadow_mirrored: Counter,
    shadow_registrations: Family<OutcomeLabels, Counter>,
    shadow_duplicates: Gauge,
    replica_duplicates: Gauge,
    verifier_reloads: Family<OutcomeLabels, Counter>,
    credential_reloads: Family<OutcomeLabels, Counter>,
}

/// A counter family by outcome, `loaded` and `refused` present from the start at zero.
fn reloads(registry: &mut Registry, name: &str, help: &str) -> Family<OutcomeLabels, Counter> {
    let family = Family::<OutcomeLabels, Counter>::default();
    for outcome in ["loaded", "refused"] {
        let _ = family.get_or_create(&OutcomeLabels {
            outcome: outcome.to_owned(),
        });
    }
    registered(registry, name, help, family)
}

impl ShadowMetrics {
    fn register(registry: &mut Registry) -> Self {
        let shadow_state = registered(
            registry,
            "shadow_state",
            "A shadow's state: 1 for the current one",
            Family::<StateLabels, Gauge>::default(),
        );
        let shadow_transitions = registered(
            registry,
            "shadow_transitions",
            "A shadow's changes of state, by from, to and reason",
            Family::<TransitionLabels, Counter>::default(),
        );
        let shadow_mirrored = registered(
            registry,
            "shadow_mirrored_keys",
            "Key records a shadow took from replicas",
            Counter::default(),
        );
        let shadow_registrations = Family::<OutcomeLabels, Counter>::default();
        for code in shadowkeep_api::shadow::registration::RefusalCode::ALL {
            let _ = shadow_registrations.get_or_create(&OutcomeLabels {
                outcome: code.as_str().to_owned(),
            });
        }
        let shadow_registrations = registered(
            registry,
            "shadow_registrations",
            "Shadow registrations judged by this replica: registered, or the refusal code",
            shadow_registrations,
        );
        let shadow_duplicates = registered(
            registry,
            "shadow_duplicates",
            "Shadows for which this replica saw two instance ids (two hosts claiming one shadow)",
            Gauge::default(),
        );
        let replica_duplicates = registered(
            registry,
            "replica_duplicates",
            "Replica names under which two running instances called this replica (one server id and ordinal)",
            Gauge::default(),
        );
        let verifier_reloads = reloads(
            registry,
            "shadow_verifier_reloads",
            "Reads of a replica's shadow verifiers file: loaded, or refused (unreadable or malformed; the set in force is kept)",
        );
        let credential_reloads = reloads(
            registry,
            "shadow_credential_reloads",
            "A shadow's changed licence and password files: loaded, or refused (the pair in force is kept)",
        );
        Self {
            shadow_state,
            shadow_transitions,
            shadow_mirrored,
            shadow_registrations,
            shadow_duplicates,
            replica_duplicates,
            verifier_reloads,
            credential_reloads,
        }
    }
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// KMIP batch items served.
    pub requests: Family<OpLabels, Counter>,
    /// Time to serve a batch item.
    pub latency: Family<OperationLabels, Histogram>,
    /// Keys held (destroyed included).
    pub keys: Gauge,
    /// Seconds since the last successful exchange with each peer.
    pub replication_lag: Family<PeerLabels, Gauge<f64, AtomicU64>>,
    /// Failed pushes and pulls per peer.
    pub replication_failures: Family<PeerLabels, Counter>,
    /// Connections dropped before they were served, failed accepts, and admin requests
    /// refused, by listener and reason.
    pub refusals: Family<RefusalLabels, Counter>,
    /// Records received by merges, by what became of them.
    pub merge_records: Family<OutcomeLabels, Counter>,
    /// A shadow's state: 1 for the current one, 0 for the others.
    pub shadow_state: Family<StateLabels, Gauge>,
    /// A shadow's changes of state.
    pub shadow_transitions: Family<TransitionLabels, Counter>,
    /// Keys a shadow mirrored from replicas.
    pub shadow_mirrored: Counter,
    /// Shadow registrations a replica judged, by outcome (`registered` or a refusal code).
    pub shadow_registrations: Family<OutcomeLabels, Counter>,
    /// Shadows for which a replica saw two instance ids.
    pub shadow_duplicates: Gauge,
    /// Replica names under which two instances called this replica.
    pub replica_duplicates: Gauge,
    /// Reads of a replica's shadow verifiers file, by outcome (`loaded`, `refused`).
    pub verifier_reloads: Family<OutcomeLabels, Counter>,
    /// A shadow's changed licence and password, by outcome (`loaded`, `refused`).
    pub credential_reloads: Family<OutcomeLabels, Counter>,
    last_sync: Mutex<Vec<(String, Option<Instant>)>>,
    started: Instant,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers every metric under the `shadowkeep` prefix.
    pub fn new(peers: &[String]) -> Arc<Self> {
        let mut registry = Registry::with_prefix("shadowkeep");
        let requests = Family::<OpLabels, Counter>::default();
        registry.register("kmip_requests", "KMIP batch items served", requests.clone());
        let latency = Family::<OperationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0,
            ])
        });
        registry.register(
            "kmip_request_duration_seconds",
            "Time to serve a KMIP batch item",
            latency.clone(),
        );
        let keys = Gauge::default();
        registry.register(
            "keystore_keys",
            "Keys held, destroyed ones included",
            keys.clone(),
        );
        let replication_lag = Family::<PeerLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "replication_lag_seconds",
            "Seconds since the last successful exchange with a peer (since start when never)",
            replication_lag.clone(),
        );
        let replication_failures = Family::<PeerLabels, Counter>::default();
        registry.register(
            "replication_failures",
            "Failed pushes to and pulls from a peer",
            replication_failures.clone(),
        );
        let refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "refusals",
            "Connections dropped before they were served, failed accepts, and admin requests refused",
            refusals.clone(),
        );
        let merge_records = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "merge_records",
            "Records received by keystore merges: stored, conflicting (quarantined) or refused",
            merge_records.clone(),
        );
        let shadows = ShadowMetrics::register(&mut registry);
        Arc::new(Self {
            registry,
            replica_duplicates: shadows.replica_duplicates,
            shadow_state: shadows.shadow_state,
            shadow_transitions: shadows.shadow_transitions,
            shadow_mirrored: shadows.shadow_mirrored,
            shadow_registrations: shadows.shadow_registrations,
            shadow_duplicates: shadows.shadow_duplicates,
            verifier_reloads: shadows.verifier_reloads,
            credential_reloads: shadows.credential_reloads,
            requests,
            latency,
            keys,
            replication_lag,
            replication_failures,
            refusals,
            merge_records,
            last_sync: Mutex::new(peers.iter().map(|p| (p.clone(), None)).collect()),
            started: Instant::now(),
        })
    }

    /// Records a successful exchange with `peer`.
    pub fn synced(&self, peer: &str) {
        let mut last = self
            .last_sync
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(entry) = last.iter_mut().find(|(p, _)| p == peer) {
            entry.1 = Some(Instant::now());
        }
    }

    /// Records a failed exchange with `peer`.
    pub fn failed(&self, peer: &str) {
        self.replication_failures
            .get_or_create(&PeerLabels {
                peer: peer.to_owned(),
            })
            .inc();
    }

    /// Counts a refusal on `listener` (`kmip` or `admin`) for `reason`.
    pub fn refused(&self, listener: &str, reason: &str) {
        self.refusals
            .get_or_create(&RefusalLabels {
                listener: listener.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts `n` merged records that ended as `outcome`.
    pub fn merged(&self, outcome: &str, n: usize) {
        if n > 0 {
            self.merge_records
                .get_or_create(&OutcomeLabels {
                    outcome: outcome.to_owned(),
                })
                .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
        }
    }

    /// Sets the shadow state gauge to `state`.
    pub fn shadow_state(&self, state: shadowkeep_api::shadow::state::ShadowState) {
        use shadowkeep_api::shadow::state::ShadowState as S;
        for s in [
            S::Shadowing,
            S::Serving,
            S::Deferring,
            S::Inactive,
            S::Disabled,
        ] {
            self.shadow_state
                .get_or_create(&StateLabels {
                    state: format!("{s:?}"),
                })
                .set(i64::from(s == state));
        }
    }

    /// Counts a shadow's transition and sets the state gauge.
    pub fn shadow_transition(&self, t: &shadowkeep_api::shadow::state::Transition) {
        self.shadow_transitions
            .get_or_create(&TransitionLabels {
                from: format!("{:?}", t.from),
                to: format!("{:?}", t.to),
                reason: t.reason.code().to_owned(),
            })
            .inc();
        self.shadow_state(t.to);
    }

    /// Counts `n` key records mirrored.
    pub fn mirrored(&self, n: usize) {
        self.shadow_mirrored
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// Counts a read of the verifiers file that ended `loaded` or `refused`.
    pub fn verifier_reload(&self, outcome: &str) {
        self.verifier_reloads
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts a changed licence and password pair a shadow `loaded` or `refused`.
    pub fn credential_reload(&self, outcome: &str) {
        self.credential_reloads
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts a registration judged as `outcome`.
    pub fn registration(&self, outcome: &str) {
        self.shadow_registrations
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The text exposition, with the lag gauges brought up to date.
    pub fn encode(&self, keys: usize) -> String {
        self.keys.set(i64::try_from(keys).unwrap_or(i64::MAX));
        let last = self
            .last_sync
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (peer, at) in last.iter() {
            let since = at.unwrap_or(self.started).elapsed().as_secs_f64();
            self.replication_lag
                .get_or_create(&PeerLabels { peer: peer.clone() })
                .set(since);
        }
        drop(last);
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}
