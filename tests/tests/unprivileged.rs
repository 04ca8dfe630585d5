//! Unprivileged mode in the lab, as root dropping every capability
//! (setpriv): synack cannot load eBPF, says why on stderr, times with the
//! sockets' own kernel timestamps, and its handshake RTT and wire TTFB agree
//! with the eBPF mode's for the same scenarios; the verdicts hold.

use anyhow::Result;
use serde_json::Value;
use std::time::Duration;
use synack_tests::{
    holds, is_root,
    topo::{Bins, Delays, Lab, Via},
};

/// Runs per mode and scenario: the two modes are separate runs, so their
/// medians carry the lab's own jitter (the delay line, haproxy); more runs
/// keep it well under the bound.
const RUNS: &str = "15";
/// The bound on |unprivileged - eBPF|, per scenario (medians).
const AGREE_MS: f64 = 0.3;

/// synack --json in the client namespace; with `unprivileged`, every
/// capability dropped first. Returns (records, stderr).
fn synack(lab: &Lab, unprivileged: bool, args: &[&str]) -> Result<(Vec<Value>, String)> {
    let drop_all: &[&str] = &[
        "setpriv",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
    ];
    synack_tests::lab_synack(lab, if unprivileged { drop_all } else { &[] }, args)
}

/// The median; NaN for no values (only printed then).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A wire time of each record's request `index`. A TTFB less what the
/// origin says it spent (its Server-Timing header): the two modes are
/// separate runs, and the origin's think time (a sleep, which overshoots by
/// up to a millisecond on a busy machine) is noise the same in neither, not
/// something either mode measures differently.
/// The time of wire event `event` after the connect returned (ms), per
/// record of request `index`, less the origin's Server-Timing for the
/// response. Through a TCP proxy that dials the origin when it accepts (the
/// lab's haproxy), the first answer's arrival is pinned to the handshake,
/// not to when the client spoke: a client that writes 0.4 ms later after
/// connect() sees a TTFB 0.4 ms shorter, truly. The two modes are separate
/// runs whose user-space gap between connect() and the first write differs
/// with the host's load, so there the quantity both must agree on is the
/// answer's arrival after the connect.
fn since_connect(recs: &[Value], event: &str, index: u64) -> Vec<f64> {
    recs.iter()
        .filter(|r| r["request_index"] == index)
        .filter_map(|r| {
            let tl = r["timeline"].as_array()?;
            let at = |name: &str| {
                tl.iter()
                    .find(|e| e["event"] == name)
                    .and_then(|e| e["t_ns"].as_f64())
            };
            let ms = (at(event)? - at("connect_done")?) / 1e6;
            if event == "response_in" {
                Some(ms - r["server_timing_ms"].as_f64()?)
            } else {
                Some(ms)
            }
        })
        .collect()
}

fn wire(recs: &[Value], k: &str, index: u64) -> Vec<f64> {
    recs.iter()
        .filter(|r| r["request_index"] == index)
        .filter_map(|r| {
            let v = r["wire"][k].as_f64()?;
            if k == "ttfb_ms" {
                Some(v - r["server_timing_ms"].as_f64()?)
            } else {
                Some(v)
            }
        })
        .collect()
}

#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn unprivileged_mode_agrees_with_ebpf_in_the_lab() -> Result<()> {
    assert!(
        is_root(),
        "the lab needs root (namespaces, iptables); synack then drops every capability"
    );
    let ms = |v: f64| Duration::from_secs_f64(v / 1000.0);
    let lab = Lab::up(&Bins::beside_synack(), Delays::rtt(ms(4.0), ms(20.0)), true)?;
    let scenarios = [
        ("direct HTTPS", Via::Direct, true, vec![], "direct"),
        ("haproxy HTTPS", Via::TcpProxy, true, vec![], "middlebox"),
        (
            "direct HTTP --reuse 2",
            Via::Direct,
            false,
            vec!["--reuse", "2"],
            "direct",
        ),
        (
            "haproxy HTTP --reuse 2",
            Via::TcpProxy,
            false,
            vec!["--reuse", "2"],
            "middlebox",
        ),
    ];
    for (name, via, tls, extra, verdict) in scenarios {
        let url = lab.url(via, tls, false, "/delay/10");
        let mut args = vec!["--count", RUNS];
        args.extend(extra.iter().copied());
        args.push(&url);
        // Medians of two separate runs: a batch the host's noise broke is run
        // again (at most LAB_BATCHES, each must hold entirely), as the lab
        // scenarios do.
        let dials_on_accept = via == Via::TcpProxy;
        holds(name, || agree(&lab, name, &args, verdict, dials_on_accept))?;
    }
    Ok(())
}

/// One scenario: the same requests in eBPF and unprivileged mode agree.
/// With `dials_on_accept` (a TCP proxy that connects to the origin when it
/// accepts), the first answers of the connection (TLS's ServerHello, or the
/// plain first response) are compared by their arrival after the connect
/// ([`since_connect`]); every other interval as it is.
fn agree(lab: &Lab, name: &str, args: &[&str], verdict: &str, dials_on_accept: bool) -> Result<()> {
    let (ebpf, _) = synack(lab, false, args)?;
    let (unpriv, err) = synack(lab, true, args)?;
    assert!(
        err.contains("eBPF not used") && err.contains("CAP_BPF"),
        "{name}: stderr should say why eBPF was not used: {err}"
    );
    for r in &unpriv {
        assert_eq!(r["mode"], "unprivileged", "{name}: {r}");
        assert!(r["error"].is_null(), "{name}: error {} in {r}", r["error"]);
        // What this mode cannot see stays null.
        assert!(r["wire"]["synack_ttl"].is_null(), "{name}: {r}");
        assert!(r["wire"]["retransmits_in"].is_null(), "{name}: {r}");
        assert_eq!(r["verdict"]["path"], verdict, "{name}: {r}");
        let reasons = r["verdict"]["reasons"].to_string();
        assert!(reasons.contains("unprivileged mode"), "{name}: {reasons}");
    }
    for r in &ebpf {
        assert_eq!(r["mode"], "ebpf");
        assert_eq!(r["verdict"]["path"], verdict, "{name} (eBPF): {r}");
    }
    for (k, index) in [
        ("handshake_rtt_ms", 0),
        ("tls_rtt_ms", 0),
        ("ttfb_ms", 0),
        ("ttfb_ms", 1),
    ] {
        let tls = !wire(&ebpf, "tls_rtt_ms", 0).is_empty();
        // The connection's first answer: the ServerHello with TLS, else the
        // first response.
        let first_answer = match k {
            "tls_rtt_ms" => Some("server_hello_in"),
            "ttfb_ms" if index == 0 && !tls => Some("response_in"),
            _ => None,
        };
        let (a, b, what) = match first_answer {
            Some(ev) if dials_on_accept => (
                since_connect(&ebpf, ev, index),
                since_connect(&unpriv, ev, index),
                format!("{ev} after connect_done"),
            ),
            _ => (
                wire(&ebpf, k, index),
                wire(&unpriv, k, index),
                k.to_string(),
            ),
        };
        if (index == 1 || k == "tls_rtt_ms") && a.is_empty() {
            continue; // no second request, or no TLS, in this scenario
        }
        assert!(
            !a.is_empty() && b.len() == a.len(),
            "{name}: {k} of request {index}: eBPF {a:?}, unprivileged {b:?}"
        );
        let (ma, mb) = (median(a), median(b));
        eprintln!(
            "{name}: {what}{} (request {index}) median eBPF {ma:.3} ms, unprivileged {mb:.3} ms, difference {:.3} ms",
            if k == "ttfb_ms" {
                " less Server-Timing"
            } else {
                ""
            },
            mb - ma
        );
        assert!(
            (ma - mb).abs() <= AGREE_MS,
            "{name}: {what} of request {index}: eBPF {ma:.3} ms vs unprivileged {mb:.3} ms; \
             the gap connect_done -> first write, median eBPF {:.3} ms, unprivileged {:.3} ms",
            median(since_connect(&ebpf, "request_out", 0)),
            median(since_connect(&unpriv, "request_out", 0)),
        );
    }
    Ok(())
}
