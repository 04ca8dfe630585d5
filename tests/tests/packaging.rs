//! The packaging, run as packaged: the systemd unit's ExecStart as its
//! unprivileged user with exactly its ambient capabilities and
//! NoNewPrivileges, and the DaemonSet container's command as uid 0 with
//! exactly its added capabilities (all others dropped) and no privilege
//! escalation. Both must attach the eBPF side (`--mode ebpf` fails
//! otherwise) and time a real request. Every place that names the
//! capability set (unit, manifest, Dockerfile, README) must name the same.
//! (Linters and a dry run of the Dockerfile: `cargo xtask lint`.)

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};
use synack_tests::{
    Netns, Proc, Served, TempDir, is_root,
    manifest::{cap_name, daemonset, strings_of},
    synack_bin, unique, wait_for,
};
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> Result<String> {
    fs::read_to_string(repo().join(rel)).with_context(|| rel.to_string())
}

struct Unit {
    exec: Vec<String>,
    ambient: BTreeSet<String>,
    bounding: BTreeSet<String>,
    dynamic_user: bool,
    no_new_privs: bool,
}

fn unit(text: &str) -> Result<Unit> {
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{k}=")))
            .map(str::to_string)
    };
    let caps = |k: &str| -> Result<BTreeSet<String>> {
        Ok(get(k)
            .with_context(|| format!("the unit has no {k}="))?
            .split_whitespace()
            .map(cap_name)
            .collect())
    };
    Ok(Unit {
        exec: get("ExecStart")
            .context("the unit has no ExecStart=")?
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        ambient: caps("AmbientCapabilities")?,
        bounding: caps("CapabilityBoundingSet")?,
        dynamic_user: get("DynamicUser").as_deref() == Some("yes"),
        no_new_privs: get("NoNewPrivileges").as_deref() == Some("yes"),
    })
}

/// Every `--cap-add X` of a text (docker run examples).
fn cap_adds(text: &str) -> BTreeSet<String> {
    let w: Vec<&str> = text.split_whitespace().collect();
    w.windows(2)
        .filter(|p| p[0] == "--cap-add")
        .map(|p| cap_name(p[1]))
        .collect()
}

#[test]
fn every_place_names_the_same_capabilities() -> Result<()> {
    let u = unit(&read("packaging/systemd/synack-monitor.service")?)?;
    let k = daemonset(&read("packaging/kubernetes/synack-monitor.yaml")?)?;
    let docker = cap_adds(&read("packaging/Dockerfile")?);
    let readme = cap_adds(&read("README.md")?);
    let want: BTreeSet<String> = ["bpf", "net_admin", "perfmon"].map(String::from).into();
    assert_eq!(u.ambient, want, "the unit's AmbientCapabilities");
    assert_eq!(u.bounding, want, "the unit's CapabilityBoundingSet");
    assert_eq!(k.add, want, "the DaemonSet's capabilities.add");
    assert_eq!(docker, want, "the Dockerfile's docker run example");
    assert_eq!(readme, want, "README's docker run examples");
    assert!(
        u.dynamic_user && u.no_new_privs,
        "the unit runs unprivileged"
    );
    assert!(
        k.drop_all && !k.privileged && k.no_escalation && k.uid == 0,
        "the container drops everything else, is not privileged, cannot escalate"
    );
    assert!(u.exec.iter().any(|a| a == "--mode") && k.args.iter().any(|a| a == "--mode"));
    // Both DaemonSets name the shipped seccomp profile, by the path the
    // install instructions put it at.
    for m in [
        "packaging/kubernetes/synack-monitor.yaml",
        "packaging/kubernetes/synack-monitor-git-sync.yaml",
    ] {
        let d = daemonset(&read(m)?)?;
        assert_eq!(
            d.seccomp,
            Some(("Localhost".into(), Some("profiles/synack.json".into()))),
            "{m}'s seccompProfile"
        );
    }
    assert!(repo().join("packaging/seccomp/synack.json").exists());
    assert!(
        read("docs/containers.md")?.contains("/var/lib/kubelet/seccomp/profiles/synack.json"),
        "docs/containers.md says where the profile goes"
    );
    Ok(())
}

/// Runs `argv` in the client namespace under setpriv, waits for a checked
/// record, and returns it.
fn run_monitor(s: &Served, setpriv: &[String], argv: &[String], dir: &TempDir) -> Result<Value> {
    let out = dir.join("out.jsonl");
    let err = dir.join("err.txt");
    let mut c = s.pair.client.command("setpriv");
    c.args(setpriv)
        .args(argv)
        .arg("--json")
        .stdout(fs::File::create(&out)?)
        .stderr(fs::File::create(&err)?);
    let mut p = Proc::spawn(c, "packaged synack")?;
    let rec = wait_for(Duration::from_secs(30), "a check's record", || {
        if let Ok(Some(st)) = p.child.try_wait() {
            return Some(Err(anyhow::anyhow!(
                "synack exited ({st}): {}",
                fs::read_to_string(&err).unwrap_or_default()
            )));
        }
        let text = fs::read_to_string(&out).ok()?;
        let line = text.lines().next()?;
        Some(serde_json::from_str::<Value>(line).map_err(anyhow::Error::from))
    });
    let said = fs::read_to_string(&err).unwrap_or_default();
    let rec = rec.with_context(|| format!("stderr: {said}"))??;
    p.signal(libc::SIGTERM);
    let st = p.wait_exit(Duration::from_secs(10))?;
    assert!(
        st.success(),
        "synack did not stop cleanly on SIGTERM ({st}): {said}"
    );
    Ok(rec)
}

fn assert_timed(rec: &Value) {
    assert_eq!(rec["mode"], "ebpf", "{rec}");
    assert!(rec["error"].is_null(), "{rec}");
    assert_eq!(rec["http_status"], 200, "{rec}");
    for f in ["handshake_rtt_ms", "ttfb_ms", "synack_ttl"] {
        assert!(rec["wire"][f].as_f64().is_some(), "wire.{f}: {rec}");
    }
}

/// A directory and files the unit's dynamic (unprivileged) user can read,
/// with a copy of synack standing in for /usr/local/bin/synack.
fn world_readable(dir: &TempDir, targets: &str) -> Result<(String, String)> {
    fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o755))?;
    let t = dir.join("targets.txt");
    fs::write(&t, targets)?;
    fs::set_permissions(&t, fs::Permissions::from_mode(0o644))?;
    let bin = dir.join("synack");
    fs::copy(synack_bin(), &bin).context("copying synack")?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
    let s = |p: PathBuf| p.to_str().map(str::to_string).context("path is not UTF-8");
    Ok((s(bin)?, s(t)?))
}

fn setpriv_caps(caps: &BTreeSet<String>) -> String {
    let mut s = "-all".to_string();
    for c in caps {
        s.push_str(",+");
        s.push_str(c);
    }
    s
}

/// The systemd unit's ExecStart, as the unit runs it: a user that is not
/// root, the ambient capabilities and bounding set it names, no new
/// privileges. Only the paths and the interval (30 s, whose first check
/// could come late) are changed.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn the_systemd_unit_works_with_its_capabilities() -> Result<()> {
    assert!(is_root(), "the packaging test needs root: cargo xtask test");
    let u = unit(&read("packaging/systemd/synack-monitor.service")?)?;
    let s = Served::new()?;
    let dir = TempDir::new()?;
    let (bin, targets) = world_readable(
        &dir,
        &format!("http://{}:8080/delay/5 name=origin\n", s.pair.server_v4),
    )?;
    let argv = packaged_argv(&u.exec, &bin, &[("/etc/synack/targets.txt", &targets)])?;
    let caps = setpriv_caps(&u.ambient);
    let setpriv = [
        // DynamicUser: some uid that is not root; nobody stands in.
        "--reuid=65534".to_string(),
        "--regid=65534".to_string(),
        "--clear-groups".to_string(),
        format!("--bounding-set={}", setpriv_caps(&u.bounding)),
        format!("--inh-caps={caps}"),
        format!("--ambient-caps={caps}"),
        "--no-new-privs".to_string(),
    ];
    let rec = run_monitor(&s, &setpriv, &argv, &dir)?;
    assert_timed(&rec);
    Ok(())
}

/// The DaemonSet container's command: uid 0, every capability dropped but
/// the added ones, no privilege escalation, and HTTPS with the mounted CA.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn the_daemonset_works_with_its_capabilities() -> Result<()> {
    assert!(is_root(), "the packaging test needs root: cargo xtask test");
    let k = daemonset(&read("packaging/kubernetes/synack-monitor.yaml")?)?;
    let s = Served::new()?;
    let dir = TempDir::new()?;
    let (bin, targets) = world_readable(
        &dir,
        &format!("https://{}:8443/delay/5 name=origin\n", s.pair.server_v4),
    )?;
    let mut exec = vec!["/usr/local/bin/synack".to_string()];
    exec.extend(k.args.iter().cloned());
    let ca = s.ca();
    let argv = packaged_argv(
        &exec,
        &bin,
        &[
            ("/etc/synack/targets/targets.txt", &targets),
            ("/etc/synack/cluster-ca/ca.crt", &ca),
            // The pod's IP is the client namespace's loopback here.
            ("$(POD_IP)", "127.0.0.1"),
        ],
    )?;
    let setpriv = [
        format!("--bounding-set={}", setpriv_caps(&k.add)),
        "--inh-caps=-all".to_string(),
        "--ambient-caps=-all".to_string(),
        "--no-new-privs".to_string(),
    ];
    let rec = run_monitor(&s, &setpriv, &argv, &dir)?;
    assert_timed(&rec);
    assert_eq!(rec["tls"], true, "{rec}");
    Ok(())
}

/// The packaged command line with the installed paths replaced; every
/// replacement must be used (a renamed path in the packaging fails here).
fn packaged_argv(exec: &[String], bin: &str, paths: &[(&str, &str)]) -> Result<Vec<String>> {
    if exec.first().map(String::as_str) != Some("/usr/local/bin/synack") {
        bail!("the packaged command does not run /usr/local/bin/synack: {exec:?}");
    }
    let mut argv = vec![bin.to_string()];
    let mut used = vec![false; paths.len()];
    let mut it = exec[1..].iter();
    while let Some(a) = it.next() {
        if a == "--interval" {
            it.next().context("--interval without a value")?;
            argv.extend(["--interval".to_string(), "1s".to_string()]);
            continue;
        }
        let mut a = a.clone();
        for (i, (from, to)) in paths.iter().enumerate() {
            if a.contains(from) {
                a = a.replace(from, to);
                used[i] = true;
            }
        }
        argv.push(a);
    }
    if let Some(i) = used.iter().position(|u| !u) {
        bail!("the packaged command no longer uses {}", paths[i].0);
    }
    Ok(argv)
}

/// synack run once in `ns` by setpriv as root with only `caps` in its
/// bounding set (so effective), against a closed loopback port.
fn synack_with_caps(
    ns: &Netns,
    run_dir: &TempDir,
    caps: &BTreeSet<String>,
    mode: &str,
) -> std::process::Command {
    let mut c = ns.command("setpriv");
    c.env("SYNACK_RUN_DIR", &run_dir.0)
        .arg(format!("--bounding-set={}", setpriv_caps(caps)))
        .args(["--inh-caps=-all", "--ambient-caps=-all"])
        .arg(synack_bin())
        .args(["--mode", mode, "--json", "http://127.0.0.1:9/"]);
    c
}

/// The first JSON record a run printed.
fn first_record(stdout: &[u8]) -> Result<Value> {
    Ok(serde_json::from_slice(
        stdout.split(|b| *b == b'\n').next().context("no record")?,
    )?)
}

/// Without one of the three capabilities, synack names the one that is
/// missing and how to grant it (not the verifier's log), in both modes:
/// `--mode ebpf` fails with exit status 2, auto falls back and says which
/// capability would enable eBPF. In a namespace of its own, with its own
/// ledger directory; nothing leaves its loopback.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn a_missing_capability_is_named() -> Result<()> {
    assert!(is_root(), "the packaging test needs root: cargo xtask test");
    let ns = Netns::new(&unique("synack-caps"))?;
    let run_dir = TempDir::new()?;
    let all = ["bpf", "net_admin", "perfmon"];
    for lack in all {
        let keep: BTreeSet<String> = all
            .iter()
            .filter(|c| **c != lack)
            .map(|c| c.to_string())
            .collect();
        let run = |mode: &str| -> Result<std::process::Output> {
            Ok(synack_with_caps(&ns, &run_dir, &keep, mode).output()?)
        };
        let want = format!("CAP_{}", lack.to_ascii_uppercase());
        let o = run("ebpf")?;
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "without {want}: {err}");
        assert!(
            err.contains(&format!("lacks {want}")),
            "without {want}: {err}"
        );
        assert!(!err.contains("Verifier output"), "without {want}: {err}");
        let o = run("auto")?;
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("{want} would enable eBPF")),
            "without {want}, auto: {err}"
        );
        let rec = first_record(&o.stdout)?;
        assert_eq!(rec["mode"], "unprivileged", "{rec}");
    }
    Ok(())
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
/// Installs, in the process about to exec, a seccomp filter that refuses
/// bpf(2) with EPERM and allows every other call: what a container
/// runtime's default profile does to a process without CAP_SYS_ADMIN.
fn refuse_bpf_by_seccomp(c: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt: 0,
        jf,
        k,
    };
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    // seccomp_data: nr at offset 0, arch at 4.
    let prog = [
        stmt(load, 4),
        jeq(ARCH, 3),
        stmt(load, 0),
        jeq(libc::SYS_bpf as u32, 1),
        stmt(ret, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
    ];
    // SAFETY: between fork and exec only prctl runs, on memory (`prog`,
    // moved into the closure) that lives until exec; the child is root
    // (CAP_SYS_ADMIN), which installing a filter without no_new_privs
    // needs.
    unsafe {
        c.pre_exec(move || {
            let f = libc::sock_fprog {
                len: prog.len() as u16,
                filter: prog.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &f as *const libc::sock_fprog,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// With all three capabilities but a seccomp filter that refuses bpf(2)
/// (a container's default profile), synack says a seccomp filter is the
/// cause and how to allow it, never that the capabilities it has "would
/// enable eBPF"; auto still falls back, in one line. The same run without
/// the filter loads eBPF and says nothing of seccomp.
#[test]
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn a_seccomp_filter_is_named() -> Result<()> {
    assert!(is_root(), "the packaging test needs root: cargo xtask test");
    let ns = Netns::new(&unique("synack-seccomp"))?;
    let run_dir = TempDir::new()?;
    let three: BTreeSet<String> = ["bpf", "net_admin", "perfmon"]
        .iter()
        .map(|c| c.to_string())
        .collect();
    let run = |mode: &str, filtered: bool| -> Result<std::process::Output> {
        let mut c = synack_with_caps(&ns, &run_dir, &three, mode);
        if filtered {
            refuse_bpf_by_seccomp(&mut c);
        }
        Ok(c.output()?)
    };
    let o = run("ebpf", true)?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    for want in [
        "seccomp filter is on it",
        "Seccomp: 2",
        "seccomp=unconfined",
        "seccompProfile",
        "CAP_SYS_ADMIN",
    ] {
        assert!(
            err.contains(want),
            "--mode ebpf under seccomp, {want:?} missing: {err}"
        );
    }
    assert!(!err.contains("lacks"), "{err}");
    eprintln!("under seccomp, --mode ebpf said:\n{err}");
    let o = run("auto", true)?;
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("under seccomp, --mode auto said:\n{err}");
    assert!(
        err.contains("A seccomp filter refuses bpf(2)") && !err.contains("would enable eBPF"),
        "--mode auto under seccomp: {err}"
    );
    let notices = err.lines().filter(|l| l.contains("eBPF not used")).count();
    assert_eq!(notices, 1, "{err}");
    let rec = first_record(&o.stdout)?;
    assert_eq!(rec["mode"], "unprivileged", "{rec}");
    // The control: the same capabilities, no filter.
    let o = run("auto", false)?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.to_lowercase().contains("seccomp"), "{err}");
    let rec = first_record(&o.stdout)?;
    assert_eq!(rec["mode"], "ebpf", "{rec}: {err}");
    Ok(())
}

/// A container of the git-sync manifest by name (init containers too).
fn container<'a>(spec: &'a Yaml, name: &str) -> Result<&'a Yaml> {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| spec[*k].as_vec())
        .flatten()
        .find(|c| c["name"].as_str() == Some(name))
        .with_context(|| format!("no container {name} in the git-sync manifest"))
}

fn env_of(c: &Yaml, key: &str) -> Option<String> {
    c["env"]
        .as_vec()?
        .iter()
        .find(|e| e["name"].as_str() == Some(key))?["value"]
        .as_str()
        .map(str::to_string)
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let o = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=synack test",
            "-c",
            "user.email=test@synack.invalid",
        ])
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .context("running git")?;
    if !o.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// What git-sync does on a sync: a checkout of the commit in a directory
/// of its own under the root, then the link swapped to it atomically (a new
/// symlink renamed over the old).
fn git_sync_once(repo: &Path, root: &Path, link: &str) -> Result<()> {
    let sha = git(repo, &["rev-parse", "HEAD"])?;
    let wt = root.join(".worktrees").join(&sha);
    git(
        repo,
        &[
            "worktree",
            "add",
            "--detach",
            wt.to_str().context("path")?,
            &sha,
        ],
    )?;
    let tmp = root.join(format!(".{link}.tmp"));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(Path::new(".worktrees").join(&sha), &tmp)?;
    fs::rename(&tmp, root.join(link))?;
    Ok(())
}

/// The git-sync manifest: git-sync clones once before synack starts
/// (`--one-time` in an init container) and keeps pulling beside it, both
/// with the same repository, root and link, and synack's --targets lies
/// under that link on the shared volume. Then git-sync's layout, made here
/// with real git the way git-sync makes it, is followed by the monitor: a
/// pushed target is checked within seconds, without a restart.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn targets_from_git_follow_a_pushed_change() -> Result<()> {
    assert!(is_root(), "the packaging test needs root: cargo xtask test");
    let docs =
        YamlLoader::load_from_str(&read("packaging/kubernetes/synack-monitor-git-sync.yaml")?)
            .context("the git-sync manifest is not YAML")?;
    let ds = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("DaemonSet"))
        .context("no DaemonSet in the git-sync manifest")?;
    let spec = &ds["spec"]["template"]["spec"];
    let (init, sidecar, mon) = (
        container(spec, "git-clone")?,
        container(spec, "git-sync")?,
        container(spec, "synack")?,
    );
    assert!(strings_of(&init["args"]).contains(&"--one-time".to_string()));
    assert!(
        strings_of(&sidecar["args"])
            .iter()
            .any(|a| a.starts_with("--period="))
    );
    for k in [
        "GITSYNC_REPO",
        "GITSYNC_REF",
        "GITSYNC_ROOT",
        "GITSYNC_LINK",
    ] {
        assert!(env_of(sidecar, k).is_some(), "the sidecar has no {k}");
        assert_eq!(
            env_of(init, k),
            env_of(sidecar, k),
            "{k} differs between clone and sync"
        );
    }
    let root = env_of(sidecar, "GITSYNC_ROOT").context("root")?;
    let link = env_of(sidecar, "GITSYNC_LINK").context("link")?;
    let mounted = |c: &Yaml| {
        c["volumeMounts"]
            .as_vec()
            .into_iter()
            .flatten()
            .find(|m| m["mountPath"].as_str() == Some(root.as_str()))
            .and_then(|m| m["name"].as_str().map(str::to_string))
    };
    assert!(
        mounted(mon).is_some() && mounted(mon) == mounted(sidecar),
        "synack does not mount git-sync's root"
    );
    let args = strings_of(&mon["args"]);
    let targets = args
        .iter()
        .skip_while(|a| *a != "--targets")
        .nth(1)
        .context("synack has no --targets")?;
    let rel = targets
        .strip_prefix(&format!("{root}/{link}/"))
        .with_context(|| format!("--targets {targets} is not under {root}/{link}/"))?;

    // git-sync's layout, for real.
    let s = Served::new()?;
    let dir = TempDir::new()?;
    let repo = dir.join("repo");
    let gitroot = dir.join("git");
    fs::create_dir_all(repo.join(rel).parent().context("rel")?)?;
    fs::create_dir_all(&gitroot)?;
    git(&repo, &["init", "-q", "-b", "main"])?;
    let line = |name: &str| format!("http://{}:8080/delay/1 name={name}\n", s.pair.server_v4);
    fs::write(repo.join(rel), line("first"))?;
    git(&repo, &["add", "."])?;
    git(&repo, &["commit", "-q", "-m", "first target"])?;
    git_sync_once(&repo, &gitroot, &link)?;

    let out = dir.join("out.jsonl");
    let err = dir.join("err.txt");
    let path = gitroot.join(&link).join(rel);
    let mut c = s
        .pair
        .client
        .command(synack_bin().to_str().context("path")?);
    c.args(["monitor", "--interval", "1s", "--json", "--targets"])
        .arg(&path)
        .stdout(fs::File::create(&out)?)
        .stderr(fs::File::create(&err)?);
    let mut p = Proc::spawn(c, "synack monitor on git-sync's link")?;
    let checked = |name: &str| {
        let name = name.to_string();
        let (out, err) = (out.clone(), err.clone());
        wait_for(
            Duration::from_secs(20),
            &format!("a check of {name}"),
            move || {
                fs::read_to_string(&out)
                    .ok()?
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .any(|r| r["target"] == name.as_str() && r["error"].is_null())
                    .then_some(())
            },
        )
        .with_context(|| fs::read_to_string(&err).unwrap_or_default())
    };
    checked("first")?;
    // A push; git-sync's next period.
    fs::write(
        repo.join(rel),
        format!("{}{}", line("first"), line("second")),
    )?;
    git(&repo, &["commit", "-q", "-am", "second target"])?;
    git_sync_once(&repo, &gitroot, &link)?;
    checked("second")?;
    let said = fs::read_to_string(&err)?;
    assert!(
        said.contains("reloaded") && said.contains("2 targets"),
        "{said}"
    );
    p.signal(libc::SIGTERM);
    let st = p.wait_exit(Duration::from_secs(10))?;
    assert!(st.success(), "monitor exit {st}: {said}");
    Ok(())
}
