//! Live configuration: after a KeyManager's configuration is written (the ConfigMap, or
//! `up`'s files), each server is asked which drive policy it runs with and brought to the
//! new one without a restart, so that a DriveTable or KeyGroup change does not wait for
//! the kubelet's refresh of the mounted ConfigMap.
//!
//! A replica whose digest (`GET /v1/state`, `configuration.digest`, the api crate's
//! `live_digest`) differs is pushed its configuration file (`PUT /v1/configuration`). A
//! shadow serves by the drive policy it mirrors from the replicas, not its own file: once
//! the replicas are pushed, a shadow that differs is asked to poll them now
//! (`POST /v1/shadow/sync`). A server that cannot be reached is reported and left to its
//! file (the kubelet refreshes the ConfigMap; `up` has written it already).
//!
//! The operator's KeyManager reconcile and `up` both call [`apply`], presenting the replica
//! certificate.

use futures::future::join_all;
use hyper::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use shadowkeep_api::server_config::ConfigurationReport;
use shadowkeep_api::shadow::wire::StateReport;
use tokio_rustls::TlsConnector;

use super::conditions::{condition, reasons, types};
use super::keystore_sync::ReplicaAddress;
use super::shadow::observe::{CALL_TIMEOUT, call, sync_now};

/// A server to bring to the configuration.
#[derive(Clone, Debug)]
pub enum Target {
    /// A replica, pushed `file` (its configuration file's content) when it differs.
    Replica {
        /// Where its admin API is.
        server: ReplicaAddress,
        /// Its configuration file, as written.
        file: Vec<u8>,
    },
    /// A shadow, asked to mirror the replicas now when it differs.
    Shadow {
        /// Where its admin API is.
        server: ReplicaAddress,
    },
}

impl Target {
    fn server(&self) -> &ReplicaAddress {
        match self {
            Self::Replica { server, .. } | Self::Shadow { server } => server,
        }
    }
}

/// What became of one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The replica or shadow.
    pub server: String,
    /// Whether it runs with the configuration now, and whether it had to be told; or why it
    /// does not.
    pub result: Result<Brought, String>,
}

/// How a server came to run with the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Brought {
    /// It already did (from its file, or an earlier push).
    AlreadyInForce,
    /// It was pushed the file, or (a shadow) asked to mirror now.
    Pushed,
}

/// Brings every target to the drive policy of `digest` (`live_digest`): the replicas first,
/// all at once, then the shadows, which mirror it from them. Every call is bounded; a
/// server that cannot be asked or does not take it is reported, never waited on for long.
pub async fn apply(targets: &[Target], connector: &TlsConnector, digest: &str) -> Vec<Outcome> {
    let (replicas, shadows): (Vec<&Target>, Vec<&Target>) = targets
        .iter()
        .partition(|t| matches!(t, Target::Replica { .. }));
    let mut outcomes = join_all(replicas.iter().map(|t| one(t, connector, digest))).await;
    outcomes.extend(join_all(shadows.iter().map(|t| one(t, connector, digest))).await);
    for outcome in &outcomes {
        match &outcome.result {
            Ok(Brought::Pushed) => {
                tracing::info!(server = %outcome.server, digest, "configuration applied without a restart");
            }
            Ok(Brought::AlreadyInForce) => {}
            Err(e) => tracing::warn!(
                server = %outcome.server,
                error = %e,
                "failed to apply the configuration; the server takes it from its file later"
            ),
        }
    }
    outcomes
}

async fn one(target: &Target, connector: &TlsConnector, digest: &str) -> Outcome {
    let server = target.server();
    Outcome {
        server: server.replica.clone(),
        result: bring(target, connector, digest).await,
    }
}

async fn bring(target: &Target, connector: &TlsConnector, digest: &str) -> Result<Brought, String> {
    let server = target.server();
    let before = configuration_of(server, connector).await?;
    if before.digest == digest {
        return Ok(Brought::AlreadyInForce);
    }
    let after = match target {
        Target::Replica { file, .. } => {
            let reply = call(
                server,
                connector,
                Method::PUT,
                "/v1/configuration",
                file.clone(),
                CALL_TIMEOUT,
            )
            .await?;
            serde_json::from_slice::<ConfigurationReport>(&reply)
                .map_err(|e| format!("/v1/configuration: its answer: {e}"))?
        }
        Target::Shadow { .. } => {
            sync_now(server, connector).await?;
            configuration_of(server, connector).await?
        }
    };
    if after.digest == digest {
        Ok(Brought::Pushed)
    } else {
        Err(format!(
            "runs with drive policy {} rather than {digest}{}",
            short(&after.digest),
            after.problem.map(|p| format!(" ({p})")).unwrap_or_default()
        ))
    }
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// The configuration `server` reports it runs with.
async fn configuration_of(
    server: &ReplicaAddress,
    connector: &TlsConnector,
) -> Result<ConfigurationReport, String> {
    let body = call(
        server,
        connector,
        Method::GET,
        "/v1/state",
        Vec::new(),
        CALL_TIMEOUT,
    )
    .await?;
    let state: StateReport =
        serde_json::from_slice(&body).map_err(|e| format!("/v1/state: its answer: {e}"))?;
    state.configuration.ok_or_else(|| {
        "/v1/state: reports no configuration (a server too old to take one live)".to_owned()
    })
}

/// `ConfigurationApplied`: True when every server runs with the configuration, else the
/// servers behind and why.
pub fn applied_condition(outcomes: &[Outcome], generation: Option<i64>, now: &Time) -> Condition {
    let behind: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            o.result
                .as_ref()
                .err()
                .map(|e| format!("{}: {e}", o.server))
        })
        .collect();
    if outcomes.is_empty() {
        not_asked(
            reasons::NO_REPLICA_READY,
            "no server to ask",
            generation,
            now,
        )
    } else if behind.is_empty() {
        condition(
            types::CONFIGURATION_APPLIED,
            true,
            reasons::CONFIGURATION_IN_FORCE,
            format!(
                "every server runs with the configuration's drive table ({} server(s))",
                outcomes.len()
            ),
            generation,
            now,
        )
    } else {
        condition(
            types::CONFIGURATION_APPLIED,
            false,
            reasons::SERVERS_BEHIND,
            format!(
                "{}; they take it from their configuration file once it is refreshed",
                behind.join("; ")
            ),
            generation,
            now,
        )
    }
}

/// `ConfigurationApplied` when no server could be asked (`reason`, `message`: why).
pub fn not_asked(reason: &str, message: &str, generation: Option<i64>, now: &Time) -> Condition {
    condition(
        types::CONFIGURATION_APPLIED,
        false,
        reason,
        format!("{message}; the servers take the configuration from their file"),
        generation,
        now,
    )
}
