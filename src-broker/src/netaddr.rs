//! Client addresses behind reverse proxies: the `trusted_proxies` CIDR list, and the real client
//! address a trusted proxy reports (`X-Forwarded-For` on HTTP; PROXY protocol v2 on SSH, parsed
//! in `passerelle_proto::proxy`). Everything that counts or audits clients (connection caps,
//! lockouts, audit `peer_addr`) uses the address found here.
//!
//! Only a proxy listed in `trusted_proxies` is believed: anyone else's `X-Forwarded-For` is
//! ignored, so a client cannot pick the address it is counted under.

use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

/// An address block, `10.0.0.0/8` or `2001:db8::/32`; a bare address is a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

/// A CIDR that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an address or an address/prefix block (e.g. 10.0.0.0/8, 2001:db8::/32)")]
pub struct BadCidr(String);

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what a dual-stack socket reports) as IPv4.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl FromStr for Cidr {
    type Err = BadCidr;

    fn from_str(s: &str) -> Result<Self, BadCidr> {
        let bad = || BadCidr(s.to_owned());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s.trim(), None),
        };
        let net = canonical(addr.parse::<IpAddr>().map_err(|_| bad())?);
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { net, prefix })
    }
}

impl Cidr {
    /// Whether `ip` is inside the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Whether `ip` is one of the trusted proxies.
pub(crate) fn is_trusted(trusted: &[Cidr], ip: IpAddr) -> bool {
    trusted.iter().any(|c| c.contains(ip))
}

/// At most this many `X-Forwarded-For` entries are looked at, from the right.
const MAX_HOPS: usize = 32;

/// The client's address for a request that came from `peer` with these `X-Forwarded-For`
/// header values (in order): `peer` itself unless it is a trusted proxy; otherwise the rightmost
/// forwarded address that is not a trusted proxy (the left part of the header is whatever the
/// client wrote, so only what trusted proxies appended is believed). Entries that do not parse
/// end the walk at the last trusted hop.
pub(crate) fn forwarded_client<'a>(
    trusted: &[Cidr],
    peer: IpAddr,
    values: impl DoubleEndedIterator<Item = &'a str>,
) -> IpAddr {
    let mut client = canonical(peer);
    if !is_trusted(trusted, client) {
        return client;
    }
    let hops = values.rev().flat_map(|v| v.rsplit(',')).take(MAX_HOPS);
    for hop in hops {
        let Some(ip) = parse_hop(hop.trim()) else {
            break;
        };
        client = ip;
        if !is_trusted(trusted, ip) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, `[v6]`, `[v6]:port` or `v4:port`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = hop.strip_prefix('[') {
        let inner = rest.split(']').next()?;
        return inner
            .parse::<Ipv6Addr>()
            .ok()
            .map(|v6| canonical(v6.into()));
    }
    let (host, _port) = hop.rsplit_once(':')?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn blocks_contain_what_they_should() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains(ip("10.1.255.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.0.9")), "mapped v4 counts as v4");
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.1.0.1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        for bad in ["10.0.0.0/33", "::/129", "proxy", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_from_trusted_proxies_only() {
        let trusted = cidrs(&["10.0.0.0/8"]);
        let xff = ["198.51.100.7, 10.0.0.2"];
        // A trusted chain: the rightmost untrusted hop is the client.
        assert_eq!(
            forwarded_client(&trusted, ip("10.0.0.1"), xff.iter().copied()),
            ip("198.51.100.7")
        );
        // The client's own (forged) entries on the left are not reached.
        let forged = ["1.2.3.4", "198.51.100.7"];
        assert_eq!(
            forwarded_client(&trusted, ip("10.0.0.1"), forged.iter().copied()),
            ip("198.51.100.7")
        );
        // From an untrusted peer, the header is ignored.
        assert_eq!(
            forwarded_client(&trusted, ip("192.0.2.1"), xff.iter().copied()),
            ip("192.0.2.1")
        );
        // No header: the proxy itself.
        assert_eq!(
            forwarded_client(&trusted, ip("10.0.0.1"), std::iter::empty()),
            ip("10.0.0.1")
        );
        // Ports and brackets.
        let ported = ["[2001:db8::5]:4711"];
        assert_eq!(
            forwarded_client(&trusted, ip("10.0.0.1"), ported.iter().copied()),
            ip("2001:db8::5")
        );
        let v4port = ["203.0.113.5:1234"];
        assert_eq!(
            forwarded_client(&trusted, ip("10.0.0.1"), v4port.iter().copied()),
            ip("203.0.113.5")
        );
        // Garbage stops at the last trusted hop.
        let junk = ["unknown, 10.0.0.3"];
        assert_eq!(
            forwarded_client(&trusted, ip("10.0.0.1"), junk.iter().copied()),
            ip("10.0.0.3")
        );
    }
}
