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
