//! The committed `crds/` directory is exactly what `shadowkeep crds` generates.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use shadowkeep::cli::crds::{REGENERATE, rendered};

#[test]
fn crds_directory_matches_the_generator() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let committed: BTreeMap<String, String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    let generated: BTreeMap<String, String> = rendered().unwrap().into_iter().collect();
    assert_eq!(
        committed.keys().collect::<Vec<_>>(),
        generated.keys().collect::<Vec<_>>(),
        "crds/ holds other files than the generator writes; run `{REGENERATE}`"
    );
    for (name, text) in &generated {
        assert!(
            committed[name] == *text,
            "crds/{name} is out of date with the Rust types; run `{REGENERATE}`"
        );
    }
}
