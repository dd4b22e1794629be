//! Shadow passwords: generated with enough entropy, refused when weak, stored only as an
//! Argon2id verifier.
//!
//! The KeyServer product shipped a well-known default shadow password; anyone who knew it
//! could pose as a shadow. Here a password is random unless a person supplies one, and a
//! supplied one is refused when it is short, repetitive or built on a well-known default.

use std::fmt;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::rngs::OsRng;
use rand::{Rng as _, distributions::Alphanumeric};
use zeroize::Zeroizing;

/// Characters in a generated password: 24 alphanumerics carry 24·log2(62) ≈ 142 bits.
pub const GENERATED_LEN: usize = 24;
/// Shortest password a person may supply.
pub const MIN_LEN: usize = 16;
/// Fewest distinct characters in a supplied password.
const MIN_DISTINCT: usize = 6;
/// What must remain of a supplied password once well-known words are taken out.
const MIN_LEN_WITHOUT_DEFAULTS: usize = 12;

/// Default and common passwords of key servers and appliances, lowercase, alphanumerics only.
const WELL_KNOWN: &[&str] = &[
    "sassafras",
    "keyserver",
    "keyshadow",
    "shadow",
    "password",
    "passw0rd",
    "changeme",
    "default",
    "admin",
    "administrator",
    "secret",
    "letmein",
    "welcome",
    "qwerty",
    "123456",
    "12345678",
    "root",
    "toor",
    "ibm",
    "ekm",
    "kmip",
];

/// A shadow password. It is never printed: `Debug` shows only that it is redacted.
#[derive(Clone)]
pub struct Password(Zeroizing<String>);

impl Password {
    /// A new random password with about 142 bits of entropy.
    pub fn generate() -> Self {
        let text: String = OsRng
            .sample_iter(&Alphanumeric)
            .take(GENERATED_LEN)
            .map(char::from)
            .collect();
        Self(Zeroizing::new(text))
    }

    /// Accepts a password supplied by a person, or says why it is refused (without
    /// repeating the password).
    pub fn parse(candidate: &str) -> Result<Self, PasswordError> {
        let normalized: String = candidate
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if WELL_KNOWN.contains(&normalized.as_str()) {
            return Err(PasswordError::WellKnown);
        }
        let len = candidate.chars().count();
        if len < MIN_LEN {
            return Err(PasswordError::TooShort { len });
        }
        let mut stripped = normalized;
        for word in WELL_KNOWN {
            stripped = stripped.replace(word, "");
        }
        if stripped.len() < MIN_LEN_WITHOUT_DEFAULTS {
            return Err(PasswordError::WellKnown);
        }
        let mut distinct: Vec<char> = candidate.chars().collect();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() < MIN_DISTINCT {
            return Err(PasswordError::Repetitive {
                distinct: distinct.len(),
            });
        }
        Ok(Self(Zeroizing::new(candidate.to_owned())))
    }

    /// The password, for handing to the shadow (in a Secret) and nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// An Argon2id verifier (PHC string) with the standard cost.
    pub fn verifier(&self) -> Result<String, PasswordError> {
        self.verifier_with(Params::DEFAULT)
    }

    /// An Argon2id verifier with explicit cost parameters (the PHC string records them, so
    /// verification needs nothing else).
    pub fn verifier_with(&self, params: Params) -> Result<String, PasswordError> {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(self.0.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| PasswordError::Hash(e.to_string()))
    }

    /// Whether this password matches `verifier`. A malformed verifier matches nothing.
    pub fn matches(&self, verifier: &str) -> bool {
        let Ok(hash) = PasswordHash::new(verifier) else {
            return false;
        };
        if hash.algorithm != Algorithm::Argon2id.ident() {
            return false;
        }
        Argon2::default()
            .verify_password(self.0.as_bytes(), &hash)
            .is_ok()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Why a password is refused. Messages never contain the password.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasswordError {
    /// A known default or common password, or one built from them.
    #[error("password refused: it is, or is built on, a well-known default password")]
    WellKnown,
    /// Too few characters.
    #[error("password refused: {len} characters, at least {MIN_LEN} required")]
    TooShort {
        /// Characters supplied.
        len: usize,
    },
    /// Too few distinct characters.
    #[error(
        "password refused: only {distinct} distinct characters, at least {MIN_DISTINCT} required"
    )]
    Repetitive {
        /// Distinct characters found.
        distinct: usize,
    },
    /// The hash could not be computed.
    #[error("failed to hash password: {0}")]
    Hash(String),
}
