//! The index of who serves each drive, kept from a watch of the drive-history ConfigMaps.
//! The rules, and carrying a drive's keys, are [`crate::core::drive_moves`].

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use shadowkeep_api::drive_history::{DriveHistory, HISTORY_FILE};

use super::state::HISTORY_LABEL;
use crate::core::drive_moves::{DriveIndex, key_manager_ref};

/// The KeyManager (`namespace/name`) and history a history ConfigMap holds; `None` for a
/// ConfigMap that is not a readable history.
fn history_of(cm: &ConfigMap) -> Option<(String, DriveHistory)> {
    let owner = cm.labels().get(HISTORY_LABEL)?;
    let reference = key_manager_ref(&cm.namespace()?, owner);
    let text = cm.data.as_ref()?.get(HISTORY_FILE)?;
    match DriveHistory::from_json(text) {
        Ok(history) => Some((reference, history)),
        Err(e) => {
            tracing::warn!(history = %reference, error = %e, "unreadable drive history; ignored");
            None
        }
    }
}

fn apply(index: &mut DriveIndex, cm: &ConfigMap) {
    if let Some((reference, history)) = history_of(cm) {
        index.apply(&reference, &history);
    }
}

fn delete(index: &mut DriveIndex, cm: &ConfigMap) {
    if let Some((reference, history)) = history_of(cm) {
        index.delete(&reference, &history);
    }
}

/// The [`DriveIndex`] shared by reconciles, and whether its first list has arrived.
#[derive(Debug, Default)]
pub struct SharedDriveIndex {
    index: std::sync::RwLock<DriveIndex>,
    ready: tokio::sync::Notify,
    is_ready: std::sync::atomic::AtomicBool,
}

impl SharedDriveIndex {
    /// An index of the given history ConfigMaps, ready at once.
    pub fn of(cms: &[ConfigMap]) -> Self {
        let mut index = DriveIndex::default();
        for cm in cms {
            apply(&mut index, cm);
        }
        let shared = Self {
            index: std::sync::RwLock::new(index),
            ..Self::default()
        };
        shared
            .is_ready
            .store(true, std::sync::atomic::Ordering::Release);
        shared
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, DriveIndex> {
        self.index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The KeyManagers other than `me` that serve `serial`.
    pub fn others_serving(&self, serial: &str, me: &str) -> Vec<String> {
        self.index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .others_serving(serial, me)
    }

    /// Follows a watch of history ConfigMaps until it ends. A relist builds a new index
    /// and swaps it in whole, so a history deleted while the watch was down is forgotten.
    pub async fn follow(
        &self,
        events: impl futures::Stream<
            Item = Result<kube::runtime::watcher::Event<ConfigMap>, kube::runtime::watcher::Error>,
        >,
    ) {
        use futures::StreamExt as _;
        use kube::runtime::watcher::Event;

        let mut pending: Option<DriveIndex> = None;
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Init) => pending = Some(DriveIndex::default()),
                Ok(Event::InitApply(cm)) => {
                    if let Some(p) = pending.as_mut() {
                        apply(p, &cm);
                    }
                }
                Ok(Event::InitDone) => {
                    if let Some(p) = pending.take() {
                        *self.write() = p;
                    }
                    self.is_ready
                        .store(true, std::sync::atomic::Ordering::Release);
                    self.ready.notify_waiters();
                }
                Ok(Event::Apply(cm)) => apply(&mut self.write(), &cm),
                Ok(Event::Delete(cm)) => delete(&mut self.write(), &cm),
                Err(e) => tracing::warn!(error = %e, "drive history watch failed; retrying"),
            }
        }
    }

    /// Waits for the first complete list.
    pub async fn wait_until_ready(&self) {
        loop {
            let notified = self.ready.notified();
            if self.is_ready.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::state::history_name;
    use jiff::Timestamp;
    use kube::runtime::watcher::Event;
    use serde_json::json;

    fn history_cm(ns: &str, km: &str, served: &[&str], moved: &[&str]) -> ConfigMap {
        let mut history = DriveHistory::new();
        for serial in served.iter().chain(moved) {
            history.record(serial, None, Timestamp::UNIX_EPOCH);
        }
        for serial in moved {
            history.moved(serial, "elsewhere/km");
        }
        serde_json::from_value(json!({
            "metadata": {"name": history_name(km), "namespace": ns,
                         "labels": {HISTORY_LABEL: km}},
            "data": {HISTORY_FILE: history.to_json()},
        }))
        .unwrap()
    }

    #[test]
    fn the_index_reads_labelled_history_config_maps_only() {
        let mut index = DriveIndex::default();
        apply(&mut index, &history_cm("a", "x", &["D1"], &[]));
        assert_eq!(index.others_serving("D1", "c/z"), ["a/x"]);
        delete(&mut index, &history_cm("a", "x", &["D1"], &[]));
        assert!(index.others_serving("D1", "c/z").is_empty());
        // Not a history: ignored.
        let mut unlabelled = history_cm("a", "w", &["D9"], &[]);
        unlabelled.metadata.labels = None;
        apply(&mut index, &unlabelled);
        assert!(index.others_serving("D9", "c/z").is_empty());
        let mut corrupt = history_cm("a", "v", &["D8"], &[]);
        corrupt.data = Some([(HISTORY_FILE.to_owned(), "{".to_owned())].into());
        apply(&mut index, &corrupt);
        assert!(index.others_serving("D8", "c/z").is_empty());
    }
    #[tokio::test]
    async fn a_relist_replaces_the_index_and_readiness_waits_for_the_first() {
        let shared = std::sync::Arc::new(SharedDriveIndex::default());
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let follower = std::sync::Arc::clone(&shared);
        let task = tokio::spawn(async move { follower.follow(rx).await });
        let send = |e| tx.unbounded_send(Ok(e)).unwrap();
        send(Event::Init);
        send(Event::InitApply(history_cm("a", "x", &["D1"], &[])));
        let waited = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            shared.wait_until_ready(),
        )
        .await;
        assert!(waited.is_err(), "not ready before the list is complete");
        send(Event::InitDone);
        shared.wait_until_ready().await;
        assert_eq!(shared.others_serving("D1", "c/z"), ["a/x"]);
        send(Event::Apply(history_cm("b", "y", &["D2"], &[])));
        // A relist without x: x's drives are forgotten.
        send(Event::Init);
        send(Event::InitApply(history_cm("b", "y", &["D2"], &[])));
        send(Event::InitDone);
        drop(tx);
        task.await.unwrap();
        assert!(shared.others_serving("D1", "c/z").is_empty());
        assert_eq!(shared.others_serving("D2", "c/z"), ["b/y"]);
    }
}
