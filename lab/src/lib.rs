//! synack's lab: the network namespaces, processes and helpers that the
//! end-to-end tests, `cargo xtask lab` and `cargo xtask demo` share.
//!
//! Every resource is owned by a value that removes it on drop (also when a
//! test panics), and every name carries this process's pid and a counter, so
//! two runs never collide. `Lab::persist` hands the resources over to a state
//! file instead, for `cargo xtask lab up` / `lab down`.

pub mod delay;
pub mod intercept;
pub mod paths;
pub mod topo;

use anyhow::{Context, Result, bail};
use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call: `<prefix><pid36>-<n36>`
/// (at most 11 characters with a 2-letter prefix, so interface names built
/// on it fit in 15). The pid in it lets `sweep_stale` find what a killed run
/// left behind.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}-{}", b36(std::process::id()), b36(n))
}

/// A number in base 36 (lower case), as `unique` writes pids.
pub fn b36(mut n: u32) -> String {
    let d = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut s = Vec::new();
    loop {
        s.push(d[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

/// The pid of the process that made a `unique(prefix)` name.
pub fn creator_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let (pid, _) = rest.split_once('-')?;
    u32::from_str_radix(pid, 36).ok()
}

/// Namespace prefixes used by the lab and the tests.
pub const NETNS_PREFIXES: [&str; 2] = ["sl", "sk"];
const TMP_PREFIX: &str = "synack-test-";

/// Removes what runs that were killed (SIGKILL, a crash) left behind: their
/// namespaces, the processes still running inside them (ours: a lab started
/// them), and their temporary directories. A run is gone when the pid in its
/// names no longer exists.
pub fn sweep_stale() {
    let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
    let list = sh(&["ip", "netns", "list"]).unwrap_or_default();
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = NETNS_PREFIXES.iter().find_map(|p| creator_pid(ns, p)) else {
            continue;
        };
        if alive(pid) {
            continue;
        }
        for p in sh(&["ip", "netns", "pids", ns]).unwrap_or_default().lines() {
            if let Ok(p) = p.trim().parse::<i32>() {
                // SAFETY: kill(2) on a process inside a namespace our own
                // (dead) run created, so one of the lab's processes.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        let _ = sh(&["ip", "netns", "del", ns]);
    }
    if let Ok(rd) = fs::read_dir(std::env::temp_dir()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = creator_pid(&name, TMP_PREFIX)
                && !alive(pid)
            {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// A squid's configuration in `dir`, which every squid here (the lab's, its
/// SSL bump, the tests' forward proxy) shares after its `own` lines: no
/// cache and no access log, its files in `dir` (made writable for squid's
/// own user), names from a hosts file only (localhost and `hosts`, lines of
/// "ADDR NAME"), a quick shutdown, and no ICMP pinger (the helper outlives
/// a squid that is killed, reparented to init). Returns the file's path.
pub fn squid_config(dir: &Path, own: &str, hosts: &str, visible_hostname: &str) -> Result<PathBuf> {
    fs::create_dir_all(dir)?;
    sh(&["chmod", "0777", dir.to_str().context("path")?])?;
    let hosts_file = dir.join("hosts");
    fs::write(&hosts_file, format!("127.0.0.1 localhost\n{hosts}"))?;
    let p = |x: &Path| x.display().to_string();
    let cfg = dir.join("squid.conf");
    fs::write(
        &cfg,
        format!(
            "{own}http_access allow all\ncache deny all\naccess_log none\n\
             cache_log {}\npid_filename {}\ncoredump_dir {}\n\
             hosts_file {}\ndns_nameservers 127.0.0.1\nvisible_hostname {visible_hostname}\n\
             shutdown_lifetime 0 seconds\npinger_enable off\n",
            p(&dir.join("cache.log")),
            p(&dir.join("squid.pid")),
            p(dir),
            p(&hosts_file)
        ),
    )
    .with_context(|| format!("writing {}", cfg.display()))?;
    Ok(cfg)
}

/// Runs a command, failing with its output when it fails.
pub fn sh(args: &[&str]) -> Result<String> {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args.join(" ")))?;
    if !o.status.success() {
        bail!(
            "{} failed ({}): {}{}",
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Waits until `f` returns Some, or fails after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > end {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// True when running as root (the end-to-end tests need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Puts the calling thread (and the threads it starts later) in the
/// SCHED_FIFO real-time class, so the lab's delay line and origin keep their
/// timing when the 2-core machine is busy. Returns false where not allowed.
pub fn realtime(priority: i32) -> bool {
    let p = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: plain syscall on the calling thread with a valid parameter.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) == 0 }
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Leaves the namespace in place (for a persisted lab).
    pub fn keep(self) -> String {
        let n = self.name.clone();
        std::mem::forget(self);
        n
    }

    pub fn new(name: &str) -> Result<Self> {
        sh(&["ip", "netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs a command inside the namespace and waits for it.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// A Command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process, stopped by its pid on drop (SIGTERM, then SIGKILL).
pub struct Proc {
    pub child: Child,
    pub label: String,
}

impl Proc {
    /// Leaves the process running (for a persisted lab); returns its pid.
    pub fn keep(self) -> i32 {
        let pid = self.pid();
        std::mem::forget(self);
        pid
    }

    pub fn spawn(mut cmd: Command, label: &str) -> Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {label}"))?;
        Ok(Proc {
            child,
            label: label.to_string(),
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a child we started and have not reaped.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let label = self.label.clone();
        wait_for(timeout, &format!("{label} to exit"), || {
            self.child.try_wait().ok().flatten()
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGTERM);
            let end = Instant::now() + Duration::from_secs(2);
            while Instant::now() < end {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Two namespaces joined by a veth pair, IPv4 and IPv6, offloads off so
/// every packet is wire-sized.
pub struct Pair {
    // Field order: the namespaces go last, after the processes in them.
    pub client: Netns,
    pub server: Netns,
    pub client_if: String,
    pub server_if: String,
    pub client_v4: IpAddr,
    pub server_v4: IpAddr,
    pub client_v6: IpAddr,
    pub server_v6: IpAddr,
}

impl Pair {
    pub fn new() -> Result<Self> {
        sweep_stale();
        let id = unique("sk");
        let client = Netns::new(&format!("{id}c"))?;
        let server = Netns::new(&format!("{id}s"))?;
        let (ci, si) = (format!("{id}a"), format!("{id}b"));
        sh(&[
            "ip",
            "link",
            "add",
            &ci,
            "netns",
            &client.name,
            "type",
            "veth",
            "peer",
            "name",
            &si,
            "netns",
            &server.name,
        ])?;
        let p = Pair {
            client,
            server,
            client_if: ci,
            server_if: si,
            client_v4: "10.231.0.1".parse()?,
            server_v4: "10.231.0.2".parse()?,
            client_v6: "fd00:231::1".parse()?,
            server_v6: "fd00:231::2".parse()?,
        };
        for (ns, ifn, v4, v6) in [
            (&p.client, &p.client_if, p.client_v4, p.client_v6),
            (&p.server, &p.server_if, p.server_v4, p.server_v6),
        ] {
            add_addrs(ns, ifn, &v4.to_string(), &v6.to_string())?;
        }
        Ok(p)
    }
}

/// Gives an interface an IPv4 /24 and an IPv6 /64 (no duplicate address
/// detection: usable at once), brings it up and makes it wire-sized.
pub fn add_addrs(ns: &Netns, ifn: &str, v4: &str, v6: &str) -> Result<()> {
    ns.exec(&["ip", "addr", "add", &format!("{v4}/24"), "dev", ifn])?;
    ns.exec(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{v6}/64"),
        "dev",
        ifn,
        "nodad",
    ])?;
    ns.exec(&["ip", "link", "set", ifn, "up"])?;
    wire_sized(ns, ifn)
}

/// Turns off segmentation offloads and spreads receive processing the same
/// way for every packet (plain veth otherwise reorders TCP segments).
pub fn wire_sized(ns: &Netns, ifn: &str) -> Result<()> {
    ns.exec(&[
        "ethtool", "-K", ifn, "tso", "off", "gso", "off", "gro", "off",
    ])?;
    let cmd = format!("for q in /sys/class/net/{ifn}/queues/rx-*/rps_cpus; do echo 1 > $q; done");
    ns.exec(&["sh", "-c", &cmd])?;
    Ok(())
}

/// The synack binary under test (`cargo xtask test` sets SYNACK_BIN).
pub fn synack_bin() -> PathBuf {
    std::env::var_os("SYNACK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/synack"))
}

/// A binary of this workspace next to the synack binary (synack-origin,
/// synack-delay): they are built together.
pub fn sibling_bin(name: &str) -> PathBuf {
    synack_bin().with_file_name(name)
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Leaves the directory in place (for a persisted lab).
    pub fn keep(self) -> PathBuf {
        let p = self.0.clone();
        std::mem::forget(self);
        p
    }

    pub fn new() -> Result<Self> {
        let p = std::env::temp_dir().join(unique(TMP_PREFIX));
        fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
    pub fn join(&self, s: &str) -> PathBuf {
        self.0.join(s)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The origin server running in a namespace, ready to serve.
pub fn start_origin(ns: &Netns, bin: &Path, dir: &TempDir, args: &[&str]) -> Result<Proc> {
    let ready = dir.join(&unique("ready"));
    let mut c = ns.command(bin.to_str().context("origin path is not UTF-8")?);
    c.args(args)
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::null());
    let p = Proc::spawn(c, "synack-origin")?;
    wait_for(Duration::from_secs(10), "the origin to listen", || {
        ready.exists().then_some(())
    })?;
    Ok(p)
}
