//! The `rdp` adapter in the session core: the viewer's RDCleanPath request, the connection to
//! the workstation's RDP server over the agent's channel ([`connect`]), the certificate pin and
//! the audit through the session's [`Context`], then the core's [`Bridge`] between the viewer
//! and the TLS stream, recorded as `Content::Rdp`.
//!
//! The server's end is the TLS stream read through a [`ServerFilter`] ([`Down`]): it repairs
//! xrdp's bare Deactivate All PDU for IronRDP's web client, ends a frame after the connection
//! sequence's last PDU (IronRDP's web client drops what follows it in the same message; the
//! bridge does not join frames for RDP), and remembers whether the server
//! had let an NLA logon through, so that a server ending the connection during CredSSP ends the
//! session `rdp_logon_failed` (4055) rather than `service_closed`.

use std::time::Duration;

use bytes::Bytes;
use passerelle_proto::close::{self, Closure, EndReason};
use passerelle_proto::rdp::ServerFilter;
use passerelle_proto::rdp::x224::protocol;
use passerelle_proto::recording::Content;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, ReadHalf, WriteHalf};

use super::{Connected, DownFilter, Params, RdpFailure, connect, read_request};
use crate::ends::{EndError, Frame, IoSink, IoSource, Sink, Source};
use crate::registry::AgentChannel;
use crate::service::{Bridge, Context};
use crate::store::{AuditKind, PinCheck};

/// Bytes read from the TLS stream per frame (one TLS record at most).
const CHUNK: usize = 16 * 1024;
/// How long a finished connection lets the server close its side after the broker's
/// close_notify (the agent then closes the channel first, see `service::channel`).
const FINISH_WAIT: Duration = Duration::from_secs(2);

type Stream = russh::ChannelStream<russh::server::Msg>;
type Tls = tokio_rustls::client::TlsStream<Stream>;

/// The server's end: the TLS stream, through the server filter.
pub(crate) struct Down<R> {
    io: IoSource<R>,
    filter: ServerFilter,
    out: Vec<u8>,
    /// What followed the end of the connection sequence in the same read: its own frame.
    next: Option<Bytes>,
}

impl<R> std::fmt::Debug for Down<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Down")
            .field("logon_refused", &self.filter.logon_refused())
            .finish_non_exhaustive()
    }
}

impl<R: AsyncRead + Unpin + Send> Down<R> {
    pub(crate) fn new(io: R, selected_protocol: u32) -> Self {
        Self {
            io: IoSource::new(io, CHUNK),
            filter: ServerFilter::new(selected_protocol),
            out: Vec::new(),
            next: None,
        }
    }

    /// Whether the server had not let the NLA logon through ([`ServerFilter::logon_refused`]).
    pub(crate) fn logon_refused(&self) -> bool {
        self.filter.logon_refused()
    }
}

impl<R: AsyncRead + Unpin + Send> Source for Down<R> {
    async fn recv(&mut self) -> Result<Option<Frame>, EndError> {
        if let Some(next) = self.next.take() {
            return Ok(Some(Frame::Binary(next)));
        }
        loop {
            let Some(frame) = self.io.recv().await? else {
                return Ok(None);
            };
            let Frame::Binary(data) = frame else {
                return Ok(Some(frame));
            };
            self.out.clear();
            if let Err(e) = self.filter.feed(&data, &mut self.out) {
                tracing::info!(error = %e, "the workstation's RDP stream is malformed");
                return Err(EndError::Protocol(format!("RDP from the workstation: {e}")));
            }
            // Only part of a PDU so far: read on.
            if self.out.is_empty() {
                continue;
            }
            let out = Bytes::copy_from_slice(&self.out);
            // The end of the connection sequence ends its frame ([`ServerFilter::take_split`]).
            if let Some(at) = self.filter.take_split().filter(|&at| at < out.len()) {
                self.next = Some(out.slice(at..));
                return Ok(Some(Frame::Binary(out.slice(..at))));
            }
            return Ok(Some(Frame::Binary(out)));
        }
    }
}

/// Serves one viewer of an `rdp` session over `channel` (see the module documentation).
/// `None` when the broker went away with the viewer's end.
pub(crate) async fn serve<VR, VT>(
    cx: &Context,
    channel: AgentChannel,
    mut viewer: (VR, VT),
    bridge: impl Bridge,
) -> Option<((VR, VT), Closure)>
where
    VR: Source + 'static,
    VT: Sink + 'static,
{
    // A stop, the session's end or the agent leaving interrupts the handshake.
    let opened = tokio::select! {
        opened = open(cx, channel, &mut viewer) => Ok(opened),
        why = cx.stop.wait() => Err(why),
    };
    let c = match opened {
        Ok(Ok(c)) => c,
        Ok(Err(f)) => {
            let closure = fail(cx, &mut viewer.1, &f).await;
            return Some((viewer, closure));
        }
        Err(why) => return Some((viewer, why)),
    };
    let selected = c.selected_protocol;
    // What a player needs before the stream: the security the server selected.
    let first = serde_json::json!({ "rdp": {
        "selected_protocol": selected,
        "security": protocol::name(selected),
        "credentials": c.credentials.describe(),
    }});
    let (rd, wr) = tokio::io::split(c.tls);
    let agent = (Down::new(rd, selected), IoSink::new(wr));
    let opts = crate::bridge::Options {
        up: Some(Box::new(c.up)),
        // The recording's redaction of the server's CredSSP messages (NLA).
        down: cx
            .record
            .then(|| Box::new(DownFilter(ServerFilter::new(selected))) as _),
        // Frames as they come: IronRDP's web client drops what follows the end of the
        // connection sequence in the same message ([`Down`] ends a frame there).
        coalesce: false,
        first_events: vec![first],
        ..cx.plain()
    };
    let (viewer, (down, sink), closure) = bridge.run(viewer, agent, opts, Content::Rdp).await?;
    let closure = if closure.end == Some(EndReason::ServiceClosed) && down.logon_refused() {
        let detail =
            "the workstation ended the connection during NLA: it refused the credentials typed";
        cx.audit(AuditKind::RdpFailed, detail.to_owned());
        Closure::ending_with(
            EndReason::RdpLogonFailed,
            close::RDP_LOGON_FAILED,
            close::RDP_LOGON_FAILED.reason,
        )
    } else {
        closure
    };
    cx.tasks
        .spawn(finish(down.io.into_inner(), sink.into_inner()));
    Some((viewer, closure))
}

/// The request, the connection, the pin, the answer to the viewer, the audit.
async fn open<VR: Source, VT: Sink>(
    cx: &Context,
    channel: AgentChannel,
    (rx, tx): &mut (VR, VT),
) -> Result<Connected<Stream>, RdpFailure> {
    let req = read_request(rx).await?;
    let (tenant, agent) = (cx.tenant_id, cx.agent.clone());
    let stored = cx
        .db
        .run(move |s| {
            Ok((
                s.rdp_credentials(tenant, &agent)?,
                s.rdp_pin(tenant, &agent)?,
            ))
        })
        .await;
    let (credentials, pinned) = stored.unwrap_or_else(|e| {
        tracing::error!(error = %e, "could not read the agent's RDP settings");
        (None, None)
    });
    let params = Params {
        view_only: cx.view_only,
        credentials,
        pinned,
        server_name: format!("{}/rdp", cx.agent),
    };
    let c = connect(req, channel.into_stream(), params).await?;
    if pinned.is_none() {
        let (agent, sha) = (cx.agent.clone(), c.fingerprint);
        let presented = hex::encode(sha);
        match cx
            .db
            .run(move |s| s.pin_rdp_certificate(tenant, &agent, &sha))
            .await
        {
            Ok(PinCheck::Pinned) => cx.audit(
                AuditKind::RdpCertificatePinned,
                format!("RDP server certificate sha256 {presented} pinned on first use"),
            ),
            Ok(PinCheck::Matches) => {}
            Ok(PinCheck::Differs(pinned)) => {
                return Err(RdpFailure::CertificateChanged { pinned, presented });
            }
            Err(e) => tracing::error!(error = %e, "could not pin the RDP certificate"),
        }
    }
    let answer = Frame::Binary(Bytes::from(c.answer.clone()));
    if tx.send(answer).await.is_err() || tx.flush().await.is_err() {
        return Err(RdpFailure::ViewerGone);
    }
    cx.audit(
        AuditKind::RdpConnected,
        format!(
            "{}; {}; server certificate sha256 {}",
            protocol::name(c.selected_protocol),
            c.credentials.describe(),
            hex::encode(c.fingerprint)
        ),
    );
    Ok(c)
}

/// Audits a failure, answers the viewer (the RDCleanPath error) and says how it closes.
async fn fail<VT: Sink>(cx: &Context, tx: &mut VT, f: &RdpFailure) -> Closure {
    tracing::info!(failure = %f, "rdp connection failed");
    let kind = match f {
        RdpFailure::ViewerGone => None,
        RdpFailure::CertificateChanged { .. } => Some(AuditKind::RdpCertificateChanged),
        _ => Some(AuditKind::RdpFailed),
    };
    if let Some(kind) = kind {
        cx.audit(kind, f.audit_text());
    }
    if let Some(answer) = f.answer() {
        let _ = tx.send(Frame::Binary(answer.into())).await;
        let _ = tx.flush().await;
    }
    f.closure()
}

/// Ends the TLS stream after the bridge: close_notify, then a bounded wait for the server's
/// end (discarding what still arrives), so that the agent closes the channel first.
async fn finish(rd: ReadHalf<Tls>, wr: WriteHalf<Tls>) {
    let mut tls = rd.unsplit(wr);
    let _ = tokio::time::timeout(FINISH_WAIT, async {
        let _ = tls.shutdown().await;
        let mut sink = [0u8; 4096];
        while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}
