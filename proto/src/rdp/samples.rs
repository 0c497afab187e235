//! Client PDUs as IronRDP and mstsc send them, built from parts: for unit tests, fuzz seeds and
//! the bench's client. Only framing is realistic; payloads are what the filters look at.

use super::client_info::{self, Credentials};

/// The I/O channel id servers usually give (MCS channel 1003).
pub const IO_CHANNEL: u16 = 1003;

/// A slow-path PDU: TPKT, X.224 Data, MCS Send Data Request on `channel` around `user_data`
/// (the PER length in its long form, as FreeRDP writes it).
pub fn slow_path(channel: u16, user_data: &[u8]) -> Vec<u8> {
    let total = 4 + 3 + 6 + 2 + user_data.len();
    let mut pdu = vec![3, 0];
    pdu.extend_from_slice(&u16::try_from(total).unwrap_or(u16::MAX).to_be_bytes());
    pdu.extend_from_slice(&[2, 0xF0, 0x80, 25 << 2, 0, 6]);
    pdu.extend_from_slice(&channel.to_be_bytes());
    pdu.push(0x70);
    let n = u16::try_from(user_data.len()).unwrap_or(0x3FFF).min(0x3FFF);
    pdu.extend_from_slice(&(0x8000 | n).to_be_bytes());
    pdu.extend_from_slice(user_data);
    pdu
}

/// The Client Info PDU with these credentials.
pub fn client_info(creds: &Credentials) -> Vec<u8> {
    slow_path(IO_CHANNEL, &client_info::build(creds, 0, &[]))
}

/// A slow-path data PDU of type `pdu_type2` with `body` after its headers.
pub fn data_pdu(pdu_type2: u8, body: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    let total = u16::try_from(18 + body.len()).unwrap_or(u16::MAX);
    d.extend_from_slice(&total.to_le_bytes());
    d.extend_from_slice(&0x17u16.to_le_bytes()); // PDUTYPE_DATAPDU | TS_PROTOCOL_VERSION
    d.extend_from_slice(&1007u16.to_le_bytes());
    d.extend_from_slice(&0x0001_03EAu32.to_le_bytes()); // shareId
    d.extend_from_slice(&[0, 1]); // pad, streamId
    d.extend_from_slice(&u16::try_from(body.len()).unwrap_or(0).to_le_bytes());
    d.extend_from_slice(&[pdu_type2, 0, 0, 0]);
    d.extend_from_slice(body);
    slow_path(IO_CHANNEL, &d)
}

/// A slow-path Input PDU with `events` scancode events.
pub fn slow_path_input(events: u16) -> Vec<u8> {
    let mut body = events.to_le_bytes().to_vec();
    body.extend_from_slice(&[0, 0]);
    for _ in 0..events {
        // eventTime, messageType INPUT_EVENT_SCANCODE, flags, keyCode 'A', pad
        body.extend_from_slice(&[0, 0, 0, 0, 4, 0, 0, 0, 0x1E, 0, 0, 0]);
    }
    data_pdu(0x1C, &body)
}

/// A fast-path input PDU with `events` scancode events (1 to 15 in the header, more after it).
pub fn fast_path_input(events: u8) -> Vec<u8> {
    let mut body = Vec::new();
    for _ in 0..events {
        body.extend_from_slice(&[0, 0x1E]); // FASTPATH_INPUT_EVENT_SCANCODE, 'A'
    }
    let in_header = events <= 15;
    let extra = usize::from(!in_header);
    let len = 3 + extra + body.len();
    let n = if in_header { events } else { 0 };
    let mut pdu = vec![n << 2];
    pdu.extend_from_slice(&(0x8000 | u16::try_from(len).unwrap_or(0x7FFF)).to_be_bytes());
    if !in_header {
        pdu.push(events);
    }
    pdu.extend_from_slice(&body);
    pdu
}

/// A CredSSP `TSRequest`-shaped DER element of `len` content bytes holding `fill`.
pub fn ts_request(len: usize, fill: u8) -> Vec<u8> {
    let mut pdu = vec![0x30];
    match len {
        0..=0x7F => pdu.push(len as u8),
        0x80..=0xFF => pdu.extend_from_slice(&[0x81, len as u8]),
        _ => {
            pdu.push(0x82);
            pdu.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
        }
    }
    pdu.extend(std::iter::repeat_n(fill, len));
    pdu
}
