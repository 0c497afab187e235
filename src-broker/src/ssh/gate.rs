//! The door of the SSH listener: whether a source may start a connection now (locked out for
//! rejected keys, its share of pre-authentication slots, its connection rate; see
//! [`super::admission`] and [`super::guard`]), the refusal OpenSSH would write, and the PROXY v2
//! header that a trusted proxy must send first to name the client behind it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;

use super::{Server, admission, proxy_header};

/// Why a source may not start a connection now.
#[derive(Debug, Clone, Copy)]
pub(super) enum Refusal {
    LockedOut,
    PreauthCap,
    Rate,
}

/// The per-source checks, in an order that spends nothing on a refused source: locked out for
/// rejected keys, its share of pre-authentication slots, then a token of its connection rate.
pub(super) fn admit(state: &Server, peer: SocketAddr) -> Result<admission::PreauthSlot, Refusal> {
    let guard = &state.guard;
    let ip = peer.ip();
    if guard.key_failures.check(ip).is_err() {
        return Err(Refusal::LockedOut);
    }
    let slot = guard
        .preauth
        .take(ip, state.config.max_preauth_per_source)
        .ok_or(Refusal::PreauthCap)?;
    guard.rate.admit(ip).map_err(|_| Refusal::Rate)?;
    Ok(slot)
}

/// Tells a refused source so the way OpenSSH does, without waiting, and closes.
pub(super) fn refuse(stream: &TcpStream, client: SocketAddr, why: Refusal, state: &Server) {
    state
        .metrics
        .ssh_connections_refused
        .fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%client, ?why, "ssh connection refused for its source");
    let _ = stream.try_write(admission::REFUSAL_LINE);
    // Closing with unread bytes (a client that sent its banner at once) would reset the
    // connection, and the line with it: take what has arrived, without waiting.
    let mut sink = [0u8; 512];
    for _ in 0..4 {
        if !matches!(stream.try_read(&mut sink), Ok(1..)) {
            break;
        }
    }
}

/// A trusted proxy's connection: its PROXY v2 header (within the pre-auth deadline) names the
/// client, who is then judged like a direct one. Nothing is answered to a bad header.
pub(super) async fn through_proxy(
    mut stream: TcpStream,
    proxy: SocketAddr,
    state: &Server,
    deadline: tokio::time::Instant,
) -> Option<(TcpStream, SocketAddr, admission::PreauthSlot)> {
    let client = match tokio::time::timeout_at(deadline, proxy_header::read(&mut stream)).await {
        Ok(Ok(client)) => client.unwrap_or(proxy),
        Ok(Err(e)) => {
            tracing::info!(%proxy, error = %e, "bad PROXY header from a trusted proxy; closed");
            return None;
        }
        Err(_) => {
            tracing::info!(%proxy, "no PROXY header from a trusted proxy in time; closed");
            return None;
        }
    };
    tracing::debug!(%proxy, %client, "connection through a trusted proxy");
    match admit(state, client) {
        Ok(slot) => Some((stream, client, slot)),
        Err(why) => {
            refuse(&stream, client, why, state);
            None
        }
    }
}
