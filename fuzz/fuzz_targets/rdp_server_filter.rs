//! See `passerelle_proto::fuzzing::rdp_server_filter` for the property checked.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| passerelle_proto::fuzzing::rdp_server_filter(data));
