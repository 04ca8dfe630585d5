//! The network interfaces of the current network namespace.

use std::{ffi::CStr, io};

/// One interface as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Interface {
    pub name: String,
    pub index: u32,
    pub up: bool,
    /// ARPHRD_* link type (1 Ethernet, 772 loopback, 65534 none, ...).
    pub link_type: u16,
}

impl Interface {
    /// Bytes of link-layer header in front of the IP header that a tc
    /// classifier sees on this interface.
    pub(crate) fn l2_len(&self) -> u32 {
        l2_len_for(self.link_type)
    }
}

/// Link-layer header length for an ARPHRD_* type: Ethernet-framed types have
/// 14 bytes, raw-IP devices (tun, WireGuard, sit, ip6tnl, ipip, gre) none.
pub(crate) fn l2_len_for(link_type: u16) -> u32 {
    match link_type {
        1 | 772 | 774 | 801 => 14,
        _ => 0,
    }
}

/// The name of the interface with this index, if there is one.
pub(crate) fn name_of(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has the IF_NAMESIZE bytes if_indextoname writes at most.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    Some(
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// All interfaces in this network namespace.
pub(crate) fn list() -> io::Result<Vec<Interface>> {
    let sock = Socket::dgram()?;
    let mut out = Vec::new();
    // SAFETY: if_nameindex returns a heap array terminated by a zero entry,
    // freed below with if_freenameindex; we copy names out before freeing.
    unsafe {
        let head = libc::if_nameindex();
        if head.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut p = head;
        while (*p).if_index != 0 {
            let name = CStr::from_ptr((*p).if_name).to_string_lossy().into_owned();
            out.push((name, (*p).if_index));
            p = p.add(1);
        }
        libc::if_freenameindex(head);
    }
    out.into_iter()
        .map(|(name, index)| {
            let (flags, link_type) = sock.flags_and_type(&name)?;
            Ok(Interface {
                name,
                index,
                up: flags & libc::IFF_UP as u16 != 0,
                link_type,
            })
        })
        .collect()
}

/// An address this host has, with its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LocalNet {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

/// Every address with its netmask in this network namespace.
pub(crate) fn local_nets() -> io::Result<Vec<LocalNet>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a linked list that we walk and free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut p = head;
    while !p.is_null() {
        // SAFETY: p is a node of the list getifaddrs returned.
        let ifa = unsafe { &*p };
        // SAFETY: addresses point to sockaddr structures of the family they name.
        let addrs = unsafe { (sockaddr_ip(ifa.ifa_addr), sockaddr_ip(ifa.ifa_netmask)) };
        if let (Some(a), Some(m)) = addrs {
            let prefix = match m {
                std::net::IpAddr::V4(m) => u32::from(m).count_ones() as u8,
                std::net::IpAddr::V6(m) => u128::from(m).count_ones() as u8,
            };
            out.push(LocalNet { addr: a, prefix });
        }
        p = ifa.ifa_next;
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// This namespace's own addresses, loopback included (127.0.0.1 and ::1
/// always: connections to them never leave the host).
pub(crate) fn local_addrs() -> io::Result<Vec<std::net::IpAddr>> {
    let mut v: Vec<std::net::IpAddr> = local_nets()?.into_iter().map(|n| n.addr).collect();
    for lo in [
        std::net::IpAddr::from([127, 0, 0, 1]),
        std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ] {
        if !v.contains(&lo) {
            v.push(lo);
        }
    }
    Ok(v)
}

/// # Safety
/// `sa` must be null or point to a valid sockaddr of the family it names.
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<std::net::IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: per the caller's contract.
    unsafe {
        match (*sa).sa_family as i32 {
            libc::AF_INET => {
                let s = &*(sa as *const libc::sockaddr_in);
                Some(std::net::Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr)).into())
            }
            libc::AF_INET6 => {
                let s = &*(sa as *const libc::sockaddr_in6);
                Some(std::net::Ipv6Addr::from(s.sin6_addr.s6_addr).into())
            }
            _ => None,
        }
    }
}

/// True when `ip` is on one of this host's own subnets (reached without a
/// gateway), or is one of its addresses.
pub(crate) fn on_link(ip: std::net::IpAddr, nets: &[LocalNet]) -> bool {
    let ip = match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(Into::into).unwrap_or(ip),
        v4 => v4,
    };
    nets.iter().any(|n| match (n.addr, ip) {
        (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b)) => {
            let m = if n.prefix == 0 {
                0
            } else {
                u32::MAX << (32 - n.prefix.min(32))
            };
            u32::from(a) & m == u32::from(b) & m
        }
        (std::net::IpAddr::V6(a), std::net::IpAddr::V6(b)) => {
            let m = if n.prefix == 0 {
                0
            } else {
                u128::MAX << (128 - n.prefix.min(128))
            };
            u128::from(a) & m == u128::from(b) & m
        }
        _ => false,
    })
}

/// Whether the destination is reached without a gateway, as the routing
/// table says (`ip route get`): a local subnet, a point-to-point link (a
/// tun, a tunnel, a `scope link` route) or this host itself. Falls back to
/// subnet membership when the kernel cannot be asked.
pub(crate) fn reached_on_link(ip: std::net::IpAddr, nets: &[LocalNet]) -> bool {
    match route_via_gateway(ip) {
        Some(via) => !via,
        None => on_link(ip, nets),
    }
}

const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const NLMSG_ERROR: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_GATEWAY: u16 = 5;
const RTA_MULTIPATH: u16 = 9;
const RTA_VIA: u16 = 18;
const RTN_UNICAST: u8 = 1;
const RTN_LOCAL: u8 = 2;

/// The RTM_GETROUTE request for one destination (nlmsghdr, rtmsg, RTA_DST).
fn route_request(ip: std::net::IpAddr, seq: u32) -> Vec<u8> {
    let (family, addr): (u8, Vec<u8>) = match ip {
        std::net::IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        std::net::IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    let len = 16 + 12 + 4 + addr.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&RTM_GETROUTE.to_ne_bytes());
    m.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
    m.extend_from_slice(&[family, (addr.len() * 8) as u8, 0, 0, 0, 0, 0, 0]);
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&((4 + addr.len()) as u16).to_ne_bytes());
    m.extend_from_slice(&RTA_DST.to_ne_bytes());
    m.extend_from_slice(&addr);
    m
}

/// Netlink attributes in `b`: (type, payload) pairs, stopping at the first
/// malformed one.
pub(crate) fn nl_attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut v = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        if len < 4 || len > b.len() {
            break;
        }
        v.push((u16::from_ne_bytes([b[2], b[3]]) & 0x3fff, &b[4..len]));
        // Attributes are padded to 4 bytes.
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    v
}

/// Sends one request to the kernel's NETLINK_ROUTE and returns its first
/// answer (needs no privilege to ask; a reply that does not come within
/// `timeout` will not come).
pub(crate) fn netlink_request(req: &[u8], timeout: std::time::Duration) -> io::Result<Vec<u8>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: valid socket and a timeval of the size given.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    // SAFETY: sending our own buffer on our socket (no address: the kernel).
    let n = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: receiving into our own buffer of the length given.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// Reads the kernel's answer to `route_request`: Some(true) when the route
/// has a gateway (RTA_GATEWAY, RTA_VIA, or a multipath next hop with one),
/// Some(false) for a unicast route without one or a local address, None
/// for an error or an unreachable destination.
fn parse_route_reply(b: &[u8]) -> Option<bool> {
    let u16_at = |o: usize| b.get(o..o + 2).map(|x| u16::from_ne_bytes([x[0], x[1]]));
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|x| u32::from_ne_bytes([x[0], x[1], x[2], x[3]]))
    };
    let len = u32_at(0)? as usize;
    if len > b.len() || len < 16 + 12 {
        return None;
    }
    match u16_at(4)? {
        RTM_NEWROUTE => {}
        NLMSG_ERROR => return None,
        _ => return None,
    }
    let rtype = *b.get(16 + 7)?;
    if rtype == RTN_LOCAL {
        return Some(false);
    }
    if rtype != RTN_UNICAST {
        return None;
    }
    for (t, v) in nl_attrs(&b[16 + 12..len]) {
        match t {
            RTA_GATEWAY | RTA_VIA => return Some(true),
            RTA_MULTIPATH => {
                // rtnexthop (8 bytes: its length first) then its own
                // attributes, per hop.
                let mut h = v;
                while h.len() >= 8 {
                    let hlen = u16::from_ne_bytes([h[0], h[1]]) as usize;
                    if hlen < 8 || hlen > h.len() {
                        break;
                    }
                    if nl_attrs(&h[8..hlen])
                        .iter()
                        .any(|(t, _)| *t == RTA_GATEWAY || *t == RTA_VIA)
                    {
                        return Some(true);
                    }
                    h = &h[((hlen + 3) & !3).min(h.len())..];
                }
            }
            _ => {}
        }
    }
    Some(false)
}

/// Asks the kernel for its route to `ip` (needs no privilege).
pub(crate) fn route_via_gateway(ip: std::net::IpAddr) -> Option<bool> {
    let reply = netlink_request(&route_request(ip, 1), std::time::Duration::from_secs(1)).ok()?;
    parse_route_reply(&reply)
}

struct Socket(i32);

impl Socket {
    fn dgram() -> io::Result<Self> {
        // SAFETY: plain socket(2) call.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Socket(fd))
    }

    fn ifreq(&self, name: &str, req: libc::c_ulong) -> io::Result<libc::ifreq> {
        // SAFETY: ifreq is plain data; zeroed is a valid value.
        let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
        let b = name.as_bytes();
        if b.len() >= r.ifr_name.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "interface name too long",
            ));
        }
        for (d, s) in r.ifr_name.iter_mut().zip(b) {
            *d = *s as libc::c_char;
        }
        // SAFETY: valid fd and a properly sized ifreq for these requests.
        if unsafe { libc::ioctl(self.0, req as _, &mut r) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r)
    }

    fn flags_and_type(&self, name: &str) -> io::Result<(u16, u16)> {
        let f = self.ifreq(name, libc::SIOCGIFFLAGS)?;
        let h = self.ifreq(name, libc::SIOCGIFHWADDR)?;
        // SAFETY: the kernel filled the union member that matches each request.
        unsafe {
            Ok((
                f.ifr_ifru.ifru_flags as u16,
                h.ifr_ifru.ifru_hwaddr.sa_family,
            ))
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed_with_its_type() {
        let l = list().unwrap();
        let lo = l
            .iter()
            .find(|i| i.name == "lo")
            .expect("every namespace has lo");
        assert_eq!(lo.link_type, 772);
        assert_eq!(lo.l2_len(), 14);
        assert_eq!(lo.index, 1);
    }

    /// A reply as the kernel writes it: nlmsghdr, rtmsg, attributes.
    fn reply(rtype: u8, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![libc::AF_INET as u8, 32, 0, 0, 254, 0, 0, rtype, 0, 0, 0, 0];
        for (t, v) in attrs {
            let l = 4 + v.len();
            body.extend_from_slice(&(l as u16).to_ne_bytes());
            body.extend_from_slice(&t.to_ne_bytes());
            body.extend_from_slice(v);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&RTM_NEWROUTE.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn route_replies_say_whether_a_gateway_is_in_between() {
        let dst = (RTA_DST, vec![10, 10, 2, 1]);
        let oif = (4u16, 3u32.to_ne_bytes().to_vec());
        let gw = (RTA_GATEWAY, vec![10, 10, 1, 254]);
        assert_eq!(
            parse_route_reply(&reply(RTN_UNICAST, &[dst.clone(), oif.clone()])),
            Some(false)
        );
        assert_eq!(
            parse_route_reply(&reply(RTN_UNICAST, &[dst.clone(), gw.clone(), oif.clone()])),
            Some(true)
        );
        assert_eq!(
            parse_route_reply(&reply(RTN_LOCAL, std::slice::from_ref(&dst))),
            Some(false)
        );
        assert_eq!(
            parse_route_reply(&reply(7, std::slice::from_ref(&dst))),
            None,
            "unreachable"
        );
        // a multipath route whose next hop has a gateway
        let mut hop = vec![0u8; 8];
        hop[0..2].copy_from_slice(&(8u16 + 8).to_ne_bytes());
        hop.extend_from_slice(&8u16.to_ne_bytes());
        hop.extend_from_slice(&RTA_GATEWAY.to_ne_bytes());
        hop.extend_from_slice(&[10, 0, 0, 1]);
        assert_eq!(
            parse_route_reply(&reply(RTN_UNICAST, &[dst, (RTA_MULTIPATH, hop)])),
            Some(true)
        );
        // an error message, and garbage, say nothing
        let mut err = reply(RTN_UNICAST, &[]);
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(parse_route_reply(&err), None);
        assert_eq!(parse_route_reply(&[1, 2, 3]), None);
        let req = route_request("fd00:2::1".parse().unwrap(), 9);
        assert_eq!(req.len(), 16 + 12 + 4 + 16);
        assert_eq!(
            u32::from_ne_bytes([req[0], req[1], req[2], req[3]]) as usize,
            req.len()
        );
    }

    #[test]
    fn the_kernel_routes_loopback_locally() {
        // No privilege needed: every network namespace has loopback.
        assert_eq!(route_via_gateway("127.0.0.1".parse().unwrap()), Some(false));
    }

    #[test]
    fn on_link_by_prefix() {
        let nets = [
            LocalNet {
                addr: "10.10.1.1".parse().unwrap(),
                prefix: 24,
            },
            LocalNet {
                addr: "fd00:1::1".parse().unwrap(),
                prefix: 64,
            },
            LocalNet {
                addr: "127.0.0.1".parse().unwrap(),
                prefix: 8,
            },
        ];
        assert!(on_link("10.10.1.254".parse().unwrap(), &nets));
        assert!(!on_link("10.10.2.1".parse().unwrap(), &nets));
        assert!(on_link("fd00:1::fe".parse().unwrap(), &nets));
        assert!(!on_link("fd00:2::1".parse().unwrap(), &nets));
        assert!(on_link("::ffff:127.0.0.2".parse().unwrap(), &nets));
        // this namespace's loopback is always there
        let here = local_nets().unwrap();
        assert!(on_link("127.0.0.1".parse().unwrap(), &here));
    }

    #[test]
    fn raw_ip_devices_have_no_l2_header() {
        assert_eq!(l2_len_for(65534), 0);
        assert_eq!(l2_len_for(1), 14);
    }
}
