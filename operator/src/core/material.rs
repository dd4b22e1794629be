//! Material that is generated rather than built — the KEK, the replica certificate and
//! its CA, the license — made here, stored once by the caller and never overwritten: a
//! KEK or CA, once made, is the only one that opens what it protected.

use jiff::Timestamp;
use shadowkeep_api::keystore::Kek;
use shadowkeep_api::license::{License, LicenseSigner};
use shadowkeep_api::pki::{Authority, Usage};

use super::Error;
use crate::build::Inputs;

/// A replica certificate made with its own CA.
pub struct Tls {
    /// PEM certificate chain, key and CA certificate, as the replicas mount them.
    pub replica: (Vec<u8>, Vec<u8>, Vec<u8>),
    /// PEM key of the CA, kept apart from what replicas mount.
    pub ca_key: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls(<redacted>)")
    }
}

fn failed(what: &str) -> impl FnOnce(String) -> Error {
    let what = what.to_owned();
    move |reason| Error::Material { what, reason }
}

/// Reads a stored KEK of KeyManager `key_manager` (`namespace/name`).
pub fn kek(key_manager: &str, bytes: &[u8]) -> Result<Kek, Error> {
    Kek::from_bytes(bytes).map_err(|source| Error::Kek {
        key_manager: key_manager.to_owned(),
        source,
    })
}

/// A new CA and a replica certificate it signs, naming the KeyManager's Services and its
/// replicas' pod names.
pub fn generate_tls(inputs: &Inputs<'_>) -> Result<Tls, Error> {
    let names = inputs.names();
    let ns = inputs.namespace();
    let ca = Authority::generate(&format!("shadowkeep {ns}/{} CA", inputs.name()))
        .map_err(|e| failed("the CA")(e.to_string()))?;
    let sans = vec![
        names.kmip.clone(),
        format!("{}.{ns}", names.kmip),
        format!("{}.{ns}.svc", names.kmip),
        inputs.peer_identity(),
        format!("*.{}", names.peers),
    ];
    let leaf = ca
        .leaf(
            &format!("{}.{ns}", inputs.name()),
            &sans,
            Usage::ServerAndClient,
        )
        .map_err(|e| failed("the replica certificate")(e.to_string()))?;
    Ok(Tls {
        replica: (
            leaf.cert_pem.into_bytes(),
            leaf.key_pem.as_bytes().to_vec(),
            ca.cert_pem().as_bytes().to_vec(),
        ),
        ca_key: ca.key_pem().as_bytes().to_vec(),
    })
}

/// The server license of the KeyManager, signed with the stored signing seed. Issued at
/// the KeyManager's creation, so that every reconcile signs the same license.
pub fn license(inputs: &Inputs<'_>, seed: &[u8]) -> Result<Vec<u8>, Error> {
    let signer = LicenseSigner::from_seed(seed)
        .map_err(|e| failed("the license signing key")(e.to_string()))?;
    let issued = inputs
        .key_manager
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(Timestamp::UNIX_EPOCH, |t| t.0);
    let license = License::primary(inputs.key_manager.spec.server_id.clone(), issued);
    Ok(signer
        .sign(&license)
        .map_err(|e| failed("the license")(e.to_string()))?
        .into_bytes())
}
