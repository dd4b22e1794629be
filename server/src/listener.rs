//! What both listeners (KMIP and the admin API) share: connection slots that keep room
//! for authenticated clients, an accept that backs off instead of spinning, and the
//! shutdown grace.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::metrics::Metrics;

/// How long shutdown waits for requests in flight.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The first pause after a failed accept; it doubles with each failure in a row.
const ACCEPT_PAUSE: Duration = Duration::from_millis(10);

/// The longest pause between attempts to accept.
const MAX_ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// The connection slots of one listener: at most `max` connections at once, of which at
/// most `max_unauthenticated` may not have authenticated yet, so the rest is kept for
/// clients that have. A new connection that finds no room makes it by taking the place of
/// the oldest unauthenticated one (it has had the longest to authenticate); only when every
/// slot is held by an authenticated connection does it wait.
#[derive(Debug)]
pub(crate) struct Slots {
    listener: &'static str,
    permits: Arc<Semaphore>,
    max_unauthenticated: usize,
    /// Unauthenticated connections by arrival, each with the token that drops it.
    unauthenticated: Mutex<BTreeMap<u64, CancellationToken>>,
    next: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Slots {
    /// Slots for `listener` (`kmip` or `admin`, as labelled in the metrics).
    pub(crate) fn new(
        listener: &'static str,
        max: usize,
        max_unauthenticated: usize,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            listener,
            permits: Arc::new(Semaphore::new(max)),
            max_unauthenticated,
            unauthenticated: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(0),
            metrics,
        })
    }

    /// A slot for a connection just accepted, unauthenticated until
    /// [`Slot::authenticated`]; `None` once the slots are closed. Call it from one accept
    /// loop, one connection at a time.
    pub(crate) async fn admit(self: &Arc<Self>) -> Option<Slot> {
        let entry = Entry {
            slots: Arc::clone(self),
            id: self.next.fetch_add(1, Ordering::Relaxed),
            dropped: CancellationToken::new(),
        };
        {
            let mut open = self.lock();
            open.insert(entry.id, entry.dropped.clone());
            if open.len() > self.max_unauthenticated {
                self.drop_oldest(&mut open, entry.id);
            }
        }
        let permit = if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            permit
        } else {
            self.drop_oldest(&mut self.lock(), entry.id);
            Arc::clone(&self.permits).acquire_owned().await.ok()?
        };
        Some(Slot {
            entry,
            _permit: permit,
        })
    }

    fn drop_oldest(&self, open: &mut BTreeMap<u64, CancellationToken>, newcomer: u64) {
        let oldest = open.keys().next().copied().filter(|&id| id != newcomer);
        if let Some(token) = oldest.and_then(|id| open.remove(&id)) {
            token.cancel();
            self.metrics.refused(self.listener, "evicted");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, CancellationToken>> {
        self.unauthenticated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection's place among the unauthenticated ones, left when dropped (also when
/// [`Slots::admit`] is abandoned while waiting).
#[derive(Debug)]
struct Entry {
    slots: Arc<Slots>,
    id: u64,
    dropped: CancellationToken,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.slots.lock().remove(&self.id);
    }
}

/// A connection's slot, given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    entry: Entry,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    /// The connection has authenticated: it keeps its slot until it ends.
    pub(crate) fn authenticated(&self) {
        self.entry.slots.lock().remove(&self.entry.id);
    }

    /// Completes when the connection must give its slot to a newer one (never, once
    /// authenticated).
    pub(crate) fn dropped(&self) -> WaitForCancellationFuture<'_> {
        self.entry.dropped.cancelled()
    }
}

/// Accepts the next connection on `listener` (`kmip` or `admin`). A failure (out of file
/// descriptors, say) is retried after a pause that doubles up to a second, so the loop
/// never spins, and is logged once per run of failures, not once each.
pub(crate) async fn accept(
    listener: &TcpListener,
    name: &'static str,
    metrics: &Metrics,
) -> (TcpStream, SocketAddr) {
    let mut failures = 0u64;
    let mut pause = ACCEPT_PAUSE;
    loop {
        match listener.accept().await {
            Ok(accepted) => {
                if failures > 0 {
                    tracing::info!(listener = name, failures, "accepting connections again");
                }
                return accepted;
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(
                        listener = name,
                        error = %e,
                        "failed to accept a connection; retrying, more slowly while it fails"
                    );
                }
                failures += 1;
                metrics.refused(name, "accept_failed");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_ACCEPT_PAUSE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::timeout;

    use super::*;

    fn evicted(slot: &Slot) -> bool {
        slot.entry.dropped.is_cancelled()
    }

    #[tokio::test]
    async fn newcomers_take_the_place_of_the_oldest_unauthenticated_connection() {
        let metrics = Metrics::new(&[]);
        let slots = Slots::new("kmip", 3, 2, Arc::clone(&metrics));
        let first = slots.admit().await.unwrap();
        let second = slots.admit().await.unwrap();
        // Past the unauthenticated share: the oldest goes, though slots are free.
        let third = slots.admit().await.unwrap();
        assert!(evicted(&first) && !evicted(&second) && !evicted(&third));
        drop(first);
        second.authenticated();
        third.authenticated();
        let fourth = slots.admit().await.unwrap();
        // Every slot taken: the newcomer waits for the oldest unauthenticated one to go.
        let waiting = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.admit().await }
        });
        let made_room = timeout(Duration::from_secs(30), async {
            while !evicted(&fourth) {
                tokio::task::yield_now().await;
            }
        });
        assert!(made_room.await.is_ok(), "the newcomer makes room");
        assert!(
            !evicted(&second) && !evicted(&third),
            "authenticated slots stay"
        );
        drop(fourth);
        let fifth = waiting.await.unwrap().unwrap();
        assert!(!evicted(&fifth));
        let text = metrics.encode(0);
        assert!(
            text.contains(r#"shadowkeep_refusals_total{listener="kmip",reason="evicted"} 2"#),
            "{text}"
        );
    }
}
