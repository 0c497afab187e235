//! Service adapters: what happens between "the channel to the workstation's service is open"
//! and "bytes flow". `raw` does nothing; `vnc` terminates the RFB security handshake on both
//! sides (the stored password answers the server's challenge) and frames the viewer's messages
//! (view-only, replayable recordings); `rdp` answers IronRDP's RDCleanPath request, does TLS
//! with the workstation's RDP server (certificate pinned per agent) and filters the plaintext
//! RDP (credential injection, view-only, redacted recordings). An adapter knows the session only through its
//! [`Context`], and hands both ends to the session core's [`Bridge`] once its handshake is done;
//! a new service is a new variant here and a module beside `vnc`, not a change of the core.

pub(crate) mod channel;
pub(crate) mod rdp;
pub(crate) mod vnc;

use std::future::Future;
use std::net::SocketAddr;

use passerelle_proto::close::Closure;
use passerelle_proto::ids::{AgentId, ServiceKind, ServiceName};
use passerelle_proto::recording::Content;
use tokio_util::task::TaskTracker;

use crate::bridge::Options;
use crate::ends::{Sink, Source};
use crate::registry::AgentChannel;
use crate::store::{AuditKind, Db, NewEvent, TenantId};

/// What the broker does on a viewer's connection to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    /// The service's bytes as they are (`raw_ws_url`, and services the broker does not speak).
    Raw,
    /// RFB with the security handshake done by the broker.
    Vnc,
    /// RDP for IronRDP's web client: RDCleanPath, TLS by the broker, filtered plaintext RDP.
    Rdp,
}

impl Service {
    /// The adapter for a session's service on an endpoint (`raw` asks for the bytes as they
    /// are, whatever the service).
    pub(crate) fn of(name: &ServiceName, raw: bool) -> Self {
        match name.kind() {
            _ if raw => Self::Raw,
            Some(ServiceKind::Vnc) => Self::Vnc,
            Some(ServiceKind::Rdp) => Self::Rdp,
            Some(ServiceKind::Ssh) | None => Self::Raw,
        }
    }
}

/// Whether a recorded session of this service can only be recorded replayably on its viewer
/// endpoint (its raw stream would escape the recording's form).
pub(crate) fn replayable(name: &ServiceName) -> bool {
    name.kind() == Some(ServiceKind::Vnc)
}

/// What an adapter may know of the session and do for it.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub db: Db,
    pub tasks: TaskTracker,
    pub tenant_id: TenantId,
    pub agent: AgentId,
    pub session_id: String,
    pub operator: String,
    pub view_only: bool,
    pub record: bool,
    pub peer: SocketAddr,
    /// The bridge's defaults (buffer and stall limits).
    pub bridge: (usize, std::time::Duration),
}

impl Context {
    /// Bridge options with the session's limits and nothing else.
    pub(crate) fn plain(&self) -> Options {
        Options::plain(self.bridge.0, self.bridge.1)
    }

    /// Audits something that happened on this connection.
    pub(crate) fn audit(&self, kind: AuditKind, detail: String) {
        let mut ev = NewEvent::new(kind, detail);
        ev.tenant_id = Some(self.tenant_id);
        ev.agent = Some(self.agent.to_string());
        ev.session = Some(self.session_id.clone());
        ev.operator = Some(self.operator.clone());
        ev.peer_addr = Some(self.peer.to_string());
        self.db.audit(ev);
    }
}

/// A finished connection: both ends back with why, or `None` when the broker went away with
/// them.
pub(crate) type Done<VR, VT, AR, AT> = Option<((VR, VT), (AR, AT), Closure)>;

/// The session core's side of a connection: records it and runs the bridge (on the agent
/// connection's data thread) once the adapter is done.
pub(crate) trait Bridge: Send {
    /// Bridges `viewer` and `agent` until the connection ends; gives both ends back with why,
    /// or `None` when the broker went away with them.
    fn run<VR, VT, AR, AT>(
        self,
        viewer: (VR, VT),
        agent: (AR, AT),
        opts: Options,
        content: Content,
    ) -> impl Future<Output = Done<VR, VT, AR, AT>> + Send
    where
        VR: Source + 'static,
        VT: Sink + 'static,
        AR: Source + 'static,
        AT: Sink + 'static;
}

impl Service {
    /// Serves one viewer connection over `channel`: the adapter's handshake, then the bridge.
    /// `None` when the broker went away with the viewer's end.
    pub(crate) async fn serve<VR, VT>(
        self,
        cx: &Context,
        channel: AgentChannel,
        mut viewer: (VR, VT),
        bridge: impl Bridge,
    ) -> Option<((VR, VT), Closure)>
    where
        VR: Source + 'static,
        VT: Sink + 'static,
    {
        if self == Self::Rdp {
            return rdp::serve(cx, channel, viewer, bridge).await;
        }
        let mut agent = channel::split(channel);
        let prepared = match self {
            Self::Raw | Self::Rdp => Ok((cx.plain(), Content::Metadata)),
            Self::Vnc => vnc::handshake(cx, &mut agent, &mut viewer)
                .await
                .map(|opts| (opts, Content::Rfb)),
        };
        let (viewer, agent, closure) = match prepared {
            Ok((opts, content)) => bridge.run(viewer, agent, opts, content).await?,
            Err(closure) => (viewer, agent, closure),
        };
        cx.tasks.spawn(channel::finish(agent));
        Some((viewer, closure))
    }
}
