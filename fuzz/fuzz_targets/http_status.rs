//! The first bytes of a response in `synack watch`: the status line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use synack::model::sniff;

fuzz_target!(|b: &[u8]| {
    let Some(s) = sniff::http_status(b) else {
        return;
    };
    // Verdicts and metrics bucket statuses by hundreds: a code outside
    // 100..=999, or one that is not literally the three digits after
    // "HTTP/1.x ", would land a response in a class it does not have.
    assert!((100..=999).contains(&s));
    assert!(b.starts_with(b"HTTP/1."));
    assert_eq!(&b[9..12], s.to_string().as_bytes());
});
