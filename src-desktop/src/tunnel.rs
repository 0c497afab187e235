//! [`Tunnel`]: a local port on `127.0.0.1` whose every connection is bridged to one broker
//! session, with live statistics, events, and an end that says why.
//!
//! Starting a tunnel first checks that the broker answers and that its certificate is the
//! expected one (without spending the session: a `GET /healthz`), so that a wrong pin or an
//! unreachable broker is reported before anything listens. The launch token then opens one
//! WebSocket per local connection for as long as the session lasts. The tunnel stops listening
//! when the broker ends the session, refuses the token, or cannot be reached any more. By
//! default only the first local connection is bridged: any later one is closed at once (another
//! user or program on this machine cannot ride the session), and the tunnel ends with that
//! first connection. With [`LocalConnections::Any`], one connection that merely ends (the client
//! disconnected, the service closed) leaves it open, for native clients that reconnect.
//!
//! While it listens, the tunnel keeps a watch on the session (`/ws/sessions/{id}/watch`, with
//! the launch token): the broker closes it when the session ends (stopped, expired, its agent
//! gone), and the tunnel ends then too, with or without a local connection open. A broker
//! without watches, or one that refuses the first watch, leaves the tunnel as it was (the
//! connections report token refusals); a watch that drops is opened again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use passerelle_proto::launch::{LaunchUrl, WATCH_ADMITTED};
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

pub use crate::config::LocalConnections;
use crate::connect::Connector;
use crate::error::{CloseMeaning, SessionEnd, classify_close};
use crate::pump::{self, Counters, PumpEnd};
use crate::{Endpoint, Error};

/// How a tunnel is opened.
#[derive(Debug, Clone)]
pub struct TunnelOptions {
    /// Where to listen; the port is normally 0 (the OS picks one). Keep it on loopback.
    pub listen: SocketAddr,
    /// Bound on each step of a connection to the broker (TCP, TLS, HTTP upgrade).
    pub connect_timeout: Duration,
    /// At most this many local connections at once; more are refused at accept.
    pub max_connections: usize,
    /// Extra trusted roots for brokers without a pinned fingerprint (private CAs).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Only the first local connection, or any.
    pub local_connections: LocalConnections,
}

impl Default for TunnelOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            connect_timeout: Duration::from_secs(10),
            max_connections: 32,
            extra_roots: Vec::new(),
            local_connections: LocalConnections::First,
        }
    }
}

/// Why a tunnel stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelEnd {
    /// Closed from this side ([`Tunnel::close`], Ctrl-C, the app's close button).
    Closed,
    /// The broker ended the session.
    SessionEnded(SessionEnd),
    /// The tunnel failed: token refused, broker unreachable or gone, TLS.
    Failed(Error),
}

impl std::fmt::Display for TunnelEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed => f.write_str("tunnel closed"),
            Self::SessionEnded(end) => write!(f, "the broker ended the session: {end}"),
            Self::Failed(e) => e.fmt(f),
        }
    }
}

/// Something that happened in a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelEvent {
    /// A local client connected and its WebSocket to the broker is open.
    Connected {
        /// Connection number within the tunnel, from 1.
        id: u64,
        /// The local client's address.
        peer: SocketAddr,
    },
    /// A local connection ended.
    Disconnected {
        /// Connection number.
        id: u64,
        /// Bytes it moved from the client to the broker.
        bytes_up: u64,
        /// Bytes it moved from the broker to the client.
        bytes_down: u64,
        /// The broker's close code and reason, when it closed.
        close: Option<(u16, String)>,
    },
    /// A local connection was refused: only the first one is bridged
    /// ([`LocalConnections::First`]).
    Refused {
        /// The local client's address.
        peer: SocketAddr,
    },
    /// The tunnel stopped listening.
    Ended(TunnelEnd),
}

/// A snapshot of a tunnel's statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// When the tunnel started listening.
    pub started_at: SystemTime,
    /// Bytes from local clients to the broker.
    pub bytes_up: u64,
    /// Bytes from the broker to local clients.
    pub bytes_down: u64,
    /// Local connections accepted so far.
    pub connections: u64,
    /// Local connections open now.
    pub active: usize,
}

/// What the accept loop and the connection tasks share.
struct Shared {
    connector: Connector,
    totals: Counters,
    connections: AtomicU64,
    active: AtomicUsize,
    /// Whether a connection was ever bridged (see [`classify_close`]).
    bridged: AtomicBool,
    /// Whether the broker admitted the session's watch (see the module's header).
    watched: AtomicBool,
    events: broadcast::Sender<TunnelEvent>,
    /// The first fatal outcome of a connection stops the tunnel.
    fatal: mpsc::UnboundedSender<TunnelEnd>,
    /// Whether only the first local connection is bridged (the tunnel ends with it).
    first_only: bool,
    /// Cancelled to close every connection.
    conns_cancel: CancellationToken,
}

/// A running tunnel. Dropping it closes it (without waiting).
pub struct Tunnel {
    local_addr: SocketAddr,
    launch: LaunchUrl,
    started_at: SystemTime,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    end: watch::Receiver<Option<TunnelEnd>>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("local_addr", &self.local_addr)
            .field("launch", &self.launch)
            .finish_non_exhaustive()
    }
}

impl Tunnel {
    /// Checks the broker (reachability, certificate), then listens and bridges.
    pub async fn start(launch: LaunchUrl, opts: TunnelOptions) -> Result<Tunnel, Error> {
        let endpoint = Endpoint::from_launch(&launch)?;
        let tls = crate::tls::client_config(endpoint.fingerprint.as_deref(), &opts.extra_roots)?;
        let connector = Connector::new(endpoint, tls, opts.connect_timeout)?;
        connector.probe().await?;
        let listener = TcpListener::bind(opts.listen)
            .await
            .map_err(|e| Error::Listen {
                addr: opts.listen.to_string(),
                detail: e.to_string(),
            })?;
        let local_addr = listener.local_addr().map_err(|e| Error::Listen {
            addr: opts.listen.to_string(),
            detail: e.to_string(),
        })?;
        let (events, _) = broadcast::channel(256);
        let (fatal_tx, fatal_rx) = mpsc::unbounded_channel();
        let (end_tx, end) = watch::channel(None);
        let shared = Arc::new(Shared {
            connector,
            totals: Counters::default(),
            connections: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            bridged: AtomicBool::new(false),
            watched: AtomicBool::new(false),
            events,
            fatal: fatal_tx,
            first_only: opts.local_connections == LocalConnections::First,
            conns_cancel: CancellationToken::new(),
        });
        let cancel = CancellationToken::new();
        let agent = launch.agent.as_ref().map_or("-", |a| a.as_str());
        let span = tracing::info_span!("tunnel", session = %launch.session, %agent, service = %launch.service, %local_addr);
        tracing::info!(parent: &span, broker = %launch.broker, "tunnel listening");
        let accept_task = tokio::spawn(
            accept_loop(
                listener,
                shared.clone(),
                cancel.clone(),
                fatal_rx,
                end_tx,
                opts.max_connections,
            )
            .instrument(span),
        );
        Ok(Tunnel {
            local_addr,
            launch,
            started_at: SystemTime::now(),
            shared,
            cancel,
            end,
            accept_task,
        })
    }

    /// The local address clients connect to, `127.0.0.1:PORT`.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The launch URL this tunnel serves (its `Debug` hides the token).
    pub fn launch(&self) -> &LaunchUrl {
        &self.launch
    }

    /// Current statistics.
    pub fn stats(&self) -> Stats {
        Stats {
            started_at: self.started_at,
            bytes_up: self.shared.totals.up.load(Ordering::Relaxed),
            bytes_down: self.shared.totals.down.load(Ordering::Relaxed),
            connections: self.shared.connections.load(Ordering::Relaxed),
            active: self.shared.active.load(Ordering::Relaxed),
        }
    }

    /// Whether the broker keeps a watch on the session for this tunnel, so that its end reaches
    /// the tunnel with no connection open (false until the broker admitted it, and with a
    /// broker without watches).
    pub fn watched(&self) -> bool {
        self.shared.watched.load(Ordering::Relaxed)
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<TunnelEvent> {
        self.shared.events.subscribe()
    }

    /// Why the tunnel stopped, once it has.
    pub fn end(&self) -> Option<TunnelEnd> {
        self.end.borrow().clone()
    }

    /// Waits until the tunnel stops (it has stopped listening when this returns).
    pub async fn wait(&self) -> TunnelEnd {
        let mut end = self.end.clone();
        match end.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or(TunnelEnd::Closed),
            Err(_) => TunnelEnd::Closed,
        }
    }

    /// Asks the tunnel to stop: no more listening, every connection closed.
    pub fn close(&self) {
        self.cancel.cancel();
    }

    /// Closes the tunnel and waits (bounded) until its connections have closed.
    pub async fn shutdown(self) -> TunnelEnd {
        self.close();
        self.wait().await
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.shared.conns_cancel.cancel();
        if self.end.borrow().is_none() {
            self.accept_task.abort();
        }
    }
}

/// How long closing connections get to send their close frames when the tunnel stops.
const DRAIN: Duration = Duration::from_secs(3);

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    mut fatal: mpsc::UnboundedReceiver<TunnelEnd>,
    end_tx: watch::Sender<Option<TunnelEnd>>,
    max_connections: usize,
) {
    let tracker = TaskTracker::new();
    let watching = watch(&shared.connector, &shared.watched);
    tokio::pin!(watching);
    let mut backoff = Duration::from_millis(10);
    let end = loop {
        tokio::select! {
            () = cancel.cancelled() => break TunnelEnd::Closed,
            Some(end) = fatal.recv() => break end,
            end = &mut watching => {
                // The broker closes bridged connections itself, with the same news: let them
                // hear it from their own socket before they are cut.
                tracker.close();
                let _ = tokio::time::timeout(WATCH_GRACE, tracker.wait()).await;
                break end;
            }
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    backoff = Duration::from_millis(10);
                    if shared.first_only && shared.connections.load(Ordering::Relaxed) > 0 {
                        tracing::warn!(%peer, "a second local connection was refused: only the first is bridged (local_connections = \"first\")");
                        let _ = shared.events.send(TunnelEvent::Refused { peer });
                        continue;
                    }
                    if shared.active.load(Ordering::Relaxed) >= max_connections {
                        tracing::warn!(%peer, max_connections, "too many local connections; refused");
                        continue;
                    }
                    let id = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
                    shared.active.fetch_add(1, Ordering::Relaxed);
                    let span = tracing::info_span!("conn", id, %peer);
                    tracker.spawn(serve(socket, peer, id, shared.clone()).instrument(span));
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait and go on, never die.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            },
        }
    };
    drop(listener);
    tracing::info!(%end, "tunnel stopped listening");
    shared.conns_cancel.cancel();
    tracker.close();
    if tokio::time::timeout(DRAIN, tracker.wait()).await.is_err() {
        tracing::debug!("connections did not close in time");
    }
    end_tx.send_replace(Some(end.clone()));
    let _ = shared.events.send(TunnelEvent::Ended(end));
}

/// How long open connections get to hear a session's end from the broker themselves once the
/// watch has told it.
const WATCH_GRACE: Duration = Duration::from_secs(1);

/// The longest wait between two attempts to open the session's watch again.
const WATCH_RETRY_MAX: Duration = Duration::from_secs(30);

/// Holds the session's watch; returns when the broker says the session ended. Pends forever
/// when the broker has no watch for this token (see the module's header).
async fn watch(connector: &Connector, watched: &AtomicBool) -> TunnelEnd {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    let mut admitted = false;
    let mut backoff = Duration::from_secs(1);
    loop {
        let closed = match connector.open_watch().await {
            Ok(mut ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.as_str() == WATCH_ADMITTED => {
                        admitted = true;
                        watched.store(true, Ordering::Relaxed);
                        backoff = Duration::from_secs(1);
                    }
                    Some(Ok(Message::Close(Some(frame)))) => {
                        break Some((u16::from(frame.code), frame.reason.to_string()));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break None,
                }
            },
            Err(Error::Protocol(e)) if !admitted => {
                tracing::info!(error = %e, "the broker offers no watch for this tunnel");
                return std::future::pending().await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not open the session's watch");
                None
            }
        };
        if let Some((code, reason)) = closed {
            if !admitted {
                tracing::info!(code, %reason, "the broker keeps no watch for this tunnel");
                return std::future::pending().await;
            }
            if let CloseMeaning::SessionEnded(end) = classify_close(code, &reason, true) {
                tracing::info!(code, %reason, "the broker ended the session (watch)");
                return TunnelEnd::SessionEnded(end);
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(WATCH_RETRY_MAX);
    }
}

async fn serve(socket: TcpStream, peer: SocketAddr, id: u64, shared: Arc<Shared>) {
    let _ = socket.set_nodelay(true);
    let opened = tokio::select! {
        r = shared.connector.open() => r,
        () = shared.conns_cancel.cancelled() => {
            shared.active.fetch_sub(1, Ordering::Relaxed);
            return;
        }
    };
    let ws = match opened {
        Ok(ws) => ws,
        Err(e) => {
            tracing::info!(error = %e, "could not open the session's stream");
            shared.active.fetch_sub(1, Ordering::Relaxed);
            let _ = shared.fatal.send(TunnelEnd::Failed(e));
            return;
        }
    };
    let _ = shared.events.send(TunnelEvent::Connected { id, peer });
    let (end, moved) = pump::run(socket, ws, &shared.totals, &shared.conns_cancel).await;
    shared.active.fetch_sub(1, Ordering::Relaxed);
    if moved.down > 0 {
        shared.bridged.store(true, Ordering::Relaxed);
    }
    let close = match &end {
        PumpEnd::BrokerClosed { code, reason } => Some((*code, reason.clone())),
        _ => None,
    };
    let _ = shared.events.send(TunnelEvent::Disconnected {
        id,
        bytes_up: moved.up,
        bytes_down: moved.down,
        close,
    });
    match end {
        PumpEnd::LocalClosed => tracing::debug!(?moved, "connection closed"),
        PumpEnd::BrokerGone(detail) => {
            tracing::info!(%detail, "the broker's connection dropped");
            let _ = shared
                .fatal
                .send(TunnelEnd::Failed(Error::BrokerGone(detail)));
        }
        PumpEnd::BrokerClosed { code, reason } => {
            let bridged = shared.bridged.load(Ordering::Relaxed);
            match classify_close(code, &reason, bridged) {
                CloseMeaning::Connection => {
                    shared.bridged.store(true, Ordering::Relaxed);
                    tracing::info!(code, %reason, "the broker closed this connection");
                }
                CloseMeaning::Refused(e) => {
                    tracing::info!(code, %reason, "token refused");
                    let _ = shared.fatal.send(TunnelEnd::Failed(e));
                }
                CloseMeaning::SessionEnded(end) => {
                    tracing::info!(code, %reason, "the broker ended the session");
                    let _ = shared.fatal.send(TunnelEnd::SessionEnded(end));
                }
            }
        }
    }
    if shared.first_only {
        // Nothing else may connect: the tunnel's work is done (unless the broker's end above
        // came first, which then wins).
        tracing::info!(
            "the local connection ended; closing the tunnel (local_connections = \"first\")"
        );
        let _ = shared.fatal.send(TunnelEnd::Closed);
    }
}
