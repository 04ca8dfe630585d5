//! The container image, built from packaging/Dockerfile and run the ways
//! operators run it, with podman from Debian's packages (the container
//! tier of `cargo xtask test`; docs/containers.md).
//!
//! The base image is made here with mmdebstrap (no registry is reachable);
//! the Dockerfile's build stage needs a Rust image that cannot be fetched,
//! so the stage that ships takes the binary this run built, from a one-file
//! image (`--build-arg BINARY=`), as the Dockerfile says. Every container
//! joins the lab's client namespace (`--network ns:`) and checks the lab's
//! origin, directly and through haproxy:
//! - `--privileged`: eBPF mode, verdicts right; nothing stays attached
//!   after `podman stop` (SIGTERM) or `podman kill`;
//! - the DaemonSet's security context (uid 0, the three capabilities, the
//!   shipped seccomp profile, read-only root, no privilege escalation, its
//!   volumes), reproduced from the manifest: eBPF mode;
//! - the three capabilities under podman's default seccomp profile: the
//!   seccomp message, and unprivileged mode when not forced;
//! - no capability, a non-root user, read-only root: unprivileged mode,
//!   complete records;
//! - `synack watch` sharing another container's network namespace (a
//!   pod's) sees that container's requests;
//! - `synack monitor` next to a DogStatsD receiver and a Prometheus that
//!   scrapes it, as a monitoring agent's sidecar.
//!
//! Podman keeps its images, containers and run-time state under this
//! test's own directory (`--root`, `--runroot`, `--tmpdir`), removed at the
//! end, also on failure; every podman call has a deadline.

// A mode's checks are `ensure!`s, not asserts: an error is reported and
// the other modes still run.
use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};
use synack_tests::{
    Netns, Proc, TempDir,
    agents::{prometheus, query, udp_in},
    attached, is_root, json_lines,
    manifest::daemonset,
    synack_bin,
    topo::{Bins, Delays, Lab, Via},
    unique, wait_detached, wait_for,
};

const INSPECT: &str = env!("CARGO_BIN_EXE_synack-inspect");
/// Set by `cargo xtask test` when podman cannot run containers here; the
/// test then says why and does nothing.
const SKIP_ENV: &str = "SYNACK_CONTAINER_SKIP";
/// The machine cannot raise rlimits (no CAP_SYS_RESOURCE), and runc sets
/// the ones it is given: these are at or below the machine's.
const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=4096:4096",
    "--ulimit",
    "nproc=4096:4096",
];
const CAPS: [&str; 3] = ["BPF", "NET_ADMIN", "PERFMON"];
/// A podman call that is not a build or a long-running container ends
/// within this (coreutils' timeout kills it after).
const CALL_SECONDS: u32 = 120;
/// Building an image (the ship stage's apt-get included).
const BUILD_SECONDS: u32 = 600;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Bytes a process printed, as text.
fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A podman whose storage and state are this test's own, removed when
/// dropped.
struct Podman {
    dir: TempDir,
}

impl Podman {
    fn new() -> Result<Self> {
        Ok(Podman {
            dir: TempDir::new()?,
        })
    }

    /// `podman` with this test's storage and the runtime settings this
    /// machine kind needs (runc: crun fails on its hybrid cgroup layout).
    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .arg("--network-config-dir")
            .arg(self.dir.join("networks"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args([
                "--runtime",
                "runc",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ]);
        c
    }

    /// Runs podman to completion; fails with what it said unless it exits 0.
    fn ok(&self, args: &[&str]) -> Result<String> {
        self.ok_within(CALL_SECONDS, args)
    }

    fn ok_within(&self, seconds: u32, args: &[&str]) -> Result<String> {
        let o = self.out_within(seconds, args)?;
        if !o.status.success() {
            bail!(
                "podman {} failed ({}): {}{}",
                args.join(" "),
                o.status,
                text(&o.stdout),
                text(&o.stderr)
            );
        }
        Ok(text(&o.stdout))
    }

    fn out(&self, args: &[&str]) -> Result<Output> {
        self.out_within(CALL_SECONDS, args)
    }

    /// podman under coreutils' timeout: a hung call ends, and says so
    /// (exit 124).
    fn out_within(&self, seconds: u32, args: &[&str]) -> Result<Output> {
        let podman = self.cmd();
        let mut c = Command::new("timeout");
        c.args(["--kill-after=10", &seconds.to_string()])
            .arg(podman.get_program())
            .args(podman.get_args())
            .args(args)
            .stdin(Stdio::null());
        let o = c
            .output()
            .context("running podman (Debian's podman package: cargo xtask setup)")?;
        if o.status.code() == Some(124) {
            bail!("podman {} took over {seconds} s", args.join(" "));
        }
        Ok(o)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers first (they hold mounts), then the images; the
        // directory goes with `dir`. Not `podman system reset`: it also
        // removes the host's podman networks and /run/libpod state.
        let _ = self.out(&["rm", "--all", "--force", "--time", "0"]);
        let _ = self.out(&["rmi", "--all", "--force"]);
    }
}

/// The Debian base, made once with mmdebstrap and kept under target/.
fn base_tar() -> Result<PathBuf> {
    let dir = repo().join("target/container");
    let tar = dir.join("bookworm-minbase.tar");
    if tar.exists() {
        return Ok(tar);
    }
    fs::create_dir_all(&dir)?;
    let part = dir.join(unique("bookworm-minbase.tar.part"));
    let o = Command::new("mmdebstrap")
        .args([
            "--variant=minbase",
            "--include=ca-certificates",
            "--format=tar",
            "bookworm",
        ])
        .arg(&part)
        .output()
        .context("mmdebstrap (Debian's mmdebstrap package: cargo xtask setup)")?;
    if !o.status.success() {
        let _ = fs::remove_file(&part);
        bail!("mmdebstrap failed: {}", text(&o.stderr));
    }
    fs::rename(&part, &tar)?;
    Ok(tar)
}

/// Builds the image from packaging/Dockerfile; returns its name.
fn build_image(p: &Podman) -> Result<String> {
    let tag = unique("synack");
    let base = format!("localhost/{tag}-base:bookworm");
    let tar = base_tar()?;
    p.ok_within(
        BUILD_SECONDS,
        &["import", "--quiet", tar.to_str().context("path")?, &base],
    )?;
    // The one-file image the ship stage takes the binary from.
    let bin_ctx = p.dir.join("binary");
    fs::create_dir_all(bin_ctx.join("out"))?;
    fs::copy(synack_bin(), bin_ctx.join("out/synack")).context("copying synack")?;
    fs::write(
        bin_ctx.join("Containerfile"),
        "FROM scratch\nCOPY out/synack /out/synack\n",
    )?;
    let binary = format!("localhost/{tag}-binary:test");
    p.ok_within(
        BUILD_SECONDS,
        &[
            "build",
            "--quiet",
            "-t",
            &binary,
            bin_ctx.to_str().context("path")?,
        ],
    )?;
    // A context with only what the ship stage copies (the seccomp profile):
    // the build stage, which needs the sources, is not built.
    let ctx = p.dir.join("context");
    fs::create_dir_all(ctx.join("packaging/seccomp"))?;
    fs::copy(
        repo().join("packaging/seccomp/synack.json"),
        ctx.join("packaging/seccomp/synack.json"),
    )?;
    let image = format!("localhost/{tag}:test");
    let dockerfile = repo().join("packaging/Dockerfile");
    p.ok_within(
        BUILD_SECONDS,
        &[
            "build",
            "--quiet",
            // The ship stage's apt-get reaches Debian's mirror, as set-up does.
            "--network",
            "host",
            "--build-arg",
            &format!("BINARY={binary}"),
            "--build-arg",
            &format!("BASE={base}"),
            "-f",
            dockerfile.to_str().context("path")?,
            "-t",
            &image,
            ctx.to_str().context("path")?,
        ],
    )
    .context("building packaging/Dockerfile")?;
    // The image carries the profile its least-privilege run needs.
    let inside = p.ok(&[
        "run",
        "--rm",
        ULIMITS[0],
        ULIMITS[1],
        ULIMITS[2],
        ULIMITS[3],
        "--network",
        "none",
        "--entrypoint",
        "cat",
        &image,
        "/usr/share/synack/seccomp.json",
    ])?;
    ensure!(
        inside == fs::read_to_string(repo().join("packaging/seccomp/synack.json"))?,
        "the image's /usr/share/synack/seccomp.json is not packaging/seccomp/synack.json"
    );
    Ok(image)
}

/// The settings of one container run.
struct Run<'a> {
    p: &'a Podman,
    image: &'a str,
    flags: Vec<String>,
}

impl<'a> Run<'a> {
    /// A run in a lab namespace.
    fn new(p: &'a Podman, image: &'a str, ns: &Netns) -> Self {
        Self::on_network(p, image, &format!("ns:/run/netns/{}", ns.name))
    }

    /// A run on any `--network` (`container:NAME` shares another's).
    fn on_network(p: &'a Podman, image: &'a str, network: &str) -> Self {
        let mut flags: Vec<String> = ULIMITS.iter().map(|s| s.to_string()).collect();
        flags.extend(["--network".into(), network.into()]);
        Run { p, image, flags }
    }

    fn flag(mut self, f: &[&str]) -> Self {
        self.flags.extend(f.iter().map(|s| s.to_string()));
        self
    }

    /// All capabilities dropped but the three synack's packaging names.
    fn three_caps(self) -> Self {
        let mut r = self.flag(&["--cap-drop", "all"]);
        for c in CAPS {
            r = r.flag(&["--cap-add", c]);
        }
        r
    }

    /// The three capabilities, the shipped seccomp profile, no privilege
    /// escalation.
    fn least_privilege(self) -> Self {
        let profile = repo().join("packaging/seccomp/synack.json");
        self.three_caps().flag(&[
            "--security-opt",
            &format!("seccomp={}", profile.display()),
            "--security-opt",
            "no-new-privileges",
        ])
    }

    fn argv(&self, name: &str, entry: Option<&str>, args: &[&str]) -> Vec<String> {
        let mut a = vec!["run".to_string(), "--name".into(), name.into()];
        a.extend(self.flags.iter().cloned());
        if let Some(e) = entry {
            a.extend(["--entrypoint".into(), e.into()]);
        }
        a.push(self.image.into());
        a.extend(args.iter().map(|s| s.to_string()));
        a
    }

    /// Runs synack to completion: (exit code, stdout, stderr).
    fn once(&self, args: &[&str]) -> Result<(i32, String, String)> {
        let name = unique("ct");
        let mut argv = self.argv(&name, None, args);
        argv.insert(1, "--rm".into());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let o = self.p.out(&argv)?;
        Ok((
            o.status.code().unwrap_or(-1),
            text(&o.stdout),
            text(&o.stderr),
        ))
    }

    /// Starts a long-running container in the foreground (podman passes
    /// our signals on); its stdout and stderr go to files.
    fn spawn(&self, entry: Option<&str>, args: &[&str]) -> Result<Running<'a>> {
        let name = unique("ct");
        let out = self.p.dir.join(&format!("{name}.out"));
        let err = self.p.dir.join(&format!("{name}.err"));
        let mut c = self.p.cmd();
        c.args(self.argv(&name, entry, args))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out)?)
            .stderr(fs::File::create(&err)?);
        let proc = Proc::spawn(c, &format!("podman run {name}"))?;
        Ok(Running {
            p: self.p,
            name,
            proc,
            out,
            err,
        })
    }
}

/// A container started by [`Run::spawn`]; removed when dropped.
struct Running<'a> {
    p: &'a Podman,
    name: String,
    proc: Proc,
    out: PathBuf,
    err: PathBuf,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        // The podman client's own end (Proc's drop) may leave the container
        // running: a sleep as PID 1 ignores SIGTERM.
        let _ = self.p.out(&["rm", "--force", "--time", "0", &self.name]);
    }
}

impl Running<'_> {
    /// `podman stop` (SIGTERM, SIGKILL after 20 s): synack must end by
    /// itself with status 0.
    fn stop(&mut self) -> Result<()> {
        self.p.ok(&["stop", "--time", "20", &self.name])?;
        let st = self.proc.wait_exit(Duration::from_secs(30))?;
        ensure!(
            st.success(),
            "{} did not end cleanly on SIGTERM ({st}): {}",
            self.name,
            self.stderr()
        );
        Ok(())
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn records(&self) -> Vec<Value> {
        fs::read(&self.out)
            .ok()
            .and_then(|b| json_lines(&b).ok())
            .unwrap_or_default()
    }

    /// Waits until stderr says `what`; fails early if the container ended.
    fn wait_said(&mut self, what: &str, timeout: Duration) -> Result<()> {
        self.wait_until(timeout, what, |c| c.stderr().contains(what).then_some(()))
    }

    /// Waits until `f` gives a value; fails early if the container ended,
    /// and either way with its stderr.
    fn wait_until<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&Self) -> Option<T>,
    ) -> Result<T> {
        let r = wait_for(timeout, what, || {
            if let Ok(Some(st)) = self.proc.child.try_wait() {
                return Some(Err(anyhow::anyhow!("the container exited ({st})")));
            }
            f(self).map(Ok)
        });
        let said = self.stderr();
        r.and_then(|r| r)
            .with_context(|| format!("{}: {said}", self.name))
    }
}

/// The single record of a one-shot run.
fn one_record(out: &str) -> Result<Value> {
    let recs = json_lines(out.as_bytes())?;
    match recs.as_slice() {
        [r] => Ok(r.clone()),
        _ => bail!("{} records, one expected: {out}", recs.len()),
    }
}

/// A successful record with every user-space and wire phase of an HTTPS
/// request.
fn complete(rec: &Value, mode: &str) -> Result<()> {
    ensure!(rec["mode"] == mode, "mode {mode} expected: {rec}");
    ensure!(rec["error"].is_null(), "{rec}");
    ensure!(rec["http_status"] == 200, "{rec}");
    for f in ["connect_ms", "tls_ms", "ttfb_ms", "total_ms"] {
        ensure!(rec["user"][f].as_f64().is_some(), "user.{f}: {rec}");
    }
    for f in ["handshake_rtt_ms", "tls_rtt_ms", "ttfb_ms"] {
        ensure!(rec["wire"][f].as_f64().is_some(), "wire.{f}: {rec}");
    }
    Ok(())
}

/// One way of running the image: its checks against the lab.
type Mode = fn(&Podman, &str, &Lab) -> Result<()>;

/// Each mode of the list above, in turn; every failure is reported, not
/// only the first.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, podman and the lab: cargo xtask test"
)]
fn the_image_in_every_mode() -> Result<()> {
    if let Ok(why) = std::env::var(SKIP_ENV) {
        // cargo xtask test sets it only outside CI (in CI it fails instead).
        println!("the container tier does not run here: {why}");
        return Ok(());
    }
    assert!(is_root(), "the container test needs root: cargo xtask test");
    let ms = |v: f64| Duration::from_secs_f64(v / 1000.0);
    let lab = Lab::up(&Bins::beside_synack(), Delays::rtt(ms(4.0), ms(20.0)), true)?;
    let p = Podman::new()?;
    let t0 = Instant::now();
    let image = build_image(&p)?;
    println!("image {image} built in {:.1} s", t0.elapsed().as_secs_f64());
    let modes: [(&str, Mode); 8] = [
        ("privileged", privileged),
        ("stopped and killed", stopped_and_killed),
        ("the DaemonSet's security context", daemonset_context),
        ("three capabilities, default seccomp", default_seccomp),
        ("no capability", no_capability),
        ("watch in a pod", watch_in_a_pod),
        ("monitor beside agents", monitor_beside_agents),
        ("the profile refuses namespaces", profile_refuses_namespaces),
    ];
    let mut failed = Vec::new();
    for (name, f) in modes {
        let t = Instant::now();
        match f(&p, &image, &lab) {
            Ok(()) => println!("{name}: ok ({:.1} s)", t.elapsed().as_secs_f64()),
            Err(e) => {
                println!("{name}: FAILED: {e:#}");
                failed.push(format!("{name}: {e:#}"));
            }
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    Ok(())
}

/// The lab's CA at /ca.pem in the container.
fn ca_mount(lab: &Lab) -> String {
    format!("{}:/ca.pem:ro", lab.ca_path().display())
}

fn privileged(p: &Podman, image: &str, lab: &Lab) -> Result<()> {
    let direct = lab.url(Via::Direct, true, false, "/delay/10");
    let proxied = lab.url(Via::TcpProxy, true, false, "/delay/10");
    let run = Run::new(p, image, &lab.client).flag(&["--privileged", "-v", &ca_mount(lab)]);
    let (code, out, err) = run.once(&[
        "--mode", "ebpf", "--json", "--cacert", "/ca.pem", &direct, &proxied,
    ])?;
    ensure!(code == 0, "exit {code}: {err}");
    let recs = json_lines(out.as_bytes())?;
    ensure!(recs.len() == 2, "{out}{err}");
    for (r, path) in recs.iter().zip(["direct", "middlebox"]) {
        complete(r, "ebpf")?;
        ensure!(r["verdict"]["path"] == path, "{path} expected: {r}");
        ensure!(r["wire"]["synack_ttl"].as_u64().is_some(), "{r}");
    }
    Ok(())
}

/// `podman stop` (SIGTERM, then SIGKILL after its timeout) and `podman
/// kill` (SIGKILL) of a privileged `synack watch`: its tcx links and
/// programs are gone afterwards. Without tcx (Linux before 6.6) a killed
/// synack's clsact filters stay until its next start removes them, which
/// needs /run/synack to outlive the container: only the stop is checked.
fn stopped_and_killed(p: &Podman, image: &str, lab: &Lab) -> Result<()> {
    let ifaces = ["lo", lab.client_if.as_str()];
    let ways: &[&str] = if has_tcx() {
        &["stop", "kill"]
    } else {
        println!("podman kill: not checked, this kernel has no tcx");
        &["stop"]
    };
    for &how in ways {
        let run = Run::new(p, image, &lab.client).flag(&["--privileged"]);
        let mut c = run.spawn(None, &["watch", "--json", "--summary-every", "0"])?;
        c.wait_said("synack watch: following", Duration::from_secs(30))?;
        let ids = wait_for(Duration::from_secs(10), "watch's programs attached", || {
            attached(INSPECT, &lab.client, &ifaces, &[])
                .ok()
                .map(|(a, _)| a)
                .filter(|a| a.len() >= ifaces.len() * 2)
        })?;
        if how == "stop" {
            p.ok(&["stop", "--time", "20", &c.name])?;
        } else {
            p.ok(&["kill", &c.name])?;
        }
        let st = c.proc.wait_exit(Duration::from_secs(30))?;
        if how == "stop" {
            ensure!(
                st.success(),
                "watch did not end cleanly on SIGTERM ({st}): {}",
                c.stderr()
            );
        }
        wait_detached(INSPECT, &lab.client, &ifaces, &ids)
            .with_context(|| format!("after podman {how}"))?;
    }
    Ok(())
}

/// Linux 6.6 or later: tc programs attach as tcx links, owned by the
/// process.
fn has_tcx() -> bool {
    let r = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = r
        .trim()
        .split(['.', '-'])
        .map(|x| x.parse::<u32>().unwrap_or(0));
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (6, 6)
}

/// The DaemonSet's container as the manifest gives it: user, capabilities,
/// seccomp profile (the file the Localhost profile names, from packaging/),
/// read-only root, no escalation, its volumes (ConfigMaps as read-only
/// directories, the emptyDir as a tmpfs) and its arguments.
fn daemonset_context(p: &Podman, image: &str, lab: &Lab) -> Result<()> {
    let k = daemonset(&fs::read_to_string(
        repo().join("packaging/kubernetes/synack-monitor.yaml"),
    )?)?;
    let mut run = Run::new(p, image, &lab.client).flag(&["--user", &k.uid.to_string()]);
    ensure!(
        !k.privileged && k.drop_all,
        "the DaemonSet drops all and is not privileged"
    );
    run = run.flag(&["--cap-drop", "all"]);
    for c in &k.add {
        run = run.flag(&["--cap-add", c]);
    }
    if k.no_escalation {
        run = run.flag(&["--security-opt", "no-new-privileges"]);
    }
    if k.read_only_root {
        run = run.flag(&["--read-only"]);
    }
    match &k.seccomp {
        Some((t, Some(path))) if t == "Localhost" => {
            let file = Path::new(path).file_name().context("profile name")?;
            let shipped = repo().join("packaging/seccomp").join(file);
            ensure!(
                shipped.exists(),
                "the DaemonSet's profile {path} is not in packaging/seccomp"
            );
            run = run.flag(&["--security-opt", &format!("seccomp={}", shipped.display())]);
        }
        other => bail!("the DaemonSet's seccompProfile is {other:?}, Localhost expected"),
    }
    let volumes = p.dir.join(&unique("volumes"));
    for (path, backing) in &k.mounts {
        match backing.as_str() {
            "emptyDir" => run = run.flag(&["--tmpfs", path]),
            "configMap synack-targets" => {
                let d = volumes.join("targets");
                fs::create_dir_all(&d)?;
                let u = lab.url(Via::Direct, true, false, "/delay/5");
                fs::write(d.join("targets.txt"), format!("{u} name=origin\n"))?;
                run = run.flag(&["-v", &format!("{}:{path}:ro", d.display())]);
            }
            "configMap kube-root-ca.crt" => {
                let d = volumes.join("ca");
                fs::create_dir_all(&d)?;
                fs::copy(lab.ca_path(), d.join("ca.crt"))?;
                run = run.flag(&["-v", &format!("{}:{path}:ro", d.display())]);
            }
            other => bail!("a volume the test does not know: {path} ({other})"),
        }
    }
    // The pod's IP is the lab client's; a check every second, not 30.
    let mut args: Vec<String> = Vec::new();
    let mut it = k.args.iter();
    while let Some(a) = it.next() {
        if a == "--interval" {
            it.next();
            args.extend(["--interval".into(), "1s".into()]);
        } else {
            args.push(a.replace("$(POD_IP)", synack_tests::topo::CLIENT_V4));
        }
    }
    args.push("--json".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = run.spawn(None, &args)?;
    let rec = c.wait_until(
        Duration::from_secs(40),
        "the DaemonSet's first check",
        |c| c.records().first().cloned(),
    )?;
    complete(&rec, "ebpf")?;
    // The readiness probe's path answers on the pod's IP.
    let m = lab.client.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        &format!("http://{}:9777/metrics", synack_tests::topo::CLIENT_V4),
    ])?;
    ensure!(m.contains("synack_check_success"), "{m}");
    c.stop()?;
    Ok(())
}

/// podman's own default profile allows bpf(2) only with CAP_SYS_ADMIN:
/// `--mode ebpf` says that seccomp is what refuses and how to fix it; the
/// default mode falls back and says so in one line.
fn default_seccomp(p: &Podman, image: &str, lab: &Lab) -> Result<()> {
    let u = lab.url(Via::Direct, true, false, "/delay/5");
    let run = Run::new(p, image, &lab.client)
        .three_caps()
        .flag(&["-v", &ca_mount(lab)]);
    let (code, out, err) = run.once(&["--mode", "ebpf", "--cacert", "/ca.pem", &u])?;
    println!("--mode ebpf under podman's default seccomp profile said:\n{err}");
    ensure!(code != 0, "exit 0 with eBPF refused: {out}{err}");
    for want in [
        "a seccomp filter is on it",
        "/usr/share/synack/seccomp.json",
        "seccomp=unconfined",
    ] {
        ensure!(err.contains(want), "{want:?} not in: {err}");
    }
    let (code, out, err) = run.once(&["--json", "--cacert", "/ca.pem", &u])?;
    ensure!(code == 0, "exit {code}: {err}");
    complete(&one_record(&out)?, "unprivileged")?;
    // synack's own lines (podman may add warnings of its own).
    let said: Vec<&str> = err.lines().filter(|l| l.starts_with("synack")).collect();
    ensure!(
        said.len() == 1 && said[0].contains("A seccomp filter refuses bpf(2)"),
        "one line that names seccomp expected: {err}"
    );
    Ok(())
}

fn no_capability(p: &Podman, image: &str, lab: &Lab) -> Result<()> {
    let run = Run::new(p, image, &lab.client).flag(&[
        "--cap-drop",
        "all",
        "--user",
        "65534:65534",
        "--read-only",
        "-v",
        &ca_mount(lab),
    ]);
    for via in [Via::Direct, Via::TcpProxy] {
        let u = lab.url(via, true, false, "/delay/5");
        let (code, out, err) = run.once(&["--json", "--cacert", "/ca.pem", &u])?;
        ensure!(code == 0, "exit {code}: {err}");
        let r = one_record(&out)?;
        complete(&r, "unprivileged")?;
        let path = if via == Via::Direct {
            "direct"
        } else {
            "middlebox"
        };
        ensure!(r["verdict"]["path"] == path, "{path} expected: {r}");
        ensure!(
            err.contains("eBPF not used") && err.contains("CAP_BPF"),
            "why eBPF is not used: {err}"
        );
    }
    Ok(())
}

/// An application container, and `synack watch` in a second container that
/// joins its network namespace, as a pod's containers share one: watch
/// records the application's requests, by their local ports.
fn watch_in_a_pod(p: &Podman, image: &str, lab: &Lab) -> Result<()> {
    let app = Run::new(p, image, &lab.client)
        .flag(&["--cap-drop", "all", "--user", "65534:65534"])
        .spawn(Some("sleep"), &["120"])?;
    wait_for(Duration::from_secs(30), "the application container", || {
        p.ok(&["inspect", "--format", "{{.State.Running}}", &app.name])
            .ok()
            .filter(|s| s.trim() == "true")
    })?;
    let mut watcher = Run::on_network(p, image, &format!("container:{}", app.name))
        .least_privilege()
        .spawn(None, &["watch", "--json", "--summary-every", "0"])?;
    watcher.wait_said("synack watch: following", Duration::from_secs(30))?;
    let u = lab.url(Via::Direct, false, false, "/delay/5");
    let out = p.ok(&[
        "exec",
        &app.name,
        "/usr/local/bin/synack",
        "--mode",
        "unprivileged",
        "--json",
        "--count",
        "3",
        "--interval",
        "100ms",
        &u,
    ])?;
    let theirs: Vec<String> = json_lines(out.as_bytes())?
        .iter()
        .filter_map(|r| r["local_addr"].as_str().map(str::to_string))
        .collect();
    ensure!(theirs.len() == 3, "the application's records: {out}");
    let seen = wait_for(Duration::from_secs(20), "watch's records", || {
        let recs = watcher.records();
        let mine: Vec<Value> = recs
            .into_iter()
            .filter(|r| {
                r["local_addr"]
                    .as_str()
                    .is_some_and(|a| theirs.iter().any(|t| t == a))
            })
            .collect();
        (mine.len() >= 3).then_some(mine)
    })
    .with_context(|| {
        format!(
            "watch saw {:?}; stderr: {}",
            watcher.records(),
            watcher.stderr()
        )
    })?;
    for r in &seen {
        ensure!(r["mode"] == "ebpf" && r["http_status"] == 200, "{r}");
        ensure!(r["direction"] == "client", "{r}");
    }
    watcher.stop()?;
    Ok(())
}

/// The shipped profile refuses a new user namespace (util-linux's unshare,
/// in the image), which podman's default allows the same container.
fn profile_refuses_namespaces(p: &Podman, image: &str, lab: &Lab) -> Result<()> {
    let argv = |run: &Run, name: &str| -> Vec<String> {
        let mut a = run.argv(name, Some("unshare"), &["--user", "true"]);
        a.insert(1, "--rm".into());
        a
    };
    let default = Run::new(p, image, &lab.client).three_caps();
    let shipped = Run::new(p, image, &lab.client).least_privilege();
    let a = argv(&default, &unique("ct"));
    let o = p.out(&a.iter().map(String::as_str).collect::<Vec<_>>())?;
    ensure!(
        o.status.success(),
        "under podman's default profile unshare --user should work: {}",
        text(&o.stderr)
    );
    let a = argv(&shipped, &unique("ct"));
    let o = p.out(&a.iter().map(String::as_str).collect::<Vec<_>>())?;
    let err = text(&o.stderr);
    ensure!(
        !o.status.success() && err.contains("Operation not permitted"),
        "the shipped profile let unshare --user through ({}): {err}",
        o.status
    );
    Ok(())
}

/// `synack monitor` in a container with the least privilege, in the agent's
/// network namespace: a DogStatsD receiver gets its lines, a Prometheus
/// there scrapes its /metrics.
fn monitor_beside_agents(p: &Podman, image: &str, lab: &Lab) -> Result<()> {
    let ns = &lab.client;
    let statsd = udp_in(ns)?;
    statsd.set_read_timeout(Some(Duration::from_millis(200)))?;
    let statsd_addr = statsd.local_addr()?.to_string();
    let dir = TempDir::new()?;
    let targets = dir.join("targets.txt");
    fs::write(
        &targets,
        format!(
            "{} name=direct\n{} name=proxied\n",
            lab.url(Via::Direct, true, false, "/delay/5"),
            lab.url(Via::TcpProxy, true, false, "/delay/5")
        ),
    )?;
    let mut m = Run::new(p, image, ns)
        .least_privilege()
        .flag(&[
            "--read-only",
            "-v",
            &format!("{}:/etc/synack/targets.txt:ro", targets.display()),
            "-v",
            &ca_mount(lab),
        ])
        .spawn(
            None,
            &[
                "monitor",
                "--mode",
                "ebpf",
                "--targets",
                "/etc/synack/targets.txt",
                "--interval",
                "1s",
                "--listen",
                "127.0.0.1:9777",
                "--statsd",
                &statsd_addr,
                "--cacert",
                "/ca.pem",
            ],
        )?;
    let _prom = prometheus(
        ns,
        &dir,
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: synack\n    static_configs:\n      \
         - targets: ['127.0.0.1:9777']\n",
    )?;
    let mut lines: Vec<String> = Vec::new();
    let mut buf = [0u8; 65536];
    let r = m.wait_until(
        Duration::from_secs(60),
        "Prometheus to have both targets' verdicts, DogStatsD lines",
        |_| {
            while let Ok(n) = statsd.recv(&mut buf) {
                lines.extend(text(&buf[..n]).lines().map(str::to_string));
            }
            let mb = query(ns, "synack_path_middlebox").ok()?;
            let by = |t: &str| mb.iter().find(|(l, _)| l["target"] == t).map(|(_, v)| *v);
            (by("direct") == Some(0.0)
                && by("proxied") == Some(1.0)
                && lines
                    .iter()
                    .any(|l| l.starts_with("synack.") && l.contains("target:proxied")))
            .then_some(())
        },
    );
    r.with_context(|| {
        format!(
            "prometheus: {}\nstatsd: {lines:?}",
            fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        )
    })?;
    m.stop()?;
    Ok(())
}
