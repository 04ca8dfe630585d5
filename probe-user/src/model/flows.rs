//! Where events become a flow: the wire history of one TCP connection, built
//! from the kernel's events, with the lookups the request timeline needs
//! (which segment carried byte N, which ACK covered it).
//!
//! Offsets are byte offsets in one direction's stream, counted from the first
//! payload byte (sequence number ISN + 1), exactly like the byte counts user
//! space keeps on its own socket.

use crate::model::tcp::{OptionError, TcpOptions, parse_options};
use probe_common::{
    DIR_IN, DIR_OUT, EV_ACK_COVER, EV_DATA, EV_FIN, EV_RST, EV_SYN, EV_SYNACK, EVF_RETRANS,
    EVF_TURN_START, Event, FlowKey,
};

/// A payload segment as the classifier saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Seg {
    /// CLOCK_MONOTONIC ns at the classifier.
    pub ts_ns: u64,
    /// Raw sequence number.
    pub seq: u32,
    /// Payload bytes.
    pub len: u32,
    /// Started below the highest sequence already seen (retransmission or reordering).
    pub retrans: bool,
    /// First payload after the other side spoke.
    pub turn_start: bool,
}

/// The peer's SYN-ACK.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SynAck {
    pub ts_ns: u64,
    /// IPv4 TTL or IPv6 hop limit as received.
    pub ttl: u8,
    /// Raw window field (SYN-ACK windows are never scaled).
    pub window: u16,
    /// Decoded options, or why they could not be decoded.
    pub options: Result<TcpOptions, OptionError>,
}

/// Everything the kernel reported about one connection.
#[derive(Clone, Debug)]
pub(crate) struct Flow {
    pub key: FlowKey,
    pub cookie: u64,
    /// The peer opened the connection (a server-side flow, passive mode).
    pub server: bool,
    out_isn: Option<u32>,
    in_isn: Option<u32>,
    /// CLOCK_MONOTONIC ns of each SYN (first one, then retransmissions):
    /// ours on a client-side flow, the peer's on a server-side one.
    pub syns: Vec<u64>,
    /// The TSval of each of those SYNs (timestamps option), in the same order.
    pub syn_tsvals: Vec<Option<u32>>,
    /// The SYN-ACK: the peer's on a client-side flow, ours on a server-side one.
    pub synack: Option<SynAck>,
    /// Server-side flow: the peer's SYN (its TTL tells the client's hops).
    pub syn_in: Option<SynAck>,
    /// SYN-ACKs received again (the peer retransmitted).
    pub synack_dups: u32,
    pub out: Vec<Seg>,
    pub inb: Vec<Seg>,
    /// Incoming ACKs that covered everything sent so far: (ts, raw ack).
    pub acks: Vec<(u64, u32)>,
    /// FINs: (direction, ts).
    pub fins: Vec<(u8, u64)>,
    /// RSTs: (direction, ts).
    pub rsts: Vec<(u8, u64)>,
    /// Every event in arrival order (kept unless `keep_events` is off).
    pub events: Vec<Event>,
    /// Keep `events` (the active probe's connections are short; passive
    /// mode turns it off so a long connection does not grow).
    pub keep_events: bool,
    /// A flow made from socket timestamps has no SYN-ACK: the handshake RTT
    /// TCP_INFO gave, ns.
    pub rtt_hint_ns: Option<u64>,
}

impl Flow {
    pub(crate) fn new(key: FlowKey, cookie: u64) -> Self {
        Flow {
            key,
            cookie,
            server: false,
            syn_in: None,
            out_isn: None,
            in_isn: None,
            syns: Vec::new(),
            syn_tsvals: Vec::new(),
            synack: None,
            synack_dups: 0,
            out: Vec::new(),
            inb: Vec::new(),
            acks: Vec::new(),
            fins: Vec::new(),
            rsts: Vec::new(),
            events: Vec::new(),
            keep_events: true,
            rtt_hint_ns: None,
        }
    }

    /// Adds one kernel event.
    pub(crate) fn push(&mut self, ev: &Event) {
        if self.keep_events {
            self.events.push(*ev);
        }
        if self.cookie == 0 {
            self.cookie = ev.cookie;
        }
        match ev.kind {
            EV_SYN if ev.dir == DIR_IN => {
                if self.in_isn.is_some() && self.in_isn != Some(ev.seq) {
                    let keep = self.keep_events;
                    *self = Flow::new(ev.key, ev.cookie);
                    self.keep_events = keep;
                    if keep {
                        self.events.push(*ev);
                    }
                }
                self.server = true;
                if self.in_isn.is_none() {
                    self.in_isn = Some(ev.seq);
                    self.syn_in = Some(handshake_pkt(ev));
                }
                self.syns.push(ev.ts_ns);
                self.syn_tsvals.push(syn_tsval(ev));
            }
            EV_SYNACK if ev.dir == DIR_OUT => {
                if self.synack.is_some() {
                    self.synack_dups += 1;
                    return;
                }
                self.out_isn = Some(ev.seq);
                self.synack = Some(handshake_pkt(ev));
            }
            EV_SYN => {
                if self.out_isn != Some(ev.seq) {
                    // A new ISN on the same socket cannot happen; on a reused
                    // 4-tuple it is a new connection: start over.
                    if self.out_isn.is_some() {
                        let keep = self.keep_events;
                        *self = Flow::new(ev.key, ev.cookie);
                        self.keep_events = keep;
                        if keep {
                            self.events.push(*ev);
                        }
                    }
                    self.out_isn = Some(ev.seq);
                }
                self.syns.push(ev.ts_ns);
                self.syn_tsvals.push(syn_tsval(ev));
            }
            EV_SYNACK => {
                if ev.ev_flags & EVF_RETRANS != 0 || self.synack.is_some() {
                    self.synack_dups += 1;
                    return;
                }
                self.in_isn = Some(ev.seq);
                self.synack = Some(handshake_pkt(ev));
            }
            EV_DATA => {
                let s = Seg {
                    ts_ns: ev.ts_ns,
                    seq: ev.seq,
                    len: ev.payload_len,
                    retrans: ev.ev_flags & EVF_RETRANS != 0,
                    turn_start: ev.ev_flags & EVF_TURN_START != 0,
                };
                if ev.dir == DIR_OUT {
                    self.out.push(s);
                } else {
                    self.inb.push(s);
                }
            }
            EV_ACK_COVER => self.acks.push((ev.ts_ns, ev.ack)),
            EV_FIN => self.fins.push((ev.dir, ev.ts_ns)),
            EV_RST => self.rsts.push((ev.dir, ev.ts_ns)),
            _ => {}
        }
    }

    /// Makes raw sequence numbers stream offsets (both ISNs 2^32 - 1): for
    /// a flow built from socket timestamps, which have no sequence numbers.
    pub(crate) fn set_offset_isns(&mut self) {
        self.out_isn = Some(u32::MAX);
        self.in_isn = Some(u32::MAX);
    }

    /// The connection ended: a RST, or FINs both ways.
    pub(crate) fn closed(&self) -> bool {
        !self.rsts.is_empty()
            || (self.fins.iter().any(|f| f.0 == DIR_OUT) && self.fins.iter().any(|f| f.0 == DIR_IN))
    }

    /// Forgets payload segments and ACKs from before `ts` (requests already
    /// reported on a long keep-alive connection); the handshake stays.
    pub(crate) fn prune_before(&mut self, ts: u64) {
        self.out.retain(|s| s.ts_ns >= ts);
        self.inb.retain(|s| s.ts_ns >= ts);
        self.acks.retain(|a| a.0 >= ts);
        self.events.clear();
    }

    /// Stream offset of a raw sequence number in the given direction.
    pub(crate) fn offset(&self, dir: u8, seq: u32) -> Option<u32> {
        let isn = if dir == DIR_OUT {
            self.out_isn
        } else {
            self.in_isn
        }?;
        Some(seq.wrapping_sub(isn.wrapping_add(1)))
    }

    /// Stream offset of an incoming sequence number.
    pub(crate) fn in_offset(&self, seq: u32) -> Option<u32> {
        self.offset(DIR_IN, seq)
    }

    /// The SYN the SYN-ACK answered and the SYN-ACK: the SYN whose TSval
    /// the SYN-ACK's TSecr echoes, else the last one sent before it.
    #[cfg(test)]
    pub(crate) fn handshake(&self) -> Option<(u64, u64)> {
        self.handshake_checked().map(|(syn, sa, _)| (syn, sa))
    }

    /// `handshake()`, and whether it is a clean round trip (Karn's rule):
    /// only one SYN was sent, or the TSecr names the SYN answered and that
    /// SYN is the last one sent before the SYN-ACK (an earlier one means
    /// the peer's timer resent its SYN-ACK: no round trip either).
    pub(crate) fn handshake_checked(&self) -> Option<(u64, u64, bool)> {
        let sa = self.synack.as_ref()?;
        let before: Vec<(u64, Option<u32>)> = self
            .syns
            .iter()
            .copied()
            .zip(
                self.syn_tsvals
                    .iter()
                    .copied()
                    .chain(std::iter::repeat(None)),
            )
            .filter(|&(t, _)| t <= sa.ts_ns)
            .collect();
        let last = before.iter().map(|x| x.0).max()?;
        let echoed = sa
            .options
            .as_ref()
            .ok()
            .and_then(|o| o.timestamps)
            .map(|(_, tsecr)| tsecr);
        let named = echoed.and_then(|e| before.iter().rev().find(|x| x.1 == Some(e)));
        Some(match named {
            Some(&(t, _)) => (t, sa.ts_ns, t == last),
            None => (last, sa.ts_ns, before.len() == 1),
        })
    }

    /// SYNs sent after the first.
    pub(crate) fn syn_retransmits(&self) -> u32 {
        self.syns.len().saturating_sub(1) as u32
    }

    fn covering<'a>(&self, dir: u8, segs: &'a [Seg], off: u32) -> Option<&'a Seg> {
        // The first transmission of the byte; a retransmission only if the
        // original was not reported.
        let hit = |s: &&Seg| {
            self.offset(dir, s.seq)
                .is_some_and(|o| off.wrapping_sub(o) < s.len)
        };
        segs.iter()
            .filter(|s| !s.retrans)
            .find(hit)
            .or_else(|| segs.iter().find(hit))
    }

    /// The outgoing segment that first carried stream byte `off`.
    pub(crate) fn out_covering(&self, off: u32) -> Option<&Seg> {
        self.covering(DIR_OUT, &self.out, off)
    }

    /// The incoming segment that first carried stream byte `off`.
    pub(crate) fn in_covering(&self, off: u32) -> Option<&Seg> {
        self.covering(DIR_IN, &self.inb, off)
    }

    /// Time of the first ACK, not before `not_before`, that acknowledged every
    /// outgoing byte below offset `end` (exclusive end of a request).
    pub(crate) fn ack_covering(&self, end: u32, not_before: u64) -> Option<u64> {
        self.acks.iter().find_map(|&(ts, ack)| {
            let o = self.offset(DIR_OUT, ack)?;
            // `o` is the next byte the peer expects; covered when o >= end.
            (ts >= not_before && (o.wrapping_sub(end) as i32) >= 0).then_some(ts)
        })
    }

    /// Retransmitted (or reordered) payload segments in [from, to], per direction (out, in).
    pub(crate) fn retransmits_between(&self, from: u64, to: u64) -> (u32, u32) {
        let n = |v: &[Seg]| {
            v.iter()
                .filter(|s| s.retrans && s.ts_ns >= from && s.ts_ns <= to)
                .count() as u32
        };
        (n(&self.out), n(&self.inb))
    }
}

/// An address as the kernel side keys it: IPv4 in the first 4 bytes, and
/// the IP version. A v4-mapped IPv6 address is IPv4 (that is what goes on
/// the wire).
pub(crate) fn addr_bytes(ip: std::net::IpAddr) -> ([u8; 16], u8) {
    match ip {
        std::net::IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (b, 4)
        }
        std::net::IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => addr_bytes(std::net::IpAddr::V4(v4)),
            None => (a.octets(), 6),
        },
    }
}

/// The kernel's key for a connection from `local` to `remote`.
pub(crate) fn flow_key(local: std::net::SocketAddr, remote: std::net::SocketAddr) -> FlowKey {
    let (l, v) = addr_bytes(local.ip());
    let (r, _) = addr_bytes(remote.ip());
    FlowKey {
        local_addr: l,
        remote_addr: r,
        local_port: local.port(),
        remote_port: remote.port(),
        ip_version: v,
        _pad: [0; 3],
    }
}

/// A flow key's (local, remote) socket addresses.
pub(crate) fn key_addrs(key: &FlowKey) -> (std::net::SocketAddr, std::net::SocketAddr) {
    let ip = |b: &[u8; 16]| -> std::net::IpAddr {
        if key.ip_version == 4 {
            std::net::IpAddr::from([b[0], b[1], b[2], b[3]])
        } else {
            std::net::IpAddr::from(*b)
        }
    };
    (
        std::net::SocketAddr::new(ip(&key.local_addr), key.local_port),
        std::net::SocketAddr::new(ip(&key.remote_addr), key.remote_port),
    )
}

/// The TSval of a SYN's timestamps option.
fn syn_tsval(ev: &Event) -> Option<u32> {
    let n = (ev.opt_len as usize).min(ev.options.len());
    parse_options(&ev.options[..n])
        .ok()
        .and_then(|o| o.timestamps)
        .map(|t| t.0)
}

fn handshake_pkt(ev: &Event) -> SynAck {
    let n = (ev.opt_len as usize).min(ev.options.len());
    SynAck {
        ts_ns: ev.ts_ns,
        ttl: ev.ttl,
        window: ev.window,
        options: parse_options(&ev.options[..n]),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use probe_common::EVF_RETRANS;

    pub(crate) fn ev(kind: u8, dir: u8, ts: u64, seq: u32, ack: u32, len: u32, f: u8) -> Event {
        Event {
            ts_ns: ts,
            cookie: 5,
            key: FlowKey::default(),
            seq,
            ack,
            payload_len: len,
            ifindex: 1,
            window: 65535,
            kind,
            dir,
            tcp_flags: 0,
            ttl: 61,
            ev_flags: f,
            opt_len: 4,
            options: {
                let mut o = [0u8; 40];
                o[..4].copy_from_slice(&[2, 4, 0x05, 0xb4]);
                o
            },
            skb_tstamp: 0,
            cgroup_id: 0,
            peer_last_ns: 0,
            peer_high: 0,
            snap_len: 0,
            skb_tstamp_type: 0,
            _pad: 0,
        }
    }

    /// SYN at 0 (retransmitted at 1000), SYN-ACK at 1100; request of 200 bytes
    /// in two segments; ACK; response; a retransmitted response segment.
    pub(crate) fn sample_flow() -> Flow {
        let mut f = Flow::new(FlowKey::default(), 5);
        for e in [
            ev(EV_SYN, DIR_OUT, 0, 100, 0, 0, 0),
            ev(EV_SYN, DIR_OUT, 1000, 100, 0, 0, EVF_RETRANS),
            ev(EV_SYNACK, DIR_IN, 1100, 7000, 101, 0, 0),
            ev(EV_DATA, DIR_OUT, 2000, 101, 7001, 150, EVF_TURN_START),
            ev(EV_DATA, DIR_OUT, 2010, 251, 7001, 50, 0),
            ev(EV_ACK_COVER, DIR_IN, 2100, 7001, 251, 0, 0),
            ev(EV_ACK_COVER, DIR_IN, 2200, 7001, 301, 0, 0),
            ev(EV_DATA, DIR_IN, 3000, 7001, 301, 1000, EVF_TURN_START),
            ev(EV_DATA, DIR_IN, 3500, 7001, 301, 1000, EVF_RETRANS),
            ev(EV_FIN, DIR_IN, 4000, 8001, 301, 0, 0),
        ] {
            f.push(&e);
        }
        f
    }

    /// An event whose options are the timestamps option (kind 8).
    fn ts_ev(kind: u8, dir: u8, ts: u64, seq: u32, tsval: u32, tsecr: u32) -> Event {
        let mut e = ev(kind, dir, ts, seq, 0, 0, 0);
        let mut o = [0u8; 40];
        o[..2].copy_from_slice(&[1, 1]);
        o[2..4].copy_from_slice(&[8, 10]);
        o[4..8].copy_from_slice(&tsval.to_be_bytes());
        o[8..12].copy_from_slice(&tsecr.to_be_bytes());
        e.options = o;
        e.opt_len = 12;
        e
    }

    #[test]
    fn karn_the_tsecr_names_the_syn_answered() {
        let run = |tsecr: Option<u32>| {
            let mut f = Flow::new(FlowKey::default(), 5);
            f.push(&ts_ev(EV_SYN, DIR_OUT, 0, 100, 500, 0));
            f.push(&ts_ev(EV_SYN, DIR_OUT, 1000, 100, 1500, 0));
            f.push(&match tsecr {
                Some(e) => ts_ev(EV_SYNACK, DIR_IN, 1010, 7000, 9, e),
                None => ev(EV_SYNACK, DIR_IN, 1010, 7000, 101, 0, 0),
            });
            f.handshake_checked()
        };
        // answers the retransmitted SYN: a clean round trip
        assert_eq!(run(Some(1500)), Some((1000, 1010, true)));
        // the peer's timer resent its SYN-ACK for the first SYN: no RTT
        assert_eq!(run(Some(500)), Some((0, 1010, false)));
        // no timestamps: ambiguous
        assert_eq!(run(None), Some((1000, 1010, false)));
        // one SYN: clean whatever the options
        let mut f = Flow::new(FlowKey::default(), 5);
        f.push(&ev(EV_SYN, DIR_OUT, 0, 100, 0, 0, 0));
        f.push(&ev(EV_SYNACK, DIR_IN, 20, 7000, 101, 0, 0));
        assert_eq!(f.handshake_checked(), Some((0, 20, true)));
    }

    #[test]
    fn handshake_uses_the_syn_that_was_answered() {
        let f = sample_flow();
        assert_eq!(f.handshake(), Some((1000, 1100)));
        assert_eq!(f.syn_retransmits(), 1);
        let sa = f.synack.as_ref().unwrap();
        assert_eq!(sa.ttl, 61);
        assert_eq!(sa.options.as_ref().unwrap().mss, Some(1460));
    }

    #[test]
    fn segments_by_offset() {
        let f = sample_flow();
        assert_eq!(f.out_covering(0).unwrap().ts_ns, 2000);
        assert_eq!(f.out_covering(149).unwrap().ts_ns, 2000);
        assert_eq!(f.out_covering(150).unwrap().ts_ns, 2010);
        assert!(f.out_covering(200).is_none());
        // the original, not the retransmission
        assert_eq!(f.in_covering(0).unwrap().ts_ns, 3000);
        assert_eq!(f.in_covering(999).unwrap().ts_ns, 3000);
    }

    #[test]
    fn ack_covering_needs_the_whole_request() {
        let f = sample_flow();
        assert_eq!(f.ack_covering(200, 2000), Some(2200));
        assert_eq!(f.ack_covering(150, 2000), Some(2100));
        assert_eq!(f.ack_covering(150, 2150), Some(2200));
        assert_eq!(f.ack_covering(201, 0), None);
    }

    #[test]
    fn retransmits_and_fin() {
        let f = sample_flow();
        assert_eq!(f.retransmits_between(0, 10_000), (0, 1));
        assert_eq!(f.retransmits_between(0, 3400), (0, 0));
        assert_eq!(f.fins, vec![(DIR_IN, 4000)]);
    }

    #[test]
    fn duplicate_synack_and_rst() {
        let mut f = sample_flow();
        f.push(&ev(EV_SYNACK, DIR_IN, 5000, 7000, 101, 0, EVF_RETRANS));
        f.push(&ev(EV_RST, DIR_OUT, 6000, 301, 0, 0, 0));
        assert_eq!(f.synack_dups, 1);
        assert_eq!(f.synack.as_ref().unwrap().ts_ns, 1100);
        assert_eq!(f.rsts, vec![(DIR_OUT, 6000)]);
    }

    #[test]
    fn server_side_flow() {
        let mut f = Flow::new(FlowKey::default(), 0);
        for e in [
            ev(EV_SYN, DIR_IN, 0, 7000, 0, 0, 0),
            ev(EV_SYNACK, DIR_OUT, 10, 300, 7001, 0, 0),
            ev(EV_ACK_COVER, DIR_IN, 110, 7001, 301, 0, 0),
            ev(EV_DATA, DIR_IN, 120, 7001, 301, 80, EVF_TURN_START),
            ev(EV_DATA, DIR_OUT, 500, 301, 7081, 900, EVF_TURN_START),
            ev(EV_FIN, DIR_OUT, 600, 1201, 7081, 0, 0),
        ] {
            f.push(&e);
        }
        assert!(f.server);
        assert_eq!(f.syn_in.as_ref().unwrap().ttl, 61);
        assert_eq!(f.synack.as_ref().unwrap().ts_ns, 10);
        assert_eq!(f.in_covering(0).unwrap().ts_ns, 120);
        assert_eq!(f.out_covering(899).unwrap().ts_ns, 500);
        assert_eq!(f.ack_covering(0, 10), Some(110), "the handshake's last ACK");
        assert!(!f.closed());
        f.push(&ev(EV_FIN, DIR_IN, 700, 7081, 1202, 0, 0));
        assert!(f.closed());
        f.prune_before(400);
        assert!(f.inb.is_empty() && f.out.len() == 1 && f.acks.is_empty());
    }

    #[test]
    fn keys_round_trip_to_addresses() {
        let l: std::net::SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let r: std::net::SocketAddr = "[fd00::2]:443".parse().unwrap();
        let k = flow_key(l, "10.0.0.2:80".parse().unwrap());
        assert_eq!(key_addrs(&k), (l, "10.0.0.2:80".parse().unwrap()));
        let k = flow_key("[fd00::1]:5".parse().unwrap(), r);
        assert_eq!(key_addrs(&k).1, r);
    }

    #[test]
    fn no_synack_no_offsets() {
        let mut f = Flow::new(FlowKey::default(), 1);
        f.push(&ev(EV_SYN, DIR_OUT, 0, 100, 0, 0, 0));
        f.push(&ev(EV_DATA, DIR_IN, 10, 5, 0, 10, EVF_TURN_START));
        assert!(f.handshake().is_none());
        assert!(f.in_covering(0).is_none());
    }
    #[test]
    fn flow_keys_match_the_kernel_layout() {
        let k = flow_key(
            "10.0.0.1:5000".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        );
        assert_eq!(&k.local_addr[..4], &[10, 0, 0, 1]);
        assert_eq!(&k.local_addr[4..], &[0; 12]);
        assert_eq!((k.local_port, k.remote_port, k.ip_version), (5000, 80, 4));
        let k = flow_key(
            "[::ffff:10.0.0.1]:5000".parse().unwrap(),
            "[::ffff:10.0.0.2]:80".parse().unwrap(),
        );
        assert_eq!(k.ip_version, 4);
        assert_eq!(&k.remote_addr[..4], &[10, 0, 0, 2]);
        let k = flow_key(
            "[fd00::1]:5000".parse().unwrap(),
            "[fd00::2]:80".parse().unwrap(),
        );
        assert_eq!(k.ip_version, 6);
        assert_eq!(k.remote_addr[15], 2);
    }
}
