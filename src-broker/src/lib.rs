#![warn(unreachable_pub)]
//! Passerelle broker: workstation agents connect over SSH and announce their VNC, RDP or SSH
//! service with a remote forward; operators open sessions through the HTTP API and reach the
//! service over a WebSocket, through a channel opened on the agent's own connection.
//!
//! A viewer's bytes, from the listener to the agent's channel: [`http`] (the listener, the
//! WebSocket endpoint as a bridge end) → [`session`] (join: token, audit, the agent, the
//! recording) → [`service`] (the service's adapter: raw, vnc, ssh, rdp) → [`bridge`] (on the agent
//! connection's data thread, [`shards`]) → the agent's channel ([`ssh`], [`registry`]).
//!
//! Modules, one concern each (public: what the binary, the tests and the bench use):
//! - [`config`]: flags, file and defaults, validated into [`config::Config`].
//! - [`broker`]: start-up and shutdown; builds the parts below and starts the listeners.
//! - [`session`]: the session core: create, join, end; tokens, legacy ports, quotas, and
//!   which connections are recorded (no HTTP, SSH or WebSocket types).
//! - [`service`]: service adapters between "channel open" and "bytes flow" (raw, vnc, the
//!   browser terminal of `ssh` sessions, rdp).
//! - [`ends`]: the two ends of a bridge (frames in, frames out) and per-direction filters.
//! - [`bridge`]: the bytes between a viewer's end and an agent's end, with back-pressure.
//! - [`recording`]: recording files (writer, verification, screen streams, playback, export).
//! - [`ssh`]: the agents' listener and SSH handler.
//! - [`registry`]: presence (who is connected, what they announce, how to open a channel).
//! - [`http`]: the JSON API, the WebSocket endpoints, the pages.
//! - [`store`]: SQLite (tenants, keys, agents, sessions, audit) and its async face [`store::Db`].
//! - [`throttle`]: per-address limits on failed credentials.
//! - [`netaddr`]: trusted proxies and the client address behind them.
//! - [`oidc`]: console sign-in with OpenID Connect (flow state, provider calls, ID token checks).
//! - [`file_modes`]: the data dir's permissions, checked and narrowed at start.
//! - [`kit`]: agent kits (install scripts for Linux and Windows workstations).
//! - [`cluster`]: several nodes on one PostgreSQL store: shared identity, leases, the node link.
//! - [`server_cert`]: the HTTPS listener's certificate, read again on SIGHUP.
//! - [`accept`], [`shards`], [`keys`], [`self_signed`], [`secrets`], [`metrics`]: the accept
//!   loop, the data threads, host key and certificate (the generated one), tokens and
//!   sealing, counters.

pub(crate) mod accept;
pub(crate) mod bridge;
pub mod broker;
pub mod cluster;
pub mod config;
pub(crate) mod ends;
pub mod file_modes;
pub(crate) mod http;
pub mod keys;
pub mod kit;
pub(crate) mod metrics;
pub(crate) mod netaddr;
pub(crate) mod oidc;
pub(crate) mod pinned;
pub mod recording;
pub(crate) mod registry;
pub(crate) mod secrets;
pub(crate) mod self_signed;
pub mod server_cert;
pub(crate) mod service;
pub(crate) mod session;
pub(crate) mod shards;
pub(crate) mod ssh;
pub mod store;
pub(crate) mod throttle;

pub use broker::Broker;
pub use config::{Config, TlsMode};
pub use store::Store;
