//! Ring-buffer records from the eBPF classifiers. The kernel side is ours,
//! but a mismatched object (old build, other version) sends bytes of any
//! shape, and every record then also reaches the payload sniffers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use probe_common::{Event, SNAP_BYTES, SnapEvent};
use synack::{model::events, model::sniff};

fuzz_target!(|b: &[u8]| {
    let Ok((ev, snap)) = events::decode(b) else {
        return;
    };
    // Only records of an event and up to SNAP_BYTES after it decode, and
    // the snapshot is exactly the bytes after the event, as many as the
    // event says: never more than the record holds.
    assert!(b.len() >= size_of::<Event>() && b.len() <= size_of::<SnapEvent>());
    assert!((probe_common::EV_SYN..=probe_common::EV_RST).contains(&ev.kind));
    assert!(snap.len() <= SNAP_BYTES);
    assert_eq!(snap.len(), ev.snap_len as usize);
    assert_eq!(snap, &b[size_of::<Event>()..]);
    // What watch does next with such a record.
    let n = (ev.opt_len as usize).min(ev.options.len());
    let _ = synack::model::tcp::parse_options(&ev.options[..n]);
    let _ = sniff::classify(snap);
    let _ = sniff::http_request(snap, false);
    let _ = sniff::client_hello_sni(snap);
    let _ = sniff::records(snap, ev.payload_len);
});
