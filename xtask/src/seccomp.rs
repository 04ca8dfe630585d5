//! packaging/seccomp/synack.json: the container runtime's default seccomp
//! profile, resolved for synack's three capabilities, plus bpf(2) and
//! perf_event_open(2).
//!
//! Why resolved and not a copy with one more capability-conditional rule:
//! Docker's and podman's profiles say "allow bpf only with CAP_SYS_ADMIN" in
//! `includes`/`excludes` fields that only those runtimes (and CRI-O)
//! evaluate. containerd reads a Kubernetes `Localhost` profile as the OCI
//! runtime spec's `LinuxSeccomp`, which has no such fields: there a
//! conditional rule would hold unconditionally. So the profile is written
//! the way a runtime would compute it for a container that has exactly
//! CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (the DaemonSet's and the
//! README's set), in the OCI format every runtime reads. Allowing the two
//! calls in seccomp gives nothing by itself: the kernel still asks for
//! CAP_BPF (or CAP_SYS_ADMIN) and CAP_PERFMON before it loads a program or
//! opens a perf event.
//!
//! The profile names no architectures, so a runtime filters the native
//! one only (a list with every architecture of the default fails: one
//! filter cannot mix byte orders, and runc says "numerical argument out of
//! domain"). 32-bit calls on a 64-bit host are then refused, which synack's
//! image never makes.

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};
use std::{collections::BTreeSet, fs, path::Path};

/// The capabilities the profile is resolved for: the packaging's set.
pub const CAPS: [&str; 3] = ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"];
/// The calls synack needs that runtimes' defaults tie to CAP_SYS_ADMIN.
pub const CALLS: [&str; 2] = ["bpf", "perf_event_open"];
/// Where Debian's containers-common (podman, buildah, CRI-O) keeps the
/// runtime's default profile.
pub const RUNTIME_DEFAULT: &str = "/usr/share/containers/seccomp.json";
/// The profile this module writes, from the repository root.
pub const SHIPPED: &str = "packaging/seccomp/synack.json";

fn names(rule: &Value) -> Vec<String> {
    rule["names"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect()
}

fn cap_list(v: &Value) -> BTreeSet<String> {
    v["caps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str().map(str::to_string))
        .collect()
}

/// The runtime default `default` (Docker's/containers-common's format)
/// resolved for a container with exactly `caps`, in the OCI runtime spec's
/// format, with `calls` allowed.
pub fn resolve(default: &Value, caps: &[&str], calls: &[&str]) -> Result<Value> {
    let have: BTreeSet<String> = caps.iter().map(|c| c.to_string()).collect();
    let mut syscalls = Vec::new();
    for rule in default["syscalls"]
        .as_array()
        .context("the default profile has no syscalls list")?
    {
        let inc = &rule["includes"];
        let exc = &rule["excludes"];
        for (what, v) in [("includes", inc), ("excludes", exc)] {
            if let Some(m) = v.as_object() {
                let known: &[&str] = if what == "includes" {
                    &["caps", "arches"]
                } else {
                    &["caps"]
                };
                if let Some(k) = m
                    .keys()
                    .find(|k| !known.contains(&k.as_str()) && !m[k.as_str()].is_null())
                {
                    // minKernel, excluded arches: not resolvable without the
                    // node's facts; say so rather than guess.
                    bail!(
                        "rule {:?} has {what}.{k}, which this resolver does not know",
                        names(rule)
                    );
                }
            }
        }
        if !cap_list(inc).is_subset(&have) || !cap_list(exc).is_disjoint(&have) {
            continue;
        }
        let mut names = names(rule);
        if rule["action"] != "SCMP_ACT_ALLOW" {
            names.retain(|n| !calls.contains(&n.as_str()));
        }
        if names.is_empty() {
            continue;
        }
        // An arch-only rule stays, unconditionally: its calls exist on that
        // architecture only, and runtimes skip a name the native one lacks.
        let mut out = Map::new();
        out.insert("names".into(), json!(names));
        out.insert("action".into(), rule["action"].clone());
        for k in ["errnoRet", "args"] {
            match &rule[k] {
                Value::Null => {}
                Value::Array(a) if a.is_empty() => {}
                v => {
                    out.insert(k.into(), v.clone());
                }
            }
        }
        syscalls.push(Value::Object(out));
    }
    syscalls.push(json!({ "names": calls, "action": "SCMP_ACT_ALLOW" }));
    let mut p = Map::new();
    p.insert("defaultAction".into(), default["defaultAction"].clone());
    if !default["defaultErrnoRet"].is_null() {
        p.insert("defaultErrnoRet".into(), default["defaultErrnoRet"].clone());
    }
    p.insert("syscalls".into(), json!(syscalls));
    Ok(Value::Object(p))
}

/// The shipped profile's text, made from the runtime default at `from`.
pub fn render(from: &Path) -> Result<String> {
    let text = fs::read_to_string(from).with_context(|| {
        format!(
            "reading the runtime's default seccomp profile {}: install Debian's \
             golang-github-containers-common (cargo xtask setup does), or name another with --from",
            from.display()
        )
    })?;
    let default: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", from.display()))?;
    let p = resolve(&default, &CAPS, &CALLS)?;
    Ok(serde_json::to_string_pretty(&p)? + "\n")
}

/// The lint: the shipped profile is what `render` makes of this machine's
/// runtime default.
pub fn check(root: &Path) -> Result<()> {
    let shipped = fs::read_to_string(root.join(SHIPPED)).with_context(|| SHIPPED.to_string())?;
    if render(Path::new(RUNTIME_DEFAULT))? != shipped {
        bail!(
            "{SHIPPED} is not {RUNTIME_DEFAULT} resolved for {} plus {}: \
             run `cargo xtask seccomp` and commit the result",
            CAPS.join(", "),
            CALLS.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default() -> Value {
        json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 38,
            "archMap": [{"architecture": "SCMP_ARCH_X86_64",
                         "subArchitectures": ["SCMP_ARCH_X86"]}],
            "syscalls": [
                {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "args": [],
                 "includes": {}, "excludes": {}},
                {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"arches": ["amd64"]}},
                {"names": ["bpf", "perf_event_open", "setns"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["bpf", "perf_event_open", "setns"], "action": "SCMP_ACT_ERRNO",
                 "errnoRet": 1, "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["chroot"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"caps": ["CAP_SYS_CHROOT"]}},
                {"names": ["chroot"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                 "excludes": {"caps": ["CAP_SYS_CHROOT"]}},
                {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 16, "op": "SCMP_CMP_NE"}],
                 "excludes": {"caps": ["CAP_NET_ADMIN"]}}
            ]
        })
    }

    fn rules(p: &Value) -> Vec<(String, Vec<String>)> {
        p["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["action"].as_str().unwrap().to_string(), names(r)))
            .collect()
    }

    #[test]
    fn resolved_for_the_three_capabilities() {
        let p = resolve(&default(), &CAPS, &CALLS).unwrap();
        let r = rules(&p);
        let allowed: BTreeSet<&str> = r
            .iter()
            .filter(|(a, _)| a == "SCMP_ACT_ALLOW")
            .flat_map(|(_, n)| n.iter().map(String::as_str))
            .collect();
        let denied: BTreeSet<&str> = r
            .iter()
            .filter(|(a, _)| a == "SCMP_ACT_ERRNO")
            .flat_map(|(_, n)| n.iter().map(String::as_str))
            .collect();
        // The two calls allowed and nowhere denied; the rest of the
        // CAP_SYS_ADMIN group still denied, as without CAP_SYS_ADMIN.
        for c in CALLS {
            assert!(allowed.contains(c) && !denied.contains(c), "{c}: {r:?}");
        }
        assert!(
            denied.contains("setns") && !allowed.contains("setns"),
            "{r:?}"
        );
        assert!(
            denied.contains("chroot") && !allowed.contains("chroot"),
            "{r:?}"
        );
        // A rule that holds without CAP_NET_ADMIN is gone: we have it.
        assert!(!allowed.contains("socket"), "{r:?}");
        assert!(allowed.contains("read") && allowed.contains("arch_prctl"));
        // The OCI format: no capability conditions, and no architecture
        // list (the native one only: a filter cannot mix byte orders).
        let text = p.to_string();
        assert!(
            !text.contains("includes") && !text.contains("excludes"),
            "{text}"
        );
        assert!(p.get("architectures").is_none() && p.get("archMap").is_none());
        assert_eq!(p["defaultErrnoRet"], 38);
    }

    #[test]
    fn a_condition_it_cannot_resolve_is_refused() {
        let mut d = default();
        d["syscalls"][0]["includes"] = json!({"minKernel": "4.8"});
        let e = resolve(&d, &CAPS, &CALLS).unwrap_err().to_string();
        assert!(e.contains("minKernel"), "{e}");
    }
}
