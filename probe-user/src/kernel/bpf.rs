//! Loading and attaching the kernel side, and the user-space ends of its maps:
//! where synack's programs enter and leave the kernel.

use crate::{
    host::netif::{self, Interface},
    model::events::{self, DecodeError},
    model::record::Drops,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType,
        links::LinkOrder,
        tc::{self, SchedClassifierLink, TcAttachOptions},
    },
};
use probe_common::{
    CFG_LOCAL_ONLY, CFG_SNAPSHOT, CFG_TRACK_ALL_IN, CFG_TRACK_ALL_OUT, Event, FlowKey, FlowState,
    Owner, STAT_FLOW_INSERT_FAILED, STAT_PARSE_SKIPPED, STAT_RINGBUF_FULL,
};
use serde::Serialize;
use std::path::Path;
use thiserror::Error;

/// The eBPF object, embedded at build time by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe-ebpf.o"));

pub(crate) const PROG_EGRESS: &str = "synack_egress";
pub(crate) const PROG_INGRESS: &str = "synack_ingress";
/// The same classifiers for raw-IP devices (no link-layer header).
pub(crate) const PROG_EGRESS_RAW: &str = "synack_egress_raw";
pub(crate) const PROG_INGRESS_RAW: &str = "synack_ingress_raw";

/// The egress and ingress classifiers built for this interface's
/// link-layer header (the programs take its length as a constant).
fn programs_for(i: &Interface) -> [(&'static str, TcAttachType, &'static str); 2] {
    let (e, n) = if i.l2_len() == 0 {
        (PROG_EGRESS_RAW, PROG_INGRESS_RAW)
    } else {
        (PROG_EGRESS, PROG_INGRESS)
    };
    [
        (e, TcAttachType::Egress, "egress"),
        (n, TcAttachType::Ingress, "ingress"),
    ]
}
pub(crate) const PROG_CONNECT4: &str = "synack_connect4";
pub(crate) const PROG_CONNECT6: &str = "synack_connect6";

/// What the kernel side follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Only sockets synack registers (the active probe).
    Registered,
    /// Every connection this network namespace opens or accepts, with
    /// payload snapshots of each turn (`synack watch`).
    Everything,
}

#[derive(Debug, Error)]
pub enum KernelError {
    #[error(
        "this synack binary was built without its eBPF object; build it with `cargo xtask build`"
    )]
    NoObject,
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error(
        "synack's eBPF side needs Linux 5.8 or later (BPF ring buffer, CAP_BPF); this kernel is \
         {0}. --mode unprivileged works on any kernel (no SYN-ACK TTL or hops)"
    )]
    TooOld(String),
    #[error("the kernel refused program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching {name} to {iface} ({dir}) failed: {source}")]
    Attach {
        name: &'static str,
        iface: String,
        dir: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("listing network interfaces failed: {0}")]
    Interfaces(#[source] std::io::Error),
    #[error("no interface named {0} in this network namespace")]
    NoSuchInterface(String),
    #[error("no interface is up in this network namespace")]
    NoInterfaces,
}

impl KernelError {
    /// True when the cause is missing privileges (EPERM/EACCES somewhere in the chain).
    pub(crate) fn is_permission(&self) -> bool {
        // EACCES from BPF_PROG_LOAD is the verifier saying no, not privileges.
        errno_in_chain(self, &[libc::EPERM])
    }
}

/// A kernel error as the operator reads it: its text is `help`'s (the
/// error, and what to do about missing privileges), and its `source()` is
/// the `KernelError` itself, so the chain down to the kernel's errno stays
/// for the edge (main prints this text and not the chain below it, which
/// it already tells).
#[derive(Debug)]
pub struct Refusal(pub KernelError);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&help(&self.0))
    }
}

impl std::error::Error for Refusal {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The error, with what to do about missing privileges.
pub(crate) fn help(e: &KernelError) -> String {
    let refused = errno_in_chain(e, &[libc::EPERM, libc::EACCES]);
    match crate::host::caps::grant_hint() {
        // The verifier's log after a refusal for want of CAP_PERFMON (EACCES)
        // is noise to an operator; the missing capability is the news.
        Some(hint) if refused => format!("{}\n\n{hint}.", without_verifier_log(&e.to_string())),
        _ if e.is_permission() => format!(
            "{e}\n\nsynack loads eBPF programs and needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON \
             (or root). {}.",
            crate::host::caps::refused_with_caps_hint(crate::host::caps::refuser())
        ),
        _ => e.to_string(),
    }
}

fn without_verifier_log(s: &str) -> &str {
    s.split(". Verifier output:").next().unwrap_or(s)
}

/// True when an I/O error with one of these errnos is anywhere in the chain.
fn errno_in_chain(e: &(dyn std::error::Error + 'static), errnos: &[i32]) -> bool {
    let mut x = Some(e);
    while let Some(err) = x {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.raw_os_error().is_some_and(|n| errnos.contains(&n))
        {
            return true;
        }
        x = err.source();
    }
    false
}

/// Why the connect hooks are not attached (attribution then falls back to
/// /proc).
#[derive(Debug, Error)]
pub(crate) enum HookError {
    #[error("not needed")]
    NotAsked,
    #[error("no cgroup v2 hierarchy is mounted (see /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("{}: {source}", .path.display())]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("{name}: {source}")]
    NotCgroupProgram {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("loading {name}: {source}")]
    Load {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching {name} to {root}: {}", crate::model::record::error_chain(.source))]
    Attach {
        name: &'static str,
        root: String,
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// Attaches the connect4/connect6 hooks to the cgroup v2 root this process
/// sees; returns where.
fn attach_connect_hooks(ebpf: &mut Ebpf) -> Result<String, HookError> {
    let root = crate::host::procs::cgroup2_root().ok_or(HookError::NoCgroup2)?;
    let dir = std::fs::File::open(&root).map_err(|source| HookError::Open {
        path: root.clone(),
        source,
    })?;
    for name in [PROG_CONNECT4, PROG_CONNECT6] {
        let prog: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or(HookError::Missing(name))?
            .try_into()
            .map_err(|source| HookError::NotCgroupProgram { name, source })?;
        prog.load()
            .map_err(|source| HookError::Load { name, source })?;
        // A bpf_link (kernel >= 5.7): released by the kernel however synack
        // ends, and always attached as one of many, so other programs on the
        // cgroup keep running. The kernel refuses any mode flag on a cgroup
        // link (EINVAL), hence "Single", which sends none.
        prog.attach(&dir, CgroupAttachMode::Single)
            .map_err(|source| HookError::Attach {
                name,
                root: display(&root),
                source,
            })?;
    }
    Ok(display(&root))
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

/// How the classifiers were attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum AttachMode {
    /// tcx bpf_link (kernel >= 6.6): released by the kernel when synack exits,
    /// however it exits.
    Tcx,
    /// netlink clsact filter (older kernels): removed on a normal exit.
    Netlink,
}

/// The loaded programs, their links and maps. Dropping it detaches everything.
pub(crate) struct Kernel {
    // Field order matters: maps and links go before the Ebpf that owns the programs.
    ring: RingBuf<MapData>,
    registered: HashMap<MapData, u64, u8>,
    // The LRU hash map reads and writes like a plain hash map from user space.
    flows: HashMap<MapData, FlowKey, FlowState>,
    stats: PerCpuArray<MapData, u64>,
    config: Array<MapData, u32>,
    owners: HashMap<MapData, u64, Owner>,
    local_addrs: HashMap<MapData, [u8; 16], u8>,
    /// Per local port, the flows user space removed (`maybe_ours` in the
    /// kernel side).
    port_freed: Array<MapData, u32>,
    /// Attach to interfaces that come up later (no --interface was given).
    follow_new: bool,
    /// New interfaces that could not be attached: reported once, not retried.
    refused: std::collections::HashSet<u32>,
    pub interfaces: Vec<Interface>,
    pub attach_mode: AttachMode,
    /// Where the connect hooks are attached (Scope::Everything), or why not.
    pub connect_hooks: Result<String, HookError>,
    undecodable: u64,
    evicted: u64,
    /// Every classifier link, by interface: detached on drop (before the
    /// ledger of netlink filters is removed, and before the programs go).
    links: Links,
    ebpf: Ebpf,
}

/// The links this process attached, per interface index, and for netlink
/// filters their ledger (see `leftovers`): a filter outlives a killed
/// process, a tcx link does not.
#[derive(Default)]
struct Links {
    // Field order: links are detached before the ledger is removed.
    links: Vec<(u32, SchedClassifierLink)>,
    book: Option<crate::kernel::leftovers::Book>,
    /// The ledger could not be written (read-only /run, say): said once.
    warned: bool,
    /// What the operator should hear, not yet taken (`Kernel::take_notices`).
    notices: Vec<String>,
}

impl Links {
    fn add(&mut self, i: &Interface, ingress: bool, link: SchedClassifierLink, prog_id: u32) {
        // Only netlink links have a priority; tcx ones need no ledger.
        let filter = link
            .priority()
            .ok()
            .map(|priority| crate::kernel::leftovers::Filter {
                ifname: i.name.clone(),
                ifindex: i.index,
                ingress,
                priority,
                handle: link.handle().map(u32::from).unwrap_or(0),
                prog_id,
            });
        self.links.push((i.index, link));
        let Some(f) = filter else { return };
        let (priority, handle) = (f.priority, f.handle);
        let r = if f.priority == 0 {
            Err(std::io::Error::other("the kernel gave no priority"))
        } else {
            match &mut self.book {
                Some(b) => b.add(f),
                None => crate::kernel::leftovers::Book::new().and_then(|mut b| {
                    b.add(f)?;
                    self.book = Some(b);
                    Ok(())
                }),
            }
        };
        if let Err(e) = r
            && !self.warned
        {
            self.warned = true;
            let hint = format!(
                "tc filter del dev {} {} pref {} handle {:#x} bpf",
                i.name,
                if ingress { "ingress" } else { "egress" },
                priority,
                handle
            );
            self.notices.push(format!(
                "synack: cannot record the tc filters it attaches in {} ({e}): if synack is \
                 killed, they stay; remove each by hand, e.g. `{hint}`",
                crate::kernel::leftovers::dir().display()
            ));
        }
    }

    fn forget_interface(&mut self, ifindex: u32) {
        self.links.retain(|(i, _)| *i != ifindex);
        if let Some(b) = &mut self.book {
            let _ = b.remove_interface(ifindex);
        }
    }
}

/// Loads the classifiers `interfaces` need, each on its own thread. The
/// verifier's walk of a program is most of synack's start-up, runs in the
/// calling thread, and the programs are independent of each other, so on a
/// host with two or more CPUs start-up waits for the longest program, not
/// for their sum.
fn load_classifiers(ebpf: &mut Ebpf, interfaces: &[Interface]) -> Result<(), KernelError> {
    let mut wanted: Vec<&'static str> = interfaces
        .iter()
        .flat_map(|i| programs_for(i).map(|(name, _, _)| name))
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut progs = Vec::new();
    for (name, prog) in ebpf.programs_mut() {
        let Some(&name) = wanted.iter().find(|w| **w == name) else {
            continue;
        };
        progs.push((name, as_classifier(name, prog)?));
    }
    if let Some(missing) = wanted.iter().find(|w| !progs.iter().any(|(n, _)| n == *w)) {
        return Err(KernelError::Missing(missing));
    }
    std::thread::scope(|s| {
        let loads: Vec<_> = progs
            .into_iter()
            .map(|(name, prog)| s.spawn(move || load_classifier(name, prog)))
            .collect();
        // Every thread is joined before the first error is returned, so
        // no load is left running when this returns.
        let results: Vec<_> = loads.into_iter().map(|h| h.join()).collect();
        for r in results {
            match r {
                Ok(r) => r?,
                // A panic in a load is re-raised here, as it would have
                // been without the thread.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok(())
    })
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, KernelError> {
    as_classifier(
        name,
        ebpf.program_mut(name).ok_or(KernelError::Missing(name))?,
    )
}

fn as_classifier<'a>(
    name: &'static str,
    prog: &'a mut aya::programs::Program,
) -> Result<&'a mut SchedClassifier, KernelError> {
    prog.try_into().map_err(|source| KernelError::Program {
        name,
        source: Box::new(source),
    })
}

/// Hands the classifier to the verifier.
fn load_classifier(name: &'static str, prog: &mut SchedClassifier) -> Result<(), KernelError> {
    prog.load().map_err(|source| KernelError::Program {
        name,
        source: Box::new(source),
    })
}

/// Attaches both classifiers to one interface: tcx while `mode` says so
/// (switching `mode` to netlink for good when the kernel has no tcx), else a
/// clsact filter. On failure nothing of this interface stays attached.
fn attach_iface(
    ebpf: &mut Ebpf,
    i: &Interface,
    mode: &mut AttachMode,
    links: &mut Links,
) -> Result<(), KernelError> {
    let r = (|| {
        for (name, dir, dir_s) in programs_for(i) {
            let prog = classifier(ebpf, name)?;
            if prog.fd().is_err() {
                load_classifier(name, prog)?;
            }
            let attach_err = |source| KernelError::Attach {
                name,
                iface: i.name.clone(),
                dir: dir_s,
                source: Box::new(source),
            };
            let prog_id = prog.info().map(|p| p.id()).map_err(attach_err)?;
            let mut id = None;
            if *mode == AttachMode::Tcx {
                match prog.attach_with_options(
                    &i.name,
                    dir,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                ) {
                    Ok(l) => id = Some(l),
                    // What a kernel without tcx says to its attach type; any
                    // other error (no privilege, no interface, no descriptor
                    // left) is an error here, not a reason to change mode.
                    Err(e)
                        if errno_in_chain(
                            &e,
                            &[
                                libc::EINVAL,
                                libc::EOPNOTSUPP,
                                libc::ENOSYS,
                                524, /* ENOTSUPP */
                            ],
                        ) =>
                    {
                        *mode = AttachMode::Netlink
                    }
                    Err(e) => return Err(attach_err(e)),
                }
            }
            let id = match id {
                Some(id) => id,
                None => {
                    // EEXIST when the qdisc is already there is fine.
                    let _ = tc::qdisc_add_clsact(&i.name);
                    prog.attach_with_options(
                        &i.name,
                        dir,
                        TcAttachOptions::Netlink(tc::NlOptions::default()),
                    )
                    .map_err(attach_err)?
                }
            };
            // Held per interface rather than in the program, so that a gone
            // interface's links are let go, and netlink ones recorded.
            let link = prog.take_link(id).map_err(attach_err)?;
            links.add(i, dir == TcAttachType::Ingress, link, prog_id);
        }
        Ok(())
    })();
    if r.is_err() {
        links.forget_interface(i.index);
    }
    r
}

/// Interfaces that came and went since the last look (`Kernel::follow_interfaces`).
#[derive(Debug, Default)]
pub(crate) struct IfChanges {
    /// Attached interfaces that no longer exist; their links went with them.
    pub gone: Vec<Interface>,
    /// New interfaces that are up, now attached.
    pub added: Vec<Interface>,
    /// New interfaces synack could not attach to, and why (not retried).
    pub failed: Vec<(Interface, String)>,
}

impl IfChanges {
    /// One line for an operator per change, `who` first (e.g. "synack watch").
    pub(crate) fn report(&self, who: &str, now: &[Interface]) -> Vec<String> {
        let names: Vec<&str> = now.iter().map(|i| i.name.as_str()).collect();
        let still = if names.is_empty() {
            "no interface is left".to_string()
        } else {
            format!("attached to {}", names.join(", "))
        };
        let mut v = Vec::new();
        for i in &self.gone {
            v.push(format!(
                "{who}: interface {} (index {}) is gone; {still}",
                i.name, i.index
            ));
        }
        for i in &self.added {
            v.push(format!("{who}: interface {} came up; {still}", i.name));
        }
        for (i, e) in &self.failed {
            v.push(format!(
                "{who}: interface {} came up but cannot be attached ({e}); connections through it are not seen",
                i.name
            ));
        }
        v
    }
}

/// The named interfaces (--interface), or every interface that is up.
fn interfaces_to_attach(only: &[String]) -> Result<Vec<Interface>, KernelError> {
    let all = netif::list().map_err(KernelError::Interfaces)?;
    let interfaces: Vec<Interface> = if only.is_empty() {
        all.into_iter().filter(|i| i.up).collect()
    } else {
        only.iter()
            .map(|n| {
                all.iter()
                    .find(|i| &i.name == n)
                    .cloned()
                    .ok_or_else(|| KernelError::NoSuchInterface(n.clone()))
            })
            .collect::<Result<_, _>>()?
    };
    if interfaces.is_empty() {
        return Err(KernelError::NoInterfaces);
    }
    Ok(interfaces)
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let m = ebpf.take_map(name).ok_or(KernelError::Missing(name))?;
    T::try_from(m).map_err(|source| KernelError::Map {
        name,
        source: Box::new(source),
    })
}

impl Kernel {
    /// Loads the programs and attaches them on ingress and egress of the
    /// named interfaces, or of every interface that is up.
    pub(crate) fn load_and_attach(only: &[String]) -> Result<Self, KernelError> {
        Self::load(only, Scope::Registered)
    }

    /// Loads the programs and attaches them on ingress and egress of the
    /// named interfaces (or every interface that is up); with
    /// `Scope::Everything` also the cgroup connect hooks that tell which
    /// process opened each connection (best effort: see `connect_hooks`).
    pub(crate) fn load(only: &[String], scope: Scope) -> Result<Self, KernelError> {
        if OBJECT.is_empty() {
            return Err(KernelError::NoObject);
        }
        // The ring buffer (5.8) is the newest thing the programs need; older
        // kernels would refuse it with a bare EINVAL.
        if let Some(rel) = crate::host::caps::kernel_release()
            && crate::host::caps::kernel_before(&rel, (5, 8))
        {
            return Err(KernelError::TooOld(rel));
        }
        let interfaces = interfaces_to_attach(only)?;

        let mut ebpf = EbpfLoader::new()
            .load(OBJECT)
            .map_err(|e| KernelError::Load(Box::new(e)))?;
        // Only the classifier builds these interfaces need are loaded now
        // (an interface that comes later loads its own in `attach_iface`):
        // a host with only Ethernet-framed devices never verifies the
        // raw-IP builds.
        load_classifiers(&mut ebpf, &interfaces)?;
        // tcx links (>= 6.6) first: the kernel releases them whatever way
        // synack ends. Where tcx is missing, fall back to a clsact filter.
        // SYNACK_TC_ATTACH=netlink forces the fallback (its tests).
        let mut attach_mode = match std::env::var("SYNACK_TC_ATTACH").as_deref() {
            Ok("netlink") => AttachMode::Netlink,
            _ => AttachMode::Tcx,
        };
        let mut links = Links::default();
        for i in &interfaces {
            attach_iface(&mut ebpf, i, &mut attach_mode, &mut links)?;
        }
        // Attaching worked, so this process may detach filters too: remove
        // the ones a killed synack left behind (netlink mode).
        links
            .notices
            .extend(crate::kernel::leftovers::sweep(&crate::kernel::leftovers::dir()).report());

        let connect_hooks = if scope == Scope::Everything {
            attach_connect_hooks(&mut ebpf)
        } else {
            Err(HookError::NotAsked)
        };

        let mut k = Kernel {
            ring: take(&mut ebpf, "EVENTS")?,
            registered: take(&mut ebpf, "REGISTERED")?,
            flows: take(&mut ebpf, "FLOWS")?,
            stats: take(&mut ebpf, "STATS")?,
            config: take(&mut ebpf, "CONFIG")?,
            owners: take(&mut ebpf, "OWNERS")?,
            local_addrs: take(&mut ebpf, "LOCAL_ADDRS")?,
            port_freed: take(&mut ebpf, "PORT_FREED")?,
            // Only watch, which follows what the host does, attaches to
            // interfaces that come later; it keeps CAP_NET_ADMIN for that.
            follow_new: only.is_empty() && scope == Scope::Everything,
            refused: Default::default(),
            interfaces,
            attach_mode,
            connect_hooks,
            undecodable: 0,
            evicted: 0,
            links,
            ebpf,
        };
        if scope == Scope::Everything {
            k.refresh_local_addrs()?;
            k.set_config(CFG_TRACK_ALL_OUT | CFG_TRACK_ALL_IN | CFG_SNAPSHOT | CFG_LOCAL_ONLY)?;
        }
        Ok(k)
    }

    /// Follows interfaces coming and going while synack runs: forgets the
    /// ones that disappeared (the kernel removed their links and filters
    /// with them) and, for watch with no interface named (--interface), attaches to
    /// new ones that are up. An interface that fails to attach is reported once;
    /// the others go on either way.
    pub(crate) fn follow_interfaces(&mut self) -> Result<IfChanges, KernelError> {
        let all = netif::list().map_err(KernelError::Interfaces)?;
        let mut ch = IfChanges::default();
        // By index: a renamed interface keeps its links (the sweep, too,
        // finds filters by index).
        self.interfaces
            .retain_mut(|i| match all.iter().find(|a| a.index == i.index) {
                Some(a) => {
                    i.name.clone_from(&a.name);
                    true
                }
                None => {
                    ch.gone.push(i.clone());
                    false
                }
            });
        for i in &ch.gone {
            self.links.forget_interface(i.index);
        }
        if self.follow_new {
            for i in all.into_iter().filter(|a| a.up) {
                if self.interfaces.iter().any(|k| k.index == i.index)
                    || self.refused.contains(&i.index)
                {
                    continue;
                }
                match attach_iface(&mut self.ebpf, &i, &mut self.attach_mode, &mut self.links) {
                    Ok(()) => {
                        self.interfaces.push(i.clone());
                        ch.added.push(i);
                    }
                    Err(e) => {
                        self.refused.insert(i.index);
                        let why = crate::model::record::error_chain(&e);
                        ch.failed.push((i, why));
                    }
                }
            }
        }
        Ok(ch)
    }

    /// What the kernel side has to tell the operator since the last call
    /// (filters it could not record, leftovers it removed): the caller
    /// prints them, after loading and after each `follow_interfaces`.
    pub(crate) fn take_notices(&mut self) -> Vec<String> {
        std::mem::take(&mut self.links.notices)
    }

    /// True when `follow_interfaces` attaches to new interfaces.
    pub(crate) fn follows_new_interfaces(&self) -> bool {
        self.follow_new
    }

    /// Writes this namespace's addresses to `LOCAL_ADDRS` (and removes the
    /// ones that went away); call again when addresses may have changed.
    pub(crate) fn refresh_local_addrs(&mut self) -> Result<(), KernelError> {
        let now: Vec<[u8; 16]> = netif::local_addrs()
            .map_err(KernelError::Interfaces)?
            .into_iter()
            .map(|ip| crate::model::flows::addr_bytes(ip).0)
            .collect();
        let old: Vec<[u8; 16]> = self.local_addrs.keys().filter_map(Result::ok).collect();
        for a in old.iter().filter(|a| !now.contains(a)) {
            let _ = self.local_addrs.remove(a);
        }
        for a in now.iter().take(1024) {
            self.local_addrs
                .insert(a, 1, 0)
                .map_err(|source| KernelError::Map {
                    name: "LOCAL_ADDRS",
                    source: Box::new(source),
                })?;
        }
        Ok(())
    }

    /// The kernel's state of a connection, while it has one.
    pub(crate) fn flow_state(&self, key: &FlowKey) -> Option<FlowState> {
        self.flows.get(key, 0).ok()
    }

    /// Who called connect() on the socket with this cookie, if the connect
    /// hooks saw it.
    pub(crate) fn owner(&self, cookie: u64) -> Option<Owner> {
        self.owners.get(&cookie, 0).ok()
    }

    /// Follows the connection of the socket with this cookie from its SYN on.
    pub(crate) fn register(&mut self, cookie: u64) -> Result<(), KernelError> {
        self.registered
            .insert(cookie, 1, 0)
            .map_err(|source| KernelError::Map {
                name: "REGISTERED",
                source: Box::new(source),
            })
    }

    /// Stops following a connection and frees its kernel state.
    pub(crate) fn forget(&mut self, cookie: u64, key: Option<&FlowKey>) {
        let _ = self.registered.remove(&cookie);
        if let Some(k) = key
            && self.flows.remove(k).is_ok()
        {
            // Counted so the kernel's per-port test (flows added minus
            // flows removed) drops back; only this thread writes the map.
            let port = u32::from(k.local_port);
            let freed = self.port_freed.get(&port, 0).unwrap_or(0);
            let _ = self.port_freed.set(port, freed.wrapping_add(1), 0);
        }
    }

    /// Sets `CONFIG[0]` (`CFG_*` bits).
    pub(crate) fn set_config(&mut self, bits: u32) -> Result<(), KernelError> {
        self.config
            .set(0, bits, 0)
            .map_err(|source| KernelError::Map {
                name: "CONFIG",
                source: Box::new(source),
            })
    }

    /// True while the kernel still holds state for this connection.
    pub(crate) fn has_flow(&self, key: &FlowKey) -> bool {
        self.flows.get(key, 0).is_ok()
    }

    /// Records that a live connection's kernel state went missing.
    pub(crate) fn note_evicted(&mut self) {
        self.evicted += 1;
    }

    /// Takes every event the kernel has submitted so far, each with its best
    /// CLOCK_MONOTONIC time in `ts_ns` (see `events::best_ts`).
    pub(crate) fn drain(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        self.drain_with(|ev, _| out.push(*ev));
        out
    }

    /// Hands every event the kernel has submitted so far to `f`, with the
    /// payload snapshot that came with it (empty for most events); `ts_ns`
    /// is the best CLOCK_MONOTONIC time as in `drain`. Returns the count.
    pub(crate) fn drain_with(&mut self, mut f: impl FnMut(&Event, &[u8])) -> usize {
        let off = events::mono_minus_real();
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            match events::decode(&item) {
                Ok((mut ev, snap)) => {
                    ev.ts_ns = events::best_ts(&ev, off);
                    f(&ev, snap);
                    n += 1;
                }
                Err(
                    DecodeError::Size { .. } | DecodeError::Kind(_) | DecodeError::SnapLen { .. },
                ) => self.undecodable += 1,
            }
        }
        n
    }

    /// The ring buffer's file descriptor, to wait on with poll/epoll.
    pub(crate) fn ring_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.ring.as_fd()
    }

    /// The loss counters, summed over CPUs.
    pub(crate) fn drops(&self) -> Drops {
        let sum = |i: u32| -> u64 { self.stats.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0) };
        Drops {
            ringbuf_full: sum(STAT_RINGBUF_FULL),
            flow_insert_failed: sum(STAT_FLOW_INSERT_FAILED),
            flows_evicted: self.evicted,
            fragments_skipped: sum(STAT_PARSE_SKIPPED),
            undecodable: self.undecodable,
        }
    }
}

/// The kernel shared by probers that run at once (`synack monitor`): events
/// are drained into per-socket buffers so one prober never consumes
/// another's. Only registered sockets get a buffer, so memory is bounded by
/// the connections in flight.
pub(crate) struct Hub {
    kernel: Kernel,
    pending: std::collections::HashMap<u64, Vec<Event>>,
}

/// A `Hub` behind a mutex that is never held across an await.
pub(crate) type SharedKernel = std::sync::Arc<std::sync::Mutex<Hub>>;

impl Hub {
    pub(crate) fn shared(kernel: Kernel) -> SharedKernel {
        std::sync::Arc::new(std::sync::Mutex::new(Hub {
            kernel,
            pending: std::collections::HashMap::new(),
        }))
    }

    /// `Kernel::follow_interfaces` on the shared kernel.
    pub(crate) fn follow_interfaces(&mut self) -> Result<IfChanges, KernelError> {
        self.kernel.follow_interfaces()
    }

    pub(crate) fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// Follows the connection of this socket; its events are kept for `take`.
    pub(crate) fn register(&mut self, cookie: u64) -> Result<(), KernelError> {
        self.kernel.register(cookie)?;
        self.pending.insert(cookie, Vec::new());
        Ok(())
    }

    /// Moves the ring buffer's events into the per-socket buffers.
    pub(crate) fn pump(&mut self) {
        for ev in self.kernel.drain() {
            if let Some(v) = self.pending.get_mut(&ev.cookie) {
                v.push(ev);
            }
        }
    }

    /// Every event of this socket so far; stops buffering for it.
    pub(crate) fn take(&mut self, cookie: u64) -> Vec<Event> {
        self.pump();
        self.pending.remove(&cookie).unwrap_or_default()
    }

    pub(crate) fn has_flow(&self, key: &FlowKey) -> bool {
        self.kernel.has_flow(key)
    }

    pub(crate) fn note_evicted(&mut self) {
        self.kernel.note_evicted();
    }

    pub(crate) fn forget(&mut self, cookie: u64, key: Option<&FlowKey>) {
        self.pending.remove(&cookie);
        self.kernel.forget(cookie, key);
    }

    pub(crate) fn drops(&self) -> Drops {
        self.kernel.drops()
    }
}

/// Lifts RLIMIT_MEMLOCK before loading.
pub(crate) fn raise_memlock() {
    // Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones ignore it.
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain setrlimit with a valid struct; failure only matters on old kernels.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
}

/// How the active probe times its requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// eBPF when it can be loaded, else unprivileged (and a line on stderr why).
    Auto,
    /// eBPF only: fail when it cannot be loaded.
    Ebpf,
    /// The socket's own kernel timestamps (SO_TIMESTAMPING, TCP_INFO): no
    /// privileges needed, less to see.
    Unprivileged,
}

/// The kernel side `for_mode` chose, and what the operator should hear.
pub(crate) struct Chosen {
    /// None: unprivileged mode.
    pub kernel: Option<Kernel>,
    /// Why eBPF is not used (--mode auto falling back), and the kernel
    /// side's own notices: lines to print before the first request.
    pub notices: Vec<String>,
}

/// The kernel side for `mode`.
pub(crate) fn for_mode(mode: Mode, interfaces: &[String]) -> Result<Chosen, KernelError> {
    let loaded = |mut k: Kernel| {
        let notices = k.take_notices();
        Chosen {
            kernel: Some(k),
            notices,
        }
    };
    match mode {
        Mode::Unprivileged => Ok(Chosen {
            kernel: None,
            notices: Vec::new(),
        }),
        Mode::Ebpf => Kernel::load_and_attach(interfaces).map(loaded),
        Mode::Auto => match Kernel::load_and_attach(interfaces) {
            Ok(k) => Ok(loaded(k)),
            // Only "not allowed" or "not there" falls back; anything else
            // (a verifier refusal, a missing object) is a fault to report,
            // not a reason to see less.
            Err(e)
                if !matches!(e, KernelError::TooOld(_))
                    && !errno_in_chain(
                        &e,
                        &[libc::EPERM, libc::EACCES, libc::ENOSYS, libc::EOPNOTSUPP],
                    ) =>
            {
                Err(e)
            }
            Err(e) => {
                let missing = crate::host::caps::missing_for_ebpf();
                let enable = if matches!(e, KernelError::TooOld(_)) {
                    String::new()
                } else if !errno_in_chain(&e, &[libc::EPERM, libc::EACCES]) {
                    " This kernel (or sandbox) offers no bpf(2), or not what synack needs: no \
                     privilege would change that."
                        .into()
                } else if missing.is_empty() {
                    // The capabilities are there: saying they "would enable
                    // eBPF" would send the operator after what they have.
                    match crate::host::caps::refuser() {
                        crate::host::caps::Refuser::Seccomp => {
                            " A seccomp filter refuses bpf(2) although this process has \
                             CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON: --mode ebpf says how to \
                             allow it."
                                .into()
                        }
                        _ => " This process has CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, so \
                              something else refuses (an LSM, or unprivileged BPF disabled in \
                              a user namespace): --mode ebpf says more."
                            .into(),
                    }
                } else if crate::host::caps::seccomp_filtered() == Some(true) {
                    // Without CAP_BPF the kernel refuses before a seccomp
                    // filter's verdict shows, so both may be in the way.
                    format!(
                        " {} would enable eBPF (a seccomp filter is on this process too: where \
                         it refuses bpf(2), as some container runtimes' defaults do without \
                         CAP_SYS_ADMIN, a profile that allows bpf and perf_event_open is needed \
                         as well, such as /usr/share/synack/seccomp.json in synack's image).",
                        missing.join(" and ")
                    )
                } else {
                    format!(" {} would enable eBPF.", missing.join(" and "))
                };
                let why = format!(
                    "synack: eBPF not used ({}); timing with the sockets' own kernel timestamps \
                     instead (mode unprivileged: no SYN-ACK TTL or hops, no incoming \
                     retransmissions).{enable}",
                    without_verifier_log(&crate::model::record::error_chain(&e)),
                );
                Ok(Chosen {
                    kernel: None,
                    notices: vec![why],
                })
            }
        },
    }
}
