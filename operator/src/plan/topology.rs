//! The part of the estate's topology a change touches: the KeyManagers involved with their
//! replicas' zones, their Shadows by zone, the DriveTables feeding them, and drive moves —
//! each node and edge marked added, removed, changed or unchanged. The Markdown output
//! draws it as a Mermaid diagram; JSON carries it as is.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use shadowkeep_api::crd::{DriveTable, KeyManager, Shadow};
use shadowkeep_api::estate::Estate;
use shadowkeep_api::finding::ObjectRef;

/// How a node or edge differs between the revisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Mark {
    /// The same in both.
    Unchanged,
    /// Only in the head.
    Added,
    /// Only in the base.
    Removed,
    /// In both, different.
    Changed,
}

/// What a node stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum NodeKind {
    /// A KeyManager and its replicas.
    KeyManager,
    /// A Shadow.
    Shadow,
    /// A DriveTable.
    DriveTable,
    /// DriveTables of a KeyManager that did not change, counted.
    OtherTables,
}

/// One node of the diagram.
#[derive(Clone, Debug, Serialize)]
pub struct Node {
    /// A short identifier, unique in the diagram.
    pub id: String,
    /// What it stands for.
    pub kind: NodeKind,
    /// What it shows, as the head has it (the base, when removed).
    pub label: String,
    /// For a Shadow: its zone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// How it differs.
    pub mark: Mark,
}

/// One edge: a table or Shadow to its KeyManager, or drives moving between KeyManagers.
#[derive(Clone, Debug, Serialize)]
pub struct Edge {
    /// Source node id.
    pub from: String,
    /// Target node id.
    pub to: String,
    /// What it says.
    pub label: String,
    /// How it differs.
    pub mark: Mark,
}

/// The affected part of the estate.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Topology {
    /// KeyManagers first, then Shadows, then tables.
    pub nodes: Vec<Node>,
    /// In the order drawn.
    pub edges: Vec<Edge>,
}

type Key = (Option<String>, String);

fn key<K: kube::Resource>(o: &K) -> Key {
    (
        o.meta().namespace.clone(),
        o.meta().name.clone().unwrap_or_default(),
    )
}

fn km_of<K: kube::Resource>(o: &K, name: &str) -> Key {
    (o.meta().namespace.clone(), name.to_owned())
}

fn shown(k: &Key) -> String {
    match &k.0 {
        Some(ns) => format!("{ns}/{}", k.1),
        None => k.1.clone(),
    }
}

fn mark<T: PartialEq>(before: Option<T>, after: Option<T>) -> Mark {
    match (before, after) {
        (Some(b), Some(a)) if b == a => Mark::Unchanged,
        (Some(_), Some(_)) => Mark::Changed,
        (None, _) => Mark::Added,
        (Some(_), None) => Mark::Removed,
    }
}

fn km_label(km: &KeyManager) -> String {
    let zones = &km.spec.placement.zones;
    let place = if zones.is_empty() {
        "any zone".to_owned()
    } else {
        zones.join(", ")
    };
    format!(
        "KeyManager {}: {} replicas in {place}",
        shown(&key(km)),
        km.spec.replicas
    )
}

fn km_shape(km: &KeyManager) -> (i32, &Vec<String>) {
    (km.spec.replicas, &km.spec.placement.zones)
}

fn shadow_shape(s: &Shadow) -> (&str, &str, String) {
    (
        s.spec.key_manager_ref.name.as_str(),
        s.spec.placement.zone.as_str(),
        format!("{:?}", s.spec.state),
    )
}

/// Puts the base's version of `k` in the head, if the base has one.
fn keep<T: Clone>(old: &BTreeMap<Key, T>, new: &mut BTreeMap<Key, T>, k: Key) {
    if let Some(o) = old.get(&k) {
        new.entry(k).or_insert_with(|| o.clone());
    }
}

/// Both revisions' KeyManagers, Shadows and DriveTables by namespace and name.
struct Sides {
    km_old: BTreeMap<Key, KeyManager>,
    km_new: BTreeMap<Key, KeyManager>,
    sh_old: BTreeMap<Key, Shadow>,
    sh_new: BTreeMap<Key, Shadow>,
    dt_old: BTreeMap<Key, DriveTable>,
    dt_new: BTreeMap<Key, DriveTable>,
}

/// What the diagram shows: the KeyManagers involved, the tables that changed, and drives
/// moving between KeyManagers (from, to) with how many.
#[derive(Default)]
struct Affected {
    key_managers: BTreeSet<Key>,
    tables: BTreeSet<Key>,
    moves: BTreeMap<(Key, Key), usize>,
}

fn table_ref(t: &DriveTable) -> Key {
    km_of(t, &t.spec.key_manager_ref.name)
}

fn shadow_ref(s: &Shadow) -> Key {
    km_of(s, &s.spec.key_manager_ref.name)
}

impl Sides {
    fn new(base: &Estate, head: &Estate, invalid: &BTreeSet<ObjectRef>) -> Self {
        let kms = |e: &Estate| -> BTreeMap<Key, KeyManager> {
            e.key_managers()
                .iter()
                .map(|k| (key(k), k.clone()))
                .collect()
        };
        let shadows = |e: &Estate| -> BTreeMap<Key, Shadow> {
            e.shadows().iter().map(|s| (key(s), s.clone())).collect()
        };
        let tables = |e: &Estate| -> BTreeMap<Key, DriveTable> {
            e.drive_tables()
                .iter()
                .map(|t| (key(t), t.clone()))
                .collect()
        };
        let mut sides = Self {
            km_old: kms(base),
            km_new: kms(head),
            sh_old: shadows(base),
            sh_new: shadows(head),
            dt_old: tables(base),
            dt_new: tables(head),
        };
        for o in invalid {
            let k = (o.namespace.clone(), o.name.clone());
            match o.kind.as_str() {
                "KeyManager" => keep(&sides.km_old, &mut sides.km_new, k),
                "Shadow" => keep(&sides.sh_old, &mut sides.sh_new, k),
                "DriveTable" => keep(&sides.dt_old, &mut sides.dt_new, k),
                _ => {}
            }
        }
        sides
    }

    fn affected(&self) -> Affected {
        let mut affected = Affected::default();
        for k in self.km_old.keys().chain(self.km_new.keys()) {
            let shape = mark(
                self.km_old.get(k).map(km_shape),
                self.km_new.get(k).map(km_shape),
            );
            if shape != Mark::Unchanged {
                affected.key_managers.insert(k.clone());
            }
        }
        for k in self.sh_old.keys().chain(self.sh_new.keys()) {
            let (before, after) = (self.sh_old.get(k), self.sh_new.get(k));
            if mark(before.map(shadow_shape), after.map(shadow_shape)) != Mark::Unchanged {
                for shadow in before.into_iter().chain(after) {
                    affected.key_managers.insert(shadow_ref(shadow));
                }
            }
        }
        for k in self.dt_old.keys().chain(self.dt_new.keys()) {
            let (before, after) = (self.dt_old.get(k), self.dt_new.get(k));
            if mark(before.map(table_ref), after.map(table_ref)) != Mark::Unchanged {
                affected.tables.insert(k.clone());
                for table in before.into_iter().chain(after) {
                    affected.key_managers.insert(table_ref(table));
                }
            }
        }
        let owner = |tables: &BTreeMap<Key, DriveTable>| -> BTreeMap<String, (Key, Key)> {
            let mut owner = BTreeMap::new();
            for table in tables.values() {
                for drive in &table.spec.drives {
                    owner
                        .entry(drive.serial.clone())
                        .or_insert_with(|| (table_ref(table), key(table)));
                }
            }
            owner
        };
        let (before, after) = (owner(&self.dt_old), owner(&self.dt_new));
        for (serial, (to, table)) in &after {
            if let Some((from, _)) = before.get(serial)
                && from != to
            {
                *affected
                    .moves
                    .entry((from.clone(), to.clone()))
                    .or_default() += 1;
                affected.key_managers.insert(from.clone());
                affected.key_managers.insert(to.clone());
                affected.tables.insert(table.clone());
            }
        }
        affected
    }
}

/// The affected part of the topology, or `None` when the topology does not change. An
/// object in `invalid` did not decode in the head and is drawn as the base has it.
pub fn topology(base: &Estate, head: &Estate, invalid: &BTreeSet<ObjectRef>) -> Option<Topology> {
    let sides = Sides::new(base, head, invalid);
    let affected = sides.affected();
    if affected.key_managers.is_empty() {
        return None;
    }
    let mut topology = Topology::default();
    let ids = draw_key_managers(&sides, &affected, &mut topology);
    draw_shadows(&sides, &affected, &ids, &mut topology);
    draw_tables(&sides, &affected, &ids, &mut topology);
    for ((from, to), count) in &affected.moves {
        let (Some(from), Some(to)) = (ids.get(from), ids.get(to)) else {
            continue;
        };
        let drives = if *count == 1 { "drive" } else { "drives" };
        topology.edges.push(Edge {
            from: from.clone(),
            to: to.clone(),
            label: format!("{count} {drives} move"),
            mark: Mark::Changed,
        });
    }
    Some(topology)
}

fn draw_key_managers(
    sides: &Sides,
    affected: &Affected,
    topology: &mut Topology,
) -> BTreeMap<Key, String> {
    let mut ids = BTreeMap::new();
    for (i, k) in affected.key_managers.iter().enumerate() {
        let (before, after) = (sides.km_old.get(k), sides.km_new.get(k));
        let id = format!("km{i}");
        ids.insert(k.clone(), id.clone());
        let label = after.or(before).map_or_else(
            || format!("KeyManager {} (not defined)", shown(k)),
            km_label,
        );
        topology.nodes.push(Node {
            id,
            kind: NodeKind::KeyManager,
            label,
            zone: None,
            mark: mark(before.map(km_shape), after.map(km_shape)),
        });
    }
    ids
}

fn draw_shadows(
    sides: &Sides,
    affected: &Affected,
    ids: &BTreeMap<Key, String>,
    topology: &mut Topology,
) {
    let mut keys: BTreeSet<&Key> = sides.sh_old.keys().chain(sides.sh_new.keys()).collect();
    keys.retain(|k| {
        sides
            .sh_new
            .get(*k)
            .or_else(|| sides.sh_old.get(*k))
            .is_some_and(|s| affected.key_managers.contains(&shadow_ref(s)))
    });
    for (i, k) in keys.into_iter().enumerate() {
        let (before, after) = (sides.sh_old.get(k), sides.sh_new.get(k));
        let Some(shadow) = after.or(before) else {
            continue;
        };
        let id = format!("sh{i}");
        let shape = mark(before.map(shadow_shape), after.map(shadow_shape));
        topology.nodes.push(Node {
            id: id.clone(),
            kind: NodeKind::Shadow,
            label: format!("Shadow {} ({:?})", shown(k), shadow.spec.state),
            zone: Some(shadow.spec.placement.zone.clone()),
            mark: shape,
        });
        if let Some(km) = ids.get(&shadow_ref(shadow)) {
            topology.edges.push(Edge {
                from: id,
                to: km.clone(),
                label: "mirrors".to_owned(),
                mark: match shape {
                    Mark::Added | Mark::Removed => shape,
                    _ => Mark::Unchanged,
                },
            });
        }
    }
}

fn draw_tables(
    sides: &Sides,
    affected: &Affected,
    ids: &BTreeMap<Key, String>,
    topology: &mut Topology,
) {
    let mut unchanged: BTreeMap<Key, usize> = BTreeMap::new();
    let keys: BTreeSet<&Key> = sides.dt_old.keys().chain(sides.dt_new.keys()).collect();
    for k in keys {
        let (before, after) = (sides.dt_old.get(k), sides.dt_new.get(k));
        if !affected.tables.contains(k) {
            if let Some(table) = after
                && affected.key_managers.contains(&table_ref(table))
            {
                *unchanged.entry(table_ref(table)).or_default() += 1;
            }
            continue;
        }
        let Some(table) = after.or(before) else {
            continue;
        };
        let id = format!("dt{}", topology.nodes.len());
        let drives = table.spec.drives.len();
        topology.nodes.push(Node {
            id: id.clone(),
            kind: NodeKind::DriveTable,
            label: format!(
                "DriveTable {}: {drives} {}",
                shown(k),
                if drives == 1 { "drive" } else { "drives" }
            ),
            zone: None,
            mark: mark(before.map(table_ref), after.map(table_ref)),
        });
        let (old_km, new_km) = (before.map(table_ref), after.map(table_ref));
        let edges = if old_km == new_km {
            vec![(new_km, Mark::Unchanged)]
        } else {
            vec![(old_km, Mark::Removed), (new_km, Mark::Added)]
        };
        for (km, edge_mark) in edges {
            if let Some(target) = km.and_then(|km| ids.get(&km)) {
                topology.edges.push(Edge {
                    from: id.clone(),
                    to: target.clone(),
                    label: "serves".to_owned(),
                    mark: edge_mark,
                });
            }
        }
    }
    for (i, (km, count)) in unchanged.into_iter().enumerate() {
        let Some(target) = ids.get(&km) else {
            continue;
        };
        let id = format!("ot{i}");
        topology.nodes.push(Node {
            id: id.clone(),
            kind: NodeKind::OtherTables,
            label: if count == 1 {
                "1 unchanged DriveTable".to_owned()
            } else {
                format!("{count} unchanged DriveTables")
            },
            zone: None,
            mark: Mark::Unchanged,
        });
        topology.edges.push(Edge {
            from: id,
            to: target.clone(),
            label: "serve".to_owned(),
            mark: Mark::Unchanged,
        });
    }
}
