//! What `synack report` draws, aggregated: per target and source, the
//! phases over time (bucketed), each phase's distribution (a histogram on
//! a log scale), the verdicts and bottlenecks over time, the waterfalls of
//! the slowest and a typical request, and the comparison of the sources.
//! Pure: rows come in (a few fields of each record), data goes out; the
//! HTML is output's, the file reading the command's. A day of monitor
//! records (100k lines) becomes a few hundred numbers per chart, so the page
//! stays responsive whatever the input's size.

use crate::model::{
    compare::{self, Obs, PHASES},
    stats::{quantile, sorted},
    units::unix_ms_of_rfc3339,
};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// The shares the verdict divides a request's user-space span into; they
/// add up to it, so their means stack to the mean span.
pub(crate) const SHARES: [&str; 4] = ["network", "middlebox", "server", "client"];

/// At most this many time buckets per chart (about one per 8 px of a
/// 1000 px wide chart); fewer when there are few records.
pub(crate) const MAX_BUCKETS: usize = 120;

/// Histogram bins per phase.
const BINS: usize = 30;

/// What the report keeps of one record.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Row {
    pub obs: Obs,
    /// Wall-clock start (ms since the Unix epoch) from `started_at`.
    pub t_ms: Option<f64>,
    pub bottleneck: Option<String>,
    pub error_kind: Option<String>,
    /// Where the record is in its file (to read it again for a waterfall).
    pub offset: u64,
}

impl Row {
    pub(crate) fn of(r: &Value, offset: u64) -> Row {
        Row {
            obs: Obs::of(r),
            t_ms: r["started_at"].as_str().and_then(unix_ms_of_rfc3339),
            bottleneck: r["verdict"]["bottleneck"].as_str().map(str::to_string),
            error_kind: r["error"]["kind"].as_str().map(str::to_string),
            offset,
        }
    }

    fn value(&self, phase: &str) -> Option<f64> {
        PHASES
            .iter()
            .position(|(n, _)| *n == phase)
            .and_then(|i| self.obs.values[i])
    }
}

/// One source (a file) of the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct SourceInfo {
    pub name: String,
    pub file: String,
    pub records: usize,
    pub bad_lines: usize,
}

/// One time bucket of a source's records of a target.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct Bucket {
    /// The bucket's start: ms since the epoch (wall axis) or the record's
    /// number in its file (order axis).
    pub t: f64,
    pub n: usize,
    pub failed: usize,
    /// Mean of each share over the bucket's successful records, SHARES'
    /// order; null where no record has it.
    pub shares_mean_ms: [Option<f64>; 4],
    pub total_p50_ms: Option<f64>,
    pub total_p90_ms: Option<f64>,
    /// How many records gave each path / bottleneck ("failed" and "none"
    /// included, so the bars add up to n).
    pub paths: BTreeMap<String, usize>,
    pub bottlenecks: BTreeMap<String, usize>,
}

/// A phase's distribution on one source.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Dist {
    pub phase: &'static str,
    pub n: usize,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Values of exactly 0 (a direct path's middlebox share, a cached DNS
    /// answer's): no place on a log axis, counted apart.
    pub zeros: usize,
    /// Log-spaced bins between the smallest positive value and the largest:
    /// [lower edge, upper edge, count].
    pub bins: Vec<(f64, f64, usize)>,
}

/// One request drawn as a waterfall: its events on one axis, ms from its
/// first event, user-space and wire marks side by side.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Waterfall {
    pub label: &'static str,
    pub line: usize,
    pub url: String,
    pub started_at: Option<String>,
    pub request_index: Option<u64>,
    pub total_ms: Option<f64>,
    pub summary: Option<String>,
    pub path: Option<String>,
    /// [event, source ("user" or "wire"), ms from the first event].
    pub events: Vec<(String, String, f64)>,
    /// The verdict's shares, SHARES' order.
    pub shares_ms: [Option<f64>; 4],
}

impl Waterfall {
    pub(crate) fn of(label: &'static str, line: usize, r: &Value) -> Waterfall {
        let tl: Vec<(String, String, u64)> = r["timeline"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| {
                        Some((
                            e["event"].as_str()?.to_string(),
                            e["source"].as_str()?.to_string(),
                            e["t_ns"].as_u64()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let t0 = tl.iter().map(|e| e.2).min().unwrap_or(0);
        let mut events: Vec<(String, String, f64)> = tl
            .into_iter()
            .map(|(e, s, t)| (e, s, (t - t0) as f64 / 1e6))
            .collect();
        events.sort_by(|a, b| a.2.total_cmp(&b.2));
        Waterfall {
            label,
            line,
            url: r["url"].as_str().unwrap_or("-").to_string(),
            started_at: r["started_at"].as_str().map(str::to_string),
            request_index: r["request_index"].as_u64(),
            total_ms: r["user"]["total_ms"].as_f64(),
            summary: r["verdict"]["summary"].as_str().map(str::to_string),
            path: r["verdict"]["path"].as_str().map(str::to_string),
            events,
            shares_ms: SHARES.map(|s| r["phases"][format!("{s}_ms")].as_f64()),
        }
    }
}

/// One source's view of a target.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct SourceTarget {
    pub source: usize,
    /// This source's time span (two vantage points need not have run at
    /// the same hours) and its buckets' width, on the target's axis.
    pub t0: f64,
    pub t1: f64,
    pub bucket_width: f64,
    pub records: usize,
    /// Records without `started_at` on a wall-clock axis: left out of the
    /// time charts (in every other chart).
    pub untimed: usize,
    pub failed: usize,
    pub errors: BTreeMap<String, usize>,
    pub buckets: Vec<Bucket>,
    pub dists: Vec<Dist>,
    /// Filled by the command once it has read the chosen lines again.
    pub waterfalls: Vec<Waterfall>,
}

/// The records to draw as waterfalls: (label, offset, line).
pub(crate) type Picks = Vec<(&'static str, u64, usize)>;

/// One target of the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct TargetData {
    pub target: String,
    /// "wall": buckets by `started_at`; "order": by the record's number in
    /// its file (records without `started_at`, from before it existed).
    pub axis: &'static str,
    pub sources: Vec<SourceTarget>,
    /// Each later source against the first, in the sources' order (null
    /// where neither has a record of this target).
    pub compare: Vec<Option<compare::TargetReport>>,
}

/// The whole report's data (embedded in the page as JSON).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct ReportData {
    pub title: String,
    pub generated_at: Option<String>,
    pub version: &'static str,
    pub sources: Vec<SourceInfo>,
    pub method: &'static str,
    pub shares: [&'static str; 4],
    pub targets: Vec<TargetData>,
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Log-spaced histogram of the positive values between `range`'s edges
/// (the same for every source of a target, so that overlaid bars compare),
/// else this sample's own smallest and largest; zeros counted apart.
pub(crate) fn dist(phase: &'static str, values: &[f64], range: Option<(f64, f64)>) -> Dist {
    let s = sorted(values);
    let zeros = s.iter().filter(|x| **x <= 0.0).count();
    let pos = &s[zeros..];
    let mut bins = Vec::new();
    let own = pos.first().copied().zip(pos.last().copied());
    if let (Some(_), Some((lo, hi))) = (own, range.or(own)) {
        if hi <= lo * 1.000_001 {
            bins.push((lo, hi, pos.len()));
        } else {
            let (l0, l1) = (lo.ln(), hi.ln());
            let step = (l1 - l0) / BINS as f64;
            let mut counts = vec![0usize; BINS];
            for x in pos {
                let k = (((x.ln() - l0) / step).max(0.0) as usize).min(BINS - 1);
                counts[k] += 1;
            }
            bins = counts
                .into_iter()
                .enumerate()
                .map(|(k, c)| {
                    (
                        (l0 + step * k as f64).exp(),
                        (l0 + step * (k + 1) as f64).exp(),
                        c,
                    )
                })
                .collect();
        }
    }
    Dist {
        phase,
        n: s.len(),
        p50: quantile(&s, 0.5),
        p90: quantile(&s, 0.9),
        p99: quantile(&s, 0.99),
        min: s.first().copied(),
        max: s.last().copied(),
        zeros,
        bins,
    }
}

/// The target's time axis: the wall clock when most rows have a time (the
/// others, None here, stay out of the time charts and are counted), else
/// the record's line in its file. Returns (axis, each source's row times).
fn axis(per_source: &[Vec<(usize, &Row)>]) -> (&'static str, Vec<Vec<Option<f64>>>) {
    let all = per_source.iter().map(Vec::len).sum::<usize>();
    let timed = per_source
        .iter()
        .flatten()
        .filter(|(_, r)| r.t_ms.is_some())
        .count();
    let wall = timed * 2 > all;
    let times = per_source
        .iter()
        .map(|rows| {
            rows.iter()
                .map(|(i, r)| if wall { r.t_ms } else { Some(*i as f64) })
                .collect()
        })
        .collect();
    (if wall { "wall" } else { "order" }, times)
}

fn bucket_of(rows: &[&Row]) -> Bucket {
    let ok: Vec<&&Row> = rows.iter().filter(|r| !r.obs.failed).collect();
    let totals = sorted(
        &ok.iter()
            .filter_map(|r| r.value("total"))
            .collect::<Vec<_>>(),
    );
    let mut b = Bucket {
        n: rows.len(),
        failed: rows.len() - ok.len(),
        // Over the records that carry all four shares, so that the stack
        // is their mean span (plain HTTP through a proxy without the
        // origin's Server-Timing leaves middlebox and server null).
        shares_mean_ms: {
            let whole: Vec<[f64; 4]> = ok
                .iter()
                .filter_map(|r| {
                    let v = SHARES.map(|s| r.value(s));
                    v.iter()
                        .all(Option::is_some)
                        .then(|| v.map(|x| x.unwrap_or(0.0)))
                })
                .collect();
            std::array::from_fn(|i| mean(&whole.iter().map(|w| w[i]).collect::<Vec<_>>()))
        },
        total_p50_ms: quantile(&totals, 0.5),
        total_p90_ms: quantile(&totals, 0.9),
        ..Bucket::default()
    };
    for r in rows {
        let (path, neck) = if r.obs.failed {
            ("failed".to_string(), "failed".to_string())
        } else {
            (
                r.obs.path.clone().unwrap_or_else(|| "none".into()),
                r.bottleneck.clone().unwrap_or_else(|| "none".into()),
            )
        };
        *b.paths.entry(path).or_default() += 1;
        *b.bottlenecks.entry(neck).or_default() += 1;
    }
    b
}

/// The slowest successful request and a typical one (the total closest to
/// the median); one record when they are the same.
fn picks(rows: &[(usize, &Row)]) -> Picks {
    let ok: Vec<(usize, &Row, f64)> = rows
        .iter()
        .filter(|(_, r)| !r.obs.failed)
        .filter_map(|(i, r)| r.value("total").map(|t| (*i, *r, t)))
        .collect();
    let Some(slow) = ok.iter().max_by(|a, b| a.2.total_cmp(&b.2)) else {
        return Vec::new();
    };
    let med = quantile(&sorted(&ok.iter().map(|x| x.2).collect::<Vec<_>>()), 0.5).unwrap_or(0.0);
    let typical = ok
        .iter()
        .min_by(|a, b| (a.2 - med).abs().total_cmp(&(b.2 - med).abs()));
    let mut p = vec![("slowest", slow.1.offset, slow.0)];
    if let Some(t) = typical.filter(|t| t.1.offset != slow.1.offset) {
        p.push(("typical", t.1.offset, t.0));
    }
    p
}

/// Everything but the waterfalls (the command reads those records again:
/// see `picks` in the result) for the rows of each source, in file order.
/// Rows carry their line number as the first tuple field.
pub(crate) fn build(
    title: &str,
    generated_at: Option<String>,
    sources: Vec<SourceInfo>,
    rows: &[Vec<(usize, Row)>],
) -> (ReportData, Vec<Vec<Picks>>) {
    let names: Vec<String> = sources.iter().map(|s| s.name.clone()).collect();
    let mut order: Vec<&str> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for r in rows.iter().flatten() {
        if seen.insert(r.1.obs.target.as_str()) {
            order.push(&r.1.obs.target);
        }
    }
    let mut all_picks = Vec::new();
    let targets = order
        .into_iter()
        .map(|t| {
            let per: Vec<Vec<(usize, &Row)>> = rows
                .iter()
                .map(|rs| {
                    rs.iter()
                        .filter(|(_, r)| r.obs.target == t)
                        .map(|(i, r)| (*i, r))
                        .collect()
                })
                .collect();
            let (axis_kind, times) = axis(&per);
            // Each phase's positive range over every source.
            let ranges: [Option<(f64, f64)>; PHASES.len()] = std::array::from_fn(|i| {
                let pos = per
                    .iter()
                    .flatten()
                    .filter_map(|(_, r)| r.obs.values[i])
                    .filter(|v| *v > 0.0);
                let (lo, hi) = pos.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                    (a.min(v), b.max(v))
                });
                (lo <= hi).then_some((lo, hi))
            });
            let mut target_picks = Vec::new();
            let sources = per
                .iter()
                .zip(&times)
                .enumerate()
                .map(|(si, (rs, ts))| {
                    let t0 = ts.iter().flatten().copied().fold(f64::INFINITY, f64::min);
                    let t1 = ts
                        .iter()
                        .flatten()
                        .copied()
                        .fold(f64::NEG_INFINITY, f64::max);
                    let (t0, t1) = if t0 <= t1 { (t0, t1) } else { (0.0, 0.0) };
                    let nb = rs.len().div_ceil(5).clamp(1, MAX_BUCKETS);
                    let width = if t1 > t0 { (t1 - t0) / nb as f64 } else { 1.0 };
                    let mut groups: Vec<Vec<&Row>> = vec![Vec::new(); nb];
                    let mut untimed = 0;
                    for ((_, r), t) in rs.iter().zip(ts) {
                        let Some(t) = t else {
                            untimed += 1;
                            continue;
                        };
                        let k = (((t - t0) / width) as usize).min(nb - 1);
                        groups[k].push(r);
                    }
                    let buckets = groups
                        .iter()
                        .enumerate()
                        .filter(|(_, g)| !g.is_empty())
                        .map(|(k, g)| Bucket {
                            t: t0 + width * k as f64,
                            ..bucket_of(g)
                        })
                        .collect();
                    let dists = PHASES
                        .iter()
                        .enumerate()
                        .map(|(i, (name, _))| {
                            let v: Vec<f64> =
                                rs.iter().filter_map(|(_, r)| r.obs.values[i]).collect();
                            dist(name, &v, ranges[i])
                        })
                        .filter(|d| d.n > 0)
                        .collect();
                    let mut errors = BTreeMap::new();
                    for (_, r) in rs {
                        if let Some(k) = &r.error_kind {
                            *errors.entry(k.clone()).or_default() += 1;
                        }
                    }
                    target_picks.push(picks(rs));
                    SourceTarget {
                        source: si,
                        t0,
                        t1,
                        bucket_width: width,
                        records: rs.len(),
                        untimed,
                        failed: rs.iter().filter(|(_, r)| r.obs.failed).count(),
                        errors,
                        buckets,
                        dists,
                        waterfalls: Vec::new(),
                    }
                })
                .collect();
            all_picks.push(target_picks);
            let a: Vec<Obs> = per[0].iter().map(|(_, r)| r.obs.clone()).collect();
            let cmp = (1..per.len())
                .map(|si| {
                    let b: Vec<Obs> = per[si].iter().map(|(_, r)| r.obs.clone()).collect();
                    compare::compare_obs(&names[0], &a, &names[si], &b)
                        .targets
                        .into_iter()
                        .next()
                })
                .collect();
            TargetData {
                target: t.to_string(),
                axis: axis_kind,
                sources,
                compare: cmp,
            }
        })
        .collect();
    (
        ReportData {
            title: title.to_string(),
            generated_at,
            version: env!("CARGO_PKG_VERSION"),
            sources,
            method: compare::METHOD,
            shares: SHARES,
            targets,
        },
        all_picks,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A record at second `s` of 2026-12-03 with a total made of its shares.
    fn rec(target: &str, s: u32, network: f64, client: f64, path: &str) -> Value {
        json!({
            "url": format!("https://{target}/"), "target": target, "error": null,
            "started_at": format!("2026-12-03T10:{:02}:{:02}.000Z", s / 60, s % 60),
            "user": {"total_ms": network + 20.0 + client, "ttfb_ms": 21.0, "dns_ms": 0.0,
                     "connect_ms": 1.0, "tls_ms": 2.0},
            "wire": {"handshake_rtt_ms": 1.0, "tls_rtt_ms": 1.1, "ttfb_ms": 21.0, "synack_ttl": 63},
            "phases": {"network_ms": network, "middlebox_ms": 0.0, "server_ms": 20.0,
                       "client_ms": client},
            "verdict": {"path": path, "bottleneck": if client > network { "client" } else { "network" }},
            "timeline": [
                {"event": "connect_call", "source": "user", "t_ns": 5_000_000_000u64},
                {"event": "syn_out", "source": "wire", "t_ns": 5_000_100_000u64},
                {"event": "synack_in", "source": "wire", "t_ns": 5_001_100_000u64},
                {"event": "done", "source": "user", "t_ns": 5_040_000_000u64}
            ]
        })
    }

    fn rows(recs: &[Value]) -> Vec<(usize, Row)> {
        recs.iter()
            .enumerate()
            .map(|(i, r)| (i + 1, Row::of(r, i as u64 * 100)))
            .collect()
    }

    fn info(name: &str, n: usize) -> SourceInfo {
        SourceInfo {
            name: name.into(),
            file: format!("{name}.jsonl"),
            records: n,
            bad_lines: 0,
        }
    }

    #[test]
    fn buckets_shares_verdicts_and_picks() {
        // 600 records a second apart; the second half spends 50 ms more on
        // this host's CPU; every tenth fails.
        let recs: Vec<Value> = (0..600u32)
            .map(|s| {
                let mut r = rec("api", s, 10.0, if s >= 300 { 51.0 } else { 1.0 }, "direct");
                if s % 10 == 9 {
                    r["error"] = json!({"kind": "timeout", "message": "m"});
                }
                r
            })
            .collect();
        let (d, picks) = build("t", None, vec![info("a", 600)], &[rows(&recs)]);
        let t = &d.targets[0];
        assert_eq!((t.target.as_str(), t.axis), ("api", "wall"));
        let st = &t.sources[0];
        assert_eq!((st.records, st.failed), (600, 60));
        assert_eq!(st.errors.get("timeout"), Some(&60));
        // At most MAX_BUCKETS, every record in one, the span 599 s.
        assert_eq!(st.buckets.len(), MAX_BUCKETS);
        assert_eq!(st.buckets.iter().map(|b| b.n).sum::<usize>(), 600);
        assert!((st.t1 - st.t0 - 599_000.0).abs() < 1e-6);
        let (first, last) = (&st.buckets[0], &st.buckets[MAX_BUCKETS - 1]);
        // The shares' means add up to the mean total.
        let sum: f64 = first.shares_mean_ms.iter().flatten().sum();
        assert!((sum - 31.0).abs() < 1e-9, "{first:?}");
        assert_eq!(last.shares_mean_ms[3], Some(51.0));
        assert_eq!(last.total_p50_ms, Some(81.0));
        // Paths and bottlenecks count the failed too: they add up to n.
        for b in &st.buckets {
            assert_eq!(b.paths.values().sum::<usize>(), b.n);
            assert_eq!(b.bottlenecks.values().sum::<usize>(), b.n);
        }
        // 599 s in 120 buckets: the first holds seconds 0-4.
        assert_eq!(first.n, 5);
        assert_eq!(first.bottlenecks.get("network"), Some(&5));
        let failed: usize = st
            .buckets
            .iter()
            .filter_map(|b| b.bottlenecks.get("failed"))
            .sum();
        assert_eq!(failed, 60);
        assert_eq!(st.buckets.iter().map(|b| b.failed).sum::<usize>(), 60);
        assert!(
            last.bottlenecks.get("client").is_some_and(|n| *n >= 4),
            "{last:?}"
        );
        // The slowest (a client-heavy one) and a typical one, by line.
        let p = &picks[0][0];
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].0, "slowest");
        assert!(p[0].2 > 300, "{p:?}");
        assert_eq!(p[1].0, "typical");
        // One source: nothing to compare.
        assert!(t.compare.is_empty());
    }

    #[test]
    fn two_sources_are_compared_and_records_without_a_time_go_by_order() {
        let a: Vec<Value> = (0..40)
            .map(|s| rec("api", s, 10.0 + (s % 3) as f64 * 0.1, 1.0, "direct"))
            .collect();
        let mut b: Vec<Value> = (0..40)
            .map(|s| rec("api", s, 10.0 + (s % 3) as f64 * 0.1, 60.0, "direct"))
            .collect();
        let (d, _) = build(
            "t",
            None,
            vec![info("fargate", 40), info("apprunner", 40)],
            &[rows(&a), rows(&b)],
        );
        let t = &d.targets[0];
        assert_eq!(t.compare.len(), 1);
        let s = &t.compare[0].as_ref().unwrap().sentence;
        assert!(s.starts_with("apprunner is slower by 59.0 ms"), "{s}");
        assert!(s.contains("this host's own time (client)"), "{s}");
        // The two sources' histograms of the client share lie apart.
        let client = |k: usize| {
            t.sources[k]
                .dists
                .iter()
                .find(|x| x.phase == "client")
                .cloned()
                .unwrap()
        };
        assert_eq!((client(0).p50, client(1).p50), (Some(1.0), Some(60.0)));

        for r in &mut b {
            r.as_object_mut().unwrap().remove("started_at");
        }
        let (d, _) = build(
            "t",
            None,
            vec![info("a", 40), info("b", 40)],
            &[rows(&a), rows(&b)],
        );
        // Half without a time or more: the order axis; fewer: the clock,
        // the untimed ones counted apart.
        assert_eq!(d.targets[0].axis, "order");
        let mut c = rows(&a);
        c[0].1.t_ms = None;
        let (d1, _) = build("t", None, vec![info("a", 40)], &[c]);
        assert_eq!(d1.targets[0].axis, "wall");
        assert_eq!(d1.targets[0].sources[0].untimed, 1);
        assert_eq!(
            d1.targets[0].sources[0]
                .buckets
                .iter()
                .map(|b| b.n)
                .sum::<usize>(),
            39
        );
        assert_eq!(d.targets[0].sources[0].t0, 1.0);
        assert_eq!(d.targets[0].sources[0].t1, 40.0);
    }

    #[test]
    fn a_target_on_one_side_only_and_histograms() {
        let a = vec![rec("api", 0, 10.0, 1.0, "direct")];
        let b = vec![rec("web", 0, 10.0, 1.0, "direct")];
        let (d, picks) = build(
            "t",
            None,
            vec![info("a", 1), info("b", 1)],
            &[rows(&a), rows(&b)],
        );
        assert_eq!(d.targets.len(), 2);
        assert_eq!(d.targets[0].sources[1].records, 0);
        assert!(d.targets[0].sources[1].buckets.is_empty());
        assert!(picks[0][1].is_empty());
        assert_eq!(
            picks[0][0].len(),
            1,
            "one record is both slowest and typical"
        );
        let c = d.targets[0].compare[0].as_ref().unwrap();
        assert!(c.sentence.starts_with("only in a"));
        // A common range: both samples binned on the same edges.
        let a = dist("x", &[1.0, 2.0], Some((1.0, 100.0)));
        let b = dist("x", &[50.0, 100.0], Some((1.0, 100.0)));
        assert_eq!(
            a.bins.iter().map(|x| (x.0, x.1)).collect::<Vec<_>>(),
            b.bins.iter().map(|x| (x.0, x.1)).collect::<Vec<_>>()
        );
        assert_eq!(b.bins[BINS - 1].2, 1);

        let h = dist("x", &[0.0, 0.0, 1.0, 10.0, 100.0, 100.0], None);
        assert_eq!((h.n, h.zeros), (6, 2));
        assert_eq!(h.bins.len(), BINS);
        assert_eq!(h.bins.iter().map(|b| b.2).sum::<usize>(), 4);
        assert!((h.bins[0].0 - 1.0).abs() < 1e-9 && (h.bins[BINS - 1].1 - 100.0).abs() < 1e-6);
        assert_eq!(h.bins[BINS - 1].2, 2);
        let one = dist("x", &[5.0, 5.0], None);
        assert_eq!(one.bins, vec![(5.0, 5.0, 2)]);
        assert!(dist("x", &[], None).bins.is_empty());
    }

    #[test]
    fn comparisons_keep_their_source_and_shares_add_up() {
        // A target only in the third of three files: the first comparison
        // (second file) is null, the second names the third.
        let a = vec![rec("api", 0, 10.0, 1.0, "direct")];
        let c = vec![rec("web", 0, 10.0, 1.0, "direct")];
        let (d, _) = build(
            "t",
            None,
            vec![info("a", 1), info("b", 0), info("c", 1)],
            &[rows(&a), vec![], rows(&c)],
        );
        let web = d.targets.iter().find(|t| t.target == "web").unwrap();
        assert_eq!(web.compare.len(), 2);
        assert!(web.compare[0].is_none());
        assert!(
            web.compare[1]
                .as_ref()
                .unwrap()
                .sentence
                .starts_with("only in c")
        );
        // A record without middlebox and server shares stays out of the
        // stack: the stack is the mean span of the complete ones.
        let mut partial = rec("api", 1, 30.0, 3.0, "proxy");
        partial["phases"]["middlebox_ms"] = Value::Null;
        partial["phases"]["server_ms"] = Value::Null;
        let (d, _) = build(
            "t",
            None,
            vec![info("a", 2)],
            &[rows(&[rec("api", 0, 10.0, 1.0, "direct"), partial])],
        );
        let b = &d.targets[0].sources[0].buckets[0];
        assert_eq!(
            b.shares_mean_ms,
            [Some(10.0), Some(0.0), Some(20.0), Some(1.0)]
        );
    }

    #[test]
    fn waterfalls_are_on_ms_from_the_first_event() {
        let w = Waterfall::of("slowest", 7, &rec("api", 0, 10.0, 1.0, "direct"));
        assert_eq!(w.line, 7);
        assert_eq!(w.events[0], ("connect_call".into(), "user".into(), 0.0));
        assert!((w.events[2].2 - 1.1).abs() < 1e-9);
        assert_eq!(w.shares_ms, [Some(10.0), Some(0.0), Some(20.0), Some(1.0)]);
        let empty = Waterfall::of("typical", 1, &json!({"url": "x"}));
        assert!(empty.events.is_empty() && empty.total_ms.is_none());
    }
}
