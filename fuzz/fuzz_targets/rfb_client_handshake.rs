//! The broker's RFB client handshake fed whatever a hostile VNC server sends, split anywhere.
#![no_main]
use libfuzzer_sys::fuzz_target;
use passerelle_proto::rfb::ClientHandshake;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let mut hs = ClientHandshake::new(Some(b"password".to_vec()));
    for chunk in rest.chunks(usize::from(split).max(1)) {
        if hs.feed(chunk).is_err() || hs.is_done() {
            break;
        }
    }
});
