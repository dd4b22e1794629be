//! `shadowkeep validate` against the examples and the catalogue of bad manifests.
//!
//! Each file under `tests/invalid-manifests` and `tests/risky-manifests` states, in
//! `# expect:` comment lines, exactly the lines validation must print for it (without the
//! file name), and in `# expect-exit:` its exit code when that is not 1.

// Helpers outside #[test] functions fail loudly too; that is what a test wants.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use shadowkeep::manifests::validate::{EXIT_INVALID, EXIT_UNREADABLE, EXIT_VALID, validate_paths};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// A fresh, empty directory of this test's own.
fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shadowkeep-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The one finding the examples give: the quickstart cannot ship a recovery key (whoever
/// runs it must make their own, off the cluster), so it is told to make one.
fn escrow_warning(file: &Path) -> String {
    format!(
        "{}: warning: KeyManager tape-keys: spec.backup.recoveryRecipients: {NO_RECOVERY_RECIPIENT}",
        file.display()
    )
}

const NO_RECOVERY_RECIPIENT: &str = "no recovery recipient: the KEK exists only in the cluster, so losing the cluster would lose every key; add the public key of a recovery key kept off the cluster (age-keygen)";

#[test]
fn examples_are_valid_with_only_the_escrow_warning() {
    let report = validate_paths(&[repo().join("examples")]);
    assert_eq!(
        report.lines(),
        vec![escrow_warning(
            &repo().join("examples/quickstart/keymanager.yaml")
        )]
    );
    assert_eq!(report.exit_code(), EXIT_VALID);
    assert!(
        report.objects >= 4,
        "examples hold the quickstart: {report:?}"
    );
}

fn check_catalogue(dir: &str) -> usize {
    let files = yaml_files(&repo().join(dir));
    assert!(!files.is_empty(), "{dir} is empty");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        let exit: u8 = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect-exit: "))
            .map_or(EXIT_INVALID, |c| c.parse().unwrap());
        assert!(
            !expected.is_empty(),
            "{} states no expectation",
            file.display()
        );
        let report = validate_paths(std::slice::from_ref(file));
        let prefix = format!("{}: ", file.display());
        let lines: Vec<String> = report
            .lines()
            .into_iter()
            .map(|l| l.strip_prefix(&prefix).unwrap_or(&l).to_owned())
            .collect();
        assert_eq!(lines, expected, "{}", file.display());
        assert_eq!(report.exit_code(), exit, "{}", file.display());
    }
    files.len()
}

#[test]
fn each_invalid_manifest_gives_its_exact_errors() {
    assert!(check_catalogue("tests/invalid-manifests") >= 10);
}

#[test]
fn each_risky_manifest_gives_its_exact_warnings() {
    check_catalogue("tests/risky-manifests");
}

#[test]
fn a_finding_names_the_file_of_its_object() {
    // A KeyManager in one file and a DriveTable pointing at a missing group in another,
    // in a subdirectory: the finding belongs to the DriveTable's file.
    let dir = tempdir("origin");
    std::fs::write(
        dir.join("km.yaml"),
        "apiVersion: shadowkeep.io/v1alpha1\nkind: KeyManager\nmetadata: {name: km}\nspec: {serverId: km}\n",
    )
    .unwrap();
    std::fs::create_dir(dir.join("tables")).unwrap();
    std::fs::write(
        dir.join("tables/t.yml"),
        "apiVersion: shadowkeep.io/v1alpha1\nkind: DriveTable\nmetadata: {name: t}\nspec: {keyManagerRef: {name: km}, drives: [{serial: D1, certificateIdentity: lib.example.com, keyGroup: gold}]}\n",
    )
    .unwrap();
    std::fs::write(dir.join("README.md"), "not a manifest").unwrap();
    let report = validate_paths(std::slice::from_ref(&dir));
    assert_eq!(
        report.lines(),
        vec![
            format!(
                "{}: warning: KeyManager km: spec.backup.recoveryRecipients: {NO_RECOVERY_RECIPIENT}",
                dir.join("km.yaml").display()
            ),
            format!(
                "{}: error: DriveTable t: spec.drives[0].keyGroup: KeyGroup \"gold\" of KeyManager \"km\" not found",
                dir.join("tables/t.yml").display()
            ),
        ]
    );
    assert_eq!(report.files, 2);
    std::fs::remove_dir_all(dir).unwrap();
}

fn shadowkeep(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shadowkeep"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap())
}

#[test]
fn the_command_exits_0_1_2() {
    let (code, out) = shadowkeep(&["validate", "examples/"]);
    assert_eq!(code, Some(EXIT_VALID.into()), "{out}");
    assert!(out.ends_with("0 errors, 1 warnings\n"), "{out}");

    let (code, out) = shadowkeep(&[
        "validate",
        "examples/",
        "tests/invalid-manifests/replicas-zero.yaml",
    ]);
    assert_eq!(code, Some(EXIT_INVALID.into()), "{out}");
    assert!(out.contains(
        "tests/invalid-manifests/replicas-zero.yaml: error: KeyManager km: spec.replicas: must be between 1 and 16\n"
    ));

    let (code, out) = shadowkeep(&["validate", "no/such/dir"]);
    assert_eq!(code, Some(EXIT_UNREADABLE.into()), "{out}");
    assert!(
        out.starts_with("no/such/dir: error: failed to read: "),
        "{out}"
    );

    let empty = tempdir("empty");
    let (code, out) = shadowkeep(&["validate", empty.to_str().unwrap(), "examples/"]);
    assert_eq!(code, Some(EXIT_UNREADABLE.into()), "{out}");
    assert!(
        out.contains("error: no *.yaml or *.yml files found"),
        "{out}"
    );
    std::fs::remove_dir_all(empty).unwrap();
}

#[test]
fn a_manifest_named_by_several_paths_is_read_once() {
    let examples = repo().join("examples");
    let twice = [
        examples.clone(),
        examples.join("quickstart"),
        examples.join("quickstart/keymanager.yaml"),
    ];
    let report = validate_paths(&twice);
    assert_eq!(
        report.lines(),
        vec![escrow_warning(&examples.join("quickstart/keymanager.yaml"))]
    );
    assert_eq!(report.files, 4);
}

#[test]
fn a_git_source_is_checked_like_the_other_kinds_and_is_no_part_of_the_estate() {
    let dir = tempdir("validate-gitsource");
    let source = "apiVersion: shadowkeep.io/v1alpha1\nkind: GitSource\nmetadata:\n  name: estate\nspec:\n  url: file:///srv/estate.git\n  branch: main\n  path: sites/a\n";
    std::fs::write(dir.join("source.yaml"), source).unwrap();
    let report = validate_paths(std::slice::from_ref(&dir));
    assert_eq!(report.lines(), Vec::<String>::new());
    assert_eq!(report.exit_code(), EXIT_VALID);
    assert_eq!(report.objects, 1);

    std::fs::write(
        dir.join("source.yaml"),
        source.replace("file:///srv/estate.git", "ftp://example.org/estate.git"),
    )
    .unwrap();
    let report = validate_paths(std::slice::from_ref(&dir));
    assert_eq!(report.exit_code(), EXIT_INVALID);
    let lines = report.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].ends_with(
            "error: GitSource estate: spec.url: must be an https://, ssh://, file:/// or user@host:path URL"
        ),
        "{lines:?}"
    );
}
