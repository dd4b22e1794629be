//! What the control core asks servers about a shadow, over their admin APIs (mutual TLS,
//! presenting the replica certificate, which replicas and shadows accept from their
//! operator): each replica's accepted verifiers, registered shadows and duplicates; the
//! shadow's own state; and the two things the core tells a shadow — its desired state, and
//! to sync now. Every call is bounded, so a hung server is reported, never waited on.

use std::time::Duration;

use hyper::Method;
use serde::de::DeserializeOwned;
use shadowkeep_api::crd::DesiredShadowState;
use shadowkeep_api::shadow::wire::{DesiredStateRequest, Duplicate, ShadowsReply, StateReport};
use shadowkeep_server::https::http1_connect_as;
use tokio_rustls::TlsConnector;

use super::rotation::{Observed, ReplicaSees};
use crate::core::keystore_sync::{ReplicaAddress, request};

/// How long one call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a sync-now may take: the shadow answers once its round is done.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(35);

/// Calls `method path` on `server` and returns the answer's body, or why there is none
/// within `timeout`.
pub async fn call(
    server: &ReplicaAddress,
    connector: &TlsConnector,
    method: Method,
    path: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let exchange = async {
        let mut sender = http1_connect_as(&server.address, &server.server_name, connector).await?;
        request(
            &mut sender,
            server,
            method,
            path,
            body,
            &format!("{path}: "),
        )
        .await
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("{path}: no answer within {} s", timeout.as_secs())))
}

async fn get<T: DeserializeOwned>(
    server: &ReplicaAddress,
    connector: &TlsConnector,
    path: &str,
) -> Result<T, String> {
    let body = call(
        server,
        connector,
        Method::GET,
        path,
        Vec::new(),
        CALL_TIMEOUT,
    )
    .await?;
    serde_json::from_slice(&body).map_err(|e| format!("{path}: its answer: {e}"))
}

/// One replica's report and registered shadows, or why it could not be asked.
pub type Answer = Result<(StateReport, ShadowsReply), String>;

/// What the replicas of a KeyManager said about its shadows.
#[derive(Clone, Debug, Default)]
pub struct Replicas {
    /// By replica: its report and registered shadows, or why it could not be asked.
    pub answers: Vec<(String, Answer)>,
}

impl Replicas {
    /// What each replica sees of Shadow `shadow`, for its rotation.
    pub fn seen_by(&self, shadow: &str) -> Observed {
        self.answers
            .iter()
            .map(|(replica, answer)| {
                let seen = answer
                    .as_ref()
                    .map_err(Clone::clone)
                    .map(|(state, shadows)| ReplicaSees {
                        accepted: state
                            .accepted_verifiers
                            .get(shadow)
                            .into_iter()
                            .flatten()
                            .filter_map(|v| v.id.clone())
                            .collect(),
                        registered_with: shadows
                            .shadows
                            .iter()
                            .find(|s| s.name == shadow)
                            .map(|s| s.licence_issued_at),
                    });
                (replica.clone(), seen)
            })
            .collect()
    }

    /// Every duplicate any replica reported.
    pub fn duplicates(&self) -> Vec<Duplicate> {
        let mut out: Vec<Duplicate> = Vec::new();
        for (state, _) in self.answers.iter().filter_map(|(_, a)| a.as_ref().ok()) {
            for d in &state.duplicates {
                if !out.iter().any(|o| o.kind == d.kind && o.name == d.name) {
                    out.push(d.clone());
                }
            }
        }
        out
    }

    /// The KMIP addresses of the registered shadows (the hint list), from the first
    /// replica that answered.
    pub fn registered(&self) -> Vec<(String, Option<std::net::SocketAddr>)> {
        self.answers
            .iter()
            .find_map(|(_, a)| a.as_ref().ok())
            .map(|(_, shadows)| {
                shadows
                    .shadows
                    .iter()
                    .map(|s| (s.name.clone(), s.kmip_address))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Asks every replica at once for its state and registered shadows.
pub async fn replicas(replicas: &[ReplicaAddress], connector: &TlsConnector) -> Replicas {
    let asked = replicas.iter().map(|r| async move {
        let answer = async {
            let state: StateReport = get(r, connector, "/v1/state").await?;
            let shadows: ShadowsReply = get(r, connector, "/v1/shadows").await?;
            Ok((state, shadows))
        }
        .await;
        (r.replica.clone(), answer)
    });
    Replicas {
        answers: futures::future::join_all(asked).await,
    }
}

/// The duplicates the replicas report (two processes as one shadow or one replica), when
/// they can be asked.
pub async fn duplicates(replicas: &crate::core::keystore_sync::Replicas) -> Vec<Duplicate> {
    match replicas {
        crate::core::keystore_sync::Replicas::Ask {
            addresses,
            connector,
        } => self::replicas(addresses, connector).await.duplicates(),
        crate::core::keystore_sync::Replicas::Skip { .. } => Vec::new(),
    }
}

/// The shadow's own state (`GET /v1/state`).
pub async fn shadow_state(
    shadow: &ReplicaAddress,
    connector: &TlsConnector,
) -> Result<StateReport, String> {
    get(shadow, connector, "/v1/state").await
}

/// Tells the shadow its desired state.
pub async fn set_desired(
    shadow: &ReplicaAddress,
    connector: &TlsConnector,
    state: DesiredShadowState,
) -> Result<(), String> {
    let body = serde_json::to_vec(&DesiredStateRequest { state }).map_err(|e| e.to_string())?;
    call(
        shadow,
        connector,
        Method::PUT,
        "/v1/shadow/desired-state",
        body,
        CALL_TIMEOUT,
    )
    .await
    .map(drop)
}

/// Asks the shadow to poll and mirror now; returns once it has.
pub async fn sync_now(shadow: &ReplicaAddress, connector: &TlsConnector) -> Result<(), String> {
    call(
        shadow,
        connector,
        Method::POST,
        "/v1/shadow/sync",
        Vec::new(),
        SYNC_TIMEOUT,
    )
    .await
    .map(drop)
}
