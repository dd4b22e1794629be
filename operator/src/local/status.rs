//! `shadowkeep status [--data-dir DIR] [-o json]`: the KeyManagers and Shadows of a local
//! estate, asked of each running server's admin API with a short timeout. A server that
//! does not answer is `Unreachable` and holds up nothing else.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use shadowkeep_api::crd::BackupTargetStatus;
use shadowkeep_api::keystore::Keystore;
use shadowkeep_api::replica_sync::DigestReply;
use shadowkeep_api::shadow::wire::{ShadowStateReport, StateReport};
use shadowkeep_server::https::http1_connect_as;

use super::certificates;
use super::estate_file::{EstateFile, Server, table};
use super::layout::Layout;
use crate::core::keystore_sync::{ReplicaAddress, digest_of, request};
use crate::core::state::{Item, Owner, State as _};

/// How long one server may take to answer.
pub const ASK_LIMIT: Duration = Duration::from_secs(2);

/// One server, as it answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerStatus {
    /// The replica's or Shadow's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The KeyManager it serves.
    pub key_manager: String,
    /// `replica` or `shadow`.
    pub role: String,
    /// A replica: `Ready` or `Unreachable`. A shadow: its state (`Shadowing`, `Deferring`,
    /// `Serving`, `Inactive`, `Disabled`) or `Unreachable`.
    pub state: String,
    /// Keys it holds, when it answered.
    pub keys: Option<usize>,
    /// Its keystore's digest, when it answered.
    pub digest: Option<String>,
    /// When a shadow last synchronized with its KeyManager; none for a replica.
    pub last_synchronized: Option<String>,
    /// Why it could not be asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One KeyManager.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyManagerStatus {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Replicas run.
    pub replicas: usize,
    /// Replicas that answered.
    pub ready: usize,
    /// Keys in the canonical keystore.
    pub keys: Option<usize>,
    /// Whether every replica answered and holds exactly the canonical keystore.
    pub keystore_in_sync: bool,
    /// The conditions of its last reconcile, as the operator would report them.
    pub conditions: Vec<ConditionSummary>,
    /// What each backup target held at its last reconcile.
    pub backups: Vec<BackupTargetStatus>,
}

/// One condition of a KeyManager's last reconcile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionSummary {
    /// Its type (`Ready`, `KeystoreInSync`, `KeyHistoryAtRisk`, ...).
    #[serde(rename = "type")]
    pub type_: String,
    /// `True` or `False`.
    pub status: String,
    /// Why, in one word.
    pub reason: String,
    /// Why, in a sentence.
    pub message: String,
    /// When it last changed.
    pub last_transition_time: String,
}

impl ConditionSummary {
    /// Whether the condition asks for attention.
    pub fn troubling(&self) -> bool {
        let fine_when_true = matches!(
            self.type_.as_str(),
            "Ready" | "KeystoreInSync" | "KekEscrowed" | "BackupsCurrent"
        );
        let quiet = matches!(self.type_.as_str(), "Progressing");
        !quiet && ((self.status == "True") != fine_when_true)
    }
}

/// The whole answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Every KeyManager.
    pub key_managers: Vec<KeyManagerStatus>,
    /// Every server.
    pub servers: Vec<ServerStatus>,
}

/// What `status` was asked.
#[derive(Clone, Debug)]
pub struct Options {
    /// The data directory of `up`.
    pub data_dir: PathBuf,
    /// JSON instead of tables.
    pub json: bool,
}

/// Runs `status`: 0 when it could read the estate, 1 otherwise.
pub fn run(options: &Options) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shadowkeep status: failed to start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let layout = Layout::new(&options.data_dir);
    let estate = match EstateFile::read(&layout.estate_file()) {
        Ok(estate) => estate,
        Err(e) => {
            eprintln!(
                "shadowkeep status: {e} (is `shadowkeep up` running with --data-dir {}?)",
                options.data_dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let status = runtime.block_on(status(&layout, &estate));
    let text = if options.json {
        match serde_json::to_string_pretty(&status) {
            Ok(json) => json + "\n",
            Err(e) => {
                eprintln!("shadowkeep status: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        describe(&status)
    };
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
    ExitCode::SUCCESS
}

/// Asks every server of `estate`, all at once.
pub async fn status(layout: &Layout, estate: &EstateFile) -> Status {
    let servers = futures::future::join_all(estate.servers.iter().map(|s| ask(layout, s))).await;
    let mut by_key_manager: BTreeMap<(String, String), Vec<&ServerStatus>> = BTreeMap::new();
    for s in servers.iter().filter(|s| s.role == "replica") {
        by_key_manager
            .entry((s.namespace.clone(), s.key_manager.clone()))
            .or_default()
            .push(s);
    }
    let mut key_managers = Vec::new();
    for ((namespace, name), replicas) in by_key_manager {
        let owner = Owner::new(&namespace, &name);
        let canonical = canonical(layout, &owner).await;
        let stored = layout.state().read_status(&owner).await.ok().flatten();
        let backups = stored
            .as_ref()
            .map(|s| s.backups.clone())
            .unwrap_or_default();
        let conditions = stored
            .map(|s| {
                s.conditions
                    .into_iter()
                    .map(|c| ConditionSummary {
                        type_: c.type_,
                        status: c.status,
                        reason: c.reason,
                        message: c.message,
                        last_transition_time: c.last_transition_time.0.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ready = replicas.iter().filter(|r| r.state == "Ready").count();
        key_managers.push(KeyManagerStatus {
            keys: canonical.as_ref().map(|(keys, _)| *keys),
            keystore_in_sync: ready == replicas.len()
                && canonical.as_ref().is_some_and(|(_, digest)| {
                    replicas.iter().all(|r| r.digest.as_deref() == Some(digest))
                }),
            replicas: replicas.len(),
            ready,
            conditions,
            backups,
            name,
            namespace,
        });
    }
    Status {
        key_managers,
        servers,
    }
}

/// One backup target: its newest backup and how old it is, or why it failed.
fn backup_line(b: &BackupTargetStatus) -> String {
    let newest = match (&b.last_backup, &b.last_backup_at) {
        (Some(name), Some(at)) => {
            let age = jiff::Timestamp::now().duration_since(at.0).as_secs().max(0);
            format!(
                "{name} (keystore sha256 {}..., {age}s old{})",
                b.keystore_sha256.as_deref().unwrap_or("?"),
                if b.escrowed {
                    ", KEK escrowed"
                } else {
                    ", KEK not escrowed"
                }
            )
        }
        _ => "no backup yet".to_owned(),
    };
    match &b.error {
        Some(e) => format!("backup target {}: {newest}; failing: {e}", b.name),
        None => format!("backup target {}: {newest}", b.name),
    }
}

/// The canonical keystore's size and digest.
async fn canonical(layout: &Layout, owner: &Owner) -> Option<(usize, String)> {
    let fields = layout.state().read(owner, Item::Keystore).await.ok()??;
    let keystore = Keystore::from_bytes(fields.get("keystore")).ok()?;
    let digest = keystore.digest().ok()?.to_string();
    Some((keystore.len(), digest))
}

async fn ask(layout: &Layout, server: &Server) -> ServerStatus {
    let answer = tokio::time::timeout(ASK_LIMIT, look(layout, server))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", ASK_LIMIT.as_secs())));
    let (state, keys, digest, last_synchronized, error) = match answer {
        Ok((reply, shadow)) => (
            shadow
                .as_ref()
                .map_or_else(|| "Ready".to_owned(), |s| format!("{:?}", s.state)),
            Some(reply.keys),
            Some(reply.digest),
            shadow
                .and_then(|s| s.last_synchronized)
                .map(|t| t.to_string()),
            None,
        ),
        Err(e) => ("Unreachable".to_owned(), None, None, None, Some(e)),
    };
    ServerStatus {
        name: server.name.clone(),
        namespace: server.namespace.clone(),
        key_manager: server.key_manager.clone(),
        role: server.role.clone(),
        state,
        keys,
        digest,
        last_synchronized,
        error,
    }
}

/// Asks a server for its keystore's digest and, a shadow, for its state, presenting its
/// KeyManager's replica certificate (the identity its servers accept from the control
/// core).
async fn look(
    layout: &Layout,
    server: &Server,
) -> Result<(DigestReply, Option<ShadowStateReport>), String> {
    let owner = Owner::new(&server.namespace, &server.key_manager);
    let connector = certificates::connector(&layout.state(), &owner)
        .await?
        .ok_or_else(|| format!("KeyManager {owner} has no replica certificate"))?;
    let host = server
        .admin
        .rsplit_once(':')
        .map_or(server.admin.as_str(), |(h, _)| h);
    let address = ReplicaAddress {
        replica: server.name.clone(),
        address: server.admin.clone(),
        server_name: host.to_owned(),
    };
    let mut sender = http1_connect_as(&server.admin, host, &connector).await?;
    let digest = digest_of(&mut sender, &address).await?;
    if server.role != "shadow" {
        return Ok((digest, None));
    }
    let state = request(
        &mut sender,
        &address,
        hyper::Method::GET,
        "/v1/state",
        Vec::new(),
        "/v1/state: ",
    )
    .await?;
    let state: StateReport =
        serde_json::from_slice(&state).map_err(|e| format!("its state: {e}"))?;
    Ok((digest, state.shadow))
}

/// The KeyManagers window and the Shadows window.
pub fn describe(status: &Status) -> String {
    let mut rows = vec![[
        "KEYMANAGER".to_owned(),
        "REPLICAS".to_owned(),
        "READY".to_owned(),
        "KEYS".to_owned(),
        "IN SYNC".to_owned(),
    ]];
    for km in &status.key_managers {
        rows.push([
            format!("{}/{}", km.namespace, km.name),
            km.replicas.to_string(),
            km.ready.to_string(),
            km.keys.map_or_else(|| "-".to_owned(), |k| k.to_string()),
            if km.keystore_in_sync { "yes" } else { "no" }.to_owned(),
        ]);
    }
    let mut out = table(&rows);
    for km in &status.key_managers {
        for c in km.conditions.iter().filter(|c| c.troubling()) {
            let _ = writeln!(
                out,
                "  {}/{}: {}={} {}: {} (since {})",
                km.namespace,
                km.name,
                c.type_,
                c.status,
                c.reason,
                c.message,
                c.last_transition_time
            );
        }
        for b in &km.backups {
            let _ = writeln!(out, "  {}/{}: {}", km.namespace, km.name, backup_line(b));
        }
    }
    out.push('\n');
    let mut servers = vec![[
        "SERVER".to_owned(),
        "ROLE".to_owned(),
        "STATE".to_owned(),
        "KEYS".to_owned(),
        "LAST SYNCHRONIZED".to_owned(),
    ]];
    for s in &status.servers {
        servers.push([
            format!("{}/{}", s.namespace, s.name),
            s.role.clone(),
            s.state.clone(),
            s.keys.map_or_else(|| "-".to_owned(), |k| k.to_string()),
            s.last_synchronized
                .clone()
                .unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    out.push_str(&table(&servers));
    if !status.servers.iter().any(|s| s.role == "shadow") {
        out.push_str("\nNo Shadow runs: up does not start shadows yet.\n");
    }
    out
}
