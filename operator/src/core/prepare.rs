//! The stateful step of a KeyManager's reconcile, the same for every shell: make the
//! material once, carry the keys of accepted drive moves, generate KeyGroup keys and pull
//! the replicas' keys into the canonical keystore, write it once, then hand carried drives
//! on and record the drives served. It ends before anything is applied or started, so that
//! nothing serves a drive whose keys are not stored.
//!
//! The operator calls it with the Kubernetes state and its drive index; `shadowkeep up`
//! with a data directory and the histories stored there.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use shadowkeep_api::crd::{DriveTable, KeyGroup, KeyManager, Shadow};
use shadowkeep_api::drive_history::DriveHistory;
use shadowkeep_api::estate::Estate;
use shadowkeep_api::manifest::Resource as Object;

use super::Error;
use super::backup::{self, Backups, Source, Targets};
use super::drive_moves::{
    self, Carried, Carries, Claim, DriveRisk, Origins, conflicts, key_manager_ref, without_blocked,
};
use super::keystore::{Canonical, GroupStatus};
use super::keystore_sync::{self, Replicas, Synced};
use super::material::ensure;
use super::shadow::supervise::{accepted, verifiers_file};
use super::state::{Owner, State, StateError};
use crate::build::{Inputs, Material};

/// What a KeyManager's reconcile works from, however it was read.
#[derive(Clone, Copy, Debug)]
pub struct Declared<'a> {
    /// The KeyManager.
    pub key_manager: &'a KeyManager,
    /// Its namespace.
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Every DriveTable of the namespace: its own are served, and a drive another one
    /// lists too is held back.
    pub tables: &'a [DriveTable],
    /// Every KeyGroup of the namespace.
    pub groups: &'a [KeyGroup],
    /// Every Shadow of the namespace.
    pub shadows: &'a [Shadow],
    /// Its drive history (empty when it has none yet).
    pub history: &'a DriveHistory,
    /// The version of the stored history; `None` when there is none yet.
    pub history_version: Option<&'a str>,
}

impl Declared<'_> {
    /// The estate its servers are built from: the KeyManager, the objects of its
    /// namespace, and its own tables without the drives held back.
    pub fn estate(&self, risks: &[DriveRisk]) -> Estate {
        let mut estate = Estate::new();
        estate.add(Object::KeyManager(self.key_manager.clone()));
        for t in self.tables {
            estate.add(Object::DriveTable(without_blocked(t, self.name, risks)));
        }
        for g in self.groups {
            estate.add(Object::KeyGroup(g.clone()));
        }
        for s in self.shadows {
            estate.add(Object::Shadow(s.clone()));
        }
        estate
    }
}

/// What the step leaves for the next ones.
#[derive(Debug)]
pub struct Prepared {
    /// The KEK, the keystore as written, the certificate, the license.
    pub material: Material,
    /// The drives at risk, after the carries.
    pub risks: Vec<DriveRisk>,
    /// The drives whose keys were carried here.
    pub carried: Vec<Carried>,
    /// Each KeyGroup's pool.
    pub groups: Vec<GroupStatus>,
    /// What the keystore sync found.
    pub synced: Synced,
    /// Keys in the canonical keystore.
    pub keys: usize,
    /// Digest of the canonical keystore.
    pub digest: String,
    /// How its replicas were asked, for what else the shell asks them.
    pub replicas: Replicas,
    /// What its backup targets hold.
    pub backups: Backups,
}

impl Prepared {
    /// Whether an accepted move still waits for something (a release, the old replicas).
    pub fn waiting(&self) -> bool {
        self.risks.iter().any(|r| {
            matches!(
                r.claim,
                Claim::History {
                    carry_error: Some(_),
                    ..
                }
            )
        })
    }
}

/// Why the step stopped short, to try again soon rather than fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// What it waits for.
    pub message: String,
}

/// How the step ended.
#[derive(Debug)]
pub enum Outcome {
    /// Done: build and apply may go on.
    Ready(Box<Prepared>),
    /// Another writer changed the keystore or a drive history since it was read: nothing
    /// was overwritten, and the next attempt starts from what is stored.
    Waiting(Waiting),
}

/// How soon a KeyManager at rest is reconciled again: its sync interval, at least 30 s
/// (each reconcile asks every replica for its keys).
pub fn resync_after(key_manager: &KeyManager) -> std::time::Duration {
    key_manager
        .spec
        .sync_interval
        .as_duration()
        .max(std::time::Duration::from_secs(30))
}

/// What the shell tells the step about the world outside the KeyManager.
pub struct Surroundings<'a, O> {
    /// The KeyManagers a carried drive may come from, and how to ask their replicas.
    pub origins: &'a O,
    /// The other KeyManagers (`namespace/name`) serving a drive, by serial, given this
    /// KeyManager's reference.
    pub others_serving: &'a (dyn Fn(&str, &str) -> Vec<String> + Send + Sync),
    /// How to ask this KeyManager's own replicas for their keys, given its material.
    pub replicas: &'a (dyn Fn(&Material) -> Replicas + Send + Sync),
    /// How to reach its backup targets.
    pub targets: &'a dyn Targets,
}

/// Runs the step.
pub async fn prepare<S: State, O: Origins>(
    state: &S,
    around: &Surroundings<'_, O>,
    declared: &Declared<'_>,
    now: &Time,
) -> Result<Outcome, Error> {
    match prepared(state, around, declared, now).await {
        Ok(prepared) => Ok(Outcome::Ready(Box::new(prepared))),
        Err(Error::State(StateError::Conflict { action })) => Ok(Outcome::Waiting(Waiting {
            message: format!(
                "another writer changed what this reconcile read ({action}); nothing was overwritten, and it starts again from what is stored"
            ),
        })),
        Err(e) => Err(e),
    }
}

async fn prepared<S: State, O: Origins>(
    state: &S,
    around: &Surroundings<'_, O>,
    read: &Declared<'_>,
    now: &Time,
) -> Result<Prepared, Error> {
    let me = key_manager_ref(read.namespace, read.name);
    let mut risks = conflicts(read.name, read.tables, read.history, |serial| {
        (around.others_serving)(serial, &me)
    });
    // Neither the material nor the keystore depends on which drives are served.
    let base = Inputs::of_key_manager(read.key_manager);
    let mut material = ensure(state, &base).await?;
    // The verifiers the replicas accept: those of the Shadows that name this KeyManager.
    let shadows: Vec<String> = read
        .shadows
        .iter()
        .filter(|s| s.spec.key_manager_ref.name == read.name)
        .map(kube::ResourceExt::name_any)
        .collect();
    let owner = Owner::new(read.namespace, read.name);
    material.shadow_verifiers = verifiers_file(&accepted(state, &owner, &shadows).await?);
    let mut keystore = Canonical::of(&base, &material)?;
    let mut history = read.history.clone();
    let carries = if risks.iter().any(DriveRisk::is_accepted_move) {
        drive_moves::carry_accepted(
            state,
            around.origins,
            &base,
            &mut keystore,
            &mut history,
            &mut risks,
        )
        .await?
    } else {
        Carries::default()
    };
    let mine: Vec<&KeyGroup> = read
        .groups
        .iter()
        .filter(|g| g.spec.key_manager_ref.name == read.name)
        .collect();
    let groups = keystore.maintain_groups(&mine, Timestamp::now())?;
    let replicas = (around.replicas)(&material);
    let generation = read.key_manager.metadata.generation;
    let mut synced = keystore_sync::sync(&mut keystore, &replicas, generation, now).await?;
    // One write, with one backup, before anything depends on it: a carried drive is
    // handed on, and served here, only once its keys are stored here.
    keystore.commit(state).await?;
    // Stored, so pushed: a replica that lacks keys gets them now.
    keystore_sync::push(&replicas, keystore.keystore(), &mut synced, generation, now).await?;
    material.keystore = keystore.stored().to_vec();
    drive_moves::hand_on(state, &base, &carries.carried).await?;
    // Recorded before the configuration serves them: a drive is never served by a
    // KeyManager whose history does not say so.
    let served: Vec<DriveTable> = read
        .tables
        .iter()
        .filter(|t| t.spec.key_manager_ref.name == read.name)
        .map(|t| without_blocked(t, read.name, &risks))
        .collect();
    drive_moves::write_served(
        state,
        &owner,
        &served,
        read.groups,
        history,
        read.history_version,
        carries.history_changed,
    )
    .await?;
    // Last, and never an error: a target that fails is reported, while the keys stored
    // above are served.
    let previous = state.read_status(&owner).await.ok().flatten();
    let manifests = backup::manifests(read.key_manager, read.tables, read.groups, read.shadows);
    let backups = backup::back_up(
        around.targets,
        &Source {
            owner: &owner,
            spec: &read.key_manager.spec.backup,
            keystore: &material.keystore,
            kek: &material.kek,
            manifests: &manifests,
            generation,
        },
        previous
            .as_ref()
            .map(|s| s.backups.as_slice())
            .unwrap_or_default(),
        now,
    )
    .await;
    Ok(Prepared {
        backups,
        keys: keystore.keystore().len(),
        digest: keystore
            .keystore()
            .digest()
            .map_err(Error::Keystore)?
            .to_string(),
        material,
        risks,
        carried: carries.carried,
        groups,
        synced,
        replicas,
    })
}
