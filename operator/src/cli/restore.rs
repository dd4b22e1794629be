//! `shadowkeep restore`: a backup merged back into its KeyManager, or a lost KeyManager
//! rebuilt from it, in a cluster (the Secrets the operator keeps) or in `up`'s data
//! directory. What a restore may change is the control core's rule
//! ([`crate::core::backup::restore`]); this reads the backup and the recovery key, and picks
//! the shell.

use std::path::PathBuf;
use std::process::ExitCode;

use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;
use shadowkeep_api::crd::KeyManager;

use super::recovery::{read_backup_file, read_identities};
use crate::core::backup::Targets;
use crate::core::backup::archive;
use crate::core::backup::restore::{Restored, fetch, restore};
use crate::core::state::{Owner, State};
use crate::local::layout::Layout;

/// The annotation a restore leaves on the KeyManager in a cluster: the backup restored,
/// which also wakes the operator to push the keys to every replica at once.
pub const RESTORED_ANNOTATION: &str = "shadowkeep.io/restored-from";

/// What `shadowkeep restore` is asked.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// A backup file (`keystore-....skb`, as copied out of a target), or
    /// `target:NAME[/BACKUP]`: the KeyManager's declared backup target NAME and its newest
    /// backup, or the one named.
    #[arg(long, value_name = "FILE|target:NAME[/BACKUP]")]
    pub from: String,
    /// The recovery key file (age's format, as `recovery-key new` writes it) the backup's
    /// KEK is sealed to.
    #[arg(long, value_name = "FILE")]
    pub recovery_key: PathBuf,
    /// The KeyManager to restore into, `NAMESPACE/NAME`; by default the backup's own (or,
    /// for a target under `up`, the only one the manifests declare).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub key_manager: Option<String>,
    /// Restore into `shadowkeep up`'s data directory instead of the cluster.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// With --data-dir: where the Secrets that S3 targets name are, as
    /// DIR/NAMESPACE/NAME/KEY files (as `up --secrets`).
    #[arg(long, value_name = "DIR", requires = "data_dir")]
    pub secrets: Option<PathBuf>,
    /// Check that the backup opens and count what would change; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// `json` for a machine-readable answer.
    #[arg(short = 'o', long = "output", value_name = "FORMAT", value_parser = ["text", "json"], default_value = "text")]
    pub output: String,
    /// With --data-dir: the manifests `up` runs, for the KeyManager's targets and
    /// retention; files or directories.
    #[arg(value_name = "PATH", requires = "data_dir")]
    pub manifests: Vec<PathBuf>,
}

/// Where a backup is read from.
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    /// A backup object copied out of its target.
    File(PathBuf),
    /// A backup target the KeyManager declares.
    Target {
        /// The target's name.
        name: String,
        /// The backup; its newest when `None`.
        backup: Option<String>,
    },
}

impl Source {
    /// `target:NAME[/BACKUP]`, else a file.
    pub fn parse(from: &str) -> Self {
        match from.strip_prefix("target:") {
            Some(rest) => {
                let (name, backup) = match rest.split_once('/') {
                    Some((name, backup)) => (name, Some(backup.to_owned())),
                    None => (rest, None),
                };
                Self::Target {
                    name: name.to_owned(),
                    backup,
                }
            }
            None => Self::File(PathBuf::from(from)),
        }
    }
}

/// What a restore came to, as printed; nothing secret.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The backup's name.
    pub backup: String,
    /// The KeyManager it is a backup of.
    pub backup_of: String,
    /// When it was made.
    pub backup_created_at: String,
    /// The KeyManager restored into.
    pub key_manager: String,
    /// `rebuilt`, `merged` or `resealed` ([`Restored`]).
    pub how: &'static str,
    /// Keys in the backup.
    pub keys_in_backup: usize,
    /// Keys the KeyManager did not hold.
    pub added: usize,
    /// Keys whose state moved forward.
    pub updated: usize,
    /// Records quarantined for a conflict.
    pub conflicts: usize,
    /// Whether the KeyManager's keystore was written.
    pub written: bool,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

impl Report {
    fn new(backup: &archive::Opened, restored: &Restored, into: &Owner, dry_run: bool) -> Self {
        let how = if restored.rebuilt {
            "rebuilt"
        } else if restored.resealed {
            "resealed"
        } else {
            "merged"
        };
        Self {
            backup: backup.name(),
            backup_of: backup.owner.reference(),
            backup_created_at: backup.created_at.to_string(),
            key_manager: into.reference(),
            how,
            keys_in_backup: restored.in_backup,
            added: restored.added,
            updated: restored.updated,
            conflicts: restored.conflicts,
            written: restored.written,
            dry_run,
        }
    }

    fn text(&self, cluster: bool) -> String {
        let how = match self.how {
            "rebuilt" => "it had no KEK: the backup's KEK and keystore are its own again",
            "resealed" => {
                "it has another KEK: the backup's keys are re-sealed under it, same ids and material"
            }
            _ => "same KEK: missing keys added, states moved forward, nothing removed",
        };
        let mut lines = vec![
            format!(
                "backup {} of KeyManager {} (made {}) into KeyManager {}",
                self.backup, self.backup_of, self.backup_created_at, self.key_manager
            ),
            format!("  {how}"),
            format!(
                "  keys in the backup: {}; added: {}; updated: {}; conflicts (quarantined, not lost): {}",
                self.keys_in_backup, self.added, self.updated, self.conflicts
            ),
        ];
        lines.push(if self.dry_run {
            "  dry run: nothing written".to_owned()
        } else if !self.written {
            "  nothing to write: the KeyManager holds every key of the backup".to_owned()
        } else if cluster {
            "  written; the operator pushes the keys to every replica and shadow at its next reconcile".to_owned()
        } else {
            "  written; `shadowkeep up` pushes the keys to every server when it starts".to_owned()
        });
        lines.join("\n")
    }
}

/// Runs `shadowkeep restore`: exit 0 when restored (or a dry run passed), 1 when refused
/// or failed, with the reason; nothing is written on failure.
pub fn run(options: &Options) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("shadowkeep restore: failed to start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(restore_with(options)) {
        Ok(report) => {
            let text = if options.output == "json" {
                serde_json::to_string_pretty(&report).unwrap_or_default()
            } else {
                report.text(options.data_dir.is_none())
            };
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shadowkeep restore: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn restore_with(options: &Options) -> Result<Report, String> {
    let identities = read_identities(&options.recovery_key)?;
    let wanted = options
        .key_manager
        .as_deref()
        .map(Owner::parse)
        .transpose()
        .map_err(|e| format!("--key-manager: {e}"))?;
    let source = Source::parse(&options.from);
    let Some(dir) = &options.data_dir else {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| format!("failed to reach the cluster (kubeconfig): {e}"))?;
        let shell = Cluster {
            targets: crate::controller::backup::KubeTargets::new(client.clone()),
            client: client.clone(),
        };
        let state = crate::controller::state::Kube::new(client);
        return restore_in(
            &state,
            &shell,
            &source,
            wanted,
            &identities,
            options.dry_run,
        )
        .await;
    };
    let layout = Layout::new(dir);
    let _lock = layout.lock()?;
    let shell = Dir::new(&options.manifests, options.secrets.clone())?;
    restore_in(
        &layout.state(),
        &shell,
        &source,
        wanted,
        &identities,
        options.dry_run,
    )
    .await
}

/// How a shell finds a KeyManager's declaration and reaches its targets.
pub trait Shell {
    /// The shell's backup targets.
    fn targets(&self) -> &dyn Targets;
    /// The KeyManager `owner` as declared, if it is.
    fn declared(
        &self,
        owner: &Owner,
    ) -> impl std::future::Future<Output = Result<Option<KeyManager>, String>>;
    /// The KeyManager meant when none is named: the only one declared, if there is one.
    fn only(&self) -> Option<Owner>;
    /// Called once a restore wrote keys: tells whoever serves them.
    fn restored(&self, report: &Report) -> impl std::future::Future<Output = ()>;
}

/// Restores the backup `source` names into `wanted` (by default the backup's own
/// KeyManager) in `state`, opening its KEK with `identities`.
pub async fn restore_in<S: State, H: Shell>(
    state: &S,
    shell: &H,
    source: &Source,
    wanted: Option<Owner>,
    identities: &[age::x25519::Identity],
    dry_run: bool,
) -> Result<Report, String> {
    // The KeyManager read for its target, kept for its retention: asked for once.
    let (bytes, known) = match source {
        Source::File(path) => (read_backup_file(path)?, None),
        Source::Target { name, backup } => {
            let owner = wanted.clone().or_else(|| shell.only()).ok_or_else(|| {
                "name the KeyManager whose target to read with --key-manager NAMESPACE/NAME"
                    .to_owned()
            })?;
            let declared = shell.declared(&owner).await?.ok_or_else(|| {
                format!("KeyManager {owner} is not declared, so its target {name} is unknown; restore from a backup file instead")
            })?;
            let (_, bytes) = fetch(
                shell.targets(),
                &owner,
                &declared.spec.backup,
                name,
                backup.as_deref(),
            )
            .await?;
            (bytes, Some((owner, declared)))
        }
    };
    let opened = archive::open(&bytes).map_err(|e| match source {
        Source::File(path) => format!("{}: {e}", path.display()),
        Source::Target { name, .. } => format!("target {name}: {e}"),
    })?;
    let kek = opened.kek(identities).map_err(|e| e.to_string())?;
    let into = wanted.unwrap_or_else(|| opened.owner.clone());
    let declared = match known {
        Some((owner, declared)) if owner == into => Some(declared),
        _ => shell.declared(&into).await?,
    };
    let retention = declared.map_or_else(
        || shadowkeep_api::crd::BackupSpec::default().retention,
        |k| k.spec.backup.retention,
    );
    let retention = usize::try_from(retention).unwrap_or(1).max(1);
    let restored = restore(state, &opened, &kek, &into, retention, dry_run)
        .await
        .map_err(|e| e.to_string())?;
    let report = Report::new(&opened, &restored, &into, dry_run);
    if report.written {
        shell.restored(&report).await;
    }
    Ok(report)
}

/// `up`'s shell: the KeyManagers its manifests declare, targets as `up` reaches them.
pub struct Dir {
    key_managers: Vec<KeyManager>,
    targets: crate::local::backup::LocalTargets,
}

impl Dir {
    /// The shell of the manifests under `paths` (none: no KeyManager is declared), with
    /// Secrets as files under `secrets`.
    pub fn new(paths: &[PathBuf], secrets: Option<PathBuf>) -> Result<Self, String> {
        let key_managers = if paths.is_empty() {
            Vec::new()
        } else {
            let (report, estate) = crate::manifests::validate::load(paths);
            if report.exit_code() != 0 {
                let mut text = Vec::new();
                report.print(&mut text);
                return Err(format!(
                    "the manifests do not validate:\n{}",
                    String::from_utf8_lossy(&text)
                ));
            }
            estate.key_managers().to_vec()
        };
        Ok(Self {
            key_managers,
            targets: crate::local::backup::LocalTargets { secrets },
        })
    }
}

fn owner_of(k: &KeyManager) -> Owner {
    Owner::new(
        k.metadata.namespace.as_deref().unwrap_or("default"),
        k.metadata.name.as_deref().unwrap_or_default(),
    )
}

impl Shell for Dir {
    fn targets(&self) -> &dyn Targets {
        &self.targets
    }

    async fn declared(&self, owner: &Owner) -> Result<Option<KeyManager>, String> {
        Ok(self
            .key_managers
            .iter()
            .find(|k| owner_of(k) == *owner)
            .cloned())
    }

    fn only(&self) -> Option<Owner> {
        match self.key_managers.as_slice() {
            [only] => Some(owner_of(only)),
            _ => None,
        }
    }

    /// `up` is stopped while a restore runs (it holds the same lock); when it starts, its
    /// first reconcile pushes the keys to every server.
    async fn restored(&self, _: &Report) {}
}

/// The cluster's shell: KeyManagers from the API server, targets as the operator reaches
/// them.
pub struct Cluster {
    /// The API server.
    pub client: kube::Client,
    /// Its targets.
    pub targets: crate::controller::backup::KubeTargets,
}

impl Shell for Cluster {
    fn targets(&self) -> &dyn Targets {
        &self.targets
    }

    async fn declared(&self, owner: &Owner) -> Result<Option<KeyManager>, String> {
        Api::<KeyManager>::namespaced(self.client.clone(), &owner.namespace)
            .get_opt(&owner.name)
            .await
            .map_err(|e| format!("failed to read KeyManager {owner}: {e}"))
    }

    fn only(&self) -> Option<Owner> {
        None
    }

    /// Leaves [`RESTORED_ANNOTATION`] on the KeyManager, if it exists, which wakes the
    /// operator. The keys are written already; a failure here only delays their push to the
    /// next periodic reconcile.
    async fn restored(&self, report: &Report) {
        let Ok(owner) = Owner::parse(&report.key_manager) else {
            return;
        };
        let api: Api<KeyManager> = Api::namespaced(self.client.clone(), &owner.namespace);
        let patch = serde_json::json!({
            "metadata": {"annotations": {RESTORED_ANNOTATION: report.backup}}
        });
        match api
            .patch(&owner.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            // Not applied yet: its first reconcile adopts the keys restored.
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => eprintln!(
                "shadowkeep restore: the keys are written, but KeyManager {owner} could not be annotated ({e}); the operator pushes them at its next periodic reconcile"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_a_file_or_a_named_target() {
        assert_eq!(
            Source::parse("backups/keystore-1.skb"),
            Source::File(PathBuf::from("backups/keystore-1.skb"))
        );
        assert_eq!(
            Source::parse("target:offsite"),
            Source::Target {
                name: "offsite".into(),
                backup: None
            }
        );
        assert_eq!(
            Source::parse("target:offsite/keystore-0001764000000000-0123456789ab.skb"),
            Source::Target {
                name: "offsite".into(),
                backup: Some("keystore-0001764000000000-0123456789ab.skb".into())
            }
        );
    }
}
