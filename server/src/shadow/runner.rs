//! A shadow's loop: at each poll interval it reports to every replica of its KeyManager
//! (registering first where it is not registered) and asks its siblings their state, feeds
//! what answered in time to the state machine, and, when a replica answered, mirrors the
//! drive table, key groups, siblings and the keystore delta from it.
//!
//! Only an answer on the admin API within the poll timeout counts: a replica that accepts
//! the connection but does not answer (hung, SIGSTOP) is gone. The KMIP listener asks
//! [`ShadowHandle::access`] before every request, so a transition out of Serving stops
//! service at once, on open connections too.
//!
//! Each round the shadow also reads its licence and password files: a changed pair that is
//! valid (the licence verifies for this shadow and is strictly newer than the one in force,
//! and the password matches it) is taken at once and registered at every replica in that
//! round; an invalid one (a torn write, an older licence, a mismatched pair) is refused and
//! the pair in force kept. The previous pair is kept too: a replica that has not yet taken
//! the new verifier refuses the new password, and the shadow registers there with the
//! previous one, so that it never loses its registration in the middle of a rotation.
//!
//! Durable, in the data directory (written whole and fsynced): the limit clocks
//! (`shadow-clocks.json`) after every change, and the mirrored configuration and
//! lastSynchronized (`shadow-mirror.json`). Keys go to the store like a replica's, through
//! `Store::commit_from_elsewhere`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::join_all;
use hyper::{Method, StatusCode};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use shadowkeep_api::keystore::{Kek, Key, Keystore};
use shadowkeep_api::license::{Expected, Role};
use shadowkeep_api::password::Password;
use shadowkeep_api::replica_sync::summary;
use shadowkeep_api::server_config::{DrivePolicy, PeerConfig, ShadowConfig};
use shadowkeep_api::shadow::registration::{
    PasswordText, RefusalCode, RegistrationReply, ShadowRegistration,
};
use shadowkeep_api::shadow::state::{
    DesiredShadowState, Identity, LimitClocks, Machine, Poll, ShadowState, SiblingReport, Timings,
    Transition,
};
use shadowkeep_api::shadow::wire::{
    ReplicaReachability, ShadowReport, ShadowStateReport, ShadowView, SiblingAddress, StateReport,
};
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use super::{Access, Licensed};
use crate::auth::DriveTable;
use crate::durable;
use crate::https::{http1_connect, send};
use crate::metrics::Metrics;
use crate::store::Store;

const CLOCKS_FILE: &str = "shadow-clocks.json";
const MIRROR_FILE: &str = "shadow-mirror.json";
/// How long a keystore delta may take.
const SLOW_CALL: Duration = Duration::from_secs(30);

/// What the shadow keeps of its KeyManager besides keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Mirror {
    drives: DrivePolicy,
    siblings: Vec<SiblingAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_synchronized: Option<Timestamp>,
}

/// Why the shadow could not start.
#[derive(Debug, thiserror::Error)]
#[error("failed to start the shadow: {0}")]
pub struct ShadowError(String);

impl ShadowError {
    /// A failure described by `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}

/// The shadow's state, shared by its loop, the KMIP listener and the admin API.
pub struct ShadowHandle {
    name: String,
    server_id: String,
    priority: i32,
    machine: Mutex<Machine>,
    replicas: Mutex<Vec<ReplicaReachability>>,
    mirror: Mutex<Mirror>,
    /// The drive table the KMIP listener applies: the mirrored one.
    drives: Arc<RwLock<Arc<DriveTable>>>,
    dir: PathBuf,
    wake: Notify,
    /// Poll rounds finished, for `POST /v1/shadow/sync` to wait on.
    rounds: watch::Sender<u64>,
    in_round: AtomicBool,
    metrics: Arc<Metrics>,
    /// The `issuedAt` of the licence in force.
    licence_issued_at: Mutex<Timestamp>,
}

impl std::fmt::Debug for ShadowHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShadowHandle")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Why a desired state or a sync was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The shadow does not poll in its state.
    #[error(
        "the shadow is {0:?} and does not poll (an Inactive shadow polls again once activated; a Disabled one needs a new licence)"
    )]
    NotPolling(ShadowState),
    /// The round, or the sync it started, did not finish in time.
    #[error("failed to finish a poll round and its sync within {0:?}")]
    Timeout(Duration),
}

impl ShadowHandle {
    /// What KMIP may do now.
    pub fn access(&self) -> Access {
        // Read from the machine itself, not a copy updated after it: service stops in the
        // same instant the machine leaves Serving.
        let state = self.lock_machine().state();
        if state == ShadowState::Serving {
            return Access::ReadOnly(format!(
                "this is {:?}, an emergency shadow of KeyManager {:?}: it serves existing keys read-only while no replica answers, and never creates or changes a key",
                self.name, self.server_id
            ));
        }
        Access::Closed(format!(
            "this is {:?}, an emergency shadow of KeyManager {:?}, now {state:?}: it serves only when no replica of its KeyManager answers; ask a replica",
            self.name, self.server_id
        ))
    }

    /// The drive table KMIP applies.
    pub fn drives(&self) -> Arc<RwLock<Arc<DriveTable>>> {
        Arc::clone(&self.drives)
    }

    fn lock_machine(&self) -> std::sync::MutexGuard<'_, Machine> {
        self.machine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_mirror(&self) -> std::sync::MutexGuard<'_, Mirror> {
        self.mirror
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The state report of `GET /v1/state`.
    pub fn report(&self, instance_id: uuid::Uuid) -> StateReport {
        let machine = self.lock_machine();
        let clocks = machine.clocks();
        StateReport {
            role: shadowkeep_api::shadow::wire::ServerRole::Shadow,
            server_id: self.server_id.clone(),
            instance_id,
            shadow: Some(ShadowStateReport {
                name: self.name.clone(),
                key_manager: self.server_id.clone(),
                priority: self.priority,
                state: machine.state(),
                desired: machine.desired(),
                since: machine.since(),
                last_synchronized: self.lock_mirror().last_synchronized,
                serving_since: clocks.serving_since,
                last_contact: clocks.last_contact,
                licence_issued_at: *self
                    .licence_issued_at
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
                replicas: self
                    .replicas
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone(),
            }),
            duplicates: Vec::new(),
            accepted_verifiers: std::collections::BTreeMap::new(),
            configuration: None,
        }
    }

    /// Takes the operator's desired state, persists the clocks and wakes the loop.
    pub fn set_desired(&self, desired: DesiredShadowState) -> Result<ShadowState, ShadowError> {
        let now = Timestamp::now();
        let mut machine = self.lock_machine();
        let transition = machine.set_desired(desired, now);
        let state = machine.state();
        let clocks = machine.clocks().clone();
        drop(machine);
        self.persist_clocks(&clocks)?;
        if let Some(t) = transition {
            self.transitioned(&t);
        }
        self.wake.notify_one();
        Ok(state)
    }

    /// Asks for a poll round now (`POST /v1/shadow/sync`) and waits for it to finish.
    pub async fn sync_now(&self, wait: Duration) -> Result<(), ControlError> {
        {
            let machine = self.lock_machine();
            if machine.next_poll().is_none() {
                return Err(ControlError::NotPolling(machine.state()));
            }
        }
        let asked = Timestamp::now();
        let mut rounds = self.rounds.subscribe();
        let seen = *rounds.borrow_and_update();
        // A round under way began before this request: the one after it is the answer.
        let wanted = seen
            + if self.in_round.load(Ordering::Acquire) {
                2
            } else {
                1
            };
        self.wake.notify_one();
        let finished = async {
            rounds
                .wait_for(|n| *n >= wanted)
                .await
                .map_err(|_| ControlError::Timeout(wait))?;
            // The sync the round started runs apart from it: wait for it too, when a
            // replica answered.
            while self.any_replica_answered()
                && self
                    .lock_mirror()
                    .last_synchronized
                    .is_none_or(|at| at < asked)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(())
        };
        tokio::time::timeout(wait, finished)
            .await
            .map_err(|_| ControlError::Timeout(wait))?
    }

    fn any_replica_answered(&self) -> bool {
        self.replicas
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|r| r.reachable && r.problem.is_none())
    }

    fn persist_clocks(&self, clocks: &LimitClocks) -> Result<(), ShadowError> {
        let bytes = serde_json::to_vec_pretty(clocks).map_err(|e| ShadowError(e.to_string()))?;
        durable::write_atomically(&self.dir, CLOCKS_FILE, &bytes).map_err(|e| {
            ShadowError(format!(
                "failed to write {}: {e}",
                self.dir.join(CLOCKS_FILE).display()
            ))
        })
    }

    fn persist_mirror(&self, mirror: &Mirror) {
        let written = serde_json::to_vec_pretty(mirror)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                durable::write_atomically(&self.dir, MIRROR_FILE, &bytes).map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            tracing::error!(file = %self.dir.join(MIRROR_FILE).display(), error = %e, "failed to write the mirrored configuration; keeping it in memory");
        }
    }

    fn transitioned(&self, t: &Transition) {
        self.metrics.shadow_transition(t);
        tracing::info!(
            shadow = %self.name,
            from = ?t.from,
            to = ?t.to,
            reason = t.reason.code(),
            "shadow state changed"
        );
    }
}

/// One replica or sibling's admin API, over a kept-alive connection dropped on any failure.
struct Link {
    name: String,
    address: String,
    connector: TlsConnector,
    sender:
        Option<hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>>,
    /// With which pair this shadow is registered there, if it is.
    registered: Option<Held>,
}

/// Which of the shadow's licence and password pairs a replica registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    /// The pair in force.
    Current,
    /// The pair before it, while the replica has not taken the new verifier.
    Previous,
}

impl Link {
    fn new(peer: &PeerConfig, connector: TlsConnector) -> Self {
        Self {
            name: peer.name.clone(),
            address: peer.address.clone(),
            connector,
            sender: None,
            registered: None,
        }
    }

    async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        limit: Duration,
    ) -> Result<(StatusCode, Vec<u8>), String> {
        let result = tokio::time::timeout(limit, async {
            if self
                .sender
                .as_ref()
                .is_none_or(hyper::client::conn::http1::SendRequest::is_closed)
            {
                self.sender = Some(http1_connect(&self.address, &self.connector).await?);
            }
            let sender = self
                .sender
                .as_mut()
                .ok_or_else(|| "not connected".to_owned())?;
            send(sender, &self.address, method, path, body).await
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} ms", limit.as_millis())));
        if result.is_err() {
            self.sender = None;
        }
        result
    }
}

/// A licence and the password that goes with it.
struct Credentials {
    licensed: Licensed,
    password: Password,
    /// Of the licence text and the password, to tell a changed pair from this one.
    fingerprint: [u8; 32],
}

impl Credentials {
    fn new(licensed: Licensed, password: Password) -> Self {
        let fingerprint = fingerprint(&Ok(licensed.text.clone()), &Ok(password_text(&password)));
        Self {
            licensed,
            password,
            fingerprint,
        }
    }

    /// The registration body, zeroed when dropped.
    fn registration(&self, instance_id: uuid::Uuid) -> Option<Zeroizing<Vec<u8>>> {
        let registration = ShadowRegistration {
            licence: self.licensed.text.clone(),
            password: PasswordText::new(&self.password),
            instance_id,
        };
        serde_json::to_vec(&registration).map(Zeroizing::new).ok()
    }
}

fn password_text(password: &Password) -> Zeroizing<String> {
    Zeroizing::new(password.expose().to_owned())
}

/// A digest of what the licence and password files held (or why they could not be read),
/// never logged: it only tells whether they changed.
fn fingerprint(
    licence: &Result<String, String>,
    password: &Result<Zeroizing<String>, String>,
) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in [
        licence.as_ref().map(String::as_str),
        password.as_ref().map(|p| p.as_str()),
    ] {
        let (tag, text) = match part {
            Ok(text) => (b'+', text),
            Err(reason) => (b'-', reason.as_str()),
        };
        hash.update([tag]);
        hash.update(text.len().to_le_bytes());
        hash.update(text.as_bytes());
    }
    hash.finalize().into()
}

/// Everything the loop needs.
pub struct Runner {
    handle: Arc<ShadowHandle>,
    /// The licence and password in force.
    current: Credentials,
    /// The pair before, for replicas that have not yet taken the new verifier.
    previous: Option<Credentials>,
    /// The files they come from, read again each round.
    licence_file: PathBuf,
    password_file: PathBuf,
    /// The last changed pair refused, not judged (nor logged) again until it changes.
    refused: Option<[u8; 32]>,
    instance_id: uuid::Uuid,
    replicas: Vec<Link>,
    configured_siblings: Vec<PeerConfig>,
    siblings: Vec<Link>,
    connector: TlsConnector,
    poll_timeout: Duration,
    admin_port: u16,
    kmip_port: u16,
    store: Store,
    kek: Kek,
    /// The replicas, to open a link for mirroring from.
    replica_configs: Vec<PeerConfig>,
    /// The sync under way, which hands its link back.
    mirroring: Option<tokio::task::JoinHandle<Link>>,
    /// Links kept for mirroring, apart from the polls' so that a sync never delays a poll.
    mirror_links: Vec<Link>,
}

/// Ports the shadow listens on, which it reports to replicas.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    /// Its admin API.
    pub admin: u16,
    /// Its KMIP listener.
    pub kmip: u16,
}

/// The settings of one shadow, gathered by the server.
pub struct Setup<'a> {
    /// The shadow's configuration.
    pub config: &'a ShadowConfig,
    /// Its licence.
    pub licensed: Licensed,
    /// The licence file, read again each round for a new licence.
    pub licence_file: PathBuf,
    /// Its data directory (the store's).
    pub dir: PathBuf,
    /// Its instance id.
    pub instance_id: uuid::Uuid,
    /// Connector presenting its certificate.
    pub connector: TlsConnector,
    /// The store.
    pub store: Store,
    /// The KEK.
    pub kek: Kek,
    /// The metrics.
    pub metrics: Arc<Metrics>,
}

/// Loads the persisted clocks and mirror and builds the handle and the loop (not started).
pub fn prepare(setup: Setup<'_>) -> Result<(Arc<ShadowHandle>, Runner), ShadowError> {
    let Setup {
        config,
        licensed,
        licence_file,
        dir,
        instance_id,
        connector,
        store,
        kek,
        metrics,
    } = setup;
    let password = read_password(config)?;
    let name = licensed.licence.shadow_name.clone().unwrap_or_default();
    let timings = Timings::new(
        Duration::from_secs(config.takeover_grace_period_secs),
        Duration::from_millis(config.poll_interval_ms),
        Duration::from_secs(config.continuous_service_limit_secs),
        Duration::from_secs(config.standalone_limit_secs),
    )
    .map_err(|e| ShadowError(e.to_string()))?;
    std::fs::create_dir_all(&dir)
        .map_err(|e| ShadowError(format!("failed to create {}: {e}", dir.display())))?;
    let now = Timestamp::now();
    let issued = licensed.licence.issued_at;
    let clocks = load_clocks(&dir)?.unwrap_or_else(|| LimitClocks::registered(issued, now));
    let identity = Identity {
        name: name.clone(),
        priority: config.priority,
    };
    let (mut machine, started) = Machine::start(identity, timings, clocks, now);
    let relicensed = if issued > machine.clocks().licence_issued_at {
        machine.relicense(issued, now).ok().flatten()
    } else {
        None
    };
    let mirror = load_mirror(&dir)?;
    let (rounds, _) = watch::channel(0);
    let handle = Arc::new(ShadowHandle {
        name,
        server_id: licensed.licence.server_id.clone(),
        priority: config.priority,
        machine: Mutex::new(machine),
        replicas: Mutex::new(
            config
                .replicas
                .iter()
                .map(|r| ReplicaReachability {
                    name: r.name.clone(),
                    address: r.address.clone(),
                    reachable: false,
                    last_answer: None,
                    problem: Some("not polled yet".to_owned()),
                })
                .collect(),
        ),
        drives: Arc::new(RwLock::new(Arc::new(DriveTable::new(&mirror.drives)))),
        mirror: Mutex::new(mirror),
        dir,
        wake: Notify::new(),
        rounds,
        in_round: AtomicBool::new(false),
        metrics,
        licence_issued_at: Mutex::new(issued),
    });
    let clocks = handle.lock_machine().clocks().clone();
    handle.persist_clocks(&clocks)?;
    let state = handle.lock_machine().state();
    handle.metrics.shadow_state(state);
    for t in [started, relicensed].into_iter().flatten() {
        handle.transitioned(&t);
    }
    let runner = Runner {
        handle: Arc::clone(&handle),
        current: Credentials::new(licensed, password),
        previous: None,
        licence_file,
        password_file: config.password_file.clone(),
        refused: None,
        instance_id,
        replicas: config
            .replicas
            .iter()
            .map(|r| Link::new(r, connector.clone()))
            .collect(),
        configured_siblings: config.siblings.clone(),
        siblings: Vec::new(),
        connector,
        poll_timeout: Duration::from_millis(config.poll_timeout_ms),
        admin_port: 0,
        kmip_port: 0,
        store,
        kek,
        replica_configs: config.replicas.clone(),
        mirroring: None,
        mirror_links: Vec::new(),
    };
    Ok((handle, runner))
}

fn read_password(config: &ShadowConfig) -> Result<Password, ShadowError> {
    let file = config.password_file.display();
    let text = read_password_text(&config.password_file)
        .map_err(|reason| ShadowError(format!("shadow.passwordFile {file}: {reason}")))?;
    Password::parse(&text).map_err(|e| ShadowError(format!("shadow.passwordFile {file}: {e}")))
}

/// The password file's text without its line end.
fn read_password_text(path: &std::path::Path) -> Result<Zeroizing<String>, String> {
    let text = Zeroizing::new(super::read_small(path)?);
    Ok(Zeroizing::new(
        text.trim_end_matches(['\n', '\r']).to_owned(),
    ))
}

/// Why a changed licence and password were not taken: the file at fault and the reason,
/// never the password.
struct Refused {
    file: PathBuf,
    reason: String,
}

/// Judges a changed pair against the one in force (an Argon2 hash: call it off the async
/// threads). Taken only when the licence verifies under the same key for this server and
/// shadow, is strictly newer than `in_force`, and the password matches it.
fn judge(
    licence: Result<String, String>,
    password: Result<Zeroizing<String>, String>,
    in_force: &Licensed,
    files: (&std::path::Path, &std::path::Path),
) -> Result<Credentials, Refused> {
    let (licence_file, password_file) = files;
    let at_licence = |reason: String| Refused {
        file: licence_file.to_owned(),
        reason,
    };
    let at_password = |reason: String| Refused {
        file: password_file.to_owned(),
        reason,
    };
    let text = licence.map_err(at_licence)?;
    let password = password.map_err(at_password)?;
    if text == in_force.text {
        return Err(at_password(
            "changed, but the licence did not: a new password comes with the newer licence that holds it"
                .to_owned(),
        ));
    }
    let expected = Expected {
        server_id: &in_force.licence.server_id,
        role: Role::Shadow,
        shadow_name: in_force.licence.shadow_name.as_deref(),
    };
    let licence = in_force
        .verifier
        .verify(&text, expected)
        .map_err(|e| at_licence(e.to_string()))?;
    if licence.issued_at <= in_force.licence.issued_at {
        return Err(at_licence(format!(
            "issued at {}, not after the licence in force (issued at {}); only a newer licence is taken",
            licence.issued_at, in_force.licence.issued_at
        )));
    }
    let password = Password::parse(&password).map_err(|e| at_password(e.to_string()))?;
    if licence.check_password(&password).is_err() {
        return Err(at_password(format!(
            "the password does not match the password verifier of the new licence in {}",
            licence_file.display()
        )));
    }
    Ok(Credentials::new(
        Licensed {
            licence,
            text,
            verifier: in_force.verifier,
        },
        password,
    ))
}

/// The persisted limit clocks, if any. Unreadable ones stop the start: they are what a
/// restart must not reset.
fn load_clocks(dir: &std::path::Path) -> Result<Option<LimitClocks>, ShadowError> {
    let path = dir.join(CLOCKS_FILE);
    durable::read_optional(&path)
        .map_err(|e| ShadowError(format!("failed to read {}: {e}", path.display())))?
        .map(|bytes| serde_json::from_slice(&bytes))
        .transpose()
        .map_err(|e| {
            ShadowError(format!(
                "failed to read {}: {e}; it holds the limit clocks a restart must not reset, so the shadow does not start without them",
                path.display()
            ))
        })
}

/// The mirrored configuration, empty before the first sync.
fn load_mirror(dir: &std::path::Path) -> Result<Mirror, ShadowError> {
    let path = dir.join(MIRROR_FILE);
    Ok(durable::read_optional(&path)
        .map_err(|e| ShadowError(format!("failed to read {}: {e}", path.display())))?
        .map(|bytes| serde_json::from_slice(&bytes))
        .transpose()
        .map_err(|e| ShadowError(format!("failed to read {}: {e}", path.display())))?
        .unwrap_or_default())
}

/// What one replica's poll gave.
enum Answer {
    /// It answered in time with what to mirror.
    View(ShadowView),
    /// It answered in time, but refused (a registration refused, say). It is alive, so the
    /// shadow must not serve; there is nothing to mirror from it.
    Refused(String),
    /// It did not answer in time.
    Gone(String),
}

impl Runner {
    /// Runs the loop until `cancel`, reporting `ports`.
    pub async fn run(mut self, ports: Ports, cancel: CancellationToken) {
        self.admin_port = ports.admin;
        self.kmip_port = ports.kmip;
        loop {
            let next = self.handle.lock_machine().next_poll();
            let wait = next.map_or_else(
                // Not polling: still re-judge the limits now and then.
                || Duration::from_secs(1),
                |at| {
                    let left = at.duration_since(Timestamp::now());
                    Duration::try_from(left.max(SignedDuration::ZERO)).unwrap_or_default()
                },
            );
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                () = self.handle.wake.notified() => {}
            }
            if self.handle.lock_machine().next_poll().is_some() {
                self.handle.in_round.store(true, Ordering::Release);
                self.round().await;
                self.handle.rounds.send_modify(|n| *n += 1);
                self.handle.in_round.store(false, Ordering::Release);
            } else {
                // A disabled shadow polls no more, but a newer licence re-enables it.
                self.check_credentials().await;
                let now = Timestamp::now();
                let transition = self.handle.lock_machine().tick(now);
                self.after_step(transition);
            }
        }
    }

    fn after_step(&self, transition: Option<Transition>) {
        let (clocks, state) = {
            let machine = self.handle.lock_machine();
            (machine.clocks().clone(), machine.state())
        };
        if let Err(e) = self.handle.persist_clocks(&clocks) {
            tracing::error!(error = %e, "failed to persist the shadow's limit clocks");
        }
        if let Some(t) = transition {
            self.handle.transitioned(&t);
        }
        self.handle.metrics.shadow_state(state);
    }

    /// Reads the licence and password files and, when they hold a changed pair, takes it if
    /// it is valid (registering again at every replica this round, relicensing the state
    /// machine) or refuses it and keeps the pair in force.
    async fn check_credentials(&mut self) {
        let files = (self.licence_file.clone(), self.password_file.clone());
        let Ok((licence, password)) = tokio::task::spawn_blocking(move || {
            (
                super::read_small(&files.0).map(|t| t.trim().to_owned()),
                read_password_text(&files.1),
            )
        })
        .await
        else {
            return;
        };
        let seen = fingerprint(&licence, &password);
        if seen == self.current.fingerprint || self.refused == Some(seen) {
            return;
        }
        let in_force = self.current.licensed.clone();
        let files = (self.licence_file.clone(), self.password_file.clone());
        let Ok(judged) = tokio::task::spawn_blocking(move || {
            judge(licence, password, &in_force, (&files.0, &files.1))
        })
        .await
        else {
            return;
        };
        match judged {
            Err(refused) => {
                self.refused = Some(seen);
                self.handle.metrics.credential_reload("refused");
                tracing::warn!(
                    file = %refused.file.display(),
                    reason = refused.reason,
                    "changed shadow licence or password refused; keeping the pair in force"
                );
            }
            Ok(new) => {
                let issued = new.licensed.licence.issued_at;
                let old = std::mem::replace(&mut self.current, new);
                self.previous = Some(old);
                self.refused = None;
                for link in &mut self.replicas {
                    link.registered = None;
                }
                *self
                    .handle
                    .licence_issued_at
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = issued;
                self.handle.metrics.credential_reload("loaded");
                tracing::info!(
                    licence = %self.licence_file.display(),
                    issued_at = %issued,
                    "took a new shadow licence and password; registering again at every replica"
                );
                let transition = self
                    .handle
                    .lock_machine()
                    .relicense(issued, Timestamp::now())
                    .ok()
                    .flatten();
                self.after_step(transition);
            }
        }
    }

    async fn round(&mut self) {
        self.check_credentials().await;
        let report = {
            let machine = self.handle.lock_machine();
            ShadowReport {
                instance_id: self.instance_id,
                state: machine.state(),
                priority: self.handle.priority,
                last_synchronized: self.handle.lock_mirror().last_synchronized,
                admin_port: self.admin_port,
                kmip_port: self.kmip_port,
            }
        };
        let body = serde_json::to_vec(&report).unwrap_or_default();
        let registrations = Registrations {
            current: self.current.registration(self.instance_id),
            previous: self
                .previous
                .as_ref()
                .and_then(|p| p.registration(self.instance_id)),
        };
        let timeout = self.poll_timeout;
        let answers: Vec<Answer> = join_all(
            self.replicas
                .iter_mut()
                .map(|link| poll_replica(link, &body, &registrations, timeout)),
        )
        .await;
        let now = Timestamp::now();
        let mut view = None;
        let mut answered = Vec::new();
        {
            let mut replicas = self
                .handle
                .replicas
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for ((link, answer), row) in self.replicas.iter().zip(answers).zip(replicas.iter_mut())
            {
                match answer {
                    Answer::View(v) => {
                        answered.push(link.name.clone());
                        row.reachable = true;
                        row.last_answer = Some(now);
                        row.problem = None;
                        view.get_or_insert((link.name.clone(), v));
                    }
                    Answer::Refused(problem) => {
                        answered.push(link.name.clone());
                        row.reachable = true;
                        row.last_answer = Some(now);
                        row.problem = Some(problem);
                    }
                    Answer::Gone(problem) => {
                        row.reachable = false;
                        row.problem = Some(problem);
                    }
                }
            }
        }
        self.take_view(view.as_ref().map(|(_, v)| v));
        let siblings = self.poll_siblings().await;
        let poll = Poll {
            replicas_answered: answered,
            siblings,
        };
        let transition = self.handle.lock_machine().poll(&poll, Timestamp::now());
        self.after_step(transition);
        if let Some((replica, _)) = view {
            self.start_mirror(&replica).await;
        }
    }

    /// Takes the drive table and the siblings from a replica's view (kept on disk), and
    /// polls the learned siblings with the configured ones.
    fn take_view(&mut self, view: Option<&ShadowView>) {
        if let Some(view) = view {
            let mut mirror = self.handle.lock_mirror();
            let mut learned = view.siblings.clone();
            learned.sort();
            if mirror.siblings != learned || mirror.drives != view.drives {
                mirror.siblings = learned;
                mirror.drives = view.drives.clone();
                let copy = mirror.clone();
                drop(mirror);
                self.handle.persist_mirror(&copy);
                *self
                    .handle
                    .drives
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Arc::new(DriveTable::new(&copy.drives));
            }
        }
        let mut wanted: Vec<PeerConfig> = self.configured_siblings.clone();
        for s in &self.handle.lock_mirror().siblings {
            if !wanted.iter().any(|w| w.address == s.address) {
                wanted.push(PeerConfig {
                    name: s.name.clone(),
                    address: s.address.clone(),
                });
            }
        }
        wanted.retain(|w| w.name != self.handle.name);
        self.siblings.retain(|l| {
            wanted
                .iter()
                .any(|w| w.address == l.address && w.name == l.name)
        });
        for w in wanted {
            if !self
                .siblings
                .iter()
                .any(|l| l.address == w.address && l.name == w.name)
            {
                self.siblings.push(Link::new(&w, self.connector.clone()));
            }
        }
    }

    async fn poll_siblings(&mut self) -> Vec<SiblingReport> {
        let timeout = self.poll_timeout;
        let me = self.handle.name.clone();
        let answers = join_all(self.siblings.iter_mut().map(|link| async move {
            let (status, body) = link
                .call(Method::GET, "/v1/state", Vec::new(), timeout)
                .await
                .ok()?;
            if status != StatusCode::OK {
                return None;
            }
            let report: StateReport = serde_json::from_slice(&body).ok()?;
            let shadow = report.shadow?;
            Some(SiblingReport {
                name: shadow.name,
                priority: shadow.priority,
                state: shadow.state,
            })
        }))
        .await;
        answers
            .into_iter()
            .flatten()
            .filter(|s| s.name != me)
            .collect()
    }

    /// Starts taking the keystore delta from `replica` in a task of its own, unless one
    /// is still under way: a replica that hangs in the middle of a sync must not hold up
    /// the polls that decide whether to take over.
    async fn start_mirror(&mut self, replica: &str) {
        if self.mirroring.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        if let Some(done) = self.mirroring.take()
            && let Ok(link) = done.await
        {
            self.mirror_links.push(link);
        }
        let link = if let Some(i) = self.mirror_links.iter().position(|l| l.name == replica) {
            self.mirror_links.swap_remove(i)
        } else {
            let Some(peer) = self.replica_configs.iter().find(|p| p.name == replica) else {
                return;
            };
            Link::new(peer, self.connector.clone())
        };
        self.mirroring = Some(tokio::spawn(mirror(
            link,
            self.store.clone(),
            self.kek.clone(),
            Arc::clone(&self.handle),
        )));
    }
}

/// Pulls the keystore delta over `link` and stores it; hands the link back for reuse.
async fn mirror(mut link: Link, store: Store, kek: Kek, handle: Arc<ShadowHandle>) -> Link {
    let replica = link.name.clone();
    let replica = replica.as_str();
    let mine = store.read(summary);
    let Ok(body) = serde_json::to_vec(&mine) else {
        return link;
    };
    let taken = match link
        .call(Method::POST, "/v1/keystore/delta", body, SLOW_CALL)
        .await
    {
        Ok((StatusCode::OK, reply)) => match Keystore::from_bytes(&reply) {
            Ok(theirs) => {
                let wanted: Vec<Key> =
                    store.read(|local| theirs.delta_for(local).keys().cloned().collect());
                let n = wanted.len();
                if n == 0 {
                    Ok(0)
                } else {
                    store
                        .commit_from_elsewhere(wanted, &kek)
                        .await
                        .map(|refused| {
                            for r in &refused {
                                tracing::error!(replica, key = %r.id, reason = %r.reason, "refused a record from a replica");
                            }
                            n - refused.len()
                        })
                        .map_err(|e| e.to_string())
                }
            }
            Err(e) => Err(e.to_string()),
        },
        Ok((status, reply)) => Err(format!(
            "replica answered {status}: {}",
            String::from_utf8_lossy(&reply).trim()
        )),
        Err(e) => Err(e),
    };
    match taken {
        Ok(n) => {
            if n > 0 {
                tracing::info!(replica, records = n, "mirrored keys from a replica");
            }
            handle.metrics.mirrored(n);
            let mut mirror = handle.lock_mirror();
            mirror.last_synchronized = Some(Timestamp::now());
            let copy = mirror.clone();
            drop(mirror);
            handle.persist_mirror(&copy);
        }
        Err(e) => tracing::warn!(replica, error = %e, "failed to mirror the keystore"),
    }
    link
}

/// The registration bodies of the pair in force and of the one before it.
struct Registrations {
    current: Option<Zeroizing<Vec<u8>>>,
    previous: Option<Zeroizing<Vec<u8>>>,
}

/// What a registration call gave.
enum Registering {
    /// Registered.
    Registered,
    /// Refused: the reason code if the reply said one, and the problem for the reachability.
    Refused(Option<RefusalCode>, String),
    /// No answer in time.
    Gone(String),
}

/// The problem a refusal leaves in the shadow's view of the replica: its code, as before.
fn short(code: Option<RefusalCode>, why: String) -> String {
    code.map_or(why, |code| format!("registration refused: {code}"))
}

/// A replica refuses the new pair with these while it has not taken the new verifier.
fn verifier_not_taken(code: Option<RefusalCode>) -> bool {
    matches!(
        code,
        Some(
            RefusalCode::PasswordWrong | RefusalCode::VerifierExpired | RefusalCode::UnknownShadow
        )
    )
}

async fn register(link: &mut Link, body: &[u8], timeout: Duration) -> Registering {
    match link
        .call(Method::POST, "/v1/shadow/register", body.to_vec(), timeout)
        .await
    {
        Ok((StatusCode::OK, reply)) => {
            if let Ok(RegistrationReply::Registered {
                verifier_not_after: Some(at),
                ..
            }) = RegistrationReply::from_json(&reply)
            {
                tracing::warn!(replica = %link.name, not_after = %at, "registered with a password that expires; the shadow needs its new one by then");
            } else {
                tracing::info!(replica = %link.name, "registered with replica");
            }
            Registering::Registered
        }
        Ok((status, reply)) => match RegistrationReply::from_json(&reply) {
            Ok(RegistrationReply::Refused { reason, message }) => Registering::Refused(
                Some(reason),
                format!("registration refused: {reason}: {message}"),
            ),
            _ => Registering::Refused(None, format!("registration answered {status}")),
        },
        Err(e) => Registering::Gone(e),
    }
}

/// Registers with one replica: with the pair in force, else, where the replica has not
/// taken its verifier yet, with the previous pair. Where it holds the previous pair, tries
/// the pair in force again, and keeps the registration it has if that is refused.
async fn register_with(
    link: &mut Link,
    registrations: &Registrations,
    timeout: Duration,
) -> Result<(), Answer> {
    let Some(current) = registrations.current.as_deref() else {
        return Err(Answer::Gone("failed to encode the registration".to_owned()));
    };
    match link.registered {
        Some(Held::Current) => Ok(()),
        Some(Held::Previous) => match register(link, current, timeout).await {
            Registering::Registered => {
                tracing::info!(replica = %link.name, "registered with the new licence and password where the previous pair was registered");
                link.registered = Some(Held::Current);
                Ok(())
            }
            // Refused: the previous pair's registration stands.
            Registering::Refused(_, why) => {
                tracing::debug!(replica = %link.name, refused = %why, "the replica still refuses the new licence and password; the previous pair stays registered");
                Ok(())
            }
            Registering::Gone(e) => Err(Answer::Gone(e)),
        },
        None => match register(link, current, timeout).await {
            Registering::Registered => {
                link.registered = Some(Held::Current);
                Ok(())
            }
            Registering::Refused(code, why) => {
                let Some(previous) = registrations
                    .previous
                    .as_deref()
                    .filter(|_| verifier_not_taken(code))
                else {
                    tracing::error!(replica = %link.name, refused = %why, "registration refused");
                    return Err(Answer::Refused(short(code, why)));
                };
                match register(link, previous, timeout).await {
                    Registering::Registered => {
                        tracing::warn!(replica = %link.name, refused = %why, "the replica refused the new licence and password (it has not taken the new verifier yet); registered with the previous pair");
                        link.registered = Some(Held::Previous);
                        Ok(())
                    }
                    Registering::Refused(code, why) => {
                        tracing::error!(replica = %link.name, refused = %why, "registration refused, with the new licence and password and with the previous pair");
                        Err(Answer::Refused(short(code, why)))
                    }
                    Registering::Gone(e) => Err(Answer::Gone(e)),
                }
            }
            Registering::Gone(e) => Err(Answer::Gone(e)),
        },
    }
}

/// Reports to one replica, registering first when it does not know this shadow. Every call
/// must be answered within `timeout`, the registration too: a replica that does not is gone.
async fn poll_replica(
    link: &mut Link,
    report: &[u8],
    registrations: &Registrations,
    timeout: Duration,
) -> Answer {
    for attempt in 0..2 {
        if let Err(answer) = register_with(link, registrations, timeout).await {
            return answer;
        }
        match link
            .call(Method::POST, "/v1/shadow/report", report.to_vec(), timeout)
            .await
        {
            Ok((StatusCode::OK, reply)) => {
                return match serde_json::from_slice::<ShadowView>(&reply) {
                    Ok(view) => Answer::View(view),
                    Err(e) => Answer::Refused(format!("unreadable answer: {e}")),
                };
            }
            // The replica restarted and forgot this shadow, or retired the verifier it
            // registered with: register again, once.
            Ok((StatusCode::FORBIDDEN, _)) if attempt == 0 => link.registered = None,
            Ok((status, _)) => return Answer::Refused(format!("answered {status}")),
            Err(e) => return Answer::Gone(e),
        }
    }
    Answer::Refused("not registered".to_owned())
}
