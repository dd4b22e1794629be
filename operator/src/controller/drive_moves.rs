//! Drive moves against the cluster: drive histories in ConfigMaps that outlive their
//! KeyManager ([`HISTORY_LABEL`]), the index of who serves each drive kept from a watch of
//! them, carrying an accepted move's keys between keystore Secrets, and the risks reported
//! on DriveTables. The rules are [`crate::core::drive_moves`].

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use shadowkeep_api::crd::{DriveTable, KeyGroup, KeyManager};
use shadowkeep_api::drive_history::{DriveHistory, HISTORY_FILE, carry_keys};
use shadowkeep_api::estate::Estate;
use shadowkeep_api::manifest::Resource as Object;

use super::conditions::update_status;
use super::keystore_sync;
use super::store::{bytes, history_name, read_history, replace_keystore};
use super::{Context, Error};
use crate::build::{self, Inputs, Material, Names};
use crate::core::conditions::{merge, reasons, types};
use crate::core::drive_moves::{
    Claim, DriveIndex, DriveRisk, KEY_HISTORY_CARRIED, RELEASE_DRIVES, key_manager_ref, lists,
    table_report,
};
use crate::core::{keystore, material};

/// Label on drive-history ConfigMaps, naming their KeyManager.
pub const HISTORY_LABEL: &str = "shadowkeep.io/drive-history-of";

/// The KeyManager (`namespace/name`) and history a history ConfigMap holds; `None` for a
/// ConfigMap that is not a readable history.
fn history_of(cm: &ConfigMap) -> Option<(String, DriveHistory)> {
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

fn apply(index: &mut DriveIndex, cm: &ConfigMap) {
    if let Some((reference, history)) = history_of(cm) {
        index.apply(&reference, &history);
    }
}

fn delete(index: &mut DriveIndex, cm: &ConfigMap) {
    if let Some((reference, history)) = history_of(cm) {
        index.delete(&reference, &history);
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
            apply(&mut index, cm);
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
                        apply(p, &cm);
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
                Ok(Event::Apply(cm)) => apply(&mut self.write(), &cm),
                Ok(Event::Delete(cm)) => delete(&mut self.write(), &cm),
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
    let changed =
        crate::core::drive_moves::record_served(&mut history, inputs, groups, Timestamp::now())
            || carried;
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
            Ok::<_, Error>(bytes(&found, key))
        }
    };
    let kek_bytes = read(names.kek.clone(), "kek").await?;
    let from_kek = material::kek(from, &kek_bytes)?;
    let mut from_material = Material {
        kek: kek_bytes,
        keystore: read(names.keystore.clone(), "keystore").await?,
        ..Material::default()
    };
    sync_old(client, ctx, ns, name, &mut from_material).await?;
    let from_keystore = keystore::open(&from_material.keystore)?;
    let kek = material::kek(
        &key_manager_ref(&inputs.namespace(), &inputs.name()),
        &material.kek,
    )?;
    let mut keystore = keystore::open(&material.keystore)?;
    let count = carry_keys(&from_keystore, &from_kek, &mut keystore, &kek, group)
        .map_err(crate::core::Error::Keystore)?;
    if count > 0 {
        replace_keystore(client, inputs, material, &keystore).await?;
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
    let ready = keystore_sync::ready_replicas(client, &inputs).await?;
    let synced = keystore_sync::sync(client, ctx, &inputs, material, ready, None, &now).await?;
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
        let (c, served) = table_report(table, name, risks, now);
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
    fn the_index_reads_labelled_history_config_maps_only() {
        let mut index = DriveIndex::default();
        apply(&mut index, &history_cm("a", "x", &["D1"], &[]));
        assert_eq!(index.others_serving("D1", "c/z"), ["a/x"]);
        delete(&mut index, &history_cm("a", "x", &["D1"], &[]));
        assert!(index.others_serving("D1", "c/z").is_empty());
        // Not a history: ignored.
        let mut unlabelled = history_cm("a", "w", &["D9"], &[]);
        unlabelled.metadata.labels = None;
        apply(&mut index, &unlabelled);
        assert!(index.others_serving("D9", "c/z").is_empty());
        let mut corrupt = history_cm("a", "v", &["D8"], &[]);
        corrupt.data = Some([(HISTORY_FILE.to_owned(), "{".to_owned())].into());
        apply(&mut index, &corrupt);
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
