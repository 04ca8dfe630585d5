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

fn options(a: &ProbeArgs, sink: Option<prober::BodySink>) -> Result<Options> {
    let method = a
        .method
        .as_deref()
        .map(|m| {
            Method::from_bytes(m.as_bytes()).with_context(|| format!("{m:?} is not an HTTP method"))
        })
        .transpose()?
        .or_else(|| a.curl.head.then_some(Method::HEAD));
    let mut headers: Vec<(HeaderName, HeaderValue)> = a
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<Result<_>>()?;
    if let Some(ua) = &a.curl.user_agent {
        let v = HeaderValue::from_str(ua)
            .with_context(|| format!("--user-agent {ua:?} is not a valid header value"))?;
        headers.retain(|(n, _)| n != http::header::USER_AGENT);
        headers.push((http::header::USER_AGENT, v));
    }
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
        headers,
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
        include_head: a.curl.include || a.curl.head,
        sink,
        proxy: crate::model::proxy::ProxyConfig {
            proxy: a.proxy.proxy.clone(),
            noproxy: a.proxy.noproxy.clone(),
            proxy_user: a.proxy.proxy_user.clone(),
            env: crate::model::proxy::ProxyEnv::read(|k| std::env::var(k).ok()),
        },
        http: if a.http.http11 {
            prober::HttpVersion::Http11
        } else if a.http.http2_prior_knowledge {
            prober::HttpVersion::PriorKnowledge
        } else {
            prober::HttpVersion::Auto
        },
    })
}

/// What curl's output mode prints for a run: per transfer the -w text,
/// errors as curl words them, and the exit status curl would give.
struct CurlMode {
    format: Option<String>,
    silent: bool,
    show_error: bool,
    verbose: bool,
    fail: bool,
    /// The last failed transfer's curl exit code (0: none failed).
    exit: u8,
}

impl CurlMode {
    /// Prints what curl prints after a transfer (the redirect chain
    /// `hops`, final last).
    fn transfer(&mut self, hops: &[crate::model::record::Record]) -> Result<()> {
        let Some(last) = hops.last() else {
            return Ok(());
        };
        let code = output::writeout::exit_code(last, self.fail);
        if code != 0 {
            self.exit = code;
            if !self.silent || self.show_error {
                let msg = match &last.error {
                    Some(e) => e.message.clone(),
                    None => format!(
                        "The requested URL returned error: {}",
                        last.http_status.unwrap_or(0)
                    ),
                };
                eprintln!("synack: ({code}) {msg}");
            }
        }
        if let Some(f) = &self.format {
            let t = output::writeout::Transfer {
                hops,
                exit_code: code,
            };
            let (pieces, warnings) = output::writeout::expand(f, &t);
            for w in warnings {
                eprintln!("{w}");
            }
            for (stream, text) in pieces {
                let r = match stream {
                    output::writeout::Stream::Stdout => {
                        let mut o = std::io::stdout().lock();
                        o.write_all(text.as_bytes()).and_then(|_| o.flush())
                    }
                    output::writeout::Stream::Stderr => {
                        std::io::stderr().lock().write_all(text.as_bytes())
                    }
                };
                r.context("cannot write --write-out's output")?;
            }
        }
        Ok(())
    }
}

/// Where the bodies go in curl's output mode: stdout, or -o FILE (created
/// or truncated, as curl does).
fn body_sink(a: &ProbeArgs) -> Result<Option<prober::BodySink>> {
    if !a.curl.active() {
        return Ok(None);
    }
    Ok(Some(match &a.curl.output {
        Some(p) if p.as_os_str() == "-" => prober::BodySink::new(Box::new(std::io::stdout())),
        Some(p) => prober::BodySink::new(Box::new(std::io::BufWriter::new(
            std::fs::File::create(p)
                .with_context(|| format!("cannot write to -o {}", p.display()))?,
        ))),
        None => prober::BodySink::new(Box::new(std::io::stdout())),
    }))
}

/// Splits a URL's records into curl's transfers: a request and the
/// redirects -L followed from it (a record one hop further than the one
/// before it continues that one's chain).
fn transfers(records: &[crate::model::record::Record]) -> Vec<&[crate::model::record::Record]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=records.len() {
        // The next hop of a redirect chain (on the same connection or a
        // new one, even one opened because the server closed the last)
        // goes on with the transfer; a repeat of a hop (--reuse) or hop 0
        // starts the next.
        let continues = records
            .get(i)
            .is_some_and(|r| r.redirect_hop == records[i - 1].redirect_hop + 1);
        if !continues {
            out.push(&records[start..i]);
            start = i;
        }
    }
    out
}

/// Every URL, `--count` times; Ok(1) when a request failed.
async fn requests(a: ProbeArgs) -> Result<ExitCode> {
    let curl_mode = a.curl.active();
    let sink = body_sink(&a)?;
    let opts = options(&a, sink.clone())?;
    let format = a
        .curl
        .write_out
        .as_deref()
        .map(|f| {
            output::writeout::load_format(f).with_context(|| format!("cannot read --write-out {f}"))
        })
        .transpose()?;
    let mut curl = CurlMode {
        format,
        silent: a.curl.silent,
        show_error: a.curl.show_error,
        verbose: a.curl.verbose,
        fail: a.fail,
        exit: 0,
    };
    // curl's -s keeps stderr for errors (-S) only: synack's notices go too.
    let quiet = curl_mode && a.curl.silent;
    // Kept to the end: see hold_rx_timestamps.
    let _rx_stamps = prober::hold_rx_timestamps();
    let tls = prober::tls_config(opts.cacert.as_ref(), opts.insecure, opts.http)
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
        if !quiet {
            eprintln!("{l}");
        }
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
            if curl_mode {
                if let Some(e) = sink.as_ref().and_then(prober::BodySink::finish) {
                    // curl's exit code 23: a write error; the run stops.
                    if !quiet || a.curl.show_error {
                        eprintln!("synack: (23) Failure writing output to destination: {e}");
                    }
                    return Ok(ExitCode::from(23));
                }
                for t in transfers(&records) {
                    curl.transfer(t)?;
                }
                if curl.verbose {
                    for r in &records {
                        if a.json {
                            eprintln!("{}", output::json_line(r));
                        } else {
                            eprintln!("{}", output::human(r));
                        }
                    }
                }
                all.extend(records);
                continue;
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
    if curl_mode {
        if curl.verbose
            && !a.json
            && let Some(s) = output::summary(&all)
        {
            eprintln!("{s}");
        }
        return Ok(ExitCode::from(curl.exit));
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
    fn transfers_are_curls() {
        use crate::model::record::Record;
        let r = |hop: u32, index: u32, reconnect: bool| {
            let mut r = Record::new("http://h/", "GET", "ebpf");
            r.redirect_hop = hop;
            r.request_index = index;
            r.reconnect_reason = reconnect.then(|| "closed".to_string());
            r
        };
        let lens = |v: &[Record]| transfers(v).iter().map(|t| t.len()).collect::<Vec<_>>();
        assert_eq!(lens(&[r(0, 0, false), r(1, 0, false)]), vec![2]);
        assert_eq!(lens(&[r(0, 0, false), r(0, 1, false)]), vec![1, 1]);
        assert_eq!(
            lens(&[r(0, 0, false), r(1, 0, false), r(1, 0, true)]),
            vec![2, 1]
        );
        assert_eq!(
            lens(&[r(0, 0, false), r(0, 0, true), r(1, 0, false)]),
            vec![1, 2]
        );
        // A same-origin redirect followed on the connection (index 1).
        assert_eq!(lens(&[r(0, 0, false), r(1, 1, false)]), vec![2]);
        // --reuse 2 -L: each request of hop 0 is a transfer, the last one
        // goes on into hop 1's first; hop 1's second is one of its own.
        assert_eq!(
            lens(&[
                r(0, 0, false),
                r(0, 1, false),
                r(1, 2, false),
                r(1, 3, false)
            ]),
            vec![1, 2, 1]
        );
        // The server closed as the redirect's request went out: the hop
        // went on on a new connection, still the same transfer.
        assert_eq!(lens(&[r(0, 0, false), r(1, 0, true)]), vec![2]);
        assert!(transfers(&[]).is_empty());
    }

    #[test]
    fn headers() {
        let (n, v) = parse_header("X-Test:  a b ").unwrap();
        assert_eq!(n.as_str(), "x-test");
        assert_eq!(v.to_str().unwrap(), "a b");
        assert!(parse_header("nocolon").is_err());
        assert!(parse_header("bad name: x").is_err());
    }
}
