//! The broker's RFB server handshake fed whatever a hostile browser sends.
#![no_main]
use libfuzzer_sys::fuzz_target;
use passerelle_proto::rfb::ServerHandshake;

fuzz_target!(|data: &[u8]| {
    let mut hs = ServerHandshake::new();
    let _ = hs.feed(data);
    let _ = hs.take_leftover();
});
