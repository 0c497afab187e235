//! TLS towards the broker (rustls with the ring provider): either ordinary WebPKI verification
//! against Mozilla's roots, or, when the launch URL carries `fp`, pinning: exactly the
//! certificate whose SHA-256 (of its DER) is `fp` is accepted, whatever its name or dates
//! (brokers commonly run with a self-signed certificate), and the handshake signature is still
//! verified with the provider's algorithms, so only the holder of that certificate's key passes.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, OtherError, SignatureScheme};
use sha2::{Digest as _, Sha256};

use crate::Error;

/// Hex SHA-256 of a certificate's DER, the form of the launch URL's `fp`.
pub fn fingerprint(cert_der: &[u8]) -> String {
    hex::encode(Sha256::digest(cert_der))
}

/// The certificate was not the pinned one. Carried inside rustls' error so that the caller can
/// tell a pin mismatch from other TLS failures.
#[derive(Debug, thiserror::Error)]
#[error("certificate sha256 {actual} is not the pinned {expected}")]
struct PinMismatch {
    expected: String,
    actual: String,
}

/// Accepts exactly one certificate, by fingerprint.
#[derive(Debug)]
struct PinnedVerifier {
    expected: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let actual = fingerprint(end_entity);
        if actual == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(PinMismatch {
                    expected: self.expected.clone(),
                    actual,
                })),
            )))
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

/// The client configuration for a broker: pinned to `fingerprint` (lowercase hex) when given,
/// else WebPKI with Mozilla's roots plus `extra_roots`.
pub fn client_config(
    fingerprint: Option<&str>,
    extra_roots: &[CertificateDer<'static>],
) -> Result<Arc<ClientConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let mut config = match fingerprint {
        Some(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(pinned(fp, &provider)))
            .with_no_client_auth(),
        None => {
            let mut roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            for cert in extra_roots {
                roots
                    .add(cert.clone())
                    .map_err(|e| Error::Tls(format!("extra root certificate: {e}")))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn pinned(fp: &str, provider: &CryptoProvider) -> PinnedVerifier {
    PinnedVerifier {
        expected: fp.replace(':', "").to_ascii_lowercase(),
        algorithms: provider.signature_verification_algorithms,
    }
}

/// Turns a failed TLS handshake into the helper's error, telling a pin mismatch apart.
pub(crate) fn classify(err: &std::io::Error) -> Error {
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) = inner
        && let Some(pin) = other.0.downcast_ref::<PinMismatch>()
    {
        return Error::PinMismatch {
            expected: pin.expected.clone(),
            actual: pin.actual.clone(),
        };
    }
    match inner {
        Some(e) => Error::Tls(e.to_string()),
        None => Error::Tls(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_lowercase_hex_sha256() {
        assert_eq!(
            fingerprint(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn the_pinned_certificate_and_only_it_passes() {
        let cert = CertificateDer::from(b"not really DER, hashed all the same".to_vec());
        let provider = rustls::crypto::ring::default_provider();
        let name = ServerName::try_from("broker.example").unwrap();
        let good = pinned(&fingerprint(&cert).to_ascii_uppercase(), &provider);
        assert!(
            good.verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
                .is_ok()
        );
        let bad = pinned(&"00".repeat(32), &provider);
        let err = bad
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .unwrap_err();
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, err);
        assert_eq!(
            classify(&io),
            Error::PinMismatch {
                expected: "00".repeat(32),
                actual: fingerprint(&cert)
            }
        );
    }
}
