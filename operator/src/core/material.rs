//! Material that is generated rather than built — the KEK, the replica certificate and
//! its CA, the license — made here, stored once by the caller and never overwritten: a
//! KEK or CA, once made, is the only one that opens what it protected.

use jiff::Timestamp;
use shadowkeep_api::crd::TlsSource;
use shadowkeep_api::keystore::{Kek, Keystore};
use shadowkeep_api::license::{License, LicenseSigner};
use shadowkeep_api::pki::{Authority, Usage};
use shadowkeep_api::shadow::verifiers::ShadowVerifiers;

use super::Error;
use super::state::{Fields, Item, Owner, State};
use crate::build::{Inputs, Material};

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

/// The KEK, the canonical keystore, the generated replica certificate (when the
/// KeyManager asks for one) and the license: read when they exist, made once otherwise.
pub async fn ensure<S: State>(state: &S, inputs: &Inputs<'_>) -> Result<Material, Error> {
    let owner = Owner::new(inputs.namespace(), inputs.name());
    let kek = state
        .create(
            &owner,
            Item::Kek,
            Fields::of([("kek", Kek::generate().as_bytes().to_vec())]),
        )
        .await?;
    self::kek(&owner.reference(), kek.get("kek"))?;
    let keystore = state
        .create(
            &owner,
            Item::Keystore,
            Fields::of([(
                "keystore",
                Keystore::new().to_bytes().map_err(Error::Keystore)?,
            )]),
        )
        .await?;
    let tls = if inputs.key_manager.spec.tls.source == TlsSource::Generated {
        Some(ensure_tls(state, inputs, &owner).await?)
    } else {
        None
    };
    let seed = state
        .create(
            &owner,
            Item::LicenseSigning,
            Fields::of([("seed", LicenseSigner::generate().seed().to_vec())]),
        )
        .await?;
    let signer = LicenseSigner::from_seed(seed.get("seed"))
        .map_err(|e| failed("the license signing key")(e.to_string()))?;
    Ok(Material {
        kek: zeroize::Zeroizing::new(kek.get("kek").to_vec()),
        keystore: keystore.get("keystore").to_vec(),
        tls,
        license: license(inputs, seed.get("seed"))?,
        ca_key: None,
        license_public_key: hex::encode(signer.verifier().to_bytes()),
        // Filled by the caller from the Shadows' records; an empty set until then.
        shadow_verifiers: ShadowVerifiers::default().encode(),
    })
}

/// The replica certificate and its CA, made once. The CA is stored first: a replica
/// certificate without its CA's key could never be renewed.
async fn ensure_tls<S: State>(
    state: &S,
    inputs: &Inputs<'_>,
    owner: &Owner,
) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>), Error> {
    let stored = if let Some(stored) = state.read(owner, Item::Tls).await? {
        stored
    } else {
        let made = generate_tls(inputs)?;
        let (crt, key, ca) = made.replica;
        state
            .create(
                owner,
                Item::Ca,
                Fields::of([("ca.crt", ca.clone()), ("ca.key", made.ca_key)]),
            )
            .await?;
        state
            .create(
                owner,
                Item::Tls,
                Fields::of([("tls.crt", crt), ("tls.key", key), ("ca.crt", ca)]),
            )
            .await?
    };
    Ok((
        stored.get("tls.crt").to_vec(),
        stored.get("tls.key").to_vec(),
        stored.get("ca.crt").to_vec(),
    ))
}
