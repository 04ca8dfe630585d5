//! `synack monitor`: the targets file's checks on schedule, their records
//! turned into Prometheus metrics (served on --listen), DogStatsD lines
//! (--statsd) and JSON lines (--json).
//!
//! Scheduling: each target's first check starts at a random point of its
//! first interval (targets spread out instead of firing together), then
//! every interval after that point. A check still running when the next is
//! due is not stacked: the due one is skipped and counted. At most
//! `--concurrency` checks run at once; a due check waits for a free slot.

mod otlp;
mod probe;
mod stream;

use crate::{
    active::prober::{self, Family, HttpVersion, Options, Prober},
    host::cpustat::CpuSources,
    kernel::bpf::{Hub, SharedKernel},
    model::record::{ErrorInfo, ErrorKind, Record},
    model::targets::{self, LineError, Target},
    output,
    output::metrics::{self, Metrics, Outcome},
};
use anyhow::{Context, Result};
use bytes::Bytes;
use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    io::Write,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

/// `synack monitor`: its flags made options, then the loop.
pub async fn command(m: crate::cli::MonitorArgs) -> Result<std::process::ExitCode> {
    crate::kernel::bpf::raise_memlock();
    // Kept while the monitor runs: see hold_rx_timestamps.
    let _rx_stamps = prober::hold_rx_timestamps();
    // OpenTelemetry's own variables first, the flags after (and winning).
    let env_headers = std::env::var("OTEL_EXPORTER_OTLP_HEADERS").unwrap_or_default();
    let mut otlp_headers = otlp::pairs(env_headers.split(','), "OTEL_EXPORTER_OTLP_HEADERS")?;
    otlp_headers.extend(otlp::pairs(
        m.otlp_headers.iter().map(String::as_str),
        "--otlp-header",
    )?);
    let given = otlp::pairs(
        m.otlp_resource.iter().map(String::as_str),
        "--otlp-resource",
    )?;
    let otlp_resource = output::otlp::resource(
        std::env::var("OTEL_SERVICE_NAME").ok().as_deref(),
        std::env::var("OTEL_RESOURCE_ATTRIBUTES").ok().as_deref(),
        &std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
        &given,
    );
    run(MonitorOptions {
        otlp: m.otlp,
        otlp_interval: m.otlp_interval,
        otlp_headers,
        otlp_resource,
        targets: m.targets,
        modules: m.modules,
        interval: m.interval,
        listen: m.listen,
        statsd: m.statsd,
        json: m.json,
        concurrency: m.concurrency,
        interfaces: m.interfaces.interfaces,
        cacert: m.tls.cacert,
        insecure: m.tls.insecure,
        mode: m.mode.mode,
    })
    .await?;
    Ok(std::process::ExitCode::SUCCESS)
}

pub(crate) struct MonitorOptions {
    /// OTLP/HTTP collector to push to, how often, with which headers and
    /// resource attributes.
    pub otlp: Option<String>,
    pub otlp_interval: Duration,
    pub otlp_headers: Vec<(String, String)>,
    pub otlp_resource: Vec<(String, String)>,
    /// None: only /probe (Prometheus keeps the targets).
    pub targets: Option<PathBuf>,
    /// blackbox_exporter-style modules for /probe (the built-in http_2xx
    /// without one).
    pub modules: Option<PathBuf>,
    pub interval: Duration,
    pub listen: SocketAddr,
    pub statsd: Option<String>,
    pub json: bool,
    pub concurrency: usize,
    pub interfaces: Vec<String>,
    pub cacert: Option<PathBuf>,
    pub insecure: bool,
    pub mode: crate::kernel::bpf::Mode,
}

struct Slot {
    target: Target,
    next_due: Instant,
    running: bool,
    runs: u32,
}

/// A small, seedable pseudo-random number (jitter only; no crypto).
fn jitter(seed: &str, span: Duration) -> Duration {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes().chain(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos()
            .to_le_bytes(),
    ) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    span.mul_f64((h % 10_000) as f64 / 10_000.0)
}

/// Says which modules /probe cannot use, and why.
fn report_modules(path: &std::path::Path, m: &crate::model::modules::Modules) {
    for e in &m.entries {
        if let crate::model::modules::Entry::Unusable { name, why } = e {
            eprintln!(
                "synack monitor: {}: module {name} cannot be used: {why} (/probe?module={name} answers 400)",
                path.display()
            );
        }
    }
}

fn read_targets(path: &PathBuf) -> std::io::Result<(String, Vec<Target>, Vec<LineError>)> {
    let text = std::fs::read_to_string(path)?;
    let (t, e) = targets::parse(&text);
    Ok((text, t, e))
}

fn report_errors(path: &std::path::Path, errors: &[LineError]) {
    for e in errors {
        eprintln!(
            "synack monitor: {}: {e} (this line is skipped, the others run)",
            path.display()
        );
    }
}

/// Serves /metrics, /probe (and a pointer to both on /) until the task is
/// dropped.
async fn serve(listener: tokio::net::TcpListener, m: Arc<Metrics>, pc: Arc<probe::ProbeCtx>) {
    use http_body_util::{Either, Full};
    use hyper::{Request, Response, body::Incoming, service::service_fn};
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                // Out of descriptors, say: wait instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let m = m.clone();
        let pc = pc.clone();
        tokio::task::spawn_local(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let m = m.clone();
                let pc = pc.clone();
                async move {
                    let accept = req
                        .headers()
                        .get(hyper::header::ACCEPT)
                        .and_then(|v| v.to_str().ok());
                    let (status, ctype, body) = match req.uri().path() {
                        "/metrics" => {
                            let (ctype, om) = metrics::negotiate(accept);
                            let body = stream::body(m.clone(), om);
                            return Response::builder()
                                .status(200)
                                .header("content-type", ctype)
                                .body(Either::Right(body));
                        }
                        "/probe" => {
                            let timeout = req
                                .headers()
                                .get("x-prometheus-scrape-timeout-seconds")
                                .and_then(|v| v.to_str().ok());
                            probe::answer(&pc, req.uri().query(), timeout, accept).await
                        }
                        "/" => (
                            200,
                            "text/plain; charset=utf-8",
                            "synack monitor: the targets file's metrics on /metrics; one check \
                             per scrape on /probe?target=URL&module=NAME (blackbox_exporter's \
                             multi-target pattern)\n"
                                .to_string(),
                        ),
                        _ => (404, "text/plain; charset=utf-8", "not found\n".to_string()),
                    };
                    Response::builder()
                        .status(status)
                        .header("content-type", ctype)
                        .body(Either::Left(Full::new(Bytes::from(body))))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

/// Sends an empty result if a check ends without sending its own.
struct Report {
    tx: Option<tokio::sync::mpsc::UnboundedSender<Finished>>,
    name: String,
    target: Target,
}

impl Drop for Report {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send((self.name.clone(), self.target.clone(), Vec::new()));
        }
    }
}

/// One check to run: the target and what its requests need.
struct Job {
    kernel: Option<SharedKernel>,
    tls: Arc<rustls::ClientConfig>,
    target: Target,
    default_timeout: Duration,
    cacert: Option<PathBuf>,
    insecure: bool,
    attempt: u32,
    /// Follow redirects (/probe's modules; the targets file's checks do not).
    follow: bool,
    family: Family,
    http: HttpVersion,
    /// The whole check's bound, when the caller has one (a scrape's timeout).
    whole: Option<Duration>,
    /// This process's CPU counters (found once, not per check).
    cpu: CpuSources,
}

impl Job {
    /// Runs the check and sends its records. Whatever happens to the check
    /// (even a panic), its slot is given back: the guard reports an empty
    /// result when dropped without having sent one.
    async fn run(self, tx: tokio::sync::mpsc::UnboundedSender<Finished>) {
        let t = self.target.clone();
        let mut guard = Report {
            tx: Some(tx.clone()),
            name: t.name.clone(),
            target: t.clone(),
        };
        let recs = self.check().await;
        guard.tx = None;
        let _ = tx.send((t.name.clone(), t, recs));
    }

    /// The target's requests, as records.
    async fn check(self) -> Vec<Record> {
        let t = self.target;
        let timeout = t.timeout.unwrap_or(self.default_timeout);
        let opts = Options {
            method: t.method.clone(),
            headers: t.headers.clone(),
            body: t.body.clone().map(Bytes::from),
            max_time: Some(timeout),
            follow: self.follow,
            // curl's and blackbox's default limit.
            max_redirs: if self.follow { 10 } else { 0 },
            reuse: t.reuse,
            resolve: Vec::new(),
            family: self.family,
            cacert: self.cacert,
            insecure: self.insecure,
            dump_events: false,
            path_probe: false,
            sink: None,
            include_head: false,
            // Checks go direct: a monitor's targets are what it watches,
            // and an agent's environment proxy would hide their paths.
            proxy: Default::default(),
            // HTTP/1.1, as blackbox_exporter's http prober by default.
            http: self.http,
        };
        let mut p = Prober::with_shared(self.kernel, self.tls, opts, self.cpu);
        let started_at = crate::host::clock::wall_of(None);
        // --max-time bounds each connection; this bounds the whole check.
        let whole = self
            .whole
            .unwrap_or(timeout * (t.reuse + 1) + Duration::from_secs(2));
        match tokio::time::timeout(whole, p.run(&t.url, self.attempt)).await {
            Ok(r) => r,
            Err(_) => {
                let method = t
                    .method
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| if t.body.is_some() { "POST" } else { "GET" }.into());
                let mut r = Record::new(&t.url, &method, p.mode());
                r.started_at = started_at;
                r.error = Some(ErrorInfo::new(
                    ErrorKind::Timeout,
                    format!("the check did not finish within {whole:?}"),
                ));
                vec![r]
            }
        }
    }
}

fn human(target: &str, recs: &[Record], o: &Outcome) -> String {
    let mut s = String::new();
    for r in recs {
        s.push_str(&format!(
            "{} {target}: {}{}\n",
            crate::host::clock::time_of_day(),
            output::check_line(r),
            if o.success { "" } else { "  [FAILED]" }
        ));
    }
    s
}

fn json_lines(target: &Target, recs: &[Record], o: &Outcome) -> String {
    let mut s = String::new();
    for r in recs {
        let mut v = serde_json::to_value(r).unwrap_or(serde_json::Value::Null);
        if let Some(obj) = v.as_object_mut() {
            obj.insert("target".into(), target.name.clone().into());
            obj.insert("check_success".into(), o.success.into());
            obj.insert(
                "tags".into(),
                target
                    .tags
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::from(v.clone())))
                    .collect::<serde_json::Map<_, _>>()
                    .into(),
            );
        }
        s.push_str(&v.to_string());
        s.push('\n');
    }
    s
}

/// Runs until SIGINT or SIGTERM.
pub(crate) async fn run(o: MonitorOptions) -> Result<()> {
    let local = tokio::task::LocalSet::new();
    local.run_until(run_local(o)).await
}

/// A finished check: its target's name, the target as it was checked, and
/// its records (none when the check ended without any).
type Finished = (String, Target, Vec<Record>);

/// The monitor's state between two turns of its loop.
struct Monitor {
    o: MonitorOptions,
    /// This process's CPU counters, found once for every check.
    cpu: CpuSources,
    tls: Arc<rustls::ClientConfig>,
    kernel: Option<SharedKernel>,
    metrics: Arc<Metrics>,
    statsd: Option<std::net::UdpSocket>,
    slots: HashMap<String, Slot>,
    /// When each slot is next due, earliest on top. An entry whose time is
    /// no longer its slot's `next_due` (rescheduled, or the target left) is
    /// stale and dropped when it comes up: the loop turns once per finished
    /// check, and scanning 10,000 slots at each turn was a tenth of the
    /// monitor's CPU at 1,000 checks/s.
    due: BinaryHeap<Reverse<(Instant, String)>>,
    /// The targets file as last read: a change to it is a reload.
    file_text: String,
    /// The modules file as last read, and where /probe finds them.
    modules_text: String,
    probe: Arc<probe::ProbeCtx>,
    otlp: Option<otlp::Otlp>,
    /// Checks started and not yet reported (at most --concurrency).
    running: usize,
    /// Where checks send their records.
    tx: tokio::sync::mpsc::UnboundedSender<Finished>,
}

async fn run_local(o: MonitorOptions) -> Result<()> {
    let (mut m, mut rx) = Monitor::start(o).await?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot install a SIGHUP handler")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install a SIGTERM handler")?;
    let mut ctrlc = std::pin::pin!(tokio::signal::ctrl_c());
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_file_check = Instant::now();
    loop {
        let mut reload = false;
        tokio::select! {
            _ = tick.tick() => {}
            _ = hup.recv() => reload = true,
            Some(done) = rx.recv() => m.on_finished(done)?,
            _ = &mut ctrlc => break,
            _ = term.recv() => break,
        }
        m.pump();
        if let Some(o) = &mut m.otlp {
            o.tick();
        }
        if last_file_check.elapsed() >= Duration::from_secs(1) {
            last_file_check = Instant::now();
            m.follow_interfaces();
            reload |= m.file_changed();
        }
        if reload {
            m.reload();
        }
        m.start_due();
    }
    if let Some(o) = &mut m.otlp {
        o.flush().await;
    }
    eprintln!("synack monitor: stopped");
    Ok(())
}

impl Monitor {
    /// Reads the targets, loads the kernel side, starts serving metrics,
    /// opens the DogStatsD socket, drops privileges and schedules the first
    /// checks; says what it does on stderr.
    async fn start(
        o: MonitorOptions,
    ) -> Result<(Self, tokio::sync::mpsc::UnboundedReceiver<Finished>)> {
        let (text, first, errors) = match &o.targets {
            Some(path) => {
                let (text, first, errors) = read_targets(path).with_context(|| {
                    format!(
                        "cannot read the targets file {} (one URL a line; see synack monitor --help)",
                        path.display()
                    )
                })?;
                report_errors(path, &errors);
                (text, first, errors)
            }
            None => (String::new(), Vec::new(), Vec::new()),
        };
        let (modules_text, modules) = match &o.modules {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the modules file {}", path.display()))?;
                let m = crate::model::modules::parse(&text)
                    .map_err(|e| anyhow::anyhow!("the modules file {}: {e}", path.display()))?;
                report_modules(path, &m);
                (text, m)
            }
            None => (String::new(), crate::model::modules::Modules::builtin()),
        };
        let tls = Arc::new(
            prober::tls_config(o.cacert.as_ref(), o.insecure, HttpVersion::Http11)
                .context("cannot set up TLS (check --cacert)")?,
        );
        let chosen = crate::kernel::bpf::for_mode(o.mode, &o.interfaces)
            .map_err(crate::kernel::bpf::Refusal)
            .context("cannot start the kernel side (--mode unprivileged needs no privileges)")?;
        for l in &chosen.notices {
            eprintln!("{l}");
        }
        let kernel = chosen.kernel.map(Hub::shared);
        let metrics = Arc::new(Metrics::new());
        let cpu = CpuSources::find();
        let probe = Arc::new(probe::ProbeCtx {
            kernel: kernel.clone(),
            cpu: cpu.clone(),
            modules: std::sync::RwLock::new(Arc::new(probe::Loaded::new(
                modules,
                o.cacert.as_ref(),
                o.insecure,
            ))),
            cacert: o.cacert.clone(),
            insecure: o.insecure,
            permits: tokio::sync::Semaphore::new(o.concurrency),
        });
        let listener = tokio::net::TcpListener::bind(o.listen).await.with_context(|| {
            format!(
                "cannot listen on {} for Prometheus (another monitor there? choose one with --listen)",
                o.listen
            )
        })?;
        tokio::task::spawn_local(serve(listener, metrics.clone(), probe.clone()));
        let otlp = match &o.otlp {
            Some(url) => Some(otlp::Otlp::new(
                url,
                o.otlp_interval,
                &o.otlp_headers,
                o.otlp_resource.clone(),
                o.cacert.as_ref(),
                o.insecure,
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
            )?),
            None => None,
        };
        let statsd = o.statsd.as_deref().map(statsd_socket).transpose()?;

        // Loaded, attached and listening: drop what is no longer needed.
        if let Some(w) = crate::kernel::privs::drop_or_warn(&crate::kernel::privs::needed(
            kernel
                .as_ref()
                .and_then(|k| k.lock().ok().map(|h| h.kernel().attach_mode)),
            false,
            false,
        )) {
            eprintln!("{w}");
        }

        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Finished>();
        let mut m = Monitor {
            o,
            cpu,
            tls,
            kernel,
            metrics,
            statsd,
            slots: HashMap::new(),
            due: BinaryHeap::new(),
            file_text: text,
            modules_text,
            probe,
            otlp,
            running: 0,
            tx,
        };
        let n = first.len();
        m.apply(first, errors.len());
        eprintln!("{}", m.banner(n));
        Ok((m, rx))
    }

    /// The line that says what runs: targets, interval, where metrics go,
    /// and the mode.
    fn banner(&self, n: usize) -> String {
        let o = &self.o;
        let what = match &o.targets {
            Some(p) => format!(
                "{n} targets from {} every {:?} (first checks spread over one interval); metrics on http://{}/metrics",
                p.display(),
                o.interval,
                o.listen
            ),
            None => format!(
                "no targets file: checks only on http://{}/probe?target=URL",
                o.listen
            ),
        };
        let usable = self
            .probe
            .modules
            .read()
            .map(|l| l.modules.usable())
            .unwrap_or(0);
        format!(
            "synack monitor: {what}; /probe with {usable} module{}{}{}{}",
            if usable == 1 { "" } else { "s" },
            o.modules
                .as_ref()
                .map(|p| format!(" from {}", p.display()))
                .unwrap_or_else(|| " (the built-in http_2xx)".into()),
            o.statsd
                .as_ref()
                .map(|s| format!("; DogStatsD to {s}"))
                .unwrap_or_default()
                + &self
                    .otlp
                    .as_ref()
                    .map(|x| format!("; OTLP to {} every {:?}", x.url(), o.otlp_interval))
                    .unwrap_or_default(),
            match self.kernel.as_ref().map(|k| k.lock()) {
                Some(Ok(k)) => format!("; kernel side attached ({:?})", k.kernel().attach_mode),
                Some(Err(_)) => String::new(),
                None => "; mode unprivileged (socket timestamps)".to_string(),
            }
        )
    }

    /// Makes `list` the targets: gone ones leave (with their series), new
    /// ones get a first check at a random point of their interval, and a
    /// changed interval is rescheduled.
    fn apply(&mut self, list: Vec<Target>, errors: usize) {
        let now = Instant::now();
        // A set: a reload of 10,000 targets must not compare each with all.
        let names: std::collections::HashSet<String> =
            list.iter().map(|t| t.name.clone()).collect();
        let metrics = &self.metrics;
        let otlp = &mut self.otlp;
        self.slots.retain(|name, _| {
            let keep = names.contains(name);
            if !keep {
                metrics.remove_target(name);
                if let Some(o) = otlp.as_mut() {
                    o.agg.remove(name);
                }
            }
            keep
        });
        metrics.set_targets(&list, errors);
        for t in list {
            let every = t.interval.unwrap_or(self.o.interval);
            match self.slots.get_mut(&t.name) {
                Some(s) => {
                    if s.target.interval != t.interval {
                        s.next_due = now + jitter(&t.name, every);
                        self.due.push(Reverse((s.next_due, t.name.clone())));
                    }
                    // The long-lived copy stays when only its line moved, or
                    // nothing: swapping in every target's fresh strings at
                    // every reload interleaved them with the reload's
                    // temporaries, and the heap crept (0.2-0.5 MiB per 120 s
                    // at 10,000 targets under a file rewritten every 5 s).
                    s.target.line = t.line;
                    if s.target != t {
                        s.target = t;
                    }
                }
                None => {
                    let due = now + jitter(&t.name, every);
                    self.due.push(Reverse((due, t.name.clone())));
                    self.slots.insert(
                        t.name.clone(),
                        Slot {
                            target: t,
                            next_due: due,
                            running: false,
                            runs: 0,
                        },
                    );
                }
            }
        }
    }

    /// A check ended: its slot is free again, and its records go to the
    /// metrics, DogStatsD and stdout.
    fn on_finished(&mut self, (name, t, recs): Finished) -> Result<()> {
        self.running = self.running.saturating_sub(1);
        let Some(s) = self.slots.get_mut(&name) else {
            // The target left the file while it was being checked.
            return Ok(());
        };
        s.running = false;
        let oc = metrics::outcome(&t, &recs);
        self.metrics.observe(&name, &recs, &oc);
        if let Some(o) = &mut self.otlp {
            o.observe(&t, &recs, &oc);
        }
        if let Some(Ok(k)) = self.kernel.as_ref().map(|k| k.lock()) {
            self.metrics.drops(k.drops());
        }
        if let Some(sock) = &self.statsd {
            for d in metrics::datagrams(&metrics::statsd_lines(&t, &recs, &oc), 1400) {
                // UDP to a local agent: a full buffer or an absent
                // agent must not stop the checks.
                let _ = sock.send(d.as_bytes());
            }
        }
        let text = if self.o.json {
            json_lines(&t, &recs, &oc)
        } else {
            human(&name, &recs, &oc)
        };
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        out.write_all(text.as_bytes())
            .and_then(|_| out.flush())
            .context("cannot write to stdout")
    }

    /// Keeps the shared ring buffer drained while checks run (a check
    /// takes its events only when it ends).
    fn pump(&self) {
        if let Some(k) = self.kernel.as_ref()
            && let Ok(mut h) = k.lock()
        {
            h.pump();
        }
    }

    /// Interfaces come and go; checks through the remaining ones go on.
    fn follow_interfaces(&self) {
        if let Some(k) = self.kernel.as_ref()
            && let Ok(mut h) = k.lock()
        {
            match h.follow_interfaces() {
                Ok(ch) => {
                    for l in ch.report("synack monitor", &h.kernel().interfaces) {
                        eprintln!("{l}");
                    }
                }
                Err(e) => eprintln!("synack monitor: cannot list interfaces: {e}"),
            }
        }
    }

    /// True when the targets or the modules file now says something else.
    fn file_changed(&self) -> bool {
        let changed = |p: &Option<PathBuf>, was: &str| {
            p.as_ref()
                .is_some_and(|p| std::fs::read_to_string(p).is_ok_and(|t| t != was))
        };
        changed(&self.o.targets, &self.file_text) || changed(&self.o.modules, &self.modules_text)
    }

    /// Reads the targets and modules files again; a file that cannot be
    /// read (or, for modules, parsed) leaves what runs as it is.
    fn reload(&mut self) {
        if let Some(path) = self.o.targets.clone() {
            match read_targets(&path) {
                Ok((text, list, errors)) => {
                    report_errors(&path, &errors);
                    eprintln!(
                        "synack monitor: reloaded {}: {} targets, {} broken lines",
                        path.display(),
                        list.len(),
                        errors.len()
                    );
                    self.file_text = text;
                    self.apply(list, errors.len());
                    give_back_freed_memory();
                }
                Err(e) => eprintln!(
                    "synack monitor: cannot reload {}: {e}; the current targets keep running",
                    path.display()
                ),
            }
        }
        let Some(path) = self.o.modules.clone() else {
            return;
        };
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| crate::model::modules::parse(&t).map(|m| (t, m)));
        match parsed {
            Ok((text, _)) if text == self.modules_text => {}
            Ok((text, m)) => {
                report_modules(&path, &m);
                eprintln!(
                    "synack monitor: reloaded {}: {} modules, {} usable",
                    path.display(),
                    m.entries.len(),
                    m.usable()
                );
                let loaded = Arc::new(probe::Loaded::new(
                    m,
                    self.o.cacert.as_ref(),
                    self.o.insecure,
                ));
                if let Ok(mut w) = self.probe.modules.write() {
                    *w = loaded;
                }
                self.modules_text = text;
            }
            Err(e) => eprintln!(
                "synack monitor: cannot reload {}: {e}; the current modules stay",
                path.display()
            ),
        }
    }

    /// Starts the checks that are due, earliest first, while slots are free;
    /// one still running is skipped (counted), not stacked.
    fn start_due(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((when, _))) = self.due.peek()
            && *when <= now
        {
            let Some(Reverse((when, name))) = self.due.pop() else {
                break;
            };
            let Some(s) = self.slots.get_mut(&name).filter(|s| s.next_due == when) else {
                continue;
            };
            let every = s.target.interval.unwrap_or(self.o.interval);
            if s.running {
                // Not stacked: this one is skipped, the next is an interval on.
                self.metrics.skipped(&s.target.name);
                s.next_due += every;
                self.due.push(Reverse((s.next_due, name)));
                continue;
            }
            if self.running >= self.o.concurrency {
                // Still due: it starts when a check ends.
                self.due.push(Reverse((when, name)));
                break;
            }
            s.running = true;
            s.runs += 1;
            s.next_due += every;
            if s.next_due <= now {
                // Far behind (the host was suspended, or slots were full):
                // start again from now rather than firing a burst.
                s.next_due = now + every;
            }
            self.due.push(Reverse((s.next_due, name)));
            self.running += 1;
            let job = Job {
                kernel: self.kernel.clone(),
                tls: self.tls.clone(),
                target: s.target.clone(),
                default_timeout: every.min(Duration::from_secs(10)),
                cacert: self.o.cacert.clone(),
                insecure: self.o.insecure,
                attempt: s.runs - 1,
                follow: false,
                family: Family::Any,
                http: HttpVersion::Http11,
                whole: None,
                cpu: self.cpu.clone(),
            };
            tokio::task::spawn_local(job.run(self.tx.clone()));
        }
    }
}

/// Hands the pages of freed heap memory back to the kernel. A reload of
/// 10,000 targets makes and frees some 50,000 small allocations among the
/// checks' long-lived ones; glibc's malloc keeps the holes, and RSS crept
/// by 0.2-2 MiB per two minutes under a file rewritten every 5 s (none
/// without rewrites). Trimming after each reload (a few ms, at most once
/// a second) keeps it flat.
fn give_back_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions; it only releases free
    // memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// DogStatsD's socket: UDP, connected to HOST:PORT, never blocking.
fn statsd_socket(addr: &str) -> Result<std::net::UdpSocket> {
    use std::net::ToSocketAddrs;
    let to = addr
        .to_socket_addrs()
        .with_context(|| format!("--statsd {addr}: not HOST:PORT, or HOST does not resolve"))?
        .next()
        .with_context(|| format!("--statsd {addr}: HOST has no address"))?;
    let sock = std::net::UdpSocket::bind(if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" })
        .context("cannot open a UDP socket for --statsd")?;
    sock.connect(to)
        .with_context(|| format!("--statsd {addr}: cannot reach {to}"))?;
    sock.set_nonblocking(true)?;
    Ok(sock)
}
