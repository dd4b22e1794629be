//! `shadowkeep render PATH...`: every Kubernetes object the operator would apply for the
//! given manifests, in apply order, offline — built by the same pure builders the
//! controllers use: each KeyManager's children, then its Shadows'. Secret data is masked: what the operator generates (the KEK, the
//! certificates, the license) is never shown.

use std::io::Write;
use std::path::PathBuf;

use kube::ResourceExt as _;
use serde_json::Value;

use crate::build::{Inputs, Material, ShadowInputs, ShadowMaterial, children, shadow_children};
use crate::manifests::validate::{EXIT_INVALID, EXIT_VALID, load};

/// Annotation telling a reader which Secret keys were masked.
pub const MASKED_ANNOTATION: &str = "shadowkeep.io/rendered-data";

/// Renders every KeyManager's children, or the validation findings that prevent it.
/// Returns the exit code: 0 rendered, 1 invalid manifests, 2 unreadable input.
pub fn render(paths: &[PathBuf], out: &mut impl Write) -> u8 {
    let (report, estate) = load(paths);
    if report.exit_code() != EXIT_VALID {
        report.print(out);
        return report.exit_code();
    }
    let mut inputs = Inputs::from_estate(&estate);
    inputs.sort_by_key(|i| (i.namespace(), i.name()));
    // The licence key is generated with the signing key; render cannot know it.
    let placeholder = Material {
        kek: zeroize::Zeroizing::new(vec![0; 32]),
        keystore: Vec::new(),
        tls: Some((Vec::new(), Vec::new(), Vec::new())),
        license: Vec::new(),
        ca_key: Some(Vec::new()),
        license_public_key: String::new(),
        shadow_verifiers: Vec::new(),
    };
    let shadow_placeholder = ShadowMaterial {
        license: Vec::new(),
        password: Vec::new(),
        license_public_key: String::new(),
        tls: Some((Vec::new(), Vec::new(), Vec::new())),
    };
    let mut text = String::new();
    for input in &inputs {
        let objects = children(input, &placeholder).and_then(|mut objects| {
            let mut shadows = input.shadows.clone();
            shadows.sort_by_key(|s| s.name_any());
            for shadow in shadows {
                let shadow_inputs = ShadowInputs {
                    shadow,
                    key_manager: input.key_manager,
                    default_image: None,
                };
                for child in shadow_children(&shadow_inputs, &shadow_placeholder)? {
                    objects.push(child.to_value()?);
                }
            }
            Ok(objects)
        });
        let objects = match objects {
            Ok(objects) => objects,
            Err(e) => {
                let _ = writeln!(out, "KeyManager {}: {e}", input.name());
                return EXIT_INVALID;
            }
        };
        for mut object in objects {
            mask_secret(&mut object);
            match serde_yaml::to_string(&object) {
                Ok(yaml) => {
                    text.push_str("---\n");
                    text.push_str(&yaml);
                }
                Err(e) => {
                    let _ = writeln!(out, "KeyManager {}: failed to print: {e}", input.name());
                    return EXIT_INVALID;
                }
            }
        }
    }
    let _ = out.write_all(text.as_bytes());
    EXIT_VALID
}

/// Replaces a Secret's values with empty ones and says so in an annotation.
fn mask_secret(object: &mut Value) {
    if object.get("kind").and_then(Value::as_str) != Some("Secret") {
        return;
    }
    let Some(data) = object.get_mut("data").and_then(Value::as_object_mut) else {
        return;
    };
    let keys: Vec<String> = data.keys().cloned().collect();
    for value in data.values_mut() {
        *value = Value::String(String::new());
    }
    let note = format!(
        "masked: {}; generated or read by the operator",
        keys.join(", ")
    );
    let meta = object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .map(|m| {
            m.entry("annotations")
                .or_insert_with(|| Value::Object(serde_json::Map::new()))
        });
    if let Some(Value::Object(annotations)) = meta {
        annotations.insert(MASKED_ANNOTATION.to_owned(), Value::String(note));
    }
}
