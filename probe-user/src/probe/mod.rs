//! `synack URL...`: the active probe's loop. Each URL is requested
//! `--count` times (each time on a fresh connection, `--reuse` requests on
//! it), every record is printed as it comes, and the exit status says
//! whether any failed.

use crate::{
    active::prober::{self, Family, Options, Prober},
    cli::ProbeArgs,
    kernel::{bpf, privs},
    output,
};
use anyhow::{Context, Result};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use std::{io::Write, process::ExitCode};

fn parse_header(h: &str) -> Result<(HeaderName, HeaderValue)> {
    let (n, v) = h
        .split_once(':')
        .with_context(|| format!("header {h:?} must look like \"Name: value\""))?;
    let name = HeaderName::from_bytes(n.trim().as_bytes())
        .with_context(|| format!("{:?} is not a valid header name", n.trim()))?;
    let value = HeaderValue::from_str(v.trim())
        .with_context(|| format!("the value of header {:?} is not valid", n.trim()))?;
    Ok((name, value))
}

fn options(a: &ProbeArgs) -> Result<Options> {
    let method = a
        .method
        .as_deref()
        .map(|m| {
            Method::from_bytes(m.as_bytes()).with_context(|| format!("{m:?} is not an HTTP method"))
        })
        .transpose()?;
    let body = match a.data.as_deref() {
        Some(d) if d.starts_with('@') => {
            Some(Bytes::from(std::fs::read(&d[1..]).with_context(|| {
                format!("cannot read request body from {}", &d[1..])
            })?))
        }
        Some(d) => Some(Bytes::from(d.to_string())),
        None => None,
    };
    Ok(Options {
        method,
        headers: a
            .headers
            .iter()
            .map(|h| parse_header(h))
            .collect::<Result<_>>()?,
        body,
        max_time: a.max_time,
        follow: a.follow,
        max_redirs: a.max_redirs,
        reuse: a.reuse,
        resolve: a.resolve.clone(),
        family: if a.ipv4 {
            Family::V4
        } else if a.ipv6 {
            Family::V6
        } else {
            Family::Any
        },
        cacert: a.tls.cacert.clone(),
        insecure: a.tls.insecure,
        dump_events: a.dump_events,
        path_probe: a.path_probe,
    })
}

/// Every URL, `--count` times; Ok(1) when a request failed.
async fn requests(a: ProbeArgs) -> Result<ExitCode> {
    let opts = options(&a)?;
    let tls = prober::tls_config(opts.cacert.as_ref(), opts.insecure)
        .context("cannot set up TLS (check --cacert)")?;
    bpf::raise_memlock();
    let chosen = bpf::for_mode(a.mode.mode, &a.interfaces.interfaces)
        .map_err(bpf::Refusal)
        .context("cannot start the kernel side (--mode unprivileged needs no privileges)")?;
    let kernel = chosen.kernel;
    // Loaded and attached: what is left needs (almost) no privilege.
    let dropped = privs::drop_or_warn(&privs::needed(
        kernel.as_ref().map(|k| k.attach_mode),
        false,
        false,
    ));
    for l in chosen.notices.iter().chain(&dropped) {
        eprintln!("{l}");
    }
    let mut prober = Prober::new(kernel, tls, opts);

    let mut all = Vec::new();
    let mut ok = true;
    let stdout = std::io::stdout();
    for url in &a.urls {
        for attempt in 0..a.count {
            if attempt > 0 && !a.interval.is_zero() {
                tokio::time::sleep(a.interval).await;
            }
            let records = prober.run(url, attempt).await;
            for l in prober.take_dump() {
                eprintln!("{l}");
            }
            for r in records {
                let failed =
                    r.error.is_some() || (a.fail && r.http_status.is_some_and(|s| s >= 400));
                ok &= !failed;
                let text = if a.json {
                    output::json_line(&r) + "\n"
                } else {
                    output::human(&r) + "\n"
                };
                let mut out = stdout.lock();
                out.write_all(text.as_bytes())
                    .and_then(|_| out.flush())
                    .context("cannot write to stdout")?;
                all.push(r);
            }
        }
    }
    if !a.json
        && let Some(s) = output::summary(&all)
    {
        println!("{s}");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs the probe until it is done or a signal ends it (130 for SIGINT,
/// 143 for SIGTERM, as a shell would report).
pub async fn run(a: ProbeArgs) -> Result<ExitCode> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install a SIGTERM handler")?;
    // On SIGINT/SIGTERM the requests future is dropped, which drops the
    // Kernel and with it every link and program: nothing stays attached.
    tokio::select! {
        r = requests(a) => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("synack: interrupted, detached");
            Ok(ExitCode::from(130))
        }
        _ = term.recv() => {
            eprintln!("synack: terminated, detached");
            Ok(ExitCode::from(143))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        let (n, v) = parse_header("X-Test:  a b ").unwrap();
        assert_eq!(n.as_str(), "x-test");
        assert_eq!(v.to_str().unwrap(), "a b");
        assert!(parse_header("nocolon").is_err());
        assert!(parse_header("bad name: x").is_err());
    }
}
