//! Passerelle broker: workstation agents connect over SSH and announce their VNC, RDP or SSH
//! service with a remote forward; operators open sessions through the HTTP API and reach the
//! service over a WebSocket, through a channel opened on the agent's own connection.
//!
//! Modules, one concern each:
//! - [`config`]: flags, file and defaults, validated into [`config::Config`].
//! - [`broker`]: start-up, shared state, shutdown, cross-cutting operations.
//! - [`ssh`]: the agents' listener and SSH handler.
//! - [`registry`]: presence (who is connected, what they announce).
//! - [`sessions`]: live sessions, tokens, legacy ports (no SSH or WebSocket types).
//! - [`bridge`]: the bytes between a viewer's WebSocket and an agent's channel.
//! - [`rfb`]: RFB handshake termination for `vnc` sessions.
//! - [`ends`]: the contract between the bridge and the service adapters.
//! - [`service`]: service adapters (`rdp`: RDCleanPath, TLS with the workstation, filters).
//! - [`http`]: the JSON API and WebSocket endpoints.
//! - [`store`]: SQLite: tenants, keys, agents, sessions, audit.
//! - [`throttle`]: per-address limits on failed credentials.
//! - [`keys`], [`secrets`], [`metrics`].

pub mod accept;
pub mod bridge;
pub mod broker;
pub mod config;
pub mod ends;
pub mod export;
pub mod http;
pub mod keys;
pub mod metrics;
pub mod playback;
pub mod recorder;
pub mod registry;
pub mod rfb;
pub mod screen_stream;
pub mod secrets;
pub mod service;
pub mod session_recording;
pub mod sessions;
pub mod shards;
pub mod ssh;
pub mod store;
pub mod throttle;

pub use broker::Broker;
pub use config::{Config, TlsMode};
pub use store::Store;
