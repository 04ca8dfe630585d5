//! Where a packet's bytes become header fields: one bounds-checked read
//! (direct packet access, `bpf_skb_load_bytes` as the slow path), the
//! link-layer length a constant of the entry point, IPv4 and IPv6 with
//! their TCP header, the flow key from this host's side.

use super::*;

/// Link-layer header of Ethernet-framed devices.
pub(crate) const ETH_HLEN: usize = 14;
pub(crate) const ETH_P_IP: u16 = 0x0800;
pub(crate) const ETH_P_IPV6: u16 = 0x86DD;
pub(crate) const IPPROTO_TCP: u8 = 6;

/// The header fields one packet contributes.
pub(crate) struct Pkt {
    pub(crate) src: [u8; 16],
    pub(crate) dst: [u8; 16],
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    pub(crate) ip_version: u8,
    pub(crate) ttl: u8,
    pub(crate) seq: u32,
    pub(crate) ack: u32,
    pub(crate) flags: u8,
    pub(crate) window: u16,
    pub(crate) payload_len: u32,
    /// Offset of the TCP options in the packet, and their length.
    pub(crate) opt_off: usize,
    pub(crate) opt_len: usize,
    /// Offset of the TCP payload in the packet.
    pub(crate) payload_off: usize,
}

/// Offsets from here on are not read (no header synack parses lies this
/// deep); the bound also lets the verifier check the direct reads below.
pub(crate) const MAX_HEADER_OFF: usize = 4096;

/// The one way this program reads header bytes: straight from the linear
/// part of the skb after one bounds check against `data_end` (a load, no
/// helper call). When the header is not in the linear part (a paged
/// fragment: rare, some drivers split headers from payload), the skb's
/// first bytes are made linear with `bpf_skb_pull_data` (what the stack
/// itself does before reading them; the bytes do not change) and read the
/// same way.
///
/// Why not `bpf_skb_load_bytes` as the slow path: it gave the verifier two
/// different states after every read (bytes on the stack from a helper, or
/// from registers) and each walked the whole rest of the program, which was
/// most of start-up. After a pull both ways end in the same read.
#[inline(always)]
pub(crate) fn read<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, ()> {
    let len = core::mem::size_of::<T>();
    if off >= MAX_HEADER_OFF {
        return Err(());
    }
    let (mut start, mut end) = (ctx.data(), ctx.data_end());
    if start + off + len > end {
        ctx.pull_data((off + len) as u32).map_err(|_| ())?;
        (start, end) = (ctx.data(), ctx.data_end());
    }
    if start + off + len <= end {
        // SAFETY: the verifier-visible check above keeps the whole T inside
        // the packet's linear data; read_unaligned since headers need not
        // be aligned.
        return Ok(unsafe { core::ptr::read_unaligned((start + off) as *const T) });
    }
    Err(())
}

/// `off` with the verifier's knowledge of it dropped (a round trip through
/// per-CPU map memory, a few instructions), then bounded again.
///
/// Why: the TCP header's offset comes out of `parse` with different bounds
/// for IPv4 and for IPv6 with 0-4 extension headers, and the verifier walked
/// the rest of the program once for each. Laundered, all of them are the
/// same unknown offset below `MAX_HEADER_OFF`, walked once.
#[inline(always)]
pub(crate) fn launder(off: usize) -> Result<usize, ()> {
    let slot = OFFSET.get_ptr_mut(0).ok_or(())?;
    // SAFETY: this CPU's map value (a u64), valid for the program run; a tc
    // program runs to its end on its CPU (bottom halves off or in softirq),
    // so no other run writes it between the write and the read.
    unsafe { slot.write(off as u64) };
    // The compiler must assume the slot changed and load it again, or it
    // would reuse the register the value came from.
    let slot = core::hint::black_box(slot);
    // SAFETY: as above.
    let off = unsafe { slot.read() } as usize;
    if off >= MAX_HEADER_OFF {
        return Err(());
    }
    Ok(off)
}

/// `bpf_skb_load_bytes` of `n` (1..=SNAP_BYTES) payload bytes straight into
/// a reserved `SnapEvent`; returns the bytes copied (0 on failure).
#[inline(always)]
pub(crate) fn read_into(ctx: &TcContext, off: usize, slot: *mut SnapEvent, n: usize) -> usize {
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

/// `bpf_skb_load_bytes` of `n` bytes (a constant at each call, 1..=40)
/// into the start of `out`; returns n, or 0 on failure.
#[inline(always)]
pub(crate) fn load_into(ctx: &TcContext, off: usize, out: &mut [u8; 40], n: u32) -> u8 {
    // SAFETY: valid skb; `out` has 40 bytes and every caller passes n <= 40.
    let r =
        unsafe { bpf_skb_load_bytes(skb(ctx) as *const _, off as u32, out.as_mut_ptr().cast(), n) };
    if r == 0 { n as u8 } else { 0 }
}

#[inline(always)]
pub(crate) fn skb(ctx: &TcContext) -> *mut __sk_buff {
    ctx.skb.skb
}

#[inline(always)]
pub(crate) fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the whole program run.
    unsafe { (*skb(ctx)).ifindex }
}

#[inline(always)]
pub(crate) fn parse<const L2: usize>(ctx: &TcContext) -> Result<Pkt, ()> {
    let l2 = L2;
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
    // Each header is read whole (one bounds check), not field by field.
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

    let tcp_off = launder(tcp_off)?;
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

/// The connection's key from this host's side: on egress the source is
/// local, on ingress the destination.
#[inline(always)]
pub(crate) fn flow_key(p: &Pkt, egress: bool) -> FlowKey {
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
pub(crate) fn seg(p: &Pkt, ifindex: u32, now: u64) -> flow::Seg {
    flow::Seg {
        seq: p.seq,
        ack: p.ack,
        flags: p.flags,
        payload_len: p.payload_len,
        ifindex,
        ts: now,
    }
}
