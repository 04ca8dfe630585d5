//! Least privilege: once the kernel side is loaded and attached, synack
//! gives up every capability it no longer needs, so the long-running part
//! (requests, parsing of untrusted bytes, the metrics endpoint) runs with
//! as little as possible. Map reads and writes through the descriptors it
//! holds need no capability; detaching tcx and cgroup links is closing them.

use crate::bpf::AttachMode;
use caps::{CapSet, Capability, CapsHashSet};

/// Kernels before 6.0 refuse every bpf() command without CAP_BPF when
/// unprivileged BPF is disabled, map reads and writes through a descriptor
/// included; later ones only refuse creating maps and loading programs.
fn map_ops_need_cap_bpf() -> bool {
    kernel_release().is_none_or(|rel| kernel_before(&rel, (6, 0)))
}

/// uname's release string, e.g. "6.18.2".
pub fn kernel_release() -> Option<String> {
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
pub fn kernel_before(release: &str, v: (u32, u32)) -> bool {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|x| x.parse::<u32>().ok());
    match (it.next(), it.next()) {
        (Some(a), Some(b)) => (a, b) < v,
        _ => true,
    }
}

/// What is still needed after loading, and why.
/// `follow_new`: the kernel side attaches to interfaces that come up later
/// (watch without -i), which takes CAP_NET_ADMIN.
pub fn needed(attach: Option<AttachMode>, watch: bool, follow_new: bool) -> Vec<Capability> {
    let mut keep = Vec::new();
    if attach.is_some() && map_ops_need_cap_bpf() {
        keep.push(Capability::CAP_BPF);
    }
    if attach == Some(AttachMode::Netlink) || (attach.is_some() && follow_new) {
        // clsact filters are removed over netlink at exit; new interfaces
        // are attached to as they come.
        keep.push(Capability::CAP_NET_ADMIN);
    }
    if watch {
        // Naming the process behind a server-side socket reads other
        // users' /proc/PID/fd, a ptrace-mode check.
        keep.push(Capability::CAP_SYS_PTRACE);
    }
    keep
}

/// What loading and attaching takes: CAP_BPF (maps, programs), CAP_PERFMON
/// (the verifier refuses the classifiers' pointer arithmetic without it),
/// CAP_NET_ADMIN (tc and cgroup attachment).
pub const FOR_EBPF: [Capability; 3] = [
    Capability::CAP_BPF,
    Capability::CAP_NET_ADMIN,
    Capability::CAP_PERFMON,
];

/// The capabilities loading needs that this process's effective set lacks,
/// as `CAP_X` names. Kernels before 5.8 know neither CAP_BPF nor
/// CAP_PERFMON; there CAP_SYS_ADMIN stands in for both.
pub fn missing_for_ebpf() -> Vec<String> {
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
pub fn grant_hint() -> Option<String> {
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

/// Keeps only `keep` in the permitted and effective sets (the inheritable
/// and ambient sets are cleared), for this thread and every thread it
/// starts from now on. Returns what was dropped.
pub fn drop_all_but(keep: &[Capability]) -> Result<Vec<Capability>, caps::errors::CapsError> {
    let before = caps::read(None, CapSet::Permitted)?;
    let keep: CapsHashSet = keep
        .iter()
        .copied()
        .filter(|c| before.contains(c))
        .collect();
    let mut dropped: Vec<Capability> = before.difference(&keep).copied().collect();
    dropped.sort_by_key(|c| c.index());
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    Ok(dropped)
}

/// `drop_all_but`, with a warning instead of an error: running with more
/// privileges than needed is worse, not broken.
pub fn drop_or_warn(keep: &[Capability]) {
    if let Err(e) = drop_all_but(keep) {
        eprintln!("synack: could not drop capabilities after attaching ({e}); running with them");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_each_mode_keeps() {
        let bpf = map_ops_need_cap_bpf();
        let with = |mut v: Vec<Capability>| {
            if bpf {
                v.insert(0, Capability::CAP_BPF);
            }
            v
        };
        assert_eq!(needed(Some(AttachMode::Tcx), false, false), with(vec![]));
        assert_eq!(
            needed(Some(AttachMode::Netlink), false, false),
            with(vec![Capability::CAP_NET_ADMIN])
        );
        assert_eq!(
            needed(Some(AttachMode::Tcx), true, true),
            with(vec![Capability::CAP_NET_ADMIN, Capability::CAP_SYS_PTRACE])
        );
        assert_eq!(needed(None, true, true), [Capability::CAP_SYS_PTRACE]);
    }

    #[test]
    fn kernel_releases() {
        assert!(kernel_before("5.15.0-91-generic", (6, 0)));
        assert!(!kernel_before("6.18.2", (6, 0)));
        assert!(!kernel_before("6.0", (6, 0)));
        assert!(kernel_before("garbage", (6, 0)));
    }
}
