//! `synack monitor` against the lab, as root: a real Prometheus (Debian's)
//! scrapes it and its query API must return the series with values that fit
//! the lab's settings; a UDP listener receives DogStatsD lines; the targets
//! file is edited while it runs; targets that refuse, time out or reset are
//! reported while the others go on; promtool finds nothing to say of
//! /metrics. blackbox_exporter's multi-target pattern: a real Prometheus
//! relabels its targets into /probe?target=, as blackbox's README says, and
//! gets each check's wire phases and verdict, within its scrape timeout.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::{
    fs,
    process::Stdio,
    time::{Duration, Instant},
};
use synack_tests::{
    Netns, Proc, TempDir,
    agents::{one, prometheus, query, udp_in},
    is_root, synack_bin,
    topo::{Bins, Delays, Lab, Via, url},
    unique, wait_for,
};

const CLIENT_RTT_MS: f64 = 4.0;
const SERVER_RTT_MS: f64 = 20.0;
const THINK_MS: f64 = 10.0;
const RESET_PORT: u16 = 7070;

/// A server that accepts, reads the request and resets the connection.
fn resetter(ns: &Netns, dir: &TempDir) -> Result<Proc> {
    let ready = dir.join(&unique("reset-ready"));
    let code = format!(
        "import socket, struct\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('0.0.0.0', {RESET_PORT}))\n\
         s.listen(16)\n\
         open({:?}, 'w').close()\n\
         while True:\n    c, _ = s.accept()\n    c.recv(4096)\n    \
         c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n    c.close()\n",
        ready.to_string_lossy()
    );
    let mut c = ns.command("python3");
    c.args(["-c", &code]).stdout(Stdio::null());
    let p = Proc::spawn(c, "resetting server")?;
    wait_for(Duration::from_secs(10), "the resetting server", || {
        ready.exists().then_some(())
    })?;
    Ok(p)
}

/// The lab at the test's round trips (4 ms to the middle, 20 ms beyond).
fn lab() -> Result<Lab> {
    let ms = |v: f64| Duration::from_secs_f64(v / 1000.0);
    Lab::up(
        &Bins::beside_synack(),
        Delays::rtt(ms(CLIENT_RTT_MS), ms(SERVER_RTT_MS)),
        true,
    )
}

/// The origin's address, as the lab's URLs name it.
fn server_host() -> Result<String> {
    Ok(url(Via::Direct, false, false, "/")
        .trim_start_matches("http://")
        .split(':')
        .next()
        .context("server host")?
        .to_string())
}

/// The monitor's /metrics scraped every second, with a vantage label.
const SCRAPE_METRICS: &str = "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
     scrape_configs:\n  - job_name: synack\n    static_configs:\n      - targets: ['127.0.0.1:9777']\n        \
     labels:\n          vantage: lab\n";

/// `promtool check metrics` on a text: its findings (none when clean).
fn promtool(text: &str) -> Result<String> {
    use std::io::Write as _;
    let mut c = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("promtool (Debian's prometheus package)")?;
    c.stdin
        .take()
        .context("stdin")?
        .write_all(text.as_bytes())?;
    let o = c.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if !o.status.success() && said.trim().is_empty() {
        bail!("promtool failed: {}", o.status);
    }
    Ok(said.trim().to_string())
}

/// The monitor's own /metrics, from inside its namespace.
fn metrics(ns: &Netns) -> Result<String> {
    ns.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "http://127.0.0.1:9777/metrics",
    ])
}

#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn prometheus_statsd_reload_and_failing_targets() -> Result<()> {
    assert!(
        is_root(),
        "the monitor test needs root (namespaces, eBPF, iptables): cargo xtask test"
    );
    let lab = lab()?;
    let dir = TempDir::new()?;
    let _reset = resetter(&lab.server, &dir)?;
    let statsd = udp_in(&lab.client)?;
    statsd.set_read_timeout(Some(Duration::from_millis(200)))?;
    let statsd_addr = statsd.local_addr()?.to_string();

    let think = format!("/delay/{THINK_MS}");
    let host = server_host()?;
    let targets = dir.join("targets.txt");
    let text = format!(
        "# the lab\n\
         {} name=direct tag=path:direct\n\
         {} name=proxied tag=path:haproxy\n\
         http://{host}:9/ name=refused\n\
         {} name=slow timeout=700ms\n\
         http://{host}:{RESET_PORT}/ name=reset\n\
         this line is broken\n",
        url(Via::Direct, true, false, &think),
        url(Via::TcpProxy, true, false, &think),
        url(Via::Direct, false, false, "/delay/5000"),
    );
    fs::write(&targets, &text)?;
    let out = dir.join("monitor.jsonl");
    let err = dir.join("monitor.err");
    let mut c = lab.client.command(synack_bin().to_str().context("path")?);
    c.args([
        "monitor",
        "--interval",
        "1s",
        "--json",
        "--statsd",
        &statsd_addr,
    ])
    .arg("--targets")
    .arg(&targets)
    .arg("--cacert")
    .arg(lab.ca_path())
    .stdout(fs::File::create(&out)?)
    .stderr(fs::File::create(&err)?);
    let mut monitor = Proc::spawn(c, "synack monitor")?;
    let _prom = prometheus(&lab.client, &dir, SCRAPE_METRICS)?;

    // The broken line is reported by number; the others run.
    wait_for(Duration::from_secs(20), "the monitor to start", || {
        fs::read_to_string(&err)
            .ok()
            .filter(|e| e.contains("5 targets"))
            .map(|_| ())
    })
    .with_context(|| fs::read_to_string(&err).unwrap_or_default())?;
    let e = fs::read_to_string(&err)?;
    assert!(e.contains("line 7:"), "{e}");

    // Prometheus's view, once it has scraped a few checks of each target.
    let deadline = Duration::from_secs(60);
    wait_for(
        deadline,
        "Prometheus to see every target checked twice",
        || {
            let r = query(&lab.client, "sum by (target) (synack_checks_total)").ok()?;
            (r.len() == 5 && r.iter().all(|(_, v)| *v >= 2.0)).then_some(())
        },
    )
    .with_context(|| fs::read_to_string(&err).unwrap_or_default())?;
    let c = &lab.client;
    let get = |q: &str| one(c, q).with_context(|| format!("no single series for {q}"));
    assert_eq!(get("synack_check_success{target=\"direct\"}")?, 1.0);
    assert_eq!(get("synack_check_success{target=\"proxied\"}")?, 1.0);
    for t in ["refused", "slow", "reset"] {
        assert_eq!(
            get(&format!("synack_check_success{{target=\"{t}\"}}"))?,
            0.0,
            "{t}"
        );
    }
    assert_eq!(get("synack_path_middlebox{target=\"direct\"}")?, 0.0);
    assert_eq!(get("synack_path_middlebox{target=\"proxied\"}")?, 1.0);
    // Direct: routed through mid (one hop); proxied: haproxy answers itself.
    assert_eq!(get("synack_synack_ttl{target=\"direct\"}")?, 63.0);
    assert_eq!(get("synack_synack_ttl{target=\"proxied\"}")?, 64.0);
    let mean = |t: &str, phase: &str| -> Result<f64> {
        let q = format!(
            "synack_phase_duration_seconds_sum{{target=\"{t}\",phase=\"{phase}\"}} / \
             synack_phase_duration_seconds_count{{target=\"{t}\",phase=\"{phase}\"}}"
        );
        Ok(get(&q)? * 1000.0)
    };
    let within = |v: f64, lo: f64, hi: f64, what: &str| {
        assert!(
            (lo..=hi).contains(&v),
            "{what}: {v:.2} ms, expected {lo}..{hi}"
        );
    };
    let rtt = CLIENT_RTT_MS + SERVER_RTT_MS;
    within(
        mean("direct", "wire_handshake")?,
        rtt,
        rtt + 3.0,
        "direct handshake",
    );
    within(
        mean("proxied", "wire_handshake")?,
        CLIENT_RTT_MS,
        CLIENT_RTT_MS + 3.0,
        "proxied handshake",
    );
    within(
        mean("direct", "server")?,
        THINK_MS - 0.5,
        THINK_MS + 5.0,
        "direct server",
    );
    within(
        mean("proxied", "server")?,
        THINK_MS - 0.5,
        THINK_MS + 5.0,
        "proxied server",
    );
    within(
        mean("proxied", "middlebox")?,
        2.0 * SERVER_RTT_MS,
        3.0 * SERVER_RTT_MS + 15.0,
        "proxied middlebox",
    );
    within(mean("direct", "middlebox")?, 0.0, 0.0, "direct middlebox");
    for (t, kinds) in [
        ("refused", &["connect_refused"][..]),
        ("slow", &["timeout"][..]),
        ("reset", &["io", "http"][..]),
    ] {
        let r = query(c, &format!("synack_check_errors_total{{target=\"{t}\"}}"))?;
        assert!(
            r.iter()
                .any(|(m, v)| *v >= 1.0 && kinds.iter().any(|k| m["kind"] == *k)),
            "{t}: {r:?}"
        );
    }
    assert_eq!(get("synack_targets_file_errors")?, 1.0);
    // Nothing for promtool to say: every family has its help, counters
    // named as the classic format wants them.
    let exposition = metrics(c)?;
    assert!(
        exposition.contains("# HELP synack_checks_total "),
        "{exposition}"
    );
    assert_eq!(promtool(&exposition)?, "", "promtool check metrics");
    dashboard_queries_answer(c)?;
    assert!(get("synack_events_lost_total{reason=\"ringbuf_full\"}")? == 0.0);

    // DogStatsD: every line well formed, the phases of the direct target there.
    let mut lines = Vec::new();
    let mut buf = [0u8; 65536];
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if let Ok(n) = statsd.recv(&mut buf) {
            lines.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_string),
            );
        }
        if lines
            .iter()
            .any(|l| l.contains("target:direct") && l.contains("phase:server"))
        {
            break;
        }
    }
    assert!(!lines.is_empty(), "no DogStatsD datagram");
    for l in &lines {
        let (nv, rest) = l.split_once('|').with_context(|| l.clone())?;
        let (name, val) = nv.split_once(':').with_context(|| l.clone())?;
        assert!(name.starts_with("synack."), "{l}");
        val.parse::<f64>().with_context(|| l.clone())?;
        let (ty, tags) = rest.split_once("|#").with_context(|| l.clone())?;
        assert!(["d", "g", "c"].contains(&ty), "{l}");
        assert!(tags.split(',').all(|t| t.contains(':')), "{l}");
    }
    assert!(
        lines.iter().any(|l| l.starts_with("synack.phase.duration:")
            && l.contains("target:direct")
            && l.contains("path:direct")
            && l.contains("phase:server")),
        "{lines:?}"
    );

    // Edit the file while it runs: one target goes, one comes; the others
    // keep their counts (read from the monitor itself, before and after).
    let direct_success = |c: &Netns| -> Option<f64> {
        let m = metrics(c).ok()?;
        m.lines()
            .find_map(|l| {
                l.strip_prefix("synack_checks_total{target=\"direct\",result=\"success\"} ")
            })
            .and_then(|v| v.trim().parse().ok())
    };
    let before_edit = direct_success(&lab.client).context("direct's success count")?;
    let edited = text
        .lines()
        .filter(|l| !l.contains("name=slow"))
        .chain(std::iter::once(
            format!("{} name=added", url(Via::Direct, false, false, "/delay/1")).as_str(),
        ))
        .collect::<Vec<_>>()
        .join("\n");
    fs::write(&targets, edited)?;
    wait_for(Duration::from_secs(20), "the edit to take effect", || {
        let m = metrics(c).ok()?;
        (m.contains("synack_check_success{target=\"added\"} 1") && !m.contains("target=\"slow\""))
            .then_some(())
    })
    .with_context(|| {
        let m = metrics(c).unwrap_or_default();
        format!("{}\n{m}", fs::read_to_string(&err).unwrap_or_default())
    })?;
    let after_edit = direct_success(&lab.client).context("direct's success count")?;
    assert!(
        after_edit >= before_edit,
        "the direct target's counts survived the reload: {before_edit} then {after_edit}"
    );

    monitor.signal(libc::SIGTERM);
    let st = monitor.wait_exit(Duration::from_secs(10))?;
    assert!(st.success(), "monitor exit: {st}");
    // JSON lines: every record names its target; failures are results.
    let recs = synack_tests::json_lines(&fs::read(&out)?)?;
    for t in ["direct", "proxied", "refused", "slow", "reset", "added"] {
        assert!(
            recs.iter().any(|r| r["target"] == t),
            "no JSON record of {t}"
        );
    }
    assert!(
        recs.iter()
            .filter(|r| r["target"] == "refused")
            .all(|r| r["error"]["kind"] == "connect_refused" && r["check_success"] == false)
    );
    Ok(())
}

/// Every panel of packaging/grafana/synack-dashboard.json, its variables
/// filled as Grafana fills them (vantage: the scrape's label, target: all,
/// the rate interval: 10 s), is a query this Prometheus answers without an
/// error and with data of the lab's targets; the variables' own queries
/// list the lab's vantage point and targets.
fn dashboard_queries_answer(ns: &Netns) -> Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/grafana/synack-dashboard.json");
    let d: Value =
        serde_json::from_str(&fs::read_to_string(&path)?).context("the dashboard is not JSON")?;
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(vars, ["datasource", "vantage", "target"], "{vars:?}");
    let fill = |e: &str| {
        e.replace("$__rate_interval", "10s")
            .replace("$vantage", "lab")
            .replace("$target", ".+")
    };
    // Rates need history: Prometheus may have scraped only once when the
    // checks' counts were first seen.
    wait_for(
        Duration::from_secs(30),
        "10 s of Prometheus history",
        || (one(ns, "count_over_time(synack_targets{vantage=\"lab\"}[10s])")? >= 5.0).then_some(()),
    )?;
    let mut n = 0;
    for p in d["panels"].as_array().context("no panels")? {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        for t in p["targets"].as_array().into_iter().flatten() {
            let e = t["expr"].as_str().context("a target without expr")?;
            let q = fill(e);
            let r = query(ns, &q).with_context(|| format!("panel {}: {q}", p["title"]))?;
            assert!(!r.is_empty(), "panel {}: no data for {q}", p["title"]);
            assert!(
                r.iter()
                    .all(|(m, _)| m["vantage"] == "lab" || m.get("vantage").is_none()),
                "panel {}: {r:?}",
                p["title"]
            );
            n += 1;
        }
    }
    assert!(n >= 10, "{n} panel queries");
    // label_values(synack_targets, vantage) and the target list.
    let v = query(ns, "count by (vantage) (synack_targets)")?;
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].0["vantage"], "lab");
    let t = query(
        ns,
        "count by (target) (synack_check_success{vantage=~\"lab\"})",
    )?;
    assert!(t.len() >= 5, "{t:?}");
    eprintln!("dashboard: {n} panel queries answered with data");
    Ok(())
}

/// A module file as people have them for blackbox_exporter: the default,
/// one synack cannot do (icmp), one it can with options.
const MODULES: &str = "modules:\n  http_2xx:\n    prober: http\n  icmp:\n    prober: icmp\n  \
                       teapot:\n    prober: http\n    http:\n      valid_status_codes: [418]\n";

/// GET on the probe listener: status and body.
fn probe_get(ns: &Netns, query: &str, timeout_header: Option<&str>) -> Result<(u16, String)> {
    let url = format!("http://127.0.0.1:9115/probe?{query}");
    let mut args = vec!["curl", "-sS", "--max-time", "20", "-w", "\n%{http_code}"];
    let h;
    if let Some(t) = timeout_header {
        h = format!("X-Prometheus-Scrape-Timeout-Seconds: {t}");
        args.extend(["-H", &h]);
    }
    args.push(&url);
    let out = ns.exec(&args)?;
    let (body, code) = out.rsplit_once('\n').context("curl -w")?;
    Ok((code.trim().parse()?, body.to_string()))
}

#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn blackbox_probe_through_prometheus_relabelling() -> Result<()> {
    assert!(is_root(), "the monitor test needs root: cargo xtask test");
    let lab = lab()?;
    let dir = TempDir::new()?;
    let modules = dir.join("blackbox.yml");
    fs::write(&modules, MODULES)?;
    let err = dir.join("monitor.err");
    let mut c = lab.client.command(synack_bin().to_str().context("path")?);
    c.args(["monitor", "--listen", "127.0.0.1:9115", "--modules"])
        .arg(&modules)
        .arg("--cacert")
        .arg(lab.ca_path())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err)?);
    let _monitor = Proc::spawn(c, "synack monitor (probe only)")?;
    wait_for(Duration::from_secs(20), "the monitor to listen", || {
        fs::read_to_string(&err)
            .ok()
            .filter(|e| e.contains("/probe with 2 modules"))
            .map(|_| ())
    })
    .with_context(|| fs::read_to_string(&err).unwrap_or_default())?;
    let e = fs::read_to_string(&err)?;
    assert!(
        e.contains("module icmp cannot be used: prober \"icmp\""),
        "{e}"
    );

    let think = format!("/delay/{THINK_MS}");
    let direct = url(Via::Direct, true, false, &think);
    let proxied = url(Via::TcpProxy, true, false, &think);
    let slow = url(Via::Direct, false, false, "/delay/5000");
    let ns = &lab.client;

    // As a person with curl: the errors blackbox gives, then one probe.
    let (code, body) = probe_get(ns, "", None)?;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("Target parameter is missing"), "{body}");
    let enc = |u: &str| u.replace(':', "%3A").replace('/', "%2F");
    let (code, body) = probe_get(ns, &format!("target={}&module=icmp", enc(&direct)), None)?;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("HTTP only"), "{body}");
    let (code, body) = probe_get(ns, &format!("target={}&module=nope", enc(&direct)), None)?;
    assert_eq!(
        (code, body.contains("Unknown module")),
        (400, true),
        "{body}"
    );
    let (code, body) = probe_get(ns, &format!("target={}", enc(&direct)), None)?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("probe_success 1"), "{body}");
    assert_eq!(promtool(&body)?, "", "promtool on a /probe answer:\n{body}");
    // The module's own expectation: a 200 is not the teapot's 418.
    let (_, body) = probe_get(
        ns,
        &format!("target={}&module=teapot&debug=true", enc(&direct)),
        None,
    )?;
    assert!(body.starts_with("Logs for the probe:"), "{body}");
    assert!(
        body.contains("probe failed: status") && body.contains("probe_success 0"),
        "{body}"
    );
    // The scrape's timeout bounds a check that would take 5 s.
    let t0 = Instant::now();
    let (code, body) = probe_get(ns, &format!("target={}", enc(&slow)), Some("1.5"))?;
    let took = t0.elapsed();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("probe_success 0"), "{body}");
    assert!(
        took < Duration::from_millis(1500),
        "answered after {took:?}: {body}"
    );

    // Prometheus with blackbox_exporter's relabelling (its README's).
    let _prom = prometheus(
        ns,
        &dir,
        &format!(
            "global:\n  scrape_interval: 2s\n  scrape_timeout: 1500ms\n  evaluation_interval: 2s\n\
             scrape_configs:\n  - job_name: blackbox\n    metrics_path: /probe\n    \
             params:\n      module: [http_2xx]\n    static_configs:\n      - targets:\n        \
             - {direct}\n        - {proxied}\n        - {slow}\n    relabel_configs:\n      \
             - source_labels: [__address__]\n        target_label: __param_target\n      \
             - source_labels: [__param_target]\n        target_label: instance\n      \
             - target_label: __address__\n        replacement: 127.0.0.1:9115\n"
        ),
    )?;
    let get = |q: &str| one(ns, q).with_context(|| format!("no single series for {q}"));
    wait_for(
        Duration::from_secs(60),
        "Prometheus to scrape each target's probe",
        || {
            let r = query(ns, "up{job=\"blackbox\"}").ok()?;
            (r.len() == 3
                && r.iter().all(|(_, v)| *v == 1.0)
                && query(ns, "probe_success").ok()?.len() == 3)
                .then_some(())
        },
    )
    .with_context(|| {
        format!(
            "{}\n{}",
            fs::read_to_string(&err).unwrap_or_default(),
            fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        )
    })?;
    let at = |name: &str, inst: &str, extra: &str| format!("{name}{{instance=\"{inst}\"{extra}}}");
    // Timings are read as the best of several probes: a busy host only
    // adds time to some of them, a wrong attribution is in every one.
    wait_for(
        Duration::from_secs(60),
        "three probes of each target in Prometheus",
        || {
            let r = query(
                ns,
                "count_over_time(probe_success{job=\"blackbox\"}[1m]) >= 3",
            )
            .ok()?;
            (r.len() == 3).then_some(())
        },
    )?;
    let best = |name: &str, inst: &str, extra: &str| {
        get(&format!("min_over_time({}[1m])", at(name, inst, extra)))
    };
    assert_eq!(get(&at("probe_success", &direct, ""))?, 1.0);
    assert_eq!(get(&at("probe_success", &proxied, ""))?, 1.0);
    assert_eq!(get(&at("probe_success", &slow, ""))?, 0.0);
    assert!(get(&at("probe_duration_seconds", &slow, ""))? < 1.5);
    assert_eq!(get(&at("probe_http_status_code", &direct, ""))?, 200.0);
    assert_eq!(get(&at("synack_path_middlebox", &direct, ""))?, 0.0);
    assert_eq!(get(&at("synack_path_middlebox", &proxied, ""))?, 1.0);
    let rtt = (CLIENT_RTT_MS + SERVER_RTT_MS) / 1000.0;
    let hs = best(
        "synack_wire_duration_seconds",
        &direct,
        ",phase=\"handshake\"",
    )?;
    assert!((rtt..rtt + 0.003).contains(&hs), "direct handshake {hs}");
    let hs = best(
        "synack_wire_duration_seconds",
        &proxied,
        ",phase=\"handshake\"",
    )?;
    let near = CLIENT_RTT_MS / 1000.0;
    assert!((near..near + 0.003).contains(&hs), "proxied handshake {hs}");
    let connect = best("probe_http_duration_seconds", &direct, ",phase=\"connect\"")?;
    assert!(
        (rtt..rtt + 0.005).contains(&connect),
        "direct connect {connect}"
    );
    let mb = best(
        "synack_phase_duration_seconds",
        &proxied,
        ",phase=\"middlebox\"",
    )?;
    assert!(mb >= 2.0 * SERVER_RTT_MS / 1000.0, "proxied middlebox {mb}");
    let server = best(
        "synack_phase_duration_seconds",
        &direct,
        ",phase=\"server\"",
    )?;
    assert!(
        (THINK_MS / 1000.0 - 0.0005..THINK_MS / 1000.0 + 0.005).contains(&server),
        "direct server {server}"
    );
    Ok(())
}

/// A key's string value in an OTLP attribute list (protobuf's JSON
/// mapping: `[{"key": k, "value": {"stringValue": v}}]`).
fn attr<'a>(attrs: &'a Value, key: &str) -> Option<&'a str> {
    attrs.as_array()?.iter().find(|a| a["key"] == key)?["value"]["stringValue"].as_str()
}

/// protobuf's JSON mapping writes 64-bit integers as strings and leaves
/// zeros out.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(-1),
        Value::Number(n) => n.as_i64().unwrap_or(-1),
        Value::Null => 0,
        _ => -1,
    }
}

/// The data points of one metric in a decoded request.
fn points<'a>(req: &'a Value, name: &str) -> Vec<&'a Value> {
    let mut out = Vec::new();
    for rm in req["resourceMetrics"].as_array().into_iter().flatten() {
        for sm in rm["scopeMetrics"].as_array().into_iter().flatten() {
            for m in sm["metrics"].as_array().into_iter().flatten() {
                if m["name"] == name {
                    for kind in ["gauge", "sum", "histogram"] {
                        out.extend(m[kind]["dataPoints"].as_array().into_iter().flatten());
                    }
                }
            }
        }
    }
    out
}

/// `--otlp`: the monitor pushes to a receiver that decodes with the
/// official OTLP schema (the opentelemetry-proto package): the resource's
/// attributes, httpcheck's names, cumulative histograms whose buckets add
/// up and whose mean handshake fits the lab, the verdict's gauges, an
/// error kind; the headers given; a last push on SIGTERM.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn otlp_push_decoded_with_the_official_schema() -> Result<()> {
    assert!(is_root(), "the monitor test needs root: cargo xtask test");
    let lab = lab()?;
    let dir = TempDir::new()?;
    let python =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/lint-venv/bin/python3");
    anyhow::ensure!(
        python.exists(),
        "{} is missing: run `cargo xtask setup`",
        python.display()
    );
    let received = dir.join("otlp.jsonl");
    let ready = dir.join("otlp.ready");
    let mut r = lab.client.command(python.to_str().context("path")?);
    r.arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("py/otlp_receiver.py"))
        .arg(&received)
        .arg(&ready)
        .arg("4318")
        .stderr(fs::File::create(dir.join("otlp.err"))?);
    let _receiver = Proc::spawn(r, "OTLP receiver")?;
    wait_for(Duration::from_secs(20), "the OTLP receiver", || {
        ready.exists().then_some(())
    })
    .with_context(|| fs::read_to_string(dir.join("otlp.err")).unwrap_or_default())?;

    let host = server_host()?;
    let targets = dir.join("targets.txt");
    fs::write(
        &targets,
        format!(
            "{} name=direct\n{} name=proxied\nhttp://{host}:9/ name=refused\n",
            url(Via::Direct, true, false, &format!("/delay/{THINK_MS}")),
            url(Via::TcpProxy, true, false, &format!("/delay/{THINK_MS}")),
        ),
    )?;
    let err = dir.join("monitor.err");
    let mut c = lab.client.command(synack_bin().to_str().context("path")?);
    c.args([
        "monitor",
        "--interval",
        "1s",
        "--otlp",
        "http://127.0.0.1:4318",
    ])
    .args([
        "--otlp-interval",
        "1s",
        "--otlp-header",
        "x-api-key=lab-secret",
    ])
    .args([
        "--otlp-resource",
        "cloud.platform=lab",
        "--otlp-resource",
        "cloud.region=lab-1",
    ])
    .arg("--targets")
    .arg(&targets)
    .arg("--cacert")
    .arg(lab.ca_path())
    .env("OTEL_SERVICE_NAME", "synack-lab")
    .stdout(Stdio::null())
    .stderr(fs::File::create(&err)?);
    let mut monitor = Proc::spawn(c, "synack monitor --otlp")?;
    let decoded = || -> Vec<Value> {
        fs::read_to_string(&received)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    // A push in which every target has been checked at least twice.
    let last = wait_for(
        Duration::from_secs(60),
        "a push with two checks of each target",
        || {
            let all = decoded();
            let l = all.last()?.clone();
            let checks = points(&l["request"], "synack.checks");
            ["direct", "proxied", "refused"]
                .iter()
                .all(|t| {
                    checks
                        .iter()
                        .filter(|p| attr(&p["attributes"], "synack.target") == Some(t))
                        .map(|p| int(&p["asInt"]))
                        .sum::<i64>()
                        >= 2
                })
                .then_some(l)
        },
    )
    .with_context(|| fs::read_to_string(&err).unwrap_or_default())?;
    let req = &last["request"];
    assert_eq!(
        last["headers"]["x-api-key"], "lab-secret",
        "{}",
        last["headers"]
    );
    assert_eq!(last["headers"]["content-type"], "application/x-protobuf");
    let res = &req["resourceMetrics"][0]["resource"]["attributes"];
    assert_eq!(attr(res, "service.name"), Some("synack-lab"), "{res}");
    assert_eq!(attr(res, "cloud.platform"), Some("lab"), "{res}");
    assert_eq!(attr(res, "cloud.region"), Some("lab-1"), "{res}");
    assert!(
        attr(res, "host.name").is_some_and(|h| !h.is_empty()),
        "{res}"
    );
    assert_eq!(
        req["resourceMetrics"][0]["scopeMetrics"][0]["scope"]["name"],
        "synack"
    );

    // The handshake histogram: cumulative, buckets that add up, a mean
    // that fits the lab's round trip.
    let metrics = &req["resourceMetrics"][0]["scopeMetrics"][0]["metrics"];
    let hist = metrics
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == "synack.phase.duration")
        .context("no synack.phase.duration")?;
    assert_eq!(hist["unit"], "s");
    assert_eq!(
        hist["histogram"]["aggregationTemporality"],
        "AGGREGATION_TEMPORALITY_CUMULATIVE"
    );
    let hs = points(req, "synack.phase.duration")
        .into_iter()
        .find(|p| {
            attr(&p["attributes"], "synack.target") == Some("direct")
                && attr(&p["attributes"], "synack.phase") == Some("wire_handshake")
        })
        .context("no direct wire_handshake histogram")?;
    let n = int(&hs["count"]);
    let buckets: i64 = hs["bucketCounts"]
        .as_array()
        .context("bucketCounts")?
        .iter()
        .map(int)
        .sum();
    assert!(n >= 2 && buckets == n, "count {n}, buckets {buckets}: {hs}");
    assert_eq!(
        hs["bucketCounts"].as_array().map(Vec::len),
        hs["explicitBounds"].as_array().map(|b| b.len() + 1)
    );
    let mean_ms = hs["sum"].as_f64().context("sum")? / n as f64 * 1000.0;
    let rtt = CLIENT_RTT_MS + SERVER_RTT_MS;
    assert!(
        (rtt..rtt + 3.0).contains(&mean_ms),
        "direct handshake mean {mean_ms} ms"
    );
    let (t0, t1) = (int(&hs["startTimeUnixNano"]), int(&hs["timeUnixNano"]));
    assert!(t0 > 0 && t0 < t1, "{hs}");
    // The same start in every push: cumulative since the monitor started.
    let all = decoded();
    assert!(all.len() >= 2, "{} pushes", all.len());
    for l in &all {
        for p in points(&l["request"], "synack.phase.duration") {
            assert_eq!(int(&p["startTimeUnixNano"]), t0);
        }
    }

    // The verdict's gauges and httpcheck's names.
    let of = |name: &str, key: &str, t: &str| -> Vec<i64> {
        points(req, name)
            .into_iter()
            .filter(|p| attr(&p["attributes"], key) == Some(t))
            .map(|p| int(&p["asInt"]))
            .collect()
    };
    assert_eq!(of("synack.path.middlebox", "synack.target", "direct"), [0]);
    assert_eq!(of("synack.path.middlebox", "synack.target", "proxied"), [1]);
    assert_eq!(of("synack.check.success", "synack.target", "refused"), [0]);
    let direct_url = url(Via::Direct, true, false, &format!("/delay/{THINK_MS}"));
    let status: Vec<(String, i64)> = points(req, "httpcheck.status")
        .into_iter()
        .filter(|p| attr(&p["attributes"], "http.url") == Some(&direct_url))
        .map(|p| {
            (
                attr(&p["attributes"], "http.status_class")
                    .unwrap_or("")
                    .to_string(),
                int(&p["asInt"]),
            )
        })
        .collect();
    assert_eq!(status.len(), 5, "{status:?}");
    assert!(
        status.iter().all(|(c, v)| *v == i64::from(c == "2xx")),
        "{status:?}"
    );
    let errors = points(req, "httpcheck.error");
    assert!(
        errors.iter().any(
            |p| attr(&p["attributes"], "error.message") == Some("connect_refused")
                && int(&p["asInt"]) >= 1
        ),
        "{errors:?}"
    );
    assert!(!points(req, "httpcheck.duration").is_empty());

    // SIGTERM: one last push before it exits.
    let asked = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as i64;
    monitor.signal(libc::SIGTERM);
    let st = monitor.wait_exit(Duration::from_secs(10))?;
    assert!(st.success(), "monitor exit {st}");
    // Stamped after the signal: the flush, not a periodic push.
    let final_push = decoded().last().cloned().context("no push")?;
    let stamped = points(&final_push["request"], "synack.checks")
        .iter()
        .map(|p| int(&p["timeUnixNano"]))
        .max()
        .unwrap_or(0);
    assert!(
        stamped >= asked,
        "no push on the way out: the last is stamped {stamped}, SIGTERM at {asked}"
    );
    let said = fs::read_to_string(&err)?;
    assert!(
        said.contains("OTLP to http://127.0.0.1:4318/v1/metrics every 1s"),
        "{said}"
    );
    assert!(!said.contains("OTLP push to"), "a push failed: {said}");
    Ok(())
}
