//! Command-line parsing and dispatch.

pub mod crds;
pub mod plan;
pub mod recovery;
pub mod render;
pub mod restore;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Highly available key managers for tape and storage encryption, declared in Git.
#[derive(Debug, Parser)]
#[command(name = "shadowkeep", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator: reconcile KeyManagers (and the DriveTables, KeyGroups and Shadows
    /// that name them) into key-server replicas, using the kubeconfig or in-cluster config.
    Operator {
        /// Watch only this namespace.
        #[arg(long, value_name = "NAMESPACE")]
        namespace: Option<String>,
        /// Address of /metrics, /healthz and /readyz.
        #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
        listen: std::net::SocketAddr,
        /// Take the `shadowkeep-operator` Lease before reconciling, so that one replica leads.
        #[arg(long)]
        leader_elect: bool,
        /// Namespace of the Lease (default: the `POD_NAMESPACE` environment variable).
        #[arg(long, value_name = "NAMESPACE")]
        lease_namespace: Option<String>,
        /// How many KeyManagers are reconciled at once. Each reconcile holds its estate's
        /// objects while it runs, so this bounds the operator's memory; more is faster only
        /// while the API server keeps up.
        #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
        concurrency: u16,
        /// Where GitSources fetch their branches (one bare repository each); losing it
        /// loses nothing.
        #[arg(long, value_name = "DIR", default_value = "/var/cache/shadowkeep/git")]
        git_cache: PathBuf,
    },
    /// Print the CRDs of all five kinds, or write them to a directory.
    Crds {
        /// Write one file per CRD into this directory instead of printing them.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Print, offline, every Kubernetes object the operator would apply for the manifests,
    /// in apply order, with Secret data masked.
    Render {
        /// Files or directories to read; directories are searched for *.yaml and *.yml.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Run an estate on this machine: every KeyManager replica a key server on its own
    /// loopback address, reconciled by the operator's control core, with the state in a
    /// data directory. Runs until Ctrl-C; manifest edits are applied as they are saved.
    Up {
        /// Files or directories to read; directories are searched for *.yaml and *.yml.
        #[arg(
            required_unless_present = "git",
            conflicts_with = "git",
            value_name = "PATH"
        )]
        paths: Vec<PathBuf>,
        /// Follow a Git branch instead of reading files: `URL[#branch][:path]` (branch
        /// `main` by default; https://, ssh://, a local path or file:// URL). Each new head is planned against
        /// the last applied one and applied, or held while it has risks until its commit is
        /// written into DIR/git/accept-risks.
        #[arg(long, value_name = "URL[#BRANCH][:PATH]")]
        git: Option<String>,
        /// How often the branch is fetched.
        #[arg(long, value_name = "DURATION", default_value = "10s", requires = "git")]
        git_interval: shadowkeep_api::crd::Interval,
        /// Refuse a head not signed (SSH signature) by a key of this allowed-signers file.
        #[arg(long, value_name = "FILE", requires = "git")]
        git_allowed_signers: Option<PathBuf>,
        /// Fetch with the credentials of this Secret, read from --secrets
        /// DIR/default/NAME/KEY: username and password (and optionally ca.crt) for https,
        /// identity and `known_hosts` for ssh.
        #[arg(long, value_name = "NAME", requires_all = ["git", "secrets"])]
        git_credentials: Option<String>,
        /// Refuse a head not signed (OpenPGP signature) by a key of this armored keyring
        /// (`gpg --armor --export KEY...`).
        #[arg(
            long,
            value_name = "FILE",
            requires = "git",
            conflicts_with = "git_allowed_signers"
        )]
        git_keyring: Option<PathBuf>,
        /// Where the keys, certificates and servers' stores are kept; reused by later runs.
        #[arg(long, value_name = "DIR", default_value = ".shadowkeep")]
        data_dir: PathBuf,
        /// The loopback address of the first server; the next ones count up from it. Give
        /// estates that run side by side different bases.
        #[arg(long, value_name = "IP", default_value = "127.0.0.2")]
        address_base: std::net::Ipv4Addr,
        /// Where the Secrets that S3 backup targets name are, laid out like a Secret
        /// volume: DIR/NAMESPACE/NAME/KEY, one file per key.
        #[arg(long, value_name = "DIR")]
        secrets: Option<PathBuf>,
    },
    /// Show the KeyManagers and servers that `shadowkeep up` runs, as they answer now.
    Status {
        /// The data directory `up` runs with.
        #[arg(long, value_name = "DIR", default_value = ".shadowkeep")]
        data_dir: PathBuf,
        /// `json` for a machine-readable answer.
        #[arg(short = 'o', long = "output", value_name = "FORMAT", value_parser = ["text", "json"], default_value = "text")]
        output: String,
    },
    /// Recovery keys: the age keys every backup's KEK is sealed to.
    RecoveryKey {
        /// What to do.
        #[command(subcommand)]
        command: RecoveryKeyCommand,
    },
    /// Backups written to a KeyManager's targets.
    Backup {
        /// What to do.
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Restore a backup: merge it into its KeyManager's keystore (grow-only, never a
    /// rollback), or rebuild a lost KeyManager's KEK and keystore from it, in the cluster of
    /// the kubeconfig or, with --data-dir, in `shadowkeep up`'s data directory (with `up`
    /// stopped). Exit 0 when restored, 1 when refused; a refusal writes nothing.
    Restore(restore::Options),
    /// Run the key server (the same as the `shadowkeep-server` binary).
    Server(shadowkeep_server::cli::Args),
    /// Show what a change to the estate's Git repository does, object by object, and its
    /// risks, reading both revisions without a checkout. Exit 0 no change, 1 changes, 2 risks
    /// or an invalid head, 3 could not run.
    Plan {
        /// The revision the change starts from (e.g. the pull request's base branch).
        #[arg(long, value_name = "REV")]
        base: String,
        /// The revision with the change (e.g. `HEAD` or `refs/pull/N/merge`).
        #[arg(long, value_name = "REV")]
        head: String,
        /// The repository (a work tree or a bare clone).
        #[arg(long, value_name = "DIR", default_value = ".")]
        repo: PathBuf,
        /// `text`, `markdown` (a pull-request comment) or `json`.
        #[arg(long, value_enum, default_value_t)]
        format: plan::Format,
        /// Exit 0 whatever the plan finds (3 still means it could not run).
        #[arg(long)]
        exit_zero: bool,
        /// Files or directories of the repository, relative to its top; all when none.
        #[arg(value_name = "PATH")]
        paths: Vec<String>,
    },
    /// Check manifests (files or directories, multi-document YAML) against the CRD schemas,
    /// their CEL rules and the estate rules. Exit 0 when valid (warnings allowed), 1 on any
    /// error, 2 when input could not be read.
    Validate {
        /// Files or directories to read; directories are searched for *.yaml and *.yml.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
}

/// `shadowkeep recovery-key ...`.
#[derive(Debug, Subcommand)]
pub enum RecoveryKeyCommand {
    /// Make a recovery key on this machine (never on the cluster): write it to FILE and
    /// print its public key for `spec.backup.recoveryRecipients`.
    New {
        /// Where to write the private key (mode 0600; an existing file is never replaced).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// `shadowkeep backup ...`.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Check a backup object: its checksum, format and keystore, and with a recovery key
    /// that its KEK opens and opens every key. Prints what it holds as JSON.
    Verify {
        /// The backup object (`keystore-....skb`).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// A recovery key file (age's format, as `recovery-key new` writes it).
        #[arg(long, value_name = "FILE")]
        recovery_key: Option<PathBuf>,
    },
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Crds { out_dir } => crds::run(out_dir.as_deref()),
        Command::Operator {
            namespace,
            listen,
            leader_elect,
            lease_namespace,
            concurrency,
            git_cache,
        } => operator(crate::controller::run::Options {
            namespace,
            listen,
            leader_elect,
            lease_namespace,
            concurrency,
            git_cache,
        }),
        Command::Render { paths } => {
            let code = render::render(&paths, &mut std::io::stdout().lock());
            ExitCode::from(code)
        }
        Command::Up {
            paths,
            git,
            git_interval,
            git_allowed_signers,
            git_credentials,
            git_keyring,
            data_dir,
            address_base,
            secrets,
        } => {
            let git = match follow(
                git.as_deref(),
                git_interval,
                git_allowed_signers,
                git_keyring,
                git_credentials,
                secrets.as_ref(),
            ) {
                Ok(git) => git,
                Err(e) => {
                    eprintln!("shadowkeep up: {e}");
                    return ExitCode::FAILURE;
                }
            };
            crate::local::up::run(crate::local::up::Options {
                paths,
                data_dir,
                address_base,
                secrets,
                git,
            })
        }
        Command::Status { data_dir, output } => {
            crate::local::status::run(&crate::local::status::Options {
                data_dir,
                json: output == "json",
            })
        }
        Command::RecoveryKey {
            command: RecoveryKeyCommand::New { out },
        } => recovery::new_key(&out),
        Command::Backup {
            command: BackupCommand::Verify { file, recovery_key },
        } => recovery::verify(&file, recovery_key.as_deref()),
        Command::Restore(options) => restore::run(&options),
        Command::Server(args) => shadowkeep_server::cli::main(args),
        Command::Plan {
            base,
            head,
            repo,
            format,
            exit_zero,
            paths,
        } => {
            let options = crate::plan::Options {
                repo,
                base,
                head,
                paths,
                secret_salt: rand::random(),
            };
            let code = plan::run(
                &options,
                format,
                exit_zero,
                &mut std::io::stdout().lock(),
                &mut std::io::stderr().lock(),
            );
            ExitCode::from(code)
        }
        Command::Validate { paths } => {
            let report = crate::manifests::validate::validate_paths(&paths);
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            report.print(&mut out);
            ExitCode::from(report.exit_code())
        }
    }
}

/// What `up --git` follows, from its flags: the branch, how often, who may sign, and the
/// Secret (as `--secrets` files) it is fetched with.
fn follow(
    git: Option<&str>,
    interval: shadowkeep_api::crd::Interval,
    allowed_signers: Option<PathBuf>,
    keyring: Option<PathBuf>,
    credentials: Option<String>,
    secrets: Option<&PathBuf>,
) -> Result<Option<crate::local::git::Follow>, crate::local::git::ParseError> {
    use crate::local::git::{Follow, SecretFiles, Signers, parse};
    let Some(branch) = git.map(parse).transpose()? else {
        return Ok(None);
    };
    Ok(Some(Follow {
        branch,
        interval: interval.as_duration(),
        signers: match (allowed_signers, keyring) {
            (Some(file), _) => Some(Signers::Ssh(file)),
            (None, Some(file)) => Some(Signers::OpenPgp(file)),
            (None, None) => None,
        },
        credentials: credentials
            .zip(secrets.cloned())
            .map(|(name, secrets)| SecretFiles { secrets, name }),
    }))
}

fn operator(options: crate::controller::run::Options) -> ExitCode {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // The work is waiting on the API server, a few reconciles at a time: two workers are
    // plenty. Left to the default, a pod without a CPU limit would start one worker (and
    // one allocator arena) per core of its node.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads(8)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shadowkeep operator: failed to start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::controller::run::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shadowkeep operator: {e}");
            ExitCode::FAILURE
        }
    }
}
