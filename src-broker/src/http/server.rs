//! The HTTP(S) listener: our own accept loop, so that every step before a request reaches the
//! router is bounded.
//!
//! - At most `http_max_connections` connections at once, and `http_max_connections_per_ip`
//!   from one address (IPv6: one /64); a connection over either cap is accepted and closed at
//!   once, and counted in `/metrics`. The broker keeps serving everyone else.
//! - TLS (rustls) handshakes must finish within `tls_handshake_timeout`.
//! - HTTP/1.1 only (the certificate's ALPN says so); a request header must arrive in full within
//!   `http_header_timeout`, which also bounds how long a kept-alive connection may sit idle.
//! - WebSocket upgrades leave hyper with their connection (and its slot: an upgraded connection
//!   still counts until the viewer task drops it).
//! - Shutdown: each connection is told to finish its request and close, then cut after a grace.
//! - Behind a reverse proxy listed in `trusted_proxies`, each request's client address (what
//!   lockouts and the audit see) comes from `X-Forwarded-For` (see [`crate::netaddr`]), and the
//!   per-address cap does not apply to the proxy's own connections.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;
use tracing::Instrument as _;

use super::App;
use crate::metrics::Metrics;
use crate::netaddr;
use crate::shards::{MovableStream, MoveHandle};
use crate::throttle::client_key;

/// How long a connection may take to finish its request once shutdown has begun.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Open connections per client address.
#[derive(Debug, Default)]
struct PerIp {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection's place in [`PerIp`]; gives it back on drop.
struct IpSlot {
    per_ip: Arc<PerIp>,
    key: IpAddr,
}

impl PerIp {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let key = client_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            per_ip: self.clone(),
            key,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.per_ip.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// What a connection holds while it is open; dropping it frees its slots.
struct Slots {
    _global: OwnedSemaphorePermit,
    _ip: IpSlot,
    metrics: Arc<Metrics>,
}

impl Drop for Slots {
    fn drop(&mut self) {
        self.metrics
            .http_connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves until `state.shutdown` is cancelled. One failed accept never ends the loop.
pub(crate) async fn serve(
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: App,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return tracing::error!(error = %e, "the HTTP listener could not start"),
    };
    let router = super::router(state.clone());
    let tls = tls.map(TlsAcceptor::from);
    let global = Arc::new(Semaphore::new(state.config.http_max_connections));
    let per_ip = Arc::new(PerIp::default());
    let mut acceptor = crate::accept::Acceptor::new(listener, "http");
    while let Some((stream, peer)) = acceptor.next(&state.shutdown).await {
        let proxied = netaddr::is_trusted(&state.config.trusted_proxies, peer.ip());
        let per_ip_max = if proxied {
            0
        } else {
            state.config.http_max_connections_per_ip
        };
        let slots = global.clone().try_acquire_owned().ok().and_then(|g| {
            let ip = per_ip.take(peer.ip(), per_ip_max)?;
            Some(Slots {
                _global: g,
                _ip: ip,
                metrics: state.metrics.clone(),
            })
        });
        let Some(slots) = slots else {
            state
                .metrics
                .http_connections_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "too many http connections; closed at once");
            drop(stream);
            continue;
        };
        state
            .metrics
            .http_connections_open
            .fetch_add(1, Ordering::Relaxed);
        let span = tracing::debug_span!("http", %peer);
        let (state2, router, tls) = (state.clone(), router.clone(), tls.clone());
        state.tasks.spawn(
            async move {
                connection(stream, peer, tls, router, &state2, slots).await;
            }
            .instrument(span),
        );
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    router: Router,
    state: &App,
    slots: Slots,
) {
    // Viewers' small frames (RFB input, the RFB greeting) must not wait for a delayed ACK.
    let _ = stream.set_nodelay(true);
    // A WebSocket's connection moves to its agent's data shard once bridged.
    let (stream, mover) = MovableStream::new(stream);
    let slots = (slots, mover);
    let Some(acceptor) = tls else {
        return http(stream, peer, router, state, slots).await;
    };
    let limit = state.config.tls_handshake_timeout;
    let handshake = tokio::select! {
        r = tokio::time::timeout(limit, acceptor.accept(stream)) => r,
        () = state.shutdown.cancelled() => return,
    };
    match handshake {
        Ok(Ok(tls)) => http(tls, peer, router, state, slots).await,
        Ok(Err(e)) => tracing::debug!(error = %e, "tls handshake failed"),
        Err(_) => {
            state
                .metrics
                .http_handshake_timeouts
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!("no TLS handshake within {limit:?}; closed");
        }
    }
}

async fn http<I>(
    io: I,
    peer: SocketAddr,
    router: Router,
    state: &App,
    (slots, mover): (Slots, MoveHandle),
) where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    // The slots travel with each request so that an upgraded WebSocket keeps its connection's
    // place until the viewer task lets go of the request (and its upgrade) at the end.
    let slots = Arc::new(slots);
    let trusted = Arc::new(state.config.trusted_proxies.clone());
    let proxied = netaddr::is_trusted(&trusted, peer.ip());
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let client = if proxied {
            let forwarded = req.headers().get_all("x-forwarded-for");
            let values = forwarded.iter().filter_map(|v| v.to_str().ok());
            SocketAddr::new(netaddr::forwarded_client(&trusted, peer.ip(), values), 0)
        } else {
            peer
        };
        req.extensions_mut().insert(ConnectInfo(client));
        req.extensions_mut().insert(ConnSlot {
            _slots: slots.clone(),
            mover: mover.clone(),
        });
        router.clone().oneshot(req)
    });
    let limit = state.config.http_header_timeout;
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limit)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = state.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => return tracing::debug!("connection cut at shutdown"),
            }
        }
    };
    match result {
        Ok(()) => {}
        Err(e) if e.is_timeout() => {
            state
                .metrics
                .http_header_timeouts
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!("no complete request header within {limit:?}; closed");
        }
        // Resets, bad requests: the client's business, not an error of ours.
        Err(e) => tracing::debug!(error = %e, "http connection ended"),
    }
}

/// A connection's place under the connection caps, in each request's extensions: the WebSocket
/// endpoints keep it until the viewer task ends, so that upgraded connections count too. It also
/// carries the handle that moves the connection to another runtime.
#[derive(Clone)]
pub(crate) struct ConnSlot {
    _slots: Arc<Slots>,
    pub(crate) mover: MoveHandle,
}
