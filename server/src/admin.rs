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
//!
//! Connections are bounded ([`MAX_CONNECTIONS`], of which at most [`MAX_ANONYMOUS`] from
//! callers that are not peers), their TLS handshake and silences timed out, and HTTP/1.1 is
//! all that is spoken.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use shadowkeep_api::keystore::{Key, Keystore};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::net::{SHUTDOWN_GRACE, Slot, Slots, accept};
use crate::replication::{Summary, delta};
use crate::store::Store;
use crate::tls;

/// Largest request body: a full keystore of a large estate.
const MAX_BODY: usize = 256 << 20;

/// Admin connections at once. The API serves a few peers, the operator, probes and a
/// metrics scraper, never a crowd.
pub const MAX_CONNECTIONS: usize = 64;

/// Of [`MAX_CONNECTIONS`], how many may be connections that have not authenticated as a
/// peer (probes, scrapers, and anyone else who can reach the port); the rest is kept for
/// peers. A new connection past this takes the place of the oldest.
pub const MAX_ANONYMOUS: usize = 48;

/// The metrics label of this listener.
const LISTENER: &str = "admin";

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
    /// How long a TLS handshake may take.
    pub handshake: Duration,
    /// How long a connection may stay silent between requests or in a request's head.
    pub idle: Duration,
}

impl AdminState {
    fn allows(&self, caller: &Caller) -> bool {
        caller.0.iter().any(|id| self.allowed.contains(id))
    }
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
    state: AdminState,
    cancel: CancellationToken,
) {
    let slots = Slots::new(
        LISTENER,
        MAX_CONNECTIONS,
        MAX_ANONYMOUS,
        Arc::clone(&state.metrics),
    );
    let app = router(state.clone());
    let tracker = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = accept(&listener, LISTENER, &state.metrics) => accepted,
        };
        let slot = tokio::select! {
            () = cancel.cancelled() => break,
            slot = slots.admit() => match slot {
                Some(slot) => slot,
                None => break,
            },
        };
        tracker.spawn(connection(
            stream,
            peer,
            acceptor.clone(),
            app.clone(),
            state.clone(),
            slot,
            cancel.clone(),
        ));
    }
    tracker.close();
    tracker.wait().await;
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    app: Router,
    state: AdminState,
    slot: Slot,
    cancel: CancellationToken,
) {
    let handshake = tokio::select! {
        handshake = timeout(state.handshake, acceptor.accept(stream)) => handshake,
        () = slot.dropped() => return,
        () = cancel.cancelled() => return,
    };
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "admin API: TLS handshake failed");
            state.metrics.refused(LISTENER, "handshake_failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "admin API: TLS handshake timed out");
            state.metrics.refused(LISTENER, "handshake_timeout");
            return;
        }
    };
    let caller = Caller(
        tls.get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(tls::identities)
            .unwrap_or_default(),
    );
    if state.allows(&caller) {
        slot.authenticated();
    }
    let service = TowerToHyperService::new(app.layer(Extension(caller)));
    let mut http = hyper::server::conn::http1::Builder::new();
    // The header read timeout also runs while a kept-alive connection waits for its next
    // request: it is the idle timeout.
    http.timer(TokioTimer::new())
        .header_read_timeout(state.idle);
    let conn = http.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = slot.dropped() => {}
        () = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = timeout(SHUTDOWN_GRACE, conn).await;
        }
    }
}

fn forbidden(caller: &Caller, state: &AdminState) -> Option<Response> {
    if state.allows(caller) {
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
