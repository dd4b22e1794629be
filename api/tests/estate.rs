//! Properties of the estate rules over generated estates: a well-formed estate has no
//! error, findings do not depend on the order of the manifests, and each kind of mistake is
//! found and names every object involved.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use serde_json::{Value, json};
use shadowkeep_api::estate::Estate;
use shadowkeep_api::finding::{Finding, Severity};
use std::sync::LazyLock;

use shadowkeep_api::manifest::{Decoded, Decoder, Resource};

static DECODER: LazyLock<Decoder> = LazyLock::new(Decoder::new);

fn resource(kind: &str, name: &str, spec: &Value) -> Resource {
    let doc = json!({
        "apiVersion": "shadowkeep.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    });
    match DECODER.decode(&doc) {
        Ok(Decoded::Resource(r)) => *r,
        other => panic!("{kind} {name} does not decode: {other:?}"),
    }
}

/// The shape of one KeyManager's corner of an estate.
#[derive(Clone, Debug)]
struct Site {
    replicas: i32,
    shadows: usize,
    tables: Vec<usize>,
    groups: usize,
}

fn site() -> impl Strategy<Value = Site> {
    (
        1i32..4,
        0usize..3,
        prop::collection::vec(0usize..5, 0..3),
        1usize..3,
    )
        .prop_map(|(replicas, shadows, tables, groups)| Site {
            replicas,
            shadows,
            tables,
            groups,
        })
}

/// A well-formed estate: unique server ids and serials, drives with their own certificate
/// identities, resolving references, one default group per KeyManager, shadows outside
/// their KeyManager's zones, a recovery recipient for every KEK.
fn build(sites: &[Site]) -> Vec<Resource> {
    let mut out = Vec::new();
    let mut serial = 0;
    for (k, site) in sites.iter().enumerate() {
        let km = format!("km-{k}");
        out.push(resource(
            "KeyManager",
            &km,
            &json!({"serverId": format!("site-{k}"), "replicas": site.replicas,
                   "placement": {"zones": [format!("zone-{k}")]},
                   "backup": {"recoveryRecipients": [RECIPIENT]}}),
        ));
        for s in 0..site.shadows {
            out.push(resource(
                "Shadow",
                &format!("{km}-shadow-{s}"),
                &json!({"keyManagerRef": {"name": km}, "placement": {"zone": format!("remote-{s}")}}),
            ));
        }
        for g in 0..site.groups {
            out.push(resource(
                "KeyGroup",
                &format!("{km}-group-{g}"),
                &json!({"keyManagerRef": {"name": km}, "default": g == 0}),
            ));
        }
        for (t, drives) in site.tables.iter().enumerate() {
            let drives: Vec<Value> = (0..*drives)
                .map(|d| {
                    serial += 1;
                    json!({"serial": format!("S{serial:06}"),
                           "certificateIdentity": format!("drive-{serial}.example.com"),
                           "keyGroup": format!("{km}-group-{}", d % site.groups)})
                })
                .collect();
            out.push(resource(
                "DriveTable",
                &format!("{km}-table-{t}"),
                &json!({"keyManagerRef": {"name": km}, "drives": drives}),
            ));
        }
    }
    out
}

/// age's documented example recipient.
const RECIPIENT: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

fn validate(resources: &[Resource]) -> Vec<Finding> {
    let mut estate = Estate::new();
    for r in resources {
        estate.add(r.clone());
    }
    estate.validate()
}

fn errors(findings: &[Finding]) -> Vec<&Finding> {
    findings.iter().filter(|f| f.is_error()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn a_well_formed_estate_has_no_error(sites in prop::collection::vec(site(), 1..5)) {
        let findings = validate(&build(&sites));
        prop_assert!(errors(&findings).is_empty(), "{:?}", findings);
        // The only warning such an estate earns is a lone replica without a shadow.
        let lone = sites.iter().filter(|s| s.replicas == 1 && s.shadows == 0).count();
        prop_assert_eq!(findings.len(), lone);
        prop_assert!(findings.iter().all(|f| f.severity == Severity::Warning && f.field == "spec.replicas"));
    }

    #[test]
    fn findings_do_not_depend_on_manifest_order(
        sites in prop::collection::vec(site(), 1..4),
        order in any::<prop::sample::Index>(),
    ) {
        let mut resources = build(&sites);
        // Break an invariant so there is something to find, then shuffle.
        resources.push(resource("KeyManager", "twin", &json!({"serverId": "site-0", "replicas": 1})));
        let before = validate(&resources);
        let n = resources.len();
        resources.rotate_left(order.index(n));
        resources.reverse();
        prop_assert_eq!(validate(&resources), before);
    }

    #[test]
    fn a_drive_under_two_key_managers_names_both(
        sites in prop::collection::vec(site(), 2..4),
    ) {
        let mut sites = sites;
        sites[0].tables = vec![1];
        let mut resources = build(&sites);
        // The same serial again, in a new table of the second KeyManager.
        resources.push(resource(
            "DriveTable",
            "stray",
            &json!({"keyManagerRef": {"name": "km-1"}, "drives": [{"serial": "S000001", "certificateIdentity": "drive-1.example.com"}]}),
        ));
        let findings = validate(&resources);
        let errors = errors(&findings);
        prop_assert_eq!(errors.len(), 2, "{:?}", findings);
        for e in &errors {
            prop_assert!(e.message.contains("\"km-0\"") && e.message.contains("\"km-1\""), "{}", e);
            prop_assert!(e.message.contains("S000001"));
        }
        let tables: Vec<String> = errors.iter().map(|e| e.object.as_ref().unwrap().name.clone()).collect();
        prop_assert_eq!(tables, vec!["km-0-table-0".to_owned(), "stray".to_owned()]);
    }

    #[test]
    fn a_duplicate_server_id_flags_both_key_managers(sites in prop::collection::vec(site(), 1..4)) {
        let mut resources = build(&sites);
        resources.push(resource("KeyManager", "copy", &json!({"serverId": "site-0"})));
        let findings = validate(&resources);
        let flagged: Vec<(String, String)> = errors(&findings)
            .iter()
            .map(|e| (e.object.as_ref().unwrap().name.clone(), e.field.clone()))
            .collect();
        prop_assert_eq!(flagged, vec![
            ("copy".to_owned(), "spec.serverId".to_owned()),
            ("km-0".to_owned(), "spec.serverId".to_owned()),
        ]);
    }
}

#[test]
fn a_key_manager_without_a_recovery_recipient_is_warned_that_losing_the_cluster_loses_every_key() {
    let mut resources = build(&[Site {
        replicas: 2,
        shadows: 1,
        tables: vec![],
        groups: 1,
    }]);
    resources[0] = resource(
        "KeyManager",
        "km-0",
        &json!({"serverId": "site-0", "replicas": 2, "placement": {"zones": ["zone-0"]}}),
    );
    let findings = validate(&resources);
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].severity, Severity::Warning);
    assert_eq!(findings[0].field, "spec.backup.recoveryRecipients");
    assert!(
        findings[0]
            .message
            .contains("losing the cluster would lose every key")
    );
}

#[test]
fn a_single_replica_with_a_shadow_is_not_flagged() {
    let sites = [Site {
        replicas: 1,
        shadows: 1,
        tables: vec![],
        groups: 1,
    }];
    assert_eq!(validate(&build(&sites)), vec![]);
}

#[test]
fn a_shadow_beside_its_key_manager_is_fine_when_another_is_remote() {
    let mut resources = build(&[Site {
        replicas: 2,
        shadows: 1,
        tables: vec![],
        groups: 1,
    }]);
    let local = json!({"keyManagerRef": {"name": "km-0"}, "placement": {"zone": "zone-0"}});
    resources.push(resource("Shadow", "local", &local));
    assert_eq!(validate(&resources), vec![]);
    // Without the remote one, the local shadow is flagged.
    resources.retain(|r| r.object_ref().name != "km-0-shadow-0");
    let findings = validate(&resources);
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0].severity, Severity::Warning);
    assert_eq!(findings[0].field, "spec.placement.zone");
}

#[test]
fn an_object_defined_twice_is_an_error() {
    let mut resources = build(&[Site {
        replicas: 2,
        shadows: 0,
        tables: vec![1],
        groups: 1,
    }]);
    resources.push(resources[0].clone());
    let findings = validate(&resources);
    let errors = errors(&findings);
    // One finding: the copy is not also a second server with the KeyManager's id.
    assert_eq!(errors.len(), 1, "{findings:?}");
    assert!(errors[0].message.contains("defined more than once"));
}

#[test]
fn a_drive_listed_twice_behind_one_certificate_is_not_said_to_share_with_itself() {
    let mut resources = vec![
        resource(
            "KeyManager",
            "km",
            &json!({"serverId": "km", "replicas": 2}),
        ),
        resource(
            "KeyGroup",
            "gold",
            &json!({"keyManagerRef": {"name": "km"}}),
        ),
        resource(
            "KeyGroup",
            "silver",
            &json!({"keyManagerRef": {"name": "km"}}),
        ),
    ];
    for (table, group) in [("t1", "gold"), ("t2", "silver")] {
        resources.push(resource(
            "DriveTable",
            table,
            &json!({"keyManagerRef": {"name": "km"}, "drives": [
                {"serial": "D3", "certificateIdentity": "lib.example.com", "keyGroup": group}
            ]}),
        ));
    }
    let findings = validate(&resources);
    let shared: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.message.contains("lib.example.com"))
        .collect();
    assert_eq!(shared.len(), 1, "{findings:?}");
    assert!(
        !shared[0].message.contains("with drive \"D3\""),
        "{}",
        shared[0].message
    );
    assert!(
        shared[0].message.contains("listed again"),
        "{}",
        shared[0].message
    );
}
