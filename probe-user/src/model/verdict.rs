//! Where timelines become a verdict: which explanation of the path fits
//! every interval the request measured, and where its time went (network,
//! middlebox, server, local stack).
//!
//! The verdict is a comparison of explanations, not a list of rules that
//! fire on one clue. Each candidate predicts the intervals (docs/verdict.md
//! has the derivations; H handshake RTT, P our TLS Finished to the TLS
//! endpoint's immediate reply, T ClientHello to ServerHello, F1/F2 the TTFB
//! of the first and a repeated request on one connection, R1 the RTT to the
//! TCP endpoint, R2 its RTT to the origin, S think time, c crypto time):
//!
//! | candidate               | P           | T                  | F (first)         |
//! |-------------------------|-------------|--------------------|-------------------|
//! | direct                  | R1          | R1 + c             | R1 + S            |
//! | TCP relay (TLS through) | R1 + R2     | R1 + 2 R2 + c      | R1 + R2 + S (TLS), R1 + 2 R2 + S (HTTP) |
//! | TLS-terminating proxy   | R1          | R1 + 2 R2 + c      | R1 + R2 + S       |
//! | HTTP proxy (plain HTTP) | -           | -                  | R1 + 2 R2 + S     |
//!
//! A candidate fits when every measurement falls inside what it predicts,
//! within the measured noise. Clues that timing cannot check (the SYN-ACK's
//! TTL, TTL-limited SYNs, a Via header) are weighed: each alone is a hint;
//! the verdict is `unknown`, naming the candidates and what would settle
//! it, whenever the evidence cannot separate them.
//!
//! Samples are robust: the RTT the phases use is the smallest clean sample
//! (a handshake no retransmission made ambiguous, the ACK of our request);
//! a sample shorter than that RTT cannot be a round trip and is discarded
//! and named; a phase that would come out negative means the chosen model
//! does not fit, and the verdict says so instead of clamping it.

use serde::Serialize;

/// The CPU this process did not get while a request ran, ms (JSON
/// `client`); null where the host does not expose the counter.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct ClientStall {
    /// Time synack's threads waited for a CPU while runnable (schedstat).
    pub run_delay_ms: Option<f64>,
    /// Time synack's cgroup was held back by its CPU quota (cpu.stat).
    pub throttled_ms: Option<f64>,
    /// Quota periods in which it was throttled.
    pub throttled_periods: Option<u64>,
    /// Time the hypervisor ran something else on this machine's vCPUs
    /// (/proc/stat steal, all CPUs summed; 10 ms resolution).
    pub steal_ms: Option<f64>,
}

/// What one request contributes, taken from its record.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Facts {
    /// Position on its connection (0 = the one that paid for the handshake).
    pub index: u32,
    /// Asks for the same thing as the connection's first request (always so
    /// in the active probe's --reuse), so their TTFBs may be compared.
    pub repeats_first: bool,
    /// Timed with the socket's own timestamps (no eBPF): no TTL evidence.
    pub unprivileged: bool,
    pub tls: bool,
    /// SYN -> SYN-ACK of the answered SYN, ms.
    pub handshake: Option<f64>,
    /// No retransmission makes the handshake ambiguous (Karn's rule): no
    /// SYN was sent again, or the SYN-ACK's TSecr names the SYN it answers.
    pub handshake_clean: bool,
    /// SYN-ACK TTL, the initial TTL it implies, and the hops.
    pub ttl: Option<u8>,
    pub initial_ttl: Option<u8>,
    pub hops: Option<u8>,
    /// ClientHello -> first server bytes, ms.
    pub tls_rtt: Option<f64>,
    /// Finished -> the TLS endpoint's immediate answer, ms (clean by construction).
    pub tls_round2: Option<f64>,
    /// HTTP/2: our PING -> its ACK, ms: a round trip to whoever speaks
    /// HTTP/2 to us, the TLS endpoint (an HTTP/2 proxy terminates TLS).
    pub h2_ping: Option<f64>,
    /// TLS 1.2 was negotiated: the client waits a second round trip for
    /// the server's Finished before its request.
    pub tls12: bool,
    /// Request out -> the ACK covering it, ms: a round trip to the TCP
    /// endpoint (an upper bound: the ACK may wait or ride on the response).
    pub data_rtt: Option<f64>,
    /// ClientHello out -> the first ACK covering it, ms.
    pub client_hello_acked: Option<f64>,
    /// Request out -> response in, ms.
    pub ttfb: Option<f64>,
    /// The request's first bytes were sent again this long after the first
    /// transmission, before the response came, ms.
    pub request_resent: Option<f64>,
    /// Segments were sent again during the request, but where is unknown
    /// (unprivileged mode counts them, TCP_INFO, without placing them).
    pub resent_unplaced: bool,
    /// Retransmissions during this request (payload, both directions).
    pub retransmits: u32,
    /// Wire span (first SYN or request -> response), ms.
    pub span: Option<f64>,
    /// Inside the wire span, the time the next move was ours, ms.
    pub client_turns: Option<f64>,
    /// The CPU this process did not get while the request ran.
    pub stall: Option<ClientStall>,
    /// The same span in user space (connect() or request start -> first byte read), ms.
    pub user_span: Option<f64>,
    /// The destination is reached without a gateway (routing table).
    pub on_link: Option<bool>,
    /// Smallest SYN TTL that got a SYN-ACK (--path-probe).
    pub probe_ttl: Option<u8>,
    /// The response's Via header, if any.
    pub via: Option<String>,
    /// The origin's own time on this request, as its Server-Timing header
    /// said (the first metric's `dur`), ms.
    pub server_timing: Option<f64>,
    /// Who issued the server's certificate (TLS), for the reasons.
    pub cert_issuer: Option<String>,
    pub remote: String,
    /// The request went through a proxy it was told to use (-x, or the
    /// environment): no guess about the path is needed.
    pub proxy: Option<DeclaredProxy>,
}

/// A proxy the request was told to use.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct DeclaredProxy {
    /// `http://host:port`.
    pub url: String,
    /// HTTPS through a CONNECT tunnel (else plain HTTP in absolute form).
    pub tunnel: bool,
    /// CONNECT out -> the first segment of its answer in, ms (wire).
    pub connect_answer: Option<f64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PathKind {
    Direct,
    Middlebox,
    /// A proxy the request was told to use (-x, or the environment).
    Proxy,
    #[default]
    Unknown,
}

/// The explanations the verdict compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Explanation {
    /// TCP, TLS and HTTP end at the origin.
    Direct,
    /// A TCP-terminating relay (haproxy mode tcp, socat, a platform's
    /// egress sidecar) that passes TLS through to the origin.
    TcpRelay,
    /// A proxy that terminates TLS with its own certificate (mitmproxy,
    /// squid ssl-bump, corporate TLS inspection) and connects on.
    TlsTerminatingProxy,
    /// A proxy that reads plain HTTP requests (squid intercept).
    HttpProxy,
}

impl Explanation {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Explanation::Direct => "direct",
            Explanation::TcpRelay => "a TCP relay",
            Explanation::TlsTerminatingProxy => "a TLS-terminating proxy",
            Explanation::HttpProxy => "an HTTP proxy",
        }
    }
}

/// How one explanation fares against the request's measurements.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Candidate {
    pub name: Explanation,
    /// Every measurement falls inside what it predicts, within noise.
    pub fits: bool,
    /// How far the measurements fall outside its predictions beyond noise,
    /// summed, ms (0 when it fits).
    pub residual_ms: f64,
    /// The measurements it fails, with numbers.
    pub fails: Vec<String>,
    /// The middlebox-to-origin RTT it implies, ms (null: direct, or not
    /// determined by the measurements).
    pub origin_rtt_ms: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct Verdict {
    pub path: PathKind,
    /// The candidate that explains every measurement; null when none or
    /// several do (`path` is then `unknown`).
    pub explanation: Option<Explanation>,
    /// Sentences with the numbers behind the verdict, strongest first.
    pub reasons: Vec<String>,
    /// Each explanation's fit.
    pub candidates: Vec<Candidate>,
    /// Null when the verdict rests on this request's own measurements;
    /// otherwise the `request_index` on the same connection whose
    /// measurements (handshake, TLS) it rests on.
    pub evidence_from: Option<u32>,
    /// The phase that holds most of this request's time (null when the
    /// phases are unknown).
    pub bottleneck: Option<Bottleneck>,
    /// One sentence on where the time went, with numbers.
    pub summary: Option<String>,
}

impl Verdict {
    /// A verdict with only a path and its reasons (tests).
    #[cfg(test)]
    pub(crate) fn new(path: PathKind, reasons: Vec<String>) -> Self {
        Verdict {
            path,
            reasons,
            ..Default::default()
        }
    }
}

/// Where the time of the request went, ms. network + middlebox + server +
/// client add up to the user-space span (connect() or the request's start
/// to the first byte read); in `synack watch`, which has no user-space
/// marks, to the wire span.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct Phases {
    /// In flight, or waiting on the other side for a round trip.
    pub network_ms: Option<f64>,
    pub middlebox_ms: Option<f64>,
    pub server_ms: Option<f64>,
    /// The next move was ours: from an incoming segment to our next
    /// outgoing one that answers it, and from data's arrival in the kernel
    /// to the read that returned it (local_stack_ms is part of it).
    pub client_ms: Option<f64>,
    /// User-space span minus wire span (as before client_ms existed): the
    /// part of client_ms outside the wire span (connect() to the SYN, the
    /// response's arrival to its read). `synack watch`: the client's turns.
    pub local_stack_ms: Option<f64>,
}

/// The phase that holds most of the request's time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Bottleneck {
    Network,
    Middlebox,
    Server,
    Client,
}

impl Bottleneck {
    /// The name, as in JSON and metric labels.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Bottleneck::Network => "network",
            Bottleneck::Middlebox => "middlebox",
            Bottleneck::Server => "server",
            Bottleneck::Client => "client",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct Middlebox {
    /// RTT to the TCP endpoint that answered our SYN, ms.
    pub near_rtt_ms: Option<f64>,
    /// Estimated RTT from it to the origin, ms.
    pub origin_rtt_ms: Option<f64>,
    /// Hops to it, from the SYN-ACK's TTL.
    pub hops: Option<u8>,
    /// How origin_rtt_ms was found.
    pub origin_rtt_from: Option<&'static str>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Analysis {
    pub verdict: Verdict,
    pub phases: Phases,
    pub middlebox: Option<Middlebox>,
}

/// The smallest excess over `base` that is not measurement noise: 1 ms or a
/// quarter of the base, whichever is larger (jitter grows with path length).
pub(crate) fn significant(base: f64) -> f64 {
    (0.25 * base).max(1.0)
}

/// How much shorter than the path's RTT a sample may come out from timing
/// noise alone (timestamps at different points of the stack, jitter) before
/// it is called impossible.
fn slack(base: f64) -> f64 {
    (0.1 * base).max(0.5)
}

/// What a server's own work may add to T beyond a round trip on a direct
/// path (its signature: RSA-4096 takes ~10 ms on a busy core).
fn crypto_allowance(r: f64) -> f64 {
    (2.0 * significant(r)).max(10.0).max(r)
}

/// The largest extra wait of a connection's first request that a server's
/// own per-connection cost (a thread or process started per connection, a
/// session set up, a queue at accept under load) is taken to explain. A
/// first-vs-later difference alone must exceed it to count as a relay's
/// upstream connect; with a second, independent clue the noise threshold
/// applies. docs/verdict.md says why this number.
pub(crate) const PER_CONNECTION_COST_MS: f64 = 5.0;

use crate::model::units::ms_text as r;

fn min_opt(v: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    v.into_iter().flatten().min_by(f64::total_cmp)
}

/// The connection's samples after the robustness checks.
#[derive(Clone, Debug, Default)]
struct Samples {
    /// The first request's TTFB on the wire (request out to response in).
    f: Option<f64>,
    /// Smallest clean round trip to the TCP endpoint (handshake, ACK of a request).
    r1: Option<f64>,
    /// Where r1 came from.
    r1_from: &'static str,
    /// The TLS endpoint's immediate reply to our Finished (or to our
    /// HTTP/2 PING, the smaller), when possible.
    p: Option<f64>,
    /// Which of the two `p` is: "tls_round2" or "h2_ping".
    p_from: &'static str,
    /// ClientHello -> ServerHello, when clean and possible.
    t: Option<f64>,
    /// First request's TTFB and the smallest repeat's (request index).
    reuse: Option<(f64, f64, u32)>,
    /// The largest repeat's TTFB minus the smallest's.
    reuse_spread: f64,
    /// Samples discarded, and samples that are not round trips, named.
    notes: Vec<String>,
}

fn samples(conn: &[Facts], first: Option<&Facts>) -> Samples {
    let mut s = Samples::default();
    let tls = first.is_some_and(|f| f.tls);
    let raw = RawSamples::gather(conn, first, tls, &mut s.notes);
    (s.r1, s.r1_from) = raw.path_rtt();
    s.p_from = raw.p_from;
    s.note_first_contact_wait(raw.h);
    let Some(f) = first else {
        return s;
    };
    if tls && f.proxy.as_ref().is_some_and(|p| p.tunnel) {
        // Through a declared tunnel TLS ends at the origin, beyond the
        // proxy: its round trips are the way there, not samples of the
        // path's RTT to test.
        s.t = raw.t;
    } else if tls {
        s.keep_possible(raw.p, raw.t);
        s.set_aside_late_finished_reply();
    }
    s.first_and_repeats(conn, f, tls);
    s
}

/// Every round-trip sample of the connection, before the path's RTT is
/// known to hold them against.
struct RawSamples {
    /// The handshake, unless Karn's rule makes it ambiguous.
    h: Option<f64>,
    /// The smallest ACK of a request that was not sent again.
    d: Option<f64>,
    /// ClientHello out -> the first ACK covering it.
    ch_ack: Option<f64>,
    /// ClientHello -> ServerHello, unless it may have waited for a retransmission.
    t: Option<f64>,
    /// The TLS endpoint's immediate reply to our Finished, or to our
    /// HTTP/2 PING (the smaller).
    p: Option<f64>,
    p_from: &'static str,
    /// Through a declared proxy's tunnel: TLS ends at the origin, so its
    /// round trips are no samples of the RTT to the TCP endpoint.
    tunnel: bool,
}

impl RawSamples {
    /// Takes each sample that can be a round trip, naming the ones set aside.
    fn gather(conn: &[Facts], first: Option<&Facts>, tls: bool, notes: &mut Vec<String>) -> Self {
        let h = clean_handshake(first, notes);
        // The ACK of a request that was not sent again.
        let d = min_opt(
            conn.iter()
                .filter(|f| f.request_resent.is_none())
                .map(|f| f.data_rtt),
        );
        let ch_ack = first.and_then(|f| f.client_hello_acked);
        // ServerHello: unusable when it may have waited for a retransmission
        // (late, and our ClientHello was not acknowledged before it came).
        let h_est = h.or(d);
        let t = first
            .filter(|_| tls)
            .and_then(|f| server_hello(f, h_est, ch_ack, notes));
        // HTTP/2's PING is answered by the TLS endpoint too, at once and
        // with no crypto: the smaller of the two.
        let (p, p_from) = match first.filter(|_| tls).map(|f| (f.tls_round2, f.h2_ping)) {
            Some((Some(a), Some(b))) if b < a => (Some(b), "h2_ping"),
            Some((None, Some(b))) => (Some(b), "h2_ping"),
            Some((a, _)) => (a, "tls_round2"),
            None => (None, "tls_round2"),
        };
        let tunnel = first
            .and_then(|f| f.proxy.as_ref())
            .is_some_and(|p| p.tunnel);
        RawSamples {
            h,
            d,
            ch_ack,
            t,
            p,
            p_from,
            tunnel,
        }
    }

    /// The path's RTT and where it came from: the smallest sample another
    /// agrees with, a clean handshake preferred within the noise of it.
    fn path_rtt(&self) -> (Option<f64>, &'static str) {
        let RawSamples {
            h,
            d,
            ch_ack,
            t,
            p,
            tunnel,
            ..
        } = *self;
        let (t, p) = if tunnel { (None, None) } else { (t, p) };
        // Every sample is an upper bound of the round trip to the TCP endpoint;
        // a mismatched one can come out too short. The path's RTT is the
        // smallest sample another sample agrees with; lacking agreement, the
        // smallest of all.
        // The ClientHello's ACK riding on the ServerHello is the same packet:
        // no second opinion.
        let ch_ack_own = ch_ack.filter(|a| t.is_none_or(|t| *a < t - 0.1));
        let mut all: Vec<(f64, &'static str)> = [
            (h, "the handshake"),
            (d, "the ACK of our request"),
            (ch_ack_own, "the ACK of our ClientHello"),
            (t, "the ServerHello"),
            (p, "the reply to our Finished"),
        ]
        .into_iter()
        .filter_map(|(v, n)| v.filter(|v| *v > 0.0).map(|v| (v, n)))
        .collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        let agreed = all.iter().enumerate().find(|(i, (v, _))| {
            all.iter()
                .enumerate()
                .any(|(j, (w, _))| j != *i && (w - v).abs() <= slack(*v))
        });
        // Without agreement, the smallest of all: every sample is an upper
        // bound once its pairing is right (the first contact's inflate, they
        // never shrink).
        let (r1, from) = match (agreed, all.first()) {
            (Some((_, &(v, n))), _) => (Some(v), n),
            (None, Some(&(v, n))) => (Some(v), n),
            (None, None) => (None, "the handshake"),
        };
        // A clean handshake within the noise of that is the RTT people know
        // and compare (and what the lab's tests were calibrated on): use it.
        match (h, r1) {
            // (the handshake's own extra: the SYN's path through connection
            // tracking and the peer's SYN queue, a few tenths of a ms)
            (Some(h), Some(v)) if h >= v && h - v <= (0.01 * v).max(0.5) => {
                (Some(h), "the handshake")
            }
            _ => (r1, from),
        }
    }
}

/// The first request's handshake as a round trip, unless a SYN sent again
/// makes it ambiguous (Karn's rule), which is named.
fn clean_handshake(first: Option<&Facts>, notes: &mut Vec<String>) -> Option<f64> {
    let h = first.and_then(|f| f.handshake.filter(|_| f.handshake_clean));
    if let Some(f) = first
        && f.handshake.is_some()
        && !f.handshake_clean
    {
        notes.push(
            "the SYN was sent again and the SYN-ACK does not say which SYN it answers \
             (Karn's rule): the handshake is not used as a round trip"
                .into(),
        );
    }
    h
}

/// ClientHello -> ServerHello, set aside (and named) when it looks like a
/// lost segment sent again rather than the TLS endpoint's answer.
fn server_hello(
    f: &Facts,
    h_est: Option<f64>,
    ch_ack: Option<f64>,
    notes: &mut Vec<String>,
) -> Option<f64> {
    let t = f.tls_rtt.filter(|_| f.retransmits == 0)?;
    // Late beyond any crypto, with our ClientHello acknowledged only
    // by the ServerHello itself: a lost segment sent again (a tail
    // loss probe after two round trips, or a timeout) looks like that;
    // a proxy holding its ServerHello acknowledges at once.
    let late = h_est.is_none_or(|r| t - r > crypto_allowance(r));
    let suspect = late && ch_ack.is_none_or(|a| a >= t - 0.1);
    if suspect {
        notes.push(format!(
            "the ServerHello came {} after the ClientHello, which was acknowledged only with \
             it: a lost segment sent again looks like that, so it is not used",
            r(t)
        ));
        None
    } else {
        Some(t)
    }
}

/// A sample shorter than the path's RTT allows is no round trip: false, and
/// named, when `v` is one.
fn possible(r1: Option<f64>, what: &str, v: f64, notes: &mut Vec<String>) -> bool {
    match r1 {
        Some(r1) if v < r1 - slack(r1) => {
            notes.push(format!(
                "{what} came out {} although no round trip on this path is shorter than {}: \
                 a mismatched sample, discarded",
                r(v),
                r(r1)
            ));
            false
        }
        _ => true,
    }
}

impl Samples {
    /// Names a handshake that waited beyond the path's round trip: the first
    /// contact's extra wait, counted as network time.
    fn note_first_contact_wait(&mut self, h: Option<f64>) {
        if let (Some(h), Some(r1)) = (h, self.r1)
            && h - r1 > significant(r1)
        {
            self.notes.push(format!(
                "the handshake took {}, {} more than the path's round trip ({}, from {}): the \
                 first contact waited (a new connection's way through connection tracking, NAT or a \
                 SYN queue, or neighbour discovery); it counts as network time",
                r(h),
                r(h - r1),
                r(r1),
                self.r1_from
            ));
        }
    }

    /// Keeps the TLS samples no shorter than the path's RTT allows.
    fn keep_possible(&mut self, p: Option<f64>, t: Option<f64>) {
        let r1 = self.r1;
        self.p = p.filter(|&p| possible(r1, "the reply to our TLS Finished", p, &mut self.notes));
        self.t = t.filter(|&t| possible(r1, "ClientHello -> ServerHello", t, &mut self.notes));
    }

    /// Sets aside a late reply to our Finished that the ServerHello shows to
    /// be the endpoint's own wait, not a round trip farther away.
    fn set_aside_late_finished_reply(&mut self) {
        // A reply to our Finished later than the TCP round trip says TLS
        // ends farther away only if something could be there: a relay
        // P - R1 from its origin sends the ServerHello no sooner than two
        // such round trips after the ClientHello (fit_relay), a TLS proxy
        // answers our Finished itself. A ServerHello sooner than that
        // bounds the distance better (samples only come late), so the
        // extra wait is the endpoint's own (a session ticket made late on
        // a busy host), not a round trip.
        if let (Some(p), Some(t), Some(r1)) = (self.p, self.t, self.r1) {
            let extra = p - r1;
            if extra > significant(r1) && t - r1 < 2.0 * extra - slack(extra.max(r1)) {
                self.notes.push(format!(
                    "the reply to our Finished came {} after a round trip, but the ServerHello \
                     only {} after one, sooner than anything that far beyond the TCP endpoint \
                     could send it: the TLS endpoint spent that time itself (a session ticket \
                     made late), so the reply is not used as a round trip",
                    r(extra),
                    r(t - r1)
                ));
                self.p = None;
            }
        }
    }

    /// The first request's TTFB, and (plain HTTP) how it compares with the
    /// repeats' on the same connection.
    fn first_and_repeats(&mut self, conn: &[Facts], f: &Facts, tls: bool) {
        // Inflated by a retransmission only ever; what it bounds from below
        // (an upstream crossing) holds all the more.
        self.f = Some(f).filter(|f| f.index == 0).and_then(|f| f.ttfb);
        let f1 = Some(f)
            .filter(|f| f.retransmits == 0 && f.index == 0)
            .and_then(|f| f.ttfb);
        let repeats: Vec<(f64, u32)> = conn
            .iter()
            .filter(|x| x.index > 0 && x.repeats_first && x.retransmits == 0)
            .filter_map(|x| x.ttfb.map(|t| (t, x.index)))
            .collect();
        let f2 = repeats.iter().copied().min_by(|a, b| a.0.total_cmp(&b.0));
        if let (Some(f1), Some((f2, i)), false) = (f1, f2, tls) {
            self.reuse = Some((f1, f2, i));
            // Repeats that waited differently among themselves show how much
            // a TTFB varies on this connection without any upstream connect.
            self.reuse_spread = repeats
                .iter()
                .map(|x| x.0)
                .max_by(f64::total_cmp)
                .map(|m| m - f2)
                .unwrap_or(0.0);
        }
    }
}

/// Clues that timing cannot check.
#[derive(Debug, Default)]
struct Clues {
    /// The TCP endpoint looks like the first hop (TTL untouched for an
    /// off-link destination, or a TTL-1 SYN answered): the same family of
    /// evidence, fooled alike by routers that keep the TTL.
    hop: Option<String>,
    /// The TCP endpoint is beyond the first hop.
    far: Option<String>,
    via: Option<String>,
}

fn clues(first: Option<&Facts>) -> Clues {
    let mut c = Clues::default();
    let Some(f) = first else {
        return c;
    };
    match (f.on_link, f.hops, f.ttl, f.initial_ttl) {
        (Some(false), Some(0), Some(ttl), Some(init)) => {
            c.hop = Some(format!(
                "the SYN-ACK came with TTL {ttl}, untouched from {init}, although {} is reached \
                 through a gateway: the gateway or this host answered the SYN, or a router on \
                 the path keeps the TTL",
                f.remote
            ));
        }
        (_, Some(hops), Some(ttl), Some(init)) if hops > 0 => {
            c.far = Some(format!(
                "the SYN-ACK crossed {hops} hop{} (TTL {ttl} from {init})",
                if hops == 1 { "" } else { "s" }
            ));
        }
        _ => {}
    }
    if let (Some(k), Some(false)) = (f.probe_ttl, f.on_link) {
        if k <= 1 {
            let probe = format!(
                "a SYN sent with TTL {k}, which dies at the first router, was answered: the \
                 first hop terminates TCP for {}, or it keeps the TTL",
                f.remote
            );
            c.hop = Some(match c.hop.take() {
                Some(ttl) => format!("{ttl}; {probe}"),
                None => probe,
            });
        } else {
            c.far = Some(format!(
                "the TCP endpoint is {k} hops away (TTL-limited SYNs)"
            ));
        }
    }
    c.via = f.via.clone();
    c
}

/// One candidate under test: its failures and the R2 it implies.
struct Fit {
    name: Explanation,
    fails: Vec<(String, f64)>,
    r2: Option<(f64, &'static str)>,
    /// It explains the measurements only with R2 near zero: nothing a
    /// direct path does not explain already.
    degenerate: bool,
}

impl Fit {
    fn new(name: Explanation) -> Self {
        Fit {
            name,
            fails: Vec::new(),
            r2: None,
            degenerate: false,
        }
    }
    fn fail(&mut self, why: String, by: f64) {
        self.fails.push((why, by.max(0.0)));
    }
    fn fits(&self) -> bool {
        self.fails.is_empty()
    }
    fn candidate(&self) -> Candidate {
        Candidate {
            name: self.name,
            fits: self.fits(),
            residual_ms: self.fails.iter().map(|x| x.1).sum(),
            fails: self.fails.iter().map(|x| x.0.clone()).collect(),
            origin_rtt_ms: self.r2.map(|x| x.0),
        }
    }
}

fn fit_direct(s: &Samples, tls: bool, reuse_threshold: f64) -> Fit {
    let mut d = Fit::new(Explanation::Direct);
    let Some(r1) = s.r1 else {
        return d;
    };
    if tls {
        if let Some(p) = s.p
            && p - r1 > significant(r1)
        {
            d.fail(
                format!(
                    "the TLS endpoint's immediate reply to our Finished took {}, {} more than a \
                     round trip to the TCP endpoint ({}): TLS ends farther away than TCP",
                    r(p),
                    r(p - r1),
                    r(r1)
                ),
                p - r1 - significant(r1),
            );
        }
        if let Some(t) = s.t
            && t - r1 > crypto_allowance(r1)
        {
            d.fail(
                format!(
                    "the ServerHello came {} after the ClientHello, {} more than a round trip \
                     ({}): more than a server's crypto takes",
                    r(t),
                    r(t - r1),
                    r(r1)
                ),
                t - r1 - crypto_allowance(r1),
            );
        }
    } else if let Some((f1, f2, _)) = s.reuse
        && f1 - f2 > reuse_threshold
        // Only a difference a relay could make counts against a direct
        // path: its upstream round trip is part of every repeat too
        // (F2 >= R1 + R2). A larger one is the server's own first-request
        // cost, whatever its size.
        && f1 - f2 <= f2 - r1 + slack(f2)
    {
        d.fail(
            format!(
                "the first request on the connection waited {} for its first byte, a repeat {}: \
                 {} more, beyond noise and a server's own per-connection cost",
                r(f1),
                r(f2),
                r(f1 - f2)
            ),
            f1 - f2 - reuse_threshold,
        );
    }
    d
}

/// A TCP relay that passes TLS through, or (plain HTTP) any proxy that
/// terminates TCP and connects upstream once we connected.
fn fit_relay(s: &Samples, tls: bool, name: Explanation) -> Fit {
    let mut c = Fit::new(name);
    let Some(r1) = s.r1 else {
        return c;
    };
    if tls {
        fit_relay_tls(&mut c, s, r1);
        check_response_crosses(&mut c, s, r1);
    } else if let Some((f1, f2, _)) = s.reuse {
        fit_relay_reuse(&mut c, r1, f1, f2);
    }
    c
}

/// A relay passing TLS through: its origin RTT from the reply to our
/// Finished (the ServerHello then checked against it) or else from the
/// ServerHello.
fn fit_relay_tls(c: &mut Fit, s: &Samples, r1: f64) {
    match (s.p, s.t) {
        (Some(p), t) => {
            let r2 = p - r1;
            c.r2 = Some((r2, s.p_from));
            if r2 <= significant(r1) {
                c.degenerate = true;
            }
            if let Some(t) = t {
                check_relay_server_hello(c, t, r1, r2);
            }
        }
        (None, Some(t)) => {
            // T = R1 + 2 R2 + c: half the excess, crypto included.
            let r2 = (t - r1) / 2.0;
            c.r2 = Some((r2, "tls_rtt"));
            if t - r1 <= crypto_allowance(r1) {
                c.degenerate = true;
            }
        }
        (None, None) => {}
    }
}

/// The ServerHello of a relay `r2` from its origin: no later than its
/// upstream round trips and crypto explain, no sooner than they allow.
fn check_relay_server_hello(c: &mut Fit, t: f64, r1: f64, r2: f64) {
    if t - r1 - 2.0 * r2 > crypto_allowance(r1) {
        c.fail(
            format!(
                "the ServerHello came {} after the ClientHello, {} more than the \
                 relay's upstream round trips ({} each) and crypto explain",
                r(t),
                r(t - r1 - 2.0 * r2),
                r(r2)
            ),
            t - r1 - 2.0 * r2 - crypto_allowance(r1),
        );
    }
    // The relay connects upstream once it has accepted us, and
    // our ClientHello follows at once: it reaches the origin one
    // upstream round trip later, the ServerHello comes back after
    // another (a relay that connected before answering our SYN
    // would show R2 in the handshake instead).
    if t - r1 < 2.0 * r2 - slack(r2.max(r1)) {
        c.fail(
            format!(
                "the ServerHello came {} after the ClientHello, sooner than the \
                 relay's upstream connect and the origin's hello ({} each) allow",
                r(t),
                r(r2)
            ),
            2.0 * r2 - (t - r1) - slack(r2.max(r1)),
        );
    }
}

/// A plain-HTTP relay: its origin RTT is what the first request waited
/// beyond a repeat, which the repeat itself must have room for.
fn fit_relay_reuse(c: &mut Fit, r1: f64, f1: f64, f2: f64) {
    let r2 = f1 - f2;
    c.r2 = Some((r2, "reuse"));
    if r2 <= significant(r1) {
        c.degenerate = true;
    }
    // A repeat crosses the upstream once: F2 = R1 + R2 + S >= R1 + R2.
    if r2 > f2 - r1 + slack(f2) {
        c.fail(
            format!(
                "the first request waited {} more than a repeat, but the repeat came only \
                 {} after a round trip: a relay's upstream round trip cannot be longer than \
                 that",
                r(r2),
                r(f2 - r1)
            ),
            r2 - (f2 - r1) - slack(f2),
        );
    }
}

/// A middlebox R2 from its origin passes our request upstream and the
/// response back: the first byte cannot come sooner than R1 + R2 after the
/// request, whatever the origin's own time.
fn check_response_crosses(c: &mut Fit, s: &Samples, r1: f64) {
    if let (Some((r2, _)), Some(f)) = (c.r2, s.f)
        && !c.degenerate
        && f - r1 < r2 - slack(r2.max(r1))
    {
        c.fail(
            format!(
                "the first byte came {} after the request, sooner than the round trip and the \
                 upstream round trip ({}) it would have to cross",
                r(f),
                r(r2)
            ),
            r2 - (f - r1) - slack(r2.max(r1)),
        );
    }
}

fn fit_tls_proxy(s: &Samples) -> Fit {
    let mut c = Fit::new(Explanation::TlsTerminatingProxy);
    let Some(r1) = s.r1 else {
        return c;
    };
    if let Some(p) = s.p
        && p - r1 > significant(r1)
    {
        c.fail(
            format!(
                "the reply to our Finished took {} against a {} round trip to the TCP endpoint: \
                 whatever terminates TLS is farther away than TCP, so TLS is not terminated \
                 where TCP is",
                r(p),
                r(r1)
            ),
            p - r1 - significant(r1),
        );
    }
    match s.t {
        Some(t) => {
            // It holds its ServerHello while it connects upstream and
            // shakes hands with the origin: T = R1 + 2 R2 + c.
            let r2 = (t - r1) / 2.0;
            c.r2 = Some((r2, "tls_rtt"));
            if t - r1 <= crypto_allowance(r1) {
                c.degenerate = true;
            }
        }
        None => c.degenerate = true,
    }
    check_response_crosses(&mut c, s, r1);
    c
}

/// What an endpoint's own processing may add to a reply it makes at once
/// (mitmproxy, Python, answered our Finished 1-3 ms past the near round
/// trip in the lab), beyond the noise: the slack of a near fit.
const ENDPOINT_PROCESSING_MS: f64 = 3.0;

/// When no explanation fits, the one that comes within a little of it
/// while every other misses by far more (at least twice as much, and by two
/// noise bars more): a proxy's own processing adds a millisecond or two to
/// the reply it makes itself, which no explanation predicts.
fn near_fit(fits: &[Fit], r1: Option<f64>) -> Option<&Fit> {
    let r1 = r1?;
    let miss = |f: &Fit| f.fails.iter().map(|x| x.1).sum::<f64>();
    // A middlebox whose upstream comes out near zero explains nothing a
    // direct path does not: it neither competes nor stands in the way.
    let real = |f: &&Fit| f.name == Explanation::Direct || (!f.degenerate && f.r2.is_some());
    let best = fits
        .iter()
        .filter(real)
        .min_by(|a, b| miss(a).total_cmp(&miss(b)))?;
    let m = miss(best);
    let others_far = fits
        .iter()
        .filter(real)
        .filter(|f| f.name != best.name)
        .all(|f| !f.fits() && miss(f) >= (2.0 * m).max(m + 2.0 * significant(r1)));
    (m <= significant(r1) + ENDPOINT_PROCESSING_MS && others_far).then_some(best)
}

/// Each explanation held against the samples: direct first.
fn candidates(s: &Samples, tls: bool, c: &Clues, reuse_threshold: f64) -> Vec<Fit> {
    let mut fits = vec![fit_direct(s, tls, reuse_threshold)];
    if tls {
        fits.push(fit_relay(s, true, Explanation::TcpRelay));
        fits.push(fit_tls_proxy(s));
    } else {
        let name = if c.via.is_some() {
            Explanation::HttpProxy
        } else {
            Explanation::TcpRelay
        };
        let mut relay = fit_relay(s, false, name);
        // Below the bar a timing difference is no evidence of a relay.
        if let Some((f1, f2, _)) = s.reuse
            && f1 - f2 <= reuse_threshold
        {
            relay.degenerate = true;
        }
        fits.push(relay);
    }
    fits
}

/// Analyses the requests of one connection together (a second request on a
/// connection tells about the first).
pub(crate) fn analyze(conn: &[Facts]) -> Vec<Analysis> {
    let (connection, decision) = decide(conn);
    conn.iter()
        .map(|f| connection.request(&decision, f))
        .collect()
}

/// The analysis of `conn[which]` alone, decided on the whole connection as
/// `analyze` does: watch prints each request once, when it completes, and
/// the sentences of the others (the first and its repeats, kept as
/// evidence) would be written only to be dropped.
pub(crate) fn analyze_one(conn: &[Facts], which: usize) -> Option<Analysis> {
    let f = conn.get(which)?;
    let (connection, decision) = decide(conn);
    Some(connection.request(&decision, f))
}

/// The connection's path, explanation, reasons and origin RTT: what every
/// request's analysis shares.
fn decide(conn: &[Facts]) -> (Connection<'_>, Decision) {
    let mut connection = Connection::gather(conn);
    if let Some(p) = connection.any.and_then(|f| f.proxy.clone()) {
        let decision = connection.declared(&p);
        return (connection, decision);
    }
    connection.set_aside_unexplained_server_hello();
    let standing = Standing::of(&connection.fits);
    let mut words = Words::default();
    let (path, chosen) = connection.choose(&standing, &mut words);
    // Reasons: what decided, then what was checked.
    connection.explain_choice(path, chosen, &mut words);
    connection.general_limits(path, &mut words.limits);
    let r2 = connection.origin_rtt(path, chosen, &mut words.limits);
    let decision = Decision {
        path,
        explanation: explanation(path, chosen, &standing),
        candidates: connection.fits.iter().map(Fit::candidate).collect(),
        notes: connection.notes(path),
        words,
        r2,
    };
    (connection, decision)
}

/// The shared facts of one connection, which every step of its verdict reads.
struct Connection<'a> {
    conn: &'a [Facts],
    /// The request that paid for the handshake, if recorded.
    first: Option<&'a Facts>,
    /// The first request, or else any.
    any: Option<&'a Facts>,
    tls: bool,
    s: Samples,
    c: Clues,
    /// A round trip and a response were timed on the wire.
    have_wire: bool,
    /// The bar a first request's extra wait over a repeat must clear.
    reuse_threshold: f64,
    /// Each explanation held against the samples: direct first.
    fits: Vec<Fit>,
}

/// The bar a first request's extra wait over a repeat must clear to count as
/// a relay's upstream connect: the noise, and unless a second clue backs it,
/// a server's own per-connection cost.
fn reuse_threshold(s: &Samples, c: &Clues) -> f64 {
    // A second, independent clue lowers the bar for a timing difference.
    let second_clue = c.hop.is_some() || c.via.is_some();
    s.reuse.map_or(f64::INFINITY, |(_, f2, _)| {
        let noise = significant(s.r1.unwrap_or(f2)) + s.reuse_spread;
        if second_clue {
            noise
        } else {
            noise.max(significant(f2)).max(PER_CONNECTION_COST_MS)
        }
    })
}

/// How the candidates stand against the samples.
struct Standing<'f> {
    direct_fits: bool,
    /// Middlebox candidates that fit and explain something direct does not.
    strong: Vec<&'f Fit>,
    /// They fit, and no measurement bounds their upstream RTT (or only a
    /// difference too small to count): they rest on clues, not timing.
    weak: Vec<&'f Fit>,
}

impl<'f> Standing<'f> {
    /// Sorts the candidates (direct first) into those that fit on timing
    /// and those that fit only for lack of a measurement against them.
    fn of(fits: &'f [Fit]) -> Self {
        Standing {
            direct_fits: fits[0].fits(),
            strong: fits[1..]
                .iter()
                .filter(|f| f.fits() && !f.degenerate && f.r2.is_some())
                .collect(),
            weak: fits[1..]
                .iter()
                .filter(|f| f.fits() && (f.r2.is_none() || f.degenerate))
                .collect(),
        }
    }

    /// The strong candidates imply the same origin RTT, within noise.
    fn strong_agree(&self) -> bool {
        self.strong.windows(2).all(|w| match (w[0].r2, w[1].r2) {
            (Some(a), Some(b)) => (a.0 - b.0).abs() <= significant(a.0.max(b.0)),
            _ => false,
        })
    }

    /// The strong candidates, named for a sentence.
    fn strong_names(&self) -> String {
        self.strong
            .iter()
            .map(|f| f.name.describe())
            .collect::<Vec<_>>()
            .join(" and ")
    }
}

/// What the verdict says besides its path: what decided and was checked
/// (reasons), and what it cannot tell (limits, which come last).
#[derive(Default)]
struct Words {
    reasons: Vec<String>,
    limits: Vec<String>,
}

/// The connection's verdict, shared by each of its requests before their
/// own phases are weighed.
struct Decision {
    path: PathKind,
    explanation: Option<Explanation>,
    candidates: Vec<Candidate>,
    /// Samples discarded or set aside, and the explanations left standing.
    notes: Vec<String>,
    words: Words,
    /// The chosen middlebox's origin RTT and where it came from.
    r2: Option<(f64, &'static str)>,
}

/// The explanation the verdict names: none when the path is unknown or two
/// middleboxes tie.
fn explanation(path: PathKind, chosen: Option<&Fit>, st: &Standing) -> Option<Explanation> {
    // Two middlebox explanations that fit with the same numbers: the path
    // is known, which kind of middlebox is not (the reasons name both).
    let tied = path == PathKind::Middlebox && !st.direct_fits && st.strong.len() > 1;
    match path {
        PathKind::Unknown => None,
        _ if tied => None,
        _ => chosen.map(|c| c.name),
    }
}

impl<'a> Connection<'a> {
    /// Gathers the connection's samples and clues, and holds each
    /// explanation against them.
    fn gather(conn: &'a [Facts]) -> Self {
        let first = conn.iter().find(|f| f.index == 0);
        let any = first.or(conn.first());
        let tls = any.is_some_and(|f| f.tls);
        let s = samples(conn, first);
        let c = clues(first);
        let have_wire = s.r1.is_some() && conn.iter().any(|f| f.ttfb.is_some());
        let reuse_threshold = reuse_threshold(&s, &c);
        let fits = candidates(&s, tls, &c, reuse_threshold);
        Connection {
            conn,
            first,
            any,
            tls,
            s,
            c,
            have_wire,
            reuse_threshold,
            fits,
        }
    }

    /// Sets aside a ServerHello no explanation accounts for, and holds the
    /// explanations against the samples without it.
    fn set_aside_unexplained_server_hello(&mut self) {
        // A ServerHello no explanation accounts for (each one fails on it, and
        // without it a direct path fits and no middlebox does) tells nothing of
        // where TLS ends: it waited for something else.
        if self.tls && self.s.t.is_some() && self.fits.iter().all(|f| !f.fits()) {
            let mut without = self.s.clone();
            without.t = None;
            let other = candidates(&without, self.tls, &self.c, self.reuse_threshold);
            let middlebox_fits = other[1..]
                .iter()
                .any(|f| f.fits() && !f.degenerate && f.r2.is_some());
            if let (true, false, Some(t), Some(r1)) =
                (other[0].fits(), middlebox_fits, self.s.t, self.s.r1)
            {
                without.notes.push(format!(
                    "the ServerHello came {} after the ClientHello, {} beyond a round trip, which no \
                     path explains (the TLS endpoint answered our Finished and the request within a \
                     round trip): a lost ServerHello sent again after a timeout, counted as network \
                     time, or a TLS endpoint slow to start its handshake; a capture at the server \
                     would tell which",
                    r(t),
                    r(t - r1)
                ));
                self.s = without;
                self.fits = other;
            }
        }
    }

    /// The path and the fit it rests on: the one explanation the timings
    /// leave, a near fit, or the clues weighed when direct fits too.
    fn choose<'f>(&'f self, st: &Standing<'f>, w: &mut Words) -> (PathKind, Option<&'f Fit>) {
        if !self.have_wire {
            w.limits
                .push("no complete wire timeline (the request failed or events were lost)".into());
            (PathKind::Unknown, None)
        } else if !st.direct_fits && !st.strong.is_empty() && st.strong_agree() {
            if st.strong.len() > 1 {
                w.limits.push(format!(
                    "{} explain the timings equally (same origin RTT); the immediate reply to our \
                     Finished, or the certificate's issuer, would tell which",
                    st.strong_names()
                ));
            }
            (PathKind::Middlebox, Some(st.strong[0]))
        } else if let (false, Some(best)) = (st.direct_fits, near_fit(&self.fits, self.s.r1)) {
            w.limits.push(format!(
                "{} misses a prediction by {} beyond the noise (the endpoint's own processing, \
                 as a user-space proxy's or a server's slow session ticket), and every other \
                 explanation by far more",
                best.name.describe(),
                r(best.fails.iter().map(|x| x.1).sum())
            ));
            if best.name == Explanation::Direct {
                (PathKind::Direct, Some(best))
            } else {
                (PathKind::Middlebox, Some(best))
            }
        } else if !st.direct_fits {
            if st.strong.is_empty() {
                w.limits.push(
                    "no explanation fits every measurement (see verdict.candidates); a capture on \
                     the far side would show what is there"
                        .into(),
                );
            } else {
                w.limits.push(format!(
                    "{} fit with different origin RTTs; a capture on the far side would settle it",
                    st.strong_names()
                ));
            }
            (PathKind::Unknown, None)
        } else if let Some(hop) = &self.c.hop {
            self.weigh_first_hop(hop, st, w)
        } else {
            (PathKind::Direct, Some(&self.fits[0]))
        }
    }

    /// Direct fits, but the TTL says the first hop answered: the TLS round
    /// trips, a repeat's TTFB or a Via header decide, or nothing does.
    fn weigh_first_hop<'f>(
        &'f self,
        hop: &str,
        st: &Standing<'f>,
        w: &mut Words,
    ) -> (PathKind, Option<&'f Fit>) {
        let (tls, s, c) = (self.tls, &self.s, &self.c);
        // Timing says nothing against direct; the TTL says the first hop
        // answered. Weigh it against the TLS round trips.
        let same_place = tls
            && s.p
                .zip(s.r1)
                .is_some_and(|(p, r1)| p - r1 <= significant(r1))
            && st.strong.is_empty();
        if same_place {
            w.reasons.push(format!(
                "{hop}; but the TLS endpoint answers within one round trip of the TCP \
                 handshake and its ServerHello came without an upstream round trip: a router \
                 that keeps the TTL (cloud VPC routers and overlay datapaths do), not a gateway \
                 that answers"
            ));
            (PathKind::Direct, Some(&self.fits[0]))
        } else if !tls
            && c.via.is_none()
            && let Some((f1, f2, _)) = s.reuse
            && st.strong.is_empty()
        {
            // A proxy that connects upstream once we connected makes the
            // first request pay one more origin round trip; it did not.
            w.reasons.push(format!(
                "{hop}; but the first request waited no longer than a repeat ({} vs {}): no \
                 upstream connect was paid, so the first hop did not answer for the origin",
                r(f1),
                r(f2)
            ));
            w.limits.push(
                "a proxy that keeps warm upstream connections would look the same on plain \
                 HTTP"
                    .into(),
            );
            (PathKind::Direct, Some(&self.fits[0]))
        } else if let (Some(v), Some(pick)) = (&c.via, st.weak.first().or(st.strong.first())) {
            w.reasons.push(format!(
                "two independent clues agree: the first hop answered TCP, and the response \
                 carries \"Via: {v}\""
            ));
            (PathKind::Middlebox, Some(*pick))
        } else {
            w.limits.push(format!(
                "{hop}. Timing alone cannot tell a middlebox at the gateway from a direct path \
                 through routers that keep the TTL: {}",
                if tls {
                    "HTTPS timings did not separate them either (no immediate reply to our \
                     Finished was measured)"
                } else {
                    "--reuse 2 (a proxy pays an upstream connect on the first request) or \
                     HTTPS would settle it"
                }
            ));
            (PathKind::Unknown, None)
        }
    }

    /// The measurements behind the chosen path, with numbers.
    fn explain_choice(&self, path: PathKind, chosen: Option<&Fit>, w: &mut Words) {
        match (path, chosen) {
            (PathKind::Middlebox, Some(ch)) => self.middlebox_reasons(ch, &mut w.reasons),
            (PathKind::Direct, _) => self.direct_reasons(w),
            _ => {}
        }
    }

    /// Why a middlebox: what a direct path fails on, the TTL, and for a TLS
    /// proxy its round trips and certificate.
    fn middlebox_reasons(&self, ch: &Fit, reasons: &mut Vec<String>) {
        let s = &self.s;
        for (why, _) in &self.fits[0].fails {
            reasons.push(why.clone());
        }
        if let Some(h) = &self.c.hop {
            reasons.push(h.clone());
        }
        if ch.name == Explanation::TlsTerminatingProxy
            && let (Some(p), Some(r1)) = (s.p, s.r1)
        {
            reasons.push(format!(
                "the TLS endpoint answers our Finished after {} (one round trip to the TCP \
                 endpoint, {}) but held its ServerHello {}: it terminates TLS itself and \
                 connected to the origin meanwhile",
                r(p),
                r(r1),
                s.t.map(r).unwrap_or("-".into())
            ));
        }
        if let Some(iss) = self.any.and_then(|f| f.cert_issuer.as_deref())
            && ch.name == Explanation::TlsTerminatingProxy
        {
            reasons.push(format!(
                "the certificate received was issued by \"{iss}\": the interceptor's CA, if \
                 that is not the origin's"
            ));
        }
    }

    /// Why direct: the TLS round trips, the repeat's TTFB, the hops, and
    /// what one plain-HTTP request cannot show.
    fn direct_reasons(&self, w: &mut Words) {
        let (tls, s) = (self.tls, &self.s);
        if tls {
            self.direct_tls_reasons(&mut w.reasons);
        }
        if let Some((f1, f2, _)) = s.reuse {
            if f1 - f2 > significant(s.r1.unwrap_or(f2)) {
                w.reasons.push(format!(
                    "the first request waited {} more than a repeat ({} vs {}): within what \
                     a server's own per-connection cost explains, so no evidence of a relay \
                     by itself",
                    r(f1 - f2),
                    r(f1),
                    r(f2)
                ));
            } else {
                w.reasons.push(format!(
                    "a reused request waited as long as the first ({} vs {})",
                    r(f2),
                    r(f1)
                ));
            }
        }
        if let Some(far) = &self.c.far {
            w.reasons.push(far.clone());
        }
        if !tls && s.reuse.is_none() && self.any.is_some_and(|f| f.probe_ttl.is_none()) {
            w.limits.push(
                "one plain-HTTP request cannot show a middlebox that keeps TTLs; --reuse 2, \
                 HTTPS or --path-probe can"
                    .into(),
            );
        }
    }

    /// The TLS round trips of a direct path: the reply to our Finished within
    /// a round trip, and the ServerHello's crypto time.
    fn direct_tls_reasons(&self, reasons: &mut Vec<String>) {
        let s = &self.s;
        if let (Some(p), Some(r1)) = (s.p, s.r1) {
            reasons.push(format!(
                "the TLS endpoint replies to our Finished within {} of a round trip to \
                 the TCP endpoint ({} vs {}): TCP and TLS end at the same place",
                r((p - r1).abs()),
                r(p),
                r(r1)
            ));
        }
        if let (Some(t), Some(r1)) = (s.t, s.r1) {
            reasons.push(if t >= r1 {
                format!(
                    "the ServerHello came {} after the ClientHello, {} more than a round \
                     trip (server crypto time)",
                    r(t),
                    r(t - r1)
                )
            } else {
                format!(
                    "the ServerHello came {} after the ClientHello, within a round trip ({}): \
                     the server's crypto time is lost in the jitter",
                    r(t),
                    r(r1)
                )
            });
        }
    }

    /// What the verdict cannot tell whatever was chosen: a warm TLS proxy,
    /// no TTL without eBPF, a Via header that is only a hint.
    fn general_limits(&self, path: PathKind, limits: &mut Vec<String>) {
        if self.tls && path == PathKind::Direct && self.s.p.is_none() && self.s.t.is_some() {
            limits.push(
                "a TLS-terminating proxy that keeps warm upstream connections and cached \
                 certificates would look the same: the certificate's issuer would tell"
                    .into(),
            );
        }
        if self.conn.iter().any(|f| f.unprivileged) {
            limits.push(
                "unprivileged mode: the SYN-ACK's TTL (how many hops away TCP ends) is not visible \
                 without eBPF, so the verdict rests on timing alone"
                    .into(),
            );
        }
        if let Some(v) = &self.c.via {
            // A hint only: an origin can set it, a proxy can omit it.
            limits.push(format!("hint: the response carries \"Via: {v}\""));
        }
    }

    /// The chosen middlebox's origin RTT, and what limits it (not measured,
    /// or measured with crypto time in it).
    /// The verdict of a declared proxy: the path is known, so nothing is
    /// fitted; what is left to measure is the proxy's way to the origin.
    fn declared(&self, p: &DeclaredProxy) -> Decision {
        let mut words = Words::default();
        let hops = self
            .any
            .and_then(|f| f.hops)
            .map(|h| format!(", {h} hop{} away", if h == 1 { "" } else { "s" }))
            .unwrap_or_default();
        words.reasons.push(format!(
            "the proxy was declared ({}): TCP ends at the proxy{hops}{}",
            p.url,
            self.s
                .r1
                .map(|x| format!(", {} round trip to it", r(x)))
                .unwrap_or_default()
        ));
        let mut bounds: Vec<(f64, &'static str)> = Vec::new();
        if p.tunnel {
            if let (Some(c), Some(r1)) = (p.connect_answer, self.s.r1) {
                words.reasons.push(format!(
                    "it answered CONNECT {} after it was sent, {} beyond the round trip to it: \
                     its name lookup and connect to the origin (at least one round trip from \
                     the proxy to the origin)",
                    r(c),
                    r(c - r1)
                ));
                bounds.push((c - r1, "proxy_connect"));
            }
            if let (Some(t), Some(r1)) = (self.s.t, self.s.r1) {
                bounds.push((t - r1, "tls_rtt"));
            }
            // An HTTP/2 PING through the tunnel: the origin's prompt answer.
            if let (Some(ping), Some(r1)) = (self.first.and_then(|f| f.h2_ping), self.s.r1) {
                bounds.push((ping - r1, "h2_ping"));
            }
            if bounds.is_empty() {
                words.limits.push(
                    "the proxy's way to the origin was not timed (no CONNECT answer or TLS round \
                     trip on the wire): proxy and server time cannot be told apart"
                        .into(),
                );
            }
        }
        // The origin's own account bounds the way to it with no crypto in
        // it. (Through a plain proxy the first byte's wait also holds the
        // proxy's connect to the origin, when it opened one: no RTT then.)
        if let (Some(first), Some(r1), Some(f)) = (self.first, self.s.r1, self.s.f)
            && let Some(st) = first.server_timing
        {
            let bound = f - r1 - st;
            if bound > -slack(r1) {
                if p.tunnel {
                    bounds.push((bound.max(0.0), "server_timing"));
                } else {
                    words.reasons.push(format!(
                        "the first byte came {} after the request; the origin's Server-Timing \
                         says it took {} of it, which leaves {} to the proxy (its connect to the \
                         origin, when it opened one, and the round trip to it)",
                        r(f),
                        r(st),
                        r(bound.max(0.0))
                    ));
                }
            } else {
                words.limits.push(format!(
                    "the origin's Server-Timing ({}) leaves no time for the way to it within \
                     the first byte ({} after the request): not used",
                    r(st),
                    r(f)
                ));
            }
        }
        if !p.tunnel && self.first.is_none_or(|f| f.server_timing.is_none()) {
            words.limits.push(
                "through a plain-HTTP proxy its way to the origin cannot be told apart from \
                 server time: an origin that sends Server-Timing, or HTTPS (a CONNECT tunnel \
                 times the proxy's way), would settle it"
                    .into(),
            );
        }
        let r2 = bounds
            .into_iter()
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(v, from)| (v.max(0.0), from));
        if let Some((v, from)) = r2 {
            words.reasons.push(format!(
                "the origin is at most {} beyond the proxy (from {})",
                r(v),
                match from {
                    "proxy_connect" => "the CONNECT answer",
                    "tls_rtt" => "the TLS handshake through the tunnel, crypto included",
                    "h2_ping" => "an HTTP/2 PING through the tunnel",
                    _ => "the first byte less the origin's Server-Timing",
                }
            ));
        }
        Decision {
            path: PathKind::Proxy,
            explanation: None,
            candidates: Vec::new(),
            notes: self.s.notes.clone(),
            words,
            r2,
        }
    }

    fn origin_rtt(
        &self,
        path: PathKind,
        chosen: Option<&Fit>,
        limits: &mut Vec<String>,
    ) -> Option<(f64, &'static str)> {
        let r2 = chosen
            .filter(|c| !c.degenerate)
            .and_then(|c| c.r2)
            .filter(|_| path == PathKind::Middlebox);
        if path == PathKind::Middlebox && r2.is_none() {
            limits.push(if self.tls {
                "the middlebox's RTT to the origin cannot be told apart from server time: no TLS \
                 round trip measured it"
                    .into()
            } else {
                "the middlebox's RTT to the origin cannot be told apart from server time with one \
                 plain-HTTP request: run with --reuse 2 (or use HTTPS) to separate them"
                    .into()
            });
        }
        let r2 = r2.map(|x| self.tighter_by_server_timing(x, limits));
        if let Some(r2x) = r2
            && r2x.1 == "tls_rtt"
        {
            limits.push(
                "the origin RTT comes from the TLS handshake and includes half the crypto time \
                 (no immediate reply to our Finished timed it better)"
                    .into(),
            );
        }
        r2
    }

    /// An origin RTT taken from the TLS handshake holds the proxy's and the
    /// origin's crypto (T = R1 + 2 R2 + c). When the origin says how long it
    /// took (Server-Timing), the first request gives a second bound with no
    /// crypto in it: F = R1 + R2 + S + the proxy's forwarding time, so
    /// R2 <= F - R1 - S as long as the header does not overstate the
    /// origin's time. The tighter of the two is the estimate.
    fn tighter_by_server_timing(
        &self,
        r2: (f64, &'static str),
        limits: &mut Vec<String>,
    ) -> (f64, &'static str) {
        let (Some(first), Some(r1), Some(f)) = (self.first, self.s.r1, self.s.f) else {
            return r2;
        };
        let Some(st) = first.server_timing.filter(|_| r2.1 == "tls_rtt") else {
            return r2;
        };
        let bound = f - r1 - st;
        if bound <= 0.0 {
            limits.push(format!(
                "the origin's Server-Timing ({}) leaves no time for the way to it within the \
                 first byte ({} after the request, {} round trip): not this response's own \
                 time (a cached one?), so not used",
                r(st),
                r(f),
                r(r1)
            ));
            return r2;
        }
        if bound >= r2.0 {
            return r2;
        }
        limits.push(format!(
            "the origin RTT is the first byte's wait ({}) less the near round trip ({}) and the \
             origin's own time by its Server-Timing ({}): at most {}, tighter than the TLS \
             handshake's {} (which holds the crypto); an origin that understates its time \
             makes this an upper bound",
            r(f),
            r(r1),
            r(st),
            r(bound),
            r(r2.0)
        ));
        (bound, "server_timing")
    }

    /// The samples set aside, and (when the path is unknown) which
    /// explanations fit.
    fn notes(&self, path: PathKind) -> Vec<String> {
        let mut notes = self.s.notes.clone();
        if path == PathKind::Unknown && self.have_wire {
            let fitting: Vec<&str> = self
                .fits
                .iter()
                .filter(|f| f.fits())
                .map(|f| f.name.describe())
                .collect();
            if fitting.len() > 1 {
                notes.push(format!("these explanations fit: {}", fitting.join(", ")));
            }
        }
        notes
    }

    /// One request's analysis: the connection's verdict, unless its own
    /// phases come out negative, and where its time went.
    fn request(&self, d: &Decision, f: &Facts) -> Analysis {
        let mut v = Verdict {
            path: d.path,
            explanation: d.explanation,
            reasons: d.words.reasons.clone(),
            candidates: d.candidates.clone(),
            evidence_from: None,
            bottleneck: None,
            summary: None,
        };
        v.reasons.extend(d.notes.iter().cloned());
        v.reasons.extend(d.words.limits.iter().cloned());
        // A later request whose own measurements played no part.
        let own = f.index == 0
            || self.s.reuse.is_some_and(|(_, _, i)| i == f.index)
            || self.first.is_none();
        if !own {
            v.evidence_from = Some(0);
        }
        let (phases, mb, misfit) = phases(f, &self.s, d.path, d.r2);
        if let Some(m) = misfit {
            v.path = PathKind::Unknown;
            v.explanation = None;
            v.reasons.insert(0, m);
        }
        let (bottleneck, summary, why) = bottleneck(f, &phases, mb.as_ref());
        v.bottleneck = bottleneck;
        v.summary = summary;
        if let Some(w) = why {
            v.reasons.insert(0, w);
        }
        Analysis {
            verdict: v,
            phases,
            middlebox: mb,
        }
    }
}

/// What the CPU counters say about a client that held the request.
fn stall_words(st: &ClientStall) -> Vec<String> {
    let mut w = Vec::new();
    if let (Some(n), Some(t)) = (st.throttled_periods, st.throttled_ms)
        && n > 0
    {
        w.push(format!(
            "its cgroup was throttled {n} time{} by its CPU quota ({} in all, summed over \
             the CPUs)",
            if n == 1 { "" } else { "s" },
            r(t)
        ));
    }
    if let Some(d) = st.run_delay_ms.filter(|&d| d >= 1.0) {
        w.push(format!("its threads waited {} for a CPU", r(d)));
    }
    if let Some(x) = st.steal_ms.filter(|&x| x > 0.0) {
        w.push(format!("the hypervisor stole {} of CPU time", r(x)));
    }
    w
}

/// The phase with most of the time, a sentence for people, and (when the
/// client holds a large share) a reason naming why.
fn bottleneck(
    f: &Facts,
    p: &Phases,
    mb: Option<&Middlebox>,
) -> (Option<Bottleneck>, Option<String>, Option<String>) {
    let total = match (p.network_ms, p.middlebox_ms, p.server_ms, p.client_ms) {
        (Some(n), Some(m), Some(s), Some(c)) => Some(n + m + s + c),
        _ => None,
    };
    let Some((b, v)) = top_phase(f, p, total) else {
        return (None, None, None);
    };
    let of = total.or(f.user_span).unwrap_or(v);
    let stall = f.stall.as_ref().map(stall_words).unwrap_or_default();
    let summary = bottleneck_summary(f, mb, b, v, of, &stall);
    let why = (b == Bottleneck::Client).then(|| client_reason(v, of, &stall));
    (Some(b), Some(summary), why)
}

/// The phase that holds most of the time, and how much: the largest when
/// every phase is known, else only a client holding most of the span.
fn top_phase(f: &Facts, p: &Phases, total: Option<f64>) -> Option<(Bottleneck, f64)> {
    let phases = [
        (Bottleneck::Network, p.network_ms),
        (Bottleneck::Middlebox, p.middlebox_ms),
        (Bottleneck::Server, p.server_ms),
        (Bottleneck::Client, p.client_ms),
    ];
    // With every phase known, the largest; otherwise only a client that
    // holds most of the user-space span by itself can be named.
    match total {
        Some(_) => phases
            .iter()
            .filter_map(|(b, v)| v.map(|v| (*b, v)))
            .max_by(|a, b| a.1.total_cmp(&b.1)),
        None => p
            .client_ms
            .zip(f.user_span)
            .filter(|(c, u)| *c > 0.5 * u)
            .map(|(c, _)| (Bottleneck::Client, c)),
    }
}

/// The sentence on where the time went: `v` of `of` ms in phase `b`.
fn bottleneck_summary(
    f: &Facts,
    mb: Option<&Middlebox>,
    b: Bottleneck,
    v: f64,
    of: f64,
    stall: &[String],
) -> String {
    match b {
        Bottleneck::Client => {
            let mut s = format!("this host held the request {} of {}", r(v), r(of));
            if stall.is_empty() {
                s.push_str(" (its own turns: TLS work, reading, scheduling)");
            } else {
                s.push_str(": ");
                s.push_str(&stall.join(", "));
            }
            s
        }
        Bottleneck::Network => format!(
            "the network holds {} of {} (round trips{})",
            r(v),
            r(of),
            if f.retransmits > 0 || f.request_resent.is_some() {
                " and loss waits"
            } else {
                ""
            }
        ),
        Bottleneck::Middlebox => format!(
            "the {}'s way to the origin holds {} of {}{}",
            if f.proxy.is_some() {
                "proxy"
            } else {
                "middlebox"
            },
            r(v),
            r(of),
            mb.and_then(|m| m.origin_rtt_ms)
                .map(|o| format!(" ({} per origin round trip)", r(o)))
                .unwrap_or_default()
        ),
        Bottleneck::Server => format!("the server holds {} of {}", r(v), r(of)),
    }
}

/// The reason given when the client holds the request: the wire stayed as
/// it was, and what the CPU counters say.
fn client_reason(v: f64, of: f64, stall: &[String]) -> String {
    let mut s = format!(
        "the client held the request {} of {}: the wire round trips stayed as they \
         were, the time went between a packet's arrival and this host's answer to it",
        r(v),
        r(of)
    );
    if stall.is_empty() {
        s.push_str(
            "; no CPU throttling, run-queue wait or steal was counted (a slow CPU, or \
             work in this process)",
        );
    } else {
        s.push_str("; ");
        s.push_str(&stall.join(", "));
    }
    s
}

/// The request's phases under the chosen explanation, and a sentence when
/// one would come out negative (the model does not fit).
fn phases(
    f: &Facts,
    s: &Samples,
    path: PathKind,
    r2: Option<(f64, &'static str)>,
) -> (Phases, Option<Middlebox>, Option<String>) {
    let turns = f.client_turns.unwrap_or(0.0);
    let mut p = client_phases(f);
    let mb = matches!(path, PathKind::Middlebox | PathKind::Proxy).then(|| Middlebox {
        near_rtt_ms: s.r1,
        origin_rtt_ms: r2.map(|x| x.0),
        hops: f.hops,
        origin_rtt_from: r2.map(|x| x.1),
    });
    let (Some(r1), Some(ttfb), Some(span)) = (s.r1, f.ttfb, f.span) else {
        return (p, mb, None);
    };
    let ttfb = answered_ttfb(f, r1, ttfb);
    let Some((server, middlebox)) = server_and_middlebox(f, path, r2, r1, ttfb, s.t) else {
        return (p, mb, None);
    };
    let network = span - server - middlebox - turns;
    let misfit = misfit(server, network, ttfb, slack(r1));
    if misfit.is_some() {
        return (p, None, misfit);
    }
    // Within noise of zero: zero.
    p.server_ms = Some(server.max(0.0));
    p.middlebox_ms = Some(middlebox);
    p.network_ms = Some(network.max(0.0));
    (p, mb, None)
}

/// The client's own time (local stack and its turns), known whatever the
/// path; the other phases are left to the model.
fn client_phases(f: &Facts) -> Phases {
    let local = match (f.user_span, f.span) {
        (Some(u), Some(w)) => Some(u - w),
        _ => None,
    };
    let turns = f.client_turns.unwrap_or(0.0);
    Phases {
        local_stack_ms: local,
        // Whatever the path: our own turns do not depend on the model.
        client_ms: match (local, f.client_turns) {
            (Some(l), _) => Some(l + turns),
            (None, Some(t)) => Some(t),
            (None, None) => None,
        },
        ..Default::default()
    }
}

/// The TTFB of the copy the server answered: without the wait for a
/// request sent again, which was the network's.
fn answered_ttfb(f: &Facts, r1: f64, ttfb: f64) -> f64 {
    // The request went out again and the response came at least a round
    // trip after the copy: the server answered the copy, and the wait for it
    // was the network's (a response sooner than that answered the first).
    // Unplaced retransmissions and a request acknowledged well after a
    // round trip, before the response: the server had it only then.
    let resent = f.request_resent.or_else(|| {
        let d = f.data_rtt?;
        (f.resent_unplaced && d - r1 > significant(r1) && d < ttfb - slack(r1)).then_some(d - r1)
    });
    match resent {
        Some(w) if ttfb - w >= r1 - slack(r1) => ttfb - w,
        _ => ttfb,
    }
}

/// Server and middlebox time under the path (none when the path, or the
/// middlebox's origin RTT, is unknown).
fn server_and_middlebox(
    f: &Facts,
    path: PathKind,
    r2: Option<(f64, &'static str)>,
    r1: f64,
    ttfb: f64,
    t: Option<f64>,
) -> Option<(f64, f64)> {
    match path {
        PathKind::Direct => Some((ttfb - r1, 0.0)),
        PathKind::Middlebox => {
            let (r2, from) = r2?;
            // An origin RTT without the crypto in it: the handshake's wait
            // beyond the near round trip is all the middlebox's (its two
            // upstream round trips and the crypto), then the request's.
            if let (0, true, "server_timing", Some(t)) = (f.index, f.tls, from, t) {
                return Some((ttfb - r1 - r2, (t - r1) + r2));
            }
            // Origin round trips in the TTFB (k) and in the span (m): the
            // upstream connect (first request), the TLS handshake (first
            // TLS request: two for a proxy that connects, then shakes
            // hands), the request itself.
            let (k, m) = match (f.index, f.tls) {
                (0, true) => (1.0, 3.0),
                (0, false) => (2.0, 2.0),
                _ => (1.0, 1.0),
            };
            Some((ttfb - r1 - k * r2, m * r2))
        }
        PathKind::Proxy => declared_split(f, r2, r1, ttfb, t),
        PathKind::Unknown => None,
    }
}

/// Server and proxy time through a declared proxy. Plain HTTP: the origin's
/// Server-Timing is the server's, the rest of the wait beyond the round
/// trip to the proxy is the proxy's (none without the header). A tunnel:
/// the server's time is the first byte's wait less the round trips to the
/// proxy and on to the origin; the proxy's is its time to answer CONNECT
/// beyond the round trip to it, the TLS handshake's wait beyond that round
/// trip, and the request's way from the proxy to the origin.
fn declared_split(
    f: &Facts,
    r2: Option<(f64, &'static str)>,
    r1: f64,
    ttfb: f64,
    t: Option<f64>,
) -> Option<(f64, f64)> {
    let p = f.proxy.as_ref()?;
    if !p.tunnel {
        // A header that leaves no time for the way to the origin is not
        // this response's own account (the reasons say so): no split.
        let st = f.server_timing?;
        let proxy = ttfb - r1 - st;
        return (proxy > -slack(r1)).then_some((st, proxy.max(0.0)));
    }
    let (r2, _) = r2?;
    let server = ttfb - r1 - r2;
    if f.index > 0 {
        return Some((server, r2));
    }
    let connect = p.connect_answer.map_or(r2, |c| (c - r1).max(0.0));
    // TLS 1.2's second round (our Finished, the origin's) crosses the
    // proxy to the origin too.
    let tls = if f.tls {
        t.map_or(r2, |t| (t - r1).max(0.0)) + if f.tls12 { r2 } else { 0.0 }
    } else {
        0.0
    };
    Some((server, connect + tls + r2))
}

/// The sentence saying the model does not fit, when server or network time
/// would come out negative beyond the noise `tol`.
fn misfit(server: f64, network: f64, ttfb: f64, tol: f64) -> Option<String> {
    if server < -tol {
        Some(format!(
            "the model does not fit: server time would come out {} (first byte {} after the \
             request, less than the round trips it needs): the verdict is unknown",
            r(server),
            r(ttfb)
        ))
    } else if network < -tol {
        Some(format!(
            "the model does not fit: network time would come out {}: the verdict is unknown",
            r(network)
        ))
    } else {
        None
    }
}

/// The one plain sentence for people.
pub(crate) fn sentence(a: &Analysis, f: &Facts) -> String {
    let ph = &a.phases;
    match a.verdict.path {
        PathKind::Middlebox => middlebox_sentence(a, f),
        PathKind::Proxy => proxy_sentence(a, f),
        PathKind::Direct => format!(
            "direct: no middlebox on the path; RTT {}, server {}, network {}.",
            a.middlebox
                .as_ref()
                .and_then(|m| m.near_rtt_ms)
                .or(f.handshake)
                .map(r)
                .unwrap_or("-".into()),
            ph.server_ms.map(r).unwrap_or("-".into()),
            ph.network_ms.map(r).unwrap_or("-".into()),
        ),
        PathKind::Unknown => unknown_sentence(a),
    }
}

/// The sentence for a middlebox: where TCP (and TLS) ends, and what its
/// way to the origin and the server add, or that they cannot be told apart.
fn middlebox_sentence(a: &Analysis, f: &Facts) -> String {
    let ph = &a.phases;
    let what = a
        .verdict
        .explanation
        .map(|e| format!(" ({})", e.describe()))
        .unwrap_or_default();
    let mb = a.middlebox.clone().unwrap_or_default();
    let near = mb
        .near_rtt_ms
        .map(|x| format!(" after {}", r(x)))
        .unwrap_or_default();
    let hops = mb
        .hops
        .map(|x| format!(" {x} hop{} away", if x == 1 { "" } else { "s" }))
        .unwrap_or_default();
    let ends = if a.verdict.explanation == Some(Explanation::TlsTerminatingProxy) {
        "TCP and TLS are terminated"
    } else {
        "TCP is terminated"
    };
    match (mb.origin_rtt_ms, ph.middlebox_ms, ph.server_ms) {
        (Some(o), Some(cost), Some(s)) => format!(
            "middlebox{what}: {ends}{hops}{near}, but the origin is about {} \
             further; the middlebox path adds {} to this request, the server {}.",
            r(o),
            r(cost),
            r(s)
        ),
        _ => format!(
            "middlebox{what}: {ends}{hops}{near}; {}",
            match (f.ttfb, mb.near_rtt_ms) {
                (Some(t), Some(h)) if t >= h => format!(
                    "the first byte came {} later (middlebox upstream and server \
                     together; they cannot be told apart here).",
                    r(t - h)
                ),
                _ => "its upstream and the server cannot be told apart here.".into(),
            }
        ),
    }
}

/// The sentence for a declared proxy: its round trip, its way to the
/// origin, and what it and the server add, or that they cannot be told
/// apart.
fn proxy_sentence(a: &Analysis, f: &Facts) -> String {
    let ph = &a.phases;
    let mb = a.middlebox.clone().unwrap_or_default();
    let url = f.proxy.as_ref().map(|p| p.url.as_str()).unwrap_or("-");
    let near = mb
        .near_rtt_ms
        .map(|x| format!(", {} round trip to it", r(x)))
        .unwrap_or_default();
    let connect = f
        .proxy
        .as_ref()
        .and_then(|p| p.connect_answer)
        .map(|c| format!("; it answered CONNECT in {}", r(c)))
        .unwrap_or_default();
    match (ph.middlebox_ms, ph.server_ms) {
        (Some(cost), Some(s)) => format!(
            "proxy {url} (declared){near}{connect}{}; the proxy path adds {} to this request, \
             the server {}.",
            mb.origin_rtt_ms
                .map(|o| format!("; the origin is about {} beyond it", r(o)))
                .unwrap_or_default(),
            r(cost),
            r(s)
        ),
        _ => format!(
            "proxy {url} (declared){near}{connect}; {}",
            match (f.ttfb, mb.near_rtt_ms) {
                (Some(t), Some(h)) if t >= h => format!(
                    "the first byte came {} after the round trip to it (the proxy's way to the \
                     origin and the server together; they cannot be told apart here).",
                    r(t - h)
                ),
                _ =>
                    "the proxy's way to the origin and the server cannot be told apart here.".into(),
            }
        ),
    }
}

/// The sentence for an unknown path: the explanations that all fit, or
/// that the evidence supports none.
fn unknown_sentence(a: &Analysis) -> String {
    let ph = &a.phases;
    let fitting: Vec<&str> = a
        .verdict
        .candidates
        .iter()
        .filter(|c| c.fits)
        .map(|c| c.name.describe())
        .collect();
    if a.verdict.candidates.is_empty() || ph.server_ms.is_none() && fitting.is_empty() {
        "unknown: the evidence does not support a verdict (reasons below).".to_string()
    } else if fitting.len() > 1 {
        format!(
            "unknown: {} all fit these measurements (reasons below say what would \
             settle it).",
            fitting.join(", ")
        )
    } else {
        "unknown: the evidence does not support a verdict (reasons below).".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS request as the lab records it: handshake h, ClientHello ->
    /// ServerHello t, Finished -> reply p, TTFB ttfb, SYN-ACK hops.
    fn tls(h: f64, t: f64, p: Option<f64>, ttfb: f64, hops: u8) -> Facts {
        Facts {
            index: 0,
            repeats_first: true,
            unprivileged: false,
            tls: true,
            handshake: Some(h),
            handshake_clean: true,
            ttl: Some(64 - hops),
            initial_ttl: Some(64),
            hops: Some(hops),
            tls_rtt: Some(t),
            tls_round2: p,
            h2_ping: None,
            tls12: false,
            data_rtt: None,
            // acknowledged at once (a holding proxy does; a server with
            // quick ACKs too)
            client_hello_acked: Some(h),
            ttfb: Some(ttfb),
            request_resent: None,
            resent_unplaced: false,
            retransmits: 0,
            span: Some(h + t + ttfb + 1.0),
            user_span: Some(h + t + ttfb + 2.0),
            client_turns: Some(1.0),
            stall: None,
            on_link: Some(false),
            probe_ttl: None,
            via: None,
            server_timing: None,
            cert_issuer: None,
            remote: "10.10.2.1:8443".into(),
            proxy: None,
        }
    }

    /// `f` as the connection's second request: no handshake of its own.
    fn later_tls(mut f: Facts) -> Facts {
        f.index = 1;
        f.handshake = None;
        f.tls_rtt = None;
        f.tls_round2 = None;
        f
    }

    fn http(index: u32, h: f64, ttfb: f64, hops: u8) -> Facts {
        Facts {
            index,
            tls: false,
            tls_rtt: None,
            tls_round2: None,
            span: Some(if index == 0 { h + ttfb + 0.2 } else { ttfb }),
            user_span: Some(if index == 0 {
                h + ttfb + 0.5
            } else {
                ttfb + 0.2
            }),
            client_turns: Some(if index == 0 { 0.2 } else { 0.0 }),
            client_hello_acked: None,
            ..tls(h, 0.0, None, ttfb, hops)
        }
    }

    fn near(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    fn cand(a: &Analysis, e: Explanation) -> &Candidate {
        a.verdict
            .candidates
            .iter()
            .find(|c| c.name == e)
            .expect("candidate listed")
    }

    #[test]
    fn only_a_repeat_of_the_first_request_feeds_the_reuse_rule() {
        let first = http(0, 4.0, 90.0, 3);
        let mut other = http(1, 4.0, 50.0, 3);
        other.repeats_first = false;
        assert_ne!(
            analyze(&[first.clone(), other.clone()])[1].verdict.path,
            PathKind::Middlebox
        );
        other.repeats_first = true;
        assert_eq!(
            analyze(&[first, other])[1].verdict.path,
            PathKind::Middlebox
        );
    }

    #[test]
    fn direct_tls_with_think_time() {
        // RTT 40.7, think 30: T = R + crypto, P = R, F = R + S
        let a = analyze(&[tls(40.7, 41.6, Some(40.9), 71.5, 1)]);
        assert_eq!(a[0].verdict.path, PathKind::Direct, "{:?}", a[0].verdict);
        assert_eq!(a[0].verdict.explanation, Some(Explanation::Direct));
        assert!(near(a[0].phases.server_ms.unwrap(), 30.8, 0.01));
        assert_eq!(a[0].phases.middlebox_ms, Some(0.0));
        assert!(a[0].middlebox.is_none());
        assert!(cand(&a[0], Explanation::Direct).fits);
        assert!(
            !cand(&a[0], Explanation::TlsTerminatingProxy).fits || {
                // it fits only with no upstream at all
                a[0].verdict.explanation == Some(Explanation::Direct)
            }
        );
    }

    #[test]
    fn tls_through_a_relay_gives_origin_rtt_and_server_time() {
        // R1 4.4, R2 40.9, S 20: T = R1 + 2 R2 + 1, P = R1 + R2, F = R1 + R2 + S;
        // the SYN-ACK comes from mid with TTL 64 (0 hops) for an off-link address.
        let a = analyze(&[tls(4.4, 87.2, Some(45.3), 65.4, 0)]);
        assert_eq!(a[0].verdict.path, PathKind::Middlebox);
        assert_eq!(a[0].verdict.explanation, Some(Explanation::TcpRelay));
        let mb = a[0].middlebox.as_ref().unwrap();
        assert!(near(mb.origin_rtt_ms.unwrap(), 40.9, 0.01));
        assert_eq!(mb.near_rtt_ms, Some(4.4));
        assert_eq!(mb.hops, Some(0));
        assert!(near(a[0].phases.server_ms.unwrap(), 20.1, 0.01));
        assert!(near(a[0].phases.middlebox_ms.unwrap(), 3.0 * 40.9, 0.01));
        let d = cand(&a[0], Explanation::Direct);
        assert!(!d.fits && d.residual_ms > 30.0, "{d:?}");
        assert!(!cand(&a[0], Explanation::TlsTerminatingProxy).fits);
    }

    #[test]
    fn timing_alone_finds_a_relay_that_keeps_ttls() {
        let mut f = tls(4.4, 87.2, Some(45.3), 65.4, 3);
        f.on_link = None;
        let a = analyze(&[f]);
        assert_eq!(a[0].verdict.path, PathKind::Middlebox);
        assert!(a[0].verdict.reasons[0].contains("TLS ends farther"));
    }

    #[test]
    fn without_a_finished_reply_relay_and_tls_proxy_agree_on_the_numbers() {
        let a = analyze(&[tls(4.4, 87.2, None, 65.4, 3)]);
        assert_eq!(a[0].verdict.path, PathKind::Middlebox);
        let o = a[0].middlebox.as_ref().unwrap().origin_rtt_ms.unwrap();
        assert!(near(o, (87.2 - 4.4) / 2.0, 0.01));
        assert!(
            a[0].verdict
                .reasons
                .iter()
                .any(|r| r.contains("explain the timings equally")),
            "{:?}",
            a[0].verdict.reasons
        );
        // and slow crypto on a direct path does not fire
        let a = analyze(&[tls(40.0, 48.0, None, 41.0, 3)]);
        assert_eq!(a[0].verdict.path, PathKind::Direct);
    }

    #[test]
    fn a_tls_interceptor_answers_finished_near_but_holds_its_server_hello() {
        // mitmproxy in mid: R1 4.2, R2 40.5, origin think 15: T = R1 + 2 R2 + 2,
        // P = R1 (it answers our Finished itself), F = R1 + R2 + S.
        for unpriv in [false, true] {
            let mut f = tls(4.2, 87.2, Some(4.5), 4.2 + 40.5 + 15.0, 0);
            f.cert_issuer = Some("mitmproxy".into());
            if unpriv {
                f.unprivileged = true;
                f.ttl = None;
                f.hops = None;
                f.initial_ttl = None;
            }
            let a = analyze(&[f]);
            let v = &a[0].verdict;
            assert_eq!(v.path, PathKind::Middlebox, "{v:?}");
            assert_eq!(
                v.explanation,
                Some(Explanation::TlsTerminatingProxy),
                "{v:?}"
            );
            assert!(!cand(&a[0], Explanation::TcpRelay).fits);
            let o = a[0].middlebox.as_ref().unwrap().origin_rtt_ms.unwrap();
            assert!(near(o, 41.5, 0.01), "{o}");
            assert!(near(a[0].phases.server_ms.unwrap(), 14.0, 0.01));
            assert!(v.reasons.iter().any(|r| r.contains("mitmproxy")));
            // no hint may speak of plain HTTP for an HTTPS request
            assert!(!v.reasons.iter().any(|r| r.contains("plain-HTTP")), "{v:?}");
        }
    }

    #[test]
    fn a_declared_tunnel_splits_the_proxy_from_the_server() {
        // -x to squid: R1 4.3 to the proxy, R2 40.4 on to the origin; the
        // CONNECT answer takes R1 + R2 + 0.6 (squid's connect), TLS
        // through the tunnel R1 + R2, the request R1 + R2 + S.
        let (r1, r2, s) = (4.3, 40.4, 20.0);
        let c = r1 + r2 + 0.6;
        let t = r1 + r2;
        let ttfb = r1 + r2 + s;
        let mut f = tls(r1, t, None, ttfb, 0);
        // The tunnel's own: the CONNECT round trip is in the span.
        f.span = Some(r1 + c + t + ttfb + 1.0);
        f.user_span = Some(r1 + c + t + ttfb + 2.0);
        f.proxy = Some(DeclaredProxy {
            url: "http://10.10.1.254:3128".into(),
            tunnel: true,
            connect_answer: Some(c),
        });
        let a = analyze(std::slice::from_ref(&f)).remove(0);
        assert_eq!(a.verdict.path, PathKind::Proxy, "{:?}", a.verdict);
        assert_eq!(a.verdict.explanation, None);
        assert!(a.verdict.candidates.is_empty());
        let mb = a.middlebox.clone().expect("the proxy's figures");
        assert!(near(mb.near_rtt_ms.unwrap(), r1, 0.01));
        // The tighter of the CONNECT's and the handshake's bounds.
        assert!(near(mb.origin_rtt_ms.unwrap(), r2, 0.01), "{mb:?}");
        assert_eq!(mb.origin_rtt_from, Some("tls_rtt"));
        assert!(near(a.phases.server_ms.unwrap(), s, 0.01), "{:?}", a.phases);
        // CONNECT beyond R1, TLS beyond R1, the request's R2.
        let proxy = (c - r1) + (t - r1) + r2;
        assert!(
            near(a.phases.middlebox_ms.unwrap(), proxy, 0.01),
            "{:?}",
            a.phases
        );
        // Four round trips to the proxy: SYN, CONNECT, ClientHello, request.
        assert!(
            near(a.phases.network_ms.unwrap(), 4.0 * r1, 0.01),
            "{:?}",
            a.phases
        );
        let line = sentence(&a, &f);
        assert!(
            line.starts_with("proxy http://10.10.1.254:3128 (declared)"),
            "{line}"
        );
        assert!(line.contains("answered CONNECT in 45.3 ms"), "{line}");
        // A second request through the same tunnel: one R2 is the proxy's.
        let mut g = later_tls(f.clone());
        g.span = Some(ttfb);
        g.user_span = Some(ttfb + 0.2);
        g.client_turns = Some(0.0);
        let b = analyze(&[f.clone(), g]).remove(1);
        assert_eq!(b.verdict.path, PathKind::Proxy);
        assert!(
            near(b.phases.middlebox_ms.unwrap(), r2, 0.01),
            "{:?}",
            b.phases
        );
        assert!(near(b.phases.server_ms.unwrap(), s, 0.01), "{:?}", b.phases);
        // TLS 1.2: its second round crosses to the origin as well.
        let mut t12 = f.clone();
        t12.tls12 = true;
        t12.span = f.span.map(|x| x + r1 + r2);
        t12.user_span = f.user_span.map(|x| x + r1 + r2);
        let a = analyze(&[t12]).remove(0);
        assert!(
            near(a.phases.middlebox_ms.unwrap(), proxy + r2, 0.01),
            "{:?}",
            a.phases
        );
        assert!(
            near(a.phases.network_ms.unwrap(), 5.0 * r1, 0.01),
            "{:?}",
            a.phases
        );
        // A SYN sent again and no ACK of our ClientHello: the TLS samples
        // through the tunnel (R1 + R2) must not pass for the RTT to the
        // proxy.
        let mut unclean = f.clone();
        unclean.handshake_clean = false;
        unclean.client_hello_acked = None;
        unclean.h2_ping = Some(t);
        let a = analyze(&[unclean]).remove(0);
        let near_rtt = a.middlebox.as_ref().and_then(|m| m.near_rtt_ms);
        assert!(near_rtt.is_none_or(|n| n < t - 1.0), "{a:?}");
        // No timing of the proxy's way (no CONNECT answer, no TLS round
        // trip): no split, and the limits say why.
        let mut blind = f;
        blind.tls_rtt = None;
        blind.proxy.as_mut().unwrap().connect_answer = None;
        let a = analyze(&[blind]).remove(0);
        assert_eq!(a.verdict.path, PathKind::Proxy);
        assert_eq!(a.phases.server_ms, None);
        assert!(
            a.verdict
                .reasons
                .iter()
                .any(|r| r.contains("cannot be told apart")),
            "{:?}",
            a.verdict.reasons
        );
    }

    #[test]
    fn an_http2_ping_times_a_relays_origin_without_the_crypto() {
        // haproxy mode tcp over HTTP/2: R1 4.2, R2 40.3; the ServerHello
        // waits R1 + 2 R2 + 6 ms of crypto, the PING R1 + R2 only.
        let (r1, r2, s) = (4.2, 40.3, 20.0);
        let t = r1 + 2.0 * r2 + 6.0;
        let mut f = tls(r1, t, None, r1 + r2 + s, 0);
        let a = analyze(std::slice::from_ref(&f)).remove(0);
        let origin = |a: &Analysis| a.middlebox.as_ref().and_then(|m| m.origin_rtt_ms);
        // Without the PING: half the crypto in the origin RTT.
        assert!(near(origin(&a).unwrap(), r2 + 3.0, 0.01), "{a:?}");
        f.h2_ping = Some(r1 + r2);
        let a = analyze(std::slice::from_ref(&f)).remove(0);
        assert_eq!(a.verdict.path, PathKind::Middlebox, "{:?}", a.verdict);
        assert!(near(origin(&a).unwrap(), r2, 0.01), "{a:?}");
        assert_eq!(
            a.middlebox.as_ref().and_then(|m| m.origin_rtt_from),
            Some("h2_ping")
        );
        // A reply to our Finished as prompt as the PING: either will do,
        // the smaller is used.
        f.tls_round2 = Some(r1 + r2 + 0.3);
        let a = analyze(&[f]).remove(0);
        assert_eq!(
            a.middlebox.as_ref().and_then(|m| m.origin_rtt_from),
            Some("h2_ping")
        );
        // Direct over HTTP/2: the PING is one round trip, as the handshake.
        let mut d = tls(r1, r1 + 1.0, None, r1 + s, 1);
        d.h2_ping = Some(r1 + 0.1);
        let a = analyze(&[d]).remove(0);
        assert_eq!(a.verdict.path, PathKind::Direct, "{:?}", a.verdict);
    }

    #[test]
    fn a_declared_plain_proxy_needs_the_origins_word() {
        // Plain HTTP through squid, a new upstream connection: F = R1 +
        // 2 R2 + S. Without Server-Timing the proxy and the server are one.
        let (r1, r2, s) = (4.2, 40.4, 20.0);
        let ttfb = r1 + 2.0 * r2 + s;
        let mut f = http(0, r1, ttfb, 0);
        f.proxy = Some(DeclaredProxy {
            url: "http://10.10.1.254:3128".into(),
            tunnel: false,
            connect_answer: None,
        });
        let a = analyze(std::slice::from_ref(&f)).remove(0);
        assert_eq!(a.verdict.path, PathKind::Proxy);
        assert_eq!((a.phases.server_ms, a.phases.middlebox_ms), (None, None));
        assert!(
            a.verdict
                .reasons
                .iter()
                .any(|r| r.contains("Server-Timing")),
            "{:?}",
            a.verdict.reasons
        );
        assert!(sentence(&a, &f).contains("cannot be told apart"));
        // With it: the server's time is the header's, the rest the proxy's,
        // and no origin RTT is claimed (the proxy's connect is in it).
        f.server_timing = Some(s);
        let a = analyze(std::slice::from_ref(&f)).remove(0);
        assert!(near(a.phases.server_ms.unwrap(), s, 0.01), "{:?}", a.phases);
        assert!(
            near(a.phases.middlebox_ms.unwrap(), 2.0 * r2, 0.01),
            "{:?}",
            a.phases
        );
        assert_eq!(a.middlebox.as_ref().and_then(|m| m.origin_rtt_ms), None);
        assert_eq!(a.verdict.bottleneck, Some(Bottleneck::Middlebox));
        // A header that overstates the origin's time: not used, no split;
        // the path is still the declared proxy.
        f.server_timing = Some(ttfb);
        let a = analyze(&[f]).remove(0);
        assert_eq!(a.verdict.path, PathKind::Proxy, "{:?}", a.verdict);
        assert_eq!(a.phases.server_ms, None, "{:?}", a.phases);
    }

    #[test]
    fn server_timing_takes_the_crypto_out_of_an_interceptors_origin_rtt() {
        // squid's SSL bump in the lab: R1 4.3, R2 40.3, origin think 15.3,
        // and 9 ms of crypto in the ServerHello's wait: T = R1 + 2 R2 + 9;
        // F = R1 + R2 + S + 0.8 (squid forwarding the request).
        let (r1, r2, s, c) = (4.3, 40.3, 15.3, 9.0);
        let t = r1 + 2.0 * r2 + c;
        let ttfb = r1 + r2 + s + 0.8;
        let base = || {
            let mut f = tls(r1, t, Some(4.5), ttfb, 0);
            f.cert_issuer = Some("synack lab squid CA".into());
            f
        };
        let origin = |a: &Analysis| a.middlebox.as_ref().and_then(|m| m.origin_rtt_ms);
        let from = |a: &Analysis| a.middlebox.as_ref().and_then(|m| m.origin_rtt_from);
        // Without the header: half the crypto in the origin RTT.
        let a = analyze(&[base()]).remove(0);
        assert_eq!(
            a.verdict.explanation,
            Some(Explanation::TlsTerminatingProxy)
        );
        assert!(near(origin(&a).unwrap(), r2 + c / 2.0, 0.01), "{a:?}");
        assert_eq!(from(&a), Some("tls_rtt"));
        // With it: the request's bound, the forwarding time only; server
        // time is the header's, and the handshake's excess is the
        // middlebox's (not the network's).
        let mut f = base();
        f.server_timing = Some(s);
        let a = analyze(&[f]).remove(0);
        assert_eq!(a.verdict.path, PathKind::Middlebox);
        assert!(near(origin(&a).unwrap(), r2 + 0.8, 0.01), "{a:?}");
        assert_eq!(from(&a), Some("server_timing"));
        assert!(near(a.phases.server_ms.unwrap(), s, 0.01), "{:?}", a.phases);
        assert!(
            near(a.phases.middlebox_ms.unwrap(), (t - r1) + r2 + 0.8, 0.01),
            "{:?}",
            a.phases
        );
        assert!(
            a.verdict
                .reasons
                .iter()
                .any(|r| r.contains("Server-Timing"))
        );
        // A header that leaves more than the handshake's bound: the
        // handshake's (the tighter) stands.
        let mut f = base();
        f.server_timing = Some(1.0);
        let a = analyze(&[f]).remove(0);
        assert_eq!(from(&a), Some("tls_rtt"), "{a:?}");
        // One that leaves no time for the way to the origin (a cached
        // response's, another request's): not used, and said so.
        let mut f = base();
        f.server_timing = Some(ttfb);
        let a = analyze(&[f]).remove(0);
        assert_eq!(from(&a), Some("tls_rtt"), "{a:?}");
        assert!(
            a.verdict.reasons.iter().any(|r| r.contains("not used")),
            "{:?}",
            a.verdict.reasons
        );
        // A direct server's header changes nothing about a direct verdict.
        let mut g = tls(4.4, 5.5, Some(4.5), 30.0, 2);
        g.server_timing = Some(25.0);
        let a = analyze(&[g]).remove(0);
        assert_eq!(a.verdict.path, PathKind::Direct, "{:?}", a.verdict);
        assert!(a.middlebox.is_none());
    }

    #[test]
    fn a_user_space_interceptor_a_little_slow_to_answer_the_finished_is_still_found() {
        // mitmproxy measured in the lab: it answered our Finished 1.2 ms
        // past the near round trip, beyond the noise bar, while a relay
        // would miss the ServerHello by 90 ms.
        let mut f = tls(4.4, 96.72, Some(5.60), 68.39, 0);
        f.data_rtt = Some(4.43);
        let a = analyze(&[f]);
        let v = &a[0].verdict;
        assert_eq!(v.path, PathKind::Middlebox, "{v:?}");
        assert_eq!(v.explanation, Some(Explanation::TlsTerminatingProxy));
        assert!(v.reasons.iter().any(|r| r.contains("misses a prediction")));
        // the same late reply from a direct server (no upstream in its
        // ServerHello): a relay 0.6 ms from its origin would look almost
        // the same, so never a middlebox
        let g = tls(4.4, 5.5, Some(5.6), 30.0, 2);
        let a = analyze(&[g]);
        assert_ne!(a[0].verdict.path, PathKind::Middlebox, "{:?}", a[0].verdict);
    }

    #[test]
    fn a_late_segment_of_a_large_first_flight_is_no_round_trip() {
        // haproxy, 30 KB certificate: the "reply" came 2 ms after our
        // Finished with a 4.4 ms handshake: impossible, discarded; the
        // ServerHello still gives the origin RTT.
        let a = analyze(&[tls(4.4, 87.0, Some(2.0), 65.4, 3)]);
        assert_eq!(a[0].verdict.path, PathKind::Middlebox, "{:?}", a[0].verdict);
        assert!(
            a[0].verdict
                .reasons
                .iter()
                .any(|r| r.contains("mismatched sample"))
        );
        let o = a[0].middlebox.as_ref().unwrap().origin_rtt_ms.unwrap();
        assert!(near(o, 41.3, 0.01));
        assert!(a[0].phases.server_ms.is_some());
    }

    #[test]
    fn plain_http_reuse_separates_origin_rtt_and_server() {
        // F1 = R1 + 2 R2 + S, F2 = R1 + R2 + S with R1 4.4, R2 40.7, S 20
        let conn = [http(0, 4.4, 105.8, 0), http(1, 4.4, 65.1, 0)];
        let a = analyze(&conn);
        for x in &a {
            assert_eq!(x.verdict.path, PathKind::Middlebox);
            assert_eq!(x.verdict.evidence_from, None, "both measured it");
            let mb = x.middlebox.as_ref().unwrap();
            assert!(near(mb.origin_rtt_ms.unwrap(), 40.7, 0.01));
            assert!(
                near(x.phases.server_ms.unwrap(), 20.0, 0.01),
                "{:?}",
                x.phases
            );
        }
        assert!(near(a[1].phases.middlebox_ms.unwrap(), 40.7, 0.01));
        assert!(near(a[0].phases.middlebox_ms.unwrap(), 81.4, 0.01));
    }

    #[test]
    fn one_plain_http_request_with_only_the_ttl_is_unknown() {
        let a = analyze(&[http(0, 4.4, 105.8, 0)]);
        assert_eq!(a[0].verdict.path, PathKind::Unknown, "{:?}", a[0].verdict);
        assert_eq!(a[0].verdict.explanation, None);
        let why = a[0].verdict.reasons.join(" | ");
        assert!(why.contains("--reuse 2"), "{why}");
        assert!(why.contains("keep the TTL"), "{why}");
        assert!(sentence(&a[0], &http(0, 4.4, 105.8, 0)).contains("all fit"));
    }

    #[test]
    fn ttl_and_via_together_make_an_http_proxy() {
        let mut f = http(0, 4.4, 35.0, 0);
        f.via = Some("1.1 mid (squid/5.7)".into());
        let a = analyze(&[f.clone()]);
        assert_eq!(a[0].verdict.path, PathKind::Middlebox, "{:?}", a[0].verdict);
        assert_eq!(a[0].verdict.explanation, Some(Explanation::HttpProxy));
        assert_eq!(a[0].phases.server_ms, None);
        assert!(
            a[0].verdict
                .reasons
                .iter()
                .any(|r| r.contains("cannot be told apart"))
        );
        let s = sentence(&a[0], &f);
        assert!(s.contains("cannot be told apart"), "{s}");
    }

    #[test]
    fn a_router_that_keeps_the_ttl_is_not_a_gateway_that_answers() {
        // 25 ms direct path, every packet arrives with TTL 64.
        let a = analyze(&[tls(25.0, 25.9, Some(25.2), 35.1, 0)]);
        assert_eq!(a[0].verdict.path, PathKind::Direct, "{:?}", a[0].verdict);
        assert!(a[0].verdict.reasons[0].contains("keeps the TTL"));
        assert!(near(a[0].phases.server_ms.unwrap(), 10.1, 0.01));
        // plain HTTP: --reuse 2 shows no upstream connect
        let conn = [http(0, 25.0, 35.2, 0), http(1, 25.0, 35.0, 0)];
        let a = analyze(&conn);
        assert_eq!(a[0].verdict.path, PathKind::Direct, "{:?}", a[0].verdict);
        assert!(a[0].verdict.reasons[0].contains("no upstream connect"));
    }

    #[test]
    fn a_servers_per_connection_cost_is_not_a_relay() {
        // watch under wrk: a thread started per connection, 1-3 ms on the first request
        let conn = [http(0, 0.08, 2.9, 1), http(1, 0.08, 0.4, 1)];
        let a = analyze(&conn);
        assert_eq!(a[0].verdict.path, PathKind::Direct, "{:?}", a[0].verdict);
        assert_eq!(a[1].verdict.path, PathKind::Direct);
        assert!(
            a[0].verdict
                .reasons
                .iter()
                .any(|r| r.contains("per-connection cost"))
        );
        // with a second clue (the first hop answered) the same size counts
        let conn = [http(0, 4.0, 11.5, 0), http(1, 4.0, 8.0, 0)];
        assert_eq!(analyze(&conn)[0].verdict.path, PathKind::Middlebox);
    }

    #[test]
    fn a_later_request_says_where_its_verdict_comes_from() {
        let later = later_tls(tls(4.4, 87.2, Some(45.3), 65.0, 0));
        let a = analyze(&[tls(4.4, 87.2, Some(45.3), 65.4, 0), later]);
        assert_eq!(a[0].verdict.evidence_from, None);
        assert_eq!(a[1].verdict.evidence_from, Some(0));
        assert_eq!(a[1].verdict.path, PathKind::Middlebox);
        assert!(near(a[1].phases.middlebox_ms.unwrap(), 40.9, 0.01));
    }

    #[test]
    fn one_requests_analysis_is_the_same_as_in_the_whole_connections() {
        // watch analyses only the request that completed; it must get what
        // analysing the whole connection gives that request.
        let later = later_tls(tls(4.4, 87.2, Some(45.3), 65.4, 0));
        let conns = [
            vec![tls(4.4, 87.2, Some(45.3), 65.4, 0), later],
            vec![
                http(0, 10.6, 211.0, 1),
                http(1, 10.6, 210.8, 1),
                http(2, 10.6, 250.0, 1),
            ],
        ];
        for conn in &conns {
            let all = analyze(conn);
            for (i, a) in all.iter().enumerate() {
                assert_eq!(analyze_one(conn, i).as_ref(), Some(a), "request {i}");
            }
            assert_eq!(analyze_one(conn, conn.len()), None);
        }
    }

    #[test]
    fn slow_server_on_a_direct_path_is_not_a_middlebox() {
        // think 200 ms, RTT 10.6: plain HTTP, reused too
        let conn = [http(0, 10.6, 211.0, 1), http(1, 10.6, 210.8, 1)];
        let a = analyze(&conn);
        assert_eq!(a[0].verdict.path, PathKind::Direct, "{:?}", a[0].verdict);
        assert!(near(a[0].phases.server_ms.unwrap(), 200.4, 0.01));
        let a = analyze(&[tls(10.6, 11.5, Some(10.8), 211.0, 1)]);
        assert_eq!(a[0].verdict.path, PathKind::Direct);
    }

    #[test]
    fn syn_retransmission_wait_is_network_time() {
        let mut f = http(0, 10.5, 10.9, 1);
        f.span = Some(1000.0 + 10.5 + 10.9 + 0.2);
        let a = analyze(&[f]);
        assert_eq!(a[0].verdict.path, PathKind::Direct);
        let p = &a[0].phases;
        assert!(p.network_ms.unwrap() > 1000.0);
        assert!(p.server_ms.unwrap() < 1.0);
    }

    #[test]
    fn an_ambiguous_handshake_is_no_sample() {
        // 20 ms path, a SYN-ACK paired with a SYN it did not answer: 10.4 ms
        let mut f = http(0, 10.4, 25.0, 1);
        f.handshake_clean = false;
        f.data_rtt = Some(20.2);
        let a = analyze(&[f]);
        assert_eq!(a[0].verdict.path, PathKind::Direct, "{:?}", a[0].verdict);
        assert!(a[0].verdict.reasons.iter().any(|r| r.contains("Karn")));
        assert!(near(a[0].phases.server_ms.unwrap(), 4.8, 0.01));
    }

    #[test]
    fn an_inflated_first_handshake_does_not_eat_server_time() {
        // IPv6 first contact: NDP adds 12 ms to the handshake; the ACK of the
        // request shows the path's 10 ms RTT; think 20 ms.
        let mut f = tls(22.0, 10.9, Some(10.2), 30.1, 1);
        f.data_rtt = Some(10.1);
        let a = analyze(&[f]);
        assert_eq!(a[0].verdict.path, PathKind::Direct, "{:?}", a[0].verdict);
        assert!(near(a[0].phases.server_ms.unwrap(), 20.0, 0.01));
        assert!(
            a[0].verdict
                .reasons
                .iter()
                .any(|r| r.contains("first contact waited"))
        );
    }

    #[test]
    fn a_negative_phase_makes_the_verdict_unknown() {
        // a relay's numbers that cannot add up: the first byte sooner than
        // the upstream round trip the Finished reply measured
        let a = analyze(&[tls(4.4, 87.2, Some(45.3), 30.0, 0)]);
        assert_eq!(a[0].verdict.path, PathKind::Unknown, "{:?}", a[0].verdict);
        // the relay itself is held to it now, before any phase is computed
        let relay = cand(&a[0], Explanation::TcpRelay);
        assert!(
            !relay.fits && relay.fails.iter().any(|x| x.contains("first byte came")),
            "{relay:?}"
        );
        assert!(
            a[0].verdict
                .reasons
                .iter()
                .any(|r| r.contains("no explanation fits")),
            "{:?}",
            a[0].verdict
        );
        assert_eq!(a[0].phases.server_ms, None);
    }

    #[test]
    fn neighbour_answering_itself_is_direct_and_no_data_is_unknown() {
        let mut f = http(0, 0.1, 0.3, 0);
        f.on_link = Some(true);
        assert_eq!(analyze(&[f])[0].verdict.path, PathKind::Direct);
        let g = Facts {
            handshake: None,
            ttfb: None,
            ..Facts::default()
        };
        assert_eq!(analyze(&[g])[0].verdict.path, PathKind::Unknown);
    }

    #[test]
    fn path_probe_answered_at_the_first_hop_is_a_clue_not_proof() {
        let mut f = http(0, 4.4, 30.0, 3);
        f.probe_ttl = Some(1);
        let a = analyze(&[f.clone()]);
        assert_eq!(a[0].verdict.path, PathKind::Unknown, "{:?}", a[0].verdict);
        assert!(a[0].verdict.reasons.iter().any(|r| r.contains("TTL 1")));
        f.via = Some("1.1 proxy".into());
        assert_eq!(analyze(&[f])[0].verdict.path, PathKind::Middlebox);
    }

    #[test]
    fn via_is_only_a_hint() {
        let mut f = http(0, 10.0, 12.0, 1);
        f.via = Some("1.1 squid".into());
        let a = analyze(&[f]);
        assert_eq!(a[0].verdict.path, PathKind::Direct);
        assert!(a[0].verdict.reasons.iter().any(|r| r.contains("hint")));
    }

    #[test]
    fn a_starved_client_is_the_clients_time_not_the_networks() {
        // direct 20 ms path, think 13 ms; the client answered every packet
        // late: 200 ms of its own turns inside the wire span, 180 ms between
        // the response's arrival and its read.
        let mut f = tls(20.9, 21.0, Some(20.95), 34.0, 1);
        f.client_turns = Some(200.0);
        f.span = Some(20.9 + 21.0 + 200.0 + 34.0);
        f.user_span = Some(20.9 + 21.0 + 200.0 + 34.0 + 180.0);
        f.stall = Some(ClientStall {
            run_delay_ms: Some(12.0),
            throttled_ms: Some(350.0),
            throttled_periods: Some(4),
            steal_ms: Some(0.0),
        });
        let a = analyze(&[f.clone()]);
        let p = &a[0].phases;
        assert_eq!(a[0].verdict.path, PathKind::Direct, "{:?}", a[0].verdict);
        assert!(near(p.client_ms.unwrap(), 380.0, 0.01), "{p:?}");
        // in flight: the handshake, the TLS round trip, the request's round trip
        assert!(
            near(p.network_ms.unwrap(), 20.9 + 21.0 + 20.9, 0.01),
            "{p:?}"
        );
        assert!(near(p.server_ms.unwrap(), 13.1, 0.01));
        let sum = p.network_ms.unwrap()
            + p.middlebox_ms.unwrap()
            + p.server_ms.unwrap()
            + p.client_ms.unwrap();
        assert!(near(sum, f.user_span.unwrap(), 1e-9), "the phases add up");
        assert_eq!(a[0].verdict.bottleneck, Some(Bottleneck::Client));
        let summary = a[0].verdict.summary.clone().unwrap();
        assert!(summary.contains("throttled 4 times"), "{summary}");
        assert!(
            a[0].verdict.reasons[0].contains("380 ms"),
            "{:?}",
            a[0].verdict
        );
        // the same request unstarved: the network holds most
        let a = analyze(&[tls(20.9, 21.0, Some(20.95), 34.0, 1)]);
        assert_eq!(a[0].verdict.bottleneck, Some(Bottleneck::Network));
        assert!(a[0].phases.client_ms.unwrap() < 3.0);
    }

    #[test]
    fn a_slow_server_is_the_bottleneck_and_unknown_phases_name_none() {
        let a = analyze(&[http(0, 10.6, 211.0, 1)]);
        assert_eq!(a[0].verdict.bottleneck, Some(Bottleneck::Server));
        let a = analyze(&[http(0, 4.4, 105.8, 0)]);
        assert_eq!(a[0].verdict.path, PathKind::Unknown);
        assert_eq!(a[0].verdict.bottleneck, None);
    }

    #[test]
    fn agreeing_samples_beat_an_inflated_handshake() {
        // lab, ARP answered 10 ms late on the far link: the handshake 23.6,
        // the request's ACK rode on the response (33.1), but ServerHello
        // and the Finished's reply agree on the path's 12 ms.
        let mut f = tls(23.55, 12.82, Some(12.13), 33.11, 1);
        f.data_rtt = Some(33.11);
        let a = analyze(&[f]);
        let v = &a[0].verdict;
        assert_eq!(v.path, PathKind::Direct, "{v:?}");
        assert!(!v.reasons.iter().any(|r| r.contains("mismatched")), "{v:?}");
        assert!(v.reasons.iter().any(|r| r.contains("first contact waited")));
        assert!(near(a[0].phases.server_ms.unwrap(), 33.11 - 12.13, 0.01));
    }

    #[test]
    fn a_serverhello_that_waited_for_a_retransmission_is_no_interceptor() {
        // 12% loss from the server, 20 ms path: the ServerHello (and the
        // ACK riding on it) was lost and sent again 224 ms later.
        let mut f = tls(20.69, 243.95, Some(22.55), 31.0, 1);
        f.client_hello_acked = Some(243.95);
        let a = analyze(&[f.clone()]);
        assert_eq!(a[0].verdict.path, PathKind::Direct, "{:?}", a[0].verdict);
        assert!(
            a[0].verdict
                .reasons
                .iter()
                .any(|r| r.contains("sent again"))
        );
        // a proxy that holds its ServerHello acknowledged our ClientHello at once
        f.client_hello_acked = Some(20.8);
        f.tls_round2 = Some(20.9);
        f.ttfb = Some(20.7 + 111.6 + 10.0);
        f.span = Some(20.69 + 243.95 + 1.0 + 20.7 + 111.6 + 10.0);
        let a = analyze(&[f]);
        assert_eq!(a[0].verdict.path, PathKind::Middlebox, "{:?}", a[0].verdict);
    }

    #[test]
    fn repeats_that_vary_widen_the_reuse_bar() {
        // watch under load: the first request 14.4 ms, repeats 8.6-16 ms
        let mut conn = vec![http(0, 4.58, 14.4, 1)];
        for (i, t) in [(1, 8.56), (2, 12.0), (3, 16.0)] {
            conn.push(http(i, 4.58, t, 1));
        }
        let a = analyze(&conn);
        assert!(
            a.iter().all(|x| x.verdict.path == PathKind::Direct),
            "{:?}",
            a[0].verdict
        );
        // a relay 10 ms from its origin, with steady repeats, counts
        let mut conn = vec![http(0, 4.58, 24.8, 1)];
        for i in 1..4 {
            conn.push(http(i, 4.58, 14.8, 1));
        }
        assert_eq!(analyze(&conn)[0].verdict.path, PathKind::Middlebox);
        // a first request 5.9 ms slower than repeats that come 4 ms after
        // a round trip: a relay would have to be closer to its origin than
        // that difference, so it cannot be one
        let mut conn = vec![http(0, 4.58, 14.4, 1)];
        for i in 1..4 {
            conn.push(http(i, 4.58, 8.5, 1));
        }
        let a = analyze(&conn);
        assert_eq!(a[0].verdict.path, PathKind::Direct, "{:?}", a[0].verdict);
        let relay = cand(&a[0], Explanation::TcpRelay);
        assert!(
            !relay.fits && relay.fails[0].contains("repeat"),
            "{relay:?}"
        );
    }

    #[test]
    fn a_late_ticket_on_a_direct_path_is_the_endpoints_own_time() {
        // IPv6, 10.8 ms path: the origin's ticket 5.3 ms late (a busy host);
        // a relay 5.3 ms from its origin would need a ServerHello 9 ms
        // later than the one that came. CI, 11 ms path: the ticket 4.4 ms
        // late, the ServerHello 1.3 ms after a round trip (a relay 4.4 ms
        // from its origin missed by less than a near fit needs, and this
        // read unknown).
        for (h, t, p, ack) in [(10.85, 11.32, 16.14, 10.92), (10.98, 12.26, 15.39, 10.89)] {
            let mut f = tls(h, t, Some(p), 42.26, 1);
            f.client_hello_acked = Some(ack);
            let a = analyze(&[f.clone()]);
            let v = &a[0].verdict;
            assert_eq!(v.path, PathKind::Direct, "{v:?}");
            assert!(cand(&a[0], Explanation::Direct).fits, "{v:?}");
            assert!(
                v.reasons
                    .iter()
                    .any(|r| r.contains("spent that time itself")),
                "{v:?}"
            );
            // the same late reply with a ServerHello two such round trips
            // late is a relay
            f.tls_rtt = Some(h + 2.0 * (p - h) + 0.3);
            let a = analyze(&[f]);
            assert_eq!(a[0].verdict.path, PathKind::Middlebox, "{:?}", a[0].verdict);
            assert_eq!(a[0].verdict.explanation, Some(Explanation::TcpRelay));
        }
    }

    #[test]
    fn a_lost_serverhello_acked_at_once_is_no_proxy() {
        // lab_paths, 12 % loss from the server, 20 ms path: the server ACKed
        // our ClientHello at once, its one-segment flight was lost and came
        // again 220 ms later; it answered our Finished and the request
        // within a round trip. A proxy holding its ServerHello for an
        // upstream 110 ms away could not send the response 31 ms after the
        // request.
        let mut f = tls(20.5, 241.0, Some(20.7), 31.3, 1);
        f.client_hello_acked = Some(20.6);
        let a = analyze(&[f.clone()]);
        let v = &a[0].verdict;
        assert_eq!(v.path, PathKind::Direct, "{v:?}");
        assert!(
            v.reasons.iter().any(|r| r.contains("no path explains")),
            "{v:?}"
        );
        assert!(near(a[0].phases.server_ms.unwrap(), 10.8, 0.01));
        // the same ServerHello, the response an upstream round trip later:
        // a TLS-terminating proxy that held it
        f.ttfb = Some(20.5 + 110.0 + 10.0);
        f.span = Some(20.5 + 241.0 + 140.5 + 1.0);
        f.user_span = Some(20.5 + 241.0 + 140.5 + 2.0);
        let a = analyze(&[f]);
        assert_eq!(a[0].verdict.path, PathKind::Middlebox, "{:?}", a[0].verdict);
        assert_eq!(
            a[0].verdict.explanation,
            Some(Explanation::TlsTerminatingProxy)
        );
    }

    #[test]
    fn significance_grows_with_the_base() {
        assert_eq!(significant(2.0), 1.0);
        assert_eq!(significant(40.0), 10.0);
    }
}
