//! The `synack monitor` targets file: one URL a line, with options.
//!
//! ```text
//! # name and tags label the metrics; everything after the URL is optional
//! https://api.example.com/health  name=api  tag=env:prod tag=team:core
//! http://10.0.0.7:8080/ready      expect=2xx reuse=2 timeout=3s
//! https://api.example.com/orders  method=POST header="Content-Type: application/json" data='{"probe":1}' expect=201
//! ```
//!
//! Options: `name=` (default: the URL), `tag=key:value` (repeatable),
//! `method=`, `header="Name: value"` (repeatable), `data=` (request body),
//! `expect=` (a status such as 200, a class such as 2xx, or a list: 200,204;
//! default 200-399), `reuse=N`, `timeout=` (default: the interval, at most
//! 10 s), `interval=` (this target's own; both at most a day). Values may be quoted with '' or "".
//! `#` starts a comment. A broken line is reported with its number; the
//! others still run.

use http::{HeaderName, HeaderValue, Method};
use std::time::Duration;
use thiserror::Error;

/// One check to run on schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// The label value in metrics (unique in the file).
    pub name: String,
    pub url: String,
    pub tags: Vec<(String, String)>,
    pub method: Option<Method>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<String>,
    pub expect: Expect,
    pub reuse: u32,
    pub timeout: Option<Duration>,
    pub interval: Option<Duration>,
    /// Line in the file, for messages.
    pub line: usize,
}

/// Which HTTP statuses count as success.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// 200-399 (redirects are not followed, so they are answers too).
    Default,
    /// Any of these: exact codes, or classes (2 for 2xx).
    Any(Vec<StatusMatch>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusMatch {
    Code(u16),
    Class(u16),
}

impl Expect {
    pub(crate) fn accepts(&self, status: u16) -> bool {
        match self {
            Expect::Default => (200..400).contains(&status),
            Expect::Any(v) => v.iter().any(|m| match *m {
                StatusMatch::Code(c) => c == status,
                StatusMatch::Class(k) => status / 100 == k,
            }),
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("line {line}: {message}")]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

/// Splits a line into words: whitespace separates, '' and "" quote, `#`
/// outside quotes starts a comment.
fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                in_word = true;
            }
            None if c == '#' && !in_word => break,
            None if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            None => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if let Some(q) = quote {
        return Err(format!("unclosed {q} quote"));
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// Longest `timeout=` or `interval=`: the monitor computes with them
/// (timeout x (reuse + 1), now + interval), which must not overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

fn duration(v: &str) -> Result<Duration, String> {
    parse_duration(v, false)
}

/// A duration as `5`, `2.5s`, `300ms` or `1m`, at most a day; zero only when
/// `zero_ok`. Shared by the targets file and the command line.
pub(crate) fn parse_duration(v: &str, zero_ok: bool) -> Result<Duration, String> {
    let v = v.trim();
    let (num, mul) = if let Some(x) = v.strip_suffix("ms") {
        (x, 1e-3)
    } else if let Some(x) = v.strip_suffix('s') {
        (x, 1.0)
    } else if let Some(x) = v.strip_suffix('m') {
        (x, 60.0)
    } else {
        (v, 1.0)
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{v:?} is not a duration (examples: 5, 2.5s, 300ms, 1m)"))?;
    if !n.is_finite() || n < 0.0 || (n == 0.0 && !zero_ok) {
        return Err(format!("{v:?} must be a positive duration"));
    }
    // Found by fuzzing: from_secs_f64 panics on "1e300s", and "1e-300s"
    // rounds to zero, which is not positive either.
    match Duration::try_from_secs_f64(n * mul) {
        Ok(d) if d.is_zero() && !zero_ok => Err(format!("{v:?} must be a positive duration")),
        Ok(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!("{v:?} is longer than a day")),
    }
}

fn expect(v: &str) -> Result<Expect, String> {
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let lower = part.to_ascii_lowercase();
        if let Some(k) = lower.strip_suffix("xx") {
            match k.parse::<u16>() {
                Ok(k @ 1..=5) => out.push(StatusMatch::Class(k)),
                _ => return Err(format!("{part:?} is not a status class (1xx..5xx)")),
            }
        } else {
            match part.parse::<u16>() {
                Ok(c @ 100..=599) => out.push(StatusMatch::Code(c)),
                _ => return Err(format!("{part:?} is not an HTTP status")),
            }
        }
    }
    if out.is_empty() {
        return Err("expect= needs a status (200), a class (2xx) or a list (200,204)".into());
    }
    Ok(Expect::Any(out))
}

fn parse_line(line: &str, no: usize) -> Result<Option<Target>, String> {
    let w = words(line)?;
    let Some((url, opts)) = w.split_first() else {
        return Ok(None);
    };
    let parsed = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{url:?}: only http:// and https:// are checked"));
    }
    let mut t = Target {
        name: url.clone(),
        url: url.clone(),
        tags: Vec::new(),
        method: None,
        headers: Vec::new(),
        body: None,
        expect: Expect::Default,
        reuse: 1,
        timeout: None,
        interval: None,
        line: no,
    };
    for o in opts {
        let (k, v) = o
            .split_once('=')
            .ok_or_else(|| format!("{o:?} is not key=value"))?;
        match k {
            "name" if !v.is_empty() => t.name = v.to_string(),
            "tag" => {
                let (a, b) = v
                    .split_once(':')
                    .ok_or_else(|| format!("tag {v:?} must look like key:value"))?;
                let ok = |s: &str| {
                    !s.is_empty()
                        && s.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
                };
                if !ok(a) || b.contains([',', '|', '#', '\n']) {
                    return Err(format!(
                        "tag {v:?}: keys are letters, digits, _-./; values have no , | #"
                    ));
                }
                let norm = |k: &str| -> String {
                    k.chars()
                        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                        .collect()
                };
                if t.tags.iter().any(|(k, _)| norm(k) == norm(a)) {
                    return Err(format!(
                        "tag key {a:?} given twice (or twice once -./ are read as _)"
                    ));
                }
                t.tags.push((a.to_string(), b.to_string()));
            }
            "method" => {
                t.method = Some(
                    Method::from_bytes(v.as_bytes())
                        .map_err(|_| format!("{v:?} is not an HTTP method"))?,
                )
            }
            "header" => {
                let (n, val) = v
                    .split_once(':')
                    .ok_or_else(|| format!("header {v:?} must look like \"Name: value\""))?;
                let n = HeaderName::from_bytes(n.trim().as_bytes())
                    .map_err(|_| format!("{:?} is not a header name", n.trim()))?;
                let val = HeaderValue::from_str(val.trim())
                    .map_err(|_| format!("the value of header {n} is not valid"))?;
                t.headers.push((n, val));
            }
            "data" => t.body = Some(v.to_string()),
            "expect" => t.expect = expect(v)?,
            "reuse" => {
                t.reuse = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| format!("reuse={v}: a number from 1 to 100"))?
            }
            "timeout" => t.timeout = Some(duration(v)?),
            "interval" => t.interval = Some(duration(v)?),
            _ => {
                return Err(format!(
                    "unknown option {k:?} (name, tag, method, header, data, expect, reuse, timeout, interval)"
                ));
            }
        }
    }
    Ok(Some(t))
}

/// Parses a whole file: the targets of the good lines, and an error for
/// each broken one (a duplicate name is broken too).
pub fn parse(text: &str) -> (Vec<Target>, Vec<LineError>) {
    let mut targets: Vec<Target> = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let no = i + 1;
        match parse_line(line, no) {
            Ok(Some(t)) => {
                if let Some(prev) = targets.iter().find(|p| p.name == t.name) {
                    errors.push(LineError {
                        line: no,
                        message: format!(
                            "name {:?} is already used on line {} (add name=...)",
                            t.name, prev.line
                        ),
                    });
                } else {
                    targets.push(t);
                }
            }
            Ok(None) => {}
            Err(message) => errors.push(LineError { line: no, message }),
        }
    }
    (targets, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_with_every_option_comments_and_broken_lines() {
        let text = r#"
# the checks
https://api.example.com/health  name=api  tag=env:prod tag=team:core   # trailing comment
http://10.0.0.7:8080/ready expect=2xx,304 reuse=2 timeout=3s interval=10s
https://api.example.com/orders method=POST header="Content-Type: application/json" data='{"probe": 1}' expect=201
ftp://nope/
http://x/ bogus=1
http://y/ reuse=0
http://z/ header="unclosed
https://api.example.com/health
https://api.example.com/health name=api
"#;
        let (t, e) = parse(text);
        assert_eq!(t.len(), 4, "{t:#?}");
        assert_eq!(t[0].name, "api");
        assert_eq!(
            t[0].tags,
            [
                ("env".into(), "prod".into()),
                ("team".into(), "core".into())
            ]
        );
        assert_eq!(t[1].reuse, 2);
        assert_eq!(t[1].timeout, Some(Duration::from_secs(3)));
        assert_eq!(t[1].interval, Some(Duration::from_secs(10)));
        assert!(t[1].expect.accepts(204) && t[1].expect.accepts(304) && !t[1].expect.accepts(302));
        assert_eq!(t[2].method, Some(Method::POST));
        assert_eq!(t[2].body.as_deref(), Some(r#"{"probe": 1}"#));
        assert_eq!(t[2].headers[0].0.as_str(), "content-type");
        assert_eq!(
            t[3].name, "https://api.example.com/health",
            "default name is the URL"
        );
        let lines: Vec<usize> = e.iter().map(|e| e.line).collect();
        assert_eq!(lines, [6, 7, 8, 9, 11], "{e:#?}");
        assert!(e[4].message.contains("already used on line 3"), "{}", e[4]);
    }

    #[test]
    fn tag_keys_are_unique_as_label_names() {
        let (t, e) = parse("http://x/ tag=a-b:1 tag=a_b:2\nhttp://y/ tag=env:a tag=env:b\n");
        assert!(t.is_empty());
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].message.contains("given twice"));
    }

    #[test]
    fn durations_out_of_range_are_line_errors() {
        // Regressions from fuzzing: these panicked (too big for a Duration)
        // or gave a zero interval.
        let (t, e) = parse(
            "http://a/ timeout=1e300s\nhttp://b/ interval=1e308m\nhttp://c/ interval=1e-300s\n\
             http://d/ timeout=1e18s reuse=100\nhttp://e/ interval=86401s\nhttp://f/ interval=1440m\n",
        );
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[0].interval, Some(MAX_DURATION));
        let lines: Vec<usize> = e.iter().map(|e| e.line).collect();
        assert_eq!(lines, [1, 2, 3, 4, 5], "{e:#?}");
        assert!(e[0].message.contains("longer than a day"), "{}", e[0]);
        assert!(e[2].message.contains("positive"), "{}", e[2]);
    }

    #[test]
    fn default_expectation() {
        assert!(Expect::Default.accepts(200));
        assert!(Expect::Default.accepts(302));
        assert!(!Expect::Default.accepts(404));
        assert!(expect("2xx").unwrap().accepts(299));
        assert!(expect("6xx").is_err());
        assert!(expect("99").is_err());
        assert!(expect("").is_err());
    }
}
