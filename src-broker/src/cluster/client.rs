//! The node link's client side: one HTTP/1.1 connection per request to another node's listener
//! (its `node_url`), over TLS pinned to the cluster's certificate (`crate::pinned`) when the
//! URL is `https://`.
//! Upgrades (WebSockets) pass through: the caller gets the upgraded stream.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;

use crate::pinned::PinVerifier;

/// Connecting to a node (TCP and TLS) must be done within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to other nodes.
#[derive(Clone)]
pub struct Connector {
    tls: tokio_rustls::TlsConnector,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

/// A node URL's parts: `(https?, host, port)`.
fn parse_url(url: &str) -> anyhow::Result<(bool, String, u16)> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        bail!("node URL {url:?} is neither https:// nor http://");
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse().with_context(|| format!("port of {url:?}"))?)
        }
        _ => (authority, if tls { 443 } else { 80 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("node URL {url:?} has no host");
    }
    Ok((tls, host.to_owned(), port))
}

/// A byte stream to a node, plain or TLS.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

impl Connector {
    /// A connector that trusts the certificate whose SHA-256 is `pin` (hex).
    pub fn new(pin_hex: &str, tasks: TaskTracker) -> anyhow::Result<Self> {
        let sha256: [u8; 32] = hex::decode(pin_hex)
            .ok()
            .and_then(|v| v.try_into().ok())
            .context("the cluster certificate's fingerprint")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = PinVerifier::new(Some(sha256), &provider);
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(Self {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            tasks,
        })
    }

    async fn stream(&self, url: &str) -> anyhow::Result<Box<dyn Stream>> {
        let (tls, host, port) = parse_url(url)?;
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .with_context(|| format!("connecting to node {url}"))?;
        tcp.set_nodelay(true)?;
        if !tls {
            return Ok(Box::new(tcp));
        }
        let name = ServerName::try_from(host.clone()).context("the node's host name")?;
        let stream = self
            .tls
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS to node {url}"))?;
        Ok(Box::new(stream))
    }

    /// Sends `req` to the node at `url` (its path and query are kept; the caller set the node
    /// header) and returns the answer. The connection lives on in a tracked task for the
    /// answer's body and, after a 101, for the upgraded stream.
    pub async fn send(
        &self,
        url: &str,
        req: hyper::Request<axum::body::Body>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, self.stream(url))
            .await
            .with_context(|| format!("node {url} did not answer within {CONNECT_TIMEOUT:?}"))??;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP to the node")?;
        self.tasks.spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "node link connection ended");
            }
        });
        sender
            .send_request(req)
            .await
            .with_context(|| format!("request to node {url}"))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn node_urls_parse() {
        assert_eq!(
            parse_url("https://10.0.0.1:8443").unwrap(),
            (true, "10.0.0.1".into(), 8443)
        );
        assert_eq!(
            parse_url("http://[::1]:9/x").unwrap(),
            (false, "::1".into(), 9)
        );
        assert_eq!(parse_url("https://n1").unwrap(), (true, "n1".into(), 443));
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("https://:1").is_err());
        assert!(parse_url("https://h:port").is_err());
    }
}
