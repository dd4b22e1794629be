//! A replica's push of new keys to its registered shadows, as to its peers: every new key
//! goes to every shadow whose admin API it knows (from its poll reports), and a Create waits
//! for `shadowAcknowledgements` of them to hold it, so that a key is at the other site before
//! a tape is written with it.

use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};
use shadowkeep_api::keystore::{Key, Keystore};
use shadowkeep_api::replica_sync::MergeReply;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use super::registry::Registry;
use crate::client::https;

/// Pushes new keys to registered shadows.
pub struct ShadowPush {
    registry: Arc<Registry>,
    connector: TlsConnector,
    required: usize,
    timeout: Duration,
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
    ) -> Self {
        Self {
            registry,
            connector,
            required,
            timeout,
        }
    }

    /// Shadow acknowledgements a new key needs.
    pub fn required(&self) -> usize {
        self.required
    }

    /// Pushes `keys` to every known shadow; returns how many took them all within the
    /// timeout, stopping at the number required (the other pushes finish on their own).
    pub async fn push(&self, keys: &[Key]) -> usize {
        let mut pushes = self.spawn_pushes(keys);
        let mut acks = 0;
        let deadline = tokio::time::Instant::now() + self.timeout;
        while acks < self.required {
            match tokio::time::timeout_at(deadline, pushes.join_next()).await {
                Ok(Some(Ok(true))) => acks += 1,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        pushes.detach_all();
        acks
    }

    /// Pushes `keys` to every known shadow without waiting.
    pub fn publish(&self, keys: &[Key]) {
        self.spawn_pushes(keys).detach_all();
    }

    fn spawn_pushes(&self, keys: &[Key]) -> JoinSet<bool> {
        let mut pushes = JoinSet::new();
        let mut batch = Keystore::new();
        for key in keys {
            let _ = batch.insert(key.clone());
        }
        let Ok(body) = batch.to_bytes() else {
            return pushes;
        };
        for (shadow, address) in self.registry.admin_addresses() {
            let connector = self.connector.clone();
            let body = body.clone();
            let timeout = self.timeout;
            pushes.spawn(async move {
                let address = address.to_string();
                let answer = tokio::time::timeout(
                    timeout,
                    https(&address, &connector, Method::POST, "/v1/keystore/merge", body),
                )
                .await;
                match answer {
                    Ok(Ok((StatusCode::OK, reply))) => {
                        serde_json::from_slice::<MergeReply>(&reply).is_ok()
                    }
                    Ok(Ok((status, reply))) => {
                        tracing::warn!(shadow, %status, body = %String::from_utf8_lossy(&reply).trim(), "shadow did not take every pushed key");
                        false
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(shadow, error = %e, "failed to push keys to shadow");
                        false
                    }
                    Err(_) => {
                        tracing::warn!(shadow, "pushing keys to shadow timed out");
                        false
                    }
                }
            });
        }
        pushes
    }
}
