//! The eBPF side: loading the programs (with a typed error and what to do
//! about it), attaching them (tcx, or clsact with a ledger that a later run
//! cleans up), the shared event hub, and the capabilities kept afterwards.

pub mod bpf;
pub mod leftovers;
pub mod privs;
