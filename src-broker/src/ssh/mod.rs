//! The agents' SSH listener: accept loop, connection caps (global, and per source: rate,
//! pre-authentication share and lockout, checked in [`gate`] with the structures of
//! [`admission`] and [`guard`]), the PROXY protocol v2 header of trusted proxies, the
//! pre-authentication timeout, the algorithms offered, and the life of one agent connection
//! (presence from authentication to disconnect).
//!
//! The broker binds no port for tunnels: a remote forward only records (service name, placeholder
//! port), and a viewer's arrival opens a forwarded-tcpip channel on the agent's connection.

mod admission;
mod algorithms;
mod certs;
mod gate;
mod guard;
mod handler;
mod proxy_header;

pub(crate) use guard::Guard;

use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use russh::MethodKind;
use russh::server::Config as SshConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::Instrument as _;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::netaddr;
use crate::registry::{AgentConn, Registry};
use crate::session::Core;
use crate::shards::Shards;
use crate::store::{AuditKind, Db, NewEvent};

/// What the agents' listener needs.
pub(crate) struct Server {
    pub config: Arc<Config>,
    pub db: Db,
    pub registry: Arc<Registry>,
    /// The legacy flow matches forwards to pending sessions.
    pub core: Arc<Core>,
    pub metrics: Arc<Metrics>,
    pub host_key: russh::keys::PrivateKey,
    pub tasks: tokio_util::task::TaskTracker,
    pub shutdown: CancellationToken,
    /// Where agent connections run.
    pub shards: Arc<Shards>,
    /// Per-source limits before authentication and the coalesced audit of rejected keys.
    pub guard: Guard,
    /// This node's cluster: presence is written to the store for the other nodes.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    next_conn_id: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").finish_non_exhaustive()
    }
}

impl Server {
    #[expect(
        clippy::too_many_arguments,
        reason = "each part is shared with another listener"
    )]
    pub(crate) fn new(
        config: Arc<Config>,
        db: Db,
        registry: Arc<Registry>,
        core: Arc<Core>,
        metrics: Arc<Metrics>,
        host_key: russh::keys::PrivateKey,
        tasks: tokio_util::task::TaskTracker,
        shutdown: CancellationToken,
        shards: Arc<Shards>,
    ) -> Self {
        Self {
            guard: Guard::new(&config),
            config,
            db,
            registry,
            core,
            metrics,
            host_key,
            tasks,
            shutdown,
            shards,
            cluster: None,
            next_conn_id: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// This listener is one node of `cluster`.
    #[must_use]
    pub(crate) fn in_cluster(mut self, cluster: Option<Arc<crate::cluster::Cluster>>) -> Self {
        self.cluster = cluster;
        self
    }

    /// The listener's share of the broker's periodic upkeep (every `period_secs`): forgets
    /// sources that no longer limit anyone, and audits the counts of repeated rejected keys
    /// (queued to the audit writer: never waits).
    pub(crate) fn upkeep(&self, period_secs: u64) {
        self.guard.sweep();
        for ev in self.guard.take_counts(period_secs) {
            self.db.audit(ev);
        }
    }

    /// A fresh connection id.
    fn next_conn_id(&self) -> u64 {
        self.next_conn_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// The russh server configuration derived from ours.
pub(crate) fn ssh_config(state: &Server) -> Arc<SshConfig> {
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
        preferred: algorithms::preferred(),
        limits: algorithms::rekey_limits(),
        ..SshConfig::default()
    })
}

/// Accepts agents until `state.shutdown` is cancelled. One failed accept never ends the loop,
/// and no handshake work is done in it: a source over its limits is refused with one
/// non-blocking write, and a trusted proxy's header is read in the connection's own task.
pub(crate) async fn run(listener: TcpListener, state: Arc<Server>) {
    let config = ssh_config(&state);
    let slots = Arc::new(Semaphore::new(state.config.max_agent_connections));
    let mut acceptor = crate::accept::Acceptor::new(listener, "ssh");
    while let Some((stream, peer)) = acceptor.next(&state.shutdown).await {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many agent connections; refusing");
            continue;
        };
        let via_proxy = netaddr::is_trusted(&state.config.trusted_proxies, peer.ip());
        // Direct connections are judged here, before anything is spent on them; a trusted
        // proxy's are judged once its header names the client.
        let admitted = if via_proxy {
            None
        } else {
            match gate::admit(&state, peer) {
                Ok(slot) => Some(slot),
                Err(why) => {
                    gate::refuse(&stream, peer, why, &state);
                    continue;
                }
            }
        };
        let state2 = state.clone();
        let config = config.clone();
        // `agent` and `tenant_id` are filled in once the agent has authenticated.
        let span = tracing::info_span!(
            "agent",
            %peer,
            agent = tracing::field::Empty,
            tenant_id = tracing::field::Empty
        );
        // The connection moves to a data shard (see crate::shards): its socket is registered
        // with that shard's reactor, and the bridges of its sessions run there too.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "could not hand an agent connection over");
                continue;
            }
        };
        state.tasks.spawn_on(
            async move {
                match TcpStream::from_std(stream) {
                    Ok(stream) => {
                        let deadline = tokio::time::Instant::now() + state2.config.preauth_timeout;
                        let admitted = match admitted {
                            Some(slot) => Some((stream, peer, slot)),
                            None => {
                                Box::pin(gate::through_proxy(stream, peer, &state2, deadline)).await
                            }
                        };
                        if let Some((stream, client, slot)) = admitted {
                            serve(stream, client, slot, deadline, config, state2).await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not register an agent connection"),
                }
                drop(permit);
            }
            .instrument(span),
            state.shards.pick(),
        );
    }
}

/// Cuts a connection from outside russh (pre-auth timeout, revocation): once killed, the
/// connection's stream fails every read and write, so russh's session loop ends.
pub(crate) struct Killer(CancellationToken);

impl Killer {
    pub(crate) fn kill(&self) {
        self.0.cancel();
    }
}

/// A TCP stream that [`Killer`] can cut. Unlike a `dup` of the socket, it costs no descriptor.
struct KillableStream {
    inner: TcpStream,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl KillableStream {
    fn check(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        self.killed.as_mut().poll(cx).is_ready().then(|| {
            std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "connection cut by the broker",
            )
        })
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One agent connection from `peer` (the client, behind any trusted proxy), which holds
/// `preauth` until it authenticates; everything before authentication ends by `deadline`.
async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    preauth: admission::PreauthSlot,
    deadline: tokio::time::Instant,
    config: Arc<SshConfig>,
    state: Arc<Server>,
) {
    let _ = stream.set_nodelay(true);
    let token = CancellationToken::new();
    let stream = KillableStream {
        inner: stream,
        killed: Box::pin(token.clone().cancelled_owned()),
    };
    let killer = Arc::new(Killer(token));
    let (authed_tx, authed_rx) = oneshot::channel::<Arc<AgentConn>>();
    let handler = handler::AgentHandler::new(state.clone(), peer, killer.clone(), authed_tx);
    let preauth_timeout = state.config.preauth_timeout;

    // Boxed, so that the connection's task does not keep room for the handshake's state for
    // its whole life (see BENCHMARKS.md, "Idle agents").
    let started = Box::pin(tokio::time::timeout_at(
        deadline,
        russh::server::run_stream(config, stream, handler),
    ))
    .await;
    let mut running = match started {
        Ok(Ok(running)) => running,
        Ok(Err(e)) => return tracing::debug!(error = %e, "ssh handshake failed"),
        Err(_) => {
            killer.kill();
            return tracing::info!("no SSH version exchange within {preauth_timeout:?}; closed");
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
                return tracing::info!("not authenticated within {preauth_timeout:?}; closed");
            }
        },
        r = &mut running => return tracing::debug!(ok = r.is_ok(), "connection ended before authentication"),
    };
    // Authenticated: the connection no longer counts against its source's pre-auth share.
    drop(preauth);

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
        if let Some(cluster) = &state.cluster {
            cluster.agent_offline(&conn).await;
        }
        // The console shows offline agents with when they were last seen.
        let (tenant_id, agent, at) = (conn.tenant_id, conn.agent.clone(), crate::store::now_ms());
        if let Err(e) = state
            .db
            .run(move |s| s.set_last_seen(tenant_id, &agent, at))
            .await
        {
            tracing::warn!(error = %format!("{e:#}"), "could not note when an agent was last seen");
        }
        let mut ev = NewEvent::new(AuditKind::AgentDisconnected, "connection closed");
        ev.tenant_id = Some(conn.tenant_id);
        ev.agent = Some(conn.agent.to_string());
        ev.peer_addr = Some(peer.to_string());
        state.db.audit(ev);
    }
    match result {
        Some(Err(e)) => {
            tracing::info!(agent = %conn.agent, error = %e, "agent connection ended with an error")
        }
        _ => tracing::info!(agent = %conn.agent, "agent disconnected"),
    }
}
