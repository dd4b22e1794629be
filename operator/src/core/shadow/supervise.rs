//! The stateful side of a shadow's credentials, run by both shells: the record made with
//! the first pair, a rotation step read, decided and written back under a version check,
//! and the verifiers the KeyManager's replicas are to accept.

use std::collections::BTreeMap;

use jiff::Timestamp;
use shadowkeep_api::license::LicenseSigner;
use shadowkeep_api::shadow::registration::AcceptedVerifier;
use shadowkeep_api::shadow::verifiers::ShadowVerifiers;

use super::credentials::{Accept, Issued, Record};
use super::rotation::{self, Observed, Stepped, Wanted};
use crate::core::Error;
use crate::core::state::{Item, Owner, State, StateError, StoredShadow};

/// The licence signer of KeyManager `owner`, or `None` before its material is made.
pub async fn signer<S: State>(state: &S, owner: &Owner) -> Result<Option<LicenseSigner>, Error> {
    let Some(fields) = state.read(owner, Item::LicenseSigning).await? else {
        return Ok(None);
    };
    LicenseSigner::from_seed(fields.get("seed"))
        .map(Some)
        .map_err(|e| Error::Material {
            what: format!("the licence signing key of {owner}"),
            reason: e.to_string(),
        })
}

fn corrupt(owner: &Owner, stored: &StoredShadow, reason: String) -> Error {
    Error::State(StateError::Corrupt {
        what: format!(
            "the credential record of Shadow {}/{}",
            owner.namespace, stored.shadow
        ),
        reason,
    })
}

/// A stored record, read.
pub fn parse(owner: &Owner, stored: &StoredShadow) -> Result<Record, Error> {
    Record::from_bytes(&stored.bytes).map_err(|reason| corrupt(owner, stored, reason))
}

/// The record of Shadow `shadow` of KeyManager `owner` (server id `server_id`) and its
/// version, made with a first pair when there is none.
pub async fn ensure<S: State>(
    state: &S,
    owner: &Owner,
    shadow: &str,
    signer: &LicenseSigner,
    server_id: &str,
    now: Timestamp,
) -> Result<(Record, String), Error> {
    if let Some(stored) = state.read_shadow(owner, shadow).await? {
        return Ok((parse(owner, &stored)?, stored.version));
    }
    let record = Record::first(Issued::new(signer, server_id, shadow, now)?);
    match state
        .write_shadow(owner, shadow, &record.to_bytes(), None)
        .await
    {
        // Another writer made it first: theirs is the one.
        Ok(()) | Err(StateError::Conflict { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let stored = state.read_shadow(owner, shadow).await?.ok_or_else(|| {
        Error::State(StateError::Invalid(format!(
            "the credential record of Shadow {}/{shadow} vanished after it was written",
            owner.namespace
        )))
    })?;
    Ok((parse(owner, &stored)?, stored.version))
}

/// Whether a Shadow of `owner` other than `shadow`, among `declared`, is rotating.
pub async fn sibling_rotating<S: State>(
    state: &S,
    owner: &Owner,
    shadow: &str,
    declared: &[String],
) -> Result<bool, Error> {
    for stored in state.shadows(owner).await? {
        if stored.shadow != shadow
            && declared.contains(&stored.shadow)
            && parse(owner, &stored)?.rotating()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What a rotation step needs besides the stored record.
#[derive(Debug)]
pub struct Step<'a> {
    /// The KeyManager's server id.
    pub server_id: &'a str,
    /// Its licence signer.
    pub signer: &'a LicenseSigner,
    /// What the user asks.
    pub wanted: &'a Wanted,
    /// What the replicas answered now.
    pub observed: Option<&'a Observed>,
    /// The Shadows of the KeyManager that exist.
    pub declared: &'a [String],
    /// Now.
    pub now: Timestamp,
}

/// One rotation step of Shadow `shadow`: reads its record, decides, and writes what
/// changed at the version read, before the caller acts on it (hands the pair over,
/// publishes verifiers), so a restart resumes from what was decided.
pub async fn rotate<S: State>(
    state: &S,
    owner: &Owner,
    shadow: &str,
    step: &Step<'_>,
) -> Result<Stepped, Error> {
    let (record, version) =
        ensure(state, owner, shadow, step.signer, step.server_id, step.now).await?;
    let sibling = sibling_rotating(state, owner, shadow, step.declared).await?;
    let stepped = rotation::step(
        &record,
        step.wanted,
        step.observed,
        sibling,
        step.now,
        |at| Issued::new(step.signer, step.server_id, shadow, at),
        rand::random::<f64>(),
    )?;
    if stepped.changed {
        state
            .write_shadow(owner, shadow, &stepped.record.to_bytes(), Some(&version))
            .await?;
    }
    Ok(stepped)
}

/// The verifiers the replicas of `owner` are to accept, by Shadow: those of the Shadows
/// in `declared` (a deleted Shadow's password is accepted no more).
pub async fn accepted<S: State>(
    state: &S,
    owner: &Owner,
    declared: &[String],
) -> Result<BTreeMap<String, Vec<Accept>>, Error> {
    let mut out = BTreeMap::new();
    if declared.is_empty() {
        return Ok(out);
    }
    for stored in state.shadows(owner).await? {
        if declared.contains(&stored.shadow) {
            let record = parse(owner, &stored)?;
            out.insert(stored.shadow, record.accepted());
        }
    }
    Ok(out)
}

/// The replicas' verifiers file from what each Shadow's record says they accept.
pub fn verifiers_file(accepted: &BTreeMap<String, Vec<Accept>>) -> Vec<u8> {
    ShadowVerifiers {
        shadows: accepted
            .iter()
            .map(|(shadow, list)| {
                let list = list
                    .iter()
                    .map(|a| AcceptedVerifier {
                        verifier: a.verifier.clone(),
                        not_after: a.not_after,
                        id: Some(a.id.clone()),
                    })
                    .collect();
                (shadow.clone(), list)
            })
            .collect(),
    }
    .encode()
}
