//! `cargo xtask`: set-up, build, run and test for synack.
//!
//! The eBPF crate (probe-ebpf) needs nightly, rust-src and bpf-linker; this is
//! the one place that knows how to get and drive them (see docs/build.md).

mod lint;
mod seccomp;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, set up and test synack")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (idempotent): nightly rust-src,
    /// bpf-linker built against nightly's LLVM, and the Debian packages the
    /// tests use.
    Setup {
        /// Only what building needs: skip the Debian packages (apt-get),
        /// cargo-fuzz and the linters (packaging/Dockerfile builds this way).
        #[arg(long)]
        no_apt: bool,
    },
    /// Build the eBPF object, then synack with the object embedded.
    Build {
        /// Optimised build: target/release/synack.
        #[arg(long)]
        release: bool,
    },
    /// Build synack and run it with the privileges it needs (sudo when not root).
    Run {
        /// Use the release build.
        #[arg(long)]
        release: bool,
        /// Arguments for synack.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build everything and run the whole test suite: unit tests, the eBPF
    /// programs under BPF_PROG_TEST_RUN, and the end-to-end tests in network
    /// namespaces (these need root); then `fuzz` for its default time, unless
    /// a test filter is given.
    Test {
        /// Skip the fuzzing step.
        #[arg(long)]
        no_fuzz: bool,
        /// Extra arguments for `cargo test` (after --), e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Coverage-guided fuzzing (cargo-fuzz, fuzz/) of every parser of
    /// untrusted bytes, each target for a bounded time over a scratch copy of
    /// its committed corpus; fails on the first crash it finds in any target.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = FUZZ_SECONDS)]
        seconds: u32,
        /// Targets to run (default: all).
        targets: Vec<String>,
    },
    /// The lab demo: brings the lab up, times HTTPS requests to the same
    /// origin directly and through a transparent TCP proxy, prints both
    /// breakdowns and verdicts side by side, and tears the lab down (root).
    Demo {
        /// Think time of the origin per request, ms.
        #[arg(long, default_value_t = 20)]
        think: u32,
        /// Round-trip time added on the client - mid link, ms.
        #[arg(long, default_value_t = 4.0)]
        client_rtt: f64,
        /// Round-trip time added on the mid - server link, ms.
        #[arg(long, default_value_t = 40.0)]
        server_rtt: f64,
    },
    /// Benchmarks (root): accuracy against tcpdump and curl -w, the
    /// classifiers' cost per packet, throughput next to tcpdump, and the
    /// connection rate `synack watch` follows without loss. Release build;
    /// writes target/bench/results.json and prints a table.
    Bench {
        /// Fewer rounds and shorter steps (under 10 minutes).
        #[arg(long)]
        quick: bool,
    },
    /// Check what no test can run here: the Dockerfile (hadolint and a dry
    /// run of its build steps), the Kubernetes manifests (yamllint,
    /// kubernetes-validate --strict), the systemd unit (systemd-analyze
    /// verify), and rustfmt. Part of `test`.
    Lint,
    /// Write packaging/seccomp/synack.json: containers-common's default
    /// seccomp profile resolved for CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON,
    /// plus bpf and perf_event_open, less the namespace and mount calls
    /// (docs/containers.md says why).
    Seccomp {
        /// The runtime's default profile, in containers-common's format
        /// (conditions it cannot resolve, such as minKernel, are refused).
        #[arg(long, default_value = seccomp::RUNTIME_DEFAULT)]
        from: PathBuf,
    },
    /// The lab: client, mid and server namespaces with a delay line, haproxy
    /// and squid in mid, and the origin (needs root).
    Lab {
        #[command(subcommand)]
        cmd: LabCmd,
    },
}

#[derive(Subcommand)]
enum LabCmd {
    /// Build and start a lab that stays up until `lab down`.
    Up {
        /// Round-trip time added on the client - mid link, ms (half each way).
        #[arg(long, default_value_t = 4.0)]
        client_rtt: f64,
        /// Round-trip time added on the mid - server link, ms (half each way).
        #[arg(long, default_value_t = 40.0)]
        server_rtt: f64,
        /// One-way delays, ms, overriding the halves above: client to mid,
        /// mid to client, mid to server, server to mid.
        #[arg(long, num_args = 4, value_names = ["C2M", "M2C", "M2S", "S2M"])]
        one_way: Option<Vec<f64>>,
        /// Drop the client's first N SYNs in mid.
        #[arg(long, default_value_t = 0)]
        drop_syns: u32,
    },
    /// Stop the lab's processes and remove its namespaces.
    Down,
    /// Show the running lab and how to use it.
    Status,
}

fn bench(quick: bool) -> Result<()> {
    if !is_root() {
        bail!("the benchmarks build network namespaces and load eBPF programs: run them as root");
    }
    let bin = build(true)?;
    let out = root().join("target/bench/results.json");
    let mut c = Command::new(bin.with_file_name("synack-bench"));
    c.env("SYNACK_BIN", &bin).arg("--out").arg(&out);
    if quick {
        c.arg("--quick");
    }
    run(&mut c).context("running the benchmarks")
}

fn lab_state_file() -> PathBuf {
    root().join("target/lab/state.json")
}

fn ms(v: f64) -> Result<std::time::Duration> {
    if !(0.0..=60_000.0).contains(&v) {
        bail!("{v} ms is out of range (0 to 60000)");
    }
    Ok(std::time::Duration::from_secs_f64(v / 1000.0))
}

fn lab(cmd: LabCmd) -> Result<()> {
    use synack_lab::topo;
    let file = lab_state_file();
    let read = || -> Result<topo::State> {
        let s = std::fs::read_to_string(&file)
            .with_context(|| format!("no lab is up ({} missing)", file.display()))?;
        Ok(serde_json::from_str(&s)?)
    };
    match cmd {
        LabCmd::Up {
            client_rtt,
            server_rtt,
            one_way,
            drop_syns,
        } => {
            if file.exists() {
                bail!(
                    "a lab is already up ({}): run `cargo xtask lab down` first",
                    file.display()
                );
            }
            let bin = build(false)?;
            let mut delays = topo::Delays {
                drop_syns,
                ..topo::Delays::rtt(ms(client_rtt)?, ms(server_rtt)?)
            };
            if let Some(v) = one_way {
                delays.client_out = ms(v[0])?;
                delays.client_in = ms(v[1])?;
                delays.server_out = ms(v[2])?;
                delays.server_in = ms(v[3])?;
            }
            let lab = topo::Lab::up(&topo::Bins::beside(&bin), delays, true)
                .context("bringing the lab up (root needed)")?;
            let ca = lab.ca_path();
            let st = lab.persist();
            std::fs::create_dir_all(file.parent().context("state dir")?)?;
            std::fs::write(&file, serde_json::to_string_pretty(&st)?)?;
            print_lab(&st, &bin, &ca);
            Ok(())
        }
        LabCmd::Down => {
            let st = read()?;
            topo::down(&st)?;
            std::fs::remove_file(&file)?;
            eprintln!("lab down: removed {}", st.namespaces.join(", "));
            Ok(())
        }
        LabCmd::Status => {
            let st = read()?;
            let bin = root().join("target/debug/synack");
            print_lab(&st, &bin, &st.dir.join("origin-ca.pem"));
            for (pid, name) in &st.pids {
                let alive = Path::new(&format!("/proc/{pid}")).exists();
                println!(
                    "  {name:<14} pid {pid:<8} {}",
                    if alive { "running" } else { "GONE" }
                );
            }
            Ok(())
        }
    }
}

fn demo(think: u32, client_rtt: f64, server_rtt: f64) -> Result<()> {
    use synack_lab::topo::{self, Via};
    let bin = build(false)?;
    if !is_root() {
        bail!("the demo builds network namespaces and loads eBPF programs: run it as root");
    }
    let delays = topo::Delays::rtt(ms(client_rtt)?, ms(server_rtt)?);
    eprintln!(
        "demo: lab up (client link RTT {client_rtt} ms, mid-to-origin RTT {server_rtt} ms, origin think time {think} ms)"
    );
    let lab =
        topo::Lab::up(&topo::Bins::beside(&bin), delays, true).context("bringing the lab up")?;
    let ca = lab.ca_path();
    let path = format!("/delay/{think}");
    let runs = [
        ("direct", topo::url(Via::Direct, true, false, &path)),
        (
            "through haproxy (transparent)",
            topo::url(Via::TcpProxy, true, false, &path),
        ),
    ];
    let mut recs = Vec::new();
    for (what, url) in &runs {
        let human = lab
            .client
            .command(bin.to_str().context("path")?)
            .arg("--cacert")
            .arg(&ca)
            .arg(url)
            .output()?;
        println!(
            "=== {what}: {url}\n{}",
            String::from_utf8_lossy(&human.stdout)
        );
        let json = lab
            .client
            .command(bin.to_str().context("path")?)
            .arg("--json")
            .arg("--cacert")
            .arg(&ca)
            .arg(url)
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&json.stdout)
            .with_context(|| format!("synack said: {}", String::from_utf8_lossy(&json.stderr)))?;
        recs.push(v);
    }
    let msv = |v: &serde_json::Value| -> String {
        v.as_f64()
            .map(|x| format!("{x:.2} ms"))
            .unwrap_or_else(|| "-".into())
    };
    type Cell = Box<dyn Fn(&serde_json::Value) -> String>;
    let rows: Vec<(&str, Cell)> = vec![
        (
            "handshake RTT (wire)",
            Box::new(move |r| msv(&r["wire"]["handshake_rtt_ms"])),
        ),
        (
            "SYN-ACK TTL (hops)",
            Box::new(|r| format!("{} ({})", r["wire"]["synack_ttl"], r["wire"]["synack_hops"])),
        ),
        (
            "TLS RTT (wire)",
            Box::new(move |r| msv(&r["wire"]["tls_rtt_ms"])),
        ),
        ("TTFB (wire)", Box::new(move |r| msv(&r["wire"]["ttfb_ms"]))),
        ("TTFB (user)", Box::new(move |r| msv(&r["user"]["ttfb_ms"]))),
        (
            "total (user)",
            Box::new(move |r| msv(&r["user"]["total_ms"])),
        ),
        (
            "verdict",
            Box::new(|r| r["verdict"]["path"].as_str().unwrap_or("-").to_string()),
        ),
        (
            "origin RTT beyond it",
            Box::new(move |r| msv(&r["middlebox"]["origin_rtt_ms"])),
        ),
        (
            "network",
            Box::new(move |r| msv(&r["phases"]["network_ms"])),
        ),
        (
            "middlebox",
            Box::new(move |r| msv(&r["phases"]["middlebox_ms"])),
        ),
        ("server", Box::new(move |r| msv(&r["phases"]["server_ms"]))),
        (
            "local stack",
            Box::new(move |r| msv(&r["phases"]["local_stack_ms"])),
        ),
    ];
    println!(
        "=== side by side (lab: set server think time {think} ms, mid-to-origin RTT {server_rtt} ms)"
    );
    println!("  {:<24}{:<18}{}", "", runs[0].0, runs[1].0);
    for (name, f) in &rows {
        println!("  {:<24}{:<18}{}", name, f(&recs[0]), f(&recs[1]));
    }
    drop(lab);
    eprintln!("demo: lab down");
    Ok(())
}

/// Runs the whole suite, then the fuzz targets, and ends with one line that
/// sums every test binary's results and the fuzz targets' (cargo's own last
/// line is a doc-test run with nothing in it).
fn test(bin: &Path, args: &[String], no_fuzz: bool) -> Result<()> {
    let (passed, failed, ignored) = cargo_test(bin, args)?;
    println!("cargo test: {passed} passed, {failed} failed, {ignored} skipped");
    let fuzz = if failed > 0 {
        println!("fuzz: skipped (cargo test failed)");
        None
    } else if no_fuzz || !args.is_empty() {
        // A filter asks for a few tests, quickly; fuzzing is minutes.
        println!("fuzz: skipped (--no-fuzz or a test filter)");
        None
    } else {
        Some(fuzz(FUZZ_SECONDS, &[]))
    };
    let (fuzz_ok, fuzz_failed) = match &fuzz {
        Some(Ok(f)) => (f.ok, f.crashed),
        // It could not run (no cargo-fuzz, a build error): that fails too.
        Some(Err(e)) => {
            println!("fuzz: {e:#}");
            (0, 1)
        }
        None => (0, 0),
    };
    println!(
        "total: {} passed, {} failed, {ignored} skipped",
        passed + fuzz_ok,
        failed + fuzz_failed
    );
    if failed > 0 {
        bail!("cargo test failed");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    match fuzz {
        Some(Err(e)) => Err(e),
        Some(Ok(f)) => f.check(),
        None => Ok(()),
    }
}

/// `cargo test --workspace`, echoed: (passed, failed, ignored).
fn cargo_test(bin: &Path, args: &[String]) -> Result<(u64, u64, u64)> {
    use std::io::{BufRead, BufReader};
    // Outside CI a machine without podman skips the tier and says why; in
    // CI the tier must run, so its test runs and fails with the cause.
    let in_ci = env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
    let skip = match container_tier() {
        Ok(()) => {
            println!("container tier: podman with runc, base by mmdebstrap");
            None
        }
        Err(why) if in_ci => {
            println!("container tier: cannot run ({why}), and CI must run it: its test fails");
            None
        }
        Err(why) => {
            println!("container tier: not run here: {why}");
            Some(why)
        }
    };
    let obj = root().join("target/bpf/bpfel-unknown-none/release/probe-ebpf");
    let mut child = Command::new("cargo")
        .current_dir(root())
        // Every test binary runs even when one fails (the report then shows
        // them all); the root tests are on (a plain `cargo test` skips them).
        .args([
            "test",
            "--workspace",
            "--no-fail-fast",
            "--features",
            "synack-tests/root",
        ])
        .env("SYNACK_EBPF_OBJECT", &obj)
        .env("SYNACK_BIN", bin)
        .envs(skip.map(|why| ("SYNACK_CONTAINER_SKIP", why)))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    // Each panic's place and first line of message, repeated at the end: a
    // long log is often read only at its end (a CI page shows head and tail).
    let mut panics: Vec<String> = Vec::new();
    let mut after_panic = false;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            if after_panic {
                if let Some(last) = panics.last_mut() {
                    last.push_str(" -- ");
                    last.extend(line.chars().take(600));
                }
                after_panic = false;
            }
            if let Some(at) = line.find("panicked at ") {
                panics.push(line[at..].to_string());
                after_panic = true;
            }
            if let Some(rest) = line.strip_prefix("test result: ") {
                let num = |what: &str| -> u64 {
                    rest.split(';')
                        .find_map(|p| {
                            p.trim()
                                .trim_start_matches("ok. ")
                                .trim_start_matches("FAILED. ")
                                .strip_suffix(what)
                        })
                        .and_then(|n| n.trim().parse().ok())
                        .unwrap_or(0)
                };
                passed += num(" passed");
                failed += num(" failed");
                ignored += num(" ignored");
            }
        }
    }
    let st = child.wait()?;
    if !panics.is_empty() {
        println!("panics, in order ({}):", panics.len());
        for p in &panics {
            println!("  {p}");
        }
    }
    if !st.success() && failed == 0 {
        // A build error or a crashed test binary: no "test result" line says so.
        failed = 1;
        eprintln!("xtask: cargo test failed ({st})");
    }
    Ok((passed, failed, ignored))
}

/// Seconds per fuzz target in `cargo xtask test`: with six targets, one
/// minute of CI time, which the whole suite must keep under 20 minutes;
/// every target does millions of runs in it, after replaying its corpus
/// (docs/fuzzing.md for longer runs).
const FUZZ_SECONDS: u32 = 10;

/// The fuzz targets and the longest input each gets (-max_len): what the
/// kernel or a file can really hand the parser, plus a little.
const FUZZ_TARGETS: &[(&str, usize)] = &[
    // At most 40 option bytes in a TCP header.
    ("tcp_options", 64),
    // A payload snapshot (SNAP_BYTES), after one byte that picks keep_query.
    ("http_request", 1 + 1024),
    ("http_status", 1024),
    ("client_hello_sni", 1024),
    ("targets_file", 4096),
    // A SnapEvent record is 152 + 1024 bytes; other sizes are refused early.
    ("event_decode", 1200),
];

/// How the fuzz targets are built (and so how a crash is reproduced).
/// Without AddressSanitizer: the parsers are safe Rust, whose out-of-bounds
/// accesses and overflows already panic (cargo-fuzz keeps debug assertions
/// on), and a panic is a crash to libFuzzer, which stays coverage-guided.
/// ASan instruments every dependency (ring's C included): it doubled the
/// clean build here (4.3 against 2 minutes on 2 cores) for little to find.
const FUZZ_BUILD: &[&str] = &["+nightly", "fuzz", "build", "--sanitizer", "none"];
const FUZZ_RUN: &[&str] = &["+nightly", "fuzz", "run", "--sanitizer", "none"];

/// What a fuzzing round found: targets that ran their time, and crashed ones.
struct FuzzOutcome {
    ok: u64,
    crashed: u64,
}

impl FuzzOutcome {
    fn check(&self) -> Result<()> {
        if self.crashed > 0 {
            bail!(
                "fuzz: {} of {} targets crashed (see above)",
                self.crashed,
                self.ok + self.crashed
            );
        }
        Ok(())
    }
}

/// A scratch directory, removed however the fuzz step ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// libFuzzer's closing numbers, from its output.
#[derive(Default)]
struct FuzzStats {
    runs: Option<u64>,
    cov: Option<u64>,
    features: Option<u64>,
    artifact: Option<PathBuf>,
}

fn fuzz_stats(log: &str) -> FuzzStats {
    let mut st = FuzzStats::default();
    let field = |line: &str, name: &str| -> Option<u64> {
        let mut w = line.split_whitespace();
        w.find(|x| *x == name)?;
        w.next()?.parse().ok()
    };
    for line in log.lines() {
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            st.runs = n.trim().parse().ok();
        }
        if line.contains(" cov: ") {
            st.cov = field(line, "cov:").or(st.cov);
            st.features = field(line, "ft:").or(st.features);
        }
        if let Some((_, p)) = line.split_once("Test unit written to ") {
            st.artifact = Some(PathBuf::from(p.trim()));
        }
    }
    st
}

/// The lines of a crash report worth showing in a CI log: the panic message
/// or sanitizer error, without the backtrace.
fn crash_excerpt(log: &str) -> Vec<&str> {
    let lines: Vec<&str> = log.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.contains("panicked at") || l.contains("ERROR: libFuzzer"))
        .unwrap_or(lines.len().saturating_sub(15));
    lines[start..]
        .iter()
        .take_while(|l| !l.starts_with("stack backtrace:"))
        .take(15)
        .copied()
        .collect()
}

/// Builds the fuzz targets, then runs each for `seconds` over a scratch copy
/// of fuzz/corpus/TARGET (what it discovers is not kept: the committed
/// corpus changes only by hand, see docs/fuzzing.md).
fn fuzz(seconds: u32, only: &[String]) -> Result<FuzzOutcome> {
    let root = root();
    let fuzz_dir = root.join("fuzz");
    for t in only {
        if !FUZZ_TARGETS.iter().any(|(n, _)| n == t) {
            let all: Vec<&str> = FUZZ_TARGETS.iter().map(|(n, _)| *n).collect();
            bail!("no fuzz target {t:?} (there are: {})", all.join(", "));
        }
    }
    if output(Command::new("cargo").args(["+nightly", "fuzz", "--version"])).is_none() {
        bail!("cargo-fuzz is missing: run `cargo xtask setup`");
    }
    // probe-user's build script reruns on every build while the eBPF object
    // it embeds is missing, rebuilding the crate before each target; the
    // parsers do not need the object, so they get an empty one that stays.
    let target_dir = fuzz_dir.join("target");
    std::fs::create_dir_all(&target_dir)
        .with_context(|| format!("creating {}", target_dir.display()))?;
    let no_ebpf = target_dir.join("no-ebpf.o");
    if !no_ebpf.exists() {
        std::fs::write(&no_ebpf, b"").with_context(|| format!("writing {}", no_ebpf.display()))?;
    }
    let cargo = |args: &[&str]| {
        let mut c = Command::new("cargo");
        c.current_dir(&root)
            .args(args)
            .env("SYNACK_EBPF_OBJECT", &no_ebpf)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            .env_remove("RUSTC_WRAPPER");
        // What `cargo run` set for xtask itself: ring's build script reruns
        // when CARGO_MANIFEST_DIR changes, so with it the fuzz build would
        // differ from the one a person reproducing a crash gets, and each
        // would rebuild ring and all above it.
        for (k, _) in env::vars_os() {
            if k.to_str().is_some_and(|k| {
                k.starts_with("CARGO_PKG_")
                    || [
                        "CARGO_MANIFEST_DIR",
                        "CARGO_MANIFEST_PATH",
                        "CARGO_CRATE_NAME",
                        "CARGO_BIN_NAME",
                        "CARGO_PRIMARY_PACKAGE",
                    ]
                    .contains(&k)
            }) {
                c.env_remove(k);
            }
        }
        c
    };

    println!(
        "fuzz: building the targets (cargo {})",
        FUZZ_BUILD.join(" ")
    );
    let t0 = std::time::Instant::now();
    run(&mut cargo(FUZZ_BUILD)).context("building the fuzz targets")?;
    println!("fuzz: built in {:.0} s", t0.elapsed().as_secs_f64());

    let scratch = Scratch(env::temp_dir().join(format!("synack-fuzz-{}", std::process::id())));
    let logs = target_dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut out = FuzzOutcome { ok: 0, crashed: 0 };
    for &(name, max_len) in FUZZ_TARGETS {
        if !only.is_empty() && !only.iter().any(|t| t == name) {
            continue;
        }
        let seeds = fuzz_dir.join("corpus").join(name);
        let corpus = scratch.0.join(name);
        std::fs::create_dir_all(&corpus)?;
        let mut n_seeds = 0;
        for e in
            std::fs::read_dir(&seeds).with_context(|| format!("reading {}", seeds.display()))?
        {
            let p = e?.path();
            if p.is_file() {
                std::fs::copy(&p, corpus.join(p.file_name().context("file name")?))?;
                n_seeds += 1;
            }
        }
        let mut args: Vec<String> = FUZZ_RUN.iter().map(|s| s.to_string()).collect();
        args.extend([name.to_string(), corpus.display().to_string(), "--".into()]);
        args.extend([
            format!("-max_total_time={seconds}"),
            format!("-max_len={max_len}"),
            // Far above what any target needs: a leak or a blow-up, not noise.
            "-rss_limit_mb=2048".into(),
            // A parser that takes seconds on one input is a hang.
            "-timeout=10".into(),
            "-print_final_stats=1".into(),
        ]);
        let dict = fuzz_dir.join("dict").join(format!("{name}.dict"));
        if dict.exists() {
            args.push(format!("-dict={}", dict.display()));
        }
        let log_path = logs.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let st = cargo(&argv)
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .with_context(|| format!("starting cargo fuzz run {name}"))?;
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let stats = fuzz_stats(&text);
        let n_corpus = std::fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0);
        let num = |v: Option<u64>| v.map_or("?".to_string(), |n| n.to_string());
        let summary = format!(
            "{} runs, cov {} ft {}, corpus {n_seeds} -> {n_corpus} inputs",
            num(stats.runs),
            num(stats.cov),
            num(stats.features)
        );
        if st.success() {
            println!("fuzz: {name:<17} ok       {summary} in {seconds} s");
            out.ok += 1;
            continue;
        }
        out.crashed += 1;
        println!("fuzz: {name:<17} CRASHED  {summary}");
        for l in crash_excerpt(&text) {
            println!("fuzz:   | {l}");
        }
        println!("fuzz:   full output: {}", log_path.display());
        match &stats.artifact {
            Some(a) => {
                println!("fuzz:   input: {}", a.display());
                println!(
                    "fuzz:   reproduce: cd {} && SYNACK_EBPF_OBJECT={} cargo {} {name} {}",
                    root.display(),
                    no_ebpf.display(),
                    FUZZ_RUN.join(" "),
                    a.display()
                );
            }
            None => println!("fuzz:   no crash input was written ({st})"),
        }
    }
    println!(
        "fuzz: {} targets ran {seconds} s each, {} crashed",
        out.ok + out.crashed,
        out.crashed
    );
    Ok(out)
}

fn print_lab(st: &synack_lab::topo::State, bin: &Path, ca: &Path) {
    use synack_lab::topo::{Via, url};
    println!(
        "lab: client {}  mid {}  server {}\n  one-way delays: client->mid {:?}, mid->client {:?}, mid->server {:?}, server->mid {:?}; first SYN dropped for the next {} connections",
        st.client,
        st.mid,
        st.server,
        st.delays.client_out,
        st.delays.client_in,
        st.delays.server_out,
        st.delays.server_in,
        st.delays.drop_syns
    );
    println!("try:");
    for (what, u) in [
        ("direct", url(Via::Direct, true, false, "/delay/20")),
        (
            "through haproxy",
            url(Via::TcpProxy, true, false, "/delay/20"),
        ),
        (
            "through squid",
            url(Via::HttpProxy, false, false, "/delay/20"),
        ),
        (
            "IPv6 through haproxy",
            url(Via::TcpProxy, true, true, "/delay/20"),
        ),
    ] {
        println!(
            "  # {what}\n  ip netns exec {} {} --cacert {} {u}",
            st.client,
            bin.display(),
            ca.display()
        );
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !st.success() {
        bail!("{shown} failed ({st})");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let o = cmd.output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).as_deref() == Some("0")
}

fn nightly_sysroot() -> Result<PathBuf> {
    let s = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"])).context(
        "no nightly toolchain: the eBPF programs build with nightly. \
         Install it with `rustup toolchain install nightly`, then run `cargo xtask setup`",
    )?;
    Ok(PathBuf::from(s))
}

/// bpf-linker is built against nightly's own libLLVM, so it must find that
/// library at run time.
fn llvm_env(cmd: &mut Command) -> Result<()> {
    let lib = nightly_sysroot()?.join("lib");
    let mut paths = vec![lib];
    if let Some(old) = env::var_os("LD_LIBRARY_PATH") {
        paths.extend(env::split_paths(&old));
    }
    cmd.env("LD_LIBRARY_PATH", env::join_paths(paths)?);
    Ok(())
}

fn bpf_linker_works() -> bool {
    let mut c = Command::new("bpf-linker");
    c.arg("--version");
    if llvm_env(&mut c).is_err() {
        return false;
    }
    output(&mut c).is_some()
}

/// What the tests, the lab and the demo run: namespaces and routes
/// (iproute2), the delay line's NFQUEUE and the proxies' interception rules
/// (iptables), offloads off (ethtool), ground truth (tcpdump), curl for
/// comparisons, the real proxies, a real Prometheus to scrape `synack
/// monitor`, Chromium to open the report's page, Python for the watch tests'
/// keep-alive client, and wrk for the
/// benchmarks' load; g++ builds libFuzzer for the fuzz targets;
/// systemd-analyze checks the unit file.
const APT_PACKAGES: &[&str] = &[
    "g++",
    "iproute2",
    "iptables",
    "ethtool",
    "tcpdump",
    "curl",
    "haproxy",
    // squid built with OpenSSL (replaces Debian's `squid`, which cannot
    // bump TLS): the lab's plain-HTTP interceptor and its SSL-bump one.
    "squid-openssl",
    // The lab's other TLS-intercepting proxy (tests/tests/lab_interception.rs).
    "mitmproxy",
    // A server no one here wrote, for synack as curl's drop-in
    // (tests/tests/curl_compat.rs).
    "nginx-light",
    "procps",
    "prometheus",
    // Opens `synack report`'s page headless, offline (tests/tests/compare.rs).
    "chromium",
    "python3",
    "wrk",
    "systemd",
    // The container tier (tests/tests/container.rs): podman with runc (crun
    // fails on this machine kind's hybrid cgroup layout), a Debian base
    // made with mmdebstrap, and containers-common's default seccomp
    // profile, which packaging/seccomp/synack.json is made from.
    "podman",
    "runc",
    "mmdebstrap",
    "golang-github-containers-common",
];

/// Whether the container tier can run here, or why not (then its test
/// says so and does nothing).
fn container_tier() -> std::result::Result<(), String> {
    if !is_root() {
        return Err("not root (rootful podman runs the eBPF modes)".into());
    }
    for (tool, package) in [
        ("podman", "podman"),
        ("runc", "runc"),
        ("mmdebstrap", "mmdebstrap"),
    ] {
        let ok = Command::new(tool)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!(
                "{tool} is missing (Debian's {package}: cargo xtask setup)"
            ));
        }
    }
    Ok(())
}

/// The cargo-fuzz that `cargo xtask fuzz` was written against (its flags
/// and output are what the fuzz step parses).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn setup(no_apt: bool) -> Result<()> {
    let mut missing = Vec::new();

    eprintln!("xtask setup: nightly toolchain with rust-src");
    if nightly_sysroot().is_err() {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .context("installing the nightly toolchain")?;
    }
    let have_src = nightly_sysroot()?
        .join("lib/rustlib/src/rust/library/core")
        .exists();
    if !have_src
        && run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))
        .is_err()
    {
        missing.push("rust-src for nightly (rustup component add rust-src --toolchain nightly)");
    }

    eprintln!("xtask setup: bpf-linker 0.13 against nightly's LLVM");
    if !bpf_linker_works() {
        // bpf-linker 0.13 wants LLVM 21-23; Debian has older ones, but
        // nightly ships libLLVM 22. Point LLVM_PREFIX at a directory whose
        // lib/ holds a libLLVM.so link to it.
        let lib = nightly_sysroot()?.join("lib");
        let so = std::fs::read_dir(&lib)
            .with_context(|| format!("reading {}", lib.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libLLVM.so.22") || n.starts_with("libLLVM-22"))
            })
            .context("nightly has no libLLVM 22; bpf-linker 0.13 needs LLVM 21-23")?;
        let prefix = root().join("target/llvm-prefix");
        std::fs::create_dir_all(prefix.join("lib"))?;
        let link = prefix.join("lib/libLLVM.so");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&so, &link)
            .with_context(|| format!("linking {} to {}", link.display(), so.display()))?;
        let mut c = Command::new("cargo");
        c.args([
            "install",
            "bpf-linker",
            "--version",
            "0.13.0",
            "--locked",
            "--no-default-features",
            "--features",
            "llvm-22",
            "--force",
        ])
        .env("LLVM_PREFIX", &prefix);
        llvm_env(&mut c)?;
        if run(&mut c).is_err() || !bpf_linker_works() {
            missing.push("bpf-linker (see docs/build.md)");
        }
    }

    // Testing tools, not building ones: --no-apt (the image build) skips them.
    if !no_apt {
        eprintln!("xtask setup: cargo-fuzz {CARGO_FUZZ_VERSION}");
    }
    if !no_apt
        && !output(Command::new("cargo").args(["+nightly", "fuzz", "--version"]))
            .is_some_and(|v| v.ends_with(CARGO_FUZZ_VERSION))
        && run(Command::new("cargo").args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
        ]))
        .is_err()
    {
        missing.push("cargo-fuzz (cargo install cargo-fuzz --locked)");
    }

    if !no_apt {
        eprintln!("xtask setup: linters for the packaging (target/lint-venv)");
    }
    if !no_apt && let Err(e) = lint::install_tools() {
        eprintln!("xtask setup: {e:#}");
        missing.push("the linters (python3 -m venv, pip install from PyPI)");
    }

    if !no_apt {
        let absent: Vec<&str> = APT_PACKAGES
            .iter()
            .copied()
            .filter(|p| {
                output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                    .is_none_or(|s| !s.contains("install ok installed"))
            })
            .collect();
        if !absent.is_empty() {
            eprintln!("xtask setup: apt packages {absent:?}");
            let root_user = is_root();
            let mut pre: Vec<&str> = if root_user { vec![] } else { vec!["sudo"] };
            pre.extend(["apt-get"]);
            let ok = run(Command::new(pre[0]).args(&pre[1..]).arg("update").arg("-q")).is_ok()
                && run(Command::new(pre[0])
                    .args(&pre[1..])
                    .args(["install", "-y", "-q", "--no-install-recommends"])
                    .args(&absent)
                    .env("DEBIAN_FRONTEND", "noninteractive"))
                .is_ok();
            if !ok {
                missing.push("some Debian packages (see the apt-get output above)");
            }
        }
    }

    if missing.is_empty() {
        eprintln!("xtask setup: everything is in place");
        Ok(())
    } else {
        bail!("could not install: {}", missing.join(", "))
    }
}

fn build_ebpf() -> Result<PathBuf> {
    let dir = root().join("probe-ebpf");
    let target_dir = root().join("target/bpf");
    let mut c = Command::new("cargo");
    c.current_dir(&dir)
        .args([
            "+nightly",
            "build",
            "--release",
            "-Z",
            "build-std=core",
            "--target",
            "bpfel-unknown-none",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        // BTF makes verifier messages readable and lets the loader check types.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf",
        )
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER");
    llvm_env(&mut c)?;
    if !bpf_linker_works() {
        bail!("bpf-linker is missing or cannot start: run `cargo xtask setup`");
    }
    run(&mut c).context("building the eBPF programs (probe-ebpf)")?;
    Ok(target_dir.join("bpfel-unknown-none/release/probe-ebpf"))
}

fn build(release: bool) -> Result<PathBuf> {
    let obj = build_ebpf()?;
    let mut c = Command::new("cargo");
    c.current_dir(root())
        .args(["build", "--workspace", "--bins"])
        .env("SYNACK_EBPF_OBJECT", &obj);
    if release {
        c.arg("--release");
    }
    run(&mut c).context("building synack")?;
    Ok(root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("synack"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Setup { no_apt } => setup(no_apt),
        Cmd::Build { release } => build(release).map(|p| eprintln!("built {}", p.display())),
        Cmd::Run { release, args } => build(release).and_then(|bin| {
            let root_user = is_root();
            let mut c = if root_user {
                Command::new(&bin)
            } else {
                let mut c = Command::new("sudo");
                c.arg(&bin);
                c
            };
            let st = c.args(&args).status().context("starting synack")?;
            std::process::exit(st.code().unwrap_or(1));
        }),
        Cmd::Lab { cmd } => lab(cmd),
        Cmd::Bench { quick } => bench(quick),
        Cmd::Demo {
            think,
            client_rtt,
            server_rtt,
        } => demo(think, client_rtt, server_rtt),
        Cmd::Lint => build(false).and_then(|bin| lint::lint(&bin)),
        Cmd::Seccomp { from } => seccomp::render(&from).and_then(|text| {
            let out = root().join(seccomp::SHIPPED);
            let dir = out.parent().context("packaging/seccomp")?;
            std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
            std::fs::write(&out, text).with_context(|| out.display().to_string())?;
            // What it was made from, for the lint (another machine may
            // have another version).
            let version = if from == Path::new(seccomp::RUNTIME_DEFAULT) {
                seccomp::installed_version().unwrap_or_else(|| "unknown".into())
            } else {
                format!("unknown (from {})", from.display())
            };
            let src = root().join(seccomp::SOURCE);
            std::fs::write(&src, seccomp::source_line(&version))
                .with_context(|| src.display().to_string())?;
            println!(
                "wrote {} from {} ({version})",
                out.display(),
                from.display()
            );
            Ok(())
        }),
        Cmd::Test { no_fuzz, args } => build(false).and_then(|bin| {
            // The linters run even when a test failed: both results count.
            let tests = test(&bin, &args, no_fuzz);
            let lints = lint::lint(&bin);
            tests.and(lints)
        }),
        Cmd::Fuzz { seconds, targets } => fuzz(seconds, &targets).and_then(|f| f.check()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end of a libFuzzer run that found a panic, as cargo-fuzz 0.13
    /// prints it: what the fuzz step's summary and crash report are read from.
    const CRASH: &str = "\
#2\tINITED cov: 22 ft: 23 corp: 10/4417b exec/s: 0 rss: 27Mb
#9\tNEW    cov: 23 ft: 24 corp: 11/4420b lim: 1024 exec/s: 0 rss: 27Mb L: 3/1024 MS: 1 ChangeByte-

thread '<unnamed>' (2347) panicked at fuzz_targets/http_status.rs:8:5:
injected failure
stack backtrace:
   0: __rustc::rust_begin_unwind
==2347== ERROR: libFuzzer: deadly signal
MS: 1 ChangeByte-; base unit: 0000
artifact_prefix='/w/fuzz/artifacts/http_status/'; Test unit written to /w/fuzz/artifacts/http_status/crash-35143
Base64: SFRUUC8xLjEgNDA0
stat::number_of_executed_units: 14
stat::peak_rss_mb:              99
";

    #[test]
    fn crash_reports_are_read_from_libfuzzer_output() {
        let st = fuzz_stats(CRASH);
        assert_eq!(st.runs, Some(14));
        assert_eq!((st.cov, st.features), (Some(23), Some(24)));
        assert_eq!(
            st.artifact.as_deref(),
            Some(Path::new("/w/fuzz/artifacts/http_status/crash-35143"))
        );
        assert_eq!(
            crash_excerpt(CRASH),
            [
                "thread '<unnamed>' (2347) panicked at fuzz_targets/http_status.rs:8:5:",
                "injected failure"
            ]
        );
    }

    #[test]
    fn a_clean_run_has_numbers_and_no_artifact() {
        let log = "#1200\tDONE   cov: 258 ft: 963 corp: 340/37Kb lim: 1025 exec/s: 104295 rss: 28Mb\n\
                   Done 2085917 runs in 21 second(s)\n\
                   stat::number_of_executed_units: 2085917\n";
        let st = fuzz_stats(log);
        assert_eq!(st.runs, Some(2085917));
        assert_eq!((st.cov, st.features), (Some(258), Some(963)));
        assert!(st.artifact.is_none());
        // A hang or an out-of-memory report has no panic line.
        let oom = "#5\tNEW cov: 1 ft: 1\n==9== ERROR: libFuzzer: out-of-memory (used: 2100Mb; exceeds: 2048Mb)\nSUMMARY: libFuzzer: out-of-memory\n";
        assert_eq!(
            crash_excerpt(oom)[0],
            oom.lines().nth(1).unwrap_or_default()
        );
    }
}
