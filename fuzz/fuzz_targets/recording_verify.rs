//! A recording file as an attacker may hand it to `passerelle recording verify`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use passerelle_proto::recording::verify;

fuzz_target!(|data: &[u8]| {
    let _ = verify(data, |_, _| true);
});
