//! `synack`: where the time of an HTTP request goes. main parses the
//! command line and hands it to the command; each command runs itself
//! (probe/, watch/, monitor/), and this is the one place errors become exit
//! statuses.

use clap::Parser;
use std::process::ExitCode;
use synack::{
    cli::{Cli, Cmd},
    monitor, probe, watch,
};

/// 0 done, 1 a request (or every watched interface) failed, 2 could not
/// start or run; a signal's own status comes from the command.
fn exit_status(who: &str, r: anyhow::Result<ExitCode>) -> ExitCode {
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{who}: {e:#}");
            if e.is::<watch::InterfacesGone>() {
                ExitCode::from(1)
            } else {
                ExitCode::from(2)
            }
        }
    }
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
        None => exit_status("synack", rt.block_on(probe::run(cli.probe))),
    }
}
