//! [`Ws`]: the operator's side of a session, a WebSocket client (tokio-tungstenite 0.29, the
//! version axum uses) that sends binary frames, reads byte counts across frames and expects
//! close codes, every wait bounded; over `ws://`, or `wss://` with a caller's TLS settings.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, client_async, connect_async};

use crate::WAIT;

/// The largest binary message [`Ws::send`] makes; bigger payloads go out as several messages.
pub const CHUNK: usize = 64 * 1024;

/// A close frame as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The close code (1005 when the frame had none).
    pub code: u16,
    /// The human reason.
    pub reason: String,
    /// Binary payload bytes that arrived before the close frame and were discarded.
    pub discarded: usize,
}

/// A connected WebSocket viewer, over plain TCP (`ws://`, the default) or TLS ([`WssStream`]).
pub struct Ws<S = MaybeTlsStream<TcpStream>> {
    stream: WebSocketStream<S>,
    pending: Vec<u8>,
    /// The subprotocol the server answered with, if any.
    pub subprotocol: Option<String>,
}

fn describe(frame: Option<&CloseFrame>) -> String {
    match frame {
        Some(f) => format!("close {} {:?}", u16::from(f.code), f.reason.as_str()),
        None => "close without code".into(),
    }
}

impl Ws {
    /// Connects to `url` (a `ws_url` or `raw_ws_url`), offering no subprotocol.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, None).await
    }

    /// Connects to `url` (plain `ws://` only) from the local address `from`, e.g. 127.0.0.2 to
    /// look like another client to the broker (Linux routes all of 127/8 to the loopback).
    pub async fn connect_from(url: &str, from: IpAddr) -> Result<Self> {
        let req = url.into_client_request().context("websocket url")?;
        let host = req.uri().host().context("url without host")?.to_owned();
        let port = req.uri().port_u16().unwrap_or(80);
        let target: SocketAddr = format!("{host}:{port}").parse().context("ws host")?;
        let socket = if from.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(from, 0))?;
        let tcp = timeout(WAIT, socket.connect(target))
            .await
            .context("tcp connect timed out")??;
        let (stream, resp) = timeout(WAIT, client_async(req, MaybeTlsStream::Plain(tcp)))
            .await
            .context("websocket handshake timed out")?
            .with_context(|| format!("websocket connect to {}", redact(url)))?;
        Ok(Self::from_parts(stream, &resp))
    }

    /// Connects to `url` offering the subprotocol `protocol`.
    pub async fn connect_with(url: &str, protocol: Option<&str>) -> Result<Self> {
        let mut req = url.into_client_request().context("websocket url")?;
        if let Some(p) = protocol {
            req.headers_mut()
                .insert("sec-websocket-protocol", p.parse()?);
        }
        let (stream, resp) = timeout(WAIT, connect_async(req))
            .await
            .context("websocket connect timed out")?
            .with_context(|| format!("websocket connect to {}", redact(url)))?;
        Ok(Self::from_parts(stream, &resp))
    }
}

/// The stream of a `wss://` viewer ([`Ws::connect_tls`]).
pub type WssStream = tokio_rustls::client::TlsStream<TcpStream>;

impl Ws<WssStream> {
    /// Connects to a `wss://` `url` with TLS configured by `tls` (e.g. trusting one self-signed
    /// certificate), offering no subprotocol. The URL's host is the TLS server name.
    pub async fn connect_tls(url: &str, tls: Arc<rustls::ClientConfig>) -> Result<Self> {
        let req = url.into_client_request().context("websocket url")?;
        let host = req.uri().host().context("url without host")?.to_owned();
        let port = req.uri().port_u16().unwrap_or(443);
        let name = ServerName::try_from(host.clone()).context("tls server name")?;
        let tcp = timeout(WAIT, TcpStream::connect((host.as_str(), port)))
            .await
            .context("tcp connect timed out")??;
        let tls = timeout(WAIT, TlsConnector::from(tls).connect(name, tcp))
            .await
            .context("tls handshake timed out")?
            .with_context(|| format!("tls handshake with {host}:{port}"))?;
        let (stream, resp) = timeout(WAIT, client_async(req, tls))
            .await
            .context("websocket handshake timed out")?
            .with_context(|| format!("websocket connect to {}", redact(url)))?;
        Ok(Self::from_parts(stream, &resp))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Ws<S> {
    fn from_parts(
        stream: WebSocketStream<S>,
        resp: &tokio_tungstenite::tungstenite::handshake::client::Response,
    ) -> Self {
        let subprotocol = resp
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        Self {
            stream,
            pending: Vec::new(),
            subprotocol,
        }
    }

    /// Sends one message, bounded in time.
    pub async fn send_message(&mut self, msg: Message) -> Result<()> {
        timeout(WAIT, self.stream.send(msg))
            .await
            .context("websocket send timed out")??;
        Ok(())
    }

    /// Reads the next message, which must be a text frame; its text.
    pub async fn expect_text(&mut self) -> Result<String> {
        loop {
            let msg = timeout(WAIT, self.stream.next())
                .await
                .context("no text frame in time")?;
            match msg {
                Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => bail!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Sends `data` as binary messages of at most [`CHUNK`] bytes.
    pub async fn send(&mut self, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(CHUNK) {
            self.send_message(Message::Binary(Bytes::copy_from_slice(chunk)))
                .await?;
        }
        Ok(())
    }

    /// Reads exactly `n` bytes of binary payload, across as many frames as it takes.
    pub async fn read_exact(&mut self, n: usize) -> Result<Vec<u8>> {
        self.read_exact_within(n, WAIT).await
    }

    /// [`Self::read_exact`] with a deadline of `within`.
    pub async fn read_exact_within(&mut self, n: usize, within: Duration) -> Result<Vec<u8>> {
        let deadline = Instant::now() + within;
        while self.pending.len() < n {
            let got = self.pending.len();
            let msg = timeout_at(deadline, self.stream.next())
                .await
                .map_err(|_| anyhow!("websocket: {got} of {n} bytes after {within:?}"))?;
            match msg {
                None => bail!("websocket ended without close frame after {got} of {n} bytes"),
                Some(Err(e)) => bail!("websocket error after {got} of {n} bytes: {e}"),
                Some(Ok(Message::Binary(b))) => self.pending.extend_from_slice(&b),
                Some(Ok(Message::Close(f))) => {
                    bail!(
                        "websocket {} after {got} of {n} bytes",
                        describe(f.as_ref())
                    )
                }
                Some(Ok(Message::Text(t))) => bail!("unexpected text frame {:?}", t.as_str()),
                Some(Ok(_)) => {}
            }
        }
        Ok(self.pending.drain(..n).collect())
    }

    /// The viewer's side of the RFB handshake the broker offers on a `vnc` session's `ws_url`:
    /// version 3.8, security type None, result OK.
    pub async fn rfb_handshake(&mut self) -> Result<()> {
        let greeting = self.read_exact(12).await?;
        ensure!(greeting == b"RFB 003.008\n", "greeting {greeting:?}");
        self.send(b"RFB 003.008\n").await?;
        let types = self.read_exact(2).await?;
        ensure!(types == [1, 1], "security types {types:?}");
        self.send(&[1]).await?;
        let result = self.read_exact(4).await?;
        ensure!(result == [0, 0, 0, 0], "security result {result:?}");
        Ok(())
    }

    /// Sends `data` and reads as many bytes back; they must be identical (an echo service).
    pub async fn round_trip(&mut self, data: &[u8]) -> Result<()> {
        self.send(data).await?;
        let back = self.read_exact(data.len()).await?;
        if let Some(i) = back.iter().zip(data).position(|(a, b)| a != b) {
            bail!("echoed bytes differ from offset {i} of {}", data.len());
        }
        Ok(())
    }

    /// Sends `total` bytes of [`crate::pattern_byte`]`(offset, seed)` to an echo service in
    /// round trips of `chunk` bytes, checking every byte that comes back (a lost, duplicated or
    /// reordered byte fails at its offset).
    pub async fn echo_transfer(&mut self, total: u64, chunk: usize, seed: u8) -> Result<()> {
        let mut offset = 0u64;
        while offset < total {
            let len = chunk.min(usize::try_from(total - offset).unwrap_or(chunk));
            let data: Vec<u8> = (offset..offset + len as u64)
                .map(|i| crate::pattern_byte(i, seed))
                .collect();
            self.round_trip(&data)
                .await
                .with_context(|| format!("echo transfer at offset {offset} of {total}"))?;
            offset += len as u64;
        }
        Ok(())
    }

    /// Reads until a close frame arrives (discarding binary data) and returns it.
    pub async fn expect_close(&mut self) -> Result<Closed> {
        self.expect_close_within(WAIT).await
    }

    /// [`Self::expect_close`] with a deadline of `within`.
    pub async fn expect_close_within(&mut self, within: Duration) -> Result<Closed> {
        let deadline = Instant::now() + within;
        let mut discarded = std::mem::take(&mut self.pending).len();
        loop {
            let msg = timeout_at(deadline, self.stream.next())
                .await
                .map_err(|_| {
                    anyhow!("no close frame within {within:?} ({discarded} bytes read)")
                })?;
            match msg {
                None => bail!("websocket ended without a close frame ({discarded} bytes read)"),
                Some(Err(e)) => bail!("websocket error instead of a close frame: {e}"),
                Some(Ok(Message::Binary(b))) => discarded += b.len(),
                Some(Ok(Message::Close(f))) => {
                    return Ok(Closed {
                        code: f.as_ref().map_or(1005, |f| u16::from(f.code)),
                        reason: f.map(|f| f.reason.as_str().to_owned()).unwrap_or_default(),
                        discarded,
                    });
                }
                Some(Ok(Message::Text(t))) => bail!("unexpected text frame {:?}", t.as_str()),
                Some(Ok(_)) => {}
            }
        }
    }

    /// Closes from the viewer's side (code 1000) and waits for the broker's answer.
    pub async fn close(mut self) -> Result<()> {
        timeout(WAIT, self.stream.close(None))
            .await
            .context("websocket close timed out")??;
        let deadline = Instant::now() + WAIT;
        loop {
            match timeout_at(deadline, self.stream.next()).await {
                Err(_) => bail!("broker never answered the viewer's close"),
                Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return Ok(()),
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

/// `url` without its token, for error messages.
fn redact(url: &str) -> String {
    match url.split_once("token=") {
        Some((head, _)) => format!("{head}token=<redacted>"),
        None => url.to_owned(),
    }
}
