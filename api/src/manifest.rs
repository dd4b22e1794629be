//! Strict decoding of manifests into the resource types.
//!
//! Decoding reports every problem it can find in one pass, each with the field's path:
//! unknown fields (the API server would silently prune them, hiding a typo), wrong types,
//! missing fields, and failures of the CRD's CEL rules, which are evaluated here exactly as
//! the API server would.

use kube::ResourceExt as _;
use kube::core::cel::{CompiledSchema, Validator, compile_schema};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::crd::{API_VERSION, DriveTable, GROUP, GitSource, KeyGroup, KeyManager, Shadow, crds};
use crate::finding::{Finding, ObjectRef};

/// One of the four shadowkeep resources.
// A manifest holds a handful of these; boxing the larger variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    /// A KeyManager.
    KeyManager(KeyManager),
    /// A Shadow.
    Shadow(Shadow),
    /// A DriveTable.
    DriveTable(DriveTable),
    /// A KeyGroup.
    KeyGroup(KeyGroup),
}

impl Resource {
    /// Kind, namespace and name.
    pub fn object_ref(&self) -> ObjectRef {
        let (kind, ns, name) = match self {
            Self::KeyManager(o) => ("KeyManager", o.namespace(), o.name_any()),
            Self::Shadow(o) => ("Shadow", o.namespace(), o.name_any()),
            Self::DriveTable(o) => ("DriveTable", o.namespace(), o.name_any()),
            Self::KeyGroup(o) => ("KeyGroup", o.namespace(), o.name_any()),
        };
        ObjectRef {
            kind: kind.to_owned(),
            namespace: ns,
            name,
        }
    }
}

/// What a document turned out to be.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    /// A valid shadowkeep resource.
    Resource(Box<Resource>),
    /// A valid GitSource: checked like the estate's kinds, but not part of the estate (git
    /// sync applies only the four kinds a branch declares).
    GitSource(Box<GitSource>),
    /// An object of another API, which shadowkeep does not check.
    Foreign {
        /// Its `apiVersion`.
        api_version: String,
        /// Its `kind`.
        kind: String,
    },
}

/// A YAML text that is not YAML.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("failed to parse YAML: {0}")]
pub struct YamlError(pub String);

/// Splits a (possibly multi-document) YAML text into its documents, skipping empty ones.
pub fn parse_yaml_documents(text: &str) -> Result<Vec<Value>, YamlError> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).map_err(|e| YamlError(e.to_string()))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Decodes documents strictly and checks them against the CRDs' CEL rules.
///
/// Compiling the rules is by far the dearest step, so a decoder compiles them once and is
/// reused for every document.
pub struct Decoder {
    validator: Validator,
    /// Per kind: the openAPIV3Schema and its compiled CEL rules.
    schemas: Vec<(&'static str, Value, CompiledSchema)>,
    /// The message of the DriveTable rule that serials are unique, when it is checked here
    /// rather than by the CEL interpreter (see [`UNIQUE_SERIALS_RULE`]).
    unique_serials: Option<String>,
}

/// The DriveTable rule that serial numbers are unique within a table. In CEL it compares
/// every drive with every other, copying the drive at each comparison: for a table of 250
/// drives it took about two thirds of the time of validating it. The API server still
/// evaluates it as written; offline, the decoder takes it out of the compiled rules and
/// checks the same condition in linear time, reporting the same field and message.
pub const UNIQUE_SERIALS_RULE: &str = "self.all(d, self.exists_one(e, e.serial == d.serial))";

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder with the rules of all four CRDs compiled.
    pub fn new() -> Self {
        let mut unique_serials = None;
        let schemas = crds()
            .into_iter()
            .map(|crd| {
                let schema = crd
                    .spec
                    .versions
                    .first()
                    .and_then(|v| v.schema.as_ref())
                    .and_then(|s| s.open_api_v3_schema.as_ref())
                    .and_then(|s| serde_json::to_value(s).ok())
                    .unwrap_or_default();
                let kind = kind_name(&crd.spec.names.kind);
                let mut rules = schema.clone();
                if kind == "DriveTable" {
                    unique_serials = take_rule(
                        &mut rules,
                        "/properties/spec/properties/drives/x-kubernetes-validations",
                        UNIQUE_SERIALS_RULE,
                    );
                }
                let compiled = compile_schema(&rules);
                (kind, schema, compiled)
            })
            .collect();
        Self {
            validator: Validator::new(),
            schemas,
            unique_serials,
        }
    }

    /// Whether the unique-serials rule is checked by the decoder (it is, unless the rule in
    /// the CRD no longer reads [`UNIQUE_SERIALS_RULE`], when CEL checks it as before).
    pub fn checks_unique_serials(&self) -> bool {
        self.unique_serials.is_some()
    }

    /// Decodes one document strictly and checks it against its CRD's CEL rules.
    pub fn decode(&self, doc: &Value) -> Result<Decoded, Vec<Finding>> {
        let Some(map) = doc.as_object() else {
            return Err(vec![Finding::error(
                None,
                "",
                "document is not a mapping (expected a Kubernetes object)",
            )]);
        };
        let text = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_owned);
        let (Some(api_version), Some(kind)) = (text("apiVersion"), text("kind")) else {
            return Err(vec![Finding::error(
                None,
                "",
                "apiVersion and kind are required",
            )]);
        };
        let metadata = map.get("metadata").and_then(Value::as_object);
        let object = ObjectRef {
            kind: kind.clone(),
            namespace: metadata
                .and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            name: metadata
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("<unnamed>")
                .to_owned(),
        };
        if api_version.split('/').next() != Some(GROUP) {
            return Ok(Decoded::Foreign { api_version, kind });
        }
        if api_version != API_VERSION {
            return Err(vec![Finding::error(
                Some(object),
                "apiVersion",
                format!("unsupported version {api_version:?}; this release serves {API_VERSION}"),
            )]);
        }
        let mut findings = check_metadata(doc, &object);
        let resource = match kind.as_str() {
            "KeyManager" => self
                .typed(doc, &object, &mut findings)
                .map(Resource::KeyManager),
            "Shadow" => self
                .typed(doc, &object, &mut findings)
                .map(Resource::Shadow),
            "DriveTable" => self
                .typed(doc, &object, &mut findings)
                .map(Resource::DriveTable),
            "KeyGroup" => self
                .typed(doc, &object, &mut findings)
                .map(Resource::KeyGroup),
            "GitSource" => {
                let source: Option<GitSource> = self.typed(doc, &object, &mut findings);
                findings.sort();
                return match source {
                    Some(source) if findings.is_empty() => Ok(Decoded::GitSource(Box::new(source))),
                    _ => Err(findings),
                };
            }
            _ => {
                findings.push(Finding::error(
                    Some(object),
                    "kind",
                    format!(
                        "unknown kind {kind:?}; {GROUP} has KeyManager, Shadow, DriveTable, KeyGroup and GitSource"
                    ),
                ));
                None
            }
        };
        findings.sort();
        match resource {
            Some(resource) if findings.is_empty() => Ok(Decoded::Resource(Box::new(resource))),
            _ => Err(findings),
        }
    }

    fn typed<T: DeserializeOwned + Serialize>(
        &self,
        doc: &Value,
        object: &ObjectRef,
        findings: &mut Vec<Finding>,
    ) -> Option<T> {
        let decoded: T = strict(doc, object, findings)?;
        let (_, schema, compiled) = self
            .schemas
            .iter()
            .find(|(kind, ..)| *kind == object.kind)?;
        // Validate what the API server would store: the typed object, defaults filled in.
        let stored = serde_json::to_value(&decoded).ok()?;
        check_bounds(schema, &stored, "", object, findings);
        if object.kind == "DriveTable"
            && let Some(message) = &self.unique_serials
            && !serials_unique(&stored)
        {
            findings.push(Finding::error(
                Some(object.clone()),
                "spec.drives",
                message.clone(),
            ));
        }
        if let Err(errors) = self.validator.validate_compiled(compiled, &stored, None) {
            for e in &errors {
                let field = e.field_path.trim_start_matches('.').to_owned();
                findings.push(Finding::error(
                    Some(object.clone()),
                    field,
                    e.message.clone(),
                ));
            }
        }
        Some(decoded)
    }
}

/// Removes the rule `rule` from the list of rules at `pointer`; returns its message.
fn take_rule(schema: &mut Value, pointer: &str, rule: &str) -> Option<String> {
    let rules = schema.pointer_mut(pointer)?.as_array_mut()?;
    let at = rules
        .iter()
        .position(|r| r.get("rule").and_then(Value::as_str) == Some(rule))?;
    let taken = rules.remove(at);
    Some(
        taken
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("failed rule: self.all(d, self.exists_one(e, e.serial == d.serial))")
            .to_owned(),
    )
}

/// [`UNIQUE_SERIALS_RULE`] on a stored DriveTable: no two drives with one serial.
fn serials_unique(stored: &Value) -> bool {
    let Some(drives) = stored.pointer("/spec/drives").and_then(Value::as_array) else {
        return true;
    };
    let mut seen = std::collections::HashSet::with_capacity(drives.len());
    drives
        .iter()
        .all(|d| seen.insert(d.get("serial").and_then(Value::as_str)))
}

/// Checks the schema's length and size bounds, which the CEL rules do not repeat.
fn check_bounds(
    schema: &Value,
    value: &Value,
    path: &str,
    object: &ObjectRef,
    findings: &mut Vec<Finding>,
) {
    let bound = |key: &str| schema.get(key).and_then(Value::as_u64);
    let mut fail =
        |message: String| findings.push(Finding::error(Some(object.clone()), path, message));
    match value {
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(max) = bound("maxLength").filter(|max| len > *max) {
                fail(format!("must be at most {max} characters"));
            }
            if let Some(min) = bound("minLength").filter(|min| len < *min) {
                fail(format!("must be at least {min} characters"));
            }
        }
        Value::Array(items) => {
            let len = items.len() as u64;
            if let Some(max) = bound("maxItems").filter(|max| len > *max) {
                fail(format!("must have at most {max} items"));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check_bounds(item_schema, item, &format!("{path}[{i}]"), object, findings);
                }
            }
        }
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|v| v.is_object());
            for (name, field) in fields {
                let child = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                if let Some(s) = properties.and_then(|p| p.get(name)).or(extra) {
                    check_bounds(s, field, &child, object, findings);
                }
            }
        }
        _ => {}
    }
}

fn kind_name(kind: &str) -> &'static str {
    [
        "KeyManager",
        "Shadow",
        "DriveTable",
        "KeyGroup",
        "GitSource",
    ]
    .into_iter()
    .find(|k| *k == kind)
    .unwrap_or("")
}

fn check_metadata(doc: &Value, object: &ObjectRef) -> Vec<Finding> {
    let mut findings = Vec::new();
    let name = doc.pointer("/metadata/name").and_then(Value::as_str);
    match name {
        None => findings.push(Finding::error(Some(object.clone()), "metadata.name", "is required")),
        Some(name) if !is_dns_label(name) => findings.push(Finding::error(
            Some(object.clone()),
            "metadata.name",
            "must be a DNS label: at most 63 lowercase letters, digits or '-', starting with a letter and ending with a letter or digit",
        )),
        Some(_) => {}
    }
    if let Some(ns) = doc.pointer("/metadata/namespace").and_then(Value::as_str)
        && !is_dns_label(ns)
    {
        findings.push(Finding::error(
            Some(object.clone()),
            "metadata.namespace",
            "must be a DNS label",
        ));
    }
    findings
}

/// A DNS-1035 label: what Service and StatefulSet names derived from the object need.
fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// Deserialises `doc` into `T`, recording every unknown field and the first type error.
fn strict<T: DeserializeOwned>(
    doc: &Value,
    object: &ObjectRef,
    findings: &mut Vec<Finding>,
) -> Option<T> {
    let mut unknown = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| unknown.push(ignored_path(&path));
    let de = serde_ignored::Deserializer::new(doc.clone(), &mut record);
    let result: Result<T, _> = serde_path_to_error::deserialize(de);
    // apiVersion and kind were checked before decoding; the generated types do not keep them.
    for field in unknown
        .into_iter()
        .filter(|f| f != "apiVersion" && f != "kind")
    {
        findings.push(Finding::error(
            Some(object.clone()),
            field,
            "unknown field (the API server would drop it silently)",
        ));
    }
    match result {
        Ok(decoded) => Some(decoded),
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let message = e.into_inner().to_string();
            // serde names a missing field in the message, at its parent's path; name it in
            // the path instead, as every other finding does.
            let missing = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next());
            let (field, message) = match missing {
                Some(name) if path.is_empty() => (name.to_owned(), "is required".to_owned()),
                Some(name) => (format!("{path}.{name}"), "is required".to_owned()),
                None => (path, message),
            };
            findings.push(Finding::error(Some(object.clone()), field, message));
            None
        }
    }
}

/// Renders a `serde_ignored` path as `spec.drives[0].serail`.
fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => {
            let parent = ignored_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}
