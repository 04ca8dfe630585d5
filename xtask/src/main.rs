//! `cargo xtask`: set-up, build, run and test for synack.
//!
//! The eBPF crate (probe-ebpf) needs nightly, rust-src and bpf-linker; this is
//! the one place that knows how to get and drive them (see docs/build.md).

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
        /// Skip the Debian packages (apt-get).
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

const APT_PACKAGES: &[&str] = &[
    "iproute2", "iptables", "ethtool", "tcpdump", "curl", "openssl", "procps", "kmod",
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
            let root_user = output(Command::new("id").arg("-u")).as_deref() == Some("0");
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
            let root_user = output(Command::new("id").arg("-u")).as_deref() == Some("0");
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
        Cmd::Test { args } => build(false).and_then(|bin| {
            let obj = root().join("target/bpf/bpfel-unknown-none/release/probe-ebpf");
            let mut c = Command::new("cargo");
            c.current_dir(root())
                .args(["test", "--workspace"])
                .env("SYNACK_EBPF_OBJECT", &obj)
                .env("SYNACK_BIN", &bin)
                .args(&args);
            run(&mut c)?;
            // The shared no_std crate's own tests (the kernel's state machine).
            Ok(())
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
