use super::*;
use crate::rdp::client_info::{INFO_AUTOLOGON, credentials};
use crate::rdp::samples::{
    IO_CHANNEL, client_info, data_pdu, fast_path_input, slow_path, slow_path_input, ts_request,
};

fn creds(u: &str, p: &str) -> Credentials {
    Credentials {
        domain: String::new(),
        username: u.into(),
        password: p.into(),
    }
}

/// Feeds `stream` in chunks of `chunk` bytes; returns what was passed on, what a recording
/// got, and the input events counted.
fn run_client(opts: &ClientOptions, stream: &[u8], chunk: usize) -> (Vec<u8>, Vec<u8>, u64) {
    let mut f = ClientFilter::new(opts.clone());
    let (mut out, mut rec, mut events) = (Vec::new(), Vec::new(), 0);
    for piece in stream.chunks(chunk) {
        let mut o = Vec::new();
        let fed = f.feed(piece, &mut o).unwrap();
        rec.extend_from_slice(fed.record.as_deref().unwrap_or(&o));
        out.extend_from_slice(&o);
        events += fed.input_events;
    }
    assert_eq!(f.input, events);
    (out, rec, events)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The Client Info PDU's credentials and flags, found in a stream.
fn info_in(stream: &[u8]) -> (Credentials, u32) {
    let mut rest = stream;
    while !rest.is_empty() {
        let len = if rest[0] == 3 {
            usize::from(u16::from_be_bytes([rest[2], rest[3]]))
        } else if rest[0] == 0x30 {
            2 + usize::from(rest[1])
        } else {
            usize::from(u16::from_be_bytes([rest[1], rest[2]]) & 0x7FFF)
        };
        if let Ok(Some(d)) = SendData::parse(&rest[..len], MCS_SEND_DATA_REQUEST)
            && client_info::is_client_info(d.user_data)
        {
            return credentials(d.user_data).unwrap();
        }
        rest = &rest[len..];
    }
    panic!("no Client Info PDU in the stream");
}

const SECRET: &str = "Injected-S3cret!";

fn tls_stream() -> (Vec<u8>, Vec<Vec<u8>>) {
    let connect = vec![3, 0, 0, 12, 2, 0xF0, 0x80, 0x04, 0, 1, 0, 1]; // Erect Domain
    let info = client_info(&creds("placeholder", "placeholder"));
    let sync = data_pdu(0x1F, &[1, 0, 0xEA, 0x03]);
    let slow = slow_path_input(2);
    let fast = fast_path_input(3);
    let many = fast_path_input(20);
    let other_channel = slow_path(1004, &[9; 40]);
    let parts = vec![connect, info, sync, slow, fast, many, other_channel];
    (parts.concat(), parts)
}

#[test]
fn injects_credentials_and_keeps_the_password_out_of_recordings() {
    let (stream, parts) = tls_stream();
    let opts = ClientOptions {
        view_only: false,
        selected_protocol: protocol::SSL,
        inject: Some(Credentials::from_login("CORP\\helpdesk", SECRET)),
        autologon: true,
    };
    let pw = opts.inject.as_ref().unwrap().password_utf16();
    for chunk in [1, 2, 3, 7, 64, stream.len()] {
        let (out, rec, events) = run_client(&opts, &stream, chunk);
        let (sent, flags) = info_in(&out);
        assert_eq!(sent, Credentials::from_login("CORP\\helpdesk", SECRET));
        assert_ne!(flags & INFO_AUTOLOGON, 0);
        assert!(contains(&out, &pw), "the server gets the password");
        assert!(
            !contains(&rec, &pw),
            "the recording never does (chunk {chunk})"
        );
        assert_eq!(info_in(&rec).0.username, "helpdesk");
        assert_eq!(events, 2 + 3 + 20);
        // Everything but the Client Info PDU goes through untouched, in order.
        let without_info: Vec<u8> = [&parts[..1], &parts[2..]].concat().concat();
        let out_info_len = out.len() + parts[1].len() - stream.len();
        let out_without: Vec<u8> = [
            &out[..parts[0].len()],
            &out[parts[0].len() + out_info_len..],
        ]
        .concat();
        assert_eq!(out_without, without_info);
    }
}

#[test]
fn view_only_drops_input_pdus_whole() {
    let (stream, parts) = tls_stream();
    let opts = ClientOptions {
        view_only: true,
        selected_protocol: protocol::SSL,
        inject: None,
        autologon: false,
    };
    for chunk in [1, 5, stream.len()] {
        let (out, _, events) = run_client(&opts, &stream, chunk);
        assert_eq!(events, 25, "dropped input is still counted");
        let kept = [&parts[0], &parts[1], &parts[2], &parts[6]]
            .map(|p| p.as_slice())
            .concat();
        assert_eq!(out, kept, "input PDUs dropped whole, the rest as it was");
    }
    // Input before the Client Info PDU is not on a known I/O channel yet: the server would
    // not take it either, and it goes through.
    let early = [slow_path_input(1), client_info(&creds("a", "b"))].concat();
    let (out, _, _) = run_client(&opts, &early, 3);
    assert_eq!(out, early);
}

#[test]
fn nla_messages_pass_but_are_redacted_in_recordings() {
    let typed = creds("alice", "typed-password");
    let stream = [
        ts_request(300, 0xAB),
        ts_request(40, 0xCD),
        ts_request(2000, 0xEF),
        client_info(&typed),
        fast_path_input(1),
    ]
    .concat();
    let opts = ClientOptions {
        view_only: false,
        selected_protocol: protocol::HYBRID_EX,
        inject: Some(creds("stored", "never-used-with-nla")),
        autologon: true,
    };
    for chunk in [1, 13, stream.len()] {
        let (out, rec, _) = run_client(&opts, &stream, chunk);
        assert_eq!(out, stream, "NLA: the stream goes through untouched");
        assert!(!contains(&rec, &[0xAB; 16]) && !contains(&rec, &[0xEF; 16]));
        assert!(!contains(&rec, &typed.password_utf16()));
        assert!(rec.starts_with(&REDACTED_TS_REQUEST.repeat(3)));
        assert_eq!(info_in(&rec).0.username, "alice");
    }
}

#[test]
fn the_server_credssp_messages_are_redacted() {
    let rdp = [
        vec![0, 0, 0, 0], // Early User Authorization Result: success
        slow_path(IO_CHANNEL, &[5; 30]),
        vec![0x30, 0x07, 1, 2, 3, 4, 5], // fast-path output that starts like DER
    ]
    .concat();
    let stream = [ts_request(200, 0x11), ts_request(90, 0x22), rdp.clone()].concat();
    for chunk in [1, 4, stream.len()] {
        let mut f = ServerFilter::new(protocol::HYBRID_EX);
        let (mut out, mut rec) = (Vec::new(), Vec::new());
        for piece in stream.chunks(chunk) {
            let mut o = Vec::new();
            let fed = f.feed(piece, &mut o).unwrap();
            rec.extend_from_slice(fed.record.as_deref().unwrap_or(&o));
            out.extend_from_slice(&o);
        }
        assert_eq!(out, stream);
        assert!(!contains(&rec, &[0x11; 8]) && !contains(&rec, &[0x22; 8]));
        assert_eq!(
            rec,
            [REDACTED_TS_REQUEST, REDACTED_TS_REQUEST, &rdp].concat()
        );
    }
    // Still in CredSSP, or denied by the early authorization: the logon was refused.
    let mut f = ServerFilter::new(protocol::HYBRID);
    f.feed(&ts_request(10, 1), &mut Vec::new()).unwrap();
    assert!(f.logon_refused());
    f.feed(&slow_path(IO_CHANNEL, &[1; 9]), &mut Vec::new())
        .unwrap();
    assert!(!f.logon_refused());
    let mut f = ServerFilter::new(protocol::HYBRID_EX);
    f.feed(
        &[ts_request(10, 1), vec![5, 0, 0, 0]].concat(),
        &mut Vec::new(),
    )
    .unwrap();
    assert!(f.logon_refused(), "ACCESS_DENIED");
    let mut tls = ServerFilter::new(protocol::SSL);
    let mut o = Vec::new();
    let fed = tls.feed(&rdp[4..], &mut o).unwrap();
    assert_eq!(
        (o.as_slice(), fed),
        (&rdp[4..], Fed::default()),
        "TLS: all passes"
    );
}

#[test]
fn records_only_what_needs_redacting() {
    let opts = ClientOptions {
        selected_protocol: protocol::SSL,
        ..ClientOptions::default()
    };
    let mut f = ClientFilter::new(opts);
    let mut o = Vec::new();
    assert!(
        f.feed(&client_info(&creds("u", "p")), &mut o)
            .unwrap()
            .record
            .is_some()
    );
    let fed = f.feed(&fast_path_input(2), &mut o).unwrap();
    assert_eq!(
        fed,
        Fed {
            input_events: 2,
            record: None
        }
    );
}

#[test]
fn malformed_streams_are_refused() {
    let tls = ClientOptions {
        selected_protocol: protocol::SSL,
        ..ClientOptions::default()
    };
    let nla = ClientOptions {
        selected_protocol: protocol::HYBRID,
        ..ClientOptions::default()
    };
    let cases: &[(&ClientOptions, &[u8])] = &[
        (&tls, &[0x01, 0x02]),             // neither TPKT nor fast-path
        (&tls, &[0x03, 0, 0, 3]),          // TPKT too short
        (&tls, &[0x00, 0x01]),             // fast-path shorter than its header
        (&nla, &[0x04, 0x00]),             // CredSSP expected
        (&nla, &[0x30, 0x84, 0, 0, 0, 1]), // DER length too long
        (&nla, &[0x30, 0x83, 0x10, 0, 0]), // over MAX_PDU
        (
            &tls,
            &[
                3, 0, 0, 16, 2, 0xF0, 0x80, 0x64, 0, 6, 3, 0xEB, 0x70, 0x05, 1, 2,
            ],
        ), // MCS length
        (
            &tls,
            &[
                3, 0, 0, 15, 2, 0xF0, 0x80, 0x64, 0, 6, 3, 0xEB, 0x70, 0xC0, 1,
            ],
        ), // fragmented
    ];
    for (opts, bytes) in cases {
        let mut f = ClientFilter::new((*opts).clone());
        assert!(f.feed(bytes, &mut Vec::new()).is_err(), "{bytes:?}");
    }
    let mut s = ServerFilter::new(protocol::HYBRID);
    assert!(s.feed(&[0x07, 1, 2, 3], &mut Vec::new()).is_err());
}

#[test]
fn the_server_stream_passes_whole_but_repairs_bare_deactivate_all() {
    // MCS Send Data Indication on the I/O channel around a 6-byte Share Control Header.
    let bare = |pdu_type: u16| {
        let mut ud = 6u16.to_le_bytes().to_vec();
        ud.extend_from_slice(&pdu_type.to_le_bytes());
        ud.extend_from_slice(&1002u16.to_le_bytes());
        let mut pdu = slow_path(IO_CHANNEL, &ud);
        pdu[7] = 26 << 2;
        pdu
    };
    let fast = vec![0x00, 0x05, 1, 2, 3];
    let update = slow_path(IO_CHANNEL, &[7; 40]);
    let stream = [fast.clone(), bare(0x16), update.clone(), bare(0x17)].concat();
    for chunk in [1, 3, stream.len()] {
        let mut f = ServerFilter::new(protocol::SSL);
        let mut out = Vec::new();
        for piece in stream.chunks(chunk) {
            let fed = f.feed(piece, &mut out).unwrap();
            assert_eq!(fed.record, None, "nothing to redact after CredSSP");
        }
        assert_eq!(f.repaired, 1);
        assert_eq!(f.pending(), 0);
        assert_eq!(out.len(), stream.len() + 4);
        let repaired = &out[fast.len()..fast.len() + bare(0x16).len() + 4];
        let d = SendData::parse(repaired, MCS_SEND_DATA_INDICATION)
            .unwrap()
            .unwrap();
        assert_eq!(d.user_data, [10, 0, 0x16, 0, 0xEA, 0x03, 0, 0, 0, 0]);
        assert!(
            out.ends_with(&[update.clone(), bare(0x17)].concat()),
            "other PDUs untouched"
        );
    }
    let mut f = ServerFilter::new(protocol::SSL);
    assert!(f.feed(&[0x01, 0x02], &mut Vec::new()).is_err());
}

#[test]
fn a_connect_initial_gets_a_client_build_xrdp_resizes() {
    // Connect-Initial's tag, some BER, the GCC key, a PER length, then TS_UD_CS_CORE.
    let mut core = vec![0x01, 0xC0, 24 + 8, 0];
    core.extend_from_slice(&0x0008_0004u32.to_le_bytes());
    core.extend_from_slice(&[0xE8, 0x03, 0x90, 0x02, 0x01, 0xCA, 0x03, 0xAA]);
    core.extend_from_slice(&0x0409u32.to_le_bytes()); // keyboard layout
    core.extend_from_slice(&0u32.to_le_bytes()); // clientBuild
    core.extend_from_slice(&[0; 8]);
    let mut body = vec![0x7F, 0x65, 0x82, 0x01, 0x00, 0x04, 0x01, 0x01];
    body.extend_from_slice(b"Duca");
    body.extend_from_slice(&[0x81, 0x0A]);
    body.extend_from_slice(&core);
    let mut pdu = vec![3, 0, 0, 0, 2, 0xF0, 0x80];
    pdu.extend_from_slice(&body);
    let n = pdu.len() as u16;
    pdu[2..4].copy_from_slice(&n.to_be_bytes());
    let mut f = ClientFilter::new(ClientOptions::default());
    let mut out = Vec::new();
    f.feed(&pdu, &mut out).unwrap();
    assert_eq!(out.len(), pdu.len());
    let at = out.windows(2).position(|w| w == [0x01, 0xC0]).unwrap();
    assert_eq!(
        &out[at + 16..at + 20],
        &0x0409u32.to_le_bytes(),
        "keyboard layout kept"
    );
    assert_eq!(&out[at + 20..at + 24], &2600u32.to_le_bytes());
    // A build xrdp already accepts stays.
    let mut newer = pdu.clone();
    let at = newer.windows(2).position(|w| w == [0x01, 0xC0]).unwrap();
    newer[at + 20..at + 24].copy_from_slice(&19041u32.to_le_bytes());
    let mut out = Vec::new();
    ClientFilter::new(ClientOptions::default())
        .feed(&newer, &mut out)
        .unwrap();
    assert_eq!(out, newer);
}

#[test]
fn the_stream_splits_once_after_the_font_map() {
    // Server Data PDUs (MCS Send Data Indication on the I/O channel): TS_SHARECONTROLHEADER,
    // then TS_SHAREDATAHEADER with pduType2 at its 9th byte.
    let data_pdu = |pdu_type2: u8| {
        let mut ud = 26u16.to_le_bytes().to_vec();
        ud.extend_from_slice(&0x17u16.to_le_bytes());
        ud.extend_from_slice(&1002u16.to_le_bytes());
        ud.extend_from_slice(&[0x0A, 0, 0, 0, 0, 1, 12, 0, pdu_type2, 0, 0, 0]);
        ud.extend_from_slice(&[0; 8]);
        let mut pdu = slow_path(IO_CHANNEL, &ud);
        pdu[7] = 26 << 2;
        pdu
    };
    let (control, font_map) = (data_pdu(0x14), data_pdu(0x28));
    let after = slow_path(1004, &[0x50, 0, 2, 0]);
    let stream = [
        control.clone(),
        font_map.clone(),
        after.clone(),
        font_map.clone(),
    ]
    .concat();
    let mut f = ServerFilter::new(protocol::SSL);
    let mut out = Vec::new();
    f.feed(&stream, &mut out).unwrap();
    assert_eq!(out, stream);
    assert_eq!(f.take_split(), Some(control.len() + font_map.len()));
    assert_eq!(f.take_split(), None, "taken once");
    f.feed(&font_map, &mut Vec::new()).unwrap();
    assert_eq!(f.take_split(), None, "only the first Font Map");
    // Split anywhere: the split point counts from what the feed that completed it appended.
    let mut f = ServerFilter::new(protocol::SSL);
    let mut out = Vec::new();
    f.feed(&stream[..control.len() + 5], &mut out).unwrap();
    assert_eq!(f.take_split(), None);
    let before = out.len();
    f.feed(&stream[control.len() + 5..], &mut out).unwrap();
    assert_eq!(
        f.take_split(),
        Some(control.len() + font_map.len() - before)
    );
}
