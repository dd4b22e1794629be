//! KeyGroup pools: keys the operator generates into a KeyManager's keystore ahead of need.
//!
//! A pool keeps `count` unused (pre-active) keys ready and one active key, which it
//! replaces when the rotation interval has passed. The replaced key is deactivated, never
//! removed: tapes written with it must stay readable.
//!
//! Pool keys carry the server-defined attribute `y-KeyGroupPool` and dates as the key
//! server stores KMIP attributes (`kmip:<name>#<index>`, the TTLV value as JSON), so that
//! KMIP clients see them like any other attribute.

use std::time::Duration;

use jiff::Timestamp;

use crate::keystore::{Algorithm, AttributeValue, Kek, Key, KeyState, Keystore, KeystoreError};

/// Storage key of the attribute naming a key's pool.
pub const POOL_ATTRIBUTE: &str = "kmip:y-KeyGroupPool#0";
const ACTIVATION: &str = "kmip:Activation Date#0";
const DEACTIVATION: &str = "kmip:Deactivation Date#0";

/// What a pool should hold.
#[derive(Clone, Debug)]
pub struct Pool<'a> {
    /// The KeyGroup's name.
    pub name: &'a str,
    /// Prefix of generated key names.
    pub prefix: &'a str,
    /// Key length in bits.
    pub length: u16,
    /// Unused keys to keep ready.
    pub count: usize,
    /// How long a key stays active; `None`: until a person rotates it.
    pub rotation: Option<Duration>,
}

/// What a pool holds after [`maintain`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolStatus {
    /// Keys in the pool, old ones included.
    pub keys: usize,
    /// Name of the active key.
    pub active_key: Option<String>,
    /// When the active key became active.
    pub last_rotated_at: Option<Timestamp>,
}

fn text(value: &str) -> String {
    serde_json::json!({ "TextString": value }).to_string()
}

fn date(at: Timestamp) -> String {
    serde_json::json!({ "DateTime": at.as_second() }).to_string()
}

fn set(key: &mut Key, attribute: &str, value: String, now: Timestamp) {
    let at = key
        .attributes
        .get(attribute)
        .map_or(now.as_millisecond(), |old| {
            now.as_millisecond().max(old.updated_at_ms + 1)
        });
    key.attributes.insert(
        attribute.to_owned(),
        AttributeValue {
            updated_at_ms: at,
            value: Some(value),
        },
    );
}

fn activated_at(key: &Key) -> Timestamp {
    key.attributes
        .get(ACTIVATION)
        .and_then(|v| v.value.as_deref())
        .and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok())
        .and_then(|v| v["DateTime"].as_i64())
        .and_then(|s| Timestamp::from_second(s).ok())
        .unwrap_or(key.created_at)
}

/// Brings `pool` up to its spec in `keystore` at time `now`: an active key (rotated when
/// due) and `count` unused keys. Returns the pool's status and whether the keystore
/// changed. Nothing is ever removed.
pub fn maintain(
    kek: &Kek,
    keystore: &mut Keystore,
    pool: &Pool<'_>,
    now: Timestamp,
) -> Result<(PoolStatus, bool), KeystoreError> {
    let wanted = text(pool.name);
    let mut members: Vec<Key> = keystore
        .keys()
        .filter(|k| {
            k.attributes
                .get(POOL_ATTRIBUTE)
                .and_then(|v| v.value.as_ref())
                == Some(&wanted)
        })
        .cloned()
        .collect();
    members.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
    let mut changed = Vec::new();
    let generate = |members: &mut Vec<Key>| -> Result<Key, KeystoreError> {
        let name = format!("{}-{:06}", pool.prefix, members.len() + 1);
        let mut key = Key::generate(kek, name, Algorithm::Aes, pool.length, now)?;
        set(&mut key, POOL_ATTRIBUTE, wanted.clone(), now);
        members.push(key.clone());
        Ok(key)
    };

    let active = members
        .iter()
        .filter(|k| k.state == KeyState::Active)
        .max_by_key(|k| activated_at(k))
        .cloned();
    let due = match (&active, pool.rotation) {
        (None, _) => true,
        (Some(k), Some(every)) => {
            let every = jiff::SignedDuration::try_from(every).unwrap_or(jiff::SignedDuration::MAX);
            activated_at(k)
                .checked_add(every)
                .is_ok_and(|next| next <= now)
        }
        (Some(_), None) => false,
    };
    let mut current = active.clone();
    if due {
        let next = match members
            .iter()
            .find(|k| k.state == KeyState::PreActive)
            .cloned()
        {
            Some(k) => k,
            None => generate(&mut members)?,
        };
        if let Some(mut old) = active {
            old.state = KeyState::Deactivated;
            set(&mut old, DEACTIVATION, date(now), now);
            changed.push(old);
        }
        let mut next = next;
        next.state = KeyState::Active;
        set(&mut next, ACTIVATION, date(now), now);
        if let Some(m) = members.iter_mut().find(|m| m.id == next.id) {
            *m = next.clone();
        }
        changed.push(next.clone());
        current = Some(next);
    }
    while members
        .iter()
        .filter(|k| k.state == KeyState::PreActive)
        .count()
        < pool.count
    {
        let key = generate(&mut members)?;
        changed.push(key);
    }
    for key in &changed {
        keystore.insert(key.clone())?;
    }
    Ok((
        PoolStatus {
            keys: members.len(),
            active_key: current.as_ref().map(|k| k.name.clone()),
            last_rotated_at: current.as_ref().map(activated_at),
        },
        !changed.is_empty(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystore::KeyState::{Active, Deactivated, PreActive};

    fn pool(rotation: Option<Duration>) -> Pool<'static> {
        Pool {
            name: "lto",
            prefix: "LTO",
            length: 256,
            count: 3,
            rotation,
        }
    }

    fn states(ks: &Keystore) -> Vec<KeyState> {
        let mut keys: Vec<&Key> = ks.keys().collect();
        keys.sort_by(|a, b| a.name.cmp(&b.name));
        keys.iter().map(|k| k.state).collect()
    }

    #[test]
    fn a_new_pool_gets_an_active_key_and_its_spares_and_then_holds_still() {
        let kek = Kek::generate();
        let mut ks = Keystore::new();
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let (status, changed) = maintain(&kek, &mut ks, &pool(None), t0).unwrap();
        assert!(changed);
        assert_eq!(status.keys, 4);
        assert_eq!(status.active_key.as_deref(), Some("LTO-000001"));
        assert_eq!(status.last_rotated_at, Some(t0));
        assert_eq!(states(&ks), [Active, PreActive, PreActive, PreActive]);
        let digest = ks.digest().unwrap();
        let later = t0
            .checked_add(jiff::SignedDuration::from_hours(10_000))
            .unwrap();
        let (again, changed) = maintain(&kek, &mut ks, &pool(None), later).unwrap();
        assert!(!changed, "without a rotation interval nothing changes");
        assert_eq!(again, status);
        assert_eq!(ks.digest().unwrap(), digest);
    }

    #[test]
    fn rotation_deactivates_the_old_key_keeps_it_and_replenishes() {
        let kek = Kek::generate();
        let mut ks = Keystore::new();
        let hour = Duration::from_hours(1);
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        maintain(&kek, &mut ks, &pool(Some(hour)), t0).unwrap();
        let early = t0.checked_add(jiff::SignedDuration::from_mins(59)).unwrap();
        assert!(!maintain(&kek, &mut ks, &pool(Some(hour)), early).unwrap().1);
        let due = t0.checked_add(jiff::SignedDuration::from_hours(1)).unwrap();
        let (status, changed) = maintain(&kek, &mut ks, &pool(Some(hour)), due).unwrap();
        assert!(changed);
        assert_eq!(status.active_key.as_deref(), Some("LTO-000002"));
        assert_eq!(
            status.keys, 5,
            "the old key stays; a new spare replaces the one activated"
        );
        assert_eq!(
            states(&ks),
            [Deactivated, Active, PreActive, PreActive, PreActive]
        );
        let old = ks.keys().find(|k| k.name == "LTO-000001").unwrap();
        assert!(
            kek.open(&old.id, &old.material).is_ok(),
            "old tapes stay readable"
        );
    }

    #[test]
    fn pools_of_one_keystore_do_not_mix() {
        let kek = Kek::generate();
        let mut ks = Keystore::new();
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        maintain(&kek, &mut ks, &pool(None), t0).unwrap();
        let other = Pool {
            name: "vault",
            prefix: "VLT",
            ..pool(None)
        };
        let (status, _) = maintain(&kek, &mut ks, &other, t0).unwrap();
        assert_eq!(status.keys, 4);
        assert_eq!(status.active_key.as_deref(), Some("VLT-000001"));
        assert_eq!(ks.len(), 8);
    }
}
