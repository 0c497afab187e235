//! The server's side: its CredSSP messages framed for redaction (NLA), then its PDUs passed as
//! they come, but for the repairs IronRDP's web client needs with xrdp (see [`ServerFilter`]).

use super::{
    DER_SEQUENCE, Fed, MCS_SEND_DATA_INDICATION, Malformed, Outputs, PDUTYPE_DATAPDU,
    PDUTYPE_DEACTIVATEALLPDU, PDUTYPE2_FONTMAP, REDACTED_TS_REQUEST, SendData, checked, der_length,
    fast_path_length, x224,
};
use crate::rdp::x224::protocol;

/// Filters the server's stream: frames its CredSSP messages (NLA) for redaction, then its TPKT
/// and fast-path PDUs, which pass as they come but for one repair: xrdp sends the Deactivate
/// All PDU as a bare 6-byte Share Control Header, which IronRDP's web client (npm 0.7, before
/// IronRDP #1719) refuses, ending the session when xrdp resizes it; the broker adds the
/// `shareId` it expects (zero, as IronRDP itself now assumes).
#[derive(Debug)]
pub struct ServerFilter {
    credssp: bool,
    early_authorization: bool,
    denied: bool,
    buf: Vec<u8>,
    /// Deactivate All PDUs repaired so far.
    pub repaired: u64,
    /// The Font Map PDU (the end of the connection sequence) has passed.
    finalized: bool,
    split: Option<usize>,
}

impl ServerFilter {
    /// For a server that selected `selected_protocol`.
    pub fn new(selected_protocol: u32) -> Self {
        Self {
            credssp: protocol::is_nla(selected_protocol),
            early_authorization: selected_protocol == protocol::HYBRID_EX,
            denied: false,
            buf: Vec::new(),
            repaired: 0,
            finalized: false,
            split: None,
        }
    }

    /// Whether the server has not let the logon through (yet): it is still in CredSSP, or its
    /// Early User Authorization Result denied access. A server that ends the connection then
    /// has refused the credentials.
    pub fn logon_refused(&self) -> bool {
        self.credssp || self.denied
    }

    /// When the last [`feed`](Self::feed) passed the Font Map PDU, the server's last PDU of the
    /// connection sequence: how many of the bytes it appended go up to the end of that PDU.
    /// IronRDP's web client (npm 0.7) drops what follows that PDU in the same WebSocket
    /// message (the server's first dynamic channel message, so display control never opens):
    /// the broker sends the rest as a message of its own.
    pub fn take_split(&mut self) -> Option<usize> {
        self.split.take()
    }

    /// Bytes held back: the start of a PDU not all there yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Takes bytes as they arrive and appends what to pass on to `out`: every byte, in order,
    /// but for repaired Deactivate All PDUs (4 bytes longer each).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Fed, Malformed> {
        let mut o = Outputs::new(out);
        if self.buf.is_empty() {
            let used = self.frames(input, &mut o)?;
            self.buf.extend_from_slice(&input[used..]);
        } else {
            self.buf.extend_from_slice(input);
            let buf = std::mem::take(&mut self.buf);
            let used = self.frames(&buf, &mut o);
            self.buf = buf;
            self.buf.drain(..*used.as_ref().unwrap_or(&0));
            used?;
        }
        Ok(Fed {
            input_events: 0,
            record: o.rec,
        })
    }

    /// Passes the whole PDUs at the start of `data`; returns how many bytes they took.
    fn frames(&mut self, data: &[u8], o: &mut Outputs<'_>) -> Result<usize, Malformed> {
        let mut pos = 0;
        loop {
            let rest = &data[pos..];
            let Some(&first) = rest.first() else {
                return Ok(pos);
            };
            if self.credssp {
                match first {
                    DER_SEQUENCE => {
                        let Some(len) = checked(der_length(rest)?)? else {
                            return Ok(pos);
                        };
                        let Some(msg) = rest.get(..len) else {
                            return Ok(pos);
                        };
                        o.redact(msg, REDACTED_TS_REQUEST);
                        pos += len;
                        continue;
                    }
                    x224::TPKT_VERSION => self.credssp = false,
                    _ if self.early_authorization => {
                        // The Early User Authorization Result: 4 bytes, then RDP.
                        let Some(result) = rest.get(..4) else {
                            return Ok(pos);
                        };
                        o.pass(result);
                        pos += 4;
                        self.denied = result != [0, 0, 0, 0];
                        self.early_authorization = false;
                        self.credssp = false;
                        continue;
                    }
                    _ => return Err(Malformed::new("the server sent neither CredSSP nor RDP")),
                }
            }
            let len = if first == x224::TPKT_VERSION {
                checked(x224::tpkt_length(rest)?)?
            } else if first & 0x3 == 0 {
                checked(fast_path_length(rest)?.map(|(len, _)| len))?
            } else {
                return Err(Malformed::new("the server sent neither TPKT nor fast-path"));
            };
            let Some(pdu) = len.and_then(|len| rest.get(..len)) else {
                return Ok(pos);
            };
            match bare_deactivate_all(pdu) {
                Some(repaired) => {
                    o.pass(&repaired);
                    self.repaired += 1;
                }
                None => o.pass(pdu),
            }
            if !self.finalized && is_font_map(pdu) {
                self.finalized = true;
                self.split = Some(o.out.len() - o.start);
            }
            pos += pdu.len();
        }
    }
}

/// Whether `pdu` is the server's Font Map PDU (a slow-path Data PDU, `pduType2` FONTMAP).
fn is_font_map(pdu: &[u8]) -> bool {
    if pdu.first() != Some(&x224::TPKT_VERSION) {
        return false;
    }
    let Ok(Some(data)) = SendData::parse(pdu, MCS_SEND_DATA_INDICATION) else {
        return false;
    };
    // TS_SHARECONTROLHEADER (6 bytes): pduType at 2; TS_SHAREDATAHEADER: pduType2 at 8.
    let ud = data.user_data;
    match (ud.get(2..4), ud.get(14)) {
        (Some(t), Some(&t2)) => {
            u16::from_le_bytes([t[0], t[1]]) & 0xF == PDUTYPE_DATAPDU && t2 == PDUTYPE2_FONTMAP
        }
        _ => false,
    }
}

/// A Deactivate All PDU that is a bare 6-byte Share Control Header (xrdp), with the `shareId`
/// (zero) it lacks added.
fn bare_deactivate_all(pdu: &[u8]) -> Option<Vec<u8>> {
    if pdu.first() != Some(&x224::TPKT_VERSION) {
        return None;
    }
    let data = SendData::parse(pdu, MCS_SEND_DATA_INDICATION).ok()??;
    let ud = data.user_data;
    let pdu_type = u16::from_le_bytes([*ud.get(2)?, *ud.get(3)?]);
    if ud.len() != 6 || pdu_type & 0xF != PDUTYPE_DEACTIVATEALLPDU {
        return None;
    }
    let mut fixed = ud.to_vec();
    fixed[..2].copy_from_slice(&10u16.to_le_bytes());
    fixed.extend_from_slice(&[0; 4]);
    data.with_user_data(&fixed).ok()
}
