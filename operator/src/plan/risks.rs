//! The domain risks of a change: what no YAML diff shows, each with a severity and one
//! sentence saying what could be lost.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};

use kube::ResourceExt as _;
use serde::Serialize;
use shadowkeep_api::crd::{DesiredShadowState, DriveTable, KeyManager, Shadow};
use shadowkeep_api::estate::Estate;
use shadowkeep_api::finding::{Finding, ObjectRef};
use shadowkeep_api::placement::{PlacementRiskKind, placement_risks};

use crate::core::drive_moves::{ACCEPT_DRIVE_MOVES, RELEASE_DRIVES, lists};

/// How much a risk could cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Severity {
    /// Keys, or the service of keys, can be lost.
    High,
    /// Keys stay, but the margin that protects them shrinks.
    Medium,
    /// Worth a reviewer's look.
    Low,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::High => "high",
            Self::Medium => "medium",
            Self::Low => "low",
        })
    }
}

/// Stable names of the risks, for tools reading the JSON output.
pub mod codes {
    /// A drive is listed under another KeyManager than in the base.
    pub const DRIVE_MOVED: &str = "drive-moved";
    /// `shadowkeep.io/accept-drive-moves` lists new drives.
    pub const MOVES_ACCEPTED: &str = "drive-moves-accepted";
    /// `shadowkeep.io/release-drives` lists new drives.
    pub const DRIVES_RELEASED: &str = "drives-released";
    /// A KeyManager is deleted.
    pub const KEY_MANAGER_DELETED: &str = "key-manager-deleted";
    /// Replicas lowered to one, with no active Shadow.
    pub const SINGLE_REPLICA: &str = "single-replica";
    /// `spec.serverId` changed.
    pub const SERVER_ID_CHANGED: &str = "server-id-changed";
    /// Fewer peer acknowledgements before a new key is confirmed.
    pub const DURABILITY_LOWERED: &str = "durability-lowered";
    /// Fewer keystore backups kept.
    pub const BACKUPS_LOWERED: &str = "backup-retention-lowered";
    /// The last active Shadow of a KeyManager is removed, deactivated or disabled.
    pub const LAST_SHADOW: &str = "last-active-shadow";
    /// A Shadow runs in a zone of its KeyManager's replicas.
    pub const SHADOW_BESIDE_PRIMARY: &str = "shadow-in-primary-zone";
    /// Every Shadow of a KeyManager is in one zone.
    pub const SHADOWS_ONE_ZONE: &str = "shadows-in-one-zone";
    /// A Shadow's service limits or takeover grace period shortened.
    pub const LIMIT_SHORTENED: &str = "shadow-limit-shortened";
    /// A KeyGroup is removed.
    pub const KEY_GROUP_REMOVED: &str = "key-group-removed";
    /// A KeyGroup keeps fewer keys ready.
    pub const KEY_COUNT_LOWERED: &str = "key-count-lowered";
    /// A drive is in no DriveTable any more.
    pub const DRIVE_UNLISTED: &str = "drive-unlisted";
    /// A warning of the estate rules that the base did not have.
    pub const NEW_WARNING: &str = "new-warning";
}

/// One risk of the change.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Risk {
    /// How much it could cost.
    pub severity: Severity,
    /// Which risk, from [`codes`].
    pub code: &'static str,
    /// The object whose change carries it.
    #[serde(flatten, with = "crate::plan::diff::object_ref_serde")]
    pub object: ObjectRef,
    /// One sentence: what changes, and what could be lost.
    pub message: String,
}

/// A KeyManager as objects refer to it: namespace and name.
type Scoped = (Option<String>, String);

/// What the risks are judged on, for one revision.
struct View<'e> {
    estate: &'e Estate,
    /// Objects that did not decode in the head.
    invalid: &'e BTreeSet<ObjectRef>,
    key_managers: BTreeMap<Scoped, &'e KeyManager>,
    /// Serial → the KeyManager and the table that list it first.
    drives: BTreeMap<&'e str, (Scoped, &'e DriveTable)>,
    /// KeyManager → its Shadows.
    shadows: BTreeMap<Scoped, Vec<&'e Shadow>>,
}

impl<'e> View<'e> {
    fn new(estate: &'e Estate, invalid: &'e BTreeSet<ObjectRef>) -> Self {
        let key_managers = estate
            .key_managers()
            .iter()
            .map(|km| ((km.namespace(), km.name_any()), km))
            .collect();
        let mut drives = BTreeMap::new();
        for table in estate.drive_tables() {
            let km = refers(table, &table.spec.key_manager_ref.name);
            for drive in &table.spec.drives {
                drives
                    .entry(drive.serial.as_str())
                    .or_insert_with(|| (km.clone(), table));
            }
        }
        let mut shadows: BTreeMap<Scoped, Vec<&Shadow>> = BTreeMap::new();
        for shadow in estate.shadows() {
            shadows
                .entry(refers(shadow, &shadow.spec.key_manager_ref.name))
                .or_default()
                .push(shadow);
        }
        Self {
            estate,
            invalid,
            key_managers,
            drives,
            shadows,
        }
    }

    fn active_shadows(&self, km: &Scoped) -> Vec<&'e Shadow> {
        self.shadows
            .get(km)
            .into_iter()
            .flatten()
            .filter(|s| s.spec.state == DesiredShadowState::Active)
            .copied()
            .collect()
    }

    /// The placement risks of KeyManager `km`'s Shadows in this revision, by rule and
    /// Shadow name.
    fn placement_risks(&self, km: &Scoped) -> BTreeSet<(PlacementRiskKind, String)> {
        let (Some(key_manager), Some(shadows)) = (self.key_managers.get(km), self.shadows.get(km))
        else {
            return BTreeSet::new();
        };
        placement_risks(key_manager, shadows)
            .into_iter()
            .map(|r| (r.kind, r.shadow))
            .collect()
    }

    fn drive_count(&self, km: &Scoped) -> usize {
        self.drives.values().filter(|(k, _)| k == km).count()
    }
}

/// Every risk of going from `base` to `head`, most severe first. Objects in `invalid` did
/// not decode in the head: their absence is not a removal (the head errors cover them).
pub fn risks(base: &Estate, head: &Estate, invalid: &BTreeSet<ObjectRef>) -> Vec<Risk> {
    let (old, new) = (View::new(base, invalid), View::new(head, invalid));
    let mut risks = Vec::new();
    drive_moves(&old, &new, &mut risks);
    move_annotations(&old, &new, &mut risks);
    key_managers(&old, &new, &mut risks);
    shadows(&old, &new, &mut risks);
    key_groups(&old, &new, &mut risks);
    new_warnings(base, head, &mut risks);
    risks.sort();
    risks.dedup();
    risks
}

fn refers<K: kube::Resource>(o: &K, name: &str) -> Scoped {
    (o.meta().namespace.clone(), name.to_owned())
}

fn object_ref<K: kube::Resource>(kind: &str, o: &K) -> ObjectRef {
    ObjectRef {
        kind: kind.to_owned(),
        namespace: o.meta().namespace.clone(),
        name: o.meta().name.clone().unwrap_or_default(),
    }
}

fn km_name(km: &Scoped) -> String {
    match &km.0 {
        Some(ns) => format!("{ns}/{}", km.1),
        None => km.1.clone(),
    }
}

fn push(
    risks: &mut Vec<Risk>,
    severity: Severity,
    code: &'static str,
    object: ObjectRef,
    message: String,
) {
    risks.push(Risk {
        severity,
        code,
        object,
        message,
    });
}

fn drive_moves(old: &View<'_>, new: &View<'_>, risks: &mut Vec<Risk>) {
    for (serial, (to, table)) in &new.drives {
        let Some((from, _)) = old.drives.get(serial) else {
            continue;
        };
        if from == to {
            continue;
        }
        let accepted = lists(table.annotations(), ACCEPT_DRIVE_MOVES, serial);
        // Across namespaces the old KeyManager's owners must release the drive too; a
        // deleted one's release lives on its drive history, which no manifest shows.
        let released = from.0 == to.0
            || new
                .key_managers
                .get(from)
                .is_some_and(|km| lists(km.annotations(), RELEASE_DRIVES, serial));
        let (from, to) = (km_name(from), km_name(to));
        let (severity, message) = if accepted && released {
            (
                Severity::Medium,
                format!(
                    "drive {serial} moves from KeyManager {from} to {to}; the move is accepted, so the operator carries its keys to {to} before serving it, and {from}'s keystore must stay until the KeyHistoryCarried event or its old tapes lose their keys"
                ),
            )
        } else {
            let missing = if accepted {
                format!("{RELEASE_DRIVES} on KeyManager {from} (another namespace)")
            } else {
                format!("{ACCEPT_DRIVE_MOVES} on this DriveTable")
            };
            (
                Severity::High,
                format!(
                    "drive {serial} moves from KeyManager {from} to {to} without {missing}: {to} refuses to serve it (KeyHistoryAtRisk), so the drive can neither read its old tapes nor write new ones until the move is accepted or undone"
                ),
            )
        };
        push(
            risks,
            severity,
            codes::DRIVE_MOVED,
            object_ref("DriveTable", *table),
            message,
        );
    }
}

/// Serials an annotation lists in the head but not in the base.
fn newly_listed(
    old: Option<&BTreeMap<String, String>>,
    new: &BTreeMap<String, String>,
    key: &str,
) -> Vec<String> {
    let serials = |a: Option<&BTreeMap<String, String>>| -> BTreeSet<String> {
        a.and_then(|a| a.get(key))
            .map(|v| {
                v.split([',', ' '])
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let before = serials(old);
    serials(Some(new))
        .into_iter()
        .filter(|s| !before.contains(s))
        .collect()
}

fn some_serials(serials: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut text = serials
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if serials.len() > SHOWN {
        let _ = write!(text, " and {} more", serials.len() - SHOWN);
    }
    text
}

fn move_annotations(old: &View<'_>, new: &View<'_>, risks: &mut Vec<Risk>) {
    for table in new.estate.drive_tables() {
        let before = old
            .estate
            .drive_tables()
            .iter()
            .find(|t| t.namespace() == table.namespace() && t.name_any() == table.name_any());
        let added = newly_listed(
            before.map(kube::ResourceExt::annotations),
            table.annotations(),
            ACCEPT_DRIVE_MOVES,
        );
        if added.is_empty() {
            continue;
        }
        let km = km_name(&refers(table, &table.spec.key_manager_ref.name));
        push(
            risks,
            Severity::Low,
            codes::MOVES_ACCEPTED,
            object_ref("DriveTable", table),
            format!(
                "{ACCEPT_DRIVE_MOVES} now lists {}: the keys these drives used under another KeyManager will be copied into KeyManager {km}'s keystore, readable by whoever can read it",
                some_serials(&added)
            ),
        );
    }
    for (scoped, km) in &new.key_managers {
        let added = newly_listed(
            old.key_managers.get(scoped).map(|k| k.annotations()),
            km.annotations(),
            RELEASE_DRIVES,
        );
        if added.is_empty() {
            continue;
        }
        push(
            risks,
            Severity::Medium,
            codes::DRIVES_RELEASED,
            object_ref("KeyManager", *km),
            format!(
                "{RELEASE_DRIVES} now lists {}: a KeyManager in another namespace may copy these drives' keys into a keystore that namespace's users can read",
                some_serials(&added)
            ),
        );
    }
}

fn key_managers(old: &View<'_>, new: &View<'_>, risks: &mut Vec<Risk>) {
    for (scoped, before) in &old.key_managers {
        let name = km_name(scoped);
        let Some(after) = new.key_managers.get(scoped) else {
            if new.invalid.contains(&object_ref("KeyManager", *before)) {
                continue;
            }
            push(
                risks,
                Severity::High,
                codes::KEY_MANAGER_DELETED,
                object_ref("KeyManager", *before),
                format!(
                    "KeyManager {name} is deleted: its replicas stop{}, and its kept keystore and KEK Secrets and volumes become the only copy of keys not carried elsewhere",
                    match old.drive_count(scoped) {
                        0 => String::new(),
                        1 => ", so its 1 drive gets no keys from it".to_owned(),
                        n => format!(", so its {n} drives get no keys from it"),
                    }
                ),
            );
            continue;
        };
        let object = object_ref("KeyManager", *after);
        if after.spec.replicas == 1
            && before.spec.replicas > 1
            && new.active_shadows(scoped).is_empty()
        {
            push(
                risks,
                Severity::High,
                codes::SINGLE_REPLICA,
                object.clone(),
                format!(
                    "KeyManager {name} goes from {} replicas to 1 with no active Shadow: if that replica or its volume is lost, every key it holds is lost with it",
                    before.spec.replicas
                ),
            );
        }
        if after.spec.server_id != before.spec.server_id {
            push(
                risks,
                Severity::High,
                codes::SERVER_ID_CHANGED,
                object.clone(),
                format!(
                    "KeyManager {name}'s serverId changes from {:?} to {:?}: the API server refuses the change (immutable), and a KeyManager recreated under a new id is a stranger to the clients and Shadows that trusted the old one",
                    before.spec.server_id, after.spec.server_id
                ),
            );
        }
        let (was, is) = (acknowledgements(before), acknowledgements(after));
        if is < was {
            push(
                risks,
                Severity::High,
                codes::DURABILITY_LOWERED,
                object.clone(),
                format!(
                    "KeyManager {name} confirms a new key after {is} other replica(s) hold it instead of {was}: a replica lost just after a Create can take with it a key a tape was already written with"
                ),
            );
        }
        let (was, is) = (before.spec.backup.retention, after.spec.backup.retention);
        if is < was {
            push(
                risks,
                Severity::Medium,
                codes::BACKUPS_LOWERED,
                object,
                format!(
                    "KeyManager {name} keeps {is} keystore backups instead of {was}: a damage noticed late may have no intact backup left"
                ),
            );
        }
    }
}

/// Peer acknowledgements a Create waits for, the default filled in as the server does.
fn acknowledgements(km: &KeyManager) -> i32 {
    km.spec
        .durability
        .peer_acknowledgements
        .unwrap_or(i32::from(km.spec.replicas > 1))
}

fn shadows(old: &View<'_>, new: &View<'_>, risks: &mut Vec<Risk>) {
    // The last active Shadow of a KeyManager that keeps existing.
    for scoped in new.key_managers.keys() {
        let before = old.active_shadows(scoped);
        if before.is_empty() || !new.active_shadows(scoped).is_empty() {
            continue;
        }
        for shadow in before {
            let now =
                new.shadows.get(scoped).into_iter().flatten().find(|s| {
                    s.namespace() == shadow.namespace() && s.name_any() == shadow.name_any()
                });
            if now.is_none() && new.invalid.contains(&object_ref("Shadow", shadow)) {
                continue;
            }
            let what = match now.map(|s| s.spec.state) {
                None => "is removed".to_owned(),
                Some(state) => format!("becomes {state:?}"),
            };
            let object = object_ref("Shadow", now.copied().unwrap_or(shadow));
            push(
                risks,
                Severity::High,
                codes::LAST_SHADOW,
                object,
                format!(
                    "Shadow {} {what}, and KeyManager {} is left with no active Shadow: if its site goes dark, no server can hand out its keys",
                    shadow.name_any(),
                    km_name(scoped)
                ),
            );
        }
    }
    for (scoped, shadows) in &new.shadows {
        let Some(km) = new.key_managers.get(scoped) else {
            continue;
        };
        // Only what the change brings: a risk the base already had is not this change's.
        let was = old.placement_risks(scoped);
        let now = placement_risks(km, shadows);
        for risk in &now {
            if risk.kind != PlacementRiskKind::BesideReplicas
                || was.contains(&(risk.kind, risk.shadow.clone()))
            {
                continue;
            }
            let Some(shadow) = shadows.iter().find(|s| s.name_any() == risk.shadow) else {
                continue;
            };
            push(
                risks,
                Severity::Medium,
                codes::SHADOW_BESIDE_PRIMARY,
                object_ref("Shadow", *shadow),
                format!(
                    "Shadow {} runs in zone {}, where KeyManager {} has replicas: one outage of that zone can take the replicas and this Shadow together",
                    risk.shadow,
                    risk.zone,
                    km_name(scoped)
                ),
            );
        }
        let one_zone = |r: &(PlacementRiskKind, String)| r.0 == PlacementRiskKind::OneZone;
        if let Some(risk) = now.iter().find(|r| r.kind == PlacementRiskKind::OneZone)
            && !was.iter().any(one_zone)
        {
            push(
                risks,
                Severity::Medium,
                codes::SHADOWS_ONE_ZONE,
                object_ref("KeyManager", *km),
                format!(
                    "all {} Shadows of KeyManager {} are in zone {}: one outage there leaves none to serve its keys",
                    shadows.len(),
                    km_name(scoped),
                    risk.zone
                ),
            );
        }
        for shadow in shadows {
            let before =
                old.shadows.get(scoped).into_iter().flatten().find(|s| {
                    s.namespace() == shadow.namespace() && s.name_any() == shadow.name_any()
                });
            if let Some(before) = before {
                limits(before, shadow, risks);
            }
        }
    }
}

fn limits(before: &Shadow, after: &Shadow, risks: &mut Vec<Risk>) {
    let name = after.name_any();
    let checks = [
        (
            "continuousServiceLimit",
            before.spec.continuous_service_limit,
            after.spec.continuous_service_limit,
            "a long outage of its KeyManager leaves drives without keys sooner",
        ),
        (
            "standaloneLimit",
            before.spec.standalone_limit,
            after.spec.standalone_limit,
            "a Shadow cut off from its KeyManager is disabled sooner and needs a new license",
        ),
        (
            "takeoverGracePeriod",
            before.spec.takeover_grace_period,
            after.spec.takeover_grace_period,
            "a shorter network blip makes the Shadow take over while the replicas may still answer",
        ),
    ];
    for (field, was, is, loss) in checks {
        if is < was {
            push(
                risks,
                Severity::Low,
                codes::LIMIT_SHORTENED,
                object_ref("Shadow", after),
                format!("Shadow {name}'s {field} shortens from {was} to {is}: {loss}"),
            );
        }
    }
}

fn key_groups(old: &View<'_>, new: &View<'_>, risks: &mut Vec<Risk>) {
    for group in old.estate.key_groups() {
        let now = new
            .estate
            .key_groups()
            .iter()
            .find(|g| g.namespace() == group.namespace() && g.name_any() == group.name_any());
        let km = km_name(&refers(group, &group.spec.key_manager_ref.name));
        match now {
            None if new.invalid.contains(&object_ref("KeyGroup", group)) => {}
            None => push(
                risks,
                Severity::Medium,
                codes::KEY_GROUP_REMOVED,
                object_ref("KeyGroup", group),
                format!(
                    "KeyGroup {} of KeyManager {km} is removed: its keys stay in the keystore, but none are made or rotated for it any more, and drives naming it are refused",
                    group.name_any()
                ),
            ),
            Some(now) if now.spec.key_count < group.spec.key_count => push(
                risks,
                Severity::Low,
                codes::KEY_COUNT_LOWERED,
                object_ref("KeyGroup", now),
                format!(
                    "KeyGroup {} keeps {} keys ready instead of {}: drives writing many new tapes may run short between refills",
                    now.name_any(),
                    now.spec.key_count,
                    group.spec.key_count
                ),
            ),
            Some(_) => {}
        }
    }
    for (serial, (km, table)) in &old.drives {
        if new.drives.contains_key(serial)
            || new.invalid.contains(&object_ref("DriveTable", *table))
        {
            continue;
        }
        push(
            risks,
            Severity::Medium,
            codes::DRIVE_UNLISTED,
            object_ref("DriveTable", *table),
            format!(
                "drive {serial} is in no DriveTable any more: it gets no keys, so it can neither read its tapes nor write new ones; its keys stay in KeyManager {}'s keystore",
                km_name(km)
            ),
        );
    }
}

/// Warnings of the estate rules that the head has and the base had not. A finding's field
/// names an index (`spec.drives[3]`) that shifts when a row above it goes, so findings are
/// matched on object and message.
fn new_warnings(base: &Estate, head: &Estate, risks: &mut Vec<Risk>) {
    let key = |f: &Finding| (f.object.clone(), f.message.clone());
    let before: BTreeSet<_> = base
        .validate()
        .iter()
        .filter(|f| !f.is_error())
        .map(key)
        .collect();
    for finding in head.validate().into_iter().filter(|f| !f.is_error()) {
        if before.contains(&key(&finding)) {
            continue;
        }
        let Some(object) = finding.object else {
            continue;
        };
        let message = if finding.field.is_empty() {
            finding.message
        } else {
            format!("{}: {}", finding.field, finding.message)
        };
        push(risks, Severity::Medium, codes::NEW_WARNING, object, message);
    }
}
