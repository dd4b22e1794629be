//! One backup as one self-contained object: the canonical keystore exactly as the state
//! stores it (its keys still sealed by the KEK), its SHA-256, the KeyManager's manifests,
//! and the KEK sealed with `age` to the user's recovery keys.
//!
//! ```text
//! {"format":"shadowkeep.io/backup/v1","keyManager":{...},"createdAt":...,
//!  "keystoreSha256":"...","keystore":"BASE64","manifests":["YAML",...],"kek":"BASE64"|null}
//! sha256:HEX-OF-EVERYTHING-ABOVE-BEFORE-THE-NEWLINE
//! ```
//!
//! The trailing checksum catches damage and truncation anywhere in the object; it is not
//! a signature. What an attacker could change without it being caught is not secret and
//! opens nothing: the keys stay sealed by the KEK (AES-256-GCM, each bound to its id), and
//! the KEK is sealed by `age` (authenticated) together with the KeyManager it belongs to,
//! so a KEK copied into another KeyManager's backup does not open there.

use std::fmt;
use std::io::{Read as _, Write as _};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::core::state::Owner;

/// The format this module writes and reads.
pub const FORMAT: &str = "shadowkeep.io/backup/v1";

/// The largest backup [`open`] reads. A keystore of a million keys is about 1 GiB; a
/// larger input is refused before anything is parsed.
pub const MAX_BYTES: usize = 1536 << 20;

/// The most recovery recipients a backup is sealed to.
pub const MAX_RECIPIENTS: usize = 16;

/// The file name suffix of a backup object.
pub const SUFFIX: &str = ".skb";

/// What the KEK's `age` plaintext starts with, before the KeyManager's reference.
const KEK_PREFIX: &[u8] = b"shadowkeep.io/backup-kek/v1\0";

/// The separator before the trailing checksum.
const CHECKSUM_SEPARATOR: &[u8] = b"\nsha256:";

/// What one backup holds, borrowed from the reconcile that writes it.
pub struct Contents<'a> {
    /// The KeyManager the keystore belongs to.
    pub owner: &'a Owner,
    /// The canonical keystore exactly as the state stores it.
    pub keystore: &'a [u8],
    /// The raw KEK; sealed to `recipients`, never written in the clear.
    pub kek: &'a [u8],
    /// Recovery recipients (`age1...` X25519 public keys); none leaves the KEK out.
    pub recipients: &'a [String],
    /// The KeyManager's manifests (it, its DriveTables, KeyGroups and Shadows) as YAML.
    pub manifests: &'a [String],
    /// When the backup is made; it orders backups.
    pub created_at: Timestamp,
}

impl fmt::Debug for Contents<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Contents")
            .field("owner", self.owner)
            .field("keystore_bytes", &self.keystore.len())
            .field("recipients", &self.recipients.len())
            .field("manifests", &self.manifests.len())
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// A sealed backup, ready to be written.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The object.
    pub bytes: Vec<u8>,
    /// SHA-256 (hex) of the keystore it holds.
    pub keystore_digest: String,
    /// Its name: [`name_of`] its creation time and digest, so that names sort by age.
    pub name: String,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("name", &self.name)
            .field("bytes", &self.bytes.len())
            .field("keystore_digest", &self.keystore_digest)
            .finish()
    }
}

/// A backup read back and verified.
#[derive(Clone, PartialEq, Eq)]
pub struct Opened {
    /// The KeyManager whose keystore it holds.
    pub owner: Owner,
    /// When it was made.
    pub created_at: Timestamp,
    /// The keystore exactly as the state stored it (keys sealed by the KEK).
    pub keystore: Vec<u8>,
    /// SHA-256 (hex) of `keystore`, checked.
    pub keystore_digest: String,
    /// The KeyManager's manifests as YAML.
    pub manifests: Vec<String>,
    /// Whether the KEK is in it, sealed to recovery recipients.
    pub escrowed: bool,
    /// The KEK as `age` sealed it.
    sealed_kek: Option<Vec<u8>>,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("owner", &self.owner)
            .field("created_at", &self.created_at)
            .field("keystore_bytes", &self.keystore.len())
            .field("keystore_digest", &self.keystore_digest)
            .field("manifests", &self.manifests.len())
            .field("escrowed", &self.escrowed)
            .finish_non_exhaustive()
    }
}

/// Why a backup could not be made or read. No message carries a secret: neither the KEK
/// nor a recovery identity, only what names the backup and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A recovery recipient is not an `age` X25519 public key.
    #[error("failed to read recovery recipient {index} ({shown}): {reason}")]
    Recipient {
        /// Its position in `recoveryRecipients`.
        index: usize,
        /// The start of what was given (a public key: not secret).
        shown: String,
        /// What is wrong with it.
        reason: String,
    },
    /// More recipients than a backup is sealed to.
    #[error("failed to read recovery recipients: {count} given, at most {MAX_RECIPIENTS} allowed")]
    TooManyRecipients {
        /// How many were given.
        count: usize,
    },
    /// The backup could not be made.
    #[error("failed to seal the backup of KeyManager {owner}: {reason}")]
    Seal {
        /// The KeyManager.
        owner: String,
        /// Why.
        reason: String,
    },
    /// The input is larger than any backup.
    #[error("failed to open backup: {size} bytes is more than the {MAX_BYTES} a backup may hold")]
    TooLarge {
        /// Its size.
        size: usize,
    },
    /// The input is not a backup, or is damaged or truncated.
    #[error("failed to open backup: {0}")]
    Damaged(String),
    /// The backup holds no KEK: its KeyManager had no recovery recipient.
    #[error(
        "failed to recover the KEK from backup {backup}: it holds none (KeyManager {owner} had no recovery recipients when it was made)"
    )]
    NotEscrowed {
        /// The backup.
        backup: String,
        /// Its KeyManager.
        owner: String,
    },
    /// No recovery identity given opens the KEK.
    #[error("failed to recover the KEK from backup {backup}: {reason}")]
    Recovery {
        /// The backup.
        backup: String,
        /// Why (never the identity).
        reason: String,
    },
}

/// The name of a backup made at `created_at` holding a keystore of SHA-256 `digest`
/// (hex): `keystore-MILLIS-DIGEST12.skb`, the milliseconds zero-padded so that name order
/// is age order.
pub fn name_of(created_at: Timestamp, digest: &str) -> String {
    let millis = created_at.as_millisecond().max(0);
    let short = digest.get(..12).unwrap_or(digest);
    format!("keystore-{millis:016}-{short}{SUFFIX}")
}

/// Whether `name` is a backup's name as [`name_of`] makes them: other objects beside the
/// backups (a target's prefix may hold anything) are neither counted nor pruned.
pub fn is_backup_name(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix("keystore-")
        .and_then(|r| r.strip_suffix(SUFFIX))
    else {
        return false;
    };
    let Some((millis, digest)) = rest.split_once('-') else {
        return false;
    };
    millis.len() == 16
        && millis.bytes().all(|b| b.is_ascii_digit())
        && digest.len() == 12
        && digest
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The digest prefix in a backup's name, to compare with a keystore's without reading
/// the object.
pub fn digest_prefix_of(name: &str) -> Option<&str> {
    is_backup_name(name).then(|| &name[name.len() - SUFFIX.len() - 12..name.len() - SUFFIX.len()])
}

/// SHA-256 (hex) of a keystore serialisation, as backups record it.
pub fn keystore_digest(keystore: &[u8]) -> String {
    hex::encode(Sha256::digest(keystore))
}

/// Reads recovery recipients: each an `age` X25519 public key (`age1...`), at most
/// [`MAX_RECIPIENTS`]. The error names the first one that is not, by position.
pub fn parse_recipients(recipients: &[String]) -> Result<Vec<age::x25519::Recipient>, BackupError> {
    if recipients.len() > MAX_RECIPIENTS {
        return Err(BackupError::TooManyRecipients {
            count: recipients.len(),
        });
    }
    recipients
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let shown: String = text.chars().take(16).collect();
            let shown = if shown.len() < text.len() {
                format!("{shown:?}...")
            } else {
                format!("{shown:?}")
            };
            let fail = |reason: &str| BackupError::Recipient {
                index,
                shown: shown.clone(),
                reason: reason.to_owned(),
            };
            if text.starts_with("AGE-SECRET-KEY-") {
                return Err(fail(
                    "this is a private recovery key; give its public key (age1...), and keep the private key off the cluster",
                ));
            }
            if !text.starts_with("age1") {
                return Err(fail("an age X25519 recipient starts with \"age1\""));
            }
            text.parse::<age::x25519::Recipient>()
                .map_err(|e| fail(&format!("not an age X25519 public key ({e})")))
        })
        .collect()
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Body {
    format: String,
    key_manager: OwnerRef,
    created_at: Timestamp,
    keystore_sha256: String,
    keystore: String,
    manifests: Vec<String>,
    kek: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnerRef {
    namespace: String,
    name: String,
}

/// Only the format, read first so that another format is named as such.
#[derive(Deserialize)]
struct FormatOnly {
    format: Option<String>,
}

/// What `age` seals: the KeyManager's reference and the KEK, so that a KEK opens only as
/// the KEK of the KeyManager its backup names.
fn kek_plaintext(owner: &Owner, kek: &[u8]) -> Zeroizing<Vec<u8>> {
    let reference = owner.reference();
    let mut out = Zeroizing::new(Vec::with_capacity(
        KEK_PREFIX.len() + reference.len() + 1 + kek.len(),
    ));
    out.extend_from_slice(KEK_PREFIX);
    out.extend_from_slice(reference.as_bytes());
    out.push(0);
    out.extend_from_slice(kek);
    out
}

fn seal_kek(
    owner: &Owner,
    kek: &[u8],
    recipients: &[age::x25519::Recipient],
) -> Result<Vec<u8>, BackupError> {
    let failed = |reason: String| BackupError::Seal {
        owner: owner.reference(),
        reason,
    };
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| failed(format!("failed to seal the KEK: {e}")))?;
    let mut out = Vec::new();
    let mut writer = encryptor
        .wrap_output(&mut out)
        .map_err(|e| failed(format!("failed to seal the KEK: {e}")))?;
    writer
        .write_all(&kek_plaintext(owner, kek))
        .and_then(|()| writer.finish().map(|_| ()))
        .map_err(|e| failed(format!("failed to seal the KEK: {e}")))?;
    Ok(out)
}

/// Seals a backup of `contents`: the KEK sealed to every recipient (left out when there
/// are none), everything else as stored, and a checksum over all of it.
pub fn seal(contents: &Contents<'_>) -> Result<Sealed, BackupError> {
    let recipients = parse_recipients(contents.recipients)?;
    let kek = if recipients.is_empty() {
        None
    } else {
        Some(BASE64.encode(seal_kek(contents.owner, contents.kek, &recipients)?))
    };
    let keystore_digest = keystore_digest(contents.keystore);
    let body = Body {
        format: FORMAT.to_owned(),
        key_manager: OwnerRef {
            namespace: contents.owner.namespace.clone(),
            name: contents.owner.name.clone(),
        },
        created_at: contents.created_at,
        keystore_sha256: keystore_digest.clone(),
        keystore: BASE64.encode(contents.keystore),
        manifests: contents.manifests.to_vec(),
        kek,
    };
    let mut bytes = serde_json::to_vec(&body).map_err(|e| BackupError::Seal {
        owner: contents.owner.reference(),
        reason: format!("failed to encode: {e}"),
    })?;
    let checksum = hex::encode(Sha256::digest(&bytes));
    bytes.extend_from_slice(CHECKSUM_SEPARATOR);
    bytes.extend_from_slice(checksum.as_bytes());
    bytes.push(b'\n');
    Ok(Sealed {
        name: name_of(contents.created_at, &keystore_digest),
        bytes,
        keystore_digest,
    })
}

/// Reads a backup and verifies it: its size, checksum, format, and the keystore's digest.
pub fn open(bytes: &[u8]) -> Result<Opened, BackupError> {
    if bytes.len() > MAX_BYTES {
        return Err(BackupError::TooLarge { size: bytes.len() });
    }
    let damaged = |what: &str| BackupError::Damaged(what.to_owned());
    let Some(framed) = bytes.strip_suffix(b"\n") else {
        return Err(damaged(
            "it does not end with its checksum line (truncated, or not a shadowkeep backup)",
        ));
    };
    let split = framed
        .windows(CHECKSUM_SEPARATOR.len())
        .rposition(|w| w == CHECKSUM_SEPARATOR)
        .ok_or_else(|| {
            damaged("it has no checksum line (truncated, or not a shadowkeep backup)")
        })?;
    let (body, checksum) = (
        &framed[..split],
        &framed[split + CHECKSUM_SEPARATOR.len()..],
    );
    if checksum != hex::encode(Sha256::digest(body)).as_bytes() {
        return Err(damaged(
            "its checksum does not match its contents (damaged or truncated)",
        ));
    }
    match serde_json::from_slice::<FormatOnly>(body) {
        Ok(FormatOnly {
            format: Some(format),
        }) if format == FORMAT => {}
        Ok(FormatOnly {
            format: Some(format),
        }) => {
            let shown: String = format.chars().take(64).collect();
            return Err(BackupError::Damaged(format!(
                "its format is {shown:?}; this version reads {FORMAT:?}"
            )));
        }
        Ok(FormatOnly { format: None }) => return Err(damaged("it names no format")),
        Err(e) => return Err(BackupError::Damaged(format!("it is not readable: {e}"))),
    }
    let body: Body = serde_json::from_slice(body)
        .map_err(|e| BackupError::Damaged(format!("it is not readable: {e}")))?;
    let owner = Owner::new(body.key_manager.namespace, body.key_manager.name);
    if owner.namespace.is_empty() || owner.name.is_empty() {
        return Err(damaged("it names no KeyManager"));
    }
    let keystore = BASE64
        .decode(&body.keystore)
        .map_err(|e| BackupError::Damaged(format!("its keystore is not base64: {e}")))?;
    let keystore_digest = keystore_digest(&keystore);
    if keystore_digest != body.keystore_sha256 {
        return Err(damaged(
            "its keystore does not match the SHA-256 recorded with it",
        ));
    }
    crate::core::keystore::open(&keystore).map_err(|e| {
        BackupError::Damaged(format!("its keystore is not a shadowkeep keystore: {e}"))
    })?;
    let sealed_kek = body
        .kek
        .map(|k| BASE64.decode(k))
        .transpose()
        .map_err(|e| BackupError::Damaged(format!("its sealed KEK is not base64: {e}")))?;
    Ok(Opened {
        owner,
        created_at: body.created_at,
        keystore,
        keystore_digest,
        manifests: body.manifests,
        escrowed: sealed_kek.is_some(),
        sealed_kek,
    })
}

impl Opened {
    /// The backup's name, as [`Sealed::name`] gave it.
    pub fn name(&self) -> String {
        name_of(self.created_at, &self.keystore_digest)
    }

    /// The backup, for a message: its name and KeyManager.
    fn describe(&self) -> String {
        format!("{} of KeyManager {}", self.name(), self.owner)
    }

    /// The KEK, opened with one of the recovery `identities`.
    pub fn kek(
        &self,
        identities: &[age::x25519::Identity],
    ) -> Result<Zeroizing<Vec<u8>>, BackupError> {
        let Some(sealed) = &self.sealed_kek else {
            return Err(BackupError::NotEscrowed {
                backup: self.name(),
                owner: self.owner.reference(),
            });
        };
        let failed = |reason: &str| BackupError::Recovery {
            backup: self.describe(),
            reason: reason.to_owned(),
        };
        let decryptor = age::Decryptor::new_buffered(sealed.as_slice())
            .map_err(|_| failed("its sealed KEK is damaged"))?;
        let mut reader = decryptor
            .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
            .map_err(|e| match e {
                age::DecryptError::NoMatchingKeys => failed(
                    "none of the recovery keys given is one it was sealed to (a wrong recovery key)",
                ),
                _ => failed("its sealed KEK is damaged"),
            })?;
        let mut plaintext = Zeroizing::new(Vec::new());
        reader
            .read_to_end(&mut plaintext)
            .map_err(|_| failed("its sealed KEK is damaged"))?;
        let expected = kek_plaintext(&self.owner, &[]);
        if !plaintext.starts_with(&expected) {
            return Err(failed(
                "its sealed KEK belongs to another KeyManager; it was not made with this backup",
            ));
        }
        Ok(Zeroizing::new(plaintext[expected.len()..].to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use age::secrecy::ExposeSecret as _;
    use shadowkeep_api::keystore::{Algorithm, Kek, Key, Keystore};

    use super::*;

    const KEK: [u8; 32] = [0x5a; 32];

    fn keystore() -> Vec<u8> {
        let kek = Kek::from_bytes(&KEK).unwrap();
        let mut store = Keystore::new();
        for _ in 0..3 {
            let key = Key::generate(&kek, "TAPE", Algorithm::Aes, 256, Timestamp::UNIX_EPOCH);
            store.insert(key.unwrap()).unwrap();
        }
        store.to_bytes().unwrap()
    }

    fn sealed(recipients: &[String]) -> (Sealed, Vec<u8>) {
        let keystore = keystore();
        let owner = Owner::new("tapes", "tape-keys");
        let manifests = vec!["kind: KeyManager\n".to_owned()];
        let sealed = seal(&Contents {
            owner: &owner,
            keystore: &keystore,
            kek: &KEK,
            recipients,
            manifests: &manifests,
            created_at: "2026-12-02T10:00:00Z".parse().unwrap(),
        })
        .unwrap();
        (sealed, keystore)
    }

    #[test]
    fn a_backup_opens_to_what_was_sealed_and_the_kek_to_its_recovery_key() {
        let identity = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let recipients = vec![
            other.to_public().to_string(),
            identity.to_public().to_string(),
        ];
        let (sealed, keystore) = sealed(&recipients);
        let opened = open(&sealed.bytes).unwrap();
        assert_eq!(opened.owner, Owner::new("tapes", "tape-keys"));
        assert_eq!(opened.keystore, keystore);
        assert_eq!(opened.keystore_digest, sealed.keystore_digest);
        assert_eq!(opened.keystore_digest, keystore_digest(&keystore));
        assert_eq!(opened.manifests, vec!["kind: KeyManager\n".to_owned()]);
        assert!(opened.escrowed);
        assert_eq!(opened.name(), sealed.name);
        assert_eq!(
            sealed.name,
            format!(
                "keystore-0001796205600000-{}.skb",
                &sealed.keystore_digest[..12]
            )
        );
        assert!(is_backup_name(&sealed.name));
        assert_eq!(
            digest_prefix_of(&sealed.name),
            Some(&sealed.keystore_digest[..12])
        );
        assert_eq!(opened.kek(&[identity]).unwrap().as_slice(), KEK);
        assert_eq!(opened.kek(&[other]).unwrap().as_slice(), KEK);
    }

    #[test]
    fn names_sort_by_age() {
        let digest = keystore_digest(b"x");
        let older = name_of(Timestamp::from_millisecond(999).unwrap(), &digest);
        let newer = name_of(Timestamp::from_millisecond(1000).unwrap(), &digest);
        assert!(older < newer, "{older} sorts before {newer}");
        assert!(!is_backup_name("keystore-1-abc.skb"));
        assert!(!is_backup_name("notes.txt"));
    }

    #[test]
    fn a_flipped_bit_anywhere_is_refused() {
        let identity = age::x25519::Identity::generate();
        let (sealed, _) = sealed(&[identity.to_public().to_string()]);
        for i in 0..sealed.bytes.len() {
            for bit in [0x01, 0x20, 0x80] {
                let mut bytes = sealed.bytes.clone();
                bytes[i] ^= bit;
                let error = open(&bytes).expect_err(&format!("byte {i} bit {bit:#x} changed"));
                assert!(
                    matches!(error, BackupError::Damaged(_)),
                    "byte {i}: {error}"
                );
            }
        }
    }

    #[test]
    fn a_truncated_backup_is_refused() {
        let (sealed, _) = sealed(&[]);
        for len in [
            0,
            1,
            sealed.bytes.len() / 2,
            sealed.bytes.len() - 2,
            sealed.bytes.len() - 1,
        ] {
            let error = open(&sealed.bytes[..len]).unwrap_err();
            assert!(
                matches!(error, BackupError::Damaged(_)),
                "{len} bytes: {error}"
            );
        }
        let error = open(&vec![b'x'; MAX_BYTES + 1]).unwrap_err();
        assert!(error.to_string().contains("more than"), "{error}");
    }

    #[test]
    fn another_format_is_named() {
        let body = br#"{"format":"shadowkeep.io/backup/v9"}"#;
        let mut bytes = body.to_vec();
        bytes.extend_from_slice(CHECKSUM_SEPARATOR);
        bytes.extend_from_slice(hex::encode(Sha256::digest(body)).as_bytes());
        bytes.push(b'\n');
        let error = open(&bytes).unwrap_err().to_string();
        assert!(error.contains("shadowkeep.io/backup/v9"), "{error}");
    }

    #[test]
    fn a_wrong_recovery_key_is_refused_naming_the_backup_not_the_key() {
        let identity = age::x25519::Identity::generate();
        let wrong = age::x25519::Identity::generate();
        let (sealed, _) = sealed(&[identity.to_public().to_string()]);
        let opened = open(&sealed.bytes).unwrap();
        let error = opened
            .kek(std::slice::from_ref(&wrong))
            .unwrap_err()
            .to_string();
        assert!(error.contains(&sealed.name), "{error}");
        assert!(error.contains("tapes/tape-keys"), "{error}");
        assert!(error.contains("wrong recovery key"), "{error}");
        assert!(
            !error.contains(wrong.to_string().expose_secret()),
            "{error}"
        );
        assert!(!error.contains(&wrong.to_public().to_string()), "{error}");
    }

    #[test]
    fn a_kek_copied_from_another_key_managers_backup_does_not_open() {
        let identity = age::x25519::Identity::generate();
        let (sealed, _) = sealed(&[identity.to_public().to_string()]);
        let mut opened = open(&sealed.bytes).unwrap();
        opened.owner = Owner::new("tapes", "other");
        let error = opened.kek(&[identity]).unwrap_err().to_string();
        assert!(error.contains("another KeyManager"), "{error}");
    }

    #[test]
    fn without_recipients_the_kek_is_left_out_and_asking_for_it_says_so() {
        let (sealed, _) = sealed(&[]);
        assert!(!sealed.bytes.windows(KEK.len()).any(|w| w == KEK));
        let opened = open(&sealed.bytes).unwrap();
        assert!(!opened.escrowed);
        let error = opened
            .kek(&[age::x25519::Identity::generate()])
            .unwrap_err()
            .to_string();
        assert!(error.contains("holds none"), "{error}");
        assert!(error.contains(&sealed.name), "{error}");
    }

    #[test]
    fn secrets_appear_in_no_debug_display_or_error() {
        let identity = age::x25519::Identity::generate();
        let secret = identity.to_string().expose_secret().to_owned();
        let (sealed, _) = sealed(&[identity.to_public().to_string()]);
        let kek_hex = hex::encode(KEK);
        let kek_b64 = BASE64.encode(KEK);
        assert!(!sealed.bytes.windows(KEK.len()).any(|w| w == KEK));
        let opened = open(&sealed.bytes).unwrap();
        let contents = Contents {
            owner: &opened.owner,
            keystore: &opened.keystore,
            kek: &KEK,
            recipients: &[],
            manifests: &[],
            created_at: opened.created_at,
        };
        let mistaken = parse_recipients(std::slice::from_ref(&secret)).unwrap_err();
        let shown = [
            format!("{sealed:?}"),
            format!("{opened:?}"),
            format!("{contents:?}"),
            mistaken.to_string(),
            format!("{mistaken:?}"),
            opened
                .kek(&[age::x25519::Identity::generate()])
                .unwrap_err()
                .to_string(),
        ];
        for text in shown {
            for secret in [&secret, &kek_hex, &kek_b64, &format!("{KEK:?}")] {
                assert!(!text.contains(secret.as_str()), "{text}");
            }
        }
        assert!(
            mistaken.to_string().contains("private recovery key"),
            "{mistaken}"
        );
    }

    #[test]
    fn recipients_that_are_not_age_public_keys_are_named_by_position() {
        let good = age::x25519::Identity::generate().to_public().to_string();
        let error = parse_recipients(&[good.clone(), "ssh-ed25519 AAAA".to_owned()])
            .unwrap_err()
            .to_string();
        assert!(error.contains("recipient 1"), "{error}");
        assert!(error.contains("age1"), "{error}");
        let error = parse_recipients(&["age1notakey".to_owned()])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("recipient 0") && error.contains("not an age X25519"),
            "{error}"
        );
        let many = vec![good; MAX_RECIPIENTS + 1];
        let error = parse_recipients(&many).unwrap_err().to_string();
        assert!(error.contains("at most 16"), "{error}");
    }
}
