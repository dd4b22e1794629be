//! The key server's command line, shared by the `shadowkeep-server` binary (for images)
//! and `shadowkeep server` (which `shadowkeep up` starts, so that one binary runs a whole
//! estate).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use shadowkeep_api::server_config::ServerConfig;

use crate::{Server, dev};
use tokio::net::TcpListener;

/// The shadowkeep key server: KMIP over mutual TLS, durable keystore.
#[derive(Debug, clap::Parser)]
#[command(name = "shadowkeep-server", version, about)]
pub struct Args {
    /// Configuration file (YAML), as rendered by the operator.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present_any = ["dev", "repair"],
        conflicts_with = "dev"
    )]
    config: Option<PathBuf>,
    /// Development mode: make a CA, certificates and a KEK in --data-dir if missing, and serve.
    #[arg(long, requires = "data_dir")]
    dev: bool,
    /// Data directory for development mode.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// KMIP listen address for development mode (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5696")]
    listen: SocketAddr,
    /// Repair the keystore in DIR after it refused to start (DIR is the store directory:
    /// the configuration's dataDir, or `store` inside the development --data-dir). Keeps a
    /// copy of its files, recovers every intact record, and prints what it could not
    /// recover. Exits 0 when everything was recovered, 2 when something was not, 1 when the
    /// repair failed. Stop the server first.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["config", "dev"])]
    repair: Option<PathBuf>,
    /// Stop gracefully when standard input reaches its end: the supervisor that started
    /// the server holds the other end, so the server goes with it, however it ends.
    #[arg(long, hide = true)]
    exit_with_stdin: bool,
    /// `json` (one object per line, for log collectors) or `text` (for a terminal).
    #[arg(long, value_name = "FORMAT", value_parser = ["json", "text"], default_value = "json")]
    log_format: String,
}

/// Runs the server as `args` say and returns the exit code.
pub fn main(args: Args) -> ExitCode {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    // A log line that cannot be written is lost; reporting that on stderr as well would
    // panic (and stop the server) when stderr is what fails.
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    if args.log_format == "text" {
        logs.with_target(false)
            .with_ansi(false)
            .with_env_filter(filter())
            .init();
    } else {
        logs.json().with_env_filter(filter()).init();
    }
    if let Some(dir) = &args.repair {
        return repair(dir);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            complain(&format!("failed to start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            complain(&message);
            ExitCode::FAILURE
        }
    }
}

fn repair(dir: &std::path::Path) -> ExitCode {
    match crate::store::repair::repair(dir) {
        Ok(report) => {
            print!("{report}");
            if report.complete() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("shadowkeep-server: failed to repair {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), String> {
    let (config, file) = match (&args.config, &args.data_dir) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("failed to read {}: {e}", path.display()))?;
            let config =
                ServerConfig::from_yaml(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            (config, Some((path.clone(), text.into_bytes())))
        }
        (None, Some(dir)) => (
            dev::prepare(dir, args.listen).map_err(|e| e.to_string())?,
            None,
        ),
        (None, None) => return Err("either --config or --dev --data-dir is required".to_owned()),
    };
    let mut server = Server::new(&config).map_err(|e| e.to_string())?;
    if let Some((path, started)) = file {
        server = server.with_config_file(path, started);
    }
    let listener = TcpListener::bind(config.kmip.listen)
        .await
        .map_err(|e| format!("failed to listen on {}: {e}", config.kmip.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let admin = server.bind_admin().await.map_err(|e| e.to_string())?;
    if let Some(dir) = args.data_dir.as_ref().filter(|_| args.dev) {
        say("shadowkeep-server (development mode)");
        say(&format!(
            "  CA certificate:     {}",
            dir.join(dev::CA_CERT).display()
        ));
        say(&format!(
            "  client certificate: {}",
            dir.join(dev::CLIENT_CERT).display()
        ));
        say(&format!(
            "  client key:         {}",
            dir.join(dev::CLIENT_KEY).display()
        ));
    }
    // Tests and scripts read this line to learn the port.
    say(&format!("kmip listening on {addr}"));
    if let Some((_, admin_addr)) = &admin {
        say(&format!("admin listening on {admin_addr}"));
    }
    server
        .serve(
            listener,
            admin.map(|(l, _)| l),
            shutdown_signal(args.exit_with_stdin),
        )
        .await
        .map_err(|e| e.to_string())
}

/// Prints a line on stdout. Unlike `println!`, an unwritable stdout (full, closed) does not
/// panic: the line is lost and the server goes on.
fn say(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Prints why the server stops on stderr, if stderr can be written at all.
fn complain(message: &str) {
    let _ = writeln!(std::io::stderr().lock(), "shadowkeep-server: {message}");
}

/// Completes on SIGTERM (Kubernetes stopping the pod) or SIGINT (Ctrl-C), or, with
/// `stdin`, when standard input ends.
async fn shutdown_signal(stdin: bool) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        () = stdin_closed(), if stdin => {
            tracing::info!("standard input ended: the supervisor is gone; stopping");
        }
    }
}

/// Completes when standard input ends (or fails). A blocking thread reads it: a read of
/// stdin cannot be cancelled, and the thread ends with the process.
async fn stdin_closed() {
    let (done, closed) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("stdin-watch".to_owned())
        .spawn(move || {
            let mut sink = [0u8; 512];
            let mut stdin = std::io::stdin().lock();
            while matches!(std::io::Read::read(&mut stdin, &mut sink), Ok(n) if n > 0) {}
            let _ = done.send(());
        });
    if spawned.is_err() {
        tracing::error!("cannot watch standard input; stop with SIGTERM");
        std::future::pending::<()>().await;
    }
    let _ = closed.await;
}
