//! A TLS client's trust in one certificate, by its SHA-256 (the RDP server pinned per agent,
//! the cluster's own certificate on the node link), not in a CA. The handshake's signatures are
//! still checked against the presented certificate, so a pin means possession of its key.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use sha2::{Digest as _, Sha256};

/// SHA-256 of a DER certificate.
pub(crate) fn fingerprint(cert_der: &[u8]) -> [u8; 32] {
    Sha256::digest(cert_der).into()
}

/// The presented certificate is not the pinned one.
#[derive(Debug, thiserror::Error)]
#[error("certificate sha256 {} is not the pinned {}", hex::encode(.presented), hex::encode(.pinned))]
pub(crate) struct PinMismatch {
    pub(crate) pinned: [u8; 32],
    pub(crate) presented: [u8; 32],
}

/// Accepts the certificate whose SHA-256 is pinned (any, when none is: trust on first use),
/// and still checks the handshake's signatures against it.
#[derive(Debug)]
pub(crate) struct PinVerifier {
    pinned: Option<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinVerifier {
    pub(crate) fn new(pinned: Option<[u8; 32]>, provider: &CryptoProvider) -> Self {
        Self {
            pinned,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = fingerprint(end_entity.as_ref());
        match self.pinned {
            Some(pinned) if pinned != presented => Err(rustls::Error::InvalidCertificate(
                CertificateError::Other(OtherError(Arc::new(PinMismatch { pinned, presented }))),
            )),
            // First use: the caller pins what was presented once the handshake succeeds.
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
