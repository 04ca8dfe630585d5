//! Capabilities and the kernel release: what this process may do with
//! eBPF, and how to tell an operator what is missing.

use caps::{CapSet, Capability};

/// Kernels before 6.0 refuse every bpf() command without CAP_BPF when
/// unprivileged BPF is disabled, map reads and writes through a descriptor
/// included; later ones only refuse creating maps and loading programs.
pub(crate) fn map_ops_need_cap_bpf() -> bool {
    kernel_release().is_none_or(|rel| kernel_before(&rel, (6, 0)))
}

/// uname's release string, e.g. "6.18.2".
pub(crate) fn kernel_release() -> Option<String> {
    // SAFETY: zeroed utsname is a valid out-parameter.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    // SAFETY: uname NUL-terminates release.
    let rel = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) };
    Some(rel.to_string_lossy().into_owned())
}

/// True when `release` is older than `v` (or unreadable).
pub(crate) fn kernel_before(release: &str, v: (u32, u32)) -> bool {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|x| x.parse::<u32>().ok());
    match (it.next(), it.next()) {
        (Some(a), Some(b)) => (a, b) < v,
        _ => true,
    }
}

/// What loading and attaching takes: CAP_BPF (maps, programs), CAP_PERFMON
/// (the verifier refuses the classifiers' pointer arithmetic without it),
/// CAP_NET_ADMIN (tc and cgroup attachment).
pub(crate) const FOR_EBPF: [Capability; 3] = [
    Capability::CAP_BPF,
    Capability::CAP_NET_ADMIN,
    Capability::CAP_PERFMON,
];

/// The capabilities loading needs that this process's effective set lacks,
/// as `CAP_X` names. Kernels before 5.8 know neither CAP_BPF nor
/// CAP_PERFMON; there CAP_SYS_ADMIN stands in for both.
pub(crate) fn missing_for_ebpf() -> Vec<String> {
    let has = |c: Capability| caps::has_cap(None, CapSet::Effective, c).unwrap_or(false);
    // /proc/sys/kernel/cap_last_cap says which capabilities the kernel knows.
    let old_kernel = caps::runtime::procfs_all_supported(None)
        .map(|all| !all.contains(&Capability::CAP_BPF))
        .unwrap_or(false);
    FOR_EBPF
        .iter()
        .copied()
        .filter(|&c| {
            let stand_in =
                old_kernel && c != Capability::CAP_NET_ADMIN && has(Capability::CAP_SYS_ADMIN);
            !has(c) && !stand_in
        })
        .map(|c| c.to_string())
        .collect()
}

/// What to tell an operator whose synack could not load its programs: which
/// capabilities are missing and how to grant them. None when nothing is
/// missing (the failure has another cause).
pub(crate) fn grant_hint() -> Option<String> {
    let missing = missing_for_ebpf();
    if missing.is_empty() {
        return None;
    }
    Some(format!(
        "this process lacks {}: synack needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (or \
         root). Run it with sudo; in a container add exactly those three capabilities \
         (docker run --cap-add BPF --cap-add NET_ADMIN --cap-add PERFMON, or the \
         DaemonSet in packaging/kubernetes); as a service see packaging/systemd. Kernels \
         before 5.8 need CAP_SYS_ADMIN instead of CAP_BPF and CAP_PERFMON",
        missing.join(", ")
    ))
}

/// The `Seccomp:` field of a /proc/PID/status: 0 none, 1 strict, 2 a
/// filter (what container runtimes install).
pub(crate) fn parse_seccomp(status: &str) -> Option<u8> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Whether a seccomp filter is on this process (None: not known).
pub(crate) fn seccomp_filtered() -> Option<bool> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_seccomp(&status).map(|m| m == 2)
}

/// Whether bpf(2) is refused whatever it is asked: a command no kernel has
/// (0xffff, no attributes) gets EINVAL from the kernel itself, so EPERM
/// says something in front of the kernel's command switch refused the call
/// by its number: a seccomp filter's signature (an LSM's bpf hook judges
/// real commands). Only meaningful for a process that has CAP_BPF.
pub(crate) fn bpf_refused_by_number() -> bool {
    // SAFETY: an unknown command with a null attribute pointer and size 0:
    // the kernel reads nothing and returns an error.
    let r = unsafe { libc::syscall(libc::SYS_bpf, 0xffff_i64, std::ptr::null::<u8>(), 0_i64) };
    r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Who refused bpf(2) to a process that has the three capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refuser {
    /// A seccomp filter is on this process and refuses bpf(2) by number.
    Seccomp,
    /// A seccomp filter is on this process, but it lets bpf(2) through.
    NotSeccomp,
    /// No seccomp filter (or none known).
    Unknown,
}

/// [`Refuser`] for this process.
pub(crate) fn refuser() -> Refuser {
    match seccomp_filtered() {
        Some(true) if bpf_refused_by_number() => Refuser::Seccomp,
        Some(true) => Refuser::NotSeccomp,
        _ => Refuser::Unknown,
    }
}

/// Why bpf(2) was refused to a process that has the three capabilities,
/// and what fixes it.
pub(crate) fn refused_with_caps_hint(who: Refuser) -> String {
    match who {
        Refuser::Seccomp => "This process has CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, but a \
             seccomp filter is on it (Seccomp: 2 in /proc/self/status) and refuses bpf(2) \
             whatever it is asked: some container runtimes' default profiles (podman's among \
             them, and Kubernetes' RuntimeDefault on such a runtime) allow bpf(2) and \
             perf_event_open(2) only with CAP_SYS_ADMIN. Any one of these fixes it: a seccomp \
             profile that also allows bpf and perf_event_open (synack ships one: \
             /usr/share/synack/seccomp.json in its image, packaging/seccomp/synack.json in its \
             source; docker or podman run --security-opt seccomp=synack.json; Kubernetes \
             securityContext.seccompProfile type Localhost, docs/containers.md); --security-opt seccomp=unconfined (Kubernetes: type \
             Unconfined); or CAP_SYS_ADMIN (--cap-add SYS_ADMIN, or --privileged)"
            .to_string(),
        Refuser::NotSeccomp => "This process has CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, and \
             the seccomp filter on it lets bpf(2) through, so something else refuses: an LSM \
             (AppArmor, SELinux) or kernel.unprivileged_bpf_disabled with a user namespace"
            .to_string(),
        Refuser::Unknown => "This process has CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON and no \
             seccomp filter that synack could see, so something else refuses: an LSM \
             (AppArmor, SELinux) or kernel.unprivileged_bpf_disabled with a user namespace"
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seccomp_field_and_what_it_means() {
        let status = "Name:\tsynack\nNoNewPrivs:\t0\nSeccomp:\t2\nSeccomp_filters:\t1\n";
        assert_eq!(parse_seccomp(status), Some(2));
        assert_eq!(parse_seccomp("Seccomp:\t0\n"), Some(0));
        assert_eq!(parse_seccomp("Name: x\n"), None);
        let f = refused_with_caps_hint(Refuser::Seccomp);
        for want in [
            "seccomp",
            "Seccomp: 2",
            "seccomp=unconfined",
            "seccompProfile",
            "/usr/share/synack/seccomp.json",
            "CAP_SYS_ADMIN",
        ] {
            assert!(f.contains(want), "{want} in {f}");
        }
        for other in [Refuser::NotSeccomp, Refuser::Unknown] {
            let h = refused_with_caps_hint(other);
            assert!(!h.contains("unconfined") && h.contains("LSM"), "{h}");
        }
        // This process (a test run) reads its own field.
        assert!(seccomp_filtered().is_some());
    }

    #[test]
    fn kernel_releases() {
        assert!(kernel_before("5.15.0-91-generic", (6, 0)));
        assert!(!kernel_before("6.18.2", (6, 0)));
        assert!(!kernel_before("6.0", (6, 0)));
        assert!(kernel_before("garbage", (6, 0)));
    }
}
