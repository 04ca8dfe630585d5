//! The client's own share (issue 14), as root: synack runs inside a cgroup
//! with a small CPU quota next to a process that spins in the same cgroup,
//! on a direct 20 ms path. The wire round trips stay as they are; the time
//! the client sat on its packets must be booked as client time, named as
//! throttling, and not as network time. An unthrottled run of the same
//! requests is the reference, and it never names the client.

use anyhow::Result;
use serde_json::Value;
use std::{sync::Mutex, time::Duration};
use synack_tests::{
    CpuCgroup, holds, is_root, median_max,
    topo::{Bins, Delays, Lab, Via},
};

static SERIAL: Mutex<()> = Mutex::new(());
const RUNS: usize = 8;
/// The quota: 5% of one CPU, shared with a spinner: synack gets a few ms
/// of CPU per 100 ms period, as a throttled idle instance does (at 3% a
/// debug build spends seconds on one request).
const QUOTA_PERCENT: u32 = 5;

fn ms(v: f64) -> Duration {
    Duration::from_secs_f64(v / 1000.0)
}

fn f(r: &Value, path: &[&str]) -> f64 {
    let mut v = r;
    for p in path {
        v = &v[*p];
    }
    v.as_f64()
        .unwrap_or_else(|| panic!("{} missing in {r}", path.join(".")))
}

/// connect() to the first byte read, from the record's user-space marks.
fn user_span(r: &Value) -> f64 {
    let at = |e: &str| {
        r["timeline"]
            .as_array()
            .and_then(|t| t.iter().find(|x| x["event"] == e))
            .and_then(|x| x["t_ns"].as_u64())
            .unwrap_or_else(|| panic!("no {e} in {r}"))
    };
    (at("first_byte_read") - at("connect_call")) as f64 / 1e6
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// synack --json in the client's network namespace, moved into the cgroup
/// first. nsenter switches only the network namespace: `ip netns exec`
/// would mount a fresh /sys, hiding the cgroup hierarchy from synack.
fn in_cgroup(lab: &Lab, cg: &CpuCgroup, args: &[&str]) -> Result<Vec<Value>> {
    let bin = synack_tests::synack_bin();
    let mut c = std::process::Command::new("sh");
    c.args(cg.wrap().iter().skip(1))
        .arg("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.client.name))
        .arg(&bin)
        .arg("--json")
        .arg("--cacert")
        .arg(lab.ca_path())
        .args(args);
    let o = c.output()?;
    let recs = synack_tests::json_lines(&o.stdout)?;
    anyhow::ensure!(
        !recs.is_empty(),
        "synack printed nothing: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(recs)
}

fn ok(r: &Value) {
    assert!(r["error"].is_null(), "request failed: {r}");
    assert_eq!(r["http_status"], 200, "{r}");
}

#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn a_cpu_starved_client_is_the_clients_time_not_the_networks() -> Result<()> {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        is_root(),
        "the lab scenarios need root (namespaces, eBPF, cgroups): cargo xtask test"
    );
    let think = 10.0;
    let lab = Lab::up(
        &Bins::beside_synack(),
        Delays::rtt(ms(10.0), ms(10.0)),
        false,
    )?;
    for tls in [false, true] {
        let u = lab.url(Via::Direct, tls, false, &format!("/delay/{think}"));
        for mode in ["ebpf", "unprivileged"] {
            let scenario = format!("{u} --mode {mode}");
            holds(&scenario, || {
                let n = RUNS.to_string();
                let args = ["--mode", mode, "--count", &n, u.as_str()];
                // The reference: no quota.
                let free = synack_tests::lab_synack(&lab, &[], &args)?.0;
                assert_eq!(free.len(), RUNS);
                for r in &free {
                    ok(r);
                    assert_ne!(
                        r["verdict"]["bottleneck"], "client",
                        "{scenario} unthrottled: {r}"
                    );
                }
                let net_free = median(
                    &free
                        .iter()
                        .map(|r| f(r, &["phases", "network_ms"]))
                        .collect::<Vec<_>>(),
                );
                let span_free = median(&free.iter().map(user_span).collect::<Vec<_>>());
                let client_free = median(
                    &free
                        .iter()
                        .map(|r| f(r, &["phases", "client_ms"]))
                        .collect::<Vec<_>>(),
                );

                // The same requests from a cgroup at 3% of a CPU, next to a spinner.
                let cg = CpuCgroup::new(QUOTA_PERCENT)?;
                // One spinner per CPU: the quota runs out early in every
                // period, whichever CPU synack wakes on.
                let spinner = cg.spinners(2)?;
                let starved = in_cgroup(&lab, &cg, &args)?;
                drop(spinner);
                drop(cg);
                assert_eq!(starved.len(), RUNS);
                let (mut dn, mut dc, mut ds) = (Vec::new(), Vec::new(), Vec::new());
                let (mut stalled, mut named) = (0, 0);
                for r in &starved {
                    ok(r);
                    assert_eq!(r["verdict"]["path"], "direct", "{scenario}: {r}");
                    let net = f(r, &["phases", "network_ms"]);
                    let client = f(r, &["phases", "client_ms"]);
                    let server = f(r, &["phases", "server_ms"]);
                    let spent = f(r, &["server_timing_ms"]);
                    let span = user_span(r);
                    let sum = net + f(r, &["phases", "middlebox_ms"]) + server + client;
                    assert!(
                        (sum - span).abs() < 0.01,
                        "{scenario}: phases {sum} vs user span {span}: {r}"
                    );
                    // Reported, not held: under the quota the server time came
                    // out 1-4 ms over the origin's own count (issue 14 holds the
                    // network and the client's share; see docs/lab.md).
                    ds.push(server - spent);
                    dn.push((net - net_free).abs());
                    // A request the quota happened to spare (the cgroup was held
                    // while synack slept on the network) is not a stalled one.
                    let extra = span - span_free;
                    if extra <= 20.0 {
                        continue;
                    }
                    stalled += 1;
                    dc.push(((client - client_free) - extra).abs() / extra);
                    let largest = [net, server].iter().all(|&o| client > o);
                    if largest {
                        named += 1;
                        assert_eq!(r["verdict"]["bottleneck"], "client", "{scenario}: {r}");
                        if r["client"]["throttled_periods"]
                            .as_u64()
                            .is_some_and(|n| n > 0)
                        {
                            let why = r["verdict"]["reasons"].to_string();
                            assert!(
                                why.contains("throttled"),
                                "{scenario}: the reasons do not name it: {why}"
                            );
                        }
                    } else {
                        assert_ne!(r["verdict"]["bottleneck"], "client", "{scenario}: {r}");
                    }
                }
                assert!(
                    stalled >= 3 && named >= 1,
                    "{scenario}: only {stalled} of {RUNS} requests were slowed by the quota, {named} \
                     named the client"
                );
                let (mn, xn) = median_max(&dn);
                let (msv, xsv) = median_max(&ds.iter().map(|x: &f64| x.abs()).collect::<Vec<_>>());
                eprintln!(
                    "{scenario}: server_ms - the origin's Server-Timing |error| median {msv:.2} ms max {xsv:.2}"
                );
                let (mc, xc) = median_max(&dc);
                eprintln!(
                    "{scenario}: user span {span_free:.1} ms free; network |starved - free| median {mn:.2} ms max {xn:.2}; client share vs extra user time: median {:.1}% max {:.1}%",
                    mc * 100.0,
                    xc * 100.0
                );
                assert!(mn <= 3.0, "{scenario}: network moved by {mn} ms (median)");
                assert!(
                    mc <= 0.10,
                    "{scenario}: client_ms is {:.0}% off the extra user-space time",
                    mc * 100.0
                );
                Ok(())
            })?;
        }
    }
    Ok(())
}
