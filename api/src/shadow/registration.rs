//! A replica's decision on a shadow's registration: the shadow presents its licence and
//! password over mutual TLS, and the replica accepts it only if the licence verifies under the
//! KeyManager's key, names this KeyManager and the shadow whose certificate presents it (a
//! licence copied to another host is refused), and the password matches a verifier the
//! replica accepts for that shadow now.
//!
//! Replicas hold only Argon2id verifiers, several per shadow during a password rotation, each
//! with an optional not-after time, so old and new passwords overlap without downtime.
//!
//! The request and reply are the wire contract of `POST /v1/shadow/register`; both decode with
//! size bounds, and no error or refusal repeats the password.

use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::license::{Expected, LicenseError, LicenseVerifier, Role};
use crate::password::Password;

/// Largest registration request accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Largest registration reply accepted, in bytes.
pub const MAX_REPLY_BYTES: usize = 4 * 1024;
/// Longest licence text accepted; a real one is a few hundred characters.
pub const MAX_LICENCE_CHARS: usize = 8 * 1024;
/// Longest password accepted; generated ones are 24 characters.
pub const MAX_PASSWORD_CHARS: usize = 1024;
/// Longest shadow name (a Kubernetes object name).
pub const MAX_NAME_CHARS: usize = 253;
/// Longest refusal message in a reply.
pub const MAX_MESSAGE_CHARS: usize = 1024;

/// A shadow password on the wire: zeroed when dropped and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordText(Zeroizing<String>);

impl PasswordText {
    /// Wraps the password a shadow was given.
    pub fn new(password: &Password) -> Self {
        Self(Zeroizing::new(password.expose().to_owned()))
    }
}

impl fmt::Debug for PasswordText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordText(<redacted>)")
    }
}

impl Serialize for PasswordText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PasswordText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|s| Self(Zeroizing::new(s)))
    }
}

/// What a shadow sends to register with a replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShadowRegistration {
    /// The shadow licence, in its text form.
    pub licence: String,
    /// The shadow's password.
    pub password: PasswordText,
    /// The shadow's persistent instance id, so that a replica can tell two processes
    /// registering as one shadow apart.
    pub instance_id: uuid::Uuid,
}

impl ShadowRegistration {
    /// Decodes a request body, refusing oversized or malformed input with the field at fault
    /// and never the values.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        let request: Self = decode(bytes, MAX_REQUEST_BYTES)?;
        bound("licence", &request.licence, MAX_LICENCE_CHARS)?;
        bound("password", &request.password.0, MAX_PASSWORD_CHARS)?;
        Ok(request)
    }
}

/// A replica's answer to a registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "camelCase", deny_unknown_fields)]
pub enum RegistrationReply {
    /// Accepted.
    #[serde(rename_all = "camelCase")]
    Registered {
        /// The shadow, as named by its licence.
        shadow: String,
        /// Until when the password used stays accepted, if it expires: the shadow should
        /// have a new one by then.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verifier_not_after: Option<Timestamp>,
        /// The `issuedAt` of the licence accepted.
        licence_issued_at: Timestamp,
    },
    /// Refused.
    #[serde(rename_all = "camelCase")]
    Refused {
        /// The stable reason code.
        reason: RefusalCode,
        /// The refusal in words.
        message: String,
    },
}

impl RegistrationReply {
    /// Decodes a reply body, refusing oversized or malformed input.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        let reply: Self = decode(bytes, MAX_REPLY_BYTES)?;
        match &reply {
            Self::Registered { shadow, .. } => bound("shadow", shadow, MAX_NAME_CHARS)?,
            Self::Refused { message, .. } => bound("message", message, MAX_MESSAGE_CHARS)?,
        }
        Ok(reply)
    }
}

impl From<&Result<Registered, Refusal>> for RegistrationReply {
    fn from(decision: &Result<Registered, Refusal>) -> Self {
        match decision {
            Ok(r) => Self::Registered {
                shadow: r.shadow.clone(),
                verifier_not_after: r.verifier_not_after,
                licence_issued_at: r.licence_issued_at,
            },
            Err(refusal) => Self::Refused {
                reason: refusal.code(),
                message: refusal.to_string(),
            },
        }
    }
}

/// Why a request or reply body could not be read. Names the field, never its value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Larger than the bound.
    #[error("failed to read the body: {len} bytes, at most {max} accepted")]
    TooLarge {
        /// Bytes received.
        len: usize,
        /// Bytes accepted.
        max: usize,
    },
    /// A field longer than its bound.
    #[error("failed to read the body: `{field}` has {len} characters, at most {max} accepted")]
    FieldTooLong {
        /// The field.
        field: &'static str,
        /// Characters received.
        len: usize,
        /// Characters accepted.
        max: usize,
    },
    /// Not JSON, or not the expected shape.
    #[error("failed to read the body: {problem} at `{path}` (line {line}, column {column})")]
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
}

/// Decodes `bytes` (at most `max`) as JSON, keeping of an error only its position and kind.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    max: usize,
) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        malformed(path, &e.into_inner())
    })?;
    de.end().map_err(|e| malformed(".".to_owned(), &e))?;
    Ok(value)
}

/// `serde_json`'s own messages can quote the offending value, which may be the password, so
/// only its category and position are kept.
fn malformed(path: String, e: &serde_json::Error) -> DecodeError {
    let problem = match e.classify() {
        serde_json::error::Category::Io => "unreadable input",
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Eof => "unexpected end of input",
        serde_json::error::Category::Data => "a missing, unknown or wrongly typed field",
    };
    DecodeError::Malformed {
        path,
        problem,
        line: e.line(),
        column: e.column(),
    }
}

fn bound(field: &'static str, value: &str, max: usize) -> Result<(), DecodeError> {
    let len = value.chars().count();
    if len > max {
        return Err(DecodeError::FieldTooLong { field, len, max });
    }
    Ok(())
}

/// A password verifier a replica accepts for a shadow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AcceptedVerifier {
    /// Argon2id PHC string.
    pub verifier: String,
    /// The last moment the verifier is accepted; none while it is the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Timestamp>,
    /// A label that is not a secret, for the operator to tell the verifiers apart: it sets
    /// the `issuedAt` (RFC 3339) of the licence that carries the password. At most
    /// [`crate::shadow::verifiers::MAX_VERIFIER_ID_CHARS`] characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// What a replica knows to judge registrations: its KeyManager and the verifiers it accepts.
#[derive(Clone, Copy, Debug)]
pub struct Registrar<'a> {
    /// The KeyManager's server id.
    pub server_id: &'a str,
    /// The KeyManager's licence verifying key.
    pub licence_verifier: &'a LicenseVerifier,
    /// Accepted verifiers, by shadow name.
    pub accepted: &'a BTreeMap<String, Vec<AcceptedVerifier>>,
}

/// An accepted registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registered {
    /// The shadow, as named by its licence and certificate.
    pub shadow: String,
    /// Which of the shadow's accepted verifiers the password matched.
    pub verifier_index: usize,
    /// That verifier's not-after time.
    pub verifier_not_after: Option<Timestamp>,
    /// That verifier's id.
    pub verifier_id: Option<String>,
    /// The `issuedAt` of the licence.
    pub licence_issued_at: Timestamp,
}

impl Registrar<'_> {
    /// Judges `request`, presented at `now` over a TLS connection whose client certificate
    /// names `presenter`. Checks run cheapest first, so a bad licence costs no Argon2 hash.
    pub fn decide(
        &self,
        request: &ShadowRegistration,
        presenter: &str,
        now: Timestamp,
    ) -> Result<Registered, Refusal> {
        let expected = Expected {
            server_id: self.server_id,
            role: Role::Shadow,
            shadow_name: Some(presenter),
        };
        let licence = match self.licence_verifier.verify(&request.licence, expected) {
            Ok(licence) => licence,
            Err(LicenseError::WrongHolder { .. }) => {
                let primary = Expected {
                    role: Role::Primary,
                    shadow_name: None,
                    ..expected
                };
                return Err(
                    if self
                        .licence_verifier
                        .verify(&request.licence, primary)
                        .is_ok()
                    {
                        Refusal::LicenceNotShadow
                    } else {
                        Refusal::IdentityMismatch {
                            presenter: presenter.to_owned(),
                        }
                    },
                );
            }
            Err(e @ LicenseError::WrongServer { .. }) => {
                return Err(Refusal::LicenceOtherServer(e));
            }
            Err(LicenseError::BadSignature) => return Err(Refusal::LicenceBadSignature),
            Err(e) => return Err(Refusal::LicenceInvalid(e)),
        };
        let shadow = presenter.to_owned();
        let verifiers = self
            .accepted
            .get(&shadow)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Refusal::UnknownShadow {
                shadow: shadow.clone(),
            })?;
        // A password too weak to have been issued matches no verifier: say only that.
        let password = Password::parse(&request.password.0).map_err(|_| Refusal::PasswordWrong)?;
        let mut expired = None;
        for (index, accepted) in verifiers.iter().enumerate() {
            if !password.matches(&accepted.verifier) {
                continue;
            }
            match accepted.not_after {
                Some(not_after) if now > not_after => expired = Some(not_after),
                not_after => {
                    return Ok(Registered {
                        shadow,
                        verifier_index: index,
                        verifier_not_after: not_after,
                        verifier_id: accepted.id.clone(),
                        licence_issued_at: licence.issued_at,
                    });
                }
            }
        }
        Err(match expired {
            Some(not_after) => Refusal::VerifierExpired { not_after },
            None => Refusal::PasswordWrong,
        })
    }
}

/// A stable reason code for a refused registration, for logs, metrics and the reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefusalCode {
    /// Not a licence document, or a format this version does not read.
    LicenceInvalid,
    /// The signature does not verify: a changed byte, or another KeyManager's key.
    LicenceBadSignature,
    /// Signed by this KeyManager's key for another server id.
    LicenceOtherServer,
    /// A replica's licence, not a shadow's.
    LicenceNotShadow,
    /// The licence names another shadow than the certificate presenting it.
    IdentityMismatch,
    /// No verifier is accepted for this shadow.
    UnknownShadow,
    /// The password matches no accepted verifier.
    PasswordWrong,
    /// The password matches only a verifier past its not-after time.
    VerifierExpired,
}

impl RefusalCode {
    /// Every code, for metrics that are zero until counted.
    pub const ALL: [Self; 8] = [
        Self::LicenceInvalid,
        Self::LicenceBadSignature,
        Self::LicenceOtherServer,
        Self::LicenceNotShadow,
        Self::IdentityMismatch,
        Self::UnknownShadow,
        Self::PasswordWrong,
        Self::VerifierExpired,
    ];

    /// The stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LicenceInvalid => "licence-invalid",
            Self::LicenceBadSignature => "licence-bad-signature",
            Self::LicenceOtherServer => "licence-other-server",
            Self::LicenceNotShadow => "licence-not-shadow",
            Self::IdentityMismatch => "identity-mismatch",
            Self::UnknownShadow => "unknown-shadow",
            Self::PasswordWrong => "password-wrong",
            Self::VerifierExpired => "verifier-expired",
        }
    }
}

impl fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a registration was refused. The text names the licence problem or the shadow, never
/// the password.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    /// See [`RefusalCode::LicenceInvalid`].
    #[error("shadow registration refused ({code}): {0}", code = RefusalCode::LicenceInvalid)]
    LicenceInvalid(LicenseError),
    /// See [`RefusalCode::LicenceBadSignature`].
    #[error(
        "shadow registration refused ({code}): the licence signature does not verify under this KeyManager's key (changed, or signed by another KeyManager)",
        code = RefusalCode::LicenceBadSignature
    )]
    LicenceBadSignature,
    /// See [`RefusalCode::LicenceOtherServer`].
    #[error("shadow registration refused ({code}): {0}", code = RefusalCode::LicenceOtherServer)]
    LicenceOtherServer(LicenseError),
    /// See [`RefusalCode::LicenceNotShadow`].
    #[error(
        "shadow registration refused ({code}): the licence is a replica's, not a shadow's",
        code = RefusalCode::LicenceNotShadow
    )]
    LicenceNotShadow,
    /// See [`RefusalCode::IdentityMismatch`].
    #[error(
        "shadow registration refused ({code}): the licence does not name {presenter:?}, the shadow whose certificate presented it (a licence copied to another host)",
        code = RefusalCode::IdentityMismatch
    )]
    IdentityMismatch {
        /// The identity in the client certificate.
        presenter: String,
    },
    /// See [`RefusalCode::UnknownShadow`].
    #[error(
        "shadow registration refused ({code}): no password is accepted for shadow {shadow:?}",
        code = RefusalCode::UnknownShadow
    )]
    UnknownShadow {
        /// The shadow.
        shadow: String,
    },
    /// See [`RefusalCode::PasswordWrong`].
    #[error(
        "shadow registration refused ({code}): the password is not one accepted for this shadow",
        code = RefusalCode::PasswordWrong
    )]
    PasswordWrong,
    /// See [`RefusalCode::VerifierExpired`].
    #[error(
        "shadow registration refused ({code}): the password was accepted until {not_after}; the shadow needs its new one",
        code = RefusalCode::VerifierExpired
    )]
    VerifierExpired {
        /// When the matching verifier stopped being accepted.
        not_after: Timestamp,
    },
}

impl Refusal {
    /// The stable reason code.
    pub fn code(&self) -> RefusalCode {
        match self {
            Self::LicenceInvalid(_) => RefusalCode::LicenceInvalid,
            Self::LicenceBadSignature => RefusalCode::LicenceBadSignature,
            Self::LicenceOtherServer(_) => RefusalCode::LicenceOtherServer,
            Self::LicenceNotShadow => RefusalCode::LicenceNotShadow,
            Self::IdentityMismatch { .. } => RefusalCode::IdentityMismatch,
            Self::UnknownShadow { .. } => RefusalCode::UnknownShadow,
            Self::PasswordWrong => RefusalCode::PasswordWrong,
            Self::VerifierExpired { .. } => RefusalCode::VerifierExpired,
        }
    }
}
