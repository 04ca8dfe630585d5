//! curl's `-w/--write-out`: a format string with `%{variable}`,
//! `%header{name}` and `\n`-style escapes, expanded after each transfer
//! (a request and the redirects `-L` followed for it), with curl's
//! meanings: times in seconds, each counted from the start of its hop and
//! added up over the hops, as libcurl does. synack's own variables sit
//! beside curl's (`wire_ttfb`, `verdict`, ...). Pure: a unit test holds
//! every variable to what curl prints for the same transfer.

use crate::model::record::{ErrorKind, Record};

/// Where a piece of the expanded text goes (`%{stdout}`, `%{stderr}`
/// switch it, as in curl).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// One transfer as curl sees it: the hops of a redirect chain, the last
/// one final, and the exit code curl would give it.
pub(crate) struct Transfer<'a> {
    pub hops: &'a [Record],
    pub exit_code: u8,
}

/// curl's exit code for a failed request (`man curl`, EXIT CODES), or for
/// an HTTP status >= 400 with --fail (22).
pub(crate) fn exit_code(r: &Record, fail: bool) -> u8 {
    let Some(e) = &r.error else {
        return if fail && r.http_status.is_some_and(|s| s >= 400) {
            22
        } else {
            0
        };
    };
    match e.kind {
        ErrorKind::UnsupportedScheme => 1,
        ErrorKind::InvalidUrl => 3,
        ErrorKind::Dns => 6,
        ErrorKind::ConnectRefused | ErrorKind::Connect => 7,
        ErrorKind::Timeout => 28,
        // 60: the peer's certificate was not accepted; 35: any other
        // handshake failure.
        ErrorKind::Tls if e.message.contains("certificate") => 60,
        ErrorKind::Tls => 35,
        ErrorKind::Http if e.message.contains("redirect") => 47,
        ErrorKind::Http if e.message.starts_with("HTTP/2 stream:") => 92,
        ErrorKind::Http if e.message.starts_with("HTTP/2") => 16,
        ErrorKind::Http => 8,
        ErrorKind::Io | ErrorKind::NoResponse => 56,
        // curl: 5 "couldn't resolve proxy", 7 for a proxy that cannot be
        // reached, 56 for a CONNECT answered with an error (407 included).
        ErrorKind::ProxyDns => 5,
        ErrorKind::ProxyRefused | ErrorKind::ProxyConnect => 7,
        ErrorKind::ProxyTunnel | ErrorKind::ProxyAuth => 56,
        // curl has no kernel side; 2 is its "failed to initialize".
        ErrorKind::Kernel => 2,
    }
}

/// The format as given: `@FILE` reads it from a file, `@-` from stdin.
pub(crate) fn load_format(arg: &str) -> std::io::Result<String> {
    match arg.strip_prefix('@') {
        Some("-") => std::io::read_to_string(std::io::stdin()),
        Some(path) => std::fs::read_to_string(path),
        None => Ok(arg.to_string()),
    }
}

/// Seconds from a hop's start (its DNS, or its request on a reused
/// connection) to each mark, 0 for a mark the hop never reached (as curl).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct HopTimes {
    namelookup: f64,
    connect: f64,
    appconnect: f64,
    pretransfer: f64,
    starttransfer: f64,
    total: f64,
}

fn hop_times(r: &Record) -> HopTimes {
    let start = r
        .at("dns_start")
        .or_else(|| r.at("connect_call"))
        .or_else(|| r.at("request_start"));
    let Some(start) = start else {
        return HopTimes::default();
    };
    let since = |ev: &str| {
        r.at(ev)
            .map(|t| t.saturating_sub(start) as f64 / 1e9)
            .unwrap_or(0.0)
    };
    let last = r
        .timeline
        .iter()
        .filter(|e| e.source == "user")
        .map(|e| e.t_ns)
        .max()
        .unwrap_or(start);
    let total = r
        .at("done")
        .map_or(last.saturating_sub(start) as f64 / 1e9, |_| since("done"));
    HopTimes {
        namelookup: since("dns_done"),
        connect: since("connect_done"),
        appconnect: if r.tls { since("tls_done") } else { 0.0 },
        pretransfer: since("request_start"),
        starttransfer: since("first_byte_read"),
        total,
    }
}

/// The value of one variable, or None for a name curl does not know.
fn value(t: &Transfer<'_>, name: &str) -> Option<String> {
    let last = t.hops.last()?;
    let hops: Vec<HopTimes> = t.hops.iter().map(hop_times).collect();
    // A fold from +0.0: an empty f64 sum is -0.0, which prints "-0.000000".
    let sum = |f: fn(&HopTimes) -> f64| hops.iter().map(f).fold(0.0, |a, b| a + b);
    let secs = |v: f64| format!("{v:.6}");
    let ms_as_secs = |v: Option<f64>| v.map(|ms| secs(ms / 1e3)).unwrap_or_default();
    let resp = last.response.as_deref();
    let addr = |a: &Option<String>| {
        a.as_deref()
            .and_then(|s| s.parse::<std::net::SocketAddr>().ok())
    };
    let body = resp.map_or(0, |r| r.body_bytes);
    let total: f64 = sum(|h| h.total);
    let v = match name {
        "time_namelookup" => secs(sum(|h| h.namelookup)),
        "time_connect" => secs(sum(|h| h.connect)),
        "time_appconnect" => secs(sum(|h| h.appconnect)),
        "time_pretransfer" => secs(sum(|h| h.pretransfer)),
        "time_starttransfer" => secs(sum(|h| h.starttransfer)),
        "time_total" => secs(total),
        "time_redirect" => secs(hops[..hops.len() - 1].iter().fold(0.0, |a, h| a + h.total)),
        "http_code" | "response_code" => format!("{:03}", last.http_status.unwrap_or(0)),
        "http_version" => resp.map_or("0", |r| r.version).to_string(),
        // The proxy's answer to CONNECT (000: no tunnel), as curl.
        "http_connect" => format!(
            "{:03}",
            t.hops
                .iter()
                .rev()
                .find_map(|r| r.proxy.as_ref().and_then(|p| p.connect_status))
                .unwrap_or(0)
        ),
        "remote_ip" => addr(&last.remote_addr)
            .map(|a| a.ip().to_string())
            .unwrap_or_default(),
        "remote_port" => addr(&last.remote_addr)
            .map(|a| a.port().to_string())
            .unwrap_or_default(),
        "local_ip" => addr(&last.local_addr)
            .map(|a| a.ip().to_string())
            .unwrap_or_default(),
        "local_port" => addr(&last.local_addr)
            .map(|a| a.port().to_string())
            .unwrap_or_default(),
        "size_download" => body.to_string(),
        "size_header" => t
            .hops
            .iter()
            .filter_map(|r| r.response.as_deref())
            .map(|r| r.header_bytes)
            .sum::<u64>()
            .to_string(),
        "size_request" => t
            .hops
            .iter()
            .filter_map(|r| r.request_bytes)
            .sum::<u64>()
            .to_string(),
        "size_upload" => "0".to_string(),
        "speed_download" => {
            let last_total = hops.last().map_or(0.0, |h| h.total);
            let speed = if last_total > 0.0 {
                body as f64 / last_total
            } else {
                0.0
            };
            format!("{speed:.0}")
        }
        "num_connects" => t
            .hops
            .iter()
            .filter(|r| !r.connection_reused && r.at("connect_call").is_some())
            .count()
            .to_string(),
        "num_redirects" => (t.hops.len() - 1).to_string(),
        "redirect_url" => t
            .hops
            .last()
            .and_then(|r| r.response.as_deref())
            .and_then(|r| header(r, "location"))
            .filter(|_| last.http_status.is_some_and(|s| (300..400).contains(&s)))
            .map(|loc| join(&last.url, &loc))
            .unwrap_or_default(),
        "url" => t.hops.first().map(|r| r.url.clone()).unwrap_or_default(),
        "url_effective" => last.url.clone(),
        "method" => last.method.clone(),
        "scheme" => last
            .url
            .split(':')
            .next()
            .unwrap_or("")
            .to_ascii_uppercase(),
        "exitcode" => t.exit_code.to_string(),
        "errormsg" => last
            .error
            .as_ref()
            .map(|e| e.message.clone())
            .unwrap_or_default(),
        "content_type" => resp
            .and_then(|r| header(r, "content-type"))
            .unwrap_or_default(),
        "ssl_verify_result" => "0".to_string(),
        // synack's own: seconds like curl's times, empty where not measured
        // (no eBPF, a reused connection's handshake).
        "wire_handshake" => ms_as_secs(last.wire.handshake_rtt_ms),
        "wire_tls" => ms_as_secs(last.wire.tls_rtt_ms),
        "wire_ttfb" => ms_as_secs(last.wire.ttfb_ms),
        "wire_proxy_connect" => ms_as_secs(last.wire.proxy_connect_ms),
        // The connection's PING is on its first request's record.
        "wire_h2_ping" => ms_as_secs(t.hops.iter().rev().find_map(|r| r.wire.h2_ping_rtt_ms)),
        "verdict" => last
            .verdict
            .as_ref()
            .map(|v| {
                serde_json::to_value(v.path)
                    .ok()
                    .and_then(|p| p.as_str().map(str::to_string))
                    .unwrap_or_default()
            })
            .unwrap_or_default(),
        "bottleneck" => last
            .verdict
            .as_ref()
            .and_then(|v| v.bottleneck)
            .map(|b| b.name().to_string())
            .unwrap_or_default(),
        "network" => ms_as_secs(last.phases.network_ms),
        "middlebox" => ms_as_secs(last.phases.middlebox_ms),
        "server" => ms_as_secs(last.phases.server_ms),
        "client" => ms_as_secs(last.phases.client_ms),
        "synack_ttl" => last
            .wire
            .synack_ttl
            .map(|v| v.to_string())
            .unwrap_or_default(),
        "hops" => last
            .wire
            .synack_hops
            .map(|v| v.to_string())
            .unwrap_or_default(),
        "json" => json(t),
        "header_json" => header_json(resp),
        _ => return None,
    };
    Some(v)
}

/// Every variable `%{json}` carries: curl's that synack gives, then synack's.
const JSON_VARS: &[&str] = &[
    "content_type",
    "errormsg",
    "exitcode",
    "http_code",
    "http_connect",
    "http_version",
    "local_ip",
    "local_port",
    "method",
    "num_connects",
    "num_redirects",
    "redirect_url",
    "remote_ip",
    "remote_port",
    "response_code",
    "scheme",
    "size_download",
    "size_header",
    "size_request",
    "size_upload",
    "speed_download",
    "ssl_verify_result",
    "time_appconnect",
    "time_connect",
    "time_namelookup",
    "time_pretransfer",
    "time_redirect",
    "time_starttransfer",
    "time_total",
    "url",
    "url_effective",
    "wire_handshake",
    "wire_tls",
    "wire_ttfb",
    "wire_proxy_connect",
    "wire_h2_ping",
    "verdict",
    "bottleneck",
    "network",
    "middlebox",
    "server",
    "client",
    "synack_ttl",
    "hops",
];

/// As curl: numbers as JSON numbers, strings as strings, what is not
/// known as null.
fn json(t: &Transfer<'_>) -> String {
    let mut m = serde_json::Map::new();
    for &k in JSON_VARS {
        let v = value(t, k).unwrap_or_default();
        let numeric = k.starts_with("time_")
            || k.starts_with("size_")
            || k.starts_with("num_")
            || matches!(
                k,
                "exitcode"
                    | "http_code"
                    | "response_code"
                    | "speed_download"
                    | "ssl_verify_result"
                    | "local_port"
                    | "remote_port"
                    | "wire_handshake"
                    | "wire_tls"
                    | "wire_ttfb"
                    | "network"
                    | "middlebox"
                    | "server"
                    | "client"
                    | "synack_ttl"
                    | "hops"
            );
        let j = if numeric {
            v.parse::<f64>()
                .ok()
                .and_then(|n| {
                    if n.fract() == 0.0 && !k.starts_with("time_") && n.abs() < 1e15 {
                        Some(serde_json::Value::from(n as i64))
                    } else {
                        serde_json::Number::from_f64(n).map(serde_json::Value::Number)
                    }
                })
                .unwrap_or(serde_json::Value::Null)
        } else if v.is_empty() && k != "errormsg" {
            serde_json::Value::Null
        } else {
            serde_json::Value::String(v)
        };
        m.insert(k.to_string(), j);
    }
    m.insert(
        "curl_version".into(),
        format!("synack {}", env!("CARGO_PKG_VERSION")).into(),
    );
    serde_json::Value::Object(m).to_string()
}

/// `%{header_json}`: each header name (lower case, as HTTP/2 and curl's
/// output give it) with the list of its values in order.
fn header_json(resp: Option<&crate::model::record::ResponseSeen>) -> String {
    let mut m: serde_json::Map<String, serde_json::Value> = serde_json::Map::new();
    for (k, v) in resp.map(|r| r.headers.as_slice()).unwrap_or_default() {
        let e = m
            .entry(k.to_ascii_lowercase())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(a) = e {
            a.push(serde_json::Value::String(v.clone()));
        }
    }
    serde_json::Value::Object(m).to_string()
}

/// A response header's values, joined with ", " when repeated.
fn header(r: &crate::model::record::ResponseSeen, name: &str) -> Option<String> {
    let vals: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect();
    (!vals.is_empty()).then(|| vals.join(", "))
}

fn join(base: &str, loc: &str) -> String {
    url::Url::parse(base)
        .and_then(|b| b.join(loc))
        .map(String::from)
        .unwrap_or_else(|_| loc.to_string())
}

/// The format expanded for one transfer: pieces of text with the stream
/// each goes to, and warnings (unknown variables) for stderr.
pub(crate) fn expand(fmt: &str, t: &Transfer<'_>) -> (Vec<(Stream, String)>, Vec<String>) {
    let mut out: Vec<(Stream, String)> = Vec::new();
    let mut warnings = Vec::new();
    let mut stream = Stream::Stdout;
    let mut cur = String::new();
    let flush = |cur: &mut String, stream: Stream, out: &mut Vec<(Stream, String)>| {
        if !cur.is_empty() {
            out.push((stream, std::mem::take(cur)));
        }
    };
    let mut rest = fmt;
    while let Some(c) = rest.chars().next() {
        if let Some(r) = rest.strip_prefix("%%") {
            cur.push('%');
            rest = r;
        } else if let Some(r) = rest.strip_prefix("%{") {
            let Some(end) = r.find('}') else {
                // curl prints an unterminated %{ as it is.
                cur.push_str(rest);
                break;
            };
            let name = &r[..end];
            rest = &r[end + 1..];
            match name {
                "stdout" => {
                    flush(&mut cur, stream, &mut out);
                    stream = Stream::Stdout;
                }
                "stderr" => {
                    flush(&mut cur, stream, &mut out);
                    stream = Stream::Stderr;
                }
                _ => match value(t, name) {
                    Some(v) => cur.push_str(&v),
                    None => {
                        warnings.push(format!("synack: unknown --write-out variable: '{name}'"))
                    }
                },
            }
        } else if let Some(r) = rest.strip_prefix("%header{") {
            let Some(end) = r.find('}') else {
                cur.push_str(rest);
                break;
            };
            let name = &r[..end];
            rest = &r[end + 1..];
            if let Some(v) = t
                .hops
                .last()
                .and_then(|h| h.response.as_deref())
                .and_then(|resp| header(resp, name))
            {
                cur.push_str(&v);
            }
        } else if let Some(r) = rest.strip_prefix('\\') {
            match r.chars().next() {
                Some('n') => cur.push('\n'),
                Some('r') => cur.push('\r'),
                Some('t') => cur.push('\t'),
                Some('\\') => cur.push('\\'),
                Some(other) => {
                    // curl prints an unknown escape as it is.
                    cur.push('\\');
                    cur.push(other);
                }
                None => {
                    cur.push('\\');
                    break;
                }
            }
            rest = &r[r.chars().next().map_or(0, char::len_utf8)..];
        } else {
            cur.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    flush(&mut cur, stream, &mut out);
    (out, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::record::{ErrorInfo, ResponseSeen, TimelineEntry};

    /// A hop whose user marks sit at these ms from 1 s.
    fn hop(url: &str, marks: &[(&'static str, f64)], status: u16) -> Record {
        let mut r = Record::new(url, "GET", "ebpf");
        r.http_status = Some(status);
        r.remote_addr = Some("[fd00::2]:8443".into());
        r.local_addr = Some("10.0.0.1:40000".into());
        r.timeline = marks
            .iter()
            .map(|&(event, ms)| TimelineEntry {
                event,
                source: "user",
                t_ns: 1_000_000_000 + (ms * 1e6) as u64,
            })
            .collect();
        r.response = Some(Box::new(ResponseSeen {
            version: "1.1",
            reason: "OK".into(),
            headers: vec![
                ("content-type".into(), "text/plain".into()),
                ("set-cookie".into(), "a=1".into()),
                ("Set-Cookie".into(), "b=2".into()),
            ],
            header_bytes: 100,
            body_bytes: 2000,
        }));
        r
    }

    fn fresh(url: &str, tls: bool) -> Record {
        let mut m = vec![
            ("dns_start", 0.0),
            ("dns_done", 1.0),
            ("connect_call", 1.5),
            ("connect_done", 3.0),
        ];
        if tls {
            m.extend([("tls_start", 3.1), ("tls_done", 7.0)]);
        }
        m.extend([
            ("request_start", 7.5),
            ("request_written", 7.6),
            ("first_byte_read", 20.0),
            ("done", 25.0),
        ]);
        hop(url, &m, 200)
    }

    fn run(fmt: &str, hops: &[Record], code: u8) -> (String, String, Vec<String>) {
        let t = Transfer {
            hops,
            exit_code: code,
        };
        let (pieces, warnings) = expand(fmt, &t);
        let pick = |s: Stream| {
            pieces
                .iter()
                .filter(|(x, _)| *x == s)
                .map(|(_, t)| t.as_str())
                .collect::<String>()
        };
        (pick(Stream::Stdout), pick(Stream::Stderr), warnings)
    }

    #[test]
    fn curls_times_are_seconds_from_the_hops_start() {
        let h = [fresh("https://h/", true)];
        let (out, _, w) = run(
            "%{time_namelookup} %{time_connect} %{time_appconnect} %{time_pretransfer} %{time_starttransfer} %{time_total} %{time_redirect}\n",
            &h,
            0,
        );
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            out,
            "0.001000 0.003000 0.007000 0.007500 0.020000 0.025000 0.000000\n"
        );
        // Plain HTTP has no TLS: time_appconnect is 0, as in curl.
        let (out, _, _) = run(
            "%{time_appconnect} %{time_pretransfer}",
            &[fresh("http://h/", false)],
            0,
        );
        assert_eq!(out, "0.000000 0.007500");
    }

    #[test]
    fn redirects_add_up_as_in_libcurl() {
        let mut first = fresh("http://h/old", false);
        first.http_status = Some(301);
        // The second hop reuses the connection: it starts at its request.
        let mut second = hop(
            "http://h/new",
            &[
                ("request_start", 30.0),
                ("first_byte_read", 40.0),
                ("done", 42.0),
            ],
            200,
        );
        second.redirect_hop = 1;
        second.connection_reused = true;
        let h = [first, second];
        let (out, _, _) = run(
            "%{time_connect} %{time_starttransfer} %{time_total} %{time_redirect} %{num_redirects} %{num_connects} %{url_effective} %{url}",
            &h,
            0,
        );
        assert_eq!(
            out,
            "0.003000 0.030000 0.037000 0.025000 1 1 http://h/new http://h/old"
        );
    }

    #[test]
    fn the_rest_of_curls_variables() {
        let h = [fresh("https://h/x", true)];
        let (out, _, _) = run(
            "%{http_code}|%{http_version}|%{remote_ip}|%{remote_port}|%{local_ip}|%{local_port}|%{size_download}|%{size_header}|%{speed_download}|%{exitcode}|%{errormsg}|%{content_type}|%{scheme}|%header{SET-COOKIE}|%header{x-none}",
            &h,
            0,
        );
        assert_eq!(
            out,
            "200|1.1|fd00::2|8443|10.0.0.1|40000|2000|100|80000|0||text/plain|HTTPS|a=1, b=2|"
        );
        let hj: serde_json::Value = serde_json::from_str(&run("%{header_json}", &h, 0).0).unwrap();
        assert_eq!(hj["set-cookie"], serde_json::json!(["a=1", "b=2"]));
        let j: serde_json::Value = serde_json::from_str(&run("%{json}", &h, 0).0).unwrap();
        assert_eq!(j["http_code"], 200);
        assert_eq!(j["time_total"], 0.025);
        assert_eq!(j["remote_ip"], "fd00::2");
        assert!(j["wire_ttfb"].is_null(), "not measured: null, {j}");
    }

    #[test]
    fn a_failed_transfer_prints_zeros_and_the_error() {
        let mut r = hop(
            "http://h/",
            &[("dns_start", 0.0), ("dns_done", 1.0), ("connect_call", 1.2)],
            0,
        );
        r.http_status = None;
        r.response = None;
        r.error = Some(ErrorInfo::new(
            ErrorKind::ConnectRefused,
            "connection refused",
        ));
        assert_eq!(exit_code(&r, false), 7);
        let h = [r];
        let (out, _, _) = run(
            "%{http_code} %{time_connect} %{time_total} %{exitcode} %{errormsg} %{size_download}",
            &h,
            7,
        );
        assert_eq!(out, "000 0.000000 0.001200 7 connection refused 0");
    }

    #[test]
    fn exit_codes_are_curls() {
        let mut r = fresh("http://h/", false);
        r.http_status = Some(404);
        assert_eq!(exit_code(&r, false), 0);
        assert_eq!(exit_code(&r, true), 22);
        for (kind, msg, code) in [
            (ErrorKind::Dns, "no such host", 6),
            (ErrorKind::Timeout, "timed out in connect", 28),
            (
                ErrorKind::Tls,
                "invalid peer certificate: UnknownIssuer",
                60,
            ),
            (ErrorKind::Tls, "handshake failure", 35),
            (ErrorKind::Http, "too many redirects", 47),
            (
                ErrorKind::Http,
                "HTTP/2 stream: stream error received: refused",
                92,
            ),
            (
                ErrorKind::Http,
                "HTTP/2: connection error detected: frame with invalid size",
                16,
            ),
            (ErrorKind::Io, "connection reset", 56),
            (ErrorKind::UnsupportedScheme, "ftp", 1),
        ] {
            r.error = Some(ErrorInfo::new(kind, msg));
            assert_eq!(exit_code(&r, false), code, "{kind} {msg}");
        }
    }

    #[test]
    fn escapes_streams_and_unknown_variables_as_curl() {
        let h = [fresh("http://h/", false)];
        let (out, err, w) = run(
            r"a\tb\\c\qd%%e%{stderr}to err%{stdout}\n%{nope}%{http_code",
            &h,
            0,
        );
        assert_eq!(out, "a\tb\\c\\qd%e\n%{http_code");
        assert_eq!(err, "to err");
        assert_eq!(
            w,
            vec!["synack: unknown --write-out variable: 'nope'".to_string()]
        );
    }

    #[test]
    fn synacks_own_variables() {
        let mut r = fresh("http://h/", false);
        r.wire.ttfb_ms = Some(12.5);
        r.wire.handshake_rtt_ms = Some(1.25);
        r.wire.synack_ttl = Some(63);
        r.wire.synack_hops = Some(1);
        r.phases.server_ms = Some(12.0);
        r.verdict = Some(crate::model::verdict::Verdict {
            path: crate::model::verdict::PathKind::Direct,
            bottleneck: Some(crate::model::verdict::Bottleneck::Server),
            ..Default::default()
        });
        let (out, _, w) = run(
            "%{wire_ttfb} %{wire_handshake} %{wire_tls}|%{verdict} %{bottleneck} %{server} %{network}|%{synack_ttl} %{hops}",
            &[r],
            0,
        );
        assert!(w.is_empty());
        assert_eq!(out, "0.012500 0.001250 |direct server 0.012000 |63 1");
    }

    #[test]
    fn heads_print_as_curl_i() {
        let r = fresh("http://h/", false);
        let text = r.response.as_deref().unwrap().head_text(200);
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n"));
    }
}
