//! Least privilege: once the kernel side is loaded and attached, synack
//! gives up every capability it no longer needs, so the long-running part
//! (requests, parsing of untrusted bytes, the metrics endpoint) runs with
//! as little as possible. Map reads and writes through the descriptors it
//! holds need no capability; detaching tcx and cgroup links is closing them.

use crate::{host::caps::map_ops_need_cap_bpf, kernel::bpf::AttachMode};
use caps::{CapSet, Capability, CapsHashSet};

/// What is still needed after loading, and why.
/// `follow_new`: the kernel side attaches to interfaces that come up later
/// (watch without -i), which takes CAP_NET_ADMIN.
pub(crate) fn needed(attach: Option<AttachMode>, watch: bool, follow_new: bool) -> Vec<Capability> {
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

/// Keeps only `keep` in the permitted and effective sets (the inheritable
/// and ambient sets are cleared), for this thread and every thread it
/// starts from now on. Returns what was dropped.
pub(crate) fn drop_all_but(
    keep: &[Capability],
) -> Result<Vec<Capability>, caps::errors::CapsError> {
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

/// `drop_all_but`, with a warning for the operator instead of an error:
/// running with more privileges than needed is worse, not broken.
#[must_use = "the warning is for the operator: print it"]
pub(crate) fn drop_or_warn(keep: &[Capability]) -> Option<String> {
    drop_all_but(keep).err().map(|e| {
        format!("synack: could not drop capabilities after attaching ({e}); running with them")
    })
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
}
