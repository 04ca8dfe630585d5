//! The three-namespace lab: client - mid - server, IPv4 and IPv6, with the
//! delay line, a transparent TCP-terminating proxy (haproxy) and an
//! intercepting HTTP proxy (squid) in mid, and the origin in server.
//!
//! ```text
//!  client                 mid                               server
//!  10.10.1.1  ---------- 10.10.1.254 | 10.10.2.254 -------- 10.10.2.1
//!  fd00:1::1             fd00:1::fe  | fd00:2::fe            fd00:2::1
//!             queue 0 -> (raw PREROUTING in)
//!             queue 1 <- (mangle POSTROUTING out)
//!                                      queue 3 -> / <- queue 2
//! ```
//!
//! Ports on the origin: 8080 (HTTP) and 8443 (HTTPS) go straight through
//! mid; 9080 and 9443 are intercepted by haproxy (mode tcp, original
//! destination: nat REDIRECT for IPv4, TPROXY for IPv6); 10080 by squid
//! (intercept, HTTP only); 11443 by mitmproxy (TLS-intercepting, started on
//! demand: `intercept::Mitmproxy`). 8445 (straight) and 9445 (haproxy) serve
//! a certificate too big for the initial congestion window.

use crate::{Netns, Proc, TempDir, sh, unique, wait_for};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

pub const HTTP: u16 = 8080;
pub const HTTPS: u16 = 8443;
pub const PROXY_HTTP: u16 = 9080;
pub const PROXY_HTTPS: u16 = 9443;
pub const SQUID_HTTP: u16 = 10080;
/// HTTPS intercepted by mitmproxy (`intercept::Mitmproxy`).
pub const INTERCEPT_HTTPS: u16 = 11443;
/// HTTPS with a ~30 KB certificate, straight and through haproxy.
pub const BIG_HTTPS: u16 = 8445;
pub const PROXY_BIG_HTTPS: u16 = 9445;
const HAPROXY_PORT: u16 = 15001;
const SQUID_INTERCEPT_PORT: u16 = 3129;
const SQUID_PLAIN_PORT: u16 = 3128;

pub const CLIENT_V4: &str = "10.10.1.1";
pub const MID_C_V4: &str = "10.10.1.254";
pub const MID_S_V4: &str = "10.10.2.254";
pub const SERVER_V4: &str = "10.10.2.1";
pub const CLIENT_V6: &str = "fd00:1::1";
pub const MID_C_V6: &str = "fd00:1::fe";
pub const MID_S_V6: &str = "fd00:2::fe";
pub const SERVER_V6: &str = "fd00:2::1";

/// What the delay line in mid does: a one-way delay per link and direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delays {
    /// Client to mid.
    pub client_out: Duration,
    /// Mid to client.
    pub client_in: Duration,
    /// Mid to server.
    pub server_out: Duration,
    /// Server to mid.
    pub server_in: Duration,
    /// Drop the first SYN of each of the client's next N connections in mid
    /// (the retransmitted SYNs pass).
    pub drop_syns: u32,
    /// Random loss per link and direction, percent of the packets.
    #[serde(default)]
    pub loss: Loss,
    /// Seed of the random loss (synack-delay prints it; the same seed drops
    /// the same packets of the same sequence again).
    #[serde(default)]
    pub seed: u64,
}

/// Random loss per link and direction, in percent (whole percents keep
/// `Delays` comparable).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loss {
    pub client_out: u8,
    pub client_in: u8,
    pub server_out: u8,
    pub server_in: u8,
}

impl Delays {
    /// Round-trip times per link, half each way.
    pub fn rtt(client: Duration, server: Duration) -> Self {
        Delays {
            client_out: client / 2,
            client_in: client - client / 2,
            server_out: server / 2,
            server_in: server - server / 2,
            ..Default::default()
        }
    }

    pub fn client_rtt(&self) -> Duration {
        self.client_out + self.client_in
    }

    pub fn server_rtt(&self) -> Duration {
        self.server_out + self.server_in
    }
}

/// Which way a request goes through mid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Routed straight through.
    Direct,
    /// Terminated by haproxy (transparent, mode tcp), which connects on.
    TcpProxy,
    /// Intercepted by squid (HTTP only).
    HttpProxy,
    /// Intercepted by mitmproxy (HTTPS only, its own CA), when started.
    TlsInterceptor,
}

/// Where the lab's helper programs are.
#[derive(Clone, Debug)]
pub struct Bins {
    pub origin: PathBuf,
    pub delay: PathBuf,
}

impl Bins {
    /// The ones built next to the synack binary.
    pub fn beside_synack() -> Self {
        Self::beside(&crate::synack_bin())
    }

    /// The ones built next to the given synack binary.
    pub fn beside(synack: &Path) -> Self {
        Bins {
            origin: synack.with_file_name("synack-origin"),
            delay: synack.with_file_name("synack-delay"),
        }
    }
}

/// What `Lab::persist` leaves behind for `lab down`.
#[derive(Debug, Serialize, Deserialize)]
pub struct State {
    pub namespaces: Vec<String>,
    /// (pid, program name) of every process the lab started.
    pub pids: Vec<(i32, String)>,
    pub dir: PathBuf,
    pub client: String,
    pub mid: String,
    pub server: String,
    pub delays: Delays,
}

/// A running lab. Dropping it stops its processes and removes its
/// namespaces and files.
pub struct Lab {
    // Drop order: processes, then namespaces, then files.
    delay: Option<Proc>,
    procs: Vec<Proc>,
    pub client: Netns,
    pub mid: Netns,
    pub server: Netns,
    pub dir: TempDir,
    pub client_if: String,
    pub mid_c_if: String,
    pub mid_s_if: String,
    pub server_if: String,
    pub delays: Delays,
    bins: Bins,
}

/// Never let mid's own connections reach a transparent proxy's `port`: a
/// proxy that connects to the original destination would connect to itself
/// in a loop (iptables and ip6tables INPUT REJECT from mid's addresses and
/// loopback).
pub(crate) fn refuse_own_connections(m: &Netns, port: u16) -> Result<()> {
    let port = port.to_string();
    for (ipt, src) in [
        ("iptables", MID_C_V4),
        ("iptables", MID_S_V4),
        ("iptables", "127.0.0.0/8"),
        ("ip6tables", MID_C_V6),
        ("ip6tables", MID_S_V6),
        ("ip6tables", "::1"),
    ] {
        m.exec(&[
            ipt, "-A", "INPUT", "-p", "tcp", "--dport", &port, "-s", src, "-j", "REJECT",
        ])?;
    }
    Ok(())
}

impl Lab {
    /// Builds the lab, starts the delay line and the origin, and the proxies
    /// when `proxies` is set.
    pub fn up(bins: &Bins, delays: Delays, proxies: bool) -> Result<Lab> {
        for (what, p) in [
            ("synack-origin", &bins.origin),
            ("synack-delay", &bins.delay),
        ] {
            if !p.exists() {
                bail!(
                    "{what} not found at {}: build with `cargo xtask build`",
                    p.display()
                );
            }
        }
        crate::sweep_stale();
        let id = unique("sl");
        let client = Netns::new(&format!("{id}c"))?;
        let mid = Netns::new(&format!("{id}m"))?;
        let server = Netns::new(&format!("{id}s"))?;
        let dir = TempDir::new()?;
        let mut lab = Lab {
            delay: None,
            procs: Vec::new(),
            client,
            mid,
            server,
            dir,
            client_if: format!("{id}cm"),
            mid_c_if: format!("{id}mc"),
            mid_s_if: format!("{id}ms"),
            server_if: format!("{id}sm"),
            delays,
            bins: bins.clone(),
        };
        lab.wire()?;
        lab.queues()?;
        // Warm up without delays or drops, then apply what was asked.
        lab.set_delays(Delays::default())?;
        lab.origin()?;
        if proxies {
            lab.haproxy()?;
            lab.squid()?;
        }
        lab.warm_up()?;
        lab.set_delays(delays)?;
        Ok(lab)
    }

    fn wire(&self) -> Result<()> {
        let (c, m, s) = (&self.client.name, &self.mid.name, &self.server.name);
        sh(&[
            "ip",
            "link",
            "add",
            &self.client_if,
            "netns",
            c,
            "type",
            "veth",
            "peer",
            "name",
            &self.mid_c_if,
            "netns",
            m,
        ])?;
        sh(&[
            "ip",
            "link",
            "add",
            &self.mid_s_if,
            "netns",
            m,
            "type",
            "veth",
            "peer",
            "name",
            &self.server_if,
            "netns",
            s,
        ])?;
        let addr = crate::add_addrs;
        addr(&self.client, &self.client_if, CLIENT_V4, CLIENT_V6)?;
        addr(&self.mid, &self.mid_c_if, MID_C_V4, MID_C_V6)?;
        addr(&self.mid, &self.mid_s_if, MID_S_V4, MID_S_V6)?;
        addr(&self.server, &self.server_if, SERVER_V4, SERVER_V6)?;
        self.client
            .exec(&["ip", "route", "add", "default", "via", MID_C_V4])?;
        self.client
            .exec(&["ip", "-6", "route", "add", "default", "via", MID_C_V6])?;
        self.server
            .exec(&["ip", "route", "add", "default", "via", MID_S_V4])?;
        self.server
            .exec(&["ip", "-6", "route", "add", "default", "via", MID_S_V6])?;
        self.mid.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        self.mid
            .exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
        // A proxy's segments held in the NFQUEUE delay line still count as
        // in flight on its socket, and TCP autocorking then holds its next
        // small write until the held one leaves: one extra one-way delay per
        // write that a real NIC (which frees packets in microseconds) would
        // never cause. Measured: +20 ms on every HTTPS request through
        // haproxy at 40 ms RTT. See docs/lab.md.
        self.mid
            .exec(&["sysctl", "-qw", "net.ipv4.tcp_autocorking=0"])?;
        Ok(())
    }

    /// NFQUEUE hooks in mid: raw/PREROUTING for packets coming in and
    /// mangle/POSTROUTING for packets going out, so forwarded and proxied
    /// traffic are delayed alike. --queue-bypass lets packets through while
    /// no delay line is bound (between restarts).
    fn queues(&self) -> Result<()> {
        for ipt in ["iptables", "ip6tables"] {
            for (table, chain, dir, ifn, q) in [
                ("raw", "PREROUTING", "-i", &self.mid_c_if, "0"),
                ("mangle", "POSTROUTING", "-o", &self.mid_c_if, "1"),
                ("raw", "PREROUTING", "-i", &self.mid_s_if, "2"),
                ("mangle", "POSTROUTING", "-o", &self.mid_s_if, "3"),
            ] {
                self.mid.exec(&[
                    ipt,
                    "-t",
                    table,
                    "-A",
                    chain,
                    dir,
                    ifn,
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    q,
                    "--queue-bypass",
                ])?;
            }
        }
        Ok(())
    }

    /// (Re)starts the delay line with new settings.
    pub fn set_delays(&mut self, d: Delays) -> Result<()> {
        self.delay = None;
        let us = |d: Duration| format!("{}us", d.as_micros());
        let ready = self.dir.join(&unique("delay-ready"));
        let mut c = self.mid.command(self.bins.delay.to_str().context("path")?);
        c.args(["--queue", &format!("0={}", us(d.client_out))])
            .args(["--queue", &format!("1={}", us(d.client_in))])
            .args(["--queue", &format!("2={}", us(d.server_in))])
            .args(["--queue", &format!("3={}", us(d.server_out))])
            .args(["--drop-syns", &d.drop_syns.to_string(), "--drop-queue", "0"])
            .args(["--loss", &format!("0={}", d.loss.client_out)])
            .args(["--loss", &format!("1={}", d.loss.client_in)])
            .args(["--loss", &format!("2={}", d.loss.server_in)])
            .args(["--loss", &format!("3={}", d.loss.server_out)])
            .args(["--seed", &d.seed.to_string()])
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(self.log("synack-delay")?);
        let mut p = Proc::spawn(c, "synack-delay")?;
        wait_for(
            Duration::from_secs(10),
            "the delay line to bind its queues",
            || {
                if let Ok(Some(st)) = p.child.try_wait() {
                    return Some(Err(anyhow::anyhow!("synack-delay exited: {st}")));
                }
                ready.exists().then_some(Ok(()))
            },
        )??;
        self.delay = Some(p);
        self.delays = d;
        Ok(())
    }

    fn origin(&mut self) -> Result<()> {
        let ca = self.ca_path();
        let ready = self.dir.join("origin-ready");
        let mut c = self
            .server
            .command(self.bins.origin.to_str().context("path")?);
        for port in [HTTP, PROXY_HTTP, SQUID_HTTP] {
            c.args([
                "--http",
                &format!("0.0.0.0:{port}"),
                "--http",
                &format!("[::]:{port}"),
            ]);
        }
        for port in [HTTPS, PROXY_HTTPS, INTERCEPT_HTTPS] {
            c.args([
                "--https",
                &format!("0.0.0.0:{port}"),
                "--https",
                &format!("[::]:{port}"),
            ]);
        }
        for port in [BIG_HTTPS, PROXY_BIG_HTTPS] {
            c.args([
                "--https-big",
                &format!("0.0.0.0:{port}"),
                "--https-big",
                &format!("[::]:{port}"),
            ]);
        }
        c.args([
            "--san",
            SERVER_V4,
            "--san",
            SERVER_V6,
            "--san",
            crate::intercept::ORIGIN_NAME,
        ])
        .arg("--ca-out")
        .arg(&ca)
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::null())
        .stderr(self.log("synack-origin")?);
        let p = Proc::spawn(c, "synack-origin")?;
        wait_for(Duration::from_secs(10), "the origin to listen", || {
            ready.exists().then_some(())
        })?;
        self.procs.push(p);
        Ok(())
    }

    /// One request per address family, so that neighbour discovery (ARP,
    /// and IPv6 NDP, which the delay line delays like any IP packet) is done
    /// before anything is measured.
    fn warm_up(&self) -> Result<()> {
        for v6 in [false, true] {
            let u = url(Via::Direct, false, v6, "/");
            self.client
                .exec(&["curl", "-s", "-o", "/dev/null", "-m", "10", &u])
                .with_context(|| format!("warm-up request to {u}"))?;
        }
        Ok(())
    }

    pub(crate) fn wait_listen(&self, ns: &Netns, port: u16, what: &str) -> Result<()> {
        wait_for(Duration::from_secs(15), what, || {
            ns.exec(&["ss", "-Hltn", &format!("sport = :{port}")])
                .ok()
                .filter(|s| !s.trim().is_empty())
                .map(|_| ())
        })
    }

    /// haproxy in mid, terminating TCP for ports 9080/9443/9445 and connecting to
    /// the original destination.
    fn haproxy(&mut self) -> Result<()> {
        let cfg = self.dir.join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn 2000\n\
                 defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n\
                 frontend intercept\n  bind 0.0.0.0:{HAPROXY_PORT}\n  bind [::]:{HAPROXY_PORT} v6only transparent\n  default_backend original\n\
                 backend original\n  server orig 0.0.0.0:0\n"
            ),
        )?;
        let ports = format!("{PROXY_HTTP},{PROXY_HTTPS},{PROXY_BIG_HTTPS}");
        let m = &self.mid;
        refuse_own_connections(m, HAPROXY_PORT)?;
        m.exec(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-i",
            &self.mid_c_if,
            "-p",
            "tcp",
            "-m",
            "multiport",
            "--dports",
            &ports,
            "-j",
            "REDIRECT",
            "--to-ports",
            &HAPROXY_PORT.to_string(),
        ])?;
        m.exec(&[
            "ip6tables",
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-i",
            &self.mid_c_if,
            "-p",
            "tcp",
            "-m",
            "multiport",
            "--dports",
            &ports,
            "-j",
            "TPROXY",
            "--on-port",
            &HAPROXY_PORT.to_string(),
            "--tproxy-mark",
            "0x1/0x1",
        ])?;
        m.exec(&[
            "ip", "-6", "rule", "add", "fwmark", "0x1/0x1", "lookup", "100",
        ])?;
        m.exec(&[
            "ip", "-6", "route", "add", "local", "::/0", "dev", "lo", "table", "100",
        ])?;
        // Real-time class like the delay line and the origin: on a busy
        // 2-core machine a normal-priority proxy was now and then 3 ms late
        // forwarding a request, which the lab would charge to the server.
        let mut c = m.command("chrt");
        c.args(["-f", "30", "haproxy", "-db"])
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(self.log("haproxy")?);
        self.procs.push(Proc::spawn(c, "haproxy")?);
        self.wait_listen(m, HAPROXY_PORT, "haproxy to listen")
    }

    /// squid in mid, intercepting plain HTTP to port 10080.
    fn squid(&mut self) -> Result<()> {
        let cfg = crate::squid_config(
            &self.dir.join("squid"),
            &format!("http_port {SQUID_PLAIN_PORT}\nhttp_port {SQUID_INTERCEPT_PORT} intercept\n"),
            "",
            "synack-lab-mid",
        )?;
        let m = &self.mid;
        for ipt in ["iptables", "ip6tables"] {
            let r = m.exec(&[
                ipt,
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-i",
                &self.mid_c_if,
                "-p",
                "tcp",
                "--dport",
                &SQUID_HTTP.to_string(),
                "-j",
                "REDIRECT",
                "--to-ports",
                &SQUID_INTERCEPT_PORT.to_string(),
            ]);
            // IPv6 interception only where the kernel has IPv6 NAT.
            if ipt == "iptables" {
                r?;
            }
        }
        let mut c = m.command("squid");
        c.arg("-N")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(self.log("squid")?);
        self.procs.push(Proc::spawn(c, "squid")?);
        self.wait_listen(m, SQUID_INTERCEPT_PORT, "squid to listen")
    }

    /// A log file in the lab's directory for a process's stderr (also keeps
    /// a persisted lab's processes off the terminal that started them).
    pub(crate) fn log(&self, name: &str) -> Result<std::fs::File> {
        let p = self.dir.join(&format!("{name}.log"));
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .with_context(|| format!("creating {}", p.display()))
    }

    /// The PEM file of the CA that signed the origin's certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("origin-ca.pem")
    }

    /// A URL on the origin, reached the given way.
    pub fn url(&self, via: Via, tls: bool, v6: bool, path: &str) -> String {
        url(via, tls, v6, path)
    }

    /// Hands everything over to a state file (for `cargo xtask lab up`).
    pub fn persist(mut self) -> State {
        let mut pids = Vec::new();
        if let Some(d) = self.delay.take() {
            pids.push((d.keep(), "synack-delay".to_string()));
        }
        for p in std::mem::take(&mut self.procs) {
            let label = p.label.clone();
            pids.push((p.keep(), label));
        }
        let Lab {
            client,
            mid,
            server,
            dir,
            delays,
            ..
        } = self;
        let (c, m, s) = (client.keep(), mid.keep(), server.keep());
        State {
            namespaces: vec![c.clone(), m.clone(), s.clone()],
            pids,
            dir: dir.keep(),
            client: c,
            mid: m,
            server: s,
            delays,
        }
    }
}

/// A URL on the lab's origin.
pub fn url(via: Via, tls: bool, v6: bool, path: &str) -> String {
    let port = match (via, tls) {
        (Via::Direct, false) => HTTP,
        (Via::Direct, true) => HTTPS,
        (Via::TcpProxy, false) => PROXY_HTTP,
        (Via::TcpProxy, true) => PROXY_HTTPS,
        (Via::HttpProxy, _) => SQUID_HTTP,
        (Via::TlsInterceptor, _) => INTERCEPT_HTTPS,
    };
    let scheme = if via == Via::TlsInterceptor || (tls && via != Via::HttpProxy) {
        "https"
    } else {
        "http"
    };
    let host = if v6 {
        format!("[{SERVER_V6}]")
    } else {
        SERVER_V4.to_string()
    };
    format!("{scheme}://{host}:{port}{path}")
}

/// Removes a persisted lab: stops the processes it started (checking that
/// each pid still runs the program it started), deletes its namespaces and
/// files.
pub fn down(state: &State) -> Result<()> {
    // Signals a pid only while it still runs the program the lab started.
    let signal = |pid: i32, name: &str, sig: i32| {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        // comm is cut at 15 characters.
        if comm.trim() == name.chars().take(15).collect::<String>() {
            // SAFETY: kill(2) on a pid we started and just checked.
            unsafe { libc::kill(pid, sig) };
        }
    };
    for (pid, name) in &state.pids {
        signal(*pid, name, libc::SIGTERM);
    }
    let _ = wait_for(Duration::from_secs(5), "lab processes to stop", || {
        state
            .pids
            .iter()
            .all(|(pid, _)| !Path::new(&format!("/proc/{pid}")).exists())
            .then_some(())
    });
    for (pid, name) in &state.pids {
        signal(*pid, name, libc::SIGKILL);
    }
    for ns in &state.namespaces {
        let _ = sh(&["ip", "netns", "del", ns]);
    }
    let _ = std::fs::remove_dir_all(&state.dir);
    Ok(())
}

/// Whether an address is one of the lab's.
pub fn is_lab_addr(ip: IpAddr) -> bool {
    [
        CLIENT_V4, MID_C_V4, MID_S_V4, SERVER_V4, CLIENT_V6, MID_C_V6, MID_S_V6, SERVER_V6,
    ]
    .iter()
    .any(|a| a.parse::<IpAddr>().ok() == Some(ip))
}
