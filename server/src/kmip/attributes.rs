//! KMIP attributes on keystore keys.
//!
//! A few attributes are the key itself and are computed (Unique Identifier, Object Type,
//! Cryptographic Algorithm and Length, State, Initial Date, Last Change Date). The rest are
//! kept in the key's attribute map, one entry per instance, under `kmip:<name>#<index>`,
//! holding the TTLV value as JSON. Each entry carries the time it was written, so replicas
//! that changed the same attribute agree on the latest value; a deleted instance stays as a
//! tombstone so that the deletion, too, reaches every replica.
//!
//! # Limits
//!
//! Every change rewrites the key's whole record, and a record over the store's limit
//! ([`MAX_RECORD`](crate::store::MAX_RECORD), 1 MiB) could not be replayed, so a client's
//! attributes are bounded per object:
//!
//! - an Attribute Name is at most [`MAX_NAME_LEN`] (128) bytes;
//! - a text, byte string or big integer value is at most [`MAX_TEXT`] (4,096) bytes;
//! - an object holds at most [`MAX_INSTANCES`] (64) instances of the attributes clients
//!   set, deleted ones (tombstones) included. A new instance takes the lowest index without
//!   a live instance, so deleting and adding again reuses the tombstone's slot and the
//!   record does not grow with the history of changes;
//! - an object's record is at most [`MAX_OBJECT_BYTES`] (256 KiB), a quarter of the store's
//!   limit, so that records of one key that replicas changed independently still merge
//!   into one the store accepts.
//!
//! The OASIS Tape Library Profile needs 30 custom attributes of 255 or more characters per
//! object; 30 of 4,096 bytes fit. A change that would take an object over a limit is
//! refused with Invalid Field and changes nothing; a change that does not take it further
//! over (a record that merging made larger) is allowed. The attributes the server sets
//! with a state change (dates, Revocation Reason, key group) are few and bounded, and are
//! never refused for size, so that a key can always be revoked or destroyed.

use shadowkeep_api::keystore::{AttributeValue, Key, KeyState};

use super::enums::{algorithm, object_type, result_reason, state};
use super::{KmipError, tag};
use crate::ttlv::{Item, Tag, Value};

const PREFIX: &str = "kmip:";

/// Attributes the server computes from the key; clients cannot set them.
const COMPUTED: [&str; 7] = [
    "Unique Identifier",
    "Object Type",
    "Cryptographic Algorithm",
    "Cryptographic Length",
    "State",
    "Initial Date",
    "Last Change Date",
];

/// The server-defined attribute naming the key group of the drive that made a key.
pub const KEY_GROUP: &str = "y-KeyGroup";

/// Attributes only the server sets, as a side effect of an operation.
const SERVER_SET: [&str; 6] = [
    "Activation Date",
    "Deactivation Date",
    "Destroy Date",
    "Revocation Reason",
    "Compromise Date",
    "Compromise Occurrence Date",
];

/// Attributes a client may set, and whether they may have several instances.
const CLIENT_SET: [(&str, bool); 7] = [
    ("Name", true),
    ("Application Specific Information", true),
    ("Alternative Name", true),
    ("Object Group", true),
    ("Contact Information", false),
    ("Cryptographic Usage Mask", false),
    ("Operation Policy Name", false),
];

/// Longest text, byte string or big integer value accepted in an attribute.
pub const MAX_TEXT: usize = 4096;

/// Longest Attribute Name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Most instances of client-set attributes an object holds, deleted ones included.
pub const MAX_INSTANCES: usize = 64;

/// Largest record an object may reach through a client's attribute changes.
pub const MAX_OBJECT_BYTES: usize = crate::store::MAX_RECORD / 4;

/// One attribute instance: name, index and value (the Attribute Value item).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribute {
    /// Attribute Name.
    pub name: String,
    /// Attribute Index (0 for the first instance).
    pub index: u32,
    /// The Attribute Value.
    pub value: Value,
}

impl Attribute {
    /// The KMIP Attribute structure.
    pub fn to_item(&self, with_index: bool) -> Item {
        let mut children = vec![Item::text(tag::ATTRIBUTE_NAME, self.name.clone())];
        if with_index && self.index > 0 {
            children.push(Item::integer(
                tag::ATTRIBUTE_INDEX,
                i32::try_from(self.index).unwrap_or(i32::MAX),
            ));
        }
        children.push(Item::new(tag::ATTRIBUTE_VALUE, self.value.clone()));
        Item::structure(tag::ATTRIBUTE, children)
    }
}

/// Reads an Attribute structure: name, optional index, value.
pub fn parse(item: &Item) -> Result<(String, Option<u32>, Value), KmipError> {
    if item.tag != tag::ATTRIBUTE {
        return Err(KmipError::invalid("expected an Attribute"));
    }
    let name = item
        .child(tag::ATTRIBUTE_NAME)
        .and_then(Item::as_text)
        .ok_or_else(|| KmipError::missing("Attribute Name"))?
        .to_owned();
    check_name(&name)?;
    let index = match item.child(tag::ATTRIBUTE_INDEX) {
        None => None,
        Some(i) => Some(
            i.as_int()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| {
                    KmipError::invalid(format!(
                        "{name}: Attribute Index must be a non-negative Integer"
                    ))
                })?,
        ),
    };
    let value = item
        .child(tag::ATTRIBUTE_VALUE)
        .map(|v| v.value.clone())
        .ok_or_else(|| KmipError::missing(&format!("{name}: Attribute Value")))?;
    Ok((name, index, value))
}

/// Refuses an Attribute Name over [`MAX_NAME_LEN`], without echoing it.
fn check_name(name: &str) -> Result<(), KmipError> {
    if name.len() > MAX_NAME_LEN {
        return Err(KmipError::invalid(format!(
            "Attribute Name is {} bytes long, over the limit of {MAX_NAME_LEN} bytes",
            name.len()
        )));
    }
    Ok(())
}

/// Whether clients may set `name`, and if so whether it is multi-instance.
pub fn settable(name: &str) -> Result<bool, KmipError> {
    check_name(name)?;
    if is_custom(name) {
        return Ok(true);
    }
    if let Some((_, multi)) = CLIENT_SET.iter().find(|(n, _)| *n == name) {
        return Ok(*multi);
    }
    if COMPUTED.contains(&name) || SERVER_SET.contains(&name) || name.starts_with("y-") {
        return Err(KmipError::new(
            result_reason::PERMISSION_DENIED,
            format!("{name} is set by the server and cannot be changed by a client"),
        ));
    }
    Err(KmipError::new(
        result_reason::FEATURE_NOT_SUPPORTED,
        format!("attribute {name:?} is not supported"),
    ))
}

/// Custom attributes a client may set: `x-` (`y-` ones are the server's).
fn is_custom(name: &str) -> bool {
    name.starts_with("x-") && name.len() > 2
}

/// Checks that `value` has the shape `name` needs.
pub fn check_value(name: &str, value: &Value) -> Result<(), KmipError> {
    let bad = |what: &str| KmipError::invalid(format!("{name}: Attribute Value must be {what}"));
    let text_ok = |s: &str| s.len() <= MAX_TEXT;
    match name {
        "Name" => check_struct(value, &[(tag::NAME_VALUE, "Name Value")], &[tag::NAME_TYPE])
            .map_err(|w| bad(&w)),
        "Application Specific Information" => check_struct(
            value,
            &[
                (tag::APPLICATION_NAMESPACE, "Application Namespace"),
                (tag::APPLICATION_DATA, "Application Data"),
            ],
            &[],
        )
        .map_err(|w| bad(&w)),
        "Alternative Name" => check_struct(
            value,
            &[(Tag(0x42_00C0), "Alternative Name Value")],
            &[Tag(0x42_00C1)],
        )
        .map_err(|w| bad(&w)),
        "Cryptographic Usage Mask" => match value {
            Value::Integer(_) => Ok(()),
            _ => Err(bad("an Integer")),
        },
        "Object Group" | "Contact Information" | "Operation Policy Name" => match value {
            Value::TextString(s) if text_ok(s) => Ok(()),
            _ => Err(bad("a Text String of at most 4096 bytes")),
        },
        _ => match value {
            Value::TextString(s) if !text_ok(s) => Err(bad("at most 4096 bytes")),
            Value::ByteString(b) | Value::BigInteger(b) if b.len() > MAX_TEXT => {
                Err(bad("at most 4096 bytes"))
            }
            Value::Structure(_) => Err(bad("a single value, not a structure")),
            _ => Ok(()),
        },
    }
}

/// Checks a structure holds the `required` text fields and only them or `optional` ones.
fn check_struct(value: &Value, required: &[(Tag, &str)], optional: &[Tag]) -> Result<(), String> {
    let Value::Structure(children) = value else {
        return Err("a structure".to_owned());
    };
    for (t, field) in required {
        match children.iter().find(|c| c.tag == *t).map(|c| &c.value) {
            Some(Value::TextString(s)) if s.len() <= MAX_TEXT => {}
            _ => {
                return Err(format!(
                    "a structure with a {field} text of at most 4096 bytes"
                ));
            }
        }
    }
    if let Some(extra) = children
        .iter()
        .find(|c| !required.iter().any(|(t, _)| *t == c.tag) && !optional.contains(&c.tag))
    {
        return Err(format!("a structure without the field {}", extra.tag));
    }
    Ok(())
}

fn storage_key(name: &str, index: u32) -> String {
    format!("{PREFIX}{name}#{index}")
}

fn parse_storage_key(key: &str) -> Option<(&str, u32)> {
    let rest = key.strip_prefix(PREFIX)?;
    let (name, index) = rest.rsplit_once('#')?;
    Some((name, index.parse().ok()?))
}

/// The live instances of stored attribute `name`, by index.
pub fn instances(key: &Key, name: &str) -> Vec<Attribute> {
    stored(key).filter(|a| a.name == name).collect()
}

/// Every live stored attribute instance, in name and index order.
fn stored(key: &Key) -> impl Iterator<Item = Attribute> + '_ {
    key.attributes.iter().filter_map(|(k, v)| {
        let (name, index) = parse_storage_key(k)?;
        let value: Value = serde_json::from_str(v.value.as_deref()?).ok()?;
        Some(Attribute {
            name: name.to_owned(),
            index,
            value,
        })
    })
}

/// The index a new instance of `name` takes: the lowest without a live instance, so that a
/// deleted instance's tombstone is reused (other instances keep their indices). A tombstone
/// stamped at the end of the time range cannot be written over and is passed by.
pub fn next_index(key: &Key, name: &str) -> u32 {
    (0..=u32::MAX)
        .find(|i| {
            key.attributes
                .get(&storage_key(name, *i))
                .is_none_or(|v| v.value.is_none() && v.updated_at_ms < i64::MAX)
        })
        .unwrap_or(u32::MAX)
}

/// The stored instances, live or deleted, of the attributes clients set: what
/// [`MAX_INSTANCES`] bounds.
fn client_instances(key: &Key) -> usize {
    key.attributes
        .keys()
        .filter_map(|k| parse_storage_key(k))
        .filter(|(name, _)| !SERVER_SET.contains(name) && !name.starts_with("y-"))
        .count()
}

/// The size of the key's record as the store writes it.
fn record_len(key: &Key) -> Result<usize, KmipError> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, key).map_err(|e| {
        KmipError::new(
            result_reason::GENERAL_FAILURE,
            format!("failed to measure key {}: {e}", key.id),
        )
    })?;
    Ok(count.0)
}

/// Checks that a client's change left `after` within the per-object limits, or no further
/// over them than it was `before` (a new key has no `before`).
pub fn within_limits(after: &Key, before: Option<&Key>) -> Result<(), KmipError> {
    let count = client_instances(after);
    if count > MAX_INSTANCES && before.is_none_or(|b| count > client_instances(b)) {
        let live = stored(after)
            .filter(|a| !SERVER_SET.contains(&a.name.as_str()) && !a.name.starts_with("y-"))
            .count();
        return Err(KmipError::invalid(format!(
            "key {} would hold {count} attribute instances ({} of them deleted ones, kept so that every replica learns of the deletion), over the limit of {MAX_INSTANCES} per object; nothing was changed",
            after.id,
            count - live
        )));
    }
    let bytes = record_len(after)?;
    if bytes > MAX_OBJECT_BYTES {
        let grew = match before {
            None => true,
            Some(b) => bytes > record_len(b)?,
        };
        if grew {
            return Err(KmipError::invalid(format!(
                "key {} would take {bytes} bytes with its attributes, over the limit of {MAX_OBJECT_BYTES} bytes per object; nothing was changed",
                after.id
            )));
        }
    }
    Ok(())
}

/// Writes an instance. `now_ms` is raised above the instance's last write so that the
/// write wins on every replica; a write that cannot be stamped later than the last one (a
/// time at the end of the range, arrived by a merge) is refused, because the other replicas
/// would keep the old value.
pub fn set(key: &mut Key, attribute: &Attribute, now_ms: i64) -> Result<(), KmipError> {
    let json = serde_json::to_string(&attribute.value)
        .map_err(|e| KmipError::new(result_reason::GENERAL_FAILURE, e.to_string()))?;
    let storage = storage_key(&attribute.name, attribute.index);
    let at = stamp(key, &storage, now_ms).ok_or_else(|| unstampable(&attribute.name))?;
    write(key, storage, Some(json), at);
    Ok(())
}

/// Deletes an instance, leaving a tombstone. Returns whether it was live.
pub fn delete(key: &mut Key, name: &str, index: u32, now_ms: i64) -> Result<bool, KmipError> {
    let storage = storage_key(name, index);
    if key
        .attributes
        .get(&storage)
        .is_none_or(|v| v.value.is_none())
    {
        return Ok(false);
    }
    let at = stamp(key, &storage, now_ms).ok_or_else(|| unstampable(name))?;
    write(key, storage, None, at);
    Ok(true)
}

/// The time a write of `storage` is stamped with: `now_ms`, or just after the last write
/// when that is later (a replica whose clock runs ahead). `None` when nothing is later.
fn stamp(key: &Key, storage: &str, now_ms: i64) -> Option<i64> {
    match key.attributes.get(storage) {
        None => Some(now_ms),
        Some(old) => old
            .updated_at_ms
            .checked_add(1)
            .map(|after| after.max(now_ms)),
    }
}

fn unstampable(name: &str) -> KmipError {
    KmipError::new(
        result_reason::ILLEGAL_OPERATION,
        format!(
            "{name} cannot be changed: its last change is stamped at the end of the time range ({} ms), so no change could win over it on the other replicas; nothing was changed",
            i64::MAX
        ),
    )
}

fn write(key: &mut Key, storage: String, value: Option<String>, at: i64) {
    key.attributes.insert(
        storage,
        AttributeValue {
            updated_at_ms: at,
            value,
        },
    );
}

/// Records an attribute only the server sets, as part of a state change. One whose last
/// write is stamped at the end of the time range is left as it is, so that the state change
/// still happens; every replica keeps that value anyway.
pub fn set_by_server(key: &mut Key, attribute: &Attribute, now_ms: i64) -> Result<(), KmipError> {
    let storage = storage_key(&attribute.name, attribute.index);
    if stamp(key, &storage, now_ms).is_none() {
        return Ok(());
    }
    set(key, attribute, now_ms)
}

/// Records a server-set date attribute (Activation Date and the like).
pub fn set_date(key: &mut Key, name: &str, secs: i64, now_ms: i64) -> Result<(), KmipError> {
    set_by_server(
        key,
        &Attribute {
            name: name.to_owned(),
            index: 0,
            value: Value::DateTime(secs),
        },
        now_ms,
    )
}

/// The KMIP State of a key. A destroyed key that had been revoked for compromise is
/// Destroyed Compromised.
pub fn kmip_state(key: &Key) -> u32 {
    match key.state {
        KeyState::PreActive => state::PRE_ACTIVE,
        KeyState::Active => state::ACTIVE,
        KeyState::Deactivated => state::DEACTIVATED,
        KeyState::Compromised => state::COMPROMISED,
        KeyState::Destroyed if !instances(key, "Compromise Date").is_empty() => {
            state::DESTROYED_COMPROMISED
        }
        KeyState::Destroyed => state::DESTROYED,
    }
}

fn computed(key: &Key) -> Vec<Attribute> {
    let last_change_ms = key
        .attributes
        .values()
        .map(|v| v.updated_at_ms)
        .max()
        .unwrap_or(0)
        .max(key.created_at.as_millisecond());
    let attr = |name: &str, value: Value| Attribute {
        name: name.to_owned(),
        index: 0,
        value,
    };
    vec![
        attr("Unique Identifier", Value::TextString(key.id.to_string())),
        attr(
            "Object Type",
            Value::Enumeration(object_type::SYMMETRIC_KEY),
        ),
        attr(
            "Cryptographic Algorithm",
            Value::Enumeration(algorithm::AES),
        ),
        attr(
            "Cryptographic Length",
            Value::Integer(i32::from(key.length)),
        ),
        attr("State", Value::Enumeration(kmip_state(key))),
        attr("Initial Date", Value::DateTime(key.created_at.as_second())),
        attr(
            "Last Change Date",
            Value::DateTime(last_change_ms.div_euclid(1000)),
        ),
    ]
}

/// Every attribute of the key, computed ones first.
pub fn all(key: &Key) -> Vec<Attribute> {
    let mut out = computed(key);
    out.extend(stored(key));
    out
}

/// The instances of `name`, computed or stored.
pub fn named(key: &Key, name: &str) -> Vec<Attribute> {
    if COMPUTED.contains(&name) {
        computed(key)
            .into_iter()
            .filter(|a| a.name == name)
            .collect()
    } else {
        instances(key, name)
    }
}

/// Whether the key has an instance of `name` equal to `value`, as Locate asks. Names are
/// compared by their Name Value alone, so a client need not repeat the Name Type.
pub fn matches(key: &Key, name: &str, value: &Value) -> bool {
    let name_value = |v: &Value| match v {
        Value::Structure(children) => children
            .iter()
            .find(|c| c.tag == tag::NAME_VALUE)
            .and_then(|c| c.as_text().map(str::to_owned)),
        _ => None,
    };
    named(key, name).iter().any(|a| {
        if name == "Name" {
            name_value(&a.value).is_some() && name_value(&a.value) == name_value(value)
        } else {
            a.value == *value
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::LazyLock;

    use proptest::prelude::*;
    use shadowkeep_api::keystore::{Algorithm, Kek};

    use super::*;

    static KEY: LazyLock<Key> = LazyLock::new(|| {
        Key::generate(
            &Kek::generate(),
            "PROP",
            Algorithm::Aes,
            256,
            jiff::Timestamp::now(),
        )
        .unwrap()
    });

    /// Times as a merge may bring them: anything, and the edges most of all.
    fn any_time() -> impl Strategy<Value = i64> {
        prop_oneof![
            Just(i64::MAX),
            Just(i64::MAX - 1),
            Just(i64::MIN),
            Just(-1),
            Just(0),
            any::<i64>(),
        ]
    }

    fn text(s: &str) -> Attribute {
        Attribute {
            name: "x-shelf".to_owned(),
            index: 0,
            value: Value::TextString(s.to_owned()),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever stamps a merge left on a key's attributes, and whatever the clock says,
        /// changing and reading them never panics; a change either wins over the last write
        /// on every replica (a later stamp) or is refused and changes nothing.
        #[test]
        fn any_stamps_and_clock_never_panic_and_changes_win_or_change_nothing(
            old_at in any_time(),
            live in any::<bool>(),
            date_at in any_time(),
            now in any_time(),
        ) {
            let mut key = KEY.clone();
            key.attributes.insert(
                storage_key("x-shelf", 0),
                AttributeValue {
                    updated_at_ms: old_at,
                    value: live.then(|| r#"{"TextString":"A1"}"#.to_owned()),
                },
            );
            key.attributes.insert(
                storage_key("Deactivation Date", 0),
                AttributeValue { updated_at_ms: date_at, value: Some(r#"{"DateTime":0}"#.to_owned()) },
            );
            let before = key.clone();

            let mut changed = key.clone();
            match set(&mut changed, &text("B2"), now) {
                Ok(()) => {
                    let at = changed.attributes[&storage_key("x-shelf", 0)].updated_at_ms;
                    prop_assert!(at > old_at && at >= now);
                }
                Err(e) => {
                    prop_assert_eq!(old_at, i64::MAX);
                    prop_assert_eq!(e.reason, result_reason::ILLEGAL_OPERATION);
                    prop_assert_eq!(&changed, &before);
                }
            }

            let mut deleted = key.clone();
            if let Ok(was_live) = delete(&mut deleted, "x-shelf", 0, now) {
                prop_assert_eq!(was_live, live);
                let after = &deleted.attributes[&storage_key("x-shelf", 0)];
                prop_assert!(after.value.is_none());
                prop_assert!(!live || after.updated_at_ms > old_at);
            } else {
                prop_assert!(live && old_at == i64::MAX);
                prop_assert_eq!(&deleted, &before);
            }

            let mut dated = key.clone();
            set_date(&mut dated, "Deactivation Date", now, now).unwrap();
            let after = &dated.attributes[&storage_key("Deactivation Date", 0)];
            prop_assert!(after.updated_at_ms > date_at || date_at == i64::MAX);

            for k in [&key, &changed, &deleted, &dated] {
                let every = all(k);
                prop_assert!(every.iter().any(|a| a.name == "Last Change Date"));
                kmip_state(k);
            }
        }
        /// Whatever indices and stamps a merge left, the next index never panics and is a
        /// slot a write can take.
        #[test]
        fn next_index_takes_a_writable_slot_whatever_the_merge_left(
            slots in proptest::collection::vec(
                (
                    prop_oneof![Just(0u32), Just(1), Just(u32::MAX - 1), Just(u32::MAX), any::<u32>()],
                    any::<bool>(),
                    any_time(),
                ),
                0..8,
            ),
        ) {
            let mut key = KEY.clone();
            for (index, live, at) in slots {
                key.attributes.insert(
                    storage_key("x-shelf", index),
                    AttributeValue {
                        updated_at_ms: at,
                        value: live.then(|| r#"{"TextString":"A1"}"#.to_owned()),
                    },
                );
            }
            let index = next_index(&key, "x-shelf");
            let attr = Attribute { index, ..text("B2") };
            prop_assert!(instances(&key, "x-shelf").iter().all(|a| a.index != index));
            prop_assert!(set(&mut key, &attr, 0).is_ok());
        }
    }

    #[test]
    fn adding_and_deleting_over_and_over_does_not_grow_the_record() {
        let mut key = KEY.clone();
        for now in 0..1000 {
            let index = next_index(&key, "x-shelf");
            assert_eq!(index, 0);
            let attr = Attribute {
                index,
                ..text(&now.to_string())
            };
            set(&mut key, &attr, now).unwrap();
            assert!(delete(&mut key, "x-shelf", index, now).unwrap());
        }
        assert_eq!(key.attributes.len(), 1);
        within_limits(&key, None).unwrap();
    }

    #[test]
    fn deleted_instances_count_towards_the_limit_and_a_change_may_not_grow_past_it() {
        let mut key = KEY.clone();
        for i in 0..MAX_INSTANCES {
            let attr = Attribute {
                name: format!("x-{i}"),
                ..text("v")
            };
            set(&mut key, &attr, 1).unwrap();
            delete(&mut key, &attr.name, 0, 2).unwrap();
        }
        within_limits(&key, None).unwrap();
        let before = key.clone();
        set(&mut key, &text("v"), 3).unwrap();
        let e = within_limits(&key, Some(&before)).unwrap_err();
        assert!(
            e.message
                .contains("65 attribute instances (64 of them deleted"),
            "{e}"
        );
        // Reusing a tombstone does not grow the object.
        let mut reused = before.clone();
        set(
            &mut reused,
            &Attribute {
                name: "x-7".to_owned(),
                ..text("again")
            },
            3,
        )
        .unwrap();
        within_limits(&reused, Some(&before)).unwrap();
    }
}
