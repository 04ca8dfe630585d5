//! `synack watch`: the passive mode's main loop. Kernel events go to the
//! tracker (passive.rs), finished requests get their owner (host/procs.rs), pass
//! the filters, and are printed; a running summary and a final one report
//! percentiles and every loss.

pub mod passive;

use crate::cli::WatchArgs;
use crate::{
    host::clock::mono_ns,
    host::netif,
    host::procs::{self, Cgroups, SocketOwners},
    kernel::bpf::{Kernel, Scope},
    model::record::Record,
    output,
    watch::passive::{Done, PassiveStats, Settings, Tracker},
};
use anyhow::{Context, Result};
use ipnet::IpNet;
use std::collections::HashMap;
use std::process::ExitCode;
use std::{
    io::Write,
    time::{Duration, Instant},
};
use tokio::io::{Interest, unix::AsyncFd};

/// Which connections to report. Kinds AND together; values of one kind OR.
#[derive(Clone, Debug, Default)]
pub(crate) struct Filters {
    pub pids: Vec<u32>,
    /// cgroup paths below the cgroup v2 root (from --cgroup and --container).
    pub cgroups: Vec<String>,
    pub ports: Vec<u16>,
    pub dsts: Vec<IpNet>,
    /// "client" or "server".
    pub direction: Option<&'static str>,
}

impl Filters {
    /// Whether a finished, attributed record passes.
    pub(crate) fn pass(&self, r: &Record, key: &probe_common::FlowKey) -> bool {
        let (_, remote) = crate::model::flows::key_addrs(key);
        (self.pids.is_empty() || r.pid.is_some_and(|p| self.pids.contains(&p)))
            && (self.cgroups.is_empty()
                || r.cgroup
                    .as_deref()
                    .is_some_and(|c| self.cgroups.iter().any(|u| procs::cgroup_within(c, u))))
            && (self.ports.is_empty()
                || self.ports.contains(&key.local_port)
                || self.ports.contains(&key.remote_port))
            && (self.dsts.is_empty() || self.dsts.iter().any(|n| n.contains(&remote.ip())))
            && self.direction.is_none_or(|d| d == r.direction)
    }
}

pub(crate) struct WatchOptions {
    pub interfaces: Vec<String>,
    pub filters: Filters,
    pub json: bool,
    pub duration: Option<Duration>,
    pub summary_every: Option<Duration>,
    pub settings: Settings,
    /// Print every kernel event to stderr (debugging).
    pub dump_events: bool,
}

/// Samples of one phase, bounded (reservoir sampling past the cap).
struct Samples {
    v: Vec<f64>,
    seen: u64,
    rng: u64,
}

const MAX_SAMPLES: usize = 100_000;

impl Samples {
    fn new() -> Self {
        Samples {
            v: Vec::new(),
            seen: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }
    fn add(&mut self, x: Option<f64>) {
        let Some(x) = x.filter(|x| x.is_finite()) else {
            return;
        };
        self.seen += 1;
        if self.v.len() < MAX_SAMPLES {
            self.v.push(x);
            return;
        }
        // xorshift: cheap and good enough to pick which sample to replace.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let j = self.rng % self.seen;
        if (j as usize) < MAX_SAMPLES {
            self.v[j as usize] = x;
        }
    }
    fn pcts(&self) -> Option<[f64; 4]> {
        if self.v.is_empty() {
            return None;
        }
        let mut s = self.v.clone();
        s.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
        Some([at(0.5), at(0.9), at(0.99), s[s.len() - 1]])
    }
}

/// What the summaries report.
struct Totals {
    reported: u64,
    filtered_out: u64,
    failed: u64,
    middlebox: u64,
    /// Requests per bottleneck: network, middlebox, server, client.
    bottlenecks: [u64; 4],
    phases: Vec<(&'static str, Samples)>,
}

impl Totals {
    fn new() -> Self {
        Totals {
            reported: 0,
            filtered_out: 0,
            failed: 0,
            middlebox: 0,
            bottlenecks: [0; 4],
            phases: [
                "handshake RTT",
                "wire TTFB",
                "server",
                "network",
                "middlebox",
                "client",
            ]
            .into_iter()
            .map(|n| (n, Samples::new()))
            .collect(),
        }
    }
    fn add(&mut self, r: &Record) {
        self.reported += 1;
        self.failed += r.error.is_some() as u64;
        // Only requests whose own measurements show it: a connection's
        // later requests inherit its verdict and say so (`evidence_from`).
        self.middlebox += r.verdict.as_ref().is_some_and(|v| {
            v.path == crate::model::verdict::PathKind::Middlebox && v.evidence_from.is_none()
        }) as u64;
        if let Some(b) = r.verdict.as_ref().and_then(|v| v.bottleneck) {
            self.bottlenecks[b as usize] += 1;
        }
        let vals = [
            r.wire.handshake_rtt_ms,
            r.wire.ttfb_ms,
            r.phases.server_ms,
            r.phases.network_ms,
            r.phases.middlebox_ms,
            r.phases.client_ms,
        ];
        for ((_, s), v) in self.phases.iter_mut().zip(vals) {
            s.add(v);
        }
    }
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn running_line(t: &Totals, st: &PassiveStats, open: usize, drops: u64) -> String {
    let p = |i: usize| {
        t.phases[i]
            .1
            .pcts()
            .map(|p| format!("p50 {} p99 {} ms", ms(p[0]), ms(p[2])))
            .unwrap_or_else(|| "-".into())
    };
    format!(
        "-- {} requests ({} failed, {} via a middlebox), {} connections open; wire TTFB {}; \
         server {}; lost {}",
        t.reported,
        t.failed,
        t.middlebox,
        open,
        p(1),
        p(2),
        drops + st.evicted
    )
}

fn final_summary(
    t: &Totals,
    st: &PassiveStats,
    k: &crate::model::record::Drops,
    secs: f64,
) -> String {
    let mut s = format!(
        "synack watch: {} requests in {:.1} s ({} failed, {} via a middlebox); {} more \
         filtered out\n  connections: {} followed ({} open at most), {} refused, {} not HTTP/TLS (ignored)\n",
        t.reported,
        secs,
        t.failed,
        t.middlebox,
        t.filtered_out,
        st.connections,
        st.peak_open,
        st.refused,
        st.other_protocol,
    );
    let [n, m, sv, c] = t.bottlenecks;
    s.push_str(&format!(
        "  bottleneck: network {n}, middlebox {m}, server {sv}, client {c} requests\n"
    ));
    s.push_str("  phase (ms)            p50       p90       p99       max   samples\n");
    for (name, smp) in &t.phases {
        if let Some(p) = smp.pcts() {
            s.push_str(&format!(
                "  {name:<18}{:>9}{:>10}{:>10}{:>10}{:>10}\n",
                ms(p[0]),
                ms(p[1]),
                ms(p[2]),
                ms(p[3]),
                smp.seen
            ));
        }
    }
    if st.peak_open >= probe_common::MAX_FLOWS as u64 {
        s.push_str(&format!(
            "  warning: {} connections were open at once, as many as the kernel's flow table \
             holds ({}): beyond that it evicts the oldest, whose requests then go unreported\n",
            st.peak_open,
            probe_common::MAX_FLOWS
        ));
    }
    s.push_str(&format!(
        "  lost: {} events (ring buffer full), {} connections (kernel flow table full), {} \
         connections dropped at the user-space cap, {} undecodable records; {} events of \
         connections opened before synack started",
        k.ringbuf_full, k.flow_insert_failed, st.evicted, k.undecodable, st.unknown_flow_events
    ));
    s
}

/// Who a connection belongs to, once found: its later requests (a
/// keep-alive connection carries thousands) reuse it instead of a map
/// lookup (a syscall) and a cgroup path per request.
#[derive(Clone)]
struct Owned {
    pid: u32,
    comm: Option<String>,
    cgroup: Option<String>,
}

/// Connections kept in the owner cache at most; past it the cache starts over
/// (socket cookies are never reused, so an entry is never wrong, only old).
const OWNED_MAX: usize = 16_384;

/// Fills pid, comm and cgroup of a finished request; a connection's owner
/// is looked up for its first request only (`cache`, by socket cookie).
fn attribute(
    d: &mut Done,
    kernel: &Kernel,
    owners: &mut SocketOwners,
    cgroups: &mut Cgroups,
    cache: &mut HashMap<u64, Owned>,
) {
    if d.cookie != 0
        && let Some(o) = cache.get(&d.cookie)
    {
        d.record.pid = Some(o.pid);
        d.record.comm = o.comm.clone();
        d.record.cgroup = o.cgroup.clone();
        return;
    }
    find_owner(d, kernel, owners, cgroups);
    let r = &d.record;
    // Only a found owner is kept: one not found yet may be found later
    // (the /proc scan runs now and then).
    if d.cookie != 0
        && let Some(pid) = r.pid
    {
        if cache.len() >= OWNED_MAX {
            cache.clear();
        }
        cache.insert(
            d.cookie,
            Owned {
                pid,
                comm: r.comm.clone(),
                cgroup: r.cgroup.clone(),
            },
        );
    }
}

fn find_owner(d: &mut Done, kernel: &Kernel, owners: &mut SocketOwners, cgroups: &mut Cgroups) {
    let r = &mut d.record;
    let mut cg = d.cgroup_id;
    if r.direction == "client"
        && d.cookie != 0
        && let Some(o) = kernel.owner(d.cookie)
    {
        r.pid = Some(o.pid);
        r.comm = Some(procs::comm_from_bytes(&o.comm));
        if cg == 0 {
            cg = o.cgroup_id;
        }
    }
    if r.pid.is_none() {
        let (local, remote) = crate::model::flows::key_addrs(&d.key);
        r.pid = owners.pid_of(local, remote);
        r.comm = r.pid.and_then(procs::comm);
    }
    if cg == 0
        && let Some(pid) = r.pid
    {
        // The process's own cgroup v2 path ("0::/path").
        r.cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("0::").map(str::to_string))
            });
    } else {
        r.cgroup = cgroups.path(cg);
    }
}

fn options(a: WatchArgs) -> Result<WatchOptions> {
    let mut cgroups = Cgroups::new();
    let mut paths = Vec::new();
    for c in &a.cgroup {
        paths.push(cgroups.resolve(c)?);
    }
    for c in &a.container {
        paths.push(cgroups.container(c)?);
    }
    Ok(WatchOptions {
        interfaces: a.interfaces.interfaces,
        filters: Filters {
            pids: a.pid,
            cgroups: paths,
            ports: a.port,
            dsts: a.dst,
            direction: a.direction.map(|d| match d {
                crate::cli::Direction::Client => "client",
                crate::cli::Direction::Server => "server",
            }),
        },
        json: a.json,
        dump_events: a.dump_events,
        duration: a.duration,
        summary_every: (!a.summary_every.is_zero()).then_some(a.summary_every),
        settings: Settings {
            keep_query: a.keep_query,
            quiet_ns: a.quiet.as_nanos() as u64,
            max_conns: a.max_connections,
            ..Default::default()
        },
    })
}

/// `synack watch`: its flags made options, then the loop (which handles
/// its own signals: they end it with a summary).
pub async fn command(a: WatchArgs) -> Result<ExitCode> {
    crate::kernel::bpf::raise_memlock();
    run(options(a)?).await?;
    Ok(ExitCode::SUCCESS)
}

/// Runs until Ctrl-C, SIGTERM or --duration; prints the summary then.
pub(crate) async fn run(o: WatchOptions) -> Result<()> {
    let mut w = Watch::start(o)?;
    let ring_fd = w
        .kernel
        .ring_fd()
        .try_clone_to_owned()
        .context("cannot duplicate the ring buffer's descriptor")?;
    // SAFETY: the AsyncFd owns this duplicate, so the descriptor stays open
    // and refers to the ring buffer for the AsyncFd's whole life.
    let ring = unsafe { AsyncFd::register_with_interest(ring_fd, Interest::READABLE) }
        .context("cannot wait on the ring buffer")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install a SIGTERM handler")?;
    let mut ctrlc = std::pin::pin!(tokio::signal::ctrl_c());
    let deadline = w.o.duration.map(|d| tokio::time::Instant::now() + d);
    // The kernel side does not wake us per event (see submit_flags in
    // probe-ebpf): drain every 10 ms, or at once when the ring fills up.
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = false;
    while !stop {
        tokio::select! {
            g = ring.readable() => {
                if let Ok(mut g) = g {
                    g.clear_ready();
                }
            }
            _ = tick.tick() => {}
            _ = &mut ctrlc => stop = true,
            _ = term.recv() => stop = true,
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => stop = true,
        }
        w.drain();
        if stop {
            w.tracker.flush(&mut w.done);
        } else {
            w.scan_quiet();
        }
        w.print_done()?;
        stop |= w.follow_interfaces();
        w.refresh_addrs();
        w.running_summary();
    }
    eprintln!(
        "{}",
        final_summary(
            &w.totals,
            &w.tracker.stats,
            &w.kernel.drops(),
            w.started.elapsed().as_secs_f64()
        )
    );
    if w.all_gone {
        return Err(InterfacesGone.into());
    }
    Ok(())
}

/// The most of the output buffer's memory kept between turns, bytes: a
/// 10 ms turn at 50k requests/s is about 1.3 MB of JSON lines.
const OUT_BUF_KEPT: usize = 4 << 20;

/// Watch's state between two turns of its loop.
struct Watch {
    o: WatchOptions,
    kernel: Kernel,
    tracker: Tracker,
    owners: SocketOwners,
    cgroups: Cgroups,
    /// Each connection's owner, by socket cookie: `attribute`.
    owned: HashMap<u64, Owned>,
    totals: Totals,
    /// Requests complete and not yet printed.
    done: Vec<Done>,
    /// The lines of one turn, written at once; kept between turns so that
    /// its memory is not asked for again each time.
    out_buf: Vec<u8>,
    started: Instant,
    next_summary: Option<Instant>,
    /// Addresses come and go (DHCP, a new container): re-read them now and then.
    next_addrs: Instant,
    /// Interfaces come and go (containers' veths): each second, forget the
    /// gone ones and attach to new ones.
    next_ifaces: Instant,
    next_scan: Instant,
    /// Every interface went away: end, then fail.
    all_gone: bool,
}

impl Watch {
    /// Loads and attaches the kernel side (every connection, with the
    /// connect hooks), drops privileges, and says what it follows.
    fn start(o: WatchOptions) -> Result<Self> {
        let mut kernel = Kernel::load(&o.interfaces, Scope::Everything)
            .map_err(crate::kernel::bpf::Refusal)
            .context("cannot start the kernel side")?;
        let dropped = crate::kernel::privs::drop_or_warn(&crate::kernel::privs::needed(
            Some(kernel.attach_mode),
            true,
            kernel.follows_new_interfaces(),
        ));
        for l in kernel.take_notices().iter().chain(&dropped) {
            eprintln!("{l}");
        }
        let nets = netif::local_nets().unwrap_or_default();
        let tracker = Tracker::new(o.settings.clone(), nets);
        let names: Vec<&str> = kernel.interfaces.iter().map(|i| i.name.as_str()).collect();
        let attribution = match &kernel.connect_hooks {
            Ok(at) => format!("processes named by connect hooks on {at}"),
            Err(why) => format!(
                "no connect hooks ({why}): processes found through /proc, which misses short-lived ones"
            ),
        };
        eprintln!(
            "synack watch: following TCP connections on {} ({:?}); {attribution}; Ctrl-C stops and \
             prints a summary",
            names.join(", "),
            kernel.attach_mode
        );
        let now = Instant::now();
        Ok(Watch {
            next_summary: o.summary_every.map(|d| now + d),
            o,
            kernel,
            tracker,
            owners: SocketOwners::new(),
            cgroups: Cgroups::new(),
            owned: HashMap::new(),
            totals: Totals::new(),
            done: Vec::new(),
            out_buf: Vec::new(),
            started: now,
            next_addrs: now + Duration::from_secs(5),
            next_ifaces: now + Duration::from_secs(1),
            next_scan: now,
            all_gone: false,
        })
    }

    /// Every event the ring buffer holds, into the tracker (and to stderr
    /// with --dump-events).
    fn drain(&mut self) {
        let dump = self.o.dump_events;
        let (tracker, done) = (&mut self.tracker, &mut self.done);
        self.kernel.drain_with(|ev, snap| {
            if dump {
                eprintln!(
                    "event t={} port={}->{} kind={} dir={} seq={} len={} flags={:#x} evf={} peer_high={} snap={:02x?}",
                    ev.ts_ns,
                    ev.key.local_port,
                    ev.key.remote_port,
                    ev.kind,
                    ev.dir,
                    ev.seq,
                    ev.payload_len,
                    ev.tcp_flags,
                    ev.ev_flags,
                    ev.peer_high,
                    &snap[..snap.len().min(12)]
                );
            }
            tracker.push(ev, snap, done)
        });
    }

    /// A scan of every connection for quiet ones: a tenth of a second is
    /// fine-grained enough for a 500 ms quiet time, and spares a full table
    /// walk per 10 ms drain.
    fn scan_quiet(&mut self) {
        if Instant::now() < self.next_scan {
            return;
        }
        self.next_scan = Instant::now() + Duration::from_millis(100);
        let kernel = &self.kernel;
        self.tracker
            .tick_with(mono_ns(), |k| kernel.flow_state(k), &mut self.done);
    }

    /// The finished requests: owner attributed, filtered, counted, printed.
    fn print_done(&mut self) -> Result<()> {
        if self.done.is_empty() {
            return Ok(());
        }
        let drops = self.kernel.drops();
        let text = &mut self.out_buf;
        text.clear();
        for mut d in self.done.drain(..) {
            attribute(
                &mut d,
                &self.kernel,
                &mut self.owners,
                &mut self.cgroups,
                &mut self.owned,
            );
            if !self.o.filters.pass(&d.record, &d.key) {
                self.totals.filtered_out += 1;
                continue;
            }
            d.record.drops = drops;
            self.totals.add(&d.record);
            if self.o.json {
                output::json_line_into(text, &d.record);
            } else {
                text.extend_from_slice(
                    format!(
                        "{} {}",
                        crate::host::clock::time_of_day(),
                        output::watch_line(&d.record)
                    )
                    .as_bytes(),
                );
            }
            text.push(b'\n');
        }
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let written = out
            .write_all(text)
            .and_then(|_| out.flush())
            .context("cannot write to stdout");
        // A burst's worth is not kept for the quiet that follows it.
        if text.capacity() > OUT_BUF_KEPT {
            *text = Vec::new();
        }
        written
    }

    /// Once a second: forget gone interfaces, attach to new ones. True when
    /// none is left, so that watch ends as on Ctrl-C (the summary is
    /// printed), then fails.
    fn follow_interfaces(&mut self) -> bool {
        if Instant::now() < self.next_ifaces {
            return false;
        }
        self.next_ifaces = Instant::now() + Duration::from_secs(1);
        match self.kernel.follow_interfaces() {
            Ok(ch) => {
                let notices = self.kernel.take_notices();
                for l in ch
                    .report("synack watch", &self.kernel.interfaces)
                    .iter()
                    .chain(&notices)
                {
                    eprintln!("{l}");
                }
                if !ch.added.is_empty() {
                    // A new interface usually brings new addresses.
                    self.next_addrs = Instant::now();
                }
                if !ch.gone.is_empty() && self.kernel.interfaces.is_empty() {
                    self.all_gone = true;
                    return true;
                }
            }
            Err(e) => eprintln!("synack watch: cannot list interfaces: {e}"),
        }
        false
    }

    /// Every 5 s (and after a new interface): this host's addresses again.
    fn refresh_addrs(&mut self) {
        if Instant::now() >= self.next_addrs {
            self.next_addrs = Instant::now() + Duration::from_secs(5);
            if let Err(e) = self.kernel.refresh_local_addrs() {
                eprintln!("synack watch: cannot refresh this host's addresses: {e}");
            }
        }
    }

    /// With --summary-every (and not --json): the running totals on stderr.
    fn running_summary(&mut self) {
        if let Some(t) = self.next_summary
            && Instant::now() >= t
            && !self.o.json
        {
            let k = self.kernel.drops();
            eprintln!(
                "{}",
                running_line(
                    &self.totals,
                    &self.tracker.stats,
                    self.tracker.open(),
                    k.total()
                )
            );
            self.next_summary = self.o.summary_every.map(|d| Instant::now() + d);
        }
    }
}

/// Watch ended because every interface it was attached to went away: a
/// failure while running (exit status 1), not one to start (2).
#[derive(Debug, thiserror::Error)]
#[error(
    "every interface it was attached to is gone; attach to others with --interface, or leave it out \
     to follow every interface, new ones included"
)]
pub struct InterfacesGone;

#[cfg(test)]
mod tests {
    use super::*;

    fn key(l: &str, r: &str) -> probe_common::FlowKey {
        crate::model::flows::flow_key(l.parse().unwrap(), r.parse().unwrap())
    }

    #[test]
    fn filters_and_or() {
        let mut r = Record::new("http://x/", "GET", "ebpf");
        r.pid = Some(42);
        r.cgroup = Some("/system.slice/docker-abc.scope".into());
        let k = key("10.0.0.1:40000", "10.9.0.2:8080");
        assert!(Filters::default().pass(&r, &k));
        let f = Filters {
            pids: vec![7, 42],
            ports: vec![8080],
            ..Default::default()
        };
        assert!(f.pass(&r, &k));
        let f = Filters {
            pids: vec![42],
            ports: vec![443],
            ..Default::default()
        };
        assert!(!f.pass(&r, &k), "kinds AND together");
        let f = Filters {
            dsts: vec!["10.9.0.0/16".parse().unwrap()],
            cgroups: vec!["/system.slice".into()],
            direction: Some("client"),
            ..Default::default()
        };
        assert!(f.pass(&r, &k));
        let f = Filters {
            dsts: vec!["fd00::/8".parse().unwrap()],
            ..Default::default()
        };
        assert!(!f.pass(&r, &k));
        let f = Filters {
            cgroups: vec!["/system".into()],
            ..Default::default()
        };
        assert!(!f.pass(&r, &k), "a prefix of a name is not a parent");
        r.pid = None;
        let f = Filters {
            pids: vec![42],
            ..Default::default()
        };
        assert!(!f.pass(&r, &k), "unknown owner never matches a pid filter");
    }

    #[test]
    fn percentiles_and_bounded_samples() {
        let mut s = Samples::new();
        for i in 1..=100 {
            s.add(Some(i as f64));
        }
        s.add(None);
        s.add(Some(f64::NAN));
        assert_eq!(s.pcts().unwrap(), [51.0, 90.0, 99.0, 100.0]);
        let mut s = Samples::new();
        for i in 0..(MAX_SAMPLES as u64 + 5000) {
            s.add(Some(i as f64));
        }
        assert_eq!(s.v.len(), MAX_SAMPLES);
        assert_eq!(s.seen, MAX_SAMPLES as u64 + 5000);
    }
}
