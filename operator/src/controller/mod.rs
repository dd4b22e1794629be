//! The controllers: the Kubernetes shell around the control core ([`crate::core`]). Each
//! reconcile is a pipeline — dereference (every read), validate (pure), material and carry
//! (the core, the only stateful step), build (pure, in [`crate::build`]), apply with
//! server-side apply under one field manager, then status — and each step fails with its
//! own error, whose step is its category in metrics and Events.

pub mod applied;
pub mod backup;
pub mod conditions;
pub mod drive_moves;
pub mod git_source;
pub mod key_manager;
pub mod lease;
pub mod references;
pub mod run;
pub mod shadow;
pub mod state;
pub mod telemetry;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::{Client, Resource, ResourceExt};
use rand::Rng as _;

/// What every reconcile shares.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Reconcile metrics.
    pub metrics: std::sync::Arc<telemetry::Metrics>,
    /// The namespace watched, when the operator is restricted to one: lists stay within it
    /// (its RBAC grants nothing cluster-wide).
    pub namespace: Option<String>,
    /// Every KeyManager the operator sees, kept by the controller's watch: the duplicate
    /// server id check reads it instead of listing the cluster on every reconcile.
    pub key_managers: kube::runtime::reflector::Store<shadowkeep_api::crd::KeyManager>,
    /// Which KeyManagers serve each drive, from a watch of every drive history
    /// (ConfigMaps labelled [`state::HISTORY_LABEL`]).
    pub drive_index: std::sync::Arc<drive_moves::SharedDriveIndex>,
    /// Publishes Kubernetes Events.
    pub recorder: kube::runtime::events::Recorder,
    /// The key-server image for KeyManagers that name none (the operator's own release by
    /// default).
    pub server_image: Option<String>,
    /// Consecutive failures per object, so that retries back off.
    pub backoff: Backoff,
    /// Where the replicas are, when not at their pod DNS names (tests); `None` in a
    /// cluster.
    pub replica_resolver: Option<crate::core::keystore_sync::ReplicaResolver>,
    /// What was last applied of each child, so that a reconcile at rest applies nothing;
    /// kept current by the watches of the owned kinds.
    pub applied: std::sync::Arc<applied::Applied>,
    /// Where the shadows' admin APIs are, when not at their pod DNS names (tests); `None`
    /// in a cluster.
    pub shadow_resolver: Option<shadow::ShadowResolver>,
    /// One lock per KeyManager for its Shadows' rotation steps.
    pub rotation_locks: std::sync::Arc<shadow::RotationLocks>,
    /// Where GitSources fetch their branches, one bare repository each.
    pub git_cache: std::path::PathBuf,
}

impl Context {
    /// A context whose stores are filled by one list each instead of a watch, for running
    /// reconciles outside the controllers (tests, benchmarks). Events are published as
    /// `reporter`.
    pub async fn listed(client: Client, reporter: &str) -> Result<Self, kube::Error> {
        use kube::api::{Api, ListParams};
        use kube::runtime::{reflector, watcher::Event};

        let (key_managers, mut writer) = reflector::store();
        for km in Api::<shadowkeep_api::crd::KeyManager>::all(client.clone())
            .list(&ListParams::default())
            .await?
        {
            writer.apply_watcher_event(&Event::Apply(km));
        }
        let histories = Api::<k8s_openapi::api::core::v1::ConfigMap>::all(client.clone())
            .list(&ListParams::default().labels(state::HISTORY_LABEL))
            .await?;
        let drive_index = std::sync::Arc::new(drive_moves::SharedDriveIndex::of(&histories.items));
        Ok(Self {
            recorder: kube::runtime::events::Recorder::new(client.clone(), reporter.into()),
            client,
            metrics: telemetry::Metrics::new(),
            namespace: None,
            key_managers,
            drive_index,
            server_image: None,
            backoff: Backoff::default(),
            replica_resolver: None,
            applied: std::sync::Arc::default(),
            shadow_resolver: None,
            rotation_locks: std::sync::Arc::default(),
            git_cache: std::env::temp_dir().join("shadowkeep-git"),
        })
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// Why a reconcile failed: the step that failed, with that step's own error. The step is
/// the failure's category in metrics and in the Warning Event about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading what the reconcile works from failed.
    #[error(transparent)]
    Dereference(#[from] ReadError),
    /// Making material, carrying keys or keeping the canonical keystore failed (the
    /// control core).
    #[error(transparent)]
    Material(#[from] crate::core::Error),
    /// A child could not be built.
    #[error(transparent)]
    Build(#[from] crate::build::BuildError),
    /// The API server refused a child.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// A status could not be written.
    #[error(transparent)]
    Status(#[from] StatusError),
}

impl From<crate::core::StateError> for Error {
    fn from(e: crate::core::StateError) -> Self {
        Self::Material(e.into())
    }
}

impl Error {
    /// The step that failed, as a metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Dereference(_) => "dereference",
            Self::Material(_) => "material",
            Self::Build(_) => "build",
            Self::Apply(_) => "apply",
            Self::Status(_) => "status",
        }
    }

    /// The step that failed, as the reason of a Warning Event.
    pub fn event_reason(&self) -> &'static str {
        match self {
            Self::Dereference(_) => "DereferenceFailed",
            Self::Material(_) => "MaterialFailed",
            Self::Build(_) => "BuildFailed",
            Self::Apply(_) => "ApplyFailed",
            Self::Status(_) => "StatusFailed",
        }
    }
}

type Source = Box<dyn std::error::Error + Send + Sync>;

/// A read of the dereference step failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to {action}: {source}")]
pub struct ReadError {
    /// What was being read.
    pub action: String,
    /// The cause.
    #[source]
    pub source: Source,
}

impl ReadError {
    /// A failure while doing `action`.
    pub fn of<E>(action: impl Into<String>) -> impl FnOnce(E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let action = action.into();
        move |source| Self {
            action,
            source: Box::new(source),
        }
    }
}

/// The API server refused a child.
#[derive(Debug, thiserror::Error)]
#[error("failed to apply {kind} {name}: {source}")]
pub struct ApplyError {
    /// The child's kind.
    pub kind: String,
    /// The child's name.
    pub name: String,
    /// The cause.
    #[source]
    pub source: Box<kube::Error>,
}

/// A status could not be written.
#[derive(Debug, thiserror::Error)]
#[error("failed to {action}: {source}")]
pub struct StatusError {
    /// Whose status.
    pub action: String,
    /// The cause.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl StatusError {
    /// A failure while doing `action`.
    pub fn of(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let action = action.into();
        move |source| Self {
            action,
            source: Box::new(source),
        }
    }

    /// A status the state could not keep.
    pub fn state(error: crate::core::state::StateError) -> Self {
        match error {
            crate::core::state::StateError::Store { action, source } => Self { action, source },
            other => Self {
                action: "write the status".to_owned(),
                source: Box::new(other),
            },
        }
    }
}

impl Context {
    /// Publishes an Event about `object`; a failure to publish is logged, never fatal.
    pub async fn publish(
        &self,
        object: &k8s_openapi::api::core::v1::ObjectReference,
        type_: kube::runtime::events::EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        let event = kube::runtime::events::Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note.chars().take(1000).collect()),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, object).await {
            tracing::warn!(error = %e, object = ?object.name, "failed to publish an Event");
        }
    }
}

/// Runs one reconcile of `object` measured: its duration and, when it fails, its category
/// in the metrics, a Warning Event naming the step, and the backoff reset on success.
pub async fn measured<K, F>(ctx: &Context, object: &K, reconcile: F) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
    F: Future<Output = Result<Action, Error>>,
{
    let kind = K::kind(&());
    let measure = ctx.metrics.count_and_measure(&kind);
    let result = reconcile.await;
    match &result {
        Ok(_) => ctx.backoff.succeeded(&backoff_key(object)),
        Err(e) => {
            measure.failed(e.metric_label());
            ctx.publish(
                &object.object_ref(&()),
                kube::runtime::events::EventType::Warning,
                e.event_reason(),
                "Reconcile",
                &e.to_string(),
            )
            .await;
        }
    }
    result
}

/// Exponential backoff per object: an API server that is down or refusing is asked again
/// after 5 s, 10 s, 20 s … up to 5 minutes, with ±20 % jitter so that many objects that
/// failed together do not retry together. A success starts the count again.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// The first pause.
    pub const FIRST: Duration = Duration::from_secs(5);
    /// The longest pause.
    pub const MAX: Duration = Duration::from_mins(5);

    /// Records a failure of `key` and returns how long to wait before the next attempt.
    pub fn failed(&self, key: &str) -> Duration {
        let failures = {
            let mut map = self
                .failures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = map.entry(key.to_owned()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let exponent = failures.saturating_sub(1).min(16);
        let base = Self::FIRST.saturating_mul(1 << exponent).min(Self::MAX);
        base.mul_f64(rand::thread_rng().gen_range(0.8..=1.2))
    }

    /// Records a success of `key`.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }

    /// The consecutive failures of `key` so far.
    pub fn failures(&self, key: &str) -> u32 {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

/// The backoff key of an object: kind, namespace and name.
pub fn backoff_key<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// Failures are retried with a growing pause, never in a hot loop.
#[allow(clippy::needless_pass_by_value)] // the signature `Controller::run` asks for
pub fn error_policy<K: Resource<DynamicType = ()>>(
    object: std::sync::Arc<K>,
    error: &Error,
    ctx: std::sync::Arc<Context>,
) -> Action {
    let key = backoff_key(object.as_ref());
    let pause = ctx.backoff.failed(&key);
    tracing::warn!(
        error = %error,
        category = error.metric_label(),
        object = %key,
        failures = ctx.backoff.failures(&key),
        retry_in_s = pause.as_secs(),
        "reconcile failed; retrying"
    );
    Action::requeue(pause)
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_to_a_cap_and_resets_on_success() {
        let backoff = Backoff::default();
        let mut previous = Duration::ZERO;
        for n in 1..=12u32 {
            let pause = backoff.failed("KeyManager/ns/a");
            let base = Backoff::FIRST
                .saturating_mul(1 << (n - 1).min(16))
                .min(Backoff::MAX);
            assert!(
                pause >= base.mul_f64(0.8) && pause <= base.mul_f64(1.2),
                "failure {n}: {pause:?} is not within 20 % of {base:?}"
            );
            if base < Backoff::MAX {
                assert!(
                    pause > previous.mul_f64(1.2 / 1.6),
                    "failure {n} did not grow"
                );
            }
            previous = pause;
        }
        assert!(previous <= Backoff::MAX.mul_f64(1.2));
        assert_eq!(backoff.failures("KeyManager/ns/a"), 12);
        // Another object has its own count.
        assert!(backoff.failed("KeyManager/ns/b") <= Backoff::FIRST.mul_f64(1.2));
        backoff.succeeded("KeyManager/ns/a");
        assert_eq!(backoff.failures("KeyManager/ns/a"), 0);
        assert!(backoff.failed("KeyManager/ns/a") <= Backoff::FIRST.mul_f64(1.2));
    }
}
