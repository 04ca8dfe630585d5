//! Types shared by the eBPF programs (kernel side) and `synack` (user side).
//!
//! Every type is `#[repr(C)]` with explicit padding fields, so the byte layout
//! is the same on both sides and no uninitialised padding ever reaches the ring
//! buffer or a map key. Sizes are asserted at compile time.
//!
//! Conventions for every field below:
//! - times are nanoseconds of CLOCK_MONOTONIC (`bpf_ktime_get_ns()`), the same
//!   clock as `clock_gettime(CLOCK_MONOTONIC)` in user space;
//! - IP addresses are in network byte order (as on the wire); IPv4 addresses
//!   use the first 4 bytes of the 16-byte field, the rest is zero;
//! - ports, sequence numbers, windows and lengths are in host byte order.
#![cfg_attr(not(test), no_std)]

pub mod flow;

/// Identifies one TCP connection from the point of view of this host.
///
/// "local" is the address of this host's socket, "remote" the peer's, whatever
/// the direction of the packet, so both directions of one connection map to
/// the same key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// This host's address, network byte order.
    pub local_addr: [u8; 16],
    /// The peer's address, network byte order.
    pub remote_addr: [u8; 16],
    /// This host's TCP port, host byte order.
    pub local_port: u16,
    /// The peer's TCP port, host byte order.
    pub remote_port: u16,
    /// 4 or 6.
    pub ip_version: u8,
    /// Always zero (explicit padding: map keys are compared bytewise).
    pub _pad: [u8; 3],
}

/// Per-connection state the classifiers keep in the `FLOWS` LRU map.
///
/// Sequence numbers are raw TCP sequence numbers (host byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FlowState {
    /// Socket cookie of the socket that sent the first SYN (0 if unknown).
    pub cookie: u64,
    /// Sequence number of our SYN.
    pub out_isn: u32,
    /// Sequence number of the peer's SYN-ACK (valid when `FLOW_HAVE_IN_ISN`).
    pub in_isn: u32,
    /// One past the highest sequence number sent so far.
    pub out_high: u32,
    /// One past the highest sequence number received so far.
    pub in_high: u32,
    /// Highest ACK number for which an `AckCover` event was emitted.
    pub acked_emitted: u32,
    /// Interface the first outgoing packet was seen on (stacked devices such
    /// as vlan or bond would otherwise show each packet twice).
    pub out_ifindex: u32,
    /// Interface the first incoming packet was seen on (0 until then).
    pub in_ifindex: u32,
    /// New-data payload segments seen out (saturating).
    pub out_segs: u16,
    /// New-data payload segments seen in (saturating).
    pub in_segs: u16,
    /// `FLOW_*` bits.
    pub flags: u8,
    /// Direction of the last payload segment: 0 none yet, `DIR_OUT + 1`, `DIR_IN + 1`.
    pub last_payload_dir: u8,
    /// SYNs seen (1 + retransmissions), saturating: ours on a client-side
    /// flow, the peer's on a server-side one.
    pub syn_count: u8,
    /// Always zero.
    pub _pad: [u8; 5],
    /// CLOCK_MONOTONIC ns of the last new-data segment out (0 = none yet).
    pub last_out_ns: u64,
    /// CLOCK_MONOTONIC ns of the last new-data segment in (0 = none yet).
    pub last_in_ns: u64,
}

/// `FlowState::flags`: the peer's ISN is known.
pub const FLOW_HAVE_IN_ISN: u8 = 1;
/// `FlowState::flags`: our ISN is known (always on a client-side flow; on a
/// server-side flow once our SYN-ACK left).
pub const FLOW_HAVE_OUT_ISN: u8 = 2;
/// `FlowState::flags`: the peer opened the connection (we answered its SYN).
pub const FLOW_SERVER: u8 = 4;
/// `FlowState::flags`: a FIN left.
pub const FLOW_FIN_OUT: u8 = 8;
/// `FlowState::flags`: a FIN arrived.
pub const FLOW_FIN_IN: u8 = 16;

/// One thing that happened on the wire of a tracked connection.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds when the classifier saw the packet.
    pub ts_ns: u64,
    /// Socket cookie of the tracked socket (`SO_COOKIE`), 0 if unknown.
    pub cookie: u64,
    /// The connection, from this host's point of view.
    pub key: FlowKey,
    /// Raw TCP sequence number of the packet, host byte order.
    pub seq: u32,
    /// Raw TCP acknowledgement number of the packet, host byte order.
    pub ack: u32,
    /// TCP payload bytes in this packet (a GSO/GRO packet counts whole).
    pub payload_len: u32,
    /// Interface index the packet was seen on.
    pub ifindex: u32,
    /// Raw TCP window field (not scaled), host byte order.
    pub window: u16,
    /// One of the `EV_*` constants.
    pub kind: u8,
    /// `DIR_OUT` or `DIR_IN`.
    pub dir: u8,
    /// TCP flag byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, ...).
    pub tcp_flags: u8,
    /// IPv4 TTL or IPv6 hop limit as received/sent.
    pub ttl: u8,
    /// `EVF_*` bits.
    pub ev_flags: u8,
    /// Number of valid bytes in `options` (0..=40, a multiple of 4).
    pub opt_len: u8,
    /// Raw TCP option bytes; filled for SYN and SYN-ACK only.
    pub options: [u8; 40],
    /// `__sk_buff.tstamp` as the classifier found it: on ingress, when the
    /// kernel's receive timestamping is on and `skb_tstamp_type` is 0, the
    /// CLOCK_REALTIME ns at which the stack received the packet (the
    /// timestamp tcpdump reports), earlier than `ts_ns`. 0 when unset.
    pub skb_tstamp: u64,
    /// cgroup v2 id of the sending socket (`bpf_skb_cgroup_id`, the inode
    /// number of its cgroup directory) on outgoing packets; 0 on incoming ones
    /// or when unknown.
    pub cgroup_id: u64,
    /// On turn-start data, FIN and RST events: CLOCK_MONOTONIC ns of the last
    /// new-data segment in the other direction (the end of the previous
    /// turn); 0 when the other side has sent no data.
    pub peer_last_ns: u64,
    /// One past the highest raw sequence number seen so far in the other
    /// direction (host byte order): where the other side's data ended.
    pub peer_high: u32,
    /// Bytes of payload copied after this event in its ring-buffer record
    /// (a `SnapEvent`); 0 for a plain `Event` record.
    pub snap_len: u16,
    /// `__sk_buff.tstamp_type`: 0 realtime receive stamp (or unset), 1
    /// monotonic delivery time (a forwarded packet's departure time).
    pub skb_tstamp_type: u8,
    /// Always zero.
    pub _pad: u8,
}

/// Bytes of payload a `SnapEvent` carries: enough for an HTTP/1.x request
/// line and the headers up to Host, a status line, or a TLS ClientHello up
/// to its server_name extension in the usual extension orders.
pub const SNAP_BYTES: usize = 1024;

/// A turn-start `EV_DATA` event followed by the first bytes of its payload
/// (only with `CFG_SNAPSHOT`). The ring-buffer record is the event and the
/// `ev.snap_len` bytes of `snap` that are valid, no more: 152 to 1176 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SnapEvent {
    pub ev: Event,
    /// The payload's first `ev.snap_len` bytes, as on the wire.
    pub snap: [u8; SNAP_BYTES],
}

/// Who opened a socket: written by the cgroup connect hooks, keyed by the
/// socket's cookie, read by user space for pid/comm attribution.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    /// Process id (thread-group id) that called connect().
    pub pid: u32,
    /// Thread id that called connect().
    pub tid: u32,
    /// cgroup v2 id of that process.
    pub cgroup_id: u64,
    /// The thread's name (`comm`), NUL-padded.
    pub comm: [u8; 16],
}

/// Our SYN left (each retransmission is another `EV_SYN`).
pub const EV_SYN: u8 = 1;
/// The peer's SYN-ACK arrived.
pub const EV_SYNACK: u8 = 2;
/// A payload segment (first ones of the connection, first of each turn, and
/// every segment at or below the highest sequence already seen).
pub const EV_DATA: u8 = 3;
/// An incoming ACK that covers everything sent so far, for the first time.
pub const EV_ACK_COVER: u8 = 4;
/// A FIN, either direction.
pub const EV_FIN: u8 = 5;
/// A RST, either direction.
pub const EV_RST: u8 = 6;

/// Packet left this host.
pub const DIR_OUT: u8 = 0;
/// Packet arrived at this host.
pub const DIR_IN: u8 = 1;

/// `Event::ev_flags`: first payload segment after the other side spoke (a turn).
pub const EVF_TURN_START: u8 = 1;
/// `Event::ev_flags`: the segment starts below the highest sequence number
/// already seen in its direction: a retransmission (or reordering).
pub const EVF_RETRANS: u8 = 2;

/// Every connection's first this-many new-data segments in each direction are
/// reported, so user space can find the exact segment carrying a given byte
/// offset (a TLS record, the start of a response) early in the connection.
pub const EARLY_SEGMENTS: u16 = 32;

/// Indices into the per-CPU `STATS` array.
pub const STAT_RINGBUF_FULL: u32 = 0;
/// A new flow could not be inserted into `FLOWS`.
pub const STAT_FLOW_INSERT_FAILED: u32 = 1;
/// IP fragments (IPv4 or IPv6) whose TCP header could not be read.
pub const STAT_PARSE_SKIPPED: u32 = 2;
/// Number of entries in `STATS`.
pub const STAT_COUNT: u32 = 4;

/// `CONFIG[0]` bits: create a flow for every outgoing SYN (passive mode and
/// BPF_PROG_TEST_RUN tests), not only for registered sockets.
pub const CFG_TRACK_ALL_OUT: u32 = 1;
/// `CONFIG[0]` bits: create a flow for every incoming SYN (passive mode:
/// connections this host accepts).
pub const CFG_TRACK_ALL_IN: u32 = 2;
/// `CONFIG[0]` bits: with `CFG_TRACK_ALL_*`, follow only this host's own
/// connections: an outgoing SYN needs a local socket, an incoming one must
/// be addressed to one of the addresses in `LOCAL_ADDRS` (forwarded traffic,
/// a container bridge's, is not followed).
pub const CFG_LOCAL_ONLY: u32 = 8;
/// `CONFIG[0]` bits: turn-start data events carry the payload's first bytes
/// (`SnapEvent`), for passive mode's HTTP and TLS parsing.
pub const CFG_SNAPSHOT: u32 = 4;

/// Capacity of the `FLOWS` LRU map.
pub const MAX_FLOWS: u32 = 65536;
/// Entries of the per-port maps `PORT_FLOWS` and `PORT_FREED`: one per TCP port.
pub const PORTS: u32 = 65536;
/// Capacity of the `OWNERS` map (sockets whose connect() was seen).
pub const MAX_OWNERS: u32 = 16384;
/// Capacity of the `REGISTERED` cookie map.
pub const MAX_REGISTERED: u32 = 4096;
/// Ring buffer size in bytes (a power of two, a multiple of the page size).
pub const RINGBUF_BYTES: u32 = 1 << 20;

const _: () = assert!(size_of::<FlowKey>() == 40);
const _: () = assert!(size_of::<FlowState>() == 64);
const _: () = assert!(size_of::<Event>() == 152);
const _: () = assert!(size_of::<SnapEvent>() == 152 + SNAP_BYTES);
const _: () = assert!(size_of::<Owner>() == 32);
const _: () = assert!(align_of::<Event>() == 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: FlowKey is repr(C), Copy, has no implicit padding (asserted
    // size) and every bit pattern is a valid value.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above for FlowState.
    unsafe impl aya::Pod for super::FlowState {}
    // SAFETY: as above for Event.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above for Owner.
    unsafe impl aya::Pod for super::Owner {}
}
