//! Where passive events become requests (`synack watch`): every connection
//! the host opens or accepts is followed from its kernel events, its turns
//! (who speaks when) are cut into requests, and each request becomes a
//! `Record` with the same wire fields and verdict as the active probe.
//!
//! A request is a turn of the side that opened the connection (client side:
//! our data out; server side: the peer's data in) up to the next such turn;
//! its response is the other side's turn in between. Plain HTTP/1.x is
//! recognised from the request line; TLS from the ClientHello, whose
//! handshake turns are not requests. Other protocols are not reported.
//!
//! Memory is bounded whatever the load: at most `max_conns` connections are
//! followed (the longest idle is dropped first, and counted), each keeps one
//! pending request and the segments since its start.

use crate::{
    host::netif::{LocalNet, on_link},
    model::flows::{Flow, key_addrs},
    model::record::{ErrorInfo, ErrorKind, Record, TimelineEntry, WireTimes},
    model::sniff::{self, Proto},
    model::tcp::hops_from_ttl,
    model::timeline::{self, ConnMarks, RequestMarks},
    model::units::ms_between,
    model::verdict::{self, Facts},
};
use probe_common::{
    DIR_IN, DIR_OUT, EV_DATA, EV_FIN, EV_RST, EV_SYN, EVF_RETRANS, EVF_TURN_START, Event, FlowKey,
};
use serde::Serialize;
use std::collections::HashMap;

/// How the tracker cuts and bounds.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Keep query strings of request paths (they may hold secrets).
    pub keep_query: bool,
    /// A request whose response started is reported after this long without
    /// any event on its connection (a keep-alive connection left idle).
    pub quiet_ns: u64,
    /// Most connections followed at once.
    pub max_conns: usize,
    /// Connections that never carried data are forgotten after this long.
    pub idle_conn_ns: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            keep_query: false,
            quiet_ns: 500_000_000,
            max_conns: 65_536,
            idle_conn_ns: 120_000_000_000,
        }
    }
}

/// Counters of what the tracker saw and what it had to drop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct PassiveStats {
    /// Connections followed from their SYN.
    pub connections: u64,
    /// Connections neither HTTP/1.x nor TLS: not reported.
    pub other_protocol: u64,
    /// Connections refused (a RST answered the SYN).
    pub refused: u64,
    /// Events of connections whose SYN synack did not see (open before it
    /// started, or evicted): ignored.
    pub unknown_flow_events: u64,
    /// Connections dropped because `max_conns` were followed (their pending
    /// request, if any, was reported first).
    pub evicted: u64,
    /// Requests reported.
    pub requests: u64,
    /// Most connections followed at once.
    pub peak_open: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// One request waiting for its end.
#[derive(Clone, Debug)]
struct Pending {
    index: u32,
    /// First segment of the request turn: time and raw sequence number.
    req_ts: u64,
    req_seq: u32,
    /// Raw sequence just past the request, once the response turn began.
    req_end_seq: Option<u32>,
    /// Last request byte's segment time (from the response's event).
    req_last_ts: Option<u64>,
    http: Option<sniff::HttpRequest>,
    /// First response segment: time, raw sequence number.
    resp: Option<(u64, u32)>,
    status: Option<u16>,
    /// TLS 1.3: the request went in the turn of the client's Finished, so
    /// the server's session tickets may open the response turn.
    after_finished: bool,
    /// The response's first segment was made of whole TLS records and may be
    /// a TLS 1.3 session ticket: the next segment of the turn replaces it.
    resp_maybe_ticket: Option<u32>,
    /// Last response data seen, and one past its last byte (raw).
    resp_last: Option<(u64, u32)>,
}

struct Conn {
    flow: Flow,
    side: Side,
    proto: Option<Proto>,
    /// 0x0304 for TLS 1.3, from the ServerHello.
    tls_version: Option<u16>,
    /// The TLS handshake is over (requests may follow).
    tls_done: bool,
    /// TLS 1.3: the client's Finished went alone; the request starts with the
    /// next segment of the same turn.
    request_next_segment: bool,
    sni: Option<String>,
    next_index: u32,
    pending: Option<Pending>,
    /// Verdict inputs of the first request, and of the first later one that
    /// asks for the same thing (the reuse rule compares two requests for one
    /// URL; other requests are analysed with these, never as their repeat).
    facts: Vec<Facts>,
    /// Method and URL of the first request.
    first: Option<(String, String)>,
    /// Socket cgroup id from the first outgoing event that had one.
    cgroup_id: u64,
    last_ns: u64,
    /// Client side: the routing table reaches the peer without a gateway
    /// (None: not asked, or the kernel could not say).
    route_on_link: Option<bool>,
}

/// A finished request, ready for attribution and printing.
pub(crate) struct Done {
    pub record: Record,
    pub key: FlowKey,
    /// Socket cookie (client side: the socket that called connect()).
    pub cookie: u64,
    /// Socket cgroup id seen on the wire (0 if none).
    pub cgroup_id: u64,
}

pub(crate) struct Tracker {
    settings: Settings,
    conns: HashMap<FlowKey, Conn>,
    nets: Vec<LocalNet>,
    /// Asks the routing table whether a peer is reached through a gateway
    /// (replaced in unit tests), and its answers per peer address.
    route: fn(std::net::IpAddr) -> Option<bool>,
    routes: HashMap<std::net::IpAddr, Option<bool>>,
    pub stats: PassiveStats,
}

/// Repeats of a connection's first request kept for the verdict.
const REPEATS_KEPT: usize = 8;

/// Peer addresses whose route is remembered; past that the memory starts
/// over (routes change rarely; a scan of many peers must not grow it).
const ROUTE_CACHE: usize = 4096;

impl Tracker {
    pub(crate) fn new(settings: Settings, nets: Vec<LocalNet>) -> Self {
        Tracker {
            settings,
            conns: HashMap::new(),
            nets,
            route: crate::host::netif::route_via_gateway,
            routes: HashMap::new(),
            stats: PassiveStats::default(),
        }
    }

    /// On-link by the routing table, remembered per address.
    fn route_on_link(&mut self, ip: std::net::IpAddr) -> Option<bool> {
        if let Some(v) = self.routes.get(&ip) {
            return *v;
        }
        if self.routes.len() >= ROUTE_CACHE {
            self.routes.clear();
        }
        let v = (self.route)(ip).map(|via| !via);
        self.routes.insert(ip, v);
        v
    }

    /// Connections currently followed.
    pub(crate) fn open(&self) -> usize {
        self.conns.len()
    }

    /// Feeds one kernel event (and its payload snapshot); finished requests
    /// are appended to `out`.
    pub(crate) fn push(&mut self, ev: &Event, snap: &[u8], out: &mut Vec<Done>) {
        if ev.kind == EV_SYN && ev.ev_flags & EVF_RETRANS == 0 {
            self.open_conn(ev, out);
        }
        let Some(c) = self.conns.get_mut(&ev.key) else {
            self.stats.unknown_flow_events += 1;
            return;
        };
        c.last_ns = c.last_ns.max(ev.ts_ns);
        if c.cgroup_id == 0 && ev.dir == DIR_OUT {
            c.cgroup_id = ev.cgroup_id;
        }
        if c.proto == Some(Proto::Other) {
            // Followed until it closes (so its 4-tuple is known), never
            // reported, and nothing of it is kept but how it ends.
            if matches!(ev.kind, EV_FIN | EV_RST) {
                c.flow.push(ev);
            }
            if c.flow.closed() {
                self.conns.remove(&ev.key);
            }
            return;
        }
        c.flow.push(ev);
        for p in on_segment(c, ev, snap, &self.settings, &mut self.stats) {
            let rec = build(c, p, &self.nets);
            self.stats.requests += 1;
            if tunnel(&rec) {
                // What follows is not HTTP/1.x any more.
                c.proto = Some(Proto::Other);
                c.pending = None;
            }
            out.push(done_of(c, rec));
        }
        if c.flow.closed()
            && let Some(mut c) = self.conns.remove(&ev.key)
        {
            if c.next_index == 0 && c.flow.synack.is_none() && !c.flow.rsts.is_empty() {
                self.stats.refused += 1;
            }
            self.finish(&mut c, false, out);
        }
    }

    /// A first SYN: a new connection to follow (a 4-tuple reused by a new
    /// connection ends the old one; at --max-connections the oldest goes).
    fn open_conn(&mut self, ev: &Event, out: &mut Vec<Done>) {
        if let Some(mut old) = self.conns.remove(&ev.key) {
            // The 4-tuple is reused by a new connection.
            self.finish(&mut old, true, out);
        }
        if self.conns.len() >= self.settings.max_conns {
            self.evict_one(out);
        }
        self.stats.connections += 1;
        let side = if ev.dir == DIR_OUT {
            Side::Client
        } else {
            Side::Server
        };
        self.stats.peak_open = self.stats.peak_open.max(self.conns.len() as u64 + 1);
        let mut flow = Flow::new(ev.key, ev.cookie);
        flow.keep_events = false;
        let route_on_link = match side {
            Side::Client => self.route_on_link(key_addrs(&ev.key).1.ip()),
            Side::Server => None,
        };
        self.conns.insert(
            ev.key,
            Conn {
                flow,
                side,
                proto: None,
                tls_version: None,
                tls_done: false,
                request_next_segment: false,
                sni: None,
                next_index: 0,
                pending: None,
                facts: Vec::new(),
                first: None,
                cgroup_id: 0,
                last_ns: ev.ts_ns,
                route_on_link,
            },
        );
    }

    /// Reports requests whose connection went quiet, and forgets connections
    /// idle for long. `now` is CLOCK_MONOTONIC ns. (The tests' way in: watch
    /// itself asks the kernel, with `tick_with`.)
    #[cfg(test)]
    pub(crate) fn tick(&mut self, now: u64, out: &mut Vec<Done>) {
        self.tick_with(now, |_| None, out)
    }

    /// As `tick`, asking `kernel` for a connection's current state first:
    /// past the first segments the kernel reports one event per turn, so a
    /// response still streaming looks quiet to the events alone.
    pub(crate) fn tick_with(
        &mut self,
        now: u64,
        kernel: impl Fn(&FlowKey) -> Option<probe_common::FlowState>,
        out: &mut Vec<Done>,
    ) {
        let quiet = self.settings.quiet_ns;
        let idle = self.settings.idle_conn_ns;
        let mut ready: Vec<FlowKey> = Vec::new();
        let mut stale: Vec<FlowKey> = Vec::new();
        for (k, c) in &self.conns {
            let since = now.saturating_sub(c.last_ns);
            if c.pending.as_ref().is_some_and(|p| p.resp.is_some()) && since > quiet {
                ready.push(*k);
            } else if since > idle && c.next_index == 0 && c.pending.is_none() {
                // Never carried a request: a handshake that went nowhere, a
                // connection opened and left. Keep-alive connections that
                // did carry requests stay until they close (or the cap).
                stale.push(*k);
            }
        }
        for k in ready {
            if let Some(c) = self.conns.get_mut(&k)
                && let Some(st) = kernel(&k)
            {
                let (last, high) = match c.side {
                    Side::Client => (st.last_in_ns, st.in_high),
                    Side::Server => (st.last_out_ns, st.out_high),
                };
                if let Some(p) = c.pending.as_mut()
                    && last != 0
                    && p.resp_last.is_none_or(|(t, _)| t < last)
                {
                    p.resp_last = Some((last, high));
                }
                if last > c.last_ns {
                    c.last_ns = last;
                    if now.saturating_sub(last) <= quiet {
                        continue; // still streaming
                    }
                }
            }
            if let Some(c) = self.conns.get_mut(&k)
                && let Some(p) = c.pending.take()
            {
                let rec = build(c, p, &self.nets);
                self.stats.requests += 1;
                out.push(done_of(c, rec));
                let from = c.last_ns;
                c.flow.prune_before(from);
            }
        }
        for k in stale {
            if let Some(mut c) = self.conns.remove(&k) {
                self.finish(&mut c, true, out);
            }
        }
    }

    /// Reports every pending request (at exit).
    pub(crate) fn flush(&mut self, out: &mut Vec<Done>) {
        let keys: Vec<FlowKey> = self.conns.keys().copied().collect();
        for k in keys {
            if let Some(mut c) = self.conns.remove(&k) {
                self.finish(&mut c, true, out);
            }
        }
    }

    /// Drops the longest-idle connections: 1/64 of the cap at once, so a
    /// flood of new connections costs one scan per many of them.
    fn evict_one(&mut self, out: &mut Vec<Done>) {
        let n = (self.settings.max_conns / 64).max(1);
        let mut by_age: Vec<(u64, FlowKey)> =
            self.conns.iter().map(|(k, c)| (c.last_ns, *k)).collect();
        if by_age.len() > n {
            by_age.select_nth_unstable_by_key(n - 1, |x| x.0);
            by_age.truncate(n);
        }
        for (_, k) in by_age {
            if let Some(mut c) = self.conns.remove(&k) {
                self.stats.evicted += 1;
                self.finish(&mut c, true, out);
            }
        }
    }

    /// Reports the connection's pending request, if it has one.
    fn finish(&mut self, c: &mut Conn, still_open: bool, out: &mut Vec<Done>) {
        if c.proto == Some(Proto::Other) {
            return;
        }
        if let Some(p) = c.pending.take() {
            let mut rec = build(c, p, &self.nets);
            if rec.http_status.is_none() && rec.wire.ttfb_ms.is_none() {
                let why = if !c.flow.rsts.is_empty() {
                    "the connection was reset before a response"
                } else if still_open {
                    "no response yet"
                } else {
                    "the connection closed before a response"
                };
                rec.error = Some(ErrorInfo::new(ErrorKind::NoResponse, why));
            }
            self.stats.requests += 1;
            out.push(done_of(c, rec));
        }
    }
}

/// A response after which the connection carries something else: a
/// protocol switch (WebSocket, h2c) or a CONNECT tunnel.
fn tunnel(r: &Record) -> bool {
    r.http_status == Some(101)
        || (r.method == "CONNECT" && r.http_status.is_some_and(|s| (200..300).contains(&s)))
}

fn done_of(c: &Conn, record: Record) -> Done {
    Done {
        record,
        key: c.flow.key,
        cookie: c.flow.cookie,
        cgroup_id: c.cgroup_id,
    }
}

/// Raw sequence to stream offset in a direction.
fn off(f: &Flow, dir: u8, seq: u32) -> Option<u64> {
    f.offset(dir, seq).map(u64::from)
}

/// What one segment of a followed connection changes: a request turn
/// starts (ending the request before it, which is returned), a response
/// turn goes on, or the peer ends the connection.
fn on_segment(
    c: &mut Conn,
    ev: &Event,
    snap: &[u8],
    settings: &Settings,
    stats: &mut PassiveStats,
) -> Vec<Pending> {
    let (req_dir, resp_dir) = match c.side {
        Side::Client => (DIR_OUT, DIR_IN),
        Side::Server => (DIR_IN, DIR_OUT),
    };
    let mut done: Vec<Pending> = Vec::new();
    if ev.kind == EV_DATA && ev.ev_flags & EVF_RETRANS == 0 {
        let turn = ev.ev_flags & EVF_TURN_START != 0;
        if ev.dir == req_dir {
            if let Some(p) = c.pending.as_mut() {
                // The response turn is over: its first segment stands.
                p.resp_maybe_ticket = None;
            }
            if turn {
                c.request_next_segment = false;
                on_request_turn(c, ev, snap, settings, &mut done, stats);
            } else if c.request_next_segment {
                c.request_next_segment = false;
                start_request(c, ev, None, &mut done);
                if let Some(p) = c.pending.as_mut() {
                    p.after_finished = true;
                }
            }
        } else if ev.dir == resp_dir {
            on_response_data(c, ev, snap, turn);
        }
    }
    if matches!(ev.kind, EV_FIN | EV_RST)
        && let Some(p) = c.pending.as_mut()
    {
        note_peer_end(p, ev, resp_dir);
    }
    done
}

fn on_request_turn(
    c: &mut Conn,
    ev: &Event,
    snap: &[u8],
    s: &Settings,
    done: &mut Vec<Pending>,
    stats: &mut PassiveStats,
) {
    if c.proto.is_none() {
        let p = sniff::classify(snap);
        c.proto = Some(p);
        match p {
            Proto::Other => {
                stats.other_protocol += 1;
                return;
            }
            Proto::Tls => {
                c.sni = sniff::client_hello_sni(snap);
                return; // the ClientHello turn
            }
            Proto::Http => {}
        }
    }
    match c.proto {
        Some(Proto::Http) => {
            match sniff::http_request(snap, s.keep_query) {
                Some(req) => start_request(c, ev, Some(req), done),
                // Not a request line: the rest of the current request (a body
                // after "100 Continue"), or bytes a snapshot could not show.
                None => match c.pending.as_ref().and_then(|p| p.status) {
                    Some(st) if st < 200 && st != 101 => {
                        if let Some(p) = c.pending.as_mut() {
                            p.resp = None;
                            p.status = None;
                            p.req_end_seq = None;
                        }
                    }
                    Some(_) => {
                        // After a final response, bytes that are no request:
                        // not HTTP/1.x any more (a switched protocol).
                        if let Some(p) = c.pending.take() {
                            done.push(p);
                        }
                        c.proto = Some(Proto::Other);
                    }
                    None => {}
                },
            }
        }
        Some(Proto::Tls) => {
            let mut after_finished = false;
            if !c.tls_done {
                let mut recs = sniff::records(snap, ev.payload_len);
                if c.tls_version == Some(0x0304) {
                    let ccs = recs.types.iter().take_while(|&&t| t == 20).count();
                    if recs.types.get(ccs) == Some(&22) {
                        // A second ClientHello (after a HelloRetryRequest).
                        return;
                    }
                    // TLS 1.3: [ChangeCipherSpec] Finished (encrypted) first.
                    let skip = ccs + 1;
                    c.tls_done = true;
                    if recs.types.len() <= skip && recs.whole {
                        c.request_next_segment = true;
                        return;
                    }
                    recs.types.clear();
                    after_finished = true;
                } else if !recs.types.contains(&23) && (recs.whole || recs.types.is_empty()) {
                    return; // TLS 1.2 key exchange and Finished
                }
                c.tls_done = true;
            }
            let recs = sniff::records(snap, ev.payload_len);
            if recs.whole && recs.max_len < sniff::MIN_REQUEST_RECORD {
                return; // an alert (close_notify) or a ping, not a request
            }
            start_request(c, ev, None, done);
            if let Some(p) = c.pending.as_mut() {
                p.after_finished = after_finished;
            }
        }
        _ => {}
    }
}

fn start_request(
    c: &mut Conn,
    ev: &Event,
    http: Option<sniff::HttpRequest>,
    done: &mut Vec<Pending>,
) {
    if let Some(mut p) = c.pending.take() {
        note_peer_end(&mut p, ev, if ev.dir == DIR_OUT { DIR_IN } else { DIR_OUT });
        done.push(p);
    }
    c.pending = Some(Pending {
        index: c.next_index,
        req_ts: ev.ts_ns,
        req_seq: ev.seq,
        req_end_seq: None,
        req_last_ts: None,
        http,
        resp: None,
        status: None,
        after_finished: false,
        resp_maybe_ticket: None,
        resp_last: None,
    });
    c.next_index += 1;
}

/// An event of the request's direction tells where the response ended.
fn note_peer_end(p: &mut Pending, ev: &Event, resp_dir: u8) {
    if ev.dir != resp_dir && ev.peer_last_ns != 0 && p.resp.is_some() {
        let end = (ev.peer_last_ns, ev.peer_high);
        if p.resp_last.is_none_or(|(t, _)| t <= end.0) {
            p.resp_last = Some(end);
        }
    }
}

fn on_response_data(c: &mut Conn, ev: &Event, snap: &[u8], turn: bool) {
    if turn && c.proto == Some(Proto::Tls) && c.tls_version.is_none() {
        c.tls_version = sniff::server_hello_version(snap);
    }
    let Some(p) = c.pending.as_mut() else {
        return;
    };
    let end = ev.seq.wrapping_add(ev.payload_len);
    if p.resp.is_none() {
        if !turn {
            return;
        }
        p.resp = Some((ev.ts_ns, ev.seq));
        p.req_end_seq = Some(ev.peer_high);
        // The request's last segment: the reported one that ends where the
        // request ended (its time on the same clock as every other event),
        // else the kernel's time of the last one.
        let segs = if ev.dir == DIR_OUT {
            &c.flow.inb
        } else {
            &c.flow.out
        };
        p.req_last_ts = segs
            .iter()
            .rev()
            .find(|s| !s.retrans && s.seq.wrapping_add(s.len) == ev.peer_high)
            .map(|s| s.ts_ns)
            .or((ev.peer_last_ns != 0).then_some(ev.peer_last_ns));
        p.status = sniff::http_status(snap);
        if p.after_finished && sniff::records(snap, ev.payload_len).whole {
            p.resp_maybe_ticket = Some(end);
        }
    } else if let Some(ticket_end) = p.resp_maybe_ticket.take()
        && ev.seq == ticket_end
    {
        // The first segment was the session ticket; the response starts here.
        p.resp = Some((ev.ts_ns, ev.seq));
    }
    if p.resp_last.is_none_or(|(t, _)| t <= ev.ts_ns) {
        p.resp_last = Some((ev.ts_ns, end));
    }
}

/// The request's URL and method. Without a Host header or SNI the authority
/// is the server's address: the peer's on the client side, ours on the
/// server side.
fn url_of(c: &Conn, p: &Pending, server: std::net::SocketAddr) -> (String, String) {
    let tls = c.proto == Some(Proto::Tls);
    let authority = p
        .http
        .as_ref()
        .and_then(|h| h.host.clone())
        .or_else(|| c.sni.clone())
        .unwrap_or_else(|| server.to_string());
    let path = p.http.as_ref().map(|h| h.path.as_str()).unwrap_or("/");
    let url = format!(
        "{}://{authority}{}",
        if tls { "https" } else { "http" },
        if tls && p.http.is_none() { "" } else { path }
    );
    let method = p
        .http
        .as_ref()
        .map(|h| h.method.clone())
        .unwrap_or_default();
    (url, method)
}

fn build(c: &mut Conn, p: Pending, nets: &[LocalNet]) -> Record {
    let (local, remote) = key_addrs(&c.flow.key);
    let tls = c.proto == Some(Proto::Tls);
    let server = match c.side {
        Side::Client => remote,
        Side::Server => local,
    };
    let (url, method) = url_of(c, &p, server);
    let mut r = Record::new(&url, &method, "ebpf");
    r.tls = tls;
    r.sni = c.sni.clone();
    r.direction = match c.side {
        Side::Client => "client",
        Side::Server => "server",
    };
    r.remote_addr = Some(remote.to_string());
    r.local_addr = Some(local.to_string());
    r.ip_version = Some(c.flow.key.ip_version);
    r.http_status = p.status;
    r.request_index = p.index;
    r.connection_reused = p.index > 0;
    r.socket_cookie = (c.flow.cookie != 0).then_some(c.flow.cookie);
    let (req_dir, resp_dir) = match c.side {
        Side::Client => (DIR_OUT, DIR_IN),
        Side::Server => (DIR_IN, DIR_OUT),
    };
    r.request_bytes = p
        .req_end_seq
        .map(|e| e.wrapping_sub(p.req_seq) as u64)
        .filter(|&n| n < 1 << 31);
    r.response_bytes = p
        .resp
        .zip(p.resp_last)
        .map(|((_, s), (_, e))| e.wrapping_sub(s) as u64)
        .filter(|&n| n < 1 << 31);

    match c.side {
        Side::Client => {
            r.remote_on_link = Some(on_link(remote.ip(), nets));
            if let Some(&routed) = c.route_on_link.as_ref() {
                r.remote_on_link = Some(routed);
            }
            let marks = RequestMarks {
                out_start: off(&c.flow, req_dir, p.req_seq),
                out_end: p.req_end_seq.and_then(|s| off(&c.flow, req_dir, s)),
                in_start: p.resp.and_then(|(_, s)| off(&c.flow, resp_dir, s)),
                ..Default::default()
            };
            let conn = (p.index == 0).then(|| ConnMarks {
                tls13: c.tls_version == Some(0x0304),
                ..Default::default()
            });
            let (w, mut tl) = timeline::assemble(Some(&c.flow), conn.as_ref(), tls, &marks);
            r.wire = w;
            if let Some((t, _)) = p.resp_last {
                tl.push(entry("response_last_in", t));
                tl.sort_by_key(|e| e.t_ns);
            }
            r.timeline = tl;
            r.started_at = crate::host::clock::wall_of(r.timeline.first().map(|e| e.t_ns));
            // Unlike the active probe, a watched connection's requests ask
            // for different things: only a repeat of the first request's
            // method and URL may feed the reuse rule (F1 - F2).
            let me = (r.method.clone(), r.url.clone());
            if p.index == 0 {
                c.first = Some(me.clone());
            }
            let mut f = r.facts();
            f.repeats_first = p.index == 0 || c.first.as_ref() == Some(&me);
            // The first request and a few repeats of it: how much the
            // repeats vary among themselves is the reuse rule's noise. This
            // request is analysed with them (pushed for the call, kept only
            // if it is one of those), without copying them per request.
            let keep = f.index == 0 || (f.repeats_first && c.facts.len() < REPEATS_KEPT + 1);
            let (which, pushed) = match c.facts.iter().position(|x| x.index == f.index) {
                Some(i) => (i, false),
                None => {
                    c.facts.push(f);
                    (c.facts.len() - 1, true)
                }
            };
            let a = verdict::analyze_one(&c.facts, which);
            if pushed && !keep {
                c.facts.pop();
            }
            if let Some(a) = a {
                r.verdict = Some(a.verdict);
                r.phases = a.phases;
                r.middlebox = a.middlebox;
            }
            // No user-space marks here: the client's share is its turns
            // inside the wire span, which local_stack_ms has always been in
            // watch's records.
            r.phases.local_stack_ms = r.phases.client_ms;
        }
        Side::Server => server_side(c, &p, &mut r),
    }
    // What this request needed of the flow is in the record now.
    c.flow
        .prune_before(p.resp_last.map(|x| x.0).unwrap_or(p.req_ts));
    r
}

fn entry(event: &'static str, t_ns: u64) -> TimelineEntry {
    TimelineEntry {
        event,
        source: "wire",
        t_ns,
    }
}

/// Wire times of a request this host served: the client's network (its
/// handshake RTT, its SYN's hops) and the time this host took between the
/// request's last byte in and the response's first byte out.
fn server_side(c: &Conn, p: &Pending, r: &mut Record) {
    let f = &c.flow;
    let mut w = WireTimes::default();
    let mut tl = Vec::new();
    let first = p.index == 0;
    let handshake_ack = f
        .synack
        .as_ref()
        .and_then(|sa| f.ack_covering(0, sa.ts_ns).map(|a| (sa.ts_ns, a)));
    if first {
        for &t in &f.syns {
            tl.push(entry("syn_in", t));
        }
        if let Some(sa) = &f.synack {
            tl.push(entry("synack_out", sa.ts_ns));
        }
        if let Some((sa, ack)) = handshake_ack {
            tl.push(entry("handshake_ack_in", ack));
            w.handshake_rtt_ms = Some(ms_between(sa, ack));
            if let Some(syn) = f.syns.first() {
                w.connect_wait_ms = Some(ms_between(*syn, ack));
            }
        }
        w.syn_retransmits = Some(f.syn_retransmits());
        if let Some(s) = &f.syn_in {
            let (_, hops) = hops_from_ttl(s.ttl);
            w.client_ttl = Some(s.ttl);
            w.client_hops = Some(hops);
        }
    }
    tl.push(entry("request_in", p.req_ts));
    let req_last = p.req_last_ts.unwrap_or(p.req_ts);
    if req_last != p.req_ts {
        tl.push(entry("request_last_in", req_last));
    }
    if let Some((t, seq)) = p.resp {
        tl.push(entry("response_out", t));
        w.ttfb_ms = Some(ms_between(p.req_ts, t));
        // The client's ACK of the first response segment: its RTT now.
        let first_end = f
            .out
            .iter()
            .find(|s| s.seq == seq && !s.retrans)
            .map(|s| s.seq.wrapping_add(s.len));
        if let Some(a) = first_end
            .and_then(|e| f.offset(DIR_OUT, e))
            .and_then(|o| f.ack_covering(o, t))
        {
            tl.push(entry("response_acked", a));
            w.data_rtt_ms = Some(ms_between(t, a));
        }
        let start = if first {
            f.syns.first().copied().unwrap_or(p.req_ts)
        } else {
            p.req_ts
        };
        w.span_ms = Some(ms_between(start, t));
        let server = ms_between(req_last.min(t), t);
        r.phases.server_ms = Some(server);
        r.phases.network_ms = w.span_ms.map(|s| (s - server).max(0.0));
    }
    if let Some((t, _)) = p.resp_last {
        tl.push(entry("response_last_out", t));
    }
    let to = p.resp_last.map(|x| x.0).unwrap_or(u64::MAX);
    let (o, i) = f.retransmits_between(p.req_ts, to);
    w.retransmits = Some(o + i);
    w.retransmits_out = Some(o);
    w.retransmits_in = Some(i);
    for &(dir, t) in &f.fins {
        tl.push(entry(if dir == DIR_OUT { "fin_out" } else { "fin_in" }, t));
    }
    for &(dir, t) in &f.rsts {
        tl.push(entry(if dir == DIR_OUT { "rst_out" } else { "rst_in" }, t));
    }
    tl.sort_by_key(|e| e.t_ns);
    r.wire = w;
    r.timeline = tl;
    r.started_at = crate::host::clock::wall_of(r.timeline.first().map(|e| e.t_ns));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::flows::tests::ev;
    use probe_common::{EV_ACK_COVER, EV_SYNACK};

    fn key() -> FlowKey {
        crate::model::flows::flow_key(
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        )
    }

    fn k(mut e: Event) -> Event {
        e.key = key();
        e
    }

    struct Run {
        t: Tracker,
        out: Vec<Done>,
    }

    impl Run {
        fn new() -> Self {
            Run {
                t: Tracker {
                    // No routing table in unit tests: subnet membership decides.
                    route: |_| None,
                    ..Tracker::new(Settings::default(), Vec::new())
                },
                out: Vec::new(),
            }
        }
        fn ev(&mut self, e: Event, snap: &[u8]) {
            let mut e = k(e);
            e.snap_len = snap.len() as u16;
            self.t.push(&e, snap, &mut self.out);
        }
    }

    /// Data event with the other side's end attached.
    fn data(dir: u8, ts: u64, seq: u32, len: u32, turn: bool, peer: (u64, u32)) -> Event {
        let mut e = ev(
            EV_DATA,
            dir,
            ts,
            seq,
            0,
            len,
            if turn { EVF_TURN_START } else { 0 },
        );
        e.peer_last_ns = peer.0;
        e.peer_high = peer.1;
        e
    }

    const REQ1: &[u8] = b"GET /one?secret=1 HTTP/1.1\r\nHost: origin\r\n\r\n";
    const REQ2: &[u8] = b"POST /two HTTP/1.1\r\nHost: origin\r\n\r\n";

    #[test]
    fn keep_alive_client_requests_are_each_one_record() {
        let mut r = Run::new();
        r.ev(ev(EV_SYN, DIR_OUT, 1_000, 100, 0, 0, 0), b"");
        r.ev(ev(EV_SYNACK, DIR_IN, 2_000, 5000, 101, 0, 0), b"");
        let l1 = REQ1.len() as u32;
        r.ev(data(DIR_OUT, 3_000, 101, l1, true, (0, 5001)), REQ1);
        r.ev(ev(EV_ACK_COVER, DIR_IN, 4_000, 5001, 101 + l1, 0, 0), b"");
        r.ev(
            data(DIR_IN, 23_000, 5001, 300, true, (3_000, 101 + l1)),
            b"HTTP/1.1 200 OK\r\n",
        );
        assert!(r.out.is_empty(), "the first request is still open");
        let l2 = REQ2.len() as u32;
        r.ev(
            data(DIR_OUT, 30_000, 101 + l1, l2, true, (23_000, 5301)),
            REQ2,
        );
        assert_eq!(r.out.len(), 1);
        let a = &r.out[0].record;
        assert_eq!(a.method, "GET");
        assert_eq!(a.url, "http://origin/one", "query string dropped");
        assert_eq!(a.http_status, Some(200));
        assert_eq!(a.direction, "client");
        assert_eq!(a.request_index, 0);
        assert_eq!(a.wire.handshake_rtt_ms, Some(1e-3));
        assert_eq!(a.wire.ttfb_ms, Some(20e-3));
        assert_eq!(a.wire.data_rtt_ms, Some(1e-3));
        assert_eq!(a.response_bytes, Some(300));
        assert_eq!(a.request_bytes, Some(l1 as u64));
        r.ev(
            data(DIR_IN, 40_000, 5301, 100, true, (30_000, 101 + l1 + l2)),
            b"HTTP/1.1 404 Not Found\r\n",
        );
        r.ev(ev(EV_FIN, DIR_OUT, 50_000, 101 + l1 + l2, 0, 0, 0), b"");
        r.ev(ev(EV_FIN, DIR_IN, 50_100, 5401, 0, 0, 0), b"");
        assert_eq!(r.out.len(), 2);
        let b = &r.out[1].record;
        assert_eq!((b.method.as_str(), b.http_status), ("POST", Some(404)));
        assert!(b.connection_reused);
        assert_eq!(b.wire.ttfb_ms, Some(10e-3));
        assert_eq!(
            b.wire.span_ms,
            Some(10e-3),
            "a reused request's span starts at it"
        );
        assert_eq!(r.t.open(), 0, "closed connections are forgotten");
        assert_eq!(r.t.stats.requests, 2);
    }

    #[test]
    fn server_side_times_the_server() {
        let mut r = Run::new();
        r.ev(ev(EV_SYN, DIR_IN, 1_000, 7000, 0, 0, 0), b"");
        r.ev(ev(EV_SYNACK, DIR_OUT, 1_100, 300, 7001, 0, 0), b"");
        r.ev(ev(EV_ACK_COVER, DIR_IN, 11_100, 7001, 301, 0, 0), b"");
        let l = REQ1.len() as u32;
        r.ev(data(DIR_IN, 12_000, 7001, l, true, (0, 301)), REQ1);
        r.ev(
            data(DIR_OUT, 42_000, 301, 500, true, (12_500, 7001 + l)),
            b"HTTP/1.1 503 Busy\r\n",
        );
        r.ev(ev(EV_ACK_COVER, DIR_IN, 52_000, 7001 + l, 801, 0, 0), b"");
        r.ev(ev(EV_RST, DIR_IN, 60_000, 7001 + l, 0, 0, 0), b"");
        assert_eq!(r.out.len(), 1);
        let a = &r.out[0].record;
        assert_eq!(a.direction, "server");
        assert_eq!(a.url, "http://origin/one");
        assert_eq!(a.http_status, Some(503));
        assert_eq!(a.wire.handshake_rtt_ms, Some(10e-3));
        assert_eq!(a.wire.client_ttl, Some(61));
        assert_eq!(a.wire.ttfb_ms, Some(30e-3));
        assert_eq!(a.wire.data_rtt_ms, Some(10e-3));
        // One request segment: its last byte came with its first.
        assert_eq!(a.phases.server_ms, Some(30e-3));
        assert!(a.verdict.is_none());
        assert!(a.error.is_none());
    }

    #[test]
    fn tls_handshake_turns_are_not_requests_and_tickets_are_skipped() {
        let mut r = Run::new();
        r.ev(ev(EV_SYN, DIR_OUT, 0, 100, 0, 0, 0), b"");
        r.ev(ev(EV_SYNACK, DIR_IN, 1_000, 5000, 101, 0, 0), b"");
        let ch = sniff::tests::client_hello("api.example");
        let chl = ch.len() as u32;
        r.ev(data(DIR_OUT, 2_000, 101, chl, true, (0, 5001)), &ch);
        // ServerHello with supported_versions = TLS 1.3, then more records.
        let sh = sniff::tests::server_hello_13();
        r.ev(
            data(DIR_IN, 4_000, 5001, 1200, true, (2_000, 101 + chl)),
            &sh,
        );
        // Finished + request in one turn.
        let fin_req = [
            &[0x14, 3, 3, 0, 1, 1][..],
            &[0x17, 3, 3, 0, 2, 0, 0],
            &[0x17, 3, 3, 0, 40],
            &[0; 40],
        ]
        .concat();
        let frl = fin_req.len() as u32;
        r.ev(
            data(DIR_OUT, 6_000, 101 + chl, frl, true, (4_000, 6201)),
            &fin_req,
        );
        // Ticket (whole records) then the response 20 us later.
        let ticket = [0x17u8, 3, 3, 0, 4, 0, 0, 0, 0];
        r.ev(
            data(DIR_IN, 8_000, 6201, 9, true, (6_000, 101 + chl + frl)),
            &ticket,
        );
        r.ev(data(DIR_IN, 28_000, 6210, 500, false, (6_000, 0)), b"");
        // curl's close_notify (19 bytes of ciphertext) is not a request.
        let alert = [0x17u8, 3, 3, 0, 19];
        let alert = [&alert[..], &[0; 19]].concat();
        r.ev(
            data(DIR_OUT, 29_000, 101 + chl + frl, 24, true, (28_000, 6710)),
            &alert,
        );
        r.ev(ev(EV_FIN, DIR_OUT, 30_000, 125 + chl + frl, 0, 0, 0), b"");
        r.ev(ev(EV_FIN, DIR_IN, 30_100, 6710, 0, 0, 0), b"");
        assert_eq!(r.out.len(), 1, "one request, not three");
        let a = &r.out[0].record;
        assert!(a.tls);
        assert_eq!(a.sni.as_deref(), Some("api.example"));
        assert_eq!(a.url, "https://api.example");
        assert_eq!(a.wire.tls_rtt_ms, Some(2e-3));
        assert_eq!(a.wire.ttfb_ms, Some(22e-3), "the response, not the ticket");
        assert_eq!(a.wire.tls_round2_ms, Some(2e-3));
    }

    #[test]
    fn tickets_in_a_turn_of_their_own_leave_the_response_alone() {
        let mut r = Run::new();
        r.ev(ev(EV_SYN, DIR_OUT, 0, 100, 0, 0, 0), b"");
        r.ev(ev(EV_SYNACK, DIR_IN, 1_000, 5000, 101, 0, 0), b"");
        let ch = sniff::tests::client_hello("a.example");
        let chl = ch.len() as u32;
        r.ev(data(DIR_OUT, 2_000, 101, chl, true, (0, 5001)), &ch);
        let sh = sniff::tests::server_hello_13();
        r.ev(
            data(DIR_IN, 4_000, 5001, 1000, true, (2_000, 101 + chl)),
            &sh,
        );
        // Finished alone; the tickets come back before the request leaves.
        let fin = [&[0x17u8, 3, 3, 0, 53][..], &[0; 53]].concat();
        r.ev(
            data(DIR_OUT, 6_000, 101 + chl, 58, true, (4_000, 6001)),
            &fin,
        );
        let ticket = [&[0x17u8, 3, 3, 0, 100][..], &[0; 100]].concat();
        r.ev(
            data(DIR_IN, 8_000, 6001, 105, true, (6_000, 159 + chl)),
            &ticket,
        );
        let req = [&[0x17u8, 3, 3, 0, 90][..], &[0; 90]].concat();
        r.ev(
            data(DIR_OUT, 9_000, 159 + chl, 95, true, (8_000, 6106)),
            &req,
        );
        // The response: a whole record, then its body 5 us later.
        let head = [&[0x17u8, 3, 3, 0, 60][..], &[0; 60]].concat();
        r.ev(
            data(DIR_IN, 30_000, 6106, 65, true, (9_000, 254 + chl)),
            &head,
        );
        r.ev(data(DIR_IN, 35_000, 6171, 500, false, (9_000, 0)), b"");
        r.ev(ev(EV_RST, DIR_OUT, 40_000, 254 + chl, 0, 0, 0), b"");
        assert_eq!(r.out.len(), 1);
        let a = &r.out[0].record;
        assert_eq!(
            a.wire.ttfb_ms,
            Some(21e-3),
            "from the request to the first response segment"
        );
        assert_eq!(a.response_bytes, Some(565));
    }

    #[test]
    fn idle_keepalive_stays_and_handshakes_that_go_nowhere_go() {
        let mut t = Tracker::new(
            Settings {
                idle_conn_ns: 1_000,
                quiet_ns: 100,
                ..Default::default()
            },
            Vec::new(),
        );
        let mut out = Vec::new();
        let mut push = |t: &mut Tracker, port: u16, e: Event, snap: &[u8]| {
            let mut e = e;
            e.key = key();
            e.key.local_port = port;
            t.push(&e, snap, &mut out);
        };
        // A connection that served a request, then idles.
        push(&mut t, 1, ev(EV_SYN, DIR_OUT, 0, 100, 0, 0, 0), b"");
        push(&mut t, 1, ev(EV_SYNACK, DIR_IN, 10, 5000, 101, 0, 0), b"");
        push(
            &mut t,
            1,
            data(DIR_OUT, 20, 101, REQ2.len() as u32, true, (0, 5001)),
            REQ2,
        );
        push(
            &mut t,
            1,
            data(DIR_IN, 30, 5001, 10, true, (20, 101)),
            b"HTTP/1.1 200 OK\r\n",
        );
        // One that never sent anything.
        push(&mut t, 2, ev(EV_SYN, DIR_OUT, 0, 100, 0, 0, 0), b"");
        t.tick(10_000, &mut out);
        assert_eq!(
            t.open(),
            1,
            "the silent one is gone, the keep-alive one stays"
        );
        assert_eq!(out.len(), 1, "its request was reported when it went quiet");
    }

    #[test]
    fn a_response_still_streaming_is_not_quiet() {
        let mut r = Run::new();
        r.ev(ev(EV_SYN, DIR_OUT, 0, 100, 0, 0, 0), b"");
        r.ev(ev(EV_SYNACK, DIR_IN, 10, 5000, 101, 0, 0), b"");
        r.ev(
            data(DIR_OUT, 20, 101, REQ2.len() as u32, true, (0, 5001)),
            REQ2,
        );
        r.ev(
            data(DIR_IN, 1_000, 5001, 1000, true, (20, 101)),
            b"HTTP/1.1 200 OK\r\n",
        );
        let q = Settings::default().quiet_ns;
        // The kernel saw data 10 ms ago, far past the last event.
        let st = |last: u64| {
            move |_: &FlowKey| {
                Some(probe_common::FlowState {
                    last_in_ns: last,
                    in_high: 5001 + 90_000,
                    ..Default::default()
                })
            }
        };
        let now = 1_000 + q + 10;
        r.t.tick_with(now, st(now - 10_000_000), &mut r.out);
        assert!(r.out.is_empty(), "still streaming");
        r.t.tick_with(now + 2 * q, st(now - 10_000_000), &mut r.out);
        assert_eq!(r.out.len(), 1);
        assert_eq!(
            r.out[0].record.response_bytes,
            Some(90_000),
            "the kernel's end"
        );
    }

    #[test]
    fn a_protocol_switch_ends_http_parsing() {
        let mut r = Run::new();
        r.ev(ev(EV_SYN, DIR_OUT, 0, 100, 0, 0, 0), b"");
        r.ev(ev(EV_SYNACK, DIR_IN, 10, 5000, 101, 0, 0), b"");
        let up = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n";
        r.ev(data(DIR_OUT, 20, 101, up.len() as u32, true, (0, 5001)), up);
        r.ev(
            data(DIR_IN, 30, 5001, 100, true, (20, 101)),
            b"HTTP/1.1 101 Switching Protocols\r\n",
        );
        // A WebSocket frame from us, one back, another: no new requests.
        let at = 101 + up.len() as u32;
        r.ev(data(DIR_OUT, 40, at, 6, true, (30, 5101)), b"\x81\x84abcd");
        assert_eq!(r.out.len(), 1);
        assert_eq!(r.out[0].record.http_status, Some(101));
        r.ev(
            data(DIR_IN, 50, 5101, 6, true, (40, at + 6)),
            b"\x81\x04abcd",
        );
        r.ev(
            data(DIR_OUT, 60, at + 6, 6, true, (50, 5107)),
            b"GET / HTTP/1.1\r\n\r\n",
        );
        r.ev(ev(EV_FIN, DIR_OUT, 70, at + 12, 0, 0, 0), b"");
        r.ev(ev(EV_FIN, DIR_IN, 80, 5107, 0, 0, 0), b"");
        assert_eq!(r.out.len(), 1, "nothing after the switch is a request");
        assert_eq!(r.t.open(), 0);
    }

    #[test]
    fn other_protocols_refusals_and_unknown_flows() {
        let mut r = Run::new();
        r.ev(ev(EV_SYN, DIR_OUT, 0, 100, 0, 0, 0), b"");
        r.ev(ev(EV_SYNACK, DIR_IN, 1_000, 5000, 101, 0, 0), b"");
        r.ev(
            data(DIR_OUT, 2_000, 101, 20, true, (0, 5001)),
            b"SSH-2.0-OpenSSH_9.2\r\n",
        );
        r.ev(
            data(DIR_IN, 3_000, 5001, 20, true, (0, 121)),
            b"SSH-2.0-OpenSSH_9.2\r\n",
        );
        r.ev(ev(EV_RST, DIR_OUT, 4_000, 121, 0, 0, 0), b"");
        assert!(r.out.is_empty());
        assert_eq!(r.t.stats.other_protocol, 1);
        r.ev(ev(EV_SYN, DIR_OUT, 10_000, 900, 0, 0, 0), b"");
        r.ev(ev(EV_RST, DIR_IN, 10_100, 0, 901, 0, 0), b"");
        assert_eq!(r.t.stats.refused, 1);
        r.ev(data(DIR_IN, 20_000, 1, 1, true, (0, 0)), b"x");
        assert_eq!(r.t.stats.unknown_flow_events, 1);
        assert_eq!(r.t.open(), 0);
    }

    #[test]
    fn quiet_connections_report_and_memory_is_bounded() {
        let mut t = Tracker::new(
            Settings {
                max_conns: 3,
                ..Default::default()
            },
            Vec::new(),
        );
        let mut out = Vec::new();
        for i in 0..5u16 {
            let mut kk = key();
            kk.local_port = 50_000 + i;
            let mut e = ev(EV_SYN, DIR_OUT, i as u64, 100, 0, 0, 0);
            e.key = kk;
            t.push(&e, b"", &mut out);
            let mut e = ev(EV_SYNACK, DIR_IN, 10 + i as u64, 5000, 101, 0, 0);
            e.key = kk;
            t.push(&e, b"", &mut out);
            let mut e = data(
                DIR_OUT,
                20 + i as u64,
                101,
                REQ2.len() as u32,
                true,
                (0, 5001),
            );
            e.key = kk;
            t.push(&e, REQ2, &mut out);
        }
        assert_eq!(t.open(), 3);
        assert_eq!(t.stats.evicted, 2);
        assert_eq!(out.len(), 2, "an evicted connection's request is reported");
        assert_eq!(out[0].record.error.as_ref().unwrap().kind, "no_response");
        // A response, then silence: reported after the quiet time.
        let mut kk = key();
        kk.local_port = 50_004;
        let mut e = data(DIR_IN, 1_000, 5001, 10, true, (20, 101 + REQ2.len() as u32));
        e.key = kk;
        t.push(&e, b"HTTP/1.1 204 No Content\r\n", &mut out);
        t.tick(1_000 + Settings::default().quiet_ns / 2, &mut out);
        assert_eq!(out.len(), 2);
        t.tick(2_000 + Settings::default().quiet_ns, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(out[2].record.http_status, Some(204));
        t.flush(&mut out);
        assert_eq!(out.len(), 5, "the other two pending requests at exit");
        assert_eq!(t.open(), 0);
    }
}
