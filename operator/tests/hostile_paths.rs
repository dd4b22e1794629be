//! `shadowkeep validate` and `render` over hostile trees: directory symlink loops, a link to
//! the directory itself, a FIFO, a device and an oversized file named `*.yaml`.
//!
//! Each case runs the real binary under a deadline and an address-space limit, so that a
//! regression fails the test (by the deadline, or by an allocation failure) instead of
//! hanging CI or taking the machine's memory.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Far longer than any of these runs needs; reached only when the command hangs.
const DEADLINE: Duration = Duration::from_mins(2);
/// Address space for the command, in KiB: validate and render need well under 200 MiB, so
/// a runaway read fails to allocate long before the machine runs short.
const MEMORY_KIB: u32 = 1024 * 1024;

const KEY_MANAGER: &str = "apiVersion: shadowkeep.io/v1alpha1\nkind: KeyManager\nmetadata: {name: km}\nspec: {serverId: km, replicas: 2}\n";

/// A fresh directory of this test's own holding one valid manifest, `km.yaml`.
fn tree(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("shadowkeep-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("km.yaml"), KEY_MANAGER).unwrap();
    dir
}

struct Run {
    code: Option<i32>,
    stdout: String,
}

/// Runs `shadowkeep COMMAND DIR`, failing the test if it does not finish by the deadline.
fn shadowkeep(command: &str, dir: &Path) -> Run {
    // Output goes to files: a pipe nobody reads while waiting would block a chatty command.
    let out = dir.with_extension("out");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {MEMORY_KIB} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_shadowkeep"))
        .arg(command)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > DEADLINE {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!(
                "`shadowkeep {command} {}` did not finish within {DEADLINE:?}",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out).unwrap();
    std::fs::remove_file(out).unwrap();
    Run {
        code: status.code(),
        stdout,
    }
}

/// Validate reads `km.yaml` once and nothing else; render prints its objects once.
fn read_once(dir: &Path) {
    let run = shadowkeep("validate", dir);
    assert_eq!(
        run.stdout,
        // The one finding: a KeyManager without a recovery recipient.
        format!(
            "{}: warning: KeyManager km: spec.backup.recoveryRecipients: no recovery recipient: the KEK exists only in the cluster, so losing the cluster would lose every key; add the public key of a recovery key kept off the cluster (age-keygen)\n1 objects in 1 files: 0 errors, 1 warnings\n",
            dir.join("km.yaml").display()
        ),
        "{}",
        dir.display()
    );
    assert_eq!(run.code, Some(0));
    let run = shadowkeep("render", dir);
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    let statefulsets = run
        .stdout
        .lines()
        .filter(|l| *l == "kind: StatefulSet")
        .count();
    assert_eq!(statefulsets, 1, "{}", run.stdout);
}

/// Validate and render both refuse the tree, naming `file` and saying why.
fn refused(dir: &Path, file: &str, why: &str) {
    let line = format!("{}: error: {why}", dir.join(file).display());
    for command in ["validate", "render"] {
        let run = shadowkeep(command, dir);
        assert_eq!(run.code, Some(2), "{command}: {}", run.stdout);
        assert!(
            run.stdout.lines().any(|l| l == line),
            "{command}: expected {line:?} in\n{}",
            run.stdout
        );
    }
}

#[test]
fn directory_symlink_loops_are_followed_once() {
    let dir = tree("loops");
    symlink(".", dir.join("a")).unwrap();
    symlink(".", dir.join("b")).unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    symlink("..", dir.join("sub/up")).unwrap();
    read_once(&dir);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_link_to_its_own_directory_reads_each_manifest_once() {
    let dir = tree("self");
    symlink(".", dir.join("self")).unwrap();
    read_once(&dir);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_fifo_named_yaml_is_refused_without_waiting_for_a_writer() {
    let dir = tree("fifo");
    let status = Command::new("mkfifo")
        .arg(dir.join("pipe.yaml"))
        .status()
        .unwrap();
    assert!(status.success());
    refused(
        &dir,
        "pipe.yaml",
        "failed to read: a FIFO, not a regular file",
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_link_to_a_device_is_refused_unread() {
    let dir = tree("device");
    symlink("/dev/zero", dir.join("zero.yaml")).unwrap();
    refused(
        &dir,
        "zero.yaml",
        "failed to read: a character device, not a regular file",
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_oversized_file_is_refused_unread() {
    let dir = tree("oversized");
    // Sparse: no disk is used for it.
    let big = std::fs::File::create(dir.join("big.yaml")).unwrap();
    big.set_len(1 << 30).unwrap();
    refused(
        &dir,
        "big.yaml",
        "failed to read: 1073741824 bytes, more than the 8 MiB a manifest file may hold",
    );
    std::fs::remove_dir_all(dir).unwrap();
}
