//! The decoder checks the DriveTable rule that serials are unique in Rust rather than in
//! CEL (it is quadratic there); over generated tables, with and without duplicates, it must
//! say exactly what the CEL rule, evaluated as the API server would, says.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

use std::sync::LazyLock;

use kube::CustomResourceExt as _;
use kube::core::cel::{CompiledSchema, Validator, compile_schema};
use proptest::prelude::*;
use serde_json::{Value, json};
use shadowkeep_api::crd::DriveTable;
use shadowkeep_api::manifest::{Decoded, Decoder, UNIQUE_SERIALS_RULE};

static DECODER: LazyLock<Decoder> = LazyLock::new(Decoder::new);

/// The DriveTable CRD's rules as written, the unique-serials rule included.
static CEL: LazyLock<CompiledSchema> = LazyLock::new(|| {
    let crd = DriveTable::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .map(|s| serde_json::to_value(s).unwrap())
        .unwrap();
    compile_schema(&schema)
});

fn table(serials: &[String]) -> Value {
    json!({
        "apiVersion": "shadowkeep.io/v1alpha1",
        "kind": "DriveTable",
        "metadata": {"name": "t"},
        "spec": {
            "keyManagerRef": {"name": "km"},
            "drives": serials.iter().map(|s| json!({"serial": s, "acceptAnyCertificate": true})).collect::<Vec<_>>(),
        },
    })
}

/// The finding on `spec.drives` the decoder gives, if any.
fn decoder_says(doc: &Value) -> Option<String> {
    match DECODER.decode(doc) {
        Ok(Decoded::Resource(_)) => None,
        Ok(other) => panic!("decoded as {other:?}"),
        Err(findings) => {
            let on_drives: Vec<String> = findings
                .iter()
                .filter(|f| f.field == "spec.drives")
                .map(|f| f.message.clone())
                .collect();
            assert!(on_drives.len() <= 1, "{findings:?}");
            on_drives.into_iter().next()
        }
    }
}

/// What the CEL rule says about the same table, evaluated by kube's CEL validator.
fn cel_says(doc: &Value) -> Option<String> {
    let mut stored = doc.clone();
    let map = stored.as_object_mut().unwrap();
    map.remove("apiVersion");
    map.remove("kind");
    let errors = Validator::new()
        .validate_compiled(&CEL, &stored, None)
        .err()
        .map(kube::core::cel::ValidationErrors::into_vec)
        .unwrap_or_default();
    let on_drives: Vec<String> = errors
        .into_iter()
        .filter(|e| e.field_path.trim_start_matches('.') == "spec.drives")
        .filter(|e| e.rule == UNIQUE_SERIALS_RULE)
        .map(|e| e.message)
        .collect();
    on_drives.into_iter().next()
}

#[test]
fn the_rule_is_checked_by_the_decoder() {
    assert!(
        DECODER.checks_unique_serials(),
        "the DriveTable CRD no longer has the rule {UNIQUE_SERIALS_RULE:?}: update the decoder"
    );
    let doc = table(&["A1".to_owned(), "B2".to_owned(), "A1".to_owned()]);
    assert_eq!(
        decoder_says(&doc).as_deref(),
        Some("drive serial numbers must be unique within a table")
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn decoder_and_cel_agree(serials in prop::collection::vec("[A-C][0-2]", 0..24)) {
        let doc = table(&serials);
        prop_assert_eq!(decoder_says(&doc), cel_says(&doc), "{:?}", serials);
    }
}
