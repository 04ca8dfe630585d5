//! Facts about this host, read from the kernel's interfaces: capabilities
//! and the kernel release, interfaces and routes (netlink), the owners of
//! sockets (/proc), CPU counters and the clock. Nothing here imports the
//! rest of the crate.

pub mod caps;
pub mod clock;
pub mod cpustat;
pub mod netif;
pub mod procs;
