//! Nothing left behind on kernels without tcx. A tcx link is released by
//! the kernel however synack ends; a netlink clsact filter (the fallback
//! before 6.6) stays attached when synack is killed (SIGKILL, OOM killer),
//! holding its programs. So each process records the filters it attached in
//! a ledger file, `/run/synack/filters/PID.json` (tmpfs: gone at reboot,
//! with the filters), removed when it exits normally. Every start sweeps
//! the ledgers of processes that no longer run, in its own network
//! namespace only, and detaches their filters by interface, priority and
//! handle, so a live synack's filters are never touched.

use aya::programs::{
    TcAttachType,
    links::Link,
    tc::{SchedClassifierLink, TcHandle},
};
use serde::{Deserialize, Serialize};
use std::{
    fs,
    io::{self, Write},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Where ledgers live; `SYNACK_RUN_DIR` moves it (tests, read-only /run).
pub fn dir() -> PathBuf {
    std::env::var_os("SYNACK_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/synack"))
        .join("filters")
}

/// One clsact filter as netlink identifies it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    pub ifname: String,
    pub ifindex: u32,
    pub ingress: bool,
    pub priority: u16,
    /// tc handle, major << 16 | minor.
    pub handle: u32,
}

#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Ledger {
    pid: i32,
    /// Field 22 of /proc/PID/stat (clock ticks since boot): a reused pid
    /// has another start time.
    start_time: u64,
    /// Inode of /proc/self/ns/net: interface indexes mean something only
    /// in their own network namespace.
    netns: u64,
    filters: Vec<Filter>,
}

/// This process's ledger; removing the file on drop (after the filters
/// themselves were detached by dropping their links).
pub struct Book {
    path: PathBuf,
    ledger: Ledger,
}

/// State (field 3) and start time (field 22) of /proc/PID/stat.
fn stat(pid: i32) -> Option<(char, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm (field 2) may hold spaces and parentheses: count from the last ')'.
    let mut w = s[s.rfind(')')? + 1..].split_whitespace();
    let state = w.next()?.chars().next()?;
    Some((state, w.nth(18)?.parse().ok()?))
}

fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, t)| t)
}

/// The process that wrote a ledger still runs: same pid, same start time,
/// and not a zombie (which has closed its descriptors already).
fn alive(pid: i32, start: u64) -> bool {
    stat(pid).is_some_and(|(state, t)| t == start && state != 'Z' && state != 'X')
}

fn netns() -> io::Result<u64> {
    Ok(fs::metadata("/proc/self/ns/net")?.ino())
}

impl Book {
    pub fn new() -> io::Result<Self> {
        let pid = std::process::id() as i32;
        let ledger = Ledger {
            pid,
            start_time: start_time(pid).unwrap_or(0),
            netns: netns()?,
            filters: Vec::new(),
        };
        Ok(Book {
            path: dir().join(format!("{pid}.json")),
            ledger,
        })
    }

    pub fn add(&mut self, f: Filter) -> io::Result<()> {
        self.ledger.filters.push(f);
        self.save()
    }

    pub fn remove_interface(&mut self, ifindex: u32) -> io::Result<()> {
        self.ledger.filters.retain(|f| f.ifindex != ifindex);
        self.save()
    }

    /// Written whole to a temporary file and renamed, so a kill mid-write
    /// leaves the previous ledger, never half of one.
    fn save(&self) -> io::Result<()> {
        let d = self.path.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(d)?;
        let tmp = self.path.with_extension("tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(&self.ledger)?)?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)
    }
}

impl Drop for Book {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// What a sweep did.
#[derive(Debug, Default)]
pub struct Swept {
    /// (pid, filters detached) per dead process.
    pub removed: Vec<(i32, usize)>,
    /// Problems that did not stop the sweep.
    pub problems: Vec<String>,
}

impl Swept {
    pub fn report(&self) -> Vec<String> {
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

/// Detaches the filters of every ledger in `dir` whose process is gone and
/// that belongs to this network namespace, and removes those ledgers.
pub fn sweep(dir: &Path) -> Swept {
    let mut out = Swept::default();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    let here = netns().ok();
    let mut ledgers = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        match fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Ledger>(&b).ok())
        {
            Some(l) if Some(l.netns) == here => ledgers.push((path, l)),
            Some(_) => {}
            None => out.problems.push(format!(
                "{}: not a synack ledger, left alone",
                path.display()
            )),
        }
    }
    // A namespace's inode number can be reused once it is gone: never
    // detach a filter that a live process's ledger also names.
    let live: Vec<&Filter> = ledgers
        .iter()
        .filter(|(_, l)| alive(l.pid, l.start_time))
        .flat_map(|(_, l)| &l.filters)
        .collect();
    for (path, ledger) in &ledgers {
        if alive(ledger.pid, ledger.start_time) {
            continue;
        }
        let mut n = 0;
        for f in ledger.filters.iter().filter(|f| !live.contains(f)) {
            // The same index under the same name: the interface the filter
            // was attached to is still there (else it took the filter along).
            if crate::netif::index_of(&f.ifname) != Some(f.ifindex) {
                continue;
            }
            let dir = if f.ingress {
                TcAttachType::Ingress
            } else {
                TcAttachType::Egress
            };
            let r = SchedClassifierLink::attached(
                &f.ifname,
                dir,
                f.priority,
                TcHandle::from(f.handle),
                None,
            )
            .map_err(|e| e.to_string())
            .and_then(|l| l.detach().map_err(|e| e.to_string()));
            match r {
                Ok(()) => n += 1,
                // Already gone (the qdisc was deleted, or this is another
                // namespace under a reused inode number): nothing to do.
                Err(e)
                    if e.contains("No such file")
                        || e.contains("os error 2")
                        || e.contains("Qdisc") => {}
                Err(e) => out.problems.push(format!(
                    "cannot detach the filter of dead synack pid {} on {} ({}, priority {}): {e}",
                    ledger.pid,
                    f.ifname,
                    if f.ingress { "ingress" } else { "egress" },
                    f.priority
                )),
            }
        }
        out.removed.push((ledger.pid, n));
        let _ = fs::remove_file(path);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_reads_past_odd_process_names() {
        let me = std::process::id() as i32;
        let t = start_time(me).expect("our own start time");
        assert!(t > 0);
        assert_eq!(start_time(me), Some(t), "stable");
        assert_eq!(start_time(i32::MAX), None);
    }

    #[test]
    fn ledgers_of_live_processes_and_junk_are_left_alone() {
        let d = std::env::temp_dir().join(format!("synack-ledger-test-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        // This process is alive: its ledger stays.
        let mine = Ledger {
            pid: std::process::id() as i32,
            start_time: start_time(std::process::id() as i32).unwrap(),
            netns: netns().unwrap(),
            filters: vec![],
        };
        fs::write(d.join("mine.json"), serde_json::to_vec(&mine).unwrap()).unwrap();
        fs::write(d.join("junk.json"), b"{not json").unwrap();
        // A dead one (a start time no process has) with no filters: swept.
        let dead = Ledger {
            start_time: u64::MAX,
            ..mine
        };
        fs::write(d.join("dead.json"), serde_json::to_vec(&dead).unwrap()).unwrap();
        let s = sweep(&d);
        assert!(d.join("mine.json").exists());
        assert!(d.join("junk.json").exists());
        assert!(!d.join("dead.json").exists());
        assert_eq!(s.problems.len(), 1, "{:?}", s.problems);
        assert!(s.report().iter().all(|l| !l.contains("removed")));
        fs::remove_dir_all(&d).unwrap();
    }
}
