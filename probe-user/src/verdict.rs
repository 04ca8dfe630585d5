//! Where timelines become a verdict: is there a TCP-terminating middlebox
//! on the path, and where does the time of each request go (network,
//! middlebox, server, local stack)?
//!
//! The rules (docs/verdict.md has the derivations). With H the handshake RTT
//! (to whatever answered the SYN), R1/R2 the RTTs client-to-middlebox and
//! middlebox-to-origin, S the server's think time:
//!
//! - TLS: our Finished is answered at once by the TLS endpoint (a session
//!   ticket, or the TLS 1.2 Finished). That round trip P = R1 + R2, while
//!   H = R1: P well above H means TCP ends nearer than TLS. R2 = P - H.
//! - TLS without that answer: ClientHello -> ServerHello T = R1 + 2 R2 + crypto.
//! - Plain HTTP, two requests on one connection: F1 = R1 + 2 R2 + S (the
//!   middlebox connects upstream when we connect), F2 = R1 + R2 + S, so
//!   R2 = F1 - F2.
//! - A SYN-ACK with an untouched initial TTL from an address that is not on a
//!   local network was made by the gateway or this host.
//! - A SYN sent with TTL 1 (--path-probe) that is answered, for an address
//!   that is not on a local network.
//!
//! Where two quantities cannot be told apart (one plain-HTTP request through
//! a middlebox: R2 and S), the result says so and leaves them null.

use serde::Serialize;

/// What one request contributes, taken from its record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Facts {
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
    /// SYN-ACK TTL, the initial TTL it implies, and the hops.
    pub ttl: Option<u8>,
    pub initial_ttl: Option<u8>,
    pub hops: Option<u8>,
    /// ClientHello -> first server bytes, ms, and whether no retransmission touched it.
    pub tls_rtt: Option<f64>,
    /// Finished -> the TLS endpoint's immediate answer, ms (clean by construction).
    pub tls_round2: Option<f64>,
    /// Request out -> response in, ms.
    pub ttfb: Option<f64>,
    /// Retransmissions during this request (payload, both directions).
    pub retransmits: u32,
    /// Wire span (first SYN or request -> response), ms.
    pub span: Option<f64>,
    /// The same span in user space (connect() or request start -> first byte read), ms.
    pub user_span: Option<f64>,
    /// The destination is on a local subnet (no gateway).
    pub on_link: Option<bool>,
    /// Smallest SYN TTL that got a SYN-ACK (--path-probe).
    pub probe_ttl: Option<u8>,
    /// The response's Via header, if any.
    pub via: Option<String>,
    pub remote: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    Direct,
    Middlebox,
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    pub path: PathKind,
    /// Sentences with the numbers behind the verdict, strongest first.
    pub reasons: Vec<String>,
}

/// Where the wire time of the request went, ms. They add up to the wire span
/// (`wire.span_ms`); `local_stack_ms` is user time on top of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Phases {
    pub network_ms: Option<f64>,
    pub middlebox_ms: Option<f64>,
    pub server_ms: Option<f64>,
    pub local_stack_ms: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Middlebox {
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
pub struct Analysis {
    pub verdict: Verdict,
    pub phases: Phases,
    pub middlebox: Option<Middlebox>,
}

/// The smallest excess over `base` that is not measurement noise: 1 ms or a
/// quarter of the base, whichever is larger (jitter grows with path length).
pub fn significant(base: f64) -> f64 {
    (0.25 * base).max(1.0)
}

fn r(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0} ms")
    } else if x.abs() >= 10.0 {
        format!("{x:.1} ms")
    } else {
        format!("{x:.2} ms")
    }
}

/// Analyses the requests of one connection together (a second request on a
/// connection tells about the first).
pub fn analyze(conn: &[Facts]) -> Vec<Analysis> {
    let first = conn.iter().find(|f| f.index == 0);
    // Evidence that holds for the whole connection.
    let mut fired: Vec<String> = Vec::new();
    let mut direct_checks: Vec<String> = Vec::new();
    let mut limits: Vec<String> = Vec::new();
    let mut r2: Option<(f64, &'static str)> = None;

    let h = conn.iter().find_map(|f| f.handshake);
    let any = first.or(conn.first());

    if let Some(f) = any {
        match (f.on_link, f.hops, f.ttl, f.initial_ttl) {
            (Some(false), Some(0), Some(ttl), Some(init)) => fired.push(format!(
                "the SYN-ACK came with TTL {ttl}, untouched from {init}, although {} is not on a \
                 local network (the route goes through a gateway): the gateway or this host \
                 answered the SYN",
                f.remote
            )),
            (Some(true), Some(0), Some(_), _) => direct_checks.push(format!(
                "{} is on a local network and answered the SYN itself (TTL untouched)",
                f.remote
            )),
            (_, Some(hops), Some(ttl), Some(init)) if hops > 0 => direct_checks.push(format!(
                "the SYN-ACK crossed {hops} hop{} (TTL {ttl} from {init})",
                if hops == 1 { "" } else { "s" }
            )),
            _ => {}
        }
        if let (Some(k), Some(false)) = (f.probe_ttl, f.on_link) {
            if k <= 1 {
                fired.push(format!(
                    "a SYN sent with TTL {k}, which dies at the first router, was answered: the \
                     first hop terminates TCP for {}",
                    f.remote
                ));
            } else {
                direct_checks.push(format!(
                    "the TCP endpoint is {k} hops away (TTL-limited SYNs)"
                ));
            }
        }
    }

    // TLS: the immediate answer to our Finished against the handshake.
    if let (Some(f), Some(h)) = (first.filter(|f| f.tls), h) {
        if let Some(p) = f.tls_round2 {
            let extra = p - h;
            if extra > significant(h) {
                fired.push(format!(
                    "TCP is answered after {} but the TLS endpoint's immediate reply to our \
                     Finished took {}: TCP ends {} nearer than TLS",
                    r(h),
                    r(p),
                    r(extra)
                ));
                r2 = Some((extra, "tls_round2"));
            } else {
                direct_checks.push(format!(
                    "the TLS endpoint replies to our Finished within {} of the TCP handshake \
                     ({} vs {}): TCP and TLS end at the same place",
                    r(extra.max(0.0)),
                    r(p),
                    r(h)
                ));
            }
        } else if let Some(t) = f.tls_rtt.filter(|_| f.retransmits == 0) {
            // T = R + crypto on a direct path: allow generous crypto time.
            let extra = t - h;
            if extra > (2.0 * significant(h)).max(10.0).max(h) {
                fired.push(format!(
                    "TCP is answered after {} but the ServerHello took {}: TLS ends much \
                     farther away than TCP",
                    r(h),
                    r(t)
                ));
                r2 = Some((extra / 2.0, "tls_rtt"));
                limits.push(
                    "the origin RTT comes from the TLS handshake and includes half the \
                     server's crypto time (the server sent no session ticket to time it better)"
                        .into(),
                );
            } else {
                direct_checks.push(format!(
                    "the ServerHello came {} after the ClientHello, {} more than the TCP \
                     handshake (server crypto time)",
                    r(t),
                    r(extra.max(0.0))
                ));
            }
        }
    }

    // Two requests on one connection: the first paid for the upstream connect.
    let f1 = first.filter(|f| f.retransmits == 0).and_then(|f| f.ttfb);
    let f2 = conn
        .iter()
        .filter(|f| f.index > 0 && f.repeats_first && f.retransmits == 0)
        .filter_map(|f| f.ttfb)
        .min_by(|a, b| a.total_cmp(b));
    if let (Some(f1), Some(f2), Some(first)) = (f1, f2, first)
        && !first.tls
    {
        let extra = f1 - f2;
        if extra > significant(h.unwrap_or(f2)) {
            fired.push(format!(
                "the first request on the connection waited {} for its first byte, a later one \
                 {}: the first paid {} more, as for an upstream connection opened when we \
                 connected",
                r(f1),
                r(f2),
                r(extra)
            ));
            if r2.is_none() {
                r2 = Some((extra, "reuse"));
            }
        } else {
            direct_checks.push(format!(
                "a reused request waited as long as the first ({} vs {})",
                r(f2),
                r(f1)
            ));
        }
    }

    if conn.iter().any(|f| f.unprivileged) {
        limits.push(
            "unprivileged mode: the SYN-ACK's TTL (how many hops away TCP ends) is not visible \
             without eBPF, so the verdict rests on timing alone"
                .into(),
        );
    }

    if let Some(v) = conn.iter().find_map(|f| f.via.as_deref()) {
        // A hint only: an origin can set it, a proxy can omit it.
        limits.push(format!("hint: the response carries \"Via: {v}\""));
    }

    let have_wire = h.is_some() && conn.iter().any(|f| f.ttfb.is_some());
    let path = if !fired.is_empty() {
        PathKind::Middlebox
    } else if have_wire {
        PathKind::Direct
    } else {
        PathKind::Unknown
    };
    if path == PathKind::Middlebox && r2.is_none() {
        limits.push(
            "the middlebox's RTT to the origin cannot be told apart from server time with one \
             plain-HTTP request: run with --reuse 2 (or use HTTPS) to separate them"
                .into(),
        );
    }
    if path == PathKind::Direct
        && first.is_some_and(|f| !f.tls)
        && !conn.iter().any(|f| f.index > 0)
        && first.is_some_and(|f| f.probe_ttl.is_none())
    {
        limits.push(
            "one plain-HTTP request cannot show a middlebox that keeps TTLs; --reuse 2, HTTPS \
             or --path-probe can"
                .into(),
        );
    }
    if path == PathKind::Unknown {
        limits.push("no complete wire timeline (the request failed or events were lost)".into());
    }

    conn.iter()
        .map(|f| {
            let mut reasons = fired.clone();
            if path == PathKind::Direct {
                reasons.extend(direct_checks.iter().cloned());
            }
            reasons.extend(limits.iter().cloned());
            let (phases, mb) = phases(f, h, path, r2);
            Analysis {
                verdict: Verdict { path, reasons },
                phases,
                middlebox: mb,
            }
        })
        .collect()
}

fn phases(
    f: &Facts,
    h: Option<f64>,
    path: PathKind,
    r2: Option<(f64, &'static str)>,
) -> (Phases, Option<Middlebox>) {
    let mut p = Phases {
        local_stack_ms: match (f.user_span, f.span) {
            (Some(u), Some(w)) => Some(u - w),
            _ => None,
        },
        ..Default::default()
    };
    let (Some(h), Some(ttfb), Some(span)) = (h, f.ttfb, f.span) else {
        return (p, (path == PathKind::Middlebox).then(|| near(f, h, r2)));
    };
    match path {
        PathKind::Direct | PathKind::Unknown => {
            let server = (ttfb - h).max(0.0);
            p.server_ms = Some(server);
            p.middlebox_ms = Some(0.0);
            p.network_ms = Some(span - server);
        }
        PathKind::Middlebox => {
            if let Some((r2, _)) = r2 {
                // Origin round trips inside this request's span: the upstream
                // connect (first request), the TLS handshake, the request.
                let (k_server, trips) = match (f.index, f.tls) {
                    (0, true) => (1.0, 3.0),
                    (0, false) => (2.0, 2.0),
                    (_, _) => (1.0, 1.0),
                };
                let server = (ttfb - h - k_server * r2).max(0.0);
                let mb = trips * r2;
                p.server_ms = Some(server);
                p.middlebox_ms = Some(mb);
                p.network_ms = Some((span - server - mb).max(0.0));
            }
        }
    }
    let mb = (path == PathKind::Middlebox).then(|| near(f, Some(h), r2));
    (p, mb)
}

fn near(f: &Facts, h: Option<f64>, r2: Option<(f64, &'static str)>) -> Middlebox {
    Middlebox {
        near_rtt_ms: h,
        origin_rtt_ms: r2.map(|x| x.0),
        hops: f.hops,
        origin_rtt_from: r2.map(|x| x.1),
    }
}

/// The one plain sentence for people.
pub fn sentence(a: &Analysis, f: &Facts) -> String {
    let ph = &a.phases;
    match a.verdict.path {
        PathKind::Middlebox => {
            let mb = a.middlebox.clone().unwrap_or_default();
            let near = mb
                .near_rtt_ms
                .map(|x| format!(" after {}", r(x)))
                .unwrap_or_default();
            let hops = mb
                .hops
                .map(|x| format!(" {x} hop{} away", if x == 1 { "" } else { "s" }))
                .unwrap_or_default();
            match (mb.origin_rtt_ms, ph.middlebox_ms, ph.server_ms) {
                (Some(o), Some(cost), Some(s)) => format!(
                    "middlebox: TCP is terminated{hops}{near}, but the origin is about {} \
                     further; the middlebox path adds {} to this request, the server {}.",
                    r(o),
                    r(cost),
                    r(s)
                ),
                _ => format!(
                    "middlebox: TCP is terminated{hops}{near}; the first byte came {} later \
                     (middlebox upstream and server together; they cannot be told apart here).",
                    f.ttfb
                        .zip(mb.near_rtt_ms)
                        .map(|(t, h)| r(t - h))
                        .unwrap_or("-".into())
                ),
            }
        }
        PathKind::Direct => format!(
            "direct: no middlebox on the path; RTT {}, server {}, network {}.",
            f.handshake.map(r).unwrap_or("-".into()),
            ph.server_ms.map(r).unwrap_or("-".into()),
            ph.network_ms.map(r).unwrap_or("-".into()),
        ),
        PathKind::Unknown => "unknown: not enough wire evidence for a verdict.".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS request as the lab records it.
    fn tls(h: f64, t: f64, p: Option<f64>, ttfb: f64, hops: u8) -> Facts {
        Facts {
            index: 0,
            repeats_first: true,
            unprivileged: false,
            tls: true,
            handshake: Some(h),
            ttl: Some(64 - hops),
            initial_ttl: Some(64),
            hops: Some(hops),
            tls_rtt: Some(t),
            tls_round2: p,
            ttfb: Some(ttfb),
            retransmits: 0,
            span: Some(h + t + ttfb + 1.0),
            user_span: Some(h + t + ttfb + 2.0),
            on_link: Some(false),
            probe_ttl: None,
            via: None,
            remote: "10.10.2.1:8443".into(),
        }
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
            ..tls(h, 0.0, None, ttfb, hops)
        }
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

    fn near(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn direct_tls_with_think_time() {
        // RTT 40.7, think 30: T = R + crypto, P = R, F = R + S
        let a = analyze(&[tls(40.7, 41.6, Some(40.9), 71.5, 1)]);
        assert_eq!(a[0].verdict.path, PathKind::Direct, "{:?}", a[0].verdict);
        assert!(near(a[0].phases.server_ms.unwrap(), 30.8, 0.01));
        assert_eq!(a[0].phases.middlebox_ms, Some(0.0));
        assert!(a[0].middlebox.is_none());
    }

    #[test]
    fn tls_through_a_proxy_gives_origin_rtt_and_server_time() {
        // R1 4.4, R2 40.9, S 20: T = R1 + 2 R2 + 1, P = R1 + R2, F = R1 + R2 + S;
        // the SYN-ACK comes from mid with TTL 64 (0 hops) for an off-link address.
        let a = analyze(&[tls(4.4, 87.2, Some(45.3), 65.4, 0)]);
        assert_eq!(a[0].verdict.path, PathKind::Middlebox);
        let mb = a[0].middlebox.as_ref().unwrap();
        assert!(near(mb.origin_rtt_ms.unwrap(), 40.9, 0.01));
        assert_eq!(mb.near_rtt_ms, Some(4.4));
        assert_eq!(mb.hops, Some(0));
        assert!(near(a[0].phases.server_ms.unwrap(), 20.1, 0.01));
        assert!(near(a[0].phases.middlebox_ms.unwrap(), 3.0 * 40.9, 0.01));
        assert_eq!(a[0].verdict.reasons.len(), 2, "{:?}", a[0].verdict.reasons);
    }

    #[test]
    fn timing_alone_finds_a_proxy_that_keeps_ttls() {
        let mut f = tls(4.4, 87.2, Some(45.3), 65.4, 3);
        f.on_link = None;
        let a = analyze(&[f]);
        assert_eq!(a[0].verdict.path, PathKind::Middlebox);
        assert!(a[0].verdict.reasons[0].contains("TCP ends"));
    }

    #[test]
    fn without_a_session_ticket_the_server_hello_decides() {
        let a = analyze(&[tls(4.4, 87.2, None, 65.4, 3)]);
        assert_eq!(a[0].verdict.path, PathKind::Middlebox);
        let o = a[0].middlebox.as_ref().unwrap().origin_rtt_ms.unwrap();
        assert!(near(o, (87.2 - 4.4) / 2.0, 0.01));
        // and slow crypto on a direct path does not fire
        let a = analyze(&[tls(40.0, 48.0, None, 41.0, 3)]);
        assert_eq!(a[0].verdict.path, PathKind::Direct);
    }

    #[test]
    fn plain_http_reuse_separates_origin_rtt_and_server() {
        // F1 = R1 + 2 R2 + S, F2 = R1 + R2 + S with R1 4.4, R2 40.7, S 20
        let conn = [http(0, 4.4, 105.8, 0), http(1, 4.4, 65.1, 0)];
        let a = analyze(&conn);
        for x in &a {
            assert_eq!(x.verdict.path, PathKind::Middlebox);
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
    fn one_plain_http_request_through_a_proxy_says_what_it_cannot_tell() {
        let a = analyze(&[http(0, 4.4, 105.8, 0)]);
        assert_eq!(a[0].verdict.path, PathKind::Middlebox);
        assert_eq!(a[0].phases.server_ms, None);
        assert_eq!(a[0].middlebox.as_ref().unwrap().origin_rtt_ms, None);
        assert!(
            a[0].verdict
                .reasons
                .iter()
                .any(|r| r.contains("cannot be told apart"))
        );
        let s = sentence(&a[0], &http(0, 4.4, 105.8, 0));
        assert!(s.contains("cannot be told apart"), "{s}");
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
    fn path_probe_answered_at_the_first_hop() {
        let mut f = http(0, 4.4, 30.0, 3);
        f.probe_ttl = Some(1);
        let a = analyze(&[f]);
        assert_eq!(a[0].verdict.path, PathKind::Middlebox);
        assert!(a[0].verdict.reasons[0].contains("TTL 1"));
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
    fn significance_grows_with_the_base() {
        assert_eq!(significant(2.0), 1.0);
        assert_eq!(significant(40.0), 10.0);
    }
}
