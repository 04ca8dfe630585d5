//! The cgroup connect hooks: who calls connect() on a TCP socket (passive
//! mode's pid and comm).

use super::*;

#[inline(always)]
pub(crate) fn try_connect(ctx: &SockAddrContext) {
    // Only TCP: every DNS lookup connect()s a UDP socket, and those would
    // push TCP owners out of the LRU map.
    // SAFETY: valid context pointer for the whole program run.
    if unsafe { (*ctx.sock_addr).type_ } != SOCK_STREAM {
        return;
    }
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if cookie == 0 {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    let owner = Owner {
        pid: (id >> 32) as u32,
        tid: id as u32,
        // SAFETY: helper without preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    let _ = OWNERS.insert(cookie, owner, 0);
}
