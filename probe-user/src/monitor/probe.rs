//! `GET /probe?target=URL&module=NAME`: blackbox_exporter's multi-target
//! pattern on the monitor's listener. Prometheus keeps the target list (its
//! relabelling puts each target in the `target` parameter) and scrapes
//! synack once per target; each scrape runs one check with the module's
//! options and answers with that check's metrics only. The scrape's own
//! timeout (`X-Prometheus-Scrape-Timeout-Seconds`, less half a second, as
//! blackbox's `--timeout-offset`) bounds the check, and the module's
//! `timeout` when it is shorter.

use super::Job;
use crate::{
    active::prober::{self, Family, HttpVersion},
    kernel::bpf::SharedKernel,
    model::{
        modules::{DEFAULT_MODULE, Entry, IpProtocol, Module, Modules},
        record::Record,
        targets::Target,
    },
    output::{self, metrics, probe_metrics},
};
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

/// Without a scrape timeout header (a person with curl), a check gets this.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// blackbox_exporter's `--timeout-offset` default: the answer must be
/// back before Prometheus gives up on the scrape.
const TIMEOUT_OFFSET: Duration = Duration::from_millis(500);

/// The modules as loaded: each usable one with its TLS set-up.
pub(crate) struct Loaded {
    pub modules: Modules,
    tls: HashMap<String, Arc<rustls::ClientConfig>>,
    /// Why a usable module's TLS could not be set up (its ca_file, say).
    tls_errors: HashMap<String, String>,
}

impl Loaded {
    /// Sets up TLS for each usable module: its own ca_file and
    /// insecure_skip_verify, else the command line's --cacert/--insecure.
    pub(crate) fn new(modules: Modules, cacert: Option<&PathBuf>, insecure: bool) -> Loaded {
        let mut tls = HashMap::new();
        let mut tls_errors = HashMap::new();
        for e in &modules.entries {
            if let Entry::Usable(m) = e {
                let ca = m.ca_file.as_ref().or(cacert);
                match prober::tls_config(ca, m.insecure || insecure, http_of(m)) {
                    Ok(c) => {
                        tls.insert(m.name.clone(), Arc::new(c));
                    }
                    Err(e) => {
                        tls_errors.insert(m.name.clone(), format!("{e:#}"));
                    }
                }
            }
        }
        Loaded {
            modules,
            tls,
            tls_errors,
        }
    }
}

fn http_of(m: &Module) -> HttpVersion {
    if m.http2 {
        HttpVersion::Auto
    } else {
        HttpVersion::Http11
    }
}

/// What /probe needs of the monitor.
pub(crate) struct ProbeCtx {
    pub kernel: Option<SharedKernel>,
    /// This process's CPU counters (found once).
    pub cpu: crate::host::cpustat::CpuSources,
    pub modules: RwLock<Arc<Loaded>>,
    pub cacert: Option<PathBuf>,
    pub insecure: bool,
    /// At most --concurrency probes at once; the others wait their turn
    /// inside their own timeout.
    pub permits: tokio::sync::Semaphore,
}

/// An answer: status, content type, body.
pub(crate) type Answer = (u16, &'static str, String);

fn bad(msg: String) -> Answer {
    (400, "text/plain; charset=utf-8", msg + "\n")
}

/// The check's bound: the scrape's timeout less the offset (the whole
/// timeout when it is shorter than the offset), the module's when shorter.
pub(crate) fn timeout_for(
    header: Option<&str>,
    module: Option<Duration>,
) -> Result<Duration, String> {
    let scrape = match header {
        Some(h) => {
            let s: f64 = h.trim().parse().map_err(|_| {
                format!("X-Prometheus-Scrape-Timeout-Seconds {h:?} is not a number of seconds")
            })?;
            let d = Duration::try_from_secs_f64(s)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    format!("X-Prometheus-Scrape-Timeout-Seconds {h:?} is not a positive time")
                })?;
            if d > TIMEOUT_OFFSET {
                d - TIMEOUT_OFFSET
            } else {
                d
            }
        }
        None => DEFAULT_TIMEOUT,
    };
    Ok(module.map_or(scrape, |m| m.min(scrape)))
}

/// A target as blackbox takes it: a URL, or HOST[:PORT][/PATH] for http://.
fn target_url(t: &str) -> Result<String, String> {
    let u = if t.contains("://") {
        t.to_string()
    } else {
        format!("http://{t}")
    };
    match url::Url::parse(&u) {
        Ok(p) if matches!(p.scheme(), "http" | "https") && p.host().is_some() => Ok(u),
        Ok(p) => Err(format!(
            "target {t:?}: synack probes http:// and https:// URLs, not {}:",
            p.scheme()
        )),
        Err(e) => Err(format!("target {t:?} is not a URL: {e}")),
    }
}

/// Why the module's own checks fail a probe whose requests succeeded.
pub(crate) fn module_failure(m: &Module, finals: &[&Record]) -> Option<String> {
    let last = finals.last()?;
    if m.fail_if_ssl && last.tls {
        return Some("the final request used TLS (fail_if_ssl)".into());
    }
    if m.fail_if_not_ssl && !last.tls {
        return Some("the final request did not use TLS (fail_if_not_ssl)".into());
    }
    if !m.http_versions.is_empty()
        && let Some(v) = last.http_version
        && !m.http_versions.contains(&v)
    {
        return Some(format!("HTTP/{v} is not in valid_http_versions"));
    }
    None
}

/// Answers one GET /probe?QUERY.
pub(crate) async fn answer(
    ctx: &ProbeCtx,
    query: Option<&str>,
    scrape_timeout: Option<&str>,
    accept: Option<&str>,
) -> Answer {
    let params: HashMap<String, String> =
        url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let Some(target) = params.get("target").filter(|t| !t.is_empty()) else {
        return bad("Target parameter is missing (GET /probe?target=URL&module=NAME)".into());
    };
    let url = match target_url(target) {
        Ok(u) => u,
        Err(e) => return bad(e),
    };
    let name = params.get("module").map_or(DEFAULT_MODULE, String::as_str);
    let loaded = ctx
        .modules
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let m = match loaded.modules.get(name) {
        Some(Entry::Usable(m)) => m.clone(),
        Some(Entry::Unusable { why, .. }) => {
            return bad(format!("Module {name:?} cannot be used by synack: {why}"));
        }
        None => return bad(format!("Unknown module {name:?}")),
    };
    let Some(tls) = loaded.tls.get(name).cloned() else {
        let why = loaded.tls_errors.get(name).cloned().unwrap_or_default();
        return bad(format!("Module {name:?}: its TLS cannot be set up: {why}"));
    };
    let timeout = match timeout_for(scrape_timeout, m.timeout) {
        Ok(t) => t,
        Err(e) => return bad(e),
    };
    let started = Instant::now();
    let debug = params.get("debug").is_some_and(|d| d == "true");
    let (ctype, om) = metrics::negotiate(accept);
    // A free slot, within the probe's own time.
    let Ok(Ok(_permit)) = tokio::time::timeout(timeout, ctx.permits.acquire()).await else {
        let body = probe_metrics::probe_text(&[], false, started.elapsed().as_secs_f64(), om);
        return (200, ctype, body);
    };
    let left = timeout.saturating_sub(started.elapsed());
    let t = Target {
        name: url.clone(),
        url: url.clone(),
        tags: Vec::new(),
        method: m.method.clone(),
        headers: m.headers.clone(),
        body: m.body.clone(),
        expect: m.expect.clone(),
        reuse: m.reuse,
        timeout: Some(left),
        interval: None,
        line: 0,
    };
    let job = Job {
        kernel: ctx.kernel.clone(),
        tls,
        target: t.clone(),
        default_timeout: left,
        cacert: m.ca_file.clone().or_else(|| ctx.cacert.clone()),
        insecure: m.insecure || ctx.insecure,
        attempt: 0,
        follow: m.follow_redirects,
        family: match m.ip {
            IpProtocol::Any => Family::Any,
            IpProtocol::V4Only => Family::V4,
            IpProtocol::V6Only => Family::V6,
        },
        http: http_of(&m),
        whole: Some(left),
        cpu: ctx.cpu.clone(),
    };
    let recs = job.check().await;
    let fin = probe_metrics::finals(&recs);
    let finals_only: Vec<Record> = fin.iter().map(|r| (*r).clone()).collect();
    let oc = metrics::outcome(&t, &finals_only);
    let extra = if oc.success {
        module_failure(&m, &fin)
    } else {
        None
    };
    let success = oc.success && extra.is_none();
    let body = probe_metrics::probe_text(&recs, success, started.elapsed().as_secs_f64(), om);
    if !debug {
        return (200, ctype, body);
    }
    // blackbox's ?debug=true: what happened, then the metrics.
    let mut log =
        format!("Logs for the probe:\nmodule {name}, target {url}, timeout {timeout:?}\n");
    for r in &recs {
        log.push_str(&output::check_line(r));
        log.push('\n');
        if let Some(v) = &r.verdict {
            for why in &v.reasons {
                log.push_str(&format!("  {why}\n"));
            }
        }
    }
    match (&oc.error_kind, &extra) {
        (_, Some(why)) => log.push_str(&format!("probe failed: {why}\n")),
        (Some(k), None) => log.push_str(&format!("probe failed: {}\n", k.as_str())),
        (None, None) => log.push_str("probe succeeded\n"),
    }
    (
        200,
        "text/plain; charset=utf-8",
        format!("{log}\n\nMetrics that would have been returned:\n{body}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scrape_timeout_bounds_the_check() {
        assert_eq!(
            timeout_for(Some("10"), None),
            Ok(Duration::from_millis(9500))
        );
        assert_eq!(
            timeout_for(Some("2.5"), Some(Duration::from_secs(1))),
            Ok(Duration::from_secs(1))
        );
        assert_eq!(
            timeout_for(Some("0.3"), None),
            Ok(Duration::from_millis(300))
        );
        assert_eq!(timeout_for(None, None), Ok(DEFAULT_TIMEOUT));
        assert_eq!(
            timeout_for(None, Some(Duration::from_secs(3))),
            Ok(Duration::from_secs(3))
        );
        assert!(
            timeout_for(Some("soon"), None)
                .unwrap_err()
                .contains("not a number")
        );
        assert!(
            timeout_for(Some("0"), None)
                .unwrap_err()
                .contains("positive")
        );
        assert!(timeout_for(Some("-1"), None).is_err());
    }

    #[test]
    fn targets_as_blackbox_takes_them() {
        assert_eq!(
            target_url("example.com:8080/x").unwrap(),
            "http://example.com:8080/x"
        );
        assert_eq!(target_url("https://h/").unwrap(), "https://h/");
        assert!(
            target_url("ftp://h/")
                .unwrap_err()
                .contains("http:// and https://")
        );
        assert!(target_url("http://").is_err());
    }

    #[test]
    fn module_checks_fail_a_probe_whose_requests_succeeded() {
        let mut m = Module::http_2xx("m");
        let mut r = Record::new("https://h/", "GET", "ebpf");
        r.http_version = Some("1.1");
        assert_eq!(module_failure(&m, &[&r]), None);
        m.fail_if_ssl = true;
        assert!(module_failure(&m, &[&r]).unwrap().contains("fail_if_ssl"));
        m.fail_if_ssl = false;
        m.http_versions = vec!["2"];
        assert!(
            module_failure(&m, &[&r])
                .unwrap()
                .contains("valid_http_versions")
        );
        r.tls = false;
        m.http_versions.clear();
        m.fail_if_not_ssl = true;
        assert!(
            module_failure(&m, &[&r])
                .unwrap()
                .contains("fail_if_not_ssl")
        );
    }
}
