//! The classifiers' work: which packets belong to a followed connection,
//! the connection's state updated, and whether the packet is worth an event.

use super::*;

#[inline(always)]
pub(crate) fn is_registered(ctx: &TcContext) -> (bool, u64) {
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

pub(crate) fn try_egress<const L2: usize>(ctx: &TcContext) -> Result<(), ()> {
    let p = parse::<L2>(ctx)?;
    let key = flow_key(&p, true);
    let ours = maybe_ours(key.local_port);
    // Every other program's traffic ends here: not a SYN, no flow on its port.
    if !ours && !flow::is_syn(p.flags) {
        return Ok(());
    }
    let ifx = ifindex(ctx);
    if flow::is_syn(p.flags) {
        if let Some(st) = ours.then(|| FLOWS.get_ptr_mut(key)).flatten() {
            // SAFETY: pointer into the map value, valid for this program run.
            let st = unsafe { &mut *st };
            if flow::syn_again(st, p.seq) {
                let c = out_ctx(ktime(), st.cookie, st);
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
        insert_flow(&key, &st)?;
        let c = out_ctx(ktime(), cookie, &st);
        emit(ctx, &p, &key, &c, EV_SYN, 0);
        return Ok(());
    }

    if !ours {
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
    let c = out_ctx(now, st.cookie, st);
    emit_all(ctx, &p, &key, &c, &e);
    if e.close {
        remove_flow(&key);
    }
    Ok(())
}

/// A flow starts: its port counted first, so `maybe_ours` never says no
/// while it exists. Err (counted) when the table refuses it.
#[inline(always)]
pub(crate) fn insert_flow(key: &FlowKey, st: &FlowState) -> Result<(), ()> {
    port_add(key.local_port, 1);
    if FLOWS.insert(key, st, 0).is_err() {
        port_add(key.local_port, u32::MAX);
        count(STAT_FLOW_INSERT_FAILED);
        return Err(());
    }
    Ok(())
}

/// A flow ends; its port's count drops only if this removal took it (user
/// space or the LRU may have taken it first).
#[inline(always)]
pub(crate) fn remove_flow(key: &FlowKey) {
    if FLOWS.remove(key).is_ok() {
        port_add(key.local_port, u32::MAX);
    }
}

#[inline(always)]
pub(crate) fn out_ctx(now: u64, cookie: u64, st: &FlowState) -> Ctx {
    Ctx {
        now,
        cookie,
        dir: DIR_OUT,
        peer_last_ns: st.last_in_ns,
        peer_high: st.in_high,
    }
}

#[inline(always)]
pub(crate) fn in_ctx(now: u64, cookie: u64, st: &FlowState) -> Ctx {
    Ctx {
        now,
        cookie,
        dir: DIR_IN,
        peer_last_ns: st.last_out_ns,
        peer_high: st.out_high,
    }
}

pub(crate) fn try_ingress<const L2: usize>(ctx: &TcContext) -> Result<(), ()> {
    let p = parse::<L2>(ctx)?;
    let key = flow_key(&p, false);
    let ours = maybe_ours(key.local_port);
    // Every other program's traffic ends here: not a SYN, no flow on its port.
    if !ours && !flow::is_syn(p.flags) {
        return Ok(());
    }
    let ifx = ifindex(ctx);
    if flow::is_syn(p.flags) {
        // Someone opens a connection to this host.
        if let Some(st) = ours.then(|| FLOWS.get_ptr_mut(key)).flatten() {
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
        insert_flow(&key, &st)?;
        let c = in_ctx(ktime(), 0, &st);
        emit(ctx, &p, &key, &c, EV_SYN, 0);
        return Ok(());
    }
    if !ours {
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
        remove_flow(&key);
    }
    Ok(())
}

#[inline(always)]
pub(crate) fn ktime() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}
