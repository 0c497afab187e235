//! What certificate a TLS listener presents: a client that trusts exactly some certificates,
//! and one handshake that returns the leaf the server sent (the certificate-reload tests).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::WAIT;

/// TLS client settings that trust exactly these certificates (DER).
pub fn trusting(ders: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>> {
    crate::init();
    let mut roots = rustls::RootCertStore::empty();
    for der in ders {
        roots.add(CertificateDer::from(der.to_vec()))?;
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// The leaf certificate (DER) a new handshake with `addr` (named 127.0.0.1) presents.
pub async fn presented(addr: SocketAddr, tls: &Arc<rustls::ClientConfig>) -> Result<Vec<u8>> {
    let tcp = timeout(WAIT, TcpStream::connect(addr)).await??;
    let name = ServerName::try_from("127.0.0.1")?;
    let stream = timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp),
    )
    .await
    .context("tls handshake timed out")?
    .context("tls handshake")?;
    let certs = (stream.get_ref().1.peer_certificates()).context("no certificate presented")?;
    Ok(certs.first().context("empty chain")?.to_vec())
}
