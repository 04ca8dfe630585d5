//! The per-connection state machine the classifiers run for every packet of a
//! tracked flow. It is plain `no_std` code so the very same logic the kernel
//! runs is unit-tested on the host (see the tests at the bottom).
//!
//! Sequence numbers are compared modulo 2^32, as TCP does.

use crate::{
    DIR_IN, DIR_OUT, EARLY_SEGMENTS, EV_ACK_COVER, EV_DATA, EV_FIN, EV_RST, EV_SYNACK, EVF_RETRANS,
    EVF_TURN_START, FLOW_FIN_IN, FLOW_FIN_OUT, FLOW_HAVE_IN_ISN, FLOW_HAVE_OUT_ISN, FLOW_SERVER,
    FlowState,
};

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// What one packet contributes to the state machine.
#[derive(Clone, Copy, Debug, Default)]
pub struct Seg {
    /// Raw sequence number, host byte order.
    pub seq: u32,
    /// Raw acknowledgement number, host byte order.
    pub ack: u32,
    /// TCP flag byte.
    pub flags: u8,
    /// Payload bytes.
    pub payload_len: u32,
    /// Interface index the packet was seen on.
    pub ifindex: u32,
    /// CLOCK_MONOTONIC ns now.
    pub ts: u64,
}

/// The events one packet causes, in the order they are emitted. Plain
/// fields rather than an array: the verifier rejects the pointer arithmetic
/// LLVM makes of a variable array index on the stack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Emits {
    /// A SYN-ACK, with its `EVF_*` flags.
    pub synack: Option<u8>,
    pub rst: bool,
    /// An ACK covering everything sent so far.
    pub ack_cover: bool,
    /// A payload segment worth reporting, with its `EVF_*` flags.
    pub data: Option<u8>,
    pub fin: bool,
    /// The connection is over (a RST, or FINs both ways): the caller drops
    /// its state so the table holds live connections only.
    pub close: bool,
}

impl Emits {
    /// The events as (`EV_*` kind, `EVF_*` flags), in emission order.
    pub fn list(&self) -> ([(u8, u8); 5], usize) {
        let mut v = [(0u8, 0u8); 5];
        let mut n = 0;
        let mut push = |k: u8, f: u8| {
            v[n] = (k, f);
            n += 1;
        };
        if let Some(f) = self.synack {
            push(EV_SYNACK, f);
        }
        if self.rst {
            push(EV_RST, 0);
        }
        if self.ack_cover {
            push(EV_ACK_COVER, 0);
        }
        if let Some(f) = self.data {
            push(EV_DATA, f);
        }
        if self.fin {
            push(EV_FIN, 0);
        }
        (v, n)
    }
}

/// `a` is after `b` in sequence space.
#[inline(always)]
pub fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// True for a SYN without ACK: the first packet of an outgoing connection.
#[inline(always)]
pub fn is_syn(flags: u8) -> bool {
    flags & TCP_SYN != 0 && flags & TCP_ACK == 0
}

/// State for a connection whose SYN (sequence `isn`) just left on `ifindex`.
#[inline(always)]
pub fn new_flow(cookie: u64, isn: u32, ifindex: u32) -> FlowState {
    FlowState {
        cookie,
        out_isn: isn,
        out_high: isn.wrapping_add(1),
        acked_emitted: isn.wrapping_add(1),
        out_ifindex: ifindex,
        flags: FLOW_HAVE_OUT_ISN,
        syn_count: 1,
        ..FlowState::default()
    }
}

/// State for a connection the peer opens: its SYN (sequence `isn`) just
/// arrived on `ifindex`. Our side is filled in when our SYN-ACK leaves.
#[inline(always)]
pub fn new_server_flow(isn: u32, ifindex: u32) -> FlowState {
    FlowState {
        in_isn: isn,
        in_high: isn.wrapping_add(1),
        in_ifindex: ifindex,
        flags: FLOW_HAVE_IN_ISN | FLOW_SERVER,
        syn_count: 1,
        ..FlowState::default()
    }
}

/// An incoming SYN on an existing server-side flow: true (and counted) when
/// it is the same SYN again; false for a new connection on the same 4-tuple.
#[inline(always)]
pub fn syn_in_again(st: &mut FlowState, isn: u32) -> bool {
    if st.flags & FLOW_SERVER != 0 && st.in_isn == isn {
        st.syn_count = st.syn_count.saturating_add(1);
        true
    } else {
        false
    }
}

/// Our SYN-ACK leaving on a server-side flow: returns its `EVF_*` flags
/// (`EVF_RETRANS` when it is sent again), or None when the flow is not one
/// we answer. The handshake's final ACK then shows as an `EV_ACK_COVER`.
#[inline(always)]
pub fn synack_out(st: &mut FlowState, s: &Seg) -> Option<u8> {
    if st.flags & FLOW_SERVER == 0 {
        return None;
    }
    if st.flags & FLOW_HAVE_OUT_ISN != 0 {
        if st.out_isn == s.seq && st.out_ifindex == s.ifindex {
            return Some(EVF_RETRANS);
        }
        return None;
    }
    st.out_isn = s.seq;
    st.out_high = s.seq.wrapping_add(1);
    // One below what the SYN-ACK needs acknowledged, so the peer's ACK of it
    // counts as covering everything sent.
    st.acked_emitted = s.seq;
    st.out_ifindex = s.ifindex;
    st.flags |= FLOW_HAVE_OUT_ISN;
    Some(0)
}

#[inline(always)]
fn fin(st: &mut FlowState, dir: u8, e: &mut Emits) {
    e.fin = true;
    st.flags |= if dir == DIR_OUT {
        FLOW_FIN_OUT
    } else {
        FLOW_FIN_IN
    };
    if st.flags & (FLOW_FIN_OUT | FLOW_FIN_IN) == (FLOW_FIN_OUT | FLOW_FIN_IN) {
        e.close = true;
    }
}

/// An outgoing SYN on an existing flow: a retransmission when the ISN is the
/// same (returns true and counts it); otherwise a new connection reusing the
/// 4-tuple, which the caller starts afresh.
#[inline(always)]
pub fn syn_again(st: &mut FlowState, isn: u32) -> bool {
    if st.out_isn == isn {
        st.syn_count = st.syn_count.saturating_add(1);
        true
    } else {
        false
    }
}

#[inline(always)]
fn payload(st: &mut FlowState, s: &Seg, dir: u8, e: &mut Emits) {
    let (high, segs, last) = if dir == DIR_OUT {
        (&mut st.out_high, &mut st.out_segs, &mut st.last_out_ns)
    } else {
        (&mut st.in_high, &mut st.in_segs, &mut st.last_in_ns)
    };
    let end = s.seq.wrapping_add(s.payload_len);
    if seq_after(*high, s.seq) {
        // Starts below what was already seen: a retransmission, or a segment
        // that was overtaken (reordering). Never a new turn.
        if seq_after(end, *high) {
            *high = end;
        }
        e.data = Some(EVF_RETRANS);
        return;
    }
    *high = end;
    *last = s.ts;
    *segs = segs.saturating_add(1);
    let turn = st.last_payload_dir != dir + 1;
    st.last_payload_dir = dir + 1;
    if turn || *segs <= EARLY_SEGMENTS {
        e.data = Some(if turn { EVF_TURN_START } else { 0 });
    }
}

/// A non-SYN packet of the flow leaving this host.
#[inline(always)]
pub fn egress_step(st: &mut FlowState, s: &Seg) -> Emits {
    let mut e = Emits::default();
    if s.flags & TCP_SYN != 0 {
        if s.flags & TCP_ACK != 0 {
            e.synack = synack_out(st, s);
        }
        return e;
    }
    if s.flags & TCP_RST != 0 && st.flags & FLOW_HAVE_OUT_ISN == 0 {
        // Our RST to a SYN for a port nobody listens on: refused.
        e.rst = true;
        e.close = true;
        return e;
    }
    if st.out_ifindex != s.ifindex {
        return e;
    }
    if s.flags & TCP_RST != 0 {
        e.rst = true;
        e.close = true;
        return e;
    }
    if s.payload_len > 0 {
        payload(st, s, DIR_OUT, &mut e);
    }
    if s.flags & TCP_FIN != 0 {
        fin(st, DIR_OUT, &mut e);
    }
    e
}

/// A packet of the flow arriving at this host.
#[inline(always)]
pub fn ingress_step(st: &mut FlowState, s: &Seg) -> Emits {
    let mut e = Emits::default();
    if st.in_ifindex == 0 {
        st.in_ifindex = s.ifindex;
    } else if st.in_ifindex != s.ifindex {
        return e;
    }
    if s.flags & TCP_RST != 0 {
        e.rst = true;
        e.close = true;
        return e;
    }
    if s.flags & TCP_SYN != 0 {
        if s.flags & TCP_ACK != 0 && st.flags & FLOW_SERVER == 0 {
            let again = st.flags & FLOW_HAVE_IN_ISN != 0 && st.in_isn == s.seq;
            if !again {
                st.in_isn = s.seq;
                st.in_high = s.seq.wrapping_add(1);
                st.flags |= FLOW_HAVE_IN_ISN;
            }
            e.synack = Some(if again { EVF_RETRANS } else { 0 });
        }
        return e;
    }
    if s.flags & TCP_ACK != 0
        && st.flags & FLOW_HAVE_OUT_ISN != 0
        && seq_after(s.ack, st.acked_emitted)
        && !seq_after(st.out_high, s.ack)
    {
        st.acked_emitted = s.ack;
        e.ack_cover = true;
    }
    if s.payload_len > 0 && st.flags & FLOW_HAVE_IN_ISN != 0 {
        payload(st, s, DIR_IN, &mut e);
    }
    if s.flags & TCP_FIN != 0 {
        fin(st, DIR_IN, &mut e);
    }
    e
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    const IF: u32 = 7;

    fn seg(seq: u32, ack: u32, flags: u8, len: u32) -> Seg {
        Seg {
            seq,
            ack,
            flags,
            payload_len: len,
            ifindex: IF,
            ts: 0,
        }
    }

    fn at(mut s: Seg, ts: u64) -> Seg {
        s.ts = ts;
        s
    }

    /// (kinds and flags, count) in emission order.
    struct L(Vec<(u8, u8)>);
    fn l(e: Emits) -> L {
        let (v, n) = e.list();
        L(v[..n].to_vec())
    }

    /// A flow that completed its handshake: our ISN 1000, theirs 5000.
    fn established() -> FlowState {
        let mut st = new_flow(42, 1000, IF);
        let e = l(ingress_step(
            &mut st,
            &seg(5000, 1001, TCP_SYN | TCP_ACK, 0),
        ));
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0], (EV_SYNACK, 0));
        st
    }

    #[test]
    fn retransmitted_syn_is_counted_and_new_isn_is_a_new_connection() {
        let mut st = new_flow(1, 1000, IF);
        assert!(syn_again(&mut st, 1000));
        assert!(syn_again(&mut st, 1000));
        assert_eq!(st.syn_count, 3);
        assert!(!syn_again(&mut st, 9999));
        assert_eq!(st.syn_count, 3);
    }

    #[test]
    fn duplicate_synack_is_flagged() {
        let mut st = established();
        let e = l(ingress_step(
            &mut st,
            &seg(5000, 1001, TCP_SYN | TCP_ACK, 0),
        ));
        assert_eq!(e.0[0], (EV_SYNACK, EVF_RETRANS));
        assert_eq!(st.in_isn, 5000);
    }

    #[test]
    fn request_turn_ack_and_response_turn() {
        let mut st = established();
        // request: two segments, one turn
        let e = l(egress_step(&mut st, &seg(1001, 5001, TCP_ACK, 100)));
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0], (EV_DATA, EVF_TURN_START));
        let e = l(egress_step(&mut st, &seg(1101, 5001, TCP_ACK, 50)));
        assert_eq!(e.0[0], (EV_DATA, 0));
        assert_eq!(st.out_high, 1151);
        // an ACK of only part of the request is not "covering"
        let e = l(ingress_step(&mut st, &seg(5001, 1101, TCP_ACK, 0)));
        assert_eq!(e.0.len(), 0);
        // the ACK covering all of it, piggybacked on the response
        let e = l(ingress_step(&mut st, &seg(5001, 1151, TCP_ACK, 300)));
        assert_eq!(e.0.len(), 2);
        assert_eq!(e.0[0], (EV_ACK_COVER, 0));
        assert_eq!(e.0[1], (EV_DATA, EVF_TURN_START));
        // the same ACK again: nothing new
        let e = l(ingress_step(&mut st, &seg(5301, 1151, TCP_ACK, 0)));
        assert_eq!(e.0.len(), 0);
    }

    #[test]
    fn duplicate_and_out_of_order_segments() {
        let mut st = established();
        egress_step(&mut st, &seg(1001, 5001, TCP_ACK, 10));
        // first response segment
        let e = l(ingress_step(&mut st, &seg(5001, 1011, TCP_ACK, 100)));
        assert_eq!(e.0[1], (EV_DATA, EVF_TURN_START));
        // its duplicate
        let e = l(ingress_step(&mut st, &seg(5001, 1011, TCP_ACK, 100)));
        assert_eq!(e.0[0], (EV_DATA, EVF_RETRANS));
        assert_eq!(e.0.len(), 1);
        // a segment after a gap: new data, not a new turn
        let e = l(ingress_step(&mut st, &seg(5201, 1011, TCP_ACK, 100)));
        assert_eq!(e.0[0], (EV_DATA, 0));
        assert_eq!(st.in_high, 5301);
        // the gap filled late: below the high mark
        let e = l(ingress_step(&mut st, &seg(5101, 1011, TCP_ACK, 100)));
        assert_eq!(e.0[0], (EV_DATA, EVF_RETRANS));
        assert_eq!(st.in_high, 5301);
    }

    #[test]
    fn outgoing_retransmission_is_flagged_and_extends_high() {
        let mut st = established();
        egress_step(&mut st, &seg(1001, 5001, TCP_ACK, 100));
        let e = l(egress_step(&mut st, &seg(1001, 5001, TCP_ACK, 150)));
        assert_eq!(e.0[0], (EV_DATA, EVF_RETRANS));
        assert_eq!(st.out_high, 1151);
        assert_eq!(st.out_segs, 1);
    }

    #[test]
    fn only_early_segments_and_turn_starts_are_reported() {
        let mut st = established();
        let mut seq = 5001u32;
        let mut reported = 0;
        egress_step(&mut st, &seg(1001, 5001, TCP_ACK, 10));
        for _ in 0..100 {
            let e = l(ingress_step(&mut st, &seg(seq, 1011, TCP_ACK, 1000)));
            reported += e.0.iter().filter(|x| x.0 == EV_DATA).count();
            seq = seq.wrapping_add(1000);
        }
        assert_eq!(reported, EARLY_SEGMENTS as usize);
        // a new out turn and a new in turn are always reported
        let e = l(egress_step(&mut st, &seg(1011, seq, TCP_ACK, 10)));
        assert_eq!(e.0[0], (EV_DATA, EVF_TURN_START));
        let e = l(ingress_step(&mut st, &seg(seq, 1021, TCP_ACK, 10)));
        assert_eq!(e.0[1], (EV_DATA, EVF_TURN_START));
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut st = new_flow(1, u32::MAX - 5, IF);
        ingress_step(
            &mut st,
            &seg(u32::MAX - 1, u32::MAX - 4, TCP_SYN | TCP_ACK, 0),
        );
        let e = l(egress_step(
            &mut st,
            &seg(u32::MAX - 4, u32::MAX, TCP_ACK, 100),
        ));
        assert_eq!(e.0[0], (EV_DATA, EVF_TURN_START));
        assert_eq!(st.out_high, 95);
        let e = l(ingress_step(&mut st, &seg(u32::MAX, 95, TCP_ACK, 10)));
        assert_eq!(e.0[0], (EV_ACK_COVER, 0));
        assert_eq!(e.0[1], (EV_DATA, EVF_TURN_START));
        assert_eq!(st.in_high, 9);
    }

    #[test]
    fn fin_and_rst() {
        let mut st = established();
        let e = l(egress_step(&mut st, &seg(1001, 5001, TCP_ACK | TCP_FIN, 0)));
        assert_eq!(e.0[0], (EV_FIN, 0));
        assert_eq!(e.0.len(), 1);
        let e = l(ingress_step(
            &mut st,
            &seg(5001, 1002, TCP_ACK | TCP_FIN, 20),
        ));
        assert_eq!(e.0.len(), 3);
        assert_eq!(e.0[0], (EV_ACK_COVER, 0));
        assert_eq!(e.0[2], (EV_FIN, 0));
        let e = l(ingress_step(&mut st, &seg(5022, 0, TCP_RST, 0)));
        assert_eq!(e.0[0], (EV_RST, 0));
        assert_eq!(e.0.len(), 1);
    }

    #[test]
    fn packets_on_another_interface_are_ignored() {
        let mut st = established();
        let mut s = seg(1001, 5001, TCP_ACK, 10);
        s.ifindex = IF + 1;
        assert_eq!(egress_step(&mut st, &s), Emits::default());
        assert_eq!(ingress_step(&mut st, &s), Emits::default());
        assert_eq!(st.out_high, 1001);
    }

    #[test]
    fn server_side_handshake_turns_and_close() {
        // Peer's SYN (ISN 7000) in, our SYN-ACK (ISN 300) out.
        let mut st = new_server_flow(7000, IF);
        assert!(syn_in_again(&mut st, 7000), "same SYN again");
        assert_eq!(st.syn_count, 2);
        assert!(!syn_in_again(&mut st, 1), "another ISN is a new connection");
        let e = l(egress_step(&mut st, &seg(300, 7001, TCP_SYN | TCP_ACK, 0)));
        assert_eq!(e.0, [(EV_SYNACK, 0)]);
        let e = l(egress_step(&mut st, &seg(300, 7001, TCP_SYN | TCP_ACK, 0)));
        assert_eq!(e.0, [(EV_SYNACK, EVF_RETRANS)], "SYN-ACK sent again");
        // The handshake's last ACK covers the SYN-ACK.
        let e = l(ingress_step(&mut st, &seg(7001, 301, TCP_ACK, 0)));
        assert_eq!(e.0, [(EV_ACK_COVER, 0)]);
        // Request in, at t=10; response out at t=50.
        let e = l(ingress_step(&mut st, &at(seg(7001, 301, TCP_ACK, 100), 10)));
        assert_eq!(e.0, [(EV_DATA, EVF_TURN_START)]);
        assert_eq!(st.last_in_ns, 10);
        let e = l(egress_step(&mut st, &at(seg(301, 7101, TCP_ACK, 500), 50)));
        assert_eq!(e.0, [(EV_DATA, EVF_TURN_START)]);
        assert_eq!(st.last_out_ns, 50);
        assert_eq!(st.in_high, 7101);
        // FIN out, then FIN in: closed.
        let e = egress_step(&mut st, &seg(801, 7101, TCP_FIN | TCP_ACK, 0));
        assert!(e.fin && !e.close);
        let e = ingress_step(&mut st, &seg(7101, 802, TCP_FIN | TCP_ACK, 0));
        assert!(e.fin && e.close);
    }

    #[test]
    fn a_client_flow_ignores_synacks_it_sends_and_rst_closes() {
        let mut st = established();
        assert_eq!(
            egress_step(&mut st, &seg(1, 2, TCP_SYN | TCP_ACK, 0)),
            Emits::default()
        );
        let e = ingress_step(&mut st, &seg(5001, 1001, TCP_RST, 0));
        assert!(e.rst && e.close);
    }

    #[test]
    fn a_refused_incoming_connection_closes() {
        let mut st = new_server_flow(7000, IF);
        let e = egress_step(&mut st, &seg(0, 7001, TCP_RST | TCP_ACK, 0));
        assert!(e.rst && e.close);
    }

    #[test]
    fn nothing_is_acked_on_a_server_flow_before_our_synack() {
        let mut st = new_server_flow(7000, IF);
        assert_eq!(
            ingress_step(&mut st, &seg(7001, 1, TCP_ACK, 0)),
            Emits::default()
        );
    }
}
