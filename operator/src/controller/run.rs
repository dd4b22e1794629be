//! `shadowkeep operator`: telemetry, leader election, then the controllers, watching
//! KeyManagers and the objects that refer to them until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use shadowkeep_api::crd::{DriveTable, GitSource, KeyGroup, KeyManager, Shadow};

use super::lease::LeaderLease;
use super::telemetry::{self, Metrics};
use super::{
    Context, Error, drive_moves, error_policy, git_source, key_manager, measured, references,
};

/// The objects of an owned kind, as they change: each change wakes the KeyManager that
/// owns it, and a change someone else made makes the next reconcile apply it again.
fn owned<K>(
    client: &Client,
    ns: Option<&str>,
    config: &watcher::Config,
    ctx: &Arc<Context>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let applied = Arc::clone(&ctx.applied);
    watcher(api::<K>(client, ns), config.clone())
        .default_backoff()
        .inspect(move |event| {
            if let Ok(event) = event {
                applied.observe(event);
            }
        })
        .touched_objects()
}

/// The Lease the operator replicas compete for.
pub const LEASE_NAME: &str = "shadowkeep-operator";

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Watch only this namespace.
    pub namespace: Option<String>,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    pub listen: SocketAddr,
    /// Take the Lease before reconciling.
    pub leader_elect: bool,
    /// Namespace of the Lease (default: `POD_NAMESPACE`).
    pub lease_namespace: Option<String>,
    /// Reconciles run at once, per controller.
    pub concurrency: u16,
    /// Where GitSources fetch their branches.
    pub git_cache: std::path::PathBuf,
}

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No cluster to talk to, or the API refused.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// The telemetry address could not be bound.
    #[error("failed to listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    /// Leader election needs a namespace for its Lease.
    #[error("leader election needs --lease-namespace or the POD_NAMESPACE environment variable")]
    LeaseNamespace,
    /// Another replica took over.
    #[error("lost leadership; stopping so that the new leader reconciles alone")]
    LostLeadership,
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The KeyManager a DriveTable, KeyGroup or Shadow names: a change to it reconciles that
/// KeyManager.
fn owner<K: kube::Resource>(o: &K, name: &str) -> Option<ObjectRef<KeyManager>> {
    Some(ObjectRef::new(name).within(&o.meta().namespace.clone()?))
}

async fn reconcile(km: Arc<KeyManager>, ctx: Arc<Context>) -> Result<Action, Error> {
    measured(
        &ctx,
        km.as_ref(),
        key_manager::reconcile(Arc::clone(&km), Arc::clone(&ctx)),
    )
    .await
}

/// The Shadow controller: each Shadow a shadow server at its site, its password rotated
/// by the core.
fn shadow_controller(
    client: &Client,
    ns: Option<&str>,
    config: &watcher::Config,
    concurrency: u16,
    ctx: Arc<Context>,
) -> impl std::future::Future<Output = ()> {
    Controller::new(api::<Shadow>(client, ns), config.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .owns(api::<StatefulSet>(client, ns), config.clone())
        .shutdown_on_signal()
        .run(reconcile_shadow, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::warn!(error = %e, "shadow reconcile failed");
            }
        })
}

async fn reconcile_shadow(shadow: Arc<Shadow>, ctx: Arc<Context>) -> Result<Action, Error> {
    measured(
        &ctx,
        shadow.as_ref(),
        // Boxed: a Shadow's reconcile is a large future, kept off the stack.
        Box::pin(super::shadow::reconcile(
            Arc::clone(&shadow),
            Arc::clone(&ctx),
        )),
    )
    .await
}

/// The GitSource controller: each GitSource's branch fetched every `spec.interval`, its
/// head planned and applied, or held. Not run when the API server has no GitSource kind.
async fn git_source_controller(
    client: &Client,
    ns: Option<&str>,
    config: &watcher::Config,
    concurrency: u16,
    ctx: Arc<Context>,
) {
    if !git_sources_served(client, ns).await {
        return;
    }
    Controller::new(api::<GitSource>(client, ns), config.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .shutdown_on_signal()
        .run(reconcile_git_source, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::warn!(error = %e, "git source reconcile failed");
            }
        })
        .await;
}

/// Whether the API server serves GitSources: an operator upgraded before its CRDs (Helm
/// does not upgrade them) runs without git sync and says how to turn it on, rather than
/// watching a kind that is not there.
async fn git_sources_served(client: &Client, ns: Option<&str>) -> bool {
    match api::<GitSource>(client, ns)
        .list(&kube::api::ListParams::default().limit(1))
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 404 => {
            tracing::warn!(
                "the GitSource CRD is not installed: git sync is off until it is (kubectl apply -f charts/shadowkeep/crds/) and the operator restarts"
            );
            false
        }
        // Any other answer: the controller's watch retries as it does for every kind.
        _ => true,
    }
}

async fn reconcile_git_source(source: Arc<GitSource>, ctx: Arc<Context>) -> Result<Action, Error> {
    measured(
        &ctx,
        source.as_ref(),
        git_source::reconcile(Arc::clone(&source), Arc::clone(&ctx)),
    )
    .await
}

/// The DriveTable and KeyGroup reconciles, measured like the KeyManager's.
async fn reconcile_referrer<K>(
    object: Arc<PartialObjectMeta<K>>,
    ctx: Arc<Context>,
) -> Result<Action, Error>
where
    K: references::References + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    measured(
        &ctx,
        object.as_ref(),
        references::reconcile(Arc::clone(&object), Arc::clone(&ctx)),
    )
    .await
}

/// Every KeyManager's drive history, watched and listed before the first reconcile: a
/// reconcile that ran on an empty index would take a moved drive for a new one.
async fn watch_drive_histories(
    client: &Client,
    ns: Option<&str>,
    config: &watcher::Config,
) -> Arc<drive_moves::SharedDriveIndex> {
    let index = Arc::new(drive_moves::SharedDriveIndex::default());
    let events = watcher(
        api::<ConfigMap>(client, ns),
        config.clone().labels(super::state::HISTORY_LABEL),
    )
    .default_backoff();
    let follower = Arc::clone(&index);
    tokio::spawn(async move { follower.follow(events).await });
    index.wait_until_ready().await;
    index
}

/// The Lease, taken, when leader election is on.
async fn leader_lease(options: &Options, client: &Client) -> Result<Option<LeaderLease>, RunError> {
    if !options.leader_elect {
        return Ok(None);
    }
    let ns = options
        .lease_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .ok_or(RunError::LeaseNamespace)?;
    let identity = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "shadowkeep-operator".to_owned());
    let lease = LeaderLease::new(client.clone(), &ns, LEASE_NAME, &identity);
    lease.acquire().await?;
    Ok(Some(lease))
}

/// Runs the operator until a signal, or until leadership is lost.
pub async fn run(options: Options) -> Result<(), RunError> {
    // Built together with the dev-dependencies (as tests and benchmarks build it), rustls
    // has both of its providers, cannot pick one, and would panic at the first connection to
    // the API server. An error here means one is already installed, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default().await?;
    let metrics = Metrics::new();
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| RunError::Listen(options.listen, e))?;
    tokio::spawn(telemetry::serve(listener, Arc::clone(&metrics)));

    let lease = leader_lease(&options, &client).await?;
    telemetry::set_ready(&metrics);

    let ns = options.namespace.as_deref();
    // Initial lists come in pages of 100 rather than 500: a page of DriveTables is held
    // whole while it is decoded, and 500 tables of 300 drives is most of the memory budget.
    let config = watcher::Config::default().page_size(100);
    // Unbounded, every KeyManager would be reconciled at once on start, each holding its
    // estate and its own API connection: memory would grow with the estate's size.
    let limits = kube::runtime::controller::Config::default().concurrency(options.concurrency);
    let controller =
        Controller::new(api::<KeyManager>(&client, ns), config.clone()).with_config(limits.clone());
    let drive_index = watch_drive_histories(&client, ns, &config).await;
    let ctx: Arc<Context> = Arc::new(Context {
        client: client.clone(),
        metrics,
        namespace: options.namespace.clone(),
        key_managers: controller.store(),
        drive_index,
        recorder: kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: "shadowkeep-operator".to_owned(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        server_image: std::env::var("SHADOWKEEP_SERVER_IMAGE").ok(),
        backoff: super::Backoff::default(),
        replica_resolver: None,
        applied: Arc::default(),
        shadow_resolver: None,
        rotation_locks: Arc::default(),
        git_cache: options.git_cache.clone(),
    });
    let controller = controller
        .owns_stream(owned::<StatefulSet>(&client, ns, &config, &ctx))
        .owns_stream(owned::<ConfigMap>(&client, ns, &config, &ctx))
        .owns_stream(owned::<Service>(&client, ns, &config, &ctx))
        .owns_stream(owned::<PodDisruptionBudget>(&client, ns, &config, &ctx))
        .watches(api::<DriveTable>(&client, ns), config.clone(), |o| {
            owner(&o, &o.spec.key_manager_ref.name)
        })
        .watches(api::<KeyGroup>(&client, ns), config.clone(), |o| {
            owner(&o, &o.spec.key_manager_ref.name)
        })
        .watches(api::<Shadow>(&client, ns), config.clone(), |o| {
            owner(&o, &o.spec.key_manager_ref.name)
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, Arc::clone(&ctx))
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => {
                    tracing::info!(key_manager = %object.name, namespace = ?object.namespace, "reconciled");
                }
                Err(e) => tracing::warn!(error = %e, "reconcile failed"),
            }
        });
    // DriveTables and KeyGroups whose KeyManager is missing say so.
    let referrers = {
        let ctx = Arc::clone(&ctx);
        let tables = Controller::new(
            api::<PartialObjectMeta<DriveTable>>(&client, ns),
            config.clone(),
        )
        .with_config(limits.clone())
        .shutdown_on_signal()
        .run(reconcile_referrer, error_policy, Arc::clone(&ctx))
        .for_each(|_| async {});
        let groups = Controller::new(
            api::<PartialObjectMeta<KeyGroup>>(&client, ns),
            config.clone(),
        )
        .with_config(limits)
        .shutdown_on_signal()
        .run(reconcile_referrer, error_policy, ctx)
        .for_each(|_| async {});
        futures::future::join(tables, groups)
    };
    let shadows = shadow_controller(&client, ns, &config, options.concurrency, Arc::clone(&ctx));
    let git_sources =
        git_source_controller(&client, ns, &config, options.concurrency, Arc::clone(&ctx));
    let all = futures::future::join4(controller, referrers, shadows, git_sources);
    match lease {
        None => {
            all.await;
            Ok(())
        }
        Some(lease) => tokio::select! {
            _ = all => Ok(()),
            () = lease.hold() => Err(RunError::LostLeadership),
        },
    }
}
