//! Certificates for the estate: a CA per KeyManager and the leaf certificates it signs
//! (replicas, the development client). Keys are ECDSA P-256, which KMIP clients with TLS
//! 1.2 cipher suites (ECDHE-ECDSA-AES-GCM) accept.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use zeroize::Zeroizing;

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[error("failed to generate {what}: {source}")]
pub struct PkiError {
    what: &'static str,
    source: rcgen::Error,
}

fn err(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError { what, source }
}

/// What a leaf certificate may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// TLS server only.
    Server,
    /// TLS client only.
    Client,
    /// Both: replicas serve KMIP and the admin API, and call their peers.
    ServerAndClient,
}

/// A PEM certificate and its PEM private key.
pub struct Pair {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8), wiped on drop.
    pub key_pem: Zeroizing<String>,
}

/// A certificate authority that signs leaf certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    /// A new self-signed CA named `common_name`.
    pub fn generate(common_name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(err("the CA key"))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err("the CA"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).map_err(err("the CA"))?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
            key_pem,
        })
    }

    /// The CA stored as `cert_pem` and `key_pem` (as [`Self::cert_pem`] and
    /// [`Self::key_pem`] gave them), to sign more leaf certificates.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(err("the stored CA key"))?;
        let issuer =
            Issuer::from_ca_cert_pem(cert_pem, key).map_err(err("the stored CA certificate"))?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
            key_pem: Zeroizing::new(key_pem.to_owned()),
        })
    }

    /// The CA certificate, for clients and servers to trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, to keep where no pod can read it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A leaf certificate for `common_name` with subject alternative names `sans` (IP
    /// addresses or DNS names, wildcards allowed).
    pub fn leaf(&self, common_name: &str, sans: &[String], usage: Usage) -> Result<Pair, PkiError> {
        let key = KeyPair::generate().map_err(err("a leaf key"))?;
        let mut params =
            CertificateParams::new(sans.to_vec()).map_err(err("a leaf certificate"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(err("a leaf certificate"))?;
        Ok(Pair {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_ca_signs_leaves_that_name_it_as_issuer() {
        let ca = Authority::generate("test CA").unwrap();
        let again = Authority::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        let leaf = again
            .leaf("server", &["127.0.0.9".to_owned()], Usage::Server)
            .unwrap();
        let (_, ca_der) = x509_parser::pem::parse_x509_pem(ca.cert_pem().as_bytes()).unwrap();
        let (_, leaf_der) = x509_parser::pem::parse_x509_pem(leaf.cert_pem.as_bytes()).unwrap();
        let ca_cert = ca_der.parse_x509().unwrap();
        let leaf_cert = leaf_der.parse_x509().unwrap();
        assert_eq!(leaf_cert.issuer(), ca_cert.subject());
        leaf_cert
            .verify_signature(Some(ca_cert.public_key()))
            .unwrap();
    }

    #[test]
    fn a_damaged_stored_ca_is_refused() {
        let ca = Authority::generate("test CA").unwrap();
        assert!(Authority::from_pem(ca.cert_pem(), "not a key").is_err());
        assert!(Authority::from_pem("not a certificate", ca.key_pem()).is_err());
    }
}
