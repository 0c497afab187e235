//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through each target's property,
//! so that every input the fuzzer kept, and every crash once added there, is a regression test
//! of the ordinary test suite.

use std::path::Path;

use passerelle_proto::fuzzing::TARGETS;

#[test]
fn every_committed_fuzz_input_holds_its_property() {
    // At run time: the compile-time directory may be another checkout's (shared target dir).
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR");
    let manifest = manifest
        .as_deref()
        .map_or(Path::new(env!("CARGO_MANIFEST_DIR")), Path::new);
    let root = manifest.join("../fuzz/corpus");
    for (name, property) in TARGETS {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (every target has a corpus)", dir.display()));
        let mut count = 0;
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            let data = std::fs::read(&path).expect("corpus file");
            let outcome = std::panic::catch_unwind(|| property(&data));
            assert!(outcome.is_ok(), "{name}: {} breaks it", path.display());
            count += 1;
        }
        assert!(count > 0, "{name}: empty corpus");
    }
}
