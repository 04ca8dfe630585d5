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

/// Drops packets at random with a set probability, from a seeded generator
/// (splitmix64) so that a failing run can be replayed with the same seed:
/// the n-th packet of a queue meets the same fate every time.
pub struct RandomDrop {
    /// Drop when the next draw is below this (of 2^64).
    threshold: u64,
    /// Always drop (100 %): the threshold cannot say "all of u64".
    all: bool,
    state: u64,
}

impl RandomDrop {
    /// `percent` of the packets dropped (0 to 100), the sequence fixed by
    /// `seed`.
    pub fn new(percent: f64, seed: u64) -> Self {
        let p = (percent / 100.0).clamp(0.0, 1.0);
        RandomDrop {
            threshold: (p * u64::MAX as f64) as u64,
            all: p >= 1.0,
            state: seed,
        }
    }

    fn next(&mut self) -> u64 {
        // splitmix64 (Steele, Lea, Flood 2014): full period, well mixed,
        // no dependency.
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Decides for one packet.
    pub fn should_drop(&mut self) -> bool {
        let x = self.next();
        self.all || x < self.threshold
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
    fn random_drop_rate_and_replay() {
        let n = 100_000;
        let count = |pct: f64, seed: u64| {
            let mut d = RandomDrop::new(pct, seed);
            (0..n).filter(|_| d.should_drop()).count()
        };
        assert_eq!(count(0.0, 7), 0, "0 % drops nothing");
        assert_eq!(count(100.0, 7), n, "100 % drops everything");
        for pct in [1.0, 12.5, 50.0] {
            let got = count(pct, 42) as f64 / n as f64 * 100.0;
            assert!((got - pct).abs() < 0.5, "{pct} % asked, {got} % dropped");
        }
        // The same seed replays the same fates; another seed does not.
        let fates = |seed: u64| {
            let mut d = RandomDrop::new(12.0, seed);
            (0..1000).map(|_| d.should_drop()).collect::<Vec<_>>()
        };
        assert_eq!(fates(3), fates(3));
        assert_ne!(fates(3), fates(4));
        // No long runs of drops at 12 %: losses are spread, not bursty.
        let f = fates(3);
        let longest = f.split(|x| !x).map(|run| run.len()).max().unwrap_or(0);
        assert!(longest <= 6, "a run of {longest} drops in a row");
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
