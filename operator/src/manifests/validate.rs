//! Manifests checked offline, as the API server and the operator would check them: the
//! `validate` command (whose report and exit codes are here), and what `render`, `plan` and
//! `up` read.

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
    load_except(paths, &[])
}

/// Like [`load`], never entering the directories `skip`.
pub fn load_except(paths: &[PathBuf], skip: &[PathBuf]) -> (Report, Estate) {
    let listed = ManifestFiles::collect_except(paths, skip);
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
    let (names, texts): (Vec<String>, Vec<Result<String, String>>) = texts.into_iter().unzip();
    let files = decode_files(texts, decoder);
    assemble(names.into_iter().zip(&files))
}

/// One file's documents, each decoded on its own, or why the file could not be read or
/// parsed. Decoding depends on nothing but the text, so a file two revisions share is
/// decoded once.
#[derive(Debug)]
pub struct DecodedFile(Result<Vec<DecodedDocument>, String>);

/// One document: a shadowkeep object, or the findings that refuse it, or (with the
/// document itself) an object of another API.
#[derive(Debug)]
enum DecodedDocument {
    Resource(Box<shadowkeep_api::manifest::Resource>),
    /// A valid GitSource: counted, not part of the estate.
    GitSource,
    Refused(Vec<Finding>),
    Foreign {
        api_version: String,
        kind: String,
        doc: Value,
    },
}

/// Parses and decodes each text, on as many threads as there are cores (at most
/// [`MAX_DECODE_THREADS`]): the CRDs' CEL rules are by far the dearest part of validation
/// and every document is checked on its own. The results keep the texts' order.
pub fn decode_files(texts: Vec<Result<String, String>>, decoder: &Decoder) -> Vec<DecodedFile> {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(MAX_DECODE_THREADS)
        .min(texts.len().max(1));
    if threads < 2 {
        return texts.into_iter().map(|t| decode_file(t, decoder)).collect();
    }
    let mut slots: Vec<Option<Result<String, String>>> = texts.into_iter().map(Some).collect();
    let mut results: Vec<Option<DecodedFile>> = (0..slots.len()).map(|_| None).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let inputs = std::sync::Mutex::new(&mut slots);
    let outputs = std::sync::Mutex::new(&mut results);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                // Files differ in size by orders of magnitude: each thread takes the next
                // file when done, rather than a fixed share.
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let text = match inputs.lock() {
                        Ok(mut slots) => match slots.get_mut(i) {
                            Some(slot) => slot.take(),
                            None => return,
                        },
                        Err(_) => return,
                    };
                    let Some(text) = text else { return };
                    let file = decode_file(text, decoder);
                    if let Ok(mut results) = outputs.lock() {
                        results[i] = Some(file);
                    }
                }
            });
        }
    });
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                DecodedFile(Err("failed to decode: a worker thread stopped".to_owned()))
            })
        })
        .collect()
}

/// The most threads decoding runs on.
pub const MAX_DECODE_THREADS: usize = 8;

/// Parses one file's text into documents and decodes each.
pub fn decode_file(text: Result<String, String>, decoder: &Decoder) -> DecodedFile {
    let docs = text.and_then(|text| parse_yaml_documents(&text).map_err(|e| e.to_string()));
    DecodedFile(docs.map(|docs| {
        docs.into_iter()
            .map(|doc| match decoder.decode(&doc) {
                Ok(Decoded::Resource(resource)) => DecodedDocument::Resource(resource),
                Ok(Decoded::GitSource(_)) => DecodedDocument::GitSource,
                Ok(Decoded::Foreign { api_version, kind }) => DecodedDocument::Foreign {
                    api_version,
                    kind,
                    doc,
                },
                Err(findings) => DecodedDocument::Refused(findings),
            })
            .collect()
    }))
}

/// Puts decoded files, each with its name, together as one estate and validates it.
pub fn assemble<'a>(files: impl IntoIterator<Item = (String, &'a DecodedFile)>) -> Loaded {
    let mut loaded = Loaded::default();
    let report = &mut loaded.report;
    for (name, file) in files {
        report.files += 1;
        let docs = match &file.0 {
            Ok(docs) => docs,
            Err(why) => {
                report.unreadable.push((name, why.clone()));
                continue;
            }
        };
        for doc in docs {
            match doc {
                DecodedDocument::Resource(resource) => {
                    report.objects += 1;
                    loaded
                        .origin
                        .entry(resource.object_ref())
                        .or_insert_with(|| name.clone());
                    loaded.estate.add((**resource).clone());
                }
                DecodedDocument::GitSource => report.objects += 1,
                DecodedDocument::Foreign {
                    api_version,
                    kind,
                    doc,
                } => {
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
                    loaded.foreign.push((name.clone(), doc.clone()));
                }
                DecodedDocument::Refused(findings) => {
                    report.objects += 1;
                    report
                        .findings
                        .extend(findings.iter().map(|f| (name.clone(), f.clone())));
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
