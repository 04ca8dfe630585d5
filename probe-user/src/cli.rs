//! The command line: clap's schema for `synack URL...`, `synack watch` and
//! `synack monitor`. Flags that more than one command takes are declared
//! once, in a group each command flattens; ranges are checked by clap's
//! value parsers. Each command runs itself (probe/, watch/, monitor/).

use crate::active::prober::Resolve;
use clap::Parser;
use std::{path::PathBuf, time::Duration};

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
///   synack -s -o /dev/null -w '%{time_starttransfer} %{wire_ttfb} %{verdict}\n' URL   (as curl -w)
#[derive(Parser, Debug)]
#[command(
    name = "synack",
    version,
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Option<Cmd>,

    #[command(flatten)]
    pub probe: ProbeArgs,
}

/// `synack URL...`: the active probe's flags.
#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// URLs to request (http:// or https://), one after the other.
    #[arg(required = true, value_name = "URL")]
    pub urls: Vec<String>,

    /// HTTP method (default GET, or POST with --data).
    #[arg(short = 'X', long = "request", value_name = "METHOD")]
    pub method: Option<String>,

    /// Extra request header, "Name: value"; may be repeated.
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,

    /// Request body; "@FILE" reads it from a file.
    #[arg(short = 'd', long = "data", value_name = "DATA")]
    pub data: Option<String>,

    /// Give up on a connection (DNS to last byte) after this long, e.g. 5, 2.5s, 300ms.
    #[arg(short = 'm', long = "max-time", value_name = "TIME", value_parser = parse_duration)]
    pub max_time: Option<Duration>,

    /// Follow redirects; each hop gets its own timeline.
    #[arg(short = 'L', long = "location")]
    pub follow: bool,

    /// Most redirects to follow with -L.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub max_redirs: u32,

    /// Repeat each URL N times, each on a fresh connection.
    #[arg(short = 'n', long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,

    /// Pause between repetitions of --count, e.g. 1s, 250ms.
    #[arg(long, default_value = "0", value_name = "TIME", value_parser = parse_duration)]
    pub interval: Duration,

    /// Send N requests on one keep-alive connection; the first pays for the
    /// handshake, the others show what a warm connection costs.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub reuse: u32,

    /// Use ADDR for HOST:PORT instead of DNS (as curl's --resolve); repeatable.
    #[arg(long, value_name = "HOST:PORT:ADDR")]
    pub resolve: Vec<Resolve>,

    /// Use IPv4 addresses only.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Use IPv6 addresses only.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,

    #[command(flatten)]
    pub tls: TlsArgs,

    #[command(flatten)]
    pub proxy: ProxyArgs,

    #[command(flatten)]
    pub http: HttpArgs,

    #[command(flatten)]
    pub interfaces: Interfaces,

    /// Print one JSON object per request, one per line (see docs/json.md).
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub mode: ModeArg,

    /// After each connection, send TTL-limited SYNs (TTL 1, 2, ...) to find
    /// how many hops away the TCP endpoint is: a middlebox answers before
    /// the origin could. A few extra connection attempts per URL.
    #[arg(long)]
    pub path_probe: bool,

    /// Print every kernel event of synack's connections to stderr (debugging).
    #[arg(long, hide = true)]
    pub dump_events: bool,

    /// Treat HTTP statuses >= 400 as failures (exit status 1; 22 in curl's
    /// output mode, as curl).
    #[arg(short = 'f', long)]
    pub fail: bool,

    #[command(flatten)]
    pub curl: CurlOutput,
}

/// HTTP versions, as curl's flags choose them. By default HTTPS offers h2
/// and http/1.1 in ALPN and speaks what the server picks; plain HTTP is
/// HTTP/1.1.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct HttpArgs {
    /// HTTP/1.1 only (ALPN offers http/1.1 alone).
    #[arg(long = "http1.1", conflicts_with_all = ["http2", "http2_prior_knowledge"])]
    pub http11: bool,

    /// Offer HTTP/2 over TLS (the default, as curl's); plain HTTP stays
    /// HTTP/1.1 (synack sends no h2c Upgrade).
    #[arg(long = "http2", conflicts_with = "http2_prior_knowledge")]
    pub http2: bool,

    /// HTTP/2 without asking: h2 alone in ALPN, h2c straight away on http://.
    #[arg(long = "http2-prior-knowledge")]
    pub http2_prior_knowledge: bool,
}

/// Explicit proxies, as curl takes them. Without -x, the environment's
/// http_proxy (lowercase only), HTTPS_PROXY / https_proxy, ALL_PROXY and
/// NO_PROXY apply, as in curl. Plain HTTP goes to the proxy in absolute
/// form; HTTPS through a CONNECT tunnel, whose phases (connect to the
/// proxy, its CONNECT answer, TLS with the origin through it, the request)
/// are timed apart.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ProxyArgs {
    /// Go through this HTTP proxy: [http://][USER:PASSWORD@]HOST[:PORT]
    /// (port 1080 when left out, as curl); "" turns proxies off, the
    /// environment's too.
    #[arg(short = 'x', long = "proxy", value_name = "[PROTOCOL://]HOST[:PORT]")]
    pub proxy: Option<String>,

    /// Hosts to reach directly, comma-separated (each matches its
    /// subdomains; "*" all; addresses and CIDR ranges): replaces NO_PROXY.
    #[arg(long, value_name = "LIST")]
    pub noproxy: Option<String>,

    /// USER:PASSWORD for the proxy (Basic), over the proxy URL's.
    #[arg(short = 'U', long = "proxy-user", value_name = "USER:PASSWORD")]
    pub proxy_user: Option<String>,
}

/// curl's output options. With any of -w, -o, -s, -I or -i, stdout carries
/// exactly what curl would print there (the body unless -o, then -w's
/// text), errors are curl's "synack: (N) message" on stderr, the exit
/// status is curl's, and synack's own record goes to stderr with -v only.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CurlOutput {
    /// After each transfer print FORMAT, with curl's variables: %{time_total},
    /// %{http_code}, %{remote_ip}, %{json}, %header{name}, \n ... and
    /// synack's: %{wire_ttfb}, %{wire_handshake}, %{wire_tls},
    /// %{wire_proxy_connect}, %{wire_h2_ping}, %{verdict},
    /// %{bottleneck}, %{network}, %{middlebox}, %{server}, %{client},
    /// %{synack_ttl}, %{hops} (seconds, empty where not measured).
    /// "@FILE" reads FORMAT from a file, "@-" from stdin.
    #[arg(short = 'w', long = "write-out", value_name = "FORMAT")]
    pub write_out: Option<String>,

    /// Write the response body to FILE instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Silent: no error messages or notices on stderr (see -S).
    #[arg(short = 's', long)]
    pub silent: bool,

    /// With -s, still print error messages.
    #[arg(short = 'S', long = "show-error")]
    pub show_error: bool,

    /// Send HEAD and print the response's head, not its body.
    #[arg(short = 'I', long = "head")]
    pub head: bool,

    /// Print the response's head before its body.
    #[arg(short = 'i', long = "include")]
    pub include: bool,

    /// The User-Agent header to send.
    #[arg(short = 'A', long = "user-agent", value_name = "NAME")]
    pub user_agent: Option<String>,

    /// In curl's output mode, also print synack's record of each request
    /// (the waterfall, or JSON with --json) to stderr.
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

impl CurlOutput {
    /// True when stdout is curl's (any of -w, -o, -s, -I, -i).
    pub fn active(&self) -> bool {
        self.write_out.is_some()
            || self.output.is_some()
            || self.silent
            || self.head
            || self.include
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    Watch(WatchArgs),
    Monitor(MonitorArgs),
    Compare(CompareArgs),
    Report(ReportArgs),
}

/// One HTML page to look at: where the time went, over hours of records.
///
/// Reads JSON-lines files of synack records (`synack --json --count N`,
/// `synack watch --json`, `synack monitor --json`) and writes one
/// self-contained HTML file (no script, style or font fetched from
/// anywhere: it opens offline). Per target: the phases over time (network,
/// middlebox, server and client stacked: their means per time bucket add
/// up to the mean request), each phase's distribution, the verdicts and
/// bottlenecks over time, and the waterfalls of the slowest and a typical
/// request (user-space and wire marks on one axis). Given two or more
/// files, each later one is compared with the first, as `synack compare`
/// does. Records are aggregated before they are drawn: a day of monitor
/// records (100k lines) makes a page of a few hundred kilobytes.
///
/// Examples:
///   synack report day.jsonl -o day.html
///   synack report fargate=a.jsonl apprunner=b.jsonl -o why.html
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ReportArgs {
    /// Files of records: FILE, or NAME=FILE to name the source in the page.
    #[arg(value_name = "[NAME=]FILE.jsonl", required = true)]
    pub files: Vec<String>,

    /// Where to write the page ("-": standard output).
    #[arg(
        short = 'o',
        long = "output",
        value_name = "FILE",
        default_value = "synack-report.html"
    )]
    pub output: String,

    /// The page's title (default: the sources' names).
    #[arg(long)]
    pub title: Option<String>,
}

/// Two populations of requests side by side: why is B slower than A?
///
/// Reads two JSON-lines files of synack records (`synack --json --count N`,
/// `synack watch --json`, `synack monitor --json`) and, per target (the
/// monitor's name, else the URL) and phase, prints each side's median and
/// p90 and the difference of the medians with a 95% bootstrap interval; a
/// difference whose interval holds 0 is called no difference. Then one
/// sentence per target: which side is slower, which of network, middlebox,
/// server and client carries it, and what is the same. Paths that differ
/// (direct on one side, a middlebox on the other) are said first.
///
/// Examples:
///   synack compare a.jsonl b.jsonl
///   synack compare fargate=a.jsonl apprunner=b.jsonl --json
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct CompareArgs {
    /// The first side: FILE, or NAME=FILE to name it in the output.
    #[arg(value_name = "[NAME=]A.jsonl")]
    pub a: String,

    /// The second side, compared with the first (differences are B - A).
    #[arg(value_name = "[NAME=]B.jsonl")]
    pub b: String,

    /// Print the comparison as one JSON object.
    #[arg(long)]
    pub json: bool,
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
/// The same listener answers blackbox_exporter's multi-target pattern:
/// GET /probe?target=URL&module=NAME runs one check and answers with its
/// metrics only (probe_success, probe_duration_seconds,
/// probe_http_duration_seconds{phase}, probe_http_status_code, ... and
/// synack's wire phases, verdict and split). Prometheus keeps the list
/// (relabel __address__ into __param_target, as for blackbox_exporter); its
/// X-Prometheus-Scrape-Timeout-Seconds, less 0.5 s, bounds the check.
/// Modules come from --modules (blackbox's YAML: prober: http with method,
/// headers, body, valid_status_codes, valid_http_versions, follow_redirects,
/// fail_if_ssl, fail_if_not_ssl, tls_config, preferred_ip_protocol,
/// ip_protocol_fallback, enable_http2; synack: {reuse: N}); without it, or
/// when the file has none of that name, http_2xx is built in. Without
/// --targets only /probe runs. Anyone who can reach --listen can make synack
/// request any URL, as with blackbox_exporter: keep it on loopback or a
/// scrape network.
///
/// Examples:
///   sudo synack monitor --targets /etc/synack/targets.txt
///   sudo synack monitor --targets targets.txt --interval 15s --listen 0.0.0.0:9777 --statsd 127.0.0.1:8125
///   sudo synack monitor --modules blackbox.yml --listen 0.0.0.0:9115
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct MonitorArgs {
    /// The targets file (one URL a line, with options; see above). Without
    /// it, checks run only when /probe is asked.
    #[arg(long, value_name = "FILE")]
    pub targets: Option<PathBuf>,

    /// Modules for /probe, in blackbox_exporter's YAML (see above); re-read
    /// when it changes and on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub modules: Option<PathBuf>,

    /// Time between two checks of a target (a target's interval= overrides it).
    #[arg(long, default_value = "30s", value_name = "TIME", value_parser = parse_positive_duration)]
    pub interval: Duration,

    /// Where to serve Prometheus metrics (/metrics). Loopback by default:
    /// give 0.0.0.0:9777 or [::]:9777 to let others scrape it.
    #[arg(long, default_value = "127.0.0.1:9777", value_name = "ADDR:PORT")]
    pub listen: std::net::SocketAddr,

    /// Also send DogStatsD metrics over UDP to this agent (e.g. 127.0.0.1:8125).
    #[arg(long, value_name = "HOST:PORT")]
    pub statsd: Option<String>,

    /// Print every check's records as JSON lines (with "target" and "tags").
    #[arg(long)]
    pub json: bool,

    /// Also push metrics over OTLP/HTTP (protobuf) to this OpenTelemetry
    /// collector: http://HOST:4318 (/v1/metrics is added when the URL has
    /// no path) or the full URL; https:// uses --cacert.
    #[arg(long, value_name = "URL")]
    pub otlp: Option<String>,

    /// How often to push OTLP metrics (cumulative series: a failed push
    /// loses nothing).
    #[arg(long, default_value = "60s", value_name = "TIME", value_parser = parse_positive_duration)]
    pub otlp_interval: Duration,

    /// A header for every OTLP push, NAME=VALUE (an API key, say);
    /// repeatable. OTEL_EXPORTER_OTLP_HEADERS is read too.
    #[arg(long = "otlp-header", value_name = "NAME=VALUE")]
    pub otlp_headers: Vec<String>,

    /// An OTLP resource attribute, KEY=VALUE (cloud.platform=aws_ecs,
    /// cloud.region=eu-west-1); repeatable, over OTEL_RESOURCE_ATTRIBUTES.
    /// service.name (OTEL_SERVICE_NAME, else synack) and host.name are set.
    #[arg(long = "otlp-resource", value_name = "KEY=VALUE")]
    pub otlp_resource: Vec<String>,

    /// Most checks running at once.
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = at_least_one)]
    pub concurrency: usize,

    #[command(flatten)]
    pub interfaces: Interfaces,

    #[command(flatten)]
    pub tls: TlsArgs,

    #[command(flatten)]
    pub mode: ModeArg,
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
pub struct WatchArgs {
    /// Only connections owned by this process id; repeatable.
    #[arg(long, value_name = "PID")]
    pub pid: Vec<u32>,

    /// Only connections of processes in this cgroup (v2) or below it: a path
    /// under the cgroup mount, or relative to it; repeatable.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Vec<String>,

    /// Only connections of this container (its id or a unique part of it,
    /// found through its cgroup: docker, containerd, cri-o, podman); repeatable.
    #[arg(long, value_name = "ID")]
    pub container: Vec<String>,

    /// Only connections with this local or remote port; repeatable.
    #[arg(long, value_name = "N")]
    pub port: Vec<u16>,

    /// Only connections whose peer is in this network (10.0.0.0/8,
    /// fd00::/8, or one address); repeatable.
    #[arg(long, value_name = "CIDR", value_parser = parse_net)]
    pub dst: Vec<ipnet::IpNet>,

    /// Only connections this host opened (client) or accepted (server).
    #[arg(long, value_enum, value_name = "SIDE")]
    pub direction: Option<Direction>,

    /// Print one JSON object per request, one per line (see docs/json.md);
    /// the summary goes to stderr.
    #[arg(long)]
    pub json: bool,

    /// Stop after this long, e.g. 30, 2m (default: until Ctrl-C or SIGTERM).
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Keep query strings in paths (they can carry tokens, so they are
    /// dropped by default).
    #[arg(long)]
    pub keep_query: bool,

    #[command(flatten)]
    pub interfaces: Interfaces,

    /// Print a running summary to stderr this often (human output); 0 turns it off.
    #[arg(long, default_value = "10s", value_name = "TIME", value_parser = parse_duration)]
    pub summary_every: Duration,

    /// Report a request once its connection has been idle this long after
    /// the response began (an idle keep-alive connection).
    #[arg(long, default_value = "500ms", value_name = "TIME", value_parser = parse_duration)]
    pub quiet: Duration,

    /// Most connections followed at once; past it the longest idle one is
    /// dropped (and counted in the summary).
    #[arg(long, default_value_t = 65536, value_name = "N", value_parser = at_least_one)]
    pub max_connections: usize,

    /// Print every kernel event to stderr (debugging).
    #[arg(long, hide = true)]
    pub dump_events: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Direction {
    Client,
    Server,
}

/// Which interfaces the kernel side attaches to.
#[derive(clap::Args, Debug, Clone)]
pub struct Interfaces {
    /// Attach to these interfaces only (default: every interface that is up);
    /// repeatable. (No -i: that is curl's --include.)
    #[arg(long = "interface", value_name = "IFACE")]
    pub interfaces: Vec<String>,
}

/// Whose certificates to trust.
#[derive(clap::Args, Debug, Clone)]
pub struct TlsArgs {
    /// Trust only the CA certificates in this PEM file (replaces the system roots).
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,

    /// Do not verify the server's certificate.
    #[arg(short = 'k', long)]
    pub insecure: bool,
}

/// How requests are timed.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct ModeArg {
    /// How to time: ebpf (kernel packet timestamps; needs CAP_BPF,
    /// CAP_NET_ADMIN, CAP_PERFMON), unprivileged (the sockets' own kernel
    /// timestamps: no privileges, no TTL), or auto (eBPF, else unprivileged).
    #[arg(long, value_enum, default_value = "auto", value_name = "MODE")]
    pub mode: crate::kernel::bpf::Mode,
}

fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not a network (examples: 10.0.0.0/8, fd00::/8, 192.0.2.7)"))
}

/// A duration as the targets file writes it: 5, 2.5s, 300ms, 1m.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::model::targets::parse_duration(s, true)
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be above zero".into()),
        d => Ok(d),
    }
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
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
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn ranges_are_checked_by_clap() {
        for bad in [
            &["synack", "--count", "0", "http://h/"][..],
            &["synack", "--reuse", "0", "http://h/"],
            &["synack", "monitor", "--targets", "t", "--concurrency", "0"],
            &["synack", "monitor", "--targets", "t", "--interval", "0"],
            &["synack", "watch", "--max-connections", "0"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        assert!(Cli::try_parse_from(["synack", "--count", "2", "http://h/"]).is_ok());
    }
}
