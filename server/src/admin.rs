//! The admin API (HTTPS): health, readiness and Prometheus metrics for anyone who can reach
//! it (probes carry no client certificate), and the keystore endpoints — digest, delta,
//! merge — only for the certificate identities replication allows.
//!
//! - `GET /healthz`, `GET /readyz`, `GET /metrics`
//! - `GET /v1/keystore/digest`: `{"digest": "sha256:…", "keys": N}`
//! - `POST /v1/keystore/delta`: body a replication summary; answers the records the caller
//!   lacks, as a keystore serialisation
//! - `POST /v1/keystore/merge`: body a keystore serialisation; merged (never replacing
//!   anything) and made durable before the answer, a [`MergeReply`]
//! - `PUT /v1/configuration`: body the configuration file's content (YAML or JSON, at most
//!   [`MAX_CONFIG_BYTES`]); its live part applied at once (`crate::live`), answered with
//!   the configuration in force, or refused with `invalid-configuration`
//!
//! A caller is judged before its request body is read: only peers may send one, of at most
//! 256 MiB, and a body that stalls for the idle timeout is refused. Connections are bounded
//! ([`MAX_CONNECTIONS`], of which at most [`MAX_ANONYMOUS`] from callers that are not peers),
//! their TLS handshake and silences timed out, and HTTP/1.1 is all that is spoken.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use jiff::Timestamp;
use shadowkeep_api::keystore::{Kek, Key, Keystore};
use shadowkeep_api::replica_sync::{DigestReply, MergeReply, Summary, delta};
use shadowkeep_api::server_config::MAX_CONFIG_BYTES;
use shadowkeep_api::shadow::registration::{
    MAX_REQUEST_BYTES, RegistrationReply, ShadowRegistration,
};
use shadowkeep_api::shadow::wire::{
    DesiredStateRequest, MAX_SMALL_REQUEST_BYTES, ServerRole, ShadowReport, StateReport,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::listener::{SHUTDOWN_GRACE, Slot, Slots, accept};
use crate::live::LiveConfig;
use crate::metrics::Metrics;
use crate::replication::{INSTANCE_HEADER, REPLICA_HEADER};
use crate::shadow::registry::{NewDuplicate, PeerSightings, Registration, Registry};
use crate::shadow::runner::{ControlError, ShadowHandle};
use crate::store::Store;
use crate::tls;

/// Largest request body: a full keystore of a large estate. Only peers may send a body.
const MAX_BODY: usize = 256 << 20;

/// Admin connections at once. The API serves a few peers, the operator, probes and a
/// metrics scraper, never a crowd.
pub const MAX_CONNECTIONS: usize = 64;

/// Of [`MAX_CONNECTIONS`], how many may be connections that have not authenticated as a
/// peer (probes, scrapers, and anyone else who can reach the port); the rest is kept for
/// peers. A new connection past this takes the place of the oldest.
pub const MAX_ANONYMOUS: usize = 48;

/// How long `POST /v1/shadow/sync` waits for its poll round.
const SYNC_WAIT: Duration = Duration::from_secs(30);

/// The metrics label of this listener.
const LISTENER: &str = "admin";

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// The keystore.
    pub store: Store,
    /// The KEK: merged records must open under it.
    pub kek: Kek,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// Identities allowed on the keystore endpoints.
    pub allowed: Arc<BTreeSet<String>>,
    /// Set once the server serves KMIP.
    pub ready: Arc<AtomicBool>,
    /// How long a TLS handshake may take.
    pub handshake: Duration,
    /// How long a connection may stay silent: between requests, in a request's head, or
    /// within its body.
    pub idle: Duration,
    /// The KeyManager's server id.
    pub server_id: String,
    /// This process's persistent instance id.
    pub instance_id: uuid::Uuid,
    /// On a licensed replica: its shadows.
    pub registry: Option<Arc<Registry>>,
    /// The peers that called, by replica name and instance id.
    pub peers_seen: Arc<PeerSightings>,
    /// On a shadow: its state machine.
    pub shadow: Option<Arc<ShadowHandle>>,
    /// The configuration in force, and what can change of it while the server runs.
    pub live: Arc<LiveConfig>,
}

impl AdminState {
    fn allows(&self, caller: &Caller) -> bool {
        caller.0.iter().any(|id| self.allowed.contains(id))
    }

    /// The registered shadow the caller is, if any; one whose verifier was retired is
    /// dropped and is none.
    fn shadow_caller(&self, caller: &Caller) -> Option<String> {
        let registration = self
            .registry
            .as_ref()?
            .registered(&caller.0, Timestamp::now());
        log_retired(&registration);
        registration.name()
    }
}

/// The identities in the caller's client certificate (empty without one).
#[derive(Clone, Debug, Default)]
struct Caller(Vec<String>);

/// The caller's IP address.
#[derive(Clone, Copy, Debug)]
struct Remote(IpAddr);

/// The routes.
pub fn router(state: AdminState) -> Router {
    let keystore = Router::new()
        .route("/v1/keystore/digest", get(digest))
        .route("/v1/keystore/merge", post(merge))
        .route("/v1/shadows", get(shadows))
        .route("/v1/shadow/sync", post(sync))
        .route("/v1/shadow/desired-state", put(desired_state))
        .route("/v1/configuration", put(configuration))
        .route_layer(middleware::from_fn_with_state(state.clone(), peers_only));
    let mirror = Router::new()
        .route("/v1/keystore/delta", post(delta_handler))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            peers_or_shadows,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/state", get(state_handler))
        .route("/v1/hints", get(hints))
        .route("/v1/shadow/register", post(register))
        .route("/v1/shadow/report", post(report))
        .merge(keystore)
        .merge(mirror)
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
    if state.allows(&caller) || state.shadow_caller(&caller).is_some() {
        slot.authenticated();
    }
    let remote = peer.ip();
    let service = TowerToHyperService::new(
        app.layer(Extension(caller))
            .layer(Extension(Remote(remote))),
    );
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

/// Refuses every caller but the peers on the keystore endpoints, before their bodies are
/// read.
async fn peers_only(
    State(state): State<AdminState>,
    Extension(caller): Extension<Caller>,
    Extension(Remote(remote)): Extension<Remote>,
    request: Request,
    next: Next,
) -> Response {
    if state.allows(&caller) {
        sighted(&state, &request, remote);
        return next.run(request).await;
    }
    tracing::warn!(identities = ?caller.0, "admin API: refused a caller not allowed to replicate");
    state.metrics.refused(LISTENER, "forbidden");
    closing(
        StatusCode::FORBIDDEN,
        "this client certificate is not allowed to read or change the keystore\n",
    )
}

/// A refusal after which the connection is closed, so that a body not read is not waited
/// for.
fn closing(status: StatusCode, message: &'static str) -> Response {
    (status, [(header::CONNECTION, "close")], message).into_response()
}

/// Reads a peer's request body: at most [`MAX_BODY`] (refused from the announced length
/// when it says more), and no silence longer than the idle timeout.
async fn read_body(
    state: &AdminState,
    mut body: Body,
    announced: Option<u64>,
    max: usize,
) -> Result<Bytes, Response> {
    let too_large = || {
        state.metrics.refused(LISTENER, "body_too_large");
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            [(header::CONNECTION, "close")],
            format!("the request body is larger than the {max}-byte limit of this endpoint\n"),
        )
            .into_response()
    };
    if announced.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    loop {
        match timeout(state.idle, body.frame()).await {
            Ok(None) => return Ok(Bytes::from(bytes)),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if bytes.len() + data.len() > max {
                        return Err(too_large());
                    }
                    bytes.extend_from_slice(&data);
                }
            }
            Ok(Some(Err(e))) => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("failed to read the request body: {e}\n"),
                )
                    .into_response());
            }
            Err(_) => {
                state.metrics.refused(LISTENER, "body_timeout");
                return Err(closing(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body stalled past the idle timeout\n",
                ));
            }
        }
    }
}

/// The request's body, read as [`read_body`] does, of at most [`MAX_BODY`].
async fn body_of(state: &AdminState, request: Request) -> Result<Bytes, Response> {
    body_within(state, request, MAX_BODY).await
}

/// The request's body, of at most `max` bytes.
async fn body_within(state: &AdminState, request: Request, max: usize) -> Result<Bytes, Response> {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    read_body(state, request.into_body(), announced, max).await
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
    // Counted when asked, from the registers themselves: never behind what /v1/state shows.
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    if let Some(registry) = &state.registry {
        state
            .metrics
            .shadow_duplicates
            .set(count(registry.duplicates().len()));
    }
    state
        .metrics
        .replica_duplicates
        .set(count(state.peers_seen.duplicates().len()));
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.encode(keys),
    )
        .into_response()
}

async fn digest(State(state): State<AdminState>) -> Response {
    match state.store.read(|ks| ks.digest().map(|d| (d, ks.len()))) {
        Ok((digest, keys)) => Json(DigestReply {
            digest: digest.to_string(),
            keys,
        })
        .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn delta_handler(State(state): State<AdminState>, request: Request) -> Response {
    let body = match body_of(&state, request).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
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

async fn merge(State(state): State<AdminState>, request: Request) -> Response {
    let body = match body_of(&state, request).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let incoming = match Keystore::from_bytes(&body) {
        Ok(ks) => ks,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("invalid keystore: {e}\n")).into_response();
        }
    };
    drop(body);
    // Each record that would change what is held, and whether its id is held with other
    // material (a conflict: the store keeps its key and quarantines the record).
    let candidates: Vec<(Key, bool)> = state.store.read(|local| {
        incoming
            .delta_for(local)
            .keys()
            .map(|k| {
                let conflict = local.get(&k.id).is_some_and(|held| !held.same_key(k));
                (k.clone(), conflict)
            })
            .collect()
    });
    let mut reply = MergeReply {
        received: incoming.len(),
        ..MergeReply::default()
    };
    let mut wanted = Vec::with_capacity(candidates.len());
    for (key, conflict) in candidates {
        if conflict {
            reply.conflicts.push(key.id.to_string());
        } else {
            reply.stored += 1;
        }
        wanted.push(key);
    }
    if !wanted.is_empty() {
        match state.store.commit_from_elsewhere(wanted, &state.kek).await {
            Ok(refused) => {
                for record in refused {
                    if reply.conflicts.contains(&record.id) {
                        reply.conflicts.retain(|c| *c != record.id);
                    } else {
                        reply.stored = reply.stored.saturating_sub(1);
                    }
                    reply.refused.push(record);
                }
            }
            Err(e) => {
                return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response();
            }
        }
    }
    state.metrics.merged("stored", reply.stored);
    state.metrics.merged("conflict", reply.conflicts.len());
    state.metrics.merged("refused", reply.refused.len());
    if reply.conflicts.is_empty() && reply.refused.is_empty() {
        return Json(reply).into_response();
    }
    tracing::warn!(
        conflicts = ?reply.conflicts,
        refused = ?reply.refused.iter().map(|r| &r.id).collect::<Vec<_>>(),
        "admin API: a merge brought records that were not stored"
    );
    (StatusCode::CONFLICT, Json(reply)).into_response()
}

/// Lets peers and registered shadows through (shadows mirror the keystore by its delta);
/// refuses everyone else before the body is read.
async fn peers_or_shadows(
    State(state): State<AdminState>,
    Extension(caller): Extension<Caller>,
    Extension(Remote(remote)): Extension<Remote>,
    request: Request,
    next: Next,
) -> Response {
    if state.allows(&caller) || state.shadow_caller(&caller).is_some() {
        sighted(&state, &request, remote);
        return next.run(request).await;
    }
    tracing::warn!(identities = ?caller.0, "admin API: refused a caller that is neither a peer nor a registered shadow");
    state.metrics.refused(LISTENER, "forbidden");
    closing(
        StatusCode::FORBIDDEN,
        "not-registered: this client certificate is neither a peer's nor a registered shadow's\n",
    )
}

/// Records a peer that names itself (replica name and instance id headers), and warns the
/// first time two instances call as one replica: two running servers with one server id and
/// ordinal. Both keep being served.
fn sighted(state: &AdminState, request: &Request, remote: IpAddr) {
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
    let (Some(name), Some(instance)) = (
        header(REPLICA_HEADER),
        header(INSTANCE_HEADER).and_then(|v| uuid::Uuid::parse_str(v).ok()),
    ) else {
        return;
    };
    if let Some(NewDuplicate(d)) = state
        .peers_seen
        .saw(name, instance, remote, Timestamp::now())
    {
        tracing::warn!(
            replica = %d.name,
            instance_ids = ?d.instance_ids,
            addresses = ?d.addresses,
            "two running replicas call as one (one server id and ordinal); both keep being served"
        );
    }
}

/// A refusal with a reason code and a message, as plain text `code: message`.
fn refusal(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [(header::CONNECTION, "close")],
        format!("{code}: {message}\n"),
    )
        .into_response()
}

async fn state_handler(State(state): State<AdminState>) -> Response {
    let mut report = match &state.shadow {
        Some(shadow) => shadow.report(state.instance_id),
        None => StateReport {
            role: ServerRole::Replica,
            server_id: state.server_id.clone(),
            instance_id: state.instance_id,
            shadow: None,
            duplicates: state
                .registry
                .as_ref()
                .map(|r| r.duplicates())
                .unwrap_or_default()
                .into_iter()
                .chain(state.peers_seen.duplicates())
                .collect(),
            accepted_verifiers: state
                .registry
                .as_ref()
                .map(|r| r.accepted_labels())
                .unwrap_or_default(),
            configuration: None,
        },
    };
    report.configuration = Some(state.live.report());
    Json(report).into_response()
}

/// `PUT /v1/configuration`: the configuration file's content, pushed. Its live part is
/// applied at once; what needs a restart is reported, not applied. An invalid one changes
/// nothing and is refused, naming the field.
async fn configuration(State(state): State<AdminState>, request: Request) -> Response {
    let body = match body_within(&state, request, MAX_CONFIG_BYTES).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    match state.live.apply(&body, "the admin API push") {
        Ok(report) => Json(report).into_response(),
        Err(e) => {
            state.metrics.refused(LISTENER, "invalid_configuration");
            refusal(
                StatusCode::BAD_REQUEST,
                "invalid-configuration",
                &e.to_string(),
            )
        }
    }
}

async fn hints(State(state): State<AdminState>) -> Response {
    Json(
        state
            .registry
            .as_ref()
            .map(|r| r.hints())
            .unwrap_or_default(),
    )
    .into_response()
}

async fn shadows(State(state): State<AdminState>) -> Response {
    Json(
        state
            .registry
            .as_ref()
            .map(|r| r.list())
            .unwrap_or_default(),
    )
    .into_response()
}

fn no_registry() -> Response {
    refusal(
        StatusCode::NOT_FOUND,
        "not-a-licensed-replica",
        "this server is not a licensed replica; it has no licence key to judge shadows by",
    )
}

fn log_duplicate(new: Option<NewDuplicate>) {
    if let Some(NewDuplicate(d)) = new {
        tracing::warn!(
            shadow = %d.name,
            instance_ids = ?d.instance_ids,
            addresses = ?d.addresses,
            "two instances claim one shadow (a copied data directory?); both keep running"
        );
    }
}

async fn register(
    State(state): State<AdminState>,
    Extension(caller): Extension<Caller>,
    Extension(Remote(remote)): Extension<Remote>,
    request: Request,
) -> Response {
    let Some(registry) = state.registry.clone() else {
        return no_registry();
    };
    let Some(presenter) = registry.presenter(&caller.0).map(str::to_owned) else {
        state.metrics.refused(LISTENER, "no_certificate");
        return refusal(
            StatusCode::FORBIDDEN,
            "no-certificate",
            "a shadow registers with its client certificate",
        );
    };
    let body = match body_within(&state, request, MAX_REQUEST_BYTES).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let registration = match ShadowRegistration::from_json(&body) {
        Ok(r) => r,
        Err(e) => {
            state.metrics.registration("malformed");
            tracing::warn!(presenter, address = %remote, error = %e, "shadow registration refused: malformed");
            return refusal(StatusCode::BAD_REQUEST, "malformed", &e.to_string());
        }
    };
    drop(body);
    let now = Timestamp::now();
    let judge = Arc::clone(&registry);
    let judged = tokio::task::spawn_blocking(move || {
        let presenter = presenter;
        let outcome = judge.register(&registration, &presenter, remote, now);
        (presenter, outcome)
    })
    .await;
    let Ok((presenter, (decision, duplicate))) = judged else {
        return refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "failed to judge the registration",
        );
    };
    log_duplicate(duplicate);
    let reply = RegistrationReply::from(&decision);
    match &decision {
        Ok(registered) => {
            state.metrics.registration("registered");
            tracing::info!(shadow = %registered.shadow, address = %remote, "shadow registered");
            Json(reply).into_response()
        }
        Err(refused) => {
            state.metrics.registration(refused.code().as_str());
            tracing::warn!(presenter, address = %remote, reason = %refused.code(), message = %refused, "shadow registration refused");
            (StatusCode::FORBIDDEN, Json(reply)).into_response()
        }
    }
}

async fn report(
    State(state): State<AdminState>,
    Extension(caller): Extension<Caller>,
    Extension(Remote(remote)): Extension<Remote>,
    request: Request,
) -> Response {
    let Some(registry) = state.registry.clone() else {
        return no_registry();
    };
    let registration = registry.registered(&caller.0, Timestamp::now());
    log_retired(&registration);
    let Some(shadow) = registration.name() else {
        state.metrics.refused(LISTENER, "shadow_not_registered");
        return refusal(
            StatusCode::FORBIDDEN,
            "not-registered",
            "this shadow has not registered with this replica; POST /v1/shadow/register first",
        );
    };
    let body = match body_within(&state, request, MAX_SMALL_REQUEST_BYTES).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let shadow_report = match ShadowReport::from_json(&body) {
        Ok(r) => r,
        Err(e) => {
            state.metrics.refused(LISTENER, "malformed");
            return refusal(StatusCode::BAD_REQUEST, "malformed", &e.to_string());
        }
    };
    let (view, duplicate) = registry.report(&shadow, shadow_report, remote, Timestamp::now());
    log_duplicate(duplicate);
    Json(view).into_response()
}

fn log_retired(registration: &Registration) {
    if let Registration::Retired(shadow) = registration {
        tracing::warn!(
            shadow,
            "shadow registration dropped: the verifier its password matched is no longer accepted or is past its not-after; it must register again"
        );
    }
}

fn not_a_shadow() -> Response {
    refusal(
        StatusCode::CONFLICT,
        "not-a-shadow",
        "this server is a replica, not a shadow",
    )
}

async fn sync(State(state): State<AdminState>) -> Response {
    let Some(shadow) = state.shadow.clone() else {
        return not_a_shadow();
    };
    match shadow.sync_now(SYNC_WAIT).await {
        Ok(()) => Json(shadow.report(state.instance_id)).into_response(),
        Err(e @ ControlError::NotPolling(_)) => {
            refusal(StatusCode::CONFLICT, "not-polling", &e.to_string())
        }
        Err(e @ ControlError::Timeout(_)) => {
            refusal(StatusCode::GATEWAY_TIMEOUT, "timeout", &e.to_string())
        }
    }
}

async fn desired_state(State(state): State<AdminState>, request: Request) -> Response {
    let Some(shadow) = state.shadow.clone() else {
        return not_a_shadow();
    };
    let body = match body_within(&state, request, MAX_SMALL_REQUEST_BYTES).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let desired = match DesiredStateRequest::from_json(&body) {
        Ok(d) => d,
        Err(e) => {
            state.metrics.refused(LISTENER, "malformed");
            return refusal(
                StatusCode::BAD_REQUEST,
                "malformed",
                &format!("{e}; the state is one of Active, Inactive, Disabled"),
            );
        }
    };
    match shadow.set_desired(desired.state) {
        Ok(_) => {
            tracing::info!(desired = ?desired.state, "desired state taken");
            Json(shadow.report(state.instance_id)).into_response()
        }
        Err(e) => refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-persisted",
            &e.to_string(),
        ),
    }
}
