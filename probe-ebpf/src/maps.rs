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

/// Bytes of link-layer header per interface index (14 for Ethernet and
/// loopback, 0 for raw-IP devices such as WireGuard or tun). Missing = 14.
#[map]
pub(crate) static L2_LEN: HashMap<u32, u32> = HashMap::with_max_entries(1024, 0);

/// This namespace's own addresses (IPv4 in the first 4 bytes), kept by user
/// space in passive mode: an incoming SYN starts a server-side flow only when
/// it is addressed to one of them, not when this host merely forwards it
/// (a container bridge, a router).
#[map]
pub(crate) static LOCAL_ADDRS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(1024, 0);

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
