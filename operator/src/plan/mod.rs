//! `shadowkeep plan`: what a change to the estate's Git repository does to the estate, and
//! whether it can lose keys — for a reviewer, before the merge.
//!
//! - [`source`]: both revisions read straight from the repository's objects (no checkout).
//! - The head is validated by the same code as `validate`
//!   ([`decode_files`](crate::manifests::validate::decode_files) and
//!   [`assemble`](crate::manifests::validate::assemble)); the base too, for context.
//! - [`diff`]: the objects that differ, in apply order, drives as rows.
//! - [`risks`]: the domain risks, each with a severity and what could be lost.
//! - [`topology`]: the affected part of the estate, for a diagram.
//! - [`render`]: text, Markdown for a pull-request comment (bounded), JSON.
//!
//! Everything shown is built from the [`Plan`], in which Secret values are already
//! replaced by salted hashes: no output format can print one.

pub mod diff;
pub mod render;
pub mod risks;
pub mod source;
pub mod topology;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use git2::Oid;
use serde::Serialize;
use shadowkeep_api::finding::ObjectRef;
use shadowkeep_api::manifest::Decoder;

use self::diff::{ObjectChange, Objects};
use self::risks::Risk;
use self::source::{Revision, Source, SourceError};
use self::topology::Topology;
use crate::manifests::validate::{Loaded, assemble, decode_files};

/// Exit code: nothing changes.
pub const EXIT_NO_CHANGE: u8 = 0;
/// Exit code: changes, none of them risky.
pub const EXIT_CHANGES: u8 = 1;
/// Exit code: risky changes, or an invalid head.
pub const EXIT_RISKS: u8 = 2;
/// Exit code: the plan could not be made (no repository, unknown revision, unreadable file).
pub const EXIT_FAILED: u8 = 3;

/// What to compare.
#[derive(Clone, Debug)]
pub struct Options {
    /// A directory in the repository, or a bare repository.
    pub repo: PathBuf,
    /// The revision the change starts from (the pull request's base).
    pub base: String,
    /// The revision with the change (the pull request's head or merge ref).
    pub head: String,
    /// Files or directories of the repository to read, relative to its top; all when empty.
    pub paths: Vec<String>,
    /// Key of the hashes that stand for Secret values: random per run, so that a shown hash
    /// cannot be checked against guesses.
    pub secret_salt: [u8; 32],
}

/// Why no plan could be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The repository, a revision or a file could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Neither revision has a manifest under the paths.
    #[error("failed to find manifests: {what} {why} at {base} or {head}")]
    NoManifests {
        /// The paths, or "the repository".
        what: String,
        /// "does not exist" or "has no *.yaml or *.yml file".
        why: &'static str,
        /// The base revision.
        base: String,
        /// The head revision.
        head: String,
    },
}

/// One revision as the plan shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RevisionSummary {
    /// The revision as given.
    pub rev: String,
    /// The commit, 40 hexadecimal digits.
    pub commit: String,
    /// The first line of its message.
    pub subject: String,
    /// Manifest files read.
    pub files: usize,
    /// shadowkeep objects decoded.
    pub objects: usize,
    /// Documents of other kinds, not interpreted (Secrets aside, which are diffed masked).
    pub ignored: usize,
    /// Validation errors (files that do not parse included).
    pub errors: usize,
}

/// A validation error of the head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeadError {
    /// The file.
    pub file: String,
    /// `Kind [namespace/]name`, when the object could be identified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// The field's path; empty for the whole object or file.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// What a change does to the estate.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// The revision the change starts from.
    pub base: RevisionSummary,
    /// The revision with the change.
    pub head: RevisionSummary,
    /// The paths read; empty for the whole repository.
    pub paths: Vec<String>,
    /// The risks, most severe first.
    pub risks: Vec<Risk>,
    /// Why the head is invalid, when it is.
    pub head_errors: Vec<HeadError>,
    /// The objects that differ, in apply order.
    pub changes: Vec<ObjectChange>,
    /// The affected part of the topology, when the topology changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology: Option<Topology>,
    /// [`EXIT_NO_CHANGE`], [`EXIT_CHANGES`] or [`EXIT_RISKS`].
    pub exit_code: u8,
}

/// Reads both revisions, validates the head and compares them.
pub fn plan(options: &Options) -> Result<Plan, PlanError> {
    let source = Source::open(&options.repo)?;
    plan_in(
        &source,
        Some(&options.base),
        &options.head,
        &options.paths,
        &options.secret_salt,
    )
    .map(|planned| planned.plan)
}

/// A plan, and the head's objects as validated for it: what git sync applies when the plan
/// lets it.
#[derive(Debug)]
pub struct Planned {
    /// The plan.
    pub plan: Plan,
    /// The head's manifests, decoded and validated.
    pub head: Loaded,
}

/// [`plan`] over an opened repository; with no `base`, the change starts from an empty
/// estate (a branch followed for the first time).
pub fn plan_in(
    source: &Source,
    base_rev: Option<&str>,
    head_rev: &str,
    paths: &[String],
    salt: &[u8; 32],
) -> Result<Planned, PlanError> {
    let base = match base_rev {
        Some(rev) => source.revision(rev, paths)?,
        None => Revision::empty(),
    };
    let head = source.revision(head_rev, paths)?;
    if base.files.is_empty() && head.files.is_empty() {
        let (what, why) = if paths.is_empty() {
            ("the repository".to_owned(), "has no *.yaml or *.yml file")
        } else if base.any_path_found || head.any_path_found {
            (paths.join(", "), "has no *.yaml or *.yml file")
        } else {
            (paths.join(", "), "does not exist")
        };
        return Err(PlanError::NoManifests {
            what,
            why,
            base: base.rev.clone(),
            head: head_rev.to_owned(),
        });
    }
    // Compiling the CEL rules is dear: once for both revisions. Checking them is dearer:
    // once for each file, however many revisions hold it unchanged.
    let decoder = Decoder::new();
    let mut unique: BTreeMap<Oid, usize> = BTreeMap::new();
    let mut texts = Vec::new();
    for blob in head.files.iter().chain(&base.files) {
        unique.entry(blob.oid).or_insert_with(|| {
            texts.push(Ok(blob.text.clone()));
            texts.len() - 1
        });
    }
    let files = decode_files(texts, &decoder);
    let load = |revision: &Revision| {
        assemble(
            revision
                .files
                .iter()
                .map(|blob| (blob.path.clone(), &files[unique[&blob.oid]])),
        )
    };
    let (old, new) = (load(&base), load(&head));
    // Objects of the head that did not decode: not removed, only unknown.
    let invalid: BTreeSet<ObjectRef> = new
        .report
        .findings
        .iter()
        .filter(|(_, f)| f.is_error())
        .filter_map(|(_, f)| f.object.clone())
        .filter(|o| !new.origin.contains_key(o))
        .collect();
    let changes = diff::diff(
        &Objects::new(&old.estate, &old.origin, &old.foreign, salt),
        &Objects::new(&new.estate, &new.origin, &new.foreign, salt),
        &invalid,
    );
    let risks = risks::risks(&old.estate, &new.estate, &invalid);
    let head_errors = head_errors(&new);
    let exit_code = if !risks.is_empty() || !head_errors.is_empty() {
        EXIT_RISKS
    } else if changes.is_empty() {
        EXIT_NO_CHANGE
    } else {
        EXIT_CHANGES
    };
    let plan = Plan {
        base: summary(&base, &old),
        head: summary(&head, &new),
        paths: paths.to_vec(),
        risks,
        head_errors,
        changes,
        topology: topology::topology(&old.estate, &new.estate, &invalid),
        exit_code,
    };
    Ok(Planned { plan, head: new })
}

fn summary(revision: &Revision, loaded: &Loaded) -> RevisionSummary {
    let secrets = loaded
        .foreign
        .iter()
        .filter(|(_, doc)| diff::is_secret(doc))
        .count();
    RevisionSummary {
        rev: revision.rev.clone(),
        commit: revision.commit.clone(),
        subject: revision.subject.clone(),
        files: loaded.report.files,
        objects: loaded.report.objects,
        ignored: loaded.foreign.len() - secrets,
        errors: loaded.report.unreadable.len()
            + loaded
                .report
                .findings
                .iter()
                .filter(|(_, f)| f.is_error())
                .count(),
    }
}

fn head_errors(loaded: &Loaded) -> Vec<HeadError> {
    let unreadable = loaded
        .report
        .unreadable
        .iter()
        .map(|(file, why)| HeadError {
            file: file.clone(),
            object: None,
            field: String::new(),
            message: why.clone(),
        });
    let findings = loaded
        .report
        .findings
        .iter()
        .filter(|(_, f)| f.is_error())
        .map(|(file, f)| HeadError {
            file: file.clone(),
            object: f.object.as_ref().map(ToString::to_string),
            field: f.field.clone(),
            message: f.message.clone(),
        });
    unreadable.chain(findings).collect()
}
