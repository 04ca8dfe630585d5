//! `cargo xtask`: set-up, build, run and test for synack.
//!
//! The eBPF crate (probe-ebpf) needs nightly, rust-src and bpf-linker; this is
//! the one place that knows how to get and drive them (see docs/build.md).

mod lint;

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
        /// Only what building needs: skip the Debian packages (apt-get) and
        /// the linters (packaging/Dockerfile builds this way).
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
    /// namespaces (these need root).
    Test {
        /// Extra arguments for `cargo test` (after --), e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
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

/// Runs the whole suite and ends with one line that sums every test binary's
/// results (cargo's own last line is a doc-test run with nothing in it).
fn test(bin: &Path, args: &[String]) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let obj = root().join("target/bpf/bpfel-unknown-none/release/probe-ebpf");
    let mut child = Command::new("cargo")
        .current_dir(root())
        .args(["test", "--workspace"])
        .env("SYNACK_EBPF_OBJECT", &obj)
        .env("SYNACK_BIN", bin)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
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
    println!("total: {passed} passed, {failed} failed, {ignored} skipped");
    if !st.success() {
        bail!("cargo test failed ({st})");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
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
/// monitor`, Python for the watch tests' keep-alive client, and wrk for the
/// benchmarks' load, systemd-analyze to check the unit file.
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "iptables",
    "ethtool",
    "tcpdump",
    "curl",
    "haproxy",
    "squid",
    "procps",
    "prometheus",
    "python3",
    "wrk",
    "systemd",
];

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
        Cmd::Test { args } => build(false).and_then(|bin| {
            // The linters run even when a test failed: both results count.
            let tests = test(&bin, &args);
            let lints = lint::lint(&bin);
            tests.and(lints)
        }),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
