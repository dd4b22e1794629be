//! `shadowkeep plan` over Git repositories built here with git2: one scenario per kind of
//! risk, each checked against a golden output, and the exit codes, the bound on the
//! Markdown comment, Secret masking, the Mermaid diagram and bad input.
//!
//! Golden files are in `tests/plan-golden/`; after a deliberate change of the output,
//! rewrite them with `SHADOWKEEP_UPDATE_GOLDEN=1 cargo test -p shadowkeep --test plan`
//! and read the diff.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use git2::{Oid, Repository, Signature, Time};
use shadowkeep::cli::plan::{Format, run};
use shadowkeep::plan::render::{MAX_COMMENT, markdown, mermaid};
use shadowkeep::plan::risks::codes;
use shadowkeep::plan::{
    EXIT_CHANGES, EXIT_FAILED, EXIT_NO_CHANGE, EXIT_RISKS, Options, Plan, plan,
};

const LINK: i32 = 0o120_000;
const FILE: i32 = 0o100_644;

/// A bare repository, written to only through git2's object database: the plan must work
/// without a work tree.
struct Repo {
    dir: PathBuf,
    git: Repository,
    parent: Option<Oid>,
    tick: i64,
}

/// A revision's files: path → (mode, content).
type Files = BTreeMap<String, (i32, Vec<u8>)>;

impl Repo {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("shadowkeep-plan-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let git = Repository::init_bare(&dir).unwrap();
        Self {
            dir,
            git,
            parent: None,
            tick: 1_700_000_000,
        }
    }

    /// Commits exactly `files` as the whole tree and points `branch` at it.
    fn commit(&mut self, branch: &str, files: &Files) -> String {
        let tree = self.tree(files, "");
        let tree = self.git.find_tree(tree).unwrap();
        self.tick += 60;
        // A fixed author and time: the same content gives the same commit, so golden
        // outputs may show commit ids.
        let who = Signature::new("test", "test@example.com", &Time::new(self.tick, 0)).unwrap();
        let parents: Vec<git2::Commit<'_>> = self
            .parent
            .iter()
            .map(|p| self.git.find_commit(*p).unwrap())
            .collect();
        let parents: Vec<&git2::Commit<'_>> = parents.iter().collect();
        let oid = self
            .git
            .commit(None, &who, &who, branch, &tree, &parents)
            .unwrap();
        self.git
            .reference(&format!("refs/heads/{branch}"), oid, true, "test")
            .unwrap();
        self.parent = Some(oid);
        oid.to_string()
    }

    fn tree(&self, files: &Files, prefix: &str) -> Oid {
        let mut builder = self.git.treebuilder(None).unwrap();
        let mut dirs: BTreeSet<String> = BTreeSet::new();
        for (path, (mode, content)) in files {
            let Some(rest) = path.strip_prefix(prefix) else {
                continue;
            };
            if let Some((dir, _)) = rest.split_once('/') {
                dirs.insert(dir.to_owned());
            } else {
                let blob = self.git.blob(content).unwrap();
                builder.insert(rest, blob, *mode).unwrap();
            }
        }
        for dir in dirs {
            let sub = self.tree(files, &format!("{prefix}{dir}/"));
            builder.insert(&dir, sub, 0o040_000).unwrap();
        }
        builder.write().unwrap()
    }

    fn options(&self, base: &str, head: &str, paths: &[&str]) -> Options {
        Options {
            repo: self.dir.clone(),
            base: base.to_owned(),
            head: head.to_owned(),
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            secret_salt: [7; 32],
        }
    }
}

impl Drop for Repo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The quickstart estate under `estate/`, plus a spare KeyGroup no drive names.
fn quickstart() -> Files {
    let mut files = Files::new();
    for name in ["keymanager", "keygroup", "drivetable", "shadow"] {
        let text = std::fs::read_to_string(root().join(format!("examples/quickstart/{name}.yaml")))
            .unwrap();
        files.insert(format!("estate/{name}.yaml"), (FILE, text.into_bytes()));
    }
    add(
        &mut files,
        "estate/spare.yaml",
        "apiVersion: shadowkeep.io/v1alpha1\nkind: KeyGroup\nmetadata:\n  name: spare\nspec:\n  keyManagerRef:\n    name: tape-keys\n  keyCount: 20\n",
    );
    files
}

fn add(files: &mut Files, path: &str, text: &str) {
    files.insert(path.to_owned(), (FILE, text.as_bytes().to_vec()));
}

fn text_of(files: &Files, path: &str) -> String {
    String::from_utf8(files[path].1.clone()).unwrap()
}

/// Replaces `from` by `to` in a file; the text must be there.
fn edit(files: &mut Files, path: &str, from: &str, to: &str) {
    let text = text_of(files, path);
    assert!(text.contains(from), "{path} has no {from:?}");
    add(files, path, &text.replacen(from, to, 1));
}

const OTHER_KM: &str = "---\napiVersion: shadowkeep.io/v1alpha1\nkind: KeyManager\nmetadata:\n  name: other\nspec:\n  serverId: other-eu2\n  replicas: 2\n  placement:\n    zones: [eu-west-2a, eu-west-2b]\n---\napiVersion: shadowkeep.io/v1alpha1\nkind: Shadow\nmetadata:\n  name: other-dr\nspec:\n  keyManagerRef:\n    name: other\n  placement:\n    zone: eu-central-1b\n";

const LIBRARY_B: &str = "apiVersion: shadowkeep.io/v1alpha1\nkind: DriveTable\nmetadata:\n  name: library-b\nMETA\nspec:\n  keyManagerRef:\n    name: other\n  drives:\n    - serial: \"1013000124\"\n      certificateIdentity: library-b.tape.example.com\n";

/// The quickstart with a second KeyManager (and its Shadow) beside it.
fn two_key_managers() -> Files {
    let mut files = quickstart();
    add(&mut files, "estate/other.yaml", OTHER_KM);
    files
}

/// Drive 1013000124 taken out of library-a and listed in library-b under KeyManager
/// `other`, with `meta` as library-b's extra metadata lines.
fn move_drive(files: &mut Files, meta: &str) {
    edit(
        files,
        "estate/drivetable.yaml",
        "    - serial: \"1013000124\"\n      wwn: \"500104F000AB1235\"\n      certificateIdentity: library-a.tape.example.com\n      keyGroup: lto-default\n      description: Library A, frame 1, drive 2\n",
        "",
    );
    add(
        files,
        "estate/library-b.yaml",
        &LIBRARY_B.replace("META\n", meta),
    );
}

/// One scenario: a base, an edit making the head, the risk codes the plan must report and
/// the exit code.
struct Scenario {
    name: &'static str,
    base: fn() -> Files,
    head: fn(&mut Files),
    codes: &'static [&'static str],
    exit: u8,
}

#[allow(clippy::too_many_lines)] // one table of scenarios reads best in one place
fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "drive-moved",
            base: two_key_managers,
            head: |f| move_drive(f, ""),
            codes: &[codes::DRIVE_MOVED],
            exit: EXIT_RISKS,
        },
        Scenario {
            name: "drive-moved-accepted",
            base: two_key_managers,
            head: |f| {
                move_drive(
                    f,
                    "  annotations:\n    shadowkeep.io/accept-drive-moves: \"1013000124\"\n",
                );
            },
            codes: &[codes::DRIVE_MOVED, codes::MOVES_ACCEPTED],
            exit: EXIT_RISKS,
        },
        Scenario {
            name: "drives-released",
            base: quickstart,
            head: |f| {
                edit(
                    f,
                    "estate/keymanager.yaml",
                    "  name: tape-keys\n",
                    "  name: tape-keys\n  annotations:\n    shadowkeep.io/release-drives: 1013000123,1013000124\n",
                );
            },
            codes: &[codes::DRIVES_RELEASED],
            exit: EXIT_RISKS,
        },
        Scenario {
            name: "key-manager-deleted",
            base: two_key_managers,
            head: |f| {
                add(
                    f,
                    "estate/other.yaml",
                    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n",
                );
            },
            codes: &[codes::KEY_MANAGER_DELETED],
            exit: EXIT_RISKS,
        },
        Scenario {
            name: "single-replica",
            base: || {
                let mut f = quickstart();
                f.remove("estate/shadow.yaml");
                f
            },
            head: |f| {
                edit(f, "estate/keymanager.yaml", "replicas: 2", "replicas: 1");
                edit(
                    f,
                    "estate/keymanager.yaml",
                    "peerAcknowledgements: 1",
                    "peerAcknowledgements: 0",
                );
            },
            codes: &[
                codes::SINGLE_REPLICA,
                codes::DURABILITY_LOWERED,
                codes::NEW_WARNING,
            ],
            exit: EXIT_RISKS,
        },
        Scenario {
            name: "server-id-changed",
            base: quickstart,
            head: |f| {
                edit(
                    f,
                    "estate/keymanager.yaml",
                    "tape-keys-eu1",
                    "tape-keys-eu9",
                );
            },
            codes: &[codes::SERVER_ID_CHANGED],
            exit: EXIT_RISKS,
        },
        Scenario {
            name: "durability-lowered",
            base: quickstart,
            head: |f| {
                edit(
                    f,
                    "estate/keymanager.yaml",
                    "peerAcknowledgements: 1",
                    "peerAcknowledgements: 0",
                );
                edit(f, "estate/keymanager.yaml", "retention: 30", "retention: 3");
            },
            codes: &[codes::DURABILITY_LOWERED, codes::BACKUPS_LOWERED],
            exit: EXIT_RISKS,
        },
        Scenario {
            name: "last-active-shadow",
            base: quickstart,
            head: |f| edit(f, "estate/shadow.yaml", "state: Active", "state: Inactive"),
            codes: &[codes::LAST_SHADOW],
            exit: EXIT_RISKS,
        },
        Scenario {
            name: "shadow-in-primary-zone",
            base: quickstart,
            head: |f| {
                edit(
                    f,
                    "estate/shadow.yaml",
                    "zone: eu-central-1a",
                    "zone: eu-west-1b",
                );
            },
            codes: &[codes::SHADOW_BESIDE_PRIMARY, codes::NEW_WARNING],
            exit: EXIT_RISKS,
        },
        Scenario {
            name: "shadows-in-one-zone",
            base: || {
                let mut f = quickstart();
                add(
                    &mut f,
                    "estate/shadow-2.yaml",
                    "apiVersion: shadowkeep.io/v1alpha1\nkind: Shadow\nmetadata:\n  name: tape-keys-dr2\nspec:\n  keyManagerRef:\n    name: tape-keys\n  placement:\n    zone: us-east-1a\n",
                );
                f
            },
            head: |f| edit(f, "estate/shadow-2.yaml", "us-east-1a", "eu-central-1a"),
            // validate warns of the same placement, once per Shadow.
            codes: &[codes::SHADOWS_ONE_ZONE, codes::NEW_WARNING],
            exit: EXIT_RISKS,
        },
        Scenario {
            // One Shadow elsewhere survives the replicas' site: the one beside them is no
            // placement risk (the same rule as validate and the PlacementRisk condition).
            name: "shadow-beside-primary-with-another-elsewhere",
            base: || {
                let mut f = quickstart();
                add(
                    &mut f,
                    "estate/shadow-2.yaml",
                    "apiVersion: shadowkeep.io/v1alpha1\nkind: Shadow\nmetadata:\n  name: tape-keys-dr2\nspec:\n  keyManagerRef:\n    name: tape-keys\n  placement:\n    zone: us-east-1a\n",
                );
                f
            },
            head: |f| {
                edit(
                    f,
                    "estate/shadow.yaml",
                    "zone: eu-central-1a",
                    "zone: eu-west-1b",
                );
            },
            codes: &[],
            exit: EXIT_CHANGES,
        },
        Scenario {
            name: "shadow-limit-shortened",
            base: quickstart,
            head: |f| {
                edit(
                    f,
                    "estate/shadow.yaml",
                    "continuousServiceLimit: 168h",
                    "continuousServiceLimit: 24h",
                );
                edit(
                    f,
                    "estate/shadow.yaml",
                    "takeoverGracePeriod: 5m",
                    "takeoverGracePeriod: 30s",
                );
            },
            codes: &[codes::LIMIT_SHORTENED],
            exit: EXIT_RISKS,
        },
        Scenario {
            name: "key-group-removed",
            base: quickstart,
            head: |f| {
                f.remove("estate/spare.yaml");
                edit(f, "estate/keygroup.yaml", "keyCount: 10", "keyCount: 2");
            },
            codes: &[codes::KEY_GROUP_REMOVED, codes::KEY_COUNT_LOWERED],
            exit: EXIT_RISKS,
        },
        Scenario {
            name: "drive-unlisted",
            base: quickstart,
            head: |f| {
                edit(
                    f,
                    "estate/drivetable.yaml",
                    "    - serial: \"1013000125\"\n      certificateIdentity: library-a.tape.example.com\n      description: Library A, frame 2, drive 1 (default key group)\n",
                    "",
                );
            },
            codes: &[codes::DRIVE_UNLISTED],
            exit: EXIT_RISKS,
        },
        Scenario {
            name: "new-warning",
            base: quickstart,
            head: |f| {
                edit(
                    f,
                    "estate/drivetable.yaml",
                    "  drives:\n",
                    "  drives:\n    - serial: \"1013000999\"\n",
                );
            },
            codes: &[codes::NEW_WARNING],
            exit: EXIT_RISKS,
        },
        Scenario {
            name: "recovery-recipient-removed",
            base: || {
                let mut files = quickstart();
                edit(
                    &mut files,
                    "estate/keymanager.yaml",
                    "    retention: 30\n",
                    "    retention: 30\n    recoveryRecipients: [age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p]\n",
                );
                files
            },
            head: |f| {
                edit(
                    f,
                    "estate/keymanager.yaml",
                    "    recoveryRecipients: [age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p]\n",
                    "",
                );
            },
            codes: &[codes::NEW_WARNING],
            exit: EXIT_RISKS,
        },
        Scenario {
            name: "no-risk",
            base: quickstart,
            head: |f| {
                edit(
                    f,
                    "estate/drivetable.yaml",
                    "Library A, frame 1, drive 1",
                    "Library A, frame 1, drive 1 (serviced 2026-11)",
                );
                edit(f, "estate/keymanager.yaml", "replicas: 2", "replicas: 3");
            },
            codes: &[],
            exit: EXIT_CHANGES,
        },
        Scenario {
            name: "no-change",
            base: quickstart,
            head: |f| {
                // Another file and an explicit default: nothing the API server would store
                // differently.
                add(f, "README.md", "# estate\n");
                edit(
                    f,
                    "estate/keygroup.yaml",
                    "keyCount: 10",
                    "keyCount: 10\n  length: 256",
                );
            },
            codes: &[],
            exit: EXIT_NO_CHANGE,
        },
        Scenario {
            name: "invalid-head",
            base: quickstart,
            head: |f| {
                edit(f, "estate/keymanager.yaml", "replicas: 2", "replicas: 1");
                add(f, "estate/broken.yaml", "kind: [unclosed\n");
            },
            codes: &[],
            exit: EXIT_RISKS,
        },
    ]
}

fn golden(name: &str, actual: &str) {
    let path = root().join(format!("operator/tests/plan-golden/{name}"));
    if std::env::var_os("SHADOWKEEP_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "failed to read {}: {e}; write it with SHADOWKEEP_UPDATE_GOLDEN=1",
            path.display()
        )
    });
    assert_eq!(
        actual,
        expected,
        "{name} differs from its golden output ({}); if the change is meant, rewrite it with SHADOWKEEP_UPDATE_GOLDEN=1",
        path.display()
    );
}

/// Runs the command's own entry point: the exit code, what it printed and its errors.
fn run_plan(options: &Options, format: Format, exit_zero: bool) -> (u8, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run(options, format, exit_zero, &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn each_kind_of_risk_matches_its_golden_output() {
    for scenario in scenarios() {
        let mut repo = Repo::new(scenario.name);
        let mut files = (scenario.base)();
        repo.commit("main", &files);
        (scenario.head)(&mut files);
        repo.commit("change", &files);
        let options = repo.options("main", "change", &[]);
        let (code, text, err) = run_plan(&options, Format::Text, false);
        assert_eq!(
            code, scenario.exit,
            "{}: exit code\n{text}{err}",
            scenario.name
        );
        let plan = plan(&options).unwrap();
        let found: BTreeSet<&str> = plan.risks.iter().map(|r| r.code).collect();
        let expected: BTreeSet<&str> = scenario.codes.iter().copied().collect();
        assert_eq!(found, expected, "{}: risk codes\n{text}", scenario.name);
        golden(&format!("{}.txt", scenario.name), &text);
    }
}

#[test]
fn markdown_and_json_match_their_golden_outputs() {
    let mut repo = Repo::new("formats");
    let mut files = two_key_managers();
    repo.commit("main", &files);
    move_drive(&mut files, "");
    edit(
        &mut files,
        "estate/shadow.yaml",
        "state: Active",
        "state: Disabled",
    );
    repo.commit("change", &files);
    let options = repo.options("main", "change", &["estate"]);
    let (code, md, _) = run_plan(&options, Format::Markdown, false);
    assert_eq!(code, EXIT_RISKS);
    golden("formats.md", &md);
    let (code, json, _) = run_plan(&options, Format::Json, false);
    assert_eq!(code, EXIT_RISKS);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["exitCode"], 2);
    assert_eq!(value["risks"][0]["code"], codes::DRIVE_MOVED);
    golden("formats.json", &json);
}

#[test]
fn invalid_head_names_file_object_and_field() {
    let mut repo = Repo::new("invalid");
    let mut files = quickstart();
    repo.commit("main", &files);
    edit(
        &mut files,
        "estate/keymanager.yaml",
        "replicas: 2",
        "replicas: 1",
    );
    add(&mut files, "estate/broken.yaml", "kind: [unclosed\n");
    repo.commit("change", &files);
    let plan = plan(&repo.options("main", "change", &[])).unwrap();
    assert_eq!(plan.exit_code, EXIT_RISKS);
    let errors: Vec<(String, Option<String>, String)> = plan
        .head_errors
        .iter()
        .map(|e| (e.file.clone(), e.object.clone(), e.field.clone()))
        .collect();
    assert!(errors.contains(&(
        "estate/keymanager.yaml".to_owned(),
        Some("KeyManager tape-keys".to_owned()),
        "spec.durability.peerAcknowledgements".to_owned()
    )));
    assert!(
        plan.head_errors
            .iter()
            .any(|e| e.file == "estate/broken.yaml" && e.message.contains("failed to parse YAML")),
        "{:?}",
        plan.head_errors
    );
    // The KeyManager did not decode: unknown in the head, not deleted.
    assert!(
        plan.risks
            .iter()
            .all(|r| r.code != codes::KEY_MANAGER_DELETED)
    );
}

#[test]
fn exit_zero_turns_changes_and_risks_into_zero_but_not_failure() {
    let mut repo = Repo::new("exit-zero");
    let mut files = quickstart();
    repo.commit("main", &files);
    edit(
        &mut files,
        "estate/shadow.yaml",
        "state: Active",
        "state: Disabled",
    );
    repo.commit("change", &files);
    let options = repo.options("main", "change", &[]);
    assert_eq!(run_plan(&options, Format::Markdown, false).0, EXIT_RISKS);
    let (code, md, _) = run_plan(&options, Format::Markdown, true);
    assert_eq!(code, 0);
    assert!(md.contains("last-active-shadow"), "{md}");
    let missing = repo.options("main", "no-such-branch", &[]);
    assert_eq!(run_plan(&missing, Format::Markdown, true).0, EXIT_FAILED);
}

#[test]
fn bad_input_is_named_and_exits_3() {
    let mut repo = Repo::new("bad-input");
    let mut files = quickstart();
    add(&mut files, "docs/README.md", "# not a manifest\n");
    repo.commit("main", &files);
    let cases: Vec<(&str, Options, &str)> = vec![
        (
            "unknown revision",
            repo.options("main", "no-such-branch", &[]),
            "failed to find revision \"no-such-branch\"",
        ),
        (
            "path that does not exist",
            repo.options("main", "main", &["nowhere"]),
            "failed to find manifests: nowhere does not exist at main or main",
        ),
        (
            "path with no manifests",
            repo.options("main", "main", &["docs"]),
            "failed to find manifests: docs has no *.yaml or *.yml file at main or main",
        ),
        (
            "path out of the repository",
            repo.options("main", "main", &["../elsewhere"]),
            "failed to use path \"../elsewhere\": leads out of the repository",
        ),
    ];
    for (what, options, message) in cases {
        let (code, out, err) = run_plan(&options, Format::Text, false);
        assert_eq!(code, EXIT_FAILED, "{what}: {out}{err}");
        assert!(err.contains(message), "{what}: {err}");
        assert!(out.is_empty(), "{what}: printed {out}");
    }

    let not_a_repo =
        std::env::temp_dir().join(format!("shadowkeep-plan-norepo-{}", std::process::id()));
    std::fs::create_dir_all(&not_a_repo).unwrap();
    let mut options = repo.options("main", "main", &[]);
    options.repo.clone_from(&not_a_repo);
    let (code, _, err) = run_plan(&options, Format::Text, false);
    std::fs::remove_dir_all(&not_a_repo).unwrap();
    assert_eq!(code, EXIT_FAILED);
    assert!(err.contains("failed to open the repository at"), "{err}");

    // A binary file named *.yaml in the head.
    files.insert(
        "estate/blob.yaml".to_owned(),
        (FILE, vec![0, 159, 146, 150, 0, 1]),
    );
    repo.commit("binary", &files);
    let (code, _, err) = run_plan(&repo.options("main", "binary", &[]), Format::Text, false);
    assert_eq!(code, EXIT_FAILED);
    assert!(
        err.contains(
            "failed to read estate/blob.yaml at binary: binary content, not a YAML manifest"
        ),
        "{err}"
    );

    // Symbolic links that lead to each other.
    files.remove("estate/blob.yaml");
    files.insert("estate/a.yaml".to_owned(), (LINK, b"b.yaml".to_vec()));
    files.insert("estate/b.yaml".to_owned(), (LINK, b"a.yaml".to_vec()));
    repo.commit("loop", &files);
    let (code, _, err) = run_plan(&repo.options("main", "loop", &[]), Format::Text, false);
    assert_eq!(code, EXIT_FAILED);
    assert!(
        err.contains("estate/a.yaml at loop: symbolic link loop"),
        "{err}"
    );

    // A link out of the repository.
    files.remove("estate/b.yaml");
    files.insert("estate/a.yaml".to_owned(), (LINK, b"/etc/passwd".to_vec()));
    repo.commit("escape", &files);
    let (code, _, err) = run_plan(&repo.options("main", "escape", &[]), Format::Text, false);
    assert_eq!(code, EXIT_FAILED);
    assert!(err.contains("leads out of the repository"), "{err}");
}

#[test]
fn a_path_may_name_one_file_and_a_broken_base_is_said() {
    let mut repo = Repo::new("one-file");
    let mut files = quickstart();
    add(&mut files, "estate/broken.yaml", "kind: [unclosed\n");
    repo.commit("main", &files);
    files.remove("estate/broken.yaml");
    edit(
        &mut files,
        "estate/keymanager.yaml",
        "replicas: 2",
        "replicas: 3",
    );
    repo.commit("change", &files);
    let plan = plan(&repo.options("main", "change", &["estate/keymanager.yaml"])).unwrap();
    assert_eq!((plan.base.files, plan.head.files), (1, 1));
    // Alone, the KeyManager is valid; the rest of the estate is not read.
    assert_eq!(plan.exit_code, EXIT_CHANGES, "{:?}", plan.head_errors);
    let (code, text, _) = run_plan(&repo.options("main", "change", &[]), Format::Text, false);
    assert_eq!(code, EXIT_CHANGES, "{text}");
    assert!(
        text.contains(
            "note: the base has 1 validation error; objects that did not decode there show as added"
        ),
        "{text}"
    );
}

#[test]
fn links_inside_the_tree_are_followed_once() {
    let mut repo = Repo::new("links");
    let mut files = quickstart();
    // A directory that links to itself, and a second way to the estate.
    files.insert("estate/self".to_owned(), (LINK, b".".to_vec()));
    files.insert("overlay/estate".to_owned(), (LINK, b"../estate".to_vec()));
    repo.commit("main", &files);
    edit(
        &mut files,
        "estate/keymanager.yaml",
        "replicas: 2",
        "replicas: 3",
    );
    repo.commit("change", &files);
    let plan = plan(&repo.options("main", "change", &["overlay", "estate"])).unwrap();
    assert_eq!(plan.head.files, 5, "each file once");
    assert!(plan.head_errors.is_empty(), "{:?}", plan.head_errors);
    assert_eq!(plan.changes.len(), 1);
    assert_eq!(plan.exit_code, EXIT_CHANGES);
}

#[test]
fn secret_values_never_appear() {
    const PASSWORD: &str = "hunter2-correct-horse";
    const NEXT: &str = "hunter3-battery-staple";
    let secret = |password: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: library-login\n  annotations:\n    kubectl.kubernetes.io/last-applied-configuration: '{{\"stringData\":{{\"password\":\"{password}\"}}}}'\nstringData:\n  password: {password}\ndata:\n  token: {}\n",
            base64_of(password)
        )
    };
    let mut repo = Repo::new("secrets");
    let mut files = quickstart();
    add(&mut files, "estate/secret.yaml", &secret(PASSWORD));
    repo.commit("main", &files);
    add(&mut files, "estate/secret.yaml", &secret(NEXT));
    repo.commit("change", &files);
    let options = repo.options("main", "change", &[]);
    for format in [Format::Text, Format::Markdown, Format::Json] {
        let (code, out, _) = run_plan(&options, format, false);
        assert_eq!(code, EXIT_CHANGES, "{format:?}\n{out}");
        for secret in [
            PASSWORD,
            NEXT,
            &base64_of(PASSWORD),
            &base64_of(NEXT),
            "hunter",
        ] {
            assert!(!out.contains(secret), "{format:?} shows {secret:?}:\n{out}");
        }
        let named = match format {
            Format::Json => out.contains("\"name\": \"library-login\""),
            _ => out.contains("Secret library-login"),
        };
        assert!(named, "{format:?}\n{out}");
        assert!(out.contains("(hidden)"), "{format:?}\n{out}");
        assert!(out.contains("sha256:"), "{format:?}\n{out}");
    }
    let plan = plan(&options).unwrap();
    let change = &plan.changes[0];
    let data = change.fields.iter().find(|f| f.path == "data").unwrap();
    assert_ne!(data.before, data.after, "the hash prefix shows the change");
    let paths: Vec<&str> = change.fields.iter().map(|f| f.path.as_str()).collect();
    assert!(
        paths.contains(&"data.password") && paths.contains(&"data.token"),
        "{paths:?}"
    );
    // The same Secret, unchanged, is not a change.
    let same = run_plan(&repo.options("change", "change", &[]), Format::Text, false);
    assert_eq!(same.0, EXIT_NO_CHANGE, "{}", same.1);
}

fn base64_of(text: &str) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, text)
}

/// A DriveTable of `count` drives from `first`, for KeyManager `km`.
fn big_table(name: &str, km: &str, first: usize, count: usize, identity: &str) -> String {
    let mut text = format!(
        "apiVersion: shadowkeep.io/v1alpha1\nkind: DriveTable\nmetadata:\n  name: {name}\nspec:\n  keyManagerRef:\n    name: {km}\n  drives:\n"
    );
    for serial in first..first + count {
        let _ = write!(
            text,
            "    - serial: \"20{serial:08}\"\n      certificateIdentity: {identity}\n      keyGroup: lto-default\n"
        );
    }
    text
}

#[test]
fn a_change_to_thousands_of_drives_stays_within_the_comment_limit() {
    const TABLES: usize = 10;
    const DRIVES: usize = 250;
    let mut repo = Repo::new("bound");
    let mut files = quickstart();
    for t in 0..TABLES {
        let table = big_table(
            &format!("bulk-{t}"),
            "tape-keys",
            t * DRIVES,
            DRIVES,
            "old.example.com",
        );
        add(&mut files, &format!("estate/bulk-{t:02}.yaml"), &table);
    }
    repo.commit("main", &files);
    for t in 0..TABLES {
        let table = big_table(
            &format!("bulk-{t}"),
            "tape-keys",
            t * DRIVES,
            DRIVES,
            "new.example.com",
        );
        add(&mut files, &format!("estate/bulk-{t:02}.yaml"), &table);
    }
    repo.commit("change", &files);
    let plan = plan(&repo.options("main", "change", &[])).unwrap();
    let drives: usize = plan.changes.iter().map(|c| c.drives.len()).sum();
    assert_eq!(drives, TABLES * DRIVES);
    let md = markdown(&plan);
    assert!(md.len() <= MAX_COMMENT, "{} bytes", md.len());
    assert!(md.chars().count() <= MAX_COMMENT);
    let shown = md.matches("<details>").count();
    assert!(shown > 0 && shown < TABLES, "{shown} objects shown");
    let note = format!(
        "{} changed objects of {TABLES} left out to stay within GitHub's 65536-character limit",
        TABLES - shown
    );
    assert!(
        md.contains(&note),
        "no {note:?} in\n{}",
        &md[md.len() - 400..]
    );
    // Whole objects: every section that opens closes, with its fence.
    assert_eq!(md.matches("</details>").count(), shown);
    assert_eq!(md.matches("```diff").count(), shown);
}

#[test]
fn many_risks_are_cut_by_whole_rows_and_counted() {
    const TABLES: usize = 8;
    const DRIVES: usize = 250;
    let mut repo = Repo::new("many-risks");
    let mut files = two_key_managers();
    for t in 0..TABLES {
        let table = big_table(
            &format!("bulk-{t}"),
            "tape-keys",
            t * DRIVES,
            DRIVES,
            "lib.example.com",
        );
        add(&mut files, &format!("estate/bulk-{t:02}.yaml"), &table);
    }
    repo.commit("main", &files);
    for t in 0..TABLES {
        // Every drive moves to the other KeyManager, unaccepted.
        let path = format!("estate/bulk-{t:02}.yaml");
        let text = text_of(&files, &path)
            .replace("name: tape-keys", "name: other")
            .replace("lto-default", "lto-other");
        add(&mut files, &path, &text);
    }
    add(
        &mut files,
        "estate/other-group.yaml",
        "apiVersion: shadowkeep.io/v1alpha1\nkind: KeyGroup\nmetadata:\n  name: lto-other\nspec:\n  keyManagerRef:\n    name: other\n",
    );
    repo.commit("change", &files);
    let plan = plan(&repo.options("main", "change", &[])).unwrap();
    assert!(
        plan.head_errors.is_empty(),
        "{:?}",
        &plan.head_errors[..3.min(plan.head_errors.len())]
    );
    let moved = plan
        .risks
        .iter()
        .filter(|r| r.code == codes::DRIVE_MOVED)
        .count();
    assert_eq!(moved, TABLES * DRIVES);
    let md = markdown(&plan);
    assert!(md.len() <= MAX_COMMENT, "{} bytes", md.len());
    let rows = md.matches("`drive-moved` |").count();
    assert!(rows > 0 && rows < moved);
    assert!(
        md.contains(&format!(
            "{} risks left out of the risk table",
            plan.risks.len() - rows
        )),
        "{}",
        &md[md.len() - 400..]
    );
    // The diagram sums the moves into one edge.
    assert!(
        md.contains(&format!("{} drives move", TABLES * DRIVES)),
        "{md}"
    );
}

/// Checks a Mermaid flowchart's structure: the header, every node defined once, edges and
/// classes naming defined nodes, subgraphs closed, link styles naming existing edges.
fn check_mermaid(text: &str) -> (usize, usize) {
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("flowchart LR"));
    let mut nodes = BTreeSet::new();
    let mut edges: Vec<(String, String)> = Vec::new();
    let mut depth = 0_i32;
    let mut styled = Vec::new();
    let id_of = |s: &str| -> String { s.chars().take_while(char::is_ascii_alphanumeric).collect() };
    for line in lines {
        let line = line.trim();
        if line.starts_with("classDef ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("subgraph ") {
            depth += 1;
            assert!(rest.contains("[\"zone "), "{line}");
            continue;
        }
        if line == "end" {
            depth -= 1;
            assert!(depth >= 0, "end without subgraph");
            continue;
        }
        if let Some(rest) = line.strip_prefix("linkStyle ") {
            styled.push(rest.split(' ').next().unwrap().parse::<usize>().unwrap());
            continue;
        }
        if let Some(rest) = line.strip_prefix("class ") {
            let id = rest.split(' ').next().unwrap();
            assert!(nodes.contains(id), "class for unknown node {id}");
            continue;
        }
        if let Some((from, rest)) = line
            .split_once(" -->|")
            .or_else(|| line.split_once(" -.->|"))
            .or_else(|| line.split_once(" ==>|"))
        {
            let (label, to) = rest.rsplit_once("| ").unwrap();
            assert!(label.starts_with('"') && label.ends_with('"'), "{line}");
            assert!(
                !label[1..label.len() - 1].contains('"'),
                "quote in label: {line}"
            );
            edges.push((from.to_owned(), to.to_owned()));
            continue;
        }
        let id = id_of(line);
        assert!(!id.is_empty(), "unparsed line {line:?}");
        let shape = &line[id.len()..];
        assert!(
            ["[\"", "([\"", "[/\""]
                .iter()
                .any(|open| shape.starts_with(open)),
            "{line}"
        );
        let inner = shape
            .trim_start_matches(['[', '(', '/'])
            .trim_end_matches([']', ')', '/']);
        assert!(inner.starts_with('"') && inner.ends_with('"'), "{line}");
        assert!(
            !inner[1..inner.len() - 1].contains('"'),
            "quote in label: {line}"
        );
        assert!(nodes.insert(id.clone()), "node {id} defined twice");
    }
    assert_eq!(depth, 0, "unclosed subgraph");
    for (from, to) in &edges {
        assert!(
            nodes.contains(from) && nodes.contains(to),
            "edge {from} -> {to}"
        );
    }
    for i in styled {
        assert!(i < edges.len(), "linkStyle {i} of {} edges", edges.len());
    }
    (nodes.len(), edges.len())
}

#[test]
fn the_diagram_is_drawn_only_when_topology_changes_and_is_well_formed() {
    let mut repo = Repo::new("mermaid");
    let mut files = two_key_managers();
    repo.commit("main", &files);
    edit(
        &mut files,
        "estate/drivetable.yaml",
        "Library A, frame 1, drive 1",
        "moved to rack 4",
    );
    repo.commit("no-topology", &files);
    move_drive(&mut files, "");
    edit(
        &mut files,
        "estate/shadow.yaml",
        "zone: eu-central-1a",
        "zone: \"eu-central-1a \\\"quoted\\\"\"",
    );
    repo.commit("topology", &files);

    let quiet = plan(&repo.options("main", "no-topology", &[])).unwrap();
    assert!(quiet.topology.is_none());
    assert!(!markdown(&quiet).contains("```mermaid"));

    let moved: Plan = plan(&repo.options("main", "topology", &[])).unwrap();
    let topology = moved.topology.as_ref().unwrap();
    let diagram = mermaid(topology);
    let (nodes, edges) = check_mermaid(&diagram);
    // Both KeyManagers, both Shadows, the new table, the unchanged tables of each.
    assert_eq!(nodes, topology.nodes.len());
    assert_eq!(edges, topology.edges.len());
    assert!(diagram.contains("==>|\"1 drive move\"|"), "{diagram}");
    assert!(diagram.contains("#quot;quoted#quot;"), "{diagram}");
    assert!(
        diagram.contains("class "),
        "changed nodes are marked:\n{diagram}"
    );
    let md = markdown(&moved);
    assert!(md.contains(&format!("```mermaid\n{diagram}```")), "{md}");
}
