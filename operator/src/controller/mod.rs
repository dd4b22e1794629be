//! The controllers. Each reconcile is a pipeline — read, validate, build (pure, in
//! [`crate::build`]), apply with server-side apply under one field manager, then status —
//! and each step fails with its own error.

pub mod conditions;
pub mod key_manager;
pub mod lease;
pub mod references;
pub mod run;
pub mod telemetry;

use std::time::Duration;

use kube::Client;
use kube::runtime::controller::Action;

/// What every reconcile shares.
#[derive(Clone)]
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
    /// Publishes Kubernetes Events.
    pub recorder: kube::runtime::events::Recorder,
    /// The key-server image for KeyManagers that name none (the operator's own release by
    /// default).
    pub server_image: Option<String>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or could not be reached.
    #[error("failed to {action}: {source}")]
    Kube {
        /// What was being done.
        action: String,
        /// The cause.
        source: kube::Error,
    },
    /// A child could not be built or material could not be made.
    #[error("failed to build: {0}")]
    Build(String),
}

impl Error {
    /// A short label for metrics and Events.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube { .. } => "kube",
            Self::Build(_) => "build",
        }
    }

    pub(crate) fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let action = action.into();
        move |source| Self::Kube { action, source }
    }
}

/// Transient failures are retried with a pause, never in a hot loop.
pub fn error_policy<K>(
    _object: std::sync::Arc<K>,
    error: &Error,
    _ctx: std::sync::Arc<Context>,
) -> Action {
    tracing::warn!(error = %error, category = error.metric_label(), "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(15))
}
