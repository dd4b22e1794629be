//! The Shadow builders, from YAML fixtures.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PodSpec, Secret};
use serde_json::{Value, json};
use shadowkeep_api::crd::{KeyManager, Shadow};
use shadowkeep_api::pki::Authority;
use shadowkeep_api::server_config::ServerConfig;

use super::*;
use crate::build::{Inputs, Material, applied, selector};

const KEY_MANAGER: &str = "
apiVersion: shadowkeep.io/v1alpha1
kind: KeyManager
metadata: {name: vault, namespace: tapes, uid: km-uid}
spec:
  serverId: vault-a
  replicas: 2
  syncInterval: 45s
  service: {type: LoadBalancer, port: 5697, annotations: {example.com/lb: internal}}
  placement: {zones: [site-a-1, site-a-2], topologyKey: example.com/site}
  storage: {size: 5Gi, storageClassName: fast}
";

const SHADOW: &str = "
apiVersion: shadowkeep.io/v1alpha1
kind: Shadow
metadata: {name: vault-dr, namespace: tapes, uid: shadow-uid}
spec:
  keyManagerRef: {name: vault}
  placement:
    zone: site-b
    nodeSelector: {example.com/role: key-shadow}
    tolerations:
      - {key: example.com/dedicated, operator: Equal, value: key-shadow, effect: NoSchedule}
  priority: 20
  takeoverGracePeriod: 2m
  continuousServiceLimit: 72h
  standaloneLimit: 720h
";

fn key_manager(yaml: &str) -> KeyManager {
    serde_yaml::from_str(yaml).unwrap()
}

fn shadow(yaml: &str) -> Shadow {
    serde_yaml::from_str(yaml).unwrap()
}

fn material() -> ShadowMaterial {
    ShadowMaterial {
        license: b"skl1.shadow".to_vec(),
        password: b"correct horse".to_vec(),
        license_public_key: "cd".repeat(32),
        tls: Some((b"crt".to_vec(), b"key".to_vec(), b"ca".to_vec())),
    }
}

fn children_of(km: &KeyManager, shadow: &Shadow) -> Vec<Value> {
    let inputs = ShadowInputs {
        shadow,
        key_manager: km,
        default_image: None,
    };
    shadow_children(&inputs, &material())
        .unwrap()
        .iter()
        .map(|c| c.to_value().unwrap())
        .collect()
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn pod(objects: &[Value]) -> PodSpec {
    let sts: StatefulSet =
        serde_json::from_value(named(objects, "StatefulSet", "vault-dr").clone()).unwrap();
    sts.spec.unwrap().template.spec.unwrap()
}

#[test]
fn children_come_in_apply_order_owned_by_the_shadow() {
    let (km, shadow) = (key_manager(KEY_MANAGER), shadow(SHADOW));
    let objects = children_of(&km, &shadow);
    let order: Vec<(&str, &str)> = objects
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            ("Secret", "vault-dr-license"),
            ("Secret", "vault-dr-password"),
            ("Secret", "vault-dr-tls"),
            ("ConfigMap", "vault-dr-config"),
            ("Service", "vault-dr-admin"),
            ("Service", "vault-dr-kmip"),
            ("StatefulSet", "vault-dr"),
        ]
    );
    for o in &objects {
        assert_eq!(o["metadata"]["namespace"], "tapes");
        // The Shadow outlives its KeyManager: the KeyManager owns none of them.
        assert_eq!(
            o["metadata"]["ownerReferences"],
            json!([{"apiVersion": "shadowkeep.io/v1alpha1", "kind": "Shadow", "name": "vault-dr",
                    "uid": "shadow-uid", "controller": true, "blockOwnerDeletion": true}]),
            "{}",
            o["metadata"]["name"]
        );
        assert_eq!(o["metadata"]["labels"]["shadowkeep.io/shadow"], "vault-dr");
        assert_eq!(
            o["metadata"]["labels"]["shadowkeep.io/key-manager"],
            "vault"
        );
    }
    let secret: Secret =
        serde_json::from_value(named(&objects, "Secret", "vault-dr-password").clone()).unwrap();
    let data = secret.data.unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["password"]);
    assert_eq!(data["password"].0, b"correct horse");
    let license = &named(&objects, "Secret", "vault-dr-license")["data"];
    assert_eq!(license.as_object().unwrap().len(), 1);
    assert!(license.get("license").is_some());
    let sts = &named(&objects, "StatefulSet", "vault-dr")["spec"];
    assert_eq!(sts["replicas"], 1);
    assert_eq!(sts["serviceName"], "vault-dr-admin");
    assert_eq!(
        sts["persistentVolumeClaimRetentionPolicy"]["whenDeleted"],
        "Retain"
    );
    let claim = &sts["volumeClaimTemplates"][0]["spec"];
    assert_eq!(claim["resources"]["requests"]["storage"], "5Gi");
    assert_eq!(claim["storageClassName"], "fast");
    let kmip = &named(&objects, "Service", "vault-dr-kmip");
    assert_eq!(kmip["spec"]["type"], "LoadBalancer");
    assert_eq!(kmip["spec"]["ports"][0]["port"], 5697);
    assert_eq!(
        kmip["metadata"]["annotations"]["example.com/lb"],
        "internal"
    );
    let admin = &named(&objects, "Service", "vault-dr-admin")["spec"];
    assert_eq!(admin["clusterIP"], "None");
}

#[test]
fn the_shadow_pod_is_no_replica_to_the_key_managers_selectors() {
    let (km, shadow) = (key_manager(KEY_MANAGER), shadow(SHADOW));
    let labels = pod_labels(&children_of(&km, &shadow));
    let replicas = selector("vault");
    assert!(
        !replicas.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "the KeyManager's Services and PodDisruptionBudget would select the shadow: {labels:?}"
    );
}

fn pod_labels(objects: &[Value]) -> std::collections::BTreeMap<String, String> {
    serde_json::from_value(
        named(objects, "StatefulSet", "vault-dr")["spec"]["template"]["metadata"]["labels"].clone(),
    )
    .unwrap()
}

#[test]
fn the_config_is_a_shadow_of_the_key_manager_that_the_server_accepts() {
    let (km, shadow) = (key_manager(KEY_MANAGER), shadow(SHADOW));
    let objects = children_of(&km, &shadow);
    let text = named(&objects, "ConfigMap", "vault-dr-config")["data"]["server.yaml"]
        .as_str()
        .unwrap();
    let config = ServerConfig::from_yaml(text).unwrap();
    assert_eq!(config.server_id, "vault-a");
    assert_eq!(config.kmip.listen.port(), 5696);
    assert_eq!(
        config.tls.cert.to_str(),
        Some("/etc/shadowkeep/tls/tls.crt")
    );
    assert_eq!(
        config.tls.client_ca.to_str(),
        Some("/etc/shadowkeep/tls/ca.crt")
    );
    assert_eq!(config.data_dir.to_str(), Some("/var/lib/shadowkeep/store"));
    assert_eq!(config.kek_file.to_str(), Some("/etc/shadowkeep/kek/kek"));
    assert!(config.drives.drives.is_empty() && config.keystore_file.is_none());
    let licence = config.licence.unwrap();
    assert_eq!(
        licence.file.to_str(),
        Some("/etc/shadowkeep/license/license")
    );
    assert_eq!(licence.public_key, "cd".repeat(32));
    let replication = config.replication.unwrap();
    assert_eq!(replication.listen.port(), 9443);
    assert_eq!(replication.client_cert, config.tls.cert);
    assert_eq!(replication.client_key, config.tls.key);
    assert!(replication.peers.is_empty());
    // The identity the replicas present, to push keys, and the operator, to sync it.
    assert_eq!(
        replication.allowed_identities,
        [Inputs::of_key_manager(&km).peer_identity()]
    );
    assert_eq!(replication.allowed_identities, ["*.vault-peers.tapes.svc"]);
    let s = config.shadow.unwrap();
    let replicas: Vec<(&str, &str)> = s
        .replicas
        .iter()
        .map(|r| (r.name.as_str(), r.address.as_str()))
        .collect();
    assert_eq!(
        replicas,
        [
            ("vault-0", "vault-0.vault-peers.tapes.svc:9443"),
            ("vault-1", "vault-1.vault-peers.tapes.svc:9443"),
        ]
    );
    assert!(s.siblings.is_empty());
    assert_eq!(s.priority, 20);
    assert_eq!(
        s.password_file.to_str(),
        Some("/etc/shadowkeep/password/password")
    );
    assert_eq!(s.takeover_grace_period_secs, 120);
    assert_eq!(s.continuous_service_limit_secs, 72 * 3600);
    assert_eq!(s.standalone_limit_secs, 720 * 3600);
    assert_eq!(s.poll_timeout_ms, 1000);
}

#[test]
fn a_one_second_grace_period_still_makes_a_config_the_server_accepts() {
    let km = key_manager(KEY_MANAGER);
    let shadow = shadow(&SHADOW.replace("takeoverGracePeriod: 2m", "takeoverGracePeriod: 1s"));
    let inputs = ShadowInputs {
        shadow: &shadow,
        key_manager: &km,
        default_image: None,
    };
    let text = shadow_config(&inputs, "00").to_yaml().unwrap();
    let config = ServerConfig::from_yaml(&text).unwrap();
    assert_eq!(config.shadow.unwrap().poll_timeout_ms, 500);
}

#[test]
fn the_shadow_must_run_in_its_zone_and_prefers_to_avoid_the_replicas() {
    let (km, shadow) = (key_manager(KEY_MANAGER), shadow(SHADOW));
    let pod = serde_json::to_value(pod(&children_of(&km, &shadow))).unwrap();
    let node = &pod["affinity"]["nodeAffinity"];
    assert_eq!(
        node["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"],
        json!([{"matchExpressions": [{"key": "example.com/site", "operator": "In", "values": ["site-b"]}]}])
    );
    assert!(node["preferredDuringSchedulingIgnoredDuringExecution"].is_null());
    let anti = &pod["affinity"]["podAntiAffinity"];
    assert!(
        anti["requiredDuringSchedulingIgnoredDuringExecution"].is_null(),
        "away from the replicas is a preference: a small cluster must still run the shadow"
    );
    let terms = anti["preferredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .unwrap();
    let keys: Vec<&str> = terms
        .iter()
        .map(|t| t["podAffinityTerm"]["topologyKey"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["kubernetes.io/hostname", "example.com/site"]);
    for term in terms {
        assert_eq!(
            term["podAffinityTerm"]["labelSelector"]["matchLabels"],
            serde_json::to_value(selector("vault")).unwrap(),
            "away from the KeyManager's pods"
        );
    }
    assert!(pod["affinity"]["podAffinity"].is_null());
    assert_eq!(
        pod["nodeSelector"],
        json!({"example.com/role": "key-shadow"})
    );
    assert_eq!(
        pod["tolerations"],
        json!([{"key": "example.com/dedicated", "operator": "Equal", "value": "key-shadow", "effect": "NoSchedule"}])
    );
    // Without them, none.
    let plain = self::shadow(
        "
apiVersion: shadowkeep.io/v1alpha1
kind: Shadow
metadata: {name: vault-dr, namespace: tapes}
spec: {keyManagerRef: {name: vault}, placement: {zone: site-b}}
",
    );
    let pod = self::pod(&children_of(&km, &plain));
    assert!(pod.node_selector.is_none() && pod.tolerations.is_none());
}

#[test]
fn the_pod_mounts_the_password_key_alone() {
    let (km, shadow) = (key_manager(KEY_MANAGER), shadow(SHADOW));
    let pod = pod(&children_of(&km, &shadow));
    let volumes = pod.volumes.unwrap();
    let password = volumes.iter().find(|v| v.name == "password").unwrap();
    let source = password.secret.as_ref().unwrap();
    assert_eq!(source.secret_name.as_deref(), Some("vault-dr-password"));
    let items: Vec<(&str, &str)> = source
        .items
        .iter()
        .flatten()
        .map(|i| (i.key.as_str(), i.path.as_str()))
        .collect();
    assert_eq!(items, [("password", "password")]);
    let secrets: Vec<(&str, &str)> = volumes
        .iter()
        .filter_map(|v| Some((v.name.as_str(), v.secret.as_ref()?.secret_name.as_deref()?)))
        .collect();
    assert_eq!(
        secrets,
        [
            ("tls", "vault-dr-tls"),
            ("kek", "vault-kek"),
            ("license", "vault-dr-license"),
            ("password", "vault-dr-password"),
        ]
    );
    let mounts: Vec<(String, String)> = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.clone(), m.mount_path.clone()))
        .collect();
    assert!(mounts.contains(&("password".to_owned(), "/etc/shadowkeep/password".to_owned())));
    assert!(mounts.contains(&("data".to_owned(), "/var/lib/shadowkeep".to_owned())));
}

#[test]
fn the_shadow_is_locked_down_and_probed_like_the_replicas() {
    let (km, shadow) = (key_manager(KEY_MANAGER), shadow(SHADOW));
    let replica_material = Material {
        license_public_key: "cd".repeat(32),
        ..Material::default()
    };
    let replicas = applied(&Inputs::of_key_manager(&km), &replica_material).unwrap();
    let Some(crate::build::Child::StatefulSet(replica)) = replicas
        .into_iter()
        .find(|c| matches!(c, crate::build::Child::StatefulSet(_)))
    else {
        panic!("no replica StatefulSet");
    };
    let replica = replica.spec.unwrap().template.spec.unwrap();
    let shadow = pod(&children_of(&km, &shadow));
    assert_eq!(shadow.security_context, replica.security_context);
    assert_eq!(shadow.automount_service_account_token, Some(false));
    assert_eq!(shadow.enable_service_links, Some(false));
    let (s, r) = (&shadow.containers[0], &replica.containers[0]);
    assert!(s.security_context.is_some());
    assert_eq!(s.security_context, r.security_context);
    assert_eq!(s.readiness_probe, r.readiness_probe);
    assert_eq!(s.liveness_probe, r.liveness_probe);
    assert_eq!(s.ports, r.ports);
    assert_eq!(s.image, r.image);
}

#[test]
fn the_generated_certificate_is_the_shadows_and_chains_to_the_key_managers_ca() {
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    let (km, shadow) = (key_manager(KEY_MANAGER), shadow(SHADOW));
    let inputs = ShadowInputs {
        shadow: &shadow,
        key_manager: &km,
        default_image: None,
    };
    let ca = Authority::generate("vault CA").unwrap();
    let (crt, key, ca_pem) = shadow_tls(&inputs, &ca).unwrap();
    assert_eq!(ca_pem, ca.cert_pem().as_bytes());
    assert!(String::from_utf8(key).unwrap().contains("PRIVATE KEY"));
    let leaf = CertificateDer::from_pem_slice(&crt).unwrap();
    // The identity a replica judges the registration by: the Shadow's name, first.
    let identities = shadowkeep_server::tls::identities(&leaf);
    assert_eq!(identities[0], "vault-dr");
    assert!(identities.contains(&"vault-dr".to_owned()));
    for name in ["vault-dr-kmip.tapes.svc", "*.vault-dr-admin.tapes.svc"] {
        assert!(identities.contains(&name.to_owned()), "{identities:?}");
    }
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let verifier = WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        std::sync::Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let name = ServerName::try_from("vault-dr-0.vault-dr-admin.tapes.svc").unwrap();
    verifier
        .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
        .unwrap();
    let other = Authority::generate("another CA").unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(other.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let verifier = WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        std::sync::Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    assert!(
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
            .is_err(),
        "the check above can fail"
    );
}

#[test]
fn a_cert_manager_key_manager_gets_a_certificate_for_its_shadow() {
    let km = key_manager(&format!(
        "{KEY_MANAGER}  tls: {{source: CertManager, issuerRef: {{name: corp-ca, kind: ClusterIssuer}}}}\n"
    ));
    let objects = children_of(&km, &shadow(SHADOW));
    let cert = named(&objects, "Certificate", "vault-dr-tls");
    assert_eq!(cert["spec"]["secretName"], "vault-dr-tls");
    assert_eq!(cert["spec"]["commonName"], "vault-dr");
    assert_eq!(cert["spec"]["dnsNames"][0], "vault-dr");
    assert_eq!(cert["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    assert_eq!(cert["metadata"]["ownerReferences"][0]["kind"], "Shadow");
    assert!(
        cert["spec"]["usages"]
            .as_array()
            .unwrap()
            .contains(&json!("client auth"))
    );
    assert!(
        !objects
            .iter()
            .any(|o| o["kind"] == "Secret" && o["metadata"]["name"] == "vault-dr-tls"),
        "cert-manager writes that Secret"
    );
}
