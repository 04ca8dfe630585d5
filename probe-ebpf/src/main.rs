//! synack's kernel side: tc classifiers that timestamp the packets of tracked
//! TCP connections and report a few meaningful events per connection, and
//! cgroup connect hooks that record who connects.
//!
//! This file holds only the entry points, each a thin wrapper around a
//! `try_*` function. By role:
//! - `maps`: the maps shared with user space;
//! - `packet`: where bytes become header fields (`parse`, one bounds-checked
//!   `read`);
//! - `classify`: `try_egress` / `try_ingress` update the connection's
//!   `FlowState` and decide whether the packet is worth an event;
//! - `emit`: the event written to the ring buffer (a failed reserve is
//!   counted);
//! - `connect`: the cgroup connect hooks' owner record.
//!
//! The classifiers never change, drop or redirect a packet: they always return
//! TC_ACT_UNSPEC (TCX_NEXT), so other tc/tcx programs still run after them.
#![no_std]
#![no_main]
// The BPF target has no atomic types; the one atomic add (per-port flow
// counts, `maps::port_add`) uses the intrinsic they are built on.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "core::intrinsics::atomic_xadd: see above")]

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
    FlowKey, FlowState, MAX_FLOWS, MAX_OWNERS, MAX_REGISTERED, Owner, PORTS, RINGBUF_BYTES,
    SNAP_BYTES, STAT_COUNT, STAT_FLOW_INSERT_FAILED, STAT_PARSE_SKIPPED, STAT_RINGBUF_FULL,
    SnapEvent, flow,
};

mod classify;
mod connect;
mod emit;
mod maps;
mod packet;

use classify::*;
use connect::*;
use emit::*;
use maps::*;
use packet::*;

/// Lets the next tc/tcx program run and the packet continue unchanged.
const TC_ACT_UNSPEC: i32 = -1;

const SOCK_STREAM: u32 = 1;

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

// The classifiers come in two builds each: one for Ethernet-framed devices
// (14 bytes of link-layer header: Ethernet, loopback, veth, bridges) and one
// for raw-IP devices (tun, WireGuard, ipip, gre: the IP header first). User
// space attaches the one the interface's link type calls for, so the
// header's length is a constant the compiler folds into every offset
// instead of a map lookup per packet.

#[classifier]
pub fn synack_egress(ctx: TcContext) -> i32 {
    let _ = try_egress::<ETH_HLEN>(&ctx);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn synack_ingress(ctx: TcContext) -> i32 {
    let _ = try_ingress::<ETH_HLEN>(&ctx);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn synack_egress_raw(ctx: TcContext) -> i32 {
    let _ = try_egress::<0>(&ctx);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn synack_ingress_raw(ctx: TcContext) -> i32 {
    let _ = try_ingress::<0>(&ctx);
    TC_ACT_UNSPEC
}

/// A classifier that does nothing: the benchmarks' baseline, so the cost
/// of running any tc program at all (`BPF_PROG_TEST_RUN`'s own loop) can
/// be taken off synack's.
#[classifier]
pub fn synack_noop(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
