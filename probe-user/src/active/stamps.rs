//! Unprivileged mode: where the kernel's own socket timestamps become a
//! flow. Without eBPF, synack asks the kernel about its own sockets:
//!
//! - SO_TIMESTAMPING: the software receive time of the data each read
//!   returns (of its newest segment: the kernel merges queued segments and
//!   keeps the latest stamp; synack reads as soon as data arrives, so a
//!   response's first segment is usually read alone), the time each write
//!   left the stack (`SCM_TSTAMP_SND`) and the time its last byte was
//!   acknowledged (`SCM_TSTAMP_ACK`), keyed by byte offset
//!   (`SOF_TIMESTAMPING_OPT_ID`);
//! - TCP_INFO right after connect(): the handshake RTT (the kernel's first
//!   RTT sample is SYN to SYN-ACK), SYN retransmissions and the negotiated
//!   options; at the end, retransmissions during the requests.
//!
//! The stamps are turned into the same `Flow` the eBPF events make (segments
//! by stream offset, ACKs), so the timeline and the verdict are shared. What
//! this mode cannot see (SYN and SYN-ACK times, TTL, the MSS option,
//! incoming retransmissions) stays null.

use crate::model::flows::{Flow, Seg};
use probe_common::FlowKey;
use std::{io, os::fd::RawFd};

// Not in every libc release for every architecture: the values of
// include/uapi/asm-generic/socket.h (x86, arm, arm64, riscv, powerpc, s390,
// mips, loongarch) and linux/errqueue.h. SPARC numbers its options apart.
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
compile_error!("SO_TIMESTAMPING has another value on SPARC: add it here");
const SO_TIMESTAMPING: libc::c_int = 37;
const SCM_TIMESTAMPING: libc::c_int = SO_TIMESTAMPING;
const SCM_TSTAMP_SND: u32 = 0;
const SCM_TSTAMP_ACK: u32 = 2;
const SO_EE_ORIGIN_TIMESTAMPING: u8 = 4;

/// What the stamps say about one connection.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stamps {
    /// Each write: raw stream offsets [start, end).
    pub writes: Vec<(u64, u64)>,
    /// Each read that returned data: [start, end) and the receive time of
    /// its data (CLOCK_MONOTONIC ns), when the kernel gave one.
    pub reads: Vec<(u64, u64, Option<u64>)>,
    /// Transmit stamps: (byte key, `SCM_TSTAMP_*`, CLOCK_MONOTONIC ns).
    pub tx: Vec<(u32, u32, u64)>,
    /// TCP_INFO right after connect().
    pub at_connect: Option<TcpInfo>,
    /// TCP_INFO at the last read.
    pub last: Option<TcpInfo>,
    /// CLOCK_MONOTONIC minus CLOCK_REALTIME (the stamps are realtime).
    pub mono_minus_real: i64,
}

/// The TCP_INFO fields synack uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TcpInfo {
    /// Smoothed RTT, microseconds (right after connect: the SYN's sample).
    pub rtt_us: u32,
    pub total_retrans: u32,
    /// `TCPI_OPT_*` bits.
    pub options: u8,
    /// The peer's window scale (from its SYN-ACK).
    pub snd_wscale: u8,
}

pub(crate) const TCPI_OPT_TIMESTAMPS: u8 = 1;
pub(crate) const TCPI_OPT_SACK: u8 = 2;
pub(crate) const TCPI_OPT_WSCALE: u8 = 4;

/// Asks for receive and transmit timestamps on a TCP socket.
pub(crate) fn enable(fd: RawFd) -> io::Result<()> {
    let flags: libc::c_uint = libc::SOF_TIMESTAMPING_RX_SOFTWARE
        | libc::SOF_TIMESTAMPING_TX_SOFTWARE
        | libc::SOF_TIMESTAMPING_TX_ACK
        | libc::SOF_TIMESTAMPING_SOFTWARE
        | libc::SOF_TIMESTAMPING_OPT_ID
        | libc::SOF_TIMESTAMPING_OPT_TSONLY;
    // SAFETY: fd is a socket the caller owns; the value is a c_uint.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_TIMESTAMPING,
            (&flags as *const libc::c_uint).cast(),
            size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// TCP_INFO of a socket.
pub(crate) fn tcp_info(fd: RawFd) -> Option<TcpInfo> {
    // SAFETY: zeroed tcp_info is a valid out-parameter.
    let mut ti: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: fd is a socket; the buffer and its length match.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut ti as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(TcpInfo {
        rtt_us: ti.tcpi_rtt,
        total_retrans: ti.tcpi_total_retrans,
        options: ti.tcpi_options,
        // Two 4-bit bitfields, tcpi_snd_wscale first: the low nibble on
        // little-endian targets, the high one on big-endian.
        snd_wscale: if cfg!(target_endian = "little") {
            ti.tcpi_snd_rcv_wscale & 0x0f
        } else {
            ti.tcpi_snd_rcv_wscale >> 4
        },
    })
}

/// Parses the control messages of one recvmsg: (SCM_TIMESTAMPING software
/// time as realtime ns, and for the error queue the stamp's key and kind).
fn parse_cmsgs(msg: &libc::msghdr) -> (Option<u64>, Option<(u32, u32)>) {
    let mut ts = None;
    let mut err = None;
    // SAFETY: msg's control buffer was filled by recvmsg; the CMSG macros
    // walk it within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            let h = &*c;
            // Only as many bytes as the message holds (it may be truncated).
            let holds = |n: usize| h.cmsg_len as usize >= libc::CMSG_LEN(n as u32) as usize;
            if h.cmsg_level == libc::SOL_SOCKET
                && h.cmsg_type == SCM_TIMESTAMPING
                && holds(size_of::<libc::timespec>())
            {
                // struct scm_timestamping { struct timespec ts[3]; }: [0] software.
                let t = std::ptr::read_unaligned(data.cast::<libc::timespec>());
                if t.tv_sec != 0 || t.tv_nsec != 0 {
                    ts = Some(t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64);
                }
            } else if ((h.cmsg_level == libc::SOL_IP && h.cmsg_type == libc::IP_RECVERR)
                || (h.cmsg_level == libc::SOL_IPV6 && h.cmsg_type == libc::IPV6_RECVERR))
                && holds(size_of::<libc::sock_extended_err>())
            {
                let e = std::ptr::read_unaligned(data.cast::<libc::sock_extended_err>());
                if e.ee_errno == libc::ENOMSG as u32 && e.ee_origin == SO_EE_ORIGIN_TIMESTAMPING {
                    err = Some((e.ee_data, e.ee_info));
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    (ts, err)
}

/// recvmsg into `buf`: bytes read and the receive time (realtime ns) of the
/// data, when the kernel stamped it. WouldBlock when nothing is queued.
pub(crate) fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut ctrl = [0u64; 64];
    // SAFETY: zeroed msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&ctrl) as _;
    // SAFETY: valid fd and msghdr.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((n as usize, parse_cmsgs(&msg).0))
}

/// Reads every transmit stamp waiting on the socket's error queue.
pub(crate) fn drain_errqueue(fd: RawFd, s: &mut Stamps) {
    // Bounded: a connection has a few stamps per write.
    for _ in 0..256 {
        let mut ctrl = [0u64; 64];
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        // SAFETY: as in `recv`.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctrl.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&ctrl) as _;
        // SAFETY: valid fd and msghdr.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if n < 0 {
            return;
        }
        if let (Some(real), Some((key, kind))) = parse_cmsgs(&msg) {
            s.tx.push((key, kind, real_to_mono(real, s.mono_minus_real)));
        }
    }
}

pub(crate) fn real_to_mono(real: u64, mono_minus_real: i64) -> u64 {
    (real as i128 + mono_minus_real as i128).max(0) as u64
}

impl Stamps {
    pub(crate) fn new() -> Self {
        Stamps {
            mono_minus_real: crate::model::events::mono_minus_real(),
            ..Default::default()
        }
    }

    /// The write that holds byte key `k` (the kernel's key is the offset of
    /// the last byte of the write, counted from the first byte sent).
    fn write_of(&self, k: u32) -> Option<(u64, u64)> {
        self.writes
            .iter()
            .copied()
            .find(|&(a, b)| (k as u64) >= a && (k as u64) < b)
    }

    /// The flow these stamps describe. Its sequence numbers are stream
    /// offsets (both ISNs are taken as 2^32 - 1, so offset = sequence): it
    /// has no handshake packets, only what the stamps show.
    pub(crate) fn flow(&self, key: FlowKey) -> Flow {
        let mut f = Flow::new(key, 0);
        f.set_offset_isns();
        f.rtt_hint_ns = self.handshake_rtt_ms().map(|ms| (ms * 1e6).max(0.0) as u64);
        let seg = |ts: u64, a: u64, b: u64| Seg {
            ts_ns: ts,
            seq: a as u32,
            len: (b - a) as u32,
            retrans: false,
            turn_start: false,
        };
        let mut events: Vec<(u64, bool, Seg)> = Vec::new();
        // The kernel stamps every transmission of a write: a second
        // SCM_TSTAMP_SND for the same bytes is a retransmission.
        let mut sent: Vec<(u64, u64, u64)> = Vec::new();
        let mut tx = self.tx.clone();
        tx.sort_by_key(|x| x.2);
        for &(k, kind, ts) in &tx {
            let Some((a, b)) = self.write_of(k) else {
                continue;
            };
            match kind {
                SCM_TSTAMP_SND => {
                    let again = sent.iter().any(|&(x, y, t)| x == a && y == b && t < ts);
                    sent.push((a, b, ts));
                    events.push((
                        ts,
                        true,
                        Seg {
                            retrans: again,
                            ..seg(ts, a, b)
                        },
                    ));
                }
                SCM_TSTAMP_ACK => f.acks.push((ts, b as u32)),
                _ => {}
            }
        }
        for (i, &(a, b, ts)) in self.reads.iter().enumerate() {
            if let Some(ts) = ts {
                // The kernel stamps a read with the newest segment it drew
                // from: when a later read has the same stamp, both came from
                // data queued together (a client that read late), and this
                // one's own arrival is unknown, only bounded: it is kept as
                // such (flagged like a retransmission, never a clean sample).
                let merged = self.reads[i + 1..].iter().any(|r| r.2 == Some(ts));
                events.push((
                    ts,
                    false,
                    Seg {
                        retrans: merged,
                        ..seg(ts, a, b)
                    },
                ));
            }
        }
        // Turns: a segment is the start of one when the other side spoke since.
        events.sort_by_key(|e| (e.0, e.2.seq));
        let mut last: Option<bool> = None;
        for (_, out, mut seg) in events {
            seg.turn_start = last != Some(out);
            last = Some(out);
            if out {
                f.out.push(seg);
            } else {
                f.inb.push(seg);
            }
        }
        f.acks.sort_unstable();
        f
    }

    /// SYNs sent again before the handshake completed.
    pub(crate) fn syn_retransmits(&self) -> Option<u32> {
        self.at_connect.map(|i| i.total_retrans)
    }

    /// The handshake RTT in ms: TCP_INFO's first RTT sample, which is the
    /// SYN's, unless the SYN was sent again (then the sample is not the
    /// answered SYN's for certain, and there is none).
    pub(crate) fn handshake_rtt_ms(&self) -> Option<f64> {
        let i = self.at_connect?;
        (i.total_retrans == 0 && i.rtt_us > 0).then(|| i.rtt_us as f64 / 1000.0)
    }

    /// Payload retransmissions out since connect().
    pub(crate) fn retransmits_out(&self) -> Option<u32> {
        let (a, b) = (self.at_connect?, self.last?);
        Some(b.total_retrans.saturating_sub(a.total_retrans))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_become_a_flow() {
        // ClientHello out at 1000, Finished at 5000, request at 5050; the
        // request ACKed at 5300; reads: ServerHello flight, ticket, response.
        let s = Stamps {
            writes: vec![(0, 517), (517, 597), (597, 697)],
            tx: vec![
                (516, SCM_TSTAMP_SND, 1000),
                (596, SCM_TSTAMP_SND, 5000),
                (696, SCM_TSTAMP_SND, 5050),
                (696, SCM_TSTAMP_ACK, 5300),
            ],
            reads: vec![
                (0, 1200, Some(3000)),
                (1200, 1400, Some(5200)),
                (1400, 1700, Some(25_000)),
            ],
            ..Default::default()
        };
        let f = s.flow(FlowKey::default());
        assert_eq!(f.out_covering(0).unwrap().ts_ns, 1000);
        assert_eq!(f.out_covering(600).unwrap().ts_ns, 5050);
        assert_eq!(f.in_covering(1400).unwrap().ts_ns, 25_000);
        assert_eq!(f.ack_covering(697, 5050), Some(5300));
        let turns: Vec<bool> = f.out.iter().map(|x| x.turn_start).collect();
        assert_eq!(turns, [true, true, false]);
        let turns: Vec<bool> = f.inb.iter().map(|x| x.turn_start).collect();
        assert_eq!(turns, [true, true, false], "ticket and response: one turn");
    }

    #[test]
    fn a_second_send_is_a_retransmission_and_late_reads_are_only_bounds() {
        // the request (597..697) sent at 5050 and again at 5400; a starved
        // client read the ticket and the response late, both stamped with
        // the response's arrival
        let s = Stamps {
            writes: vec![(0, 517), (517, 597), (597, 697)],
            tx: vec![
                (516, SCM_TSTAMP_SND, 1000),
                (596, SCM_TSTAMP_SND, 5000),
                (696, SCM_TSTAMP_SND, 5400),
                (696, SCM_TSTAMP_SND, 5050),
            ],
            reads: vec![
                (0, 1200, Some(3000)),
                (1200, 1400, Some(25_000)),
                (1400, 1700, Some(25_000)),
            ],
            ..Default::default()
        };
        let f = s.flow(FlowKey::default());
        let resent: Vec<(u64, bool)> = f.out.iter().map(|x| (x.ts_ns, x.retrans)).collect();
        assert_eq!(
            resent,
            [(1000, false), (5000, false), (5050, false), (5400, true)]
        );
        let reads: Vec<(u64, bool)> = f.inb.iter().map(|x| (x.ts_ns, x.retrans)).collect();
        assert_eq!(reads, [(3000, false), (25_000, true), (25_000, false)]);
    }

    #[test]
    fn handshake_rtt_only_when_the_syn_went_once() {
        let mut s = Stamps::default();
        assert_eq!(s.handshake_rtt_ms(), None);
        s.at_connect = Some(TcpInfo {
            rtt_us: 4210,
            ..Default::default()
        });
        assert_eq!(s.handshake_rtt_ms(), Some(4.21));
        s.at_connect = Some(TcpInfo {
            rtt_us: 4210,
            total_retrans: 1,
            ..Default::default()
        });
        assert_eq!(s.handshake_rtt_ms(), None);
        assert_eq!(s.syn_retransmits(), Some(1));
    }
}
