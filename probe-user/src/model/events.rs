//! Where ring-buffer bytes become typed events: decoding of the records the
//! classifiers submit.

use probe_common::{Event, SnapEvent};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring buffer record of {got} bytes, expected {want} to {snap}")]
    Size {
        got: usize,
        want: usize,
        snap: usize,
    },
    #[error("unknown event kind {0}")]
    Kind(u8),
    #[error("event says its payload snapshot has {said} bytes, the record holds {got}")]
    SnapLen { said: u16, got: usize },
}

/// Decodes one ring-buffer record: an `Event`, or the start of a `SnapEvent`
/// (an event followed by exactly `snap_len` bytes of its payload, returned
/// as the slice).
pub fn decode(b: &[u8]) -> Result<(Event, &[u8]), DecodeError> {
    let want = size_of::<Event>();
    let snap = size_of::<SnapEvent>();
    if b.len() < want || b.len() > snap {
        return Err(DecodeError::Size {
            got: b.len(),
            want,
            snap,
        });
    }
    // SAFETY: the record holds at least size_of::<Event>() bytes, Event is
    // repr(C) with no padding and valid for every bit pattern;
    // read_unaligned copes with any alignment of the ring buffer's bytes.
    let ev = unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<Event>()) };
    if !(probe_common::EV_SYN..=probe_common::EV_RST).contains(&ev.kind) {
        return Err(DecodeError::Kind(ev.kind));
    }
    // A snapshot record is the event and exactly the bytes it says it has.
    let bytes = &b[want..];
    if bytes.len() != ev.snap_len as usize {
        return Err(DecodeError::SnapLen {
            said: ev.snap_len,
            got: bytes.len(),
        });
    }
    Ok((ev, bytes))
}

/// The best CLOCK_MONOTONIC time for an event: for incoming packets, the
/// stack's own receive timestamp (CLOCK_REALTIME, converted with
/// `mono_minus_real`) when it is set and plausible, since it is taken before
/// the backlog queue and the capture taps that run ahead of tc ingress;
/// otherwise the classifier's own `ts_ns`.
pub(crate) fn best_ts(ev: &Event, mono_minus_real: i64) -> u64 {
    if ev.dir != probe_common::DIR_IN || ev.skb_tstamp == 0 || ev.skb_tstamp_type != 0 {
        return ev.ts_ns;
    }
    let rx = ev.skb_tstamp as i128 + mono_minus_real as i128;
    let hook = ev.ts_ns as i128;
    // A receive stamp is before the hook, and not by more than a few ms
    // (otherwise the clocks were stepped, or the stamp means something else).
    if rx <= hook && hook - rx < 5_000_000 {
        rx as u64
    } else {
        ev.ts_ns
    }
}

/// CLOCK_MONOTONIC minus CLOCK_REALTIME in ns, from the tightest of a few
/// back-to-back readings.
pub(crate) fn mono_minus_real() -> i64 {
    fn now(clock: libc::clockid_t) -> i128 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid timespec pointer; both clocks exist on Linux.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
    }
    let mut best = (i128::MAX, 0i128);
    for _ in 0..5 {
        let a = now(libc::CLOCK_MONOTONIC);
        let r = now(libc::CLOCK_REALTIME);
        let b = now(libc::CLOCK_MONOTONIC);
        if b - a < best.0 {
            best = (b - a, (a + b) / 2 - r);
        }
    }
    best.1 as i64
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
    use probe_common::{EV_DATA, SNAP_BYTES};

    pub(crate) fn sample() -> Event {
        // An incoming data event at t=123: seq 1, ack 2, 3 bytes.
        let mut ev = crate::model::flows::tests::ev(EV_DATA, 1, 123, 1, 2, 3, 0);
        ev.cookie = 9;
        ev.ifindex = 4;
        ev.window = 5;
        ev.tcp_flags = 0x18;
        ev.ttl = 64;
        ev
    }

    #[test]
    fn receive_stamps_are_preferred_when_plausible() {
        let off = 1_000_000_000_000i64; // mono - real
        let mut ev = sample(); // incoming, ts_ns 123
        ev.ts_ns = 2_000_000_000_000;
        ev.skb_tstamp = (2_000_000_000_000 - off - 20_000) as u64; // 20 us before the hook
        assert_eq!(best_ts(&ev, off), 2_000_000_000_000 - 20_000);
        ev.skb_tstamp_type = 1; // a delivery time, not a receive stamp
        assert_eq!(best_ts(&ev, off), ev.ts_ns);
        ev.skb_tstamp_type = 0;
        ev.skb_tstamp = (2_000_000_000_000 - off + 5) as u64; // after the hook: no
        assert_eq!(best_ts(&ev, off), ev.ts_ns);
        ev.skb_tstamp = (2_000_000_000_000 - off - 10_000_000) as u64; // 10 ms before: no
        assert_eq!(best_ts(&ev, off), ev.ts_ns);
        ev.dir = probe_common::DIR_OUT;
        ev.skb_tstamp = (2_000_000_000_000 - off - 20_000) as u64;
        assert_eq!(best_ts(&ev, off), ev.ts_ns, "egress keeps the hook time");
    }

    #[test]
    fn clock_offset_is_stable() {
        let a = mono_minus_real();
        let b = mono_minus_real();
        assert!((a - b).abs() < 100_000, "{a} {b}");
        assert!(a < 0, "realtime is far ahead of boot time");
    }

    #[test]
    fn round_trip_and_errors() {
        let ev = sample();
        let b = encode(&ev);
        let (d, snap) = decode(&b).unwrap();
        assert!(snap.is_empty());
        assert_eq!(d.ts_ns, 123);
        assert_eq!(d.payload_len, 3);
        assert_eq!(d.ttl, 64);
        // unaligned input
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&b);
        assert_eq!(decode(&shifted[1..]).unwrap().0.cookie, 9);
        assert!(matches!(decode(&b[1..]), Err(DecodeError::Size { .. })));
        let mut bad = ev;
        bad.kind = 99;
        assert_eq!(decode(&encode(&bad)).err(), Some(DecodeError::Kind(99)));
    }

    #[test]
    fn snapshots_follow_their_event() {
        let mut ev = sample();
        ev.snap_len = 5;
        let mut b = encode(&ev);
        b.extend_from_slice(b"GET /");
        let (d, snap) = decode(&b).unwrap();
        assert_eq!(d.payload_len, 3);
        assert_eq!(snap, b"GET /");
        // A record longer or shorter than the event says is refused.
        b.push(0xee);
        assert!(matches!(
            decode(&b),
            Err(DecodeError::SnapLen { said: 5, got: 6 })
        ));
        assert!(matches!(
            decode(&b[..b.len() - 2]),
            Err(DecodeError::SnapLen { said: 5, got: 4 })
        ));
        // The longest record holds SNAP_BYTES; one byte more is not a record.
        ev.snap_len = SNAP_BYTES as u16;
        let mut b = encode(&ev);
        b.resize(size_of::<SnapEvent>(), b'x');
        assert_eq!(decode(&b).unwrap().1.len(), SNAP_BYTES);
        b.push(b'x');
        assert!(matches!(decode(&b), Err(DecodeError::Size { .. })));
    }
}
