//! RDP as the broker handles it, without I/O: the RDCleanPath handshake of IronRDP's web
//! client ([`cleanpath`]), the X.224 connection exchange ([`x224`]), the Client Info PDU and
//! its credentials ([`client_info`]), and the filters over the plaintext stream after the
//! broker's TLS ([`filter`]). The broker relays CredSSP (NLA) untouched: it frames those
//! messages only to keep them out of recordings.
//!
//! [`samples`] builds the PDUs a client sends, for tests and fuzz seeds.

pub mod cleanpath;
pub mod client_info;
pub mod filter;
pub mod samples;
pub mod x224;

pub use client_info::Credentials;
pub use filter::{ClientFilter, ClientOptions, Fed, ServerFilter};

/// Bytes that do not follow the protocol; the message says where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

impl Malformed {
    fn new(what: &str) -> Self {
        Self(what.to_owned())
    }
}

/// The length of the DER element at the start of `buf` (a `TSRequest`), once its header is in.
pub(crate) fn der_length(buf: &[u8]) -> Result<Option<usize>, Malformed> {
    let Some(&first) = buf.get(1) else {
        return Ok(None);
    };
    if first < 0x80 {
        return Ok(Some(2 + usize::from(first)));
    }
    let n = usize::from(first & 0x7F);
    if n == 0 || n > 3 {
        return Err(Malformed::new("bad DER length"));
    }
    let Some(bytes) = buf.get(2..2 + n) else {
        return Ok(None);
    };
    let len = bytes
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    Ok(Some(2 + n + len))
}
