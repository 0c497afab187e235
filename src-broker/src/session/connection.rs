//! One connection's bridge, as the session core runs it for a service's adapter
//! ([`crate::service::Bridge`]): the session starts with its first bridged connection, the
//! connection gets its recording segment, and the bridge runs on the agent connection's data
//! thread, until the connection ends, the session ends, or the agent goes away.

use std::net::SocketAddr;
use std::sync::Arc;

use passerelle_proto::close::{Closure, EndReason};
use passerelle_proto::recording::Content;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::Core;
use super::live::LiveSession;
use crate::bridge::{self, Counters, Meter, Options};
use crate::ends::{Sink, Source};
use crate::service::{Bridge, Done};

/// The session core's side of one viewer connection.
pub(crate) struct Connection<F> {
    pub core: Arc<Core>,
    pub session: Arc<LiveSession>,
    pub peer: SocketAddr,
    /// The agent connection's data thread.
    pub home: Option<tokio::runtime::Handle>,
    /// Cancelled when the agent's connection ends.
    pub agent_gone: CancellationToken,
    /// Runs just before the bridge starts.
    pub on_bridge: F,
}

impl<F: FnOnce() + Send> Bridge for Connection<F> {
    async fn run<VR, VT, AR, AT>(
        self,
        viewer: (VR, VT),
        agent: (AR, AT),
        mut opts: Options,
        content: Content,
    ) -> Done<VR, VT, AR, AT>
    where
        VR: Source + 'static,
        VT: Sink + 'static,
        AR: Source + 'static,
        AT: Sink + 'static,
    {
        {
            let Self {
                core,
                session,
                peer,
                home,
                agent_gone,
                on_bridge,
            } = self;
            let segment = core.bridged(&session, peer).await;
            let rec = match core.start_recording(&session, segment, content).await {
                Ok(rec) => rec,
                Err(closure) => return Some((viewer, agent, closure)),
            };
            if content != Content::Metadata {
                opts.recording.clone_from(&rec);
            }
            let connection = Arc::new(Counters::default());
            let meter = Meter {
                session: session.bytes.clone(),
                connection: connection.clone(),
                metrics: core.metrics.clone(),
            };
            let stop = {
                let session = session.clone();
                async move {
                    tokio::select! {
                        () = session.ended.cancelled() => session.closure(),
                        () = agent_gone.cancelled() => Closure::ending(EndReason::AgentDisconnected),
                    }
                }
            };
            tracing::info!(agent = %session.agent, service = %session.service, segment, "bridging");
            let bridging = bridge::run(viewer, agent, opts, meter, stop).in_current_span();
            on_bridge();
            let bridged = match &home {
                Some(home) => home.spawn(bridging).await.ok(),
                None => Some(bridging.await),
            };
            let Some(done) = bridged else {
                // The data thread stopped: the broker is going away, and its shutdown ends the
                // session.
                tracing::info!("bridge stopped with the broker");
                return None;
            };
            if let Some(rec) = &rec {
                let reason = done.closure.end.unwrap_or(EndReason::ViewerClosed);
                core.finish_recording(&session, rec, &connection, reason)
                    .await;
            }
            Some((done.viewer, done.agent, done.closure))
        }
    }
}
