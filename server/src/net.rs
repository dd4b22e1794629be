//! Connections: TLS handshake, message framing, timeouts, and a shutdown that lets every
//! request in flight finish.
//!
//! Both listeners (KMIP and the admin API) bound their connections with `Slots`: a
//! connection that has not authenticated holds its slot only for the handshake timeout,
//! and can lose it sooner to a newer connection, so connections that never authenticate
//! cannot lock out clients that do. Both accept through `accept`, which backs off rather
//! than spins when accepting fails (out of file descriptors, say).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use shadowkeep_api::keystore::Kek;
use shadowkeep_api::server_config::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::auth::{DriveTable, Verdict};
use crate::kmip::enums::result_reason;
use crate::kmip::ops::Kmip;
use crate::kmip::{self, KmipError};
use crate::listener::{SHUTDOWN_GRACE, Slot, Slots, accept};
use crate::live::LiveConfig;
use crate::metrics::Metrics;
use crate::replication::{Replication, ReplicationError};
use crate::shadow::Access;
use crate::shadow::push::ShadowPush;
use crate::shadow::registry::Registry;
use crate::shadow::verifiers::VerifiersFile;
use crate::store::{Store, StoreError};
use crate::tls::{self, ClientAuth, TlsError};
use crate::ttlv::{self, Item};

/// Why the server could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The KEK file is missing or not a KEK.
    #[error("failed to load the KEK from {path}: {reason}")]
    Kek {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The keystore could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Replication could not be set up.
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    /// The licence refused the start.
    #[error(transparent)]
    Licence(#[from] crate::shadow::LicenceError),
    /// The shadow verifiers file refused the start.
    #[error(transparent)]
    Verifiers(#[from] crate::shadow::verifiers::VerifiersFileError),
    /// The shadow could not start.
    #[error(transparent)]
    Shadow(#[from] crate::shadow::runner::ShadowError),
    /// The instance id could not be read or made.
    #[error("{0}")]
    Instance(String),
    /// A listener could not be opened.
    #[error("failed to listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// A configured server, ready to serve.
pub struct Server {
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    admin: Option<(std::net::SocketAddr, TlsAcceptor, AdminState)>,
    keystore_file: Option<std::path::PathBuf>,
    /// To check that the keystore file's records open before they are stored.
    kek: Kek,
    cancel: CancellationToken,
    /// A shadow's loop, started by [`Server::serve`] once the listeners' ports are known.
    runner: Option<crate::shadow::runner::Runner>,
    /// A licensed replica's verifiers file, watched by [`Server::serve`].
    verifiers: Option<(VerifiersFile, Arc<Registry>)>,
    /// The configuration in force, and what can change of it while the server runs.
    live: Arc<LiveConfig>,
    /// The configuration file to watch, and the bytes the server started with.
    config_file: Option<(std::path::PathBuf, Vec<u8>)>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Shared {
    kmip: Kmip,
    /// The drive table: the configured one on a replica, the mirrored one on a shadow.
    drives: Arc<std::sync::RwLock<Arc<DriveTable>>>,
    /// Set on a shadow: whether KMIP is served now, and read-only.
    shadow: Option<Arc<crate::shadow::runner::ShadowHandle>>,
    idle: Duration,
    handshake: Duration,
    slots: Arc<Slots>,
    metrics: Arc<Metrics>,
}

impl Server {
    /// Loads the KEK, opens the keystore, sets up TLS and starts replication with the
    /// peers. Call it within a Tokio runtime.
    pub fn new(config: &ServerConfig) -> Result<Self, ServerError> {
        let licensed = crate::shadow::load(config)?;
        let (registry, verifiers) = registry_for(config, licensed.as_ref())?;
        let kek = load_kek(config)?;
        let instance_id =
            crate::instance::load_or_create(&config.data_dir).map_err(ServerError::Instance)?;
        let store = Store::open(&config.data_dir)?;
        let acceptor = TlsAcceptor::from(tls::server_config(&config.tls, ClientAuth::Required)?);
        let is_shadow = config.shadow.is_some();
        let peers = peer_names(config);
        let metrics = Metrics::new(&peers);
        let cancel = CancellationToken::new();
        let (shadow, runner) = start_shadow(
            config,
            licensed.as_ref(),
            instance_id,
            &store,
            &kek,
            &metrics,
        )?
        .unzip();
        let drives = drive_table(config, shadow.as_ref());
        let live = Arc::new(LiveConfig::new(config, &drives, registry.as_ref()));
        let shadow_push = shadow_push_for(config, registry.as_ref(), &metrics)?;
        let (replication, admin) = match &config.replication {
            Some(r) => {
                let replication = if is_shadow {
                    None
                } else {
                    Some(start_replication(
                        config,
                        &store,
                        &kek,
                        &metrics,
                        &cancel,
                        instance_id,
                    )?)
                };
                let state = AdminState {
                    store: store.clone(),
                    kek: kek.clone(),
                    metrics: Arc::clone(&metrics),
                    allowed: Arc::new(r.allowed_identities.iter().cloned().collect()),
                    ready: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                    handshake: Duration::from_secs(config.kmip.handshake_timeout_secs),
                    idle: Duration::from_secs(config.kmip.idle_timeout_secs),
                    server_id: config.server_id.clone(),
                    instance_id,
                    registry: registry.clone(),
                    peers_seen: Arc::default(),
                    shadow: shadow.clone(),
                    live: Arc::clone(&live),
                };
                let admin_tls =
                    TlsAcceptor::from(tls::server_config(&config.tls, ClientAuth::Optional)?);
                (replication, Some((r.listen, admin_tls, state)))
            }
            None => (None, None),
        };
        log_opened(
            config,
            licensed.is_some(),
            instance_id,
            &store,
            &kek,
            peers.len(),
        );
        Ok(Self {
            shared: Arc::new(Shared {
                slots: Slots::new(
                    "kmip",
                    config.kmip.max_connections,
                    config.kmip.handshakes(),
                    Arc::clone(&metrics),
                ),
                kmip: Kmip::new(
                    store,
                    kek.clone(),
                    config.server_id.clone(),
                    replication,
                    Arc::clone(&metrics),
                )
                .with_shadows(shadow_push),
                drives,
                shadow,
                idle: Duration::from_secs(config.kmip.idle_timeout_secs),
                handshake: Duration::from_secs(config.kmip.handshake_timeout_secs),
                metrics,
            }),
            acceptor,
            admin,
            keystore_file: config.keystore_file.clone(),
            kek,
            cancel,
            runner,
            verifiers: verifiers.zip(registry),
            live,
            config_file: None,
        })
    }

    /// Watches `path`, the configuration file the server was started from with content
    /// `started`, while it serves: a change of its live part is applied without a restart
    /// (`crate::live`).
    #[must_use]
    pub fn with_config_file(mut self, path: std::path::PathBuf, started: Vec<u8>) -> Self {
        self.config_file = Some((path, started));
        self
    }

    /// The configuration in force, as `GET /v1/state` reports it.
    pub fn configuration(&self) -> shadowkeep_api::server_config::ConfigurationReport {
        self.live.report()
    }

    /// Binds the admin API's listener, if replication is configured, and returns its address.
    /// Bound to one address, the server also calls other servers from it.
    pub async fn bind_admin(
        &self,
    ) -> Result<Option<(TcpListener, std::net::SocketAddr)>, ServerError> {
        let Some((addr, ..)) = &self.admin else {
            return Ok(None);
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Listen {
                addr: addr.to_string(),
                source,
            })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServerError::Listen {
                addr: addr.to_string(),
                source,
            })?;
        if !local.ip().is_unspecified() {
            crate::https::call_from(local.ip());
        }
        Ok(Some((listener, local)))
    }

    /// The keystore served.
    pub fn store(&self) -> &Store {
        self.shared.kmip.store()
    }

    /// Serves KMIP on `listener` (and the admin API on `admin`, from [`Server::bind_admin`])
    /// until `shutdown` completes, then lets requests in flight finish (up to 30 seconds)
    /// and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        admin: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        let cancel = self.cancel.clone();
        let tracker = TaskTracker::new();
        if let Some(path) = &self.keystore_file {
            crate::import::merge_file(path, self.store(), &self.kek).await;
            tracker.spawn(crate::import::watch(
                path.clone(),
                self.store().clone(),
                self.kek.clone(),
                cancel.clone(),
            ));
        }
        if let Some((path, started)) = self.config_file {
            let live = Arc::clone(&self.live);
            let cancel = cancel.clone();
            tracker.spawn(async move { live.watch(path, &started, cancel).await });
        }
        if let Some((file, registry)) = self.verifiers {
            tracker.spawn(file.watch(registry, Arc::clone(&self.shared.metrics), cancel.clone()));
        }
        if let Some(runner) = self.runner {
            let ports = crate::shadow::runner::Ports {
                admin: admin
                    .as_ref()
                    .and_then(|l| l.local_addr().ok())
                    .map_or(0, |a| a.port()),
                kmip: listener.local_addr().map_or(0, |a| a.port()),
            };
            tracker.spawn(runner.run(ports, cancel.clone()));
        }
        if let (Some(listener), Some((_, acceptor, state))) = (admin, &self.admin) {
            state
                .ready
                .store(true, std::sync::atomic::Ordering::Release);
            tracker.spawn(admin::serve(
                listener,
                acceptor.clone(),
                state.clone(),
                cancel.clone(),
            ));
        }
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = accept(&listener, "kmip", &self.shared.metrics) => accepted,
            };
            // Past the connection limit, with every slot authenticated, this waits and new
            // clients wait in the listen queue.
            let slot = tokio::select! {
                () = &mut shutdown => break,
                slot = self.shared.slots.admit() => match slot {
                    Some(slot) => slot,
                    None => break,
                },
            };
            let shared = Arc::clone(&self.shared);
            let acceptor = self.acceptor.clone();
            let cancel = cancel.clone();
            tracker.spawn(async move {
                connection(stream, peer.to_string(), acceptor, slot, &shared, &cancel).await;
            });
        }
        tracing::info!("shutting down: no new connections; finishing requests in flight");
        cancel.cancel();
        tracker.close();
        if timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
            tracing::warn!(
                "requests still running after the shutdown grace period; stopping anyway"
            );
        }
        Ok(())
    }
}

/// A replica's replication with its peers.
fn start_replication(
    config: &ServerConfig,
    store: &Store,
    kek: &Kek,
    metrics: &Arc<Metrics>,
    cancel: &CancellationToken,
    instance_id: uuid::Uuid,
) -> Result<Arc<Replication>, ServerError> {
    let Some(r) = &config.replication else {
        return Err(ReplicationError::new("replication is not configured").into());
    };
    Ok(Replication::start(
        r,
        &config.tls.client_ca,
        store.clone(),
        kek.clone(),
        Arc::clone(metrics),
        cancel.clone(),
        &crate::replication::PeerIdentity {
            name: crate::replication::replica_name(),
            instance_id,
        },
    )?)
}

/// Says what the server opened.
fn log_opened(
    config: &ServerConfig,
    licensed: bool,
    instance_id: uuid::Uuid,
    store: &Store,
    kek: &Kek,
    peers: usize,
) {
    tracing::info!(
        server_id = %config.server_id,
        role = if config.shadow.is_some() { "shadow" } else { "replica" },
        licensed,
        instance_id = %instance_id,
        keys = store.read(shadowkeep_api::keystore::Keystore::len),
        kek = kek.fingerprint(),
        peers,
        "keystore opened"
    );
}

/// A licensed replica's register of shadows: it judges their registrations by the licence
/// key, against the configured verifiers and those of the verifiers file (returned to be
/// watched). Unlicensed replicas and shadows have none. Called before anything is opened, like
/// the licence's check: a start refused for the file changes nothing.
fn registry_for(
    config: &ServerConfig,
    licensed: Option<&crate::shadow::Licensed>,
) -> Result<(Option<Arc<Registry>>, Option<VerifiersFile>), ServerError> {
    let (Some(licensed), Some(r), None) = (licensed, &config.replication, &config.shadow) else {
        return Ok((None, None));
    };
    let (file, accepted) = match &r.shadow_verifiers_file {
        Some(path) => {
            let (file, accepted) = VerifiersFile::load(path, &r.shadow_verifiers)?;
            (Some(file), accepted)
        }
        None => (None, r.shadow_verifiers.clone()),
    };
    let registry = Arc::new(Registry::new(
        &config.server_id,
        licensed.verifier,
        accepted,
        config.drives.clone(),
    ));
    Ok((Some(registry), file))
}

/// A licensed replica's push of new keys to its shadows, through its peer certificate.
fn shadow_push_for(
    config: &ServerConfig,
    registry: Option<&Arc<Registry>>,
    metrics: &Arc<Metrics>,
) -> Result<Option<Arc<ShadowPush>>, ServerError> {
    let (Some(registry), Some(r)) = (registry, &config.replication) else {
        return Ok(None);
    };
    let connector = crate::https::connector(&crate::https::ClientFiles {
        ca: config.tls.client_ca.clone(),
        cert: Some(r.client_cert.clone()),
        key: Some(r.client_key.clone()),
    })
    .map_err(|e| ReplicationError::new(e.to_string()))?;
    Ok(Some(Arc::new(ShadowPush::new(
        Arc::clone(registry),
        connector,
        r.shadow_acknowledgements,
        Duration::from_millis(r.ack_timeout_ms),
        Arc::clone(metrics),
    ))))
}

/// The drive table KMIP applies: the configured one on a replica, the one a shadow mirrors
/// from its replicas.
fn drive_table(
    config: &ServerConfig,
    shadow: Option<&Arc<crate::shadow::runner::ShadowHandle>>,
) -> Arc<std::sync::RwLock<Arc<DriveTable>>> {
    shadow.map_or_else(
        || {
            Arc::new(std::sync::RwLock::new(Arc::new(DriveTable::new(
                &config.drives,
            ))))
        },
        |h| h.drives(),
    )
}

/// The names of the peers this replica pushes to; none on a shadow.
fn peer_names(config: &ServerConfig) -> Vec<String> {
    if config.shadow.is_some() {
        return Vec::new();
    }
    config
        .replication
        .iter()
        .flat_map(|r| {
            crate::replication::peers_of(r)
                .into_iter()
                .map(|p| p.name.clone())
        })
        .collect()
}

fn load_kek(config: &ServerConfig) -> Result<Kek, ServerError> {
    let kek_error = |reason: String| ServerError::Kek {
        path: config.kek_file.display().to_string(),
        reason,
    };
    let raw = zeroize::Zeroizing::new(
        std::fs::read(&config.kek_file).map_err(|e| kek_error(e.to_string()))?,
    );
    Kek::from_bytes(&raw).map_err(|e| kek_error(e.to_string()))
}

/// On a shadow, its handle and its (not yet started) loop.
fn start_shadow(
    config: &ServerConfig,
    licensed: Option<&crate::shadow::Licensed>,
    instance_id: uuid::Uuid,
    store: &Store,
    kek: &Kek,
    metrics: &Arc<Metrics>,
) -> Result<
    Option<(
        Arc<crate::shadow::runner::ShadowHandle>,
        crate::shadow::runner::Runner,
    )>,
    ServerError,
> {
    let (Some(shadow), Some(r), Some(licensed), Some(licence)) = (
        &config.shadow,
        &config.replication,
        licensed,
        &config.licence,
    ) else {
        return Ok(None);
    };
    let connector = crate::https::connector(&crate::https::ClientFiles {
        ca: config.tls.client_ca.clone(),
        cert: Some(r.client_cert.clone()),
        key: Some(r.client_key.clone()),
    })
    .map_err(|e| crate::shadow::runner::ShadowError::new(e.to_string()))?;
    Ok(Some(crate::shadow::runner::prepare(
        crate::shadow::runner::Setup {
            config: shadow,
            licensed: licensed.clone(),
            licence_file: licence.file.clone(),
            dir: config.data_dir.clone(),
            instance_id,
            connector,
            store: store.clone(),
            kek: kek.clone(),
            metrics: Arc::clone(metrics),
        },
    )?))
}

/// Serves KMIP on `listener` with `config` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let server = Server::new(&config)?;
    let admin = server.bind_admin().await?.map(|(listener, _)| listener);
    server.serve(listener, admin, shutdown).await
}

async fn connection(
    stream: TcpStream,
    peer: String,
    acceptor: TlsAcceptor,
    slot: Slot,
    shared: &Shared,
    cancel: &CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let handshake = tokio::select! {
        handshake = timeout(shared.handshake, acceptor.accept(stream)) => handshake,
        () = slot.dropped() => {
            tracing::debug!(peer, "dropped a connection still in its TLS handshake for a newer one");
            return;
        }
        () = cancel.cancelled() => return,
    };
    let mut tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(peer, error = %e, "TLS handshake failed");
            shared.metrics.refused("kmip", "handshake_failed");
            return;
        }
        Err(_) => {
            tracing::info!(peer, "TLS handshake timed out");
            shared.metrics.refused("kmip", "handshake_timeout");
            return;
        }
    };
    // The client certificate is required, so a completed handshake is an authenticated one.
    slot.authenticated();
    let identities = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(tls::identities)
        .unwrap_or_default();
    loop {
        let mut header = [0u8; 8];
        // A message already arriving is read and answered even during shutdown; only a
        // connection waiting for its next message is closed.
        let read = tokio::select! {
            biased;
            read = timeout(shared.idle, tls.read_exact(&mut header)) => read,
            () = cancel.cancelled() => break,
        };
        match read {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => break,
            Err(_) => {
                tracing::debug!(peer, "closing idle connection");
                break;
            }
        }
        let (mut reply, keep_open) = match read_message(&mut tls, header, shared.idle).await {
            Ok(mut message) => {
                let reply = respond(&message, &identities, &peer, shared).await;
                // A Register carries key material in.
                if let Ok(item) = message.as_mut() {
                    ttlv::wipe(item);
                }
                (reply, true)
            }
            Err(Framing::Reply(error)) => {
                tracing::info!(peer, error = %error, "malformed message");
                (
                    kmip::error_response(Timestamp::now().as_second(), error),
                    false,
                )
            }
            Err(Framing::Gone) => break,
        };
        // A Get carries key material out: neither copy outlives the write.
        let bytes = zeroize::Zeroizing::new(ttlv::encode(&reply));
        ttlv::wipe(&mut reply);
        let written = timeout(shared.idle, async {
            tls.write_all(&bytes).await?;
            tls.flush().await
        })
        .await;
        if !matches!(written, Ok(Ok(()))) || !keep_open {
            break;
        }
    }
    let _ = timeout(Duration::from_secs(1), tls.shutdown()).await;
}

enum Framing {
    /// Answer with this error, then close: the stream can no longer be trusted.
    Reply(KmipError),
    /// The client went away or stalled.
    Gone,
}

/// Reads the rest of a message whose 8-byte header was read. A message that is well framed
/// but not valid TTLV is answered without closing; bad framing is answered and closed.
async fn read_message<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    header: [u8; 8],
    idle: Duration,
) -> Result<Result<Item, KmipError>, Framing> {
    let invalid = |m: String| Framing::Reply(KmipError::new(result_reason::INVALID_MESSAGE, m));
    let (tag, item_type, len) = ttlv::read_header(&header).map_err(|e| invalid(e.to_string()))?;
    if tag != kmip::tag::REQUEST_MESSAGE || item_type != 0x01 {
        return Err(invalid(format!(
            "expected a Request Message structure (tag 0x420078, type 0x01), got tag {tag} type {item_type:#04x}"
        )));
    }
    let len = usize::try_from(len).map_err(|_| invalid("message too large".to_owned()))?;
    // A Register carries key material in: the raw frame is wiped once decoded.
    let mut bytes = zeroize::Zeroizing::new(vec![0u8; 8 + len]);
    bytes[..8].copy_from_slice(&header);
    match timeout(idle, stream.read_exact(&mut bytes[8..])).await {
        Ok(Ok(_)) => {}
        _ => return Err(Framing::Gone),
    }
    Ok(ttlv::decode(&bytes)
        .map_err(|e| KmipError::new(result_reason::INVALID_MESSAGE, e.to_string())))
}

async fn respond(
    message: &Result<Item, KmipError>,
    identities: &[String],
    peer: &str,
    shared: &Shared,
) -> Item {
    let now = Timestamp::now().as_second();
    let request = match message
        .as_ref()
        .map_err(Clone::clone)
        .and_then(kmip::parse_request)
    {
        Ok(request) => request,
        Err(error) => {
            tracing::info!(peer, error = %error, "invalid request");
            return kmip::error_response(now, error);
        }
    };
    let access = shared
        .shadow
        .as_ref()
        .map_or(Access::Full, |shadow| shadow.access());
    let drives = Arc::clone(
        &shared
            .drives
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let verdict = drives.judge(identities, request.device_serial.as_deref());
    if verdict == Verdict::Refused {
        tracing::warn!(
            peer,
            identities = ?identities,
            device_serial = request.device_serial.as_deref().unwrap_or(""),
            "refused a client that is not in the drive table"
        );
    }
    let outcomes = shared.kmip.handle(&request, &verdict, &access).await;
    for outcome in &outcomes {
        let op = outcome.operation.map_or("?", kmip::operation_name);
        match &outcome.result {
            Ok(_) => tracing::debug!(peer, op, "ok"),
            Err(e) => {
                tracing::info!(peer, op, reason = e.label(), message = %e.message, "operation failed");
            }
        }
    }
    let version = if kmip::supported(request.version) {
        request.version
    } else {
        kmip::VERSIONS[0]
    };
    kmip::response(version, now, outcomes)
}
