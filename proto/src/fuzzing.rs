//! The properties the fuzz targets of `fuzz/` check, one function per target, so that the
//! committed corpus (and any crash found, once added to it) also runs as an ordinary test
//! (`proto/tests/fuzz_corpus.rs`). Each takes arbitrary bytes and panics only when a property
//! breaks.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{CreateSession, PatchAgent, PatchTenant, RegisterAgent};
use crate::ids::{AgentId, ServiceName, TenantName};
use crate::launch::LaunchUrl;
use crate::rdp::x224::{self, Negotiation, protocol};
use crate::rdp::{
    ClientFilter as RdpClientFilter, ClientOptions, Credentials, ServerFilter, cleanpath,
};
use crate::recording::verify;
use crate::rfb::{ClientFilter, ClientHandshake, ServerHandshake};
use crate::terminal::transcript::{Extractor, MAX_LINE_CHARS, Mode};
use crate::terminal::{FromViewer, MAX_CONTROL_BYTES, Utf8Stream};

/// A target's property: arbitrary bytes in, a panic when the property breaks.
pub type Property = fn(&[u8]);

/// Names of the targets, as in `fuzz/Cargo.toml`, with their property.
pub const TARGETS: &[(&str, Property)] = &[
    ("api_bodies", api_bodies),
    ("launch_url", launch_url),
    ("proxy_header", proxy_header),
    ("rdcleanpath_request", rdcleanpath_request),
    ("rdp_client_filter", rdp_client_filter),
    ("rdp_server_filter", rdp_server_filter),
    ("rdp_x224_confirm", rdp_x224_confirm),
    ("recording_verify", recording_verify),
    ("rfb_client_filter", rfb_client_filter),
    ("rfb_client_handshake", rfb_client_handshake),
    ("rfb_server_handshake", rfb_server_handshake),
    ("terminal_control", terminal_control),
    ("terminal_transcript", terminal_transcript),
];

fn round_trip<T: Serialize + DeserializeOwned>(body: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<T>(body) {
        let once = serde_json::to_string(&value).ok();
        let again = once
            .as_deref()
            .and_then(|s| serde_json::from_str::<T>(s).ok());
        let twice = again.and_then(|v| serde_json::to_string(&v).ok());
        assert!(
            once.is_some() && once == twice,
            "a parsed body does not print back to itself"
        );
    }
}

/// API request bodies and ids as any client may send them: what parses prints back to JSON
/// that parses to the same (nothing silently reinterpreted); a valid id is never empty and has
/// no path separator or control character.
pub fn api_bodies(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => round_trip::<CreateSession>(body),
        1 => round_trip::<RegisterAgent>(body),
        2 => round_trip::<PatchAgent>(body),
        _ => round_trip::<PatchTenant>(body),
    }
    if let Ok(text) = std::str::from_utf8(body) {
        for ok in [
            AgentId::new(text).is_ok(),
            ServiceName::new(text).is_ok(),
            TenantName::new(text).is_ok(),
        ] {
            if ok {
                assert!(!text.is_empty() && !text.contains(['/', '\0', '\n']));
            }
        }
    }
}

/// Launch URLs as a malicious web page may hand them to the desktop helper: what parses prints
/// back to something that parses to the same.
pub fn launch_url(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(url) = LaunchUrl::parse(text)
    {
        assert_eq!(LaunchUrl::parse(&url.to_url()).as_ref(), Ok(&url));
    }
}

/// A PROXY protocol v2 header as anyone who can reach the SSH port may send it (the broker only
/// reads one from a trusted proxy, but parses whatever comes): a header is never longer than the
/// limit or than the bytes given, and every prefix of a complete header asks for more.
pub fn proxy_header(data: &[u8]) {
    match crate::proxy::parse(data) {
        Ok(h) => {
            assert!(h.len <= data.len() && h.len <= crate::proxy::MAX_HEADER);
            for cut in 0..h.len {
                assert!(matches!(
                    crate::proxy::parse(&data[..cut]),
                    Err(crate::proxy::Error::Incomplete(n)) if n > cut && n <= h.len
                ));
            }
        }
        Err(crate::proxy::Error::Incomplete(n)) => {
            assert!(n > data.len() && n <= crate::proxy::MAX_HEADER);
        }
        Err(_) => {}
    }
}

/// A recording file as an attacker may hand it to `passerelle recording verify`.
pub fn recording_verify(data: &[u8]) {
    let _ = verify(data, |_, _| true);
}

/// The viewer-message filter (view-only, and the SetEncodings rewrite of recorded sessions) fed
/// a hostile browser's message stream, split anywhere: it never passes more bytes than it was
/// given.
pub fn rfb_client_filter(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let mut filter = ClientFilter::new(split & 1 == 1);
    if split & 2 == 2 {
        filter = filter.decodable_only();
    }
    let mut out = Vec::new();
    for chunk in rest.chunks(usize::from(split >> 2).max(1)) {
        if filter.feed(chunk, &mut out).is_err() {
            break;
        }
    }
    assert!(out.len() <= rest.len());
}

/// The broker's RFB client handshake fed whatever a hostile VNC server sends, split anywhere.
pub fn rfb_client_handshake(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let mut hs = ClientHandshake::new(Some(b"password".to_vec()));
    for chunk in rest.chunks(usize::from(split).max(1)) {
        if hs.feed(chunk).is_err() || hs.is_done() {
            break;
        }
    }
}

/// The broker's RFB server handshake fed whatever a hostile browser sends.
pub fn rfb_server_handshake(data: &[u8]) {
    let mut hs = ServerHandshake::new();
    let _ = hs.feed(data);
    let _ = hs.take_leftover();
}

/// The first message of an RDP viewer (RDCleanPath), as a hostile browser may send it: what
/// parses has an X.224 Connection Request that parses, and builds back into a request that
/// parses to the same.
pub fn rdcleanpath_request(data: &[u8]) {
    let _ = cleanpath::detect(data);
    if let Ok(req) = cleanpath::parse_request(data) {
        assert!(x224::parse_connection_request(&req.x224).is_ok());
        let again = cleanpath::request(
            req.x224.clone(),
            req.destination.as_deref().unwrap_or_default(),
            req.proxy_auth.as_deref().unwrap_or_default(),
            req.preconnection_blob.clone(),
        )
        .ok()
        .and_then(|der| cleanpath::parse_request(&der).ok());
        let again = again.map(|r| (r.x224, r.connection));
        assert_eq!(again, Some((req.x224, req.connection)));
    }
}

/// The password the RDP filter property injects, to be looked for in what is recorded.
const FUZZ_PASSWORD: &str = "fuzz-injected-secret";

/// The viewer's RDP stream after TLS, split anywhere, through the broker's filter: the
/// recording never holds the injected password (unless the viewer sent it itself), and
/// without injection the filter never passes more bytes than it was given.
pub fn rdp_client_filter(data: &[u8]) {
    let Some((&opts, rest)) = data.split_first() else {
        return;
    };
    let Some((&split, rest)) = rest.split_first() else {
        return;
    };
    let inject = opts & 4 != 0;
    let mut filter = RdpClientFilter::new(ClientOptions {
        view_only: opts & 1 != 0,
        selected_protocol: if opts & 2 != 0 {
            protocol::HYBRID_EX
        } else {
            protocol::SSL
        },
        inject: inject.then(|| Credentials::from_login("CORP\\helpdesk", FUZZ_PASSWORD)),
        autologon: opts & 8 != 0,
    });
    let secret = Credentials::from_login("", FUZZ_PASSWORD).password_utf16();
    let holds = |hay: &[u8]| hay.windows(secret.len()).any(|w| w == secret);
    let (mut out, mut recorded) = (Vec::new(), Vec::new());
    for chunk in rest.chunks(usize::from(split).max(1)) {
        let mut o = Vec::new();
        match filter.feed(chunk, &mut o) {
            Ok(fed) => recorded.extend_from_slice(fed.record.as_deref().unwrap_or(&o)),
            Err(_) => break,
        }
        out.extend_from_slice(&o);
    }
    assert!(
        holds(rest) || !holds(&recorded),
        "a recording holds the password"
    );
    if !inject {
        assert!(out.len() <= rest.len());
    }
}

/// The server's RDP stream after TLS, split anywhere: every byte passes, in order, but for the
/// Deactivate All PDUs the filter repairs (4 bytes longer each).
pub fn rdp_server_filter(data: &[u8]) {
    let Some((&opts, rest)) = data.split_first() else {
        return;
    };
    let selected = [protocol::SSL, protocol::HYBRID, protocol::HYBRID_EX][usize::from(opts % 3)];
    let mut filter = ServerFilter::new(selected);
    let mut out = Vec::new();
    let mut fed = 0;
    for chunk in rest.chunks(usize::from(opts >> 2).max(1)) {
        if filter.feed(chunk, &mut out).is_err() {
            return;
        }
        fed += chunk.len();
    }
    let passed = fed - filter.pending();
    let repaired = usize::try_from(filter.repaired).unwrap_or(usize::MAX);
    assert_eq!(out.len(), passed + 4 * repaired, "bytes lost or invented");
    if repaired == 0 {
        assert!(
            rest.starts_with(&out),
            "the server filter changed or reordered bytes"
        );
    }
}

/// A workstation's answer to the Connection Request: a negotiation that parses builds back
/// into a Confirm that parses to the same.
pub fn rdp_x224_confirm(data: &[u8]) {
    let _ = x224::tpkt_length(data);
    if let Ok(n) = x224::parse_connection_confirm(data) {
        assert_eq!(
            x224::parse_connection_confirm(&x224::connection_confirm(n)).ok(),
            Some(n)
        );
        if let Negotiation::Failure(code) = n {
            let _ = x224::failure_text(code);
        }
    }
}

/// A terminal page's control messages as a hostile page may send them: what parses is within
/// its bounds and prints back to JSON that parses to the same.
pub fn terminal_control(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(msg) = FromViewer::parse(text) {
        assert!(text.len() <= MAX_CONTROL_BYTES);
        let printed = serde_json::to_string(&msg).unwrap_or_default();
        assert_eq!(FromViewer::parse(&printed).as_ref(), Ok(&msg));
    }
}

/// Whatever a workstation prints (or an operator types), split anywhere, through the transcript
/// extractor and the UTF-8 joiner: lines are bounded and hold no control character, and the
/// text decoded in pieces is the text decoded whole.
pub fn terminal_transcript(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let mode = if split & 1 == 1 {
        Mode::Input
    } else {
        Mode::Output
    };
    let mut x = Extractor::new(mode);
    let (mut pieces, mut whole) = (Utf8Stream::default(), Utf8Stream::default());
    let (mut a, mut b) = (String::new(), String::new());
    for (i, chunk) in rest.chunks(usize::from(split >> 1).max(1)).enumerate() {
        x.feed(i as u64, chunk);
        pieces.decode(chunk, &mut a);
    }
    pieces.finish(&mut a);
    whole.decode(rest, &mut b);
    whole.finish(&mut b);
    assert_eq!(a, b, "decoding in pieces changed the text");
    for line in x.finish() {
        assert!(line.text.chars().count() <= MAX_LINE_CHARS);
        assert!(!line.text.chars().any(char::is_control), "{:?}", line.text);
    }
}

#[cfg(test)]
mod tests {
    /// A few thousand pseudo-random inputs, biased towards the bytes terminals give meaning
    /// to, through the terminal properties (the fuzzer explores further; this runs everywhere).
    #[test]
    fn terminal_properties_hold_on_random_input() {
        const ALPHABET: &[u8] =
            b"\x1b[];?0123456789;:CDGKPX@JHmhl\x07\\\x08\x7f\t\r\n \xe2\x82\xac\xff\xf0\x9fPX^_(";
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..3000 {
            let len = (next() % 600) as usize;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if r % 4 == 0 {
                        (r >> 8) as u8
                    } else {
                        ALPHABET[(r >> 8) as usize % ALPHABET.len()]
                    }
                })
                .collect();
            super::terminal_transcript(&data);
            super::terminal_control(&data);
        }
    }
}
