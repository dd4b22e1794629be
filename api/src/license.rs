//! Server and shadow licenses: small documents signed with a KeyManager's Ed25519 key.
//!
//! A license says which server it belongs to (server id), in which role, for which shadow,
//! and holds the shadow's password verifier. The server refuses to start, and the primary
//! refuses a shadow, unless the license verifies under the KeyManager's public key and
//! names the expected server and shadow: a changed byte, another signer or a license copied
//! from another shadow is rejected.
//!
//! Text form: `skl1.<base64url(body)>.<base64url(signature)>`, where the signature covers a
//! domain-separation prefix and the exact body bytes.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use jiff::Timestamp;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::password::Password;

const PREFIX: &str = "skl1";
const SIGNING_CONTEXT: &[u8] = b"shadowkeep.io/license/v1\0";
/// The body format written by this version.
pub const LICENSE_FORMAT: u32 = 1;

/// What a license lets a server be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A replica of the KeyManager.
    Primary,
    /// A shadow of the KeyManager.
    Shadow,
}

/// The signed content of a license.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct License {
    /// Body format.
    pub format: u32,
    /// The KeyManager's server id.
    pub server_id: String,
    /// Primary or shadow.
    pub role: Role,
    /// The Shadow's name; only for shadows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_name: Option<String>,
    /// Argon2id verifier of the shadow's password; only for shadows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_verifier: Option<String>,
    /// When the license was issued; a newer license replaces an older one.
    pub issued_at: Timestamp,
}

impl License {
    /// A license for a replica of `server_id`.
    pub fn primary(server_id: impl Into<String>, issued_at: Timestamp) -> Self {
        Self {
            format: LICENSE_FORMAT,
            server_id: server_id.into(),
            role: Role::Primary,
            shadow_name: None,
            password_verifier: None,
            issued_at,
        }
    }

    /// A license for shadow `shadow_name` of `server_id`, holding `password_verifier`
    /// (from [`Password::verifier`]).
    pub fn shadow(
        server_id: impl Into<String>,
        shadow_name: impl Into<String>,
        password_verifier: String,
        issued_at: Timestamp,
    ) -> Self {
        Self {
            format: LICENSE_FORMAT,
            server_id: server_id.into(),
            role: Role::Shadow,
            shadow_name: Some(shadow_name.into()),
            password_verifier: Some(password_verifier),
            issued_at,
        }
    }

    /// Whether `password` is this shadow license's password.
    pub fn check_password(&self, password: &Password) -> Result<(), LicenseError> {
        match &self.password_verifier {
            Some(v) if password.matches(v) => Ok(()),
            _ => Err(LicenseError::WrongPassword),
        }
    }

    fn check_shape(&self) -> Result<(), LicenseError> {
        if self.format != LICENSE_FORMAT {
            return Err(LicenseError::UnsupportedFormat { found: self.format });
        }
        let shaped = match self.role {
            Role::Primary => self.shadow_name.is_none() && self.password_verifier.is_none(),
            Role::Shadow => self.shadow_name.is_some() && self.password_verifier.is_some(),
        };
        if shaped {
            Ok(())
        } else {
            Err(LicenseError::Malformed(
                "a shadow license needs a shadow name and password verifier; a primary license has neither"
                    .to_owned(),
            ))
        }
    }
}

/// Whom a license must name for it to be accepted here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected<'a> {
    /// The KeyManager's server id.
    pub server_id: &'a str,
    /// The role the holder claims.
    pub role: Role,
    /// For shadows, the Shadow's name.
    pub shadow_name: Option<&'a str>,
}

/// A KeyManager's license signing key. Kept in a Secret by the operator.
pub struct LicenseSigner(SigningKey);

impl LicenseSigner {
    /// A new random signing key.
    pub fn generate() -> Self {
        Self(SigningKey::generate(&mut OsRng))
    }

    /// A signing key from its 32-byte seed.
    pub fn from_seed(seed: &[u8]) -> Result<Self, LicenseError> {
        let seed: &[u8; 32] = seed
            .try_into()
            .map_err(|_| LicenseError::Malformed("a signing key seed is 32 bytes".to_owned()))?;
        Ok(Self(SigningKey::from_bytes(seed)))
    }

    /// The 32-byte seed, for writing the key to its Secret.
    pub fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The matching verifier, which servers and shadows are given.
    pub fn verifier(&self) -> LicenseVerifier {
        LicenseVerifier(self.0.verifying_key())
    }

    /// Signs `license` into its text form.
    pub fn sign(&self, license: &License) -> Result<String, LicenseError> {
        license.check_shape()?;
        let body =
            serde_json::to_vec(license).map_err(|e| LicenseError::Malformed(e.to_string()))?;
        let signature = self.0.sign(&signed_bytes(&body));
        Ok(format!(
            "{PREFIX}.{}.{}",
            URL_SAFE_NO_PAD.encode(&body),
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        ))
    }
}

impl std::fmt::Debug for LicenseSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LicenseSigner")
            .field(&self.verifier())
            .finish()
    }
}

/// A KeyManager's license verifying (public) key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LicenseVerifier(VerifyingKey);

impl LicenseVerifier {
    /// A verifier from its 32 public bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LicenseError> {
        let bytes: &[u8; 32] = bytes
            .try_into()
            .map_err(|_| LicenseError::Malformed("a verifying key is 32 bytes".to_owned()))?;
        VerifyingKey::from_bytes(bytes)
            .map(Self)
            .map_err(|_| LicenseError::Malformed("not an Ed25519 public key".to_owned()))
    }

    /// The 32 public bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Checks the signature of `text` and that it was issued for `server_id`, in whichever
    /// role: a server learns its role from its licence this way.
    pub fn verify_for_server(&self, text: &str, server_id: &str) -> Result<License, LicenseError> {
        let license = self.open(text)?;
        if license.server_id != server_id {
            return Err(LicenseError::WrongServer {
                found: license.server_id,
                expected: server_id.to_owned(),
            });
        }
        Ok(license)
    }

    /// Checks the signature of `text` and that it names `expected`; returns the body.
    pub fn verify(&self, text: &str, expected: Expected<'_>) -> Result<License, LicenseError> {
        let license = self.open(text)?;
        if license.server_id != expected.server_id {
            return Err(LicenseError::WrongServer {
                found: license.server_id,
                expected: expected.server_id.to_owned(),
            });
        }
        if license.role != expected.role || license.shadow_name.as_deref() != expected.shadow_name {
            return Err(LicenseError::WrongHolder {
                found: describe(license.role, license.shadow_name.as_deref()),
                expected: describe(expected.role, expected.shadow_name),
            });
        }
        Ok(license)
    }

    /// Checks the signature and the shape of `text`; returns the body.
    fn open(&self, text: &str) -> Result<License, LicenseError> {
        let mut parts = text.trim().split('.');
        let (Some(PREFIX), Some(body), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(LicenseError::Malformed(format!(
                "expected {PREFIX}.<body>.<signature>"
            )));
        };
        let body = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| LicenseError::Malformed("body is not base64url".to_owned()))?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .ok()
            .and_then(|s| Signature::from_slice(&s).ok())
            .ok_or_else(|| {
                LicenseError::Malformed("signature is not 64 bytes of base64url".to_owned())
            })?;
        self.0
            .verify(&signed_bytes(&body), &signature)
            .map_err(|_| LicenseError::BadSignature)?;
        let license: License =
            serde_json::from_slice(&body).map_err(|e| LicenseError::Malformed(e.to_string()))?;
        license.check_shape()?;
        Ok(license)
    }
}

fn describe(role: Role, shadow: Option<&str>) -> String {
    match (role, shadow) {
        (Role::Shadow, Some(name)) => format!("shadow {name:?}"),
        (Role::Shadow, None) => "a shadow".to_owned(),
        (Role::Primary, _) => "a primary replica".to_owned(),
    }
}

fn signed_bytes(body: &[u8]) -> Vec<u8> {
    let mut bytes = SIGNING_CONTEXT.to_vec();
    bytes.extend_from_slice(body);
    bytes
}

/// Why a license is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LicenseError {
    /// Not a license document.
    #[error("license refused: malformed ({0})")]
    Malformed(String),
    /// The signature does not verify: altered, or signed by another key.
    #[error(
        "license refused: the signature does not verify (altered, or signed by another KeyManager)"
    )]
    BadSignature,
    /// A body format this version does not read.
    #[error("license refused: format {found} is not supported")]
    UnsupportedFormat {
        /// The format found.
        found: u32,
    },
    /// Signed for another server id.
    #[error("license refused: issued for server {found:?}, this is {expected:?}")]
    WrongServer {
        /// Server id in the license.
        found: String,
        /// Server id expected.
        expected: String,
    },
    /// Signed for another role or shadow.
    #[error("license refused: issued for {found}, expected {expected}")]
    WrongHolder {
        /// Holder in the license.
        found: String,
        /// Holder expected.
        expected: String,
    },
    /// The password does not match the license's verifier.
    #[error("shadow password refused: it does not match the license")]
    WrongPassword,
}
