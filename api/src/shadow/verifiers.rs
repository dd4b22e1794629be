//! The shadow verifiers file a replica re-reads while it runs
//! (`replication.shadowVerifiersFile`): the operator rotates a shadow's password by writing
//! into it first the new verifier beside the old one, then the new one alone, and no
//! replica restarts.
//!
//! The file is JSON, `{"shadows": {"<shadow name>": [AcceptedVerifier, ...]}}`, decoded
//! strictly and with bounds; an error names the field at fault, never a value (a password
//! pasted where a verifier belongs must not reach a log).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::registration::{AcceptedVerifier, DecodeError, MAX_NAME_CHARS, decode};

/// Largest verifiers file accepted, in bytes.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// Most verifiers accepted for one shadow in the file: a rotation needs two.
pub const MAX_VERIFIERS_PER_SHADOW: usize = 8;
/// Longest verifier id (an RFC 3339 time is 20 to 35 characters).
pub const MAX_VERIFIER_ID_CHARS: usize = 64;
/// Longest PHC string accepted; an Argon2id one is about 100 characters.
pub const MAX_VERIFIER_CHARS: usize = 512;

/// The verifiers a replica accepts from its verifiers file, by shadow name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShadowVerifiers {
    /// Accepted verifiers, by shadow name.
    pub shadows: BTreeMap<String, Vec<AcceptedVerifier>>,
}

/// Why a verifiers file was refused. Names the field, never its value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifiersError {
    /// Larger than [`MAX_FILE_BYTES`].
    #[error("failed to read the verifiers: {len} bytes, at most {max} accepted")]
    TooLarge {
        /// Bytes read.
        len: usize,
        /// Bytes accepted.
        max: usize,
    },
    /// Not JSON, or not the expected shape.
    #[error("failed to read the verifiers: {problem} at `{path}` (line {line}, column {column})")]
    Malformed {
        /// Where in the document.
        path: String,
        /// What kind of problem, without the offending value.
        problem: &'static str,
        /// Line of the problem.
        line: usize,
        /// Column of the problem.
        column: usize,
    },
    /// A shadow name longer than [`MAX_NAME_CHARS`] (not repeated: it is not a name).
    #[error(
        "failed to read the verifiers: a shadow name in `shadows` has {len} characters, at most {max} accepted"
    )]
    NameTooLong {
        /// Characters found.
        len: usize,
        /// Characters accepted.
        max: usize,
    },
    /// More verifiers for one shadow than [`MAX_VERIFIERS_PER_SHADOW`].
    #[error(
        "failed to read the verifiers: `shadows.{shadow}` has {len} verifiers, at most {max} accepted"
    )]
    TooManyVerifiers {
        /// The shadow.
        shadow: String,
        /// Verifiers found.
        len: usize,
        /// Verifiers accepted.
        max: usize,
    },
    /// A field longer than its bound.
    #[error(
        "failed to read the verifiers: `shadows.{shadow}[{index}].{field}` has {len} characters, at most {max} accepted"
    )]
    FieldTooLong {
        /// The shadow.
        shadow: String,
        /// Which of its verifiers.
        index: usize,
        /// The field.
        field: &'static str,
        /// Characters found.
        len: usize,
        /// Characters accepted.
        max: usize,
    },
    /// A `verifier` that is not an Argon2id PHC string: it would match no password.
    #[error(
        "failed to read the verifiers: `shadows.{shadow}[{index}].verifier` is not an Argon2id PHC string ($argon2id$...)"
    )]
    NotAVerifier {
        /// The shadow.
        shadow: String,
        /// Which of its verifiers.
        index: usize,
    },
}

impl ShadowVerifiers {
    /// Decodes a verifiers file, refusing oversized or malformed content with the field at
    /// fault and never a value.
    pub fn decode(bytes: &[u8]) -> Result<Self, VerifiersError> {
        let file: Self = decode(bytes, MAX_FILE_BYTES).map_err(|e| match e {
            DecodeError::TooLarge { len, max } => VerifiersError::TooLarge { len, max },
            DecodeError::Malformed {
                path,
                problem,
                line,
                column,
            } => VerifiersError::Malformed {
                path,
                problem,
                line,
                column,
            },
            // The generic decoder checks no field lengths.
            DecodeError::FieldTooLong { .. } => VerifiersError::Malformed {
                path: ".".to_owned(),
                problem: "a field too long",
                line: 0,
                column: 0,
            },
        })?;
        for (shadow, verifiers) in &file.shadows {
            let len = shadow.chars().count();
            if len > MAX_NAME_CHARS {
                return Err(VerifiersError::NameTooLong {
                    len,
                    max: MAX_NAME_CHARS,
                });
            }
            if verifiers.len() > MAX_VERIFIERS_PER_SHADOW {
                return Err(VerifiersError::TooManyVerifiers {
                    shadow: shadow.clone(),
                    len: verifiers.len(),
                    max: MAX_VERIFIERS_PER_SHADOW,
                });
            }
            for (index, accepted) in verifiers.iter().enumerate() {
                let too_long = |field: &'static str, len: usize, max: usize| {
                    (len > max).then(|| VerifiersError::FieldTooLong {
                        shadow: shadow.clone(),
                        index,
                        field,
                        len,
                        max,
                    })
                };
                if let Some(e) = too_long(
                    "verifier",
                    accepted.verifier.chars().count(),
                    MAX_VERIFIER_CHARS,
                )
                .or_else(|| {
                    too_long(
                        "id",
                        accepted.id.as_deref().map_or(0, |id| id.chars().count()),
                        MAX_VERIFIER_ID_CHARS,
                    )
                }) {
                    return Err(e);
                }
                if !accepted.verifier.starts_with("$argon2id$") {
                    return Err(VerifiersError::NotAVerifier {
                        shadow: shadow.clone(),
                        index,
                    });
                }
            }
        }
        Ok(file)
    }

    /// The file's text, as the operator writes it.
    pub fn encode(&self) -> Vec<u8> {
        // Strings, times and maps with string keys always serialize.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// The accepted set: `inline` (the configuration's `shadowVerifiers`) with this file's
    /// verifiers appended, shadow by shadow.
    pub fn appended_to(
        &self,
        inline: &BTreeMap<String, Vec<AcceptedVerifier>>,
    ) -> BTreeMap<String, Vec<AcceptedVerifier>> {
        let mut all = inline.clone();
        for (shadow, verifiers) in &self.shadows {
            all.entry(shadow.clone())
                .or_default()
                .extend(verifiers.iter().cloned());
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHC: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGg";

    fn one(id: Option<&str>) -> AcceptedVerifier {
        AcceptedVerifier {
            verifier: PHC.to_owned(),
            not_after: None,
            id: id.map(str::to_owned),
        }
    }

    #[test]
    fn a_file_reads_back_what_was_written_and_appends_to_the_inline_set() {
        let mut file = ShadowVerifiers::default();
        file.shadows.insert(
            "shadow-a".to_owned(),
            vec![one(Some("2026-01-01T00:00:00Z")), one(None)],
        );
        let bytes = file.encode();
        assert_eq!(ShadowVerifiers::decode(&bytes).unwrap(), file);
        let inline = BTreeMap::from([
            ("shadow-a".to_owned(), vec![one(Some("inline"))]),
            ("shadow-b".to_owned(), vec![one(None)]),
        ]);
        let all = file.appended_to(&inline);
        assert_eq!(
            all["shadow-a"]
                .iter()
                .map(|v| v.id.as_deref())
                .collect::<Vec<_>>(),
            [Some("inline"), Some("2026-01-01T00:00:00Z"), None]
        );
        assert_eq!(all["shadow-b"].len(), 1);
        // An id is left out when there is none.
        assert!(!String::from_utf8(bytes).unwrap().contains("\"id\": null"));
    }

    #[test]
    fn each_bound_is_refused_naming_the_field_and_never_a_value() {
        let secret = "hunter2-hunter2-hunter2";
        let file = |shadows: serde_json::Value| {
            serde_json::to_vec(&serde_json::json!({ "shadows": shadows })).unwrap()
        };
        let verifier = |v: &str, id: &str| serde_json::json!({"verifier": v, "id": id});
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![b' '; MAX_FILE_BYTES + 1], "bytes, at most"),
            (
                b"{\"shadows\": {\"a\": [".to_vec(),
                "unexpected end of input",
            ),
            (
                file(serde_json::json!({"a": [{"verifier": PHC, "password": secret}]})),
                "`shadows.a[0]",
            ),
            (
                file(serde_json::json!({"a": [{"verifier": 7}]})),
                "`shadows.a[0].verifier`",
            ),
            (
                file(serde_json::json!({ secret.repeat(12): [verifier(PHC, "x")] })),
                "a shadow name in `shadows` has 276 characters, at most 253",
            ),
            (
                file(serde_json::json!({"a": vec![verifier(PHC, "x"); 9]})),
                "`shadows.a` has 9 verifiers, at most 8",
            ),
            (
                file(serde_json::json!({"a": [verifier(PHC, &secret.repeat(3))]})),
                "`shadows.a[0].id` has 69 characters, at most 64",
            ),
            (
                file(
                    serde_json::json!({"a": [verifier(&format!("$argon2id${}", secret.repeat(30)), "x")]}),
                ),
                "`shadows.a[0].verifier` has 700 characters, at most 512",
            ),
            (
                file(serde_json::json!({"a": [verifier(PHC, "x"), verifier(secret, "y")]})),
                "`shadows.a[1].verifier` is not an Argon2id PHC string",
            ),
        ];
        for (bytes, expected) in cases {
            let text = ShadowVerifiers::decode(&bytes).unwrap_err().to_string();
            assert!(text.contains(expected), "{text:?} lacks {expected:?}");
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.starts_with("failed to read the verifiers"), "{text}");
        }
        // At the bounds, accepted.
        let at = file(serde_json::json!({
            "b".repeat(MAX_NAME_CHARS): vec![verifier(PHC, &"i".repeat(MAX_VERIFIER_ID_CHARS)); MAX_VERIFIERS_PER_SHADOW]
        }));
        assert!(ShadowVerifiers::decode(&at).is_ok());
    }
}
