//! Mutual TLS for the KMIP port: the server's certificate, and client certificates that
//! must chain to the configured CA. A client's identity is what its certificate names.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig as RustlsConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use shadowkeep_api::server_config::TlsFiles;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file that is missing or holds nothing usable.
    #[error("failed to load {what} from {path}: {reason}")]
    Load {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: String,
        /// Why it failed.
        reason: String,
    },
    /// rustls refused the combination.
    #[error("failed to configure TLS: {0}")]
    Config(String),
}

fn load_error(what: &'static str, path: &Path) -> impl FnOnce(String) -> TlsError + use<> {
    let path = path.display().to_string();
    move |reason| TlsError::Load { what, path, reason }
}

/// Reads every certificate in a PEM file.
pub fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| load_error(what, path)(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| load_error(what, path)(e.to_string()))?;
    if certs.is_empty() {
        return Err(load_error(what, path)(
            "no certificate in the file".to_owned(),
        ));
    }
    Ok(certs)
}

/// Whether a listener insists on a client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client must present a certificate from the CA (KMIP).
    Required,
    /// A certificate is checked when presented; callers without one reach only the
    /// endpoints that need none (the admin API's probes and metrics).
    Optional,
}

/// A rustls configuration that checks client certificates against the configured CA and
/// speaks TLS 1.2 and 1.3 (tape libraries in the field are often TLS 1.2 only).
pub fn server_config(files: &TlsFiles, auth: ClientAuth) -> Result<Arc<RustlsConfig>, TlsError> {
    let chain = load_certs(&files.cert, "the server certificate")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| load_error("the server private key", &files.key)(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in load_certs(&files.client_ca, "the client CA")? {
        roots
            .add(ca)
            .map_err(|e| load_error("the client CA", &files.client_ca)(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
    if auth == ClientAuth::Optional {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let config = RustlsConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(config))
}

/// The names a client certificate gives its holder: the subject common name and every
/// subject alternative name (DNS, URI, e-mail, IP). A drive table entry matches any of them.
pub fn identities(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;

    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    let mut names: Vec<String> = parsed
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => {
                    names.push((*s).to_owned());
                }
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .ok()
                            .map(std::net::IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    names
}
