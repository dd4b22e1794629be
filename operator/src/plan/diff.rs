//! The estate diffed object by object, in apply order, with field-level changes and a
//! DriveTable's drives as rows keyed by serial.
//!
//! Objects are compared as the API server would store them (typed, defaults filled in), so
//! writing out a default changes nothing. Secrets are the one kind of other API that is
//! diffed, and their values never reach the diff: only which keys changed and a hash prefix
//! of the whole data.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use shadowkeep_api::estate::Estate;
use shadowkeep_api::finding::ObjectRef;

/// The order kinds are applied in: Secrets first (a KeyManager may name one), then
/// KeyManagers before what refers to them.
pub const APPLY_ORDER: [&str; 5] = ["Secret", "KeyManager", "KeyGroup", "DriveTable", "Shadow"];

/// What happened to an object or a drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    /// Only in the head.
    Added,
    /// Only in the base.
    Removed,
    /// In both, different.
    Changed,
    /// In the base; in the head it fails validation, so what it would become is unknown
    /// (the head errors say why).
    Invalid,
}

impl Action {
    /// `+`, `-` or `~`, as diffs mark lines.
    pub fn sign(self) -> char {
        match self {
            Self::Added => '+',
            Self::Removed => '-',
            Self::Changed => '~',
            Self::Invalid => '!',
        }
    }
}

/// One field's values in the base and the head; `None` where it is unset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    /// `spec.replicas`, `metadata.annotations["shadowkeep.io/accept-drive-moves"]`.
    pub path: String,
    /// The value in the base.
    pub before: Option<String>,
    /// The value in the head.
    pub after: Option<String>,
}

/// One drive of a DriveTable that was added, removed or changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DriveChange {
    /// The drive's serial number.
    pub serial: String,
    /// Added to the table, removed from it, or changed.
    pub action: Action,
    /// Its fields (every field for an added or removed drive), serial aside.
    pub fields: Vec<FieldChange>,
}

/// One object that differs between the revisions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectChange {
    /// Kind, namespace and name.
    #[serde(flatten, with = "object_ref_serde")]
    pub object: ObjectRef,
    /// The file that defines it in the head (in the base, when removed).
    pub file: String,
    /// Added, removed or changed.
    pub action: Action,
    /// Changed fields (every field for an added or removed object), drives aside.
    pub fields: Vec<FieldChange>,
    /// A DriveTable's drives that were added, removed or changed.
    pub drives: Vec<DriveChange>,
}

/// Serialises an object reference as flat `kind`, `namespace` and `name` fields.
pub(crate) mod object_ref_serde {
    use serde::Serialize as _;
    use shadowkeep_api::finding::ObjectRef;

    #[derive(serde::Serialize)]
    struct Flat<'a> {
        kind: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        namespace: Option<&'a str>,
        name: &'a str,
    }

    /// Writes the three fields.
    pub fn serialize<S: serde::Serializer>(o: &ObjectRef, s: S) -> Result<S::Ok, S::Error> {
        Flat {
            kind: &o.kind,
            namespace: o.namespace.as_deref(),
            name: &o.name,
        }
        .serialize(s)
    }
}

/// A revision's objects as the diff compares them: kind, namespace and name to the stored
/// form and the file defining it. The first definition wins, as in `validate`.
#[derive(Debug, Default)]
pub struct Objects(BTreeMap<(usize, ObjectRef), (Value, String)>);

impl Objects {
    /// The estate's objects and the Secrets among the other documents, each with its file.
    /// Secret data is hashed with `salt`, which one plan uses for both revisions.
    pub fn new(
        estate: &Estate,
        origin: &BTreeMap<ObjectRef, String>,
        foreign: &[(String, Value)],
        salt: &[u8],
    ) -> Self {
        let mut objects = Self::default();
        let typed = estate
            .key_managers()
            .iter()
            .map(|o| ("KeyManager", serde_json::to_value(o)))
            .chain(
                estate
                    .key_groups()
                    .iter()
                    .map(|o| ("KeyGroup", serde_json::to_value(o))),
            )
            .chain(
                estate
                    .drive_tables()
                    .iter()
                    .map(|o| ("DriveTable", serde_json::to_value(o))),
            )
            .chain(
                estate
                    .shadows()
                    .iter()
                    .map(|o| ("Shadow", serde_json::to_value(o))),
            );
        for (kind, value) in typed {
            // The typed objects always serialise; a failure would only drop the object.
            let Ok(value) = value else { continue };
            let object = object_ref(kind, &value);
            let file = origin.get(&object).cloned().unwrap_or_default();
            objects.insert(object, comparable(value), file);
        }
        for (file, doc) in foreign {
            if is_secret(doc) {
                let object = object_ref("Secret", doc);
                objects.insert(object, masked_secret(doc, salt), file.clone());
            }
        }
        objects
    }

    fn insert(&mut self, object: ObjectRef, value: Value, file: String) {
        let rank = APPLY_ORDER
            .iter()
            .position(|k| *k == object.kind)
            .unwrap_or(APPLY_ORDER.len());
        self.0.entry((rank, object)).or_insert((value, file));
    }
}

/// Every object that differs, in apply order (kind, then namespace and name). An object
/// of the base that is in `invalid` (it did not decode in the head) is not removed but
/// [`Action::Invalid`].
pub fn diff(base: &Objects, head: &Objects, invalid: &BTreeSet<ObjectRef>) -> Vec<ObjectChange> {
    let keys: BTreeSet<&(usize, ObjectRef)> = base.0.keys().chain(head.0.keys()).collect();
    let mut changes = Vec::new();
    for key in keys {
        let change = match (base.0.get(key), head.0.get(key)) {
            (Some((before, _)), Some((after, file))) => {
                if before == after {
                    continue;
                }
                object_change(&key.1, file, Action::Changed, before, after)
            }
            (None, Some((after, file))) => {
                object_change(&key.1, file, Action::Added, &Value::Null, after)
            }
            (Some(_), None) if invalid.contains(&key.1) => ObjectChange {
                object: key.1.clone(),
                file: String::new(),
                action: Action::Invalid,
                fields: Vec::new(),
                drives: Vec::new(),
            },
            (Some((before, file)), None) => {
                object_change(&key.1, file, Action::Removed, before, &Value::Null)
            }
            (None, None) => continue,
        };
        changes.push(change);
    }
    changes
}

/// Whether a document of another API is a Kubernetes Secret, the one such kind diffed.
pub fn is_secret(doc: &Value) -> bool {
    doc.get("kind").and_then(Value::as_str) == Some("Secret")
        && doc.get("apiVersion").and_then(Value::as_str) == Some("v1")
}

fn object_change(
    object: &ObjectRef,
    file: &str,
    action: Action,
    before: &Value,
    after: &Value,
) -> ObjectChange {
    let drives = drive_changes(
        before.pointer("/spec/drives"),
        after.pointer("/spec/drives"),
    );
    let without_drives = |v: &Value| {
        let mut v = v.clone();
        if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("drives");
        }
        v
    };
    let mut fields = field_changes(&without_drives(before), &without_drives(after));
    if object.kind == "Secret" {
        for field in &mut fields {
            if let Some(key) = field.path.strip_prefix(SECRET_KEYS) {
                field.path = format!("data{key}");
                let hide = |v: &mut Option<String>| {
                    if v.is_some() {
                        *v = Some(HIDDEN.to_owned());
                    }
                };
                hide(&mut field.before);
                hide(&mut field.after);
            }
        }
    }
    ObjectChange {
        object: object.clone(),
        file: file.to_owned(),
        action,
        fields,
        drives,
    }
}

/// What a Secret's value shows as.
pub const HIDDEN: &str = "(hidden)";

/// Where a masked Secret keeps each key's salted hash, which decides whether the key
/// changed and is replaced by [`HIDDEN`] before anything is shown.
const SECRET_KEYS: &str = "dataKeys";

/// Field-by-field differences of two values (`Null` for an absent object).
pub fn field_changes(before: &Value, after: &Value) -> Vec<FieldChange> {
    let mut old = BTreeMap::new();
    let mut new = BTreeMap::new();
    flatten(before, String::new(), &mut old);
    flatten(after, String::new(), &mut new);
    let paths: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    paths
        .into_iter()
        .filter_map(|path| {
            let (b, a) = (old.get(path), new.get(path));
            (b != a).then(|| FieldChange {
                path: path.clone(),
                before: b.cloned(),
                after: a.cloned(),
            })
        })
        .collect()
}

fn drive_changes(before: Option<&Value>, after: Option<&Value>) -> Vec<DriveChange> {
    let rows = |v: Option<&Value>| -> BTreeMap<String, Value> {
        let mut rows = BTreeMap::new();
        for drive in v.and_then(Value::as_array).into_iter().flatten() {
            let Some(serial) = drive.get("serial").and_then(Value::as_str) else {
                continue;
            };
            let mut fields = drive.clone();
            if let Some(map) = fields.as_object_mut() {
                map.remove("serial");
            }
            // A serial listed twice is a validation error; the first entry is compared.
            rows.entry(serial.to_owned()).or_insert(fields);
        }
        rows
    };
    let (old, new) = (rows(before), rows(after));
    let serials: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut changes = Vec::new();
    for serial in serials {
        let (action, b, a) = match (old.get(serial), new.get(serial)) {
            (Some(b), Some(a)) if b == a => continue,
            (Some(b), Some(a)) => (Action::Changed, b, a),
            (None, Some(a)) => (Action::Added, &Value::Null, a),
            (Some(b), None) => (Action::Removed, b, &Value::Null),
            (None, None) => continue,
        };
        changes.push(DriveChange {
            serial: serial.clone(),
            action,
            fields: field_changes(b, a),
        });
    }
    changes
}

/// Leaves of a value by path; lists (zones, addresses) are one leaf each, as people read
/// them.
fn flatten(value: &Value, path: String, out: &mut BTreeMap<String, String>) {
    match value {
        // An empty object says no more than an absent one.
        Value::Null => {}
        Value::Object(map) if map.is_empty() => {}
        Value::Object(map) => {
            for (key, child) in map {
                flatten(child, join(&path, key), out);
            }
        }
        Value::String(s) => {
            out.insert(path, s.clone());
        }
        other => {
            out.insert(path, other.to_string());
        }
    }
}

fn join(path: &str, key: &str) -> String {
    let plain = key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (path.is_empty(), plain) {
        (true, true) => key.to_owned(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{key:?}]"),
    }
}

fn object_ref(kind: &str, value: &Value) -> ObjectRef {
    let text = |pointer: &str| value.pointer(pointer).and_then(Value::as_str);
    ObjectRef {
        kind: kind.to_owned(),
        namespace: text("/metadata/namespace").map(str::to_owned),
        name: text("/metadata/name").unwrap_or("<unnamed>").to_owned(),
    }
}

/// The parts of an object a manifest sets: no apiVersion and kind (the key says them), no
/// status, and of metadata only what a manifest may carry.
fn comparable(mut value: Value) -> Value {
    if let Some(map) = value.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.retain(|k, _| {
                matches!(k.as_str(), "name" | "namespace" | "labels" | "annotations")
            });
        }
    }
    value
}

/// Annotation in which `kubectl apply` keeps a copy of the whole object, Secret data too.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A Secret with every value replaced: `data` by a prefix of a salted hash of the whole
/// data (keys and values, `stringData` merged in as the API server would) and each key by
/// its own salted hash, shown as [`HIDDEN`]. A reader sees that and where a Secret changed,
/// never what it holds. The salt is random per run: an unsalted hash of a short password
/// could be matched against guesses.
fn masked_secret(doc: &Value, salt: &[u8]) -> Value {
    let mut data: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    if let Some(map) = doc.get("data").and_then(Value::as_object) {
        for (key, value) in map {
            let text = value.as_str().unwrap_or_default();
            let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text)
                .unwrap_or_else(|_| text.as_bytes().to_vec());
            data.insert(key.clone(), bytes);
        }
    }
    if let Some(map) = doc.get("stringData").and_then(Value::as_object) {
        for (key, value) in map {
            let bytes = value
                .as_str()
                .map_or_else(|| value.to_string().into_bytes(), |s| s.as_bytes().to_vec());
            data.insert(key.clone(), bytes);
        }
    }
    let hash = |parts: &[&[u8]]| {
        let mut hasher = Sha256::new();
        hasher.update(salt);
        for part in parts {
            // Length-prefixed, so that no two different inputs hash alike by shifting
            // bytes from one part to the next.
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        hex::encode(hasher.finalize())
    };
    let mut masked = comparable(doc.clone());
    if let Some(map) = masked.as_object_mut() {
        map.remove("data");
        map.remove("stringData");
        if let Some(last) = map
            .get_mut("metadata")
            .and_then(|m| m.get_mut("annotations"))
            .and_then(|a| a.get_mut(LAST_APPLIED))
        {
            *last = Value::String(format!(
                "{HIDDEN} sha256:{}",
                &hash(&[last.to_string().as_bytes()])[..12]
            ));
        }
        let mut keys = Map::new();
        let mut whole: Vec<&[u8]> = Vec::new();
        for (key, value) in &data {
            whole.push(key.as_bytes());
            whole.push(value);
            keys.insert(key.clone(), Value::String(hash(&[value])));
        }
        if !data.is_empty() {
            map.insert(
                "data".to_owned(),
                Value::String(format!("sha256:{}", &hash(&whole)[..12])),
            );
        }
        if !keys.is_empty() {
            map.insert(SECRET_KEYS.to_owned(), Value::Object(keys));
        }
    }
    masked
}
