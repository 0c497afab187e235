//! The view-only filter fed a hostile browser's message stream, split anywhere: it must never
//! panic, and never pass more bytes than it was given.
#![no_main]
use libfuzzer_sys::fuzz_target;
use passerelle_proto::rfb::ClientFilter;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let mut filter = ClientFilter::new(split & 1 == 1);
    let mut out = Vec::new();
    for chunk in rest.chunks(usize::from(split >> 1).max(1)) {
        if filter.feed(chunk, &mut out).is_err() {
            break;
        }
    }
    assert!(out.len() <= rest.len());
});
