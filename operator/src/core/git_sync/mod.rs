//! Git sync: one step that follows a branch, run by the GitSource controller and by
//! `shadowkeep up --git` alike.
//!
//! The step fetches the branch into a cache ([`fetch`], with the [`credentials`] a shell
//! read from a Secret), notices a force push, checks the head's signature when asked
//! ([`verify`]), plans the head against the last applied revision with the same code as
//! `shadowkeep plan` ([`crate::plan::plan_in`]) and
//! decides: apply, hold (risks nobody accepted), or refuse (an invalid, unsigned or empty
//! head). Applying goes through an [`Applier`], the one thing a shell provides: server-side
//! apply in a cluster, files in the directory `up` reads on one machine. Removed objects are
//! pruned only when that cannot lose keys ([`prune`]); the status both shells show comes
//! from [`status`].

pub mod credentials;
pub mod fetch;
pub mod prune;
pub mod status;
pub mod verify;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use shadowkeep_api::crd::{AppliedObject, HeldRisk};
use shadowkeep_api::estate::Estate;
use shadowkeep_api::manifest::Resource;

use crate::plan::source::Source;
use crate::plan::{PlanError, plan_in};

/// The annotation that accepts the risks of one revision: its commit (40 hexadecimal
/// digits, or a prefix of at least [`MIN_ACCEPT_PREFIX`]).
pub const ACCEPT_RISKS: &str = "shadowkeep.io/accept-risks";

/// The shortest commit prefix an acceptance may name: shorter ones name too many commits.
pub const MIN_ACCEPT_PREFIX: usize = 7;

/// The field manager of everything git sync applies, apart from the operator's own.
pub const FIELD_MANAGER: &str = "shadowkeep-git-sync";

/// The code of the risk stated when the last applied revision cannot be compared with.
pub const BASE_UNAVAILABLE: &str = "last-applied-revision-unavailable";

/// What a branch to follow is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Branch {
    /// The repository URL (or, for `up`, a local path).
    pub url: String,
    /// The branch.
    pub branch: String,
    /// The directory of the repository holding the manifests; all of it when `None`.
    pub path: Option<String>,
}

/// The commit of a `<branch>@sha1:<commit>` revision.
pub fn commit_of(revision: &str) -> Option<&str> {
    revision.rsplit_once("@sha1:").map(|(_, commit)| commit)
}

impl Branch {
    /// `<branch>@sha1:<commit>`, as Flux writes revisions.
    pub fn revision(&self, commit: &str) -> String {
        format!("{}@sha1:{commit}", self.branch)
    }
}

/// How the head's signature is checked, with what the shell read from its Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verification {
    /// SSH signatures against an allowed-signers file's text.
    Ssh {
        /// The allowed signers, as `git config gpg.ssh.allowedSignersFile` reads them.
        allowed_signers: String,
    },
    /// OpenPGP signatures against an armored keyring.
    OpenPgp {
        /// The armored public keys allowed to sign, as `gpg --armor --export` writes them.
        keyring: String,
    },
}

/// What one step works from: the branch, where its cache is, and what the last step left.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    /// The branch followed.
    pub branch: &'a Branch,
    /// The directory of this source's cache (a bare repository, made when missing).
    pub cache: &'a Path,
    /// The namespace objects without one go to; objects naming another are refused.
    pub namespace: &'a str,
    /// The commit last applied.
    pub last_applied: Option<&'a str>,
    /// The objects the last applied revision held.
    pub inventory: &'a [AppliedObject],
    /// Objects kept though removed from the branch, reported until they come back.
    pub orphaned: &'a [AppliedObject],
    /// The commit whose risks are accepted, as the user wrote it.
    pub accepted: Option<&'a str>,
    /// The head's signature check, when asked.
    pub verification: Option<&'a Verification>,
    /// What the branch is fetched with, when its Secret is named.
    pub credentials: Option<&'a credentials::Credentials>,
}

/// What a shell does with a decision to apply.
pub trait Applier: Send {
    /// Creates or updates `object` (its namespace set) as declared.
    fn apply(&mut self, object: &Resource) -> impl Future<Output = Result<(), String>> + Send;

    /// Deletes `object`, which is gone from the branch and safe to delete. An object
    /// already gone is not an error.
    fn delete(&mut self, object: &AppliedObject)
    -> impl Future<Output = Result<(), String>> + Send;
}

/// How a step ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The head's objects were applied.
    Applied {
        /// The head commit.
        commit: String,
        /// What was applied, in apply order: the inventory from now on.
        inventory: Vec<AppliedObject>,
        /// Objects removed from the branch and deleted.
        pruned: Vec<AppliedObject>,
        /// Objects removed from the branch and kept (KeyManagers).
        orphaned: Vec<AppliedObject>,
        /// The key whose signature was verified, when verification is asked.
        signed_by: Option<String>,
    },
    /// The head has risks and no acceptance names it: nothing applied.
    Held {
        /// The head commit.
        commit: String,
        /// The plan's risks.
        risks: Vec<HeldRisk>,
    },
    /// The head cannot be applied as it is: nothing applied, nothing pruned.
    Refused {
        /// The head commit, when the fetch got that far.
        commit: Option<String>,
        /// A condition reason ([`status::reasons`]).
        reason: &'static str,
        /// What is wrong, naming it.
        message: String,
    },
    /// The branch could not be fetched (or the cache read): nothing applied, nothing
    /// pruned; the next step tries again.
    Failed {
        /// What went wrong.
        message: String,
    },
    /// Applying started and an object was refused: the objects before it are applied,
    /// none after it, nothing pruned; the next step tries again.
    ApplyFailed {
        /// The head commit.
        commit: String,
        /// What was refused and why.
        message: String,
    },
}

/// What one step did: how it ended, and whether the branch was force-pushed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// How it ended.
    pub outcome: Outcome,
    /// Set when the head does not descend from the last applied commit: a sentence
    /// saying so, for the status and a Warning Event. The head is handled as any other.
    pub force_push: Option<String>,
}

/// Fetches the branch and applies its head when the plan allows it: the whole step, for
/// both shells. Blocking Git work runs on a blocking thread.
pub async fn sync<A: Applier>(input: &Input<'_>, applier: &mut A) -> Step {
    let decided = {
        let branch = input.branch.clone();
        let cache = input.cache.to_path_buf();
        let namespace = input.namespace.to_owned();
        let last_applied = input.last_applied.map(str::to_owned);
        let accepted = input.accepted.map(str::to_owned);
        let verification = input.verification.cloned();
        let credentials = input.credentials.cloned();
        tokio::task::spawn_blocking(move || {
            decide(&Decide {
                branch: &branch,
                cache: &cache,
                namespace: &namespace,
                last_applied: last_applied.as_deref(),
                accepted: accepted.as_deref(),
                verification: verification.as_ref(),
                credentials: credentials.as_ref(),
            })
        })
        .await
    };
    let decided = match decided {
        Ok(decided) => decided,
        Err(e) => {
            return Step {
                outcome: Outcome::Failed {
                    message: format!("failed to read the branch: {e}"),
                },
                force_push: None,
            };
        }
    };
    let Decided {
        decision,
        force_push,
    } = decided;
    let outcome = match decision {
        Decision::Apply {
            commit,
            objects,
            signed_by,
        } => apply(input, commit, &objects, signed_by, applier).await,
        Decision::Done(outcome) => outcome,
    };
    if let Outcome::Applied { commit, .. } = &outcome
        && let Err(e) = fetch::mark_applied(input.cache, commit)
    {
        // Only a later force push's comparison needs it; the status lists what was applied.
        tracing::warn!(error = %e, cache = %input.cache.display(), "failed to mark the applied commit in the git cache");
    }
    Step {
        outcome,
        force_push,
    }
}

/// What [`decide`] reads.
struct Decide<'a> {
    branch: &'a Branch,
    cache: &'a Path,
    namespace: &'a str,
    last_applied: Option<&'a str>,
    accepted: Option<&'a str>,
    verification: Option<&'a Verification>,
    credentials: Option<&'a credentials::Credentials>,
}

impl Decide<'_> {
    fn fetch(&self) -> Result<fetch::Fetched, fetch::FetchError> {
        fetch::fetch(self.branch, self.cache, self.last_applied, self.credentials)
    }
}

struct Decided {
    decision: Decision,
    force_push: Option<String>,
}

enum Decision {
    Apply {
        commit: String,
        /// In apply order, namespaces set.
        objects: Vec<Resource>,
        signed_by: Option<String>,
    },
    Done(Outcome),
}

/// Whether `accepted` names `commit`.
pub fn accepts(accepted: Option<&str>, commit: &str) -> bool {
    accepted.map(str::trim).is_some_and(|a| {
        a.len() >= MIN_ACCEPT_PREFIX
            && a.len() <= commit.len()
            && commit.starts_with(&a.to_ascii_lowercase())
    })
}

fn decide(input: &Decide<'_>) -> Decided {
    let done = |outcome| Decided {
        decision: Decision::Done(outcome),
        force_push: None,
    };
    let fetched = match input.fetch() {
        Ok(fetched) => fetched,
        Err(e) => {
            return done(Outcome::Failed {
                message: e.to_string(),
            });
        }
    };
    let commit = fetched.head.clone();
    let force_push = match (&fetched.last_applied, input.last_applied) {
        (fetch::LastApplied::NotDescendant, Some(last)) => Some(format!(
            "the branch {} was force-pushed: its head {} does not descend from the last applied commit {last}",
            input.branch.branch,
            short(&commit)
        )),
        _ => None,
    };
    let refuse = |reason, message| Decided {
        decision: Decision::Done(Outcome::Refused {
            commit: Some(commit.clone()),
            reason,
            message,
        }),
        force_push: force_push.clone(),
    };
    let verified = input
        .verification
        .map(|v| verify::verify_head(input.cache, &commit, v))
        .transpose();
    let signed_by = match verified {
        Ok(signer) => signer,
        Err(e) => return refuse(status::reasons::VERIFICATION_FAILED, e.to_string()),
    };
    let source = match Source::open(input.cache) {
        Ok(source) => source,
        Err(e) => {
            return done(Outcome::Failed {
                message: e.to_string(),
            });
        }
    };
    let paths: Vec<String> = input.branch.path.iter().cloned().collect();
    let base_available = fetched.last_applied != fetch::LastApplied::Missing;
    let base = input.last_applied.filter(|_| base_available);
    let accepted = accepts(input.accepted, &commit);
    let planned = match plan_in(&source, base, &commit, &paths, &rand::random()) {
        Ok(planned) => planned,
        Err(PlanError::NoManifests { what, why, .. }) => {
            return refuse(
                status::reasons::EMPTY_SOURCE,
                format!(
                    "{what} {why} at {}: nothing applied, nothing pruned",
                    short(&commit)
                ),
            );
        }
        Err(PlanError::Source(e)) => {
            return refuse(status::reasons::INVALID_HEAD, e.to_string());
        }
    };
    if let Some(message) = head_errors(&planned.plan, &commit) {
        return refuse(status::reasons::INVALID_HEAD, message);
    }
    let objects = match in_order(&planned.head.estate, input.namespace) {
        Ok(objects) => objects,
        Err(message) => return refuse(status::reasons::INVALID_HEAD, message),
    };
    if objects.is_empty() {
        return refuse(status::reasons::EMPTY_SOURCE, empty(input.branch, &commit));
    }
    let risks = held_risks(
        &planned.plan,
        input.last_applied.filter(|_| !base_available),
    );
    if !risks.is_empty() && !accepted {
        return Decided {
            decision: Decision::Done(Outcome::Held { commit, risks }),
            force_push,
        };
    }
    Decided {
        decision: Decision::Apply {
            commit,
            objects,
            signed_by,
        },
        force_push,
    }
}

/// Why a head with no shadowkeep object is refused.
fn empty(branch: &Branch, commit: &str) -> String {
    format!(
        "{} holds no shadowkeep object{}: nothing applied, nothing pruned",
        short(commit),
        branch
            .path
            .as_ref()
            .map(|p| format!(" under {p}"))
            .unwrap_or_default()
    )
}

/// Why the head is invalid, when it is: how many errors, and the first.
fn head_errors(plan: &crate::plan::Plan, commit: &str) -> Option<String> {
    let first = plan.head_errors.first()?;
    let object = first
        .object
        .as_ref()
        .map(|o| format!("{o}: "))
        .unwrap_or_default();
    let field = if first.field.is_empty() {
        String::new()
    } else {
        format!("{}: ", first.field)
    };
    Some(format!(
        "{} is invalid ({} errors), nothing applied; first: {}: {object}{field}{}",
        short(commit),
        plan.head_errors.len(),
        first.file,
        first.message
    ))
}

/// The plan's risks as a status holds them; first, when the last applied commit `lost`
/// could not be compared with, that risk.
fn held_risks(plan: &crate::plan::Plan, lost: Option<&str>) -> Vec<HeldRisk> {
    let lost = lost.map(|last| HeldRisk {
        severity: "high".to_owned(),
        code: BASE_UNAVAILABLE.to_owned(),
        message: format!(
            "the last applied commit {last} is no longer in the repository, so the head cannot be compared with it: what it removes or moves is not known"
        ),
    });
    lost.into_iter()
        .chain(plan.risks.iter().map(|r| HeldRisk {
            severity: r.severity.to_string(),
            code: r.code.to_owned(),
            message: r.message.clone(),
        }))
        .collect()
}

/// The head's objects in apply order — KeyManagers, KeyGroups, DriveTables, Shadows — each
/// with its namespace set and only what a manifest declares kept.
fn in_order(estate: &Estate, namespace: &str) -> Result<Vec<Resource>, String> {
    let mut out = Vec::new();
    let take = |meta: &mut ObjectMeta, kind: &str| -> Result<(), String> {
        match meta.namespace.as_deref() {
            None => meta.namespace = Some(namespace.to_owned()),
            Some(ns) if ns == namespace => {}
            Some(ns) => {
                return Err(format!(
                    "{kind} {ns}/{} names namespace {ns}: a GitSource applies objects only to its own namespace, {namespace}",
                    meta.name.as_deref().unwrap_or_default()
                ));
            }
        }
        *meta = ObjectMeta {
            name: meta.name.take(),
            namespace: meta.namespace.take(),
            labels: meta.labels.take(),
            annotations: meta.annotations.take(),
            ..ObjectMeta::default()
        };
        Ok(())
    };
    for o in estate.key_managers() {
        let mut o = o.clone();
        take(&mut o.metadata, "KeyManager")?;
        o.status = None;
        out.push(Resource::KeyManager(o));
    }
    for o in estate.key_groups() {
        let mut o = o.clone();
        take(&mut o.metadata, "KeyGroup")?;
        o.status = None;
        out.push(Resource::KeyGroup(o));
    }
    for o in estate.drive_tables() {
        let mut o = o.clone();
        take(&mut o.metadata, "DriveTable")?;
        o.status = None;
        out.push(Resource::DriveTable(o));
    }
    for o in estate.shadows() {
        let mut o = o.clone();
        take(&mut o.metadata, "Shadow")?;
        o.status = None;
        out.push(Resource::Shadow(o));
    }
    Ok(out)
}

/// The inventory entry of an object whose namespace is set.
pub fn applied_object(resource: &Resource) -> AppliedObject {
    let o = resource.object_ref();
    AppliedObject {
        kind: o.kind,
        namespace: o.namespace.unwrap_or_default(),
        name: o.name,
    }
}

async fn apply<A: Applier>(
    input: &Input<'_>,
    commit: String,
    objects: &[Resource],
    signed_by: Option<String>,
    applier: &mut A,
) -> Outcome {
    let inventory: Vec<AppliedObject> = objects.iter().map(applied_object).collect();
    for object in objects {
        if let Err(e) = applier.apply(object).await {
            return Outcome::ApplyFailed {
                message: format!(
                    "failed to apply {}: {e}; nothing pruned",
                    applied_object(object)
                ),
                commit,
            };
        }
    }
    let kept: BTreeSet<&AppliedObject> = inventory.iter().collect();
    let pruning = prune::prune(input.inventory, input.orphaned, &kept);
    let mut pruned = Vec::new();
    for object in pruning.delete {
        if let Err(e) = applier.delete(&object).await {
            return Outcome::ApplyFailed {
                message: format!("failed to delete {object}, removed from the branch: {e}"),
                commit,
            };
        }
        pruned.push(object);
    }
    Outcome::Applied {
        commit,
        inventory,
        pruned,
        orphaned: pruning.orphaned,
        signed_by,
    }
}

/// The first 12 digits of a commit, for messages.
pub fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}
