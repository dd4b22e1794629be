//! The pure builders, from the quickstart manifests: a golden rendering, the rules the
//! children must keep (what survives deletion, what rolls the pods), and masking.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use serde_json::Value;
use shadowkeep::build::{Inputs, Material, children};
use shadowkeep::cli::render::render;
use shadowkeep::manifests::validate::load;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rendered(paths: &[PathBuf]) -> (u8, String) {
    let mut out = Vec::new();
    let code = render(paths, &mut out);
    (code, String::from_utf8(out).unwrap())
}

/// `SHADOWKEEP_BLESS=1 cargo test -p shadowkeep --test render` rewrites the golden file.
#[test]
fn quickstart_renders_as_the_golden_file() {
    let (code, text) = rendered(&[repo().join("examples/quickstart")]);
    assert_eq!(code, 0, "{text}");
    let golden = repo().join("operator/tests/golden/quickstart.yaml");
    if std::env::var_os("SHADOWKEEP_BLESS").is_some() {
        std::fs::write(&golden, &text).unwrap();
    }
    let expected = std::fs::read_to_string(&golden).unwrap();
    assert!(
        text == expected,
        "rendering changed; review it and run `SHADOWKEEP_BLESS=1 cargo test -p shadowkeep --test render`\n{text}"
    );
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .collect();
    assert_eq!(
        kinds,
        [
            "Secret",
            "Secret",
            "Secret",
            "Secret",
            "Secret",
            "Secret",
            // The hint list, then the configuration.
            "ConfigMap",
            "ConfigMap",
            "Service",
            "Service",
            "StatefulSet",
            "PodDisruptionBudget",
            // The Shadow's, after its KeyManager's.
            "Secret",
            "Secret",
            "Secret",
            "ConfigMap",
            "Service",
            "Service",
            "StatefulSet",
        ],
        "apply order"
    );
}

#[test]
fn invalid_manifests_render_nothing_and_say_why() {
    let (code, text) =
        rendered(&[repo().join("tests/invalid-manifests/drive-in-two-keymanagers.yaml")]);
    assert_eq!(code, 1);
    assert!(!text.contains("kind: StatefulSet"));
    assert!(text.contains("splits its key history"), "{text}");
}

fn objects(dir: &Path, material: &Material) -> Vec<Value> {
    let (report, estate) = load(&[dir.to_owned()]);
    assert_eq!(report.exit_code(), 0);
    let inputs = Inputs::from_estate(&estate);
    assert_eq!(inputs.len(), 1);
    children(&inputs[0], material).unwrap()
}

fn material() -> Material {
    Material {
        kek: vec![7; 32].into(),
        keystore: b"{\"format\":1,\"keys\":[]}".to_vec(),
        tls: Some((b"crt".to_vec(), b"key".to_vec(), b"ca".to_vec())),
        license: b"skl1.x.y".to_vec(),
        ca_key: Some(b"ca key".to_vec()),
        license_public_key: "ab".repeat(32),
        shadow_verifiers: b"{}".to_vec(),
    }
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn key_material_outlives_the_key_manager_and_the_rest_is_owned() {
    let objects = objects(&repo().join("examples/quickstart"), &material());
    for name in [
        "tape-keys-kek",
        "tape-keys-keystore",
        "tape-keys-ca",
        "tape-keys-tls",
    ] {
        let secret = named(&objects, "Secret", name);
        assert!(
            secret["metadata"]["ownerReferences"].is_null(),
            "{name} must survive deletion"
        );
        assert_eq!(
            secret["metadata"]["annotations"]["shadowkeep.io/keep-on-delete"],
            "true"
        );
    }
    assert_eq!(
        named(&objects, "Secret", "tape-keys-kek")["immutable"],
        true
    );
    assert_eq!(
        named(&objects, "ConfigMap", "tape-keys-shadow-hints")["data"]["addresses"],
        "192.0.2.10\n",
        "the hint list holds the Shadow's hintAddresses"
    );
    for (kind, name) in [
        ("ConfigMap", "tape-keys-config"),
        ("ConfigMap", "tape-keys-shadow-hints"),
        ("StatefulSet", "tape-keys"),
        ("Service", "tape-keys-kmip"),
        ("PodDisruptionBudget", "tape-keys"),
    ] {
        let owner = &named(&objects, kind, name)["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "KeyManager", "{kind} {name}");
        assert_eq!(owner["controller"], true);
    }
    // The StatefulSet keeps its volumes when deleted or scaled down: they hold keystores.
    let sts = named(&objects, "StatefulSet", "tape-keys");
    let retention = &sts["spec"]["persistentVolumeClaimRetentionPolicy"];
    assert_eq!(retention["whenDeleted"], "Retain");
    assert_eq!(retention["whenScaled"], "Retain");
}

#[test]
fn the_pods_are_locked_down_spread_and_probed() {
    let objects = objects(&repo().join("examples/quickstart"), &material());
    let pod = &named(&objects, "StatefulSet", "tape-keys")["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"][0],
        "ALL"
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    let zones = &pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"][0]["matchExpressions"][0];
    assert_eq!(
        zones["values"],
        serde_json::json!(["eu-west-1a", "eu-west-1b"])
    );
    assert_eq!(
        pod["topologySpreadConstraints"][0]["topologyKey"],
        "topology.kubernetes.io/zone"
    );
    let pdb = named(&objects, "PodDisruptionBudget", "tape-keys");
    assert_eq!(pdb["spec"]["minAvailable"], 1, "replicas - 1");
}

/// A copy of the quickstart in a fresh directory of the test's own, to change.
fn quickstart_copy(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shadowkeep-render-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "keymanager.yaml",
        "keygroup.yaml",
        "drivetable.yaml",
        "shadow.yaml",
    ] {
        std::fs::copy(repo().join("examples/quickstart").join(f), dir.join(f)).unwrap();
    }
    dir
}

fn server_config(objects: &[Value]) -> shadowkeep_api::server_config::ServerConfig {
    let config = named(objects, "ConfigMap", "tape-keys-config")["data"]["server.yaml"]
        .as_str()
        .unwrap();
    shadowkeep_api::server_config::ServerConfig::from_yaml(config).unwrap()
}

/// Every object `render` prints for the manifests in `dir`, replicas' and shadow's.
fn all_rendered(dir: &Path) -> Vec<Value> {
    let (code, text) = rendered(&[dir.to_owned()]);
    assert_eq!(code, 0, "{text}");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .collect()
}

/// The pod templates of the replicas' and the shadow's StatefulSets, as applied.
fn templates(objects: &[Value]) -> (String, String) {
    let template = |name| {
        serde_json::to_string(&named(objects, "StatefulSet", name)["spec"]["template"]).unwrap()
    };
    (template("tape-keys"), template("tape-keys-dr"))
}

fn configs(objects: &[Value]) -> (Value, Value) {
    (
        named(objects, "ConfigMap", "tape-keys-config")["data"].clone(),
        named(objects, "ConfigMap", "tape-keys-dr-config")["data"].clone(),
    )
}

fn edit(dir: &Path, file: &str, from: &str, to: &str) {
    let text = std::fs::read_to_string(dir.join(file)).unwrap();
    assert!(text.contains(from), "{file} has no {from:?}");
    std::fs::write(dir.join(file), text.replacen(from, to, 1)).unwrap();
}

#[test]
fn drive_table_and_key_group_changes_leave_the_pod_templates_alone() {
    let dir = quickstart_copy("hash");
    let before = all_rendered(&dir);
    // The same inputs build the same objects.
    assert_eq!(all_rendered(&dir), before);
    // A drive identity added to the DriveTable.
    let mut table = std::fs::read_to_string(dir.join("drivetable.yaml")).unwrap();
    table.push_str(
        "    - serial: \"1013000126\"\n      certificateIdentity: library-b.tape.example.com\n",
    );
    std::fs::write(dir.join("drivetable.yaml"), table).unwrap();
    let added = all_rendered(&dir);
    assert_ne!(
        configs(&added).0,
        configs(&before).0,
        "the ConfigMap changes"
    );
    assert_eq!(
        templates(&added),
        templates(&before),
        "no pod template changes"
    );
    let parsed = server_config(&added);
    assert_eq!(parsed.server_id, "tape-keys-eu1");
    assert!(parsed.drives.drives.iter().any(|d| d.serial == "1013000126"
        && d.certificate_identity.as_deref() == Some("library-b.tape.example.com")));
    // A KeyGroup change: no longer the default group, and another one added.
    edit(&dir, "keygroup.yaml", "default: true", "default: false");
    let mut groups = std::fs::read_to_string(dir.join("keygroup.yaml")).unwrap();
    groups.push_str(
        "---\napiVersion: shadowkeep.io/v1alpha1\nkind: KeyGroup\nmetadata:\n  name: lto-gold\nspec:\n  keyManagerRef:\n    name: tape-keys\n  algorithm: AES\n  length: 256\n  keyCount: 2\n  namePrefix: GOLD\n  rotationInterval: 720h\n",
    );
    std::fs::write(dir.join("keygroup.yaml"), groups).unwrap();
    let grouped = all_rendered(&dir);
    assert_ne!(
        configs(&grouped).0,
        configs(&added).0,
        "the ConfigMap changes"
    );
    assert_eq!(templates(&grouped), templates(&before));
    let names: Vec<String> = server_config(&grouped)
        .drives
        .key_groups
        .iter()
        .map(|g| g.name.clone())
        .collect();
    assert_eq!(names, ["lto-default", "lto-gold"]);
    // What only a restart applies still rolls the pods: the image, the TLS source and a
    // configuration field outside the drive policy (peer acknowledgements).
    edit(
        &dir,
        "keymanager.yaml",
        "  serverId: tape-keys-eu1\n",
        "  serverId: tape-keys-eu1\n  image: registry.example/shadowkeep-server:next\n",
    );
    let imaged = all_rendered(&dir);
    let (replicas, shadow) = templates(&imaged);
    assert_ne!(replicas, templates(&grouped).0);
    assert_ne!(shadow, templates(&grouped).1);
    edit(
        &dir,
        "keymanager.yaml",
        "    source: Generated\n",
        "    source: Secret\n    secretName: my-replica-tls\n",
    );
    let tls = all_rendered(&dir);
    assert_ne!(templates(&tls).0, templates(&imaged).0);
    edit(
        &dir,
        "keymanager.yaml",
        "peerAcknowledgements: 1",
        "peerAcknowledgements: 0",
    );
    let acks = all_rendered(&dir);
    let hash = |objects: &[Value]| {
        named(objects, "StatefulSet", "tape-keys")["spec"]["template"]["metadata"]["annotations"]
            ["shadowkeep.io/config-hash"]
            .clone()
    };
    assert_ne!(hash(&acks), hash(&tls));
    assert_ne!(configs(&acks).0, configs(&tls).0);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_drive_admitted_by_its_serial_alone_is_so_in_the_server_config() {
    let dir = quickstart_copy("serial-only");
    let mut table = std::fs::read_to_string(dir.join("drivetable.yaml")).unwrap();
    table.push_str("    - serial: \"1013000199\"\n      acceptAnyCertificate: true\n");
    std::fs::write(dir.join("drivetable.yaml"), table).unwrap();
    let drives = server_config(&objects(&dir, &material())).drives.drives;
    let admitted: Vec<(&str, bool)> = drives
        .iter()
        .map(|d| (d.serial.as_str(), d.accept_any_certificate))
        .collect();
    assert_eq!(
        admitted,
        [
            ("1013000123", false),
            ("1013000124", false),
            ("1013000125", false),
            ("1013000199", true)
        ]
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn rendered_secrets_show_no_material() {
    let (_, text) = rendered(&[repo().join("examples/quickstart")]);
    // Render builds with placeholders and then masks every value.
    assert!(
        text.contains(
            "shadowkeep.io/rendered-data: 'masked: kek; generated or read by the operator'"
        ),
        "{text}"
    );
    assert!(
        !text.contains("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        "the placeholder KEK is not shown"
    );
}

#[test]
fn a_cert_manager_key_manager_gets_a_certificate_for_its_replicas() {
    let dir = std::env::temp_dir().join(format!("shadowkeep-render-cm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let km = std::fs::read_to_string(repo().join("examples/quickstart/keymanager.yaml")).unwrap();
    let km = km.replace(
        "  tls:\n    source: Generated\n",
        "  tls:\n    source: CertManager\n    issuerRef: {name: corp-ca, kind: ClusterIssuer}\n",
    );
    assert!(km.contains("CertManager"));
    std::fs::write(dir.join("keymanager.yaml"), km).unwrap();
    let objects = objects(&dir, &material());
    let cert = named(&objects, "Certificate", "tape-keys-tls");
    assert_eq!(cert["spec"]["secretName"], "tape-keys-tls");
    assert_eq!(cert["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    assert_eq!(cert["spec"]["issuerRef"]["name"], "corp-ca");
    let dns: Vec<&str> = cert["spec"]["dnsNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        dns.contains(&"*.tape-keys-peers.default.svc"),
        "the replication identity"
    );
    assert!(dns.contains(&"tape-keys-kmip.default.svc"));
    assert!(
        cert["spec"]["usages"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("client auth"))
    );
    // No operator-made CA or certificate Secret then; the pods mount cert-manager's.
    assert!(
        objects
            .iter()
            .all(|o| o["metadata"]["name"] != "tape-keys-ca")
    );
    let sts = named(&objects, "StatefulSet", "tape-keys");
    let volumes = sts["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["secret"]["secretName"] == "tape-keys-tls")
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_replicas_are_licensed_and_mount_their_license_and_the_shadow_verifiers() {
    let objects = objects(&repo().join("examples/quickstart"), &material());
    let licence = server_config(&objects).licence.unwrap();
    assert_eq!(
        licence.file.to_str(),
        Some("/etc/shadowkeep/license/license")
    );
    assert_eq!(licence.public_key, "ab".repeat(32));
    let verifiers = named(&objects, "Secret", "tape-keys-shadow-verifiers");
    assert_eq!(
        verifiers["data"]["verifiers.json"], "e30=",
        "{{}} as base64"
    );
    assert_eq!(
        verifiers["metadata"]["ownerReferences"][0]["kind"],
        "KeyManager"
    );
    let index = |kind: &str, name: &str| {
        objects
            .iter()
            .position(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap()
    };
    assert!(
        index("Secret", "tape-keys-shadow-verifiers") < index("StatefulSet", "tape-keys"),
        "what the pods mount is applied first"
    );
    let pod = &named(&objects, "StatefulSet", "tape-keys")["spec"]["template"]["spec"];
    let volumes = pod["volumes"].as_array().unwrap();
    for (volume, secret) in [
        ("license", "tape-keys-license"),
        ("shadow-verifiers", "tape-keys-shadow-verifiers"),
    ] {
        assert!(
            volumes
                .iter()
                .any(|v| v["name"] == volume && v["secret"]["secretName"] == secret),
            "{volume}"
        );
    }
    let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
    for (volume, path) in [
        ("license", "/etc/shadowkeep/license"),
        ("shadow-verifiers", "/etc/shadowkeep/shadow-verifiers"),
    ] {
        assert!(
            mounts
                .iter()
                .any(|m| m["name"] == volume && m["mountPath"] == path && m["readOnly"] == true),
            "{volume}"
        );
    }
}

#[test]
fn the_shadow_hint_list_holds_at_most_100_addresses_one_per_line() {
    let (report, estate) = load(&[repo().join("examples/quickstart")]);
    assert_eq!(report.exit_code(), 0);
    let inputs = Inputs::from_estate(&estate);
    let addresses: Vec<String> = (0..150)
        .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
        .collect();
    let map = shadowkeep::build::shadow_hints_config_map(&inputs[0], &addresses);
    assert_eq!(map.metadata.name.as_deref(), Some("tape-keys-shadow-hints"));
    let text = &map.data.unwrap()["addresses"];
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 100);
    assert_eq!(lines[..2], ["10.0.0.0", "10.0.0.1"]);
    assert_eq!(lines[99], "10.0.0.99");
    assert!(text.ends_with("10.0.0.99\n"));
    let two = shadowkeep::build::shadow_hints_config_map(&inputs[0], &addresses[..2]);
    assert_eq!(two.data.unwrap()["addresses"], "10.0.0.0\n10.0.0.1\n");
}

/// `SHADOWKEEP_BLESS=1 cargo test -p shadowkeep --test render` rewrites the golden file.
#[test]
fn shadows_render_after_their_key_manager_as_the_golden_file() {
    let (code, text) = rendered(&[repo().join("tests/render/shadows")]);
    assert_eq!(code, 0, "{text}");
    let golden = repo().join("operator/tests/golden/shadows.yaml");
    if std::env::var_os("SHADOWKEEP_BLESS").is_some() {
        std::fs::write(&golden, &text).unwrap();
    }
    let expected = std::fs::read_to_string(&golden).unwrap();
    assert!(
        text == expected,
        "rendering changed; review it and run `SHADOWKEEP_BLESS=1 cargo test -p shadowkeep --test render`\n{text}"
    );
    let order: Vec<String> = text
        .split("\n---\n")
        .map(|doc| {
            let doc: Value = serde_yaml::from_str(doc.trim_start_matches("---\n")).unwrap();
            format!(
                "{} {}",
                doc["kind"].as_str().unwrap(),
                doc["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    let first_shadow = order
        .iter()
        .position(|o| o == "Secret vault-dr-license")
        .unwrap();
    assert_eq!(order[first_shadow - 1], "PodDisruptionBudget vault");
    assert_eq!(
        order[first_shadow..],
        [
            "Secret vault-dr-license",
            "Secret vault-dr-password",
            "Secret vault-dr-tls",
            "ConfigMap vault-dr-config",
            "Service vault-dr-admin",
            "Service vault-dr-kmip",
            "StatefulSet vault-dr",
            "Secret vault-dr2-license",
            "Secret vault-dr2-password",
            "Secret vault-dr2-tls",
            "ConfigMap vault-dr2-config",
            "Service vault-dr2-admin",
            "Service vault-dr2-kmip",
            "StatefulSet vault-dr2",
        ]
    );
    // Masked like the KeyManager's Secrets: no password, licence or key shown.
    assert!(
        text.contains(
            "shadowkeep.io/rendered-data: 'masked: password; generated or read by the operator'"
        ),
        "{text}"
    );
    assert!(text.contains("example.com/dedicated"), "the tolerations");
    assert!(
        text.contains("example.com/role: key-shadow"),
        "the node selector"
    );
}
