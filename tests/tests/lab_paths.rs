//! Direct paths that are not the textbook's, as root: a router that keeps
//! the TTL, a point-to-point tunnel, a first contact that waits for
//! neighbour resolution, random loss, and a thread-per-connection origin
//! under a load generator. None has a middlebox; synack must say "direct"
//! (or at worst "unknown" where it says why) and keep its numbers.
//!
//! Each scenario checks that it really is what it claims (the TTL that
//! arrives, the route, the inflated handshake, the retransmissions), so a
//! lab that silently stopped building it fails instead of passing.
//!
//! The scenarios share a lock: they measure milliseconds on a 2-core machine
//! and must not run next to each other.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::{fs, path::PathBuf, process::Stdio, sync::Mutex, time::Duration};
use synack_tests::{
    Errors, Proc, TempDir, holds, is_root, json_lines,
    paths::{self, SlowArp, Tunnel},
    synack_bin,
    topo::{Bins, Delays, Lab, Loss, SERVER_V4, Via},
    unique, wait_for,
};

static SERIAL: Mutex<()> = Mutex::new(());
const RUNS: usize = 10;
const MODES: [&str; 2] = ["ebpf", "unprivileged"];

fn ms(v: f64) -> Duration {
    Duration::from_secs_f64(v / 1000.0)
}

fn lab(d: Delays) -> Result<Lab> {
    assert!(
        is_root(),
        "the lab scenarios need root (namespaces, eBPF, iptables): cargo xtask test"
    );
    // No proxies: every scenario here is a direct path.
    Lab::up(&Bins::beside_synack(), d, false)
}

/// synack --json --mode MODE ARGS in the client namespace.
fn synack(lab: &Lab, mode: &str, args: &[&str]) -> Result<Vec<Value>> {
    let mut a = vec!["--mode", mode];
    a.extend_from_slice(args);
    synack_tests::lab_synack(lab, &[], &a).map(|(recs, _)| recs)
}

fn f(r: &Value, path: &[&str]) -> f64 {
    let mut v = r;
    for p in path {
        v = &v[*p];
    }
    v.as_f64()
        .unwrap_or_else(|| panic!("{} missing in {}", path.join("."), brief(r)))
}

/// What a failure message needs of a record: the verdict, its numbers and
/// their evidence.
fn brief(r: &Value) -> Value {
    json!({
        "url": r["url"],
        "mode": r["mode"],
        "error": r["error"],
        "request_index": r["request_index"],
        "server_timing_ms": r["server_timing_ms"],
        "remote_on_link": r["remote_on_link"],
        "verdict": r["verdict"],
        "phases": r["phases"],
        "wire": r["wire"],
    })
}

/// The think time the origin really spent, from its Server-Timing header
/// (a stolen vCPU now and then stretches a sleep; see tests/tests/lab.rs).
fn spent(r: &Value, set: f64) -> f64 {
    let d = f(r, &["server_timing_ms"]);
    assert!(
        d >= set - 0.05,
        "the origin says it thought {d} ms for {set}: {}",
        brief(r)
    );
    d
}

fn ok(r: &Value) {
    assert!(r["error"].is_null(), "request failed: {}", brief(r));
    assert_eq!(r["http_status"], 200, "{}", brief(r));
    assert!(
        r["drops"]["ringbuf_full"].as_u64().unwrap_or(0) == 0,
        "{}",
        brief(r)
    );
}

/// The lab's own RTT with no delay set (median handshake of a few direct
/// connections), to hold handshakes against set + base.
fn base_rtt(lab: &Lab) -> Result<f64> {
    let u = lab.url(Via::Direct, false, false, "/");
    let recs = synack(lab, "ebpf", &["--count", "7", &u])?;
    let mut v: Vec<f64> = recs
        .iter()
        .map(|r| f(r, &["wire", "handshake_rtt_ms"]))
        .collect();
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

/// The batches of one test that did not hold. A test runs all its batches
/// before it fails, so one run shows every case the verdict gets wrong (the
/// verdict author needs the whole picture, not the first failure).
#[derive(Default)]
struct Wrong(Vec<String>);

impl Wrong {
    /// Runs one batch under `holds`; a batch that fails every time is noted.
    fn batch(&mut self, scenario: &str, body: impl Fn() -> Result<()>) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| holds(scenario, &body)));
        let why = match r {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("{e:#}"),
            Err(p) => p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default(),
        };
        eprintln!("{scenario}: FAILED twice: {why}");
        self.0.push(format!("{scenario}: {why}"));
    }

    fn finish(self) -> Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        bail!(
            "{} batches did not hold:\n{}",
            self.0.len(),
            self.0.join("\n")
        )
    }
}

/// `synack --count RUNS ARGS` in a mode; exactly RUNS records.
fn batch(lab: &Lab, scenario: &str, mode: &str, args: &[&str]) -> Result<Vec<Value>> {
    let n = RUNS.to_string();
    let mut a = vec!["--count", &n];
    a.extend_from_slice(args);
    let recs = synack(lab, mode, &a)?;
    assert_eq!(recs.len(), RUNS, "{scenario}");
    Ok(recs)
}

/// Every request of a direct path: verdict direct, server time within 3 ms
/// of what the origin spent, and a handshake that shows the set delay (no
/// less than `rtt` - 1.5 ms; up to 10 ms more, since a busy shared machine
/// now and then holds one packet for several ms and this bound only checks
/// that the delay line applies). The errors of the whole batch are reported
/// before anything is asserted.
fn check_direct(recs: &[Value], scenario: &str, think: f64, rtt: f64) {
    let mut eh = Errors::new("handshake RTT vs set RTT + base");
    let mut es = Errors::new("server_ms vs the origin's think time");
    for r in recs {
        ok(r);
        if let Some(h) = r["wire"]["handshake_rtt_ms"].as_f64() {
            eh.push(h - rtt);
        }
        if let Some(s) = r["phases"]["server_ms"].as_f64() {
            es.push(s - spent(r, think));
        }
    }
    eh.report(scenario);
    es.report(scenario);
    let verdicts = |p: &str| recs.iter().filter(|r| r["verdict"]["path"] == p).count();
    eprintln!(
        "{scenario}: verdicts direct {}, unknown {}, middlebox {}; server_ms null on {}",
        verdicts("direct"),
        verdicts("unknown"),
        verdicts("middlebox"),
        recs.len() - es.v.len()
    );
    for r in recs {
        // A reused connection's requests have no handshake of their own.
        let h = if r["request_index"] == 0 {
            f(r, &["wire", "handshake_rtt_ms"])
        } else {
            rtt
        };
        assert!(
            h - rtt >= -1.5 && h - rtt <= 10.0,
            "{scenario}: handshake {h} ms for {rtt}: {}",
            brief(r)
        );
        assert_eq!(r["verdict"]["path"], "direct", "{scenario}: {}", brief(r));
        let s = f(r, &["phases", "server_ms"]);
        let t = spent(r, think);
        assert!(
            (s - t).abs() <= 3.0,
            "{scenario}: server {s} ms, origin {t}: {}",
            brief(r)
        );
    }
}

/// Scenario 1: mid routes without decrementing the TTL (cloud VPC routers,
/// overlay datapaths). The origin's SYN-ACK arrives with TTL 64, "0 hops",
/// although the origin is behind a gateway: that alone is no middlebox.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn router_that_keeps_the_ttl_is_direct() -> Result<()> {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut wrong = Wrong::default();
    let (rtt, think) = (25.0, 20.0);
    let mut lab = lab(Delays::default())?;
    let base = base_rtt(&lab)?;
    paths::keep_ttl(&lab)?;
    lab.set_delays(Delays::rtt(ms(5.0), ms(20.0)))?;
    let initial = |v6| paths::default_ttl(&lab.server, v6);
    for mode in MODES {
        for tls in [false, true] {
            for v6 in [false, true] {
                let u = lab.url(Via::Direct, tls, v6, &format!("/delay/{think}"));
                let scenario = format!("TTL-keeping router {mode} {u}");
                let init = initial(v6)?;
                wrong.batch(&scenario, || {
                    // Plain HTTP: one request cannot tell a router that keeps
                    // the TTL from a proxy at the gateway (the verdict says
                    // unknown and names --reuse 2); with --reuse 2 the first
                    // request pays no upstream connect, and that settles it.
                    let recs = if tls {
                        batch(&lab, &scenario, mode, &[&u])?
                    } else {
                        let one = synack(&lab, mode, &[&u])?;
                        for r in &one {
                            ok(r);
                            assert_ne!(
                                r["verdict"]["path"],
                                "middlebox",
                                "{scenario}: {}",
                                brief(r)
                            );
                            if mode == "ebpf" {
                                assert!(
                                    r["verdict"]["reasons"].to_string().contains("--reuse 2"),
                                    "{scenario}: {}",
                                    brief(r)
                                );
                            }
                        }
                        let n = RUNS.to_string();
                        let two = synack(&lab, mode, &["--count", &n, "--reuse", "2", &u])?;
                        assert_eq!(two.len(), 2 * RUNS, "{scenario}");
                        two
                    };
                    if mode == "ebpf" {
                        // The scenario is what it claims: the SYN-ACK crossed
                        // a router and kept its TTL.
                        for r in recs.iter().filter(|r| r["request_index"] == 0) {
                            assert_eq!(r["wire"]["synack_ttl"], init, "{scenario}: {}", brief(r));
                            assert_eq!(r["wire"]["synack_hops"], 0, "{scenario}: {}", brief(r));
                        }
                    }
                    check_direct(&recs, &scenario, think, rtt + base);
                    Ok(())
                });
            }
        }
    }
    wrong.finish()
}

/// Scenario 2: the origin is reached over a point-to-point tunnel (a tun
/// device with a /32 and a `dev` route, no gateway, as VPNs set up) whose
/// outer UDP packets cross mid's delay line.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn point_to_point_tunnel_is_direct() -> Result<()> {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut wrong = Wrong::default();
    let (rtt, think) = (20.0, 20.0);
    let mut lab = lab(Delays::default())?;
    let tun = Tunnel::up(&lab)?;
    // The lab's base RTT over the tunnel: veth, NFQUEUE and two pumps.
    let base = {
        let (u, res) = tunnel_url(false, false, "/");
        let recs = synack(&lab, "ebpf", &["--count", "7", "--resolve", &res, &u])?;
        let mut v: Vec<f64> = recs
            .iter()
            .map(|r| f(r, &["wire", "handshake_rtt_ms"]))
            .collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    eprintln!("tunnel base RTT {base:.3} ms");
    lab.set_delays(Delays::rtt(ms(2.0), ms(18.0)))?;
    for (addr, v6) in [(paths::TUN_ORIGIN_V4, false), (paths::TUN_ORIGIN_V6, true)] {
        // The scenario is what it claims: the route is the tunnel's device,
        // with no gateway.
        let fam = if v6 { "-6" } else { "-4" };
        let route = lab.client.exec(&["ip", fam, "route", "get", addr])?;
        assert!(
            route.contains(&format!("dev {}", tun.client_if)) && !route.contains(" via "),
            "route to {addr}: {route}"
        );
    }
    for mode in MODES {
        for tls in [false, true] {
            for v6 in [false, true] {
                let (u, res) = tunnel_url(tls, v6, &format!("/delay/{think}"));
                let scenario = format!("point-to-point tunnel {mode} {u} via {res}");
                wrong.batch(&scenario, || {
                    let recs = batch(&lab, &scenario, mode, &["--resolve", &res, &u])?;
                    // And the outer packets were delayed: the handshake is
                    // the set RTT, not the tunnel's bare one.
                    for r in &recs {
                        assert!(f(r, &["wire", "handshake_rtt_ms"]) >= rtt);
                    }
                    check_direct(&recs, &scenario, think, rtt + base);
                    Ok(())
                });
            }
        }
    }
    drop(tun);
    wrong.finish()
}

/// A URL on the origin's tunnel address, by a name its certificate has,
/// and the --resolve that sends the name to the address of that family.
fn tunnel_url(tls: bool, v6: bool, path: &str) -> (String, String) {
    let (scheme, port) = if tls { ("https", 8443) } else { ("http", 8080) };
    let addr = if v6 {
        format!("[{}]", paths::TUN_ORIGIN_V6)
    } else {
        paths::TUN_ORIGIN_V4.to_string()
    };
    (
        format!("{scheme}://origin.lab:{port}{path}"),
        format!("origin.lab:{port}:{addr}"),
    )
}

/// Scenario 3: a first contact whose SYN waits in mid for neighbour
/// resolution toward the server (IPv4: the server answers ARP 10 ms late;
/// IPv6: NS and NA cross the delay line, one far-link RTT). The handshake is
/// inflated by it; the server's time is not.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn first_contact_neighbour_resolution_is_not_server_time() -> Result<()> {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut wrong = Wrong::default();
    let (near, far, think, arp) = (2.0, 10.0, 20.0, 10.0);
    let mut lab = lab(Delays::default())?;
    let base = base_rtt(&lab)?;
    let _arp = SlowArp::start(&lab, ms(arp))?;
    lab.set_delays(Delays::rtt(ms(near), ms(far)))?;
    let rtt = near + far + base;
    for mode in MODES {
        for tls in [false, true] {
            for v6 in [false, true] {
                let u = lab.url(Via::Direct, tls, v6, &format!("/delay/{think}"));
                let scenario = format!("first contact, slow neighbour resolution {mode} {u}");
                // What the resolution should cost: the ARP delay, or NS out
                // and NA back through the delay line.
                let wait = if v6 { far } else { arp };
                wrong.batch(&scenario, || {
                    let mut ei = Errors::new("handshake inflation vs the resolution's cost");
                    let mut es = Errors::new("server_ms vs the origin's think time");
                    let mut recs = Vec::new();
                    for _ in 0..RUNS {
                        paths::forget_server(&lab)?;
                        let r = synack(&lab, mode, &[&u])?.remove(0);
                        ok(&r);
                        ei.push(f(&r, &["wire", "handshake_rtt_ms"]) - rtt - wait);
                        if let Some(s) = r["phases"]["server_ms"].as_f64() {
                            es.push(s - spent(&r, think));
                        }
                        recs.push(r);
                    }
                    ei.report(&scenario);
                    es.report(&scenario);
                    for r in &recs {
                        let h = f(r, &["wire", "handshake_rtt_ms"]);
                        // The scenario is what it claims.
                        assert!(
                            h >= rtt + 0.7 * wait,
                            "{scenario}: handshake {h} ms not inflated over {rtt}: {}",
                            brief(r)
                        );
                        assert_ne!(
                            r["verdict"]["path"],
                            "middlebox",
                            "{scenario}: {}",
                            brief(r)
                        );
                        let s = f(r, &["phases", "server_ms"]);
                        let t = spent(r, think);
                        assert!(
                            (s - t).abs() <= 3.0,
                            "{scenario}: server {s} ms, origin {t}: {}",
                            brief(r)
                        );
                    }
                    Ok(())
                });
            }
        }
    }
    wrong.finish()
}

/// Scenario 4: random loss (seeded, see synack-delay --loss) on a direct
/// path, from the server and separately toward it. Retransmissions are
/// counted, their waits are network time, and the path stays direct.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn random_loss_is_network_time_on_a_direct_path() -> Result<()> {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut wrong = Wrong::default();
    let (rtt, think, pct, n) = (20.0, 10.0, 12u8, 20usize);
    // Fixed so a failure replays the same packets' fates; synack-delay
    // prints it in the lab's log too.
    let seed = 20261201u64;
    let mut lab = lab(Delays::default())?;
    for (dir, loss) in [
        (
            "from the server",
            Loss {
                server_in: pct,
                ..Default::default()
            },
        ),
        (
            "toward the server",
            Loss {
                server_out: pct,
                ..Default::default()
            },
        ),
    ] {
        lab.set_delays(Delays {
            loss,
            seed,
            ..Delays::rtt(ms(2.0), ms(rtt - 2.0))
        })?;
        for mode in MODES {
            for tls in [false, true] {
                let u = lab.url(Via::Direct, tls, false, &format!("/delay/{think}"));
                let scenario = format!("{pct} % loss {dir} {mode} {u} seed {seed}");
                wrong.batch(&scenario, || {
                    let recs = synack(&lab, mode, &["--count", &n.to_string(), "-m", "20", &u])?;
                    assert_eq!(recs.len(), n, "{scenario}");
                    let failed: Vec<Value> = recs
                        .iter()
                        .filter(|r| !r["error"].is_null())
                        .map(brief)
                        .collect();
                    let fine: Vec<&Value> = recs.iter().filter(|r| r["error"].is_null()).collect();
                    let count = |p: &str| fine.iter().filter(|r| r["verdict"]["path"] == p).count();
                    let (mut rtx, mut syn_rtx, mut waited) = (0u64, 0u64, 0usize);
                    let mut es = Errors::new("server_ms vs the origin's think time");
                    // What does not hold, each with its record: reported
                    // all together, then asserted.
                    let mut bad: Vec<String> = Vec::new();
                    for r in &fine {
                        // Unprivileged mode counts only our own resent
                        // segments (TCP_INFO): retransmits is null there and
                        // retransmits_out has them.
                        let w = &r["wire"];
                        let k = w["retransmits"].as_u64().unwrap_or_else(|| {
                            w["retransmits_out"].as_u64().unwrap_or(0)
                                + w["retransmits_in"].as_u64().unwrap_or(0)
                        });
                        let ks = r["wire"]["syn_retransmits"].as_u64().unwrap_or(0);
                        rtx += k;
                        syn_rtx += ks;
                        if let Some(s) = r["phases"]["server_ms"].as_f64() {
                            let e = s - spent(r, think);
                            es.push(e);
                            // Toward the server, every lost segment is ours
                            // and resent by our kernel, which synack can see:
                            // its wait must not be server time. (From the
                            // server, a lost first response segment looks to
                            // any client like a slower server: reported only.)
                            if dir == "toward the server" && e.abs() > 3.0 {
                                bad.push(format!("server {s} ms, {e:+.1} ms off: {}", brief(r)));
                            }
                        }
                        let path = r["verdict"]["path"].as_str().unwrap_or("");
                        // Acceptable: "unknown" in unprivileged mode after a
                        // SYN retransmission. TCP_INFO takes no RTT sample
                        // from a retransmitted SYN (Karn), so the socket
                        // itself cannot time the handshake, and synack says
                        // it cannot tell rather than guess.
                        // Also acceptable: "unknown" in unprivileged mode
                        // for HTTPS with loss from the server: a lost
                        // ServerHello arrives a timeout late, the socket
                        // delivers the flight in order (the later segments
                        // that came on time stay unseen) and the server's
                        // ACK came on time, which is what a TLS proxy holding
                        // its ServerHello does too; synack says it cannot
                        // tell. (eBPF mode sees the on-time later segments.)
                        let in_order_loss = path == "unknown"
                            && mode == "unprivileged"
                            && dir == "from the server"
                            && r["tls"] == true;
                        let excused = in_order_loss
                            || (path == "unknown"
                                && mode == "unprivileged"
                                && ks > 0
                                && r["wire"]["handshake_rtt_ms"].is_null());
                        if path != "direct" && !excused {
                            bad.push(format!("verdict {path}: {}", brief(r)));
                        }
                        if k + ks > 0 && !excused {
                            waited += 1;
                            match r["phases"]["network_ms"].as_f64() {
                                // A SYN retransmission waits Linux's 1 s
                                // initial RTO; any other at least the RTT.
                                Some(net) if net > rtt && (ks == 0 || net >= 1000.0) => {}
                                net => bad.push(format!(
                                    "{k} retransmissions, {ks} of SYN, network {net:?}: {}",
                                    brief(r)
                                )),
                            }
                        }
                    }
                    eprintln!(
                        "{scenario}: {} requests, {} failed, direct {}, unknown {}, middlebox {}; \
                         retransmits {rtx}, SYN retransmits {syn_rtx}, on {waited} requests \
                         (not counting excused unknowns)",
                        recs.len(),
                        failed.len(),
                        count("direct"),
                        count("unknown"),
                        count("middlebox"),
                    );
                    es.report(&scenario);
                    for r in &failed {
                        eprintln!("{scenario}: failed request: {r}");
                    }
                    for b in &bad {
                        eprintln!("{scenario}: wrong: {b}");
                    }
                    assert!(failed.is_empty(), "{scenario}: requests failed: {failed:?}");
                    assert!(bad.is_empty(), "{scenario}: {} records wrong", bad.len());
                    assert!(
                        rtx + syn_rtx > 0,
                        "{scenario}: no retransmission seen at {pct} % loss"
                    );
                    Ok(())
                });
            }
        }
    }
    wrong.finish()
}

/// The port of Python's http.server in scenario 5.
const PY_PORT: u16 = 8000;

/// wrk from the client namespace, bounded by `secs` and a deadline.
fn wrk(lab: &Lab, dir: &TempDir, url: &str, secs: u32) -> Result<(Proc, PathBuf)> {
    let out = dir.join(&format!("{}.txt", unique("wrk")));
    let mut c = lab.client.command("wrk");
    c.args(["-t2", "-c8", &format!("-d{secs}s"), "--timeout", "5s", url])
        .stdout(fs::File::create(&out)?)
        .stderr(Stdio::null());
    Ok((Proc::spawn(c, "wrk")?, out))
}

/// The number of requests wrk says it made.
fn wrk_requests(out: &PathBuf) -> Result<u64> {
    let s = fs::read_to_string(out)?;
    s.lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .and_then(|(n, _)| n.trim().parse().ok())
        })
        .with_context(|| format!("no request count in wrk's output: {s}"))
}

/// Scenario 5: an origin with a real per-connection cost (Python's
/// http.server starts a thread per connection) under a load generator
/// (wrk): `synack watch` sees its requests, `synack --reuse 5` probes it,
/// and none of it is a middlebox.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn thread_per_connection_origin_under_load_is_not_a_middlebox() -> Result<()> {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut wrong = Wrong::default();
    let lab = lab(Delays::rtt(ms(1.0), ms(3.0)))?;
    let dir = TempDir::new()?;
    let _origin = paths::threading_origin(&lab, PY_PORT)?;
    let u = format!("http://{SERVER_V4}:{PY_PORT}/small.txt");

    // watch (eBPF only: it follows other programs' sockets) while wrk runs.
    let wout = dir.join("watch.jsonl");
    let werr = dir.join("watch.err");
    let mut c = lab
        .client
        .command(synack_bin().to_str().context("synack path")?);
    c.args([
        "watch",
        "--json",
        "--summary-every",
        "0",
        "--duration",
        "12s",
    ])
    .args(["--dst", SERVER_V4])
    .stdout(fs::File::create(&wout)?)
    .stderr(fs::File::create(&werr)?);
    let mut w = Proc::spawn(c, "synack watch")?;
    wait_for(Duration::from_secs(20), "synack watch to attach", || {
        let e = fs::read_to_string(&werr).unwrap_or_default();
        e.contains("synack watch: following").then_some(())
    })
    .with_context(|| fs::read_to_string(&werr).unwrap_or_default())?;
    let (mut load, wrk_out) = wrk(&lab, &dir, &u, 5)?;
    let st = load.wait_exit(Duration::from_secs(30))?;
    anyhow::ensure!(st.success(), "wrk failed: {st}");
    let made = wrk_requests(&wrk_out)?;
    // --duration ends watch by itself, after wrk's connections closed.
    let st = w.wait_exit(Duration::from_secs(30))?;
    let err = fs::read_to_string(&werr)?;
    if !st.success() {
        bail!("synack watch exited with {st}: {err}");
    }
    let recs = json_lines(&fs::read(&wout)?)?;
    let ours: Vec<&Value> = recs
        .iter()
        .filter(|r| {
            r["remote_addr"]
                .as_str()
                .is_some_and(|a| a.ends_with(&format!(":{PY_PORT}")))
        })
        .collect();
    let count = |p: &str| ours.iter().filter(|r| r["verdict"]["path"] == p).count();
    eprintln!(
        "watch under wrk: wrk made {made} requests; watch reported {} ({} direct, {} unknown, \
         {} middlebox); {}",
        ours.len(),
        count("direct"),
        count("unknown"),
        count("middlebox"),
        err.lines().last().unwrap_or("")
    );
    assert!(
        ours.len() as u64 >= made / 2 && ours.len() >= 100,
        "watch saw {} of wrk's {made} requests: {err}",
        ours.len()
    );
    let mb: Vec<Value> = ours
        .iter()
        .filter(|r| r["verdict"]["path"] == "middlebox")
        .take(3)
        .map(|r| brief(r))
        .collect();
    if count("middlebox") > 0 {
        // Noted, not thrown: the --reuse half below still runs and reports.
        let why = format!(
            "watch called {} of {} requests middlebox, e.g. {}",
            count("middlebox"),
            ours.len(),
            serde_json::to_string(&mb)?
        );
        eprintln!("watch under wrk: FAILED: {why}");
        wrong.0.push(why);
    }

    // synack --reuse 5 while wrk loads the origin, in both modes.
    for mode in MODES {
        let scenario = format!("--reuse 5 under wrk {mode} {u}");
        wrong.batch(&scenario, || {
            let (mut load, _) = wrk(&lab, &dir, &u, 10)?;
            // wrk connects within milliseconds; wait until it has.
            wait_for(Duration::from_secs(5), "wrk to connect", || {
                lab.client
                    .exec(&[
                        "ss",
                        "-Htn",
                        "state",
                        "established",
                        &format!("dport = :{PY_PORT}"),
                    ])
                    .ok()
                    .filter(|s| s.lines().count() >= 8)
                    .map(|_| ())
            })?;
            let recs = synack(&lab, mode, &["--count", "5", "--reuse", "5", &u])?;
            let running = load.child.try_wait()?.is_none();
            drop(load);
            anyhow::ensure!(running, "{scenario}: wrk ended before synack did");
            assert_eq!(recs.len(), 25, "{scenario}");
            let (mut f1, mut fn_) = (vec![], vec![]);
            for r in &recs {
                assert!(r["error"].is_null(), "{scenario}: {}", brief(r));
                let t = r["wire"]["ttfb_ms"].as_f64().unwrap_or(f64::NAN);
                if r["request_index"] == 0 {
                    f1.push(t);
                } else {
                    fn_.push(t);
                }
            }
            let med = |mut v: Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
            };
            let count = |p: &str| recs.iter().filter(|r| r["verdict"]["path"] == p).count();
            eprintln!(
                "{scenario}: first-request TTFB median {:.2} ms, later {:.2} ms; direct {}, \
                 unknown {}, middlebox {}",
                med(f1),
                med(fn_),
                count("direct"),
                count("unknown"),
                count("middlebox")
            );
            for r in &recs {
                assert_ne!(
                    r["verdict"]["path"],
                    "middlebox",
                    "{scenario}: {}",
                    brief(r)
                );
            }
            Ok(())
        });
    }
    wrong.finish()
}
