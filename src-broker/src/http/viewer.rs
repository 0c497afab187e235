//! A viewer's WebSocket as a bridge end ([`crate::ends`]): binary frames carry the service's
//! bytes, text frames control messages; errors are classified by the WebSocket library's error
//! type (a message over the size limit, a protocol violation, the peer gone), never by text.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, header};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};

use crate::ends::{EndError, Frame, Sink, Source};

/// How long a closed viewer has to take its close frame and answer it.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// What the viewer sends (and a frame read early, delivered again first: an RDP viewer's
/// request, read for its token before the session core admits the viewer).
pub(super) struct WsSource(SplitStream<WebSocket>, Option<Frame>);

/// What goes to the viewer.
pub(super) struct WsSink(SplitSink<WebSocket, Message>);

impl std::fmt::Debug for WsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WsSource")
    }
}

impl std::fmt::Debug for WsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WsSink")
    }
}

/// The prefix of the subprotocol that carries a token: browsers cannot set headers on a
/// WebSocket, so the page offers `binary` and `passerelle.token.<T>`, and the broker answers
/// `binary`.
const TOKEN_PROTOCOL: &str = "passerelle.token.";

/// The `Authorization: Bearer` token of a request, if any.
pub(super) fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    Some(value.strip_prefix("Bearer ")?.trim().to_owned())
}

/// The token a viewer presents: `Authorization: Bearer` (native clients: the desktop helper),
/// else a `passerelle.token.…` subprotocol (browsers), else `?token=` (older clients; a query
/// string is what proxies log).
pub(super) fn presented_token(headers: &HeaderMap, query: String) -> String {
    if let Some(token) = bearer(headers) {
        return token;
    }
    let offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(TOKEN_PROTOCOL).map(str::to_owned));
    offered.unwrap_or(query)
}

/// The upgrade with the viewers' limits: `max` bytes per frame and message; the `binary`
/// subprotocol echoed when offered, never imposed.
pub(super) fn accept(
    ws: WebSocketUpgrade,
    max: usize,
) -> WebSocketUpgrade<impl axum::extract::ws::OnFailedUpgrade> {
    ws.protocols(["binary"])
        .max_message_size(max)
        .max_frame_size(max)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "websocket upgrade failed"))
}

/// The socket's two ends.
pub(super) fn split(ws: WebSocket) -> (WsSource, WsSink) {
    let (tx, rx) = ws.split();
    (WsSource(rx, None), WsSink(tx))
}

/// Classifies an error of the WebSocket library by its type.
fn classify(e: axum::Error) -> EndError {
    let inner = e.into_inner();
    let Ok(ws) = inner.downcast::<tungstenite::Error>() else {
        return EndError::Closed;
    };
    use tungstenite::error::ProtocolError as P;
    match *ws {
        tungstenite::Error::Capacity(_) => EndError::TooBig,
        // A viewer that went away without a close frame is gone, not wrong.
        tungstenite::Error::Protocol(
            P::ResetWithoutClosingHandshake | P::SendAfterClosing | P::ReceivedAfterClosing,
        ) => EndError::Closed,
        tungstenite::Error::Protocol(p) => EndError::Protocol(p.to_string()),
        tungstenite::Error::Utf8(_) => EndError::Protocol("a text frame that is not UTF-8".into()),
        tungstenite::Error::Io(io) => EndError::from_io(io),
        _ => EndError::Closed,
    }
}

impl WsSource {
    /// Delivers `frame` again, before anything else the viewer sends.
    pub(super) fn unread(&mut self, frame: Frame) {
        self.1 = Some(frame);
    }
}

impl Source for WsSource {
    async fn recv(&mut self) -> Result<Option<Frame>, EndError> {
        if let Some(frame) = self.1.take() {
            return Ok(Some(frame));
        }
        loop {
            return match self.0.next().await {
                Some(Ok(Message::Binary(data))) => Ok(Some(Frame::Binary(data))),
                Some(Ok(Message::Text(text))) => Ok(Some(Frame::Text(text.to_string()))),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_))) | None => Ok(None),
                Some(Err(e)) => Err(classify(e)),
            };
        }
    }
}

impl Sink for WsSink {
    async fn send(&mut self, frame: Frame) -> Result<(), EndError> {
        let msg = match frame {
            Frame::Binary(data) => Message::Binary(data),
            Frame::Text(text) => Message::Text(text.into()),
        };
        self.0.feed(msg).await.map_err(classify)
    }

    async fn flush(&mut self) -> Result<(), EndError> {
        self.0.flush().await.map_err(classify)
    }

    async fn finish(&mut self) -> Result<(), EndError> {
        self.flush().await
    }
}

/// Sends the close frame and waits (bounded) for the viewer's reply. A viewer that stopped
/// reading gets the frame after the data queued before it, if it reads again in time.
pub(super) async fn close((mut rx, mut tx): (WsSource, WsSink), code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: passerelle_proto::close::bounded_reason(reason).into(),
    };
    let closing = async {
        let _ = tx.0.send(Message::Close(Some(frame))).await;
        // Read until the viewer's close reply: dropping a socket with unread input resets it,
        // and a reset can destroy our close frame before the viewer reads it.
        while let Some(Ok(msg)) = rx.0.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
        let _ = tx.0.close().await;
    };
    if tokio::time::timeout(CLOSE_WAIT, closing).await.is_err() {
        tracing::debug!("viewer did not complete the close handshake in time");
    }
}
