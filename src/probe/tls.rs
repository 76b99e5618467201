//! Certificates of the probing channel, and mutual authentication by
//! pinned SHA-256 fingerprints.
//!
//! Each router has a self-signed certificate (`townlink gencert`). The annex
//! pins the hub's certificate by its fingerprint; the hub accepts an annex
//! whose certificate fingerprint is registered for a site. Validity dates
//! are not checked: a router without a real-time clock may boot years in
//! the past, and a pinned key needs no dates. Both sides still verify the
//! TLS handshake signature, so a stolen certificate without its key is of
//! no use.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::fingerprint::Fingerprint;
use crate::sites::Name;

/// The ALPN protocol of the probing channel.
pub const ALPN: &[u8] = b"townlink-probe/1";
/// The ALPN protocol of enrollment (`townlink join`), on the same responder.
pub const ENROLL_ALPN: &[u8] = b"townlink-enroll/1";
/// The ALPN protocol of a backup hub following the main hub's registry,
/// on the same responder; only a `[[follower]]`'s certificate gets it.
pub const SYNC_ALPN: &[u8] = b"townlink-sync/1";
/// The server name the annex asks for (not checked: the certificate is pinned).
pub const SERVER_NAME: &str = "townlink-hub";

/// A certificate and its private key, as loaded from PEM files.
pub struct Identity {
    pub cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({}, key: <redacted>)", self.fingerprint())
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert)
    }

    /// A new self-signed certificate (ECDSA P-256) for `name`.
    pub fn generate(name: &str) -> Result<Identity, String> {
        let certified = rcgen::generate_simple_self_signed(vec![name.to_string()])
            .map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der())
            .map_err(|e| e.to_string())?;
        Ok(Identity {
            cert: certified.cert.der().clone(),
            key,
        })
    }

    pub fn cert_pem(&self) -> String {
        pem("CERTIFICATE", self.cert.as_ref())
    }

    /// The private key in PKCS#8 PEM. The caller must not log it.
    pub fn key_pem_secret(&self) -> String {
        pem("PRIVATE KEY", self.key.secret_der())
    }

    /// Loads a certificate file and its key file (PEM).
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Identity, String> {
        let cert = CertificateDer::from_pem_file(cert_file)
            .map_err(|e| format!("{}: not a PEM certificate: {e}", cert_file.display()))?;
        let key = PrivateKeyDer::from_pem_file(key_file)
            .map_err(|e| format!("{}: not a PEM private key: {e}", key_file.display()))?;
        let identity = Identity { cert, key };
        // The pair must match: sign with the key, check with the certificate.
        let provider = provider();
        let signer = provider
            .key_provider
            .load_private_key(identity.key.clone_key())
            .map_err(|e| format!("{}: unusable private key: {e}", key_file.display()))?;
        let certified = rustls::sign::CertifiedKey::new(vec![identity.cert.clone()], signer);
        certified.keys_match().map_err(|_| {
            format!(
                "{} and {} do not belong together (generate both with `townlink gencert`)",
                cert_file.display(),
                key_file.display()
            )
        })?;
        Ok(identity)
    }
}

/// PEM with LF line endings and 64-column lines, as `openssl` writes it
/// (the `pem` crate's default is CRLF).
fn pem(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The fingerprints the hub accepts, each with its site. Shared with the
/// code that adds and removes sites at run time.
#[derive(Debug, Default)]
pub struct AllowedSites {
    by_fingerprint: RwLock<HashMap<Fingerprint, Name>>,
}

impl AllowedSites {
    pub fn set(&self, sites: impl IntoIterator<Item = (Fingerprint, Name)>) {
        let mut map = self
            .by_fingerprint
            .write()
            .unwrap_or_else(|e| e.into_inner());
        *map = sites.into_iter().collect();
    }

    pub fn site(&self, fp: &Fingerprint) -> Option<Name> {
        self.by_fingerprint
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(fp)
            .cloned()
    }
}

/// The handshake signature checks of both verifiers below: the
/// provider's algorithms, TLS 1.3 only in practice (the configs allow no
/// other version) but both methods are part of the traits.
#[derive(Debug, Clone, Copy)]
struct Signatures(WebPkiSupportedAlgorithms);

impl Signatures {
    fn of(provider: &CryptoProvider) -> Signatures {
        Signatures(provider.signature_verification_algorithms)
    }

    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The hub's TLS check of a client: it holds the key of the certificate it
/// presents (rustls checks the handshake signature with it). Which
/// certificates may do what is decided after the handshake, by the ALPN
/// the client chose: probes need a registered fingerprint
/// ([`AllowedSites`]); enrollment registers a new one, with a token's
/// secret. (The choice cannot be made here: the verifier does not see the
/// ALPN.)
#[derive(Debug)]
struct ClientKeyHolder {
    signatures: Signatures,
}

impl ClientCertVerifier for ClientKeyHolder {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Authorized after the handshake (see above); rustls still checks
        // the handshake signature against this certificate's key.
        let _ = end_entity;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// The annex's check of the hub: its certificate is the pinned one.
#[derive(Debug)]
struct PinnedHub {
    pinned: Fingerprint,
    signatures: Signatures,
}

impl ServerCertVerifier for PinnedHub {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Fingerprint::of(end_entity) == self.pinned {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// TLS 1.3 server config of the hub's responder.
pub fn server_config(identity: &Identity) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(ClientKeyHolder {
        signatures: Signatures::of(&provider),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec(), ENROLL_ALPN.to_vec(), SYNC_ALPN.to_vec()];
    Ok(config)
}

/// TLS 1.3 client config of an annex's prober.
pub fn client_config(
    identity: &Identity,
    hub: Fingerprint,
) -> Result<rustls::ClientConfig, rustls::Error> {
    client_config_for(identity, hub, ALPN)
}

/// TLS 1.3 client config of `townlink join` (enrollment ALPN).
pub fn enroll_client_config(
    identity: &Identity,
    hub: Fingerprint,
) -> Result<rustls::ClientConfig, rustls::Error> {
    client_config_for(identity, hub, ENROLL_ALPN)
}

/// TLS 1.3 client config of a backup hub following the main hub (its
/// certificate pinned).
pub fn sync_client_config(
    identity: &Identity,
    main: Fingerprint,
) -> Result<rustls::ClientConfig, rustls::Error> {
    client_config_for(identity, main, SYNC_ALPN)
}

fn client_config_for(
    identity: &Identity,
    hub: Fingerprint,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(PinnedHub {
        pinned: hub,
        signatures: Signatures::of(&provider),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key.clone_key())?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_files_load_and_must_match() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::generate("a").unwrap();
        let b = Identity::generate("b").unwrap();
        let write = |n: &str, t: String| {
            let p = dir.path().join(n);
            std::fs::write(&p, t).unwrap();
            p
        };
        let (ac, ak, bk) = (
            write("a.crt", a.cert_pem()),
            write("a.key", a.key_pem_secret()),
            write("b.key", b.key_pem_secret()),
        );
        assert_eq!(
            Identity::load(&ac, &ak).unwrap().fingerprint(),
            a.fingerprint()
        );
        let err = Identity::load(&ac, &bk).unwrap_err();
        assert!(err.contains("do not belong together"), "{err}");
        assert!(Identity::load(&ak, &ak)
            .unwrap_err()
            .contains("not a PEM certificate"));
        assert!(!format!("{a:?}").contains("PRIVATE"));
        // As openssl writes it: LF line endings, 64 columns.
        let pem = a.cert_pem();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
        assert!(pem.ends_with("\n-----END CERTIFICATE-----\n"), "{pem}");
        assert!(!pem.contains('\r'));
        assert!(pem.lines().all(|l| l.len() <= 64), "{pem}");
        assert!(a
            .key_pem_secret()
            .starts_with("-----BEGIN PRIVATE KEY-----\n"));
    }
}
