//! The PROXY protocol version 2 header (HAProxy's `send-proxy-v2`): the binary preamble a
//! trusted load balancer writes at the start of a TCP connection to say who the client is.
//! Parsing only, no I/O: the broker reads bytes until [`parse`] stops asking for more.
//!
//! Layout (haproxy.org/download/2.9/doc/proxy-protocol.txt, section 2.2): a 12-byte signature,
//! a version/command byte (`0x20` LOCAL, `0x21` PROXY), a family/transport byte, a 16-bit
//! big-endian length, then that many bytes: the addresses (TCP over IPv4: 12 bytes; over IPv6:
//! 36), then TLVs, which are skipped. The whole header is bounded by [`MAX_HEADER`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 bytes every v2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The fixed part: signature, version/command, family, length.
pub const FIXED_LEN: usize = 16;

/// The largest header accepted (fixed part included). HAProxy's own headers with the usual TLVs
/// are far smaller; the format allows 65,551 bytes, which nobody needs.
pub const MAX_HEADER: usize = 16 + 512;

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes the header takes; what follows belongs to the proxied protocol.
    pub len: usize,
    /// The client's address (`None` for a LOCAL connection, the proxy's own health check, or an
    /// unspecified or non-TCP family: the connection is then the proxy's own).
    pub source: Option<SocketAddr>,
}

/// Why bytes are not (yet) a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// More bytes are needed: at least this many in total.
    #[error("incomplete PROXY v2 header: {0} bytes needed")]
    Incomplete(usize),
    /// Not a PROXY v2 header (or a version other than 2).
    #[error("not a PROXY protocol v2 header")]
    NotProxy,
    /// A command other than LOCAL and PROXY.
    #[error("unknown PROXY v2 command {0:#04x}")]
    Command(u8),
    /// The announced length is over [`MAX_HEADER`].
    #[error("PROXY v2 header of {0} bytes, over the {MAX_HEADER}-byte limit")]
    TooLong(usize),
    /// The addresses do not fit in the announced length.
    #[error("PROXY v2 header too short for its address family")]
    Truncated,
}

/// Parses the header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Header, Error> {
    let have = buf.len().min(SIGNATURE.len());
    if buf[..have] != SIGNATURE[..have] {
        return Err(Error::NotProxy);
    }
    let Some(fixed) = buf.get(..FIXED_LEN) else {
        return Err(Error::Incomplete(FIXED_LEN));
    };
    let (ver_cmd, family) = (fixed[12], fixed[13]);
    if ver_cmd >> 4 != 2 {
        return Err(Error::NotProxy);
    }
    let command = ver_cmd & 0x0f;
    if command > 1 {
        return Err(Error::Command(command));
    }
    let body_len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let len = FIXED_LEN + body_len;
    if len > MAX_HEADER {
        return Err(Error::TooLong(len));
    }
    let Some(body) = buf.get(FIXED_LEN..len) else {
        return Err(Error::Incomplete(len));
    };
    if command == 0 {
        return Ok(Header { len, source: None });
    }
    let source = match family {
        // TCP over IPv4: source, destination, source port, destination port.
        0x11 => {
            let a = body.get(..12).ok_or(Error::Truncated)?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([a[8], a[9]]),
            ))
        }
        // TCP over IPv6.
        0x21 => {
            let a = body.get(..36).ok_or(Error::Truncated)?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                u16::from_be_bytes([a[32], a[33]]),
            ))
        }
        // UNSPEC, UDP, UNIX sockets: no client address to speak of.
        _ => None,
    };
    Ok(Header { len, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_header(tlv: &[u8]) -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.push(0x21);
        h.push(0x11);
        h.extend_from_slice(&u16::try_from(12 + tlv.len()).unwrap().to_be_bytes());
        h.extend_from_slice(&[198, 51, 100, 7, 10, 0, 0, 1]);
        h.extend_from_slice(&4711u16.to_be_bytes());
        h.extend_from_slice(&2222u16.to_be_bytes());
        h.extend_from_slice(tlv);
        h
    }

    #[test]
    fn parses_ipv4_and_ipv6_with_tlvs_and_leaves_the_rest() {
        let mut bytes = v4_header(&[0x04, 0x00, 0x01, 0xaa]);
        let total = bytes.len();
        bytes.extend_from_slice(b"SSH-2.0-OpenSSH_9.2\r\n");
        let h = parse(&bytes).unwrap();
        assert_eq!(h.len, total);
        assert_eq!(h.source, Some("198.51.100.7:4711".parse().unwrap()));
        assert!(bytes[h.len..].starts_with(b"SSH-2.0"));

        let mut v6 = SIGNATURE.to_vec();
        v6.extend_from_slice(&[0x21, 0x21, 0, 36]);
        let src: Ipv6Addr = "2001:db8::7".parse().unwrap();
        v6.extend_from_slice(&src.octets());
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&[0x12, 0x67, 0x08, 0xae]);
        let h = parse(&v6).unwrap();
        assert_eq!(h.source, Some("[2001:db8::7]:4711".parse().unwrap()));
    }

    #[test]
    fn asks_for_more_until_complete() {
        let bytes = v4_header(&[]);
        for cut in 0..bytes.len() {
            match parse(&bytes[..cut]) {
                Err(Error::Incomplete(n)) => assert!(n > cut && n <= bytes.len()),
                other => panic!("at {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn local_unspec_and_refusals() {
        let mut local = SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local).unwrap().source, None);
        assert_eq!(parse(b"SSH-2.0-OpenSSH_9.2\r\n"), Err(Error::NotProxy));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Err(Error::NotProxy));
        let mut v1 = SIGNATURE.to_vec();
        v1.extend_from_slice(&[0x11, 0x11, 0, 12]);
        assert_eq!(parse(&v1), Err(Error::NotProxy));
        let mut cmd = SIGNATURE.to_vec();
        cmd.extend_from_slice(&[0x22, 0x11, 0, 12]);
        assert_eq!(parse(&cmd), Err(Error::Command(2)));
        let mut long = SIGNATURE.to_vec();
        long.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&long), Err(Error::TooLong(16 + 65535)));
        let mut short = SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert_eq!(parse(&short), Err(Error::Truncated));
    }
}
