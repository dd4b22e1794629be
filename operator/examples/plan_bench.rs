//! `shadowkeep plan` benchmark: a bare repository of 10,000 drives in 40 DriveTables across
//! 4 KeyManagers (each with a KeyGroup and a Shadow), and a head commit that moves one
//! drive to another KeyManager (accepted). Runs `BIN plan` on it RUNS times as its own
//! process, each format in turn, and prints the wall time of each run and the median run's
//! CPU time and peak memory (with GNU time).
//!
//! ```sh
//! cargo build --release -p shadowkeep --bin shadowkeep --example plan_bench
//! target/release/examples/plan_bench target/release/shadowkeep 5
//! ```

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use git2::{Oid, Repository, Signature};

const KEY_MANAGERS: usize = 4;
const TABLES: usize = 40;
const DRIVES_PER_TABLE: usize = 250;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let Some(bin) = args.get(1) else {
        eprintln!("usage: plan_bench SHADOWKEEP_BIN [RUNS]");
        return ExitCode::FAILURE;
    };
    let runs: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(5);
    match bench(Path::new(bin), runs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plan_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(bin: &Path, runs: usize) -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("shadowkeep-plan-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let repo = Repository::init_bare(&dir)?;
    let base = commit(&repo, &estate(None), None, "main")?;
    // Drive 0 (in table 0, of KeyManager 0) moves to table 1, of KeyManager 1.
    commit(&repo, &estate(Some(0)), Some(base), "change")?;
    println!(
        "repository: {KEY_MANAGERS} KeyManagers, {TABLES} DriveTables, {} drives; one drive moved",
        TABLES * DRIVES_PER_TABLE
    );
    // GNU time, where there is one, adds the CPU time and peak memory of each run.
    let gnu_time = Path::new("/usr/bin/time");
    for format in ["text", "markdown", "json"] {
        let mut runs_seen = Vec::new();
        let mut code = None;
        let mut bytes = 0;
        for _ in 0..runs {
            let mut command = if gnu_time.exists() {
                let mut c = Command::new(gnu_time);
                c.args(["-f", "%U %S %M"]).arg(bin);
                c
            } else {
                Command::new(bin)
            };
            command
                .args([
                    "plan", "--base", "main", "--head", "change", "--format", format,
                ])
                .arg("--repo")
                .arg(&dir);
            let start = Instant::now();
            let out = command.output()?;
            let wall = start.elapsed();
            code = out.status.code();
            bytes = out.stdout.len();
            let stderr = String::from_utf8_lossy(&out.stderr);
            let measured: Vec<f64> = stderr
                .lines()
                .last()
                .unwrap_or_default()
                .split(' ')
                .filter_map(|f| f.parse().ok())
                .collect();
            let (cpu, rss_kib) = match measured[..] {
                [user, sys, rss] => (Some(user + sys), Some(rss)),
                _ => (None, None),
            };
            runs_seen.push((wall, cpu, rss_kib));
        }
        runs_seen.sort_by_key(|r| r.0);
        let ms = |d: &Duration| format!("{:.0}", d.as_secs_f64() * 1000.0);
        let (median, cpu, rss) = runs_seen[runs_seen.len() / 2];
        let extra = match (cpu, rss) {
            (Some(cpu), Some(rss)) => {
                format!(
                    ", its CPU {:.0} ms, peak RSS {:.1} MiB",
                    cpu * 1000.0,
                    rss / 1024.0
                )
            }
            _ => String::new(),
        };
        println!(
            "--format {format}: exit {code:?}, {bytes} bytes; wall ms per run: {} (median {}{extra})",
            runs_seen
                .iter()
                .map(|r| ms(&r.0))
                .collect::<Vec<_>>()
                .join(", "),
            ms(&median),
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// The estate's files; `moved`: a drive of table 0 listed in table 1 instead, accepted.
fn estate(moved: Option<usize>) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for k in 0..KEY_MANAGERS {
        files.push((
            format!("estate/km-{k}.yaml"),
            format!(
                "apiVersion: shadowkeep.io/v1alpha1\nkind: KeyManager\nmetadata:\n  name: km-{k}\nspec:\n  serverId: km-{k}\n  replicas: 2\n  placement:\n    zones: [zone-{k}a, zone-{k}b]\n---\napiVersion: shadowkeep.io/v1alpha1\nkind: KeyGroup\nmetadata:\n  name: lto-{k}\nspec:\n  keyManagerRef:\n    name: km-{k}\n  default: true\n---\napiVersion: shadowkeep.io/v1alpha1\nkind: Shadow\nmetadata:\n  name: km-{k}-dr\nspec:\n  keyManagerRef:\n    name: km-{k}\n  placement:\n    zone: dr-{k}\n"
            ),
        ));
    }
    let moved: BTreeSet<usize> = moved.into_iter().collect();
    for t in 0..TABLES {
        let k = t % KEY_MANAGERS;
        let accept = if t == 1 && !moved.is_empty() {
            "  annotations:\n    shadowkeep.io/accept-drive-moves: \"2000000000\"\n"
        } else {
            ""
        };
        let mut text = format!(
            "apiVersion: shadowkeep.io/v1alpha1\nkind: DriveTable\nmetadata:\n  name: table-{t}\n{accept}spec:\n  keyManagerRef:\n    name: km-{k}\n  drives:\n"
        );
        let mut serials: Vec<usize> = (t * DRIVES_PER_TABLE..(t + 1) * DRIVES_PER_TABLE)
            .filter(|s| !moved.contains(s))
            .collect();
        if t == 1 {
            serials.extend(moved.iter().copied());
        }
        for s in serials {
            let _ = write!(
                text,
                "    - serial: \"{}\"\n      certificateIdentity: library-{t}.tape.example.com\n      keyGroup: lto-{k}\n",
                2_000_000_000 + s
            );
        }
        files.push((format!("estate/tables/table-{t:02}.yaml"), text));
    }
    files
}

fn commit(
    repo: &Repository,
    files: &[(String, String)],
    parent: Option<Oid>,
    branch: &str,
) -> Result<Oid, git2::Error> {
    let mut index = git2::Index::new()?;
    for (path, text) in files {
        let blob = repo.blob(text.as_bytes())?;
        let entry = git2::IndexEntry {
            ctime: git2::IndexTime::new(0, 0),
            mtime: git2::IndexTime::new(0, 0),
            dev: 0,
            ino: 0,
            mode: 0o100_644,
            uid: 0,
            gid: 0,
            file_size: 0,
            id: blob,
            flags: 0,
            flags_extended: 0,
            path: path.clone().into_bytes(),
        };
        index.add(&entry)?;
    }
    let tree = repo.find_tree(index.write_tree_to(repo)?)?;
    let who = Signature::now("bench", "bench@example.com")?;
    let parents = parent.map(|p| repo.find_commit(p)).transpose()?;
    let oid = repo.commit(
        None,
        &who,
        &who,
        branch,
        &tree,
        &parents.iter().collect::<Vec<_>>(),
    )?;
    repo.reference(&format!("refs/heads/{branch}"), oid, true, "bench")?;
    Ok(oid)
}
