//! The probe modules of `synack monitor --modules FILE`: blackbox_exporter's
//! YAML (`modules: NAME: {prober: http, timeout: 5s, http: {...}}`), read
//! for the options synack's HTTP checks have. A module that asks for what
//! synack cannot do (another prober, a body regexp, OAuth) is kept as
//! unusable with the reason, so that `/probe?module=NAME` says why instead
//! of probing something else than was asked; the file's other modules work.
//! Pure: text in, modules out.

use crate::model::targets::{Expect, StatusMatch};
use http::{HeaderName, HeaderValue, Method};
use std::time::Duration;
use yaml_rust2::{Yaml, YamlLoader};

/// blackbox_exporter's default module, used when `module` is left out.
pub(crate) const DEFAULT_MODULE: &str = "http_2xx";

/// Which address family a module prefers (blackbox's
/// `preferred_ip_protocol` and `ip_protocol_fallback`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum IpProtocol {
    /// Either (the resolver's order), as with a fallback allowed.
    #[default]
    Any,
    V4Only,
    V6Only,
}

/// What one HTTP module asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Module {
    pub name: String,
    /// The module's own bound; the scrape's timeout bounds it as well.
    pub timeout: Option<Duration>,
    pub method: Option<Method>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<String>,
    /// blackbox's default is any 2xx.
    pub expect: Expect,
    /// "1.0", "1.1", "2" (as records name them); empty: any.
    pub http_versions: Vec<&'static str>,
    pub follow_redirects: bool,
    pub fail_if_ssl: bool,
    pub fail_if_not_ssl: bool,
    pub insecure: bool,
    pub ca_file: Option<std::path::PathBuf>,
    pub ip: IpProtocol,
    /// Offer h2 in TLS's ALPN (blackbox's `enable_http2`); HTTP/1.1 only
    /// otherwise.
    pub http2: bool,
    /// synack's own (`synack: {reuse: N}`): N more requests on the
    /// connection, for the reuse rule's evidence.
    pub reuse: u32,
}

impl Module {
    /// The module blackbox_exporter has when none is configured: GET,
    /// any 2xx, redirects followed.
    pub(crate) fn http_2xx(name: &str) -> Module {
        Module {
            name: name.to_string(),
            timeout: None,
            method: None,
            headers: Vec::new(),
            body: None,
            expect: Expect::Any(vec![StatusMatch::Class(2)]),
            http_versions: Vec::new(),
            follow_redirects: true,
            fail_if_ssl: false,
            fail_if_not_ssl: false,
            insecure: false,
            ca_file: None,
            ip: IpProtocol::Any,
            http2: false,
            reuse: 0,
        }
    }
}

/// A module as the file gives it: usable, or why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    Usable(Box<Module>),
    Unusable { name: String, why: String },
}

impl Entry {
    pub(crate) fn name(&self) -> &str {
        match self {
            Entry::Usable(m) => &m.name,
            Entry::Unusable { name, .. } => name,
        }
    }
}

/// The modules of a file, with the built-in `http_2xx` when the file does
/// not define it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Modules {
    pub entries: Vec<Entry>,
}

impl Modules {
    /// Only the built-in `http_2xx` (no --modules file).
    pub(crate) fn builtin() -> Modules {
        Modules {
            entries: vec![Entry::Usable(Box::new(Module::http_2xx(DEFAULT_MODULE)))],
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name() == name)
    }

    pub(crate) fn usable(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e, Entry::Usable(_)))
            .count()
    }
}

/// A Go duration as blackbox writes them: `5s`, `1m30s`, `500ms`, `1.5s`.
pub(crate) fn go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (examples: 5s, 1m30s, 500ms)");
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(num_len);
        let n: f64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let mul = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += n * mul;
        rest = next;
    }
    Duration::try_from_secs_f64(total)
        .ok()
        .filter(|d| *d <= crate::model::targets::MAX_DURATION)
        .ok_or_else(|| format!("{s:?} is longer than a day"))
}

/// A scalar as text (YAML gives `200` as an integer, `on` as a string).
fn scalar(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn boolean(v: &Yaml, key: &str) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("{key} must be true or false"))
}

/// The keys of the `http:` section synack reads; any other is refused.
const HTTP_KEYS: &[&str] = &[
    "valid_status_codes",
    "valid_http_versions",
    "method",
    "headers",
    "body",
    "follow_redirects",
    "no_follow_redirects",
    "fail_if_ssl",
    "fail_if_not_ssl",
    "tls_config",
    "preferred_ip_protocol",
    "ip_protocol_fallback",
    "enable_http2",
];

fn http_section(m: &mut Module, h: &Yaml) -> Result<(), String> {
    let Some(map) = h.as_hash() else {
        return if h.is_null() {
            Ok(())
        } else {
            Err("http must be a mapping".into())
        };
    };
    let mut fallback = true;
    let mut preferred = None;
    for (k, v) in map {
        let key = k.as_str().unwrap_or_default();
        if !HTTP_KEYS.contains(&key) {
            return Err(format!(
                "http.{key} is not something synack can do (it reads {})",
                HTTP_KEYS.join(", ")
            ));
        }
        match key {
            "valid_status_codes" => {
                let codes = v.as_vec().ok_or("valid_status_codes must be a list")?;
                let mut out = Vec::new();
                for c in codes {
                    match c.as_i64() {
                        Some(c @ 100..=599) => out.push(StatusMatch::Code(c as u16)),
                        _ => {
                            return Err(format!("valid_status_codes: {c:?} is not an HTTP status"));
                        }
                    }
                }
                if !out.is_empty() {
                    m.expect = Expect::Any(out);
                }
            }
            "valid_http_versions" => {
                for x in v.as_vec().ok_or("valid_http_versions must be a list")? {
                    let s = x.as_str().unwrap_or_default();
                    m.http_versions.push(match s {
                        "HTTP/1.0" => "1.0",
                        "HTTP/1.1" => "1.1",
                        "HTTP/2" | "HTTP/2.0" => "2",
                        _ => {
                            return Err(format!(
                                "valid_http_versions: {s:?} (HTTP/1.0, HTTP/1.1, HTTP/2.0)"
                            ));
                        }
                    });
                }
            }
            "method" => {
                let s = scalar(v).unwrap_or_default();
                m.method = Some(
                    Method::from_bytes(s.to_ascii_uppercase().as_bytes())
                        .map_err(|_| format!("method {s:?} is not an HTTP method"))?,
                );
            }
            "headers" => {
                for (hk, hv) in v.as_hash().ok_or("headers must be a mapping")? {
                    let (name, value) = (
                        scalar(hk).unwrap_or_default(),
                        scalar(hv).unwrap_or_default(),
                    );
                    let n = HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("headers: {name:?} is not a header name"))?;
                    let val = HeaderValue::from_str(&value).map_err(|_| {
                        format!("headers: the value of {name} is not a header value")
                    })?;
                    m.headers.push((n, val));
                }
            }
            "body" => m.body = Some(scalar(v).ok_or("body must be a string")?),
            "follow_redirects" => m.follow_redirects = boolean(v, key)?,
            "no_follow_redirects" => m.follow_redirects = !boolean(v, key)?,
            "fail_if_ssl" => m.fail_if_ssl = boolean(v, key)?,
            "fail_if_not_ssl" => m.fail_if_not_ssl = boolean(v, key)?,
            "enable_http2" => m.http2 = boolean(v, key)?,
            "ip_protocol_fallback" => fallback = boolean(v, key)?,
            "preferred_ip_protocol" => preferred = Some(v.as_str().unwrap_or_default().to_string()),
            "tls_config" => {
                for (tk, tv) in v.as_hash().ok_or("tls_config must be a mapping")? {
                    match tk.as_str().unwrap_or_default() {
                        "insecure_skip_verify" => m.insecure = boolean(tv, "insecure_skip_verify")?,
                        "ca_file" => m.ca_file = Some(tv.as_str().unwrap_or_default().into()),
                        other => {
                            return Err(format!(
                                "tls_config.{other} is not something synack can do (it reads insecure_skip_verify, ca_file)"
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    m.ip = match (preferred.as_deref(), fallback) {
        (_, true) | (None, _) => IpProtocol::Any,
        (Some("ip4"), false) => IpProtocol::V4Only,
        (Some("ip6"), false) => IpProtocol::V6Only,
        (Some(p), false) => return Err(format!("preferred_ip_protocol {p:?} (ip4 or ip6)")),
    };
    Ok(())
}

fn module(name: &str, y: &Yaml) -> Result<Module, String> {
    let map = y.as_hash().ok_or("a module must be a mapping")?;
    let prober = y["prober"].as_str().unwrap_or("");
    if prober != "http" {
        return Err(format!(
            "prober {prober:?}: synack probes HTTP only (prober: http)"
        ));
    }
    let mut m = Module::http_2xx(name);
    for (k, v) in map {
        match k.as_str().unwrap_or_default() {
            "prober" => {}
            "timeout" => m.timeout = Some(go_duration(&scalar(v).unwrap_or_default())?),
            "http" => http_section(&mut m, v)?,
            "synack" => {
                if let Some(r) = v["reuse"].as_i64() {
                    m.reuse = u32::try_from(r)
                        .ok()
                        .filter(|r| *r <= 100)
                        .ok_or("synack.reuse must be 0..100")?;
                }
            }
            other => {
                return Err(format!(
                    "{other} is not something synack's HTTP probe reads"
                ));
            }
        }
    }
    Ok(m)
}

/// Reads a modules file. Errors only for a file that is not YAML or has no
/// `modules:` mapping; a module that cannot be used is an `Unusable` entry.
pub(crate) fn parse(text: &str) -> Result<Modules, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    let doc = docs.first().ok_or("empty: it needs a modules: mapping")?;
    let mods = doc["modules"].as_hash().ok_or(
        "no modules: mapping (blackbox_exporter's format: modules: NAME: {prober: http, ...})",
    )?;
    let mut out = Modules::default();
    for (k, v) in mods {
        let name = scalar(k).unwrap_or_default();
        out.entries.push(match module(&name, v) {
            Ok(m) => Entry::Usable(Box::new(m)),
            Err(why) => Entry::Unusable { name, why },
        });
    }
    if out.get(DEFAULT_MODULE).is_none() {
        out.entries
            .push(Entry::Usable(Box::new(Module::http_2xx(DEFAULT_MODULE))));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLACKBOX: &str = r#"
modules:
  http_2xx:
    prober: http
  http_post_2xx:
    prober: http
    timeout: 1m30s
    http:
      method: post
      headers:
        Content-Type: application/json
      body: '{}'
      valid_status_codes: [200, 201]
      valid_http_versions: ["HTTP/1.1", "HTTP/2.0"]
      follow_redirects: false
      fail_if_not_ssl: true
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
      tls_config:
        insecure_skip_verify: true
    synack:
      reuse: 2
  icmp:
    prober: icmp
  http_regex:
    prober: http
    http:
      fail_if_body_not_matches_regexp: ["ok"]
"#;

    #[test]
    fn blackbox_modules_are_read_and_the_rest_say_why_not() {
        let m = parse(BLACKBOX).unwrap();
        assert_eq!(m.entries.len(), 4);
        assert_eq!(m.usable(), 2);
        let Some(Entry::Usable(d)) = m.get("http_2xx") else {
            panic!("{m:?}")
        };
        assert_eq!(**d, Module::http_2xx("http_2xx"));
        let Some(Entry::Usable(p)) = m.get("http_post_2xx") else {
            panic!("{m:?}")
        };
        assert_eq!(p.timeout, Some(Duration::from_secs(90)));
        assert_eq!(p.method, Some(Method::POST));
        assert_eq!(p.headers[0].0.as_str(), "content-type");
        assert_eq!(p.body.as_deref(), Some("{}"));
        assert!(p.expect.accepts(201) && !p.expect.accepts(204));
        assert_eq!(p.http_versions, vec!["1.1", "2"]);
        assert!(!p.follow_redirects && p.fail_if_not_ssl && p.insecure);
        assert_eq!((p.ip, p.reuse), (IpProtocol::V4Only, 2));
        let Some(Entry::Unusable { why, .. }) = m.get("icmp") else {
            panic!()
        };
        assert!(why.contains("HTTP only"), "{why}");
        let Some(Entry::Unusable { why, .. }) = m.get("http_regex") else {
            panic!()
        };
        assert!(
            why.contains("http.fail_if_body_not_matches_regexp"),
            "{why}"
        );
        // The built-in default accepts 2xx only, as blackbox's.
        assert!(!d.expect.accepts(301) && d.expect.accepts(204));
    }

    #[test]
    fn the_default_module_is_there_and_bad_files_say_what_they_lack() {
        let m = parse("modules:\n  other:\n    prober: http\n").unwrap();
        assert!(matches!(m.get(DEFAULT_MODULE), Some(Entry::Usable(_))));
        assert!(parse("").unwrap_err().contains("empty"));
        assert!(parse("a: [").unwrap_err().contains("not YAML"));
        assert!(parse("other: 1").unwrap_err().contains("no modules:"));
        let m = parse("modules:\n  x:\n    prober: http\n    timeout: soon\n").unwrap();
        assert!(
            matches!(m.get("x"), Some(Entry::Unusable { why, .. }) if why.contains("not a duration"))
        );
        assert_eq!(Modules::builtin().usable(), 1);
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(go_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(
            go_duration("").is_err() && go_duration("5").is_err() && go_duration("5x").is_err()
        );
        assert!(
            go_duration("48h")
                .unwrap_err()
                .contains("longer than a day")
        );
    }
}
