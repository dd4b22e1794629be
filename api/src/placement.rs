//! Where a KeyManager's Shadows run, judged against its replicas. A Shadow exists for the
//! day the KeyManager's site goes dark, so a placement that one outage takes down with the
//! replicas, or that one outage takes down whole, defeats it. `shadowkeep validate`,
//! `shadowkeep plan` and the Shadow controller's `PlacementRisk` condition all judge by
//! [`placement_risks`], so they never disagree.

use std::collections::BTreeSet;

use kube::ResourceExt as _;

use crate::crd::{KeyManager, Shadow};

/// The field every placement risk is about.
pub const ZONE_FIELD: &str = "spec.placement.zone";

/// Which placement rule a Shadow breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PlacementRiskKind {
    /// The Shadow runs in a zone of its KeyManager's replicas and no Shadow of that
    /// KeyManager runs elsewhere: one site outage takes the replicas and every Shadow.
    BesideReplicas,
    /// The KeyManager has several Shadows, all in one zone: one outage there leaves none.
    OneZone,
}

/// One Shadow's placement risk.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PlacementRisk {
    /// Which rule.
    pub kind: PlacementRiskKind,
    /// The Shadow's name (in its KeyManager's namespace).
    pub shadow: String,
    /// Its zone.
    pub zone: String,
    /// The field to change: [`ZONE_FIELD`].
    pub field: &'static str,
    /// One sentence saying what one outage would take.
    pub message: String,
}

/// The placement risks of `shadows`, the Shadows of `key_manager`, in the order of
/// `shadows`: first those beside the replicas, then those of a KeyManager whose Shadows
/// share one zone. Replicas allowed in any zone (`spec.placement.zones` empty) are beside
/// no Shadow that anyone can tell.
pub fn placement_risks(key_manager: &KeyManager, shadows: &[&Shadow]) -> Vec<PlacementRisk> {
    let km = key_manager.name_any();
    let replica_zones = &key_manager.spec.placement.zones;
    let risk = |kind, shadow: &Shadow, message: String| PlacementRisk {
        kind,
        shadow: shadow.name_any(),
        zone: shadow.spec.placement.zone.clone(),
        field: ZONE_FIELD,
        message,
    };
    let mut risks = Vec::new();
    let elsewhere = shadows
        .iter()
        .any(|s| !replica_zones.contains(&s.spec.placement.zone));
    if !replica_zones.is_empty() && !elsewhere {
        risks.extend(shadows.iter().map(|shadow| {
            risk(
                PlacementRiskKind::BesideReplicas,
                shadow,
                format!(
                    "zone {:?} is where KeyManager {km:?} runs, and it has no shadow elsewhere: one site outage takes both",
                    shadow.spec.placement.zone
                ),
            )
        }));
    }
    let zones: BTreeSet<&str> = shadows
        .iter()
        .map(|s| s.spec.placement.zone.as_str())
        .collect();
    if shadows.len() > 1 && zones.len() == 1 {
        risks.extend(shadows.iter().map(|shadow| {
            risk(
                PlacementRiskKind::OneZone,
                shadow,
                format!(
                    "all {} Shadows of KeyManager {km} are in zone {}: one outage there leaves none to serve its keys",
                    shadows.len(),
                    shadow.spec.placement.zone
                ),
            )
        }));
    }
    risks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_manager(zones: &[&str]) -> KeyManager {
        let zones = zones
            .iter()
            .map(|z| format!("\"{z}\""))
            .collect::<Vec<_>>()
            .join(", ");
        serde_yaml::from_str(&format!(
            "apiVersion: shadowkeep.io/v1alpha1\nkind: KeyManager\nmetadata: {{name: tape-keys}}\nspec: {{serverId: eu1, placement: {{zones: [{zones}]}}}}\n"
        ))
        .unwrap()
    }

    fn shadow(name: &str, zone: &str) -> Shadow {
        serde_yaml::from_str(&format!(
            "apiVersion: shadowkeep.io/v1alpha1\nkind: Shadow\nmetadata: {{name: {name}}}\nspec: {{keyManagerRef: {{name: tape-keys}}, placement: {{zone: {zone}}}}}\n"
        ))
        .unwrap()
    }

    fn kinds(km: &KeyManager, shadows: &[Shadow]) -> Vec<(PlacementRiskKind, String)> {
        let refs: Vec<&Shadow> = shadows.iter().collect();
        placement_risks(km, &refs)
            .into_iter()
            .map(|r| {
                assert_eq!(r.field, "spec.placement.zone");
                assert!(r.message.contains(&r.zone), "{}", r.message);
                (r.kind, r.shadow)
            })
            .collect()
    }

    use PlacementRiskKind::{BesideReplicas, OneZone};

    #[test]
    fn a_shadow_at_another_site_is_no_risk() {
        let km = key_manager(&["a", "b"]);
        assert!(kinds(&km, &[shadow("dr", "c")]).is_empty());
        assert!(kinds(&km, &[]).is_empty());
    }

    #[test]
    fn a_shadow_beside_the_replicas_is_a_risk_unless_another_is_elsewhere() {
        let km = key_manager(&["a", "b"]);
        assert_eq!(
            kinds(&km, &[shadow("dr", "b")]),
            [(BesideReplicas, "dr".to_owned())]
        );
        // One Shadow elsewhere survives the replicas' site.
        assert!(kinds(&km, &[shadow("dr", "b"), shadow("dr2", "c")]).is_empty());
        let risks = placement_risks(&km, &[&shadow("dr", "a")]);
        assert_eq!(
            risks[0].message,
            "zone \"a\" is where KeyManager \"tape-keys\" runs, and it has no shadow elsewhere: one site outage takes both"
        );
    }

    #[test]
    fn replicas_in_any_zone_are_beside_no_shadow() {
        assert!(kinds(&key_manager(&[]), &[shadow("dr", "a")]).is_empty());
    }

    #[test]
    fn shadows_all_in_one_zone_are_each_a_risk() {
        let km = key_manager(&["a"]);
        assert_eq!(
            kinds(&km, &[shadow("dr", "c"), shadow("dr2", "c")]),
            [(OneZone, "dr".to_owned()), (OneZone, "dr2".to_owned())]
        );
        // Both rules at once: two Shadows in the replicas' one zone.
        assert_eq!(
            kinds(&km, &[shadow("dr", "a"), shadow("dr2", "a")]),
            [
                (BesideReplicas, "dr".to_owned()),
                (BesideReplicas, "dr2".to_owned()),
                (OneZone, "dr".to_owned()),
                (OneZone, "dr2".to_owned())
            ]
        );
        let risks = placement_risks(&km, &[&shadow("dr", "c"), &shadow("dr2", "c")]);
        assert_eq!(
            risks[0].message,
            "all 2 Shadows of KeyManager tape-keys are in zone c: one outage there leaves none to serve its keys"
        );
        // Two zones: no risk; a single Shadow is not "all in one zone".
        assert!(kinds(&km, &[shadow("dr", "c"), shadow("dr2", "d")]).is_empty());
        assert!(kinds(&km, &[shadow("dr", "c")]).is_empty());
    }
}
