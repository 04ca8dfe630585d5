//! Lab scenarios, as root (issue 13, part 6):
//!
//! - real TLS-intercepting transparent proxies that no one here wrote
//!   (mitmproxy, and squid's SSL bump; each with its own CA) in mid, with
//!   the ground truth from a capture on the origin's side;
//! - an origin whose certificate (~30 KB) is larger than the initial
//!   congestion window, straight and through haproxy, with a capture that
//!   shows its first flight really took more than one round trip.
//!
//! Both in both modes (eBPF, unprivileged). The scenarios share a lock: they
//! measure milliseconds on a 2-core machine and must not run next to each
//! other.

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};
use synack_tests::{
    Capture, Errors, Packet, holds,
    intercept::{Mitmproxy, ORIGIN_NAME, SquidBump, big_cert_url},
    is_root, median_max, synack_bin,
    topo::{self, Bins, Delays, Lab, Via},
    truth,
};

static SERIAL: Mutex<()> = Mutex::new(());
const RUNS: usize = 10;
const MODES: [&str; 2] = ["ebpf", "unprivileged"];
/// The bound on |synack - truth|, ms.
const BOUND_MS: f64 = 3.0;

fn ms(v: f64) -> Duration {
    Duration::from_secs_f64(v / 1000.0)
}

fn lab(d: Delays, proxies: bool) -> Result<Lab> {
    assert!(
        is_root(),
        "the lab scenarios need root (namespaces, eBPF, iptables): cargo xtask test"
    );
    Lab::up(&Bins::beside_synack(), d, proxies)
}

/// `synack --json --mode MODE --cacert CA ARGS` in the client namespace.
fn synack(lab: &Lab, ca: &Path, mode: &str, args: &[&str]) -> Result<Vec<Value>> {
    let bin = synack_bin();
    let o = lab
        .client
        .command(bin.to_str().context("synack path is not UTF-8")?)
        .args(["--json", "--mode", mode, "--cacert"])
        .arg(ca)
        .args(args)
        .output()?;
    let recs = synack_tests::json_lines(&o.stdout)?;
    ensure!(
        !recs.is_empty(),
        "synack printed nothing: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(recs)
}

/// RUNS requests to `url`, each from a fresh synack process. Not `--count`:
/// synack's TLS client keeps the sessions of one run and resumes them (seen
/// in the capture: from the second connection on, the origin sent 234
/// bytes instead of its certificate), and these scenarios are about the
/// full handshake, certificate and all.
fn runs(lab: &Lab, ca: &Path, mode: &str, url: &str) -> Result<Vec<Value>> {
    runs_with(lab, ca, mode, &[url])
}

/// `runs` with more arguments than the URL.
fn runs_with(lab: &Lab, ca: &Path, mode: &str, args: &[&str]) -> Result<Vec<Value>> {
    let mut recs = Vec::new();
    for _ in 0..RUNS {
        recs.extend(synack(lab, ca, mode, args)?);
    }
    ensure!(recs.len() == RUNS, "{} records for {RUNS} runs", recs.len());
    Ok(recs)
}

fn opt(r: &Value, path: &[&str]) -> Option<f64> {
    let mut v = r;
    for p in path {
        v = &v[*p];
    }
    v.as_f64()
}

fn f(r: &Value, path: &[&str]) -> f64 {
    opt(r, path).unwrap_or_else(|| panic!("{} missing in {}", path.join("."), trimmed(r)))
}

/// The parts of a record the verdict rests on, for failure messages.
fn trimmed(r: &Value) -> Value {
    let mut t = serde_json::Map::new();
    for k in [
        "url",
        "mode",
        "error",
        "wire",
        "verdict",
        "phases",
        "middlebox",
        "tls_info",
    ] {
        t.insert(k.to_string(), r[k].clone());
    }
    Value::Object(t)
}

fn ok(r: &Value, mode: &str) {
    assert!(r["error"].is_null(), "request failed: {}", trimmed(r));
    assert_eq!(r["http_status"], 200, "{}", trimmed(r));
    assert_eq!(r["mode"], mode, "{}", trimmed(r));
}

/// What the origin really spent, from its Server-Timing header (a stolen
/// vCPU now and then stretches a sleep): at least what was set.
fn spent(r: &Value, set: f64) -> f64 {
    let d = f(r, &["server_timing_ms"]);
    assert!(
        d >= set - 0.05,
        "the origin says it thought {d} ms for {set}"
    );
    d
}

/// The lab's own RTT with no delay set (median handshake of a few direct
/// connections), as tests/tests/lab.rs measures it.
fn base_rtt(lab: &Lab) -> Result<f64> {
    let u = lab.url(Via::Direct, false, false, "/");
    let recs = synack(lab, &lab.ca_path(), "ebpf", &["--count", "7", &u])?;
    let mut v: Vec<f64> = recs
        .iter()
        .map(|r| f(r, &["wire", "handshake_rtt_ms"]))
        .collect();
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

/// One TCP connection to the origin as the origin's side of the capture saw
/// it (`peer` is the client: synack, haproxy or mitmproxy).
struct Conn<'a> {
    peer: (IpAddr, u16),
    server: (IpAddr, u16),
    pkts: Vec<&'a Packet>,
}

impl Conn<'_> {
    /// Its packets as (ms since the SYN, "<" from the peer or ">" from the
    /// origin, payload bytes), for failure messages.
    fn summary(&self) -> String {
        let t0 = self.pkts.first().map_or(0, |p| p.ts_ns);
        self.pkts
            .iter()
            .map(|p| {
                let dir = if self.sent_by_peer(p) { '<' } else { '>' };
                format!("{:.1}{dir}{}", (p.ts_ns - t0) as f64 / 1e6, p.payload_len)
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn sent_by_peer(&self, p: &Packet) -> bool {
        (p.src, p.sport) == self.peer
    }

    /// The origin's SYN-ACK out to the peer's ACK in: the RTT between the
    /// peer and the origin (ms).
    fn rtt_ms(&self) -> Option<f64> {
        let i = self
            .pkts
            .iter()
            .position(|p| !self.sent_by_peer(p) && p.syn && p.ack_flag)?;
        let sa = self.pkts[i];
        let ack = self.pkts[i + 1..]
            .iter()
            .find(|p| self.sent_by_peer(p) && p.ack_flag && !p.syn)?;
        Some((ack.ts_ns - sa.ts_ns) as f64 / 1e6)
    }

    /// The origin's think time: the request's last segment in to the
    /// response's first segment out, the response being the first payload
    /// after `quiet` of silence (ms).
    fn think_ms(&self, all: &[Packet], quiet: Duration) -> Option<f64> {
        truth(all, self.peer, self.server, quiet)
            .ttfb_ns
            .map(|ns| ns as f64 / 1e6)
    }

    /// The origin's first TLS flight (after the ClientHello, up to the
    /// peer's Finished): (bytes, rounds), a new round beginning after a
    /// pause of at least `gap` (the flight waited for ACKs).
    fn first_flight(&self, gap: Duration) -> (usize, usize) {
        let Some(hello) = self
            .pkts
            .iter()
            .position(|p| self.sent_by_peer(p) && p.payload_len > 0)
        else {
            return (0, 0);
        };
        // A TLS 1.3 client answers the ServerHello at once with a
        // ChangeCipherSpec record (6 bytes, middlebox compatibility), in the
        // middle of the server's flight: not the end of it.
        const CCS: usize = 6;
        let flight: Vec<&&Packet> = self.pkts[hello + 1..]
            .iter()
            .take_while(|p| !(self.sent_by_peer(p) && p.payload_len > CCS))
            .filter(|p| !self.sent_by_peer(p) && p.payload_len > 0)
            .collect();
        let bytes = flight.iter().map(|p| p.payload_len).sum();
        let rounds = if flight.is_empty() {
            0
        } else {
            1 + flight
                .windows(2)
                .filter(|w| w[1].ts_ns - w[0].ts_ns >= gap.as_nanos() as u64)
                .count()
        };
        (bytes, rounds)
    }
}

/// The connections from `from` to the origin's `server` in a capture, in
/// the order they were opened (only those whose SYN was captured).
fn conns(pkts: &[Packet], from: IpAddr, server: (IpAddr, u16)) -> Vec<Conn<'_>> {
    let mut out: Vec<Conn> = Vec::new();
    for p in pkts {
        let peer = if (p.dst, p.dport) == server && p.src == from {
            (p.src, p.sport)
        } else if (p.src, p.sport) == server && p.dst == from {
            (p.dst, p.dport)
        } else {
            continue;
        };
        match out.iter_mut().find(|c| c.peer == peer) {
            Some(c) => c.pkts.push(p),
            None if p.syn && !p.ack_flag => out.push(Conn {
                peer,
                server,
                pkts: vec![p],
            }),
            None => {}
        }
    }
    out
}

fn addrs(v6: bool) -> Result<(IpAddr, IpAddr, IpAddr)> {
    let (c, m, s) = if v6 {
        (topo::CLIENT_V6, topo::MID_S_V6, topo::SERVER_V6)
    } else {
        (topo::CLIENT_V4, topo::MID_S_V4, topo::SERVER_V4)
    };
    Ok((c.parse()?, m.parse()?, s.parse()?))
}

#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn tls_intercepting_proxy_is_found_and_measured() -> Result<()> {
    intercepted(Kind::Mitmproxy, false)
}

/// The same runs, also holding `middlebox.origin_rtt_ms` to the capture
/// within 3 ms (issue 13's bound; server time is held in every run).
#[test]
#[ignore = "not met through mitmproxy (squid's SSL bump meets it: \
            squid_ssl_bump_is_found_and_measured): the origin RTT's tighter bound is the \
            request's, F - R1 - Server-Timing, which still holds mitmproxy's own time forwarding \
            the request (Python: 2.4-3.8 ms in the lab, told apart from R2 by nothing the client \
            sees); measured 3.0-3.3 ms median over the origin-side RTT unprivileged, within 3 ms \
            with eBPF; see docs/lab.md"]
fn tls_intercepting_proxy_origin_rtt_within_3_ms() -> Result<()> {
    intercepted(Kind::Mitmproxy, true)
}

/// squid's SSL bump, the interceptor written in C that corporate networks
/// run: middlebox, its CA's certificate, and origin RTT and server time
/// both within 3 ms of the origin-side capture.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn squid_ssl_bump_is_found_and_measured() -> Result<()> {
    intercepted(Kind::SquidBump, true)
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Mitmproxy,
    SquidBump,
}

/// A running interceptor; dropping it stops it (before the lab goes).
enum Interceptor {
    Mitm(Mitmproxy),
    Squid(SquidBump),
}

impl Interceptor {
    fn start(kind: Kind, lab: &Lab) -> Result<Self> {
        Ok(match kind {
            Kind::Mitmproxy => Interceptor::Mitm(Mitmproxy::start(lab)?),
            Kind::SquidBump => Interceptor::Squid(SquidBump::start(lab)?),
        })
    }
    fn ca(&self) -> &PathBuf {
        match self {
            Interceptor::Mitm(m) => &m.ca,
            Interceptor::Squid(s) => &s.ca,
        }
    }
    fn pid(&self) -> i32 {
        match self {
            Interceptor::Mitm(m) => m.pid(),
            Interceptor::Squid(s) => s.pid(),
        }
    }
    /// What the issuer of the certificate we receive through it contains.
    fn issuer(&self) -> &'static str {
        match self {
            Interceptor::Mitm(_) => "mitmproxy",
            Interceptor::Squid(_) => "synack lab squid CA",
        }
    }
}

/// An interceptor in mid, the client reaching the origin through it and,
/// as a control, straight; synack's server time is held to the origin-side
/// capture, and with `hold_numbers` its origin RTT too (always printed).
fn intercepted(kind: Kind, hold_numbers: bool) -> Result<()> {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (near, far, think) = (4.0, 40.0, 15.0);
    let lab = lab(Delays::rtt(ms(near), ms(far)), false)?;
    // Declared after the lab: stopped before the lab goes.
    let icpt = Interceptor::start(kind, &lab)?;
    eprintln!(
        "{kind:?} pid {}, CA {}; set: client RTT {near} ms, server RTT {far} ms, think {think} ms",
        icpt.pid(),
        icpt.ca().display()
    );
    let path = format!("/delay/{think}");
    for mode in MODES {
        for v6 in [false, true] {
            let (_, mid, server) = addrs(v6)?;
            let u = lab.url(Via::TlsInterceptor, true, v6, &path);
            // squid matches the origin's certificate against a name: ask
            // for the origin by name, at the address the URL has.
            let (u, resolve) = match kind {
                Kind::Mitmproxy => (u, None),
                Kind::SquidBump => {
                    let port = topo::INTERCEPT_HTTPS;
                    let ip = if v6 {
                        format!("[{server}]")
                    } else {
                        server.to_string()
                    };
                    (
                        format!("https://{ORIGIN_NAME}:{port}{path}"),
                        Some(format!("{ORIGIN_NAME}:{port}:{ip}")),
                    )
                }
            };
            let mut args = vec![u.as_str()];
            if let Some(r) = &resolve {
                args.extend(["--resolve", r]);
            }
            let scenario = format!("{kind:?} {mode} {}", args.join(" "));
            holds(&scenario, || {
                let cap = Capture::start(&lab.server, &lab.server_if, &lab.dir)?;
                let recs = runs_with(&lab, icpt.ca(), mode, &args);
                let pkts = cap.finish()?;
                let recs = recs?;
                let up = conns(&pkts, mid, (server, topo::INTERCEPT_HTTPS));
                ensure!(
                    up.len() == RUNS,
                    "{scenario}: {} connections from the interceptor to the origin for {RUNS} requests",
                    up.len()
                );
                // Measure and print everything first, then hold each record
                // to the contract: a failing run still shows its numbers.
                let (mut eo, mut es) = (
                    Errors::new("origin_rtt_ms vs the origin-side capture"),
                    Errors::new("server_ms vs the origin-side capture"),
                );
                let (mut rtts, mut thinks, mut own) = (vec![], vec![], vec![]);
                for (r, c) in recs.iter().zip(&up) {
                    let rtt = c.rtt_ms().context("no SYN-ACK/ACK on the origin's side")?;
                    let th = c
                        .think_ms(&pkts, ms(think / 2.0))
                        .context("no request/response on the origin's side")?;
                    rtts.push(rtt);
                    thinks.push(th);
                    // What is left of the wire TTFB after the client link,
                    // the upstream RTT and the origin's think time: the
                    // proxy's own time on the request and the response.
                    if let (Some(ttfb), Some(h)) = (
                        opt(r, &["wire", "ttfb_ms"]),
                        opt(r, &["wire", "handshake_rtt_ms"]),
                    ) {
                        own.push(ttfb - h - rtt - th);
                    }
                    if let Some(o) = opt(r, &["middlebox", "origin_rtt_ms"]) {
                        eo.push(o - rtt);
                    }
                    if let Some(s) = opt(r, &["phases", "server_ms"]) {
                        es.push(s - th);
                    }
                }
                let (mr, xr) = median_max(&rtts);
                let (mt, xt) = median_max(&thinks);
                let (mp, xp) = median_max(&own);
                eprintln!(
                    "{scenario}: truth (origin side) mid<->origin RTT median {mr:.3} ms (max {xr:.3}), \
                     think median {mt:.3} ms (max {xt:.3}); the proxy's own time on the request \
                     (wire TTFB - handshake RTT - those two) median {mp:.3} ms (max {xp:.3})"
                );
                let mo = eo.report(&scenario);
                let ms_ = es.report(&scenario);
                let mut named = 0;
                for r in &recs {
                    ok(r, mode);
                    let t = trimmed(r);
                    assert_eq!(r["verdict"]["path"], "middlebox", "{scenario}: {t}");
                    // Without the reply to our Finished (discarded when our
                    // request left late and the reply could answer either)
                    // a relay and a TLS proxy predict the same ServerHello:
                    // then no explanation is named, and the reasons say so.
                    if r["verdict"]["explanation"] == "tls_terminating_proxy" {
                        named += 1;
                    } else {
                        assert!(
                            r["verdict"]["explanation"].is_null()
                                && r["wire"]["tls_round2_ms"].is_null()
                                && r["verdict"]["reasons"]
                                    .to_string()
                                    .contains("explain the timings equally"),
                            "{scenario}: {t}"
                        );
                    }
                    let issuer = r["tls_info"]["cert_issuer"].as_str().unwrap_or_default();
                    assert!(
                        issuer.contains(icpt.issuer()),
                        "{scenario}: issuer {issuer:?}: {t}"
                    );
                    f(r, &["middlebox", "origin_rtt_ms"]);
                    f(r, &["phases", "server_ms"]);
                }
                assert!(
                    named * 2 > recs.len(),
                    "{scenario}: the interceptor named in {named} of {} runs",
                    recs.len()
                );
                assert!(
                    !hold_numbers || mo <= BOUND_MS,
                    "{scenario}: origin RTT median error {mo:.3} ms; errors {:?}; the first run: {}",
                    eo.v,
                    trimmed(&recs[0])
                );
                assert!(
                    ms_ <= BOUND_MS,
                    "{scenario}: server time median error {ms_:.3} ms; errors {:?}; the first run: {}",
                    es.v,
                    trimmed(&recs[0])
                );
                Ok(())
            })?;
            // Control: the same origin reached straight is direct, with the
            // lab origin's certificate.
            let d = lab.url(Via::Direct, true, v6, &path);
            let scenario = format!("no interception {mode} {d}");
            holds(&scenario, || {
                let recs = runs(&lab, &lab.ca_path(), mode, &d)?;
                let mut es = Errors::new("server_ms vs the origin's Server-Timing");
                for r in &recs {
                    if let Some(s) = opt(r, &["phases", "server_ms"]) {
                        es.push(s - spent(r, think));
                    }
                }
                es.report(&scenario);
                for r in &recs {
                    ok(r, mode);
                    let t = trimmed(r);
                    assert_eq!(r["verdict"]["path"], "direct", "{scenario}: {t}");
                    let issuer = r["tls_info"]["cert_issuer"].as_str().unwrap_or_default();
                    assert!(
                        issuer.contains("synack test CA"),
                        "{scenario}: issuer {issuer:?}: {t}"
                    );
                }
                Ok(())
            })?;
        }
    }
    drop(icpt);
    Ok(())
}

#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn certificate_larger_than_initial_window() -> Result<()> {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (near, far, think) = (4.0, 40.0, 20.0);
    let mut lab = lab(Delays::default(), true)?;
    let base = base_rtt(&lab)?;
    lab.set_delays(Delays::rtt(ms(near), ms(far)))?;
    eprintln!(
        "set: client RTT {near} ms, server RTT {far} ms, think {think} ms; lab base RTT {base:.3} ms"
    );
    let path = format!("/delay/{think}");
    let ca = lab.ca_path();
    for mode in MODES {
        for v6 in [false, true] {
            let (client, mid, server) = addrs(v6)?;
            for via in [Via::Direct, Via::TcpProxy] {
                let u = big_cert_url(via, v6, &path)?;
                let (peer, port, rtt) = match via {
                    Via::Direct => (client, topo::BIG_HTTPS, near + far + base),
                    _ => (mid, topo::PROXY_BIG_HTTPS, far + base),
                };
                let scenario = format!("big certificate {via:?} {mode} {u}");
                holds(&scenario, || {
                    let cap = Capture::start(&lab.server, &lab.server_if, &lab.dir)?;
                    let recs = runs(&lab, &ca, mode, &u);
                    let pkts = cap.finish()?;
                    let recs = recs?;
                    // The point of the scenario: the origin's first flight
                    // did not fit the initial window and waited for ACKs.
                    let cs = conns(&pkts, peer, (server, port));
                    ensure!(cs.len() == RUNS, "{} connections captured", cs.len());
                    let mut flights = vec![];
                    for c in &cs {
                        let (bytes, rounds) = c.first_flight(ms(rtt / 2.0));
                        flights.push((bytes, rounds));
                        assert!(
                            bytes > 20_000 && rounds >= 2,
                            "{scenario}: the origin's first flight was {bytes} bytes in \
                             {rounds} round(s): the certificate must not fit the initial window; \
                             the connection: {}",
                            c.summary()
                        );
                    }
                    eprintln!("{scenario}: origin's first flights (bytes, rounds) {flights:?}");
                    let (mut eo, mut es) = (
                        Errors::new("origin_rtt_ms vs the set server RTT + base"),
                        Errors::new("server_ms vs the origin-side capture's think time"),
                    );
                    // The origin side's view of each run, printed next to
                    // synack's: what the origin spent (capture and its
                    // Server-Timing), and what is left of the wire TTFB
                    // after the handshake RTT, the capture's RTT from the
                    // peer (synack or haproxy) and the think time.
                    let (mut thinks, mut rest, mut wrong) = (vec![], vec![], vec![]);
                    for (r, c) in recs.iter().zip(&cs) {
                        ok(r, mode);
                        let t = trimmed(r);
                        let th = c
                            .think_ms(&pkts, ms(think / 2.0))
                            .context("no request/response on the origin's side")?;
                        spent(r, think);
                        thinks.push(th);
                        let peer_rtt = c.rtt_ms().context("no SYN-ACK/ACK on the origin's side")?;
                        let (ttfb, h) = (
                            f(r, &["wire", "ttfb_ms"]),
                            f(r, &["wire", "handshake_rtt_ms"]),
                        );
                        rest.push(if via == Via::Direct {
                            ttfb - peer_rtt - th
                        } else {
                            ttfb - h - peer_rtt - th
                        });
                        let s = f(r, &["phases", "server_ms"]);
                        es.push(s - th);
                        // Every record is measured before any is held to the
                        // bounds, so that a failing batch still prints its
                        // numbers.
                        if (s - th).abs() > BOUND_MS {
                            wrong.push(format!("server {s} ms, origin-side think {th:.3}: {t}"));
                        }
                        let path = if via == Via::Direct {
                            "direct"
                        } else {
                            "middlebox"
                        };
                        if r["verdict"]["path"] != path {
                            wrong.push(format!("verdict not {path}: {t}"));
                        }
                        if via != Via::Direct {
                            let o = f(r, &["middlebox", "origin_rtt_ms"]);
                            eo.push(o - rtt);
                            if (o - rtt).abs() > BOUND_MS {
                                wrong.push(format!("origin RTT {o} ms for {rtt:.3}: {t}"));
                            }
                        }
                    }
                    let (mt, xt) = median_max(&thinks);
                    let (mr, xr) = median_max(&rest);
                    eprintln!(
                        "{scenario}: origin-side think median {mt:.3} ms (max {xt:.3}); wire TTFB \
                         not explained by RTTs and think time: median {mr:.3} ms (max {xr:.3})"
                    );
                    if via != Via::Direct {
                        eo.report(&scenario);
                    }
                    es.report(&scenario);
                    assert!(
                        wrong.is_empty(),
                        "{scenario}: {} of {RUNS} runs wrong; the first: {}",
                        wrong.len(),
                        wrong[0]
                    );
                    Ok(())
                })?;
            }
        }
    }
    Ok(())
}
