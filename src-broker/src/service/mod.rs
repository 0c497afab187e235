//! Service adapters: what sits between "the agent's channel is open" and "bytes flow" for the
//! services that the broker does more with than carry bytes. Each one hands the session core a
//! pair of [`crate::ends::Source`] and [`crate::ends::Sink`].
//!
//! - [`ssh`]: the browser terminal of `ssh` sessions (the broker is the SSH client).

pub mod ssh;
