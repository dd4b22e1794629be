//! The GitSource reconcile against an in-memory API server (kube-fake-client), following
//! real Git repositories built here with the `git` binary: a branch applied, updated and
//! force-pushed; a risky head held until its commit is accepted; pruning that never
//! deletes a KeyManager and prunes nothing from an empty branch; an unreachable repository
//! that changes nothing; signed (SSH and OpenPGP) and unsigned heads; fetching over ssh
//! from a real `sshd` and over https from `git http-backend` behind TLS and basic auth, with
//! credentials from a Secret.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams, PostParams};
use kube_fake_client::ClientBuilder;
use shadowkeep::controller::{Context, git_source};
use shadowkeep_api::crd::{
    AppliedObject, DriveTable, GitSource, GitSourceStatus, KeyGroup, KeyManager, Shadow,
};

const NS: &str = "default";
const SOURCE: &str = "estate";

/// A scratch directory, removed first if an earlier run left it.
fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("shadowkeep-git-sync-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A work tree on branch `main`, committed to with the `git` binary as a user would.
struct Work {
    dir: PathBuf,
}

impl Work {
    fn new(root: &Path) -> Self {
        let dir = root.join("repo");
        std::fs::create_dir_all(&dir).unwrap();
        let work = Self { dir };
        work.git(&["init", "-q", "-b", "main"]);
        work
    }

    fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .current_dir(&self.dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .args([
                "-c",
                "user.name=test",
                "-c",
                "user.email=test@example.com",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.join(name), text).unwrap();
    }

    fn remove(&self, name: &str) {
        std::fs::remove_file(self.dir.join(name)).unwrap();
    }

    /// Commits every change; the new head.
    fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }

    fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }

    /// Writes the quickstart's four manifests.
    fn quickstart(&self) {
        for file in [
            "keymanager.yaml",
            "keygroup.yaml",
            "drivetable.yaml",
            "shadow.yaml",
        ] {
            self.write(file, &quickstart_file(file));
        }
    }
}

/// An empty in-memory API with the five kinds.
async fn cluster() -> kube::Client {
    ClientBuilder::new()
        .with_resource::<KeyManager>()
        .with_resource::<DriveTable>()
        .with_resource::<KeyGroup>()
        .with_resource::<Shadow>()
        .with_resource::<GitSource>()
        .build()
        .await
        .unwrap()
}

async fn context(client: &kube::Client, cache: &Path) -> Arc<Context> {
    let mut ctx = Context::listed(client.clone(), "shadowkeep-test")
        .await
        .unwrap();
    ctx.git_cache = cache.to_path_buf();
    Arc::new(ctx)
}

async fn create_source(client: &kube::Client, spec: serde_json::Value) {
    let source: GitSource = serde_json::from_value(serde_json::json!({
        "apiVersion": "shadowkeep.io/v1alpha1", "kind": "GitSource",
        "metadata": {"name": SOURCE, "namespace": NS},
        "spec": spec,
    }))
    .unwrap();
    Api::<GitSource>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &source)
        .await
        .unwrap();
}

/// One reconcile of the GitSource as it is stored; its status after.
async fn reconcile(client: &kube::Client, cache: &Path) -> GitSourceStatus {
    let api = Api::<GitSource>::namespaced(client.clone(), NS);
    let source = api.get(SOURCE).await.unwrap();
    git_source::reconcile(Arc::new(source), context(client, cache).await)
        .await
        .unwrap();
    api.get(SOURCE).await.unwrap().status.unwrap()
}

fn condition<'a>(status: &'a GitSourceStatus, type_: &str) -> &'a Condition {
    status.conditions.iter().find(|c| c.type_ == type_).unwrap()
}

fn ready(status: &GitSourceStatus) -> (String, String) {
    let c = condition(status, "Ready");
    (c.status.clone(), c.reason.clone())
}

async fn names<K>(client: &kube::Client) -> Vec<String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let mut names: Vec<String> = Api::<K>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|o| o.meta().name.clone().unwrap())
        .collect();
    names.sort();
    names
}

/// The (type, reason) of every Event about the GitSource.
async fn events(client: &kube::Client) -> Vec<(String, String, String)> {
    Api::<Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.kind.as_deref() == Some("GitSource"))
        })
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

async fn annotate_accept(client: &kube::Client, commit: &str) {
    let api = Api::<GitSource>::namespaced(client.clone(), NS);
    let mut source = api.get(SOURCE).await.unwrap();
    source
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("shadowkeep.io/accept-risks".to_owned(), commit.to_owned());
    api.replace(SOURCE, &PostParams::default(), &source)
        .await
        .unwrap();
}

async fn drives(client: &kube::Client) -> Vec<String> {
    Api::<DriveTable>::namespaced(client.clone(), NS)
        .get("library-a")
        .await
        .unwrap()
        .spec
        .drives
        .into_iter()
        .map(|d| d.serial)
        .collect()
}

fn with_drive(table: &str, serial: &str) -> String {
    format!(
        "{table}    - serial: \"{serial}\"\n      certificateIdentity: library-a.tape.example.com\n"
    )
}

/// A recovery recipient whose private key was thrown away: without one, the quickstart's
/// head carries the "no recovery key" warning, a risk that holds a first sync.
const RECOVERY_RECIPIENT: &str = "age1hy3xdcy84zv0ux2msjyne60kecsz72sjlj08hxq3v6552xpaef7qcvqxp0";

/// A quickstart manifest, its KeyManager escrowing its KEK.
fn quickstart_file(name: &str) -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/quickstart")
            .join(name),
    )
    .unwrap();
    text.replace(
        "  backup:\n",
        &format!("  backup:\n    recoveryRecipients: [{RECOVERY_RECIPIENT}]\n"),
    )
}

#[tokio::test]
async fn a_branch_is_applied_updated_and_followed_through_a_force_push() {
    let root = scratch("follow");
    let work = Work::new(&root);
    work.quickstart();
    let first = work.commit("the quickstart");
    let client = cluster().await;
    create_source(
        &client,
        serde_json::json!({"url": work.url(), "interval": "30s"}),
    )
    .await;
    let cache = root.join("cache");

    let status = reconcile(&client, &cache).await;
    assert_eq!(
        ready(&status),
        ("True".into(), "Succeeded".into()),
        "{status:?}"
    );
    assert_eq!(
        status.last_applied_revision.as_deref(),
        Some(format!("main@sha1:{first}").as_str())
    );
    assert_eq!(status.last_attempted_revision, status.last_applied_revision);
    assert_eq!(condition(&status, "Stalled").status, "False");
    assert_eq!(condition(&status, "Reconciling").status, "False");
    assert_eq!(names::<KeyManager>(&client).await, ["tape-keys"]);
    assert_eq!(names::<KeyGroup>(&client).await, ["lto-default"]);
    assert_eq!(names::<DriveTable>(&client).await, ["library-a"]);
    assert_eq!(names::<Shadow>(&client).await, ["tape-keys-dr"]);
    assert_eq!(
        status
            .inventory
            .iter()
            .map(|o| o.kind.as_str())
            .collect::<Vec<_>>(),
        ["KeyManager", "KeyGroup", "DriveTable", "Shadow"],
        "apply order"
    );

    // An update: one more drive.
    work.write(
        "drivetable.yaml",
        &with_drive(&quickstart_file("drivetable.yaml"), "1013000126"),
    );
    let second = work.commit("a drive for library A");
    let status = reconcile(&client, &cache).await;
    assert_eq!(ready(&status), ("True".into(), "Succeeded".into()));
    assert!(drives(&client).await.contains(&"1013000126".to_owned()));
    assert!(status.last_applied_revision.unwrap().ends_with(&second));

    // A force push: the head no longer descends from what was applied.
    work.write(
        "keygroup.yaml",
        &quickstart_file("keygroup.yaml").replace("keyCount: 10", "keyCount: 12"),
    );
    work.git(&["add", "-A"]);
    work.git(&["commit", "-q", "--amend", "-m", "rewritten"]);
    let rewritten = work.git(&["rev-parse", "HEAD"]);
    let status = reconcile(&client, &cache).await;
    let (state, reason) = ready(&status);
    assert_eq!((state.as_str(), reason.as_str()), ("True", "Succeeded"));
    assert!(
        condition(&status, "Ready").message.contains("force-pushed"),
        "{status:?}"
    );
    assert!(status.last_applied_revision.unwrap().ends_with(&rewritten));
    let group = Api::<KeyGroup>::namespaced(client.clone(), NS)
        .get("lto-default")
        .await
        .unwrap();
    assert_eq!(group.spec.key_count, 12);
    assert!(
        events(&client)
            .await
            .iter()
            .any(|(t, r, note)| t == "Warning" && r == "ForcePushed" && note.contains(&second)),
        "{:?}",
        events(&client).await
    );
}

#[tokio::test]
async fn a_risky_head_is_held_until_its_commit_is_accepted() {
    let root = scratch("held");
    let work = Work::new(&root);
    work.quickstart();
    let first = work.commit("the quickstart");
    let client = cluster().await;
    create_source(&client, serde_json::json!({"url": work.url()})).await;
    let cache = root.join("cache");
    reconcile(&client, &cache).await;

    // The last active Shadow of tape-keys removed: a risk `plan` names.
    work.remove("shadow.yaml");
    let risky = work.commit("no more shadow");
    let status = reconcile(&client, &cache).await;
    assert_eq!(
        ready(&status),
        ("False".into(), "RiskHeld".into()),
        "{status:?}"
    );
    assert_eq!(condition(&status, "Stalled").status, "True");
    assert!(
        status
            .held_risks
            .iter()
            .any(|r| r.code == "last-active-shadow"),
        "{:?}",
        status.held_risks
    );
    assert!(condition(&status, "Ready").message.contains(&risky));
    assert!(status.last_applied_revision.unwrap().ends_with(&first));
    assert!(status.last_attempted_revision.unwrap().ends_with(&risky));
    assert_eq!(
        names::<Shadow>(&client).await,
        ["tape-keys-dr"],
        "held: nothing pruned"
    );
    assert!(
        events(&client)
            .await
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "RiskHeld")
    );

    // Accepting another commit, or too short a prefix, accepts nothing.
    annotate_accept(&client, &first).await;
    assert_eq!(ready(&reconcile(&client, &cache).await).1, "RiskHeld");
    annotate_accept(&client, &risky[..6]).await;
    assert_eq!(ready(&reconcile(&client, &cache).await).1, "RiskHeld");

    annotate_accept(&client, &risky[..12]).await;
    let status = reconcile(&client, &cache).await;
    assert_eq!(
        ready(&status),
        ("True".into(), "Succeeded".into()),
        "{status:?}"
    );
    assert!(status.held_risks.is_empty());
    assert!(status.last_applied_revision.unwrap().ends_with(&risky));
    assert!(
        names::<Shadow>(&client).await.is_empty(),
        "pruned once accepted"
    );
}

#[tokio::test]
async fn pruning_never_deletes_a_key_manager_and_an_empty_branch_prunes_nothing() {
    let root = scratch("prune");
    let work = Work::new(&root);
    work.quickstart();
    work.commit("the quickstart");
    let client = cluster().await;
    create_source(&client, serde_json::json!({"url": work.url()})).await;
    let cache = root.join("cache");
    reconcile(&client, &cache).await;

    // A removed DriveTable is pruned (once its risk, drives unlisted, is accepted).
    work.remove("drivetable.yaml");
    let head = work.commit("library A retired");
    annotate_accept(&client, &head).await;
    let status = reconcile(&client, &cache).await;
    assert_eq!(ready(&status).1, "Succeeded", "{status:?}");
    assert!(names::<DriveTable>(&client).await.is_empty());

    // Everything of tape-keys removed, another KeyManager declared: the KeyManager is
    // kept and reported orphaned; its KeyGroup and Shadow are pruned.
    for file in ["keymanager.yaml", "keygroup.yaml", "shadow.yaml"] {
        work.remove(file);
    }
    work.write(
        "other.yaml",
        &quickstart_file("keymanager.yaml")
            .replace("name: tape-keys", "name: vault-keys")
            .replace("serverId: tape-keys-eu1", "serverId: vault-keys-eu1"),
    );
    let head = work.commit("tape-keys retired");
    let status = reconcile(&client, &cache).await;
    assert!(
        status
            .held_risks
            .iter()
            .any(|r| r.code == "key-manager-deleted"),
        "{:?}",
        status.held_risks
    );
    annotate_accept(&client, &head).await;
    let status = reconcile(&client, &cache).await;
    assert_eq!(ready(&status).1, "Succeeded", "{status:?}");
    assert_eq!(
        names::<KeyManager>(&client).await,
        ["tape-keys", "vault-keys"]
    );
    assert!(names::<KeyGroup>(&client).await.is_empty());
    assert!(names::<Shadow>(&client).await.is_empty());
    let orphan = AppliedObject {
        kind: "KeyManager".into(),
        namespace: NS.into(),
        name: "tape-keys".into(),
    };
    assert_eq!(status.orphaned, std::slice::from_ref(&orphan));
    assert!(
        condition(&status, "Ready")
            .message
            .contains("KeyManager default/tape-keys")
    );

    // Still reported on the next revision, which does not declare it either.
    work.write("notes.txt", "a file that is not a manifest\n");
    work.commit("notes");
    let status = reconcile(&client, &cache).await;
    assert_eq!(status.orphaned, [orphan]);

    // An empty branch, even accepted, prunes nothing.
    work.remove("other.yaml");
    let empty = work.commit("everything removed");
    annotate_accept(&client, &empty).await;
    let before = status.last_applied_revision.clone();
    let status = reconcile(&client, &cache).await;
    assert_eq!(
        ready(&status),
        ("False".into(), "EmptySource".into()),
        "{status:?}"
    );
    assert_eq!(condition(&status, "Stalled").status, "True");
    assert_eq!(status.last_applied_revision, before);
    assert_eq!(
        names::<KeyManager>(&client).await,
        ["tape-keys", "vault-keys"]
    );
}

#[tokio::test]
async fn an_unreachable_repository_changes_nothing() {
    let root = scratch("unreachable");
    let work = Work::new(&root);
    work.quickstart();
    work.commit("the quickstart");
    let client = cluster().await;
    create_source(&client, serde_json::json!({"url": work.url()})).await;
    let cache = root.join("cache");
    let applied = reconcile(&client, &cache).await;

    // The repository goes away.
    std::fs::rename(&work.dir, root.join("gone")).unwrap();
    let status = reconcile(&client, &cache).await;
    assert_eq!(
        ready(&status),
        ("False".into(), "FetchFailed".into()),
        "{status:?}"
    );
    assert_eq!(condition(&status, "Reconciling").status, "True");
    assert_eq!(condition(&status, "Stalled").status, "False");
    assert!(
        condition(&status, "Ready")
            .message
            .contains("nothing pruned")
    );
    assert_eq!(status.last_applied_revision, applied.last_applied_revision);
    assert_eq!(status.inventory, applied.inventory);
    assert_eq!(names::<DriveTable>(&client).await, ["library-a"]);
    assert_eq!(names::<Shadow>(&client).await, ["tape-keys-dr"]);
    assert!(
        events(&client)
            .await
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "FetchFailed")
    );

    // An https server that is not there: the same, nothing changed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let api = Api::<GitSource>::namespaced(client.clone(), NS);
    let mut source = api.get(SOURCE).await.unwrap();
    source.spec.url = format!("https://127.0.0.1:{port}/estate.git");
    api.replace(SOURCE, &PostParams::default(), &source)
        .await
        .unwrap();
    let status = reconcile(&client, &cache).await;
    assert_eq!(
        ready(&status),
        ("False".into(), "FetchFailed".into()),
        "{status:?}"
    );
    assert_eq!(status.last_applied_revision, applied.last_applied_revision);
    assert_eq!(names::<Shadow>(&client).await, ["tape-keys-dr"]);
}

/// An Ed25519 key made with `ssh-keygen`: (private key file, its allowed-signers line).
fn ssh_key(root: &Path, name: &str) -> (PathBuf, String) {
    let key = root.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let mut fields = public.split_whitespace();
    let line = format!(
        "test@example.com {} {}\n",
        fields.next().unwrap(),
        fields.next().unwrap()
    );
    (key, line)
}

fn signed_commit(work: &Work, key: &Path, message: &str) -> String {
    work.git(&["add", "-A"]);
    work.git(&[
        "-c",
        "gpg.format=ssh",
        "-c",
        &format!("user.signingkey={}", key.display()),
        "commit",
        "-q",
        "-S",
        "--allow-empty",
        "-m",
        message,
    ]);
    work.git(&["rev-parse", "HEAD"])
}

#[tokio::test]
async fn a_signed_head_is_applied_an_unsigned_or_foreign_one_refused() {
    let root = scratch("signed");
    let work = Work::new(&root);
    let (key, allowed) = ssh_key(&root, "signer");
    let (stranger, _) = ssh_key(&root, "stranger");
    work.quickstart();
    let signed = signed_commit(&work, &key, "the quickstart, signed");
    let client = cluster().await;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("signers".to_owned()),
            namespace: Some(NS.to_owned()),
            ..Default::default()
        },
        data: Some(
            [(
                "allowed_signers".to_owned(),
                k8s_openapi::ByteString(allowed.into_bytes()),
            )]
            .into(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    create_source(
        &client,
        serde_json::json!({"url": work.url(),
                           "verify": {"mode": "ssh", "allowedSignersRef": {"name": "signers"}}}),
    )
    .await;
    let cache = root.join("cache");
    let status = reconcile(&client, &cache).await;
    assert_eq!(
        ready(&status),
        ("True".into(), "Succeeded".into()),
        "{status:?}"
    );
    assert!(status.last_applied_revision.unwrap().ends_with(&signed));

    // Unsigned: refused, nothing applied.
    work.write(
        "drivetable.yaml",
        &with_drive(&quickstart_file("drivetable.yaml"), "1013000126"),
    );
    let unsigned = work.commit("a drive, unsigned");
    let status = reconcile(&client, &cache).await;
    assert_eq!(
        ready(&status),
        ("False".into(), "VerificationFailed".into())
    );
    assert!(
        condition(&status, "Ready").message.contains("not signed"),
        "{status:?}"
    );
    assert!(status.last_attempted_revision.unwrap().ends_with(&unsigned));
    assert!(status.last_applied_revision.unwrap().ends_with(&signed));
    assert!(!drives(&client).await.contains(&"1013000126".to_owned()));

    // Signed by a key that is not an allowed signer: refused too.
    signed_commit(&work, &stranger, "a drive, signed by a stranger");
    let status = reconcile(&client, &cache).await;
    assert_eq!(ready(&status).1, "VerificationFailed");
    assert!(
        condition(&status, "Ready")
            .message
            .contains("not an allowed signer"),
        "{status:?}"
    );
    assert!(!drives(&client).await.contains(&"1013000126".to_owned()));

    // Signed by the allowed key: applied.
    let good = signed_commit(&work, &key, "a drive, signed");
    let status = reconcile(&client, &cache).await;
    assert_eq!(ready(&status).1, "Succeeded", "{status:?}");
    assert!(status.last_applied_revision.unwrap().ends_with(&good));
    assert!(drives(&client).await.contains(&"1013000126".to_owned()));

    // OpenPGP asked of a Secret without keyring.asc: the spec is refused, naming the key.
    let api = Api::<GitSource>::namespaced(client.clone(), NS);
    let mut source = api.get(SOURCE).await.unwrap();
    source.spec.verify = serde_json::from_value(
        serde_json::json!({"mode": "openpgp", "keyRingRef": {"name": "signers"}}),
    )
    .unwrap();
    api.replace(SOURCE, &PostParams::default(), &source)
        .await
        .unwrap();
    let status = reconcile(&client, &cache).await;
    assert_eq!(ready(&status).1, "InvalidSpec");
    assert!(
        condition(&status, "Ready")
            .message
            .contains("(verify.keyRingRef) has no keyring.asc key"),
        "{status:?}"
    );
}

/// A `GnuPG` home of its own, its agent stopped when dropped.
struct Gpg {
    home: PathBuf,
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&self.home)
            .args(["--kill", "gpg-agent"])
            .output();
    }
}

impl Gpg {
    /// `gpg` in a home under `root`; `None` (the test skips, saying so) when there is no
    /// gpg, except under CI (`SHADOWKEEP_CI=1`), where that is a failure.
    fn new(root: &Path) -> Option<Self> {
        if Command::new("gpg").arg("--version").output().is_err() {
            assert!(
                std::env::var_os("SHADOWKEEP_CI").is_none(),
                "gpg is required under CI (apt-get install gnupg)"
            );
            eprintln!("skipped: no gpg on PATH");
            return None;
        }
        let home = root.join("gnupg");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        Some(Self { home })
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("gpg")
            .arg("--homedir")
            .arg(&self.home)
            .args(["--batch", "--passphrase", ""])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// A new Ed25519 signing key; its fingerprint.
    fn key(&self, uid: &str) -> String {
        self.run(&["--quick-gen-key", uid, "ed25519", "sign", "never"]);
        let listed = self.run(&["--with-colons", "--list-keys", uid]);
        listed
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .unwrap()
            .trim_matches(':')
            .to_owned()
    }

    /// Commits every change, signed by `key` through `git commit -S`; the new head.
    fn commit(&self, work: &Work, key: &str, message: &str) -> String {
        work.git(&["add", "-A"]);
        let out = Command::new("git")
            .current_dir(&work.dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GNUPGHOME", &self.home)
            .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
            .args([
                "-c",
                "gpg.program=gpg",
                "-c",
                &format!("user.signingkey={key}"),
            ])
            .args(["commit", "-q", "-S", "--allow-empty", "-m", message])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git commit -S: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        work.git(&["rev-parse", "HEAD"])
    }
}

/// Creates or replaces the Secret `keyring` with `keyring.asc`.
async fn keyring_secret(client: &kube::Client, keyring: &str) {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("keyring".to_owned()),
            namespace: Some(NS.to_owned()),
            ..Default::default()
        },
        data: Some(
            [(
                "keyring.asc".to_owned(),
                k8s_openapi::ByteString(keyring.as_bytes().to_vec()),
            )]
            .into(),
        ),
        ..Default::default()
    };
    let api = Api::<Secret>::namespaced(client.clone(), NS);
    if api.get_opt("keyring").await.unwrap().is_some() {
        api.replace("keyring", &PostParams::default(), &secret)
            .await
            .unwrap();
    } else {
        api.create(&PostParams::default(), &secret).await.unwrap();
    }
}

#[tokio::test]
async fn an_openpgp_signed_head_is_applied_an_unsigned_foreign_or_ssh_signed_one_refused() {
    let root = scratch("openpgp");
    let Some(gpg) = Gpg::new(&root) else { return };
    let key = gpg.key("Signer <signer@example.com>");
    let stranger = gpg.key("Stranger <stranger@example.com>");
    let keyring = gpg.run(&["--armor", "--export", &key]);
    let (ssh, _) = ssh_key(&root, "ssh-signer");
    let work = Work::new(&root);
    work.quickstart();
    let signed = gpg.commit(&work, &key, "the quickstart, signed");
    let client = cluster().await;
    keyring_secret(&client, &keyring).await;
    create_source(
        &client,
        serde_json::json!({"url": work.url(),
                           "verify": {"mode": "openpgp", "keyRingRef": {"name": "keyring"}}}),
    )
    .await;
    let cache = root.join("cache");
    let status = reconcile(&client, &cache).await;
    assert_eq!(
        ready(&status),
        ("True".into(), "Succeeded".into()),
        "{status:?}"
    );
    assert!(
        status
            .last_applied_revision
            .as_ref()
            .unwrap()
            .ends_with(&signed)
    );
    assert!(
        condition(&status, "Ready")
            .message
            .ends_with(&format!("(signed by OpenPGP key {key})")),
        "{status:?}"
    );

    // Each refused head adds the same drive: it must never be applied.
    let refused = |status: &GitSourceStatus, says: &str| {
        assert_eq!(ready(status).1, "VerificationFailed", "{status:?}");
        let message = &condition(status, "Ready").message;
        assert!(message.contains(says), "{message} does not say {says:?}");
        assert!(
            status
                .last_applied_revision
                .as_ref()
                .unwrap()
                .ends_with(&signed)
        );
    };
    work.write(
        "drivetable.yaml",
        &with_drive(&quickstart_file("drivetable.yaml"), "1013000126"),
    );
    let unsigned = work.commit("a drive, unsigned");
    let status = reconcile(&client, &cache).await;
    refused(
        &status,
        &format!("failed to verify commit {unsigned}: it is not signed"),
    );
    assert!(!drives(&client).await.contains(&"1013000126".to_owned()));

    gpg.commit(&work, &stranger, "a drive, signed by a stranger");
    let status = reconcile(&client, &cache).await;
    refused(
        &status,
        &format!("signed by OpenPGP key {stranger}, which is not in the keyring"),
    );
    assert!(!drives(&client).await.contains(&"1013000126".to_owned()));

    signed_commit(&work, &ssh, "a drive, signed with SSH");
    let status = reconcile(&client, &cache).await;
    refused(
        &status,
        "the signature is not an OpenPGP signature (an SSH or X.509 one?), and verify.mode is openpgp",
    );
    assert!(!drives(&client).await.contains(&"1013000126".to_owned()));

    // A malformed keyring refuses even a head its key signed, naming keyring.asc.
    let good = gpg.commit(&work, &key, "a drive, signed");
    keyring_secret(
        &client,
        "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot a key\n",
    )
    .await;
    let status = reconcile(&client, &cache).await;
    refused(
        &status,
        "failed to read the OpenPGP keyring (keyring.asc): armor block 1",
    );
    assert!(!drives(&client).await.contains(&"1013000126".to_owned()));

    // The keyring mended: the signed head is applied.
    keyring_secret(&client, &keyring).await;
    let status = reconcile(&client, &cache).await;
    assert_eq!(ready(&status).1, "Succeeded", "{status:?}");
    assert!(status.last_applied_revision.unwrap().ends_with(&good));
    assert!(drives(&client).await.contains(&"1013000126".to_owned()));
}

#[tokio::test]
async fn an_invalid_head_a_binary_manifest_or_a_missing_path_is_refused_and_changes_nothing() {
    let root = scratch("invalid");
    let work = Work::new(&root);
    std::fs::create_dir_all(work.dir.join("site")).unwrap();
    for file in [
        "keymanager.yaml",
        "keygroup.yaml",
        "drivetable.yaml",
        "shadow.yaml",
    ] {
        work.write(&format!("site/{file}"), &quickstart_file(file));
    }
    work.write("README.yaml", "not: [valid");
    let first = work.commit("the quickstart under site/");
    let client = cluster().await;
    create_source(
        &client,
        serde_json::json!({"url": work.url(), "path": "site"}),
    )
    .await;
    let cache = root.join("cache");
    let status = reconcile(&client, &cache).await;
    assert_eq!(
        ready(&status).1,
        "Succeeded",
        "only site/ is read: {status:?}"
    );

    // A manifest that does not parse, under the path.
    work.write(
        "site/drivetable.yaml",
        "apiVersion: shadowkeep.io/v1alpha1\nkind: DriveTable\nmetadata: {name: library-a\n",
    );
    let broken = work.commit("a broken table");
    let status = reconcile(&client, &cache).await;
    assert_eq!(
        ready(&status),
        ("False".into(), "InvalidHead".into()),
        "{status:?}"
    );
    let message = &condition(&status, "Ready").message;
    assert!(
        message.contains("site/drivetable.yaml") && message.contains("nothing applied"),
        "{message}"
    );
    assert!(status.last_attempted_revision.unwrap().ends_with(&broken));
    assert!(status.last_applied_revision.unwrap().ends_with(&first));
    assert_eq!(names::<DriveTable>(&client).await, ["library-a"]);

    // A binary file named as a manifest.
    std::fs::write(work.dir.join("site/drivetable.yaml"), b"\x00\x01binary\xff").unwrap();
    work.commit("a binary table");
    let status = reconcile(&client, &cache).await;
    assert_eq!(ready(&status).1, "InvalidHead");
    assert!(
        condition(&status, "Ready").message.contains("binary"),
        "{status:?}"
    );

    // The path gone from the branch: nothing to apply, nothing pruned.
    work.git(&["rm", "-q", "-r", "site"]);
    work.commit("site/ moved away");
    let status = reconcile(&client, &cache).await;
    assert_eq!(ready(&status).1, "EmptySource", "{status:?}");
    assert!(
        condition(&status, "Ready")
            .message
            .contains("holds no shadowkeep object under site")
    );
    assert_eq!(names::<KeyManager>(&client).await, ["tape-keys"]);
    assert_eq!(names::<DriveTable>(&client).await, ["library-a"]);
    assert_eq!(names::<Shadow>(&client).await, ["tape-keys-dr"]);
}

/// Creates or replaces Secret `name` with `data`.
async fn put_secret(client: &kube::Client, name: &str, data: &[(&str, &[u8])]) {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(NS.to_owned()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), k8s_openapi::ByteString(v.to_vec())))
                .collect(),
        ),
        ..Default::default()
    };
    let api = Api::<Secret>::namespaced(client.clone(), NS);
    if api.get_opt(name).await.unwrap().is_some() {
        api.replace(name, &PostParams::default(), &secret)
            .await
            .unwrap();
    } else {
        api.create(&PostParams::default(), &secret).await.unwrap();
    }
}

fn ready_message(status: &GitSourceStatus) -> String {
    condition(status, "Ready").message.clone()
}

/// Fails when a secret's value shows in the status or in an Event.
async fn assert_secret_kept(client: &kube::Client, status: &GitSourceStatus, secret: &str) {
    let events = events(client).await;
    assert!(
        !format!("{status:?}").contains(secret) && !format!("{events:?}").contains(secret),
        "a secret value is in the status or an Event"
    );
}

/// A child process killed when the test ends, pass or fail.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (at most 30 s) until `port` accepts connections; fails with `log` if `child`
/// ends first.
fn wait_listening(child: &mut Killed, port: u16, log: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(exit) = child.0.try_wait().unwrap() {
            panic!(
                "the server ended ({exit}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on port {port}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A bare clone of `work` under `root/srv`, which the servers below serve.
fn bare(work: &Work, root: &Path) -> PathBuf {
    let srv = root.join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    let bare = srv.join("estate.git");
    work.git(&["clone", "-q", "--bare", ".", bare.to_str().unwrap()]);
    bare
}

/// A real `sshd` on 127.0.0.1 with its own host key, letting in the key `authorized`
/// (whose public half is `authorized.pub`) as the user running the test; `git
/// upload-pack` serves repositories by path. `None` where sshd is not installed, said on
/// stderr; under CI (`SHADOWKEEP_CI`) its absence fails the test.
struct Sshd {
    _child: Killed,
    port: u16,
    user: String,
    /// The host key's public line: `ssh-ed25519 AAAA... comment`.
    host_key: String,
}

fn sshd(root: &Path, authorized: &Path) -> Option<Sshd> {
    let Some(binary) = ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        assert!(
            std::env::var_os("SHADOWKEEP_CI").is_none(),
            "sshd is not installed (apt-get install openssh-server)"
        );
        eprintln!("skipped: sshd is not installed (apt-get install openssh-server)");
        return None;
    };
    let dir = root.join("sshd");
    std::fs::create_dir_all(&dir).unwrap();
    let (host_key_file, _) = ssh_key(&dir, "host_key");
    let host_key = std::fs::read_to_string(host_key_file.with_extension("pub")).unwrap();
    std::fs::copy(
        authorized.with_extension("pub"),
        dir.join("authorized_keys"),
    )
    .unwrap();
    if output("id", &["-u"]) == "0" {
        // sshd run by root separates privileges into this directory, which only a booted
        // system makes.
        std::fs::create_dir_all("/run/sshd").unwrap();
    }
    let user = output("id", &["-un"]);
    let port = free_port();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\n\
             StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\nAllowUsers {user}\nLogLevel VERBOSE\n",
            host_key_file.display(),
            dir.join("authorized_keys").display(),
            dir.join("sshd.pid").display(),
        ),
    )
    .unwrap();
    let log = dir.join("sshd.log");
    let mut child = Killed(
        Command::new(binary)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(&mut child, port, &log);
    Some(Sshd {
        _child: child,
        port,
        user,
        host_key,
    })
}

#[tokio::test]
#[allow(clippy::too_many_lines)] // one story: applied, impostor host, unknown host, no or bad identity, applied
async fn a_branch_is_fetched_over_ssh_with_a_key_and_known_hosts_from_a_secret() {
    let root = scratch("ssh");
    let work = Work::new(&root);
    work.quickstart();
    let first = work.commit("the quickstart");
    let bare = bare(&work, &root);
    let (client_key, _) = ssh_key(&root, "client");
    let Some(server) = sshd(&root, &client_key) else {
        return;
    };
    let identity = std::fs::read_to_string(&client_key).unwrap();
    // A line of the private key's body: it must never show anywhere.
    let secret_line = identity.lines().nth(2).unwrap().to_owned();
    let known = |key: &str| {
        let mut fields = key.split_whitespace();
        format!(
            "[127.0.0.1]:{} {} {}\n",
            server.port,
            fields.next().unwrap(),
            fields.next().unwrap()
        )
    };
    let known_hosts = known(&server.host_key);
    let client = cluster().await;
    put_secret(
        &client,
        "git-ssh",
        &[
            ("identity", identity.as_bytes()),
            ("known_hosts", known_hosts.as_bytes()),
        ],
    )
    .await;
    let url = format!(
        "ssh://{}@127.0.0.1:{}{}",
        server.user,
        server.port,
        bare.display()
    );
    create_source(
        &client,
        serde_json::json!({"url": url, "credentialsRef": {"name": "git-ssh"}}),
    )
    .await;
    let cache = root.join("cache");
    let status = reconcile(&client, &cache).await;
    assert_eq!(
        ready(&status),
        ("True".into(), "Succeeded".into()),
        "{status:?}"
    );
    assert!(status.last_applied_revision.unwrap().ends_with(&first));
    assert_eq!(names::<Shadow>(&client).await, ["tape-keys-dr"]);

    // A new head pushed; from here on each refusal must leave it unapplied.
    work.write(
        "drivetable.yaml",
        &with_drive(&quickstart_file("drivetable.yaml"), "1013000126"),
    );
    let second = work.commit("a drive");
    work.git(&["push", "-q", bare.to_str().unwrap(), "main"]);
    let unchanged = |status: &GitSourceStatus| {
        assert!(
            status
                .last_applied_revision
                .as_ref()
                .unwrap()
                .ends_with(&first),
            "{status:?}"
        );
    };

    // known_hosts lists another key for this host: refused, whatever the identity.
    let (impostor, _) = ssh_key(&root, "impostor");
    let impostor = std::fs::read_to_string(impostor.with_extension("pub")).unwrap();
    put_secret(
        &client,
        "git-ssh",
        &[
            ("identity", identity.as_bytes()),
            ("known_hosts", known(&impostor).as_bytes()),
        ],
    )
    .await;
    let status = reconcile(&client, &cache).await;
    assert_eq!(
        ready(&status),
        ("False".into(), "FetchFailed".into()),
        "{status:?}"
    );
    let message = ready_message(&status);
    assert!(
        message.contains(&format!(
            "is not the one known_hosts lists for it: refused (key \"known_hosts\" of Secret {NS}/git-ssh"
        )),
        "{message}"
    );
    unchanged(&status);
    assert!(!drives(&client).await.contains(&"1013000126".to_owned()));
    assert_secret_kept(&client, &status, &secret_line).await;

    // known_hosts does not list this host at all: refused too.
    let elsewhere = known_hosts.replace(&format!(":{}]", server.port), ":1]");
    let elsewhere = format!(
        "[127.0.0.1]:1{}",
        &elsewhere[elsewhere.find(' ').unwrap()..]
    );
    put_secret(
        &client,
        "git-ssh",
        &[
            ("identity", identity.as_bytes()),
            ("known_hosts", elsewhere.as_bytes()),
        ],
    )
    .await;
    let status = reconcile(&client, &cache).await;
    let message = ready_message(&status);
    assert!(
        message.contains(&format!(
            "[127.0.0.1]:{} is not listed in known_hosts",
            server.port
        )),
        "{message}"
    );
    unchanged(&status);

    // No identity: the Secret and the key are named, nothing is fetched.
    put_secret(
        &client,
        "git-ssh",
        &[("known_hosts", known_hosts.as_bytes())],
    )
    .await;
    let status = reconcile(&client, &cache).await;
    assert_eq!(
        ready(&status),
        ("False".into(), "InvalidSpec".into()),
        "{status:?}"
    );
    assert_eq!(condition(&status, "Stalled").status, "True");
    assert_eq!(
        ready_message(&status),
        format!(
            "Secret {NS}/git-ssh (credentialsRef of GitSource {NS}/{SOURCE}) has no key \"identity\": nothing fetched or applied"
        )
    );
    unchanged(&status);

    // An identity the server does not let in: refused by the server, said so.
    let (stranger, _) = ssh_key(&root, "stranger");
    let stranger = std::fs::read_to_string(stranger).unwrap();
    put_secret(
        &client,
        "git-ssh",
        &[
            ("identity", stranger.as_bytes()),
            ("known_hosts", known_hosts.as_bytes()),
        ],
    )
    .await;
    let status = reconcile(&client, &cache).await;
    assert_eq!(ready(&status).1, "FetchFailed", "{status:?}");
    assert!(
        ready_message(&status).contains(&format!(
            "the server refused user \"{}\" with key \"identity\" of Secret {NS}/git-ssh",
            server.user
        )),
        "{status:?}"
    );
    unchanged(&status);
    assert_secret_kept(&client, &status, stranger.lines().nth(2).unwrap()).await;

    // Not a private key at all: named before anything is fetched.
    put_secret(
        &client,
        "git-ssh",
        &[
            ("identity", b"not a key"),
            ("known_hosts", known_hosts.as_bytes()),
        ],
    )
    .await;
    let status = reconcile(&client, &cache).await;
    assert_eq!(ready(&status).1, "InvalidSpec", "{status:?}");
    assert!(
        ready_message(&status).contains("key \"identity\" is not an OpenSSH private key"),
        "{status:?}"
    );
    unchanged(&status);

    // An encrypted identity: there is no passphrase to give, said so.
    let encrypted = root.join("encrypted");
    output(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "a passphrase",
            "-f",
            encrypted.to_str().unwrap(),
        ],
    );
    put_secret(
        &client,
        "git-ssh",
        &[
            ("identity", &std::fs::read(&encrypted).unwrap()),
            ("known_hosts", known_hosts.as_bytes()),
        ],
    )
    .await;
    let status = reconcile(&client, &cache).await;
    assert_eq!(ready(&status).1, "InvalidSpec", "{status:?}");
    assert!(
        ready_message(&status).contains("key \"identity\" is encrypted"),
        "{status:?}"
    );
    unchanged(&status);

    // The right key and host key again: the pushed head is applied.
    put_secret(
        &client,
        "git-ssh",
        &[
            ("identity", identity.as_bytes()),
            ("known_hosts", known_hosts.as_bytes()),
        ],
    )
    .await;
    let status = reconcile(&client, &cache).await;
    assert_eq!(ready(&status).1, "Succeeded", "{status:?}");
    assert!(status.last_applied_revision.unwrap().ends_with(&second));
    assert!(drives(&client).await.contains(&"1013000126".to_owned()));
}

/// `git http-backend` behind TLS and basic auth (`tests/fixtures/git_https.py`), serving
/// the bare repositories of `root/srv` to `user` with `password`.
struct Https {
    _child: Killed,
    port: u16,
}

fn https(root: &Path, cert: &shadowkeep_api::pki::Pair, user: &str, password: &str) -> Https {
    let dir = root.join("https");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), &cert.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), cert.key_pem.as_bytes()).unwrap();
    let backend = Path::new(&output("git", &["--exec-path"])).join("git-http-backend");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/git_https.py");
    let log = dir.join("server.log");
    let mut child = Command::new("python3")
        .arg(&fixture)
        .arg(root.join("srv"))
        .arg(dir.join("cert.pem"))
        .arg(dir.join("key.pem"))
        .arg(&backend)
        .env("GIT_TEST_USER", user)
        .env("GIT_TEST_PASSWORD", password)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut child = Killed(child);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    let port = line.trim().parse().unwrap_or_else(|_| {
        panic!(
            "the https fixture did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    wait_listening(&mut child, port, &log);
    Https {
        _child: child,
        port,
    }
}

#[tokio::test]
#[allow(clippy::too_many_lines)] // one story: wrong password, no or another CA, no password, applied
async fn a_branch_is_fetched_over_https_with_a_password_and_a_private_ca_from_a_secret() {
    use shadowkeep_api::pki::{Authority, Usage};

    let root = scratch("https");
    let work = Work::new(&root);
    work.quickstart();
    let first = work.commit("the quickstart");
    bare(&work, &root);
    let ca = Authority::generate("git test CA").unwrap();
    let cert = ca
        .leaf("git", &["127.0.0.1".to_owned()], Usage::Server)
        .unwrap();
    let password = "correct horse battery staple";
    let server = https(&root, &cert, "bot", password);
    let client = cluster().await;
    let url = format!("https://127.0.0.1:{}/estate.git", server.port);
    create_source(
        &client,
        serde_json::json!({"url": url, "credentialsRef": {"name": "git-https"}}),
    )
    .await;
    let cache = root.join("cache");

    // A wrong password: refused by the server, said so without either password.
    let wrong = "tr0ub4dor&3";
    put_secret(
        &client,
        "git-https",
        &[
            ("username", b"bot"),
            ("password", wrong.as_bytes()),
            ("ca.crt", ca.cert_pem().as_bytes()),
        ],
    )
    .await;
    let status = reconcile(&client, &cache).await;
    assert_eq!(
        ready(&status),
        ("False".into(), "FetchFailed".into()),
        "{status:?}"
    );
    assert!(
        ready_message(&status).contains(&format!(
            "the server refused user \"bot\" with key \"password\" of Secret {NS}/git-https (credentialsRef of GitSource {NS}/{SOURCE})"
        )),
        "{status:?}"
    );
    assert!(status.last_applied_revision.is_none());
    assert!(names::<Shadow>(&client).await.is_empty());
    assert_secret_kept(&client, &status, wrong).await;

    // The right password, without ca.crt: the private CA is not trusted.
    put_secret(
        &client,
        "git-https",
        &[("username", b"bot"), ("password", password.as_bytes())],
    )
    .await;
    let status = reconcile(&client, &cache).await;
    assert_eq!(ready(&status).1, "FetchFailed", "{status:?}");
    assert!(
        ready_message(&status).contains("as key ca.crt of its credentials Secret"),
        "{status:?}"
    );
    assert!(names::<Shadow>(&client).await.is_empty());
    assert_secret_kept(&client, &status, password).await;

    // Another CA's ca.crt: refused by the check of this source.
    let other = Authority::generate("another CA").unwrap();
    put_secret(
        &client,
        "git-https",
        &[
            ("username", b"bot"),
            ("password", password.as_bytes()),
            ("ca.crt", other.cert_pem().as_bytes()),
        ],
    )
    .await;
    let status = reconcile(&client, &cache).await;
    assert_eq!(ready(&status).1, "FetchFailed", "{status:?}");
    assert!(
        ready_message(&status).contains(&format!(
            "the certificate of 127.0.0.1 is not trusted by key \"ca.crt\" of Secret {NS}/git-https"
        )),
        "{status:?}"
    );
    assert!(names::<Shadow>(&client).await.is_empty());

    // No password key: named, nothing fetched.
    put_secret(
        &client,
        "git-https",
        &[("username", b"bot"), ("ca.crt", ca.cert_pem().as_bytes())],
    )
    .await;
    let status = reconcile(&client, &cache).await;
    assert_eq!(ready(&status).1, "InvalidSpec", "{status:?}");
    assert!(
        ready_message(&status).contains("has no key \"password\""),
        "{status:?}"
    );

    // The right password and the private CA: applied.
    put_secret(
        &client,
        "git-https",
        &[
            ("username", b"bot"),
            ("password", password.as_bytes()),
            ("ca.crt", ca.cert_pem().as_bytes()),
        ],
    )
    .await;
    let status = reconcile(&client, &cache).await;
    assert_eq!(
        ready(&status),
        ("True".into(), "Succeeded".into()),
        "{status:?}"
    );
    assert!(
        status
            .last_applied_revision
            .as_ref()
            .unwrap()
            .ends_with(&first)
    );
    assert_eq!(names::<Shadow>(&client).await, ["tape-keys-dr"]);
    assert_secret_kept(&client, &status, password).await;
}
