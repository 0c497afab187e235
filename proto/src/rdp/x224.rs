//! TPKT (RFC 1006) framing and the first RDP exchange over it: the client's X.224 Connection
//! Request and the server's Connection Confirm (MS-RDPBCGR 2.2.1.1 and 2.2.1.2), with the
//! security negotiation they carry (`RDP_NEG_REQ`, `RDP_NEG_RSP`, `RDP_NEG_FAILURE`).

use super::Malformed;

/// TPKT's version byte; every slow-path PDU starts with it.
pub const TPKT_VERSION: u8 = 3;
/// Bytes of a TPKT header (version, reserved, big-endian length).
pub const TPKT_HEADER: usize = 4;
/// Largest Connection Request relayed to a server: a cookie or routing token, the negotiation
/// request and the correlation info fit in far less.
pub const MAX_CONNECTION_REQUEST: usize = 1024;
/// Largest Connection Confirm read from a server (19 bytes in practice).
pub const MAX_CONNECTION_CONFIRM: usize = 512;

const CR_CDT: u8 = 0xE0;
const CC_CDT: u8 = 0xD0;
const TYPE_RDP_NEG_REQ: u8 = 0x01;
const TYPE_RDP_NEG_RSP: u8 = 0x02;
const TYPE_RDP_NEG_FAILURE: u8 = 0x03;

/// Security protocols: the bits of `requestedProtocols` and the value of `selectedProtocol`.
pub mod protocol {
    /// Standard RDP security (RC4): nothing the broker can relay.
    pub const RDP: u32 = 0;
    /// TLS.
    pub const SSL: u32 = 0x1;
    /// CredSSP (NLA) over TLS.
    pub const HYBRID: u32 = 0x2;
    /// RDSTLS.
    pub const RDSTLS: u32 = 0x4;
    /// CredSSP with the Early User Authorization Result PDU.
    pub const HYBRID_EX: u32 = 0x8;
    /// Azure AD authentication.
    pub const RDSAAD: u32 = 0x10;

    /// A short name for a selected protocol, for logs and the audit.
    pub fn name(selected: u32) -> &'static str {
        match selected {
            RDP => "standard RDP security",
            SSL => "TLS",
            HYBRID => "NLA (CredSSP)",
            RDSTLS => "RDSTLS",
            HYBRID_EX => "NLA (CredSSP, early authorization)",
            RDSAAD => "Azure AD",
            _ => "unknown",
        }
    }

    /// Whether the security layer after TLS starts with a CredSSP exchange.
    pub fn is_nla(selected: u32) -> bool {
        selected == HYBRID || selected == HYBRID_EX
    }
}

/// The length of the TPKT at the start of `buf`: `Ok(None)` until its header is there.
pub fn tpkt_length(buf: &[u8]) -> Result<Option<usize>, Malformed> {
    let Some(head) = buf.get(..TPKT_HEADER) else {
        return Ok(None);
    };
    if head[0] != TPKT_VERSION {
        return Err(Malformed::new("not a TPKT header"));
    }
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    // The smallest TPDU after the header is X.224 Data's 3 bytes.
    if len < TPKT_HEADER + 3 {
        return Err(Malformed::new("TPKT length too small"));
    }
    Ok(Some(len))
}

/// Checks the TPKT and X.224 fixed part of a connection PDU and returns its variable part.
fn connection_tpdu<'a>(pdu: &'a [u8], code: u8, what: &'static str) -> Result<&'a [u8], Malformed> {
    let len = tpkt_length(pdu)?.ok_or(Malformed::new("truncated TPKT header"))?;
    if len != pdu.len() {
        return Err(Malformed::new("TPKT length does not match the PDU"));
    }
    // LI counts the TPDU's bytes after itself; CR and CC have 6 fixed ones (code, DST-REF,
    // SRC-REF, class).
    let tpdu = &pdu[TPKT_HEADER..];
    let li = usize::from(tpdu[0]);
    if li + 1 != tpdu.len() || li < 6 {
        return Err(Malformed::new("X.224 length indicator does not match"));
    }
    if tpdu[1] & 0xF0 != code {
        return Err(Malformed(what.to_owned()));
    }
    Ok(&tpdu[7..])
}

/// What the broker needs from a client's Connection Request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionRequest {
    /// `requestedProtocols`, or `None` without a negotiation request (standard security only).
    pub requested_protocols: Option<u32>,
    /// The `Cookie: mstshash=…` or routing-token line, without its CR LF.
    pub cookie: Option<String>,
}

/// Parses a complete Connection Request PDU (TPKT included).
pub fn parse_connection_request(pdu: &[u8]) -> Result<ConnectionRequest, Malformed> {
    if pdu.len() > MAX_CONNECTION_REQUEST {
        return Err(Malformed::new("connection request too long"));
    }
    let mut rest = connection_tpdu(pdu, CR_CDT, "not an X.224 Connection Request")?;
    let mut cookie = None;
    if rest.starts_with(b"Cookie: ") {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or(Malformed::new("cookie without CR LF"))?;
        let line =
            std::str::from_utf8(&rest[..end]).map_err(|_| Malformed::new("cookie is not text"))?;
        cookie = Some(line.to_owned());
        rest = &rest[end + 2..];
    }
    let mut requested_protocols = None;
    if let Some(&TYPE_RDP_NEG_REQ) = rest.first() {
        let neg = rest
            .get(..8)
            .ok_or(Malformed::new("truncated negotiation request"))?;
        if u16::from_le_bytes([neg[2], neg[3]]) != 8 {
            return Err(Malformed::new("negotiation request length is not 8"));
        }
        requested_protocols = Some(u32::from_le_bytes([neg[4], neg[5], neg[6], neg[7]]));
    }
    Ok(ConnectionRequest {
        requested_protocols,
        cookie,
    })
}

/// The negotiation outcome in a Connection Confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiation {
    /// `RDP_NEG_RSP`: the server selected this protocol (see [`protocol`]).
    Selected(u32),
    /// `RDP_NEG_FAILURE` with its failure code.
    Failure(u32),
    /// No negotiation data: the server speaks standard RDP security only.
    Legacy,
}

/// Parses a complete Connection Confirm PDU (TPKT included).
pub fn parse_connection_confirm(pdu: &[u8]) -> Result<Negotiation, Malformed> {
    if pdu.len() > MAX_CONNECTION_CONFIRM {
        return Err(Malformed::new("connection confirm too long"));
    }
    let rest = connection_tpdu(pdu, CC_CDT, "not an X.224 Connection Confirm")?;
    let Some(neg) = rest.get(..8) else {
        return if rest.is_empty() {
            Ok(Negotiation::Legacy)
        } else {
            Err(Malformed::new("truncated negotiation response"))
        };
    };
    if u16::from_le_bytes([neg[2], neg[3]]) != 8 {
        return Err(Malformed::new("negotiation response length is not 8"));
    }
    let value = u32::from_le_bytes([neg[4], neg[5], neg[6], neg[7]]);
    match neg[0] {
        TYPE_RDP_NEG_RSP => Ok(Negotiation::Selected(value)),
        TYPE_RDP_NEG_FAILURE => Ok(Negotiation::Failure(value)),
        _ => Err(Malformed::new("unknown negotiation response type")),
    }
}

/// What a negotiation failure code means, for people.
pub fn failure_text(code: u32) -> &'static str {
    match code {
        1 => "the server requires TLS",
        2 => "the server does not allow TLS (standard RDP security only)",
        3 => "the server has no TLS certificate",
        4 => "inconsistent security flags",
        5 => "the server requires NLA (CredSSP)",
        6 => "the server requires TLS with client certificate authentication",
        _ => "unknown negotiation failure",
    }
}

fn connection_pdu(code: u8, variable: &[u8]) -> Vec<u8> {
    let len = TPKT_HEADER + 7 + variable.len();
    let mut pdu = vec![TPKT_VERSION, 0];
    pdu.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    pdu.push(u8::try_from(6 + variable.len()).unwrap_or(u8::MAX));
    pdu.extend_from_slice(&[code, 0, 0, 0, 0, 0]);
    pdu.extend_from_slice(variable);
    pdu
}

/// A Connection Request as clients send it (tests, fuzz seeds, the bench's client).
pub fn connection_request(cookie: Option<&str>, requested_protocols: Option<u32>) -> Vec<u8> {
    let mut var = Vec::new();
    if let Some(c) = cookie {
        var.extend_from_slice(format!("Cookie: mstshash={c}\r\n").as_bytes());
    }
    if let Some(p) = requested_protocols {
        var.extend_from_slice(&[TYPE_RDP_NEG_REQ, 0, 8, 0]);
        var.extend_from_slice(&p.to_le_bytes());
    }
    connection_pdu(CR_CDT, &var)
}

/// A Connection Confirm as servers send it (tests).
pub fn connection_confirm(negotiation: Negotiation) -> Vec<u8> {
    let var = match negotiation {
        Negotiation::Legacy => Vec::new(),
        Negotiation::Selected(p) => [&[TYPE_RDP_NEG_RSP, 0, 8, 0][..], &p.to_le_bytes()].concat(),
        Negotiation::Failure(c) => {
            [&[TYPE_RDP_NEG_FAILURE, 0, 8, 0][..], &c.to_le_bytes()].concat()
        }
    };
    connection_pdu(CC_CDT, &var)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_confirms_round_trip() {
        let cr = connection_request(Some("alice"), Some(protocol::SSL | protocol::HYBRID));
        assert_eq!(
            parse_connection_request(&cr).unwrap(),
            ConnectionRequest {
                requested_protocols: Some(3),
                cookie: Some("Cookie: mstshash=alice".into()),
            }
        );
        let bare = connection_request(None, None);
        assert_eq!(
            parse_connection_request(&bare).unwrap().requested_protocols,
            None
        );
        for n in [
            Negotiation::Selected(protocol::SSL),
            Negotiation::Failure(5),
            Negotiation::Legacy,
        ] {
            assert_eq!(parse_connection_confirm(&connection_confirm(n)).unwrap(), n);
        }
        // A confirm is not a request, and the other way round.
        assert!(parse_connection_request(&connection_confirm(Negotiation::Legacy)).is_err());
        assert!(parse_connection_confirm(&cr).is_err());
    }

    #[test]
    fn a_real_confirm_parses() {
        // As freerdp-shadow-cli answers a request for TLS.
        let cc = [
            3, 0, 0, 19, 14, 0xD0, 0, 0, 0x12, 0x34, 0, 2, 0x1F, 8, 0, 1, 0, 0, 0,
        ];
        assert_eq!(
            parse_connection_confirm(&cc).unwrap(),
            Negotiation::Selected(1)
        );
    }

    #[test]
    fn bad_lengths_are_refused() {
        let mut cr = connection_request(None, Some(1));
        cr[3] += 1;
        assert!(parse_connection_request(&cr).is_err(), "TPKT length");
        let mut cr = connection_request(None, Some(1));
        cr[4] -= 1;
        assert!(parse_connection_request(&cr).is_err(), "LI");
        let mut cr = connection_request(None, Some(1));
        cr[13] = 9;
        assert!(parse_connection_request(&cr).is_err(), "negotiation length");
        assert!(tpkt_length(&[3, 0, 0, 2]).is_err());
        assert!(tpkt_length(&[4, 0, 0, 20]).is_err());
        assert_eq!(tpkt_length(&[3, 0]).unwrap(), None);
        let long = connection_request(Some(&"x".repeat(2000)), None);
        assert!(parse_connection_request(&long).is_err());
    }
}
