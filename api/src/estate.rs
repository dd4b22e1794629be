//! Rules over a whole estate: what no single object can be checked for alone.
//!
//! References must resolve; a drive must belong to one KeyManager (a drive split between
//! two splits its key history, and tapes written under one are unreadable from the other);
//! server ids must be unique; and the placements that leave keys without a second home, and
//! drive entries the key server would refuse, are flagged.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt as _;

use crate::crd::{DriveTable, KeyGroup, KeyManager, Shadow};
use crate::finding::{Finding, ObjectRef};
use crate::manifest::Resource;

/// The objects of an estate, as decoded from its manifests.
#[derive(Clone, Debug, Default)]
pub struct Estate {
    key_managers: Vec<KeyManager>,
    shadows: Vec<Shadow>,
    drive_tables: Vec<DriveTable>,
    key_groups: Vec<KeyGroup>,
}

/// Namespace and name: how objects refer to each other. `None` is the namespace the
/// manifests are applied to.
type Scoped = (Option<String>, String);

impl Estate {
    /// An empty estate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an object.
    pub fn add(&mut self, resource: Resource) {
        match resource {
            Resource::KeyManager(o) => self.key_managers.push(o),
            Resource::Shadow(o) => self.shadows.push(o),
            Resource::DriveTable(o) => self.drive_tables.push(o),
            Resource::KeyGroup(o) => self.key_groups.push(o),
        }
    }

    /// The KeyManagers.
    pub fn key_managers(&self) -> &[KeyManager] {
        &self.key_managers
    }

    /// The Shadows.
    pub fn shadows(&self) -> &[Shadow] {
        &self.shadows
    }

    /// The DriveTables.
    pub fn drive_tables(&self) -> &[DriveTable] {
        &self.drive_tables
    }

    /// The KeyGroups.
    pub fn key_groups(&self) -> &[KeyGroup] {
        &self.key_groups
    }

    /// Every finding about the estate as a whole, sorted, errors and warnings alike.
    pub fn validate(&self) -> Vec<Finding> {
        let mut findings = Vec::new();
        self.check_unique_objects(&mut findings);
        self.check_references(&mut findings);
        self.check_server_ids(&mut findings);
        self.check_drives(&mut findings);
        self.check_shared_certificates(&mut findings);
        self.check_serial_only_drives(&mut findings);
        self.check_default_groups(&mut findings);
        self.check_redundancy(&mut findings);
        self.check_backups(&mut findings);
        findings.sort();
        findings.dedup();
        findings
    }

    fn key_manager(&self, ns: Option<&String>, name: &str) -> Option<&KeyManager> {
        self.key_managers
            .iter()
            .find(|km| km.metadata.namespace.as_ref() == ns && km.name_any() == name)
    }

    fn check_unique_objects(&self, findings: &mut Vec<Finding>) {
        let mut seen = BTreeSet::new();
        let refs = self
            .key_managers
            .iter()
            .map(|o| object_ref("KeyManager", o))
            .chain(self.shadows.iter().map(|o| object_ref("Shadow", o)))
            .chain(
                self.drive_tables
                    .iter()
                    .map(|o| object_ref("DriveTable", o)),
            )
            .chain(self.key_groups.iter().map(|o| object_ref("KeyGroup", o)));
        for r in refs {
            if !seen.insert(r.clone()) {
                findings.push(Finding::error(
                    Some(r),
                    "metadata.name",
                    "is defined more than once; the later definition would replace the earlier",
                ));
            }
        }
    }

    fn check_references(&self, findings: &mut Vec<Finding>) {
        let refs = self
            .shadows
            .iter()
            .map(|o| (object_ref("Shadow", o), &o.spec.key_manager_ref.name))
            .chain(
                self.drive_tables
                    .iter()
                    .map(|o| (object_ref("DriveTable", o), &o.spec.key_manager_ref.name)),
            )
            .chain(
                self.key_groups
                    .iter()
                    .map(|o| (object_ref("KeyGroup", o), &o.spec.key_manager_ref.name)),
            );
        for (object, km) in refs {
            if self.key_manager(object.namespace.as_ref(), km).is_none() {
                findings.push(Finding::error(
                    Some(object.clone()),
                    "spec.keyManagerRef.name",
                    format!(
                        "KeyManager {km:?} not found{}",
                        in_namespace(object.namespace.as_ref())
                    ),
                ));
            }
        }
        let groups: BTreeSet<(Scoped, &str)> = self
            .key_groups
            .iter()
            .map(|g| {
                (
                    scoped_ref(g, &g.spec.key_manager_ref.name),
                    g.metadata.name.as_deref().unwrap_or(""),
                )
            })
            .collect();
        for table in &self.drive_tables {
            let km = scoped_ref(table, &table.spec.key_manager_ref.name);
            for (i, drive) in table.spec.drives.iter().enumerate() {
                let Some(group) = &drive.key_group else {
                    continue;
                };
                if !groups.contains(&(km.clone(), group.as_str())) {
                    findings.push(Finding::error(
                        Some(object_ref("DriveTable", table)),
                        format!("spec.drives[{i}].keyGroup"),
                        format!(
                            "KeyGroup {group:?} of KeyManager {:?} not found{}",
                            km.1,
                            in_namespace(km.0.as_ref())
                        ),
                    ));
                }
            }
        }
    }

    fn check_server_ids(&self, findings: &mut Vec<Finding>) {
        // A set: one object defined twice is its own finding, not a server-id clash.
        let mut by_id: BTreeMap<&str, BTreeSet<ObjectRef>> = BTreeMap::new();
        for km in &self.key_managers {
            by_id
                .entry(km.spec.server_id.as_str())
                .or_default()
                .insert(object_ref("KeyManager", km));
        }
        for (id, owners) in by_id {
            if owners.len() < 2 {
                continue;
            }
            for owner in &owners {
                let others = owners
                    .iter()
                    .filter(|o| *o != owner)
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                findings.push(Finding::error(
                    Some(owner.clone()),
                    "spec.serverId",
                    format!("server id {id:?} is also used by {others}; two servers with one id confuse every client"),
                ));
            }
        }
    }

    fn check_drives(&self, findings: &mut Vec<Finding>) {
        // serial -> every (table, index, KeyManager) listing it
        let mut listings: BTreeMap<&str, Vec<(ObjectRef, usize, Scoped)>> = BTreeMap::new();
        for table in &self.drive_tables {
            let km = scoped_ref(table, &table.spec.key_manager_ref.name);
            for (i, drive) in table.spec.drives.iter().enumerate() {
                listings.entry(drive.serial.as_str()).or_default().push((
                    object_ref("DriveTable", table),
                    i,
                    km.clone(),
                ));
            }
        }
        for (serial, places) in listings {
            for (table, i, km) in &places {
                for (other_table, _, other_km) in places.iter().filter(|(t, _, _)| t != table) {
                    let message = if other_km == km {
                        format!(
                            "drive {serial:?} is also listed in {other_table}, for the same KeyManager {:?}; list each drive once",
                            km.1
                        )
                    } else {
                        format!(
                            "drive {serial:?} is listed under KeyManager {:?} here and under KeyManager {:?} in {other_table}; a drive served by two KeyManagers splits its key history and its old tapes become unreadable",
                            km.1, other_km.1
                        )
                    };
                    findings.push(Finding::error(
                        Some(table.clone()),
                        format!("spec.drives[{i}].serial"),
                        message,
                    ));
                }
            }
        }
    }

    /// Drives behind one certificate (a library's drives usually share its certificate)
    /// in different key groups: the key server can tell them apart only by the serial a
    /// request's Device credential carries.
    fn check_shared_certificates(&self, findings: &mut Vec<Finding>) {
        // (KeyManager, identity) -> the first drive behind it and its key group
        let mut first: BTreeMap<(Scoped, &str), (&str, Option<&str>)> = BTreeMap::new();
        for table in &self.drive_tables {
            let km = scoped_ref(table, &table.spec.key_manager_ref.name);
            for (i, drive) in table.spec.drives.iter().enumerate() {
                let Some(identity) = drive.certificate_identity.as_deref() else {
                    continue;
                };
                // A drive without a group is in the KeyManager's default group.
                let group = drive.key_group.as_deref().or_else(|| {
                    self.key_groups
                        .iter()
                        .find(|g| {
                            g.spec.default_group
                                && scoped_ref(*g, &g.spec.key_manager_ref.name) == km
                        })
                        .map(|g| g.metadata.name.as_deref().unwrap_or_default())
                });
                let (other, other_group) = *first
                    .entry((km.clone(), identity))
                    .or_insert((drive.serial.as_str(), group));
                if other_group == group {
                    continue;
                }
                let name = |g: Option<&str>| {
                    g.map_or("the default KeyGroup".to_owned(), |g| {
                        format!("KeyGroup {g:?}")
                    })
                };
                let message = if other == drive.serial {
                    format!(
                        "drive {other:?} is listed again behind certificate identity {identity:?}, with {} instead of {}: the key server keeps one entry per serial, so only one of those groups holds this drive's keys; list it once",
                        name(group),
                        name(other_group),
                    )
                } else {
                    format!(
                        "drive {:?} shares certificate identity {identity:?} with drive {other:?} but uses {} instead of {}: the key server tells them apart only by the serial in a request's Device credential, and without one gives {other:?}'s group",
                        drive.serial,
                        name(group),
                        name(other_group),
                    )
                };
                findings.push(Finding::warning(
                    Some(object_ref("DriveTable", table)),
                    format!("spec.drives[{i}].keyGroup"),
                    message,
                ));
            }
        }
    }

    /// Drives that name no certificate identity: a request's serial is only what the
    /// client claims, so the key server admits such a drive only on an explicit opt-in —
    /// the entry's `acceptAnyCertificate`, or `acceptUnknownDrives` on any table of its
    /// KeyManager (the server applies them as one table). Without either the drive is
    /// refused, which is likely not what the table's author meant.
    fn check_serial_only_drives(&self, findings: &mut Vec<Finding>) {
        let open: BTreeSet<Scoped> = self
            .drive_tables
            .iter()
            .filter(|t| t.spec.accept_unknown_drives)
            .map(|t| scoped_ref(t, &t.spec.key_manager_ref.name))
            .collect();
        for table in &self.drive_tables {
            if open.contains(&scoped_ref(table, &table.spec.key_manager_ref.name)) {
                continue;
            }
            for (i, drive) in table.spec.drives.iter().enumerate() {
                if drive.certificate_identity.is_some() || drive.accept_any_certificate {
                    continue;
                }
                findings.push(Finding::warning(
                    Some(object_ref("DriveTable", table)),
                    format!("spec.drives[{i}].certificateIdentity"),
                    format!(
                        "drive {serial:?} has no certificateIdentity, so the key server refuses it: set the identity its client certificate carries, or acceptAnyCertificate to admit any certificate from the KeyManager's CA that presents serial {serial:?} in a Device credential",
                        serial = drive.serial
                    ),
                ));
            }
        }
    }

    fn check_default_groups(&self, findings: &mut Vec<Finding>) {
        let mut defaults: BTreeMap<Scoped, Vec<ObjectRef>> = BTreeMap::new();
        for group in self.key_groups.iter().filter(|g| g.spec.default_group) {
            defaults
                .entry(scoped_ref(group, &group.spec.key_manager_ref.name))
                .or_default()
                .push(object_ref("KeyGroup", group));
        }
        for ((_, km), groups) in defaults {
            if groups.len() < 2 {
                continue;
            }
            let names = groups
                .iter()
                .map(|g| g.name.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            for group in groups {
                findings.push(Finding::error(
                    Some(group),
                    "spec.default",
                    format!(
                        "KeyManager {km:?} has more than one default KeyGroup ({names}); mark one"
                    ),
                ));
            }
        }
    }

    fn check_redundancy(&self, findings: &mut Vec<Finding>) {
        for km in &self.key_managers {
            let me = scoped_ref(km, &km.name_any());
            let shadows: Vec<&Shadow> = self
                .shadows
                .iter()
                .filter(|s| scoped_ref(*s, &s.spec.key_manager_ref.name) == me)
                .collect();
            if km.spec.replicas == 1 && shadows.is_empty() {
                findings.push(Finding::warning(
                    Some(object_ref("KeyManager", km)),
                    "spec.replicas",
                    "a single replica and no Shadow: if it is lost, every key it created is lost with it",
                ));
            }
            for risk in crate::placement::placement_risks(km, &shadows) {
                let Some(shadow) = shadows.iter().find(|s| s.name_any() == risk.shadow) else {
                    continue;
                };
                findings.push(Finding::warning(
                    Some(object_ref("Shadow", *shadow)),
                    risk.field,
                    risk.message,
                ));
            }
        }
    }
}

impl Estate {
    /// Backups must be kept apart from the KeyManager, and readable without it: a KEK
    /// escrowed to nobody dies with the cluster, and a backup Secret beside the keystore
    /// goes with its namespace.
    fn check_backups(&self, findings: &mut Vec<Finding>) {
        for km in &self.key_managers {
            let backup = &km.spec.backup;
            if backup.recovery_recipients.is_empty() {
                findings.push(Finding::warning(
                    Some(object_ref("KeyManager", km)),
                    "spec.backup.recoveryRecipients",
                    "no recovery recipient: the KEK exists only in the cluster, so losing the cluster would lose every key; add the public key of a recovery key kept off the cluster (age-keygen)",
                ));
            }
            let own = km.metadata.namespace.as_deref();
            for (i, target) in backup.targets.iter().enumerate() {
                if let Some(secret) = &target.secret
                    && own == Some(secret.namespace.as_str())
                {
                    findings.push(Finding::error(
                        Some(object_ref("KeyManager", km)),
                        format!("spec.backup.targets[{i}].secret.namespace"),
                        format!(
                            "backup target {:?} writes to the KeyManager's own namespace {:?}: a backup beside its keystore is lost with it; name another namespace",
                            target.name, secret.namespace
                        ),
                    ));
                }
            }
        }
    }
}

fn in_namespace(ns: Option<&String>) -> String {
    ns.map(|ns| format!(" in namespace {ns:?}"))
        .unwrap_or_default()
}

fn object_ref<K: kube::Resource>(kind: &str, o: &K) -> ObjectRef {
    ObjectRef {
        kind: kind.to_owned(),
        namespace: o.meta().namespace.clone(),
        name: o.meta().name.clone().unwrap_or_default(),
    }
}

fn scoped_ref<K: kube::Resource>(o: &K, name: &str) -> Scoped {
    (o.meta().namespace.clone(), name.to_owned())
}
