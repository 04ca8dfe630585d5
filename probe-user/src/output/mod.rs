//! Where records become text: the human waterfall and JSON lines.

pub mod metrics;

use crate::model::record::Record;
use crate::model::tcp::hops_from_ttl;
use std::fmt::Write as _;

fn f(ms: Option<f64>) -> String {
    match ms {
        Some(v) if v.abs() >= 100.0 => format!("{v:.1} ms"),
        Some(v) => format!("{v:.3} ms"),
        None => "-".to_string(),
    }
}

/// One JSON object, one line.
pub fn json_line(r: &Record) -> String {
    serde_json::to_string(r).unwrap_or_else(|e| {
        format!(r#"{{"error":{{"kind":"internal","message":"cannot serialise record: {e}"}}}}"#)
    })
}

/// The human breakdown of one request.
pub fn human(r: &Record) -> String {
    let mut s = String::new();
    let status = r
        .http_status
        .map(|c| format!("HTTP/1.1 {c}"))
        .unwrap_or_else(|| "no response".into());
    let remote = r.remote_addr.as_deref().unwrap_or("-");
    let _ = write!(
        s,
        "{} {}  {}  {}  mode {}",
        r.method, r.url, remote, status, r.mode
    );
    if r.connection_reused {
        let _ = write!(
            s,
            "  (request {} on a reused connection)",
            r.request_index + 1
        );
    }
    if r.redirect_hop > 0 {
        let _ = write!(s, "  (redirect hop {})", r.redirect_hop);
    }
    s.push('\n');
    if let Some(e) = &r.error {
        let _ = writeln!(s, "  error ({}): {}", e.kind, e.message);
    }
    let u = &r.user;
    let w = &r.wire;
    let _ = writeln!(s, "\n  {:<22}{:<14}wire", "", "user");
    if !r.connection_reused {
        let _ = writeln!(s, "  {:<22}{:<14}", "DNS", f(u.dns_ms));
        let mut wire = String::new();
        if let Some(h) = w.handshake_rtt_ms {
            let _ = write!(wire, "SYN -> SYN-ACK {}", f(Some(h)));
        }
        if w.handshake_rtt_ms.is_none()
            && let (Some(syn), Some(rst)) = (r.at("syn_out"), r.at("rst_in"))
        {
            let _ = write!(
                wire,
                "SYN -> RST {} (the port is closed)",
                f(Some(crate::model::units::ms_between(syn, rst)))
            );
        }
        if let Some(ttl) = w.synack_ttl {
            let (_, hops) = hops_from_ttl(ttl);
            let hop_word = if hops == 1 { "hop" } else { "hops" };
            let _ = write!(wire, "   TTL {ttl} ({hops} {hop_word})");
        }
        if let Some(n) = w.syn_retransmits.filter(|&n| n > 0) {
            let _ = write!(
                wire,
                "   {n} SYN retransmission{}, waited {}",
                if n == 1 { "" } else { "s" },
                f(w.connect_wait_ms)
            );
        }
        let _ = writeln!(s, "  {:<22}{:<14}{}", "TCP connect", f(u.connect_ms), wire);
        if u.tls_ms.is_some() || w.tls_rtt_ms.is_some() {
            let wire = w
                .tls_rtt_ms
                .map(|t| format!("ClientHello -> ServerHello {}", f(Some(t))))
                .unwrap_or_default();
            let _ = writeln!(s, "  {:<22}{:<14}{}", "TLS handshake", f(u.tls_ms), wire);
        }
    }
    let mut wire = f(w.ttfb_ms);
    if let Some(d) = w.data_rtt_ms {
        let _ = write!(wire, "  (request ACKed after {})", f(Some(d)));
    }
    let _ = writeln!(
        s,
        "  {:<22}{:<14}{}",
        "request -> 1st byte",
        f(u.ttfb_ms),
        wire
    );
    let retrans = match (w.retransmits, w.syn_retransmits) {
        (Some(n), Some(syn)) if !r.connection_reused => format!("retransmissions {n} (+{syn} SYN)"),
        (Some(n), _) => format!("retransmissions {n}"),
        _ => String::new(),
    };
    let _ = writeln!(s, "  {:<22}{:<14}{}", "total", f(u.total_ms), retrans);
    if let Some(bar) = waterfall(r, 60) {
        let _ = writeln!(s, "\n  {bar}");
    }
    if let Some(sa) = synack_line(r) {
        let _ = writeln!(s, "  {sa}");
    }
    if let Some(t) = &r.tls_info {
        let _ = writeln!(
            s,
            "  TLS: {}{}, certificate {} issued by {}",
            t.version.as_deref().unwrap_or("?"),
            t.alpn
                .as_deref()
                .map(|a| format!(" ({a})"))
                .unwrap_or_default(),
            t.cert_subject.as_deref().unwrap_or("-"),
            t.cert_issuer.as_deref().unwrap_or("-")
        );
    }
    if let Some(v) = &r.verdict {
        let a = crate::model::verdict::Analysis {
            verdict: v.clone(),
            phases: r.phases.clone(),
            middlebox: r.middlebox.clone(),
        };
        let _ = writeln!(
            s,
            "\n  verdict: {}",
            crate::model::verdict::sentence(&a, &r.facts())
        );
        if let Some(i) = v.evidence_from {
            let _ = writeln!(
                s,
                "  (from the measurements of request {} on this connection)",
                i + 1
            );
        }
        if let Some(b) = &v.summary {
            let _ = writeln!(s, "  bottleneck: {b}");
        }
        let p = &r.phases;
        if p.network_ms.is_some() || p.client_ms.is_some() {
            let _ = writeln!(
                s,
                "  phases:  network {}  |  middlebox {}  |  server {}  |  client {} (local stack {})",
                f(p.network_ms),
                f(p.middlebox_ms),
                f(p.server_ms),
                f(p.client_ms),
                f(p.local_stack_ms)
            );
        }
        if let Some(bar) = phase_bar(r, 60) {
            let _ = writeln!(s, "  {bar}");
        }
        for why in &v.reasons {
            let _ = writeln!(s, "    - {why}");
        }
    }
    let d = &r.drops;
    if d.total() == 0 {
        let _ = writeln!(s, "  lost events 0");
    } else {
        let _ = writeln!(
            s,
            "  LOST: ring buffer full {}, flow table full {}, flows evicted {}, undecodable {}",
            d.ringbuf_full, d.flow_insert_failed, d.flows_evicted, d.undecodable
        );
    }
    s
}

fn synack_line(r: &Record) -> Option<String> {
    let w = &r.wire;
    if r.connection_reused {
        return None;
    }
    let ttl = w.synack_ttl?;
    let mut s = format!("SYN-ACK: TTL {ttl}");
    if let Some(init) = w.synack_initial_ttl {
        let _ = write!(s, " (from {init})");
    }
    if let Some(win) = w.synack_window {
        let _ = write!(s, ", window {win}");
    }
    if let Some(m) = w.synack_mss {
        let _ = write!(s, ", MSS {m}");
    }
    if let Some(ws) = w.synack_wscale {
        let _ = write!(s, ", wscale {ws}");
    }
    if w.synack_sack_permitted == Some(true) {
        s.push_str(", SACK");
    }
    if w.synack_timestamps == Some(true) {
        s.push_str(", timestamps");
    }
    Some(s)
}

/// `|DNS|TCP|=== TLS ===|=== wait ===|body|`, each phase's width
/// proportional to its user-space duration.
/// The verdict's phases as one bar, in the order the time passed: where
/// the time went rather than which call took it.
pub fn phase_bar(r: &Record, width: usize) -> Option<String> {
    let p = &r.phases;
    let parts = [
        ("network", p.network_ms?),
        ("middlebox", p.middlebox_ms.unwrap_or(0.0)),
        ("server", p.server_ms?),
        ("client", p.client_ms.unwrap_or(0.0)),
    ];
    let total: f64 = parts.iter().map(|x| x.1.max(0.0)).sum();
    (total > 0.0).then(|| bar(&parts.map(|(n, v)| (n, Some(v))), total, width))
}

/// Cells proportional to each part of `total`, each named where it fits.
fn bar(parts: &[(&str, Option<f64>)], total: f64, width: usize) -> String {
    let mut out = String::from("|");
    for (name, ms) in parts {
        let Some(ms) = *ms else { continue };
        if ms <= 0.0 {
            continue;
        }
        let n = ((ms / total) * width as f64).round().max(1.0) as usize;
        let cell = if n >= name.len() + 2 {
            let pad = n - name.len();
            format!(
                "{}{}{}",
                "=".repeat(pad / 2),
                name,
                "=".repeat(pad - pad / 2)
            )
        } else {
            "=".repeat(n)
        };
        out.push_str(&cell);
        out.push('|');
    }
    out
}

pub fn waterfall(r: &Record, width: usize) -> Option<String> {
    let u = &r.user;
    let total = u.total_ms?;
    if total <= 0.0 {
        return None;
    }
    let ttfb_end = [u.dns_ms, u.connect_ms, u.tls_ms, u.ttfb_ms]
        .iter()
        .flatten()
        .sum::<f64>();
    let rest = (total - ttfb_end).max(0.0);
    let phases = [
        ("DNS", u.dns_ms),
        ("TCP", u.connect_ms),
        ("TLS", u.tls_ms),
        ("wait", u.ttfb_ms),
        ("rest", Some(rest)),
    ];
    Some(bar(&phases, total, width))
}

/// One line per request for `synack watch`: who, what, and where the time went.
pub fn watch_line(r: &Record) -> String {
    let arrow = if r.direction == "server" { "<-" } else { "->" };
    let who = match (&r.comm, r.pid) {
        (Some(c), Some(p)) => format!("{c}[{p}]"),
        (None, Some(p)) => format!("[{p}]"),
        _ => "?".to_string(),
    };
    format!("{arrow} {who} {}", check_line(r))
}

/// One line per request without its owner: `synack monitor`'s checks.
pub fn check_line(r: &Record) -> String {
    let what = if r.method.is_empty() {
        format!("TLS {}", r.url)
    } else {
        format!("{} {}", r.method, r.url)
    };
    let status = r
        .http_status
        .map(|c| c.to_string())
        .unwrap_or_else(|| "-".into());
    let mut s = format!(
        "{what} {status}  {} {}",
        if r.direction == "server" {
            "from"
        } else {
            "to"
        },
        r.remote_addr.as_deref().unwrap_or("-")
    );
    let num = |v: Option<f64>| v.map(|v| format!("{v:.2}"));
    let mut parts: Vec<String> = Vec::new();
    if !r.connection_reused
        && let Some(h) = num(r.wire.handshake_rtt_ms)
    {
        parts.push(format!("hs {h}"));
    }
    if r.tls
        && let Some(t) = num(r.wire.tls_rtt_ms)
    {
        parts.push(format!("tls {t}"));
    }
    if let Some(t) = num(r.wire.ttfb_ms) {
        parts.push(format!("ttfb {t}"));
    }
    if let Some(v) = num(r.phases.server_ms) {
        parts.push(format!("server {v}"));
    }
    if let Some(v) = num(r.phases.network_ms) {
        parts.push(format!("net {v}"));
    }
    if let Some(v) = num(r.phases.middlebox_ms) {
        parts.push(format!("middlebox {v}"));
    }
    if let Some(v) = num(r.phases.client_ms) {
        parts.push(format!("client {v}"));
    }
    if r.wire.retransmits.is_some_and(|n| n > 0) {
        parts.push(format!("retx {}", r.wire.retransmits.unwrap_or(0)));
    }
    if !parts.is_empty() {
        let _ = write!(s, "  | {} ms", parts.join("  "));
    }
    if let Some(e) = &r.error {
        let _ = write!(s, "  | {}: {}", e.kind, e.message);
    } else if let Some(v) = &r.verdict {
        let _ = write!(
            s,
            "  | {}",
            match v.path {
                crate::model::verdict::PathKind::Direct => "direct",
                crate::model::verdict::PathKind::Middlebox => "MIDDLEBOX",
                crate::model::verdict::PathKind::Unknown => "path unknown",
            }
        );
        if let Some(b) = v.bottleneck {
            let _ = write!(s, ", bottleneck {}", b.name());
        }
    }
    s
}

/// Medians over several records, for the end of a `--count`/`--reuse` run.
pub fn summary(records: &[Record]) -> Option<String> {
    if records.len() < 2 {
        return None;
    }
    fn med(mut v: Vec<f64>) -> Option<f64> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        Some(v[v.len() / 2])
    }
    let col = |g: &dyn Fn(&Record) -> Option<f64>| med(records.iter().filter_map(g).collect());
    let failed = records.iter().filter(|r| r.error.is_some()).count();
    Some(format!(
        "{} requests, {} failed. medians: handshake RTT {}, wire TTFB {}, user TTFB {}, total {}",
        records.len(),
        failed,
        f(col(&|r| r.wire.handshake_rtt_ms)),
        f(col(&|r| r.wire.ttfb_ms)),
        f(col(&|r| r.user.ttfb_ms)),
        f(col(&|r| r.user.total_ms)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::record::{ErrorInfo, ErrorKind, Record};

    fn rec() -> Record {
        let mut r = Record::new("http://h/", "GET", "ebpf");
        r.http_status = Some(200);
        r.remote_addr = Some("10.0.0.2:80".into());
        r.user.dns_ms = Some(1.0);
        r.user.connect_ms = Some(2.0);
        r.user.ttfb_ms = Some(6.0);
        r.user.total_ms = Some(10.0);
        r.wire.handshake_rtt_ms = Some(1.5);
        r.wire.synack_ttl = Some(63);
        r.wire.ttfb_ms = Some(5.5);
        r.wire.retransmits = Some(0);
        r.wire.syn_retransmits = Some(0);
        r
    }

    #[test]
    fn human_output_has_both_columns_and_hops() {
        let s = human(&rec());
        assert!(
            s.contains("GET http://h/  10.0.0.2:80  HTTP/1.1 200  mode ebpf"),
            "{s}"
        );
        assert!(
            s.contains("SYN -> SYN-ACK 1.500 ms   TTL 63 (1 hop)"),
            "{s}"
        );
        assert!(s.contains("5.500 ms"), "{s}");
        assert!(s.contains("lost events 0"), "{s}");
        let mut r = rec();
        r.error = Some(ErrorInfo::new(
            ErrorKind::Timeout,
            "--max-time reached during response",
        ));
        assert!(human(&r).contains("error (timeout): --max-time reached"));
    }

    #[test]
    fn refused_connection_shows_the_rst() {
        let mut r = Record::new("http://h:1/", "GET", "ebpf");
        for (event, t_ns) in [("syn_out", 1_000_000), ("rst_in", 1_250_000)] {
            r.timeline.push(crate::model::record::TimelineEntry {
                event,
                source: "wire",
                t_ns,
            });
        }
        assert!(human(&r).contains("SYN -> RST 0.250 ms"), "{}", human(&r));
    }

    #[test]
    fn waterfall_is_proportional() {
        let bar = waterfall(&rec(), 50).unwrap();
        assert!(bar.starts_with("|=DNS=|"), "{bar}"); // DNS: 1/10 of 50 = 5 cells
        assert!(bar.contains("wait"));
        assert_eq!(bar.matches('|').count(), 5);
    }

    #[test]
    fn json_has_contract_fields() {
        let v: serde_json::Value = serde_json::from_str(&json_line(&rec())).unwrap();
        for k in [
            "url",
            "remote_addr",
            "local_addr",
            "ip_version",
            "http_status",
            "mode",
            "error",
            "timeline",
            "drops",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["user"]["ttfb_ms"], 6.0);
        assert_eq!(v["wire"]["handshake_rtt_ms"], 1.5);
        assert!(v["error"].is_null());
    }

    #[test]
    fn watch_lines_read_at_a_glance() {
        let mut r = rec();
        r.pid = Some(42);
        r.comm = Some("curl".into());
        r.phases.server_ms = Some(20.0);
        let l = watch_line(&r);
        assert!(
            l.starts_with("-> curl[42] GET http://h/ 200  to 10.0.0.2:80"),
            "{l}"
        );
        assert!(l.contains("hs 1.50") && l.contains("server 20.00"), "{l}");
        r.direction = "server";
        r.error = Some(ErrorInfo::new(ErrorKind::NoResponse, "no response yet"));
        r.method = String::new();
        r.url = "https://api.example".into();
        let l = watch_line(&r);
        assert!(
            l.starts_with("<- curl[42] TLS https://api.example 200  from"),
            "{l}"
        );
        assert!(l.ends_with("no_response: no response yet"), "{l}");
    }

    #[test]
    fn summary_medians() {
        let mut a = rec();
        a.user.total_ms = Some(30.0);
        let s = summary(&[rec(), a, rec()]).unwrap();
        assert!(s.contains("3 requests, 0 failed"), "{s}");
        assert!(s.contains("total 10.000 ms"), "{s}");
        assert!(summary(&[rec()]).is_none());
    }
}
