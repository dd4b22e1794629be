//! A shadow's credentials: a random password and the shadow licence that carries its
//! verifier, issued together, and the record the core keeps of them across a rotation.
//!
//! The record is the only place the password lives besides the shadow's own Secret or
//! file; replicas get verifiers only ([`Record::accepted`]). `Debug` never shows a
//! password, a licence or a verifier.

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use shadowkeep_api::license::{License, LicenseSigner};
use shadowkeep_api::password::Password;
use zeroize::Zeroizing;

use super::super::Error;

/// The record's format written by this version.
pub const RECORD_FORMAT: u32 = 1;

/// A password and the licence issued with it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Issued {
    /// The password, as the shadow reads it.
    pub password: Zeroizing<String>,
    /// The signed shadow licence (`skl1.…`), holding the password's verifier.
    pub licence: String,
    /// The password's Argon2id verifier, as the replicas accept it.
    pub verifier: String,
    /// When the licence was issued: it names the pair (see [`Issued::id`]).
    pub issued_at: Timestamp,
}

impl Issued {
    /// A new random password (about 142 bits) and a licence for shadow `shadow` of
    /// `server_id` carrying its verifier, issued at `issued_at`.
    pub fn new(
        signer: &LicenseSigner,
        server_id: &str,
        shadow: &str,
        issued_at: Timestamp,
    ) -> Result<Self, Error> {
        let failed = |what: &str, reason: String| Error::Material {
            what: format!("{what} of Shadow {shadow}"),
            reason,
        };
        let password = Password::generate();
        let verifier = password
            .verifier()
            .map_err(|e| failed("the password verifier", e.to_string()))?;
        let licence = signer
            .sign(&License::shadow(
                server_id,
                shadow,
                verifier.clone(),
                issued_at,
            ))
            .map_err(|e| failed("the licence", e.to_string()))?;
        Ok(Self {
            password: Zeroizing::new(password.expose().to_owned()),
            licence,
            verifier,
            issued_at,
        })
    }

    /// The pair's name, which is not secret: the licence's `issuedAt` in RFC 3339. Replicas
    /// report the verifiers they accept and the licence a shadow registered with by it.
    pub fn id(&self) -> String {
        self.issued_at.to_string()
    }
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("issued_at", &self.issued_at)
            .finish_non_exhaustive()
    }
}

/// Why a rotation was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// `spec.passwordRotationInterval` ran out.
    Schedule,
    /// The `shadowkeep.io/rotate-password-requested-at` annotation.
    Requested,
    /// `spec.state` left `Disabled`: a disabled shadow needs a newer licence.
    Reenabled,
}

/// A rotation whose new pair the replicas are being made to accept; the shadow still holds
/// the current pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rotation {
    /// The new pair.
    pub next: Issued,
    /// When the rotation started.
    pub started_at: Timestamp,
    /// Why.
    pub cause: Cause,
}

/// The previous pair's verifier, still accepted after the shadow got the new pair: until
/// every replica has seen the shadow register with the new one, or until `not_after`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retiring {
    /// The old verifier.
    pub verifier: String,
    /// The old pair's id.
    pub id: String,
    /// The last moment replicas accept it, whatever happens (the bounded overlap).
    pub not_after: Timestamp,
    /// When the shadow was handed the new pair.
    pub handed_over_at: Timestamp,
    /// Whether it is out of the replicas' verifiers already (the rotation then waits for
    /// every replica to have stopped accepting it).
    #[serde(default)]
    pub withdrawn: bool,
}

impl std::fmt::Debug for Retiring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retiring")
            .field("id", &self.id)
            .field("not_after", &self.not_after)
            .field("handed_over_at", &self.handed_over_at)
            .field("withdrawn", &self.withdrawn)
            .finish_non_exhaustive()
    }
}

/// Why the last rotation step failed; kept until a rotation completes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Problem {
    /// The condition reason (CamelCase).
    pub reason: String,
    /// What happened, naming replicas and pair ids, never a secret.
    pub message: String,
}

/// Everything kept of one shadow's credentials.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Record {
    /// Format of this record.
    pub format: u32,
    /// The pair the shadow holds.
    pub current: Issued,
    /// A rotation not yet handed to the shadow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Rotation>,
    /// The old verifier during the overlap after the hand-over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retiring: Option<Retiring>,
    /// When the last rotation completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<Timestamp>,
    /// Failed attempts of the rotation in progress.
    #[serde(default)]
    pub failures: u32,
    /// No attempt before this moment (backoff after a failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Timestamp>,
    /// The last failure, until a rotation completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
    /// The last rotation request (annotation value) acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_request: Option<String>,
    /// Whether `spec.state` was `Disabled` at the last step.
    #[serde(default)]
    pub disabled: bool,
}

/// A verifier the replicas are to accept for a shadow.
#[derive(Clone, PartialEq, Eq)]
pub struct Accept {
    /// Argon2id PHC string.
    pub verifier: String,
    /// The pair's id.
    pub id: String,
    /// The last moment it is accepted; none for the pair in force.
    pub not_after: Option<Timestamp>,
}

impl std::fmt::Debug for Accept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accept")
            .field("id", &self.id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Record {
    /// The record of a shadow's first pair.
    pub fn first(current: Issued) -> Self {
        Self {
            format: RECORD_FORMAT,
            current,
            rotation: None,
            retiring: None,
            rotated_at: None,
            failures: 0,
            retry_at: None,
            problem: None,
            handled_request: None,
            disabled: false,
        }
    }

    /// Reads a stored record.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let record: Self = serde_json::from_slice(bytes).map_err(|e| {
            // serde_json's messages quote no input values for these types' fields, but the
            // position is all a reader needs.
            format!(
                "not a shadow credential record (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
        if record.format != RECORD_FORMAT {
            return Err(format!(
                "record format {} is not one this version reads ({RECORD_FORMAT})",
                record.format
            ));
        }
        Ok(record)
    }

    /// The stored form.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Whether a rotation is under way: the new pair not yet handed over, or the old
    /// verifier not yet retired.
    pub fn rotating(&self) -> bool {
        self.rotation.is_some() || self.retiring.is_some()
    }

    /// The verifiers replicas accept now: the pair in force; during a rotation also the
    /// new pair (before the hand-over) or the old one until its not-after (after it).
    pub fn accepted(&self) -> Vec<Accept> {
        let mut out = vec![Accept {
            verifier: self.current.verifier.clone(),
            id: self.current.id(),
            not_after: None,
        }];
        if let Some(rotation) = &self.rotation {
            out.push(Accept {
                verifier: rotation.next.verifier.clone(),
                id: rotation.next.id(),
                not_after: None,
            });
        }
        if let Some(retiring) = self.retiring.as_ref().filter(|r| !r.withdrawn) {
            out.push(Accept {
                verifier: retiring.verifier.clone(),
                id: retiring.id.clone(),
                not_after: Some(retiring.not_after),
            });
        }
        out
    }

    /// When the next pair may be issued: strictly after every pair issued before, so that
    /// a shadow takes it as newer even if the clock went back.
    pub fn next_issue_time(&self, now: Timestamp) -> Timestamp {
        let after = self
            .current
            .issued_at
            .checked_add(SignedDuration::from_secs(1))
            .unwrap_or(self.current.issued_at);
        now.max(after)
    }
}
