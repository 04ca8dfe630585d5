//! Where a flow becomes a request's timeline: the user-space marks of one
//! request lined up with the kernel's wire events of its connection, and the
//! wire intervals derived from them.

use crate::{
    model::flows::{Flow, Seg},
    model::record::{TimelineEntry, UserTimes, WireTimes},
    model::tcp::hops_from_ttl,
    model::units::ms_between,
};
use probe_common::DIR_OUT;

/// User-space marks of a connection (CLOCK_MONOTONIC ns).
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnMarks {
    pub dns_start: Option<u64>,
    pub dns_done: Option<u64>,
    pub connect_call: Option<u64>,
    pub connect_done: Option<u64>,
    /// CONNECT written to a declared proxy, and its answer's head read.
    pub proxy_connect_start: Option<u64>,
    pub proxy_connect_done: Option<u64>,
    pub tls_start: Option<u64>,
    pub tls_done: Option<u64>,
    /// TLS 1.3: after our Finished the client needs nothing more from the
    /// server before its request (session tickets come unasked).
    pub tls13: bool,
    /// Raw stream offsets where TLS begins, out and in: 0, or what the
    /// CONNECT and its answer took before it through a proxy's tunnel.
    pub tls_out_at: u64,
    pub tls_in_at: u64,
    /// Raw outgoing offset when the TLS handshake completed: our Finished
    /// lies before it (HTTP/2 writes its preface and SETTINGS between the
    /// handshake and the request).
    pub tls_end_out: Option<u64>,
    /// HTTP/2's PING after the requests: (written ns, raw offset out) and
    /// (its ACK read ns, raw offset in).
    pub h2_ping: Option<((u64, u64), (u64, u64))>,
}

/// User-space marks and stream offsets of one request.
#[derive(Clone, Debug, Default)]
pub(crate) struct RequestMarks {
    pub request_start: Option<u64>,
    /// First and last write of the request.
    pub first_write: Option<u64>,
    pub request_written: Option<u64>,
    pub first_byte_read: Option<u64>,
    pub done: Option<u64>,
    /// Raw stream offsets: request [out_start, out_end), response starts at in_start.
    pub out_start: Option<u64>,
    pub out_end: Option<u64>,
    pub in_start: Option<u64>,
}

/// Our last TLS handshake flight (the Finished) and the first incoming
/// payload after it, when that payload lies before the response (offset
/// below `response_at`): the TLS endpoint answered at once. The Finished is
/// the last segment we sent up to the request (`request_at`), not our
/// first flight after the ClientHello: a TLS 1.3 client sends its
/// ChangeCipherSpec as soon as the ServerHello arrives, and a server flight
/// larger than its initial window (a long certificate chain) goes on
/// arriving a round trip later: that is no reply. Our Finished can only
/// leave once the whole server flight is in, so whatever arrives after it
/// is new.
fn tls_round2(
    f: &Flow,
    response_at: Option<u64>,
    request_at: Option<u64>,
    tls_out_at: u64,
) -> Option<(u64, u64)> {
    let finished = our_finished(f, request_at?, tls_out_at)?;
    let reply = f
        .inb
        .iter()
        .find(|s| !s.retrans && s.ts_ns > finished.ts_ns)?;
    let rtt = path_rtt(f);
    let round_trip =
        ahead_of_response(f, reply, response_at?, rtt) && not_resent(f, finished, reply, rtt);
    round_trip.then_some((finished.ts_ns, reply.ts_ns))
}

/// Our Finished: the last handshake segment we sent before the request at
/// stream offset `request_at` (or the request's own, which it rode with),
/// after the ClientHello at `tls_out_at`.
fn our_finished(f: &Flow, request_at: u64, tls_out_at: u64) -> Option<&Seg> {
    let off = |s: &Seg| f.offset(DIR_OUT, s.seq).map(u64::from);
    let request = f
        .out
        .iter()
        .find(|s| !s.retrans && off(s) == Some(request_at));
    // Our last handshake segment before the request's own, not counting a
    // lone ChangeCipherSpec record (6 bytes: a TLS 1.3 client sends it as
    // soon as the ServerHello arrives, in the middle of the server's
    // flight); none: the Finished rode with the request (as curl sends it).
    f.out
        .iter()
        .filter(|s| !s.retrans && s.len != CCS_RECORD)
        .filter(|s| off(s).is_some_and(|o| o > tls_out_at && o < request_at))
        .max_by_key(|s| s.ts_ns)
        .or(request)
}

/// The path's round trip in ns, to tell a prompt reply from a late one.
fn path_rtt(f: &Flow) -> Option<u64> {
    // The path's round trip as the handshake measured it (or TCP_INFO, for
    // a flow made of socket timestamps), and the noise it allows.
    f.handshake_checked()
        .filter(|x| x.2)
        .map(|(syn, sa, _)| sa - syn)
        .or(f.rtt_hint_ns)
}

/// The noise a round trip of `h` ns allows: a tenth of it, at least 0.5 ms.
fn rtt_slack(h: u64) -> u64 {
    (h / 10).max(500_000)
}

/// The reply came before the response, and not along with it: no server
/// think time is in the round trip it closes.
fn ahead_of_response(f: &Flow, reply: &Seg, response_at: u64, rtt: Option<u64>) -> bool {
    let Some(reply_off) = f.in_offset(reply.seq).map(u64::from) else {
        return false;
    };
    if reply_off >= response_at {
        // That is the response itself: think time is in it.
        return false;
    }
    // Sent with the response (a server that flushes its tickets when it
    // next writes): the think time is in it too.
    if let (Some(resp), Some(h)) = (f.in_covering(response_at as u32), rtt)
        && resp.ts_ns < reply.ts_ns + rtt_slack(h).min(h / 2)
    {
        return false;
    }
    true
}

/// Nothing was sent again between our Finished and the reply, and the reply
/// is not so late that it may answer a copy: the round trip is one.
fn not_resent(f: &Flow, finished: &Seg, reply: &Seg, rtt: Option<u64>) -> bool {
    let (ro, ri) = f.retransmits_between(finished.ts_ns, reply.ts_ns);
    // A reply later than a loss probe could resend it, with our Finished
    // not acknowledged before it, may have been sent again after a loss:
    // no round trip then. A relay, whose kernel acknowledges at once, is
    // not affected.
    let Some(end) = f
        .offset(DIR_OUT, finished.seq)
        .map(|o| o.wrapping_add(finished.len))
    else {
        return false;
    };
    let acked_before = f
        .ack_covering(end, finished.ts_ns)
        .is_some_and(|a| a + 100_000 < reply.ts_ns);
    // (A tail loss probe waits at least two round trips and at least
    // 10 ms: a reply sent again after one comes that much late.)
    let late = rtt.is_none_or(|h| {
        let p = reply.ts_ns - finished.ts_ns;
        p >= 2 * h && p >= h + 10_000_000
    });
    ro + ri == 0 && (!late || acked_before)
}

/// A ChangeCipherSpec record alone: header and one byte.
const CCS_RECORD: u32 = 6;

/// The time from `start` (the SYN-ACK's arrival) to `until` (the
/// request's first segment out) when the next move was ours: from each
/// incoming segment to our next outgoing payload segment that answers it
/// (SYN-ACK -> ClientHello, the server's flight -> our Finished, ...), and
/// from one of our segments to the next when nothing came in between (a
/// request written after the Finished). Intervals never overlap, so a stall
/// is counted once. With `tls13`, what arrives after our last segment
/// before the request (session tickets) answers nothing of ours and asks
/// nothing of us: the wait from the Finished to the request is ours. ns.
pub(crate) fn client_turns(f: &Flow, start: u64, until: u64, tls13: bool) -> u64 {
    let quiet_after = tls13
        .then(|| {
            f.out
                .iter()
                .filter(|s| !s.retrans && s.ts_ns < until)
                .map(|s| s.ts_ns)
                .max()
        })
        .flatten();
    let mut held = 0u64;
    let mut last_out: Option<u64> = None;
    let mut outs: Vec<u64> = f
        .out
        .iter()
        .filter(|s| !s.retrans && s.ts_ns >= start && s.ts_ns <= until)
        .map(|s| s.ts_ns)
        .collect();
    outs.sort_unstable();
    for t in outs {
        let came = f
            .inb
            .iter()
            .filter(|i| i.ts_ns < t && quiet_after.is_none_or(|q| i.ts_ns <= q))
            .map(|i| i.ts_ns)
            .max()
            .unwrap_or(start)
            .max(start);
        let from = last_out.map_or(came, |o| o.max(came));
        held += t.saturating_sub(from);
        last_out = Some(t);
    }
    held
}

fn ms(a: Option<u64>, b: Option<u64>) -> Option<f64> {
    Some(ms_between(a?, b?))
}

/// User-space phase durations. `conn` is given for the first request on a
/// connection only.
pub(crate) fn user_times(conn: Option<&ConnMarks>, req: &RequestMarks) -> UserTimes {
    let start = conn
        .and_then(|c| c.dns_start.or(c.connect_call))
        .or(req.request_start);
    UserTimes {
        dns_ms: conn.and_then(|c| ms(c.dns_start, c.dns_done)),
        connect_ms: conn.and_then(|c| ms(c.connect_call, c.connect_done)),
        proxy_connect_ms: conn.and_then(|c| ms(c.proxy_connect_start, c.proxy_connect_done)),
        h2_ping_ms: conn
            .and_then(|c| c.h2_ping)
            .map(|((a, _), (b, _))| ms_between(a, b)),
        tls_ms: conn.and_then(|c| ms(c.tls_start, c.tls_done)),
        ttfb_ms: ms(req.request_written, req.first_byte_read),
        total_ms: ms(start, req.done),
    }
}

/// Wire intervals and the merged timeline of one request.
pub(crate) fn assemble(
    flow: Option<&Flow>,
    conn: Option<&ConnMarks>,
    tls: bool,
    req: &RequestMarks,
) -> (WireTimes, Vec<TimelineEntry>) {
    let mut tl = user_marks(conn, req);
    let Some(f) = flow else {
        tl.sort_by_key(|e| e.t_ns);
        return (WireTimes::default(), tl);
    };
    let mut a = Assembly {
        f,
        conn,
        req,
        w: WireTimes::default(),
        tl,
    };
    a.handshake_times();
    a.synack_facts();
    // Handshake packets belong to the first request's timeline only.
    if conn.is_some() {
        a.handshake_marks();
        a.proxy_connect();
        a.h2_ping();
        if tls {
            a.tls_hello();
            a.tls_second_round();
        }
    }
    let req_out = a.request_out();
    let resp_in = a.response_in(req_out);
    a.ttfb(req_out, resp_in);
    a.our_turns(req_out);
    a.span(req_out, resp_in);
    a.retransmits();
    a.fins_and_rsts();
    a.tl.sort_by_key(|e| e.t_ns);
    (a.w, a.tl)
}

/// The user-space marks of the request (and of its connection, for the
/// first request on it), unsorted: the timeline before the wire joins it.
fn user_marks(conn: Option<&ConnMarks>, req: &RequestMarks) -> Vec<TimelineEntry> {
    let mut tl: Vec<TimelineEntry> = Vec::new();
    let mut user = |event: &'static str, t: Option<u64>| {
        if let Some(t_ns) = t {
            tl.push(TimelineEntry {
                event,
                source: "user",
                t_ns,
            });
        }
    };
    if let Some(c) = conn {
        user("dns_start", c.dns_start);
        user("dns_done", c.dns_done);
        user("connect_call", c.connect_call);
        user("connect_done", c.connect_done);
        user("proxy_connect_start", c.proxy_connect_start);
        user("proxy_connect_done", c.proxy_connect_done);
        user("tls_start", c.tls_start);
        user("tls_done", c.tls_done);
    }
    user("request_start", req.request_start);
    user("request_written", req.request_written);
    user("first_byte_read", req.first_byte_read);
    user("done", req.done);
    tl
}

/// One request's flow being turned into wire times and timeline entries:
/// the inputs each step reads and the two results they fill in.
struct Assembly<'a> {
    f: &'a Flow,
    /// Given for the first request on a connection only.
    conn: Option<&'a ConnMarks>,
    req: &'a RequestMarks,
    w: WireTimes,
    tl: Vec<TimelineEntry>,
}

impl Assembly<'_> {
    /// Adds a wire event (a kernel packet timestamp) to the timeline.
    fn wire(&mut self, event: &'static str, t: u64) {
        self.tl.push(TimelineEntry {
            event,
            source: "wire",
            t_ns: t,
        })
    }

    /// The handshake's round trip, the wait for the SYN-ACK and the SYNs
    /// sent again: how long connecting took on the wire.
    fn handshake_times(&mut self) {
        let (f, w) = (self.f, &mut self.w);
        if let Some((syn, sa, clean)) = f.handshake_checked() {
            w.handshake_rtt_ms = Some(ms_between(syn, sa));
            w.handshake_clean = Some(clean);
        }
        if let (Some(first), Some(sa)) = (f.syns.first(), f.synack.as_ref()) {
            w.connect_wait_ms = Some(ms_between(*first, sa.ts_ns));
        }
        if !f.syns.is_empty() {
            w.syn_retransmits = Some(f.syn_retransmits());
        }
    }

    /// What the SYN-ACK tells of whatever answered our SYN: its TTL and
    /// hops, its window and TCP options.
    fn synack_facts(&mut self) {
        let w = &mut self.w;
        if let Some(sa) = &self.f.synack {
            let (init, hops) = hops_from_ttl(sa.ttl);
            w.synack_ttl = Some(sa.ttl);
            w.synack_initial_ttl = Some(init);
            w.synack_hops = Some(hops);
            w.synack_window = Some(sa.window);
            if let Ok(o) = &sa.options {
                w.synack_mss = o.mss;
                w.synack_wscale = o.wscale;
                w.synack_sack_permitted = Some(o.sack_permitted);
                w.synack_timestamps = Some(o.timestamps.is_some());
            }
        }
    }

    /// The SYNs and the SYN-ACK on the timeline (first request only).
    fn handshake_marks(&mut self) {
        let f = self.f;
        for &t in &f.syns {
            self.wire("syn_out", t);
        }
        if let Some(sa) = &f.synack {
            self.wire("synack_in", sa.ts_ns);
        }
    }

    /// Through a declared proxy's tunnel: the CONNECT out (the first
    /// bytes sent) and the first segment of its answer in.
    fn proxy_connect(&mut self) {
        let f = self.f;
        if self.conn.is_none_or(|c| c.proxy_connect_start.is_none()) {
            return;
        }
        let out = f.out_covering(0).map(|s| s.ts_ns);
        let answer = f.in_covering(0).map(|s| s.ts_ns);
        if let Some(t) = out {
            self.wire("proxy_connect_out", t);
        }
        if let Some(t) = answer {
            self.wire("proxy_connect_in", t);
        }
        if let (Some(a), Some(b)) = (out, answer) {
            self.w.proxy_connect_ms = Some(ms_between(a, b));
        }
    }

    /// HTTP/2's PING and its ACK on the wire: the segments that carried
    /// them, by their stream offsets.
    fn h2_ping(&mut self) {
        let f = self.f;
        let Some(((_, out_at), (_, in_at))) = self.conn.and_then(|c| c.h2_ping) else {
            return;
        };
        let out = f.out_covering(out_at as u32).map(|s| s.ts_ns);
        let back = f.in_covering(in_at as u32).map(|s| s.ts_ns);
        if let (Some(a), Some(b)) = (out, back)
            && b > a
        {
            self.wire("h2_ping_out", a);
            self.wire("h2_ping_ack_in", b);
            self.w.h2_ping_rtt_ms = Some(ms_between(a, b));
        }
    }

    /// TLS's first round: ClientHello out, ServerHello in, the round trip
    /// between them, and how soon a TCP endpoint acknowledged the
    /// ClientHello.
    fn tls_hello(&mut self) {
        let f = self.f;
        let (out_at, in_at) = self.conn.map_or((0, 0), |c| (c.tls_out_at, c.tls_in_at));
        let ch = f.out_covering(out_at as u32);
        let sh = server_hello(f, ch, in_at);
        if let Some(s) = ch {
            self.wire("client_hello_out", s.ts_ns);
        }
        if let Some(s) = sh {
            self.wire("server_hello_in", s.ts_ns);
        }
        if let (Some(a), Some(b)) = (ch, sh) {
            self.w.tls_rtt_ms = Some(ms_between(a.ts_ns, b.ts_ns));
        }
        if let Some(a) = ch
            && let Some(ack) = f.ack_covering(out_at as u32 + a.len, a.ts_ns)
        {
            self.w.client_hello_acked_ms = Some(ms_between(a.ts_ns, ack));
        }
    }

    /// TLS's second round (our Finished and the TLS endpoint's prompt
    /// reply), when there is one: a round trip with no think time in it.
    fn tls_second_round(&mut self) {
        let out_at = self.conn.map_or(0, |c| c.tls_out_at);
        // The Finished is looked for before the handshake's end (before
        // the request when that is not known).
        let before = match (self.conn.and_then(|c| c.tls_end_out), self.req.out_start) {
            (Some(e), Some(o)) => Some(e.min(o)),
            (e, o) => o.or(e),
        };
        if let Some((a, b)) = tls_round2(self.f, self.req.in_start, before, out_at) {
            self.wire("client_finished_out", a);
            self.wire("tls_round2_in", b);
            self.w.tls_round2_ms = Some(ms_between(a, b));
        }
    }

    /// The request's first segment out and the ACK covering all of it (a
    /// round trip to the TCP endpoint); returns when the request left.
    fn request_out(&mut self) -> Option<u64> {
        let (f, req) = (self.f, self.req);
        let req_out = req
            .out_start
            .and_then(|o| f.out_covering(o as u32))
            .map(|s| s.ts_ns);
        if let Some(t) = req_out {
            self.wire("request_out", t);
            if let Some(end) = req.out_end
                && let Some(a) = f.ack_covering(end as u32, t)
            {
                self.wire("request_acked", a);
                self.w.data_rtt_ms = Some(ms_between(t, a));
            }
        }
        req_out
    }

    /// The response's arrival on the timeline; returns it.
    fn response_in(&mut self, req_out: Option<u64>) -> Option<u64> {
        let resp_in = first_response_in(self.f, self.req, req_out);
        if let Some(t) = resp_in {
            self.wire("response_in", t);
        }
        resp_in
    }

    /// The wire TTFB (request out to response in), and whether the request
    /// went out again in between.
    fn ttfb(&mut self, req_out: Option<u64>, resp_in: Option<u64>) {
        let (f, req, w) = (self.f, self.req, &mut self.w);
        if let (Some(a), Some(b)) = (req_out, resp_in) {
            w.ttfb_ms = Some(ms_between(a, b));
            // The request sent again before the response: the server may have
            // had only the copy (the verdict decides, knowing the path's RTT).
            if let Some(o) = req.out_start {
                w.request_resent_ms = f
                    .out
                    .iter()
                    .filter(|s| s.retrans && s.ts_ns > a && s.ts_ns < b)
                    .filter(|s| f.offset(DIR_OUT, s.seq).is_some_and(|x| (x as u64) <= o))
                    .map(|s| ms_between(a, s.ts_ns))
                    .max_by(f64::total_cmp);
            }
        }
    }

    /// The time the next move was ours from the SYN-ACK to the request (none
    /// on a reused connection, whose request is its own first move).
    fn our_turns(&mut self, req_out: Option<u64>) {
        let (f, conn) = (self.f, self.conn);
        self.w.client_turns_ms = match (conn.is_some(), f.synack.as_ref(), req_out) {
            (true, Some(sa), Some(t)) => Some(ms_between(
                0,
                client_turns(f, sa.ts_ns, t, conn.is_some_and(|c| c.tls13)),
            )),
            (false, _, Some(_)) => Some(0.0),
            _ => None,
        };
    }

    /// The wire span the verdict's phases divide up: from the first SYN
    /// (or, on a reused connection, the request) to the response.
    fn span(&mut self, req_out: Option<u64>, resp_in: Option<u64>) {
        let span_start = if self.conn.is_some() {
            self.f.syns.first().copied()
        } else {
            req_out
        };
        if let (Some(a), Some(b)) = (span_start, resp_in) {
            self.w.span_ms = Some(ms_between(a, b));
        }
    }

    /// Counts and marks the segments sent again while this request ran.
    fn retransmits(&mut self) {
        let (f, req) = (self.f, self.req);
        // Retransmissions inside this request's window of time.
        let from = if self.conn.is_some() {
            f.syns.first().copied()
        } else {
            req.request_start
        };
        if let (Some(from), Some(to)) = (from, req.done.or(req.first_byte_read)) {
            let (o, i) = f.retransmits_between(from, to);
            self.w.retransmits = Some(o + i);
            self.w.retransmits_out = Some(o);
            self.w.retransmits_in = Some(i);
            for s in f.out.iter().chain(f.inb.iter()) {
                if s.retrans && s.ts_ns >= from && s.ts_ns <= to {
                    self.wire(
                        if f.out.contains(s) {
                            "retransmit_out"
                        } else {
                            "retransmit_in"
                        },
                        s.ts_ns,
                    );
                }
            }
        }
    }

    /// The connection's FINs near this request, and all its RSTs: how and
    /// when it ended.
    fn fins_and_rsts(&mut self) {
        let (f, req) = (self.f, self.req);
        for &(dir, t) in &f.fins {
            if req
                .done
                .is_none_or(|d| t >= req.request_start.unwrap_or(0) && t <= d + 1_000_000_000)
            {
                self.wire(if dir == DIR_OUT { "fin_out" } else { "fin_in" }, t);
            }
        }
        for &(dir, t) in &f.rsts {
            self.wire(if dir == DIR_OUT { "rst_out" } else { "rst_in" }, t);
        }
    }
}

/// The ServerHello's segment (at incoming offset `in_at`), or the server
/// flight's first to arrive when that one was lost: the end of TLS's first
/// round trip.
fn server_hello<'f>(f: &'f Flow, ch: Option<&Seg>, in_at: u64) -> Option<&'f Seg> {
    // The server's first flight leaves at once: when its first
    // segment (the ServerHello) was lost, a later one arrives on
    // time, and the ServerHello a retransmission timeout later.
    let first_in = f.in_covering(in_at as u32);
    let earlier = ch.and_then(|c| {
        f.inb
            .iter()
            .filter(|s| !s.retrans && s.ts_ns > c.ts_ns)
            .filter(|s| {
                f.in_offset(s.seq)
                    .is_some_and(|o| u64::from(o) > in_at && u64::from(o) - in_at < 1 << 20)
            })
            .filter(|s| first_in.is_none_or(|x| s.ts_ns < x.ts_ns))
            .min_by_key(|s| s.ts_ns)
    });
    earlier.or(first_in)
}

/// When the response began to arrive: the time the server's answer is
/// measured to.
fn first_response_in(f: &Flow, req: &RequestMarks, req_out: Option<u64>) -> Option<u64> {
    // The first response bytes to arrive, whichever they are: when the
    // first segment was lost, a later one arrives first (and the first
    // comes again after a retransmission timeout, which is not the server's
    // time).
    req.in_start.and_then(|o| {
        let first = f.in_covering(o as u32).map(|s| s.ts_ns);
        let later = f
            .inb
            .iter()
            .filter(|s| !s.retrans && req_out.is_none_or(|t| s.ts_ns > t))
            .filter(|s| {
                f.in_offset(s.seq)
                    .is_some_and(|x| x as u64 > o && x as u64 - o < 1 << 30)
            })
            .map(|s| s.ts_ns)
            .min();
        match (first, later) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::flows::tests::sample_flow;

    fn marks() -> RequestMarks {
        RequestMarks {
            request_start: Some(1900),
            first_write: Some(1950),
            request_written: Some(1990),
            first_byte_read: Some(3100),
            done: Some(3600),
            out_start: Some(0),
            out_end: Some(200),
            in_start: Some(0),
        }
    }

    #[test]
    fn wire_intervals_from_a_recorded_flow() {
        let f = sample_flow();
        let conn = ConnMarks {
            dns_start: Some(0),
            dns_done: Some(0),
            connect_call: Some(0),
            connect_done: Some(1150),
            ..Default::default()
        };
        let (w, tl) = assemble(Some(&f), Some(&conn), false, &marks());
        assert_eq!(w.handshake_rtt_ms, Some(100e-6));
        assert_eq!(w.connect_wait_ms, Some(1100e-6));
        assert_eq!(w.syn_retransmits, Some(1));
        assert_eq!(w.synack_ttl, Some(61));
        assert_eq!(w.synack_hops, Some(3));
        assert_eq!(w.synack_mss, Some(1460));
        assert_eq!(w.data_rtt_ms, Some(200e-6));
        assert_eq!(w.ttfb_ms, Some(1000e-6));
        assert_eq!(w.retransmits, Some(1));
        assert_eq!(w.tls_rtt_ms, None);
        let names: Vec<_> = tl.iter().map(|e| e.event).collect();
        assert_eq!(
            names,
            [
                "dns_start",
                "dns_done",
                "connect_call",
                "syn_out",
                "syn_out",
                "synack_in",
                "connect_done",
                "request_start",
                "request_written",
                "request_out",
                "request_acked",
                "response_in",
                "first_byte_read",
                "retransmit_in",
                "done",
                "fin_in"
            ]
        );
        assert!(tl.windows(2).all(|p| p[0].t_ns <= p[1].t_ns));
    }

    /// A TLS 1.3 connection: SYN 0, SYN-ACK 100, ClientHello 200 (300
    /// bytes); then `segs`: (direction, ts, stream offset, length).
    fn tls_flow(segs: &[(u8, u64, u32, u32)]) -> Flow {
        use crate::model::flows::tests::ev;
        use probe_common::{DIR_IN, EV_DATA, EV_SYN, EV_SYNACK};
        let mut f = Flow::new(probe_common::FlowKey::default(), 5);
        f.push(&ev(EV_SYN, DIR_OUT, 0, 100, 0, 0, 0));
        f.push(&ev(EV_SYNACK, DIR_IN, 100, 7000, 101, 0, 0));
        f.push(&ev(EV_DATA, DIR_OUT, 200, 101, 7001, 300, 0));
        for &(dir, ts, off, len) in segs {
            let seq = if dir == DIR_OUT {
                101 + off
            } else {
                7001 + off
            };
            f.push(&ev(EV_DATA, dir, ts, seq, 0, len, 0));
        }
        f
    }

    /// A server flight over two round trips: ServerHello 300, our CCS 310,
    /// the rest of the certificate 700, our Finished 900, the request 950,
    /// the ticket 1300, the response 1400.
    fn two_round_flight() -> Flow {
        use probe_common::DIR_IN;
        tls_flow(&[
            (DIR_IN, 300, 0, 1400),
            (DIR_OUT, 310, 300, 6),
            (DIR_IN, 700, 1400, 20000),
            (DIR_OUT, 900, 306, 80),
            (DIR_OUT, 950, 386, 100),
            (DIR_IN, 1300, 21400, 200),
            (DIR_IN, 1400, 21600, 500),
        ])
    }

    #[test]
    fn the_finished_is_our_last_handshake_segment_not_the_change_cipher_spec() {
        use probe_common::DIR_IN;
        let f = two_round_flight();
        assert_eq!(tls_round2(&f, Some(21600), Some(386), 0), Some((900, 1300)));
        // Finished and request in one segment after the server's flight
        let f = tls_flow(&[
            (DIR_IN, 300, 0, 1400),
            (DIR_OUT, 310, 300, 6),
            (DIR_IN, 700, 1400, 2000),
            (DIR_OUT, 900, 306, 180),
            (DIR_IN, 1300, 3400, 200),
            (DIR_IN, 1400, 3600, 500),
        ]);
        assert_eq!(tls_round2(&f, Some(3600), Some(306), 0), Some((900, 1300)));
        // the first bytes after the Finished are the response: no sample
        assert_eq!(tls_round2(&f, Some(3400), Some(306), 0), None);
    }

    #[test]
    fn replies_that_are_no_round_trip_are_left_out() {
        use crate::model::flows::tests::ev;
        use probe_common::{DIR_IN, EV_ACK_COVER, EV_DATA, EV_SYN, EV_SYNACK};
        const MS: u64 = 1_000_000;
        // 20 ms path; our Finished at 100 ms, the request at 101; the
        // ticket at `reply`, the response at 150 ms; the Finished
        // acknowledged at `acked` (0: only by the reply)
        let run = |reply: u64, acked: u64| {
            let mut f = Flow::new(probe_common::FlowKey::default(), 5);
            f.push(&ev(EV_SYN, DIR_OUT, 0, 100, 0, 0, 0));
            f.push(&ev(EV_SYNACK, DIR_IN, 20 * MS, 7000, 101, 0, 0));
            f.push(&ev(EV_DATA, DIR_OUT, 21 * MS, 101, 7001, 300, 0));
            f.push(&ev(EV_DATA, DIR_IN, 41 * MS, 7001, 401, 1400, 0));
            f.push(&ev(EV_DATA, DIR_OUT, 100 * MS, 401, 8401, 80, 0));
            f.push(&ev(EV_DATA, DIR_OUT, 101 * MS, 481, 8401, 100, 0));
            if acked > 0 {
                f.push(&ev(EV_ACK_COVER, DIR_IN, acked, 8401, 481, 0, 0));
            }
            f.push(&ev(EV_DATA, DIR_IN, reply, 8401, 581, 200, 0));
            f.push(&ev(EV_DATA, DIR_IN, 150 * MS, 8601, 581, 500, 0));
            tls_round2(&f, Some(1600), Some(380), 0)
        };
        // at once: a round trip
        assert_eq!(run(120 * MS, 0), Some((100 * MS, 120 * MS)));
        // with the response (tickets flushed with the next write): no
        assert_eq!(run(149_900_000, 0), None);
        // later than a loss probe, nothing acknowledged before: maybe resent
        assert_eq!(run(141 * MS, 0), None);
        // the same, but our Finished was acknowledged at once: a far TLS
        // endpoint behind a relay, a round trip
        assert_eq!(run(141 * MS, 120 * MS), Some((100 * MS, 141 * MS)));
    }

    #[test]
    fn a_lost_first_response_segment_is_timed_by_the_next_one() {
        use probe_common::DIR_IN;
        // request 1000; response segment 2 arrives at 1500, segment 1 is
        // resent and arrives at 3000
        let mut f = tls_flow(&[(DIR_OUT, 1000, 300, 100), (DIR_IN, 1500, 1448, 1448)]);
        let mut e =
            crate::model::flows::tests::ev(probe_common::EV_DATA, DIR_IN, 3000, 7001, 0, 1448, 0);
        e.ev_flags = probe_common::EVF_RETRANS;
        f.push(&e);
        let m = RequestMarks {
            out_start: Some(300),
            out_end: Some(400),
            in_start: Some(0),
            ..Default::default()
        };
        let (w, _) = assemble(Some(&f), None, false, &m);
        assert_eq!(w.ttfb_ms, Some(500e-6));
    }

    #[test]
    fn client_turns_count_each_wait_once() {
        use probe_common::DIR_IN;
        // SYN-ACK 100 -> ClientHello 200: 100 ours; ServerHello 300 ->
        // CCS 400: 100; the rest in at 450, Finished at 1400: ours since
        // the CCS left and the flight came, 950; request 1500: 100 more.
        let f = tls_flow(&[
            (DIR_IN, 300, 0, 1400),
            (DIR_OUT, 400, 300, 6),
            (DIR_IN, 450, 1400, 1000),
            (DIR_OUT, 1400, 306, 80),
            (DIR_OUT, 1500, 386, 100),
        ]);
        assert_eq!(client_turns(&f, 100, 1500, false), 100 + 100 + 950 + 100);
        // nothing counts before the SYN-ACK or after the request
        assert_eq!(client_turns(&f, 100, 200, false), 100);
        // TLS 1.3: a session ticket that came before the request was
        // written does not end the client's turn
        let f = tls_flow(&[
            (DIR_IN, 300, 0, 1400),
            (DIR_OUT, 310, 300, 6),
            (DIR_OUT, 400, 306, 80),
            (DIR_IN, 900, 1400, 200),
            (DIR_OUT, 5000, 386, 100),
        ]);
        assert_eq!(client_turns(&f, 100, 5000, true), 100 + 10 + 90 + 4600);
        assert_eq!(client_turns(&f, 100, 5000, false), 100 + 10 + 90 + 4100);
    }

    #[test]
    fn tls_rtt_uses_stream_offset_zero() {
        let f = sample_flow();
        let (w, _) = assemble(Some(&f), Some(&ConnMarks::default()), true, &marks());
        assert_eq!(w.tls_rtt_ms, Some(1000e-6));
    }

    #[test]
    fn reused_connection_has_no_handshake_events_and_no_flow_means_no_wire() {
        let f = sample_flow();
        let (_, tl) = assemble(Some(&f), None, false, &marks());
        assert!(!tl.iter().any(|e| e.event == "syn_out"));
        let (w, tl) = assemble(None, None, false, &marks());
        assert_eq!(w, WireTimes::default());
        assert!(tl.iter().all(|e| e.source == "user"));
    }

    #[test]
    fn a_tunnels_connect_comes_before_tls() {
        use crate::model::flows::tests::ev;
        use probe_common::{DIR_IN, EV_DATA, EV_SYN, EV_SYNACK};
        const MS: u64 = 1_000_000;
        // CONNECT (100 bytes) and its answer (39), then TLS: ClientHello
        // (300) and the server's flight (1000), then the request (200) and
        // the response.
        let mut f = Flow::new(probe_common::FlowKey::default(), 5);
        for e in [
            ev(EV_SYN, DIR_OUT, 0, 1000, 0, 0, 0),
            ev(EV_SYNACK, DIR_IN, 4 * MS, 5000, 1001, 0, 0),
            ev(EV_DATA, DIR_OUT, 5 * MS, 1001, 5001, 100, 0),
            ev(EV_DATA, DIR_IN, 40 * MS, 5001, 1101, 39, 0),
            ev(EV_DATA, DIR_OUT, 51 * MS, 1101, 5040, 300, 0),
            ev(EV_DATA, DIR_IN, 96 * MS, 5040, 1401, 1000, 0),
            ev(EV_DATA, DIR_OUT, 97 * MS, 1401, 6040, 200, 0),
            ev(EV_DATA, DIR_IN, 160 * MS, 6040, 1601, 500, 0),
        ] {
            f.push(&e);
        }
        let conn = ConnMarks {
            connect_call: Some(0),
            connect_done: Some(4 * MS),
            proxy_connect_start: Some(5 * MS),
            proxy_connect_done: Some(40 * MS),
            tls_start: Some(41 * MS),
            tls_done: Some(97 * MS),
            tls13: true,
            tls_out_at: 100,
            tls_in_at: 39,
            ..Default::default()
        };
        let m = RequestMarks {
            request_start: Some(97 * MS),
            request_written: Some(97 * MS),
            first_byte_read: Some(160 * MS),
            done: Some(161 * MS),
            out_start: Some(400),
            out_end: Some(600),
            in_start: Some(1039),
            ..Default::default()
        };
        let (w, tl) = assemble(Some(&f), Some(&conn), true, &m);
        assert_eq!(w.proxy_connect_ms, Some(35.0));
        // The ClientHello is not the CONNECT, the ServerHello not its answer.
        assert_eq!(w.tls_rtt_ms, Some(45.0));
        assert_eq!(w.ttfb_ms, Some(63.0));
        let at = |name| tl.iter().find(|e| e.event == name).map(|e| e.t_ns);
        assert_eq!(at("proxy_connect_out"), Some(5 * MS));
        assert_eq!(at("proxy_connect_in"), Some(40 * MS));
        assert_eq!(at("client_hello_out"), Some(51 * MS));
        assert_eq!(at("server_hello_in"), Some(96 * MS));
        // Without the tunnel's offsets the CONNECT would pass for TLS.
        let direct = ConnMarks {
            proxy_connect_start: None,
            tls_out_at: 0,
            tls_in_at: 0,
            ..conn
        };
        let (w, _) = assemble(Some(&f), Some(&direct), true, &m);
        assert_eq!(w.proxy_connect_ms, None);
        assert_eq!(w.tls_rtt_ms, Some(35.0));
    }

    #[test]
    fn user_times_per_phase() {
        let conn = ConnMarks {
            dns_start: Some(0),
            dns_done: Some(1_000_000),
            connect_call: Some(1_000_000),
            connect_done: Some(3_000_000),
            proxy_connect_start: Some(3_100_000),
            proxy_connect_done: Some(3_600_000),
            ..Default::default()
        };
        let r = RequestMarks {
            request_written: Some(4_000_000),
            first_byte_read: Some(9_000_000),
            done: Some(10_000_000),
            ..Default::default()
        };
        let u = user_times(Some(&conn), &r);
        assert_eq!(u.dns_ms, Some(1.0));
        assert_eq!(u.connect_ms, Some(2.0));
        assert_eq!(u.proxy_connect_ms, Some(0.5));
        assert_eq!(u.tls_ms, None);
        assert_eq!(u.ttfb_ms, Some(5.0));
        assert_eq!(u.total_ms, Some(10.0));
        let u = user_times(
            None,
            &RequestMarks {
                request_start: Some(8_000_000),
                ..r
            },
        );
        assert_eq!(u.dns_ms, None);
        assert_eq!(u.total_ms, Some(2.0));
    }

    #[test]
    fn tls_rounds_take_their_place_in_the_timeline() {
        let f = two_round_flight();
        let m = RequestMarks {
            request_start: Some(940),
            done: Some(2000),
            out_start: Some(386),
            out_end: Some(486),
            in_start: Some(21600),
            ..Default::default()
        };
        let (w, tl) = assemble(Some(&f), Some(&ConnMarks::default()), true, &m);
        assert_eq!(w.tls_rtt_ms, Some(100e-6));
        assert_eq!(w.tls_round2_ms, Some(400e-6));
        assert_eq!(w.ttfb_ms, Some(450e-6));
        assert_eq!(w.span_ms, Some(1400e-6));
        let names: Vec<_> = tl.iter().map(|e| e.event).collect();
        assert_eq!(
            names,
            [
                "syn_out",
                "synack_in",
                "client_hello_out",
                "server_hello_in",
                "client_finished_out",
                "request_start",
                "request_out",
                "tls_round2_in",
                "response_in",
                "done"
            ]
        );
        // a reused connection: no handshake, no TLS rounds
        let (w, tl) = assemble(Some(&f), None, true, &m);
        assert_eq!((w.tls_rtt_ms, w.tls_round2_ms), (None, None));
        assert_eq!(w.client_turns_ms, Some(0.0));
        assert!(!tl.iter().any(|e| e.event.starts_with("client_")));
    }
}
