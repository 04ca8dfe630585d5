//! synack's benchmarks (`cargo xtask bench [--quick]`, as root): accuracy
//! against tcpdump and curl, the classifiers' cost per packet, throughput
//! under load next to tcpdump, and how many new connections per second
//! `synack watch` follows without loss. Every comparison is measured side
//! by side in one run (these machines are shared and noisy): ratios and
//! medians, not single absolute times. Writes a JSON file and prints a table.
//!
//! `synack-bench gen RATE SECS HOST:PORT` is the connection generator the
//! scale step runs inside a namespace (one short HTTP/1.0 request per
//! connection, paced). `synack-bench noop IFACE` attaches the object's
//! no-op classifier to both directions of IFACE until it is stopped: the
//! baseline the run-time statistics are taken net of. `synack-bench startup
//! BIN...` compares builds' start-up and peak memory side by side.
//! `synack-bench monitor-scale [--targets N] [--seconds S] [--quick]` runs
//! `synack monitor` on N targets at a 10 s interval for S measured seconds
//! (default 10,000 and 120) with the targets file rewritten every 5 s and
//! /metrics scraped every 15 s, and prints its CPU, RSS and checks as JSON.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::{
    fs,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};
use synack_tests::{
    Capture, Netns, Packet, Proc, Served, TempDir, synack_bin,
    testrun::{self, median},
    topo::{Bins, Delays, Lab, Via, url},
    truth, unique, wait_for,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = if args.first().map(String::as_str) == Some("gen") {
        generator(&args[1..])
    } else if args.first().map(String::as_str) == Some("testrun") {
        testrun_only(&args[1..])
    } else if args.first().map(String::as_str) == Some("noop") {
        noop(&args[1..])
    } else if args.first().map(String::as_str) == Some("startup") {
        startup(&args[1..])
    } else if args.first().map(String::as_str) == Some("monitor-scale") {
        let quick = args.iter().any(|a| a == "--quick");
        let n = arg_value(&args, "--targets").and_then(|v| v.parse().ok());
        let secs = arg_value(&args, "--seconds").and_then(|v| v.parse().ok());
        monitor_scale(quick, n, secs)
            .map(|v| println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()))
    } else {
        bench(&args)
    };
    if let Err(e) = r {
        eprintln!("synack-bench: {e:#}");
        std::process::exit(1);
    }
}

/// Percentiles of absolute values: (median, p99, max).
fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut a: Vec<f64> = v.iter().map(|x| x.abs()).collect();
    a.sort_by(f64::total_cmp);
    if a.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let at = |q: f64| a[((a.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), a[a.len() - 1])
}

fn bench(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench/results.json"));
    if !synack_tests::is_root() {
        bail!("the benchmarks build namespaces and load eBPF programs: run them as root");
    }
    let started = Instant::now();
    let mut results = serde_json::Map::new();
    results.insert("quick".into(), quick.into());
    results.insert("synack".into(), synack_bin().display().to_string().into());

    eprintln!("bench: classifier cost per packet (BPF_PROG_TEST_RUN)");
    let before = arg_value(args, "--before").map(PathBuf::from);
    let tr = testrun::test_run(quick, &testrun::default_object(), before.as_deref())?;
    for k in ["untracked_ns", "tracked_ns", "noop_ns"] {
        results.insert(k.into(), tr[k].clone());
    }
    results.insert("test_run".into(), tr);
    eprintln!("bench: accuracy (lab, tcpdump, curl)");
    results.insert("accuracy".into(), accuracy(quick)?);
    eprintln!("bench: cost per packet (kernel BPF run-time statistics)");
    results.insert("cost_per_packet".into(), cost_per_packet(quick)?);
    eprintln!("bench: overhead under load (wrk)");
    results.insert("overhead".into(), overhead(quick)?);
    eprintln!("bench: scale of synack watch");
    results.insert("scale".into(), scale(quick)?);
    eprintln!("bench: scale of synack monitor (targets at a 10 s interval)");
    results.insert("monitor_scale".into(), monitor_scale(quick, None, None)?);
    summarize(&mut results);
    results.insert(
        "duration_s".into(),
        json!(started.elapsed().as_secs_f64().round()),
    );
    let v = Value::Object(results);
    if let Some(d) = out.parent() {
        fs::create_dir_all(d)?;
    }
    fs::write(&out, serde_json::to_string_pretty(&v)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("{}", table(&v));
    eprintln!("bench: results in {}", out.display());
    Ok(())
}

/// The figures at the top of results.json, each a median over the
/// rounds kept below it; a figure that could not be measured is null with
/// the reason in `notes`.
fn summarize(r: &mut serde_json::Map<String, Value>) {
    let mut notes = serde_json::Map::new();
    let mut num = |key: &str, v: f64, why: &str| {
        if v.is_finite() {
            json!(v)
        } else {
            notes.insert(key.into(), json!(why));
            Value::Null
        }
    };
    let g = |r: &serde_json::Map<String, Value>, path: &[&str]| {
        let mut x = r.get(path[0]).unwrap_or(&Value::Null);
        for k in &path[1..] {
            x = &x[*k];
        }
        x.as_f64().unwrap_or(f64::NAN)
    };
    let mut put = Vec::new();
    for (key, path, why) in [
        (
            "idle_attached_rps_ratio",
            &["overhead", "idle_ratio"][..],
            "no wrk round completed",
        ),
        (
            "watch_rps_ratio",
            &["overhead", "watch_ratio"],
            "no wrk round completed",
        ),
        (
            "tcpdump_rps_ratio",
            &["overhead", "tcpdump_ratio"],
            "no wrk round completed",
        ),
        (
            "watch_cpu_us_per_request",
            &["overhead", "watch_cpu_us_per_request"],
            "watch printed no line or its CPU time could not be read",
        ),
        (
            "conn_per_s_held",
            &["scale", "max_lossless_cps"],
            "no step held",
        ),
        (
            "startup_ms",
            &["scale", "startup_ms_median"],
            "synack watch never attached",
        ),
        (
            "rss_probe_mib",
            &["scale", "probe_peak_rss_mib"],
            "/usr/bin/time gave no figure",
        ),
        ("rss_watch_mib", &["scale", "peak_rss_mib"], "no step held"),
    ] {
        let v = num(key, g(r, path), why);
        put.push((key, v));
    }
    let ovh = json!({
        "synack": num("user_ttfb_overhead_us.synack", g(r, &["accuracy", "user_ttfb", "synack_minus_wire_median_us"]), "no plain-HTTP record matched the capture"),
        "curl": num("user_ttfb_overhead_us.curl", g(r, &["accuracy", "user_ttfb", "curl_minus_wire_median_us"]), "no curl request matched the capture"),
    });
    let mut acc = serde_json::Map::new();
    for k in ["handshake_rtt", "tls_rtt", "wire_ttfb"] {
        let mut m = serde_json::Map::new();
        for (out, inner) in [
            ("median", "median_us"),
            ("p99", "p99_us"),
            ("max", "max_us"),
        ] {
            let key = format!("accuracy_us.{k}.{out}");
            m.insert(
                out.into(),
                num(
                    &key,
                    g(r, &["accuracy", k, inner]),
                    "no connection matched the capture",
                ),
            );
        }
        acc.insert(k.into(), Value::Object(m));
    }
    for (k, v) in put {
        r.insert(k.into(), v);
    }
    r.insert("user_ttfb_overhead_us".into(), ovh);
    r.insert("accuracy_us".into(), Value::Object(acc));
    r.insert("notes".into(), Value::Object(notes));
}

fn arg_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// `synack-bench testrun [--quick] [--before OBJECT] [--object OBJECT]`:
/// only the classifiers' cost per packet (seconds, no lab), this build and
/// optionally another side by side.
fn testrun_only(args: &[String]) -> Result<()> {
    if !synack_tests::is_root() {
        bail!("BPF_PROG_TEST_RUN needs root");
    }
    let quick = args.iter().any(|a| a == "--quick");
    let object = arg_value(args, "--object")
        .map(PathBuf::from)
        .unwrap_or_else(testrun::default_object);
    let before = arg_value(args, "--before").map(PathBuf::from);
    let v = testrun::test_run(quick, &object, before.as_deref())?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    eprint!("{}", testrun::table(&v));
    Ok(())
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_f64().unwrap_or(f64::NAN)
}

fn table(v: &Value) -> String {
    let mut s = String::new();
    let a = &v["accuracy"];
    s.push_str(&format!(
        "accuracy: |synack - tcpdump| over {} connections (us)          median      p99      max\n",
        a["connections"]
    ));
    for k in ["handshake_rtt", "tls_rtt", "wire_ttfb"] {
        s.push_str(&format!(
            "  {k:<58}{:>9.1}{:>9.1}{:>9.1}\n",
            f(a, &[k, "median_us"]),
            f(a, &[k, "p99_us"]),
            f(a, &[k, "max_us"])
        ));
    }
    s.push_str(&format!(
        "  user-space TTFB minus wire TTFB, median (us): synack {:.1}, curl -w {:.1} ({} requests each)\n",
        f(a, &["user_ttfb", "synack_minus_wire_median_us"]),
        f(a, &["user_ttfb", "curl_minus_wire_median_us"]),
        a["user_ttfb"]["requests"]
    ));
    if v["test_run"].is_object() {
        s.push_str(&testrun::table(&v["test_run"]));
    }
    let c = &v["cost_per_packet"];
    s.push_str(&format!(
        "cost per packet under wrk (bpf_stats, ns, median over rounds): untracked {:.0}, tracked (watch) {:.0}; no-op tc program {:.0}; net of it: untracked {:.0}, tracked {:.0}\n",
        f(c, &["untracked_ns"]),
        f(c, &["tracked_ns"]),
        f(c, &["noop_ns"]),
        f(c, &["untracked_net_ns"]),
        f(c, &["tracked_net_ns"])
    ));
    let o = &v["overhead"];
    s.push_str(&format!(
        "throughput under wrk (median req/s over {} rounds): bare {:.0}; active probe attached, idle {:.0} ({:.3} of bare); synack watch writing JSON lines {:.0} ({:.3}; its CPU {:.1} us per request); tcpdump -w {:.0} ({:.3})\n",
        o["rounds"],
        f(o, &["bare_rps"]),
        f(o, &["idle_rps"]),
        f(o, &["idle_ratio"]),
        f(o, &["watch_rps"]),
        f(o, &["watch_ratio"]),
        f(o, &["watch_cpu_us_per_request"]),
        f(o, &["tcpdump_rps"]),
        f(o, &["tcpdump_ratio"])
    ));
    let ms = &v["monitor_scale"];
    if ms.is_object() {
        s.push_str(&format!(
            "monitor scale: {} targets every {} s: {:.0} checks/s (of {:.0} due), {} failed, {} skipped; CPU {:.1}% of one core; RSS {:.1} MiB then {:.1} MiB (growth {:+.1}), peak {:.1} MiB; {} reloads\n",
            ms["targets"],
            ms["interval_s"],
            f(ms, &["checks_per_s"]),
            f(ms, &["expected_checks_per_s"]),
            ms["failed"],
            ms["skipped"],
            f(ms, &["cpu_percent_of_one_core"]),
            f(ms, &["rss_mib_first_third"]),
            f(ms, &["rss_mib_last_third"]),
            f(ms, &["rss_growth_mib"]),
            f(ms, &["peak_rss_mib"]),
            ms["reloads"]
        ));
    }
    let sc = &v["scale"];
    s.push_str(&format!(
        "scale: synack watch followed {} new connections/s with no loss (highest step tried {}: {}); watch's peak memory there {:.1} MiB; active probe's {:.1} MiB; start-up (exec to attached) {:.0} ms (median)\n",
        sc["max_lossless_cps"],
        sc["highest_step_cps"],
        sc["why_stopped"].as_str().unwrap_or("?"),
        f(sc, &["peak_rss_mib"]),
        f(sc, &["probe_peak_rss_mib"]),
        f(sc, &["startup_ms_median"])
    ));
    if let Some(n) = v["notes"].as_object().filter(|n| !n.is_empty()) {
        for (k, why) in n {
            s.push_str(&format!(
                "not measured: {k}: {}\n",
                why.as_str().unwrap_or("?")
            ));
        }
    }
    s
}

/// synack --json in a namespace; returns its records.
fn synack_json(ns: &Netns, args: &[&str]) -> Result<Vec<Value>> {
    let o = ns
        .command(synack_bin().to_str().context("path")?)
        .arg("--json")
        .args(args)
        .output()?;
    synack_tests::json_lines(&o.stdout)
}

fn sockaddr(v: &Value) -> Option<(IpAddr, u16)> {
    let s: SocketAddr = v.as_str()?.parse().ok()?;
    Some((s.ip(), s.port()))
}

/// First client payload and the first server payload after it (TLS:
/// ClientHello to ServerHello), from a capture.
fn first_exchange(pkts: &[Packet], local: (IpAddr, u16), remote: (IpAddr, u16)) -> Option<u64> {
    let ch = pkts
        .iter()
        .find(|p| (p.src, p.sport) == local && (p.dst, p.dport) == remote && p.payload_len > 0)?;
    let sh = pkts.iter().find(|p| {
        (p.src, p.sport) == remote
            && (p.dst, p.dport) == local
            && p.payload_len > 0
            && p.ts_ns > ch.ts_ns
    })?;
    Some(sh.ts_ns - ch.ts_ns)
}

/// Accuracy: synack's wire intervals against tcpdump's for the same packets,
/// over at least 1,000 connections through the lab; user-space TTFB of
/// synack and of curl -w against the wire.
fn accuracy(quick: bool) -> Result<Value> {
    let ms = |v: f64| Duration::from_secs_f64(v / 1000.0);
    let lab = Lab::up(&Bins::beside_synack(), Delays::rtt(ms(1.0), ms(2.0)), false)?;
    let dir = TempDir::new()?;
    let ca = lab.ca_path();
    let ca = ca.to_str().context("path")?.to_string();
    let cap = Capture::start(&lab.client, &lab.client_if, &dir)?;
    // HTTPS for the handshake and TLS RTT, plain HTTP for the TTFB (its
    // response turn needs no decryption to find in the capture).
    let per_batch = 100;
    let batches = 5;
    let mut recs = Vec::new();
    for i in 0..batches {
        let https = url(Via::Direct, true, i % 2 == 1, "/delay/2");
        let http = url(Via::Direct, false, i % 2 == 1, "/delay/2");
        let n = per_batch.to_string();
        recs.extend(synack_json(
            &lab.client,
            &["--cacert", &ca, "--count", &n, &https],
        )?);
        recs.extend(synack_json(&lab.client, &["--count", &n, &http])?);
    }
    // curl -w on the same path, for user-space TTFB.
    let curl_n = if quick { 50 } else { 200 };
    let mut curl = Vec::new();
    for _ in 0..curl_n {
        let o = lab
            .client
            .command("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{local_port} %{time_pretransfer} %{time_starttransfer}",
                &url(Via::Direct, false, false, "/delay/2"),
            ])
            .output()?;
        let t = String::from_utf8_lossy(&o.stdout).to_string();
        let v: Vec<&str> = t.split_whitespace().collect();
        if let [port, pre, start] = v.as_slice() {
            curl.push((
                port.parse::<u16>()?,
                (start.parse::<f64>()? - pre.parse::<f64>()?) * 1e6,
            ));
        }
    }
    let pkts = cap.finish()?;

    let (mut dh, mut dtls, mut dttfb, mut user) = (vec![], vec![], vec![], vec![]);
    for r in &recs {
        if !r["error"].is_null() {
            continue;
        }
        let (Some(local), Some(remote)) = (sockaddr(&r["local_addr"]), sockaddr(&r["remote_addr"]))
        else {
            continue;
        };
        let t = truth(&pkts, local, remote, Duration::from_millis(1));
        if let (Some(h), Some(s)) = (t.handshake_ns, r["wire"]["handshake_rtt_ms"].as_f64()) {
            dh.push(s * 1e3 - h as f64 / 1e3);
        }
        if r["tls"] == true {
            if let (Some(x), Some(s)) = (
                first_exchange(&pkts, local, remote),
                r["wire"]["tls_rtt_ms"].as_f64(),
            ) {
                dtls.push(s * 1e3 - x as f64 / 1e3);
            }
        } else if let (Some(x), Some(s)) = (t.ttfb_ns, r["wire"]["ttfb_ms"].as_f64()) {
            dttfb.push(s * 1e3 - x as f64 / 1e3);
            if let Some(u) = r["user"]["ttfb_ms"].as_f64() {
                user.push(u * 1e3 - x as f64 / 1e3);
            }
        }
    }
    let mut curl_d = Vec::new();
    for (port, ttfb_us) in &curl {
        let local = pkts
            .iter()
            .find(|p| p.sport == *port && p.syn && !p.ack_flag)
            .map(|p| ((p.src, p.sport), (p.dst, p.dport)));
        if let Some((l, rm)) = local {
            let t = truth(&pkts, l, rm, Duration::from_millis(1));
            if let Some(x) = t.ttfb_ns {
                curl_d.push(ttfb_us - x as f64 / 1e3);
            }
        }
    }
    let j = |v: &[f64]| {
        let (m, p, x) = stats(v);
        json!({"n": v.len(), "median_us": m, "p99_us": p, "max_us": x})
    };
    Ok(json!({
        "connections": recs.len(),
        "lab": "client link RTT 1 ms, mid-origin RTT 2 ms, origin think 2 ms, IPv4 and IPv6",
        "handshake_rtt": j(&dh),
        "tls_rtt": j(&dtls),
        "wire_ttfb": j(&dttfb),
        "user_ttfb": {
            "requests": user.len().min(curl_d.len()),
            "synack_minus_wire_median_us": median(user.clone()),
            "curl_minus_wire_median_us": median(curl_d.clone()),
            "synack_n": user.len(),
            "curl_n": curl_d.len(),
        },
    }))
}

/// A two-namespace pair with the origin in the server namespace.
type Bed = Served;

fn bed() -> Result<Bed> {
    Served::new()
}

/// wrk for `secs` from the client namespace; requests per second.
fn wrk(b: &Bed, secs: u32) -> Result<f64> {
    let o = b
        .pair
        .client
        .command("wrk")
        .args([
            "-t1",
            "-c16",
            &format!("-d{secs}s"),
            &format!("http://{}:8080/", b.pair.server_v4),
        ])
        .output()
        .context("running wrk (apt install wrk)")?;
    let s = String::from_utf8_lossy(&o.stdout);
    s.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("wrk said: {s}"))
}

/// `synack watch` in a namespace, ready; stdout and stderr to files.
/// With `records`, its JSON records go to a file (`Watch::out`); else to
/// /dev/null, as in the throughput rounds.
fn watch(ns: &Netns, dir: &TempDir, extra: &[&str], records: bool) -> Result<Watch> {
    watch_with(ns, dir, &synack_bin(), extra, records)
}

/// `watch` with another synack binary.
fn watch_with(
    ns: &Netns,
    dir: &TempDir,
    bin: &std::path::Path,
    extra: &[&str],
    records: bool,
) -> Result<Watch> {
    let err = dir.join(&format!("{}.err", unique("watch")));
    let out = dir.join(&format!("{}.jsonl", unique("watch")));
    let mut c = in_netns(ns, bin)?;
    c.args(["watch", "--json", "--summary-every", "0"])
        .args(extra)
        .stdout(if records {
            Stdio::from(fs::File::create(&out)?)
        } else {
            Stdio::null()
        })
        .stderr(fs::File::create(&err)?);
    let t0 = Instant::now();
    let p = Proc::spawn(c, "synack watch")?;
    let ready = wait_for(Duration::from_secs(30), "synack watch to attach", || {
        fs::read_to_string(&err)
            .ok()
            .filter(|e| e.contains("synack watch: following"))
            .map(|_| t0.elapsed())
    })?;
    Ok(Watch {
        proc: p,
        err,
        out,
        ready,
    })
}

/// The path of the requests `until_followed` makes.
const READY_PATH: &str = "/synack-bench-ready";

/// Returns once `w` has printed a request made after its "following"
/// line: a round whose watch follows nothing (a wrong filter, a changed
/// start-up) would measure wrk with nothing attached and pass for a good
/// ratio; wrk's keep-alive connections are all opened at its start, so one
/// missed start would go unwatched for the whole round.
fn until_followed(b: &Bed, w: &Watch) -> Result<()> {
    let url = format!("http://{}:8080{READY_PATH}", b.pair.server_v4);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        b.pair
            .client
            .command("curl")
            .args(["-s", "-o", "/dev/null", "-m", "2", &url])
            .status()
            .context("running curl")?;
        let seen = wait_for(Duration::from_secs(1), "watch to print the request", || {
            fs::read_to_string(&w.out)
                .ok()
                .filter(|t| t.contains(READY_PATH))
                .map(|_| ())
        });
        if seen.is_ok() {
            return Ok(());
        }
    }
    bail!(
        "synack watch printed no request made after it attached within 20 s; see {}",
        w.err.display()
    )
}

/// A command for `program` that enters the namespace itself (setns between
/// fork and exec) instead of through `ip netns exec`, so the time from
/// spawn to "attached" is the program's own start-up.
fn in_netns(ns: &Netns, program: &std::path::Path) -> Result<std::process::Command> {
    use std::os::{fd::AsRawFd, unix::process::CommandExt};
    let f = fs::File::open(format!("/run/netns/{}", ns.name))
        .with_context(|| format!("opening namespace {}", ns.name))?;
    let mut c = std::process::Command::new(program);
    // SAFETY: setns is async-signal-safe; `f` lives in the closure, which
    // the Command keeps until it has spawned.
    unsafe {
        c.pre_exec(move || {
            if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(c)
}

struct Watch {
    proc: Proc,
    /// Its stderr (summary) and stdout (one JSON record per request).
    err: PathBuf,
    out: PathBuf,
    /// From start to attached.
    ready: Duration,
}

/// Cost per packet from the kernel's own statistics: the classifiers' run
/// time over run count, for flows they do not track (the active probe
/// attached for one long request of its own) and for flows they track
/// (`synack watch`), under the same wrk load, with the object's no-op
/// classifier attached to the same interface in both: the figures net of it
/// are synack's own work, without the cost of running any tc program.
fn cost_per_packet(quick: bool) -> Result<Value> {
    let b = bed()?;
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling BPF run-time statistics (kernel.bpf_stats_enabled)")?;
    let snapshot = |names: &[&str]| -> (u64, u64) {
        aya::programs::loaded_programs()
            .filter_map(|p| p.ok())
            .filter(|p| p.name_as_str().is_some_and(|n| names.contains(&n)))
            .fold((0, 0), |(t, c), p| {
                (t + p.run_time().as_nanos() as u64, c + p.run_count())
            })
    };
    let ours = ["synack_egress", "synack_ingress"];
    let noop_name = ["synack_noop"];
    let per =
        |a: (u64, u64), z: (u64, u64)| (z.1 > a.1).then(|| (z.0 - a.0) as f64 / (z.1 - a.1) as f64);
    let noop_out = b.dir.join(&format!("{}.out", unique("noop")));
    let mut c = b
        .pair
        .client
        .command(std::env::current_exe()?.to_str().context("path")?);
    c.args(["noop", &b.pair.client_if])
        .stdout(fs::File::create(&noop_out)?)
        .stderr(Stdio::null());
    let _noop = Proc::spawn(c, "synack-bench noop")?;
    wait_for(
        Duration::from_secs(10),
        "the no-op classifier to attach",
        || {
            fs::read_to_string(&noop_out)
                .ok()
                .filter(|t| t.contains("attached"))
                .map(|_| ())
        },
    )?;
    let rounds = if quick { 3 } else { 5 };
    let (mut untracked, mut tracked, mut noop) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let p = idle_probe(&b, 4000)?;
        let (a, an) = (snapshot(&ours), snapshot(&noop_name));
        wrk(&b, 1)?;
        let (z, zn) = (snapshot(&ours), snapshot(&noop_name));
        drop(p);
        untracked.extend(per(a, z));
        noop.extend(per(an, zn));
        let w = watch(&b.pair.client, &b.dir, &[], false)?;
        let (a, an) = (snapshot(&ours), snapshot(&noop_name));
        wrk(&b, 1)?;
        let (z, zn) = (snapshot(&ours), snapshot(&noop_name));
        drop(w);
        tracked.extend(per(a, z));
        noop.extend(per(an, zn));
    }
    let n = median(noop.clone());
    let (u, t) = (median(untracked.clone()), median(tracked.clone()));
    Ok(json!({
        "rounds": rounds,
        "untracked_ns": u,
        "tracked_ns": t,
        "noop_ns": n,
        "untracked_net_ns": u - n,
        "tracked_net_ns": t - n,
        "untracked_rounds_ns": untracked,
        "tracked_rounds_ns": tracked,
        "noop_rounds_ns": noop,
        "note": "run_time_ns / run_cnt of synack_egress and synack_ingress (kernel.bpf_stats_enabled) under wrk's HTTP/1.1 keep-alive load; net = less synack_noop attached to the same interface in the same rounds",
    }))
}

/// `synack-bench noop IFACE`: the object's no-op classifier attached (tcx)
/// to both directions of IFACE until this process is stopped; prints
/// "attached" once it is.
fn noop(args: &[String]) -> Result<()> {
    use aya::programs::{SchedClassifier, TcAttachType, links::LinkOrder, tc::TcAttachOptions};
    let [iface] = args else {
        bail!("usage: synack-bench noop IFACE");
    };
    let object = testrun::default_object();
    let bytes = fs::read(&object)
        .with_context(|| format!("{}: build it with `cargo xtask build`", object.display()))?;
    let mut ebpf = aya::Ebpf::load(&bytes)?;
    let p: &mut SchedClassifier = ebpf
        .program_mut("synack_noop")
        .context("the object has no synack_noop")?
        .try_into()?;
    p.load()?;
    for dir in [TcAttachType::Egress, TcAttachType::Ingress] {
        p.attach_with_options(iface, dir, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .with_context(|| format!("attaching synack_noop to {iface}"))?;
    }
    println!("attached");
    std::io::stdout().flush()?;
    // Until SIGTERM; the links go with the process.
    loop {
        std::thread::park();
    }
}

/// The active probe attached for one long request (`/delay/MS` on the
/// origin), so that everything else on the interfaces is traffic it does
/// not follow; ready once both classifiers are in place.
fn idle_probe(b: &Bed, ms: u64) -> Result<Proc> {
    let mut c = in_netns(&b.pair.client, &synack_bin())?;
    c.args([
        "--json",
        &format!("http://{}:8080/delay/{ms}", b.pair.server_v4),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let p = Proc::spawn(c, "synack (idle)")?;
    // Its SYN went out through the attached classifiers once the socket to
    // the origin exists.
    let port = format!("{}:8080", b.pair.server_v4);
    wait_for(Duration::from_secs(10), "the idle probe to connect", || {
        let o = b
            .pair
            .client
            .command("ss")
            .args(["-tnH", "state", "established"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&o.stdout)
            .contains(&port)
            .then_some(())
    })?;
    Ok(p)
}

/// Throughput under load: wrk's requests per second with nothing attached,
/// with the active probe attached and idle (following nothing of wrk's),
/// with `synack watch` writing every request as a JSON line to a file, and
/// with tcpdump writing the same traffic to a file, interleaved round by
/// round.
fn overhead(quick: bool) -> Result<Value> {
    let b = bed()?;
    let rounds = if quick { 3 } else { 5 };
    let secs = if quick { 3 } else { 5 };
    let (mut bare, mut idle, mut with_watch, mut with_tcpdump) = (vec![], vec![], vec![], vec![]);
    let mut watch_lines = Vec::new();
    let mut watch_cpu = Vec::new();
    for _ in 0..rounds {
        bare.push(wrk(&b, secs)?);
        let p = idle_probe(&b, (secs as u64 + 5) * 1000)?;
        idle.push(wrk(&b, secs)?);
        drop(p);
        let w = watch(&b.pair.client, &b.dir, &[], true)?;
        until_followed(&b, &w)?;
        let cpu0 = cpu_seconds(w.proc.pid());
        with_watch.push(wrk(&b, secs)?);
        // Read as wrk ends: the lines of watch's last turn (it drains every
        // 10 ms) are counted below but their few ms of CPU are not, a
        // fraction of a percent of the round.
        let cpu1 = cpu_seconds(w.proc.pid());
        let out = w.out.clone();
        drop(w);
        // What watch wrote (and then the file goes: a round is ~200k lines).
        let lines = fs::read_to_string(&out)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        watch_lines.push(lines);
        if let (Some(a), Some(b)) = (cpu0, cpu1)
            && lines > 0
        {
            watch_cpu.push((b - a) * 1e6 / lines as f64);
        }
        let _ = fs::remove_file(out);
        let cap = Capture::start(&b.pair.client, &b.pair.client_if, &b.dir)?;
        with_tcpdump.push(wrk(&b, secs)?);
        let file = cap.file.clone();
        drop(cap);
        let _ = fs::remove_file(file);
    }
    let (mb, mi, mw, mt) = (
        median(bare.clone()),
        median(idle.clone()),
        median(with_watch.clone()),
        median(with_tcpdump.clone()),
    );
    // Each condition against the bare run of its own round (seconds apart),
    // median over the rounds: the machine's drift over the run cancels.
    let ratio = |v: &[f64]| median(v.iter().zip(&bare).map(|(x, b)| x / b).collect());
    Ok(json!({
        "rounds": rounds,
        "seconds_each": secs,
        "bare_rps": mb,
        "idle_rps": mi,
        "watch_rps": mw,
        "tcpdump_rps": mt,
        "idle_ratio": ratio(&idle),
        "watch_ratio": ratio(&with_watch),
        "tcpdump_ratio": ratio(&with_tcpdump),
        "bare_rounds": bare,
        "idle_rounds": idle,
        "watch_rounds": with_watch,
        "watch_lines_written": watch_lines,
        "watch_cpu_us_per_request": if watch_cpu.is_empty() { Value::Null } else { json!(median(watch_cpu.clone())) },
        "watch_cpu_us_per_request_rounds": watch_cpu,
        "tcpdump_rounds": with_tcpdump,
        "note": "wrk -t1 -c16 keep-alive through a veth pair; idle = the active probe attached with one long request of its own; watch writes JSON lines to a file, its CPU time (user + system, /proc/PID/stat) over the lines it wrote is watch_cpu_us_per_request; each ratio is the median over rounds of the condition's req/s over the same round's bare req/s",
    }))
}

/// A process's user + system CPU time so far, seconds (/proc/PID/stat).
fn cpu_seconds(pid: i32) -> Option<f64> {
    let st = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: ") S ppid ...".
    let rest = &st[st.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line (11, 12 here).
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf reads a constant of the running system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (hz > 0.0).then(|| ticks / hz)
}

/// A process's resident set now, KiB (/proc/PID/status VmRSS).
fn rss_kib(pid: i32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// A KiB figure of /proc/PID/status (VmRSS:, VmHWM:).
fn status_kib(pid: i32, field: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The sum of a metric's samples in a Prometheus text (those whose line
/// starts with `prefix`).
fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Scale of `synack monitor`: N targets (10,000; --quick 2,000) at a 10 s
/// interval against the origin through a veth pair, eBPF mode, release
/// build; the targets file rewritten every 5 s (atomically, as an editor or
/// git-sync does), each time with 1% of the targets renamed (removed and
/// added). After a warm-up of two intervals: the monitor's CPU (user +
/// system over the window, % of one core), its RSS sampled every second
/// (the first third of the window against the last: growth), its peak;
/// then one scrape of /metrics for checks done, failed and skipped.
fn monitor_scale(quick: bool, n: Option<usize>, secs: Option<u64>) -> Result<Value> {
    let n = n.unwrap_or(if quick { 2_000 } else { 10_000 });
    let interval = 10u64;
    let warm = Duration::from_secs(2 * interval);
    let run = Duration::from_secs(secs.unwrap_or(if quick { 40 } else { 120 }).clamp(10, 3600));
    let concurrency = 32;
    let b = bed()?;
    let targets = b.dir.join("scale-targets.txt");
    // Forty addresses of the origin (its /24, on its side of the pair): a
    // fleet's targets are many hosts, and 1,000 connections a second to
    // one address and port would leave 60,000 TIME_WAIT sockets sharing
    // one 4-tuple space, whose port search (the kernel's
    // __inet_hash_connect) then costs more than synack itself.
    let IpAddr::V4(v4) = b.pair.server_v4 else {
        bail!("the pair's server address is not IPv4");
    };
    let o = v4.octets();
    let servers: Vec<String> = (0..40u8)
        .map(|k| format!("{}.{}.{}.{}", o[0], o[1], o[2], 100 + k))
        .collect();
    for a in &servers {
        b.pair.server.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{a}/24"),
            "dev",
            &b.pair.server_if,
        ])?;
    }
    let write = |generation: u32| -> Result<()> {
        let mut s = String::with_capacity(n * 48);
        s.push_str(&format!("# generation {generation}\n"));
        for i in 0..n {
            let server = &servers[i % servers.len()];
            if i % 100 == 0 {
                s.push_str(&format!("http://{server}:8080/ name=t{i}g{generation}\n"));
            } else {
                s.push_str(&format!("http://{server}:8080/ name=t{i}\n"));
            }
        }
        let tmp = targets.with_extension("tmp");
        fs::write(&tmp, s)?;
        fs::rename(&tmp, &targets)?;
        Ok(())
    };
    write(0)?;
    let err = b.dir.join(&format!("{}.err", unique("monitor-scale")));
    let bin = synack_bin();
    let mut c = b.pair.client.command(bin.to_str().context("path")?);
    c.args([
        "monitor",
        "--mode",
        "ebpf",
        "--interval",
        &format!("{interval}s"),
    ])
    .args([
        "--concurrency",
        &concurrency.to_string(),
        "--listen",
        "127.0.0.1:9777",
    ])
    .arg("--targets")
    .arg(&targets)
    .stdout(Stdio::null())
    .stderr(fs::File::create(&err)?);
    let mut p = Proc::spawn(c, "synack monitor (scale)")?;
    let pid = p.pid();
    wait_for(Duration::from_secs(30), "the monitor to start", || {
        fs::read_to_string(&err)
            .ok()
            .filter(|e| e.contains(&format!("{n} targets")))
            .map(|_| ())
    })
    .with_context(|| fs::read_to_string(&err).unwrap_or_default())?;
    let start = Instant::now();
    let mut generation = 0;
    let mut next_rewrite = start + Duration::from_secs(5);
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let mut cpu0 = None;
    // A Prometheus beside it: /metrics scraped every 15 s all along, so
    // that CPU and peak RSS include what scrapes cost.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let scraper = |stop: &std::sync::atomic::AtomicBool| -> Vec<(f64, f64)> {
        let mut got = Vec::new();
        let mut next = Instant::now();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if Instant::now() >= next {
                next += Duration::from_secs(15);
                let t = Instant::now();
                let out = b
                    .pair
                    .client
                    .command("curl")
                    .args([
                        "-sS",
                        "--max-time",
                        "14",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{size_download}",
                    ])
                    .arg("http://127.0.0.1:9777/metrics")
                    .output();
                if let Ok(o) = out
                    && let Ok(size) = String::from_utf8_lossy(&o.stdout).trim().parse::<f64>()
                {
                    got.push((t.elapsed().as_secs_f64(), size));
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        got
    };
    let scrapes = std::thread::scope(|sc| -> Result<Vec<(f64, f64)>> {
        let h = sc.spawn(|| scraper(&stop));
        let res = (|| -> Result<()> {
            while start.elapsed() < warm + run {
                std::thread::sleep(Duration::from_secs(1));
                if let Ok(Some(st)) = p.child.try_wait() {
                    bail!(
                        "the monitor exited ({st}): {}",
                        fs::read_to_string(&err).unwrap_or_default()
                    );
                }
                if Instant::now() >= next_rewrite {
                    generation += 1;
                    write(generation)?;
                    next_rewrite += Duration::from_secs(5);
                }
                let t = start.elapsed();
                if t >= warm {
                    if cpu0.is_none() {
                        cpu0 = cpu_seconds(pid).map(|c| (c, Instant::now()));
                    }
                    samples.push((t.as_secs_f64(), rss_kib(pid).unwrap_or(0)));
                }
            }
            Ok(())
        })();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let got = h.join().unwrap_or_default();
        res.map(|()| got)
    })?;
    let (c0, t0) = cpu0.context("no CPU reading")?;
    let cpu = (cpu_seconds(pid).context("CPU")? - c0) / t0.elapsed().as_secs_f64() * 100.0;
    let peak = rss_peak_kib(pid).unwrap_or(0);
    let third = samples.len() / 3;
    let med = |v: &[(f64, u64)]| median(v.iter().map(|x| x.1 as f64).collect());
    let (early, late) = (
        med(&samples[..third.max(1)]),
        med(&samples[samples.len() - third.max(1)..]),
    );
    let text = b.pair.client.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "60",
        "http://127.0.0.1:9777/metrics",
    ])?;
    let ok = metric_sum(&text, "synack_checks_total{");
    let failed: f64 = text
        .lines()
        .filter(|l| l.starts_with("synack_checks_total{") && l.contains("result=\"failure\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let skipped = metric_sum(&text, "synack_checks_skipped_total{");
    let lost = metric_sum(&text, "synack_events_lost_total{");
    let lost_by: serde_json::Map<String, Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("synack_events_lost_total{reason=\""))
        .filter_map(|l| {
            let (reason, rest) = l.split_once('"')?;
            Some((
                reason.to_string(),
                json!(rest.rsplit(' ').next()?.parse::<f64>().ok()?),
            ))
        })
        .collect();
    p.signal(libc::SIGTERM);
    p.wait_exit(Duration::from_secs(30))?;
    let said = fs::read_to_string(&err).unwrap_or_default();
    let reloads = said.matches("reloaded").count();
    let total_s = (warm + run).as_secs_f64();
    Ok(json!({
        "targets": n,
        "interval_s": interval,
        "concurrency": concurrency,
        "seconds": total_s,
        "warmup_s": warm.as_secs(),
        "checks": ok,
        "checks_per_s": ok / total_s,
        "expected_checks_per_s": n as f64 / interval as f64,
        "failed": failed,
        "skipped": skipped,
        "events_lost": lost,
        "events_lost_by_reason": lost_by,
        "reloads": reloads,
        "cpu_percent_of_one_core": cpu,
        "rss_mib_first_third": early / 1024.0,
        "rss_mib_last_third": late / 1024.0,
        "rss_growth_mib": (late - early) / 1024.0,
        // The shape, not only the ends: a median per 30 s of the window.
        "rss_mib_per_30s": samples
            .chunk_by(|a, b| (a.0 / 30.0).floor() == (b.0 / 30.0).floor())
            .map(|w| med(w) / 1024.0)
            .collect::<Vec<f64>>(),
        "peak_rss_mib": peak as f64 / 1024.0,
        "metrics_exposition_mib": text.len() as f64 / 1048576.0,
        "scrapes_during_run": scrapes.len(),
        "scrape_seconds_max": scrapes.iter().map(|x| x.0).fold(0.0, f64::max),
        "scrape_mib_max": scrapes.iter().map(|x| x.1).fold(0.0, f64::max) / 1048576.0,
        "origin_addresses": servers.len(),
        "note": "/metrics scraped every 15 s throughout (as a Prometheus would); checks counted from one scrape of /metrics at the end (synack_checks_total over every target, including the renamed ones still present); CPU is user + system of the monitor over the window after warm-up; RSS medians of 1 s samples in the first and last thirds of that window",
    }))
}

fn rss_peak_kib(pid: i32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Scale: new connections per second `synack watch` follows with no
/// drop and no eviction, stepping the rate up; its peak memory; how long
/// loading and attaching takes.
fn scale(quick: bool) -> Result<Value> {
    let b = bed()?;
    let me = std::env::current_exe()?;
    let secs = if quick { 2 } else { 4 };
    // Stepped up until a step fails (or the generator cannot go faster on
    // these two CPUs): x2 to 8000, then +25%, at most 64,000.
    let mut steps = vec![500u32, 1000, 2000, 4000, 8000];
    while let Some(&last) = steps.last()
        && last < 64_000
    {
        steps.push((last + last / 4).min(64_000));
    }
    let mut best = 0;
    let mut highest = 0;
    let mut best_kib = 0;
    let mut startups = Vec::new();
    let mut log = Vec::new();
    let mut why_stopped = String::from("the highest step held");
    let mut bare_cps: Option<f64> = None;
    for rate in steps {
        let wt = watch(&b.pair.client, &b.dir, &["--port", "8080"], true)?;
        until_followed(&b, &wt)?;
        let Watch {
            proc: mut w,
            err,
            out: records,
            ready,
        } = wt;
        startups.push(ready.as_secs_f64() * 1e3);
        // The requests `until_followed` made and watch printed.
        let warm_lines = || -> u64 {
            fs::read_to_string(&records)
                .map(|t| t.lines().filter(|l| l.contains(READY_PATH)).count() as u64)
                .unwrap_or(0)
        };
        let (made, took) = generate(&b, &me, rate, secs)?;
        // Let watch report the last connections (a lossy step never gets
        // there: the deadline ends the wait, the summary tells).
        let _ = wait_for(
            Duration::from_secs(5),
            "watch to report every request",
            || {
                let n = fs::read_to_string(&records).ok()?.lines().count() as u64;
                (n >= made + warm_lines()).then_some(())
            },
        );
        let warm = warm_lines();
        let kib = rss_peak_kib(w.pid()).unwrap_or(0);
        w.signal(libc::SIGINT);
        w.wait_exit(Duration::from_secs(20))?;
        let e = fs::read_to_string(&err)?;
        let reported: u64 = e
            .split("synack watch: ")
            .nth(2)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let reported = reported.saturating_sub(warm);
        let lossless = e.contains("lost: 0 events (ring buffer full), 0 connections (kernel flow table full), 0 connections dropped")
            && reported == made;
        let achieved = made as f64 / took;
        // watch's own account of what it lost, for a step that failed.
        let lost_line = e
            .lines()
            .find(|l| l.trim_start().starts_with("lost:"))
            .map(str::trim);
        log.push(json!({"rate": rate, "made": made, "achieved_cps": achieved, "reported": reported, "lossless": lossless, "watch_peak_rss_kib": kib, "watch_lost": lost_line}));
        highest = rate;
        if lossless && achieved >= rate as f64 * 0.9 {
            best = rate;
            best_kib = kib;
        } else {
            why_stopped = if !lossless {
                format!(
                    "at {rate}/s watch reported {reported} of {made} requests or counted a loss"
                )
            } else {
                // Could the machine make this rate at all? The same step
                // with nothing attached says whether watch or the two CPUs
                // (generator, origin, stack) are the limit.
                let alone = generate(&b, &me, rate, secs).map(|(m, t)| m as f64 / t);
                bare_cps = alone.as_ref().ok().copied();
                format!(
                    "at {rate}/s the generator made only {achieved:.0} connections/s with watch; {}",
                    match alone {
                        Ok(c) => format!("with nothing attached it made {c:.0}/s"),
                        Err(e) => format!("alone it failed: {e:#}"),
                    }
                )
            };
            break;
        }
    }
    // The active probe's peak memory: a short run of requests, its maximum
    // resident set as /usr/bin/time reports it (KiB), median of three.
    let mut probe_kib = Vec::new();
    for _ in 0..3 {
        probe_kib.extend(probe_peak_kib(&b, &synack_bin())?);
    }
    Ok(json!({
        "max_lossless_cps": best,
        "highest_step_cps": highest,
        "seconds_per_step": secs,
        "steps": log,
        "why_stopped": why_stopped,
        "bare_generator_cps_at_failed_step": bare_cps,
        "peak_rss_mib": if best > 0 { best_kib as f64 / 1024.0 } else { f64::NAN },
        "probe_peak_rss_mib": median(probe_kib.clone()) / 1024.0,
        "probe_peak_rss_kib_rounds": probe_kib,
        "startup_ms_median": median(startups.clone()),
        "startup_ms": startups,
    }))
}

/// The active probe's peak resident memory (KiB, /usr/bin/time's %M) over
/// 20 requests to the origin; None when it failed.
fn probe_peak_kib(b: &Bed, bin: &std::path::Path) -> Result<Option<f64>> {
    let f = b.dir.join(&format!("{}.time", unique("probe")));
    let o = in_netns(&b.pair.client, std::path::Path::new("/usr/bin/time"))?
        .args(["-f", "%M", "-o", f.to_str().context("path")?])
        .arg(bin)
        .args(["--json", "--count", "20"])
        .arg(format!("http://{}:8080/", b.pair.server_v4))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running synack under /usr/bin/time (apt install time)")?;
    Ok(o.success()
        .then(|| {
            fs::read_to_string(&f)
                .ok()
                .and_then(|t| t.trim().lines().last()?.trim().parse::<f64>().ok())
        })
        .flatten())
}

/// `synack-bench startup BIN...`: start-up (exec to "following") of
/// `synack watch` and the active probe's peak memory, for each build given,
/// interleaved round by round so they share the machine's state; the
/// before/after figures of docs/benchmarks.md.
fn startup(args: &[String]) -> Result<()> {
    if !synack_tests::is_root() {
        bail!("loading eBPF programs needs root");
    }
    let bins: Vec<PathBuf> = args.iter().map(PathBuf::from).collect();
    if bins.is_empty() {
        bail!("usage: synack-bench startup SYNACK_BINARY...");
    }
    let b = bed()?;
    let rounds = 11;
    let mut ms = vec![Vec::new(); bins.len()];
    let mut kib = vec![Vec::new(); bins.len()];
    for r in 0..rounds {
        for (i, bin) in bins.iter().enumerate() {
            let w = watch_with(&b.pair.client, &b.dir, bin, &["--port", "9"], false)?;
            ms[i].push(w.ready.as_secs_f64() * 1e3);
            drop(w);
            if r < 3 {
                kib[i].extend(probe_peak_kib(&b, bin)?);
            }
        }
    }
    let mut out = Vec::new();
    for (i, bin) in bins.iter().enumerate() {
        let (m, lo, hi) = (
            median(ms[i].clone()),
            ms[i].iter().copied().fold(f64::INFINITY, f64::min),
            ms[i].iter().copied().fold(0.0, f64::max),
        );
        eprintln!(
            "{}: start-up median {m:.0} ms (min {lo:.0}, max {hi:.0}, {rounds} rounds); active probe peak RSS {:.1} MiB",
            bin.display(),
            median(kib[i].clone()) / 1024.0
        );
        out.push(json!({"binary": bin.display().to_string(), "startup_ms": ms[i], "startup_ms_median": m, "probe_peak_rss_kib": kib[i]}));
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// One run of the generator in the client namespace: connections
/// completed, and the seconds it took (at least `secs`).
fn generate(b: &Bed, me: &std::path::Path, rate: u32, secs: u32) -> Result<(u64, f64)> {
    let o = b
        .pair
        .client
        .command(me.to_str().context("path")?)
        .args([
            "gen",
            &rate.to_string(),
            &secs.to_string(),
            &format!("{}:8080", b.pair.server_v4),
        ])
        .output()?;
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let mut it = out.split_whitespace();
    let made: u64 = it
        .next()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("generator: {out} {}", String::from_utf8_lossy(&o.stderr)))?;
    let took: f64 = it
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(secs as f64);
    Ok((made, took.max(secs as f64)))
}

/// The connection generator: RATE connections a second for SECS seconds to
/// HOST:PORT, each one HTTP/1.0 request read to its end; prints how many
/// completed.
fn generator(args: &[String]) -> Result<()> {
    let [rate, secs, addr] = args else {
        bail!("usage: synack-bench gen RATE SECS HOST:PORT");
    };
    let rate: u32 = rate.parse()?;
    let secs: u32 = secs.parse()?;
    let addr: SocketAddr = addr.parse()?;
    // Enough threads that a connection's round trips (blocking calls) do
    // not cap the rate below the step's.
    let threads = (rate / 500).clamp(8, 64);
    let per = (rate / threads).max(1);
    let total = per as u64 * secs as u64;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(50);
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let done = done.clone();
            std::thread::spawn(move || {
                let gap = Duration::from_secs_f64(1.0 / per as f64);
                let offset = gap.mul_f64(t as f64 / threads as f64);
                for i in 0..total {
                    let at = start + offset + gap.mul_f64(i as f64);
                    let now = Instant::now();
                    if at > now {
                        std::thread::sleep(at - now);
                    }
                    if one_request(addr).is_ok() {
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in hs {
        let _ = h.join();
    }
    // Completed connections, and the seconds it really took (a generator
    // that fell behind takes longer than planned).
    println!(
        "{} {:.3}",
        done.load(std::sync::atomic::Ordering::Relaxed),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn one_request(addr: SocketAddr) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    if !buf.starts_with(b"HTTP/1.") {
        bail!("not HTTP");
    }
    Ok(())
}
