//! Where a connection gets its owner: the process and cgroup behind a
//! socket, for `synack watch`. The kernel's connect hooks name the process
//! of every connect(); sockets they did not see (accepted ones, or a kernel
//! without cgroup v2) are found the way `ss -p` does, through /proc.

use std::{
    collections::HashMap,
    fs,
    io::{self, BufRead},
    net::{Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Where the cgroup v2 hierarchy can be read: its mount point, or a
/// private, already detached mount kept open by a descriptor.
struct Cgroup2 {
    path: PathBuf,
    _keep: Option<fs::File>,
}

static CGROUP2: std::sync::OnceLock<Option<Cgroup2>> = std::sync::OnceLock::new();

/// The cgroup v2 hierarchy's root directory as this process can read it.
///
/// Where none is mounted in this mount namespace (`ip netns exec` remounts
/// /sys without it, so do some containers), synack mounts cgroup2 on a
/// fresh temporary directory, opens it, and detaches the mount at once: it
/// reads the hierarchy through `/proc/self/fd/N`, and nothing is left
/// mounted whatever way it exits.
pub fn cgroup2_root() -> Option<PathBuf> {
    CGROUP2
        .get_or_init(|| {
            mounted_cgroup2()
                .map(|path| Cgroup2 { path, _keep: None })
                .or_else(private_cgroup2)
        })
        .as_ref()
        .map(|c| c.path.clone())
}

fn mounted_cgroup2() -> Option<PathBuf> {
    let f = fs::File::open("/proc/self/mountinfo").ok()?;
    io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| cgroup2_mount(&l))
}

fn private_cgroup2() -> Option<Cgroup2> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let dir = std::env::temp_dir().join(format!("synack-cgroup2-{}", std::process::id()));
    fs::create_dir(&dir).ok()?;
    let c_dir = CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: valid NUL-terminated strings; no mount data.
    let rc = unsafe {
        libc::mount(
            c"none".as_ptr(),
            c_dir.as_ptr(),
            c"cgroup2".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    let keep = if rc == 0 {
        let f = fs::File::open(&dir).ok();
        // SAFETY: valid path; MNT_DETACH unmounts lazily, the open
        // descriptor keeps the hierarchy readable.
        unsafe { libc::umount2(c_dir.as_ptr(), libc::MNT_DETACH) };
        f
    } else {
        None
    };
    let _ = fs::remove_dir(&dir);
    let f = keep?;
    use std::os::fd::AsRawFd;
    Some(Cgroup2 {
        path: PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd())),
        _keep: Some(f),
    })
}

/// The mount point of a mountinfo line if its filesystem is cgroup2.
fn cgroup2_mount(line: &str) -> Option<PathBuf> {
    let (pre, post) = line.split_once(" - ")?;
    if post.split_whitespace().next()? != "cgroup2" {
        return None;
    }
    Some(PathBuf::from(unescape_mount(
        pre.split_whitespace().nth(4)?,
    )))
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// cgroup v2 ids (the inode numbers of the cgroup directories) and their
/// paths below the root, read by walking the hierarchy.
pub(crate) struct Cgroups {
    root: Option<PathBuf>,
    by_id: HashMap<u64, String>,
    walked: Option<Instant>,
}

impl Cgroups {
    pub(crate) fn new() -> Self {
        let mut c = Cgroups {
            root: cgroup2_root(),
            by_id: HashMap::new(),
            walked: None,
        };
        c.rewalk();
        c
    }

    fn rewalk(&mut self) {
        self.walked = Some(Instant::now());
        let Some(root) = self.root.clone() else {
            return;
        };
        let mut by_id = HashMap::new();
        let mut stack = vec![(root.clone(), "/".to_string())];
        // Bounded: a host has thousands of cgroups at most.
        while let Some((dir, rel)) = stack.pop() {
            if by_id.len() > 100_000 {
                break;
            }
            if let Ok(m) = fs::metadata(&dir) {
                by_id.insert(m.ino(), rel.clone());
            }
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let child = if rel == "/" {
                        format!("/{name}")
                    } else {
                        format!("{rel}/{name}")
                    };
                    stack.push((e.path(), child));
                }
            }
        }
        self.by_id = by_id;
    }

    /// The path (below the cgroup v2 root, "/" for the root) of a cgroup id.
    /// A miss re-reads the hierarchy, at most once a second.
    pub(crate) fn path(&mut self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        if !self.by_id.contains_key(&id)
            && self
                .walked
                .is_none_or(|t| t.elapsed() > Duration::from_secs(1))
        {
            self.rewalk();
        }
        self.by_id.get(&id).cloned()
    }

    /// The cgroup path a --cgroup argument names: a cgroup directory as
    /// this host mounts it (/sys/fs/cgroup/...), or a path relative to the
    /// hierarchy's root.
    pub(crate) fn resolve(&mut self, arg: &str) -> Result<String, CgroupError> {
        let root = self.root.clone().ok_or(CgroupError::NoHierarchy)?;
        let p = Path::new(arg);
        if p.is_absolute()
            && let Ok(m) = fs::metadata(p)
            && m.is_dir()
            && let Some(rel) = self.path(m.ino())
        {
            return Ok(rel);
        }
        let rel = match p.strip_prefix(&root) {
            Ok(r) => format!("/{}", r.display()),
            Err(_) => format!("/{}", arg.trim_start_matches('/')),
        };
        let rel = if rel.len() > 1 {
            rel.trim_end_matches('/').to_string()
        } else {
            rel
        };
        let full = root.join(rel.trim_start_matches('/'));
        if !full.is_dir() {
            return Err(CgroupError::NoSuchCgroup {
                arg: arg.to_string(),
                looked: full,
            });
        }
        Ok(rel)
    }

    /// The cgroup of a container: the deepest directory whose name holds the
    /// id (docker-<id>.scope, cri-containerd-<id>.scope, libpod-<id>, /docker/<id>).
    pub(crate) fn container(&mut self, id: &str) -> Result<String, CgroupError> {
        let id = id.trim();
        if id.len() < 4
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(CgroupError::NotAnId(id.to_string()));
        }
        self.rewalk();
        let mut hits: Vec<&String> = self
            .by_id
            .values()
            .filter(|p| p.rsplit('/').next().is_some_and(|n| n.contains(id)))
            .collect();
        hits.sort_by_key(|p| std::cmp::Reverse(p.len()));
        match hits.as_slice() {
            [] => Err(CgroupError::NoContainer {
                id: id.to_string(),
                root: self
                    .root
                    .as_ref()
                    .map(|r| r.display().to_string())
                    .unwrap_or_else(|| "(no cgroup v2 mount)".into()),
            }),
            [one, rest @ ..] if rest.iter().all(|r| one.starts_with(r.as_str())) => {
                Ok((*one).clone())
            }
            many => Err(CgroupError::Ambiguous {
                id: id.to_string(),
                some: many
                    .iter()
                    .take(4)
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}

/// Why a --cgroup or --container argument names no cgroup.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum CgroupError {
    #[error("no cgroup v2 hierarchy is available here, so --cgroup cannot be matched")]
    NoHierarchy,
    #[error("{arg}: no such cgroup (looked for {})", .looked.display())]
    NoSuchCgroup { arg: String, looked: PathBuf },
    #[error("{0:?} does not look like a container id")]
    NotAnId(String),
    #[error("no cgroup of container {id} under {root}: is it running on this host?")]
    NoContainer { id: String, root: String },
    #[error("{id} matches several cgroups ({some}): give more of the id")]
    Ambiguous { id: String, some: String },
}

impl Default for Cgroups {
    fn default() -> Self {
        Self::new()
    }
}

/// True when `path` is `under` or inside it.
pub(crate) fn cgroup_within(path: &str, under: &str) -> bool {
    under == "/"
        || path == under
        || (path.starts_with(under) && path.as_bytes().get(under.len()) == Some(&b'/'))
}

/// A process's name (`comm`).
pub(crate) fn comm(pid: u32) -> Option<String> {
    let s = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(s.trim_end_matches('\n').to_string())
}

/// A NUL-padded kernel `comm`.
pub(crate) fn comm_from_bytes(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// One line of /proc/net/tcp{,6}.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SockLine {
    pub local: (std::net::IpAddr, u16),
    pub remote: (std::net::IpAddr, u16),
    /// TCP state number (1 ESTABLISHED, 10 LISTEN, ...).
    pub state: u8,
    pub inode: u64,
}

/// Parses one data line of /proc/net/tcp or /proc/net/tcp6.
pub(crate) fn parse_sock_line(line: &str) -> Option<SockLine> {
    let mut f = line.split_whitespace();
    let _sl = f.next()?;
    let local = parse_hex_addr(f.next()?)?;
    let remote = parse_hex_addr(f.next()?)?;
    let state = u8::from_str_radix(f.next()?, 16).ok()?;
    let inode = f.nth(5)?.parse().ok()?;
    Some(SockLine {
        local,
        remote,
        state,
        inode,
    })
}

/// "0100007F:1F90" (IPv4) or 32 hex digits (IPv6), each 32-bit word in host
/// byte order, then the port.
fn parse_hex_addr(s: &str) -> Option<(std::net::IpAddr, u16)> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(a.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip = match a.len() {
        8 => std::net::IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            std::net::IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some((ip, port))
}

/// Finds the process behind sockets through /proc, with caches so a busy
/// host is not rescanned for every connection.
pub(crate) struct SocketOwners {
    /// socket inode -> pid, from the last scan of /proc/*/fd.
    by_inode: HashMap<u64, u32>,
    scanned: Option<Instant>,
    /// Scans done (each reads every process's fd table).
    pub scans: u64,
}

impl Default for SocketOwners {
    fn default() -> Self {
        Self::new()
    }
}

impl SocketOwners {
    pub(crate) fn new() -> Self {
        SocketOwners {
            by_inode: HashMap::new(),
            scanned: None,
            scans: 0,
        }
    }

    fn rescan(&mut self) {
        self.scanned = Some(Instant::now());
        self.scans += 1;
        self.by_inode.clear();
        let Ok(rd) = fs::read_dir("/proc") else {
            return;
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(fds) = fs::read_dir(e.path().join("fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                if let Ok(t) = fs::read_link(fd.path())
                    && let Some(ino) = t
                        .to_str()
                        .and_then(|s| s.strip_prefix("socket:["))
                        .and_then(|s| s.strip_suffix(']'))
                        .and_then(|s| s.parse::<u64>().ok())
                {
                    // The first (lowest) pid wins: a pre-forked server's parent.
                    self.by_inode.entry(ino).or_insert(pid);
                }
            }
        }
    }

    fn pid_of_inode(&mut self, ino: u64) -> Option<u32> {
        if ino == 0 {
            return None;
        }
        if let Some(p) = self.by_inode.get(&ino) {
            return Some(*p);
        }
        if self
            .scanned
            .is_none_or(|t| t.elapsed() > Duration::from_millis(200))
        {
            self.rescan();
        }
        self.by_inode.get(&ino).copied()
    }

    /// The process holding the socket of this connection (or, for a
    /// connection it has not accepted yet or already closed, the one
    /// listening on its local port).
    pub(crate) fn pid_of(
        &mut self,
        local: std::net::SocketAddr,
        remote: std::net::SocketAddr,
    ) -> Option<u32> {
        let table = if local.is_ipv4() {
            "/proc/net/tcp"
        } else {
            "/proc/net/tcp6"
        };
        let text = fs::read_to_string(table).ok()?;
        let lines: Vec<SockLine> = text.lines().skip(1).filter_map(parse_sock_line).collect();
        let same = |a: &(std::net::IpAddr, u16), b: &std::net::SocketAddr| {
            a.1 == b.port() && canon(a.0) == canon(b.ip())
        };
        if let Some(l) = lines
            .iter()
            .find(|l| l.inode != 0 && same(&l.local, &local) && same(&l.remote, &remote))
            && let Some(p) = self.pid_of_inode(l.inode)
        {
            return Some(p);
        }
        let listener = lines.iter().find(|l| {
            l.state == 10
                && l.local.1 == local.port()
                && (l.local.0.is_unspecified() || canon(l.local.0) == canon(local.ip()))
        })?;
        self.pid_of_inode(listener.inode)
    }
}

/// IPv4-mapped IPv6 addresses as IPv4, so both tables compare alike.
fn canon(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let l = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";
        assert_eq!(
            cgroup2_mount(l),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let l = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu";
        assert_eq!(cgroup2_mount(l), None);
        let l = "1 2 0:3 / /mnt/with\\040space rw shared:1 - cgroup2 none rw";
        assert_eq!(cgroup2_mount(l), Some(PathBuf::from("/mnt/with space")));
    }

    #[test]
    fn proc_net_tcp_lines() {
        let v4 = "   1: 0100007F:1F90 0201A8C0:C350 01 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 20 4 30 10 -1";
        let s = parse_sock_line(v4).unwrap();
        assert_eq!(s.local, ("127.0.0.1".parse().unwrap(), 8080));
        assert_eq!(s.remote, ("192.168.1.2".parse().unwrap(), 50000));
        assert_eq!(s.state, 1);
        assert_eq!(s.inode, 12345);
        let v6 = "   0: 000080FE00000000FF005450B6AD1DFE:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 100 0 0 10 0";
        let s = parse_sock_line(v6).unwrap();
        assert_eq!(
            s.local,
            ("fe80::5054:ff:fe1d:adb6".parse().unwrap(), 22),
            "words in host order"
        );
        assert_eq!(s.state, 10);
        assert!(parse_sock_line("  sl  local_address rem_address").is_none());
    }

    #[test]
    fn cgroup_containment() {
        assert!(cgroup_within("/a/b", "/a"));
        assert!(cgroup_within("/a", "/a"));
        assert!(!cgroup_within("/ab", "/a"));
        assert!(cgroup_within("/x", "/"));
        assert_eq!(comm_from_bytes(b"curl\0\0\0"), "curl");
    }
}
