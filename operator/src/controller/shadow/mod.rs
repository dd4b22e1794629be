//! The Shadow controller: a Shadow becomes a running shadow server at its site — its
//! licence, password, certificate, configuration, Services and a StatefulSet of one —
//! whose password the control core rotates without outage.
//!
//! One reconcile: read (the Shadow, its KeyManager, the KeyManager's other Shadows) →
//! validate (pure) → the core's tick ([`crate::core::shadow::tick`]: rotation step,
//! verifiers, hand-over, desired state, requested sync, status) with this cluster as its
//! [`Shell`] → build (pure, [`crate::build::shadow`]) → apply → status and Events. A
//! rotation step of one KeyManager's Shadows never runs beside another's, so two never
//! start rotating at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource as _, ResourceExt as _};
use shadowkeep_api::crd::{KeyManager, Shadow, ShadowStatus, TlsSource};
use shadowkeep_api::estate::Estate;
use shadowkeep_api::finding::Finding;
use shadowkeep_api::manifest::Resource as Object;
use shadowkeep_api::pki::Authority;

use super::key_manager::apply::apply;
use super::state::{Kube, bytes};
use super::{Context, Error, ReadError, StatusError};
use crate::build::shadow::{
    ShadowInputs, ShadowMaterial, license_secret, password_secret, shadow_children, shadow_tls,
};
use crate::build::{self, ADMIN_PORT, Child, Inputs, KMIP_PORT, shadow_verifiers_secret_of};
use crate::core::drive_moves::Origins as _;
use crate::core::keystore_sync::{ReplicaAddress, Replicas};
use crate::core::shadow::credentials::Issued;
use crate::core::shadow::observe;
use crate::core::shadow::rotation::Event;
use crate::core::shadow::status::{Found, report};
use crate::core::shadow::supervise;
use crate::core::shadow::tick::{Input, Shell, tick};
use crate::core::state::{Item, Owner, State as _};

/// How soon a Shadow is looked at again while it rotates, or waits for its KeyManager.
pub const SOON: Duration = Duration::from_secs(10);
/// How soon a Shadow at rest is looked at again (its status follows the shadow's state).
pub const AT_REST: Duration = Duration::from_mins(1);

/// Finds a Shadow's admin API where it is not at its pod's DNS name (tests).
pub type ShadowResolver = Arc<dyn Fn(&str, &str) -> Option<ReplicaAddress> + Send + Sync>;

/// One lock per KeyManager, held for a rotation step of any of its Shadows.
#[derive(Default)]
pub struct RotationLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl RotationLocks {
    fn of(&self, owner: &Owner) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(locks.entry(owner.reference()).or_default())
    }
}

impl std::fmt::Debug for RotationLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RotationLocks")
    }
}

/// The shadow's admin API at its pod's DNS name.
pub fn in_cluster(namespace: &str, shadow: &str) -> ReplicaAddress {
    let names = build::shadow::ShadowNames::of(shadow);
    let host = format!("{}-0.{}.{namespace}.svc", names.statefulset, names.admin);
    ReplicaAddress {
        replica: shadow.to_owned(),
        address: format!("{host}:{ADMIN_PORT}"),
        server_name: host,
    }
}

/// `Err` naming the field when the Shadow cannot be applied: its CEL rules (an object may
/// predate a rule) and the estate rules that concern it.
pub fn validate(shadow: &Shadow, key_manager: Option<&KeyManager>) -> Result<(), String> {
    if let Err(errors) = shadow.validate_cel() {
        let mut all: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.field_path.trim_start_matches('.'), e.message))
            .collect();
        all.sort();
        return Err(all.join("; "));
    }
    let mut estate = Estate::new();
    if let Some(km) = key_manager {
        estate.add(Object::KeyManager(km.clone()));
    }
    estate.add(Object::Shadow(shadow.clone()));
    let name = shadow.name_any();
    match estate
        .validate()
        .into_iter()
        .filter(Finding::is_error)
        .find(|f| {
            f.object
                .as_ref()
                .is_some_and(|o| o.kind == "Shadow" && o.name == name)
        }) {
        Some(f) => Err(f.to_string().trim_start_matches("error: ").to_owned()),
        None => Ok(()),
    }
}

/// What the cluster does for the core's tick: Secrets applied.
struct Cluster<'a> {
    ctx: &'a Context,
    key_manager: &'a KeyManager,
    inputs: &'a ShadowInputs<'a>,
    public_key: &'a str,
}

impl Shell for Cluster<'_> {
    async fn publish_verifiers(&self, owner: &Owner, verifiers: Vec<u8>) -> Result<(), String> {
        let inputs = Inputs::of_key_manager(self.key_manager);
        let secret = shadow_verifiers_secret_of(&inputs, &verifiers);
        apply(self.ctx, &owner.namespace, &[Child::Secret(secret)])
            .await
            .map_err(|e| e.to_string())
    }

    async fn hand_over(&self, owner: &Owner, _shadow: &str, pair: &Issued) -> Result<(), String> {
        let material = material(pair, self.public_key, None);
        let secrets = [
            Child::Secret(license_secret(self.inputs, &material)),
            Child::Secret(password_secret(self.inputs, &material)),
        ];
        apply(self.ctx, &owner.namespace, &secrets)
            .await
            .map_err(|e| e.to_string())
    }
}

fn material(pair: &Issued, public_key: &str, tls: Option<build::shadow::Pem>) -> ShadowMaterial {
    ShadowMaterial {
        license: pair.licence.as_bytes().to_vec(),
        password: pair.password.as_bytes().to_vec(),
        license_public_key: public_key.to_owned(),
        tls,
    }
}

/// The shadow's certificate when the operator makes it: the one in its Secret, else a new
/// one from the KeyManager's CA (applied with the other children, so it is made once).
async fn shadow_certificate(
    ctx: &Context,
    state: &Kube,
    owner: &Owner,
    inputs: &ShadowInputs<'_>,
) -> Result<Option<build::shadow::Pem>, Error> {
    if inputs.key_manager.spec.tls.source != TlsSource::Generated {
        return Ok(None);
    }
    let name = inputs.names().tls;
    let stored = Api::<Secret>::namespaced(ctx.client.clone(), &owner.namespace)
        .get_opt(&name)
        .await
        .map_err(ReadError::of(format!("read Secret {name}")))?;
    if let Some(s) = stored.filter(|s| !bytes(s, "tls.crt").is_empty()) {
        return Ok(Some((
            bytes(&s, "tls.crt"),
            bytes(&s, "tls.key"),
            bytes(&s, "ca.crt"),
        )));
    }
    let ca = state
        .read(owner, Item::Ca)
        .await?
        .ok_or_else(|| crate::core::Error::Material {
            what: format!("the certificate of Shadow {}", inputs.name()),
            reason: format!("KeyManager {owner} has no CA yet"),
        })?;
    let text = |f: &str| String::from_utf8_lossy(ca.get(f)).into_owned();
    let authority = Authority::from_pem(&text("ca.crt"), &text("ca.key")).map_err(|e| {
        crate::core::Error::Material {
            what: format!("the CA of KeyManager {owner}"),
            reason: e.to_string(),
        }
    })?;
    Ok(Some(shadow_tls(inputs, &authority)?))
}

/// What the KeyManager's replicas say, how to reach its servers, and where the shadow's
/// admin API is.
async fn around(
    ctx: &Context,
    km: &KeyManager,
    namespace: &str,
    name: &str,
) -> Result<
    (
        observe::Replicas,
        Option<tokio_rustls::TlsConnector>,
        Option<ReplicaAddress>,
    ),
    Error,
> {
    let (answers, connector) = match ctx.replicas(&Inputs::of_key_manager(km)).await? {
        Replicas::Ask {
            addresses,
            connector,
        } => (
            observe::replicas(&addresses, &connector).await,
            Some(connector),
        ),
        Replicas::Skip { .. } => (observe::Replicas::default(), None),
    };
    let address = match &ctx.shadow_resolver {
        Some(resolve) => resolve(namespace, name),
        None => Some(in_cluster(namespace, name)),
    };
    Ok((answers, connector, address))
}

/// Whether a Shadow is run, or why not (its status then says so).
enum Gate {
    /// Its KeyManager, and the KeyManager's licence signer.
    Run(Box<(KeyManager, shadowkeep_api::license::LicenseSigner)>),
    /// Not run: when to look again.
    Stop(Action),
}

/// Reads the Shadow's KeyManager and decides whether the Shadow can run: a refused spec,
/// a KeyManager gone or without its licence key yet stop it, saying so in its status.
async fn gate(
    ctx: &Context,
    shadow: &Shadow,
    namespace: &str,
    now: Timestamp,
) -> Result<Gate, Error> {
    // Client required: every read.
    let km_name = &shadow.spec.key_manager_ref.name;
    let key_manager = Api::<KeyManager>::namespaced(ctx.client.clone(), namespace)
        .get_opt(km_name)
        .await
        .map_err(ReadError::of(format!(
            "read KeyManager {namespace}/{km_name}"
        )))?;
    // A Shadow that ran and lost its KeyManager keeps what it has and says so; one that
    // never had one names a KeyManager that does not exist: its spec is refused.
    let ran = shadow
        .status
        .as_ref()
        .is_some_and(|s| s.password_rotated_at.is_some());
    // No client required.
    if key_manager.is_none() && ran {
        let found = Quiet {
            invalid: None,
            key_manager_missing: true,
            why: format!("KeyManager {km_name} does not exist; the shadow keeps its data"),
        };
        write_status(ctx, shadow, &found, now).await?;
        return Ok(Gate::Stop(Action::requeue(AT_REST)));
    }
    if let Err(invalid) = validate(shadow, key_manager.as_ref()) {
        let found = Quiet {
            invalid: Some(invalid),
            key_manager_missing: false,
            why: "the spec is refused".to_owned(),
        };
        write_status(ctx, shadow, &found, now).await?;
        return Ok(Gate::Stop(Action::await_change()));
    }
    let Some(km) = key_manager else {
        return Ok(Gate::Stop(Action::await_change()));
    };
    let owner = Owner::new(namespace, km_name);
    let Some(signer) = supervise::signer(&Kube::new(ctx.client.clone()), &owner).await? else {
        let found = Quiet {
            invalid: None,
            key_manager_missing: false,
            why: format!("waiting for KeyManager {km_name} to make its licence key"),
        };
        write_status(ctx, shadow, &found, now).await?;
        return Ok(Gate::Stop(Action::requeue(SOON)));
    };
    Ok(Gate::Run(Box::new((km, signer))))
}

/// Reconciles one Shadow.
#[tracing::instrument(skip_all, fields(shadow = %shadow.name_any(), namespace = shadow.namespace().unwrap_or_default()))]
pub async fn reconcile(shadow: Arc<Shadow>, ctx: Arc<Context>) -> Result<Action, Error> {
    if shadow.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = shadow.namespace().unwrap_or_else(|| "default".to_owned());
    let name = shadow.name_any();
    let now = Timestamp::now();
    let km_name = &shadow.spec.key_manager_ref.name;
    let (km, signer) = match gate(&ctx, &shadow, &namespace, now).await? {
        Gate::Run(run) => *run,
        Gate::Stop(action) => return Ok(action),
    };
    let owner = Owner::new(&namespace, km_name);
    let state = Kube::new(ctx.client.clone());
    let public_key = hex::encode(signer.verifier().to_bytes());
    let siblings: Vec<Shadow> = Api::<Shadow>::namespaced(ctx.client.clone(), &namespace)
        .list(&ListParams::default())
        .await
        .map_err(ReadError::of(format!("list the Shadows of {namespace}")))?
        .items
        .into_iter()
        .filter(|s| s.spec.key_manager_ref.name == *km_name)
        .collect();
    let siblings: Vec<&Shadow> = siblings.iter().collect();
    let inputs = ShadowInputs {
        shadow: &shadow,
        key_manager: &km,
        default_image: ctx.server_image.clone(),
    };
    let tls = shadow_certificate(&ctx, &state, &owner, &inputs).await?;
    let (answers, connector, address) = around(&ctx, &km, &namespace, &name).await?;
    let cluster = Cluster {
        ctx: &ctx,
        key_manager: &km,
        inputs: &inputs,
        public_key: &public_key,
    };
    let input = Input {
        shadow: &shadow,
        key_manager: &km,
        owner: &owner,
        signer: &signer,
        connector: connector.as_ref(),
        replicas: &answers,
        address,
        kmip_address: Some(format!(
            "{}.{namespace}.svc:{KMIP_PORT}",
            inputs.names().kmip
        )),
        siblings: &siblings,
        previous: shadow.status.as_ref(),
        now,
    };
    // Client required: the core's tick, one per KeyManager at a time.
    let output = {
        let lock = ctx.rotation_locks.of(&owner);
        let _held = lock.lock().await;
        Box::pin(tick(&state, &cluster, &input)).await?
    };
    for problem in &output.problems {
        tracing::warn!(shadow = %name, problem = %problem, "shadow");
    }
    for done in &output.done {
        tracing::info!(shadow = %name, "{done}");
    }
    // No client required.
    let children = shadow_children(&inputs, &material(&output.pair, &public_key, tls))?;
    // Client required.
    apply(&ctx, &namespace, &children).await?;
    publish(&ctx, &shadow, &output.events).await;
    write(&ctx, &shadow, &output.status).await?;
    Ok(Action::requeue(if output.rotating {
        SOON
    } else {
        AT_REST
    }))
}

/// What is found of a Shadow that is not run (refused, without KeyManager, waiting).
struct Quiet {
    invalid: Option<String>,
    key_manager_missing: bool,
    why: String,
}

async fn write_status(
    ctx: &Context,
    shadow: &Shadow,
    quiet: &Quiet,
    now: Timestamp,
) -> Result<(), Error> {
    let found = Found {
        invalid: quiet.invalid.clone(),
        key_manager_missing: quiet.key_manager_missing,
        state: Err(quiet.why.clone()),
        address: None,
        duplicates: &[],
        placement: &[],
        record: None,
        rotation: None,
    };
    let mut status = report(
        &shadow.name_any(),
        shadow.metadata.generation,
        shadow.status.as_ref(),
        &found,
        &Time(now),
    );
    // A Shadow that is not run has no state: its last one would mislead.
    if quiet.invalid.is_none() {
        status.state = None;
    }
    write(ctx, shadow, &status).await?;
    Ok(())
}

/// Whether a condition in this state is news someone should hear of: a Warning Event.
fn is_warning(c: &Condition) -> bool {
    match c.type_.as_str() {
        "Ready" | "PasswordRotation" => c.status == "False",
        "Serving" => false,
        _ => c.status == "True",
    }
}

async fn publish(ctx: &Context, shadow: &Shadow, events: &[Event]) {
    for e in events {
        let type_ = if e.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        ctx.publish(
            &shadow.object_ref(&()),
            type_,
            e.reason,
            "Rotate",
            &e.message,
        )
        .await;
    }
}

/// Writes the Shadow's status unless it has it already, with an Event for each condition
/// whose status or reason changed (a Warning when it signals trouble).
async fn write(ctx: &Context, shadow: &Shadow, status: &ShadowStatus) -> Result<(), StatusError> {
    super::state::write_status(
        ctx,
        shadow,
        shadow.status.as_ref(),
        status,
        |s| s.conditions.as_slice(),
        build::FIELD_MANAGER,
        is_warning,
    )
    .await
}
