//! The answer to one `/probe` (blackbox_exporter's multi-target pattern):
//! that probe's metrics only, blackbox's names and meanings where they
//! overlap (`probe_success`, `probe_duration_seconds`,
//! `probe_http_duration_seconds{phase}` with its resolve, connect, tls,
//! processing and transfer, `probe_http_status_code`, ...), then synack's
//! own: the wire's round trips, the verdict's split, path and bottleneck.

use crate::model::record::Record;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};
use std::sync::atomic::AtomicU64;

type FGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseL {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirL {
    direction: String,
}

/// The final record of each request: a hop that was followed by a
/// redirect is not one (its status is the redirect's).
pub(crate) fn finals(recs: &[Record]) -> Vec<&Record> {
    recs.iter()
        .enumerate()
        .filter(|(i, r)| {
            recs.get(i + 1)
                .is_none_or(|n| n.redirect_hop <= r.redirect_hop)
        })
        .map(|(_, r)| r)
        .collect()
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: f64) {
    let g = FGauge::default();
    g.set(v);
    reg.register(name, help, g);
}

fn ms_between(r: &Record, a: &[&str], b: &str) -> Option<f64> {
    let end = r.at(b)?;
    let start = a.iter().find_map(|e| r.at(e))?;
    Some(end.saturating_sub(start) as f64 / 1e9)
}

/// The probe's metrics as text: OpenMetrics (`om`) or Prometheus's
/// classic format.
pub(crate) fn probe_text(recs: &[Record], success: bool, duration_s: f64, om: bool) -> String {
    let mut reg = Registry::default();
    gauge(
        &mut reg,
        "probe_success",
        "Whether the probe succeeded (no error, an expected status, the module's checks)",
        f64::from(u8::from(success)),
    );
    gauge(
        &mut reg,
        "probe_duration_seconds",
        "How long the probe took to complete in seconds",
        duration_s,
    );
    // The first request of each hop (blackbox sums the hops' phases).
    let firsts: Vec<&Record> = recs.iter().filter(|r| r.request_index == 0).collect();
    let phases = Family::<PhaseL, FGauge>::default();
    let sum = |phase: &str, v: Option<f64>| {
        if let Some(v) = v.filter(|v| v.is_finite() && *v >= 0.0) {
            let g = phases.get_or_create(&PhaseL {
                phase: phase.to_string(),
            });
            g.set(g.get() + v);
        }
    };
    for r in &firsts {
        sum("resolve", r.user.dns_ms.map(|x| x / 1e3));
        sum("connect", r.user.connect_ms.map(|x| x / 1e3));
        sum("tls", r.user.tls_ms.map(|x| x / 1e3));
        // Connection ready (TLS done, else connected) to the first byte:
        // the request written and the answer awaited, as blackbox's.
        sum(
            "processing",
            ms_between(
                r,
                &["tls_done", "connect_done", "request_start"],
                "first_byte_read",
            ),
        );
        sum("transfer", ms_between(r, &["first_byte_read"], "done"));
    }
    reg.register(
        "probe_http_duration_seconds",
        "Duration of the HTTP request by phase, summed over all redirects (resolve, connect, tls, processing, transfer)",
        phases,
    );
    let fin = finals(recs);
    let last = fin.last().copied();
    if let Some(r) = last {
        gauge(
            &mut reg,
            "probe_http_status_code",
            "Response HTTP status code (0 without a response)",
            f64::from(r.http_status.unwrap_or(0)),
        );
        if let Some(v) = r.http_version {
            let v = if v == "2" {
                2.0
            } else {
                v.parse().unwrap_or(0.0)
            };
            gauge(
                &mut reg,
                "probe_http_version",
                "Returned version of HTTP",
                v,
            );
        }
        gauge(
            &mut reg,
            "probe_http_ssl",
            "Indicates if TLS was used for the final request",
            f64::from(u8::from(r.tls)),
        );
        if let Some(ip) = r.ip_version {
            gauge(
                &mut reg,
                "probe_ip_protocol",
                "Specifies whether probe ip protocol is IP4 or IP6",
                f64::from(ip),
            );
        }
        if let Some(b) = r.response.as_ref().map(|x| x.body_bytes) {
            gauge(
                &mut reg,
                "probe_http_uncompressed_body_length",
                "Length of the response body in bytes",
                b as f64,
            );
        }
    }
    gauge(
        &mut reg,
        "probe_http_redirects",
        "The number of redirects followed",
        recs.iter().map(|r| r.redirect_hop).max().unwrap_or(0) as f64,
    );
    if let Some(d) = recs.first().and_then(|r| r.user.dns_ms) {
        gauge(
            &mut reg,
            "probe_dns_lookup_time_seconds",
            "Returns the time taken for probe dns lookup in seconds",
            d / 1e3,
        );
    }
    synack_part(
        &mut reg,
        recs,
        fin.iter().rev().find(|r| r.request_index == 0).copied(),
    );
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = crate::output::metrics::encode_text(&mut s, &reg, om);
    s
}

/// synack's own, from the final hop's first request (the one that paid
/// for the handshake): wire round trips, the verdict's split, path,
/// bottleneck, the SYN-ACK's TTL, this host's CPU stall; retransmissions
/// of every request.
fn synack_part(reg: &mut Registry, recs: &[Record], main: Option<&Record>) {
    let retrans = Family::<DirL, FGauge>::default();
    for (dir, n) in [
        (
            "out",
            recs.iter()
                .filter_map(|r| r.wire.retransmits_out)
                .sum::<u32>(),
        ),
        (
            "in",
            recs.iter()
                .filter_map(|r| r.wire.retransmits_in)
                .sum::<u32>(),
        ),
    ] {
        retrans
            .get_or_create(&DirL {
                direction: dir.to_string(),
            })
            .set(f64::from(n));
    }
    reg.register(
        "synack_retransmits",
        "TCP payload segments sent again (out) or received again (in) during the probe",
        retrans,
    );
    let Some(r) = main else { return };
    let wire = Family::<PhaseL, FGauge>::default();
    for (p, v) in [
        ("handshake", r.wire.handshake_rtt_ms),
        ("tls", r.wire.tls_rtt_ms),
        ("ttfb", r.wire.ttfb_ms),
    ] {
        if let Some(v) = v {
            wire.get_or_create(&PhaseL {
                phase: p.to_string(),
            })
            .set(v / 1e3);
        }
    }
    reg.register(
        "synack_wire_duration_seconds",
        "Kernel packet timestamps: handshake (SYN out to SYN-ACK in), tls (ClientHello out to the server's first bytes), ttfb (request out to response in)",
        wire,
    );
    let split = Family::<PhaseL, FGauge>::default();
    for (p, v) in [
        ("network", r.phases.network_ms),
        ("middlebox", r.phases.middlebox_ms),
        ("server", r.phases.server_ms),
        ("client", r.phases.client_ms),
    ] {
        if let Some(v) = v {
            split
                .get_or_create(&PhaseL {
                    phase: p.to_string(),
                })
                .set(v / 1e3);
        }
    }
    reg.register(
        "synack_phase_duration_seconds",
        "The verdict's split of the request (connect() to the first byte read): network, middlebox, server, client (this host); they add up",
        split,
    );
    if let Some(v) = r.verdict.as_ref() {
        let name = |x: serde_json::Result<serde_json::Value>| {
            x.ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        };
        let info = Family::<Vec<(String, String)>, Gauge>::default();
        info.get_or_create(&vec![
            ("path".to_string(), name(serde_json::to_value(v.path))),
            (
                "explanation".to_string(),
                name(serde_json::to_value(v.explanation)),
            ),
            ("mode".to_string(), r.mode.to_string()),
        ])
        .set(1);
        reg.register(
            "synack_verdict_info",
            "The verdict (value 1): path direct, middlebox, proxy or unknown; the explanation that fits; the mode",
            info,
        );
        use crate::model::verdict::PathKind;
        let middlebox = match v.path {
            PathKind::Middlebox | PathKind::Proxy => Some(1.0),
            PathKind::Direct => Some(0.0),
            PathKind::Unknown => None,
        };
        if let Some(m) = middlebox {
            gauge(
                reg,
                "synack_path_middlebox",
                "1 if a middlebox (or a declared proxy) is on the path, 0 if direct (absent while unknown)",
                m,
            );
        }
        if let Some(b) = v.bottleneck {
            let f = Family::<PhaseL, Gauge>::default();
            for p in ["network", "middlebox", "server", "client"] {
                f.get_or_create(&PhaseL {
                    phase: p.to_string(),
                })
                .set(i64::from(b.name() == p));
            }
            reg.register(
                "synack_bottleneck",
                "1 for the phase that held most of the request's time, 0 for the others (absent while unknown)",
                f,
            );
        }
    }
    if let Some(t) = r.wire.synack_ttl {
        gauge(
            reg,
            "synack_synack_ttl",
            "TTL (IPv4) or hop limit (IPv6) of the SYN-ACK",
            f64::from(t),
        );
    }
    if let Some(h) = r.wire.synack_hops {
        gauge(
            reg,
            "synack_synack_hops",
            "Hops to whatever answered the SYN, from its TTL",
            f64::from(h),
        );
    }
    if let Some(c) = r.client.as_ref() {
        if let Some(v) = c.run_delay_ms {
            gauge(
                reg,
                "synack_client_run_delay_seconds",
                "Time synack's threads waited for a CPU during the request",
                v / 1e3,
            );
        }
        if let Some(v) = c.throttled_ms {
            gauge(
                reg,
                "synack_client_throttled_seconds",
                "Time synack's cgroup was held back by its CPU quota during the request",
                v / 1e3,
            );
        }
    }
}
