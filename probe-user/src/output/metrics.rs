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
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet},
    metrics::{
        MetricType, counter::Counter, family::Family, gauge::Gauge, histogram::exponential_buckets,
    },
    registry::Registry,
};
use std::{
    collections::BTreeMap,
    fmt,
    ops::Bound,
    sync::{Arc, Mutex},
};

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
struct ReasonL {
    reason: String,
}

/// The upper bounds of `synack_phase_duration_seconds`'s buckets: 0.25 ms
/// to ~33 s, doubling (+Inf is the last count).
fn bucket_bounds() -> Vec<f64> {
    exponential_buckets(0.00025, 2.0, BUCKETS).collect()
}

/// Finite buckets per phase histogram.
const BUCKETS: u16 = 18;

/// One phase's histogram of one target: per-bucket counts (not
/// cumulative), the last one +Inf, and the sum in seconds.
#[derive(Clone, Debug, Default)]
struct Hist {
    counts: [u64; BUCKETS as usize + 1],
    sum: f64,
}

impl Hist {
    fn observe(&mut self, bounds: &[f64], v: f64) {
        let i = bounds.partition_point(|&b| b < v);
        self.counts[i] += 1;
        self.sum += v;
    }
    fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Everything `synack monitor` exposes of one target, in one place.
/// prometheus-client's `Family` keeps each series as a map entry with its
/// own copy of the labels, an `Arc` and a lock: at 10,000 targets that
/// was ~12 KiB a target; this is ~1.7 KiB.
#[derive(Clone, Debug, Default)]
struct Series {
    /// By PHASES' index; a phase never observed has no series.
    phases: [Hist; PHASES.len()],
    success: Option<bool>,
    middlebox: Option<bool>,
    /// The last check's bottleneck (index in BOTTLENECKS); None when it
    /// was unknown (the series are then absent).
    bottleneck: Option<u8>,
    ttl: Option<u8>,
    hops: Option<u8>,
    status: Option<u16>,
    last_ttfb_s: Option<f64>,
    /// success, failure.
    checks: [u64; 2],
    /// out, in.
    retransmits: [u64; 2],
    skipped: u64,
    /// By error kind, in the order first seen.
    errors: Vec<(&'static str, u64)>,
    /// `synack_target_info`'s labels but the target: url, tags.
    info: Vec<(String, String)>,
}

/// The targets' series by name (sorted: /metrics reads in target order).
#[derive(Debug, Default)]
struct Store {
    targets: BTreeMap<String, Series>,
}

/// The live store as prometheus-client sees it. A scrape reads it a batch
/// of targets at a time, each batch copied out under the lock and encoded
/// after it: the checks never wait for a slow scraper, and a scrape of
/// 10,000 targets allocates no copy of them all (a whole copy, ~17 MiB
/// made and freed every scrape, grew the heap by fragmentation).
#[derive(Debug)]
struct Live {
    store: Arc<Mutex<Store>>,
    bounds: Vec<f64>,
}

/// Targets copied out per lock.
const BATCH: usize = 64;

impl Live {
    /// `pick`s each target's part (in name order) and hands it on a batch
    /// at a time. Targets added or removed meanwhile are seen or not by
    /// where they fall in the order, as a scrape between two checks would.
    fn each<T>(
        &self,
        pick: impl Fn(&Series) -> T,
        mut emit: impl FnMut(&str, &T) -> fmt::Result,
    ) -> fmt::Result {
        let mut batch: Vec<(String, T)> = Vec::with_capacity(BATCH);
        let mut after: Option<String> = None;
        loop {
            batch.clear();
            {
                let st = self.store.lock().unwrap_or_else(|e| e.into_inner());
                let from = match &after {
                    Some(a) => Bound::Excluded(a.as_str()),
                    None => Bound::Unbounded,
                };
                batch.extend(
                    st.targets
                        .range::<str, _>((from, Bound::Unbounded))
                        .take(BATCH)
                        .map(|(n, s)| (n.clone(), pick(s))),
                );
            }
            let Some((last, _)) = batch.last() else {
                return Ok(());
            };
            after = Some(last.clone());
            for (n, v) in &batch {
                emit(n, v)?;
            }
        }
    }
}

/// A per-target gauge: name, help, and its value in a series (absent: no
/// sample).
type GaugeOf = (&'static str, &'static str, fn(&Series) -> Option<f64>);

fn counter(e: &mut MetricEncoder, n: u64) -> fmt::Result {
    e.encode_counter::<NoLabelSet, _, u64>(&n, None)
}

impl Collector for Live {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let mut d = enc.encode_descriptor(
            "synack_phase_duration_seconds",
            "Duration of each phase of a check: dns, connect, tls (user space, as blackbox_exporter's resolve/connect/tls), wire_handshake (SYN to SYN-ACK), wire_ttfb (request out to response in, on the wire), server, middlebox, network (the verdict's breakdown), total.",
            None,
            MetricType::Histogram,
        )?;
        let mut buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .map(|b| (b, 0))
            .collect();
        self.each(
            |s| s.phases.clone(),
            |t, phases| {
                for (p, h) in PHASES.iter().zip(phases) {
                    let n = h.count();
                    if n == 0 {
                        continue;
                    }
                    for (b, c) in buckets.iter_mut().zip(h.counts) {
                        b.1 = c;
                    }
                    d.encode_family(&[("target", t), ("phase", p)])?
                        .encode_histogram::<NoLabelSet>(h.sum, n, &buckets, None)?;
                }
                Ok(())
            },
        )?;
        let gauges: [GaugeOf; 6] = [
            (
                "synack_check_success",
                "1 if the last check succeeded (no error, expected status), else 0.",
                |s| s.success.map(|b| b as u8 as f64),
            ),
            (
                "synack_path_middlebox",
                "1 if the last check found a TCP-terminating middlebox on the path, 0 if the path was direct (absent while unknown).",
                |s| s.middlebox.map(|b| b as u8 as f64),
            ),
            (
                "synack_synack_ttl",
                "TTL (IPv4) or hop limit (IPv6) of the last check's SYN-ACK.",
                |s| s.ttl.map(f64::from),
            ),
            (
                "synack_synack_hops",
                "Hops to whatever answered the last check's SYN, from its TTL.",
                |s| s.hops.map(f64::from),
            ),
            (
                "synack_http_status_code",
                "HTTP status of the last check's last response (0 if none).",
                |s| s.status.map(f64::from),
            ),
            (
                "synack_wire_ttfb_seconds",
                "Wire time to first byte of the last check (request out to response in).",
                |s| s.last_ttfb_s,
            ),
        ];
        for (name, help, get) in gauges {
            let mut d = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            self.each(get, |t, v| {
                let Some(v) = *v else { return Ok(()) };
                // Integers print as integers, as prometheus-client's i64
                // gauges do.
                let labels = [("target", t)];
                let mut e = d.encode_family(&labels)?;
                if v.fract() == 0.0 && v.abs() < 1e15 {
                    e.encode_gauge(&(v as i64))
                } else {
                    e.encode_gauge(&v)
                }
            })?;
        }
        let mut d = enc.encode_descriptor(
            "synack_bottleneck",
            "1 for the phase (network, middlebox, server, client) that held most of the last check's time, 0 for the others (absent while unknown).",
            None,
            MetricType::Gauge,
        )?;
        self.each(
            |s| s.bottleneck,
            |t, b| {
                let Some(b) = *b else { return Ok(()) };
                for (i, p) in BOTTLENECKS.iter().enumerate() {
                    d.encode_family(&[("target", t), ("phase", p)])?
                        .encode_gauge(&((i == b as usize) as i64))?;
                }
                Ok(())
            },
        )?;
        let mut d = enc.encode_descriptor(
            "synack_checks",
            "Checks run, by result (success or failure).",
            None,
            MetricType::Counter,
        )?;
        self.each(
            |s| s.checks,
            |t, checks| {
                for (r, n) in ["success", "failure"].iter().zip(checks) {
                    counter(&mut d.encode_family(&[("target", t), ("result", r)])?, *n)?;
                }
                Ok(())
            },
        )?;
        let mut d = enc.encode_descriptor(
            "synack_check_errors",
            "Failed checks by error kind (dns, connect_refused, connect, timeout, tls, http, io, status, kernel, ...).",
            None,
            MetricType::Counter,
        )?;
        self.each(
            |s| s.errors.clone(),
            |t, errors| {
                for (k, n) in errors {
                    counter(&mut d.encode_family(&[("target", t), ("kind", k)])?, *n)?;
                }
                Ok(())
            },
        )?;
        let mut d = enc.encode_descriptor(
            "synack_retransmits",
            "TCP payload segments sent again (out) or received again (in) during checks.",
            None,
            MetricType::Counter,
        )?;
        self.each(
            |s| s.retransmits,
            |t, retransmits| {
                for (dir, n) in ["out", "in"].iter().zip(retransmits) {
                    counter(
                        &mut d.encode_family(&[("target", t), ("direction", dir)])?,
                        *n,
                    )?;
                }
                Ok(())
            },
        )?;
        let mut d = enc.encode_descriptor(
            "synack_checks_skipped",
            "Checks not started because the previous one of the target was still running.",
            None,
            MetricType::Counter,
        )?;
        self.each(
            |s| s.skipped,
            |t, n| counter(&mut d.encode_family(&[("target", t)])?, *n),
        )?;
        let mut d = enc.encode_descriptor(
            "synack_target_info",
            "Each target's URL and tags (value 1).",
            None,
            MetricType::Gauge,
        )?;
        self.each(
            |s| s.info.clone(),
            |t, info| {
                let labels: Vec<(&str, &str)> = [("target", t)]
                    .into_iter()
                    .chain(info.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .collect();
                d.encode_family(&labels)?.encode_gauge(&1i64)
            },
        )
    }
}

/// Every metric `synack monitor` exposes.
pub(crate) struct Metrics {
    store: Arc<Mutex<Store>>,
    bounds: Vec<f64>,
    /// The per-target series (through [`Live`]) and the host-wide ones.
    registry: Registry,
    lost: Family<ReasonL, Counter>,
    file_errors: Gauge,
    targets: Gauge,
    /// Kernel loss counters already exported.
    drops: Mutex<Drops>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `registry` as OpenMetrics text (with its `# EOF`) or as Prometheus's
/// classic text format 0.0.4 (counters' HELP and TYPE named with their
/// `_total`, no `# UNIT`), both prometheus-client's own encoders.
pub(crate) fn encode_text(
    w: &mut impl fmt::Write,
    registry: &Registry,
    openmetrics: bool,
) -> fmt::Result {
    if openmetrics {
        prometheus_client::encoding::text::encode(w, registry)
    } else {
        prometheus_client::encoding::prometheus_text::encode(w, registry)
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let store = Arc::new(Mutex::new(Store::default()));
        let bounds = bucket_bounds();
        let (lost, file_errors, targets) = (Family::default(), Gauge::default(), Gauge::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Live {
            store: store.clone(),
            bounds: bounds.clone(),
        }));
        registry.register(
            "synack_events_lost",
            "Kernel events or flows lost, by reason (ringbuf_full, flow_insert_failed, flows_evicted, undecodable)",
            Family::clone(&lost),
        );
        registry.register(
            "synack_targets_file_errors",
            "Broken lines in the targets file at the last (re)load",
            Gauge::clone(&file_errors),
        );
        registry.register(
            "synack_targets",
            "Targets being checked",
            Gauge::clone(&targets),
        );
        Metrics {
            store,
            bounds,
            registry,
            lost,
            file_errors,
            targets,
            drops: Mutex::new(Drops::default()),
        }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the exposition, OpenMetrics or the classic text format as
    /// negotiated, to `w` (a scraper's connection, chunk by chunk).
    pub(crate) fn write(&self, w: &mut impl fmt::Write, openmetrics: bool) -> fmt::Result {
        encode_text(w, &self.registry, openmetrics)
    }

    /// The OpenMetrics text of every metric.
    #[cfg(test)]
    pub(crate) fn encode(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = self.write(&mut s, true);
        s
    }

    /// The same metrics in Prometheus's classic text format (0.0.4).
    #[cfg(test)]
    pub(crate) fn encode_classic(&self) -> String {
        let mut s = String::new();
        let _ = self.write(&mut s, false);
        s
    }

    /// The targets file was (re)loaded.
    pub(crate) fn set_targets(&self, targets: &[Target], file_errors: usize) {
        self.targets.set(targets.len() as i64);
        self.file_errors.set(file_errors as i64);
        let mut st = self.store();
        for t in targets {
            let mut info = vec![("url".to_string(), t.url.clone())];
            info.extend(
                t.tags
                    .iter()
                    .map(|(k, v)| (format!("tag_{}", sanitize(k)), v.clone())),
            );
            // Counters exist from the start at 0, so that rate() and
            // increase() (and a dashboard's panels) have a series before
            // the first skip or failure. A target whose URL or tags
            // changed keeps its counts and gets its new info labels.
            match st.targets.get_mut(&t.name) {
                Some(s) => {
                    if s.info != info {
                        s.info = info;
                    }
                }
                None => {
                    st.targets.insert(
                        t.name.clone(),
                        Series {
                            info,
                            ..Series::default()
                        },
                    );
                }
            }
        }
    }

    /// Updates the series of `target`, if it is still a target: only
    /// `set_targets` makes series, so a check that ends after its target
    /// left cannot bring back series that nothing would remove.
    fn with(&self, target: &str, f: impl FnOnce(&mut Series, &[f64])) {
        if let Some(s) = self.store().targets.get_mut(target) {
            f(s, &self.bounds);
        }
    }

    /// A check of `target` was due while the previous one still ran.
    pub(crate) fn skipped(&self, target: &str) {
        self.with(target, |s, _| s.skipped += 1);
    }

    /// Records one finished check (all its records: `reuse` requests).
    pub(crate) fn observe(&self, target: &str, records: &[Record], outcome: &Outcome) {
        self.with(target, |s, bounds| {
            observe_phases(s, bounds, records);
            observe_outcome(s, outcome);
            observe_path(s, records);
        });
    }

    /// Exports the kernel's loss counters (they only grow).
    pub(crate) fn drops(&self, d: Drops) {
        let mut before = self.drops.lock().unwrap_or_else(|e| e.into_inner());
        for (reason, now, was) in [
            ("ringbuf_full", d.ringbuf_full, before.ringbuf_full),
            (
                "flow_insert_failed",
                d.flow_insert_failed,
                before.flow_insert_failed,
            ),
            ("flows_evicted", d.flows_evicted, before.flows_evicted),
            ("undecodable", d.undecodable, before.undecodable),
        ] {
            let c = self.lost.get_or_create(&ReasonL {
                reason: reason.to_string(),
            });
            c.inc_by(now.saturating_sub(was));
        }
        *before = d;
    }

    /// Forgets every series of a target that left the targets file.
    pub(crate) fn remove_target(&self, target: &str) {
        self.store().targets.remove(target);
    }
}

/// Each record's phases into the histograms, its retransmissions into the
/// counters.
fn observe_phases(s: &mut Series, bounds: &[f64], records: &[Record]) {
    for r in records {
        for (phase, ms) in phase_values(r) {
            if let Some(i) = PHASES.iter().position(|p| *p == phase) {
                s.phases[i].observe(bounds, ms / 1000.0);
            }
        }
        s.retransmits[0] += u64::from(r.wire.retransmits_out.unwrap_or(0));
        s.retransmits[1] += u64::from(r.wire.retransmits_in.unwrap_or(0));
    }
}

/// Success, the check counter, and the error kind.
fn observe_outcome(s: &mut Series, outcome: &Outcome) {
    s.success = Some(outcome.success);
    s.checks[usize::from(!outcome.success)] += 1;
    if let Some(kind) = outcome.error_kind {
        let k = kind.as_str();
        match s.errors.iter_mut().find(|(x, _)| *x == k) {
            Some((_, n)) => *n += 1,
            None => s.errors.push((k, 1)),
        }
    }
}

/// What the last records say of the path: status, middlebox, the
/// bottleneck, SYN-ACK TTL and hops, TTFB.
fn observe_path(s: &mut Series, records: &[Record]) {
    let last = records.last();
    s.status = Some(last.and_then(|r| r.http_status).unwrap_or(0));
    let verdict = records.iter().rev().find_map(|r| r.verdict.as_ref());
    if let Some(v) = verdict {
        match v.path {
            // A declared proxy is a middlebox on the path too.
            PathKind::Middlebox | PathKind::Proxy => s.middlebox = Some(true),
            PathKind::Direct => s.middlebox = Some(false),
            PathKind::Unknown => {}
        }
    }
    s.bottleneck = verdict
        .and_then(|v| v.bottleneck)
        .and_then(|b| BOTTLENECKS.iter().position(|p| *p == b.name()))
        .map(|i| i as u8);
    if let Some(r) = records.iter().find(|r| r.wire.synack_ttl.is_some()) {
        s.ttl = Some(r.wire.synack_ttl.unwrap_or(0));
        s.hops = Some(r.wire.synack_hops.unwrap_or(0));
    }
    if let Some(t) = last.and_then(|r| r.wire.ttfb_ms) {
        s.last_ttfb_s = Some(t / 1000.0);
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
    fn every_target_once_across_batches_and_none_after_it_left() {
        let m = Metrics::new();
        let n = 3 * BATCH + 5;
        let list: Vec<Target> = (0..n)
            .flat_map(|i| parse(&format!("http://h/ name=t{i:04}")).0)
            .collect();
        m.set_targets(&list, 0);
        for t in &list {
            m.observe(&t.name, &[rec()], &outcome(t, &[rec()]));
        }
        m.remove_target("t0070");
        // A check that ends after its target left brings nothing back.
        m.observe("t0070", &[rec()], &outcome(&list[70], &[rec()]));
        m.skipped("t0070");
        let s = m.encode();
        let counts: Vec<&str> = s
            .lines()
            .filter(|l| {
                l.starts_with("synack_phase_duration_seconds_count{")
                    && l.contains("phase=\"server\"")
            })
            .collect();
        assert_eq!(counts.len(), n - 1, "{s}");
        assert!(counts.iter().all(|l| l.ends_with(" 1")));
        // In target order, each once.
        let names: Vec<&str> = counts.iter().filter_map(|l| l.split('"').nth(1)).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
        assert!(!s.contains("t0070"), "a removed target's series remain");
        assert_eq!(s.matches("synack_checks_skipped_total{").count(), n - 1);
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
        // The same samples in both, whatever each encoder's order of lines
        // and of labels (no label value here holds a comma).
        let samples = |t: &str| -> Vec<String> {
            let mut v: Vec<String> = t
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| match l.split_once('{') {
                    Some((name, rest)) => {
                        let (labels, value) = rest.split_once('}').unwrap_or((rest, ""));
                        let mut ls: Vec<&str> = labels.split(',').collect();
                        ls.sort_unstable();
                        format!("{name}{{{}}}{value}", ls.join(","))
                    }
                    None => l.to_string(),
                })
                .collect();
            v.sort_unstable();
            v
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
