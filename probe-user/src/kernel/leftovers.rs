//! Nothing left behind on kernels without tcx. A tcx link is released by
//! the kernel however synack ends; a netlink clsact filter (the fallback
//! before 6.6) stays attached when synack is killed (SIGKILL, OOM killer),
//! holding its programs. So each process records the filters it attached in
//! a ledger, `/run/synack/filters/ID.json` (tmpfs: gone at reboot, with the
//! filters), and holds an exclusive lock on `ID.lock` while it runs; both
//! are removed at a normal exit. Every start sweeps the ledgers whose lock
//! it can take (their process is gone, whatever pid namespace or /proc view
//! it had), in its own network namespace only, and detaches a filter only
//! when the kernel says the filter at that interface, direction, priority
//! and handle still runs the very program (by id) the ledger names.

use aya::programs::{
    TcAttachType,
    links::Link,
    tc::{SchedClassifierLink, TcHandle},
};
use serde::{Deserialize, Serialize};
use std::{
    fs,
    io::{self, Write},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

/// Where ledgers live; `SYNACK_RUN_DIR` moves it (tests, a read-only /run).
pub(crate) fn dir() -> PathBuf {
    std::env::var_os("SYNACK_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/synack"))
        .join("filters")
}

/// One clsact filter as netlink identifies it, and what it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Filter {
    pub ifname: String,
    pub ifindex: u32,
    pub ingress: bool,
    /// Never 0: a delete with priority 0 would flush the whole hook.
    pub priority: u16,
    /// tc handle, major << 16 | minor.
    pub handle: u32,
    /// The BPF program's id (ids are not reused while the program lives,
    /// and the filter keeps it alive).
    pub prog_id: u32,
}

#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Ledger {
    /// For messages only: liveness is the lock.
    pid: i32,
    /// Inode of /proc/self/ns/net: interface indexes mean something only
    /// in their own network namespace.
    netns: u64,
    filters: Vec<Filter>,
}

/// This process's ledger and the lock that says it runs. Dropped after the
/// filters themselves (their links) were detached.
pub(crate) struct Book {
    json: PathBuf,
    lock_path: PathBuf,
    _lock: fs::File,
    ledger: Ledger,
}

fn netns() -> io::Result<u64> {
    Ok(fs::metadata("/proc/self/ns/net")?.ino())
}

/// Takes an exclusive lock without waiting: Ok(false) when another open
/// file description holds it.
fn try_lock(f: &fs::File) -> io::Result<bool> {
    // SAFETY: flock on a valid, open descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

impl Book {
    pub(crate) fn new() -> io::Result<Self> {
        let d = dir();
        fs::create_dir_all(&d)?;
        let pid = std::process::id() as i32;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| t.as_nanos())
            .unwrap_or(0);
        // pids repeat across pid namespaces (every container's is 1).
        let id = format!("{pid}-{nanos}");
        let lock_path = d.join(format!("{id}.lock"));
        let lock = fs::File::create(&lock_path)?;
        if !try_lock(&lock)? {
            return Err(io::Error::other("a fresh ledger lock is already held"));
        }
        Ok(Book {
            json: d.join(format!("{id}.json")),
            lock_path,
            _lock: lock,
            ledger: Ledger {
                pid,
                netns: netns()?,
                filters: Vec::new(),
            },
        })
    }

    pub(crate) fn add(&mut self, f: Filter) -> io::Result<()> {
        self.ledger.filters.push(f);
        self.save()
    }

    pub(crate) fn remove_interface(&mut self, ifindex: u32) -> io::Result<()> {
        self.ledger.filters.retain(|f| f.ifindex != ifindex);
        self.save()
    }

    /// Written whole to a temporary file and renamed, so a kill mid-write
    /// leaves the previous ledger, never half of one.
    fn save(&self) -> io::Result<()> {
        let tmp = self.json.with_extension("tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(&self.ledger)?)?;
        f.sync_all()?;
        fs::rename(&tmp, &self.json)
    }
}

impl Drop for Book {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.json);
        let _ = fs::remove_file(&self.lock_path);
    }
}

/// What a sweep did.
#[derive(Debug, Default)]
pub(crate) struct Swept {
    /// (pid, filters detached) per dead process.
    pub removed: Vec<(i32, usize)>,
    /// Problems that did not stop the sweep; those ledgers are kept.
    pub problems: Vec<String>,
}

impl Swept {
    pub(crate) fn report(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .removed
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(pid, n)| {
                format!(
                    "synack: removed {n} tc filter(s) left attached by synack pid {pid}, which \
                     ended without detaching them (killed?)"
                )
            })
            .collect();
        v.extend(self.problems.iter().map(|p| format!("synack: {p}")));
        v
    }
}

/// Detaches the filters of every ledger in `dir` whose process is gone (its
/// lock is free) and that belongs to this network namespace, and removes
/// those ledgers, unless a detach failed (then it stays for the next try).
pub(crate) fn sweep(dir: &Path) -> Swept {
    let mut out = Swept::default();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    let here = netns().ok();
    for e in entries.flatten() {
        let json = e.path();
        if json.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let lock_path = json.with_extension("lock");
        // Held while we sweep, so two starting processes never both work
        // on one ledger.
        let lock = match fs::OpenOptions::new().read(true).open(&lock_path) {
            Ok(f) => match try_lock(&f) {
                Ok(true) => Some(f),
                Ok(false) => continue,
                Err(err) => {
                    out.problems
                        .push(format!("{}: cannot lock ({err})", lock_path.display()));
                    continue;
                }
            },
            // The writer makes its lock before its ledger: no lock file,
            // no process.
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => {
                out.problems
                    .push(format!("{}: cannot open ({err})", lock_path.display()));
                continue;
            }
        };
        let ledger: Ledger = match fs::read(&json)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            Some(l) => l,
            None => {
                out.problems.push(format!(
                    "{}: not a synack ledger, left alone",
                    json.display()
                ));
                continue;
            }
        };
        if Some(ledger.netns) != here {
            continue;
        }
        let mut n = 0;
        let mut failed = false;
        for f in &ledger.filters {
            match detach_if_ours(f) {
                Ok(true) => n += 1,
                Ok(false) => {}
                Err(err) => {
                    failed = true;
                    out.problems.push(format!(
                        "cannot detach the filter left by synack pid {} on {} ({} pref {} \
                         handle {:#x}): {err}",
                        ledger.pid,
                        f.ifname,
                        if f.ingress { "ingress" } else { "egress" },
                        f.priority,
                        f.handle
                    ));
                }
            }
        }
        out.removed.push((ledger.pid, n));
        if !failed {
            let _ = fs::remove_file(&json);
            let _ = fs::remove_file(&lock_path);
        }
        drop(lock);
    }
    out
}

/// Why a leftover filter could not be detached.
#[derive(Debug, thiserror::Error)]
enum DetachError {
    #[error("cannot read the filter: {0}")]
    Read(#[source] io::Error),
    #[error("{0}")]
    Find(#[source] io::Error),
    #[error("{}", crate::model::record::error_chain(.0))]
    Detach(#[source] aya::programs::ProgramError),
}

/// Detaches `f` when the kernel's filter at its place runs its program.
/// Ok(false): gone already (the interface or qdisc was removed) or another
/// program is there now; nothing to do.
fn detach_if_ours(f: &Filter) -> Result<bool, DetachError> {
    if f.priority == 0 {
        return Ok(false);
    }
    // By index (the name may have changed since): no such interface, and
    // the filter went with it.
    let Some(ifname) = crate::host::netif::name_of(f.ifindex) else {
        return Ok(false);
    };
    match filter_prog_id(f.ifindex, f.ingress, f.priority, f.handle) {
        Ok(Some(id)) if id == f.prog_id => {}
        Ok(_) => return Ok(false),
        Err(e) => return Err(DetachError::Read(e)),
    }
    let dir = if f.ingress {
        TcAttachType::Ingress
    } else {
        TcAttachType::Egress
    };
    SchedClassifierLink::attached(&ifname, dir, f.priority, TcHandle::from(f.handle), None)
        .map_err(DetachError::Find)?
        .detach()
        .map_err(DetachError::Detach)?;
    Ok(true)
}

// Netlink: ask the kernel for one tc filter (RTM_GETTFILTER) and read the
// id of the BPF program it runs. aya keeps its own netlink helpers private.
const TC_H_CLSACT: u32 = 0xffff_0000;
const TC_H_MIN_INGRESS: u32 = 0xfff2;
const TC_H_MIN_EGRESS: u32 = 0xfff3;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_ID: u16 = 11;
const NLMSG_HDR: usize = 16;
const TCMSG: usize = 20;

/// The request: nlmsghdr, tcmsg (ifindex, handle, clsact parent, priority
/// and ETH_P_ALL in `info`).
fn get_filter_request(ifindex: u32, ingress: bool, priority: u16, handle: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSG_HDR + TCMSG);
    m.extend(((NLMSG_HDR + TCMSG) as u32).to_ne_bytes());
    m.extend(libc::RTM_GETTFILTER.to_ne_bytes());
    m.extend((libc::NLM_F_REQUEST as u16).to_ne_bytes());
    m.extend(1u32.to_ne_bytes()); // sequence
    m.extend(0u32.to_ne_bytes()); // port id: the kernel fills it in
    m.extend([libc::AF_UNSPEC as u8, 0, 0, 0]);
    m.extend((ifindex as i32).to_ne_bytes());
    m.extend(handle.to_ne_bytes());
    let minor = if ingress {
        TC_H_MIN_INGRESS
    } else {
        TC_H_MIN_EGRESS
    };
    m.extend((TC_H_CLSACT | minor).to_ne_bytes());
    let proto = (libc::ETH_P_ALL as u16).to_be();
    m.extend(((u32::from(priority) << 16) | u32::from(proto)).to_ne_bytes());
    m
}

/// Reads the kernel's answer: Ok(Some(id)) for a bpf filter, Ok(None) when
/// there is no such filter or it is not bpf, Err for any other error.
fn parse_get_filter_reply(b: &[u8]) -> io::Result<Option<u32>> {
    if b.len() < NLMSG_HDR {
        return Err(io::Error::other("short netlink reply"));
    }
    let ty = u16::from_ne_bytes([b[4], b[5]]);
    if ty == libc::NLMSG_ERROR as u16 {
        let code = b
            .get(NLMSG_HDR..NLMSG_HDR + 4)
            .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .ok_or_else(|| io::Error::other("short netlink error"))?;
        return match -code {
            0 => Ok(None),
            libc::ENOENT | libc::ENODEV | libc::EINVAL => Ok(None),
            e => Err(io::Error::from_raw_os_error(e)),
        };
    }
    if ty != libc::RTM_NEWTFILTER {
        return Err(io::Error::other(format!("unexpected netlink message {ty}")));
    }
    let len = (u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize).min(b.len());
    let Some(body) = b.get(NLMSG_HDR + TCMSG..len) else {
        return Err(io::Error::other("short filter message"));
    };
    let a = crate::host::netif::nl_attrs(body);
    let kind = a.iter().find(|(t, _)| *t == TCA_KIND).map(|(_, v)| *v);
    if kind != Some(b"bpf\0") {
        return Ok(None);
    }
    Ok(a.iter()
        .find(|(t, _)| *t == TCA_OPTIONS)
        .and_then(|(_, opts)| {
            crate::host::netif::nl_attrs(opts)
                .into_iter()
                .find(|(t, v)| *t == TCA_BPF_ID && v.len() >= 4)
                .map(|(_, v)| u32::from_ne_bytes([v[0], v[1], v[2], v[3]]))
        }))
}

/// The id of the BPF program the filter at (interface, direction,
/// priority, handle) runs, if there is such a filter.
fn filter_prog_id(
    ifindex: u32,
    ingress: bool,
    priority: u16,
    handle: u32,
) -> io::Result<Option<u32>> {
    let req = get_filter_request(ifindex, ingress, priority, handle);
    let reply = crate::host::netif::netlink_request(&req, std::time::Duration::from_secs(2))?;
    parse_get_filter_reply(&reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn nla(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
        v.extend(ty.to_ne_bytes());
        v.extend(payload);
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
        v
    }

    fn reply(ty: u16, body: &[u8]) -> Vec<u8> {
        let mut m = ((NLMSG_HDR + body.len()) as u32).to_ne_bytes().to_vec();
        m.extend(ty.to_ne_bytes());
        m.extend([0u8; 10]);
        m.extend(body);
        m
    }

    #[test]
    fn filter_replies_give_the_program_id_or_nothing() {
        let mut body = vec![0u8; TCMSG];
        body.extend(nla(TCA_KIND, b"bpf\0"));
        let mut opts = nla(7, b"synack_ingress\0");
        opts.extend(nla(TCA_BPF_ID, &4242u32.to_ne_bytes()));
        body.extend(nla(TCA_OPTIONS | 0x8000, &opts));
        assert_eq!(
            parse_get_filter_reply(&reply(libc::RTM_NEWTFILTER, &body)).unwrap(),
            Some(4242)
        );
        // Another classifier kind at that place is not ours.
        let mut u32f = vec![0u8; TCMSG];
        u32f.extend(nla(TCA_KIND, b"u32\0"));
        assert_eq!(
            parse_get_filter_reply(&reply(libc::RTM_NEWTFILTER, &u32f)).unwrap(),
            None
        );
        let err = |e: i32| reply(libc::NLMSG_ERROR as u16, &(-e).to_ne_bytes());
        assert_eq!(parse_get_filter_reply(&err(libc::ENOENT)).unwrap(), None);
        assert!(parse_get_filter_reply(&err(libc::EPERM)).is_err());
        // Truncated or garbage input is an error or nothing, never a panic.
        let good = reply(libc::RTM_NEWTFILTER, &body);
        for cut in 0..good.len() {
            let _ = parse_get_filter_reply(&good[..cut]);
        }
    }

    #[test]
    fn the_request_names_the_clsact_hook_priority_and_protocol() {
        let r = get_filter_request(7, true, 49152, 1);
        assert_eq!(r.len(), NLMSG_HDR + TCMSG);
        let word = |o: usize| u32::from_ne_bytes([r[o], r[o + 1], r[o + 2], r[o + 3]]);
        assert_eq!(word(NLMSG_HDR + 4), 7);
        assert_eq!(word(NLMSG_HDR + 8), 1);
        assert_eq!(word(NLMSG_HDR + 12), 0xffff_fff2);
        assert_eq!(word(NLMSG_HDR + 16) >> 16, 49152);
        assert_eq!(
            word(NLMSG_HDR + 16) & 0xffff,
            u32::from((libc::ETH_P_ALL as u16).to_be())
        );
    }

    #[test]
    fn locked_ledgers_and_junk_are_left_alone() {
        let d = TempDir(
            std::env::temp_dir().join(format!("synack-ledger-test-{}", std::process::id())),
        );
        fs::create_dir_all(&d.0).unwrap();
        let ledger = Ledger {
            pid: 1,
            netns: netns().unwrap(),
            filters: vec![],
        };
        let write = |name: &str| {
            fs::write(
                d.0.join(format!("{name}.json")),
                serde_json::to_vec(&ledger).unwrap(),
            )
            .unwrap();
            fs::File::create(d.0.join(format!("{name}.lock"))).unwrap()
        };
        // A live process holds its lock (another open file description).
        let live = write("live");
        assert!(try_lock(&live).unwrap());
        // A dead one's lock is free.
        drop(write("dead"));
        fs::write(d.0.join("junk.json"), b"{not json").unwrap();
        let s = sweep(&d.0);
        assert!(d.0.join("live.json").exists());
        assert!(d.0.join("junk.json").exists());
        assert!(!d.0.join("dead.json").exists() && !d.0.join("dead.lock").exists());
        assert_eq!(s.problems.len(), 1, "{:?}", s.problems);
        assert_eq!(s.removed, vec![(1, 0)]);
        drop(live);
    }
}
