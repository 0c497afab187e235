//! The agents' SSH listener: accept loop, connection cap, pre-authentication timeout, and the
//! life of one agent connection (presence from authentication to disconnect).
//!
//! The broker binds no port for tunnels: a remote forward only records (service name, placeholder
//! port), and a viewer's arrival opens a forwarded-tcpip channel on the agent's connection.

mod handler;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::MethodKind;
use russh::server::Config as SshConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};
use tracing::Instrument as _;

use crate::broker::State;
use crate::registry::AgentConn;
use crate::store::{AuditKind, NewEvent};

/// The russh server configuration derived from ours.
pub fn ssh_config(state: &State) -> Arc<SshConfig> {
    let c = &state.config;
    Arc::new(SshConfig {
        server_id: russh::SshId::Standard(
            format!("SSH-2.0-Passerelle_{}", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods: russh::MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::from_millis(0)),
        keys: vec![state.host_key.clone()],
        inactivity_timeout: None,
        keepalive_interval: Some(c.keepalive_interval),
        keepalive_max: c.keepalive_max,
        nodelay: true,
        max_auth_attempts: 6,
        // Larger windows and packets than russh's defaults move bulk data with fewer round trips.
        window_size: 4 << 20,
        maximum_packet_size: 64 * 1024,
        channel_buffer_size: 64,
        ..SshConfig::default()
    })
}

/// Accepts agents until `state.shutdown` is cancelled. One failed accept never ends the loop.
pub async fn run(listener: TcpListener, state: Arc<State>) {
    let config = ssh_config(&state);
    let slots = Arc::new(Semaphore::new(state.config.max_agent_connections));
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = state.shutdown.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(5);
                pair
            }
            Err(e) => {
                tracing::warn!(error = %e, "ssh accept failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many agent connections; refusing");
            continue;
        };
        let state2 = state.clone();
        let config = config.clone();
        let span = tracing::info_span!("agent", %peer);
        state.tasks.spawn(
            async move {
                serve(stream, peer, config, state2).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// A socket clone used to cut a connection from outside russh (pre-auth timeout, revocation).
pub(crate) struct Killer(std::net::TcpStream);

impl Killer {
    pub(crate) fn kill(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

async fn serve(stream: TcpStream, peer: SocketAddr, config: Arc<SshConfig>, state: Arc<State>) {
    let split = stream.into_std().and_then(|s| Ok((s.try_clone()?, s)));
    let (clone, std_stream) = match split {
        Ok(pair) => pair,
        Err(e) => return tracing::debug!(error = %e, "could not prepare socket"),
    };
    let Ok(stream) = TcpStream::from_std(std_stream) else {
        return;
    };
    let killer = Arc::new(Killer(clone));
    let (authed_tx, authed_rx) = oneshot::channel::<Arc<AgentConn>>();
    let handler = handler::AgentHandler::new(state.clone(), peer, killer.clone(), authed_tx);
    let preauth = state.config.preauth_timeout;
    let deadline = tokio::time::Instant::now() + preauth;

    let started =
        tokio::time::timeout_at(deadline, russh::server::run_stream(config, stream, handler)).await;
    let mut running = match started {
        Ok(Ok(running)) => running,
        Ok(Err(e)) => return tracing::debug!(error = %e, "ssh handshake failed"),
        Err(_) => {
            killer.kill();
            return tracing::info!("no SSH version exchange within {preauth:?}; closed");
        }
    };
    let conn = tokio::select! {
        r = tokio::time::timeout_at(deadline, authed_rx) => match r {
            Ok(Ok(conn)) => conn,
            Ok(Err(_)) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), &mut running).await;
                return tracing::debug!("connection ended before authentication");
            }
            Err(_) => {
                killer.kill();
                let _ = tokio::time::timeout(Duration::from_secs(1), &mut running).await;
                return tracing::info!("not authenticated within {preauth:?}; closed");
            }
        },
        r = &mut running => return tracing::debug!(ok = r.is_ok(), "connection ended before authentication"),
    };

    let result = tokio::select! {
        r = &mut running => Some(r),
        () = conn.gone.cancelled() => None,
        () = state.shutdown.cancelled() => {
            conn.disconnect("broker shutting down");
            None
        }
    };
    if result.is_none() {
        // Disconnected on purpose: give russh a moment to send the reason, then cut.
        if tokio::time::timeout(Duration::from_millis(500), &mut running)
            .await
            .is_err()
        {
            killer.kill();
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut running).await;
        }
    }
    conn.gone.cancel();
    if state.registry.remove(&conn) {
        let mut ev = NewEvent::new(AuditKind::AgentDisconnected, "connection closed");
        ev.tenant_id = Some(conn.tenant_id);
        ev.agent = Some(conn.agent.to_string());
        ev.peer_addr = Some(peer.to_string());
        state.store.audit(ev);
    }
    match result {
        Some(Err(e)) => {
            tracing::info!(agent = %conn.agent, error = %e, "agent connection ended with an error")
        }
        _ => tracing::info!(agent = %conn.agent, "agent disconnected"),
    }
}
