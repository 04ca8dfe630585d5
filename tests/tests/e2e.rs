//! End-to-end tests, as root: the real programs attached in namespaces of the
//! test's own, real packets, tcpdump as ground truth.

use anyhow::{Context, Result};
use serde_json::Value;
use std::{net::IpAddr, process::Stdio, time::Duration};
use synack_tests::*;

const INSPECT: &str = env!("CARGO_BIN_EXE_synack-inspect");

/// Timing tests must not share 2 cores with each other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn need_root() -> std::sync::MutexGuard<'static, ()> {
    let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        is_root(),
        "the end-to-end tests load eBPF programs and create network namespaces: run them as root (cargo xtask test)"
    );
    g
}

/// Runs synack in a namespace and returns (exit code, JSON records, stderr).
fn synack_json(ns: &Netns, args: &[&str]) -> Result<(i32, Vec<Value>, String)> {
    let bin = synack_bin();
    let o = ns
        .command(bin.to_str().context("synack path")?)
        .arg("--json")
        .args(args)
        .output()
        .context("running synack")?;
    let recs = json_lines(&o.stdout)?;
    Ok((
        o.status.code().unwrap_or(-1),
        recs,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    ))
}

fn sockaddr(v: &Value) -> (IpAddr, u16) {
    let s: std::net::SocketAddr = v
        .as_str()
        .expect("address string")
        .parse()
        .expect("socket address");
    (s.ip(), s.port())
}

fn url(ip: IpAddr, port: u16, tls: bool, path: &str) -> String {
    let scheme = if tls { "https" } else { "http" };
    match ip {
        IpAddr::V4(a) => format!("{scheme}://{a}:{port}{path}"),
        IpAddr::V6(a) => format!("{scheme}://[{a}]:{port}{path}"),
    }
}

type Lab = Served;

/// The acceptance test: handshake RTT and wire TTFB against tcpdump's
/// intervals for the same packets, IPv4 and IPv6, HTTP and HTTPS (with TLS 1.3
/// session tickets arriving before the response), |difference| <= 50 us.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn wire_times_match_tcpdump() -> Result<()> {
    let _serial = need_root();
    let lab = Lab::new()?;
    // A batch must hold entirely; one the host's noise broke (a vCPU
    // stolen between tcpdump's tap and tc's hook, hundreds of µs on these
    // shared VMs) is run again, at most LAB_BATCHES times: a real fault
    // fails every batch.
    holds("synack vs tcpdump", || wire_batch(&lab))
}

fn wire_batch(lab: &Lab) -> Result<()> {
    let p = &lab.pair;
    let cap = Capture::start(&p.client, &p.client_if, &lab.dir)?;
    const DELAY_MS: u64 = 20;
    let path = format!("/delay/{DELAY_MS}");
    let urls = [
        url(p.server_v4, 8080, false, &path),
        url(p.server_v4, 8443, true, &path),
        url(p.server_v6, 8080, false, &path),
        url(p.server_v6, 8443, true, &path),
    ];
    let ca = lab.ca();
    let mut args = vec![
        "--count",
        "13",
        "--cacert",
        &ca,
        "--interface",
        &p.client_if,
    ];
    args.extend(urls.iter().map(String::as_str));
    let (code, recs, stderr) = synack_json(&p.client, &args)?;
    let pkts = cap.finish()?;
    assert_eq!(code, 0, "synack failed: {stderr}");
    assert_eq!(recs.len(), 52, "one record per request");

    let (mut dh, mut dt) = (Vec::new(), Vec::new());
    for r in &recs {
        assert!(r["error"].is_null(), "request failed: {r}");
        assert_eq!(r["http_status"], 200);
        assert_eq!(r["mode"], "ebpf");
        assert_eq!(r["drops"]["ringbuf_full"], 0);
        let t = truth(
            &pkts,
            sockaddr(&r["local_addr"]),
            sockaddr(&r["remote_addr"]),
            Duration::from_millis(DELAY_MS / 2),
        );
        let hs = r["wire"]["handshake_rtt_ms"]
            .as_f64()
            .context("handshake_rtt_ms")?;
        let tt = r["wire"]["ttfb_ms"].as_f64().context("wire.ttfb_ms")?;
        let th = t.handshake_ns.context("tcpdump saw no handshake")? as f64 / 1e6;
        let tf = t.ttfb_ns.context("tcpdump saw no response")? as f64 / 1e6;
        dh.push((hs - th) * 1000.0);
        dt.push((tt - tf) * 1000.0);
        // Far off means a wrong packet was matched, not noise.
        assert!(
            (hs - th).abs() <= 0.250,
            "handshake: synack {hs} ms, tcpdump {th} ms ({})",
            r["url"]
        );
        assert!(
            (tt - tf).abs() <= 0.250,
            "wire TTFB: synack {tt} ms, tcpdump {tf} ms ({})",
            r["url"]
        );
        // One clock for both: the request is on the wire before write()
        // returns, the response on the wire before user space reads it.
        let at = |name: &str| -> Option<u64> {
            r["timeline"]
                .as_array()?
                .iter()
                .find(|e| e["event"] == name)?["t_ns"]
                .as_u64()
        };
        let (Some(ro), Some(rw), Some(ri), Some(fb)) = (
            at("request_out"),
            at("request_written"),
            at("response_in"),
            at("first_byte_read"),
        ) else {
            panic!("timeline incomplete: {r}");
        };
        assert!(ro <= rw && ri <= fb, "wire after user: {r}");
        if r["url"].as_str().is_some_and(|u| u.starts_with("https")) {
            assert!(
                r["wire"]["tls_rtt_ms"].as_f64().is_some(),
                "no TLS RTT: {r}"
            );
        }
    }
    let (hm, hx) = median_max(&dh);
    let (tm, tx) = median_max(&dt);
    let over = |v: &[f64]| v.iter().filter(|d| d.abs() > 50.0).count();
    eprintln!(
        "synack vs tcpdump over {} connections: handshake |diff| median {hm:.1} us max {hx:.1} us; \
         wire TTFB |diff| median {tm:.1} us max {tx:.1} us; over 50 us: {} and {}",
        recs.len(),
        over(&dh),
        over(&dt)
    );
    // tcpdump stamps a packet a few microseconds before tc ingress sees it
    // (the capture tap runs first) and after tc egress; the two agree to
    // ~15 us. On these shared 2-vCPU VMs an interrupt or a stolen vCPU
    // between the two hooks now and then adds tens of microseconds to one
    // packet, so the bound is: every interval within 50 us but for at most
    // 2 of 52 (each still within 250 us, checked above), medians within 25 us.
    assert!(hm <= 25.0 && tm <= 25.0, "median |diff| {hm} us / {tm} us");
    assert!(over(&dh) + over(&dt) <= 2, "handshake {dh:?}\nttfb {dt:?}");
    Ok(())
}

/// user.* against curl -w on the same targets: the same phases, within reason.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn user_times_agree_with_curl() -> Result<()> {
    let _serial = need_root();
    let lab = Lab::new()?;
    let p = &lab.pair;
    let ca = lab.ca();
    for tls in [false, true] {
        let u = url(p.server_v4, if tls { 8443 } else { 8080 }, tls, "/delay/15");
        let (code, recs, err) = synack_json(&p.client, &["--count", "7", "--cacert", &ca, &u])?;
        assert_eq!(code, 0, "{err}");
        let mut ours = Vec::new();
        let mut curls = Vec::new();
        for r in &recs {
            ours.push(r["user"]["ttfb_ms"].as_f64().context("ttfb")?);
        }
        for _ in 0..7 {
            let out = p.client.exec(&[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "--cacert",
                &ca,
                "-w",
                "%{time_pretransfer} %{time_starttransfer}",
                &u,
            ])?;
            let v: Vec<f64> = out
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            curls.push((v[1] - v[0]) * 1000.0);
        }
        ours.sort_by(f64::total_cmp);
        curls.sort_by(f64::total_cmp);
        let (a, b) = (ours[3], curls[3]);
        eprintln!("{u}: user TTFB median synack {a:.3} ms, curl {b:.3} ms");
        // Both include the 15 ms think time; they differ by client overheads only.
        assert!(a >= 15.0 && b >= 15.0, "think time missing: {a} {b}");
        assert!((a - b).abs() < 5.0, "synack {a} ms vs curl {b} ms");
    }
    Ok(())
}

/// A refused connection is a record with an error and the wire events it
/// had, and a non-zero exit status.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn refused_connection_is_reported() -> Result<()> {
    let _serial = need_root();
    let lab = Lab::new()?;
    let p = &lab.pair;
    let u = url(p.server_v6, 9, false, "/");
    let (code, recs, _) = synack_json(&p.client, &[&u])?;
    assert_eq!(code, 1);
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(r["error"]["kind"], "connect_refused");
    let events: Vec<&str> = r["timeline"]
        .as_array()
        .context("timeline")?
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert!(events.contains(&"syn_out"), "{events:?}");
    assert!(events.contains(&"rst_in"), "{events:?}");
    Ok(())
}

/// --reuse: the second request on a connection has its own wire TTFB and no
/// handshake of its own; -L follows a redirect with a new timeline.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn reuse_and_redirects() -> Result<()> {
    let _serial = need_root();
    let lab = Lab::new()?;
    let p = &lab.pair;
    let ca = lab.ca();
    let u = url(p.server_v4, 8443, true, "/delay/10");
    let (code, recs, err) = synack_json(&p.client, &["--reuse", "3", "--cacert", &ca, &u])?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(recs.len(), 3);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["request_index"], i);
        assert_eq!(r["connection_reused"], i > 0);
        assert_eq!(r["local_addr"], recs[0]["local_addr"], "one connection");
        let tt = r["wire"]["ttfb_ms"].as_f64().context("wire ttfb")?;
        assert!(tt >= 10.0, "wire TTFB {tt} must include the think time");
        assert_eq!(r["user"]["connect_ms"].is_null(), i > 0);
    }
    let u = url(p.server_v4, 8080, false, "/redirect/delay/1");
    let (code, recs, err) = synack_json(&p.client, &["-L", &u])?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0]["http_status"], 302);
    assert_eq!(recs[1]["http_status"], 200);
    assert_eq!(recs[1]["redirect_hop"], 1);
    assert!(
        recs[1]["url"]
            .as_str()
            .is_some_and(|s| s.ends_with("/delay/1"))
    );
    // Same origin: followed on the first hop's connection, as curl does,
    // and still timed on the wire.
    assert_eq!(recs[0]["local_addr"], recs[1]["local_addr"]);
    assert_eq!(recs[1]["connection_reused"], true);
    assert_eq!(recs[1]["request_index"], 1);
    assert!(recs[1]["wire"]["ttfb_ms"].as_f64().is_some(), "{}", recs[1]);
    Ok(())
}

fn clsact_filters(ns: &Netns, ifn: &str) -> Result<String> {
    let mut s = String::new();
    for dir in ["ingress", "egress"] {
        s += &ns
            .exec(&["tc", "filter", "show", "dev", ifn, dir])
            .unwrap_or_default();
    }
    Ok(s)
}

/// After synack ends (normally, by SIGINT, by SIGKILL, by SIGABRT: what a
/// panic that aborts comes to) nothing of it stays attached: no tcx link,
/// no clsact filter, and its programs are unloaded.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn nothing_stays_attached() -> Result<()> {
    let _serial = need_root();
    let lab = Lab::new()?;
    let p = &lab.pair;
    let ifaces = ["lo", p.client_if.as_str()];
    for how in ["exit", "sigint", "sigkill", "sigabrt"] {
        let delay = if how == "exit" {
            "/delay/600"
        } else {
            "/delay/30000"
        };
        let u = url(p.server_v4, 8080, false, delay);
        let mut c = p.client.command(synack_bin().to_str().context("path")?);
        c.args(["--json", &u])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut proc = Proc::spawn(c, "synack")?;
        let ids = wait_for(
            Duration::from_secs(20),
            "synack's programs to attach",
            || {
                attached(INSPECT, &p.client, &ifaces, &[])
                    .ok()
                    .map(|(a, _)| a)
                    .filter(|a| a.len() == 2 * ifaces.len())
            },
        )?;
        match how {
            "sigint" => proc.signal(libc::SIGINT),
            "sigkill" => proc.signal(libc::SIGKILL),
            "sigabrt" => proc.signal(libc::SIGABRT),
            _ => {}
        }
        let st = proc.wait_exit(Duration::from_secs(20))?;
        if how == "exit" {
            assert!(st.success(), "synack failed: {st}");
        }
        wait_detached(INSPECT, &p.client, &ifaces, &ids).with_context(|| format!("after {how}"))?;
        for i in ifaces {
            let f = clsact_filters(&p.client, i)?;
            assert!(!f.contains("synack"), "{how}: filter left on {i}: {f}");
        }
    }
    Ok(())
}

/// Only the prober's own connections are tracked: a curl running next to
/// synack on the same interfaces produces no events and no records.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn other_traffic_is_not_tracked() -> Result<()> {
    let _serial = need_root();
    let lab = Lab::new()?;
    let p = &lab.pair;
    let slow = url(p.server_v4, 8080, false, "/delay/400");
    let mut c = p.client.command(synack_bin().to_str().context("path")?);
    c.args(["--json", &slow])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let child = c.spawn()?;
    let other = url(p.server_v4, 8080, false, "/");
    for _ in 0..5 {
        p.client.exec(&["curl", "-s", "-o", "/dev/null", &other])?;
    }
    let out = child.wait_with_output()?;
    let recs = json_lines(&out.stdout)?;
    assert_eq!(recs.len(), 1);
    let syns = recs[0]["timeline"]
        .as_array()
        .context("timeline")?
        .iter()
        .filter(|e| e["event"] == "syn_out")
        .count();
    assert_eq!(syns, 1, "only synack's own SYN: {}", recs[0]);
    Ok(())
}

/// What a killed run leaves (a namespace with a process in it, a temporary
/// directory) is removed by the next run.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn leftovers_of_a_killed_run_are_swept() -> Result<()> {
    let _serial = need_root();
    // A pid that existed and is gone: a child we ran and reaped.
    let mut c = std::process::Command::new("true").spawn()?;
    let dead = c.id();
    c.wait()?;
    let ns_name = format!("sk{}-zz", b36(dead));
    sh(&["ip", "netns", "add", &ns_name])?;
    let mut sleeper = std::process::Command::new("ip")
        .args(["netns", "exec", &ns_name, "sleep", "60"])
        .spawn()?;
    let dir = std::env::temp_dir().join(format!("synack-test-{}-zz", b36(dead)));
    std::fs::create_dir_all(&dir)?;
    wait_for(
        Duration::from_secs(5),
        "the sleeper to run in the namespace",
        || {
            (!sh(&["ip", "netns", "pids", &ns_name])
                .ok()?
                .trim()
                .is_empty())
            .then_some(())
        },
    )?;
    sweep_stale();
    let listed = sh(&["ip", "netns", "list"])?;
    let gone = !listed
        .lines()
        .any(|l| l.split_whitespace().next() == Some(ns_name.as_str()));
    let st = wait_for(Duration::from_secs(5), "the sleeper to be killed", || {
        sleeper.try_wait().ok().flatten()
    });
    if !gone {
        let _ = sh(&["ip", "netns", "del", &ns_name]);
    }
    let _ = sleeper.kill();
    assert!(gone, "namespace {ns_name} left: {listed}");
    assert!(st.is_ok(), "the process inside was not stopped");
    assert!(!dir.exists(), "{} left", dir.display());
    Ok(())
}

/// Least privilege: once attached, synack keeps no capability (the active
/// probe) or only CAP_SYS_PTRACE and CAP_NET_ADMIN (watch, to name other
/// users' sockets and attach to new interfaces), and
/// still measures: map updates and the ring buffer go through the
/// descriptors it holds.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn capabilities_are_dropped_after_attaching() -> Result<()> {
    let _serial = need_root();
    let lab = Lab::new()?;
    let p = &lab.pair;
    let bin = synack_bin();
    let bin = bin.to_str().context("path")?;
    let mut c = p.client.command(bin);
    c.args(["--json", &url(p.server_v4, 8080, false, "/delay/1500")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut probe = Proc::spawn(c, "synack")?;
    let pid = probe.pid();
    let caps = wait_for(
        Duration::from_secs(10),
        "synack to drop its capabilities",
        || cap_eff(pid).filter(|&c| c == 0),
    );
    let st = probe.wait_exit(Duration::from_secs(20))?;
    let mut out = String::new();
    if let Some(mut o) = probe.child.stdout.take() {
        use std::io::Read;
        o.read_to_string(&mut out)?;
    }
    caps.with_context(|| format!("CapEff of synack: {:?}", cap_eff(pid)))?;
    assert!(st.success(), "synack failed: {out}");
    let r: Value = serde_json::from_str(out.lines().next().context("no record")?)?;
    assert!(r["error"].is_null(), "{r}");
    assert!(r["wire"]["handshake_rtt_ms"].as_f64().is_some(), "{r}");
    assert!(r["wire"]["ttfb_ms"].as_f64().is_some(), "{r}");
    assert_eq!(r["drops"]["ringbuf_full"], 0);

    // watch keeps CAP_SYS_PTRACE (bit 19) and, to attach to interfaces that
    // come up later, CAP_NET_ADMIN (bit 12).
    let err = lab.dir.join("watch.err");
    let mut c = p.client.command(bin);
    c.args(["watch", "--summary-every", "0"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err)?);
    let w = Proc::spawn(c, "synack watch")?;
    let wpid = w.pid();
    wait_for(Duration::from_secs(20), "watch to attach and drop", || {
        let e = std::fs::read_to_string(&err).ok()?;
        (e.contains("synack watch: following") && cap_eff(wpid) == Some((1 << 19) | (1 << 12)))
            .then_some(())
    })
    .with_context(|| format!("CapEff of watch: {:x?}", cap_eff(wpid)))?;
    Ok(())
}

/// synack's object has no CO-RE relocation, so loading it must not read
/// the kernel's BTF (/sys/kernel/btf/vmlinux, about 5 MB, parsed into more:
/// most of start-up's peak memory). aya 0.14 read it always; the workspace
/// patches aya (third_party/aya). The bytes a process has read (rchar in
/// /proc/PID/io) tell: with the read, they exceed the file's size.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn loading_reads_no_kernel_btf() -> Result<()> {
    let _serial = need_root();
    let btf = std::fs::metadata("/sys/kernel/btf/vmlinux")
        .context("this kernel has no /sys/kernel/btf/vmlinux: nothing to check")?
        .len();
    assert!(btf > 1 << 20, "vmlinux BTF is only {btf} bytes");
    let lab = Lab::new()?;
    let p = &lab.pair;
    let bin = synack_bin();
    let err = lab.dir.join("btf-watch.err");
    let mut c = p.client.command(bin.to_str().context("path")?);
    c.args(["watch", "--summary-every", "0"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err)?);
    let w = Proc::spawn(c, "synack watch")?;
    let pid = w.pid();
    wait_for(Duration::from_secs(20), "watch to attach", || {
        std::fs::read_to_string(&err)
            .ok()
            .filter(|e| e.contains("synack watch: following"))
    })?;
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    let rchar: u64 = io
        .lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .context("no rchar in /proc/PID/io")?
        .trim()
        .parse()?;
    assert!(
        rchar < btf / 2,
        "synack read {rchar} bytes before attaching, the kernel's BTF is {btf}: \
         the loader parsed it (is aya's patch in third_party/aya applied?)"
    );
    Ok(())
}

/// Several synack processes on one host at once, in one namespace: an
/// active probe, `synack watch` and `synack monitor`. Each has its own
/// programs and maps; none disturbs the others' results, and watch sees
/// every request the other two make.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn active_watch_and_monitor_run_side_by_side() -> Result<()> {
    let _serial = need_root();
    let lab = Lab::new()?;
    let p = &lab.pair;
    let bin = synack_bin();
    let bin = bin.to_str().context("path")?;
    let wout = lab.dir.join("watch.jsonl");
    let werr = lab.dir.join("watch.err");
    let mut c = p.client.command(bin);
    c.args(["watch", "--json", "--summary-every", "0", "--port", "8080"])
        .stdout(std::fs::File::create(&wout)?)
        .stderr(std::fs::File::create(&werr)?);
    let mut watch = Proc::spawn(c, "synack watch")?;
    wait_for(Duration::from_secs(20), "watch to attach", || {
        std::fs::read_to_string(&werr)
            .ok()
            .filter(|e| e.contains("synack watch: following"))
            .map(|_| ())
    })?;
    let targets = lab.dir.join("targets.txt");
    std::fs::write(
        &targets,
        format!("{} name=t\n", url(p.server_v4, 8080, false, "/delay/5")),
    )?;
    let mout = lab.dir.join("monitor.jsonl");
    let mut c = p.client.command(bin);
    c.args(["monitor", "--json", "--interval", "300ms", "--targets"])
        .arg(&targets)
        .stdout(std::fs::File::create(&mout)?)
        .stderr(Stdio::null());
    let mut monitor = Proc::spawn(c, "synack monitor")?;
    let (code, active, err) = synack_json(
        &p.client,
        &["--count", "5", &url(p.server_v4, 8080, false, "/delay/10")],
    )?;
    assert_eq!(code, 0, "{err}");
    wait_for(Duration::from_secs(20), "the monitor's checks", || {
        let n = std::fs::read_to_string(&mout).ok()?.lines().count();
        (n >= 3).then_some(())
    })?;
    monitor.signal(libc::SIGTERM);
    assert!(monitor.wait_exit(Duration::from_secs(10))?.success());
    let checks = json_lines(&std::fs::read(&mout)?)?;
    // Let watch see the monitor's last connection close, then stop it.
    let want = active.len() + checks.len();
    wait_for(Duration::from_secs(10), "watch to report both", || {
        let n = std::fs::read_to_string(&wout).ok()?.lines().count();
        (n >= want).then_some(())
    })?;
    watch.signal(libc::SIGINT);
    assert!(watch.wait_exit(Duration::from_secs(10))?.success());
    let seen = json_lines(&std::fs::read(&wout)?)?;

    assert_eq!(active.len(), 5);
    for r in active.iter().chain(checks.iter()) {
        assert!(r["error"].is_null(), "{r}");
        assert_eq!(r["mode"], "ebpf");
        assert!(r["wire"]["ttfb_ms"].as_f64().is_some(), "{r}");
        assert_eq!(r["drops"]["ringbuf_full"], 0, "{r}");
    }
    assert!(checks.iter().all(|r| r["check_success"] == true));
    let by_comm = |c: &str| seen.iter().filter(|r| r["comm"] == c).count();
    // Every request, plus at most the one check the monitor had in flight
    // when it was stopped (sent, so seen by watch, but never reported).
    assert!(
        seen.len() == want || seen.len() == want + 1,
        "watch saw {} requests for {want}: {seen:?}",
        seen.len()
    );
    assert_eq!(
        by_comm("synack"),
        seen.len(),
        "all of them from synack processes"
    );
    Ok(())
}

/// The clsact fallback (kernels without tcx, forced here with
/// SYNACK_TC_ATTACH=netlink): a normal end removes the filters; a SIGKILL
/// cannot, so they stay, and the next synack to start in the namespace
/// removes them, says so, and leaves nothing behind itself, while the
/// filters of a synack that still runs, on the same interfaces, stay.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn netlink_filters_of_a_killed_synack_are_removed_at_the_next_start() -> Result<()> {
    let _serial = need_root();
    let lab = Lab::new()?;
    let p = &lab.pair;
    let run_dir = lab.dir.join("run");
    let ledgers = run_dir.join("filters");
    let ifaces = ["lo", p.client_if.as_str()];
    let bin = synack_bin();
    let bin = bin.to_str().context("path")?;
    let synack_filters = |i: &str| -> Result<usize> {
        Ok(clsact_filters(&p.client, i)?
            .lines()
            .filter(|l| l.contains("synack_"))
            .count())
    };
    let files = || std::fs::read_dir(&ledgers).map(|d| d.count()).unwrap_or(0);
    let watch = |what: &str| -> Result<Proc> {
        let err = lab.dir.join(&format!("{what}.err"));
        let mut c = p.client.command(bin);
        c.args(["watch", "--summary-every", "0"])
            .env("SYNACK_TC_ATTACH", "netlink")
            .env("SYNACK_RUN_DIR", &run_dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err)?);
        let w = Proc::spawn(c, "synack watch")?;
        wait_for(Duration::from_secs(20), "watch to attach", || {
            std::fs::read_to_string(&err)
                .ok()
                .filter(|e| e.contains("(Netlink)"))
        })
        .with_context(|| std::fs::read_to_string(&err).unwrap_or_default())?;
        Ok(w)
    };
    // A normal end (SIGTERM) detaches and removes its ledger and lock.
    let end_cleanly = |mut w: Proc, when: &str| -> Result<()> {
        w.signal(libc::SIGTERM);
        assert!(w.wait_exit(Duration::from_secs(20))?.success());
        for i in ifaces {
            assert_eq!(synack_filters(i)?, 0, "{when}, on {i}");
        }
        assert_eq!(files(), 0, "ledger left {when}");
        Ok(())
    };

    let w = watch("term")?;
    for i in ifaces {
        assert_eq!(synack_filters(i)?, 2, "ingress and egress on {i}");
    }
    assert_eq!(files(), 2, "a ledger and its lock");
    end_cleanly(w, "after SIGTERM")?;

    // One that keeps running through what follows.
    let live = watch("live")?;
    // SIGKILL: the filters stay...
    let mut w = watch("kill")?;
    let pid = w.pid();
    w.signal(libc::SIGKILL);
    w.wait_exit(Duration::from_secs(20))?;
    for i in ifaces {
        assert_eq!(
            synack_filters(i)?,
            4,
            "the live one's and the killed one's on {i}"
        );
    }
    // ...until the next synack starts.
    let u = url(p.server_v4, 8080, false, "/delay/1");
    let o = p
        .client
        .command(bin)
        .args(["--mode", "ebpf", "--json", &u])
        .env("SYNACK_TC_ATTACH", "netlink")
        .env("SYNACK_RUN_DIR", &run_dir)
        .output()?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "removed 4 tc filter(s) left attached by synack pid {pid}"
        )),
        "{err}"
    );
    assert!(!err.contains("cannot"), "{err}");
    let r: Value = serde_json::from_slice(&o.stdout)?;
    assert!(r["wire"]["ttfb_ms"].as_f64().is_some(), "{r}");
    for i in ifaces {
        assert_eq!(synack_filters(i)?, 2, "only the live one's on {i}");
    }
    assert_eq!(files(), 2, "only the live one's ledger and lock");
    end_cleanly(live, "at the end")
}

/// Kernel features synack does without, or says plainly that it lacks:
/// with no kernel BTF (/sys/kernel/btf) and no tracefs or debugfs (hidden
/// under empty mounts in a private mount namespace) the probe and watch
/// work, as they use neither CO-RE nor tracepoints; on a kernel older than
/// 5.8 (uname faked by setarch --uname-2.6) `--mode ebpf` fails with a
/// plain message and auto falls back to unprivileged.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn no_btf_no_tracefs_and_an_old_kernel() -> Result<()> {
    let _serial = need_root();
    let lab = Lab::new()?;
    let p = &lab.pair;
    let bin = synack_bin();
    let bin = bin.to_str().context("path")?;
    let u = url(p.server_v4, 8080, false, "/delay/2");
    let hide = "for d in /sys/kernel/btf /sys/kernel/tracing /sys/kernel/debug; do \
                mount -t tmpfs none $d || exit 9; done; \
                test -z \"$(ls /sys/kernel/btf)\" || exit 8; exec \"$@\"";
    let hidden = |args: &[&str]| -> Result<std::process::Output> {
        Ok(p.client
            .command("unshare")
            .args(["-m", "sh", "-c", hide, "sh", bin])
            .args(args)
            .output()?)
    };
    let o = hidden(&["--mode", "ebpf", "--json", &u])?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "without BTF and tracefs: {err}");
    let r: Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(r["mode"], "ebpf");
    assert!(r["wire"]["ttfb_ms"].as_f64().is_some(), "{r}");
    assert!(r["wire"]["synack_ttl"].as_u64().is_some(), "{r}");
    let o = hidden(&["watch", "--duration", "1s", "--summary-every", "0"])?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "watch without BTF and tracefs: {err}");
    assert!(err.contains("synack watch: following"), "{err}");

    let old = |mode: &str| -> Result<std::process::Output> {
        Ok(p.client
            .command("setarch")
            .args(["x86_64", "--uname-2.6", bin, "--mode", mode, "--json", &u])
            .output()?)
    };
    let o = old("ebpf")?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("needs Linux 5.8 or later"), "{err}");
    assert!(
        err.contains("--mode unprivileged works on any kernel"),
        "{err}"
    );
    let o = old("auto")?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("eBPF not used"), "{err}");
    let r: Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(r["mode"], "unprivileged", "{r}");
    assert!(r["wire"]["ttfb_ms"].as_f64().is_some(), "{r}");
    Ok(())
}

/// `synack monitor` when an interface it is attached to disappears: it says
/// so, and the checks go on with their wire times (through the interfaces
/// that remain).
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn monitor_goes_on_when_an_interface_goes() -> Result<()> {
    let _serial = need_root();
    let lab = Lab::new()?;
    let p = &lab.pair;
    p.client.exec(&[
        "ip",
        "link",
        "add",
        "synack-m1",
        "type",
        "veth",
        "peer",
        "name",
        "synack-m1p",
    ])?;
    for n in ["synack-m1", "synack-m1p"] {
        p.client.exec(&["ip", "link", "set", n, "up"])?;
    }
    let targets = lab.dir.join("targets.txt");
    std::fs::write(
        &targets,
        format!("http://{}:8080/delay/2 name=origin\n", p.server_v4),
    )?;
    let (out, err) = (lab.dir.join("monitor.jsonl"), lab.dir.join("monitor.err"));
    let mut c = p.client.command(synack_bin().to_str().context("path")?);
    c.args([
        "monitor",
        "--mode",
        "ebpf",
        "--json",
        "--interval",
        "1s",
        "--targets",
    ])
    .arg(&targets)
    .stdout(std::fs::File::create(&out)?)
    .stderr(std::fs::File::create(&err)?);
    let mut m = Proc::spawn(c, "synack monitor")?;
    let records = || -> Vec<Value> {
        json_lines(&std::fs::read(&out).unwrap_or_default()).unwrap_or_default()
    };
    wait_for(Duration::from_secs(20), "a first check", || {
        (!records().is_empty()).then_some(())
    })
    .with_context(|| std::fs::read_to_string(&err).unwrap_or_default())?;
    p.client.exec(&["ip", "link", "del", "synack-m1"])?;
    wait_for(
        Duration::from_secs(10),
        "the interface to be reported gone",
        || {
            std::fs::read_to_string(&err)
                .ok()
                .filter(|e| e.contains("synack monitor: interface synack-m1 (index"))
        },
    )
    .with_context(|| std::fs::read_to_string(&err).unwrap_or_default())?;
    let before = records().len();
    let later = wait_for(Duration::from_secs(10), "a check after that", || {
        let r = records();
        (r.len() > before).then(|| r[r.len() - 1].clone())
    })?;
    assert!(later["error"].is_null(), "{later}");
    assert!(later["wire"]["ttfb_ms"].as_f64().is_some(), "{later}");
    m.signal(libc::SIGTERM);
    let st = m.wait_exit(Duration::from_secs(10))?;
    assert!(
        st.success(),
        "{st}: {}",
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    Ok(())
}
