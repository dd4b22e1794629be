//! One look after a Shadow, the same in both shells: its rotation step, the replicas'
//! verifiers, the hand-over of its pair, its desired state, a requested sync, and its
//! status. What only a shell can do — put the verifiers where its replicas read them, and
//! the pair where its shadow reads it — is the [`Shell`] it passes in.

use std::future::Future;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt as _;
use shadowkeep_api::crd::{KeyManager, Shadow, ShadowStatus};
use shadowkeep_api::license::LicenseSigner;
use shadowkeep_api::shadow::wire::Duplicate;
use tokio_rustls::TlsConnector;

use super::SYNC_REQUESTED_AT;
use super::credentials::Issued;
use super::observe::{self, Replicas};
use super::rotation::{Event, Wanted};
use super::status::{Found, placement_of, report};
use super::supervise::{self, Step, accepted, verifiers_file};
use crate::core::Error;
use crate::core::keystore_sync::ReplicaAddress;
use crate::core::state::{Owner, State};

/// What only a shell can do for a Shadow.
pub trait Shell: Send + Sync {
    /// Makes the replicas of KeyManager `owner` accept `verifiers` (the encoded verifiers
    /// file) from now on.
    fn publish_verifiers(
        &self,
        owner: &Owner,
        verifiers: Vec<u8>,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// Puts `pair` where Shadow `shadow` of `owner` reads its licence and password.
    fn hand_over(
        &self,
        owner: &Owner,
        shadow: &str,
        pair: &Issued,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// What a tick works from.
pub struct Input<'a> {
    /// The Shadow.
    pub shadow: &'a Shadow,
    /// Its KeyManager.
    pub key_manager: &'a KeyManager,
    /// The KeyManager's `namespace/name`.
    pub owner: &'a Owner,
    /// The KeyManager's licence signer.
    pub signer: &'a LicenseSigner,
    /// How to reach the servers (the replica certificate); `None` before there is one.
    pub connector: Option<&'a TlsConnector>,
    /// What the KeyManager's replicas said.
    pub replicas: &'a Replicas,
    /// The shadow's admin API.
    pub address: Option<ReplicaAddress>,
    /// Where clients reach its KMIP listener.
    pub kmip_address: Option<String>,
    /// Every Shadow of the KeyManager.
    pub siblings: &'a [&'a Shadow],
    /// Its status as last written.
    pub previous: Option<&'a ShadowStatus>,
    /// Now.
    pub now: Timestamp,
}

impl std::fmt::Debug for Input<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input")
            .field("shadow", &self.shadow.name_any())
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// What a tick did.
#[derive(Debug)]
pub struct Output {
    /// The status to write (when it differs from the previous one).
    pub status: ShadowStatus,
    /// The rotation's Events.
    pub events: Vec<Event>,
    /// Problems worth telling that are no Event (a push that failed, say).
    pub problems: Vec<String>,
    /// What was done worth telling (a requested sync), for the shell's log.
    pub done: Vec<String>,
    /// Whether a rotation is under way (look again soon).
    pub rotating: bool,
    /// The pair the shadow is to hold now.
    pub pair: Issued,
}

/// Looks after one Shadow once.
pub async fn tick<S: State, H: Shell>(
    state: &S,
    shell: &H,
    input: &Input<'_>,
) -> Result<Output, Error> {
    let shadow = input.shadow;
    let name = shadow.name_any();
    let owner = input.owner;
    let declared: Vec<String> = input.siblings.iter().map(|s| s.name_any()).collect();
    let wanted = Wanted::of(shadow, &owner.namespace);
    let observed = input.replicas.seen_by(&name);
    let stepped = supervise::rotate(
        state,
        owner,
        &name,
        &Step {
            server_id: &input.key_manager.spec.server_id,
            signer: input.signer,
            wanted: &wanted,
            observed: Some(&observed),
            declared: &declared,
            now: input.now,
        },
    )
    .await?;
    let mut problems = Vec::new();
    let mut done = Vec::new();
    // The verifiers first: a new pair is accepted before the shadow can present it, and an
    // old one withdrawn only once the record says so.
    let verifiers = verifiers_file(&accepted(state, owner, &declared).await?);
    if let Err(e) = shell.publish_verifiers(owner, verifiers).await {
        problems.push(format!("the replicas' verifiers: {e}"));
    }
    if let Err(e) = shell.hand_over(owner, &name, &stepped.record.current).await {
        problems.push(format!("the shadow's licence and password: {e}"));
    }
    let own = match (&input.address, input.connector) {
        (Some(address), Some(connector)) => observe::shadow_state(address, connector)
            .await
            .and_then(|r| {
                r.shadow
                    .ok_or_else(|| "it answers as a replica, not a shadow".to_owned())
            }),
        _ => Err("not reachable yet".to_owned()),
    };
    let mut handled_sync = input.previous.and_then(|s| s.last_handled_sync_at.clone());
    if let (Ok(report), Some(address), Some(connector)) = (&own, &input.address, input.connector) {
        if report.desired != shadow.spec.state
            && let Err(e) = observe::set_desired(address, connector, shadow.spec.state).await
        {
            problems.push(format!("its desired state {:?}: {e}", shadow.spec.state));
        }
        if let Some(request) = shadow.annotations().get(SYNC_REQUESTED_AT)
            && handled_sync.as_ref() != Some(request)
        {
            match observe::sync_now(address, connector).await {
                Ok(()) => {
                    done.push(format!("synchronized on request {request:?}"));
                    handled_sync = Some(request.clone());
                }
                Err(e) => problems.push(format!("sync now: {e}")),
            }
        }
    }
    let duplicates: Vec<Duplicate> = input.replicas.duplicates();
    let placement = placement_of(input.key_manager, input.siblings, &name);
    let found = Found {
        invalid: None,
        key_manager_missing: false,
        state: own.as_ref().map_err(Clone::clone),
        address: input.kmip_address.clone(),
        duplicates: &duplicates,
        placement: &placement,
        record: Some(&stepped.record),
        rotation: Some(&stepped.verdict),
    };
    let mut status = report(
        &name,
        shadow.metadata.generation,
        input.previous,
        &found,
        &Time(input.now),
    );
    status.last_handled_sync_at = handled_sync;
    status
        .last_handled_rotation_at
        .clone_from(&stepped.record.handled_request);
    Ok(Output {
        status,
        rotating: stepped.record.rotating(),
        pair: stepped.record.current,
        events: stepped.events,
        problems,
        done,
    })
}
