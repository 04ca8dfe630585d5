//! Why this host may have held a request: the CPU it did not get. Read
//! without privileges, before and after each request:
//!
//! - run-queue wait of synack's own threads: the second field of
//!   `/proc/self/task/*/schedstat` (ns spent runnable but not running);
//! - CPU throttling of synack's cgroup: cgroup v2 `cpu.stat`
//!   (`nr_throttled`, `throttled_usec`) or cgroup v1 `cpu.stat` under the cpu
//!   controller (`nr_throttled`, `throttled_time` in ns), whichever the host
//!   has (a v2 cgroup without the cpu controller has no throttling fields);
//! - hypervisor steal time: the `steal` column of `/proc/stat`'s `cpu` line
//!   (all CPUs together, USER_HZ ticks).
//!
//! Each is None where the host does not expose it.

use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::Arc,
};

/// One reading of the counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct CpuSnapshot {
    /// Sum over this process's threads of run-queue wait, ns.
    pub run_delay_ns: Option<u64>,
    /// The cgroup's throttled periods and throttled time, ns.
    pub throttled_periods: Option<u64>,
    pub throttled_ns: Option<u64>,
    /// Steal time of all CPUs, ns.
    pub steal_ns: Option<u64>,
}

/// What the counters grew by between two readings.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Growth {
    pub run_delay_ns: Option<u64>,
    pub throttled_ns: Option<u64>,
    pub throttled_periods: Option<u64>,
    pub steal_ns: Option<u64>,
}

impl CpuSnapshot {
    /// Reads every counter this host has.
    pub(crate) fn take(src: &CpuSources) -> Self {
        let mut buf = String::new();
        let throttling = src
            .cpu_stat_file
            .as_deref()
            .and_then(|f| read_from_start(f, &mut buf, usize::MAX))
            .and_then(parse_cpu_stat);
        CpuSnapshot {
            run_delay_ns: run_delay("/proc/self/task"),
            throttled_periods: throttling.map(|x| x.0),
            throttled_ns: throttling.map(|x| x.1),
            // Its first line is the `cpu` total; the rest (every CPU, every
            // interrupt's count) is tens of KB on a large host.
            steal_ns: src
                .stat
                .as_deref()
                .and_then(|f| read_from_start(f, &mut buf, 4096))
                .and_then(parse_steal_ticks)
                .map(|t| t * 1_000_000_000 / clock_ticks()),
        }
    }

    /// The growth from `self` to `later`.
    pub(crate) fn until(&self, later: &CpuSnapshot) -> Growth {
        let d = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
        Growth {
            run_delay_ns: d(self.run_delay_ns, later.run_delay_ns),
            throttled_ns: d(self.throttled_ns, later.throttled_ns),
            throttled_periods: d(self.throttled_periods, later.throttled_periods),
            steal_ns: d(self.steal_ns, later.steal_ns),
        }
    }
}

/// Where this process's cgroup keeps its CPU statistics, found once (its
/// cgroup from /proc/self/cgroup, where that is mounted from mountinfo),
/// and the files kept open: each check reads them twice, and at 1,000
/// checks a second finding them again and opening them each time was a
/// fifth of `synack monitor`'s CPU. A process moved to another cgroup
/// keeps reading the old one's until the next `find`.
#[derive(Clone, Debug, Default)]
pub(crate) struct CpuSources {
    /// The `cpu.stat` that has throttling fields (v2, or v1's cpu
    /// controller).
    cpu_stat_file: Option<Arc<File>>,
    /// `/proc/stat`.
    stat: Option<Arc<File>>,
}

impl CpuSources {
    pub(crate) fn find() -> Self {
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let cpu_stat = cpu_stat_paths(&cgroup, &mounts).into_iter().find(|p| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|s| parse_cpu_stat(&s))
                .is_some()
        });
        let open = |p: &Path| File::open(p).ok().map(Arc::new);
        CpuSources {
            cpu_stat_file: cpu_stat.as_deref().and_then(open),
            stat: open(Path::new("/proc/stat")),
        }
    }
}

/// A procfs or cgroupfs file kept open, read again from its start (a
/// seq_file makes its text anew for a read at offset 0), up to about `max`
/// bytes (whole 4 KiB reads, then cut after the last whole line); None if
/// it cannot be read or is not text.
fn read_from_start<'a>(f: &File, buf: &'a mut String, max: usize) -> Option<&'a str> {
    use std::os::unix::fs::FileExt;
    let mut bytes = std::mem::take(buf).into_bytes();
    bytes.clear();
    let mut chunk = [0u8; 4096];
    while bytes.len() < max {
        match f.read_at(&mut chunk, bytes.len() as u64) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    if bytes.len() >= max {
        let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        bytes.truncate(end);
    }
    *buf = String::from_utf8(bytes).ok()?;
    Some(buf.as_str())
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// Sum of the run-queue wait (second field of schedstat) of every thread.
fn run_delay(task_dir: impl AsRef<Path>) -> Option<u64> {
    let mut sum = 0u64;
    let mut any = false;
    for e in std::fs::read_dir(task_dir).ok()?.flatten() {
        if let Some(v) = std::fs::read_to_string(e.path().join("schedstat"))
            .ok()
            .and_then(|s| parse_schedstat(&s))
        {
            sum += v;
            any = true;
        }
    }
    any.then_some(sum)
}

/// The run-queue wait of one schedstat line: "run_ns wait_ns slices".
pub(crate) fn parse_schedstat(s: &str) -> Option<u64> {
    s.split_whitespace().nth(1)?.parse().ok()
}

/// (nr_throttled, throttled time in ns) from a cgroup v2 or v1 `cpu.stat`.
pub(crate) fn parse_cpu_stat(s: &str) -> Option<(u64, u64)> {
    let mut n = None;
    let mut t = None;
    for l in s.lines() {
        let mut it = l.split_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next().and_then(|v| v.parse::<u64>().ok())) else {
            continue;
        };
        match k {
            "nr_throttled" => n = Some(v),
            // v2: microseconds
            "throttled_usec" => t = Some(v * 1000),
            // v1: nanoseconds
            "throttled_time" => t = Some(v),
            _ => {}
        }
    }
    Some((n?, t?))
}

/// The steal column of /proc/stat's aggregate `cpu` line, in ticks.
pub(crate) fn parse_steal_ticks(s: &str) -> Option<u64> {
    let l = s.lines().find(|l| l.starts_with("cpu "))?;
    l.split_whitespace().nth(8)?.parse().ok()
}

/// Candidate `cpu.stat` files for this process, v2 first: from
/// /proc/self/cgroup ("0::/path" for v2, "N:cpu,cpuacct:/path" for v1) and
/// the mount points in /proc/self/mountinfo.
pub(crate) fn cpu_stat_paths(cgroup: &str, mountinfo: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    // mountinfo: id parent maj:min root mountpoint opts ... - fstype source superopts
    let mounts: Vec<(String, String, String, String)> = mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let f: Vec<&str> = pre.split_whitespace().collect();
            let g: Vec<&str> = post.split_whitespace().collect();
            Some((
                f.get(3)?.to_string(),
                f.get(4)?.to_string(),
                g.first()?.to_string(),
                g.get(2).copied().unwrap_or("").to_string(),
            ))
        })
        .collect();
    // A path inside a mount whose root is `root`.
    let join = |mnt: &str, root: &str, path: &str| -> PathBuf {
        let rel = path.strip_prefix(root).unwrap_or(path);
        Path::new(mnt)
            .join(rel.trim_start_matches('/'))
            .join("cpu.stat")
    };
    for l in cgroup.lines() {
        let mut it = l.splitn(3, ':');
        let (Some(_), Some(ctrl), Some(path)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if ctrl.is_empty() {
            for (root, mnt, fs, _) in &mounts {
                if fs == "cgroup2" {
                    out.insert(0, join(mnt, root, path));
                }
            }
        } else if ctrl.split(',').any(|c| c == "cpu") {
            for (root, mnt, fs, opts) in &mounts {
                if fs == "cgroup" && opts.split(',').any(|o| o == "cpu") {
                    out.push(join(mnt, root, path));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_kernel_writes() {
        assert_eq!(parse_schedstat("4242 1500000 17\n"), Some(1_500_000));
        assert_eq!(parse_schedstat("garbage"), None);
        let v2 = "usage_usec 100\nuser_usec 60\nsystem_usec 40\nnr_periods 50\nnr_throttled 4\nthrottled_usec 380000\n";
        assert_eq!(parse_cpu_stat(v2), Some((4, 380_000_000)));
        let v1 = "nr_periods 50\nnr_throttled 3\nthrottled_time 2000000\n";
        assert_eq!(parse_cpu_stat(v1), Some((3, 2_000_000)));
        // a v2 cgroup without the cpu controller: no throttling fields
        assert_eq!(parse_cpu_stat("usage_usec 100\nuser_usec 60\n"), None);
        let stat = "cpu  10 0 20 3000 5 0 1 7 0 0\ncpu0 5 0 10 1500 2 0 0 3 0 0\n";
        assert_eq!(parse_steal_ticks(stat), Some(7));
    }

    #[test]
    fn finds_the_cpu_stat_of_either_hierarchy() {
        let cgroup = "12:cpu,cpuacct:/synack-test\n0::/user.slice\n";
        let mounts = "\
30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
";
        assert_eq!(
            cpu_stat_paths(cgroup, mounts),
            [
                PathBuf::from("/sys/fs/cgroup/unified/user.slice/cpu.stat"),
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/synack-test/cpu.stat"),
            ]
        );
        // inside a container the mount's root is the cgroup itself
        let mounts = "40 30 0:26 /pod/ctr /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cpu_stat_paths("0::/pod/ctr\n", mounts),
            [PathBuf::from("/sys/fs/cgroup/cpu.stat")]
        );
    }

    #[test]
    fn growth_between_two_readings() {
        let a = CpuSnapshot {
            run_delay_ns: Some(1_000_000),
            throttled_periods: Some(2),
            throttled_ns: Some(5_000_000),
            steal_ns: None,
        };
        let b = CpuSnapshot {
            run_delay_ns: Some(4_500_000),
            throttled_periods: Some(6),
            throttled_ns: Some(385_000_000),
            steal_ns: Some(10),
        };
        let d = a.until(&b);
        assert_eq!(d.run_delay_ns, Some(3_500_000));
        assert_eq!(d.throttled_periods, Some(4));
        assert_eq!(d.throttled_ns, Some(380_000_000));
        assert_eq!(d.steal_ns, None);
    }

    #[test]
    fn this_process_has_a_run_delay() {
        // /proc is there for every contributor; schedstat needs
        // CONFIG_SCHED_INFO, which every distribution kernel has.
        if Path::new("/proc/self/task").exists() && Path::new("/proc/self/schedstat").exists() {
            assert!(run_delay("/proc/self/task").is_some());
        }
    }
}
