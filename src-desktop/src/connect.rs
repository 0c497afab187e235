//! Opening connections to the broker: TCP, then TLS when the broker is `https://`, then either a
//! liveness probe (`GET /healthz`, which checks reachability and the certificate without
//! spending anything of the session) or the session's WebSocket. Every step is bounded in time
//! and every failure becomes a typed [`Error`].

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::{Endpoint, Error};

/// The largest message accepted from the broker (it sends at most what the service wrote in
/// one go, far less in practice).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// A byte stream to the broker, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A WebSocket to the broker.
pub type BrokerSocket = WebSocketStream<Box<dyn Io>>;

/// Opens connections to one broker endpoint.
#[derive(Clone)]
pub struct Connector {
    endpoint: Endpoint,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    timeout: Duration,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("endpoint", &self.endpoint)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector for `endpoint`, using `tls` when the endpoint is `https://`; each step of a
    /// connection (TCP, TLS, HTTP) must finish within `timeout`.
    pub fn new(
        endpoint: Endpoint,
        tls: Arc<ClientConfig>,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let tls = if endpoint.tls {
            let name = ServerName::try_from(endpoint.host.clone()).map_err(|_| {
                Error::Tls(format!("{:?} is not a valid server name", endpoint.host))
            })?;
            Some((TlsConnector::from(tls), name))
        } else {
            None
        };
        Ok(Self {
            endpoint,
            tls,
            timeout,
        })
    }

    /// The endpoint this connector reaches.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn unreachable(&self, detail: impl std::fmt::Display) -> Error {
        Error::Unreachable {
            addr: self.endpoint.authority(),
            detail: detail.to_string(),
        }
    }

    /// TCP (and TLS) to the broker.
    async fn io(&self) -> Result<Box<dyn Io>, Error> {
        let addr = (self.endpoint.host.as_str(), self.endpoint.port);
        let tcp = timeout(self.timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| self.unreachable(format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| self.unreachable(e))?;
        // Interactive traffic (keystrokes, pointer moves): no Nagle delay.
        let _ = tcp.set_nodelay(true);
        let Some((connector, name)) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let tls = timeout(self.timeout, connector.connect(name.clone(), tcp))
            .await
            .map_err(|_| Error::Tls(format!("no TLS handshake within {:?}", self.timeout)))?
            .map_err(|e| crate::tls::classify(&e))?;
        Ok(Box::new(tls))
    }

    /// Checks that the broker answers `GET /healthz` with 200 (and, over TLS, that its
    /// certificate is accepted).
    pub async fn probe(&self) -> Result<(), Error> {
        let mut io = self.io().await?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: passerelle-desktop\r\n\r\n",
            self.endpoint.health_path(),
            self.endpoint.authority()
        );
        let exchange = async {
            io.write_all(request.as_bytes()).await?;
            io.flush().await?;
            // The status line is all we need; read a bounded head.
            let mut head = Vec::with_capacity(256);
            let mut buf = [0u8; 256];
            while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
                let n = io.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            Ok::<_, std::io::Error>(head)
        };
        let head = timeout(self.timeout, exchange)
            .await
            .map_err(|_| self.unreachable(format!("no HTTP answer within {:?}", self.timeout)))?
            .map_err(|e| Error::BrokerGone(format!("during the liveness check: {e}")))?;
        let line = String::from_utf8_lossy(&head);
        let line = line.lines().next().unwrap_or("").trim();
        let status = line.split(' ').nth(1);
        if line.starts_with("HTTP/1.") && status == Some("200") {
            Ok(())
        } else if line.is_empty() {
            Err(Error::Protocol(format!(
                "{} closed the connection without answering (is it a Passerelle broker, and is \
                 the URL's scheme right?)",
                self.endpoint.authority()
            )))
        } else {
            Err(Error::Protocol(format!(
                "GET {} answered {line:?}",
                self.endpoint.health_path()
            )))
        }
    }

    /// Opens the session's WebSocket.
    pub async fn open(&self) -> Result<BrokerSocket, Error> {
        self.open_url(self.endpoint.ws_url()).await
    }

    /// Opens the session's watch (see [`Endpoint::watch_url`]).
    pub async fn open_watch(&self) -> Result<BrokerSocket, Error> {
        self.open_url(self.endpoint.watch_url()).await
    }

    async fn open_url(&self, url: String) -> Result<BrokerSocket, Error> {
        use tokio_tungstenite::tungstenite::Error as WsError;
        let io = self.io().await?;
        let mut request = url
            .into_client_request()
            .map_err(|e| Error::Protocol(format!("bad WebSocket request: {e}")))?;
        let authorization =
            self.endpoint.authorization().parse().map_err(|_| {
                Error::Protocol("the launch token is not a valid header value".into())
            })?;
        request.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::header::AUTHORIZATION,
            authorization,
        );
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let handshake = tokio_tungstenite::client_async_with_config(request, io, Some(config));
        match timeout(self.timeout, handshake).await {
            Err(_) => {
                Err(self.unreachable(format!("no WebSocket handshake within {:?}", self.timeout)))
            }
            Ok(Ok((socket, _response))) => Ok(socket),
            Ok(Err(WsError::Http(response))) => Err(Error::Protocol(format!(
                "the WebSocket upgrade of {} was answered {}",
                self.endpoint.path,
                response.status()
            ))),
            Ok(Err(WsError::Io(e))) => Err(Error::BrokerGone(format!(
                "during the WebSocket handshake: {e}"
            ))),
            Ok(Err(e)) => Err(Error::Protocol(format!("WebSocket handshake: {e}"))),
        }
    }
}
