//! synack's kernel side: tc classifiers that timestamp the packets of tracked
//! TCP connections and report a few meaningful events per connection.
//!
//! Where a packet becomes an event: `parse` reads the headers (one
//! bounds-checked helper, `read`), `on_egress` / `on_ingress` update the
//! connection's `FlowState` and decide whether the packet is worth an event,
//! `emit` writes it to the ring buffer (a failed reserve is counted).
//!
//! The classifiers never change, drop or redirect a packet: they always return
//! TC_ACT_UNSPEC (TCX_NEXT), so other tc/tcx programs still run after them.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_socket_cookie, bpf_ktime_get_ns,
        generated::{bpf_get_current_cgroup_id, bpf_skb_cgroup_id, bpf_skb_load_bytes},
    },
    macros::{cgroup_sock_addr, classifier, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{SockAddrContext, TcContext},
};
use probe_common::{
    CFG_LOCAL_ONLY, CFG_SNAPSHOT, CFG_TRACK_ALL_IN, CFG_TRACK_ALL_OUT, DIR_IN, DIR_OUT,
    EV_ACK_COVER, EV_DATA, EV_FIN, EV_RST, EV_SYN, EV_SYNACK, EVF_RETRANS, EVF_TURN_START, Event,
    FlowKey, FlowState, MAX_FLOWS, MAX_OWNERS, MAX_REGISTERED, Owner, RINGBUF_BYTES, SNAP_BYTES,
    STAT_COUNT, STAT_FLOW_INSERT_FAILED, STAT_PARSE_SKIPPED, STAT_RINGBUF_FULL, SnapEvent, flow,
};

/// Lets the next tc/tcx program run and the packet continue unchanged.
const TC_ACT_UNSPEC: i32 = -1;

const SOCK_STREAM: u32 = 1;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;

/// Connections being followed, keyed from this host's point of view.
#[map]
static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// Socket cookies user space registered before connect(): their SYN starts a flow.
#[map]
static REGISTERED: HashMap<u64, u8> = HashMap::with_max_entries(MAX_REGISTERED, 0);

/// Bytes of link-layer header per interface index (14 for Ethernet and
/// loopback, 0 for raw-IP devices such as WireGuard or tun). Missing = 14.
#[map]
static L2_LEN: HashMap<u32, u32> = HashMap::with_max_entries(1024, 0);

/// This namespace's own addresses (IPv4 in the first 4 bytes), kept by user
/// space in passive mode: an incoming SYN starts a server-side flow only when
/// it is addressed to one of them, not when this host merely forwards it
/// (a container bridge, a router).
#[map]
static LOCAL_ADDRS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(1024, 0);

/// `CONFIG[0]`: `CFG_*` bits.
#[map]
static CONFIG: Array<u32> = Array::with_max_entries(1, 0);

/// Loss and skip counters, indexed by `STAT_*`.
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RINGBUF_BYTES, 0);

/// Socket cookie -> the process that called connect() on it (passive mode's
/// pid/comm attribution), written by the cgroup connect hooks.
#[map]
static OWNERS: LruHashMap<u64, Owner> = LruHashMap::with_max_entries(MAX_OWNERS, 0);

/// cgroup connect hooks: record who connects, never change or refuse the
/// connect() (return 1 = proceed).
#[cgroup_sock_addr(connect4)]
pub fn synack_connect4(ctx: SockAddrContext) -> i32 {
    try_connect(&ctx);
    1
}

#[cgroup_sock_addr(connect6)]
pub fn synack_connect6(ctx: SockAddrContext) -> i32 {
    try_connect(&ctx);
    1
}

#[inline(always)]
fn try_connect(ctx: &SockAddrContext) {
    // Only TCP: every DNS lookup connect()s a UDP socket, and those would
    // push TCP owners out of the LRU map.
    // SAFETY: valid context pointer for the whole program run.
    if unsafe { (*ctx.sock_addr).type_ } != SOCK_STREAM {
        return;
    }
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if cookie == 0 {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    let owner = Owner {
        pid: (id >> 32) as u32,
        tid: id as u32,
        // SAFETY: helper without preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    let _ = OWNERS.insert(cookie, owner, 0);
}

#[classifier]
pub fn synack_egress(ctx: TcContext) -> i32 {
    let _ = try_egress(&ctx);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn synack_ingress(ctx: TcContext) -> i32 {
    let _ = try_ingress(&ctx);
    TC_ACT_UNSPEC
}

/// The header fields one packet contributes.
struct Pkt {
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    ip_version: u8,
    ttl: u8,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    payload_len: u32,
    /// Offset of the TCP options in the packet, and their length.
    opt_off: usize,
    opt_len: usize,
    /// Offset of the TCP payload in the packet.
    payload_off: usize,
}

/// The one way this program reads packet bytes: `bpf_skb_load_bytes`, which
/// checks bounds and also works on non-linear skbs.
#[inline(always)]
fn read<T>(ctx: &TcContext, off: usize) -> Result<T, ()> {
    ctx.load::<T>(off).map_err(|_| ())
}

/// `bpf_skb_load_bytes` of `n` (1..=SNAP_BYTES) payload bytes straight into
/// a reserved `SnapEvent`; returns the bytes copied (0 on failure).
#[inline(always)]
fn read_into(ctx: &TcContext, off: usize, slot: *mut SnapEvent, n: usize) -> usize {
    if n == 0 || n > SNAP_BYTES {
        return 0;
    }
    // A length the verifier can bound from arithmetic alone: 1..=SNAP_BYTES
    // whatever it learnt from the branches above (kernels before 6.8 do not
    // raise a lower bound from a "!= 0" branch, and a zero-length read is
    // refused). Equal to n for n in 1..=SNAP_BYTES.
    let n = ((n - 1) & (SNAP_BYTES - 1)) + 1;
    // SAFETY: `slot` is reserved ring-buffer memory; `snap` has SNAP_BYTES
    // bytes and n <= SNAP_BYTES.
    let dst = unsafe { core::ptr::addr_of_mut!((*slot).snap) };
    // SAFETY: valid skb and destination of at least n bytes.
    let r = unsafe { bpf_skb_load_bytes(skb(ctx) as *const _, off as u32, dst.cast(), n as u32) };
    if r == 0 { n } else { 0 }
}

#[inline(always)]
fn config() -> u32 {
    CONFIG.get(0).copied().unwrap_or(0)
}

#[inline(always)]
fn skb(ctx: &TcContext) -> *mut __sk_buff {
    ctx.skb.skb
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the whole program run.
    unsafe { (*skb(ctx)).ifindex }
}

fn count(stat: u32) {
    if let Some(p) = STATS.get_ptr_mut(stat) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Result<Pkt, ()> {
    let ifx = ifindex(ctx);
    // SAFETY: plain map lookup; the value is a u32 copied out at once.
    let l2 = unsafe { L2_LEN.get(ifx) }.copied().unwrap_or(14) as usize;
    let l2 = if l2 > 64 { 14 } else { l2 };
    // skb->protocol is the ethertype in network byte order for every device type.
    let proto = u16::from_be(ctx.skb.protocol() as u16);

    let mut p = Pkt {
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
        ip_version: 0,
        ttl: 0,
        seq: 0,
        ack: 0,
        flags: 0,
        window: 0,
        payload_len: 0,
        opt_off: 0,
        opt_len: 0,
        payload_off: 0,
    };
    let tcp_off;
    let ip_payload_len: usize;
    // Each header is read with one helper call (a fixed-size copy to the
    // stack), not one per field: per-packet cost is mostly these calls.
    if proto == ETH_P_IP {
        let h: [u8; 20] = read(ctx, l2)?;
        if h[0] >> 4 != 4 {
            return Err(());
        }
        let ihl = ((h[0] & 0x0f) as usize) * 4;
        if ihl < 20 {
            return Err(());
        }
        let tot_len = u16::from_be_bytes([h[2], h[3]]) as usize;
        let frag = u16::from_be_bytes([h[6], h[7]]);
        // Any fragment but an unfragmented packet: headers may be missing.
        if frag & 0x3fff != 0 {
            if frag & 0x1fff == 0 {
                count(STAT_PARSE_SKIPPED);
            }
            return Err(());
        }
        p.ttl = h[8];
        if h[9] != IPPROTO_TCP {
            return Err(());
        }
        p.src[..4].copy_from_slice(&h[12..16]);
        p.dst[..4].copy_from_slice(&h[16..20]);
        p.ip_version = 4;
        tcp_off = l2 + ihl;
        ip_payload_len = tot_len.saturating_sub(ihl);
    } else if proto == ETH_P_IPV6 {
        let h: [u8; 40] = read(ctx, l2)?;
        if h[0] >> 4 != 6 {
            return Err(());
        }
        let plen = u16::from_be_bytes([h[4], h[5]]) as usize;
        let mut next: u8 = h[6];
        p.ttl = h[7];
        p.src.copy_from_slice(&h[8..24]);
        p.dst.copy_from_slice(&h[24..40]);
        p.ip_version = 6;
        let mut off = l2 + 40;
        let mut ext = 0usize;
        // Skip up to four extension headers (hop-by-hop, routing, destination).
        for _ in 0..4 {
            if next == IPPROTO_TCP {
                break;
            }
            if next == 44 {
                count(STAT_PARSE_SKIPPED);
                return Err(());
            }
            if next != 0 && next != 43 && next != 60 {
                return Err(());
            }
            let e: [u8; 2] = read(ctx, off)?;
            let len = (e[1] as usize + 1) * 8;
            next = e[0];
            off += len;
            ext += len;
        }
        if next != IPPROTO_TCP {
            return Err(());
        }
        tcp_off = off;
        ip_payload_len = plen.saturating_sub(ext);
    } else {
        return Err(());
    }

    let t: [u8; 20] = read(ctx, tcp_off)?;
    p.sport = u16::from_be_bytes([t[0], t[1]]);
    p.dport = u16::from_be_bytes([t[2], t[3]]);
    p.seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
    p.ack = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
    p.flags = t[13];
    p.window = u16::from_be_bytes([t[14], t[15]]);
    let doff = ((t[12] >> 4) as usize) * 4;
    if doff < 20 {
        return Err(());
    }
    p.payload_len = ip_payload_len.saturating_sub(doff) as u32;
    p.opt_off = tcp_off + 20;
    p.opt_len = doff - 20;
    p.payload_off = tcp_off + doff;
    Ok(p)
}

/// What an event says beyond the packet itself.
struct Ctx {
    /// CLOCK_MONOTONIC ns the packet was seen.
    now: u64,
    cookie: u64,
    dir: u8,
    /// The other direction's last data time and highest sequence number.
    peer_last_ns: u64,
    peer_high: u32,
    /// Socket cgroup id (egress), else 0.
    cgroup_id: u64,
}

#[inline(always)]
fn event(ctx: &TcContext, p: &Pkt, key: &FlowKey, c: &Ctx, kind: u8, ev_flags: u8) -> Event {
    Event {
        ts_ns: c.now,
        cookie: c.cookie,
        key: *key,
        seq: p.seq,
        ack: p.ack,
        payload_len: p.payload_len,
        ifindex: ifindex(ctx),
        window: p.window,
        kind,
        dir: c.dir,
        tcp_flags: p.flags,
        ttl: p.ttl,
        ev_flags,
        opt_len: 0,
        options: [0; 40],
        // SAFETY: the context pointer is valid for the whole program run.
        skb_tstamp: unsafe { (*skb(ctx)).tstamp },
        cgroup_id: c.cgroup_id,
        peer_last_ns: c.peer_last_ns,
        peer_high: c.peer_high,
        snap_len: 0,
        // SAFETY: as above.
        skb_tstamp_type: unsafe { (*skb(ctx)).tstamp_type },
        _pad: 0,
    }
}

/// Submit flags: no wakeup of user space per event (that wakeup, an
/// irq_work, would sit in the packet's path and delay it, and with it the
/// next timestamps); user space drains on a short timer instead. A ring a
/// quarter full wakes it at once.
#[inline(always)]
fn submit_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= (RINGBUF_BYTES / 4) as u64 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
fn emit(ctx: &TcContext, p: &Pkt, key: &FlowKey, c: &Ctx, kind: u8, ev_flags: u8) {
    if kind == EV_DATA && ev_flags & EVF_TURN_START != 0 && config() & CFG_SNAPSHOT != 0 {
        emit_snap(ctx, p, key, c, ev_flags);
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(STAT_RINGBUF_FULL);
        return;
    };
    entry.write(event(ctx, p, key, c, kind, ev_flags));
    // SAFETY: the entry was fully initialised just above.
    let ev = unsafe { entry.assume_init_mut() };
    if kind == EV_SYN || kind == EV_SYNACK {
        // Options are read 4 bytes at a time (their length is a multiple of 4)
        // so every load has a constant size the verifier can check.
        let mut n = 0u8;
        for i in 0..10usize {
            if i * 4 >= p.opt_len {
                break;
            }
            match read::<[u8; 4]>(ctx, p.opt_off + i * 4) {
                Ok(b) => {
                    ev.options[i * 4..i * 4 + 4].copy_from_slice(&b);
                    n += 4;
                }
                Err(()) => break,
            }
        }
        ev.opt_len = n;
    }
    entry.submit(submit_flags());
}

/// A turn-start data event with the payload's first bytes after it.
#[inline(always)]
fn emit_snap(ctx: &TcContext, p: &Pkt, key: &FlowKey, c: &Ctx, ev_flags: u8) {
    let Some(mut entry) = EVENTS.reserve::<SnapEvent>(0) else {
        count(STAT_RINGBUF_FULL);
        return;
    };
    let slot = entry.as_mut_ptr();
    // SAFETY: `slot` points to reserved ring-buffer memory of SnapEvent's
    // size; the event part is written whole here, the bytes below.
    unsafe { core::ptr::addr_of_mut!((*slot).ev).write(event(ctx, p, key, c, EV_DATA, ev_flags)) };
    let avail = (ctx.len() as usize).saturating_sub(p.payload_off);
    let mut n = p.payload_len as usize;
    if n > avail {
        n = avail;
    }
    if n > SNAP_BYTES {
        n = SNAP_BYTES;
    }
    let got = if n > 0 {
        read_into(ctx, p.payload_off, slot, n)
    } else {
        0
    };
    // SAFETY: as above; the rest of `snap` past `got` is left as reserved
    // (user space reads only `snap_len` bytes).
    unsafe { (*slot).ev.snap_len = got as u16 };
    // SAFETY: every byte user space reads was written above.
    unsafe { entry.assume_init_mut() };
    entry.submit(submit_flags());
}
#[inline(always)]
fn is_registered(ctx: &TcContext) -> (bool, u64) {
    // SAFETY: valid context pointer; the helper returns 0 when there is no socket.
    let cookie = unsafe { bpf_get_socket_cookie(skb(ctx) as *mut _) };
    if cookie != 0 {
        // SAFETY: plain lookup, value not kept.
        if unsafe { REGISTERED.get(cookie) }.is_some() {
            return (true, cookie);
        }
    }
    // Every connection this host opens has a socket; a forwarded SYN has
    // none (cookie 0) and is not ours to follow.
    let cfg = config();
    let all = cfg & CFG_TRACK_ALL_OUT != 0 && (cookie != 0 || cfg & CFG_LOCAL_ONLY == 0);
    (all, cookie)
}

fn try_egress(ctx: &TcContext) -> Result<(), ()> {
    let p = parse(ctx)?;
    let key = flow_key(&p, true);
    let ifx = ifindex(ctx);

    if flow::is_syn(p.flags) {
        if let Some(st) = FLOWS.get_ptr_mut(key) {
            // SAFETY: pointer into the map value, valid for this program run.
            let st = unsafe { &mut *st };
            if flow::syn_again(st, p.seq) {
                let c = out_ctx(ctx, ktime(), st.cookie, st);
                emit(ctx, &p, &key, &c, EV_SYN, EVF_RETRANS);
                return Ok(());
            }
            // Same 4-tuple, new ISN: a new connection reusing the port.
        }
        let (tracked, cookie) = is_registered(ctx);
        if !tracked {
            return Ok(());
        }
        let st = flow::new_flow(cookie, p.seq, ifx);
        if FLOWS.insert(key, st, 0).is_err() {
            count(STAT_FLOW_INSERT_FAILED);
            return Ok(());
        }
        let c = out_ctx(ctx, ktime(), cookie, &st);
        emit(ctx, &p, &key, &c, EV_SYN, 0);
        return Ok(());
    }

    let Some(st) = FLOWS.get_ptr_mut(key) else {
        return Ok(());
    };
    // SAFETY: pointer into the map value, valid for this program run.
    let st = unsafe { &mut *st };
    let now = ktime();
    let e = flow::egress_step(st, &seg(&p, ifx, now));
    if st.cookie == 0 && e.synack.is_none() {
        // A server-side flow learns the accepted socket's cookie from its
        // first packet (the SYN-ACK belongs to a request socket).
        // SAFETY: valid context pointer.
        st.cookie = unsafe { bpf_get_socket_cookie(skb(ctx) as *mut _) };
    }
    let c = out_ctx(ctx, now, st.cookie, st);
    emit_all(ctx, &p, &key, &c, &e);
    if e.close {
        let _ = FLOWS.remove(key);
    }
    Ok(())
}

#[inline(always)]
fn out_ctx(ctx: &TcContext, now: u64, cookie: u64, st: &FlowState) -> Ctx {
    Ctx {
        now,
        cookie,
        dir: DIR_OUT,
        peer_last_ns: st.last_in_ns,
        peer_high: st.in_high,
        // SAFETY: valid context pointer; 0 when the skb has no full socket.
        cgroup_id: unsafe { bpf_skb_cgroup_id(skb(ctx)) },
    }
}

#[inline(always)]
fn in_ctx(now: u64, cookie: u64, st: &FlowState) -> Ctx {
    Ctx {
        now,
        cookie,
        dir: DIR_IN,
        peer_last_ns: st.last_out_ns,
        peer_high: st.out_high,
        cgroup_id: 0,
    }
}

fn try_ingress(ctx: &TcContext) -> Result<(), ()> {
    let p = parse(ctx)?;
    let key = flow_key(&p, false);
    let ifx = ifindex(ctx);
    if flow::is_syn(p.flags) {
        // Someone opens a connection to this host.
        if let Some(st) = FLOWS.get_ptr_mut(key) {
            // SAFETY: pointer into the map value, valid for this program run.
            let st = unsafe { &mut *st };
            if flow::syn_in_again(st, p.seq) {
                let c = in_ctx(ktime(), 0, st);
                emit(ctx, &p, &key, &c, EV_SYN, EVF_RETRANS);
                return Ok(());
            }
            if st.flags & probe_common::FLOW_SERVER == 0 {
                // A SYN into one of our own connecting sockets (simultaneous open).
                return Ok(());
            }
        }
        if config() & CFG_TRACK_ALL_IN == 0 {
            return Ok(());
        }
        // SAFETY: plain lookup, value not kept.
        if config() & CFG_LOCAL_ONLY != 0 && unsafe { LOCAL_ADDRS.get(p.dst) }.is_none() {
            return Ok(()); // forwarded, not for us
        }
        let st = flow::new_server_flow(p.seq, ifx);
        if FLOWS.insert(key, st, 0).is_err() {
            count(STAT_FLOW_INSERT_FAILED);
            return Ok(());
        }
        let c = in_ctx(ktime(), 0, &st);
        emit(ctx, &p, &key, &c, EV_SYN, 0);
        return Ok(());
    }
    let Some(st) = FLOWS.get_ptr_mut(key) else {
        return Ok(());
    };
    // SAFETY: pointer into the map value, valid for this program run.
    let st = unsafe { &mut *st };
    let now = ktime();
    let e = flow::ingress_step(st, &seg(&p, ifx, now));
    let c = in_ctx(now, st.cookie, st);
    emit_all(ctx, &p, &key, &c, &e);
    if e.close {
        let _ = FLOWS.remove(key);
    }
    Ok(())
}

/// The connection's key from this host's side: on egress the source is
/// local, on ingress the destination.
#[inline(always)]
fn flow_key(p: &Pkt, egress: bool) -> FlowKey {
    let (local, remote, lport, rport) = if egress {
        (p.src, p.dst, p.sport, p.dport)
    } else {
        (p.dst, p.src, p.dport, p.sport)
    };
    FlowKey {
        local_addr: local,
        remote_addr: remote,
        local_port: lport,
        remote_port: rport,
        ip_version: p.ip_version,
        _pad: [0; 3],
    }
}

#[inline(always)]
fn seg(p: &Pkt, ifindex: u32, now: u64) -> flow::Seg {
    flow::Seg {
        seq: p.seq,
        ack: p.ack,
        flags: p.flags,
        payload_len: p.payload_len,
        ifindex,
        ts: now,
    }
}

#[inline(always)]
fn ktime() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn emit_all(ctx: &TcContext, p: &Pkt, key: &FlowKey, c: &Ctx, e: &flow::Emits) {
    if let Some(f) = e.synack {
        emit(ctx, p, key, c, EV_SYNACK, f);
    }
    if e.rst {
        emit(ctx, p, key, c, EV_RST, 0);
    }
    if e.ack_cover {
        emit(ctx, p, key, c, EV_ACK_COVER, 0);
    }
    if let Some(f) = e.data {
        emit(ctx, p, key, c, EV_DATA, f);
    }
    if e.fin {
        emit(ctx, p, key, c, EV_FIN, 0);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
