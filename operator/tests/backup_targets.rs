//! The control core's backup writer against a real S3 server (`moto_server`, from the
//! test virtual environment): a new object for each keystore change and none otherwise,
//! never an overwrite, retention, and a target that fails reported by name while nothing
//! else changes.
//!
//! `moto_server` is looked for in `SHADOWKEEP_MOTO_SERVER`, then `.venv/bin/moto_server`
//! (what `.ci/run` installs). Without it the tests say so loudly and pass, unless
//! `SHADOWKEEP_REQUIRE_MOTO` is set, as `.ci/run` sets it: then they fail.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use age::secrecy::ExposeSecret as _;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use shadowkeep::core::backup::archive::{self, keystore_digest};
use shadowkeep::core::backup::{Backups, Source, TargetError, Targets as _, back_up};
use shadowkeep::core::state::Owner;
use shadowkeep::local::backup::LocalTargets;
use shadowkeep_api::crd::{
    BackupSpec, BackupTarget, BackupTargetStatus, S3BackupTarget, S3CredentialsRef,
    SecretBackupTarget,
};
use shadowkeep_api::keystore::{Algorithm, Kek, Key, Keystore};

const KEK: [u8; 32] = [0x42; 32];
const BUCKET: &str = "backups-bucket";

/// A `moto_server` on a free loopback port, stopped when dropped.
struct Moto {
    child: Child,
    address: SocketAddr,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SHADOWKEEP_MOTO_SERVER") {
        return Some(PathBuf::from(path));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
    venv.exists().then_some(venv)
}

impl Moto {
    /// A server whose first `free` requests need no valid signature (`None`: none ever
    /// does), or `None` when `moto_server` is not installed and not required.
    fn start(free: Option<u32>) -> Option<Self> {
        let Some(binary) = moto_binary() else {
            assert!(
                std::env::var_os("SHADOWKEEP_REQUIRE_MOTO").is_none(),
                "moto_server is required (SHADOWKEEP_REQUIRE_MOTO) but neither SHADOWKEEP_MOTO_SERVER nor .venv/bin/moto_server exists"
            );
            eprintln!(
                "\n*** SKIPPED: moto_server not found (install `moto[server]` into .venv: .ci/run does) ***\n"
            );
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new(binary);
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(free) = free {
            command.env("INITIAL_NO_AUTH_ACTION_COUNT", free.to_string());
        }
        let moto = Self {
            child: command.spawn().expect("failed to start moto_server"),
            address: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + Duration::from_mins(1);
        while TcpStream::connect(moto.address).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(moto)
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Creates `bucket` (moto takes an unsigned request until authentication is on).
    fn create_bucket(&self, bucket: &str) {
        let mut stream = TcpStream::connect(self.address).unwrap();
        write!(
            stream,
            "PUT /{bucket} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.address
        )
        .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
}

/// A keystore of `n` keys, serialised as the state stores it.
fn keystore(n: usize) -> Vec<u8> {
    let kek = Kek::from_bytes(&KEK).unwrap();
    let mut store = Keystore::new();
    for i in 0..n {
        let key = Key::generate(
            &kek,
            format!("TAPE{i:04}"),
            Algorithm::Aes,
            256,
            Timestamp::UNIX_EPOCH,
        );
        store.insert(key.unwrap()).unwrap();
    }
    store.to_bytes().unwrap()
}

/// A fresh directory of this test's own.
fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shadowkeep-backup-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `--secrets DIR` holding Secret `default/s3` with `id` and `key`.
fn secrets(name: &str, id: &str, key: &str) -> PathBuf {
    let dir = tempdir(name);
    let secret = dir.join("default/s3");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("accessKeyId"), id).unwrap();
    std::fs::write(secret.join("secretAccessKey"), key).unwrap();
    dir
}

fn s3_target(name: &str, moto: &Moto, bucket: &str) -> BackupTarget {
    BackupTarget {
        name: name.to_owned(),
        secret: None,
        s3: Some(S3BackupTarget {
            endpoint: Some(moto.endpoint()),
            region: None,
            bucket: bucket.to_owned(),
            prefix: Some("estates/one".to_owned()),
            credentials_secret_ref: S3CredentialsRef {
                name: "s3".to_owned(),
                access_key_id_key: None,
                secret_access_key_key: None,
            },
            allow_http: true,
        }),
    }
}

fn spec(targets: Vec<BackupTarget>, retention: i32, recipients: Vec<String>) -> BackupSpec {
    BackupSpec {
        retention,
        recovery_recipients: recipients,
        targets,
    }
}

fn owner() -> Owner {
    Owner::new("default", "tape-keys")
}

async fn run(
    targets: &LocalTargets,
    spec: &BackupSpec,
    keystore: &[u8],
    previous: &[BackupTargetStatus],
) -> Backups {
    let owner = owner();
    let manifests = vec!["kind: KeyManager\n".to_owned()];
    back_up(
        targets,
        &Source {
            owner: &owner,
            spec,
            keystore,
            kek: &KEK,
            manifests: &manifests,
            generation: Some(1),
        },
        previous,
        &Time(Timestamp::now()),
    )
    .await
}

async fn listed(targets: &LocalTargets, target: &BackupTarget) -> Vec<String> {
    let store = targets.open(&owner(), target).await.unwrap();
    let mut names = store.list().await.unwrap();
    names.sort();
    names
}

fn condition<'a>(
    backups: &'a Backups,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    backups
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap()
}

#[tokio::test]
async fn each_keystore_change_is_a_new_object_and_none_is_ever_overwritten() {
    let Some(moto) = Moto::start(None) else {
        return;
    };
    moto.create_bucket(BUCKET);
    let targets = LocalTargets {
        secrets: Some(secrets("change", "AKIDTEST", "not-checked-by-moto")),
    };
    let identity = age::x25519::Identity::generate();
    let target = s3_target("offsite", &moto, BUCKET);
    let spec = spec(
        vec![target.clone()],
        30,
        vec![identity.to_public().to_string()],
    );
    let first = keystore(2);

    let one = run(&targets, &spec, &first, &[]).await;
    assert_eq!(one.failures, Vec::new());
    assert_eq!(condition(&one, "BackupsCurrent").status, "True");
    assert_eq!(condition(&one, "KekEscrowed").status, "True");
    let names = listed(&targets, &target).await;
    assert_eq!(names.len(), 1, "{names:?}");
    let status = &one.targets[0];
    assert_eq!(status.last_backup.as_deref(), Some(names[0].as_str()));
    assert_eq!(
        status.keystore_sha256.as_deref(),
        Some(&keystore_digest(&first)[..12])
    );
    assert!(status.escrowed && status.error.is_none() && status.last_backup_at.is_some());

    // Unchanged: nothing written, whether the status remembers the backup or, after a
    // restart that lost it, the target's own listing says it holds it.
    let again = run(&targets, &spec, &first, &one.targets).await;
    assert_eq!(again.targets, one.targets);
    let restarted = run(&targets, &spec, &first, &[]).await;
    assert_eq!(restarted.targets[0].last_backup, one.targets[0].last_backup);
    assert!(restarted.targets[0].escrowed);
    assert_eq!(listed(&targets, &target).await, names);

    // Changed: a second object; the first stays as it was.
    let second = keystore(3);
    let two = run(&targets, &spec, &second, &again.targets).await;
    let names = listed(&targets, &target).await;
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(
        two.targets[0].last_backup.as_deref(),
        Some(names[1].as_str())
    );
    let store = targets.open(&owner(), &target).await.unwrap();
    let newest = archive::open(&store.read(&names[1]).await.unwrap()).unwrap();
    assert_eq!(newest.keystore, second);
    assert_eq!(newest.owner, owner());
    assert_eq!(newest.manifests, vec!["kind: KeyManager\n".to_owned()]);
    assert_eq!(
        newest
            .kek(std::slice::from_ref(&identity))
            .unwrap()
            .as_slice(),
        KEK
    );
    let oldest = store.read(&names[0]).await.unwrap();
    assert_eq!(archive::open(&oldest).unwrap().keystore, first);

    // The store itself refuses an overwrite (a conditional create), and nothing changes.
    let refused = store.create(&names[0], b"something else".to_vec()).await;
    assert!(matches!(refused, Err(TargetError::Exists)), "{refused:?}");
    assert_eq!(store.read(&names[0]).await.unwrap(), oldest);
    // No secret in what the status says.
    let shown = format!("{two:?}");
    assert!(!shown.contains("not-checked-by-moto"), "{shown}");
    assert!(
        !shown.contains(identity.to_string().expose_secret()),
        "{shown}"
    );
}

#[tokio::test]
async fn retention_keeps_the_newest_and_never_deletes_the_last() {
    let Some(moto) = Moto::start(None) else {
        return;
    };
    moto.create_bucket(BUCKET);
    let targets = LocalTargets {
        secrets: Some(secrets("retention", "AKIDTEST", "secret")),
    };
    let target = s3_target("offsite", &moto, BUCKET);
    let spec = spec(vec![target.clone()], 2, Vec::new());
    let mut previous = Vec::new();
    let mut last = Vec::new();
    for n in 1..=4 {
        last = keystore(n);
        let done = run(&targets, &spec, &last, &previous).await;
        assert_eq!(done.failures, Vec::new());
        previous = done.targets;
        // Names are made to the millisecond: keep two backups apart.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let names = listed(&targets, &target).await;
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(previous[0].last_backup.as_deref(), Some(names[1].as_str()));
    let store = targets.open(&owner(), &target).await.unwrap();
    let newest = archive::open(&store.read(&names[1]).await.unwrap()).unwrap();
    assert_eq!(newest.keystore, last);
    assert!(!newest.escrowed);
    let one = spec_with_retention(&spec, 1);
    let done = run(&targets, &one, &last, &[]).await;
    assert_eq!(done.failures, Vec::new());
    assert_eq!(listed(&targets, &target).await, vec![names[1].clone()]);
}

fn spec_with_retention(spec: &BackupSpec, retention: i32) -> BackupSpec {
    BackupSpec {
        retention,
        ..spec.clone()
    }
}

#[tokio::test]
async fn a_missing_bucket_is_named_and_the_other_target_is_still_written() {
    let Some(moto) = Moto::start(None) else {
        return;
    };
    moto.create_bucket(BUCKET);
    let targets = LocalTargets {
        secrets: Some(secrets("missing", "AKIDTEST", "secret")),
    };
    let good = s3_target("offsite", &moto, BUCKET);
    let missing = s3_target("nowhere", &moto, "no-such-bucket");
    let spec = spec(vec![missing, good.clone()], 30, Vec::new());
    let done = run(&targets, &spec, &keystore(1), &[]).await;
    assert_eq!(done.failures.len(), 1, "{:?}", done.failures);
    let (name, error) = &done.failures[0];
    assert_eq!(name, "nowhere");
    assert!(
        error.contains("no-such-bucket") || error.contains("NoSuchBucket"),
        "{error}"
    );
    let current = condition(&done, "BackupsCurrent");
    assert_eq!(
        (current.status.as_str(), current.reason.as_str()),
        ("False", "BackupTargetFailed")
    );
    assert!(
        current.message.contains("target nowhere"),
        "{}",
        current.message
    );
    assert_eq!(done.targets[0].error.as_deref(), Some(error.as_str()));
    assert_eq!(done.targets[0].last_backup, None);
    assert!(done.targets[1].error.is_none());
    assert_eq!(listed(&targets, &good).await.len(), 1);
    let escrow = condition(&done, "KekEscrowed");
    assert_eq!(
        (escrow.status.as_str(), escrow.reason.as_str()),
        ("False", "NoRecoveryKey")
    );
    assert!(
        escrow
            .message
            .contains("losing the cluster would lose every key")
    );
}

#[tokio::test]
async fn wrong_credentials_are_named_without_the_secret_and_nothing_is_written() {
    // The first request (the bucket's creation) is free; every later one must be signed
    // by a key moto's IAM knows, which these are not.
    let Some(moto) = Moto::start(Some(1)) else {
        return;
    };
    moto.create_bucket(BUCKET);
    let targets = LocalTargets {
        secrets: Some(secrets("credentials", "AKIDWRONG", "wrong-secret-value")),
    };
    let target = s3_target("offsite", &moto, BUCKET);
    let spec = spec(vec![target], 30, Vec::new());
    let done = run(&targets, &spec, &keystore(1), &[]).await;
    assert_eq!(done.failures.len(), 1, "{:?}", done.failures);
    let (name, error) = &done.failures[0];
    assert_eq!(name, "offsite");
    assert!(
        error.contains("InvalidAccessKeyId") || error.contains("403"),
        "{error}"
    );
    assert!(!error.contains("wrong-secret-value"), "{error}");
    assert_eq!(condition(&done, "BackupsCurrent").status, "False");
    assert_eq!(done.targets[0].last_backup, None);
}

#[tokio::test]
async fn a_target_without_credentials_or_a_secret_target_under_up_is_reported_clearly() {
    let moto_free = tempdir("nocreds");
    let spec = spec(
        vec![
            BackupTarget {
                name: "vault".to_owned(),
                secret: Some(SecretBackupTarget {
                    namespace: "backups".to_owned(),
                }),
                s3: None,
            },
            BackupTarget {
                name: "offsite".to_owned(),
                secret: None,
                s3: Some(S3BackupTarget {
                    endpoint: Some("http://127.0.0.1:9".to_owned()),
                    region: None,
                    bucket: BUCKET.to_owned(),
                    prefix: None,
                    credentials_secret_ref: S3CredentialsRef {
                        name: "s3".to_owned(),
                        access_key_id_key: Some("id".to_owned()),
                        secret_access_key_key: None,
                    },
                    allow_http: true,
                }),
            },
        ],
        30,
        Vec::new(),
    );
    let without = LocalTargets { secrets: None };
    let done = run(&without, &spec, &keystore(1), &[]).await;
    let errors: Vec<&str> = done.failures.iter().map(|(_, e)| e.as_str()).collect();
    assert!(errors[0].contains("not available under `up`"), "{errors:?}");
    assert!(errors[1].contains("--secrets"), "{errors:?}");
    let missing = LocalTargets {
        secrets: Some(moto_free),
    };
    let done = run(&missing, &spec, &keystore(1), &[]).await;
    assert!(
        done.failures[1].1.contains("has no key \"id\""),
        "{:?}",
        done.failures
    );
}
