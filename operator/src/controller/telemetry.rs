//! The operator's own telemetry: Prometheus counters of reconciles and failures, their
//! duration, and `/healthz` and `/readyz`, served over HTTP.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Labels of a reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// The kind reconciled.
    pub kind: String,
}

/// Labels of a failed reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The kind reconciled.
    pub kind: String,
    /// The error's category.
    pub category: String,
}

/// Reconcile metrics.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ReconcileLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: Family<ReconcileLabels, Histogram>,
    /// Set once the controllers run (and, with leader election, this replica leads).
    pub ready: AtomicBool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers the metrics under the `shadowkeep_operator` prefix.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("shadowkeep_operator");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        let failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "reconcile_failures",
            "Reconciles that failed",
            failures.clone(),
        );
        let duration = Family::<ReconcileLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0])
        });
        registry.register(
            "reconcile_duration_seconds",
            "Time to reconcile",
            duration.clone(),
        );
        Arc::new(Self {
            registry,
            reconciles,
            failures,
            duration,
            ready: AtomicBool::new(false),
        })
    }

    /// Records one reconcile of `kind`: how long, and its error's category if it failed.
    pub fn record(&self, kind: &str, took: Duration, failure: Option<&str>) {
        let labels = ReconcileLabels {
            kind: kind.to_owned(),
        };
        self.reconciles.get_or_create(&labels).inc();
        self.duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if let Some(category) = failure {
            self.failures
                .get_or_create(&FailureLabels {
                    kind: kind.to_owned(),
                    category: category.to_owned(),
                })
                .inc();
        }
    }

    /// Counts one reconcile of `kind` and measures it until the guard is dropped.
    pub fn count_and_measure(&self, kind: &str) -> Measure<'_> {
        Measure {
            metrics: self,
            kind: kind.to_owned(),
            started: Instant::now(),
            failure: Mutex::new(None),
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

/// One reconcile being measured: recorded, with its duration, when dropped.
pub struct Measure<'a> {
    metrics: &'a Metrics,
    kind: String,
    started: Instant,
    failure: Mutex<Option<&'static str>>,
}

impl Measure<'_> {
    /// Records that the reconcile failed, in `category`.
    pub fn failed(&self, category: &'static str) {
        *self
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(category);
    }
}

impl Drop for Measure<'_> {
    fn drop(&mut self) {
        let failure = *self
            .failure
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.metrics
            .record(&self.kind, self.started.elapsed(), failure);
    }
}

impl std::fmt::Debug for Measure<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Measure")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the process ends.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(m): State<Arc<Metrics>>| async move {
                if m.ready.load(Ordering::Acquire) {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "waiting\n")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    m.encode(),
                )
                    .into_response()
            }),
        )
        .with_state(metrics);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "telemetry server stopped");
    }
}

/// Marks the operator ready.
pub fn set_ready(metrics: &Metrics) {
    metrics.ready.store(true, Ordering::Release);
}
