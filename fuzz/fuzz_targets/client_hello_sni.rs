//! A TLS connection's first bytes in `synack watch`: the ClientHello's SNI,
//! the ServerHello's version and the record walk over later segments. The
//! snapshot is cut anywhere (SNAP_BYTES), so every length field may lie.
#![no_main]

use libfuzzer_sys::fuzz_target;
use synack::model::sniff;

fuzz_target!(|b: &[u8]| {
    // The server name is a metric label and a column: bounded and free of
    // control characters (a hostile name must not move the terminal).
    if let Some(n) = sniff::client_hello_sni(b) {
        assert!(n.len() <= 4 * 255 + 3, "{} bytes", n.len());
        assert!(!n.chars().any(char::is_control), "{n:?}");
    }
    let _ = sniff::server_hello_version(b);
    // Each record header takes 5 bytes of the snapshot, so the list cannot
    // outgrow it; `whole` claims the segment is all records, which a walk
    // that stopped early must not.
    let seg_len = b.len() as u32;
    let r = sniff::records(b, seg_len);
    assert!(r.types.len() <= b.len() / 5);
    assert!(r.types.iter().all(|t| (20..=24).contains(t)));
    assert!(r.max_len <= u16::MAX as usize);
    let _ = sniff::classify(b);
});
