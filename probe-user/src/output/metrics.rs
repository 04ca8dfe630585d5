//! Where records become metrics (`synack monitor`): Prometheus exposition
//! (prometheus-client) and DogStatsD lines.
//!
//! Names follow Prometheus conventions (base units, `_total` counters) and
//! blackbox_exporter's phase names where they mean the same (`dns` is its
//! `resolve`, `connect` and `tls` are its own); the wire and verdict phases
//! are synack's.

use crate::{
    model::record::{Drops, ErrorKind, Record},
    model::targets::Target,
    model::verdict::PathKind,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use std::sync::{Mutex, atomic::AtomicU64};

/// The phases, as label values, with how each is read from a record (ms).
pub(crate) const PHASES: [&str; 10] = [
    "dns",
    "connect",
    "tls",
    "wire_handshake",
    "wire_ttfb",
    "server",
    "middlebox",
    "network",
    "client",
    "total",
];

/// OpenMetrics text made Prometheus's classic text format: a counter's
/// HELP and TYPE name its `_total` samples (OpenMetrics names the family
/// without the suffix, which the classic format reads as a metric with no
/// help), and the OpenMetrics-only `# UNIT` and `# EOF` lines go.
pub(crate) fn classic_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len());
    for l in om.lines() {
        if l == "# EOF" || l.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| l.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(p);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                if !tail.is_empty() || p == "# TYPE " {
                    out.push(' ');
                    out.push_str(tail);
                }
            }
            None => out.push_str(l),
        }
        out.push('\n');
    }
    out
}

/// The media type a scraper gets: OpenMetrics when its Accept header asks
/// for it (Prometheus does), else the classic text format.
pub(crate) fn negotiate(accept: Option<&str>) -> (&'static str, bool) {
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            true,
        )
    } else {
        ("text/plain; version=0.0.4; charset=utf-8", false)
    }
}

/// The values of `synack_bottleneck`'s phase label.
const BOTTLENECKS: [&str; 4] = ["network", "middlebox", "server", "client"];

/// A record's phase durations in milliseconds, for the phases it has.
pub(crate) fn phase_values(r: &Record) -> Vec<(&'static str, f64)> {
    let v = [
        r.user.dns_ms,
        r.user.connect_ms,
        r.user.tls_ms,
        r.wire.handshake_rtt_ms,
        r.wire.ttfb_ms,
        r.phases.server_ms,
        r.phases.middlebox_ms,
        r.phases.network_ms,
        r.phases.client_ms,
        r.user.total_ms,
    ];
    PHASES
        .iter()
        .zip(v)
        .filter_map(|(p, x)| x.filter(|x| x.is_finite() && *x >= 0.0).map(|x| (*p, x)))
        .collect()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetL {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseL {
    target: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultL {
    target: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindL {
    target: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirL {
    target: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonL {
    reason: String,
}

type FGauge = Gauge<f64, AtomicU64>;

fn phase_histogram() -> Histogram {
    // 0.25 ms .. ~33 s, doubling.
    Histogram::new(exponential_buckets(0.00025, 2.0, 18))
}

/// Every metric `synack monitor` exposes.
pub(crate) struct Metrics {
    registry: Registry,
    phase: Family<PhaseL, Histogram, fn() -> Histogram>,
    success: Family<TargetL, Gauge>,
    middlebox: Family<TargetL, Gauge>,
    bottleneck: Family<PhaseL, Gauge>,
    ttl: Family<TargetL, Gauge>,
    hops: Family<TargetL, Gauge>,
    status: Family<TargetL, Gauge>,
    last_ttfb: Family<TargetL, FGauge>,
    checks: Family<ResultL, Counter>,
    errors: Family<KindL, Counter>,
    retransmits: Family<DirL, Counter>,
    skipped: Family<TargetL, Counter>,
    lost: Family<ReasonL, Counter>,
    info: Family<Vec<(String, String)>, Gauge>,
    file_errors: Gauge,
    targets: Gauge,
    /// Kernel loss counters already exported, and the label sets created
    /// per target (to remove them with the target).
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    drops: Drops,
    kinds: Vec<(String, String)>,
    /// Each target's info labels, by target (a map: a reload of 10,000
    /// targets looks each one up).
    info: std::collections::HashMap<String, Vec<(String, String)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let phase = Family::<PhaseL, Histogram, fn() -> Histogram>::new_with_constructor(
            phase_histogram as fn() -> Histogram,
        );
        let m = Metrics {
            registry: Registry::default(),
            phase,
            success: Family::default(),
            middlebox: Family::default(),
            bottleneck: Family::default(),
            ttl: Family::default(),
            hops: Family::default(),
            status: Family::default(),
            last_ttfb: Family::default(),
            checks: Family::default(),
            errors: Family::default(),
            retransmits: Family::default(),
            skipped: Family::default(),
            lost: Family::default(),
            info: Family::default(),
            file_errors: Gauge::default(),
            targets: Gauge::default(),
            state: Mutex::new(State::default()),
        };
        registry.register(
            "synack_phase_duration_seconds",
            "Duration of each phase of a check: dns, connect, tls (user space, as blackbox_exporter's resolve/connect/tls), wire_handshake (SYN to SYN-ACK), wire_ttfb (request out to response in, on the wire), server, middlebox, network (the verdict's breakdown), total",
            m.phase.clone(),
        );
        registry.register(
            "synack_check_success",
            "1 if the last check succeeded (no error, expected status), else 0",
            m.success.clone(),
        );
        registry.register(
            "synack_path_middlebox",
            "1 if the last check found a TCP-terminating middlebox on the path, 0 if the path was direct (absent while unknown)",
            m.middlebox.clone(),
        );
        registry.register(
            "synack_bottleneck",
            "1 for the phase (network, middlebox, server, client) that held most of the last check's time, 0 for the others (absent while unknown)",
            m.bottleneck.clone(),
        );
        registry.register(
            "synack_synack_ttl",
            "TTL (IPv4) or hop limit (IPv6) of the last check's SYN-ACK",
            m.ttl.clone(),
        );
        registry.register(
            "synack_synack_hops",
            "Hops to whatever answered the last check's SYN, from its TTL",
            m.hops.clone(),
        );
        registry.register(
            "synack_http_status_code",
            "HTTP status of the last check's last response (0 if none)",
            m.status.clone(),
        );
        registry.register(
            "synack_wire_ttfb_seconds",
            "Wire time to first byte of the last check (request out to response in)",
            m.last_ttfb.clone(),
        );
        registry.register(
            "synack_checks",
            "Checks run, by result (success or failure)",
            m.checks.clone(),
        );
        registry.register(
            "synack_check_errors",
            "Failed checks by error kind (dns, connect_refused, connect, timeout, tls, http, io, status, kernel, ...)",
            m.errors.clone(),
        );
        registry.register(
            "synack_retransmits",
            "TCP payload segments sent again (out) or received again (in) during checks",
            m.retransmits.clone(),
        );
        registry.register(
            "synack_checks_skipped",
            "Checks not started because the previous one of the target was still running",
            m.skipped.clone(),
        );
        registry.register(
            "synack_events_lost",
            "Kernel events or flows lost, by reason (ringbuf_full, flow_insert_failed, flows_evicted, undecodable)",
            m.lost.clone(),
        );
        registry.register(
            "synack_target_info",
            "Each target's URL and tags (value 1)",
            m.info.clone(),
        );
        registry.register(
            "synack_targets_file_errors",
            "Broken lines in the targets file at the last (re)load",
            m.file_errors.clone(),
        );
        registry.register("synack_targets", "Targets being checked", m.targets.clone());
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text of every metric.
    pub(crate) fn encode(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }

    /// The same metrics in Prometheus's classic text format (0.0.4), for
    /// a scraper that does not ask for OpenMetrics (promtool, older
    /// Prometheus, agents).
    pub(crate) fn encode_classic(&self) -> String {
        classic_text(&self.encode())
    }

    fn t(target: &str) -> TargetL {
        TargetL {
            target: target.to_string(),
        }
    }

    /// The targets file was (re)loaded.
    pub(crate) fn set_targets(&self, targets: &[Target], file_errors: usize) {
        self.targets.set(targets.len() as i64);
        self.file_errors.set(file_errors as i64);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for t in targets {
            let mut labels = vec![
                ("target".to_string(), t.name.clone()),
                ("url".to_string(), t.url.clone()),
            ];
            labels.extend(
                t.tags
                    .iter()
                    .map(|(k, v)| (format!("tag_{}", sanitize(k)), v.clone())),
            );
            // A target whose URL or tags changed drops its old info series.
            if let Some(old) = st.info.remove(&t.name)
                && old != labels
            {
                self.info.remove(&old);
            }
            self.info.get_or_create(&labels).set(1);
            st.info.insert(t.name.clone(), labels);
            // Counters exist from the start at 0, so that rate() and
            // increase() (and a dashboard's panels) have a series before
            // the first skip or failure.
            let _ = self.skipped.get_or_create(&Self::t(&t.name));
            for r in ["success", "failure"] {
                let _ = self.checks.get_or_create(&ResultL {
                    target: t.name.clone(),
                    result: r.to_string(),
                });
            }
        }
    }

    /// A check of `target` was due while the previous one still ran.
    pub(crate) fn skipped(&self, target: &str) {
        self.skipped.get_or_create(&Self::t(target)).inc();
    }

    /// Records one finished check (all its records: `reuse` requests).
    pub(crate) fn observe(&self, target: &str, records: &[Record], outcome: &Outcome) {
        self.observe_phases(target, records);
        self.observe_outcome(target, outcome);
        self.observe_path(target, records);
    }

    /// Each record's phases into the histograms, its retransmissions into
    /// the counters.
    fn observe_phases(&self, target: &str, records: &[Record]) {
        for r in records {
            for (phase, ms) in phase_values(r) {
                self.phase
                    .get_or_create(&PhaseL {
                        target: target.to_string(),
                        phase: phase.to_string(),
                    })
                    .observe(ms / 1000.0);
            }
            for (dir, n) in [
                ("out", r.wire.retransmits_out),
                ("in", r.wire.retransmits_in),
            ] {
                let c = self.retransmits.get_or_create(&DirL {
                    target: target.to_string(),
                    direction: dir.to_string(),
                });
                c.inc_by(n.unwrap_or(0) as u64);
            }
        }
    }

    /// Success, the check counter, and the error kind (remembered, so that
    /// a target that leaves takes its series with it).
    fn observe_outcome(&self, target: &str, outcome: &Outcome) {
        let tl = Self::t(target);
        self.success.get_or_create(&tl).set(outcome.success as i64);
        let result = if outcome.success {
            "success"
        } else {
            "failure"
        };
        self.checks
            .get_or_create(&ResultL {
                target: target.to_string(),
                result: result.to_string(),
            })
            .inc();
        if let Some(kind) = outcome.error_kind {
            let l = KindL {
                target: target.to_string(),
                kind: kind.as_str().to_string(),
            };
            self.errors.get_or_create(&l).inc();
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if !st.kinds.contains(&(l.target.clone(), l.kind.clone())) {
                st.kinds.push((l.target, l.kind));
            }
        }
    }

    /// What the last records say of the path: status, middlebox, the
    /// bottleneck, SYN-ACK TTL and hops, TTFB.
    fn observe_path(&self, target: &str, records: &[Record]) {
        let tl = Self::t(target);
        let last = records.last();
        self.status
            .get_or_create(&tl)
            .set(last.and_then(|r| r.http_status).unwrap_or(0) as i64);
        if let Some(v) = records.iter().rev().find_map(|r| r.verdict.as_ref()) {
            match v.path {
                // A declared proxy is a middlebox on the path too.
                PathKind::Middlebox | PathKind::Proxy => {
                    self.middlebox.get_or_create(&tl).set(1);
                }
                PathKind::Direct => {
                    self.middlebox.get_or_create(&tl).set(0);
                }
                PathKind::Unknown => {}
            }
        }
        let last_bottleneck = records
            .iter()
            .rev()
            .find_map(|r| r.verdict.as_ref())
            .and_then(|v| v.bottleneck);
        for p in BOTTLENECKS {
            let l = PhaseL {
                target: tl.target.clone(),
                phase: p.to_string(),
            };
            match last_bottleneck {
                Some(b) => {
                    self.bottleneck
                        .get_or_create(&l)
                        .set((b.name() == p) as i64);
                }
                None => {
                    self.bottleneck.remove(&l);
                }
            }
        }
        if let Some(r) = records.iter().find(|r| r.wire.synack_ttl.is_some()) {
            self.ttl
                .get_or_create(&tl)
                .set(r.wire.synack_ttl.unwrap_or(0) as i64);
            self.hops
                .get_or_create(&tl)
                .set(r.wire.synack_hops.unwrap_or(0) as i64);
        }
        if let Some(t) = last.and_then(|r| r.wire.ttfb_ms) {
            self.last_ttfb.get_or_create(&tl).set(t / 1000.0);
        }
    }

    /// Exports the kernel's loss counters (they only grow).
    pub(crate) fn drops(&self, d: Drops) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (reason, now, before) in [
            ("ringbuf_full", d.ringbuf_full, st.drops.ringbuf_full),
            (
                "flow_insert_failed",
                d.flow_insert_failed,
                st.drops.flow_insert_failed,
            ),
            ("flows_evicted", d.flows_evicted, st.drops.flows_evicted),
            ("undecodable", d.undecodable, st.drops.undecodable),
        ] {
            let c = self.lost.get_or_create(&ReasonL {
                reason: reason.to_string(),
            });
            c.inc_by(now.saturating_sub(before));
        }
        st.drops = d;
    }

    /// Forgets every series of a target that left the targets file.
    pub(crate) fn remove_target(&self, target: &str) {
        let tl = Self::t(target);
        for p in PHASES {
            self.phase.remove(&PhaseL {
                target: target.to_string(),
                phase: p.to_string(),
            });
        }
        for p in BOTTLENECKS {
            self.bottleneck.remove(&PhaseL {
                target: target.to_string(),
                phase: p.to_string(),
            });
        }
        for g in [
            &self.success,
            &self.middlebox,
            &self.ttl,
            &self.hops,
            &self.status,
        ] {
            g.remove(&tl);
        }
        self.last_ttfb.remove(&tl);
        self.skipped.remove(&tl);
        for r in ["success", "failure"] {
            self.checks.remove(&ResultL {
                target: target.to_string(),
                result: r.to_string(),
            });
        }
        for d in ["out", "in"] {
            self.retransmits.remove(&DirL {
                target: target.to_string(),
                direction: d.to_string(),
            });
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.kinds.retain(|(t, k)| {
            if t == target {
                self.errors.remove(&KindL {
                    target: t.clone(),
                    kind: k.clone(),
                });
                false
            } else {
                true
            }
        });
        if let Some(labels) = st.info.remove(target) {
            self.info.remove(&labels);
        }
    }
}

fn sanitize(k: &str) -> String {
    k.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// How a check ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub success: bool,
    /// Why it failed, when it did.
    pub error_kind: Option<Failure>,
}

/// Why a check failed: the `kind` label of `synack_check_errors_total` (and
/// DogStatsD's `synack.check.errors`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// A request failed: its error's kind.
    Request(ErrorKind),
    /// Every request ended, but a status was not one the target expects.
    Status,
    /// The check produced no record at all (a bug in synack).
    Internal,
}

impl Failure {
    /// The label value.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Failure::Request(k) => k.as_str(),
            Failure::Status => "status",
            Failure::Internal => "internal",
        }
    }
}

/// Judges a check's records against the target's expectations.
pub(crate) fn outcome(t: &Target, records: &[Record]) -> Outcome {
    if records.is_empty() {
        return Outcome {
            success: false,
            error_kind: Some(Failure::Internal),
        };
    }
    if let Some(e) = records.iter().find_map(|r| r.error.as_ref()) {
        return Outcome {
            success: false,
            error_kind: Some(Failure::Request(e.kind)),
        };
    }
    if records
        .iter()
        .any(|r| r.http_status.is_none_or(|s| !t.expect.accepts(s)))
    {
        return Outcome {
            success: false,
            error_kind: Some(Failure::Status),
        };
    }
    Outcome {
        success: true,
        error_kind: None,
    }
}

/// DogStatsD lines for one check: `name:value|type|#tags`. Durations are
/// distributions in milliseconds (Datadog's convention); tags are the
/// target, the phase, and the target's own tags.
pub(crate) fn statsd_lines(t: &Target, records: &[Record], o: &Outcome) -> Vec<String> {
    let mut tags = vec![format!("target:{}", statsd_tag(&t.name))];
    tags.extend(
        t.tags
            .iter()
            .map(|(k, v)| format!("{}:{}", statsd_tag(k), statsd_tag(v))),
    );
    let tagstr = tags.join(",");
    let mut out = Vec::new();
    for r in records {
        for (phase, ms) in phase_values(r) {
            out.push(format!(
                "synack.phase.duration:{ms:.3}|d|#{tagstr},phase:{phase}"
            ));
        }
        let retx = r.wire.retransmits.or(r.wire.retransmits_out).unwrap_or(0);
        if retx > 0 {
            out.push(format!("synack.retransmits:{retx}|c|#{tagstr}"));
        }
    }
    out.push(format!(
        "synack.check.success:{}|g|#{tagstr}",
        o.success as u8
    ));
    out.push(format!(
        "synack.checks:1|c|#{tagstr},result:{}",
        if o.success { "success" } else { "failure" }
    ));
    if let Some(k) = o.error_kind {
        let k = k.as_str();
        out.push(format!("synack.check.errors:1|c|#{tagstr},kind:{k}"));
    }
    if let Some(v) = records.iter().rev().find_map(|r| r.verdict.as_ref()) {
        match v.path {
            PathKind::Middlebox | PathKind::Proxy => {
                out.push(format!("synack.path.middlebox:1|g|#{tagstr}"))
            }
            PathKind::Direct => out.push(format!("synack.path.middlebox:0|g|#{tagstr}")),
            PathKind::Unknown => {}
        }
    }
    if let Some(b) = records
        .iter()
        .rev()
        .find_map(|r| r.verdict.as_ref())
        .and_then(|v| v.bottleneck)
    {
        out.push(format!(
            "synack.bottleneck:1|g|#{tagstr},phase:{}",
            b.name()
        ));
    }
    if let Some(ttl) = records.iter().find_map(|r| r.wire.synack_ttl) {
        out.push(format!("synack.synack.ttl:{ttl}|g|#{tagstr}"));
    }
    out
}

/// DogStatsD tags cannot hold `,` `|` `#` or newlines.
fn statsd_tag(s: &str) -> String {
    s.chars()
        .map(|c| {
            if matches!(c, ',' | '|' | '#' | '\n' | '\r') {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// Packs lines into datagrams of at most `max` bytes (newline-separated),
/// so a check's metrics go in a few packets without IP fragmentation.
pub(crate) fn datagrams(lines: &[String], max: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    for l in lines {
        if !cur.is_empty() && cur.len() + 1 + l.len() > max {
            out.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push('\n');
        }
        cur.push_str(l);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::record::ErrorInfo;
    use crate::model::targets::parse;
    use crate::model::verdict::Verdict;

    fn rec() -> Record {
        let mut r = Record::new("http://h/", "GET", "ebpf");
        r.http_status = Some(200);
        r.user.dns_ms = Some(1.0);
        r.user.total_ms = Some(50.0);
        r.wire.handshake_rtt_ms = Some(4.0);
        r.wire.ttfb_ms = Some(45.0);
        r.wire.synack_ttl = Some(64);
        r.wire.synack_hops = Some(0);
        r.wire.retransmits = Some(1);
        r.wire.retransmits_out = Some(1);
        r.wire.retransmits_in = Some(0);
        r.phases.server_ms = Some(20.0);
        r.verdict = Some(Verdict {
            bottleneck: Some(crate::model::verdict::Bottleneck::Server),
            ..Verdict::new(PathKind::Middlebox, vec![])
        });
        r
    }

    fn target() -> Target {
        parse("http://h/ name=api tag=env:prod").0.remove(0)
    }

    #[test]
    fn prometheus_exposition() {
        let m = Metrics::new();
        let t = target();
        m.set_targets(std::slice::from_ref(&t), 1);
        let o = outcome(&t, &[rec()]);
        assert!(o.success);
        m.observe("api", &[rec()], &o);
        m.drops(Drops {
            ringbuf_full: 3,
            ..Default::default()
        });
        let s = m.encode();
        for want in [
            "synack_phase_duration_seconds_count{target=\"api\",phase=\"server\"} 1",
            "synack_bottleneck{target=\"api\",phase=\"server\"} 1",
            "synack_bottleneck{target=\"api\",phase=\"client\"} 0",
            "synack_phase_duration_seconds_sum{target=\"api\",phase=\"wire_ttfb\"} 0.045",
            "synack_check_success{target=\"api\"} 1",
            "synack_path_middlebox{target=\"api\"} 1",
            "synack_synack_ttl{target=\"api\"} 64",
            "synack_checks_total{target=\"api\",result=\"success\"} 1",
            "synack_retransmits_total{target=\"api\",direction=\"out\"} 1",
            "synack_events_lost_total{reason=\"ringbuf_full\"} 3",
            "synack_target_info{target=\"api\",url=\"http://h/\",tag_env=\"prod\"} 1",
            "synack_targets_file_errors 1",
            "# TYPE synack_phase_duration_seconds histogram",
        ] {
            assert!(s.contains(want), "missing {want} in\n{s}");
        }
        assert!(!s.contains("phase=\"tls\""), "no TLS phase on plain HTTP");
        // The same drops again add nothing.
        m.drops(Drops {
            ringbuf_full: 3,
            ..Default::default()
        });
        assert!(
            m.encode()
                .contains("synack_events_lost_total{reason=\"ringbuf_full\"} 3")
        );
        m.remove_target("api");
        let s = m.encode();
        assert!(!s.contains("target=\"api\""), "{s}");
    }

    #[test]
    fn classic_text_names_counters_with_their_suffix() {
        let m = Metrics::new();
        let t = target();
        m.set_targets(std::slice::from_ref(&t), 0);
        m.observe("api", &[rec()], &outcome(&t, &[rec()]));
        m.drops(Drops::default());
        let om = m.encode();
        assert!(om.contains("# TYPE synack_checks counter\n"), "{om}");
        assert!(om.ends_with("# EOF\n"));
        let c = m.encode_classic();
        for want in [
            "# HELP synack_checks_total Checks run",
            "# TYPE synack_checks_total counter\n",
            "# HELP synack_events_lost_total ",
            "# TYPE synack_retransmits_total counter\n",
            "synack_checks_total{target=\"api\",result=\"success\"} 1\n",
            "# TYPE synack_phase_duration_seconds histogram\n",
            "# TYPE synack_check_success gauge\n",
        ] {
            assert!(c.contains(want), "missing {want} in\n{c}");
        }
        assert!(
            !c.contains("# EOF") && !c.contains("# TYPE synack_checks counter"),
            "{c}"
        );
        // Every sample line is unchanged.
        let samples = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(samples(&om), samples(&c));
        assert!(
            negotiate(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            ))
            .1
        );
        assert!(!negotiate(Some("text/plain")).1 && !negotiate(None).1);
    }

    #[test]
    fn outcomes() {
        let t = target();
        let mut r = rec();
        r.http_status = Some(503);
        assert_eq!(
            outcome(&t, &[r.clone()]).error_kind.map(Failure::as_str),
            Some("status")
        );
        r.error = Some(ErrorInfo::new(ErrorKind::ConnectRefused, "no"));
        let o = outcome(&t, &[r]);
        assert!(!o.success);
        assert_eq!(o.error_kind.map(Failure::as_str), Some("connect_refused"));
    }

    #[test]
    fn dogstatsd_lines_are_well_formed() {
        let t = target();
        let o = outcome(&t, &[rec()]);
        let lines = statsd_lines(&t, &[rec()], &o);
        assert!(
            lines.contains(
                &"synack.phase.duration:20.000|d|#target:api,env:prod,phase:server".to_string()
            ),
            "{lines:?}"
        );
        assert!(lines.contains(&"synack.check.success:1|g|#target:api,env:prod".to_string()));
        assert!(lines.contains(&"synack.path.middlebox:1|g|#target:api,env:prod".to_string()));
        assert!(
            lines.contains(&"synack.bottleneck:1|g|#target:api,env:prod,phase:server".to_string()),
            "{lines:?}"
        );
        for l in &lines {
            let (name_val, rest) = l.split_once('|').unwrap();
            let (name, val) = name_val.split_once(':').unwrap();
            assert!(
                name.starts_with("synack.") && val.parse::<f64>().is_ok(),
                "{l}"
            );
            assert!(
                rest.starts_with("d|#") || rest.starts_with("g|#") || rest.starts_with("c|#"),
                "{l}"
            );
        }
        let d = datagrams(&lines, 200);
        assert!(d.iter().all(|g| g.len() <= 200));
        assert_eq!(d.join("\n").lines().count(), lines.len());
    }
}
