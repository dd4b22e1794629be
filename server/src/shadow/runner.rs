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
use shadowkeep_api::keystore::{Kek, Key, Keystore};
use shadowkeep_api::password::Password;
use shadowkeep_api::replica_sync::summary;
use shadowkeep_api::server_config::{DrivePolicy, PeerConfig, ShadowConfig};
use shadowkeep_api::shadow::registration::{PasswordText, RegistrationReply, ShadowRegistration};
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
                since: machine.since(),
                last_synchronized: self.lock_mirror().last_synchronized,
                serving_since: clocks.serving_since,
                last_contact: clocks.last_contact,
                replicas: self
                    .replicas
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone(),
            }),
            duplicates: Vec::new(),
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
    registered: bool,
}

impl Link {
    fn new(peer: &PeerConfig, connector: TlsConnector) -> Self {
        Self {
            name: peer.name.clone(),
            address: peer.address.clone(),
            connector,
            sender: None,
            registered: false,
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

/// Everything the loop needs.
pub struct Runner {
    handle: Arc<ShadowHandle>,
    licensed: Licensed,
    password: Password,
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
        licensed,
        password,
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
    let text = zeroize::Zeroizing::new(
        super::read_small(&config.password_file)
            .map_err(|reason| ShadowError(format!("shadow.passwordFile {file}: {reason}")))?,
    );
    Password::parse(text.trim_end_matches(['\n', '\r']))
        .map_err(|e| ShadowError(format!("shadow.passwordFile {file}: {e}")))
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

    async fn round(&mut self) {
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
        let registration = ShadowRegistration {
            licence: self.licensed.text.clone(),
            password: PasswordText::new(&self.password),
            instance_id: self.instance_id,
        };
        let registration = serde_json::to_vec(&registration)
            .map(zeroize::Zeroizing::new)
            .ok();
        let timeout = self.poll_timeout;
        let answers: Vec<Answer> = join_all(self.replicas.iter_mut().map(|link| {
            poll_replica(
                link,
                &body,
                registration.as_ref().map(|r| r.as_slice()),
                timeout,
            )
        }))
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

/// Reports to one replica, registering first when it does not know this shadow. Every call
/// must be answered within `timeout`, the registration too: a replica that does not is gone.
async fn poll_replica(
    link: &mut Link,
    report: &[u8],
    registration: Option<&[u8]>,
    timeout: Duration,
) -> Answer {
    for attempt in 0..2 {
        if !link.registered {
            let Some(body) = registration else {
                return Answer::Gone("failed to encode the registration".to_owned());
            };
            match link
                .call(Method::POST, "/v1/shadow/register", body.to_vec(), timeout)
                .await
            {
                Ok((StatusCode::OK, reply)) => {
                    link.registered = true;
                    if let Ok(RegistrationReply::Registered {
                        verifier_not_after: Some(at),
                        ..
                    }) = RegistrationReply::from_json(&reply)
                    {
                        tracing::warn!(replica = %link.name, not_after = %at, "registered with a password that expires; the shadow needs its new one by then");
                    } else {
                        tracing::info!(replica = %link.name, "registered with replica");
                    }
                }
                Ok((status, reply)) => {
                    let why = match RegistrationReply::from_json(&reply) {
                        Ok(RegistrationReply::Refused { reason, message }) => {
                            tracing::error!(replica = %link.name, reason = %reason, message, "registration refused");
                            format!("registration refused: {reason}")
                        }
                        _ => format!("registration answered {status}"),
                    };
                    return Answer::Refused(why);
                }
                Err(e) => return Answer::Gone(e),
            }
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
            // The replica restarted and forgot this shadow: register again, once.
            Ok((StatusCode::FORBIDDEN, _)) if attempt == 0 => link.registered = false,
            Ok((status, _)) => return Answer::Refused(format!("answered {status}")),
            Err(e) => return Answer::Gone(e),
        }
    }
    Answer::Refused("not registered".to_owned())
}
