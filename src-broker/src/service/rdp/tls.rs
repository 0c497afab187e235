//! TLS with the workstation's RDP server, the broker as client. RDP servers present
//! self-signed certificates, so no CA can vouch for them: the broker pins each agent's
//! certificate on first use (trust on first use, like SSH host keys) and refuses a change until
//! an administrator resets the pin. The handshake's signatures are still checked against the
//! presented certificate, so a pin means possession of its private key.

use std::sync::Arc;

use rustls::pki_types::{IpAddr, ServerName};
use rustls::{CertificateError, ClientConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;

use super::{RdpFailure, TLS_TIMEOUT};
pub(crate) use crate::pinned::fingerprint;
use crate::pinned::{PinMismatch, PinVerifier};

fn client_config(pinned: Option<[u8; 32]>) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = PinVerifier::new(pinned, &provider);
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // RDP servers ignore SNI; the workstation's name is not the broker's to tell.
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// What a failed handshake's I/O error means.
fn classify(err: &std::io::Error) -> RdpFailure {
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) => {
            match other.0.downcast_ref::<PinMismatch>() {
                Some(pin) => RdpFailure::CertificateChanged {
                    pinned: hex::encode(pin.pinned),
                    presented: hex::encode(pin.presented),
                },
                None => tls_failure(None, format!("certificate refused: {other}")),
            }
        }
        Some(rustls::Error::AlertReceived(alert)) => tls_failure(
            Some(u8::from(*alert)),
            format!("the server sent the alert {alert:?}"),
        ),
        Some(other) => tls_failure(None, other.to_string()),
        None if err.kind() == std::io::ErrorKind::UnexpectedEof => tls_failure(
            None,
            "the server closed the connection during the handshake (TLS 1.2 or newer is required)"
                .into(),
        ),
        None => tls_failure(None, err.to_string()),
    }
}

fn tls_failure(alert: Option<u8>, reason: String) -> RdpFailure {
    RdpFailure::Tls { alert, reason }
}

/// The TLS handshake over `channel`, bounded by [`TLS_TIMEOUT`]; returns the stream and the
/// SHA-256 of the server's certificate.
pub(crate) async fn handshake<C>(
    channel: C,
    pinned: Option<[u8; 32]>,
) -> Result<(TlsStream<C>, [u8; 32]), RdpFailure>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let config = client_config(pinned).map_err(|e| tls_failure(None, e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    // No SNI is sent for an address; the verifier ignores the name.
    let name = ServerName::IpAddress(IpAddr::from(std::net::Ipv4Addr::LOCALHOST));
    let tls = tokio::time::timeout(TLS_TIMEOUT, connector.connect(name, channel))
        .await
        .map_err(|_| {
            tls_failure(
                None,
                format!("no TLS handshake within {}s", TLS_TIMEOUT.as_secs()),
            )
        })?
        .map_err(|e| classify(&e))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| fingerprint(c.as_ref()))
        .ok_or_else(|| tls_failure(None, "the server presented no certificate".into()))?;
    Ok((tls, leaf))
}
