//! Keystore sync: the keys each replica holds are pulled into the canonical keystore,
//! which the replicas import in turn, so that the canonical keystore holds every key any
//! replica ever held (a drive's keys can then be carried, and a lost replica's keys
//! restored).
//!
//! Every replica's admin API is asked for the records the canonical keystore lacks (the
//! same delta exchange replicas use among themselves), presenting the replica
//! certificate, which the replicas accept as a peer. The merge only grows the keystore.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use shadowkeep_api::crd::ReplicaSyncStatus;
use shadowkeep_api::keystore::Keystore;
use shadowkeep_api::replica_sync::{DigestReply, summary};
use shadowkeep_api::server_config::PeerConfig;
use shadowkeep_server::https::{Sender, connector_from_pem, http1_connect_as, send};
use tokio_rustls::TlsConnector;

use super::Error;
use super::conditions::{condition, reasons, types};
use super::keystore::Canonical;
use crate::build::{Inputs, replicas_of};

/// Where to reach a replica: its pod name, the address to connect to, and the name its
/// certificate is checked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaAddress {
    /// The replica (pod) name.
    pub replica: String,
    /// `host:port` of its admin API.
    pub address: String,
    /// The DNS name its certificate must carry.
    pub server_name: String,
}

/// Finds the replicas of a KeyManager: in a cluster, the pod DNS names of its headless
/// Service; in tests, replicas on 127.0.0.1.
pub type ReplicaResolver = Arc<dyn Fn(&Inputs<'_>) -> Vec<ReplicaAddress> + Send + Sync>;

/// The replicas' pod DNS names, as their peers reach them.
pub fn in_cluster(inputs: &Inputs<'_>) -> Vec<ReplicaAddress> {
    replicas_of(inputs)
        .into_iter()
        .map(ReplicaAddress::of)
        .collect()
}

impl ReplicaAddress {
    /// A peer as a server configuration names it, its certificate checked for the host of
    /// its address.
    pub fn of(peer: PeerConfig) -> Self {
        Self {
            server_name: peer
                .address
                .rsplit_once(':')
                .map_or_else(|| peer.address.clone(), |(host, _)| host.to_owned()),
            replica: peer.name,
            address: peer.address,
        }
    }
}

/// What one replica answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pulled {
    /// The replica.
    pub replica: String,
    /// What it answered, or why it could not be asked.
    pub outcome: Result<Answer, String>,
}

/// A replica's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// Keys it held that the canonical keystore did not.
    pub pulled: usize,
    /// Keys it holds.
    pub keys: usize,
    /// Digest of its keystore.
    pub digest: String,
}

/// Asks each replica for the records `keystore` lacks and merges them in. A replica that
/// cannot be reached, or answers badly, is reported and skipped.
pub async fn pull(
    replicas: &[ReplicaAddress],
    connector: &TlsConnector,
    keystore: &mut Canonical,
) -> Vec<Pulled> {
    let mut pulled = Vec::new();
    for replica in replicas {
        let outcome = tokio::time::timeout(
            Duration::from_secs(10),
            pull_one(replica, connector, keystore),
        )
        .await
        .unwrap_or_else(|_| Err("no answer within 10 s".to_owned()));
        pulled.push(Pulled {
            replica: replica.replica.clone(),
            outcome,
        });
    }
    pulled
}

async fn pull_one(
    replica: &ReplicaAddress,
    connector: &TlsConnector,
    keystore: &mut Canonical,
) -> Result<Answer, String> {
    let body = serde_json::to_vec(&summary(keystore.keystore())).map_err(|e| e.to_string())?;
    let mut sender = http1_connect_as(&replica.address, &replica.server_name, connector).await?;
    let reply = request(
        &mut sender,
        replica,
        hyper::Method::POST,
        "/v1/keystore/delta",
        body,
        "",
    )
    .await?;
    let delta = Keystore::from_bytes(&reply).map_err(|e| format!("its answer: {e}"))?;
    let report = keystore
        .merge(&delta)
        .map_err(|e| format!("merging its keys: {e}"))?;
    if !report.conflicts.is_empty() {
        tracing::warn!(
            replica = %replica.replica,
            conflicts = report.conflicts.len(),
            "records that conflict with the canonical keystore were quarantined"
        );
    }
    let state = digest_of(&mut sender, replica).await?;
    Ok(Answer {
        pulled: report.added.len(),
        keys: state.keys,
        digest: state.digest,
    })
}

/// What a keystore sync found.
#[derive(Clone, Debug)]
pub struct Synced {
    /// `KeystoreInSync`.
    pub condition: Condition,
    /// Every replica answered (their keys are all in the canonical keystore now).
    pub all_answered: bool,
    /// Each replica's state, for the status.
    pub replicas: Vec<ReplicaSyncStatus>,
}

/// The status of each replica, and `KeystoreInSync`, from what they answered and the
/// canonical keystore after the merge.
pub fn report(
    pulled: &[Pulled],
    keystore: &Keystore,
    generation: Option<i64>,
    now: &Time,
) -> Result<Synced, Error> {
    let canonical = keystore.digest().map_err(Error::Keystore)?.to_string();
    let statuses: Vec<ReplicaSyncStatus> = pulled
        .iter()
        .map(|p| match &p.outcome {
            Ok(a) => ReplicaSyncStatus {
                name: p.replica.clone(),
                keys: i64::try_from(a.keys).ok(),
                digest: Some(a.digest.clone()),
                in_sync: a.digest == canonical,
                keys_pulled: i64::try_from(a.pulled).ok(),
                error: None,
            },
            Err(e) => ReplicaSyncStatus {
                name: p.replica.clone(),
                error: Some(e.clone()),
                ..ReplicaSyncStatus::default()
            },
        })
        .collect();
    let (condition, all_answered) = condition_of(&statuses, keystore.len(), generation, now);
    Ok(Synced {
        condition,
        all_answered,
        replicas: statuses,
    })
}

/// `KeystoreInSync` from each replica's state, and whether every replica answered.
fn condition_of(
    statuses: &[ReplicaSyncStatus],
    keys: usize,
    generation: Option<i64>,
    now: &Time,
) -> (Condition, bool) {
    let failed: Vec<String> = statuses
        .iter()
        .filter_map(|s| s.error.as_ref().map(|e| format!("{}: {e}", s.name)))
        .collect();
    let behind: Vec<String> = statuses
        .iter()
        .filter(|s| s.error.is_none() && !s.in_sync)
        .map(|s| {
            format!(
                "{} holds {} of the canonical keystore's {} keys, or others",
                s.name,
                s.keys.unwrap_or_default(),
                keys
            )
        })
        .collect();
    let all_answered = failed.is_empty();
    let condition = if !all_answered {
        condition(
            types::KEYSTORE_IN_SYNC,
            false,
            reasons::REPLICA_UNREACHABLE,
            failed.join("; "),
            generation,
            now,
        )
    } else if !behind.is_empty() {
        condition(
            types::KEYSTORE_IN_SYNC,
            false,
            reasons::REPLICAS_BEHIND,
            format!(
                "{}; replicas import the canonical keystore Secret within a minute",
                behind.join("; ")
            ),
            generation,
            now,
        )
    } else {
        condition(
            types::KEYSTORE_IN_SYNC,
            true,
            reasons::REPLICAS_SYNCED,
            format!(
                "every replica holds exactly the canonical keystore ({} replica(s), {} keys)",
                statuses.len(),
                keys
            ),
            generation,
            now,
        )
    };
    (condition, all_answered)
}

/// Pushes the canonical keystore to every replica that answered but does not hold exactly
/// it (the merge endpoint peers use: the replica takes only the records it lacks), so a
/// replica converges now rather than when the kubelet refreshes the mounted Secret. Run
/// after the canonical keystore is stored. `synced` is brought up to date with what each
/// replica holds afterwards; a replica that refuses keeps its report, and imports the
/// Secret later.
pub async fn push(
    replicas: &Replicas,
    keystore: &Keystore,
    synced: &mut Synced,
    generation: Option<i64>,
    now: &Time,
) -> Result<(), Error> {
    let Replicas::Ask {
        addresses,
        connector,
    } = replicas
    else {
        return Ok(());
    };
    let behind: Vec<&ReplicaAddress> = addresses
        .iter()
        .filter(|a| {
            synced
                .replicas
                .iter()
                .any(|s| s.name == a.replica && s.error.is_none() && !s.in_sync)
        })
        .collect();
    if behind.is_empty() {
        return Ok(());
    }
    let body = keystore.to_bytes().map_err(Error::Keystore)?;
    let canonical = keystore.digest().map_err(Error::Keystore)?.to_string();
    for replica in behind {
        let pushed = tokio::time::timeout(
            Duration::from_secs(10),
            push_one(replica, connector, body.clone()),
        )
        .await
        .unwrap_or_else(|_| Err("no answer within 10 s".to_owned()));
        let Some(status) = synced
            .replicas
            .iter_mut()
            .find(|s| s.name == replica.replica)
        else {
            continue;
        };
        match pushed {
            Ok(state) => {
                status.keys = i64::try_from(state.keys).ok();
                status.in_sync = state.digest == canonical;
                status.digest = Some(state.digest);
            }
            Err(e) => tracing::warn!(
                replica = %replica.replica,
                error = %e,
                "failed to push the canonical keystore; the replica imports the Secret later"
            ),
        }
    }
    let (condition, all_answered) = condition_of(&synced.replicas, keystore.len(), generation, now);
    synced.condition = condition;
    synced.all_answered = all_answered;
    Ok(())
}

async fn push_one(
    replica: &ReplicaAddress,
    connector: &TlsConnector,
    body: Vec<u8>,
) -> Result<DigestReply, String> {
    let mut sender = http1_connect_as(&replica.address, &replica.server_name, connector).await?;
    request(
        &mut sender,
        replica,
        hyper::Method::POST,
        "/v1/keystore/merge",
        body,
        "merge: ",
    )
    .await?;
    digest_of(&mut sender, replica).await
}

/// Sends `method path` with `body` to `server` on `sender`: the answer's body when it
/// succeeded, else `{what}HTTP status: the answer`.
pub(crate) async fn request(
    sender: &mut Sender,
    server: &ReplicaAddress,
    method: hyper::Method,
    path: &str,
    body: Vec<u8>,
    what: &str,
) -> Result<Vec<u8>, String> {
    let (status, reply) = send(sender, &server.address, method, path, body).await?;
    if status.is_success() {
        Ok(reply)
    } else {
        Err(format!(
            "{what}HTTP {status}: {}",
            String::from_utf8_lossy(&reply).trim()
        ))
    }
}

/// What the server on `sender` holds: its keystore's size and digest.
pub(crate) async fn digest_of(
    sender: &mut Sender,
    server: &ReplicaAddress,
) -> Result<DigestReply, String> {
    let reply = request(
        sender,
        server,
        hyper::Method::GET,
        "/v1/keystore/digest",
        Vec::new(),
        "digest: ",
    )
    .await?;
    serde_json::from_slice(&reply).map_err(|e| format!("its digest: {e}"))
}

/// How to ask a KeyManager's replicas for their keys, or why they cannot be asked.
pub enum Replicas {
    /// Ask these, presenting the replica certificate.
    Ask {
        /// Where they are.
        addresses: Vec<ReplicaAddress>,
        /// TLS with the replica certificate and its CA.
        connector: TlsConnector,
    },
    /// Ask none.
    Skip {
        /// The `KeystoreInSync` reason.
        reason: &'static str,
        /// Why, for its message.
        message: String,
    },
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ask { addresses, .. } => f
                .debug_struct("Ask")
                .field("addresses", addresses)
                .finish_non_exhaustive(),
            Self::Skip { reason, message } => f
                .debug_struct("Skip")
                .field("reason", reason)
                .field("message", message)
                .finish(),
        }
    }
}

/// How to ask the replicas at `addresses` when any is ready: presenting `certificate`
/// (the replica certificate: chain, key and CA, kept in `source`; `None` when missing).
pub fn ask(
    addresses: Vec<ReplicaAddress>,
    any_ready: bool,
    certificate: Option<(&[u8], &[u8], &[u8])>,
    source: &str,
) -> Replicas {
    if !any_ready {
        return Replicas::Skip {
            reason: reasons::NO_REPLICA_READY,
            message: "no replica is ready to be asked for its keys".to_owned(),
        };
    }
    let Some((crt, key, ca)) = certificate else {
        return Replicas::Skip {
            reason: reasons::REPLICA_UNREACHABLE,
            message: format!("{source} (the replica certificate) not found"),
        };
    };
    match connector_from_pem(ca, Some((crt, key))) {
        Ok(connector) => Replicas::Ask {
            addresses,
            connector,
        },
        Err(e) => Replicas::Skip {
            reason: reasons::REPLICA_UNREACHABLE,
            message: format!("{source}: {e}"),
        },
    }
}

/// Pulls every replica's keys into the canonical keystore (in memory: the caller commits)
/// and reports: `KeystoreInSync` is True when every replica answered and holds exactly the
/// canonical keystore. An unreachable replica is reported, not an error.
pub async fn sync(
    keystore: &mut Canonical,
    replicas: &Replicas,
    generation: Option<i64>,
    now: &Time,
) -> Result<Synced, Error> {
    let (addresses, connector) = match replicas {
        Replicas::Ask {
            addresses,
            connector,
        } => (addresses, connector),
        Replicas::Skip { reason, message } => {
            return Ok(Synced {
                condition: condition(
                    types::KEYSTORE_IN_SYNC,
                    false,
                    reason,
                    message.clone(),
                    generation,
                    now,
                ),
                all_answered: false,
                replicas: Vec::new(),
            });
        }
    };
    let pulled = pull(addresses, connector, keystore).await;
    let added: usize = pulled
        .iter()
        .filter_map(|p| p.outcome.as_ref().ok())
        .map(|a| a.pulled)
        .sum();
    if added > 0 {
        tracing::info!(key_manager = %keystore.owner(), added, "keys pulled from replicas");
    }
    report(&pulled, keystore.keystore(), generation, now)
}
