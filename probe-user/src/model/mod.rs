//! The pure core: what synack knows, with no I/O. Everything here is
//! unit-tested without root or a kernel, and the parsers of untrusted bytes
//! are fuzzed (fuzz/).

pub mod compare;
pub mod events;
pub mod flows;
pub mod h2;
pub mod modules;
pub mod proxy;
pub mod record;
pub mod report;
pub mod sniff;
pub mod stats;
pub mod targets;
pub mod tcp;
pub mod timeline;
pub mod units;
pub mod verdict;
