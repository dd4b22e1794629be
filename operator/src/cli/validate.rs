//! `shadowkeep validate PATH...`: manifests checked offline, as the API server and the
//! operator would check them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use serde_json::Value;
use shadowkeep_api::estate::Estate;
use shadowkeep_api::finding::{Finding, ObjectRef};
use shadowkeep_api::manifest::{Decoded, Decoder, parse_yaml_documents};

use super::files::{ManifestFiles, read_manifest};

/// Exit code: valid, warnings allowed.
pub const EXIT_VALID: u8 = 0;
/// Exit code: at least one error.
pub const EXIT_INVALID: u8 = 1;
/// Exit code: some input could not be read.
pub const EXIT_UNREADABLE: u8 = 2;

/// What validation found, each finding with the file it concerns.
#[derive(Debug, Default)]
pub struct Report {
    /// `(file, finding)` in file order, then as found.
    pub findings: Vec<(String, Finding)>,
    /// Inputs that could not be read, with the reason.
    pub unreadable: Vec<(String, String)>,
    /// Files read.
    pub files: usize,
    /// shadowkeep objects decoded.
    pub objects: usize,
}

impl Report {
    /// 0 valid, 1 any error, 2 unreadable input.
    pub fn exit_code(&self) -> u8 {
        if !self.unreadable.is_empty() {
            EXIT_UNREADABLE
        } else if self.findings.iter().any(|(_, f)| f.is_error()) {
            EXIT_INVALID
        } else {
            EXIT_VALID
        }
    }

    /// One line per finding: `FILE: SEVERITY: KIND NAME: FIELD: MESSAGE`.
    pub fn lines(&self) -> Vec<String> {
        let unreadable = self
            .unreadable
            .iter()
            .map(|(file, why)| format!("{file}: error: {why}"));
        let findings = self.findings.iter().map(|(file, f)| format!("{file}: {f}"));
        unreadable.chain(findings).collect()
    }

    /// Writes the lines and a summary; the summary goes last so a terminal shows it.
    pub fn print(&self, out: &mut impl Write) {
        let errors =
            self.findings.iter().filter(|(_, f)| f.is_error()).count() + self.unreadable.len();
        let warnings = self.findings.len() + self.unreadable.len() - errors;
        let mut lines = self.lines();
        lines.push(format!(
            "{} objects in {} files: {errors} errors, {warnings} warnings\n",
            self.objects, self.files
        ));
        let text = lines.join("\n");
        // A closed pipe (`| head`) is not worth a panic; the exit code still tells.
        let _ = out.write_all(text.as_bytes());
    }
}

/// Reads every manifest under `paths` and validates them as one estate.
pub fn validate_paths(paths: &[PathBuf]) -> Report {
    load(paths).0
}

/// Reads every manifest under `paths`: what validation found, and the estate of the
/// objects that decoded.
pub fn load(paths: &[PathBuf]) -> (Report, Estate) {
    let listed = ManifestFiles::collect(paths);
    let texts = listed
        .files
        .iter()
        .map(|file| (file.display().to_string(), read_manifest(file)));
    let mut loaded = load_texts(texts, &Decoder::new());
    loaded.report.unreadable.splice(0..0, listed.unreadable);
    (loaded.report, loaded.estate)
}

/// Manifests decoded and validated as one estate.
#[derive(Debug, Default)]
pub struct Loaded {
    /// What validation found.
    pub report: Report,
    /// The shadowkeep objects that decoded.
    pub estate: Estate,
    /// The file each object was first defined in.
    pub origin: BTreeMap<ObjectRef, String>,
    /// Documents of other APIs, with their file, in file order: not checked, but a plan
    /// still shows that a Secret changed.
    pub foreign: Vec<(String, Value)>,
}

/// Validates manifest texts as one estate, each `(file name, text or why it could not be
/// read)`: the one path by which `validate`, `render` and `plan` check manifests, whether
/// they come from files or from a Git revision.
pub fn load_texts(
    texts: impl IntoIterator<Item = (String, Result<String, String>)>,
    decoder: &Decoder,
) -> Loaded {
    let mut loaded = Loaded::default();
    let report = &mut loaded.report;
    for (name, text) in texts {
        report.files += 1;
        let docs = text.and_then(|text| parse_yaml_documents(&text).map_err(|e| e.to_string()));
        let docs = match docs {
            Ok(docs) => docs,
            Err(why) => {
                report.unreadable.push((name, why));
                continue;
            }
        };
        for doc in docs {
            match decoder.decode(&doc) {
                Ok(Decoded::Resource(resource)) => {
                    report.objects += 1;
                    loaded
                        .origin
                        .entry(resource.object_ref())
                        .or_insert_with(|| name.clone());
                    loaded.estate.add(*resource);
                }
                Ok(Decoded::Foreign { api_version, kind }) => {
                    report.findings.push((
                        name.clone(),
                        Finding::warning(
                            None,
                            "",
                            format!(
                                "{kind} ({api_version}) is not a shadowkeep.io object; not checked"
                            ),
                        ),
                    ));
                    loaded.foreign.push((name.clone(), doc));
                }
                Err(findings) => {
                    report.objects += 1;
                    report
                        .findings
                        .extend(findings.into_iter().map(|f| (name.clone(), f)));
                }
            }
        }
    }
    for finding in loaded.estate.validate() {
        let file = finding
            .object
            .as_ref()
            .and_then(|o| loaded.origin.get(o))
            .cloned()
            .unwrap_or_default();
        report.findings.push((file, finding));
    }
    loaded
}
