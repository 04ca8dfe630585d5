//! Where an event is written to the ring buffer (a failed reserve is
//! counted), with a payload snapshot where passive mode asked for one.

use super::*;

/// What an event says beyond the packet itself.
pub(crate) struct Ctx {
    /// CLOCK_MONOTONIC ns the packet was seen.
    pub(crate) now: u64,
    pub(crate) cookie: u64,
    pub(crate) dir: u8,
    /// The other direction's last data time and highest sequence number.
    pub(crate) peer_last_ns: u64,
    pub(crate) peer_high: u32,
}

#[inline(always)]
pub(crate) fn event(
    ctx: &TcContext,
    p: &Pkt,
    key: &FlowKey,
    c: &Ctx,
    kind: u8,
    ev_flags: u8,
) -> Event {
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
        // Looked up here, for the few packets that make an event, not for
        // every packet of a followed flow.
        cgroup_id: if c.dir == DIR_OUT {
            // SAFETY: valid context pointer; 0 when the skb has no full socket.
            unsafe { bpf_skb_cgroup_id(skb(ctx)) }
        } else {
            0
        },
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
pub(crate) fn submit_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= (RINGBUF_BYTES / 4) as u64 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
pub(crate) fn emit(ctx: &TcContext, p: &Pkt, key: &FlowKey, c: &Ctx, kind: u8, ev_flags: u8) {
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
        ev.opt_len = read_options(ctx, p, &mut ev.options);
    }
    entry.submit(submit_flags());
}

/// A SYN's or SYN-ACK's TCP options (their length is a multiple of 4, at
/// most 40), copied with one helper call of a constant size per length:
/// ten short arms for the verifier instead of a loop of ten reads; returns
/// the bytes copied (0 on failure).
#[inline(always)]
pub(crate) fn read_options(ctx: &TcContext, p: &Pkt, out: &mut [u8; 40]) -> u8 {
    macro_rules! copy {
        ($($n:literal)*) => {
            match p.opt_len {
                $($n => load_into(ctx, p.opt_off, out, $n),)*
                _ => 0,
            }
        };
    }
    copy!(4 8 12 16 20 24 28 32 36 40)
}

/// A turn-start data event with the payload's first bytes after it, as one
/// record of exactly the event and the bytes copied: built in this CPU's
/// `SNAP` slot, then copied into the ring with `bpf_ringbuf_output` (a
/// reserve must be of a constant size, and a full `SnapEvent` per turn
/// filled the ring up to eight times faster than the bytes in it needed).
#[inline(always)]
pub(crate) fn emit_snap(ctx: &TcContext, p: &Pkt, key: &FlowKey, c: &Ctx, ev_flags: u8) {
    let Some(slot) = SNAP.get_ptr_mut(0) else {
        count(STAT_RINGBUF_FULL);
        return;
    };
    // SAFETY: `slot` is this CPU's map value of SnapEvent's size, valid for
    // the program run; a tc program runs to its end on its CPU (bottom
    // halves off, or in softirq), so no other run writes it meanwhile.
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
    // SAFETY: as above.
    unsafe { (*slot).ev.snap_len = got as u16 };
    // The event and the `got` bytes after it (got <= SNAP_BYTES, so the
    // length stays inside the slot).
    let len = core::mem::size_of::<Event>() + got.min(SNAP_BYTES);
    // SAFETY: `slot` is valid for SnapEvent's size and len <= that size;
    // every byte in it was written above.
    let bytes = unsafe { core::slice::from_raw_parts(slot as *const u8, len) };
    if EVENTS.output::<[u8]>(bytes, submit_flags()).is_err() {
        count(STAT_RINGBUF_FULL);
    }
}

#[inline(always)]
pub(crate) fn emit_all(ctx: &TcContext, p: &Pkt, key: &FlowKey, c: &Ctx, e: &flow::Emits) {
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
