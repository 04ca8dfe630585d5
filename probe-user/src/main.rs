//! `synack`: where the time of an HTTP request goes.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Parser;
use http::{HeaderName, HeaderValue, Method};
use std::{io::Write, path::PathBuf, process::ExitCode, time::Duration};
use synack::{
    output,
    prober::{self, Family, Options, Prober, Resolve},
};

/// Times an HTTP(S) request on the wire and in user space, side by side.
///
/// synack makes the request itself, on a socket whose SYN, SYN-ACK, request
/// and response segments are timestamped in the kernel by tc classifiers
/// (eBPF), so you see the network's share (handshake RTT, SYN-ACK TTL and
/// hops, data RTT, retransmissions), the server's (wire TTFB) and your local
/// stack's (user minus wire) for every request.
///
/// With CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (or root, sudo) it times
/// packets with eBPF; without them it says so and falls back to the
/// sockets' own kernel timestamps (--mode unprivileged: no TTL or hops).
///
/// Examples:
///   sudo synack https://example.com/
///   sudo synack --count 5 --interval 1s --json http://10.0.0.2:8080/health
///   sudo synack --reuse 2 --resolve api.internal:443:10.0.0.7 https://api.internal/
///   sudo synack watch --port 443          (every request the host makes or serves)
#[derive(Parser, Debug)]
#[command(
    name = "synack",
    version,
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,

    /// URLs to request (http:// or https://), one after the other.
    #[arg(required = true, value_name = "URL")]
    urls: Vec<String>,

    /// HTTP method (default GET, or POST with --data).
    #[arg(short = 'X', long = "request", value_name = "METHOD")]
    method: Option<String>,

    /// Extra request header, "Name: value"; may be repeated.
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    headers: Vec<String>,

    /// Request body; "@FILE" reads it from a file.
    #[arg(short = 'd', long = "data", value_name = "DATA")]
    data: Option<String>,

    /// Give up on a connection (DNS to last byte) after this long, e.g. 5, 2.5s, 300ms.
    #[arg(short = 'm', long = "max-time", value_name = "TIME", value_parser = parse_duration)]
    max_time: Option<Duration>,

    /// Follow redirects; each hop gets its own timeline.
    #[arg(short = 'L', long = "location")]
    follow: bool,

    /// Most redirects to follow with -L.
    #[arg(long, default_value_t = 10, value_name = "N")]
    max_redirs: u32,

    /// Repeat each URL N times, each on a fresh connection.
    #[arg(short = 'n', long, default_value_t = 1, value_name = "N")]
    count: u32,

    /// Pause between repetitions of --count, e.g. 1s, 250ms.
    #[arg(long, default_value = "0", value_name = "TIME", value_parser = parse_duration)]
    interval: Duration,

    /// Send N requests on one keep-alive connection; the first pays for the
    /// handshake, the others show what a warm connection costs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    reuse: u32,

    /// Use ADDR for HOST:PORT instead of DNS (as curl's --resolve); repeatable.
    #[arg(long, value_name = "HOST:PORT:ADDR")]
    resolve: Vec<Resolve>,

    /// Use IPv4 addresses only.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    ipv4: bool,

    /// Use IPv6 addresses only.
    #[arg(short = '6', long = "ipv6")]
    ipv6: bool,

    /// Trust only the CA certificates in this PEM file (replaces the system roots).
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,

    /// Do not verify the server's certificate.
    #[arg(short = 'k', long)]
    insecure: bool,

    /// Attach to these interfaces only (default: every interface that is up); repeatable.
    #[arg(short = 'i', long = "interface", value_name = "IFACE")]
    interfaces: Vec<String>,

    /// Print one JSON object per request, one per line (see docs/json.md).
    #[arg(long)]
    json: bool,

    /// How to time: ebpf (kernel packet timestamps; needs CAP_BPF,
    /// CAP_NET_ADMIN, CAP_PERFMON), unprivileged (the sockets' own kernel
    /// timestamps: no privileges, no TTL), or auto (eBPF, else unprivileged).
    #[arg(long, value_enum, default_value = "auto", value_name = "MODE")]
    mode: synack::bpf::Mode,

    /// After each connection, send TTL-limited SYNs (TTL 1, 2, ...) to find
    /// how many hops away the TCP endpoint is: a middlebox answers before
    /// the origin could. A few extra connection attempts per URL.
    #[arg(long)]
    path_probe: bool,

    /// Print every kernel event of synack's connections to stderr (debugging).
    #[arg(long, hide = true)]
    dump_events: bool,

    /// Treat HTTP statuses >= 400 as failures (exit status 1).
    #[arg(short = 'f', long)]
    fail: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    Watch(WatchArgs),
    Monitor(MonitorArgs),
}

/// Checks a list of URLs on schedule and exports the breakdown and the
/// verdict as metrics: Prometheus on --listen, DogStatsD on --statsd.
///
/// The targets file has one URL a line, with options after it:
///
///   # comments are fine
///   https://api.example.com/health  name=api tag=env:prod
///   http://10.0.0.7:8080/ready      expect=2xx reuse=2 timeout=3s
///   https://api.example.com/orders  method=POST header="Content-Type: application/json" data='{}' expect=201
///
/// Options: name= (the metrics' target label; default the URL), tag=k:v,
/// method=, header=, data=, expect= (200, 2xx, or 200,204; default 200-399),
/// reuse=N, timeout= (default the interval, at most 10 s), interval=. A
/// broken line is reported with its number and skipped. The file is re-read
/// when it changes and on SIGHUP, without losing the metrics of targets
/// that stay.
///
/// Each target's first check starts at a random point of its first interval;
/// a check still running when the next is due is skipped (counted), never
/// stacked; at most --concurrency run at once. A failed check is a result.
///
/// Examples:
///   sudo synack monitor --targets /etc/synack/targets.txt
///   sudo synack monitor --targets targets.txt --interval 15s --listen 0.0.0.0:9777 --statsd 127.0.0.1:8125
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
struct MonitorArgs {
    /// The targets file (one URL a line, with options; see above).
    #[arg(long, value_name = "FILE")]
    targets: PathBuf,

    /// Time between two checks of a target (a target's interval= overrides it).
    #[arg(long, default_value = "30s", value_name = "TIME", value_parser = parse_duration)]
    interval: Duration,

    /// Where to serve Prometheus metrics (/metrics). Loopback by default:
    /// give 0.0.0.0:9777 or [::]:9777 to let others scrape it.
    #[arg(long, default_value = "127.0.0.1:9777", value_name = "ADDR:PORT")]
    listen: std::net::SocketAddr,

    /// Also send DogStatsD metrics over UDP to this agent (e.g. 127.0.0.1:8125).
    #[arg(long, value_name = "HOST:PORT")]
    statsd: Option<String>,

    /// Print every check's records as JSON lines (with "target" and "tags").
    #[arg(long)]
    json: bool,

    /// Most checks running at once.
    #[arg(long, default_value_t = 8, value_name = "N")]
    concurrency: usize,

    /// Attach to these interfaces only (default: every interface that is up); repeatable.
    #[arg(short = 'i', long = "interface", value_name = "IFACE")]
    interfaces: Vec<String>,

    /// Trust only the CA certificates in this PEM file (replaces the system roots).
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,

    /// Do not verify servers' certificates.
    #[arg(short = 'k', long)]
    insecure: bool,

    /// How to time: ebpf, unprivileged, or auto (eBPF, else unprivileged).
    #[arg(long, value_enum, default_value = "auto", value_name = "MODE")]
    mode: synack::bpf::Mode,
}

/// Times every HTTP request this host makes or serves, as it happens,
/// without touching the programs that make them.
///
/// Every TCP connection opened or accepted in this network namespace is
/// followed by the same kernel timestamps as the active probe. Plain
/// HTTP/1.x requests show method, path (query string dropped unless
/// --keep-query; no header but Host is ever kept) and status; TLS shows the
/// server name (SNI). Each request on a keep-alive connection is its own
/// line, with the process (pid, name) and cgroup that owns the connection.
/// Ctrl-C (or --duration) ends it with percentiles and loss counts.
///
/// Filters of different kinds must all match; repeated values of one kind
/// match any of them.
///
/// Examples:
///   sudo synack watch
///   sudo synack watch --port 443 --duration 60 --json > requests.jsonl
///   sudo synack watch --container 3f2a9c1b --dst 10.0.0.0/8
///   sudo synack watch --direction server --port 8080
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
struct WatchArgs {
    /// Only connections owned by this process id; repeatable.
    #[arg(long, value_name = "PID")]
    pid: Vec<u32>,

    /// Only connections of processes in this cgroup (v2) or below it: a path
    /// under the cgroup mount, or relative to it; repeatable.
    #[arg(long, value_name = "PATH")]
    cgroup: Vec<String>,

    /// Only connections of this container (its id or a unique part of it,
    /// found through its cgroup: docker, containerd, cri-o, podman); repeatable.
    #[arg(long, value_name = "ID")]
    container: Vec<String>,

    /// Only connections with this local or remote port; repeatable.
    #[arg(long, value_name = "N")]
    port: Vec<u16>,

    /// Only connections whose peer is in this network (10.0.0.0/8,
    /// fd00::/8, or one address); repeatable.
    #[arg(long, value_name = "CIDR", value_parser = parse_net)]
    dst: Vec<ipnet::IpNet>,

    /// Only connections this host opened (client) or accepted (server).
    #[arg(long, value_enum, value_name = "SIDE")]
    direction: Option<Direction>,

    /// Print one JSON object per request, one per line (see docs/json.md);
    /// the summary goes to stderr.
    #[arg(long)]
    json: bool,

    /// Stop after this long, e.g. 30, 2m (default: until Ctrl-C or SIGTERM).
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    duration: Option<Duration>,

    /// Keep query strings in paths (they can carry tokens, so they are
    /// dropped by default).
    #[arg(long)]
    keep_query: bool,

    /// Attach to these interfaces only (default: every interface that is up); repeatable.
    #[arg(short = 'i', long = "interface", value_name = "IFACE")]
    interfaces: Vec<String>,

    /// Print a running summary to stderr this often (human output); 0 turns it off.
    #[arg(long, default_value = "10s", value_name = "TIME", value_parser = parse_duration)]
    summary_every: Duration,

    /// Report a request once its connection has been idle this long after
    /// the response began (an idle keep-alive connection).
    #[arg(long, default_value = "500ms", value_name = "TIME", value_parser = parse_duration)]
    quiet: Duration,

    /// Most connections followed at once; past it the longest idle one is
    /// dropped (and counted in the summary).
    #[arg(long, default_value_t = 65536, value_name = "N")]
    max_connections: usize,

    /// Print every kernel event to stderr (debugging).
    #[arg(long, hide = true)]
    dump_events: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Direction {
    Client,
    Server,
}

fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not a network (examples: 10.0.0.0/8, fd00::/8, 192.0.2.7)"))
}

fn watch_options(a: WatchArgs) -> Result<synack::watch::WatchOptions> {
    let mut cgroups = synack::procs::Cgroups::new();
    let mut paths = Vec::new();
    for c in &a.cgroup {
        paths.push(cgroups.resolve(c).map_err(anyhow::Error::msg)?);
    }
    for c in &a.container {
        paths.push(cgroups.container(c).map_err(anyhow::Error::msg)?);
    }
    if a.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    Ok(synack::watch::WatchOptions {
        interfaces: a.interfaces,
        filters: synack::watch::Filters {
            pids: a.pid,
            cgroups: paths,
            ports: a.port,
            dsts: a.dst,
            direction: a.direction.map(|d| match d {
                Direction::Client => "client",
                Direction::Server => "server",
            }),
        },
        json: a.json,
        dump_events: a.dump_events,
        duration: a.duration,
        summary_every: (!a.summary_every.is_zero()).then_some(a.summary_every),
        settings: synack::passive::Settings {
            keep_query: a.keep_query,
            quiet_ns: a.quiet.as_nanos() as u64,
            max_conns: a.max_connections,
            ..Default::default()
        },
    })
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    synack::targets::parse_duration(s, true)
}

fn parse_header(h: &str) -> Result<(HeaderName, HeaderValue)> {
    let (n, v) = h
        .split_once(':')
        .with_context(|| format!("header {h:?} must look like \"Name: value\""))?;
    let name = HeaderName::from_bytes(n.trim().as_bytes())
        .with_context(|| format!("{:?} is not a valid header name", n.trim()))?;
    let value = HeaderValue::from_str(v.trim())
        .with_context(|| format!("the value of header {:?} is not valid", n.trim()))?;
    Ok((name, value))
}

fn options(cli: &Cli) -> Result<Options> {
    let method = cli
        .method
        .as_deref()
        .map(|m| {
            Method::from_bytes(m.as_bytes()).with_context(|| format!("{m:?} is not an HTTP method"))
        })
        .transpose()?;
    let body = match cli.data.as_deref() {
        Some(d) if d.starts_with('@') => {
            Some(Bytes::from(std::fs::read(&d[1..]).with_context(|| {
                format!("cannot read request body from {}", &d[1..])
            })?))
        }
        Some(d) => Some(Bytes::from(d.to_string())),
        None => None,
    };
    if cli.count == 0 || cli.reuse == 0 {
        bail!("--count and --reuse must be at least 1");
    }
    Ok(Options {
        method,
        headers: cli
            .headers
            .iter()
            .map(|h| parse_header(h))
            .collect::<Result<_>>()?,
        body,
        max_time: cli.max_time,
        follow: cli.follow,
        max_redirs: cli.max_redirs,
        reuse: cli.reuse,
        resolve: cli.resolve.clone(),
        family: if cli.ipv4 {
            Family::V4
        } else if cli.ipv6 {
            Family::V6
        } else {
            Family::Any
        },
        cacert: cli.cacert.clone(),
        insecure: cli.insecure,
        dump_events: cli.dump_events,
        path_probe: cli.path_probe,
    })
}

fn raise_memlock() {
    // Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones ignore it.
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain setrlimit with a valid struct; failure only matters on old kernels.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let opts = options(&cli)?;
    let tls = prober::tls_config(opts.cacert.as_ref(), opts.insecure)
        .context("cannot set up TLS (check --cacert)")?;
    raise_memlock();
    let kernel = synack::bpf::for_mode(cli.mode, &cli.interfaces)
        .map_err(|e| anyhow::anyhow!(synack::bpf::help(&e)))
        .context("cannot start the kernel side (--mode unprivileged needs no privileges)")?;
    // Loaded and attached: what is left needs (almost) no privilege.
    synack::privs::drop_or_warn(&synack::privs::needed(
        kernel.as_ref().map(|k| k.attach_mode),
        false,
        false,
    ));
    let mut prober = Prober::new(kernel, tls, opts);

    let mut all = Vec::new();
    let mut ok = true;
    let stdout = std::io::stdout();
    for url in &cli.urls {
        for attempt in 0..cli.count {
            if attempt > 0 && !cli.interval.is_zero() {
                tokio::time::sleep(cli.interval).await;
            }
            for r in prober.run(url, attempt).await {
                let failed =
                    r.error.is_some() || (cli.fail && r.http_status.is_some_and(|s| s >= 400));
                ok &= !failed;
                let text = if cli.json {
                    output::json_line(&r) + "\n"
                } else {
                    output::human(&r) + "\n"
                };
                let mut out = stdout.lock();
                out.write_all(text.as_bytes())
                    .and_then(|_| out.flush())
                    .context("cannot write to stdout")?;
                all.push(r);
            }
        }
    }
    if !cli.json
        && let Some(s) = output::summary(&all)
    {
        println!("{s}");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("synack: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let cmd = cli.cmd.take();
    if let Some(Cmd::Monitor(m)) = cmd {
        raise_memlock();
        if m.concurrency == 0 || m.interval.is_zero() {
            eprintln!("synack monitor: --concurrency and --interval must be above zero");
            return ExitCode::from(2);
        }
        let o = synack::monitor::MonitorOptions {
            targets: m.targets,
            interval: m.interval,
            listen: m.listen,
            statsd: m.statsd,
            json: m.json,
            concurrency: m.concurrency,
            interfaces: m.interfaces,
            cacert: m.cacert,
            insecure: m.insecure,
            mode: m.mode,
        };
        return match rt.block_on(synack::monitor::run(o)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("synack monitor: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    if let Some(Cmd::Watch(w)) = cmd {
        // watch handles its own signals: they end it with a summary.
        raise_memlock();
        let r = rt.block_on(async { synack::watch::run(watch_options(w)?).await });
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("synack watch: {e:#}");
                if e.is::<synack::watch::InterfacesGone>() {
                    ExitCode::from(1)
                } else {
                    ExitCode::from(2)
                }
            }
        };
    }
    rt.block_on(async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("synack: cannot install a SIGTERM handler: {e}");
                    return ExitCode::from(2);
                }
            };
        // On SIGINT/SIGTERM the run future is dropped, which drops the Kernel
        // and with it every link and program: nothing stays attached.
        tokio::select! {
            r = run(cli) => match r {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("synack: {e:#}");
                    ExitCode::from(2)
                }
            },
            _ = tokio::signal::ctrl_c() => {
                eprintln!("synack: interrupted, detached");
                ExitCode::from(130)
            }
            _ = term.recv() => {
                eprintln!("synack: terminated, detached");
                ExitCode::from(143)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2.5s").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_duration("300ms").unwrap(), Duration::from_millis(300));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn headers() {
        let (n, v) = parse_header("X-Test:  a b ").unwrap();
        assert_eq!(n.as_str(), "x-test");
        assert_eq!(v.to_str().unwrap(), "a b");
        assert!(parse_header("nocolon").is_err());
        assert!(parse_header("bad name: x").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
