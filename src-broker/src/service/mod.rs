//! Service adapters: what happens between "the channel to the workstation's service is open"
//! and "bytes flow". `raw` does nothing; `vnc` terminates the RFB security handshake on both
//! sides (the stored password answers the server's challenge) and frames the viewer's messages
//! (view-only, replayable recordings); `ssh` makes the broker the SSH client of the
//! workstation's sshd and bridges the viewer to a terminal (the browser terminal); `rdp` answers
//! IronRDP's RDCleanPath request, does TLS with the workstation's RDP server (certificate pinned
//! per agent) and filters the plaintext RDP (credential injection, view-only, redacted
//! recordings). An adapter knows the session only through its [`Context`], and hands both ends
//! to the session core's [`Bridge`] once its handshake is done; a new service is a new variant
//! here and a module beside `vnc`, not a change of the core.

pub(crate) mod channel;
pub(crate) mod rdp;
pub(crate) mod ssh;
pub(crate) mod vnc;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use passerelle_proto::close::{Closure, EndReason};
use passerelle_proto::ids::{AgentId, ServiceKind, ServiceName};
use passerelle_proto::recording::Content;
use tokio_util::sync::CancellationToken;
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
    /// A terminal: the broker logs in to the workstation's sshd, the viewer gets the shell.
    Ssh,
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
            Some(ServiceKind::Ssh) => Self::Ssh,
            Some(ServiceKind::Rdp) => Self::Rdp,
            None => Self::Raw,
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
    /// The login name the session asked for (`ssh`).
    pub ssh_user: Option<String>,
    /// Interrupts a handshake when the connection must stop.
    pub stop: Stop,
}

/// Says when a connection must stop before its bridge runs, and what its viewer is told then:
/// the session ended (stopped, expired...), or the agent's connection went away. A handshake
/// that waits for the workstation or for a person (a password typed in the page) ends at once.
#[derive(Clone)]
pub(crate) struct Stop {
    /// Cancelled when the session ends.
    pub ended: CancellationToken,
    /// Cancelled when the agent's connection goes away.
    pub agent_gone: CancellationToken,
    /// What the viewer is told once the session has ended.
    pub why: Arc<dyn Fn() -> Closure + Send + Sync>,
}

impl std::fmt::Debug for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stop")
            .field("ended", &self.ended.is_cancelled())
            .field("agent_gone", &self.agent_gone.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Stop {
    /// Resolves when the connection must stop, with why.
    pub(crate) async fn wait(&self) -> Closure {
        tokio::select! {
            () = self.ended.cancelled() => (self.why)(),
            () = self.agent_gone.cancelled() => Closure::ending(EndReason::AgentDisconnected),
        }
    }
}

impl Context {
    /// Bridge options with the session's limits and nothing else.
    pub(crate) fn plain(&self) -> Options {
        Options::plain(self.bridge.0, self.bridge.1)
    }

    /// Runs a handshake unless the connection must stop first ([`Stop`]).
    pub(crate) async fn interruptible<T>(
        &self,
        handshake: impl Future<Output = Result<T, Closure>>,
    ) -> Result<T, Closure> {
        tokio::select! {
            done = handshake => done,
            why = self.stop.wait() => Err(why),
        }
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
        match self {
            Self::Ssh => return ssh::serve(cx, channel, viewer, bridge).await,
            Self::Rdp => return rdp::serve(cx, channel, viewer, bridge).await,
            Self::Raw | Self::Vnc => {}
        }
        let mut agent = channel::split(channel);
        let prepared = match self {
            Self::Vnc => cx
                .interruptible(vnc::handshake(cx, &mut agent, &mut viewer))
                .await
                .map(|opts| (opts, Content::Rfb)),
            Self::Raw | Self::Ssh | Self::Rdp => Ok((cx.plain(), Content::Metadata)),
        };
        let (viewer, agent, closure) = match prepared {
            Ok((opts, content)) => bridge.run(viewer, agent, opts, content).await?,
            Err(closure) => (viewer, agent, closure),
        };
        cx.tasks.spawn(channel::finish(agent));
        Some((viewer, closure))
    }
}

#[cfg(test)]
mod tests {
    use passerelle_proto::close;

    use super::*;

    fn context(dir: &std::path::Path) -> Context {
        let store = crate::store::Store::open(dir).expect("store");
        Context {
            db: Db::new(Arc::new(store)).expect("db"),
            tasks: TaskTracker::new(),
            tenant_id: 1,
            agent: AgentId::new("pc1").expect("id"),
            session_id: "s".into(),
            operator: "alice".into(),
            view_only: false,
            record: false,
            peer: "127.0.0.1:1".parse().expect("addr"),
            bridge: (1 << 20, std::time::Duration::from_secs(30)),
            ssh_user: None,
            stop: Stop {
                ended: CancellationToken::new(),
                agent_gone: CancellationToken::new(),
                why: Arc::new(|| Closure::refusal(close::STOPPED, "session stopped by carol")),
            },
        }
    }

    #[tokio::test]
    async fn a_handshake_waiting_for_someone_stops_with_the_session_or_the_agent() {
        let dir = tempfile::tempdir().expect("dir");
        let cx = context(dir.path());
        let done = cx.interruptible(async { Ok::<_, Closure>(7) }).await;
        assert_eq!(done, Ok(7), "a handshake that finishes is not interrupted");
        let waiting = std::future::pending::<Result<(), Closure>>;
        cx.stop.ended.cancel();
        let stopped = cx.interruptible(waiting()).await.unwrap_err();
        assert_eq!(
            stopped.reason, "session stopped by carol",
            "the session's why"
        );
        let cx = context(dir.path());
        cx.stop.agent_gone.cancel();
        let gone = cx.interruptible(waiting()).await.unwrap_err();
        assert_eq!(gone, Closure::ending(EndReason::AgentDisconnected));
    }
}
