//! The maps the programs share with user space, and the two small
//! accessors every program uses (the config bits, a loss counter).

use super::*;

/// Connections being followed, keyed from this host's point of view.
#[map]
pub(crate) static FLOWS: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// Socket cookies user space registered before connect(): their SYN starts a flow.
#[map]
pub(crate) static REGISTERED: HashMap<u64, u8> = HashMap::with_max_entries(MAX_REGISTERED, 0);

/// Per local port, flows the kernel added minus flows it removed itself
/// (atomic adds, wrapping): with `PORT_FREED`, the cheap test that lets an
/// untracked packet skip the flow table's hash lookup. Added to before a
/// flow is inserted and taken from only after a successful removal, so it
/// never says "none" while a flow on the port exists; a flow the LRU evicts
/// leaves it high, which costs a lookup, never a missed packet.
#[map]
pub(crate) static PORT_FLOWS: Array<u32> = Array::with_max_entries(PORTS, 0);

/// Per local port, flows user space removed (it alone writes this, so a
/// plain read-modify-write there races with nothing).
#[map]
pub(crate) static PORT_FREED: Array<u32> = Array::with_max_entries(PORTS, 0);

/// This namespace's own addresses (IPv4 in the first 4 bytes), kept by user
/// space in passive mode: an incoming SYN starts a server-side flow only when
/// it is addressed to one of them, not when this host merely forwards it
/// (a container bridge, a router).
#[map]
pub(crate) static LOCAL_ADDRS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(1024, 0);

/// One header offset per CPU: `packet::launder`.
#[map]
pub(crate) static OFFSET: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// One snapshot record being built, per CPU: `emit::emit_snap`.
#[map]
pub(crate) static SNAP: PerCpuArray<SnapEvent> = PerCpuArray::with_max_entries(1, 0);

/// `CONFIG[0]`: `CFG_*` bits.
#[map]
pub(crate) static CONFIG: Array<u32> = Array::with_max_entries(1, 0);

/// Loss and skip counters, indexed by `STAT_*`.
#[map]
pub(crate) static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(RINGBUF_BYTES, 0);

/// Socket cookie -> the process that called connect() on it (passive mode's
/// pid/comm attribution), written by the cgroup connect hooks.
#[map]
pub(crate) static OWNERS: LruHashMap<u64, Owner> = LruHashMap::with_max_entries(MAX_OWNERS, 0);

/// Whether a flow on this local port may exist. Array lookups with a
/// constant-size map: the verifier inlines them to an address computation.
#[inline(always)]
pub(crate) fn maybe_ours(port: u16) -> bool {
    let added = PORT_FLOWS.get(port as u32).copied().unwrap_or(1);
    let freed = PORT_FREED.get(port as u32).copied().unwrap_or(0);
    added.wrapping_sub(freed) != 0
}

/// Adds `delta` (1, or u32::MAX for -1) to the port's kernel count,
/// atomically: another CPU may count a flow on the same port at once.
#[inline(always)]
pub(crate) fn port_add(port: u16, delta: u32) {
    if let Some(p) = PORT_FLOWS.get_ptr_mut(port as u32) {
        // SAFETY: `p` points to the map's value for this port, valid for the
        // program run; the add is atomic (BPF_ATOMIC, no fetch), so
        // concurrent adds from other CPUs are not lost.
        unsafe {
            core::intrinsics::atomic_xadd::<u32, u32, { core::intrinsics::AtomicOrdering::Relaxed }>(
                p, delta,
            )
        };
    }
}

#[inline(always)]
pub(crate) fn config() -> u32 {
    CONFIG.get(0).copied().unwrap_or(0)
}

pub(crate) fn count(stat: u32) {
    if let Some(p) = STATS.get_ptr_mut(stat) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *p += 1 };
    }
}
