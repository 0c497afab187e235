//! Launch URLs as a malicious web page may hand them to the desktop helper.
#![no_main]
use libfuzzer_sys::fuzz_target;
use passerelle_proto::launch::LaunchUrl;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(url) = LaunchUrl::parse(text)
    {
        // What parses must print back to something that parses to the same.
        assert_eq!(LaunchUrl::parse(&url.to_url()).as_ref(), Ok(&url));
    }
});
