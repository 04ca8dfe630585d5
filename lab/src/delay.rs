//! The scheduling logic of the delay line, apart from NFQUEUE so it is
//! unit-tested: a FIFO that releases each item a fixed time after it arrived.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// Holds items for `delay`, releasing them in arrival order.
pub struct DelayLine<T> {
    delay: Duration,
    fifo: VecDeque<(Instant, T)>,
}

impl<T> DelayLine<T> {
    pub fn new(delay: Duration) -> Self {
        DelayLine {
            delay,
            fifo: VecDeque::new(),
        }
    }

    /// An item arrived at `now`.
    pub fn push(&mut self, now: Instant, item: T) {
        self.fifo.push_back((now + self.delay, item));
    }

    /// When the oldest item is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.fifo.front().map(|(d, _)| *d)
    }

    /// Every item due at `now`, oldest first. Constant delay keeps the FIFO
    /// sorted, so nothing overtakes.
    pub fn pop_due(&mut self, now: Instant) -> Vec<T> {
        let mut out = Vec::new();
        while self.fifo.front().is_some_and(|(d, _)| *d <= now) {
            if let Some((_, x)) = self.fifo.pop_front() {
                out.push(x);
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.fifo.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fifo.is_empty()
    }
}

/// Drops the first SYN of each of the next N connections, letting their
/// retransmitted SYNs through (a connection is its addresses, ports and ISN).
pub struct SynDropper {
    left: u32,
    seen: std::collections::HashSet<Vec<u8>>,
}

impl SynDropper {
    pub fn new(n: u32) -> Self {
        SynDropper {
            left: n,
            seen: Default::default(),
        }
    }

    /// Decides for one IP packet.
    pub fn should_drop(&mut self, ip: &[u8]) -> bool {
        if self.left == 0 || !is_tcp_syn(ip) {
            return false;
        }
        let Some(id) = syn_identity(ip) else {
            return false;
        };
        if self.seen.insert(id) {
            self.left -= 1;
            true
        } else {
            false
        }
    }
}

/// Addresses, ports and sequence number of a SYN.
fn syn_identity(ip: &[u8]) -> Option<Vec<u8>> {
    let (addrs, off) = match ip.first()? >> 4 {
        4 => (ip.get(12..20)?, (ip[0] & 0x0f) as usize * 4),
        6 => (ip.get(8..40)?, 40),
        _ => return None,
    };
    let mut v = addrs.to_vec();
    v.extend_from_slice(ip.get(off..off + 8)?);
    Some(v)
}

/// True for an IPv4 or IPv6 packet carrying a TCP SYN without ACK.
pub fn is_tcp_syn(ip: &[u8]) -> bool {
    let (proto, off) = match ip.first().map(|b| b >> 4) {
        Some(4) => {
            let ihl = (ip[0] & 0x0f) as usize * 4;
            (ip.get(9).copied(), ihl)
        }
        Some(6) => (ip.get(6).copied(), 40),
        _ => return false,
    };
    if proto != Some(6) {
        return false;
    }
    ip.get(off + 13).is_some_and(|f| f & 0x12 == 0x02)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_in_order_after_the_delay() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = DelayLine::new(ms(20));
        l.push(t0, 1);
        l.push(t0 + ms(5), 2);
        l.push(t0 + ms(6), 3);
        assert_eq!(l.next_due(), Some(t0 + ms(20)));
        assert!(l.pop_due(t0 + ms(19)).is_empty());
        assert_eq!(l.pop_due(t0 + ms(25)), vec![1, 2]);
        assert_eq!(l.len(), 1);
        assert_eq!(l.pop_due(t0 + ms(100)), vec![3]);
        assert!(l.is_empty() && l.next_due().is_none());
    }

    #[test]
    fn zero_delay_releases_at_once() {
        let t0 = Instant::now();
        let mut l = DelayLine::new(Duration::ZERO);
        l.push(t0, "a");
        assert_eq!(l.pop_due(t0), vec!["a"]);
    }

    #[test]
    fn drops_only_the_first_syn_of_each_connection() {
        let syn = |port: u8, seq: u8| {
            let mut v4 = vec![0u8; 40];
            v4[0] = 0x45;
            v4[9] = 6;
            v4[21] = port;
            v4[27] = seq;
            v4[33] = 0x02;
            v4
        };
        let mut d = SynDropper::new(2);
        assert!(d.should_drop(&syn(1, 1)));
        assert!(!d.should_drop(&syn(1, 1)), "a retransmission passes");
        assert!(d.should_drop(&syn(2, 1)));
        assert!(!d.should_drop(&syn(3, 1)), "only two connections");
        let mut ack = syn(4, 1);
        ack[33] = 0x10;
        assert!(!SynDropper::new(5).should_drop(&ack));
    }

    #[test]
    fn recognises_syns() {
        let mut v4 = vec![0u8; 40];
        v4[0] = 0x45;
        v4[9] = 6;
        v4[33] = 0x02;
        assert!(is_tcp_syn(&v4));
        v4[33] = 0x12; // SYN-ACK
        assert!(!is_tcp_syn(&v4));
        v4[9] = 17;
        assert!(!is_tcp_syn(&v4));
        let mut v6 = vec![0u8; 60];
        v6[0] = 0x60;
        v6[6] = 6;
        v6[53] = 0x02;
        assert!(is_tcp_syn(&v6));
        assert!(!is_tcp_syn(&v6[..50]));
        assert!(!is_tcp_syn(&[]));
    }
}
