//! The plaintext RDP stream inside the broker's TLS, one filter per direction.
//!
//! [`ClientFilter`] frames what the viewer sends: the CredSSP messages of NLA (DER `TSRequest`s)
//! until the first TPKT, then TPKT (slow-path) and fast-path PDUs. It finds the Client Info PDU
//! and rewrites it (injected credentials, `INFO_AUTOLOGON`), drops input PDUs whole in
//! view-only sessions (fast-path input, slow-path `TS_INPUT_PDU`) so that the stream stays
//! valid, and counts input events; it raises a Connect-Initial's `clientBuild` that xrdp would
//! not resize. [`ServerFilter`] (`server`) frames the server's CredSSP messages, then its PDUs,
//! which pass as they come but for xrdp's bare Deactivate All, and says where the connection
//! sequence ends.
//!
//! Both take bytes split anywhere and say what a recording must hold instead of what they
//! passed on ([`Fed::record`]): the Client Info PDU without its password, and every CredSSP
//! message replaced by [`REDACTED_TS_REQUEST`], so that a recording never holds a secret and
//! still frames like the original stream. Memory: one partial PDU, at most [`MAX_PDU`] bytes.

use super::client_info::{self, Credentials};
use super::x224::{self, protocol};
use super::{Malformed, der_length};

/// Largest PDU the filters hold: TPKT's limit, and a generous one for a CredSSP message.
pub const MAX_PDU: usize = 0x1_0000;
/// What a recording holds in place of a CredSSP message: a `TSRequest` with only a version.
pub const REDACTED_TS_REQUEST: &[u8] = &[0x30, 0x05, 0xA0, 0x03, 0x02, 0x01, 0x06];

const DER_SEQUENCE: u8 = 0x30;
const X224_DATA: u8 = 0xF0;
const MCS_SEND_DATA_REQUEST: u8 = 25;
const MCS_SEND_DATA_INDICATION: u8 = 26;
const PDUTYPE_DEACTIVATEALLPDU: u16 = 0x6;
const PDUTYPE_DATAPDU: u16 = 0x7;
const PDUTYPE2_INPUT: u8 = 0x1C;
const PDUTYPE2_FONTMAP: u8 = 0x28;

/// What a filter saw in one call.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fed {
    /// Input events (keys, pointer moves) seen, dropped or not.
    pub input_events: u64,
    /// When set, a recording gets these bytes instead of what was appended to `out`.
    pub record: Option<Vec<u8>>,
}

/// The output of one call: the stream to pass on and, once something was redacted, the
/// stream to record.
struct Outputs<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    rec: Option<Vec<u8>>,
}

impl<'a> Outputs<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        let start = out.len();
        Self {
            out,
            start,
            rec: None,
        }
    }

    fn pass(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
        if let Some(rec) = &mut self.rec {
            rec.extend_from_slice(bytes);
        }
    }

    fn redact(&mut self, wire: &[u8], recorded: &[u8]) {
        let rec = self
            .rec
            .get_or_insert_with(|| self.out[self.start..].to_vec());
        rec.extend_from_slice(recorded);
        self.out.extend_from_slice(wire);
    }
}

/// The length of the fast-path PDU at the start of `buf`, once its header is in, and the
/// size of that header.
fn fast_path_length(buf: &[u8]) -> Result<Option<(usize, usize)>, Malformed> {
    let Some(&b1) = buf.get(1) else {
        return Ok(None);
    };
    let (len, header) = if b1 & 0x80 == 0 {
        (usize::from(b1), 2)
    } else {
        let Some(&b2) = buf.get(2) else {
            return Ok(None);
        };
        ((usize::from(b1 & 0x7F) << 8) | usize::from(b2), 3)
    };
    if len <= header {
        return Err(Malformed::new("fast-path PDU length too small"));
    }
    Ok(Some((len, header)))
}

fn checked(len: Option<usize>) -> Result<Option<usize>, Malformed> {
    match len {
        Some(l) if l > MAX_PDU => Err(Malformed::new("RDP PDU too long")),
        other => Ok(other),
    }
}

/// An MCS Send Data Request inside a TPKT and X.224 Data TPDU (MS-RDPBCGR 2.2.1.x slow path).
struct SendData<'a> {
    /// The bytes from the MCS PDU type through the priority byte.
    head: &'a [u8],
    channel: u16,
    /// The PER length was in its two-byte form (kept so, as servers accept both).
    long_length: bool,
    user_data: &'a [u8],
}

impl<'a> SendData<'a> {
    /// `None` for TPKTs that hold something else (MCS connection PDUs, X.224 control); `kind`
    /// is the MCS PDU type (Send Data Request from clients, Indication from servers).
    fn parse(pdu: &'a [u8], kind: u8) -> Result<Option<Self>, Malformed> {
        if pdu.get(4..6) != Some(&[2, X224_DATA]) {
            return Ok(None);
        }
        let Some(head) = pdu.get(7..13) else {
            return Ok(None);
        };
        if head[0] >> 2 != kind {
            return Ok(None);
        }
        let b = *pdu
            .get(13)
            .ok_or(Malformed::new("truncated MCS Send Data Request"))?;
        let (len, start) = match b & 0xC0 {
            0x00 | 0x40 => (usize::from(b), 14),
            0x80 => {
                let lo = *pdu
                    .get(14)
                    .ok_or(Malformed::new("truncated MCS Send Data Request"))?;
                ((usize::from(b & 0x3F) << 8) | usize::from(lo), 15)
            }
            _ => return Err(Malformed::new("fragmented MCS Send Data Request")),
        };
        let user_data = &pdu[start..];
        if user_data.len() != len {
            return Err(Malformed::new("MCS length does not match its TPKT"));
        }
        Ok(Some(Self {
            head,
            channel: u16::from_be_bytes([head[3], head[4]]),
            long_length: start == 15,
            user_data,
        }))
    }

    /// The same PDU around other user data, with every length fixed up.
    fn with_user_data(&self, user_data: &[u8]) -> Result<Vec<u8>, Malformed> {
        let n = user_data.len();
        let per: Vec<u8> = match u8::try_from(n) {
            Ok(b) if b < 0x80 && !self.long_length => vec![b],
            _ if n < 0x4000 => vec![0x80 | (n >> 8) as u8, (n & 0xFF) as u8],
            _ => return Err(Malformed::new("rewritten PDU too long")),
        };
        let total = x224::TPKT_HEADER + 3 + self.head.len() + per.len() + n;
        let total = u16::try_from(total).map_err(|_| Malformed::new("rewritten PDU too long"))?;
        let mut pdu = vec![x224::TPKT_VERSION, 0];
        pdu.extend_from_slice(&total.to_be_bytes());
        pdu.extend_from_slice(&[2, X224_DATA, 0x80]);
        pdu.extend_from_slice(self.head);
        pdu.extend_from_slice(&per);
        pdu.extend_from_slice(user_data);
        Ok(pdu)
    }
}

/// The BER tag of MCS Connect-Initial (`[APPLICATION 101]`).
const MCS_CONNECT_INITIAL: [u8; 2] = [0x7F, 0x65];
/// The client build below which xrdp 0.9 refuses to resize a session ("older client can't
/// resize"); IronRDP's web client reports 0.
pub const MIN_RESIZABLE_CLIENT_BUILD: u32 = 420;
/// What a lower client build is raised to: FreeRDP's default.
pub const RAISED_CLIENT_BUILD: u32 = 2600;

/// Raises `clientBuild` in the Client Core Data (`TS_UD_CS_CORE`) of an MCS Connect-Initial to
/// [`RAISED_CLIENT_BUILD`] when it is below [`MIN_RESIZABLE_CLIENT_BUILD`], in place (no length
/// changes). The user data follow the GCC "Duca" key; anything unexpected is left alone.
fn raise_client_build(pdu: &mut [u8]) {
    let Some(key) = pdu.windows(4).position(|w| w == b"Duca") else {
        return;
    };
    // The PER length of the user data, one or two bytes.
    let mut at = key + 4;
    match pdu.get(at) {
        Some(b) if b & 0x80 != 0 => at += 2,
        Some(_) => at += 1,
        None => return,
    }
    while let Some(head) = pdu.get(at..at + 4) {
        let kind = u16::from_le_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_le_bytes([head[2], head[3]]));
        if len < 4 {
            return;
        }
        if kind == 0xC001 {
            // Header (4), version (4), width, height, colour depth, SAS sequence (2 each),
            // keyboard layout (4), then clientBuild.
            if let Some(build) = pdu.get_mut(at + 20..at + 24).filter(|_| len >= 24) {
                let value = u32::from_le_bytes([build[0], build[1], build[2], build[3]]);
                if value < MIN_RESIZABLE_CLIENT_BUILD {
                    build.copy_from_slice(&RAISED_CLIENT_BUILD.to_le_bytes());
                }
            }
            return;
        }
        at += len;
    }
}

/// The number of events in a slow-path Input PDU (`None` for any other data).
fn slow_path_input_events(user_data: &[u8]) -> Option<u64> {
    // TS_SHARECONTROLHEADER (6 bytes), then TS_SHAREDATAHEADER (12), then numEvents.
    let pdu_type = u16::from_le_bytes([*user_data.get(2)?, *user_data.get(3)?]);
    if pdu_type & 0xF != PDUTYPE_DATAPDU || pdu_type & 0xFFF0 != 0x10 {
        return None;
    }
    if *user_data.get(14)? != PDUTYPE2_INPUT {
        return None;
    }
    let n = user_data
        .get(18..20)
        .map_or(1, |b| u16::from_le_bytes([b[0], b[1]]));
    Some(u64::from(n.max(1)))
}

/// The number of events in a fast-path input PDU.
fn fast_path_events(pdu: &[u8], header: usize) -> u64 {
    let n = (pdu[0] >> 2) & 0xF;
    if n != 0 {
        return u64::from(n);
    }
    let encrypted = pdu[0] & 0x80 != 0;
    match pdu.get(header) {
        Some(&n) if !encrypted && n > 0 => u64::from(n),
        _ => 1,
    }
}

/// What the Client Info PDU turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfoSeen {
    /// Stored credentials replaced the viewer's.
    pub injected: bool,
    /// The PDU sent to the server carries a password.
    pub has_password: bool,
}

/// How to filter the viewer's stream.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Drop every input PDU.
    pub view_only: bool,
    /// The protocol the server selected (see [`protocol`]): NLA starts with CredSSP.
    pub selected_protocol: u32,
    /// Credentials to put into the Client Info PDU.
    pub inject: Option<Credentials>,
    /// Set `INFO_AUTOLOGON` when the Client Info PDU carries a password.
    pub autologon: bool,
}

/// Filters the viewer's stream (see the module documentation).
#[derive(Debug)]
pub struct ClientFilter {
    opts: ClientOptions,
    credssp: bool,
    buf: Vec<u8>,
    /// The I/O channel, learnt from the Client Info PDU (input travels on it).
    io_channel: Option<u16>,
    info: Option<ClientInfoSeen>,
    /// Input events seen so far.
    pub input: u64,
}

impl ClientFilter {
    pub fn new(opts: ClientOptions) -> Self {
        Self {
            credssp: protocol::is_nla(opts.selected_protocol),
            opts,
            buf: Vec::new(),
            io_channel: None,
            info: None,
            input: 0,
        }
    }

    /// What the Client Info PDU was, once it went by.
    pub fn client_info(&self) -> Option<ClientInfoSeen> {
        self.info
    }

    /// Takes bytes as they arrive and appends what to pass on to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Fed, Malformed> {
        self.buf.extend_from_slice(input);
        let buf = std::mem::take(&mut self.buf);
        let mut o = Outputs::new(out);
        let mut fed = Fed::default();
        let mut pos = 0;
        let result = loop {
            match self.next(&buf[pos..], &mut o, &mut fed) {
                Ok(Some(used)) => pos += used,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.buf = buf;
        self.buf.drain(..pos);
        result?;
        self.input += fed.input_events;
        fed.record = o.rec;
        Ok(fed)
    }

    /// Handles the PDU at the start of `rest`; `None` when it is not all there.
    fn next(
        &mut self,
        rest: &[u8],
        o: &mut Outputs<'_>,
        fed: &mut Fed,
    ) -> Result<Option<usize>, Malformed> {
        let Some(&first) = rest.first() else {
            return Ok(None);
        };
        if self.credssp {
            match first {
                DER_SEQUENCE => {
                    let Some(len) = checked(der_length(rest)?)? else {
                        return Ok(None);
                    };
                    let Some(msg) = rest.get(..len) else {
                        return Ok(None);
                    };
                    o.redact(msg, REDACTED_TS_REQUEST);
                    return Ok(Some(len));
                }
                x224::TPKT_VERSION => self.credssp = false,
                _ => return Err(Malformed::new("expected a CredSSP message")),
            }
        }
        if first == x224::TPKT_VERSION {
            let Some(len) = checked(x224::tpkt_length(rest)?)? else {
                return Ok(None);
            };
            let Some(pdu) = rest.get(..len) else {
                return Ok(None);
            };
            self.slow_path(pdu, o, fed)?;
            return Ok(Some(len));
        }
        if first & 0x3 != 0 {
            return Err(Malformed::new("neither a TPKT nor a fast-path PDU"));
        }
        let Some((len, header)) = fast_path_length(rest)? else {
            return Ok(None);
        };
        checked(Some(len))?;
        let Some(pdu) = rest.get(..len) else {
            return Ok(None);
        };
        fed.input_events += fast_path_events(pdu, header);
        if !self.opts.view_only {
            o.pass(pdu);
        }
        Ok(Some(len))
    }

    fn slow_path(
        &mut self,
        pdu: &[u8],
        o: &mut Outputs<'_>,
        fed: &mut Fed,
    ) -> Result<(), Malformed> {
        if pdu.get(7..9) == Some(&MCS_CONNECT_INITIAL) {
            let mut pdu = pdu.to_vec();
            raise_client_build(&mut pdu);
            o.pass(&pdu);
            return Ok(());
        }
        let Some(data) = SendData::parse(pdu, MCS_SEND_DATA_REQUEST)? else {
            o.pass(pdu);
            return Ok(());
        };
        if self.info.is_none() && client_info::is_client_info(data.user_data) {
            let tls = !protocol::is_nla(self.opts.selected_protocol);
            let inject = self.opts.inject.as_ref().filter(|_| tls);
            let r = client_info::rewrite(data.user_data, inject, self.opts.autologon && tls)?;
            let recorded = data.with_user_data(&r.recorded)?;
            if r.wire == data.user_data {
                o.redact(pdu, &recorded);
            } else {
                o.redact(&data.with_user_data(&r.wire)?, &recorded);
            }
            self.io_channel = Some(data.channel);
            self.info = Some(ClientInfoSeen {
                injected: inject.is_some(),
                has_password: r.has_password,
            });
            return Ok(());
        }
        if self.io_channel == Some(data.channel)
            && let Some(n) = slow_path_input_events(data.user_data)
        {
            fed.input_events += n;
            if self.opts.view_only {
                return Ok(());
            }
        }
        o.pass(pdu);
        Ok(())
    }
}

mod server;

pub use server::ServerFilter;

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
