//! Key material sealed under a key-encryption key (KEK) with AES-256-GCM.
//!
//! The key's id is bound as associated data, so sealed material copied onto another key's
//! record does not open.

use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::KeyId;

/// Bytes in a KEK: AES-256.
pub const KEK_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const AAD_PREFIX: &[u8] = b"shadowkeep.io/key-material/v1\0";

/// A key-encryption key. It never appears in a manifest; the operator keeps it in a Secret.
#[derive(Clone)]
pub struct Kek {
    bytes: Zeroizing<[u8; KEK_LEN]>,
    fingerprint: String,
}

impl Kek {
    /// A fresh random KEK from the operating system's generator.
    pub fn generate() -> Self {
        let key = Aes256Gcm::generate_key(&mut OsRng);
        let mut bytes = Zeroizing::new([0u8; KEK_LEN]);
        bytes.copy_from_slice(&key);
        Self::from_array(bytes)
    }

    /// A KEK from its raw bytes, as read from a Secret.
    pub fn from_bytes(raw: &[u8]) -> Result<Self, SealError> {
        let array: [u8; KEK_LEN] = raw
            .try_into()
            .map_err(|_| SealError::KekLength { len: raw.len() })?;
        Ok(Self::from_array(Zeroizing::new(array)))
    }

    fn from_array(bytes: Zeroizing<[u8; KEK_LEN]>) -> Self {
        let hash = Sha256::new_with_prefix(b"shadowkeep.io/kek-fingerprint/v1\0")
            .chain_update(bytes.as_slice())
            .finalize();
        let fingerprint = hex::encode(&hash[..8]);
        Self { bytes, fingerprint }
    }

    /// The raw bytes, for writing the KEK to its Secret.
    pub fn as_bytes(&self) -> &[u8; KEK_LEN] {
        &self.bytes
    }

    /// A short public name of this KEK (a hash prefix): it says which KEK sealed a key
    /// without revealing anything about the KEK.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Seals `plaintext` as the material of key `id`.
    pub fn seal(&self, id: &KeyId, plaintext: &[u8]) -> Result<SealedMaterial, SealError> {
        let cipher = self.cipher();
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = aad(id);
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Seal { id: id.clone() })?;
        Ok(SealedMaterial {
            kek: self.fingerprint.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Opens the material of key `id`. Fails, without revealing why beyond the KEK
    /// fingerprints, when the KEK, the id or any byte differs.
    pub fn open(
        &self,
        id: &KeyId,
        sealed: &SealedMaterial,
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let wrong_kek = || SealError::Open {
            id: id.clone(),
            sealed_under: sealed.kek.clone(),
            kek: self.fingerprint.clone(),
        };
        if sealed.nonce.len() != NONCE_LEN {
            return Err(wrong_kek());
        }
        let aad = aad(id);
        self.cipher()
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| wrong_kek())
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(self.bytes.as_slice().into())
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

fn aad(id: &KeyId) -> Vec<u8> {
    let mut aad = AAD_PREFIX.to_vec();
    aad.extend_from_slice(id.as_str().as_bytes());
    aad
}

/// Key material encrypted under a KEK.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedMaterial {
    /// Fingerprint of the KEK that sealed it.
    pub kek: String,
    /// The AES-GCM nonce.
    #[serde(with = "base64_bytes")]
    pub nonce: Vec<u8>,
    /// Ciphertext followed by the GCM tag.
    #[serde(with = "base64_bytes")]
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for SealedMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedMaterial")
            .field("kek", &self.kek)
            .field("len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// The KEK is not 32 bytes.
    #[error("failed to load KEK: expected {KEK_LEN} bytes, got {len}")]
    KekLength {
        /// Bytes supplied.
        len: usize,
    },
    /// AES-GCM refused the plaintext (only possible beyond its 64 GiB limit).
    #[error("failed to seal key {id}: plaintext too long for AES-GCM")]
    Seal {
        /// The key.
        id: KeyId,
    },
    /// Authentication failed: wrong KEK, or the record was altered.
    #[error(
        "failed to open key {id}: material sealed under KEK {sealed_under} does not open with KEK {kek} (wrong KEK, or the record was altered)"
    )]
    Open {
        /// The key.
        id: KeyId,
        /// Fingerprint recorded with the material.
        sealed_under: String,
        /// Fingerprint of the KEK tried.
        kek: String,
    },
}

pub(crate) mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}
