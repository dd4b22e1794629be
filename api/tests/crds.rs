//! The generated CRDs: names, columns, status, descriptions, and CEL rules that compile,
//! stay within the API server's cost budget, and reject what they should.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt as _;
use kube::core::cel::{ScopeContext, ValidationErrors, WarningKind, analyze_rule, compile_schema};
use serde_json::{Value, json};
use shadowkeep_api::crd::{DriveTable, GitSource, KeyGroup, KeyManager, Shadow, crds};

fn schema_of(crd: &CustomResourceDefinition) -> Value {
    let version = &crd.spec.versions[0];
    serde_json::to_value(
        version
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn five_namespaced_crds_in_one_group_with_status_and_short_names() {
    let expected = [
        ("keymanagers.shadowkeep.io", "KeyManager", "km"),
        ("shadows.shadowkeep.io", "Shadow", "shd"),
        ("drivetables.shadowkeep.io", "DriveTable", "dt"),
        ("keygroups.shadowkeep.io", "KeyGroup", "kg"),
        ("gitsources.shadowkeep.io", "GitSource", "gs"),
    ];
    let crds = crds();
    assert_eq!(crds.len(), expected.len());
    for (crd, (name, kind, short)) in crds.iter().zip(expected) {
        assert_eq!(crd.metadata.name.as_deref(), Some(name));
        assert_eq!(crd.spec.group, "shadowkeep.io");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.kind, kind);
        assert_eq!(crd.spec.names.short_names, Some(vec![short.to_owned()]));
        assert_eq!(
            crd.spec.names.categories,
            Some(vec!["shadowkeep".to_owned()])
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        let subresources = version.subresources.as_ref().unwrap();
        assert!(subresources.status.is_some(), "{name}: status subresource");
    }
}

fn columns(crd: &CustomResourceDefinition) -> Vec<(String, String)> {
    crd.spec.versions[0]
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| (c.name.clone(), c.json_path.clone()))
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[test]
fn printer_columns_are_the_documented_windows() {
    assert_eq!(
        columns(&KeyManager::crd()),
        pairs(&[
            ("Replicas", ".spec.replicas"),
            ("Ready", ".status.readyReplicas"),
            ("Keys", ".status.keyCount"),
            ("Status", ".status.conditions[?(@.type==\"Ready\")].reason"),
            ("Age", ".metadata.creationTimestamp"),
        ])
    );
    // The KeyServer "Shadows" window: location, state, last synchronized.
    assert_eq!(
        columns(&Shadow::crd()),
        pairs(&[
            ("Location", ".spec.placement.zone"),
            ("State", ".status.state"),
            ("Last Synchronized", ".status.lastSynchronized"),
            ("Age", ".metadata.creationTimestamp"),
        ])
    );
    assert_eq!(
        columns(&DriveTable::crd()),
        pairs(&[
            ("KeyManager", ".spec.keyManagerRef.name"),
            ("Drives", ".status.drives"),
            ("Age", ".metadata.creationTimestamp"),
        ])
    );
    assert_eq!(
        columns(&KeyGroup::crd()),
        pairs(&[
            ("KeyManager", ".spec.keyManagerRef.name"),
            ("Keys", ".status.keys"),
            ("Active Key", ".status.activeKey"),
            ("Age", ".metadata.creationTimestamp"),
        ])
    );
    assert_eq!(
        columns(&GitSource::crd()),
        pairs(&[
            ("Revision", ".status.lastAppliedRevision"),
            ("Ready", ".status.conditions[?(@.type==\"Ready\")].status"),
            ("Age", ".metadata.creationTimestamp"),
        ])
    );
}

/// Calls `f(path, node)` for every schema node under `node`.
fn walk(path: &str, node: &Value, f: &mut impl FnMut(&str, &Value)) {
    f(path, node);
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            walk(&format!("{path}.{name}"), child, f);
        }
    }
    if let Some(items) = node.get("items") {
        walk(&format!("{path}[]"), items, f);
    }
    if let Some(extra) = node.get("additionalProperties").filter(|v| v.is_object()) {
        walk(&format!("{path}{{}}"), extra, f);
    }
}

#[test]
fn every_field_is_described() {
    for crd in crds() {
        let schema = schema_of(&crd);
        let mut undocumented = Vec::new();
        for part in ["spec", "status"] {
            walk(part, &schema["properties"][part], &mut |path, node| {
                // List items and map values are described by their property.
                let is_item = path.ends_with("[]") || path.ends_with('}');
                if !is_item && node.get("description").is_none() {
                    undocumented.push(path.to_owned());
                }
            });
        }
        assert_eq!(
            undocumented,
            Vec::<String>::new(),
            "{:?}",
            crd.metadata.name
        );
    }
}

#[test]
fn conditions_are_a_list_map_keyed_on_type_with_observed_generation() {
    for crd in crds() {
        let schema = schema_of(&crd);
        let status = &schema["properties"]["status"]["properties"];
        let conditions = &status["conditions"];
        let name = &crd.metadata.name;
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{name:?}");
        assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
        assert!(conditions["items"]["properties"]["observedGeneration"].is_object());
        assert!(status["observedGeneration"].is_object(), "{name:?}");
    }
}

#[test]
fn every_cel_rule_compiles_and_fits_the_api_server_budget() {
    let mut rules = 0;
    for crd in crds() {
        let schema = schema_of(&crd);
        let name = crd.metadata.name.clone().unwrap_or_default();
        walk("", &schema, &mut |path, node| {
            let Some(validations) = node
                .get("x-kubernetes-validations")
                .and_then(Value::as_array)
            else {
                return;
            };
            let compiled = compile_schema(node);
            assert!(
                !compiled.has_errors(),
                "{name}{path}: {:?}",
                compiled.compilation_errors()
            );
            for v in validations {
                let rule = v["rule"].as_str().unwrap();
                let binders = comprehension_variables(rule);
                let warnings: Vec<_> = analyze_rule(rule, &compiled, ScopeContext::CrdValidation)
                    .into_iter()
                    // The scope check counts a macro's own variable (`a` in `self.all(a, …)`)
                    // as free; only warnings about other variables are real.
                    .filter(|w| {
                        w.kind != WarningKind::WrongScope
                            || !binders
                                .iter()
                                .any(|b| w.message.contains(&format!("'{b}'")))
                    })
                    .collect();
                assert!(warnings.is_empty(), "{name}{path}: {rule}: {warnings:?}");
                assert!(
                    v["message"].is_string(),
                    "{name}{path}: {rule} has no message"
                );
                rules += 1;
            }
        });
    }
    assert!(rules >= 25, "only {rules} rules found");
}

/// The variables a rule binds with CEL macros: `d` in `self.all(d, ...)`.
fn comprehension_variables(rule: &str) -> Vec<&str> {
    ["all(", "exists(", "exists_one(", "map(", "filter("]
        .iter()
        .flat_map(|m| {
            rule.match_indices(m)
                .map(move |(i, _)| &rule[i + m.len()..])
        })
        .filter_map(|rest| rest.split(',').next())
        .map(str::trim)
        .collect()
}

fn key_manager(spec: &Value) -> KeyManager {
    serde_json::from_value(json!({
        "apiVersion": "shadowkeep.io/v1alpha1",
        "kind": "KeyManager",
        "metadata": {"name": "km"},
        "spec": spec,
    }))
    .unwrap()
}

fn shadow(spec: &Value) -> Shadow {
    serde_json::from_value(json!({
        "apiVersion": "shadowkeep.io/v1alpha1",
        "kind": "Shadow",
        "metadata": {"name": "s"},
        "spec": spec,
    }))
    .unwrap()
}

fn messages(errors: &ValidationErrors) -> Vec<String> {
    let mut messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    messages.sort();
    messages
}

#[test]
fn defaults_are_sensible_and_match_the_schema() {
    let km = key_manager(&json!({"serverId": "km"}));
    assert_eq!(km.spec.replicas, 2);
    assert_eq!(km.spec.service.port, 5696);
    assert_eq!(km.spec.sync_interval.to_string(), "30s");
    assert!(km.validate_cel().is_ok());
    let schema = schema_of(&KeyManager::crd());
    let spec = &schema["properties"]["spec"]["properties"];
    assert_eq!(spec["replicas"]["default"], 2);
    assert_eq!(spec["service"]["properties"]["port"]["default"], 5696);
    assert_eq!(spec["syncInterval"]["default"], "30s");

    let s = shadow(&json!({"keyManagerRef": {"name": "km"}, "placement": {"zone": "b"}}));
    let week = 7 * 24 * 3600;
    assert_eq!(
        s.spec.continuous_service_limit.as_duration().as_secs(),
        week
    );
    assert_eq!(
        s.spec.standalone_limit.as_duration().as_secs(),
        60 * 24 * 3600
    );
    assert!(s.validate_cel().is_ok());
    let schema = schema_of(&Shadow::crd());
    let spec = &schema["properties"]["spec"]["properties"];
    assert_eq!(spec["continuousServiceLimit"]["default"], "168h");
    assert_eq!(spec["standaloneLimit"]["default"], "1440h");
    assert_eq!(spec["state"]["default"], "Active");
}

#[test]
fn server_id_cannot_change() {
    let old = key_manager(&json!({"serverId": "site-a"}));
    let same = key_manager(&json!({"serverId": "site-a", "replicas": 3}));
    assert!(same.validate_cel_update(&old).is_ok());
    let moved = key_manager(&json!({"serverId": "site-b"}));
    let errors = moved.validate_cel_update(&old).unwrap_err();
    assert_eq!(messages(&errors), vec!["spec.serverId: is immutable"]);
}

#[test]
fn key_group_cipher_and_owner_cannot_change() {
    let group = |km: &str, length: i32| -> KeyGroup {
        serde_json::from_value(json!({
            "apiVersion": "shadowkeep.io/v1alpha1", "kind": "KeyGroup", "metadata": {"name": "g"},
            "spec": {"keyManagerRef": {"name": km}, "length": length}
        }))
        .unwrap()
    };
    let old = group("a", 256);
    assert!(group("a", 256).validate_cel_update(&old).is_ok());
    let errors = group("b", 128).validate_cel_update(&old).unwrap_err();
    assert_eq!(
        messages(&errors),
        vec![
            "spec.keyManagerRef: is immutable: a group's keys stay in the keystore they were made in",
            "spec.length: is immutable",
        ]
    );
}

#[test]
fn shadow_hint_list_is_bounded_and_numeric() {
    let with = |addresses: &[String]| {
        shadow(&json!({
            "keyManagerRef": {"name": "km"},
            "placement": {"zone": "b"},
            "hintAddresses": addresses,
        }))
    };
    let hundred: Vec<String> = (0..100).map(|i| format!("10.0.0.{}", i + 1)).collect();
    assert!(with(&hundred).validate_cel().is_ok());
    let mut too_many = hundred;
    too_many.push("2001:db8::1".to_owned());
    assert_eq!(
        messages(&with(&too_many).validate_cel().unwrap_err()),
        vec!["spec.hintAddresses: must list at most 100 addresses"]
    );
    let named = ["2001:db8::1".to_owned(), "dr.example.com".to_owned()];
    assert_eq!(
        messages(&with(&named).validate_cel().unwrap_err()),
        vec![
            "spec.hintAddresses: must be IP addresses, not host names: DNS may be down when a shadow is needed"
        ]
    );
}

#[test]
fn limits_must_be_positive_and_rotation_at_least_an_hour() {
    let with = |field: &str, value: &str| {
        let mut spec = json!({"keyManagerRef": {"name": "km"}, "placement": {"zone": "b"}});
        spec[field] = json!(value);
        shadow(&spec)
    };
    for field in [
        "continuousServiceLimit",
        "standaloneLimit",
        "takeoverGracePeriod",
    ] {
        assert_eq!(
            messages(&with(field, "0s").validate_cel().unwrap_err()),
            vec![format!("spec.{field}: must be greater than 0s")]
        );
        assert!(with(field, "1s").validate_cel().is_ok(), "{field}");
    }
    let rotation = "passwordRotationInterval";
    assert_eq!(
        messages(&with(rotation, "59m59s").validate_cel().unwrap_err()),
        vec!["spec.passwordRotationInterval: must be at least 1h"]
    );
    assert!(with(rotation, "1h").validate_cel().is_ok());
}

fn git_source(spec: &Value) -> GitSource {
    serde_json::from_value(json!({
        "apiVersion": "shadowkeep.io/v1alpha1",
        "kind": "GitSource",
        "metadata": {"name": "estate"},
        "spec": spec,
    }))
    .unwrap()
}

#[test]
fn a_git_source_names_an_allowed_url_a_branch_a_path_inside_and_a_bounded_interval() {
    let ok = git_source(&json!({"url": "file:///srv/estate.git"}));
    assert_eq!(ok.spec.branch, "main");
    assert_eq!(ok.spec.interval.to_string(), "1m");
    assert!(ok.validate_cel().is_ok());
    for url in [
        "https://git.example.org/estate.git",
        "ssh://git@git.example.org/estate.git",
        "git@git.example.org:estate.git",
    ] {
        assert!(
            git_source(&json!({"url": url})).validate_cel().is_ok(),
            "{url}"
        );
    }
    let refused = |spec: Value| messages(&git_source(&spec).validate_cel().unwrap_err());
    assert_eq!(
        refused(json!({"url": "ftp://example.org/estate.git"})),
        vec!["spec.url: must be an https://, ssh://, file:/// or user@host:path URL"]
    );
    assert_eq!(
        refused(json!({"url": "https://bot:token@git.example.org/estate.git"})),
        vec!["spec.url: must not hold credentials: put them in the Secret credentialsRef names"]
    );
    assert_eq!(
        refused(json!({"url": "file:///r", "branch": "a..b"})),
        vec![
            "spec.branch: must be a branch name: letters, digits, '.', '_', '/' or '-', without '..'"
        ]
    );
    for path in ["/etc", "a/../../b"] {
        assert_eq!(
            refused(json!({"url": "file:///r", "path": path})),
            vec!["spec.path: must be a path inside the repository: relative, without '..'"],
            "{path}"
        );
    }
    for interval in ["9s", "25h"] {
        assert_eq!(
            refused(json!({"url": "file:///r", "interval": interval})),
            vec!["spec.interval: must be between 10s and 24h"]
        );
    }
    assert_eq!(
        refused(json!({"url": "file:///r", "credentialsRef": {"name": "c"}})),
        vec!["spec.credentialsRef: is not used with a file:// URL"]
    );
    assert_eq!(
        refused(json!({"url": "file:///r", "verify": {"mode": "ssh"}})),
        vec![
            "spec.verify: ssh needs allowedSignersRef, openpgp needs keyRingRef, and not the other"
        ]
    );
    assert!(
        git_source(&json!({"url": "file:///r",
                           "verify": {"mode": "ssh", "allowedSignersRef": {"name": "s"}}}))
        .validate_cel()
        .is_ok()
    );
}
