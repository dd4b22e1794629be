//! What was last applied of each child, so that a reconcile at rest applies nothing.
//!
//! A child is applied when what the builder makes differs from what was last applied (by
//! a digest of the built object), or when the child changed since: the watches of the
//! owned kinds pass every event through [`Applied::observe`], which forgets a child whose
//! resourceVersion is no longer the one the last apply returned, or which was deleted.
//! Each child is applied again at least every [`Applied::REFRESH`] anyway, so that a change
//! a watch missed is put right within that time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::Resource;
use kube::runtime::watcher::Event;
use sha2::{Digest as _, Sha256};

/// The digest of a built object.
pub type Hash = [u8; 32];

#[derive(Debug)]
struct Entry {
    hash: Hash,
    version: Option<String>,
    at: Instant,
}

/// The children last applied, by `apiVersion/kind/namespace/name`.
#[derive(Debug, Default)]
pub struct Applied {
    entries: Mutex<HashMap<String, Entry>>,
}

fn kind_prefix(api_version: &str, kind: &str) -> String {
    format!("{api_version}/{kind}/")
}

impl Applied {
    /// How long an applied child is trusted without being applied again.
    pub const REFRESH: Duration = Duration::from_hours(1);

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key of object `name` of `K` in `namespace`.
    pub fn key<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> String {
        format!(
            "{}{namespace}/{name}",
            kind_prefix(&K::api_version(&()), &K::kind(&()))
        )
    }

    /// The digest of a built object, as it would be applied.
    pub fn hash(object: &impl serde::Serialize) -> Result<Hash, serde_json::Error> {
        Ok(Sha256::digest(serde_json::to_vec(object)?).into())
    }

    /// Whether the object at `key` was applied as `hash` and has not changed since.
    pub fn is_current(&self, key: &str, hash: &Hash) -> bool {
        self.entries()
            .get(key)
            .is_some_and(|e| e.hash == *hash && e.at.elapsed() < Self::REFRESH)
    }

    /// Records that the object at `key` was applied as `hash` and is now at `version`.
    pub fn record(&self, key: String, hash: Hash, version: Option<String>) {
        self.entries().insert(
            key,
            Entry {
                hash,
                version,
                at: Instant::now(),
            },
        );
    }

    /// Takes in a watch event of an owned kind: a child changed or deleted since it was
    /// applied is forgotten, and applied again at its next reconcile. A relist forgets
    /// every child of the kind, since a deletion may have been missed.
    pub fn observe<K: Resource<DynamicType = ()>>(&self, event: &Event<K>) {
        match event {
            Event::Apply(o) | Event::InitApply(o) => {
                let key = Self::key::<K>(
                    o.meta().namespace.as_deref().unwrap_or_default(),
                    o.meta().name.as_deref().unwrap_or_default(),
                );
                let mut entries = self.entries();
                if entries
                    .get(&key)
                    .is_some_and(|e| e.version != o.meta().resource_version)
                {
                    entries.remove(&key);
                }
            }
            Event::Delete(o) => {
                let key = Self::key::<K>(
                    o.meta().namespace.as_deref().unwrap_or_default(),
                    o.meta().name.as_deref().unwrap_or_default(),
                );
                self.entries().remove(&key);
            }
            Event::Init => {
                let prefix = kind_prefix(&K::api_version(&()), &K::kind(&()));
                self.entries().retain(|k, _| !k.starts_with(&prefix));
            }
            Event::InitDone => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn cm(name: &str, version: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("ns".to_owned()),
                resource_version: Some(version.to_owned()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    #[test]
    fn a_child_is_current_until_built_differently_changed_deleted_or_relisted() {
        let applied = Applied::default();
        let key = Applied::key::<ConfigMap>("ns", "a");
        let hash = Applied::hash(&cm("a", "")).unwrap();
        assert!(!applied.is_current(&key, &hash), "never applied");
        applied.record(key.clone(), hash, Some("7".to_owned()));
        assert!(applied.is_current(&key, &hash));
        let other = Applied::hash(&cm("a", "x")).unwrap();
        assert!(!applied.is_current(&key, &other), "built differently");
        // Its own apply, seen by the watch: still current.
        applied.observe(&Event::Apply(cm("a", "7")));
        assert!(applied.is_current(&key, &hash));
        // Changed by someone else.
        applied.observe(&Event::Apply(cm("a", "8")));
        assert!(!applied.is_current(&key, &hash));
        applied.record(key.clone(), hash, Some("9".to_owned()));
        applied.observe(&Event::Delete(cm("a", "9")));
        assert!(!applied.is_current(&key, &hash), "deleted");
        applied.record(key.clone(), hash, Some("9".to_owned()));
        // Another object's events leave it alone; a relist of its kind does not.
        applied.observe(&Event::Apply(cm("b", "1")));
        assert!(applied.is_current(&key, &hash));
        applied.observe(&Event::<ConfigMap>::Init);
        assert!(!applied.is_current(&key, &hash), "relisted");
    }
}
