//! The test and lab origin: HTTP and HTTPS on the same code path, with a
//! think time chosen per request (`/delay/30` answers after 30 ms).
//!
//! It writes each response in one write with TCP_NODELAY: an origin that
//! writes headers and body separately stalls ~40 ms on reused connections
//! (Nagle against delayed ACK) and would blur every measurement.

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};
use tokio::net::TcpListener;

/// A small origin for synack's tests and lab.
#[derive(Parser)]
struct Cli {
    /// Plain HTTP listen address; repeatable (e.g. 0.0.0.0:80 and [::]:80).
    #[arg(long)]
    http: Vec<SocketAddr>,
    /// HTTPS listen address; repeatable.
    #[arg(long)]
    https: Vec<SocketAddr>,
    /// HTTPS listen address whose certificate (same names, same CA) expired
    /// in 2021: the expired-certificate case of the tests. Repeatable.
    #[arg(long)]
    https_expired: Vec<SocketAddr>,
    /// HTTPS listen address whose certificate (same key, same CA) also
    /// lists `--big-cert-names` made-up names, like a multi-domain
    /// certificate: a first flight larger than the initial congestion
    /// window (10 segments), so the handshake needs more than one round
    /// trip. Repeatable.
    #[arg(long)]
    https_big: Vec<SocketAddr>,
    /// How many made-up names (about 34 bytes each in the certificate) the
    /// `--https-big` certificate adds: 900 make it about 30 KB.
    #[arg(long, default_value_t = 900)]
    big_cert_names: usize,
    /// Names and IPs the certificate is valid for.
    #[arg(long = "san", default_value = "localhost")]
    sans: Vec<String>,
    /// Where to write the CA certificate (PEM) that signed the server's.
    #[arg(long, default_value = "origin-ca.pem")]
    ca_out: PathBuf,
    /// TLS 1.3 session tickets sent after each handshake.
    #[arg(long, default_value_t = 2)]
    tickets: usize,
    /// Bytes of body in each response.
    #[arg(long, default_value_t = 64)]
    body_bytes: usize,
    /// Run in the SCHED_FIFO real-time class (think times stay exact on a
    /// busy machine; the lab uses it).
    #[arg(long)]
    realtime: bool,
    /// File to touch once every listener is bound (readiness for tests).
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

fn think_time(path: &str) -> Duration {
    path.strip_prefix("/delay/")
        .and_then(|ms| ms.split(['/', '?']).next())
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or_default()
}

async fn handle(
    req: Request<Incoming>,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let started = std::time::Instant::now();
    let d = think_time(req.uri().path());
    if !d.is_zero() {
        // The tokio timer ticks in whole milliseconds; a blocking thread's
        // nanosleep keeps the think time within ~0.1 ms of what was asked.
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(d)).await;
    }
    if let Some(to) = req.uri().path().strip_prefix("/redirect/") {
        return Ok(Response::builder()
            .status(302)
            .header("location", format!("/{to}"))
            .body(Full::new(Bytes::new()))
            .expect("static response"));
    }
    // What the origin really spent (a stolen vCPU can stretch a sleep):
    // the tests hold synack's server time against this, as a W3C
    // Server-Timing metric any client can read.
    let spent = started.elapsed().as_secs_f64() * 1000.0;
    Ok(Response::builder()
        .header("content-type", "text/plain")
        .header("server-timing", format!("app;dur={spent:.3}"))
        .body(Full::new(body))
        .expect("static response"))
}

/// Names under .lab that a multi-domain certificate for many tenants might
/// list (none resolves anywhere; they only make the certificate big).
fn made_up_names(n: usize) -> impl Iterator<Item = String> {
    (0..n).map(|i| format!("store-{i:04}.eu-west-{}.customers.lab", i % 7))
}

/// The server configurations for the good certificate, the expired one and
/// the big one.
fn tls_configs(
    cli: &Cli,
) -> Result<(
    rustls::ServerConfig,
    rustls::ServerConfig,
    rustls::ServerConfig,
)> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "synack test CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let params = rcgen::CertificateParams::new(cli.sans.clone())?;
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer)?;
    let mut old = rcgen::CertificateParams::new(cli.sans.clone())?;
    old.not_before = rcgen::date_time_ymd(2020, 1, 1);
    old.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = old.signed_by(&key, &issuer)?;
    let big_names = cli
        .sans
        .iter()
        .cloned()
        .chain(made_up_names(cli.big_cert_names))
        .collect::<Vec<_>>();
    let big = rcgen::CertificateParams::new(big_names)?.signed_by(&key, &issuer)?;
    std::fs::write(&cli.ca_out, ca.pem())
        .with_context(|| format!("writing {}", cli.ca_out.display()))?;
    let config = |leaf: &rcgen::Certificate| -> Result<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), ca.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        cfg.send_tls13_tickets = cli.tickets;
        Ok(cfg)
    };
    Ok((config(&cert)?, config(&expired)?, config(&big)?))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // Real-time class for the runtime and its blocking threads: think times
    // stay what was asked when the machine is busy.
    if cli.realtime && !synack_lab::realtime(40) {
        eprintln!("synack-origin: no real-time priority; think times may jitter under load");
    }
    let body = Bytes::from(vec![b'x'; cli.body_bytes]);
    let (good, expired, big) =
        if cli.https.is_empty() && cli.https_expired.is_empty() && cli.https_big.is_empty() {
            (None, None, None)
        } else {
            let (g, e, b) = tls_configs(&cli)?;
            let acceptor = |c| Some(tokio_rustls::TlsAcceptor::from(Arc::new(c)));
            (acceptor(g), acceptor(e), acceptor(b))
        };
    let mut tasks = Vec::new();
    for (addr, acceptor) in cli
        .http
        .iter()
        .map(|a| (*a, None))
        .chain(cli.https.iter().map(|a| (*a, good.clone())))
        .chain(cli.https_expired.iter().map(|a| (*a, expired.clone())))
        .chain(cli.https_big.iter().map(|a| (*a, big.clone())))
    {
        let l = bind(addr)?;
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let _ = s.set_nodelay(true);
                let acceptor = acceptor.clone();
                let body = body.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |r| handle(r, body.clone()));
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(a) => {
                            if let Ok(t) = a.accept(s).await {
                                let _ = http.serve_connection(TokioIo::new(t), svc).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                });
            }
        }));
    }
    if let Some(f) = &cli.ready_file {
        std::fs::write(f, b"ready").with_context(|| format!("writing {}", f.display()))?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    for t in tasks {
        t.abort();
    }
    Ok(())
}

fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let s = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    if addr.is_ipv6() {
        // One listener per family, as the lab binds both.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
        let one: libc::c_int = 1;
        // SAFETY: valid socket fd and a c_int option value.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
    s.bind(addr).with_context(|| format!("binding {addr}"))?;
    Ok(s.listen(1024)?)
}
