//! The classifiers run by the kernel on synthetic frames (BPF_PROG_TEST_RUN):
//! header parsing for IPv4 and IPv6, the flow state machine as the verifier
//! accepted it, the events it submits, and that it never touches a packet.

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use etherparse::{PacketBuilder, TcpOptionElement};
use probe_common::{
    CFG_LOCAL_ONLY, CFG_SNAPSHOT, CFG_TRACK_ALL_IN, CFG_TRACK_ALL_OUT, DIR_IN, DIR_OUT,
    EV_ACK_COVER, EV_DATA, EV_FIN, EV_SYN, EV_SYNACK, EVF_RETRANS, EVF_TURN_START, Event,
    SNAP_BYTES, STAT_PARSE_SKIPPED,
};
use std::path::PathBuf;
use synack::{model::events::decode, model::tcp::parse_options};

fn object() -> Result<Vec<u8>> {
    let p = std::env::var_os("SYNACK_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/bpf/bpfel-unknown-none/release/probe-ebpf")
        });
    std::fs::read(&p).with_context(|| format!("{}: build it with `cargo xtask build`", p.display()))
}

struct Harness {
    ebpf: Ebpf,
    ring: RingBuf<MapData>,
}

impl Harness {
    fn new() -> Result<Self> {
        assert!(
            synack_tests::is_root(),
            "BPF_PROG_TEST_RUN needs root (cargo xtask test)"
        );
        let mut ebpf = Ebpf::load(&object()?)?;
        for name in [
            "synack_egress",
            "synack_ingress",
            "synack_egress_raw",
            "synack_ingress_raw",
        ] {
            let p: &mut SchedClassifier = ebpf.program_mut(name).context(name)?.try_into()?;
            p.load()?;
        }
        // No socket in a test run, so no cookie: follow every outgoing SYN.
        let mut cfg: Array<_, u32> = Array::try_from(ebpf.map_mut("CONFIG").context("CONFIG")?)?;
        cfg.set(0, CFG_TRACK_ALL_OUT, 0)?;
        let ring = RingBuf::try_from(ebpf.take_map("EVENTS").context("EVENTS")?)?;
        Ok(Harness { ebpf, ring })
    }

    fn config(&mut self, bits: u32) -> Result<()> {
        let mut cfg: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut("CONFIG").context("CONFIG")?)?;
        cfg.set(0, bits, 0)?;
        Ok(())
    }

    /// Runs one direction's classifier on a frame; returns the events it submitted.
    fn run(&mut self, egress: bool, frame: &[u8]) -> Result<Vec<Event>> {
        Ok(self
            .run_snaps(egress, frame)?
            .into_iter()
            .map(|e| e.0)
            .collect())
    }

    /// As `run`, with each event's payload snapshot.
    fn run_snaps(&mut self, egress: bool, frame: &[u8]) -> Result<Vec<(Event, Vec<u8>)>> {
        let name = if egress {
            "synack_egress"
        } else {
            "synack_ingress"
        };
        self.run_prog(name, frame)
    }

    /// Flows counted on a local port (`PORT_FLOWS` less `PORT_FREED`).
    fn port_flows(&self, port: u16) -> Result<u32> {
        let get = |name: &str| -> Result<u32> {
            let m: Array<_, u32> = Array::try_from(self.ebpf.map(name).context("PORT map")?)?;
            Ok(m.get(&u32::from(port), 0)?)
        };
        Ok(get("PORT_FLOWS")?.wrapping_sub(get("PORT_FREED")?))
    }

    /// One named classifier on a frame; the events it submitted.
    fn run_prog(&mut self, name: &str, frame: &[u8]) -> Result<Vec<(Event, Vec<u8>)>> {
        let p: &SchedClassifier = self
            .ebpf
            .program(name)
            .with_context(|| name.to_string())?
            .try_into()?;
        let mut out = vec![0u8; frame.len() + 256];
        let r = p.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        })?;
        assert_eq!(r.return_value as i32, -1, "must return TC_ACT_UNSPEC");
        assert_eq!(
            &out[..r.data_size_out as usize],
            frame,
            "the packet must not change"
        );
        let mut evs = Vec::new();
        while let Some(item) = self.ring.next() {
            let (ev, snap) = decode(&item)?;
            evs.push((ev, snap.to_vec()));
        }
        Ok(evs)
    }
}

/// Two IPv6 addresses of one unique-local prefix: fd00::1 and fd00::2.
fn ula_pair() -> ([u8; 16], [u8; 16]) {
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[15] = 1;
    let mut b = a;
    b[15] = 2;
    (a, b)
}

#[derive(Clone, Copy)]
enum Ip {
    V4([u8; 4], [u8; 4]),
    V6([u8; 16], [u8; 16]),
}

impl Ip {
    fn rev(self) -> Self {
        match self {
            Ip::V4(a, b) => Ip::V4(b, a),
            Ip::V6(a, b) => Ip::V6(b, a),
        }
    }
}

struct Tcp<'a> {
    ip: Ip,
    ttl: u8,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    payload: &'a [u8],
    options: &'a [TcpOptionElement],
}

fn frame(t: Tcp) -> Result<Vec<u8>> {
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let ip = match t.ip {
        Ip::V4(s, d) => eth.ipv4(s, d, t.ttl),
        Ip::V6(s, d) => eth.ipv6(s, d, t.ttl),
    };
    let mut tcp = ip.tcp(t.sport, t.dport, t.seq, 64240);
    if t.syn {
        tcp = tcp.syn();
    }
    if let Some(a) = t.ack {
        tcp = tcp.ack(a);
    }
    if !t.options.is_empty() {
        tcp = tcp
            .options(t.options)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    let mut buf = Vec::new();
    tcp.write(&mut buf, t.payload)?;
    Ok(buf)
}

const SYN_OPTS: [TcpOptionElement; 5] = [
    TcpOptionElement::MaximumSegmentSize(1460),
    TcpOptionElement::SelectiveAcknowledgementPermitted,
    TcpOptionElement::Timestamp(11, 0),
    TcpOptionElement::Noop,
    TcpOptionElement::WindowScale(7),
];

fn conversation(h: &mut Harness, ip: Ip, sport: u16) -> Result<()> {
    let out = |seq, ack, syn, payload: &'static [u8], opts: &'static [TcpOptionElement]| Tcp {
        ip,
        ttl: 64,
        sport,
        dport: 443,
        seq,
        ack,
        syn,
        payload,
        options: opts,
    };
    let inb = |seq, ack, syn, payload: &'static [u8], opts: &'static [TcpOptionElement]| Tcp {
        ip: ip.rev(),
        ttl: 57,
        sport: 443,
        dport: sport,
        seq,
        ack,
        syn,
        payload,
        options: opts,
    };

    // SYN, then its retransmission
    let ev = h.run(true, &frame(out(1000, None, true, b"", &SYN_OPTS))?)?;
    assert_eq!(ev.len(), 1);
    assert_eq!((ev[0].kind, ev[0].dir, ev[0].seq), (EV_SYN, DIR_OUT, 1000));
    assert_eq!(ev[0].key.local_port, sport);
    assert_eq!(ev[0].key.remote_port, 443);
    let o = parse_options(&ev[0].options[..ev[0].opt_len as usize])?;
    assert_eq!(o.mss, Some(1460));
    assert_eq!(o.wscale, Some(7));
    let ev = h.run(true, &frame(out(1000, None, true, b"", &SYN_OPTS))?)?;
    assert_eq!((ev[0].kind, ev[0].ev_flags), (EV_SYN, EVF_RETRANS));

    // SYN-ACK with its TTL and options
    let ev = h.run(false, &frame(inb(5000, Some(1001), true, b"", &SYN_OPTS))?)?;
    assert_eq!(ev.len(), 1);
    assert_eq!((ev[0].kind, ev[0].dir, ev[0].ttl), (EV_SYNACK, DIR_IN, 57));
    assert_eq!(ev[0].window, 64240);
    let o = parse_options(&ev[0].options[..ev[0].opt_len as usize])?;
    assert!(o.sack_permitted);
    assert_eq!(o.timestamps, Some((11, 0)));

    // the request: a new turn
    let ev = h.run(true, &frame(out(1001, Some(5001), false, &[7; 100], &[]))?)?;
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].kind, ev[0].ev_flags, ev[0].payload_len),
        (EV_DATA, EVF_TURN_START, 100)
    );
    // its retransmission
    let ev = h.run(true, &frame(out(1001, Some(5001), false, &[7; 100], &[]))?)?;
    assert_eq!((ev[0].kind, ev[0].ev_flags), (EV_DATA, EVF_RETRANS));

    // the response, carrying the ACK that covers the request
    let ev = h.run(false, &frame(inb(5001, Some(1101), false, &[8; 60], &[]))?)?;
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!((ev[0].kind, ev[0].ack), (EV_ACK_COVER, 1101));
    assert_eq!(
        (ev[1].kind, ev[1].ev_flags, ev[1].payload_len),
        (EV_DATA, EVF_TURN_START, 60)
    );

    // a pure ACK from our side: nothing to report
    assert!(
        h.run(true, &frame(out(1101, Some(5061), false, b"", &[]))?)?
            .is_empty()
    );
    Ok(())
}

#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn ipv4_conversation() -> Result<()> {
    let mut h = Harness::new()?;
    conversation(&mut h, Ip::V4([10, 9, 0, 1], [10, 9, 0, 2]), 40001)
}

#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn ipv6_conversation() -> Result<()> {
    let mut h = Harness::new()?;
    let (a, b) = ula_pair();
    conversation(&mut h, Ip::V6(a, b), 40002)
}

#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn untracked_and_non_tcp_traffic_is_ignored() -> Result<()> {
    let mut h = Harness::new()?;
    let ip = Ip::V4([10, 9, 1, 1], [10, 9, 1, 2]);
    // data on a connection whose SYN was never seen
    let f = frame(Tcp {
        ip,
        ttl: 64,
        sport: 40003,
        dport: 80,
        seq: 1,
        ack: Some(1),
        syn: false,
        payload: b"GET / HTTP/1.1\r\n\r\n",
        options: &[],
    })?;
    assert!(h.run(true, &f)?.is_empty());
    assert!(h.run(false, &f)?.is_empty());
    // an incoming SYN (someone connecting to us) starts nothing in active mode
    let f = frame(Tcp {
        ip,
        ttl: 64,
        sport: 40004,
        dport: 80,
        seq: 1,
        ack: None,
        syn: true,
        payload: b"",
        options: &[],
    })?;
    assert!(h.run(false, &f)?.is_empty());
    // UDP
    let mut udp = Vec::new();
    PacketBuilder::ethernet2([0; 6], [0; 6])
        .ipv4([10, 9, 1, 1], [10, 9, 1, 2], 64)
        .udp(5353, 53)
        .write(&mut udp, b"dns")?;
    assert!(h.run(true, &udp)?.is_empty());
    Ok(())
}

/// Passive mode: a connection someone opens to this host, with payload
/// snapshots of each turn, forgotten once both FINs passed.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn server_side_conversation_with_snapshots() -> Result<()> {
    let mut h = Harness::new()?;
    h.config(CFG_TRACK_ALL_OUT | CFG_TRACK_ALL_IN | CFG_SNAPSHOT)?;
    let ip = Ip::V6(
        [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
        [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
    );
    let peer = |seq, ack, syn, payload: &[u8]| -> Result<Vec<u8>> {
        frame(Tcp {
            ip,
            ttl: 61,
            sport: 50000,
            dport: 8080,
            seq,
            ack,
            syn,
            payload,
            options: &SYN_OPTS,
        })
    };
    let us = |seq, ack, syn, payload: &[u8]| -> Result<Vec<u8>> {
        frame(Tcp {
            ip: ip.rev(),
            ttl: 64,
            sport: 8080,
            dport: 50000,
            seq,
            ack,
            syn,
            payload,
            options: &[],
        })
    };
    let ev = h.run(false, &peer(7000, None, true, b"")?)?;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!((ev[0].kind, ev[0].dir, ev[0].ttl), (EV_SYN, DIR_IN, 61));
    assert_eq!(ev[0].key.local_port, 8080);
    let ev = h.run(true, &us(300, Some(7001), true, b"")?)?;
    assert_eq!((ev[0].kind, ev[0].dir), (EV_SYNACK, DIR_OUT));
    let ev = h.run(false, &peer(7001, Some(301), false, b"")?)?;
    assert_eq!(ev[0].kind, EV_ACK_COVER, "the handshake's last ACK");

    let req = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n";
    let ev = h.run_snaps(false, &peer(7001, Some(301), false, req)?)?;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!((ev[0].0.kind, ev[0].0.ev_flags), (EV_DATA, EVF_TURN_START));
    assert_eq!(ev[0].1, req, "the snapshot is the payload");
    let big = vec![b'x'; 1400];
    let ev = h.run_snaps(true, &us(301, Some(7001 + req.len() as u32), false, &big)?)?;
    assert_eq!(ev[0].0.dir, DIR_OUT);
    assert_eq!(ev[0].1.len(), SNAP_BYTES, "bounded");
    assert_eq!(
        ev[0].0.peer_high,
        7001 + req.len() as u32,
        "where the request ended"
    );
    assert!(ev[0].0.peer_last_ns > 0);

    let ev = h.run(true, &{
        let mut f = us(1701, Some(7001 + req.len() as u32), false, b"")?;
        // FIN|ACK: the TCP flags byte sits 13 bytes into the TCP header
        // (the classifiers do not check checksums).
        f[14 + 40 + 13] |= 0x01;
        f
    })?;
    assert_eq!(ev[0].kind, EV_FIN);
    let mut fin_in = peer(7001 + req.len() as u32, Some(1702), false, b"")?;
    fin_in[14 + 40 + 13] |= 0x01;
    let ev = h.run(false, &fin_in)?;
    let kinds: Vec<u8> = ev.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EV_ACK_COVER, EV_FIN], "our FIN acked, then theirs");
    // Both FINs seen: the flow is gone, so nothing more is reported.
    let ev = h.run(
        false,
        &peer(7002 + req.len() as u32, Some(1702), false, b"late")?,
    )?;
    assert!(ev.is_empty(), "{ev:?}");
    Ok(())
}

/// Passive mode follows only this host's own connections: a SYN it forwards
/// (not addressed to one of its addresses) starts nothing.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn forwarded_syns_are_not_followed() -> Result<()> {
    let mut h = Harness::new()?;
    h.config(CFG_TRACK_ALL_OUT | CFG_TRACK_ALL_IN | CFG_SNAPSHOT | CFG_LOCAL_ONLY)?;
    let syn = |src: [u8; 4], dst: [u8; 4], sport| {
        frame(Tcp {
            ip: Ip::V4(src, dst),
            ttl: 63,
            sport,
            dport: 443,
            seq: 1,
            ack: None,
            syn: true,
            payload: b"",
            options: &[],
        })
    };
    let ours = [10, 9, 3, 1];
    let elsewhere = [192, 0, 2, 9];
    // In: to an address that is not ours (a container's connection crossing
    // the bridge), then to ours once it is in LOCAL_ADDRS.
    assert!(
        h.run(false, &syn([10, 9, 3, 7], elsewhere, 50001)?)?
            .is_empty()
    );
    assert!(h.run(false, &syn([10, 9, 3, 7], ours, 50002)?)?.is_empty());
    let mut local: aya::maps::HashMap<_, [u8; 16], u8> =
        aya::maps::HashMap::try_from(h.ebpf.map_mut("LOCAL_ADDRS").context("LOCAL_ADDRS")?)?;
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&ours);
    local.insert(key, 1, 0)?;
    let ev = h.run(false, &syn([10, 9, 3, 7], ours, 50003)?)?;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!((ev[0].kind, ev[0].dir), (EV_SYN, DIR_IN));
    // (Out, a forwarded SYN has no socket and is not followed either; a
    // test run always gives its packet a dummy socket, so that half is
    // covered by the watch tests' exact request counts.)
    Ok(())
}

/// The frame with RST set (flags byte of the TCP header after Ethernet and
/// an IPv4 header without options; the programs check no checksum).
fn with_rst(mut f: Vec<u8>) -> Vec<u8> {
    f[14 + 20 + 13] |= 0x04;
    f
}

/// Two connections from the same local port (to two servers): the per-port
/// test in front of the flow table counts both, so closing one leaves the
/// other followed, and closing both leaves the port at zero.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn connections_sharing_a_local_port_are_each_followed() -> Result<()> {
    let mut h = Harness::new()?;
    let port = 40020;
    let seg = |ip: Ip, out: bool, seq, ack, syn, payload: &'static [u8]| {
        let (ip, sport, dport) = if out {
            (ip, port, 443)
        } else {
            (ip.rev(), 443, port)
        };
        frame(Tcp {
            ip,
            ttl: 64,
            sport,
            dport,
            seq,
            ack,
            syn,
            payload,
            options: &[],
        })
    };
    let a = Ip::V4([10, 9, 3, 1], [10, 9, 3, 2]);
    let b = Ip::V4([10, 9, 3, 1], [10, 9, 3, 3]);
    assert_eq!(h.port_flows(port)?, 0);
    for ip in [a, b] {
        let ev = h.run(true, &seg(ip, true, 100, None, true, b"")?)?;
        assert_eq!(ev.len(), 1, "{ev:?}");
        let ev = h.run(false, &seg(ip, false, 900, Some(101), true, b"")?)?;
        assert_eq!(ev[0].kind, EV_SYNACK);
    }
    assert_eq!(h.port_flows(port)?, 2);
    // The first server resets its connection: gone, and counted out.
    let ev = h.run(false, &with_rst(seg(a, false, 901, Some(101), false, b"")?))?;
    assert!(ev.iter().any(|e| e.kind == probe_common::EV_RST), "{ev:?}");
    assert_eq!(h.port_flows(port)?, 1);
    // The second is still followed: its request is a turn.
    let ev = h.run(true, &seg(b, true, 101, Some(901), false, &[1; 40])?)?;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!((ev[0].kind, ev[0].ev_flags), (EV_DATA, EVF_TURN_START));
    // The first one's packets no longer are.
    assert!(
        h.run(true, &seg(a, true, 101, Some(901), false, &[1; 40])?)?
            .is_empty()
    );
    let ev = h.run(false, &with_rst(seg(b, false, 901, Some(141), false, b"")?))?;
    assert!(ev.iter().any(|e| e.kind == probe_common::EV_RST), "{ev:?}");
    assert_eq!(h.port_flows(port)?, 0);
    Ok(())
}

/// Raw-IP devices (tun, WireGuard) get the classifiers built for no
/// link-layer header. BPF_PROG_TEST_RUN takes the skb's protocol from bytes
/// 12-13 as if they were an ethertype; in a bare IPv4 header those are the
/// source address's first two, so both ends are 8.0.x.x (0x0800, IPv4):
/// synthetic frames, never sent anywhere.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn raw_ip_devices_get_their_own_classifiers() -> Result<()> {
    let mut h = Harness::new()?;
    let ip = Ip::V4([8, 0, 0, 1], [8, 0, 4, 2]);
    let bare = |out: bool, seq, ack, syn, opts: &'static [TcpOptionElement]| -> Result<Vec<u8>> {
        let (ip, sport, dport) = if out {
            (ip, 40030, 443)
        } else {
            (ip.rev(), 443, 40030)
        };
        let f = frame(Tcp {
            ip,
            ttl: 50,
            sport,
            dport,
            seq,
            ack,
            syn,
            payload: b"",
            options: opts,
        })?;
        Ok(f[14..].to_vec())
    };
    let ev = h.run_prog(
        "synack_egress_raw",
        &bare(true, 7000, None, true, &SYN_OPTS)?,
    )?;
    assert_eq!(ev.len(), 1, "{ev:?}");
    let e = ev[0].0;
    assert_eq!((e.kind, e.seq), (EV_SYN, 7000));
    assert_eq!((e.key.local_port, e.key.remote_port), (40030, 443));
    assert_eq!(&e.key.remote_addr[..4], &[8, 0, 4, 2]);
    let o = parse_options(&e.options[..e.opt_len as usize])?;
    assert_eq!(o.mss, Some(1460));
    let ev = h.run_prog(
        "synack_ingress_raw",
        &bare(false, 3000, Some(7001), true, &[])?,
    )?;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!((ev[0].0.kind, ev[0].0.ttl), (EV_SYNACK, 50));
    // The Ethernet build reads the same bytes 14 further on: not a TCP
    // header it can take for this flow's, so no event.
    let f = bare(false, 3000, Some(7001), true, &[])?;
    assert!(h.run(false, &f)?.iter().all(|e| e.kind != EV_SYNACK));
    Ok(())
}

/// `frame`'s IPv6 packet with extension headers (`kinds`: next-header
/// numbers, each 8 bytes long) between the IPv6 and the TCP header.
fn with_ipv6_extensions(f: &[u8], kinds: &[u8]) -> Vec<u8> {
    let (eth, rest) = f.split_at(14);
    let (ip6, tcp) = rest.split_at(40);
    let mut ip6 = ip6.to_vec();
    let mut ext = Vec::new();
    for (i, _) in kinds.iter().enumerate() {
        // Each header names the next one; the last names TCP (6).
        let next = kinds.get(i + 1).copied().unwrap_or(6);
        // next, length (in 8-byte units past the first 8), PadN over the rest.
        ext.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    }
    ip6[6] = kinds[0];
    let plen = u16::from_be_bytes([ip6[4], ip6[5]]) + ext.len() as u16;
    ip6[4..6].copy_from_slice(&plen.to_be_bytes());
    [eth, &ip6, &ext, tcp].concat()
}

/// IPv6 extension headers (hop-by-hop, destination options) are walked to
/// the TCP header, up to four; a fragment header is skipped and counted.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn ipv6_extension_headers_are_walked() -> Result<()> {
    let mut h = Harness::new()?;
    let (a, b) = ula_pair();
    let syn = |sport| {
        frame(Tcp {
            ip: Ip::V6(a, b),
            ttl: 64,
            sport,
            dport: 443,
            seq: 5000,
            ack: None,
            syn: true,
            payload: b"",
            options: &SYN_OPTS,
        })
    };
    // One, two and four extension headers: each SYN is followed, its
    // options read from where the TCP header really is.
    for (sport, kinds) in [
        (40041u16, &[0u8][..]),
        (40042, &[0, 60]),
        (40043, &[0, 60, 43, 60]),
    ] {
        let f = with_ipv6_extensions(&syn(sport)?, kinds);
        let ev = h.run(true, &f)?;
        assert_eq!(ev.len(), 1, "{kinds:?}: {ev:?}");
        let e = ev[0];
        assert_eq!((e.kind, e.seq), (EV_SYN, 5000), "{kinds:?}");
        assert_eq!((e.key.local_port, e.key.remote_port), (sport, 443));
        let o = parse_options(&e.options[..e.opt_len as usize])?;
        assert_eq!((o.mss, o.wscale), (Some(1460), Some(7)), "{kinds:?}");
        // Its SYN-ACK comes back through two extension headers.
        let sa = frame(Tcp {
            ip: Ip::V6(b, a),
            ttl: 61,
            sport: 443,
            dport: sport,
            seq: 9000,
            ack: Some(5001),
            syn: true,
            payload: b"",
            options: &[],
        })?;
        let ev = h.run(false, &with_ipv6_extensions(&sa, &[0, 60]))?;
        assert_eq!(ev.len(), 1, "{kinds:?}: {ev:?}");
        assert_eq!((ev[0].kind, ev[0].ttl), (EV_SYNACK, 61));
    }
    // Five are more than the classifier walks: not followed.
    let f = with_ipv6_extensions(&syn(40044)?, &[0, 60, 60, 60, 60]);
    assert!(h.run(true, &f)?.is_empty());
    // A fragment header: the TCP header may be in another fragment, so the
    // packet is skipped, and counted.
    let skipped = |h: &Harness| -> Result<u64> {
        let m: PerCpuArray<_, u64> = PerCpuArray::try_from(h.ebpf.map("STATS").context("STATS")?)?;
        Ok(m.get(&STAT_PARSE_SKIPPED, 0)?.iter().sum())
    };
    let before = skipped(&h)?;
    let f = with_ipv6_extensions(&syn(40045)?, &[44]);
    assert!(h.run(true, &f)?.is_empty());
    assert_eq!(skipped(&h)?, before + 1);
    Ok(())
}
