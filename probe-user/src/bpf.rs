//! Loading and attaching the kernel side, and the user-space ends of its maps:
//! where synack's programs enter and leave the kernel.

use crate::{
    events::{self, DecodeError},
    netif::{self, Interface},
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        SchedClassifier, TcAttachType,
        links::LinkOrder,
        tc::{self, TcAttachOptions},
    },
};
use probe_common::{
    Event, FlowKey, FlowState, STAT_FLOW_INSERT_FAILED, STAT_PARSE_SKIPPED, STAT_RINGBUF_FULL,
};
use serde::Serialize;
use thiserror::Error;

/// The eBPF object, embedded at build time by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe-ebpf.o"));

pub const PROG_EGRESS: &str = "synack_egress";
pub const PROG_INGRESS: &str = "synack_ingress";

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
    pub fn is_permission(&self) -> bool {
        // EACCES from BPF_PROG_LOAD is the verifier saying no, not privileges.
        errno_in_chain(self, &[libc::EPERM])
    }
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

/// Loss counters: every way an event or a flow can go missing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Drops {
    /// Events lost because the ring buffer was full.
    pub ringbuf_full: u64,
    /// Connections not followed because the flow table was full.
    pub flow_insert_failed: u64,
    /// Tracked connections whose kernel state was evicted from the LRU table.
    pub flows_evicted: u64,
    /// IP fragments the classifiers could not read a TCP header from (not
    /// necessarily ours; informational, not counted as loss).
    pub fragments_skipped: u64,
    /// Ring buffer records user space could not decode.
    pub undecodable: u64,
}

impl Drops {
    pub fn total(&self) -> u64 {
        self.ringbuf_full + self.flow_insert_failed + self.flows_evicted + self.undecodable
    }
}

/// How the classifiers were attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// tcx bpf_link (kernel >= 6.6): released by the kernel when synack exits,
    /// however it exits.
    Tcx,
    /// netlink clsact filter (older kernels): removed on a normal exit.
    Netlink,
}

/// The loaded programs, their links and maps. Dropping it detaches everything.
pub struct Kernel {
    // Field order matters: maps and links go before the Ebpf that owns the programs.
    ring: RingBuf<MapData>,
    registered: HashMap<MapData, u64, u8>,
    // The LRU hash map reads and writes like a plain hash map from user space.
    flows: HashMap<MapData, FlowKey, FlowState>,
    stats: PerCpuArray<MapData, u64>,
    config: Array<MapData, u32>,
    pub interfaces: Vec<Interface>,
    pub attach_mode: AttachMode,
    undecodable: u64,
    evicted: u64,
    _ebpf: Ebpf,
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
    pub fn load_and_attach(only: &[String]) -> Result<Self, KernelError> {
        if OBJECT.is_empty() {
            return Err(KernelError::NoObject);
        }
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

        let mut ebpf = EbpfLoader::new()
            .load(OBJECT)
            .map_err(|e| KernelError::Load(Box::new(e)))?;
        let mut l2: HashMap<MapData, u32, u32> = take(&mut ebpf, "L2_LEN")?;
        for i in &interfaces {
            l2.insert(i.index, i.l2_len(), 0)
                .map_err(|source| KernelError::Map {
                    name: "L2_LEN",
                    source: Box::new(source),
                })?;
        }

        // tcx links (>= 6.6) first: the kernel releases them whatever way
        // synack ends. Where tcx is missing, fall back to a clsact filter.
        let mut attach_mode = AttachMode::Tcx;
        for (name, dir) in [
            (PROG_EGRESS, TcAttachType::Egress),
            (PROG_INGRESS, TcAttachType::Ingress),
        ] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(KernelError::Missing(name))?
                .try_into()
                .map_err(|source| KernelError::Program {
                    name,
                    source: Box::new(source),
                })?;
            prog.load().map_err(|source| KernelError::Program {
                name,
                source: Box::new(source),
            })?;
            let dir_s = if dir == TcAttachType::Egress {
                "egress"
            } else {
                "ingress"
            };
            for i in &interfaces {
                let mut res = Err(None);
                if attach_mode == AttachMode::Tcx {
                    res = prog
                        .attach_with_options(
                            &i.name,
                            dir,
                            TcAttachOptions::TcxOrder(LinkOrder::default()),
                        )
                        .map_err(Some);
                    if let Err(Some(e)) = &res
                        && !errno_in_chain(e, &[libc::EPERM, libc::EACCES])
                    {
                        attach_mode = AttachMode::Netlink;
                    }
                }
                if attach_mode == AttachMode::Netlink {
                    // EEXIST when the qdisc is already there is fine.
                    let _ = tc::qdisc_add_clsact(&i.name);
                    res = prog
                        .attach_with_options(
                            &i.name,
                            dir,
                            TcAttachOptions::Netlink(tc::NlOptions::default()),
                        )
                        .map_err(Some);
                }
                if let Err(Some(source)) = res {
                    return Err(KernelError::Attach {
                        name,
                        iface: i.name.clone(),
                        dir: dir_s,
                        source: Box::new(source),
                    });
                }
            }
        }

        Ok(Kernel {
            ring: take(&mut ebpf, "EVENTS")?,
            registered: take(&mut ebpf, "REGISTERED")?,
            flows: take(&mut ebpf, "FLOWS")?,
            stats: take(&mut ebpf, "STATS")?,
            config: take(&mut ebpf, "CONFIG")?,
            interfaces,
            attach_mode,
            undecodable: 0,
            evicted: 0,
            _ebpf: ebpf,
        })
    }

    /// Follows the connection of the socket with this cookie from its SYN on.
    pub fn register(&mut self, cookie: u64) -> Result<(), KernelError> {
        self.registered
            .insert(cookie, 1, 0)
            .map_err(|source| KernelError::Map {
                name: "REGISTERED",
                source: Box::new(source),
            })
    }

    /// Stops following a connection and frees its kernel state.
    pub fn forget(&mut self, cookie: u64, key: Option<&FlowKey>) {
        let _ = self.registered.remove(&cookie);
        if let Some(k) = key {
            let _ = self.flows.remove(k);
        }
    }

    /// Sets `CONFIG[0]` (`CFG_*` bits).
    pub fn set_config(&mut self, bits: u32) -> Result<(), KernelError> {
        self.config
            .set(0, bits, 0)
            .map_err(|source| KernelError::Map {
                name: "CONFIG",
                source: Box::new(source),
            })
    }

    /// True while the kernel still holds state for this connection.
    pub fn has_flow(&self, key: &FlowKey) -> bool {
        self.flows.get(key, 0).is_ok()
    }

    /// Records that a live connection's kernel state went missing.
    pub fn note_evicted(&mut self) {
        self.evicted += 1;
    }

    /// Takes every event the kernel has submitted so far, each with its best
    /// CLOCK_MONOTONIC time in `ts_ns` (see `events::best_ts`).
    pub fn drain(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        let off = events::mono_minus_real();
        while let Some(item) = self.ring.next() {
            match events::decode(&item) {
                Ok(mut ev) => {
                    ev.ts_ns = events::best_ts(&ev, off);
                    out.push(ev)
                }
                Err(DecodeError::Size { .. } | DecodeError::Kind(_)) => self.undecodable += 1,
            }
        }
        out
    }

    /// The loss counters, summed over CPUs.
    pub fn drops(&self) -> Drops {
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
