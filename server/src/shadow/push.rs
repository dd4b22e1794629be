//! A replica's push of new keys to its registered shadows, as to its peers: every new key
//! goes to every shadow whose admin API it knows (from its poll reports), over one kept-alive
//! connection per shadow that batches what queued meanwhile, and a Create waits for
//! `shadowAcknowledgements` of them to hold it, so that a key is at the other site before a
//! tape is written with it. A push a shadow misses it takes at its next poll.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shadowkeep_api::keystore::Key;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

use super::registry::Registry;
use crate::metrics::Metrics;
use crate::replication::{PeerLink, Push, publish_to, push_counting, push_loop};

/// Pushes new keys to registered shadows.
pub struct ShadowPush {
    registry: Arc<Registry>,
    connector: TlsConnector,
    required: usize,
    timeout: Duration,
    metrics: Arc<Metrics>,
    /// A pusher task per shadow, at the admin address it last reported.
    pushers: Mutex<BTreeMap<String, (SocketAddr, mpsc::Sender<Push>)>>,
}

impl std::fmt::Debug for ShadowPush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShadowPush")
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

impl ShadowPush {
    /// Pushes through `connector` (the replica's peer certificate, which shadows allow to
    /// merge) to the shadows `registry` knows; `required` acknowledgements within `timeout`.
    pub fn new(
        registry: Arc<Registry>,
        connector: TlsConnector,
        required: usize,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            registry,
            connector,
            required,
            timeout,
            metrics,
            pushers: Mutex::new(BTreeMap::new()),
        }
    }

    /// Shadow acknowledgements a new key needs.
    pub fn required(&self) -> usize {
        self.required
    }

    /// Pushes `keys` to every known shadow; returns how many took them all within the
    /// timeout, stopping at the number required.
    pub async fn push(&self, keys: &[Key]) -> usize {
        push_counting(&self.pushers(), keys, self.required, self.timeout).await
    }

    /// Pushes `keys` to every known shadow without waiting.
    pub fn publish(&self, keys: &[Key]) {
        publish_to(&self.pushers(), keys);
    }

    /// The pushers of the shadows registered now: new ones started, those of shadows gone
    /// or moved dropped (which ends their task).
    fn pushers(&self) -> Vec<mpsc::Sender<Push>> {
        let known = self.registry.admin_addresses();
        let mut pushers = self
            .pushers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pushers.retain(|name, (address, _)| known.iter().any(|(n, a)| n == name && a == address));
        for (name, address) in known {
            pushers.entry(name.clone()).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(8192);
                let link = PeerLink::new(&name, &address.to_string(), self.connector.clone());
                tokio::spawn(push_loop(link, rx, Arc::clone(&self.metrics)));
                (address, tx)
            });
        }
        pushers.values().map(|(_, tx)| tx.clone()).collect()
    }
}
