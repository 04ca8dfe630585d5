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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A wire time of each record's request `index`. A TTFB less what the
/// origin says it spent (its Server-Timing header): the two modes are
/// separate runs, and the origin's think time (a sleep, which overshoots by
/// up to a millisecond on a busy machine) is noise the same in neither, not
/// something either mode measures differently.
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
        holds(name, || agree(&lab, name, &args, verdict))?;
    }
    Ok(())
}

/// One scenario: the same requests in eBPF and unprivileged mode agree.
fn agree(lab: &Lab, name: &str, args: &[&str], verdict: &str) -> Result<()> {
    let (ebpf, _) = synack(lab, false, args)?;
    let (unpriv, err) = synack(lab, true, args)?;
    assert!(
        err.contains("eBPF not used") && err.contains("CAP_BPF"),
        "{name}: stderr should say why eBPF was not used: {err}"
    );
    for r in &unpriv {
        assert_eq!(r["mode"], "unprivileged", "{name}: {r}");
        assert!(r["error"].is_null(), "{name}: {r}");
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
        let (a, b) = (wire(&ebpf, k, index), wire(&unpriv, k, index));
        if (index == 1 || k == "tls_rtt_ms") && a.is_empty() {
            continue; // no second request, or no TLS, in this scenario
        }
        assert!(
            !a.is_empty() && b.len() == a.len(),
            "{name}: {k} of request {index}: eBPF {a:?}, unprivileged {b:?}"
        );
        let (ma, mb) = (median(a), median(b));
        eprintln!(
            "{name}: {k}{} (request {index}) median eBPF {ma:.3} ms, unprivileged {mb:.3} ms, difference {:.3} ms",
            if k == "ttfb_ms" {
                " less Server-Timing"
            } else {
                ""
            },
            mb - ma
        );
        assert!(
            (ma - mb).abs() <= AGREE_MS,
            "{name}: {k} of request {index}: eBPF {ma:.3} ms vs unprivileged {mb:.3} ms"
        );
    }
    Ok(())
}
