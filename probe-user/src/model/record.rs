//! The output contract: one `Record` per HTTP request. Field names here are
//! the JSON field names users script against (see docs/json.md).

use crate::model::verdict::{ClientStall, Middlebox, Phases, Verdict};
use serde::Serialize;

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct ErrorInfo {
    /// Machine-readable class (serialised as the strings docs/json.md lists).
    pub kind: ErrorKind,
    /// What happened, for a person.
    pub message: String,
}

/// The class of a failed request: what a script or an alert keys on. The
/// JSON strings are part of the output contract (docs/json.md), and the
/// metrics' `kind` label uses the same strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ErrorKind {
    /// The URL (or a redirect's Location) cannot be parsed or has no host.
    InvalidUrl,
    /// Not http:// or https://.
    UnsupportedScheme,
    /// Name resolution failed, or gave no address of the family asked for.
    Dns,
    /// The server answered the SYN with a RST.
    ConnectRefused,
    /// Any other failure to connect (unreachable, no route, ...).
    Connect,
    /// --max-time (or a check's timeout) ran out; the message names the phase.
    Timeout,
    /// The TLS handshake failed (certificate, protocol, server name).
    Tls,
    /// The HTTP exchange failed (malformed response, too many redirects, ...).
    Http,
    /// The connection broke (reset, closed early) or a socket call failed.
    Io,
    /// The kernel side refused to follow the socket.
    Kernel,
    /// `synack watch`: the connection closed or was reset before a response,
    /// or synack stopped first.
    NoResponse,
    /// The proxy's name did not resolve.
    ProxyDns,
    /// The proxy answered the SYN with a RST.
    ProxyRefused,
    /// Any other failure to connect to the proxy.
    ProxyConnect,
    /// The proxy answered CONNECT with a status other than 2xx (not 407).
    ProxyTunnel,
    /// The proxy asked for credentials (407 to CONNECT).
    ProxyAuth,
}

impl ErrorKind {
    /// The contract string: the same as the JSON value.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidUrl => "invalid_url",
            ErrorKind::UnsupportedScheme => "unsupported_scheme",
            ErrorKind::Dns => "dns",
            ErrorKind::ConnectRefused => "connect_refused",
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Tls => "tls",
            ErrorKind::Http => "http",
            ErrorKind::Io => "io",
            ErrorKind::Kernel => "kernel",
            ErrorKind::NoResponse => "no_response",
            ErrorKind::ProxyDns => "proxy_dns",
            ErrorKind::ProxyRefused => "proxy_refused",
            ErrorKind::ProxyConnect => "proxy_connect",
            ErrorKind::ProxyTunnel => "proxy_tunnel",
            ErrorKind::ProxyAuth => "proxy_auth",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lets a test or a caller compare with the contract string directly.
impl PartialEq<&str> for ErrorKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// An error and its causes on one line ("a: b: c"), each part once (some
/// libraries repeat their cause in their own message).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        let t = x.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = x.source();
    }
    s.replace('\n', " ")
}

impl ErrorInfo {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorInfo {
            kind,
            message: message.into(),
        }
    }
}

/// The TLS session as the client saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct TlsInfo {
    /// "TLSv1.3", "TLSv1.2".
    pub version: Option<String>,
    /// The protocol ALPN chose ("http/1.1"), null when none.
    pub alpn: Option<String>,
    /// The end-entity certificate's subject and issuer (RFC 4514 strings):
    /// behind a TLS-intercepting proxy the issuer is the proxy's CA.
    pub cert_subject: Option<String>,
    pub cert_issuer: Option<String>,
}

/// User-space times, milliseconds. Null where the phase did not happen (a
/// reused connection has no DNS, connect or TLS) or did not complete.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct UserTimes {
    /// Name resolution.
    pub dns_ms: Option<f64>,
    /// connect() call to connection established.
    pub connect_ms: Option<f64>,
    /// The proxy's answer to CONNECT: written to the head read (a
    /// tunnel through a declared proxy only).
    pub proxy_connect_ms: Option<f64>,
    /// HTTP/2: our PING written to its ACK read, after the connection's
    /// requests (the first request's record only).
    pub h2_ping_ms: Option<f64>,
    /// TLS handshake.
    pub tls_ms: Option<f64>,
    /// Request fully written to the first response byte read.
    pub ttfb_ms: Option<f64>,
    /// Start (DNS, or the request on a reused connection) to the last response byte read.
    pub total_ms: Option<f64>,
}

/// Times and facts from the kernel's packet timestamps, milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct WireTimes {
    /// SYN out to SYN-ACK in (the SYN that was answered).
    pub handshake_rtt_ms: Option<f64>,
    /// The handshake is a clean round trip (Karn's rule): one SYN, or the
    /// SYN-ACK's TSecr names the last SYN sent. False: a retransmission
    /// makes it ambiguous and the verdict does not use it as an RTT.
    pub handshake_clean: Option<bool>,
    /// First SYN out to SYN-ACK in, including retransmission waits.
    pub connect_wait_ms: Option<f64>,
    /// SYNs sent again before the SYN-ACK.
    pub syn_retransmits: Option<u32>,
    /// TTL (IPv4) or hop limit (IPv6) of the SYN-ACK.
    pub synack_ttl: Option<u8>,
    /// The initial TTL the SYN-ACK most likely started with (64, 128 or 255).
    pub synack_initial_ttl: Option<u8>,
    /// Hops between this host and whatever answered the SYN.
    pub synack_hops: Option<u8>,
    /// SYN-ACK window (unscaled), MSS, window scale, SACK-permitted, timestamps.
    pub synack_window: Option<u16>,
    pub synack_mss: Option<u16>,
    pub synack_wscale: Option<u8>,
    pub synack_sack_permitted: Option<bool>,
    pub synack_timestamps: Option<bool>,
    /// ClientHello out to the first server payload in.
    pub tls_rtt_ms: Option<f64>,
    /// ClientHello out to the first ACK covering it: a round trip to the
    /// TCP endpoint (a holding TLS proxy acknowledges at once; a server
    /// sends its ACK with its ServerHello).
    pub client_hello_acked_ms: Option<f64>,
    /// Our second TLS flight (Finished) out to the server's next bytes in (a
    /// TLS 1.3 session ticket, or the TLS 1.2 Finished), when those came
    /// before the response: a round trip to the TLS endpoint with no server
    /// think time in it.
    pub tls_round2_ms: Option<f64>,
    /// Request's first segment out to the ACK covering all of it.
    pub data_rtt_ms: Option<f64>,
    /// Request's first segment out to the response's first segment in.
    pub ttfb_ms: Option<f64>,
    /// The request's first bytes went out again before the response came:
    /// ms from the first transmission to the last copy (null: not resent).
    pub request_resent_ms: Option<f64>,
    /// Server side (`synack watch`): TTL (IPv4) or hop limit (IPv6) of the
    /// client's SYN as it arrived, and the hops it crossed.
    pub client_ttl: Option<u8>,
    pub client_hops: Option<u8>,
    /// Retransmitted (or reordered) payload segments during the request, both directions.
    pub retransmits: Option<u32>,
    pub retransmits_out: Option<u32>,
    pub retransmits_in: Option<u32>,
    /// First SYN (or, on a reused connection, the request) out to the
    /// response in: the wire span the phases below divide up.
    pub span_ms: Option<f64>,
    /// Inside the wire span, the time the next move was ours: from an
    /// incoming segment to our next outgoing one that answers it (SYN-ACK
    /// -> ClientHello, the server's flight -> our Finished), and from our
    /// Finished to the request.
    pub client_turns_ms: Option<f64>,
    /// Through a declared proxy's tunnel: CONNECT out to the first segment
    /// of its answer in (the proxy's way to the origin and back, plus the
    /// round trip to the proxy).
    pub proxy_connect_ms: Option<f64>,
    /// HTTP/2: our PING's segment out to the one carrying its ACK in, a
    /// round trip to the HTTP/2 endpoint with no think time (sent after
    /// the connection's requests; on the first request's record).
    pub h2_ping_rtt_ms: Option<f64>,
}

/// The declared proxy a request went through (`-x`, or the environment).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct ProxyUsed {
    /// `http://host:port`, without credentials.
    pub url: String,
    /// Where it was set: `-x`, `http_proxy`, `HTTPS_PROXY`, `ALL_PROXY`.
    pub from: &'static str,
    /// HTTPS through a CONNECT tunnel (true) or a plain request in
    /// absolute form (false).
    pub tunnel: bool,
    /// The status of the proxy's answer to CONNECT (null: no tunnel, or
    /// no answer).
    pub connect_status: Option<u16>,
}

/// One point of the request's timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct TimelineEntry {
    /// dns_start, syn_out, synack_in, request_out, response_in, ...
    pub event: &'static str,
    /// "wire" (kernel packet timestamp) or "user" (user-space clock).
    pub source: &'static str,
    /// CLOCK_MONOTONIC nanoseconds.
    pub t_ns: u64,
}

/// One HTTP request, as printed.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Record {
    pub url: String,
    /// Wall-clock time of the request's first event (its DNS start, on a
    /// reused connection its start; `synack watch`: its first packet), RFC
    /// 3339 in UTC with ms. Null only where the clock could not be read.
    pub started_at: Option<String>,
    pub method: String,
    pub remote_addr: Option<String>,
    pub local_addr: Option<String>,
    pub ip_version: Option<u8>,
    pub http_status: Option<u16>,
    /// "ebpf": kernel packet timestamps from tc classifiers; "unprivileged":
    /// the socket's own kernel timestamps (SO_TIMESTAMPING, TCP_INFO).
    pub mode: &'static str,
    /// "client": this host opened the connection (always so for the active
    /// probe); "server": it accepted it (`synack watch`).
    pub direction: &'static str,
    /// `synack watch`: the process that owns the connection (the one that
    /// called connect(), or holds the accepted socket), its name, and its
    /// cgroup v2 path (a container's cgroup names the container).
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cgroup: Option<String>,
    /// `synack watch`: the TLS server name from the ClientHello.
    pub sni: Option<String>,
    pub error: Option<ErrorInfo>,
    /// Which of --count's runs this is (0-based).
    pub attempt: u32,
    /// Redirect hop (0 = the URL given).
    pub redirect_hop: u32,
    /// Position on its connection (0 = first request, which paid for the handshake).
    pub request_index: u32,
    pub connection_reused: bool,
    /// Why this request of a --reuse series is on a new connection: the
    /// server closed the one before (Connection: close, HTTP/1.0, an idle
    /// timeout). Null otherwise.
    pub reconnect_reason: Option<String>,
    /// https:// (TLS) or not.
    pub tls: bool,
    /// The response's HTTP version: "1.0", "1.1" or "2" (null: no response).
    pub http_version: Option<&'static str>,
    /// The declared proxy this request went through; `remote_addr` is
    /// then the proxy's.
    pub proxy: Option<ProxyUsed>,
    /// What the TLS handshake gave: version, ALPN and whose certificate
    /// (null for plain HTTP, or before the handshake completed).
    pub tls_info: Option<TlsInfo>,
    /// The destination is on one of this host's subnets (no gateway between).
    pub remote_on_link: Option<bool>,
    /// The response's Via header (a hint of a proxy, never the proof).
    pub via: Option<String>,
    /// The first `dur` of the response's Server-Timing header, ms: what the
    /// server says it spent (its claim, next to `phases.server_ms`).
    pub server_timing_ms: Option<f64>,
    /// With --path-probe: the smallest SYN TTL that got a SYN-ACK.
    pub path_probe_ttl: Option<u8>,
    /// Socket cookie (SO_COOKIE) of the connection.
    pub socket_cookie: Option<u64>,
    pub request_bytes: Option<u64>,
    pub response_bytes: Option<u64>,
    pub user: UserTimes,
    pub wire: WireTimes,
    /// Every event, wire and user, sorted by time.
    pub timeline: Vec<TimelineEntry>,
    /// Is there a middlebox on the path, and why synack thinks so.
    pub verdict: Option<Verdict>,
    /// Where the time went.
    pub phases: Phases,
    /// The CPU this process did not get while the request ran (null where
    /// not measured: `synack watch`, a failed request).
    pub client: Option<ClientStall>,
    /// The TCP-terminating middlebox, when one was found.
    pub middlebox: Option<Middlebox>,
    /// Loss counters for the whole run so far.
    pub drops: Drops,
    /// The response's head and size as received (the active probe; for
    /// curl's -w, -i and -D, not part of the JSON record).
    #[serde(skip)]
    pub response: Option<Box<ResponseSeen>>,
}

/// A response as curl's output options need it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ResponseSeen {
    /// "1.0", "1.1", "2": as curl's `http_version` prints it.
    pub version: &'static str,
    /// The status line's reason phrase ("OK"), empty with HTTP/2.
    pub reason: String,
    /// Every header in order, names as received.
    pub headers: Vec<(String, String)>,
    /// The head's size on the wire: status line, headers, the empty line.
    pub header_bytes: u64,
    /// The body's bytes (decoded of chunking).
    pub body_bytes: u64,
}

impl ResponseSeen {
    /// The head as curl's -i and -I print it: the status line, each
    /// header, an empty line.
    pub(crate) fn head_text(&self, status: u16) -> String {
        use std::fmt::Write as _;
        let mut s = format!("HTTP/{} {status}", self.version);
        // curl writes HTTP/2's status line with a space where the reason
        // would be (HTTP/2 has none).
        if self.version == "2" {
            s.push(' ');
        } else if !self.reason.is_empty() {
            let _ = write!(s, " {}", self.reason);
        }
        s.push_str("\r\n");
        for (k, v) in &self.headers {
            let _ = write!(s, "{k}: {v}\r\n");
        }
        s.push_str("\r\n");
        s
    }
}

impl Record {
    /// CLOCK_MONOTONIC ns of the first timeline entry with this name.
    pub(crate) fn at(&self, event: &str) -> Option<u64> {
        self.timeline
            .iter()
            .find(|e| e.event == event)
            .map(|e| e.t_ns)
    }

    /// The verdict's inputs.
    pub(crate) fn facts(&self) -> crate::model::verdict::Facts {
        let w = &self.wire;
        let user_span = if self.connection_reused {
            self.at("request_start").zip(self.at("first_byte_read"))
        } else {
            self.at("connect_call").zip(self.at("first_byte_read"))
        }
        .map(|(a, b)| crate::model::units::ms_between(a, b));
        crate::model::verdict::Facts {
            index: self.request_index,
            repeats_first: true,
            unprivileged: self.mode == "unprivileged",
            tls: self.tls,
            handshake: w.handshake_rtt_ms,
            handshake_clean: w.handshake_clean.unwrap_or(true),
            ttl: w.synack_ttl,
            initial_ttl: w.synack_initial_ttl,
            hops: w.synack_hops,
            tls_rtt: w.tls_rtt_ms,
            tls_round2: w.tls_round2_ms,
            h2_ping: w.h2_ping_rtt_ms,
            tls12: self
                .tls_info
                .as_ref()
                .is_some_and(|t| t.version.as_deref() == Some("TLSv1.2")),
            data_rtt: w.data_rtt_ms,
            client_hello_acked: w.client_hello_acked_ms,
            client_turns: w.client_turns_ms,
            stall: self.client.clone(),
            request_resent: w.request_resent_ms,
            resent_unplaced: w.request_resent_ms.is_none()
                && w.retransmits.is_none()
                && w.retransmits_out.is_some_and(|n| n > 0),
            ttfb: w.ttfb_ms,
            retransmits: w.retransmits.unwrap_or(0),
            span: w.span_ms,
            user_span,
            on_link: self.remote_on_link,
            probe_ttl: self.path_probe_ttl,
            via: self.via.clone(),
            server_timing: self.server_timing_ms,
            cert_issuer: self.tls_info.as_ref().and_then(|t| t.cert_issuer.clone()),
            remote: self.remote_addr.clone().unwrap_or_default(),
            proxy: self
                .proxy
                .as_ref()
                .map(|p| crate::model::verdict::DeclaredProxy {
                    url: p.url.clone(),
                    tunnel: p.tunnel,
                    connect_answer: w.proxy_connect_ms,
                }),
        }
    }

    pub(crate) fn new(url: &str, method: &str, mode: &'static str) -> Self {
        Record {
            url: url.to_string(),
            started_at: None,
            method: method.to_string(),
            remote_addr: None,
            local_addr: None,
            ip_version: None,
            http_status: None,
            mode,
            direction: "client",
            pid: None,
            comm: None,
            cgroup: None,
            sni: None,
            error: None,
            attempt: 0,
            redirect_hop: 0,
            request_index: 0,
            connection_reused: false,
            reconnect_reason: None,
            proxy: None,
            http_version: None,
            tls: url.starts_with("https:"),
            tls_info: None,
            remote_on_link: None,
            via: None,
            server_timing_ms: None,
            path_probe_ttl: None,
            socket_cookie: None,
            request_bytes: None,
            response_bytes: None,
            user: UserTimes::default(),
            wire: WireTimes::default(),
            timeline: Vec::new(),
            verdict: None,
            phases: Phases::default(),
            client: None,
            middlebox: None,
            drops: Drops::default(),
            response: None,
        }
    }
}
/// Loss counters: every way an event or a flow can go missing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Drops {
    /// Events lost because the ring buffer was full.
    pub ringbuf_full: u64,
    /// Connections not followed because the flow table was full.
    pub flow_insert_failed: u64,
    /// Tracked connections whose kernel state was evicted from the LRU table.
    pub flows_evicted: u64,
    /// IP fragments the classifiers could not read a TCP header from (not
    /// necessarily ours; informational, not counted as loss).
    pub fragments_skipped: u64,
    /// Ring buffer records user space could not decode.
    pub undecodable: u64,
}

impl Drops {
    pub(crate) fn total(&self) -> u64 {
        self.ringbuf_full + self.flow_insert_failed + self.flows_evicted + self.undecodable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_print_as_curl_prints_them() {
        let seen = |version, reason: &str| ResponseSeen {
            version,
            reason: reason.into(),
            headers: vec![("server".into(), "nginx".into())],
            header_bytes: 0,
            body_bytes: 0,
        };
        assert_eq!(
            seen("1.1", "OK").head_text(200),
            "HTTP/1.1 200 OK\r\nserver: nginx\r\n\r\n"
        );
        assert_eq!(
            seen("1.0", "").head_text(204),
            "HTTP/1.0 204\r\nserver: nginx\r\n\r\n"
        );
        // HTTP/2 has no reason phrase; curl leaves the space before it.
        assert_eq!(
            seen("2", "").head_text(200),
            "HTTP/2 200 \r\nserver: nginx\r\n\r\n"
        );
    }

    #[test]
    fn error_kinds_serialise_to_the_documented_strings() {
        let all = [
            (ErrorKind::InvalidUrl, "invalid_url"),
            (ErrorKind::UnsupportedScheme, "unsupported_scheme"),
            (ErrorKind::Dns, "dns"),
            (ErrorKind::ConnectRefused, "connect_refused"),
            (ErrorKind::Connect, "connect"),
            (ErrorKind::Timeout, "timeout"),
            (ErrorKind::Tls, "tls"),
            (ErrorKind::Http, "http"),
            (ErrorKind::Io, "io"),
            (ErrorKind::Kernel, "kernel"),
            (ErrorKind::NoResponse, "no_response"),
            (ErrorKind::ProxyDns, "proxy_dns"),
            (ErrorKind::ProxyRefused, "proxy_refused"),
            (ErrorKind::ProxyConnect, "proxy_connect"),
            (ErrorKind::ProxyTunnel, "proxy_tunnel"),
            (ErrorKind::ProxyAuth, "proxy_auth"),
        ];
        let doc = include_str!("../../../docs/json.md");
        for (k, s) in all {
            let json = serde_json::to_string(&ErrorInfo::new(k, "m")).unwrap();
            assert_eq!(json, format!(r#"{{"kind":"{s}","message":"m"}}"#));
            assert_eq!(k.as_str(), s);
            assert_eq!(k.to_string(), s);
            assert!(
                doc.contains(&format!("`{s}`")),
                "docs/json.md does not list {s}"
            );
        }
    }
}
