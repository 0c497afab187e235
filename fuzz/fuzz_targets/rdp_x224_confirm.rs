//! See `passerelle_proto::fuzzing::rdp_x224_confirm` for the property checked.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| passerelle_proto::fuzzing::rdp_x224_confirm(data));
