//! A TLS client's trust in one certificate, by its SHA-256 (the RDP server pinned per agent,
//! the cluster's own certificate on the node link, which follows what this node's listener
//! serves after a reload), not in a CA. The handshake's signatures are
//! still checked against the presented certificate, so a pin means possession of its key.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use sha2::{Digest as _, Sha256};

use crate::server_cert::ServerCert;

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

/// Which certificate a [`PinVerifier`] accepts.
#[derive(Debug, Clone)]
pub(crate) enum Pin {
    /// The one with this SHA-256; any, when `None` (trust on first use).
    Fixed(Option<[u8; 32]>),
    /// The one this broker's HTTPS listener serves at the time of the handshake: every node
    /// of a cluster serves the same, so the node link follows a reload of it.
    Served(Arc<ServerCert>),
}

impl Pin {
    fn sha256(&self) -> Option<[u8; 32]> {
        match self {
            Pin::Fixed(pinned) => *pinned,
            Pin::Served(cert) => Some(cert.sha256()),
        }
    }
}

/// Accepts the certificate whose SHA-256 is pinned (any, when none is: trust on first use),
/// and still checks the handshake's signatures against it.
#[derive(Debug)]
pub(crate) struct PinVerifier {
    pin: Pin,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinVerifier {
    pub(crate) fn new(pinned: Option<[u8; 32]>, provider: &CryptoProvider) -> Self {
        Self::with(Pin::Fixed(pinned), provider)
    }

    pub(crate) fn with(pin: Pin, provider: &CryptoProvider) -> Self {
        Self {
            pin,
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
        match self.pin.sha256() {
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
