//! The validate step: whether the spec can be applied at all. Pure.

use shadowkeep_api::estate::Estate;
use shadowkeep_api::finding::Finding;
use shadowkeep_api::manifest::Resource as Object;

use super::dereference::Dereferenced;

/// `Err` with the first reason the spec cannot be applied, naming the field: the CRD's CEL
/// rules (the API server checks them too, but an object may predate a rule) and the estate
/// rules that concern this KeyManager.
pub fn validate(read: &Dereferenced) -> Result<(), String> {
    let km = &read.key_manager;
    if let Err(errors) = km.validate_cel() {
        let mut all: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.field_path.trim_start_matches('.'), e.message))
            .collect();
        all.sort();
        return Err(all.join("; "));
    }
    let mine = |r: &str| r == read.name;
    let mut estate = Estate::new();
    estate.add(Object::KeyManager((**km).clone()));
    for t in read
        .tables
        .iter()
        .filter(|t| mine(&t.spec.key_manager_ref.name))
    {
        estate.add(Object::DriveTable(t.clone()));
    }
    for g in read
        .groups
        .iter()
        .filter(|g| mine(&g.spec.key_manager_ref.name))
    {
        estate.add(Object::KeyGroup(g.clone()));
    }
    for s in read
        .shadows
        .iter()
        .filter(|s| mine(&s.spec.key_manager_ref.name))
    {
        estate.add(Object::Shadow(s.clone()));
    }
    match estate.validate().into_iter().find(Finding::is_error) {
        Some(f) => Err(f.to_string().trim_start_matches("error: ").to_owned()),
        None => Ok(()),
    }
}
