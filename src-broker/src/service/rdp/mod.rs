//! The `rdp` service adapter: between "the agent's channel is open" and "bytes flow" for a
//! browser running IronRDP's web client.
//!
//! The viewer's first message is an RDCleanPath request ([`read_request`]). [`connect`] writes
//! its preconnection blob and X.224 Connection Request to the workstation's RDP server over the
//! channel, reads the Connection Confirm, and does TLS as a client, accepting the server's
//! certificate only through the agent's pin ([`tls`]). It returns the TLS stream, the
//! RDCleanPath answer for the viewer, and the viewer's [`ends::Filter`]: it injects stored
//! credentials into the Client Info PDU (TLS servers), drops input in view-only sessions, and
//! keeps passwords and CredSSP messages out of recordings (the server's side: [`DownFilter`]).
//! `adapter` runs it all in the session core ([`serve`]). With
//! NLA the CredSSP exchange passes through: the broker never runs CredSSP itself, so no
//! CredSSP crate is in its dependency graph. Failures are [`RdpFailure`]s, each with the
//! RDCleanPath answer, close code, end reason and audit text it calls for.
//!
//! Memory per connection: the request (at most 16 KiB), the filters' partial PDU (64 KiB).

mod adapter;
mod failure;
pub(crate) mod tls;

use std::time::Duration;

use passerelle_proto::rdp::client_info::Credentials;
use passerelle_proto::rdp::x224::{self, Negotiation, protocol};
use passerelle_proto::rdp::{ClientFilter, ClientOptions, ServerFilter, cleanpath};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_rustls::client::TlsStream;

use crate::ends::{self, EndError, Frame, Source};

pub(crate) use adapter::serve;
pub(crate) use failure::RdpFailure;
pub(crate) use passerelle_proto::rdp::cleanpath::Request;

/// How long the viewer has to send its RDCleanPath request.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the workstation has to answer the Connection Request.
pub(crate) const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the TLS handshake with the workstation may take.
pub(crate) const TLS_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the viewer's RDCleanPath request: the first binary frames, at most
/// [`cleanpath::MAX_REQUEST`] bytes within [`REQUEST_TIMEOUT`]. It carries the token
/// (`proxy_auth`), the preconnection blob and the X.224 Connection Request.
pub(crate) async fn read_request(viewer: &mut impl Source) -> Result<Request, RdpFailure> {
    read_request_der(viewer).await.map(|(req, _)| req)
}

/// An RDP viewer that left its token out of the URL presents it in its RDCleanPath request
/// (`proxy_auth`): reads that request, bounded like [`read_request`], before the session core
/// admits the viewer (so before any channel to the agent is opened). Gives the token and the
/// request's bytes, which the viewer's end delivers again to the adapter.
pub(crate) async fn token_in_request(
    viewer: &mut impl Source,
) -> Result<(String, bytes::Bytes), RdpFailure> {
    let (req, der) = read_request_der(viewer).await?;
    Ok((req.proxy_auth.unwrap_or_default(), der.into()))
}

/// Answers a viewer refused before the session core saw it: the RDCleanPath error, then the
/// [`Closure`] to close it with.
pub(crate) async fn refuse_early(
    tx: &mut impl ends::Sink,
    f: &RdpFailure,
) -> passerelle_proto::close::Closure {
    tracing::info!(failure = %f, "rdp viewer refused");
    if let Some(answer) = f.answer() {
        let _ = tx.send(Frame::Binary(answer.into())).await;
        let _ = tx.flush().await;
    }
    f.closure()
}

async fn read_request_der(viewer: &mut impl Source) -> Result<(Request, Vec<u8>), RdpFailure> {
    let reading = async {
        let mut buf = Vec::new();
        loop {
            match viewer.recv().await {
                Ok(Some(Frame::Binary(data))) => buf.extend_from_slice(&data),
                Ok(Some(Frame::Text(_))) => {
                    return Err(RdpFailure::BadRequest("a text frame".into()));
                }
                Ok(None) | Err(EndError::Closed) => return Err(RdpFailure::ViewerGone),
                Err(EndError::TooBig) => {
                    return Err(RdpFailure::BadRequest("a frame over the size limit".into()));
                }
                Err(e) => return Err(RdpFailure::BadRequest(e.to_string())),
            }
            match cleanpath::detect(&buf) {
                Ok(cleanpath::Progress::Complete(len)) if buf.len() > len => {
                    return Err(RdpFailure::BadRequest(
                        "bytes after the request, before the answer".into(),
                    ));
                }
                Ok(cleanpath::Progress::Complete(len)) if buf.len() == len => {
                    let req = cleanpath::parse_request(&buf)
                        .map_err(|e| RdpFailure::BadRequest(e.to_string()))?;
                    return Ok((req, buf));
                }
                Ok(_) => {}
                Err(e) => return Err(RdpFailure::BadRequest(e.to_string())),
            }
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, reading)
        .await
        .unwrap_or(Err(RdpFailure::RequestTimeout(REQUEST_TIMEOUT)))
}

/// What [`connect`] needs besides the request and the channel.
#[derive(Debug, Clone, Default)]
pub(crate) struct Params {
    /// Drop the viewer's input.
    pub(crate) view_only: bool,
    /// Stored credentials, injected when the server selects TLS.
    pub(crate) credentials: Option<Credentials>,
    /// SHA-256 of the certificate pinned for the agent; `None` on first use.
    pub(crate) pinned: Option<[u8; 32]>,
    /// What the RDCleanPath answer names as the server (the client shows it at most).
    pub(crate) server_name: String,
}

/// Where the credentials of a session came from, for the audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CredentialMode {
    /// Stored credentials injected into the Client Info PDU (TLS).
    Injected,
    /// Typed by the operator in the page, sent in the Client Info PDU (TLS).
    TypedTls,
    /// Typed by the operator in the page, sent through CredSSP (NLA).
    TypedNla,
}

impl CredentialMode {
    /// For the audit.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::Injected => "credentials injected by the broker (stored)",
            Self::TypedTls => "credentials typed by the operator (TLS)",
            Self::TypedNla => "credentials typed by the operator (NLA)",
        }
    }
}

/// The viewer-to-server filter, as the bridge takes it.
#[derive(Debug)]
pub(crate) struct UpFilter(pub(crate) ClientFilter);

impl ends::Filter for UpFilter {
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<ends::Fed, ends::FilterError> {
        let fed = self
            .0
            .feed(input, out)
            .map_err(|e| ends::FilterError(format!("RDP from the viewer: {e}")))?;
        Ok(ends::Fed {
            input_events: fed.input_events,
            record: fed.record,
        })
    }
}

/// The server-to-viewer filter, as the bridge takes it. When the server ends the connection
/// and [`ServerFilter::logon_refused`] holds, the session ends `rdp_logon_failed` (4055).
#[derive(Debug)]
pub(crate) struct DownFilter(pub(crate) ServerFilter);

impl ends::Filter for DownFilter {
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<ends::Fed, ends::FilterError> {
        let fed = self
            .0
            .feed(input, out)
            .map_err(|e| ends::FilterError(format!("RDP from the workstation: {e}")))?;
        Ok(ends::Fed {
            input_events: 0,
            record: fed.record,
        })
    }
}

/// A connected RDP server, ready to relay.
pub(crate) struct Connected<C> {
    /// Plaintext RDP from here on.
    pub(crate) tls: TlsStream<C>,
    /// The RDCleanPath answer to send the viewer before relaying.
    pub(crate) answer: Vec<u8>,
    /// SHA-256 of the leaf: what to pin on first use.
    pub(crate) fingerprint: [u8; 32],
    /// The security protocol the server selected (`x224::protocol`).
    pub(crate) selected_protocol: u32,
    pub(crate) credentials: CredentialMode,
    /// Filters the viewer's bytes (after TLS, towards the server).
    pub(crate) up: UpFilter,
}

impl<C> std::fmt::Debug for Connected<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected")
            .field("fingerprint", &hex::encode(self.fingerprint))
            .field("selected_protocol", &self.selected_protocol)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

/// Reads the TPKT that holds the server's Connection Confirm, bounded in size.
async fn read_confirm(channel: &mut (impl AsyncRead + Unpin)) -> Result<Vec<u8>, RdpFailure> {
    let gone =
        |_| RdpFailure::Handshake("closed the connection before its Connection Confirm".into());
    let mut pdu = vec![0; x224::TPKT_HEADER];
    channel.read_exact(&mut pdu).await.map_err(gone)?;
    let not_rdp = |_| {
        RdpFailure::Handshake("answered something other than an X.224 Connection Confirm".into())
    };
    let len = x224::tpkt_length(&pdu)
        .map_err(not_rdp)?
        .ok_or_else(|| RdpFailure::Handshake("sent a truncated TPKT header".into()))?;
    if len > x224::MAX_CONNECTION_CONFIRM {
        return Err(RdpFailure::Handshake(format!(
            "sent a Connection Confirm of {len} bytes (at most {} accepted)",
            x224::MAX_CONNECTION_CONFIRM
        )));
    }
    pdu.resize(len, 0);
    channel
        .read_exact(&mut pdu[x224::TPKT_HEADER..])
        .await
        .map_err(gone)?;
    Ok(pdu)
}

/// Connects the viewer's request to the workstation's RDP server over `channel` (see the
/// module documentation). Every step is bounded in time and size.
pub(crate) async fn connect<C>(
    req: Request,
    mut channel: C,
    params: Params,
) -> Result<Connected<C>, RdpFailure>
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
{
    const RELAYED: u32 = protocol::SSL | protocol::HYBRID | protocol::HYBRID_EX;
    let requested = req.connection.requested_protocols.unwrap_or(protocol::RDP);
    if requested & RELAYED == 0 {
        return Err(RdpFailure::BadRequest(
            "the viewer asked for standard RDP security only; the broker relays TLS and NLA".into(),
        ));
    }
    let confirm = tokio::time::timeout(CONFIRM_TIMEOUT, async {
        let request = async {
            if let Some(pcb) = &req.preconnection_blob {
                channel.write_all(pcb.as_bytes()).await?;
            }
            channel.write_all(&req.x224).await?;
            channel.flush().await
        };
        request.await.map_err(|_| {
            RdpFailure::Handshake("closed the connection before the Connection Request".into())
        })?;
        read_confirm(&mut channel).await
    })
    .await
    .map_err(|_| {
        RdpFailure::Handshake(format!(
            "sent no Connection Confirm within {}s",
            CONFIRM_TIMEOUT.as_secs()
        ))
    })??;
    let negotiation = x224::parse_connection_confirm(&confirm)
        .map_err(|e| RdpFailure::Handshake(format!("sent a malformed Connection Confirm ({e})")))?;
    let selected = match negotiation {
        Negotiation::Selected(p)
            if p & RELAYED == p && p.count_ones() == 1 && p & requested != 0 =>
        {
            p
        }
        Negotiation::Failure(code) => {
            return Err(RdpFailure::Negotiation {
                confirm,
                text: x224::failure_text(code).to_owned(),
            });
        }
        Negotiation::Legacy => {
            return Err(RdpFailure::Negotiation {
                confirm,
                text:
                    "the server offers standard RDP security only, which the broker does not relay"
                        .into(),
            });
        }
        Negotiation::Selected(p) => {
            return Err(RdpFailure::Negotiation {
                confirm,
                text: format!(
                    "the server selected {} (0x{p:x}), which the broker does not relay",
                    protocol::name(p)
                ),
            });
        }
    };
    let (tls, fingerprint) = tls::handshake(channel, params.pinned).await?;
    let chain: Vec<Vec<u8>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.to_vec()).collect())
        .unwrap_or_default();
    let answer = cleanpath::response(&confirm, &chain, &params.server_name)
        .map_err(|e| RdpFailure::Handshake(e.to_string()))?;
    let nla = protocol::is_nla(selected);
    let credentials = match (&params.credentials, nla) {
        (_, true) => CredentialMode::TypedNla,
        (Some(_), false) => CredentialMode::Injected,
        (None, false) => CredentialMode::TypedTls,
    };
    let up = UpFilter(ClientFilter::new(ClientOptions {
        view_only: params.view_only,
        selected_protocol: selected,
        inject: params.credentials,
        autologon: true,
    }));
    Ok(Connected {
        tls,
        answer,
        fingerprint,
        selected_protocol: selected,
        credentials,
        up,
    })
}

#[cfg(test)]
mod tests;
