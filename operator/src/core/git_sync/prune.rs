//! What a revision's removals may delete: the pruning rules, in one place for both shells.
//!
//! Only objects the last applied revision held are candidates (never something applied by
//! hand). A KeyManager is never deleted by sync: its keystore is what tapes need to be
//! read, so one removed from the branch is reported as orphaned until a person deletes it
//! or the branch declares it again. KeyGroups, DriveTables and Shadows are deleted: their
//! removal is a risk `plan` names (key group removed, drive unlisted, last shadow gone), so
//! it was held until accepted, and none of them holds keys itself. Nothing is pruned when
//! the head holds no object at all or could not be fetched: that step never gets here.

use std::collections::BTreeSet;

use shadowkeep_api::crd::AppliedObject;

/// The kinds sync never deletes.
pub const NEVER_PRUNED: &[&str] = &["KeyManager"];

/// What to do with the objects a revision removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pruning {
    /// Deleted, in reverse apply order (Shadows first, KeyManagers never).
    pub delete: Vec<AppliedObject>,
    /// Kept and reported: the ones orphaned before that the head still lacks, and the new
    /// ones.
    pub orphaned: Vec<AppliedObject>,
}

/// Sorts the objects of `inventory` (the last applied revision) that `head` lacks into
/// deleted and orphaned; `orphaned` are those reported before.
pub fn prune(
    inventory: &[AppliedObject],
    orphaned: &[AppliedObject],
    head: &BTreeSet<&AppliedObject>,
) -> Pruning {
    let rank = |kind: &str| match kind {
        "Shadow" => 0,
        "DriveTable" => 1,
        "KeyGroup" => 2,
        _ => 3,
    };
    let mut delete: Vec<AppliedObject> = inventory
        .iter()
        .filter(|o| !head.contains(o) && !NEVER_PRUNED.contains(&o.kind.as_str()))
        .cloned()
        .collect();
    delete.sort_by(|a, b| rank(&a.kind).cmp(&rank(&b.kind)).then_with(|| a.cmp(b)));
    delete.dedup();
    let orphaned: BTreeSet<AppliedObject> = inventory
        .iter()
        .chain(orphaned)
        .filter(|o| !head.contains(o) && NEVER_PRUNED.contains(&o.kind.as_str()))
        .cloned()
        .collect();
    Pruning {
        delete,
        orphaned: orphaned.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(kind: &str, name: &str) -> AppliedObject {
        AppliedObject {
            kind: kind.to_owned(),
            namespace: "default".to_owned(),
            name: name.to_owned(),
        }
    }

    #[test]
    fn a_removed_key_manager_is_orphaned_never_deleted_and_the_rest_go_shadows_first() {
        let km = object("KeyManager", "tape-keys");
        let table = object("DriveTable", "library-a");
        let shadow = object("Shadow", "dr");
        let group = object("KeyGroup", "lto");
        let kept = object("DriveTable", "library-b");
        let inventory = [
            km.clone(),
            group.clone(),
            table.clone(),
            kept.clone(),
            shadow.clone(),
        ];
        let head: BTreeSet<&AppliedObject> = [&kept].into_iter().collect();
        let pruning = prune(&inventory, &[], &head);
        assert_eq!(pruning.delete, [shadow, table, group]);
        assert_eq!(pruning.orphaned, std::slice::from_ref(&km));
        // Reported until the branch declares it again.
        let kept_only = std::slice::from_ref(&kept);
        let orphans = std::slice::from_ref(&km);
        let still = prune(kept_only, orphans, &[&kept].into_iter().collect());
        assert_eq!(still.orphaned, orphans);
        let back = prune(kept_only, orphans, &[&kept, &km].into_iter().collect());
        assert!(back.orphaned.is_empty() && back.delete.is_empty());
    }

    #[test]
    fn only_what_the_last_revision_held_is_pruned() {
        let head = BTreeSet::new();
        assert_eq!(prune(&[], &[], &head), Pruning::default());
    }
}
