//! The accept loop both listeners share: a failed accept (typically EMFILE) never ends it; it
//! backs off (5 ms doubling to 1 s) until descriptors come back instead of spinning.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A listener and its backoff state.
pub(crate) struct Acceptor {
    listener: TcpListener,
    backoff: Duration,
    what: &'static str,
}

impl Acceptor {
    /// `what` names the listener in logs ("ssh", "http").
    pub(crate) fn new(listener: TcpListener, what: &'static str) -> Self {
        Self {
            listener,
            backoff: FIRST_BACKOFF,
            what,
        }
    }

    /// The next connection, or `None` once `shutdown` is cancelled.
    pub(crate) async fn next(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                r = self.listener.accept() => r,
                () = shutdown.cancelled() => return None,
            };
            match accepted {
                Ok(pair) => {
                    self.backoff = FIRST_BACKOFF;
                    return Some(pair);
                }
                Err(e) => {
                    tracing::warn!(error = %e, listener = self.what, "accept failed; retrying");
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
