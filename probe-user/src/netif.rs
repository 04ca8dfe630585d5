//! The network interfaces of the current network namespace.

use std::{ffi::CStr, io};

/// One interface as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub up: bool,
    /// ARPHRD_* link type (1 Ethernet, 772 loopback, 65534 none, ...).
    pub link_type: u16,
}

impl Interface {
    /// Bytes of link-layer header in front of the IP header that a tc
    /// classifier sees on this interface.
    pub fn l2_len(&self) -> u32 {
        l2_len_for(self.link_type)
    }
}

/// Link-layer header length for an ARPHRD_* type: Ethernet-framed types have
/// 14 bytes, raw-IP devices (tun, WireGuard, sit, ip6tnl, ipip, gre) none.
pub fn l2_len_for(link_type: u16) -> u32 {
    match link_type {
        1 | 772 | 774 | 801 => 14,
        _ => 0,
    }
}

/// The name of the interface with this index, if there is one.
pub fn name_of(index: u32) -> Option<String> {
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
pub fn list() -> io::Result<Vec<Interface>> {
    let sock = Socket::dgram()?;
    // SAFETY: if_nameindex returns a heap array terminated by a zero entry,
    // freed below with if_freenameindex; we copy names out before freeing.
    let mut out = Vec::new();
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
pub struct LocalNet {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

/// Every address with its netmask in this network namespace.
pub fn local_nets() -> io::Result<Vec<LocalNet>> {
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
        if let (Some(a), Some(m)) =
            unsafe { (sockaddr_ip(ifa.ifa_addr), sockaddr_ip(ifa.ifa_netmask)) }
        {
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
pub fn local_addrs() -> io::Result<Vec<std::net::IpAddr>> {
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
pub fn on_link(ip: std::net::IpAddr, nets: &[LocalNet]) -> bool {
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
