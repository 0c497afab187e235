//! Passerelle's shared vocabulary: identifiers, service names, the HTTP API's JSON types, the
//! WebSocket close codes and the desktop helper's launch URL.
//!
//! Nothing here does I/O, so every type can be unit- and fuzz-tested on its own. The broker, the
//! desktop helper and the tests all speak through these types.

pub mod agent_import;
pub mod api;
pub mod api_keys;
pub mod close;
pub mod enroll;
pub mod fuzzing;
pub mod ids;
pub mod launch;
pub mod oidc;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod origin;
pub mod proxy;
pub mod rdp;
pub mod recording;
pub mod rfb;
pub mod ssh_ca;
pub mod terminal;

pub use ids::{AgentId, IdError, ServiceName, TenantName};
