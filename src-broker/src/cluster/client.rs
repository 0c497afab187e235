//! The node link's client side: HTTP/1.1 connections to another node's listener (its
//! `node_url`), over TLS pinned to the cluster's certificate (`crate::pinned`) when the URL is
//! `https://`. Connections are kept for the next request to the same node ([`MAX_IDLE`] per
//! node, [`IDLE_FOR`] at most), so that a forwarded API call does not pay a TCP and TLS
//! handshake each time. Upgrades (WebSockets) get a connection of their own, which the
//! upgraded stream then owns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;

use crate::pinned::{Pin, PinVerifier};

/// Connecting to a node (TCP and TLS) must be done within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept per node.
const MAX_IDLE: usize = 8;
/// An idle connection older than this is closed rather than reused (a node's listener, or
/// something between, may have dropped it meanwhile).
const IDLE_FOR: Duration = Duration::from_secs(30);

type Sender = hyper::client::conn::http1::SendRequest<axum::body::Body>;
/// Idle connections by node URL, with when each became idle.
type Idle = HashMap<String, Vec<(Sender, Instant)>>;

/// Connects to other nodes.
#[derive(Clone)]
pub struct Connector {
    tls: tokio_rustls::TlsConnector,
    tasks: TaskTracker,
    idle: Arc<Mutex<Idle>>,
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
    /// A connector that trusts the certificate `pin` names.
    pub(crate) fn new(pin: Pin, tasks: TaskTracker) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = PinVerifier::with(pin, &provider);
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(Self {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            tasks,
            idle: Arc::default(),
        })
    }

    /// An idle connection to `url` that is still open and young enough.
    fn take_idle(&self, url: &str) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(url)?;
        while let Some((sender, since)) = list.pop() {
            if !sender.is_closed() && since.elapsed() < IDLE_FOR {
                return Some(sender);
            }
        }
        None
    }

    /// Keeps `sender` for `url` once its connection can take the next request (the answer's
    /// body has been read); a connection that closes first is dropped.
    fn give_back(&self, url: &str, mut sender: Sender) {
        let (url, idle) = (url.to_owned(), self.idle.clone());
        self.tasks.spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
            let list = idle.entry(url).or_default();
            list.retain(|(s, since)| !s.is_closed() && since.elapsed() < IDLE_FOR);
            if list.len() < MAX_IDLE {
                list.push((sender, Instant::now()));
            }
        });
    }

    /// A new connection to `url`, driven by a tracked task (which lives on for an upgrade).
    async fn connect(&self, url: &str) -> anyhow::Result<Sender> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, self.stream(url))
            .await
            .with_context(|| format!("node {url} did not answer within {CONNECT_TIMEOUT:?}"))??;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP to the node")?;
        self.tasks.spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "node link connection ended");
            }
        });
        Ok(sender)
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
    /// header) and returns the answer: on an idle connection to that node if one is open, else
    /// on a new one. An upgrade request always gets a new connection, which after a 101 the
    /// upgraded stream owns.
    pub async fn send(
        &self,
        url: &str,
        req: hyper::Request<axum::body::Body>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let upgrade = req.headers().contains_key(hyper::header::UPGRADE);
        let mut req = req;
        // A kept connection that the node closed meanwhile gives the request back unsent:
        // it goes on a new connection then.
        if let Some(mut sender) = (!upgrade).then(|| self.take_idle(url)).flatten() {
            match sender.try_send_request(req).await {
                Ok(answer) => {
                    self.give_back(url, sender);
                    return Ok(answer);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => {
                        return Err(anyhow::Error::new(e.into_error()))
                            .with_context(|| format!("request to node {url}"));
                    }
                },
            }
        }
        let mut sender = self.connect(url).await?;
        let answer = sender
            .send_request(req)
            .await
            .with_context(|| format!("request to node {url}"))?;
        if !upgrade {
            self.give_back(url, sender);
        }
        Ok(answer)
    }

    /// Idle connections kept for `url` (for tests and metrics).
    #[cfg(test)]
    fn idle_count(&self, url: &str) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.get(url).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A node-like HTTP/1.1 server on 127.0.0.1:0 that counts the connections it accepts;
    /// `/close` answers with `Connection: close`.
    async fn counting_server() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(|req: hyper::Request<_>| async move {
                    let mut answer = hyper::Response::new(axum::body::Body::from("ok"));
                    if req.uri().path() == "/close" {
                        answer
                            .headers_mut()
                            .insert(hyper::header::CONNECTION, "close".parse().unwrap());
                    }
                    Ok::<_, std::convert::Infallible>(answer)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (url, accepted)
    }

    async fn get(c: &Connector, url: &str, path: &str) -> String {
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, "node")
            .body(axum::body::Body::empty())
            .unwrap();
        let answer = c.send(url, req).await.unwrap();
        let body = axum::body::to_bytes(axum::body::Body::new(answer.into_body()), 1024)
            .await
            .unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// Waits until the connector keeps `n` idle connections for `url`.
    async fn idle(c: &Connector, url: &str, n: usize) {
        for _ in 0..200 {
            if c.idle_count(url) == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{} idle connections, not {n}", c.idle_count(url));
    }

    #[tokio::test]
    async fn requests_to_a_node_reuse_one_connection() {
        let (url, accepted) = counting_server().await;
        let c = Connector::new(Pin::Fixed(Some([0; 32])), TaskTracker::new()).unwrap();
        for _ in 0..5 {
            assert_eq!(get(&c, &url, "/api").await, "ok");
            idle(&c, &url, 1).await;
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection for five requests"
        );

        // A connection the node closes is not reused: the next request opens another.
        assert_eq!(get(&c, &url, "/close").await, "ok");
        idle(&c, &url, 0).await;
        assert_eq!(get(&c, &url, "/api").await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        // An upgrade never takes a kept connection, nor leaves its own behind.
        idle(&c, &url, 1).await;
        let upgrade = hyper::Request::get("/ws")
            .header(hyper::header::HOST, "node")
            .header(hyper::header::UPGRADE, "websocket")
            .header(hyper::header::CONNECTION, "upgrade")
            .body(axum::body::Body::empty())
            .unwrap();
        let _ = c.send(&url, upgrade).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(c.idle_count(&url), 1);
    }

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
