//! The local key servers as child processes, kept running as a kubelet keeps pods: each
//! server is `shadowkeep server --config FILE` (this binary, re-executed), its log lines
//! printed with its name in front, restarted with backoff when it ends unasked, stopped
//! gracefully on request.
//!
//! No server outlives `up`, however `up` ends: each holds the reading end of a pipe as its
//! standard input and stops when it closes, which the kernel does when `up` exits or is
//! killed. Servers run in their own process group, so a Ctrl-C in the terminal reaches
//! `up` alone, which then stops them in order.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a server may take to stop after its standard input closed before it is
/// killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// The first wait before a restart; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A server that ran this long before it ended starts again after [`FIRST_BACKOFF`].
const STEADY: Duration = Duration::from_mins(1);

/// What a server is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// A replica of a KeyManager.
    Replica,
    /// A Shadow.
    Shadow,
}

impl Role {
    /// `replica` or `shadow`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Replica => "replica",
            Self::Shadow => "shadow",
        }
    }
}

/// One server to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSpec {
    /// `namespace/name`, unique in the estate.
    pub key: String,
    /// The replica's or Shadow's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The KeyManager it serves.
    pub key_manager: String,
    /// Replica or shadow.
    pub role: Role,
    /// Its configuration file.
    pub config: PathBuf,
    /// Where it answers KMIP.
    pub kmip: SocketAddr,
    /// Where its admin API answers.
    pub admin: SocketAddr,
    /// A digest of what it runs with (configuration, certificate): a change restarts it.
    pub digest: String,
}

/// What is known of a server now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Its process, while one runs.
    pub pid: Option<u32>,
    /// Whether it listens (KMIP and admin).
    pub ready: bool,
    /// How often it was started again after ending unasked.
    pub restarts: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Control {
    Run,
    Stop,
    Kill,
}

/// Prints the servers' lines, and `up`'s own, each after a name.
#[derive(Debug)]
pub struct Log {
    width: Mutex<usize>,
}

impl Log {
    /// A log whose names are padded to at least `width`.
    pub fn new(width: usize) -> Self {
        Self {
            width: Mutex::new(width),
        }
    }

    /// Pads names to at least `width` from now on.
    pub fn widen(&self, width: usize) {
        let mut w = self
            .width
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *w = (*w).max(width);
    }

    /// Prints `line` after `name`. An unwritable stdout loses the line and nothing else.
    pub fn line(&self, name: &str, line: &str) {
        use std::io::Write as _;
        let width = {
            let mut w = self
                .width
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *w = (*w).max(name.len());
            *w
        };
        let _ = writeln!(std::io::stdout().lock(), "{name:<width$} | {line}");
    }
}

struct Keeper {
    spec: ServerSpec,
    control: watch::Sender<Control>,
    task: JoinHandle<()>,
}

/// The running servers.
pub struct Supervisor {
    exe: PathBuf,
    log: Arc<Log>,
    keepers: BTreeMap<String, Keeper>,
    statuses: Arc<Mutex<BTreeMap<String, Status>>>,
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("servers", &self.keepers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// A supervisor starting `exe server` for each server.
    pub fn new(exe: PathBuf, log: Arc<Log>) -> Self {
        Self {
            exe,
            log,
            keepers: BTreeMap::new(),
            statuses: Arc::new(Mutex::new(BTreeMap::new())),
            changed: watch::channel(0).0,
        }
    }

    /// Changes whenever a server starts, becomes ready or ends.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Every server's spec and status.
    pub fn servers(&self) -> Vec<(ServerSpec, Status)> {
        let statuses = self
            .statuses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.keepers
            .values()
            .map(|k| {
                (
                    k.spec.clone(),
                    statuses.get(&k.spec.key).cloned().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// The spec a server runs with, if it runs.
    pub fn spec(&self, key: &str) -> Option<&ServerSpec> {
        self.keepers.get(key).map(|k| &k.spec)
    }

    /// Starts keeping `spec` running (a server of that key already kept is stopped first).
    pub async fn start(&mut self, spec: ServerSpec) {
        self.stop(&spec.key).await;
        let (control, watched) = watch::channel(Control::Run);
        let keeping = Keeping {
            exe: self.exe.clone(),
            spec: spec.clone(),
            log: self.log.clone(),
            statuses: self.statuses.clone(),
            changed: self.changed.clone(),
        };
        let task = tokio::spawn(keeping.run(watched));
        self.keepers.insert(
            spec.key.clone(),
            Keeper {
                spec,
                control,
                task,
            },
        );
    }

    /// Stops server `key` gracefully and waits until it has.
    pub async fn stop(&mut self, key: &str) {
        if let Some(keeper) = self.keepers.remove(key) {
            let _ = keeper.control.send(Control::Stop);
            let _ = keeper.task.await;
            self.statuses
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(key);
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Stops every server gracefully, or kills them all when `force` resolves first.
    pub async fn stop_all(&mut self, force: impl std::future::Future<Output = ()>) {
        let keepers: Vec<Keeper> = std::mem::take(&mut self.keepers).into_values().collect();
        for k in &keepers {
            let _ = k.control.send(Control::Stop);
        }
        let controls: Vec<watch::Sender<Control>> =
            keepers.iter().map(|k| k.control.clone()).collect();
        let all = futures::future::join_all(keepers.into_iter().map(|k| k.task));
        tokio::pin!(all);
        tokio::select! {
            _ = &mut all => {}
            () = force => {
                for c in &controls {
                    let _ = c.send(Control::Kill);
                }
                all.await;
            }
        }
    }

    /// Waits until server `key` is ready, for at most `limit`; whether it is.
    pub async fn wait_ready(&self, key: &str, limit: Duration) -> bool {
        let mut changes = self.changes();
        let ready = || {
            self.statuses
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(key)
                .is_some_and(|s| s.ready)
        };
        tokio::time::timeout(limit, async {
            while !ready() {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
            && ready()
    }
}

/// One server's keeper: starts it, restarts it, stops it.
struct Keeping {
    exe: PathBuf,
    spec: ServerSpec,
    log: Arc<Log>,
    statuses: Arc<Mutex<BTreeMap<String, Status>>>,
    changed: watch::Sender<u64>,
}

impl Keeping {
    fn update(&self, f: impl FnOnce(&mut Status)) {
        {
            let mut statuses = self
                .statuses
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(statuses.entry(self.spec.key.clone()).or_default());
        }
        self.changed.send_modify(|n| *n += 1);
    }

    fn spawn(&self) -> std::io::Result<Child> {
        let mut command = Command::new(&self.exe);
        command
            .arg("server")
            .arg("--config")
            .arg(&self.spec.config)
            .arg("--exit-with-stdin")
            .arg("--log-format")
            .arg("text")
            .env("SHADOWKEEP_REPLICA_NAME", &self.spec.name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        command.spawn()
    }

    async fn run(self, mut control: watch::Receiver<Control>) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            if *control.borrow() != Control::Run {
                return;
            }
            let started = Instant::now();
            let ended = match self.spawn() {
                Ok(child) => self.watch(child, &mut control).await,
                Err(e) => Some(format!("failed to start: {e}")),
            };
            let Some(why) = ended else { return };
            self.update(|s| {
                s.pid = None;
                s.ready = false;
                s.restarts += 1;
            });
            if started.elapsed() >= STEADY {
                backoff = FIRST_BACKOFF;
            }
            self.log.line(
                &self.spec.name,
                &format!("{why}; starting it again in {} s", backoff.as_secs()),
            );
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = control.changed() => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Runs `child` until it ends (`Some(why)`) or is stopped on request (`None`).
    async fn watch(
        &self,
        mut child: Child,
        control: &mut watch::Receiver<Control>,
    ) -> Option<String> {
        let stdin = child.stdin.take();
        let pid = child.id();
        self.update(|s| {
            s.pid = pid;
            s.ready = false;
        });
        let listening = Arc::new(Mutex::new((false, false)));
        let readers = [
            child
                .stdout
                .take()
                .map(|out| self.forward(out, Some(listening.clone()))),
            child.stderr.take().map(|err| self.forward(err, None)),
        ];
        let outcome = tokio::select! {
            status = child.wait() => Some(match status {
                Ok(status) => format!("ended ({status})"),
                Err(e) => format!("lost: {e}"),
            }),
            () = requested(control) => None,
        };
        if outcome.is_none() {
            // Closing its standard input is the request to stop.
            drop(stdin);
            let forced = *control.borrow() == Control::Kill;
            let stopped = if forced {
                false
            } else {
                tokio::select! {
                    r = tokio::time::timeout(STOP_GRACE, child.wait()) => r.is_ok(),
                    () = killed(control) => false,
                }
            };
            if stopped {
                self.log.line(&self.spec.name, "stopped");
            } else {
                let _ = child.kill().await;
                self.log.line(&self.spec.name, "killed");
            }
        }
        for reader in readers.into_iter().flatten() {
            let _ = reader.await;
        }
        outcome
    }

    /// Prints the lines of `stream` after the server's name; on standard output, notes
    /// when both listeners are up.
    fn forward(
        &self,
        stream: impl AsyncRead + Unpin + Send + 'static,
        listening: Option<Arc<Mutex<(bool, bool)>>>,
    ) -> JoinHandle<()> {
        let log = self.log.clone();
        let name = self.spec.name.clone();
        let statuses = self.statuses.clone();
        let changed = self.changed.clone();
        let key = self.spec.key.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log.line(&name, &line);
                let Some(seen) = &listening else { continue };
                let now_ready = {
                    let mut seen = seen
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let before = seen.0 && seen.1;
                    seen.0 |= line.starts_with("kmip listening on ");
                    seen.1 |= line.starts_with("admin listening on ");
                    !before && seen.0 && seen.1
                };
                if now_ready {
                    statuses
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .entry(key.clone())
                        .or_default()
                        .ready = true;
                    changed.send_modify(|n| *n += 1);
                }
            }
        })
    }
}

/// Completes when the keeper is asked to stop or kill.
async fn requested(control: &mut watch::Receiver<Control>) {
    while *control.borrow_and_update() == Control::Run {
        if control.changed().await.is_err() {
            return;
        }
    }
}

/// Completes when the keeper is asked to kill.
async fn killed(control: &mut watch::Receiver<Control>) {
    while *control.borrow_and_update() != Control::Kill {
        if control.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
