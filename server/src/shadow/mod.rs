//! Shadows in the key server: the licence that decides the role, a replica's register of its
//! shadows ([`registry`]), the verifiers file it re-reads ([`verifiers`]) and its push of new
//! keys to them ([`push`]), and a shadow's poll loop around the state machine ([`runner`]).
//!
//! The rules are in `shadowkeep_api::shadow`; this module feeds them the network, the clock
//! and the disk.

pub mod push;
pub mod registry;
pub mod runner;
pub mod verifiers;

use std::path::Path;

use shadowkeep_api::license::{License, LicenseVerifier, Role};
use shadowkeep_api::server_config::{LicenceConfig, ServerConfig};

/// Why the licence refused the server a start.
#[derive(Debug, thiserror::Error)]
#[error("failed to start with licence {path}: {reason}")]
pub struct LicenceError {
    /// The licence file (or the configuration, when it is what is wrong).
    pub path: String,
    /// Why.
    pub reason: String,
}

/// What the licence made of this server.
#[derive(Clone, Debug)]
pub struct Licensed {
    /// The verified licence.
    pub licence: License,
    /// Its text, as a shadow presents it at registration.
    pub text: String,
    /// The KeyManager's licence verifying key.
    pub verifier: LicenseVerifier,
}

impl Licensed {
    /// The role the licence gives.
    pub fn role(&self) -> Role {
        self.licence.role
    }
}

/// Reads and verifies the configured licence, and checks that the configuration fits the
/// role it gives: a shadow licence needs `shadow:`, a replica's must not have it.
pub fn load(config: &ServerConfig) -> Result<Option<Licensed>, LicenceError> {
    let Some(settings) = &config.licence else {
        if config.shadow.is_some() {
            return Err(LicenceError {
                path: "(none configured)".to_owned(),
                reason: "a shadow needs a shadow licence (licence.file and licence.publicKey)"
                    .to_owned(),
            });
        }
        return Ok(None);
    };
    let licensed = read(settings, &config.server_id)?;
    let refuse = |reason: &str| LicenceError {
        path: settings.file.display().to_string(),
        reason: reason.to_owned(),
    };
    match (licensed.role(), config.shadow.is_some()) {
        (Role::Shadow, false) => Err(refuse(
            "it is a shadow licence, but the configuration has no shadow: section",
        )),
        (Role::Primary, true) => Err(refuse(
            "it is a replica's licence, but the configuration has a shadow: section",
        )),
        _ => Ok(Some(licensed)),
    }
}

fn read(settings: &LicenceConfig, server_id: &str) -> Result<Licensed, LicenceError> {
    let refuse = |reason: String| LicenceError {
        path: settings.file.display().to_string(),
        reason,
    };
    let verifier = public_key(&settings.public_key).map_err(|reason| LicenceError {
        path: settings.file.display().to_string(),
        reason: format!("licence.publicKey: {reason}"),
    })?;
    let text = read_small(&settings.file).map_err(refuse)?;
    let licence = verifier
        .verify_for_server(&text, server_id)
        .map_err(|e| refuse(e.to_string()))?;
    Ok(Licensed {
        licence,
        text: text.trim().to_owned(),
        verifier,
    })
}

/// A licence verifying key from its hex form.
pub fn public_key(hex_text: &str) -> Result<LicenseVerifier, String> {
    let bytes = hex::decode(hex_text.trim())
        .map_err(|_| "is not hex (expected 64 hex digits)".to_owned())?;
    LicenseVerifier::from_bytes(&bytes).map_err(|e| e.to_string())
}

/// A small text file (a licence, a password): read whole, refused past 16 KiB.
pub fn read_small(path: &Path) -> Result<String, String> {
    const MAX: u64 = 16 * 1024;
    let meta = std::fs::metadata(path).map_err(|e| format!("failed to read it: {e}"))?;
    if !meta.is_file() || meta.len() > MAX {
        return Err(format!(
            "failed to read it: not a regular file of at most {MAX} bytes"
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("failed to read it: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "failed to read it: not UTF-8 text".to_owned())
}

/// What KMIP may do on this server now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// A replica: everything the drive table allows.
    Full,
    /// A Serving shadow: reads only; the text says why a change is refused.
    ReadOnly(String),
    /// A shadow that does not serve now: every request refused with this text, so that the
    /// client moves on to its next server.
    Closed(String),
}
