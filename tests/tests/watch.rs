//! `synack watch` end to end, as root: the real programs in namespaces of the
//! test's own; curl and a keep-alive client (Python's http.client) make
//! known requests; every one must appear exactly once, with its method,
//! path, status and pid, and times that match tcpdump's.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::{
    collections::BTreeMap,
    fs,
    net::IpAddr,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};
use synack_tests::*;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn need_root() -> std::sync::MutexGuard<'static, ()> {
    let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        is_root(),
        "the watch tests load eBPF programs and create network namespaces: run them as root (cargo xtask test)"
    );
    g
}

/// A `synack watch --json` running in a namespace.
struct Watch {
    proc: Proc,
    out: PathBuf,
    err: PathBuf,
}

impl Watch {
    fn start(ns: &Netns, dir: &TempDir, args: &[&str]) -> Result<Self> {
        let out = dir.join(&format!("{}.jsonl", unique("watch")));
        let err = dir.join(&format!("{}.err", unique("watch")));
        let mut c = ns.command(synack_bin().to_str().context("synack path")?);
        c.args(["watch", "--json", "--summary-every", "0"])
            .args(args)
            .stdout(fs::File::create(&out)?)
            .stderr(fs::File::create(&err)?);
        let proc = Proc::spawn(c, "synack watch")?;
        let w = Watch { proc, out, err };
        wait_for(Duration::from_secs(20), "synack watch to attach", || {
            let e = fs::read_to_string(&w.err).unwrap_or_default();
            e.contains("synack watch: following").then_some(())
        })
        .with_context(|| fs::read_to_string(&w.err).unwrap_or_default())?;
        Ok(w)
    }

    /// Stops it with SIGINT (as Ctrl-C) and returns its records and stderr.
    fn stop(mut self) -> Result<(Vec<Value>, String)> {
        self.proc.signal(libc::SIGINT);
        let st = self.proc.wait_exit(Duration::from_secs(20))?;
        let err = fs::read_to_string(&self.err)?;
        if !st.success() {
            bail!("synack watch exited with {st}: {err}");
        }
        let recs = fs::read_to_string(&self.out)?
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<Vec<Value>, _>>()
            .context("synack watch printed non-JSON")?;
        Ok((recs, err))
    }
}

fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

struct Lab {
    pair: Pair,
    dir: TempDir,
    origin: Proc,
}

impl Lab {
    fn new() -> Result<Self> {
        let pair = Pair::new()?;
        let dir = TempDir::new()?;
        let ca = dir.join("ca.pem");
        let origin = start_origin(
            &pair.server,
            &sibling_bin("synack-origin"),
            &dir,
            &[
                "--http",
                "0.0.0.0:8080",
                "--http",
                "[::]:8080",
                "--https",
                "0.0.0.0:8443",
                "--san",
                "origin.test",
                "--ca-out",
                ca.to_str().context("path")?,
            ],
        )?;
        Ok(Lab { pair, dir, origin })
    }

    fn ca(&self) -> String {
        self.dir.join("ca.pem").to_string_lossy().into_owned()
    }
}

/// Runs a client to completion in a namespace; returns its pid.
fn run_client(ns: &Netns, program: &str, args: &[&str]) -> Result<u32> {
    let mut c = ns.command(program);
    c.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    run_cmd(c, program)
}

fn run_cmd(mut c: Command, label: &str) -> Result<u32> {
    let child = c.spawn().with_context(|| format!("starting {label}"))?;
    // `ip netns exec` execs the program: this pid is the client's own.
    let pid = child.id();
    let o = child.wait_with_output()?;
    if !o.status.success() {
        bail!("{label} failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(pid)
}

/// A keep-alive client that is not curl: several requests on one connection.
fn python_keepalive(ns: &Netns, ip: IpAddr, paths: &[&str]) -> Result<u32> {
    let code = format!(
        "import http.client\n\
         c = http.client.HTTPConnection('{ip}', 8080, timeout=10)\n\
         for p in {paths:?}:\n    c.request('GET', p)\n    r = c.getresponse()\n    r.read()\n\
         c.close()\n"
    );
    run_client(ns, "python3", &["-c", &code])
}

/// (pid, method, path, status, direction) of a record; path without host.
fn what(r: &Value) -> (u64, String, String, u64, String) {
    let url = r["url"].as_str().unwrap_or("");
    let after_scheme = url.split_once("://").map(|x| x.1).unwrap_or("");
    let path = after_scheme
        .find('/')
        .map(|i| after_scheme[i..].to_string())
        .unwrap_or_default();
    (
        r["pid"].as_u64().unwrap_or(0),
        r["method"].as_str().unwrap_or("").to_string(),
        path,
        r["http_status"].as_u64().unwrap_or(0),
        r["direction"].as_str().unwrap_or("").to_string(),
    )
}

fn counts<T: Ord>(v: impl IntoIterator<Item = T>) -> BTreeMap<T, usize> {
    let mut m = BTreeMap::new();
    for x in v {
        *m.entry(x).or_insert(0) += 1;
    }
    m
}

/// Payload turns of one connection in a capture: (from_local, first packet ts).
fn turns(pkts: &[Packet], local: (IpAddr, u16), remote: (IpAddr, u16)) -> Vec<(bool, u64)> {
    let mut out: Vec<(bool, u64)> = Vec::new();
    let mut high: BTreeMap<bool, u32> = BTreeMap::new();
    for p in pkts {
        let from_local = (p.src, p.sport) == local && (p.dst, p.dport) == remote;
        let from_remote = (p.src, p.sport) == remote && (p.dst, p.dport) == local;
        if !(from_local || from_remote) || p.payload_len == 0 {
            continue;
        }
        // Retransmissions are not new turns.
        let end = p.seq.wrapping_add(p.payload_len as u32);
        if let Some(h) = high.get(&from_local)
            && (end.wrapping_sub(*h) as i32) <= 0
        {
            continue;
        }
        high.insert(from_local, end);
        if out.last().is_none_or(|t| t.0 != from_local) {
            out.push((from_local, p.ts_ns));
        }
    }
    out
}

fn addr(v: &Value) -> (IpAddr, u16) {
    let s: std::net::SocketAddr = v.as_str().unwrap_or("").parse().expect("socket address");
    (s.ip(), s.port())
}

fn ms_of(r: &Value, k: &str) -> Option<f64> {
    r["wire"][k].as_f64()
}

/// The same noise policy as the active probe's tcpdump test (see
/// docs/json.md): tcpdump's tap and tc are a few microseconds apart, and on
/// these shared 2-vCPU machines an interrupt between them now and then adds
/// tens. Medians <= 25 us, at most 2 over 50 us, none over 250 us.
fn check_diffs(diffs: &[f64], what: &str) {
    assert!(!diffs.is_empty(), "no {what} to compare");
    let (med, max) = median_max(diffs);
    let over = diffs.iter().filter(|d| d.abs() > 50.0).count();
    eprintln!(
        "{what}: {} intervals, |synack - tcpdump| median {med:.1} us, max {max:.1} us, {over} over 50 us",
        diffs.len()
    );
    assert!(med <= 25.0, "{what}: median {med:.1} us");
    assert!(over <= 2, "{what}: {over} intervals over 50 us: {diffs:?}");
    assert!(max <= 250.0, "{what}: max {max:.1} us");
}

/// The acceptance test for the client side: curl (several URLs on
/// one connection, IPv4 and IPv6, POST, HTTPS) and a Python keep-alive
/// client; each request exactly once, right method, path (query dropped),
/// status and pid; SNI for TLS; handshake and TTFB within tcpdump's.
#[test]
fn every_request_once_with_its_process_and_tcpdump_times() -> Result<()> {
    let _serial = need_root();
    let lab = Lab::new()?;
    let p = &lab.pair;
    let cap = Capture::start(&p.client, &p.client_if, &lab.dir)?;
    let w = Watch::start(&p.client, &lab.dir, &[])?;

    let (v4, v6) = (host(p.server_v4), host(p.server_v6));
    let mut expected = Vec::new();
    let u = |h: &str, path: &str| format!("http://{h}:8080{path}");
    let pid = run_client(
        &p.client,
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            &u(&v4, "/delay/20?token=secret"),
            &u(&v4, "/delay/5"),
            &u(&v4, "/redirect/delay/1"),
        ],
    )?;
    for (path, status) in [
        ("/delay/20", 200),
        ("/delay/5", 200),
        ("/redirect/delay/1", 302),
    ] {
        expected.push((pid as u64, "GET".to_string(), path.to_string(), status));
    }
    let pid = run_client(
        &p.client,
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-X",
            "POST",
            "-d",
            "hello",
            &u(&v6, "/delay/15"),
        ],
    )?;
    expected.push((pid as u64, "POST".into(), "/delay/15".into(), 200));
    let paths = ["/delay/12", "/delay/3", "/delay/8", "/delay/3"];
    let pid = python_keepalive(&p.client, p.server_v4, &paths)?;
    for path in paths {
        expected.push((pid as u64, "GET".into(), path.into(), 200));
    }
    let ca = lab.ca();
    let tls_pid = run_client(
        &p.client,
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "--cacert",
            &ca,
            "--resolve",
            &format!("origin.test:8443:{}", p.server_v4),
            "https://origin.test:8443/delay/20",
        ],
    )?;

    // Every request is reported once its connection closed (the clients
    // have exited): wait for them, bounded, then stop.
    let want = expected.len() + 1;
    wait_for(
        Duration::from_secs(10),
        "watch to report every request",
        || {
            let n = fs::read_to_string(&w.out).ok()?.lines().count();
            (n >= want).then_some(())
        },
    )?;
    let (recs, err) = w.stop()?;
    let pkts = cap.finish()?;
    assert!(
        err.contains(&format!("synack watch: {want} requests")),
        "summary: {err}"
    );
    assert!(err.contains("lost: 0 events"), "summary: {err}");

    let plain: Vec<&Value> = recs.iter().filter(|r| r["tls"] == false).collect();
    let got = counts(plain.iter().map(|r| {
        let (pid, m, path, st, dir) = what(r);
        assert_eq!(dir, "client");
        (pid, m, path, st)
    }));
    assert_eq!(got, counts(expected.clone()), "each request exactly once");
    for r in &plain {
        assert!(!r["url"].as_str().unwrap_or("").contains("token"), "{r}");
        assert!(r["comm"] == "curl" || r["comm"] == "python3", "{r}");
        assert_eq!(r["mode"], "ebpf");
        assert!(r["error"].is_null(), "{r}");
        assert!(r["cgroup"].is_string(), "{r}");
    }
    let tls: Vec<&Value> = recs.iter().filter(|r| r["tls"] == true).collect();
    assert_eq!(tls.len(), 1, "one HTTPS request: {tls:?}");
    assert_eq!(tls[0]["sni"], "origin.test");
    assert_eq!(tls[0]["url"], "https://origin.test");
    assert_eq!(tls[0]["pid"].as_u64(), Some(tls_pid as u64));

    // Times against tcpdump, turn by turn on each connection.
    let (mut dh, mut dt) = (Vec::new(), Vec::new());
    let mut by_conn: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for r in &recs {
        by_conn
            .entry(r["local_addr"].as_str().unwrap_or("").to_string())
            .or_default()
            .push(r);
    }
    for (_, mut rs) in by_conn {
        rs.sort_by_key(|r| r["request_index"].as_u64());
        let (local, remote) = (addr(&rs[0]["local_addr"]), addr(&rs[0]["remote_addr"]));
        let t = truth(&pkts, local, remote, Duration::from_millis(3));
        if let (Some(h), Some(s)) = (t.handshake_ns, ms_of(rs[0], "handshake_rtt_ms")) {
            dh.push((s * 1e3 - h as f64 / 1e3).abs());
        } else {
            bail!("no handshake to compare for {local:?}");
        }
        let tr = turns(&pkts, local, remote);
        if rs[0]["tls"] == true {
            // The response is the first payload in after a silence (the
            // session tickets come before it); the request is the turn of
            // ours before it, as synack counts turns.
            let conn: Vec<&Packet> = pkts
                .iter()
                .filter(|p| {
                    ((p.src, p.sport) == local && (p.dst, p.dport) == remote)
                        || ((p.src, p.sport) == remote && (p.dst, p.dport) == local)
                })
                .collect();
            let resp = conn
                .windows(2)
                .find(|w| {
                    (w[1].src, w[1].sport) == remote
                        && w[1].payload_len > 0
                        && w[1].ts_ns - w[0].ts_ns >= 3_000_000
                })
                .map(|w| w[1].ts_ns)
                .context("tcpdump: the TLS response")?;
            let turn = tr
                .iter()
                .filter(|t| t.0 && t.1 < resp)
                .map(|t| t.1)
                .next_back()
                .context("tcpdump: the TLS request")?;
            // curl's TLS 1.3 Finished (a 6-byte ChangeCipherSpec and one
            // record of 5 + 48 (SHA-384) + 4 + 1 + 16 bytes: 80 at most) may
            // leave in a segment of its own just before the request: the
            // request is the next segment.
            let ours: Vec<&&Packet> = conn
                .iter()
                .filter(|p| (p.src, p.sport) == local && p.payload_len > 0)
                .filter(|p| p.ts_ns >= turn && p.ts_ns < resp)
                .collect();
            let req = match ours.as_slice() {
                [fin, next, ..] if fin.payload_len <= 80 => next.ts_ns,
                _ => turn,
            };
            let s = ms_of(rs[0], "ttfb_ms").context("ttfb")?;
            let d = (s * 1e3 - (resp - req) as f64 / 1e3).abs();
            if d > 50.0 {
                let segs: Vec<(u64, usize, bool)> = conn
                    .iter()
                    .filter(|p| p.payload_len > 0)
                    .map(|p| (p.ts_ns, p.payload_len, (p.src, p.sport) == local))
                    .collect();
                eprintln!(
                    "TLS {local:?}: synack {s} ms, tcpdump {} ms; segments {segs:?}; record {}",
                    (resp - req) as f64 / 1e6,
                    rs[0]["timeline"]
                );
            }
            dt.push(d);
            continue;
        }
        let pairs: Vec<(u64, u64)> = tr
            .windows(2)
            .filter(|w| w[0].0 && !w[1].0)
            .map(|w| (w[0].1, w[1].1))
            .collect();
        assert_eq!(
            pairs.len(),
            rs.len(),
            "one request turn per record on {local:?}"
        );
        for (r, (req, resp)) in rs.iter().zip(pairs) {
            let s = ms_of(r, "ttfb_ms").context("ttfb")?;
            let d = (s * 1e3 - (resp - req) as f64 / 1e3).abs();
            if d > 50.0 {
                eprintln!(
                    "{}: synack {s} ms, tcpdump {} ms",
                    r["url"],
                    (resp - req) as f64 / 1e6
                );
            }
            dt.push(d);
        }
    }
    check_diffs(&dh, "handshake RTT");
    check_diffs(&dt, "wire TTFB");
    Ok(())
}
