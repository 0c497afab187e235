//! A launch token's watch on its session: the desktop helper holds one for each tunnel, so that
//! a session that ends (stopped, expired, its agent gone) leaves the helper's list at once, even
//! when no local connection is open. A watch opens no channel and spends nothing: only a launch
//! token (reusable while the session lasts) may watch, and a refusal is audited and counted
//! toward the address's lockout as a viewer's is.

use std::net::SocketAddr;
use std::sync::Arc;

use passerelle_proto::close::{self, Closure, EndReason};

use super::Core;
use super::live::{Actor, LiveSession};

/// An admitted watch.
#[derive(Debug)]
pub struct Watch {
    core: Arc<Core>,
    pub session: Arc<LiveSession>,
}

impl Core {
    /// Admits a watch of session `id` with launch token `token`.
    pub async fn watch_session(
        self: &Arc<Self>,
        id: &str,
        token: &str,
        peer: SocketAddr,
    ) -> Result<Watch, Closure> {
        self.not_locked_out(peer)?;
        let session = self
            .table
            .admit_watch(id, token)
            .map_err(|refused| self.token_refused(id, peer, &refused))?;
        Ok(Watch {
            core: self.clone(),
            session,
        })
    }
}

impl Watch {
    /// Waits until the session ends, or until its agent is gone (its connection closed
    /// without another taking its place, or it was offline when the watch began), which ends
    /// the session: nothing could reach the service any more, as a bridged connection would
    /// find. A legacy session's agent connects for the session itself: only its end counts.
    /// Says what the watcher is told.
    pub async fn ended(&self) -> Closure {
        let (core, session) = (&self.core, &self.session);
        let track_agent = session.legacy_port.is_none();
        loop {
            let conn = core.registry.get(session.tenant_id, &session.agent);
            if track_agent && conn.is_none() {
                core.end(session, EndReason::AgentOffline, &Actor::broker())
                    .await;
                return final_closure(session);
            }
            tokio::select! {
                () = session.ended.cancelled() => return final_closure(session),
                () = core.shutdown.cancelled() => return final_closure(session),
                () = async {
                    match &conn {
                        Some(c) if track_agent => c.gone.cancelled().await,
                        _ => std::future::pending().await,
                    }
                } => {
                    let now = core.registry.get(session.tenant_id, &session.agent);
                    let replaced = match (&conn, &now) {
                        (Some(old), Some(new)) => old.conn_id != new.conn_id,
                        _ => false,
                    };
                    if !replaced {
                        core.end(session, EndReason::AgentDisconnected, &Actor::broker())
                            .await;
                        return final_closure(session);
                    }
                }
            }
        }
    }
}

/// What a watcher of an ended session is told: the session's closure, except that a close which
/// to a viewer ends only its connection (the service closed it) says here that the session
/// ended, since nothing else will.
fn final_closure(session: &LiveSession) -> Closure {
    let closure = session.closure();
    if close::ends_only_the_connection(closure.code.code) {
        Closure::refusal(close::SESSION_ENDED, &closure.reason)
    } else {
        closure
    }
}
