//! The material and carry step: the control core makes the material once, carries the
//! keys of accepted drive moves, generates KeyGroup keys and pulls the replicas' keys into
//! the canonical keystore, writes it once, then hands carried drives on and records the
//! drives served. The only step that changes state; it ends before anything is applied,
//! so that nothing serves a drive whose keys are not stored.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use shadowkeep_api::crd::{DriveTable, KeyGroup, TlsSource};

use super::dereference::Dereferenced;
use crate::build::{Inputs, Material};
use crate::controller::Context;
use crate::controller::state::{Kube, certificate_of, replicas};
use crate::core::Error;
use crate::core::drive_moves::{
    self, Carried, Carries, Claim, DriveRisk, conflicts, key_manager_ref, without_blocked,
};
use crate::core::keystore::{Canonical, GroupStatus};
use crate::core::keystore_sync::{self, Synced};
use crate::core::material::ensure;
use crate::core::state::{Owner, StateError};

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

/// Runs the step.
pub async fn prepare(ctx: &Context, read: &Dereferenced, now: &Time) -> Result<Outcome, Error> {
    match prepared(ctx, read, now).await {
        Ok(prepared) => Ok(Outcome::Ready(Box::new(prepared))),
        Err(Error::State(StateError::Conflict { action })) => Ok(Outcome::Waiting(Waiting {
            message: format!(
                "another writer changed what this reconcile read ({action}); nothing was overwritten, and it starts again from what is stored"
            ),
        })),
        Err(e) => Err(e),
    }
}

async fn prepared(ctx: &Context, read: &Dereferenced, now: &Time) -> Result<Prepared, Error> {
    let state = Kube::new(ctx.client.clone());
    let me = key_manager_ref(&read.namespace, &read.name);
    let mut risks = conflicts(&read.name, &read.tables, &read.history, |serial| {
        ctx.drive_index.others_serving(serial, &me)
    });
    // Neither the material nor the keystore depends on which drives are served.
    let base = Inputs::of_key_manager(&read.key_manager);
    let mut material = ensure(&state, &base).await?;
    let mut keystore = Canonical::of(&base, &material)?;
    let mut history = read.history.clone();
    let carries = if risks.iter().any(DriveRisk::is_accepted_move) {
        drive_moves::carry_accepted(&state, ctx, &base, &mut keystore, &mut history, &mut risks)
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
    let ready = read
        .statefulset
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let certificate = if read.key_manager.spec.tls.source == TlsSource::Generated {
        material.tls.clone()
    } else {
        read.replica_certificate.as_ref().map(certificate_of)
    };
    let replicas = replicas(
        ctx,
        &base,
        ready,
        certificate
            .as_ref()
            .map(|(crt, key, ca)| (crt.as_slice(), key.as_slice(), ca.as_slice())),
        &base.tls_secret_name(),
    );
    let generation = read.key_manager.metadata.generation;
    let synced = keystore_sync::sync(&mut keystore, replicas, generation, now).await?;
    // One write, with one backup, before anything depends on it: a carried drive is
    // handed on, and served here, only once its keys are stored here.
    keystore.commit(&state).await?;
    material.keystore = keystore.stored().to_vec();
    drive_moves::hand_on(&state, &base, &carries.carried).await?;
    // Recorded before the configuration serves them: a drive is never served by a
    // KeyManager whose history does not say so.
    let served: Vec<DriveTable> = read
        .tables
        .iter()
        .filter(|t| t.spec.key_manager_ref.name == read.name)
        .map(|t| without_blocked(t, &read.name, &risks))
        .collect();
    drive_moves::write_served(
        &state,
        &Owner::new(&read.namespace, &read.name),
        &served,
        &read.groups,
        history,
        read.history_version.as_deref(),
        carries.history_changed,
    )
    .await?;
    Ok(Prepared {
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
    })
}
