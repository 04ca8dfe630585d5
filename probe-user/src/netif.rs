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
    fn raw_ip_devices_have_no_l2_header() {
        assert_eq!(l2_len_for(65534), 0);
        assert_eq!(l2_len_for(1), 14);
    }
}
