//! Where records become text: the human waterfall and JSON lines.

pub mod metrics;
pub(crate) mod otlp;
pub(crate) mod probe_metrics;
mod report;
pub(crate) mod writeout;
pub(crate) use report::report_html;

use crate::model::record::Record;
use crate::model::tcp::hops_from_ttl;
use crate::model::verdict::Verdict;
use std::fmt::Write as _;

fn f(ms: Option<f64>) -> String {
    match ms {
        Some(v) if v.abs() >= 100.0 => format!("{v:.1} ms"),
        Some(v) => format!("{v:.3} ms"),
        None => "-".to_string(),
    }
}

/// `json_line` appended to `buf` (no newline), without a String of its own
/// per record: watch writes tens of thousands a second.
pub(crate) fn json_line_into(buf: &mut Vec<u8>, r: &Record) {
    let start = buf.len();
    if let Err(e) = serde_json::to_writer(&mut *buf, r) {
        buf.truncate(start);
        buf.extend_from_slice(
            format!(
                r#"{{"error":{{"kind":"internal","message":"cannot serialise record: {e}"}}}}"#
            )
            .as_bytes(),
        );
    }
}

/// One JSON object, one line.
pub(crate) fn json_line(r: &Record) -> String {
    let mut buf = Vec::new();
    json_line_into(&mut buf, r);
    // serde_json writes UTF-8 only; the fallback line is ASCII.
    String::from_utf8_lossy(&buf).into_owned()
}

/// The human breakdown of one request.
pub(crate) fn human(r: &Record) -> String {
    let mut s = String::new();
    header(&mut s, r);
    timings(&mut s, r);
    handshake_facts(&mut s, r);
    if let Some(v) = &r.verdict {
        verdict(&mut s, r, v);
    }
    lost_events(&mut s, r);
    s
}

/// The request line (what was asked of whom, the answer, the mode, where
/// on its connection) and the error when it failed: what this record is.
fn header(s: &mut String, r: &Record) {
    let status = r
        .http_status
        .map(|c| format!("HTTP/{} {c}", r.http_version.unwrap_or("1.1")))
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
    if let Some(p) = &r.proxy {
        let _ = write!(
            s,
            "  (through proxy {}{}, from {})",
            p.url,
            if p.tunnel { ", tunnel" } else { "" },
            p.from
        );
    }
    s.push('\n');
    if let Some(e) = &r.error {
        let _ = writeln!(s, "  error ({}): {}", e.kind, e.message);
    }
}

/// The table of user-space and wire times, phase by phase, and the
/// waterfall bar: where the time went, as each clock saw it.
fn timings(s: &mut String, r: &Record) {
    let u = &r.user;
    let w = &r.wire;
    let _ = writeln!(s, "\n  {:<22}{:<14}wire", "", "user");
    if !r.connection_reused {
        connection_rows(s, r);
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
}

/// The DNS, TCP connect and TLS handshake rows: a new connection's cost,
/// which a reused one did not pay.
fn connection_rows(s: &mut String, r: &Record) {
    let u = &r.user;
    let w = &r.wire;
    let _ = writeln!(s, "  {:<22}{:<14}", "DNS", f(u.dns_ms));
    let _ = writeln!(
        s,
        "  {:<22}{:<14}{}",
        "TCP connect",
        f(u.connect_ms),
        connect_wire(r)
    );
    if let Some(p) = r.proxy.as_ref().filter(|p| p.tunnel) {
        let answer = p
            .connect_status
            .map(|c| format!(" {c}"))
            .unwrap_or_default();
        let wire = w
            .proxy_connect_ms
            .map(|t| format!("CONNECT -> answer{answer} {}", f(Some(t))))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  {:<22}{:<14}{}",
            "proxy CONNECT",
            f(u.proxy_connect_ms),
            wire
        );
    }
    if u.tls_ms.is_some() || w.tls_rtt_ms.is_some() {
        let wire = w
            .tls_rtt_ms
            .map(|t| format!("ClientHello -> ServerHello {}", f(Some(t))))
            .unwrap_or_default();
        let _ = writeln!(s, "  {:<22}{:<14}{}", "TLS handshake", f(u.tls_ms), wire);
    }
    if u.h2_ping_ms.is_some() || w.h2_ping_rtt_ms.is_some() {
        let wire = w
            .h2_ping_rtt_ms
            .map(|t| format!("PING -> ACK {} (after the requests)", f(Some(t))))
            .unwrap_or_default();
        let _ = writeln!(s, "  {:<22}{:<14}{}", "HTTP/2 PING", f(u.h2_ping_ms), wire);
    }
}

/// The TCP connect row's wire column: the handshake's round trip (or the
/// RST that refused it), the hops to whatever answered, the SYNs sent again.
fn connect_wire(r: &Record) -> String {
    let w = &r.wire;
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
    wire
}

/// What the handshakes said of the other end: the SYN-ACK's TTL and
/// options, the TLS version, ALPN and certificate (a proxy's CA shows here).
fn handshake_facts(s: &mut String, r: &Record) {
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
}

/// The verdict's sentence, what it rests on, the bottleneck, the phases
/// and the reasons: the answer to "where did the time go".
fn verdict(s: &mut String, r: &Record, v: &Verdict) {
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
    phase_lines(s, r);
    for why in &v.reasons {
        let _ = writeln!(s, "    - {why}");
    }
}

/// The phases' durations and their bar, when the verdict has them: the
/// split of the wire span between network, middlebox, server and client.
fn phase_lines(s: &mut String, r: &Record) {
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
}

/// The events lost so far, always printed: a breakdown with gaps in its
/// input must say so.
fn lost_events(s: &mut String, r: &Record) {
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
pub(crate) fn phase_bar(r: &Record, width: usize) -> Option<String> {
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

pub(crate) fn waterfall(r: &Record, width: usize) -> Option<String> {
    let u = &r.user;
    let total = u.total_ms?;
    if total <= 0.0 {
        return None;
    }
    let ttfb_end = [
        u.dns_ms,
        u.connect_ms,
        u.proxy_connect_ms,
        u.tls_ms,
        u.ttfb_ms,
    ]
    .iter()
    .flatten()
    .sum::<f64>();
    let rest = (total - ttfb_end).max(0.0);
    let phases = [
        ("DNS", u.dns_ms),
        ("TCP", u.connect_ms),
        ("CONNECT", u.proxy_connect_ms),
        ("TLS", u.tls_ms),
        ("wait", u.ttfb_ms),
        ("rest", Some(rest)),
    ];
    Some(bar(&phases, total, width))
}

/// One line per request for `synack watch`: who, what, and where the time went.
pub(crate) fn watch_line(r: &Record) -> String {
    let arrow = if r.direction == "server" { "<-" } else { "->" };
    let who = match (&r.comm, r.pid) {
        (Some(c), Some(p)) => format!("{c}[{p}]"),
        (None, Some(p)) => format!("[{p}]"),
        _ => "?".to_string(),
    };
    format!("{arrow} {who} {}", check_line(r))
}

/// One line per request without its owner: `synack monitor`'s checks.
pub(crate) fn check_line(r: &Record) -> String {
    let mut s = check_subject(r);
    let parts = check_numbers(r);
    if !parts.is_empty() {
        let _ = write!(s, "  | {} ms", parts.join("  "));
    }
    check_outcome(&mut s, r);
    s
}

/// What was asked, its status, and of whom (or by whom, server side): the
/// line's first column.
fn check_subject(r: &Record) -> String {
    let what = if r.method.is_empty() {
        format!("TLS {}", r.url)
    } else {
        format!("{} {}", r.method, r.url)
    };
    let status = r
        .http_status
        .map(|c| c.to_string())
        .unwrap_or_else(|| "-".into());
    format!(
        "{what} {status}  {} {}",
        if r.direction == "server" {
            "from"
        } else {
            "to"
        },
        r.remote_addr.as_deref().unwrap_or("-")
    )
}

/// The wire times and phases that are known, short-named, ms to two
/// decimals: the numbers a check is watched for.
fn check_numbers(r: &Record) -> Vec<String> {
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
    parts
}

/// The error, or else the path and the bottleneck: how the check ended.
fn check_outcome(s: &mut String, r: &Record) {
    if let Some(e) = &r.error {
        let _ = write!(s, "  | {}: {}", e.kind, e.message);
    } else if let Some(v) = &r.verdict {
        let _ = write!(
            s,
            "  | {}",
            match v.path {
                crate::model::verdict::PathKind::Direct => "direct",
                crate::model::verdict::PathKind::Middlebox => "MIDDLEBOX",
                crate::model::verdict::PathKind::Proxy => "proxy",
                crate::model::verdict::PathKind::Unknown => "path unknown",
            }
        );
        if let Some(b) = v.bottleneck {
            let _ = write!(s, ", bottleneck {}", b.name());
        }
    }
}

/// Medians over several records, for the end of a `--count`/`--reuse` run.
pub(crate) fn summary(records: &[Record]) -> Option<String> {
    if records.len() < 2 {
        return None;
    }
    use crate::model::stats::{quantile, sorted};
    // The median and the p90 of a column (the statistics `compare` uses).
    let col = |g: &dyn Fn(&Record) -> Option<f64>| {
        let v = sorted(&records.iter().filter_map(g).collect::<Vec<_>>());
        match (quantile(&v, 0.5), quantile(&v, 0.9)) {
            (Some(m), Some(p)) => format!("{} (p90 {})", f(Some(m)), f(Some(p))),
            _ => "-".to_string(),
        }
    };
    let failed = records.iter().filter(|r| r.error.is_some()).count();
    let mut tally: Vec<(String, usize)> = Vec::new();
    for r in records {
        let v = r.verdict.as_ref().map_or("none".to_string(), |v| {
            serde_json::to_value(v.path)
                .ok()
                .and_then(|p| p.as_str().map(str::to_string))
                .unwrap_or_default()
        });
        match tally.iter_mut().find(|(k, _)| *k == v) {
            Some((_, n)) => *n += 1,
            None => tally.push((v, 1)),
        }
    }
    let tally: Vec<String> = tally.iter().map(|(k, n)| format!("{k} {n}")).collect();
    Some(format!(
        "{} requests, {} failed. medians: handshake RTT {}, wire TTFB {}, user TTFB {}, \
         total {}; server {}, network {}, client {}. verdicts: {}",
        records.len(),
        failed,
        col(&|r| r.wire.handshake_rtt_ms),
        col(&|r| r.wire.ttfb_ms),
        col(&|r| r.user.ttfb_ms),
        col(&|r| r.user.total_ms),
        col(&|r| r.phases.server_ms),
        col(&|r| r.phases.network_ms),
        col(&|r| r.phases.client_ms),
        tally.join(", ")
    ))
}

/// `synack compare`'s table: per target, each phase's median and p90 on
/// both sides, the shift and its interval, then the sentence.
pub(crate) fn compare_table(r: &crate::model::compare::Report) -> String {
    use crate::model::units::fixed2;
    let mut s = String::new();
    let o = |x: Option<f64>| x.map_or("-".to_string(), fixed2);
    // Each side's columns are as wide as its name needs.
    let wa = (r.a.chars().count() + 4).max(10) + 1;
    let wb = (r.b.chars().count() + 4).max(10) + 1;
    for t in &r.targets {
        let _ = writeln!(
            s,
            "{}   ({}: {} records, {} failed; {}: {} records, {} failed)",
            t.target, r.a, t.a.records, t.a.failed, r.b, t.b.records, t.b.failed
        );
        let _ = writeln!(
            s,
            "  {:<16}{:>wa$}{:>10}{:>wb$}{:>10}{:>10}  {:<22}",
            "phase (ms)",
            format!("{} p50", r.a),
            "p90",
            format!("{} p50", r.b),
            "p90",
            "B - A",
            "95% interval"
        );
        for p in &t.phases {
            if p.a.n == 0 && p.b.n == 0 {
                continue;
            }
            let ci = p
                .ci_ms
                .map(|[lo, hi]| format!("[{}, {}]", fixed2(lo), fixed2(hi)))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "  {:<16}{:>wa$}{:>10}{:>wb$}{:>10}{:>10}  {:<22}{}",
                p.phase,
                o(p.a.median),
                o(p.a.p90),
                o(p.b.median),
                o(p.b.p90),
                o(p.diff_ms),
                ci,
                if p.different { "differs" } else { "" }
            );
        }
        let _ = writeln!(s, "  {}\n", t.sentence);
    }
    let _ = writeln!(s, "({})", r.method);
    s
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
    fn compare_table_gives_whole_names_in_aligned_columns() {
        let rec = |total: f64| {
            serde_json::json!({
                "url": "https://h/", "error": null,
                "user": {"total_ms": total, "connect_ms": 1.0},
                "verdict": {"path": "direct"}
            })
        };
        let a: Vec<_> = (0..20).map(|i| rec(10.0 + f64::from(i % 3))).collect();
        let b: Vec<_> = (0..20).map(|i| rec(30.0 + f64::from(i % 3))).collect();
        let t = compare_table(&crate::model::compare::compare(
            "fargate",
            &a,
            "apprunner-eu-west-1",
            &b,
        ));
        let header = t.lines().nth(1).unwrap_or_default();
        assert!(
            header.contains("fargate p50") && header.contains("apprunner-eu-west-1 p50"),
            "{t}"
        );
        // The B median sits under its header's end.
        let end =
            header.find("apprunner-eu-west-1 p50").unwrap_or(0) + "apprunner-eu-west-1 p50".len();
        let total = t
            .lines()
            .find(|l| l.trim_start().starts_with("total"))
            .unwrap_or_default();
        assert_eq!(&total[end - 5..end], "31.00", "{t}");
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

    /// A new TLS connection that failed, with every wire fact set: the
    /// whole breakdown, byte for byte.
    fn full_rec() -> Record {
        let mut r = rec();
        r.redirect_hop = 1;
        r.tls = true;
        r.error = Some(ErrorInfo::new(ErrorKind::Tls, "bad cert"));
        let w = &mut r.wire;
        w.retransmits = Some(3);
        w.data_rtt_ms = Some(0.25);
        w.syn_retransmits = Some(2);
        w.connect_wait_ms = Some(1000.5);
        w.synack_ttl = Some(120);
        w.synack_initial_ttl = Some(128);
        w.synack_window = Some(65535);
        w.synack_mss = Some(1460);
        w.synack_wscale = Some(7);
        w.synack_sack_permitted = Some(true);
        w.synack_timestamps = Some(true);
        w.tls_rtt_ms = Some(3.0);
        r.tls_info = Some(crate::model::record::TlsInfo {
            version: Some("TLSv1.3".into()),
            alpn: Some("h2".into()),
            cert_subject: Some("CN=x".into()),
            cert_issuer: None,
        });
        r.drops.ringbuf_full = 3;
        r.drops.undecodable = 1;
        r
    }

    #[test]
    fn human_output_is_pinned() {
        let expected = "\
GET http://h/  10.0.0.2:80  HTTP/1.1 200  mode ebpf  (redirect hop 1)
  error (tls): bad cert

                        user          wire
  DNS                   1.000 ms     \x20
  TCP connect           2.000 ms      SYN -> SYN-ACK 1.500 ms   TTL 120 (8 hops)   2 SYN retransmissions, waited 1000.5 ms
  TLS handshake         -             ClientHello -> ServerHello 3.000 ms
  request -> 1st byte   6.000 ms      5.500 ms  (request ACKed after 0.250 ms)
  total                 10.000 ms     retransmissions 3 (+2 SYN)

  |=DNS==|====TCP=====|================wait================|=rest=|
  SYN-ACK: TTL 120 (from 128), window 65535, MSS 1460, wscale 7, SACK, timestamps
  TLS: TLSv1.3 (h2), certificate CN=x issued by -
  LOST: ring buffer full 3, flow table full 0, flows evicted 0, undecodable 1
";
        assert_eq!(human(&full_rec()), expected);
        assert_eq!(
            check_line(&full_rec()),
            "GET http://h/ 200  to 10.0.0.2:80  | hs 1.50  tls 3.00  ttfb 5.50  retx 3 ms  | tls: bad cert"
        );
    }

    #[test]
    fn the_verdict_section_follows_the_handshake_facts() {
        use crate::model::verdict::{Bottleneck, PathKind};
        let mut r = full_rec();
        r.error = None;
        r.phases.network_ms = Some(3.0);
        r.phases.middlebox_ms = Some(1.0);
        r.phases.server_ms = Some(5.0);
        r.phases.client_ms = Some(0.5);
        r.phases.local_stack_ms = Some(0.1);
        let mut v = Verdict::new(PathKind::Middlebox, vec!["one reason".into(), "two".into()]);
        v.evidence_from = Some(0);
        v.summary = Some("server holds it".into());
        v.bottleneck = Some(Bottleneck::Server);
        r.verdict = Some(v);
        let s = human(&r);
        let lines: Vec<&str> = s.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with("  verdict: "))
            .unwrap();
        assert_eq!(
            lines[at - 2],
            "  TLS: TLSv1.3 (h2), certificate CN=x issued by -",
            "{s}"
        );
        assert_eq!(lines[at - 1], "", "{s}");
        assert_eq!(
            lines[at + 1..],
            [
                "  (from the measurements of request 1 on this connection)",
                "  bottleneck: server holds it",
                "  phases:  network 3.000 ms  |  middlebox 1.000 ms  |  server 5.000 ms  |  client 0.500 ms (local stack 0.100 ms)",
                "  |======network======|======|=============server=============|===|",
                "    - one reason",
                "    - two",
                "  LOST: ring buffer full 3, flow table full 0, flows evicted 0, undecodable 1",
            ],
            "{s}"
        );
        let l = check_line(&r);
        assert!(
            l.ends_with("client 0.50  retx 3 ms  | MIDDLEBOX, bottleneck server"),
            "{l}"
        );
    }
}
