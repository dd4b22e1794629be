//! `shadowkeep recovery-key new` and `shadowkeep backup verify`: make a recovery key on a
//! machine outside the cluster, and check that a backup opens with it, before the day it
//! is needed.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::process::ExitCode;

use age::secrecy::ExposeSecret as _;
use serde::Serialize;
use shadowkeep_api::keystore::{Kek, Keystore};

use crate::core::backup::archive::{self, MAX_BYTES};

/// The most a recovery key file may hold.
const KEY_FILE_LIMIT: u64 = 64 * 1024;

/// Writes a new recovery key to `out` (never over an existing file; mode 0600) and
/// prints its public key, the recipient for `spec.backup.recoveryRecipients`.
pub fn new_key(out: &Path) -> ExitCode {
    let identity = age::x25519::Identity::generate();
    let public = identity.to_public().to_string();
    let text = format!(
        "# created: {}\n# public key: {public}\n# A shadowkeep recovery key: it opens the KEK in every backup sealed to the\n# public key above. Keep it off the cluster, and keep a copy.\n{}\n",
        jiff::Timestamp::now(),
        identity.to_string().expose_secret()
    );
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        });
    match written {
        Ok(()) => {
            println!("{public}");
            eprintln!(
                "recovery key written to {}; list the public key above in spec.backup.recoveryRecipients",
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("failed to write the recovery key to {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}

/// Reads the recovery identities in `path`: age's key file format, one `AGE-SECRET-KEY-`
/// line per key, `#` comments.
pub fn read_identities(path: &Path) -> Result<Vec<age::x25519::Identity>, String> {
    let mut text = zeroize::Zeroizing::new(String::new());
    std::fs::File::open(path)
        .and_then(|f| f.take(KEY_FILE_LIMIT + 1).read_to_string(&mut text))
        .map_err(|e| format!("failed to read recovery key {}: {e}", path.display()))?;
    if text.len() as u64 > KEY_FILE_LIMIT {
        return Err(format!(
            "failed to read recovery key {}: larger than {KEY_FILE_LIMIT} bytes",
            path.display()
        ));
    }
    let identities = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .enumerate()
        .map(|(i, line)| {
            line.parse::<age::x25519::Identity>().map_err(|_| {
                format!(
                    "failed to read recovery key {}: key {} is not an age X25519 identity (AGE-SECRET-KEY-1...)",
                    path.display(),
                    i + 1
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if identities.is_empty() {
        return Err(format!(
            "failed to read recovery key {}: it holds no key",
            path.display()
        ));
    }
    Ok(identities)
}

/// What `backup verify` found; nothing secret.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Verified {
    name: String,
    key_manager: String,
    created_at: String,
    keystore_sha256: String,
    keystore_digest: String,
    keys: usize,
    escrowed: bool,
    /// Whether the recovery key opened the KEK and the KEK every key: `None` without a
    /// recovery key.
    recovered: Option<bool>,
    manifests: usize,
}

/// Opens backup `file` and checks it; with `recovery_key`, that the KEK it holds opens
/// with it and opens every key. Prints what it found as JSON; exit 1 with the reason
/// when anything fails.
pub fn verify(file: &Path, recovery_key: Option<&Path>) -> ExitCode {
    match verified(file, recovery_key) {
        Ok(v) => match serde_json::to_string_pretty(&v) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("failed to print the result: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

/// The bytes of backup file `file`, read no further than a backup may reach (the archive
/// refuses what is longer).
pub fn read_backup_file(file: &Path) -> Result<Vec<u8>, String> {
    let failed = |e: String| format!("failed to read backup {}: {e}", file.display());
    // A FIFO would block the open itself: only a regular file is opened.
    let meta = std::fs::metadata(file).map_err(|e| failed(e.to_string()))?;
    if !meta.is_file() {
        return Err(failed("not a regular file".into()));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| failed(e.to_string()))?;
    Ok(bytes)
}

fn verified(file: &Path, recovery_key: Option<&Path>) -> Result<Verified, String> {
    let bytes = read_backup_file(file)?;
    let opened = archive::open(&bytes).map_err(|e| e.to_string())?;
    let keystore = Keystore::from_bytes(&opened.keystore)
        .map_err(|e| format!("failed to read its keystore: {e}"))?;
    let recovered = match recovery_key {
        None => None,
        Some(path) => {
            let identities = read_identities(path)?;
            let raw = opened.kek(&identities).map_err(|e| e.to_string())?;
            let kek = Kek::from_bytes(&raw).map_err(|e| {
                format!(
                    "failed to recover the KEK from backup {}: {e}",
                    opened.name()
                )
            })?;
            for key in keystore.keys() {
                kek.open(&key.id, &key.material).map_err(|e| {
                    format!(
                        "failed to open key {} of backup {} with its KEK: {e}",
                        key.id.as_str(),
                        opened.name()
                    )
                })?;
            }
            Some(true)
        }
    };
    Ok(Verified {
        name: opened.name(),
        key_manager: opened.owner.reference(),
        created_at: opened.created_at.to_string(),
        keystore_digest: keystore
            .digest()
            .map_err(|e| format!("failed to digest its keystore: {e}"))?
            .to_string(),
        keystore_sha256: opened.keystore_digest.clone(),
        keys: keystore.len(),
        escrowed: opened.escrowed,
        recovered,
        manifests: opened.manifests.len(),
    })
}
