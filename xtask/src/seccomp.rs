//! packaging/seccomp/synack.json: containers-common's default seccomp
//! profile (podman's, buildah's, CRI-O's), resolved for synack's three
//! capabilities, plus bpf(2) and perf_event_open(2), minus the namespace,
//! mount, keyring and ptrace calls that Docker's and containerd's defaults
//! keep for CAP_SYS_ADMIN (and the like) and synack never makes.
//!
//! Why resolved and not a copy with one more capability-conditional rule:
//! the default says "allow bpf only with CAP_SYS_ADMIN" in
//! `includes`/`excludes` fields that only Docker, podman and CRI-O
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
//! Why tightened: containers-common allows unshare, mount, setns, keyctl,
//! ptrace, clone with namespace flags and more to every container (rootless
//! podman needs them); Docker's and containerd's defaults do not. The same
//! file is used on all of them (the DaemonSet's `Localhost` profile), so it
//! must not open on containerd what that runtime's own default keeps
//! closed. clone3 gets ENOSYS, as in Docker's default, so that glibc falls
//! back to clone, whose flags a filter can see.
//!
//! The profile names no architectures, so a runtime filters the native
//! one only (a list with every architecture of the default fails: one
//! filter cannot mix byte orders, and runc says "numerical argument out of
//! domain"). 32-bit calls on a 64-bit host are then refused, which synack's
//! image never makes. clone's flags are its first argument on every
//! architecture but s390x, where the filter below would misread them.

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
/// Which default it was made from: the package and its version, one line.
pub const SOURCE: &str = "packaging/seccomp/SOURCE";
/// The Debian package that holds [`RUNTIME_DEFAULT`].
const PACKAGE: &str = "golang-github-containers-common";
/// Refused with EPERM: what Docker's and containerd's defaults allow only
/// with a capability synack's container does not have (CAP_SYS_ADMIN,
/// CAP_SYS_PTRACE, CAP_SYSLOG, CAP_SYS_BOOT) or not at all, and synack
/// never calls without it (its cgroup2 mount is a fallback that needs
/// CAP_SYS_ADMIN anyway).
pub const REFUSED: [&str; 26] = [
    "unshare",
    "setns",
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "open_tree",
    "move_mount",
    "mount_setattr",
    "keyctl",
    "add_key",
    "request_key",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "syslog",
    "reboot",
    "quotactl",
    "quotactl_fd",
    "lookup_dcookie",
];
/// CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC |
/// CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET: clone is allowed only with
/// none of these flags.
const CLONE_NEW_MASK: u64 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;
/// ENOSYS, which makes glibc fall back from clone3 to clone.
const ENOSYS: i64 = 38;

/// The strings of an object's list field (none when it is absent).
fn strings<C: FromIterator<String>>(v: &Value, key: &str) -> C {
    v[key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect()
}

/// A rule's syscall names.
fn names(rule: &Value) -> Vec<String> {
    strings(rule, "names")
}

/// The capabilities an `includes` or `excludes` object names.
fn cap_list(v: &Value) -> BTreeSet<String> {
    strings(v, "caps")
}

/// The runtime default `default` (containers-common's format) resolved for
/// a container with exactly `caps`, in the OCI runtime spec's format, with
/// `calls` allowed and [`REFUSED`] and clone's namespace flags refused.
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
        if rule["action"] == "SCMP_ACT_ALLOW" {
            names.retain(|n| {
                !REFUSED.contains(&n.as_str()) && !["clone", "clone3"].contains(&n.as_str())
            });
        } else {
            names.retain(|n| !calls.contains(&n.as_str()));
        }
        if names.is_empty() {
            continue;
        }
        // An arch-only rule stays, unconditionally: its calls exist on that
        // architecture only, and runtimes skip a name the native one lacks.
        // One with arguments (s390's clone) would hold on every one.
        if !inc["arches"].is_null() && rule["args"].as_array().is_some_and(|a| !a.is_empty()) {
            bail!(
                "rule {names:?} holds on some architectures only, with arguments: \
                 not resolvable without the node's architecture"
            );
        }
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
    syscalls.push(json!({
        "names": ["clone"],
        "action": "SCMP_ACT_ALLOW",
        "args": [{ "index": 0, "value": CLONE_NEW_MASK, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ" }]
    }));
    syscalls.push(json!({ "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS }));
    syscalls.push(json!({ "names": REFUSED, "action": "SCMP_ACT_ERRNO", "errnoRet": 1 }));
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

/// The installed containers-common's version, as dpkg knows it.
pub fn installed_version() -> Option<String> {
    let o = std::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", PACKAGE])
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (o.status.success() && !v.is_empty()).then_some(v)
}

/// The line [`SOURCE`] holds for a version.
pub fn source_line(version: &str) -> String {
    format!("{PACKAGE} {version} {RUNTIME_DEFAULT}\n")
}

/// The lint: the shipped profile is what `render` makes of the runtime
/// default it says it was made from. Where this machine has another
/// version (or none), the profile cannot be remade here: that is said (a
/// note), not failed.
pub fn check(root: &Path) -> Result<Option<String>> {
    let shipped = fs::read_to_string(root.join(SHIPPED)).with_context(|| SHIPPED.to_string())?;
    let source = fs::read_to_string(root.join(SOURCE)).with_context(|| SOURCE.to_string())?;
    let Some(version) = installed_version() else {
        return Ok(Some(format!(
            "not remade here: {PACKAGE} is not installed (cargo xtask setup installs it)"
        )));
    };
    if source != source_line(&version) {
        return Ok(Some(format!(
            "not remade here: made from {}, this machine has {PACKAGE} {version}",
            source.trim()
        )));
    }
    if render(Path::new(RUNTIME_DEFAULT))? != shipped {
        bail!(
            "{SHIPPED} is not what `cargo xtask seccomp` makes of {RUNTIME_DEFAULT} ({PACKAGE} \
             {version}): run it and commit the result"
        );
    }
    Ok(None)
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
                {"names": ["read", "write", "clone", "clone3", "unshare", "mount", "keyctl",
                           "ptrace"], "action": "SCMP_ACT_ALLOW", "args": [],
                 "includes": {}, "excludes": {}},
                {"names": ["acct"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"caps": ["CAP_BPF", "CAP_SYS_PACCT"]}},
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
        // Tightened: refused whatever the default says, clone3 with ENOSYS,
        // clone only without namespace flags.
        for c in ["unshare", "mount", "keyctl", "ptrace"] {
            assert!(denied.contains(c) && !allowed.contains(c), "{c}: {r:?}");
        }
        let rule = |n: &str| -> Vec<Value> {
            p["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| names(r).iter().any(|x| x == n))
                .cloned()
                .collect()
        };
        assert_eq!(rule("clone3").len(), 1);
        assert_eq!(rule("clone3")[0]["errnoRet"], 38);
        let clone = rule("clone");
        assert_eq!(clone.len(), 1, "{clone:?}");
        assert_eq!(clone[0]["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(clone[0]["args"][0]["value"], 0x7e02_0000_u64);
        // includes.caps needs all of them: CAP_BPF alone is not enough.
        assert!(!allowed.contains("acct"), "{r:?}");
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
    fn the_shipped_profile_is_tightened_and_names_its_source() {
        let root = crate::root();
        let p: Value =
            serde_json::from_str(&fs::read_to_string(root.join(SHIPPED)).unwrap()).unwrap();
        let r = rules(&p);
        let allows = |c: &str| {
            r.iter()
                .any(|(a, n)| a == "SCMP_ACT_ALLOW" && n.iter().any(|x| x == c))
        };
        for c in CALLS {
            assert!(allows(c), "{c} not allowed");
        }
        for c in REFUSED {
            assert!(!allows(c), "{c} allowed");
        }
        let source = fs::read_to_string(root.join(SOURCE)).unwrap();
        assert!(
            source.starts_with(PACKAGE) && source.contains(RUNTIME_DEFAULT),
            "{source}"
        );
    }

    #[test]
    fn a_condition_it_cannot_resolve_is_refused() {
        let mut d = default();
        d["syscalls"][0]["includes"] = json!({"minKernel": "4.8"});
        let e = resolve(&d, &CAPS, &CALLS).unwrap_err().to_string();
        assert!(e.contains("minKernel"), "{e}");
        let mut d = default();
        d["syscalls"][2]["args"] = json!([{"index": 1, "value": 1, "op": "SCMP_CMP_EQ"}]);
        let e = resolve(&d, &CAPS, &CALLS).unwrap_err().to_string();
        assert!(e.contains("architecture"), "{e}");
    }
}
