//! `synack`: where the time of an HTTP request goes. main parses the
//! command line and hands it to the command; each command runs itself
//! (probe/, watch/, monitor/), and this is the one place errors become exit
//! statuses.

use clap::Parser;
use std::process::ExitCode;
use synack::{
    cli::{Cli, Cmd},
    compare, monitor, probe, report, watch,
};

/// 0 done, 1 a request (or every watched interface) failed, 2 could not
/// start or run; a signal's own status comes from the command.
fn exit_status(who: &str, r: anyhow::Result<ExitCode>) -> ExitCode {
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{who}: {}", operator_text(&e));
            if e.is::<watch::InterfacesGone>() {
                ExitCode::from(1)
            } else {
                ExitCode::from(2)
            }
        }
    }
}

/// The error and its causes joined by ": " (as anyhow's `{:#}`), down to a
/// kernel refusal, whose text already tells the causes below it.
fn operator_text(e: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in e.chain() {
        parts.push(cause.to_string());
        if cause.is::<synack::kernel::bpf::Refusal>() {
            break;
        }
    }
    parts.join(": ")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("synack: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.cmd {
        Some(Cmd::Monitor(m)) => exit_status("synack monitor", rt.block_on(monitor::command(m))),
        Some(Cmd::Watch(w)) => exit_status("synack watch", rt.block_on(watch::command(w))),
        Some(Cmd::Compare(c)) => exit_status("synack compare", compare::command(&c)),
        Some(Cmd::Report(r)) => exit_status("synack report", report::command(&r)),
        None => exit_status("synack", rt.block_on(probe::run(cli.probe))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;
    use synack::kernel::bpf::{KernelError, Refusal};

    #[test]
    fn a_kernel_refusal_is_told_once_and_keeps_its_source() {
        let r: anyhow::Result<()> =
            Err(Refusal(KernelError::Missing("EVENTS"))).context("cannot start the kernel side");
        let e = r.unwrap_err();
        assert_eq!(
            operator_text(&e),
            "cannot start the kernel side: the eBPF object has no EVENTS"
        );
        // The typed error is still there for whoever handles it.
        assert!(e.chain().any(|c| matches!(
            c.downcast_ref::<KernelError>(),
            Some(KernelError::Missing(_))
        )));
        // Other errors print their whole chain, as anyhow's {:#} does.
        let io: anyhow::Result<()> =
            Err(std::io::Error::other("disk on fire")).context("cannot write");
        let io = io.unwrap_err();
        assert_eq!(operator_text(&io), format!("{io:#}"));
    }
}
