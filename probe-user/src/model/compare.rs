//! Two populations of records side by side (`synack compare`): per target
//! and phase, each side's median and p90, the median's shift with a
//! bootstrap interval, and one sentence saying where a difference lies.
//! Pure: records come in as parsed JSON, the report goes out as data.

use crate::model::{
    stats::{median_shift, quantile, sorted},
    units::ms_text as ms,
};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// The phases compared: (name, JSON path in a record).
pub(crate) const PHASES: &[(&str, [&str; 2])] = &[
    ("dns", ["user", "dns_ms"]),
    ("connect", ["user", "connect_ms"]),
    ("tls", ["user", "tls_ms"]),
    ("ttfb", ["user", "ttfb_ms"]),
    ("total", ["user", "total_ms"]),
    ("wire_handshake", ["wire", "handshake_rtt_ms"]),
    ("wire_tls", ["wire", "tls_rtt_ms"]),
    ("wire_ttfb", ["wire", "ttfb_ms"]),
    ("network", ["phases", "network_ms"]),
    ("middlebox", ["phases", "middlebox_ms"]),
    ("server", ["phases", "server_ms"]),
    ("client", ["phases", "client_ms"]),
];

/// The verdict's share phases, which add up to a request's span.
const SHARES: &[&str] = &["network", "middlebox", "server", "client"];

/// How the interval is found, for the reader of the report.
pub(crate) const METHOD: &str = "difference of medians (B - A), 95% percentile bootstrap \
                                 interval, 2000 resamples of each side (a side of over 2000 \
                                 values: m-out-of-n, m = 2000, the spread scaled by sqrt(m/n))";

/// A record line that cannot be used, and why (line numbers from 1).
#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BadLine {
    pub line: usize,
    pub why: String,
}

/// One line of a JSON-lines file: a record, nothing (a blank line), or why
/// it cannot be used.
pub(crate) fn parse_line(l: &str) -> Result<Option<Value>, String> {
    let l = l.trim();
    if l.is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<Value>(l) {
        Err(e) => Err(format!("not JSON ({e}): a truncated line?")),
        Ok(v) if !is_record(&v) => Err(
            "not a synack record (no url, user, wire and phases): another tool's, or another \
             version's"
                .into(),
        ),
        Ok(v) => Ok(Some(v)),
    }
}

/// The usable records of one JSON-lines text, and the lines that are not.
#[cfg(test)]
pub(crate) fn parse_records(text: &str) -> (Vec<Value>, Vec<BadLine>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (i, l) in text.lines().enumerate() {
        match parse_line(l) {
            Ok(Some(v)) => ok.push(v),
            Ok(None) => {}
            Err(why) => bad.push(BadLine { line: i + 1, why }),
        }
    }
    (ok, bad)
}

fn is_record(v: &Value) -> bool {
    v["url"].is_string()
        && v["user"].is_object()
        && v["wire"].is_object()
        && v["phases"].is_object()
}

/// What compare needs of one record: a few fields, not the whole JSON
/// (a day of monitor records is 100k of them).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Obs {
    pub target: String,
    pub failed: bool,
    pub path: Option<String>,
    pub ttl: Option<u64>,
    /// Each of PHASES, in its order; None for a failed record.
    pub values: [Option<f64>; PHASES.len()],
}

impl Obs {
    pub(crate) fn of(r: &Value) -> Obs {
        let failed = !r["error"].is_null();
        Obs {
            target: target_of(r),
            failed,
            path: r["verdict"]["path"].as_str().map(str::to_string),
            ttl: r["wire"]["synack_ttl"].as_u64(),
            values: std::array::from_fn(|i| {
                let p = PHASES[i].1;
                if failed { None } else { r[p[0]][p[1]].as_f64() }
            }),
        }
    }
}

/// One side's figures of a phase.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Side {
    pub n: usize,
    pub median: Option<f64>,
    pub p90: Option<f64>,
}

/// One phase on both sides.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct PhaseRow {
    pub phase: &'static str,
    pub a: Side,
    pub b: Side,
    /// B's median minus A's, ms.
    pub diff_ms: Option<f64>,
    /// Its 95% interval, ms.
    pub ci_ms: Option<[f64; 2]>,
    /// The interval leaves out zero.
    pub different: bool,
}

/// What a side's records say of the path: the verdict most of them gave,
/// and the SYN-ACK TTL most of them saw.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct PathSeen {
    pub path: Option<String>,
    pub ttl: Option<u64>,
    /// Records in all, and those that failed (left out of the phases).
    pub records: usize,
    pub failed: usize,
}

/// One target compared.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct TargetReport {
    pub target: String,
    pub a: PathSeen,
    pub b: PathSeen,
    pub phases: Vec<PhaseRow>,
    pub sentence: String,
}

/// The whole comparison.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Report {
    pub a: String,
    pub b: String,
    pub method: &'static str,
    pub targets: Vec<TargetReport>,
}

/// The target a record belongs to: the monitor's name, else its URL.
pub(crate) fn target_of(r: &Value) -> String {
    r["target"]
        .as_str()
        .or_else(|| r["url"].as_str())
        .unwrap_or("-")
        .to_string()
}

fn values(recs: &[&Obs], phase: usize) -> Vec<f64> {
    recs.iter().filter_map(|r| r.values[phase]).collect()
}

fn side(v: &[f64]) -> Side {
    let s = sorted(v);
    Side {
        n: s.len(),
        median: quantile(&s, 0.5),
        p90: quantile(&s, 0.9),
    }
}

fn most_common<T: Ord + Clone>(it: impl Iterator<Item = T>) -> Option<T> {
    let mut count: BTreeMap<T, usize> = BTreeMap::new();
    for x in it {
        *count.entry(x).or_default() += 1;
    }
    count.into_iter().max_by_key(|(_, n)| *n).map(|(x, _)| x)
}

fn path_seen(recs: &[&Obs]) -> PathSeen {
    PathSeen {
        path: most_common(recs.iter().filter_map(|r| r.path.clone())),
        ttl: most_common(recs.iter().filter_map(|r| r.ttl)),
        records: recs.len(),
        failed: recs.iter().filter(|r| r.failed).count(),
    }
}

/// Compares records A with records B (each side's name given), target by
/// target, in the order the targets first appear.
#[cfg(test)]
pub(crate) fn compare(a_name: &str, a: &[Value], b_name: &str, b: &[Value]) -> Report {
    let (a, b): (Vec<Obs>, Vec<Obs>) = (
        a.iter().map(Obs::of).collect(),
        b.iter().map(Obs::of).collect(),
    );
    compare_obs(a_name, &a, b_name, &b)
}

/// compare() on the fields it needs, read once per record.
pub(crate) fn compare_obs(a_name: &str, a: &[Obs], b_name: &str, b: &[Obs]) -> Report {
    let mut order: Vec<&str> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for r in a.iter().chain(b) {
        if seen.insert(r.target.as_str()) {
            order.push(&r.target);
        }
    }
    let targets = order
        .into_iter()
        .map(|t| {
            let ra: Vec<&Obs> = a.iter().filter(|r| r.target == t).collect();
            let rb: Vec<&Obs> = b.iter().filter(|r| r.target == t).collect();
            target_report(t.to_string(), a_name, &ra, b_name, &rb)
        })
        .collect();
    Report {
        a: a_name.to_string(),
        b: b_name.to_string(),
        method: METHOD,
        targets,
    }
}

fn target_report(
    target: String,
    a_name: &str,
    ra: &[&Obs],
    b_name: &str,
    rb: &[&Obs],
) -> TargetReport {
    let phases: Vec<PhaseRow> = PHASES
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let (va, vb) = (values(ra, i), values(rb, i));
            let shift = median_shift(&va, &vb);
            let (a, b) = (side(&va), side(&vb));
            let different = shift.is_some_and(|s| s.real() && s.diff.abs() >= floor(&a, &b));
            PhaseRow {
                phase: name,
                a,
                b,
                diff_ms: shift.map(|s| s.diff),
                ci_ms: shift.map(|s| [s.lo, s.hi]),
                different,
            }
        })
        .collect();
    let (pa, pb) = (path_seen(ra), path_seen(rb));
    let sentence = sentence(a_name, &pa, b_name, &pb, &phases);
    TargetReport {
        target,
        a: pa,
        b: pb,
        phases,
        sentence,
    }
}

/// The smallest shift worth calling a difference, even when the interval
/// leaves out zero: 0.5 ms, or 2% of the larger median (a few microseconds
/// of DNS from a cache, or 0.3 ms on a 160 ms request, are nobody's
/// bottleneck).
fn floor(a: &Side, b: &Side) -> f64 {
    let m = a.median.unwrap_or(0.0).max(b.median.unwrap_or(0.0));
    (0.02 * m).max(0.5)
}

fn describe_path(p: &PathSeen) -> String {
    match (&p.path, p.ttl) {
        (Some(path), Some(t)) => format!("{path}, TTL {t}"),
        (Some(path), None) => path.clone(),
        (None, Some(t)) => format!("TTL {t}"),
        (None, None) => "unknown".into(),
    }
}

/// The one sentence for a target: paths first when they differ, then the
/// total's shift and the shares that carry it, or that there is none.
fn sentence(a: &str, pa: &PathSeen, b: &str, pb: &PathSeen, rows: &[PhaseRow]) -> String {
    let row = |n: &str| rows.iter().find(|r| r.phase == n);
    let mut s = String::new();
    let same_path = pa.path == pb.path && pa.ttl == pb.ttl;
    if pa.records == 0 || pb.records == 0 {
        let (has, lacks) = if pa.records == 0 { (b, a) } else { (a, b) };
        return format!("only in {has}: {lacks} has no record of this target.");
    }
    if !same_path {
        s.push_str(&format!(
            "The paths differ ({a}: {}; {b}: {}). ",
            describe_path(pa),
            describe_path(pb)
        ));
    }
    let total = row("total").filter(|r| r.diff_ms.is_some());
    let Some(total) = total else {
        s.push_str("Too few successful requests on a side to compare (at least two each).");
        return s;
    };
    let d = total.diff_ms.unwrap_or(0.0);
    let ci = total.ci_ms.unwrap_or([0.0, 0.0]);
    if !total.different {
        let why = if ci[0] <= 0.0 && ci[1] >= 0.0 {
            format!(
                "the 95% interval of the difference, {} to {}, holds 0",
                ms(ci[0]),
                ms(ci[1])
            )
        } else {
            format!(
                "a shift of {} (95% interval {} to {}) is under the {} that counts as one \
                 here: 2% of the median, at least 0.5 ms",
                ms(d),
                ms(ci[0]),
                ms(ci[1]),
                ms(floor(&total.a, &total.b))
            )
        };
        s.push_str(&format!(
            "No difference at the median: {a} {}, {b} {} ({why}).",
            total.a.median.map(ms).unwrap_or("-".into()),
            total.b.median.map(ms).unwrap_or("-".into()),
        ));
        return s;
    }
    let (slow, by) = if d > 0.0 { (b, d) } else { (a, -d) };
    s.push_str(&format!("{slow} is slower by {} at the median", ms(by)));
    // The shares that moved (signed as the slower side's extra), largest
    // first: they add up to the difference and may move against each other
    // (a proxy's path takes time from the network's and adds its own).
    let mut moved: Vec<(&str, f64)> = SHARES
        .iter()
        .filter_map(|n| row(n))
        .filter(|r| r.different)
        .filter_map(|r| r.diff_ms.map(|x| (r.phase, x * d.signum())))
        .collect();
    moved.sort_by(|x, y| y.1.abs().total_cmp(&x.1.abs()));
    if moved.is_empty() {
        s.push_str(
            " (no one of network, middlebox, server and client moves beyond noise on its own: \
             the difference is spread, or the verdict's phases are missing)",
        );
    } else {
        let parts: Vec<String> = moved
            .iter()
            .map(|(n, v)| {
                let amount = format!("{}{}", if *v >= 0.0 { "+" } else { "-" }, ms(v.abs()));
                match *n {
                    "client" => format!("{amount} this host's own time (client)"),
                    other => format!("{amount} {other}"),
                }
            })
            .collect();
        s.push_str(&format!(": {}", parts.join(", ")));
    }
    let same: Vec<&str> = SHARES
        .iter()
        .filter_map(|n| row(n))
        .filter(|r| r.diff_ms.is_some() && !r.different)
        .map(|r| r.phase)
        .collect();
    if !same.is_empty() || same_path {
        let mut tail = Vec::new();
        if same_path {
            tail.push(format!(
                "the path is the same ({} on both)",
                describe_path(pa)
            ));
        }
        if !same.is_empty() {
            tail.push(format!("{} the same", same.join(", ")));
        }
        s.push_str(&format!("; {}", tail.join("; ")));
    }
    s.push('.');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A record with a total and its shares (ms), direct, TTL 63.
    fn rec(target: &str, network: f64, server: f64, client: f64, path: &str, ttl: u64) -> Value {
        json!({
            "url": format!("https://{target}/"), "target": target, "error": null,
            "user": {"total_ms": network + server + client, "ttfb_ms": server + 1.0,
                     "dns_ms": 0.1, "connect_ms": 1.0, "tls_ms": 2.0},
            "wire": {"handshake_rtt_ms": 1.0, "tls_rtt_ms": 1.1, "ttfb_ms": server + 1.0,
                     "synack_ttl": ttl},
            "phases": {"network_ms": network, "middlebox_ms": 0.0, "server_ms": server,
                       "client_ms": client},
            "verdict": {"path": path}
        })
    }

    fn jitter(k: usize) -> f64 {
        ((k * 7919) % 11) as f64 * 0.2
    }

    #[test]
    fn the_client_phase_is_named_when_it_carries_the_difference() {
        let a: Vec<Value> = (0..30)
            .map(|k| {
                rec(
                    "api",
                    10.0 + jitter(k),
                    20.0 + jitter(k + 3),
                    1.0,
                    "direct",
                    63,
                )
            })
            .collect();
        // B: the same network and server, 78 ms of this host's CPU more.
        let b: Vec<Value> = (0..30)
            .map(|k| {
                rec(
                    "api",
                    10.0 + jitter(k + 1),
                    20.0 + jitter(k + 4),
                    79.0,
                    "direct",
                    63,
                )
            })
            .collect();
        let r = compare("fargate", &a, "apprunner", &b);
        assert_eq!(r.targets.len(), 1);
        let t = &r.targets[0];
        let s = &t.sentence;
        assert!(s.starts_with("apprunner is slower by"), "{s}");
        assert!(
            s.contains("by 78.0 ms at the median: +78.0 ms this host's own time (client);"),
            "{s}"
        );
        assert!(!s.contains("ms network"), "{s}");
        assert!(s.contains("direct, TTL 63 on both"), "{s}");
        assert!(s.contains("network") && s.contains("server"), "{s}");
        let client = t.phases.iter().find(|p| p.phase == "client").unwrap();
        assert!(client.different && (client.diff_ms.unwrap() - 78.0).abs() < 1e-9);
        let server = t.phases.iter().find(|p| p.phase == "server").unwrap();
        assert!(!server.different, "{server:?}");
    }

    #[test]
    fn noise_is_no_difference_and_paths_that_differ_come_first() {
        let a: Vec<Value> = (0..20)
            .map(|k| rec("api", 10.0 + jitter(k), 20.0, 1.0, "direct", 63))
            .collect();
        let b: Vec<Value> = (0..20)
            .map(|k| rec("api", 10.0 + jitter(k + 2), 20.0, 1.0, "direct", 63))
            .collect();
        let s = &compare("A", &a, "B", &b).targets[0].sentence;
        assert!(s.starts_with("No difference at the median"), "{s}");
        // Through a middlebox on B, 40 ms more network.
        let c: Vec<Value> = (0..20)
            .map(|k| rec("api", 50.0 + jitter(k), 20.0, 1.0, "middlebox", 64))
            .collect();
        let s = &compare("A", &a, "B", &c).targets[0].sentence;
        assert!(
            s.starts_with("The paths differ (A: direct, TTL 63; B: middlebox, TTL 64)."),
            "{s}"
        );
        assert!(
            s.contains("B is slower by 40.0 ms at the median: +40.0 ms network;"),
            "{s}"
        );
        // A faster B: the shares are the slower side's (A's) extra.
        let s = &compare("A", &c, "B", &a).targets[0].sentence;
        assert!(
            s.contains("A is slower by 40.0 ms at the median: +40.0 ms network;"),
            "{s}"
        );
        // Tiny shifts with an interval off zero are still no difference.
        let d: Vec<Value> = a
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r["user"]["dns_ms"] = json!(0.1 + 0.004);
                r
            })
            .collect();
        let dns = |rep: &Report| rep.targets[0].phases[0].clone();
        assert!(!dns(&compare("A", &a, "B", &d)).different);
        // A total shifted for sure but by less than the floor is said so,
        // not called an interval that holds 0.
        let tight = |shift: f64| -> Vec<Value> {
            (0..20)
                .map(|k| {
                    let mut r = rec("api", 10.0, 20.0, 1.0, "direct", 63);
                    r["user"]["total_ms"] = json!(30.0 + (k % 3) as f64 * 0.01 + shift);
                    r
                })
                .collect()
        };
        let s = &compare("A", &tight(0.0), "B", &tight(0.3)).targets[0].sentence;
        assert!(s.starts_with("No difference at the median"), "{s}");
        assert!(
            s.contains("a shift of 0.30 ms") && s.contains("under the 0.61 ms"),
            "{s}"
        );
    }

    #[test]
    fn targets_on_one_side_failed_records_and_bad_lines() {
        let mut a = vec![rec("api", 10.0, 20.0, 1.0, "direct", 63)];
        a.push(rec("api", 11.0, 20.0, 1.0, "direct", 63));
        let mut failed = rec("api", 999.0, 999.0, 999.0, "unknown", 63);
        failed["error"] = json!({"kind": "timeout", "message": "m"});
        a.push(failed);
        let b = vec![rec("web", 10.0, 20.0, 1.0, "direct", 63)];
        let r = compare("A", &a, "B", &b);
        assert_eq!(r.targets.len(), 2);
        assert_eq!(r.targets[0].a.failed, 1);
        // The failed record is in no phase.
        assert_eq!(r.targets[0].phases[4].a.n, 2);
        assert_eq!(
            r.targets[0].sentence,
            "only in A: B has no record of this target."
        );
        assert_eq!(
            r.targets[1].sentence,
            "only in B: A has no record of this target."
        );

        let text = format!(
            "{}\n\n{{\"url\": \"x\", \"user\": {{}}, \"wire\": {{}}, \"phases\": {{}}\n{{\"a\": 1}}\n",
            rec("api", 1.0, 1.0, 1.0, "direct", 63)
        );
        let (ok, bad) = parse_records(&text);
        assert_eq!(ok.len(), 1);
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].line, 3);
        assert!(bad[0].why.contains("truncated"), "{:?}", bad[0]);
        assert_eq!(bad[1].line, 4);
        assert!(bad[1].why.contains("another version"), "{:?}", bad[1]);
        assert_eq!(parse_records(""), (vec![], vec![]));
    }
}
