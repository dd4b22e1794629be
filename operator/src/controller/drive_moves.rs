//! Drives and the KeyManagers that hold their keys.
//!
//! Each KeyManager keeps a history of the drives it has served, in a ConfigMap that stays
//! when the KeyManager is deleted ([`HISTORY_LABEL`]). A drive in this KeyManager's tables
//! is held back, with `KeyHistoryAtRisk`, when
//! - a DriveTable of another KeyManager in the namespace lists it too, and this one does
//!   not serve it yet (the one that does keeps it), or
//! - another KeyManager, in any namespace the operator watches, served it and did not
//!   hand it on: it moved, and its keys are there.
//!
//! A move is resolved by putting the drive back, or by accepting it with the annotation
//! [`ACCEPT_DRIVE_MOVES`] on the DriveTable that now lists it: the operator then carries
//! the drive's keys (its KeyGroup's keys, or all keys when it had no group) from the old
//! KeyManager's keystore into this one's, re-sealed under this KEK, marks the drive as
//! handed on in the old history, and serves it here.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use shadowkeep_api::crd::{DriveTable, KeyGroup, KeyManager};
use shadowkeep_api::drive_history::{DriveHistory, HISTORY_FILE, carry_keys};
use shadowkeep_api::estate::Estate;
use shadowkeep_api::keystore::{Kek, Keystore};
use shadowkeep_api::manifest::Resource as Object;

use super::conditions::{condition, merge, reasons, types, update_status};
use super::{Context, Error};
use crate::build::{self, Inputs, Material, Names};

/// Annotation on a DriveTable listing the serials (comma-separated) whose move from
/// another KeyManager is accepted: their keys are carried here.
pub const ACCEPT_DRIVE_MOVES: &str = "shadowkeep.io/accept-drive-moves";

/// Annotation on a KeyManager (or on a deleted one's drive history) listing the serials
/// (comma-separated) whose keys may be carried to a KeyManager in another namespace.
pub const RELEASE_DRIVES: &str = "shadowkeep.io/release-drives";

/// Label on drive-history ConfigMaps, naming their KeyManager.
pub const HISTORY_LABEL: &str = "shadowkeep.io/drive-history-of";

/// Condition reason and Event reason: a drive's keys were carried from another KeyManager.
pub const KEY_HISTORY_CARRIED: &str = "KeyHistoryCarried";

/// A KeyManager as histories name it.
pub fn key_manager_ref(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The name of a KeyManager's drive-history ConfigMap.
pub fn history_name(key_manager: &str) -> String {
    format!("{key_manager}-drive-history")
}

/// Why a drive of this KeyManager is at risk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// A DriveTable of another KeyManager in this namespace lists it too.
    Table {
        /// That table.
        other_table: String,
    },
    /// Another KeyManager served it and holds its keys.
    History {
        /// Whether this drive's table accepts the move (its keys are to be carried).
        accepted: bool,
        /// Why carrying the keys failed, when it did.
        carry_error: Option<String>,
    },
}

/// A drive of this KeyManager that another KeyManager claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveRisk {
    /// The drive's serial.
    pub serial: String,
    /// This KeyManager's table listing it.
    pub table: String,
    /// The other KeyManager: its name for a table claim, `namespace/name` for a history.
    pub other_key_manager: String,
    /// What the claim is.
    pub claim: Claim,
    /// Whether this KeyManager keeps serving the drive (it is where its keys are).
    pub kept: bool,
}

/// Which KeyManagers serve each drive, across every history the operator watches.
///
/// Kept up to date from the watch of history ConfigMaps, so that a reconcile looks up its
/// own drives instead of reading every other history: with 1,000 KeyManagers of 100
/// drives, parsing them all on each reconcile would cost more than the reconcile.
#[derive(Debug, Default)]
pub struct DriveIndex {
    /// KeyManagers (`namespace/name`), by their number in `serving`.
    key_managers: Vec<String>,
    numbers: HashMap<String, u32>,
    /// Drive serial → the KeyManager that serves it. 100,000 drives are a few MiB.
    serving: HashMap<Box<str>, u32>,
    /// Drive serial → further KeyManagers that serve it, for drives already split.
    also: HashMap<Box<str>, Vec<u32>>,
}

impl DriveIndex {
    fn number(&mut self, key_manager: &str) -> u32 {
        if let Some(n) = self.numbers.get(key_manager) {
            return *n;
        }
        let n = u32::try_from(self.key_managers.len()).unwrap_or(u32::MAX);
        self.key_managers.push(key_manager.to_owned());
        self.numbers.insert(key_manager.to_owned(), n);
        n
    }

    /// The KeyManager and history a history ConfigMap holds.
    fn read(cm: &ConfigMap) -> Option<(String, DriveHistory)> {
        let owner = cm.labels().get(HISTORY_LABEL)?;
        let reference = key_manager_ref(&cm.namespace()?, owner);
        let text = cm.data.as_ref()?.get(HISTORY_FILE)?;
        match DriveHistory::from_json(text) {
            Ok(history) => Some((reference, history)),
            Err(e) => {
                tracing::warn!(history = %reference, error = %e, "unreadable drive history; ignored");
                None
            }
        }
    }

    /// Takes in a history ConfigMap as it is now.
    pub fn apply(&mut self, cm: &ConfigMap) {
        let Some((reference, history)) = Self::read(cm) else {
            return;
        };
        let n = self.number(&reference);
        for (serial, record) in &history.drives {
            if record.moved_to.is_none() {
                self.add(serial, n);
            } else {
                self.remove(serial, n);
            }
        }
    }

    fn add(&mut self, serial: &str, n: u32) {
        match self.serving.get(serial) {
            None => {
                self.serving.insert(serial.into(), n);
            }
            Some(first) if *first == n => {}
            Some(_) => {
                let also = self.also.entry(serial.into()).or_default();
                if !also.contains(&n) {
                    also.push(n);
                }
            }
        }
    }

    fn remove(&mut self, serial: &str, n: u32) {
        if let Some(also) = self.also.get_mut(serial) {
            also.retain(|k| *k != n);
            if self.serving.get(serial) == Some(&n)
                && let Some(next) = also.pop()
            {
                self.serving.insert(serial.into(), next);
                if also.is_empty() {
                    self.also.remove(serial);
                }
                return;
            }
            if also.is_empty() {
                self.also.remove(serial);
            }
        }
        if self.serving.get(serial) == Some(&n) {
            self.serving.remove(serial);
        }
    }

    /// Forgets a history ConfigMap that was deleted.
    pub fn delete(&mut self, cm: &ConfigMap) {
        let Some((reference, history)) = Self::read(cm) else {
            return;
        };
        let Some(n) = self.numbers.get(&reference).copied() else {
            return;
        };
        for serial in history.drives.keys() {
            self.remove(serial, n);
        }
    }

    /// The KeyManagers other than `me` that serve `serial`.
    pub fn others_serving(&self, serial: &str, me: &str) -> Vec<String> {
        self.serving
            .get(serial)
            .into_iter()
            .chain(self.also.get(serial).into_iter().flatten())
            .filter_map(|n| self.key_managers.get(usize::try_from(*n).ok()?))
            .filter(|k| *k != me)
            .cloned()
            .collect()
    }
}

/// The [`DriveIndex`] shared by reconciles, and whether its first list has arrived.
#[derive(Debug, Default)]
pub struct SharedDriveIndex {
    index: std::sync::RwLock<DriveIndex>,
    ready: tokio::sync::Notify,
    is_ready: std::sync::atomic::AtomicBool,
}

impl SharedDriveIndex {
    /// An index of the given history ConfigMaps, ready at once.
    pub fn of(cms: &[ConfigMap]) -> Self {
        let mut index = DriveIndex::default();
        for cm in cms {
            index.apply(cm);
        }
        let shared = Self {
            index: std::sync::RwLock::new(index),
            ..Self::default()
        };
        shared
            .is_ready
            .store(true, std::sync::atomic::Ordering::Release);
        shared
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, DriveIndex> {
        self.index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The KeyManagers other than `me` that serve `serial`.
    pub fn others_serving(&self, serial: &str, me: &str) -> Vec<String> {
        self.index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .others_serving(serial, me)
    }

    /// Follows a watch of history ConfigMaps until it ends. A relist builds a new index
    /// and swaps it in whole, so a history deleted while the watch was down is forgotten.
    pub async fn follow(
        &self,
        events: impl futures::Stream<
            Item = Result<kube::runtime::watcher::Event<ConfigMap>, kube::runtime::watcher::Error>,
        >,
    ) {
        use futures::StreamExt as _;
        use kube::runtime::watcher::Event;

        let mut pending: Option<DriveIndex> = None;
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Init) => pending = Some(DriveIndex::default()),
                Ok(Event::InitApply(cm)) => {
                    if let Some(p) = pending.as_mut() {
                        p.apply(&cm);
                    }
                }
                Ok(Event::InitDone) => {
                    if let Some(p) = pending.take() {
                        *self.write() = p;
                    }
                    self.is_ready
                        .store(true, std::sync::atomic::Ordering::Release);
                    self.ready.notify_waiters();
                }
                Ok(Event::Apply(cm)) => self.write().apply(&cm),
                Ok(Event::Delete(cm)) => self.write().delete(&cm),
                Err(e) => tracing::warn!(error = %e, "drive history watch failed; retrying"),
            }
        }
    }

    /// Waits for the first complete list.
    pub async fn wait_until_ready(&self) {
        loop {
            let notified = self.ready.notified();
            if self.is_ready.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// Whether annotation `key` lists `serial` (comma- or space-separated).
fn lists(annotations: &BTreeMap<String, String>, key: &str, serial: &str) -> bool {
    annotations
        .get(key)
        .is_some_and(|v| v.split([',', ' ']).any(|s| s.trim() == serial))
}

fn accepted(table: &DriveTable, serial: &str) -> bool {
    lists(table.annotations(), ACCEPT_DRIVE_MOVES, serial)
}

/// The drives of `name`'s tables that another KeyManager claims, by table or by history.
/// `others_serving` names the other KeyManagers that serve a serial.
pub fn conflicts(
    name: &str,
    tables: &[DriveTable],
    history: &DriveHistory,
    others_serving: impl Fn(&str) -> Vec<String>,
) -> Vec<DriveRisk> {
    let mut risks = Vec::new();
    for mine in tables
        .iter()
        .filter(|t| t.spec.key_manager_ref.name == name)
    {
        for drive in &mine.spec.drives {
            let serves = history.serves(&drive.serial);
            for other in tables
                .iter()
                .filter(|t| t.spec.key_manager_ref.name != name)
            {
                if other.spec.drives.iter().any(|d| d.serial == drive.serial) {
                    risks.push(DriveRisk {
                        serial: drive.serial.clone(),
                        table: mine.name_any(),
                        other_key_manager: other.spec.key_manager_ref.name.clone(),
                        claim: Claim::Table {
                            other_table: other.name_any(),
                        },
                        kept: serves,
                    });
                }
            }
            // Served here and by another: two KeyManagers took it at the same moment (from
            // different namespaces, where no table check sees both), and its keys are
            // split. It stays here, flagged, until the other's keys are carried.
            for other in others_serving(&drive.serial) {
                risks.push(DriveRisk {
                    serial: drive.serial.clone(),
                    table: mine.name_any(),
                    other_key_manager: other,
                    claim: Claim::History {
                        accepted: accepted(mine, &drive.serial),
                        carry_error: None,
                    },
                    kept: serves,
                });
            }
        }
    }
    risks
}

/// A copy of `table` without the drives held back from this KeyManager.
pub fn without_blocked(table: &DriveTable, name: &str, risks: &[DriveRisk]) -> DriveTable {
    let mut table = table.clone();
    if table.spec.key_manager_ref.name == name {
        table
            .spec
            .drives
            .retain(|d| !risks.iter().any(|r| !r.kept && r.serial == d.serial));
    }
    table
}

/// The KeyGroup a drive's keys come from here: its own, or the KeyManager's default.
fn key_group_of(name: &str, drive_group: Option<&String>, groups: &[KeyGroup]) -> Option<String> {
    drive_group.cloned().or_else(|| {
        groups
            .iter()
            .find(|g| g.spec.key_manager_ref.name == name && g.spec.default_group)
            .map(ResourceExt::name_any)
    })
}

/// This KeyManager's history and the ConfigMap it was read from (`None`: none yet).
pub async fn read_history(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<(DriveHistory, Option<ConfigMap>), Error> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(&history_name(name))
        .await
        .map_err(Error::kube("read the drive history"))?;
    let text = cm
        .as_ref()
        .and_then(|c| c.data.as_ref())
        .and_then(|d| d.get(HISTORY_FILE))
        .map_or("", String::as_str);
    let history = DriveHistory::from_json(text)
        .map_err(|e| Error::Build(format!("ConfigMap {}: {e}", history_name(name))))?;
    Ok((history, cm))
}

/// Records every drive this KeyManager serves now, and writes the history when it
/// changed: created with the KeyManager's labels but no owner, so that it outlives it;
/// replaced with its resourceVersion as a precondition.
pub async fn record_served(
    client: &kube::Client,
    inputs: &Inputs<'_>,
    groups: &[KeyGroup],
    mut history: DriveHistory,
    stored: Option<ConfigMap>,
    carried: bool,
) -> Result<(), Error> {
    let name = inputs.name();
    let now = Timestamp::now();
    let mut changed = carried;
    for table in &inputs.drive_tables {
        for drive in &table.spec.drives {
            let group = key_group_of(&name, drive.key_group.as_ref(), groups);
            changed |= history.record(&drive.serial, group.as_deref(), now);
        }
    }
    if !changed {
        return Ok(());
    }
    let data = BTreeMap::from([(HISTORY_FILE.to_owned(), history.to_json())]);
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &inputs.namespace());
    let history_name = history_name(&name);
    if let Some(mut cm) = stored {
        cm.data = Some(data);
        api.replace(&history_name, &PostParams::default(), &cm)
            .await
            .map_err(Error::kube(format!("update ConfigMap {history_name}")))?;
    } else {
        {
            let mut metadata = inputs.meta(&history_name, false);
            metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert(HISTORY_LABEL.to_owned(), name.clone());
            metadata.annotations =
                Some([(build::KEEP_ANNOTATION.to_owned(), "true".to_owned())].into());
            let cm = ConfigMap {
                metadata,
                data: Some(data),
                ..ConfigMap::default()
            };
            api.create(&PostParams::default(), &cm)
                .await
                .map_err(Error::kube(format!("create ConfigMap {history_name}")))?;
        }
    }
    Ok(())
}

/// Carries the keys of every accepted move into this KeyManager's keystore, then marks
/// the drive as handed on in the old KeyManager's history and as carried in `history`.
/// A move whose keys cannot be carried stays held back, with the reason in its risk.
/// Returns whether `history` changed.
#[allow(clippy::too_many_arguments)] // one step of the reconcile, given what it has read
pub async fn carry_accepted(
    client: &kube::Client,
    ctx: &Context,
    inputs: &Inputs<'_>,
    material: &mut Material,
    tables: &[DriveTable],
    history: &mut DriveHistory,
    risks: &mut Vec<DriveRisk>,
) -> Result<bool, Error> {
    let me = key_manager_ref(&inputs.namespace(), &inputs.name());
    let mut changed = false;
    let mut done = Vec::new();
    for risk in risks.iter_mut() {
        let Claim::History {
            accepted: true,
            carry_error,
        } = &mut risk.claim
        else {
            continue;
        };
        if let Err(e) = released(
            client,
            &risk.other_key_manager,
            &inputs.namespace(),
            &risk.serial,
        )
        .await
        {
            *carry_error = Some(e.to_string());
            continue;
        }
        let group = match read_other_history(client, &risk.other_key_manager).await {
            Ok(h) => h.drives.get(&risk.serial).and_then(|r| r.key_group.clone()),
            Err(e) => {
                *carry_error = Some(e.to_string());
                continue;
            }
        };
        match carry(
            client,
            ctx,
            inputs,
            material,
            &risk.other_key_manager,
            group.as_deref(),
        )
        .await
        {
            Ok(count) => {
                mark_moved(client, &risk.other_key_manager, &risk.serial, &me).await?;
                changed |= history.carried(
                    &risk.serial,
                    &risk.other_key_manager,
                    group.as_deref(),
                    Timestamp::now(),
                );
                let note = format!(
                    "drive {:?}: {count} key(s){} carried from KeyManager {:?}; it is served here now",
                    risk.serial,
                    group
                        .as_deref()
                        .map(|g| format!(" of KeyGroup {g:?}"))
                        .unwrap_or_default(),
                    risk.other_key_manager
                );
                tracing::info!(key_manager = %me, %note, "drive moved");
                if let Some(table) = tables.iter().find(|t| t.name_any() == risk.table) {
                    publish(
                        ctx,
                        table,
                        kube::runtime::events::EventType::Normal,
                        KEY_HISTORY_CARRIED,
                        "CarryKeys",
                        note,
                    )
                    .await;
                }
                done.push(risk.serial.clone());
            }
            Err(e) => *carry_error = Some(e.to_string()),
        }
    }
    risks.retain(|r| !done.contains(&r.serial));
    Ok(changed)
}

/// Whether KeyManager `from` lets `serial`'s keys go to namespace `to_ns`. Within one
/// namespace, whoever may edit its DriveTables answers for both KeyManagers. Across
/// namespaces the owners of the old one must agree, or anyone who can edit a DriveTable
/// could copy another namespace's keys into a keystore they can read: the old KeyManager
/// (or, once it is deleted, its drive history) must carry [`RELEASE_DRIVES`] naming the
/// drive.
async fn released(
    client: &kube::Client,
    from: &str,
    to_ns: &str,
    serial: &str,
) -> Result<(), Error> {
    let (ns, name) = split_ref(from)?;
    if ns == to_ns {
        return Ok(());
    }
    let km = Api::<KeyManager>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(Error::kube(format!("read KeyManager {from}")))?;
    let ok = match km {
        Some(km) => lists(km.annotations(), RELEASE_DRIVES, serial),
        None => Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get_opt(&history_name(name))
            .await
            .map_err(Error::kube(format!(
                "read ConfigMap {ns}/{}",
                history_name(name)
            )))?
            .is_some_and(|cm| lists(cm.annotations(), RELEASE_DRIVES, serial)),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::Build(format!(
            "KeyManager {from} is in another namespace, whose owners must release the drive first: annotate KeyManager {name} in namespace {ns} (or, if it was deleted, ConfigMap {}) with {RELEASE_DRIVES}: {serial:?}",
            history_name(name)
        )))
    }
}

/// The history of KeyManager `reference` (`namespace/name`), read now.
async fn read_other_history(client: &kube::Client, reference: &str) -> Result<DriveHistory, Error> {
    let (ns, name) = split_ref(reference)?;
    Ok(read_history(client, ns, name).await?.0)
}

fn split_ref(reference: &str) -> Result<(&str, &str), Error> {
    reference
        .split_once('/')
        .ok_or_else(|| Error::Build(format!("{reference:?} does not name a KeyManager")))
}

/// Copies the keys of `group` (every key when `None`) from KeyManager `from`'s keystore
/// into this one's, writing a backup first. Returns how many keys were added.
async fn carry(
    client: &kube::Client,
    ctx: &Context,
    inputs: &Inputs<'_>,
    material: &mut Material,
    from: &str,
    group: Option<&str>,
) -> Result<usize, Error> {
    let (ns, name) = split_ref(from)?;
    let names = Names::of(name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let read = |secret: String, key: &'static str| {
        let secrets = secrets.clone();
        async move {
            let found = secrets
                .get_opt(&secret)
                .await
                .map_err(Error::kube(format!("read Secret {ns}/{secret}")))?
                .ok_or_else(|| Error::Build(format!("Secret {ns}/{secret} not found")))?;
            Ok::<_, Error>(super::key_manager::bytes(&found, key))
        }
    };
    let kek_bytes = read(names.kek.clone(), "kek").await?;
    let from_kek = Kek::from_bytes(&kek_bytes)
        .map_err(|e| Error::Build(format!("Secret {ns}/{}: {e}", names.kek)))?;
    let mut from_material = Material {
        kek: kek_bytes,
        keystore: read(names.keystore.clone(), "keystore").await?,
        ..Material::default()
    };
    sync_old(client, ctx, ns, name, &mut from_material).await?;
    let from_keystore = Keystore::from_bytes(&from_material.keystore)
        .map_err(|e| Error::Build(format!("Secret {ns}/{}: {e}", names.keystore)))?;
    let kek = Kek::from_bytes(&material.kek).map_err(|e| Error::Build(e.to_string()))?;
    let mut keystore = super::key_manager::open_keystore(material)?;
    let count = carry_keys(&from_keystore, &from_kek, &mut keystore, &kek, group)
        .map_err(|e| Error::Build(e.to_string()))?;
    if count > 0 {
        super::key_manager::replace_keystore(client, inputs, material, &keystore).await?;
    }
    Ok(count)
}

/// When the old KeyManager still runs, its replicas may hold keys its canonical keystore
/// does not have yet (a drive's own keys, created since the last sync): they are pulled
/// first, and the carry waits until every replica has answered. A deleted KeyManager's
/// replicas are gone; its canonical keystore is all there is.
async fn sync_old(
    client: &kube::Client,
    ctx: &Context,
    ns: &str,
    name: &str,
    material: &mut Material,
) -> Result<(), Error> {
    let Some(old) = Api::<KeyManager>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(Error::kube(format!("read KeyManager {ns}/{name}")))?
    else {
        return Ok(());
    };
    let mut estate = Estate::new();
    estate.add(Object::KeyManager(old));
    let Some(inputs) = Inputs::from_estate(&estate).into_iter().next() else {
        return Ok(());
    };
    let now = Time(Timestamp::now());
    let ready = super::keystore_sync::ready_replicas(client, &inputs).await?;
    let synced =
        super::keystore_sync::sync(client, ctx, &inputs, material, ready, None, &now).await?;
    if synced.all_answered {
        Ok(())
    } else {
        Err(Error::Build(format!(
            "the replicas of KeyManager {ns}/{name} may hold keys of the drive that its keystore does not have yet: {}",
            synced.condition.message
        )))
    }
}

/// Marks `serial` as handed on to `to` in KeyManager `from`'s history, from a fresh read
/// with its resourceVersion as a precondition.
async fn mark_moved(
    client: &kube::Client,
    from: &str,
    serial: &str,
    to: &str,
) -> Result<(), Error> {
    let (ns, name) = split_ref(from)?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm_name = history_name(name);
    for attempt in 1..=5 {
        let (mut history, Some(mut cm)) = read_history(client, ns, name).await? else {
            return Err(Error::Build(format!("ConfigMap {ns}/{cm_name} not found")));
        };
        if !history.moved(serial, to) {
            return Ok(());
        }
        cm.data = Some([(HISTORY_FILE.to_owned(), history.to_json())].into());
        match api.replace(&cm_name, &PostParams::default(), &cm).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < 5 => {}
            Err(e) => return Err(Error::kube(format!("update ConfigMap {ns}/{cm_name}"))(e)),
        }
    }
    Ok(())
}

fn risk_message(risks: &[DriveRisk], name: &str) -> String {
    risks
        .iter()
        .map(|r| match &r.claim {
            Claim::Table { other_table } => format!(
                "drive {:?} is listed under KeyManager {name:?} (DriveTable {}) and KeyManager {:?} (DriveTable {other_table}); {}",
                r.serial,
                r.table,
                r.other_key_manager,
                if r.kept {
                    "it stays here, where its keys are"
                } else {
                    "it is not served here until resolved, so its key history is not split"
                }
            ),
            Claim::History { carry_error: Some(error), .. } => format!(
                "drive {:?} (DriveTable {}) was served by KeyManager {:?}, and the move is accepted, but its keys could not be carried: {error}; {}",
                r.serial,
                r.table,
                r.other_key_manager,
                if r.kept {
                    "it stays served here, its key history split, until they are"
                } else {
                    "it is not served here until they are"
                }
            ),
            Claim::History { .. } if r.kept => format!(
                "drive {:?} (DriveTable {}) is served here and by KeyManager {:?} too, each holding keys it made: its key history is split; take it out of {:?}'s tables and annotate DriveTable {} with {ACCEPT_DRIVE_MOVES}: {:?} to carry those keys here",
                r.serial, r.table, r.other_key_manager, r.other_key_manager, r.table, r.serial
            ),
            Claim::History { .. } => format!(
                "drive {:?} (DriveTable {}) was served by KeyManager {:?}, which holds its keys; it is not served here until they are carried: annotate DriveTable {} with {ACCEPT_DRIVE_MOVES}: {:?} to carry them, or put the drive back",
                r.serial, r.table, r.other_key_manager, r.table, r.serial
            ),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `KeyHistoryAtRisk`: True with `risk` as its message, or False.
fn at_risk(risk: Option<String>, generation: Option<i64>, now: &Time) -> Condition {
    match risk {
        None => condition(
            types::KEY_HISTORY_AT_RISK,
            false,
            reasons::AS_EXPECTED,
            "every drive has one KeyManager",
            generation,
            now,
        ),
        Some(message) => condition(
            types::KEY_HISTORY_AT_RISK,
            true,
            reasons::KEY_HISTORY_AT_RISK,
            message,
            generation,
            now,
        ),
    }
}

/// The KeyManager's `KeyHistoryAtRisk` condition.
pub fn risk_condition(risks: &[DriveRisk], generation: Option<i64>, now: &Time) -> Condition {
    at_risk(
        (!risks.is_empty())
            .then(|| format!("{} drive(s) claimed by another KeyManager", risks.len())),
        generation,
        now,
    )
}

async fn publish(
    ctx: &Context,
    table: &DriveTable,
    type_: kube::runtime::events::EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = kube::runtime::events::Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note.chars().take(1000).collect()),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &table.object_ref(&())).await {
        tracing::warn!(error = %e, table = %table.name_any(), "failed to publish an Event");
    }
}

/// Puts the risk on each affected DriveTable (a condition naming the drive and both
/// KeyManagers, and the drive count) and publishes a Warning Event for each new one.
pub async fn report_risks(
    client: &kube::Client,
    ctx: &Context,
    ns: &str,
    name: &str,
    tables: &[DriveTable],
    risks: &[DriveRisk],
    now: &Time,
) -> Result<(), Error> {
    let api: Api<DriveTable> = Api::namespaced(client.clone(), ns);
    for table in tables
        .iter()
        .filter(|t| t.spec.key_manager_ref.name == name)
    {
        let table_name = table.name_any();
        let mine: Vec<DriveRisk> = risks
            .iter()
            .filter(|r| r.table == table_name)
            .cloned()
            .collect();
        let c = at_risk(
            (!mine.is_empty()).then(|| risk_message(&mine, name)),
            table.meta().generation,
            now,
        );
        let served = table.spec.drives.len()
            - table
                .spec
                .drives
                .iter()
                .filter(|d| mine.iter().any(|r| !r.kept && r.serial == d.serial))
                .count();
        let before = update_status(&api, &table_name, |fresh: &DriveTable| {
            let previous = fresh
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default();
            json!({
                "observedGeneration": table.meta().generation,
                "conditions": merge(&previous, vec![c.clone()]),
                "drives": i32::try_from(served).unwrap_or(i32::MAX),
            })
        })
        .await
        .map_err(Error::kube(format!(
            "update DriveTable {table_name} status"
        )))?;
        let was_at_risk = before.and_then(|t| t.status).is_some_and(|s| {
            s.conditions.iter().any(|p| {
                p.type_ == types::KEY_HISTORY_AT_RISK
                    && p.status == "True"
                    && p.message == c.message
            })
        });
        if c.status == "True" && !was_at_risk {
            publish(
                ctx,
                table,
                kube::runtime::events::EventType::Warning,
                reasons::KEY_HISTORY_AT_RISK,
                "HoldBackDrive",
                c.message.clone(),
            )
            .await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher::Event;

    fn history_cm(ns: &str, km: &str, served: &[&str], moved: &[&str]) -> ConfigMap {
        let mut history = DriveHistory::new();
        for serial in served.iter().chain(moved) {
            history.record(serial, None, Timestamp::UNIX_EPOCH);
        }
        for serial in moved {
            history.moved(serial, "elsewhere/km");
        }
        serde_json::from_value(json!({
            "metadata": {"name": history_name(km), "namespace": ns,
                         "labels": {HISTORY_LABEL: km}},
            "data": {HISTORY_FILE: history.to_json()},
        }))
        .unwrap()
    }

    #[test]
    fn the_index_follows_histories_as_they_change_and_go() {
        let mut index = DriveIndex::default();
        index.apply(&history_cm("a", "x", &["D1", "D2"], &[]));
        index.apply(&history_cm("b", "y", &["D2"], &[]));
        assert_eq!(index.others_serving("D1", "b/y"), ["a/x"]);
        assert!(index.others_serving("D1", "a/x").is_empty(), "never itself");
        let mut d2 = index.others_serving("D2", "c/z");
        d2.sort();
        assert_eq!(d2, ["a/x", "b/y"], "a split drive names both");
        // x hands D1 on: it no longer serves it.
        index.apply(&history_cm("a", "x", &["D2"], &["D1"]));
        assert!(index.others_serving("D1", "b/y").is_empty());
        // y's history is deleted.
        index.delete(&history_cm("b", "y", &["D2"], &[]));
        assert_eq!(index.others_serving("D2", "c/z"), ["a/x"]);
        // Split again, and the first one hands it on: the second still serves it.
        index.apply(&history_cm("b", "y", &["D2"], &[]));
        index.apply(&history_cm("a", "x", &[], &["D1", "D2"]));
        assert_eq!(index.others_serving("D2", "c/z"), ["b/y"]);
        index.apply(&history_cm("b", "y", &[], &["D2"]));
        assert!(index.others_serving("D2", "c/z").is_empty());
        // Not a history: ignored.
        let mut unlabelled = history_cm("a", "w", &["D9"], &[]);
        unlabelled.metadata.labels = None;
        index.apply(&unlabelled);
        assert!(index.others_serving("D9", "c/z").is_empty());
        let mut corrupt = history_cm("a", "v", &["D8"], &[]);
        corrupt.data = Some([(HISTORY_FILE.to_owned(), "{".to_owned())].into());
        index.apply(&corrupt);
        assert!(index.others_serving("D8", "c/z").is_empty());
    }

    #[tokio::test]
    async fn a_relist_replaces_the_index_and_readiness_waits_for_the_first() {
        let shared = std::sync::Arc::new(SharedDriveIndex::default());
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let follower = std::sync::Arc::clone(&shared);
        let task = tokio::spawn(async move { follower.follow(rx).await });
        let send = |e| tx.unbounded_send(Ok(e)).unwrap();
        send(Event::Init);
        send(Event::InitApply(history_cm("a", "x", &["D1"], &[])));
        let waited = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            shared.wait_until_ready(),
        )
        .await;
        assert!(waited.is_err(), "not ready before the list is complete");
        send(Event::InitDone);
        shared.wait_until_ready().await;
        assert_eq!(shared.others_serving("D1", "c/z"), ["a/x"]);
        send(Event::Apply(history_cm("b", "y", &["D2"], &[])));
        // A relist without x: x's drives are forgotten.
        send(Event::Init);
        send(Event::InitApply(history_cm("b", "y", &["D2"], &[])));
        send(Event::InitDone);
        drop(tx);
        task.await.unwrap();
        assert!(shared.others_serving("D1", "c/z").is_empty());
        assert_eq!(shared.others_serving("D2", "c/z"), ["b/y"]);
    }
}
