//! The admin API (HTTPS): health, readiness and Prometheus metrics for anyone who can reach
//! it (probes carry no client certificate), and the keystore endpoints — digest, delta,
//! merge — only for the certificate identities replication allows.
//!
//! - `GET /healthz`, `GET /readyz`, `GET /metrics`
//! - `GET /v1/keystore/digest`: `{"digest": "sha256:…", "keys": N}`
//! - `POST /v1/keystore/delta`: body a replication summary; answers the records the caller
//!   lacks, as a keystore serialisation
//! - `POST /v1/keystore/merge`: body a keystore serialisation; merged (never replacing
//!   anything) and made durable before the answer

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use shadowkeep_api::keystore::{Key, Keystore};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::replication::{Summary, delta};
use crate::store::Store;
use crate::tls;

/// Largest request body: a full keystore of a large estate.
const MAX_BODY: usize = 256 << 20;

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// The keystore.
    pub store: Store,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// Identities allowed on the keystore endpoints.
    pub allowed: Arc<BTreeSet<String>>,
    /// Set once the server serves KMIP.
    pub ready: Arc<AtomicBool>,
}

/// The identities in the caller's client certificate (empty without one).
#[derive(Clone, Debug, Default)]
struct Caller(Vec<String>);

/// The routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/keystore/digest", get(digest))
        .route("/v1/keystore/delta", post(delta_handler))
        .route("/v1/keystore/merge", post(merge))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Serves the admin API on `listener` until `cancel`.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    cancel: CancellationToken,
) {
    let tracker = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin API: failed to accept");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tracker.spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream))
                    .await
            else {
                tracing::debug!(%peer, "admin API: TLS handshake failed");
                return;
            };
            let caller = Caller(
                tls.get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(tls::identities)
                    .unwrap_or_default(),
            );
            let service = TowerToHyperService::new(app.layer(Extension(caller)));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
    tracker.close();
    tracker.wait().await;
}

fn forbidden(caller: &Caller, state: &AdminState) -> Option<Response> {
    if caller.0.iter().any(|id| state.allowed.contains(id)) {
        return None;
    }
    tracing::warn!(identities = ?caller.0, "admin API: refused a caller not allowed to replicate");
    Some(
        (
            StatusCode::FORBIDDEN,
            "this client certificate is not allowed to read or change the keystore\n",
        )
            .into_response(),
    )
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let keys = state.store.read(Keystore::len);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.encode(keys),
    )
        .into_response()
}

async fn digest(State(state): State<AdminState>, Extension(caller): Extension<Caller>) -> Response {
    if let Some(refused) = forbidden(&caller, &state) {
        return refused;
    }
    match state.store.read(|ks| ks.digest().map(|d| (d, ks.len()))) {
        Ok((digest, keys)) => {
            Json(json!({"digest": digest.to_string(), "keys": keys})).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn delta_handler(
    State(state): State<AdminState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    if let Some(refused) = forbidden(&caller, &state) {
        return refused;
    }
    let summary: Summary = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("invalid summary: {e}\n")).into_response();
        }
    };
    match state.store.read(|ks| delta(ks, &summary).to_bytes()) {
        Ok(bytes) => bytes.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn merge(
    State(state): State<AdminState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    if let Some(refused) = forbidden(&caller, &state) {
        return refused;
    }
    let incoming = match Keystore::from_bytes(&body) {
        Ok(ks) => ks,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("invalid keystore: {e}\n")).into_response();
        }
    };
    let wanted: Vec<Key> = state
        .store
        .read(|local| incoming.delta_for(local).keys().cloned().collect());
    let taken = wanted.len();
    if taken > 0
        && let Err(e) = state.store.commit(wanted).await
    {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response();
    }
    Json(json!({"received": incoming.len(), "stored": taken})).into_response()
}
