//! `shadowkeep up PATH... [--data-dir DIR]`: validate the manifests as `validate` does,
//! reconcile every KeyManager with the control core, run its replicas as local key
//! servers, write `estate.json`, and keep it all in step with the manifest files until
//! stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt as _;
use sha2::{Digest as _, Sha256};
use shadowkeep_api::crd::{DesiredShadowState, KeyManager};
use shadowkeep_api::estate::Estate;
use tokio::signal::unix::{SignalKind, signal};

use super::addresses::Addresses;
use super::backup::LocalTargets;
use super::certificates;
use super::estate_file::{self, EstateFile};
use super::git::{self, Follow, GitDirs};
use super::layout::Layout;
use super::reconcile::{self, Ended, Local, namespace_of, replica_keys};
use super::shadows::{self, shadow_keys};
use super::supervise::{Log, Role, ServerSpec, Supervisor};
use crate::core::configuration::{self, Brought, Target};
use crate::core::drive_moves::risk_message;
use crate::core::keystore_sync::ReplicaAddress;
use crate::core::prepare::{Prepared, resync_after};
use crate::core::state::{Item, Owner, State as _};
use crate::manifests::files::{ManifestFiles, read_manifest};
use crate::manifests::validate::{EXIT_VALID, load_except};

/// What `up` was asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// The manifests: files or directories.
    pub paths: Vec<PathBuf>,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The first loopback address to give a server.
    pub address_base: Ipv4Addr,
    /// Where the Secrets S3 backup targets name are, as `NAMESPACE/NAME/KEY` files.
    pub secrets: Option<PathBuf>,
    /// A Git branch to follow instead of `paths`: its applied objects are the manifests.
    pub git: Option<Follow>,
}

/// How long `up` waits for a server to listen before it carries on without it.
const READY_LIMIT: Duration = Duration::from_mins(1);
/// How often the manifest files are read for changes: often, so that a DriveTable edit
/// reaches the servers within the 2 s the live configuration is held to.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// How often the shadows' rotation, desired state and status are looked after.
const SHADOWS_EVERY: Duration = Duration::from_secs(2);

/// The name `up` prints its own lines under.
const UP: &str = "up";

/// Runs `up` and returns its exit code: 0 when stopped by a signal, 1 when it could not
/// start.
pub fn run(options: Options) -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .compact()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,shadowkeep=info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shadowkeep up: failed to start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(up(options))
}

/// SIGINT and SIGTERM, listened for from the start, so that `up` stops its servers in
/// order whenever one arrives.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Completes at the next SIGINT or SIGTERM.
    async fn next(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// The manifests as read: the estate when valid, the findings to print either way.
struct Read {
    estate: Option<Estate>,
    lines: Vec<String>,
}

fn read(paths: &[PathBuf], data_dir: &Path) -> Read {
    let (report, estate) = load_except(paths, &[data_dir.to_path_buf()]);
    let mut lines = report.lines();
    let valid = report.exit_code() == EXIT_VALID;
    lines.push(format!(
        "{} objects in {} files: {}",
        report.objects,
        report.files,
        if valid { "valid" } else { "invalid" }
    ));
    Read {
        estate: valid.then_some(estate),
        lines,
    }
}

/// A digest of the manifest files' names and contents, to notice an edit.
fn fingerprint(paths: &[PathBuf], data_dir: &Path) -> String {
    let listed = ManifestFiles::collect_except(paths, &[data_dir.to_path_buf()]);
    let mut hash = Sha256::new();
    for file in &listed.files {
        hash.update(file.display().to_string().as_bytes());
        hash.update([0]);
        match read_manifest(file) {
            Ok(text) => hash.update(text.as_bytes()),
            Err(e) => hash.update(e.as_bytes()),
        }
        hash.update([0]);
    }
    for (name, why) in &listed.unreadable {
        hash.update(name.as_bytes());
        hash.update(why.as_bytes());
    }
    hex::encode(hash.finalize())
}

async fn up(options: Options) -> ExitCode {
    let log = Arc::new(Log::new(UP.len()));
    let say = |line: &str| log.line(UP, line);
    let mut signals = match Signals::new() {
        Ok(signals) => signals,
        Err(e) => {
            say(&format!("failed to listen for signals: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let found = following(&options, &say).await.inspect_err(|why| say(why));
    let Ok((early_lock, paths, follow)) = found else {
        return ExitCode::FAILURE;
    };
    // Taken before the manifests are read: an edit saved while they are read, or while the
    // servers start, differs from it and is applied once `up` runs.
    let seen = fingerprint(&paths, &options.data_dir);
    let first = read(&paths, &options.data_dir);
    for line in &first.lines {
        say(line);
    }
    let keys = first
        .estate
        .as_ref()
        .map(|e| [replica_keys(e), shadow_keys(e)].concat())
        .unwrap_or_default();
    for key in keys {
        log.widen(key.rsplit('/').next().unwrap_or_default().len());
    }
    let Some(estate) = first.estate else {
        say("the manifests are not valid: nothing started, nothing written");
        return ExitCode::FAILURE;
    };
    // Checked before anything is written, like the manifests.
    if let Err(e) = Addresses::new(options.address_base) {
        say(&format!("{e}: nothing started, nothing written"));
        return ExitCode::FAILURE;
    }
    let (layout, exe) = match place(&options.data_dir) {
        Ok(place) => place,
        Err(e) => {
            say(&e);
            return ExitCode::FAILURE;
        }
    };
    let _lock = match early_lock.map_or_else(|| layout.lock(), Ok) {
        Ok(lock) => lock,
        Err(e) => {
            say(&e);
            return ExitCode::FAILURE;
        }
    };
    let mut up = Up {
        layout,
        base: options.address_base,
        supervisor: Supervisor::new(exe, log.clone()),
        log: log.clone(),
        clients: Vec::new(),
        estate,
        next_sync: BTreeMap::new(),
        seen,
        next_shadows: tokio::time::Instant::now(),
        targets: LocalTargets {
            secrets: options.secrets.clone(),
        },
        next_git: tokio::time::Instant::now(),
        follow,
    };
    let started = tokio::select! {
        started = up.start() => Some(started),
        () = signals.next() => None,
    };
    match started {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            up.say(&format!("{e}; stopping"));
            up.supervisor.stop_all(signals.next()).await;
            return ExitCode::FAILURE;
        }
        None => {
            up.say("stopping every server (a second Ctrl-C kills them)");
            up.supervisor.stop_all(signals.next()).await;
            up.write_estate(false);
            up.say("stopped");
            return ExitCode::SUCCESS;
        }
    }
    let code = up.run(&paths, &mut signals).await;
    up.write_estate(false);
    code
}

/// The data directory's layout, and this program, which runs the servers.
fn place(data_dir: &Path) -> Result<(Layout, PathBuf), String> {
    let root = std::path::absolute(data_dir)
        .map_err(|e| format!("failed to use {}: {e}", data_dir.display()))?;
    let exe = std::env::current_exe()
        .map_err(|e| format!("failed to find this program to start the servers: {e}"))?;
    Ok((Layout::new(&root), exe))
}

/// The data directory's lock, taken early when following a branch.
type Following = (
    Option<std::fs::File>,
    Vec<PathBuf>,
    Option<(GitDirs, Follow)>,
);

/// Following a branch, the first step writes into the data directory: it is locked first
/// (the lock is returned), and the manifests are what the branch's applied revision holds.
/// `Err` when no revision of it was ever applied: nothing to start. Without a branch, the
/// paths given.
async fn following(options: &Options, say: &impl Fn(&str)) -> Result<Following, String> {
    let Some(follow) = &options.git else {
        return Ok((None, options.paths.clone(), None));
    };
    let root = std::path::absolute(&options.data_dir)
        .map_err(|e| format!("failed to use {}: {e}", options.data_dir.display()))?;
    let lock = Layout::new(&root).lock()?;
    let dirs = GitDirs::new(&root);
    let branch = &follow.branch;
    say(&format!(
        "following {} branch {}{}",
        crate::core::git_sync::credentials::redact(&branch.url),
        branch.branch,
        branch
            .path
            .as_ref()
            .map(|p| format!(" (path {p})"))
            .unwrap_or_default()
    ));
    for line in git::step(&dirs, follow).await {
        say(&line);
    }
    if !git::applied_before(&dirs) {
        return Err("no revision of the branch is applied: nothing started".to_owned());
    }
    Ok((
        Some(lock),
        vec![dirs.estate()],
        Some((dirs, follow.clone())),
    ))
}

struct Up {
    layout: Layout,
    base: Ipv4Addr,
    supervisor: Supervisor,
    log: Arc<Log>,
    clients: Vec<estate_file::Client>,
    estate: Estate,
    /// When each KeyManager is next reconciled without a change.
    next_sync: BTreeMap<String, tokio::time::Instant>,
    /// The fingerprint of the manifests last applied.
    seen: String,
    /// When the shadows are next looked after.
    next_shadows: tokio::time::Instant,
    /// The backup targets, with credentials from `--secrets`.
    targets: LocalTargets,
    /// The branch followed, with where its files are.
    follow: Option<(GitDirs, Follow)>,
    /// When the branch is next fetched (when one is followed).
    next_git: tokio::time::Instant,
}

impl Up {
    /// What a KeyManager's reconcile came to: its keys and sync, and what the operator
    /// tells in Events (keys carried, backup targets failing) and conditions (risks).
    fn tell_reconciled(&self, name: &str, km: &KeyManager, prepared: &Prepared) {
        let synced = &prepared.synced.condition;
        self.log.line(
            UP,
            &format!(
                "KeyManager {name}: {} keys; {}",
                prepared.keys, synced.message
            ),
        );
        for carried in &prepared.carried {
            self.log
                .line(UP, &format!("KeyManager {name}: {}", carried.note));
        }
        for (target, error) in &prepared.backups.failures {
            self.log.line(
                UP,
                &format!("KeyManager {name}: backup target {target}: {error}"),
            );
        }
        if !prepared.risks.is_empty() {
            self.log.line(
                UP,
                &format!(
                    "KeyManager {name}: {}",
                    risk_message(&prepared.risks, &km.name_any())
                ),
            );
        }
    }

    fn say(&self, line: &str) {
        self.log.line(UP, line);
    }

    /// The first reconcile and start, `estate.json` written and printed, then a second
    /// reconcile with the servers up: their keys are asked for and the status tells.
    async fn start(&mut self) -> Result<(), String> {
        self.reconcile_all(true).await?;
        self.write_estate(true);
        if let Err(e) = self.reconcile_all(false).await {
            self.say(&e);
        }
        Ok(())
    }

    /// Reconciles every KeyManager and brings the servers in line. On the first run any
    /// failure stops `up`; later, a KeyManager that fails keeps the servers it has.
    async fn reconcile_all(&mut self, first: bool) -> Result<(), String> {
        let addresses = self.assign_addresses()?;
        let servers = self.supervisor.servers();
        let running: BTreeSet<String> = servers
            .iter()
            .filter(|(_, s)| s.pid.is_some())
            .map(|(spec, _)| spec.key.clone())
            .collect();
        let ready: BTreeSet<String> = servers
            .iter()
            .filter(|(_, s)| s.ready)
            .map(|(spec, _)| spec.key.clone())
            .collect();
        let now = Time(Timestamp::now());
        let mut wanted: BTreeMap<String, ServerSpec> = BTreeMap::new();
        let mut clients = Vec::new();
        let mut kept = BTreeSet::new();
        // KeyManagers whose reconcile failed: their shadows are left as they are too.
        let mut failed = BTreeSet::new();
        let local = Local {
            layout: &self.layout,
            estate: &self.estate,
            addresses: &addresses,
            running: &running,
            ready: &ready,
            targets: &self.targets,
        };
        // Each reconciled KeyManager and the digest of its drive table, for the push.
        let mut live = Vec::new();
        for km in self.estate.key_managers() {
            let name = format!("{}/{}", namespace_of(km), km.name_any());
            self.next_sync
                .insert(name.clone(), tokio::time::Instant::now() + resync_after(km));
            match reconcile::reconcile(&local, km, &now).await {
                Ok(Ended::Reconciled(done)) => {
                    self.tell_reconciled(&name, km, &done.prepared);
                    for server in &done.servers {
                        self.log.widen(server.name.len());
                    }
                    live.push((
                        Owner::new(namespace_of(km), km.name_any()),
                        done.live_digest,
                    ));
                    wanted.extend(reconcile::by_key(done.servers));
                    clients.extend(done.clients);
                }
                Ok(Ended::Waiting(why)) | Err(why) if !first => {
                    self.log.line(
                        UP,
                        &format!("KeyManager {name}: {why}; its servers are left as they are"),
                    );
                    failed.insert(name.clone());
                    kept.extend(
                        self.supervisor
                            .servers()
                            .into_iter()
                            .filter(|(s, _)| format!("{}/{}", s.namespace, s.key_manager) == name)
                            .map(|(s, _)| s.key),
                    );
                }
                Ok(Ended::Waiting(why)) | Err(why) => {
                    return Err(format!("KeyManager {name}: {why}"));
                }
            }
        }
        let prepared = shadows::prepare_all(&local, &failed, first).await?;
        for line in &prepared.lines {
            self.say(line);
        }
        for server in prepared.servers {
            self.log.widen(server.name.len());
            wanted.insert(server.key.clone(), server);
        }
        kept.extend(prepared.kept);
        let bundle = self.ca_bundle().await?;
        shadowkeep_server::durable::write_atomically(
            self.layout.root(),
            "ca.pem",
            bundle.as_bytes(),
        )
        .map_err(|e| format!("failed to write {}: {e}", self.layout.ca_bundle().display()))?;
        self.clients = clients;
        let servers: Vec<ServerSpec> = wanted.values().cloned().collect();
        self.apply(wanted, &kept).await;
        self.push_configuration(&live, &servers).await;
        Ok(())
    }

    /// Brings every replica and active shadow of the KeyManagers in `live` (each with the
    /// digest of its drive table) to its configuration file without a restart, through
    /// the control core's push: the files are written already and the servers re-read
    /// them, but a push applies them now.
    async fn push_configuration(&self, live: &[(Owner, String)], servers: &[ServerSpec]) {
        let state = self.layout.state();
        for (owner, digest) in live {
            let connector = match certificates::connector(&state, owner).await {
                Ok(Some(connector)) => connector,
                Ok(None) => continue,
                Err(e) => {
                    self.say(&format!("KeyManager {owner}: {e}"));
                    continue;
                }
            };
            let active = |name: &str| {
                self.estate.shadows().iter().any(|s| {
                    namespace_of(s) == owner.namespace
                        && s.name_any() == name
                        && s.spec.state == DesiredShadowState::Active
                })
            };
            let targets: Vec<Target> = servers
                .iter()
                .filter(|s| s.namespace == owner.namespace && s.key_manager == owner.name)
                .filter_map(|s| {
                    let server = ReplicaAddress {
                        replica: s.key.clone(),
                        address: s.admin.to_string(),
                        server_name: s.admin.ip().to_string(),
                    };
                    match s.role {
                        Role::Replica => Some(Target::Replica {
                            server,
                            file: std::fs::read(&s.config).ok()?,
                        }),
                        Role::Shadow => active(&s.name).then_some(Target::Shadow { server }),
                    }
                })
                .collect();
            let outcomes = configuration::apply(&targets, &connector, digest).await;
            self.record_applied(&state, owner, &outcomes).await;
            for outcome in outcomes {
                match outcome.result {
                    Ok(Brought::Pushed) => self.say(&format!(
                        "{}: drive table applied without a restart",
                        outcome.server
                    )),
                    Ok(Brought::AlreadyInForce) => {}
                    Err(e) => self.say(&format!(
                        "{}: failed to apply the configuration now ({e}); it re-reads its file",
                        outcome.server
                    )),
                }
            }
        }
    }

    /// Records `ConfigurationApplied` in `owner`'s status, as the operator does in the
    /// KeyManager's; the reconcile that wrote the rest keeps it.
    async fn record_applied(
        &self,
        state: &crate::core::state::dir::DataDir,
        owner: &Owner,
        outcomes: &[configuration::Outcome],
    ) {
        let Ok(Some(mut status)) = state.read_status(owner).await else {
            return;
        };
        let now = Time(Timestamp::now());
        let condition = configuration::applied_condition(outcomes, None, &now);
        let conditions = crate::core::conditions::merge(&status.conditions, vec![condition]);
        if conditions != status.conditions {
            status.conditions = conditions;
            if let Err(e) = state.write_status(owner, &status).await {
                self.say(&format!(
                    "KeyManager {owner}: failed to write its status: {e}"
                ));
            }
        }
    }

    /// Every declared server's address: kept from earlier runs, new ones assigned.
    fn assign_addresses(&self) -> Result<Addresses, String> {
        let mut addresses =
            Addresses::load(&self.layout.addresses_file(), self.base).map_err(|e| e.to_string())?;
        addresses
            .assign(
                replica_keys(&self.estate)
                    .iter()
                    .chain(shadow_keys(&self.estate).iter())
                    .map(String::as_str),
            )
            .map_err(|e| e.to_string())?;
        addresses
            .save(&self.layout.addresses_file())
            .map_err(|e| e.to_string())?;
        Ok(addresses)
    }

    /// Every declared KeyManager's CA certificate, for clients to trust.
    async fn ca_bundle(&self) -> Result<String, String> {
        let state = self.layout.state();
        let mut bundle = String::new();
        for km in self.estate.key_managers() {
            let owner = Owner::new(namespace_of(km), km.name_any());
            if let Some(ca) = state
                .read(&owner, Item::Ca)
                .await
                .map_err(|e| e.to_string())?
            {
                bundle.push_str(&String::from_utf8_lossy(ca.get("ca.crt")));
            }
        }
        Ok(bundle)
    }

    /// Starts new servers, restarts changed ones one at a time (each waited for, so that a
    /// KeyManager never loses every replica at once), stops those no longer declared.
    async fn apply(&mut self, wanted: BTreeMap<String, ServerSpec>, kept: &BTreeSet<String>) {
        let running: Vec<String> = self
            .supervisor
            .servers()
            .into_iter()
            .map(|(s, _)| s.key)
            .collect();
        for key in running {
            if !wanted.contains_key(&key) && !kept.contains(&key) {
                self.say(&format!("stopping {key}: no longer declared"));
                self.supervisor.stop(&key).await;
            }
        }
        let mut started = Vec::new();
        for (key, spec) in wanted {
            match self.supervisor.spec(&key) {
                None => {
                    self.supervisor.start(spec).await;
                    started.push(key);
                }
                Some(old) if *old != spec => {
                    self.say(&format!("restarting {key}: its configuration changed"));
                    self.supervisor.start(spec).await;
                    if !self.supervisor.wait_ready(&key, READY_LIMIT).await {
                        self.say(&format!(
                            "{key} does not listen after {} s",
                            READY_LIMIT.as_secs()
                        ));
                    }
                }
                Some(_) => {}
            }
        }
        for key in started {
            if !self.supervisor.wait_ready(&key, READY_LIMIT).await {
                self.say(&format!(
                    "{key} does not listen after {} s",
                    READY_LIMIT.as_secs()
                ));
            }
        }
    }

    /// The estate as it runs.
    fn estate_file(&self, running: bool) -> EstateFile {
        EstateFile {
            ca: self.layout.ca_bundle(),
            clients: self.clients.clone(),
            servers: self
                .supervisor
                .servers()
                .into_iter()
                .map(|(spec, status)| estate_file::Server {
                    name: spec.name,
                    namespace: spec.namespace,
                    key_manager: spec.key_manager,
                    role: spec.role.as_str().to_owned(),
                    kmip: spec.kmip.to_string(),
                    admin: spec.admin.to_string(),
                    pid: status.pid.filter(|_| running),
                })
                .collect(),
        }
    }

    /// Writes `estate.json`, and prints it when `print`.
    fn write_estate(&self, print: bool) {
        let file = self.estate_file(
            print
                || self
                    .supervisor
                    .servers()
                    .iter()
                    .any(|(_, s)| s.pid.is_some()),
        );
        if let Err(e) = file.write(&self.layout.estate_file()) {
            self.say(&e);
        }
        if print {
            self.say(&format!(
                "estate written to {}",
                self.layout.estate_file().display()
            ));
            for line in file.describe().lines() {
                self.say(line);
            }
        }
    }

    /// Keeps the estate in step until a signal; 0 when stopped.
    async fn run(&mut self, paths: &[PathBuf], signals: &mut Signals) -> ExitCode {
        let data_dir = self.layout.root().to_path_buf();
        let mut changes = self.supervisor.changes();
        let mut pids = self.pids();
        let mut watch = tokio::time::interval(WATCH_EVERY);
        loop {
            tokio::select! {
                () = signals.next() => break,
                _ = changes.changed() => {
                    let now = self.pids();
                    let all_ready = self.supervisor.servers().iter().all(|(_, s)| s.ready);
                    if now != pids && all_ready {
                        pids = now;
                        self.write_estate(false);
                        self.say("every server listens; estate.json updated");
                    }
                }
                _ = watch.tick() => {
                    if self.follow.is_some() && self.next_git <= tokio::time::Instant::now() {
                        let stopped = tokio::select! {
                            () = self.follow_git() => false,
                            () = signals.next() => true,
                        };
                        if stopped {
                            break;
                        }
                    }
                    let now = fingerprint(paths, &data_dir);
                    let edited = now != self.seen;
                    self.seen = now;
                    let due = self.next_sync.values().any(|at| *at <= tokio::time::Instant::now());
                    if !edited && !due {
                        if self.next_shadows <= tokio::time::Instant::now() {
                            let stopped = tokio::select! {
                                () = self.look_after_shadows() => false,
                                () = signals.next() => true,
                            };
                            if stopped {
                                break;
                            }
                        }
                        continue;
                    }
                    let clients = self.clients.clone();
                    // A reconcile can wait a minute for a restarted server; a signal
                    // meanwhile stops `up` at once rather than after it.
                    let stopped = tokio::select! {
                        () = self.step(paths, edited) => false,
                        () = signals.next() => true,
                    };
                    if stopped {
                        break;
                    }
                    // A periodic reconcile changes the clients too: a held-back drive
                    // whose keys it carried is served now, with a client certificate.
                    if edited || self.clients != clients {
                        pids = self.pids();
                        self.write_estate(false);
                    }
                }
            }
        }
        self.say("stopping every server (a second Ctrl-C kills them)");
        self.supervisor.stop_all(signals.next()).await;
        self.say("stopped");
        ExitCode::SUCCESS
    }

    /// Applies an edit of the manifests, or reconciles what is declared when it is due.
    async fn step(&mut self, paths: &[PathBuf], edited: bool) {
        if edited {
            self.manifests_changed(paths).await;
        } else if let Err(e) = self.reconcile_all(false).await {
            self.say(&e);
        }
    }

    /// The shadows' tick: rotation, verifiers, desired state, requested syncs, status.
    async fn look_after_shadows(&mut self) {
        self.next_shadows = tokio::time::Instant::now() + SHADOWS_EVERY;
        let Ok(addresses) = Addresses::load(&self.layout.addresses_file(), self.base) else {
            return;
        };
        let servers = self.supervisor.servers();
        let set = |f: fn(&super::supervise::Status) -> bool| -> BTreeSet<String> {
            servers
                .iter()
                .filter(|(_, s)| f(s))
                .map(|(spec, _)| spec.key.clone())
                .collect()
        };
        let (running, ready) = (set(|s| s.pid.is_some()), set(|s| s.ready));
        let local = Local {
            layout: &self.layout,
            estate: &self.estate,
            addresses: &addresses,
            running: &running,
            ready: &ready,
            targets: &self.targets,
        };
        for line in shadows::tick(&local).await {
            self.log.line(UP, &line);
        }
    }

    /// One step of following the branch: what it applies lands in the estate directory,
    /// which the watch then reads like any edit.
    async fn follow_git(&mut self) {
        let Some((dirs, follow)) = &self.follow else {
            return;
        };
        self.next_git = tokio::time::Instant::now() + follow.interval;
        for line in git::step(dirs, follow).await {
            self.say(&line);
        }
    }

    fn pids(&self) -> Vec<Option<u32>> {
        self.supervisor
            .servers()
            .into_iter()
            .map(|(_, s)| s.pid)
            .collect()
    }

    /// An edit of the manifests, applied as `kubectl apply` would be: validated first, and
    /// reconciled only when valid.
    async fn manifests_changed(&mut self, paths: &[PathBuf]) {
        let read = read(paths, self.layout.root());
        self.say("the manifests changed");
        for line in &read.lines {
            self.say(line);
        }
        let Some(estate) = read.estate else {
            self.say("not applied: the running estate is left as it was");
            return;
        };
        self.estate = estate;
        if let Err(e) = self.reconcile_all(false).await {
            self.say(&e);
        }
    }
}

/// The default data directory: `.shadowkeep` in the working directory.
pub fn default_data_dir() -> PathBuf {
    Path::new(".shadowkeep").to_path_buf()
}
