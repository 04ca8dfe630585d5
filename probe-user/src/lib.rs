//! synack's library: the main line runs from the bottom up.
//!
//! - [`model`]: the pure core, no I/O (fuzzed): addresses, TCP options, flows,
//!   ring-buffer events, payload sniffing, the timeline, the verdict, the
//!   record, the targets file.
//! - [`host`]: facts about this host (capabilities and kernel release,
//!   interfaces and routes, /proc owners, CPU counters, the clock).
//! - [`kernel`]: the eBPF side: loading, attaching, the clsact ledger, the
//!   shared event hub, the capabilities kept after loading.
//! - [`active`]: one request made and timed, with the kernel's timestamps or
//!   the socket's own (unprivileged mode); the probe and the monitor use it.
//! - the ways in, one folder each with its own loop: [`probe`], [`watch`],
//!   [`monitor`], and [`compare`] and [`report`] over recorded files (read
//!   by [`recfile`]); [`cli`] is their command line.
//! - [`output`]: human, JSON, metrics.
//!
//! Dependencies go one way: model and host import nothing else of the
//! crate; kernel imports them; active imports those; the ways in import
//! what they need and nothing imports them; output imports the model only.
//! docs/architecture.md is the map.

pub mod active;
pub mod cli;
pub mod compare;
pub mod host;
pub mod kernel;
pub mod model;
pub mod monitor;
pub mod output;
pub mod probe;
pub mod recfile;
pub mod report;
pub mod watch;
