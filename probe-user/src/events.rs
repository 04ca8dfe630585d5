//! Where ring-buffer bytes become typed events: decoding of the records the
//! classifiers submit.

use probe_common::Event;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring buffer record of {got} bytes, expected {want}")]
    Size { got: usize, want: usize },
    #[error("unknown event kind {0}")]
    Kind(u8),
}

/// Decodes one ring-buffer record.
pub fn decode(b: &[u8]) -> Result<Event, DecodeError> {
    let want = size_of::<Event>();
    if b.len() != want {
        return Err(DecodeError::Size { got: b.len(), want });
    }
    // SAFETY: the length is exactly size_of::<Event>(), Event is repr(C) with
    // no padding and valid for every bit pattern; read_unaligned copes with
    // any alignment of the ring buffer's bytes.
    let ev = unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<Event>()) };
    if !(probe_common::EV_SYN..=probe_common::EV_RST).contains(&ev.kind) {
        return Err(DecodeError::Kind(ev.kind));
    }
    Ok(ev)
}

#[cfg(test)]
pub(crate) fn encode(ev: &Event) -> Vec<u8> {
    // SAFETY: Event is repr(C), plain data, no padding.
    unsafe {
        std::slice::from_raw_parts((ev as *const Event).cast::<u8>(), size_of::<Event>()).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_common::{EV_DATA, FlowKey};

    pub(crate) fn sample() -> Event {
        Event {
            ts_ns: 123,
            cookie: 9,
            key: FlowKey::default(),
            seq: 1,
            ack: 2,
            payload_len: 3,
            ifindex: 4,
            window: 5,
            kind: EV_DATA,
            dir: 1,
            tcp_flags: 0x18,
            ttl: 64,
            ev_flags: 0,
            opt_len: 0,
            options: [0; 40],
        }
    }

    #[test]
    fn round_trip_and_errors() {
        let ev = sample();
        let b = encode(&ev);
        let d = decode(&b).unwrap();
        assert_eq!(d.ts_ns, 123);
        assert_eq!(d.payload_len, 3);
        assert_eq!(d.ttl, 64);
        // unaligned input
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&b);
        assert_eq!(decode(&shifted[1..]).unwrap().cookie, 9);
        assert!(matches!(decode(&b[1..]), Err(DecodeError::Size { .. })));
        let mut bad = ev;
        bad.kind = 99;
        assert_eq!(decode(&encode(&bad)).err(), Some(DecodeError::Kind(99)));
    }
}
