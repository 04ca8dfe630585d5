//! The first payload bytes of a connection in `synack watch`: request line
//! and Host. The first fuzz byte picks keep_query, the rest is the snapshot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use synack::model::sniff::{self, Proto};

fuzz_target!(|data: &[u8]| {
    let Some((&flag, b)) = data.split_first() else {
        return;
    };
    let keep_query = flag & 1 == 1;
    let r = sniff::http_request(b, keep_query);
    // Classification and parsing must agree, or watch would count a
    // connection as HTTP and then have no request for it (or the reverse).
    let tls = b.len() >= 3 && b[0] == 0x16 && b[1] == 0x03;
    if !tls {
        assert_eq!(sniff::classify(b) == Proto::Http, r.is_some());
    }
    let Some(r) = r else { return };
    // What is kept goes to terminals, JSON and metric labels: bounded
    // (24/512/255 characters, "..." when cut, up to 4 bytes each) and free
    // of control characters, whatever the peer sent.
    assert!(!r.method.is_empty() && r.method.len() <= 24 + 3, "{r:?}");
    assert!(r.path.len() <= 4 * 512 + 3, "{r:?}");
    assert!(r.host.as_ref().is_none_or(|h| h.len() <= 4 * 255 + 3));
    let clean = |s: &str| !s.chars().any(char::is_control);
    assert!(clean(&r.method) && clean(&r.path));
    assert!(r.host.as_deref().is_none_or(clean));
    // Privacy: without --keep-query no query string or fragment survives,
    // not even inside the authority of an absolute-form target.
    if !keep_query {
        assert!(!r.path.contains(['?', '#']), "{r:?}");
        let target = b.split(|&c| c == b' ').nth(1).unwrap_or_default();
        if target.starts_with(b"http://") || target.starts_with(b"https://") {
            assert!(
                r.host.as_ref().is_none_or(|h| !h.contains(['?', '#'])),
                "{r:?}"
            );
        }
    }
});
