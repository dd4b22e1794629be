//! Mirrored replicas: new keys are pushed to every peer as they are made (and a Create
//! waits for the configured number of acknowledgements), and every replica pulls what it
//! lacks from every peer at start-up and on an interval (anti-entropy), so that after a
//! crash or a partition all replicas converge to the union of their keystores.
//!
//! Peers talk over the admin API (HTTPS with client certificates); see [`crate::admin`].

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, StatusCode};
use shadowkeep_api::keystore::{Kek, Key, Keystore};
use shadowkeep_api::replica_sync::{MergeReply, summary};
use shadowkeep_api::server_config::{PeerConfig, ReplicationConfig};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::https::{ClientFiles, connector, http1_connect, send_with};
use crate::metrics::Metrics;
use crate::store::Store;

/// Most keys pushed to a peer in one request.
const MAX_PUSH: usize = 1024;

/// The configured peers, less this replica. The operator renders one configuration for
/// every replica, listing them all; each leaves itself out by name (a StatefulSet pod's host
/// name is its replica name).
pub fn peers_of(config: &ReplicationConfig) -> Vec<&PeerConfig> {
    let me = replica_name();
    config.peers.iter().filter(|p| p.name != me).collect()
}

/// This replica's name: environment `SHADOWKEEP_REPLICA_NAME`, else `HOSTNAME` (a
/// StatefulSet pod's name, its ordinal in it).
pub fn replica_name() -> String {
    std::env::var("SHADOWKEEP_REPLICA_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default()
}

/// Request header naming the calling replica, so that peers can tell two running replicas
/// with one name apart.
pub const REPLICA_HEADER: &str = "x-shadowkeep-replica";
/// Request header carrying the calling replica's instance id.
pub const INSTANCE_HEADER: &str = "x-shadowkeep-instance";

/// Who this replica is when it calls its peers.
#[derive(Clone, Debug)]
pub struct PeerIdentity {
    /// Its replica name.
    pub name: String,
    /// Its persistent instance id.
    pub instance_id: uuid::Uuid,
}

/// Keys for one peer (or shadow), and where to say whether it took them all.
pub(crate) struct Push {
    pub(crate) keys: Vec<Key>,
    pub(crate) done: Option<oneshot::Sender<bool>>,
}

/// Why replication could not start.
#[derive(Debug, thiserror::Error)]
#[error("failed to set up replication: {0}")]
pub struct ReplicationError(String);

impl ReplicationError {
    /// A failure described by `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}

/// The peers of this replica and the tasks that keep them level.
pub struct Replication {
    pushers: Vec<mpsc::Sender<Push>>,
    required: usize,
    ack_timeout: Duration,
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replication")
            .field("peers", &self.pushers.len())
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

impl Replication {
    /// Starts a pusher per peer and the anti-entropy loop. `ca` is the CA that signed the
    /// peers' certificates.
    pub fn start(
        config: &ReplicationConfig,
        ca: &std::path::Path,
        store: Store,
        kek: Kek,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
        identity: &PeerIdentity,
    ) -> Result<Arc<Self>, ReplicationError> {
        let connector = connector(&ClientFiles {
            ca: ca.to_owned(),
            cert: Some(config.client_cert.clone()),
            key: Some(config.client_key.clone()),
        })
        .map_err(|e| ReplicationError(e.to_string()))?;
        let peers = peers_of(config);
        let required = config
            .peer_acknowledgements
            .unwrap_or_else(|| usize::from(!peers.is_empty()));
        if required > peers.len() {
            return Err(ReplicationError(format!(
                "{required} peer acknowledgements required but only {} peers besides this replica",
                peers.len()
            )));
        }
        let mut pushers = Vec::new();
        let mut pullers = Vec::new();
        for peer in peers {
            let (tx, rx) = mpsc::channel(8192);
            pushers.push(tx);
            let link =
                PeerLink::new(&peer.name, &peer.address, connector.clone()).calling_as(identity);
            tokio::spawn(push_loop(link, rx, Arc::clone(&metrics)));
            pullers.push(
                PeerLink::new(&peer.name, &peer.address, connector.clone()).calling_as(identity),
            );
        }
        tokio::spawn(anti_entropy(
            pullers,
            store,
            kek,
            metrics,
            Duration::from_secs(config.sync_interval_secs),
            cancel,
        ));
        Ok(Arc::new(Self {
            pushers,
            required,
            ack_timeout: Duration::from_millis(config.ack_timeout_ms),
        }))
    }

    /// Acknowledgements a new key needs.
    pub fn required(&self) -> usize {
        self.required
    }

    /// Pushes `keys` to every peer and waits until `required` have stored them or the ack
    /// timeout passes. Returns the acknowledgements received.
    pub async fn replicate(&self, keys: &[Key]) -> usize {
        push_counting(&self.pushers, keys, self.required, self.ack_timeout).await
    }

    /// Pushes `keys` to every peer without waiting (state changes; anti-entropy repairs
    /// what a push misses).
    pub fn publish(&self, keys: &[Key]) {
        publish_to(&self.pushers, keys);
    }
}

/// Hands `keys` to every pusher and waits until `required` of them have stored them or
/// `timeout` passes; returns the acknowledgements received. A full queue counts as no.
pub(crate) async fn push_counting(
    pushers: &[mpsc::Sender<Push>],
    keys: &[Key],
    required: usize,
    timeout: Duration,
) -> usize {
    let mut waits = JoinSet::new();
    for pusher in pushers {
        let (done, wait) = oneshot::channel();
        let push = Push {
            keys: keys.to_vec(),
            done: Some(done),
        };
        if pusher.try_send(push).is_ok() {
            waits.spawn(async move { wait.await.unwrap_or(false) });
        }
    }
    let mut acks = 0;
    let deadline = tokio::time::Instant::now() + timeout;
    while acks < required {
        match tokio::time::timeout_at(deadline, waits.join_next()).await {
            Ok(Some(Ok(true))) => acks += 1,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    acks
}

/// Hands `keys` to every pusher without waiting (anti-entropy and polls repair what a push
/// misses).
pub(crate) fn publish_to(pushers: &[mpsc::Sender<Push>], keys: &[Key]) {
    for pusher in pushers {
        let _ = pusher.try_send(Push {
            keys: keys.to_vec(),
            done: None,
        });
    }
}

/// Sends what arrives on `rx` to `link`, batching what queued meanwhile, until every sender
/// is dropped.
pub(crate) async fn push_loop(
    mut link: PeerLink,
    mut rx: mpsc::Receiver<Push>,
    metrics: Arc<Metrics>,
) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        let mut count = group[0].keys.len();
        while count < MAX_PUSH {
            match rx.try_recv() {
                Ok(more) => {
                    count += more.keys.len();
                    group.push(more);
                }
                Err(_) => break,
            }
        }
        let mut batch = Keystore::new();
        for push in &group {
            for key in &push.keys {
                let _ = batch.insert(key.clone());
            }
        }
        // `Some(reply)` when the peer answered the merge, `None` when the exchange failed.
        let answer = match batch.to_bytes() {
            Ok(body) => match link.post("/v1/keystore/merge", body).await {
                Ok((StatusCode::OK, _)) => Some(MergeReply::default()),
                Ok((status, body)) => {
                    tracing::warn!(peer = %link.name, %status, body = %String::from_utf8_lossy(&body), "peer did not take every pushed key");
                    (status == StatusCode::CONFLICT)
                        .then(|| serde_json::from_slice::<MergeReply>(&body).ok())
                        .flatten()
                }
                Err(e) => {
                    tracing::warn!(peer = %link.name, error = %e, "failed to push keys to peer");
                    None
                }
            },
            Err(_) => None,
        };
        if answer.is_some() {
            metrics.synced(&link.name);
        } else {
            metrics.failed(&link.name);
        }
        for push in group {
            if let Some(done) = push.done {
                let _ = done.send(answer.as_ref().is_some_and(|r| holds(r, &push.keys)));
            }
        }
    }
}

/// Whether a peer that answered a merge with `reply` took every one of `keys`: none is
/// among the records it reports as conflicting or refused.
fn holds(reply: &MergeReply, keys: &[Key]) -> bool {
    keys.iter().all(|k| {
        let id = k.id.as_str();
        !reply.conflicts.iter().any(|c| c == id) && !reply.refused.iter().any(|r| r.id == id)
    })
}

async fn anti_entropy(
    mut peers: Vec<PeerLink>,
    store: Store,
    kek: Kek,
    metrics: Arc<Metrics>,
    interval: Duration,
    cancel: CancellationToken,
) {
    loop {
        for peer in &mut peers {
            match pull(peer, &store, &kek).await {
                Ok(n) => {
                    metrics.synced(&peer.name);
                    if n > 0 {
                        tracing::info!(peer = %peer.name, records = n, "pulled missing records from peer");
                    }
                }
                Err(e) => {
                    metrics.failed(&peer.name);
                    tracing::warn!(peer = %peer.name, error = %e, "anti-entropy with peer failed");
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Asks `peer` for what this replica lacks and stores it. Returns the records taken.
async fn pull(peer: &mut PeerLink, store: &Store, kek: &Kek) -> Result<usize, String> {
    let mine = store.read(summary);
    let body = serde_json::to_vec(&mine).map_err(|e| e.to_string())?;
    let (status, reply) = peer.post("/v1/keystore/delta", body).await?;
    if status != StatusCode::OK {
        return Err(format!(
            "peer answered {status}: {}",
            String::from_utf8_lossy(&reply)
        ));
    }
    let theirs = Keystore::from_bytes(&reply).map_err(|e| e.to_string())?;
    let wanted: Vec<Key> = store.read(|local| theirs.delta_for(local).keys().cloned().collect());
    let n = wanted.len();
    if n == 0 {
        return Ok(0);
    }
    let refused = store
        .commit_from_elsewhere(wanted, kek)
        .await
        .map_err(|e| e.to_string())?;
    for r in &refused {
        tracing::error!(peer = %peer.name, key = %r.id, reason = %r.reason, "refused a record from a peer; the peer keeps it");
    }
    Ok(n - refused.len())
}

/// One HTTP/1.1 connection to a peer's admin API, reopened when it breaks.
pub(crate) struct PeerLink {
    name: String,
    address: String,
    connector: TlsConnector,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// Headers naming this replica on every request.
    headers: Vec<(&'static str, String)>,
}

impl PeerLink {
    pub(crate) fn new(name: &str, address: &str, connector: TlsConnector) -> Self {
        Self {
            name: name.to_owned(),
            address: address.to_owned(),
            connector,
            sender: None,
            headers: Vec::new(),
        }
    }

    /// Names this replica on every request.
    pub(crate) fn calling_as(mut self, identity: &PeerIdentity) -> Self {
        self.headers = vec![
            (REPLICA_HEADER, identity.name.clone()),
            (INSTANCE_HEADER, identity.instance_id.to_string()),
        ];
        self
    }

    async fn post(&mut self, path: &str, body: Vec<u8>) -> Result<(StatusCode, Vec<u8>), String> {
        // The peer closes a connection silent for its idle timeout, and may do so just as a
        // request goes out on it; merge and delta may be sent twice, so a failure on a
        // kept-alive connection is tried once more on a new one.
        if self.sender.as_ref().is_some_and(|s| !s.is_closed()) {
            if let Ok(answer) = self.try_post(path, body.clone()).await {
                return Ok(answer);
            }
            self.sender = None;
        }
        let result = self.try_post(path, body).await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn try_post(
        &mut self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Vec<u8>), String> {
        if self.sender.as_ref().is_none_or(SendRequest::is_closed) {
            self.sender = Some(http1_connect(&self.address, &self.connector).await?);
        }
        let sender = self
            .sender
            .as_mut()
            .ok_or_else(|| "not connected".to_owned())?;
        send_with(
            sender,
            &self.address,
            Method::POST,
            path,
            body,
            &self.headers,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use shadowkeep_api::keystore::{Algorithm, Kek};

    use shadowkeep_api::replica_sync::RefusedRecord;

    use super::*;

    #[test]
    fn a_push_is_acknowledged_only_when_the_peer_took_each_of_its_keys() {
        let kek = Kek::generate();
        let key = |name: &str| {
            Key::generate(&kek, name, Algorithm::Aes, 256, jiff::Timestamp::now()).unwrap()
        };
        let (taken, contested, refused) = (key("A"), key("B"), key("C"));
        let reply = MergeReply {
            received: 3,
            stored: 1,
            conflicts: vec![contested.id.to_string()],
            refused: vec![RefusedRecord {
                id: refused.id.to_string(),
                reason: "does not open".to_owned(),
            }],
        };
        assert!(holds(&reply, std::slice::from_ref(&taken)));
        assert!(!holds(&reply, &[taken.clone(), contested]));
        assert!(!holds(&reply, &[refused]));
        assert!(holds(&MergeReply::default(), &[taken]));
    }
}
