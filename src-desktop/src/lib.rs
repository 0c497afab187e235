//! Passerelle's desktop helper, the core shared by the CLI (`passerelle-desktop`) and the Tauri
//! app: it takes a `passerelle://open?...` launch URL, opens a local port on `127.0.0.1` whose
//! every connection is bridged over WSS to the session's stream on the broker ([`Tunnel`]), and
//! launches the technician's native client on that port ([`launcher`]).
//!
//! Modules: [`endpoint`] derives the broker stream from the launch URL, [`tls`] verifies the
//! broker (WebPKI or a pinned fingerprint), [`connect`] opens probes and WebSockets, [`pump`]
//! moves one connection's bytes, [`tunnel`] owns the listener, its connections and its end,
//! [`config`] reads the helper's TOML file, [`trust`] says which brokers links may name,
//! [`template`] and [`launcher`] pick and start clients.

pub mod config;
pub mod connect;
pub mod endpoint;
pub mod error;
pub mod launcher;
pub mod pump;
pub mod template;
pub mod tls;
pub mod trust;
pub mod tunnel;

pub use endpoint::Endpoint;
pub use error::{Error, SessionEnd};
pub use passerelle_proto::launch::LaunchUrl;
pub use tunnel::{Stats, Tunnel, TunnelEnd, TunnelEvent, TunnelOptions};

/// Parses a launch URL (as given on a command line or by the OS for a `passerelle://` link).
pub fn parse_launch_url(url: &str) -> Result<LaunchUrl, Error> {
    Ok(LaunchUrl::parse(url.trim())?)
}
