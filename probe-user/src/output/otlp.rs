//! OTLP metrics (`synack monitor --otlp URL`): checks aggregated between
//! pushes into the official protobuf messages (opentelemetry-proto), with
//! cumulative temporality since the monitor started. Names follow the
//! OpenTelemetry collector's httpcheck receiver where they mean the same
//! (`httpcheck.duration`, `httpcheck.status`, `httpcheck.error`, with its
//! `http.url`, `http.method`, `http.status_code`, `http.status_class` and
//! `error.message` attributes); synack's own are `synack.*`. Pure: checks
//! in, a request out; the monitor sends it.

use crate::model::{record::Record, targets::Target, verdict::PathKind};
use crate::output::metrics::{Outcome, phase_values};
use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
        ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
    },
    resource::v1::Resource,
};
use std::collections::BTreeMap;

/// The histogram's bounds in seconds: 0.25 ms to ~33 s, doubling, as the
/// Prometheus histogram's, so that both say the same.
pub(crate) fn bounds() -> Vec<f64> {
    (0..18).map(|k| 0.00025 * f64::powi(2.0, k)).collect()
}

#[derive(Clone, Debug, Default, PartialEq)]
struct Hist {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
    min: f64,
    max: f64,
}

impl Hist {
    fn observe(&mut self, v: f64, bounds: &[f64]) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len() + 1];
            self.min = v;
            self.max = v;
        }
        // Explicit bounds are upper-inclusive (OTLP's and Prometheus's le).
        let k = bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len());
        self.counts[k] += 1;
        self.sum += v;
        self.count += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }
}

/// One target's state between pushes.
#[derive(Clone, Debug, Default, PartialEq)]
struct TargetAgg {
    url: String,
    method: String,
    phases: BTreeMap<&'static str, Hist>,
    duration_ms: Option<f64>,
    status: Option<u16>,
    success: bool,
    middlebox: Option<bool>,
    bottleneck: Option<&'static str>,
    checks: [u64; 2],
    errors: BTreeMap<String, u64>,
    /// Wall clock of the last check, ns since the epoch.
    at_ns: u64,
}

/// Everything pushed: the resource, and each target's aggregates.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct OtlpAgg {
    start_ns: u64,
    resource: Vec<(String, String)>,
    bounds: Vec<f64>,
    targets: BTreeMap<String, TargetAgg>,
}

fn kv(k: &str, v: impl Into<String>) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn kv_int(k: &str, v: i64) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(v)),
        }),
        ..Default::default()
    }
}

fn point(
    attrs: Vec<KeyValue>,
    start: u64,
    at: u64,
    v: number_data_point::Value,
) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs,
        start_time_unix_nano: start,
        time_unix_nano: at,
        value: Some(v),
        ..Default::default()
    }
}

fn metric(name: &str, description: &str, unit: &str, data: Data) -> Metric {
    Metric {
        name: name.to_string(),
        description: description.to_string(),
        unit: unit.to_string(),
        data: Some(data),
        ..Default::default()
    }
}

fn gauge(points: Vec<NumberDataPoint>) -> Data {
    Data::Gauge(Gauge {
        data_points: points,
    })
}

fn sum(points: Vec<NumberDataPoint>, monotonic: bool) -> Data {
    Data::Sum(Sum {
        data_points: points,
        aggregation_temporality: AggregationTemporality::Cumulative as i32,
        is_monotonic: monotonic,
    })
}

impl OtlpAgg {
    /// `resource`: service.name, host.name and whatever the operator gave
    /// (cloud.platform, cloud.region, ...); `start_ns` the cumulative
    /// series' start.
    pub(crate) fn new(resource: Vec<(String, String)>, start_ns: u64) -> Self {
        OtlpAgg {
            start_ns,
            resource,
            bounds: bounds(),
            targets: BTreeMap::new(),
        }
    }

    /// One finished check of `t` (all its records), at `now_ns`.
    pub(crate) fn observe(&mut self, t: &Target, recs: &[Record], o: &Outcome, now_ns: u64) {
        let a = self.targets.entry(t.name.clone()).or_default();
        a.url = t.url.clone();
        a.method = recs
            .first()
            .map(|r| r.method.clone())
            .unwrap_or_else(|| "GET".into());
        for r in recs {
            for (phase, ms) in phase_values(r) {
                a.phases
                    .entry(phase)
                    .or_default()
                    .observe(ms / 1e3, &self.bounds);
            }
        }
        let last = recs.last();
        a.duration_ms = last.and_then(|r| r.user.total_ms);
        a.status = last.and_then(|r| r.http_status);
        a.success = o.success;
        a.checks[usize::from(!o.success)] += 1;
        if let Some(k) = o.error_kind {
            *a.errors.entry(k.as_str().to_string()).or_default() += 1;
        }
        let v = recs.iter().rev().find_map(|r| r.verdict.as_ref());
        a.middlebox = match v.map(|v| v.path) {
            Some(PathKind::Middlebox | PathKind::Proxy) => Some(true),
            Some(PathKind::Direct) => Some(false),
            _ => None,
        };
        a.bottleneck = v.and_then(|v| v.bottleneck).map(|b| b.name());
        a.at_ns = now_ns;
    }

    /// A target that left the targets file stops being pushed.
    pub(crate) fn remove(&mut self, name: &str) {
        self.targets.remove(name);
    }

    /// The request to push now (None before the first check).
    pub(crate) fn request(&self, now_ns: u64) -> Option<ExportMetricsServiceRequest> {
        if self.targets.is_empty() {
            return None;
        }
        let start = self.start_ns;
        let mut duration = Vec::new();
        let mut status = Vec::new();
        let mut errors = Vec::new();
        let mut phases = Vec::new();
        let mut success = Vec::new();
        let mut middlebox = Vec::new();
        let mut bottleneck = Vec::new();
        let mut checks = Vec::new();
        for (name, a) in &self.targets {
            let at = a.at_ns.max(start);
            let url = || kv("http.url", a.url.clone());
            let target = || kv("synack.target", name.clone());
            if let Some(d) = a.duration_ms {
                duration.push(point(
                    vec![url()],
                    start,
                    at,
                    number_data_point::Value::AsInt(d.round() as i64),
                ));
            }
            // As httpcheck: one point per class, 1 for the last status's.
            if let Some(code) = a.status {
                for class in 1..=5u16 {
                    status.push(point(
                        vec![
                            url(),
                            kv("http.method", a.method.clone()),
                            kv_int("http.status_code", i64::from(code)),
                            kv("http.status_class", format!("{class}xx")),
                        ],
                        start,
                        at,
                        number_data_point::Value::AsInt(i64::from(code / 100 == class)),
                    ));
                }
            }
            for (kind, n) in &a.errors {
                errors.push(point(
                    vec![url(), kv("error.message", kind.clone())],
                    start,
                    at,
                    number_data_point::Value::AsInt(*n as i64),
                ));
            }
            for (phase, h) in &a.phases {
                phases.push(HistogramDataPoint {
                    attributes: vec![target(), kv("synack.phase", *phase)],
                    start_time_unix_nano: start,
                    time_unix_nano: now_ns.max(at),
                    count: h.count,
                    sum: Some(h.sum),
                    bucket_counts: h.counts.clone(),
                    explicit_bounds: self.bounds.clone(),
                    min: Some(h.min),
                    max: Some(h.max),
                    ..Default::default()
                });
            }
            success.push(point(
                vec![target(), url()],
                start,
                at,
                number_data_point::Value::AsInt(i64::from(a.success)),
            ));
            if let Some(m) = a.middlebox {
                middlebox.push(point(
                    vec![target()],
                    start,
                    at,
                    number_data_point::Value::AsInt(i64::from(m)),
                ));
            }
            if let Some(b) = a.bottleneck {
                for p in ["network", "middlebox", "server", "client"] {
                    bottleneck.push(point(
                        vec![target(), kv("synack.phase", p)],
                        start,
                        at,
                        number_data_point::Value::AsInt(i64::from(b == p)),
                    ));
                }
            }
            for (i, result) in ["success", "failure"].iter().enumerate() {
                checks.push(point(
                    vec![target(), kv("synack.result", *result)],
                    start,
                    now_ns.max(at),
                    number_data_point::Value::AsInt(a.checks[i] as i64),
                ));
            }
        }
        let mut metrics = vec![
            metric(
                "httpcheck.duration",
                "Measures the duration of the HTTP check (the last one).",
                "ms",
                gauge(duration),
            ),
            metric(
                "httpcheck.status",
                "1 if the check resulted in a status code of this class, else 0.",
                "1",
                sum(status, false),
            ),
            metric(
                "synack.phase.duration",
                "Each phase of the checks: dns, connect, tls (user space), wire_handshake, wire_ttfb (kernel packet timestamps), server, middlebox, network, client (the verdict's split), total.",
                "s",
                Data::Histogram(Histogram {
                    data_points: phases,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                }),
            ),
            metric(
                "synack.check.success",
                "1 if the last check succeeded (no error, an expected status).",
                "1",
                gauge(success),
            ),
            metric(
                "synack.checks",
                "Checks run, by result.",
                "{check}",
                sum(checks, true),
            ),
        ];
        if !errors.is_empty() {
            metrics.push(metric(
                "httpcheck.error",
                "Checks that failed, by error kind (error.message).",
                "{error}",
                sum(errors, true),
            ));
        }
        if !middlebox.is_empty() {
            metrics.push(metric("synack.path.middlebox", "1 if the last check found a middlebox (or a declared proxy) on the path, 0 if direct.", "1", gauge(middlebox)));
        }
        if !bottleneck.is_empty() {
            metrics.push(metric(
                "synack.bottleneck",
                "1 for the phase that held most of the last check's time, 0 for the others.",
                "1",
                gauge(bottleneck),
            ));
        }
        metrics.retain(|m| match &m.data {
            Some(Data::Gauge(g)) => !g.data_points.is_empty(),
            Some(Data::Sum(s)) => !s.data_points.is_empty(),
            Some(Data::Histogram(h)) => !h.data_points.is_empty(),
            _ => false,
        });
        Some(ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: self
                        .resource
                        .iter()
                        .map(|(k, v)| kv(k, v.clone()))
                        .collect(),
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "synack".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
    }
}

/// The resource's attributes: service.name (OTEL_SERVICE_NAME, else
/// "synack"), service.version, host.name, then OTEL_RESOURCE_ATTRIBUTES
/// (`k=v,k=v`, percent-decoded) and the command line's, later ones winning.
pub(crate) fn resource(
    env_service: Option<&str>,
    env_attrs: Option<&str>,
    host: &str,
    given: &[(String, String)],
) -> Vec<(String, String)> {
    let mut r: Vec<(String, String)> = vec![
        (
            "service.name".into(),
            env_service
                .filter(|s| !s.is_empty())
                .unwrap_or("synack")
                .into(),
        ),
        ("service.version".into(), env!("CARGO_PKG_VERSION").into()),
        ("host.name".into(), host.into()),
    ];
    let mut set = |k: &str, v: &str| {
        if let Some(e) = r.iter_mut().find(|(x, _)| x == k) {
            e.1 = v.to_string();
        } else {
            r.push((k.to_string(), v.to_string()));
        }
    };
    for pair in env_attrs.unwrap_or("").split(',') {
        if let Some((k, v)) = pair.split_once('=') {
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(s.trim())
                    .decode_utf8_lossy()
                    .into_owned()
            };
            set(&dec(k), &dec(v));
        }
    }
    for (k, v) in given {
        set(k, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::verdict::{Bottleneck, Verdict};
    use prost::Message;

    fn rec(status: u16, total: f64) -> Record {
        let mut r = Record::new("http://h/", "GET", "ebpf");
        r.http_status = Some(status);
        r.user.total_ms = Some(total);
        r.user.dns_ms = Some(0.5);
        r.phases.server_ms = Some(20.0);
        r.verdict = Some(Verdict {
            path: PathKind::Middlebox,
            bottleneck: Some(Bottleneck::Server),
            ..Default::default()
        });
        r
    }

    fn target() -> Target {
        crate::model::targets::parse("http://h/ name=api\n")
            .0
            .remove(0)
    }

    #[test]
    fn checks_become_the_official_messages() {
        let mut a = OtlpAgg::new(
            resource(
                None,
                Some("cloud.platform=lab,cloud.region=eu%2Dwest"),
                "node1",
                &[],
            ),
            1_000,
        );
        assert!(a.request(2_000).is_none());
        let t = target();
        let ok = Outcome {
            success: true,
            error_kind: None,
        };
        a.observe(&t, &[rec(200, 30.0)], &ok, 5_000);
        a.observe(&t, &[rec(200, 40.0)], &ok, 6_000);
        let req = a.request(7_000).unwrap();
        // It encodes and decodes with the schema's own types.
        let back = ExportMetricsServiceRequest::decode(req.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, req);
        let rm = &req.resource_metrics[0];
        let attrs: Vec<(String, String)> = rm
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .map(|kv| {
                let v = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                    Some(any_value::Value::StringValue(s)) => s,
                    _ => String::new(),
                };
                (kv.key.clone(), v)
            })
            .collect();
        for want in [
            ("service.name", "synack"),
            ("host.name", "node1"),
            ("cloud.platform", "lab"),
            ("cloud.region", "eu-west"),
        ] {
            assert!(
                attrs.iter().any(|(k, v)| k == want.0 && v == want.1),
                "{want:?} in {attrs:?}"
            );
        }
        let m = &rm.scope_metrics[0].metrics;
        let by = |n: &str| {
            m.iter()
                .find(|x| x.name == n)
                .unwrap_or_else(|| panic!("no {n}"))
        };
        let Some(Data::Histogram(h)) = &by("synack.phase.duration").data else {
            panic!()
        };
        assert_eq!(
            h.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let total = h
            .data_points
            .iter()
            .find(|p| {
                p.attributes.iter().any(|kv| {
                    kv.key == "synack.phase"
                        && kv.value.as_ref().and_then(|v| v.value.clone())
                            == Some(any_value::Value::StringValue("total".into()))
                })
            })
            .unwrap();
        assert_eq!(total.count, 2);
        assert_eq!(total.bucket_counts.len(), total.explicit_bounds.len() + 1);
        assert_eq!(total.bucket_counts.iter().sum::<u64>(), 2);
        assert!((total.sum.unwrap() - 0.07).abs() < 1e-9);
        assert_eq!((total.min, total.max), (Some(0.03), Some(0.04)));
        assert_eq!(
            (total.start_time_unix_nano, total.time_unix_nano),
            (1_000, 7_000)
        );
        // 30 ms and 40 ms are both in (32 ms, 64 ms]? No: 30 ms is in (16, 32].
        let k = |v: f64| total.explicit_bounds.iter().position(|b| v <= *b).unwrap();
        assert_eq!(total.bucket_counts[k(0.03)], 1);
        assert_eq!(total.bucket_counts[k(0.04)], 1);
        let Some(Data::Sum(st)) = &by("httpcheck.status").data else {
            panic!()
        };
        assert_eq!(st.data_points.len(), 5);
        let ones: Vec<_> = st
            .data_points
            .iter()
            .filter(|p| p.value == Some(number_data_point::Value::AsInt(1)))
            .collect();
        assert_eq!(ones.len(), 1);
        assert!(
            ones[0]
                .attributes
                .iter()
                .any(|kv| kv.key == "http.status_class"
                    && kv.value.as_ref().and_then(|v| v.value.clone())
                        == Some(any_value::Value::StringValue("2xx".into())))
        );
        let Some(Data::Gauge(d)) = &by("httpcheck.duration").data else {
            panic!()
        };
        assert_eq!(
            d.data_points[0].value,
            Some(number_data_point::Value::AsInt(40))
        );
        let Some(Data::Gauge(mb)) = &by("synack.path.middlebox").data else {
            panic!()
        };
        assert_eq!(
            mb.data_points[0].value,
            Some(number_data_point::Value::AsInt(1))
        );
        let Some(Data::Sum(c)) = &by("synack.checks").data else {
            panic!()
        };
        assert!(c.is_monotonic);
        assert!(
            m.iter().all(|x| x.name != "httpcheck.error"),
            "no error yet"
        );

        // A failure: counted by kind; a target that leaves is gone.
        let bad = Outcome {
            success: false,
            error_kind: Some(crate::output::metrics::Failure::Status),
        };
        a.observe(&t, &[rec(503, 10.0)], &bad, 8_000);
        let req = a.request(9_000).unwrap();
        assert!(
            req.resource_metrics[0].scope_metrics[0]
                .metrics
                .iter()
                .any(|x| x.name == "httpcheck.error")
        );
        a.remove("api");
        assert!(a.request(10_000).is_none());
    }

    #[test]
    fn resource_attributes_from_the_environment_and_the_flags() {
        let r = resource(
            Some("edge-probe"),
            Some("cloud.region=a, bad, host.name=x"),
            "node1",
            &[("cloud.region".into(), "b".into())],
        );
        let get = |k: &str| r.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
        assert_eq!(get("service.name"), Some("edge-probe"));
        assert_eq!(get("cloud.region"), Some("b"));
        assert_eq!(get("host.name"), Some("x"));
        assert_eq!(resource(Some(""), None, "h", &[])[0].1, "synack");
    }
}
