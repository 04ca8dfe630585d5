//! TLS interception in the lab, by a proxy no one here wrote: mitmproxy
//! (Debian's 8.1.1, `mitmdump`) in mid, transparent, terminating the
//! client's TLS with its own CA and opening its own TLS connection to the
//! origin, which it verifies against the lab's origin CA.
//!
//! Connections from the client to the origin's port 11443
//! (`topo::INTERCEPT_HTTPS`) are redirected to it: iptables and ip6tables
//! nat REDIRECT; mitmproxy reads the original destination with
//! SO_ORIGINAL_DST (IPv4) and IP6T_SO_ORIGINAL_DST (IPv6), so both families
//! are intercepted.
//!
//! Also here: the URLs of the origin's big-certificate ports
//! (`topo::BIG_HTTPS` straight, `topo::PROXY_BIG_HTTPS` through haproxy).

use crate::topo::{
    BIG_HTTPS, INTERCEPT_HTTPS, Lab, PROXY_BIG_HTTPS, SERVER_V4, SERVER_V6, Via,
    refuse_own_connections,
};
use crate::{Proc, wait_for};
use anyhow::{Context, Result, bail};
use std::{path::PathBuf, process::Stdio, time::Duration};

/// Where mitmproxy listens in mid (the REDIRECT target).
pub const MITM_PORT: u16 = 15002;

/// mitmproxy running in the lab's mid namespace. Dropping it stops the
/// process by its pid; its files go with the lab's directory and its
/// iptables rules with mid.
pub struct Mitmproxy {
    proc: Proc,
    /// mitmproxy's CA certificate (PEM), to hand to synack's `--cacert`.
    pub ca: PathBuf,
}

impl Mitmproxy {
    /// Starts mitmproxy in `lab`'s mid namespace and intercepts
    /// `INTERCEPT_HTTPS`. Returns once it has written its CA and listens.
    pub fn start(lab: &Lab) -> Result<Self> {
        let confdir = lab.dir.join("mitmproxy");
        std::fs::create_dir_all(&confdir)?;
        let m = &lab.mid;
        let port = MITM_PORT.to_string();
        redirect_to(lab, MITM_PORT)?;
        let origin_ca = lab.ca_path();
        let set = |k: &str, v: &str| ["--set".to_string(), format!("{k}={v}")];
        let mut c = m.command("chrt");
        // Real-time class like haproxy, the delay line and the origin: a
        // proxy at normal priority on a busy 2-core machine is now and then
        // late forwarding a request, which the lab would charge to the
        // server.
        c.args(["-f", "30", "mitmdump", "--mode", "transparent"])
            .args(["--listen-port", &port])
            // No flow printing: the lab measures milliseconds.
            .arg("-q")
            .args(set("confdir", &confdir.display().to_string()))
            // Verify the origin against the lab's CA, never --ssl-insecure.
            .args(set(
                "ssl_verify_upstream_trusted_ca",
                &origin_ca.display().to_string(),
            ))
            // mitmproxy's default, said out loud: connect upstream when the
            // client connects, and do the upstream TLS handshake before
            // answering the ClientHello (to copy the origin's names into its
            // own certificate and mirror its ALPN), as interceptors do.
            .args(set("connection_strategy", "eager"))
            // Keep HTTP/1.1 on both sides, like the rest of the lab.
            .args(set("http2", "false"))
            .args(set("stream_large_bodies", "1"))
            .args(set("flow_detail", "0"))
            .args(set("termlog_verbosity", "error"))
            .stdout(Stdio::null())
            .stderr(lab.log("mitmproxy")?);
        let mut proc = Proc::spawn(c, "mitmdump")?;
        let ca = confdir.join("mitmproxy-ca-cert.pem");
        // Python starts in a second or two; give a busy machine time.
        until_listening(
            lab,
            &mut proc,
            MITM_PORT,
            Duration::from_secs(60),
            "mitmproxy to write its CA and listen (IPv4 and IPv6)",
            &lab.dir.join("mitmproxy.log"),
            |listening| {
                ca.exists() && listening.contains("0.0.0.0:") && listening.contains("[::]:")
            },
        )?;
        // The CA file is written whole before mitmproxy listens, but check
        // it is a certificate rather than trust the order.
        let pem = std::fs::read_to_string(&ca)?;
        if !pem.contains("BEGIN CERTIFICATE") {
            bail!("{} is not a PEM certificate", ca.display());
        }
        Ok(Mitmproxy { proc, ca })
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }
}

/// Waits until `proc` listens on `port` in mid and `ready` holds for what
/// `ss` lists there; fails at once, naming its `log`, if it exits first.
fn until_listening(
    lab: &Lab,
    proc: &mut Proc,
    port: u16,
    timeout: Duration,
    what: &str,
    log: &std::path::Path,
    ready: impl Fn(&str) -> bool,
) -> Result<()> {
    wait_for(timeout, what, || {
        if let Ok(Some(st)) = proc.child.try_wait() {
            return Some(Err(anyhow::anyhow!(
                "{} exited ({st}); see {}",
                proc.label,
                log.display()
            )));
        }
        let listening = lab
            .mid
            .exec(&["ss", "-Hltn", &format!("sport = :{port}")])
            .ok()?;
        ready(&listening).then_some(Ok(()))
    })?
}

/// Sends the client's connections to the origin's `INTERCEPT_HTTPS` to
/// `port` in mid (nat REDIRECT, IPv4 and IPv6), and refuses connections to
/// `port` from mid itself (`refuse_own_connections`).
fn redirect_to(lab: &Lab, port: u16) -> Result<()> {
    let m = &lab.mid;
    refuse_own_connections(m, port)?;
    let port = port.to_string();
    for ipt in ["iptables", "ip6tables"] {
        m.exec(&[
            ipt,
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-i",
            &lab.mid_c_if,
            "-p",
            "tcp",
            "--dport",
            &INTERCEPT_HTTPS.to_string(),
            "-j",
            "REDIRECT",
            "--to-ports",
            &port,
        ])
        .with_context(|| format!("{ipt} nat REDIRECT (IPv6 needs the kernel's IPv6 NAT)"))?;
    }
    Ok(())
}

/// squid's SSL bump (Debian's squid-openssl 5.7) in mid: transparent,
/// peeking at the ClientHello's SNI, then connecting to the origin, shaking
/// hands with it (verifying it against the lab's origin CA) and answering
/// the client with a certificate it mimics from the origin's, signed by its
/// own CA, as corporate interception set-ups do. Where mitmproxy is Python,
/// squid is C: its own time on a handshake is far smaller, which is what
/// lets the origin's round trip be read from the client's side (see
/// docs/lab.md).
pub struct SquidBump {
    proc: Proc,
    /// squid's CA certificate (PEM), to hand to synack's `--cacert`.
    pub ca: PathBuf,
}

/// The name in the origin's certificate. squid 5 matches an origin's
/// certificate against names only (not IP addresses), so the client asks for
/// the origin by this name (`--resolve NAME:PORT:ADDR`), as clients behind
/// interception do.
pub const ORIGIN_NAME: &str = "origin.lab";

/// Where squid's bumping https_port listens in mid (the REDIRECT target).
pub const SQUID_BUMP_PORT: u16 = 15003;

impl SquidBump {
    /// Makes squid's CA the way squid's documentation does (`openssl req
    /// -x509`, RSA 2048), its certificate database, and starts squid in
    /// `lab`'s mid namespace intercepting `INTERCEPT_HTTPS`. Returns once it
    /// listens.
    pub fn start(lab: &Lab) -> Result<Self> {
        let d = lab.dir.join("squid-bump");
        std::fs::create_dir_all(&d)?;
        let p = |x: &std::path::Path| x.display().to_string();
        let (ca, key, db) = (d.join("ca.pem"), d.join("ca.key"), d.join("ssl_db"));
        crate::sh(&[
            "openssl",
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-sha256",
            "-days",
            "7",
            "-nodes",
            "-x509",
            "-subj",
            "/O=synack lab/CN=synack lab squid CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &p(&key),
            "-out",
            &p(&ca),
        ])
        .context("making squid's CA with openssl")?;
        crate::sh(&[
            "/usr/lib/squid/security_file_certgen",
            "-c",
            "-s",
            &p(&db),
            "-M",
            "4MB",
        ])
        .context("initialising squid's certificate database (apt install squid-openssl)")?;
        // squid drops privileges to its own user: let it read and write here.
        crate::sh(&["chmod", "-R", "a+rwX", &p(&d)])?;
        // The origin by name, as a client asks for it (squid checks the
        // Host header against the intercepted address, and the origin's
        // certificate against the name the ClientHello carries).
        let cfg = crate::squid_config(
            &d,
            &format!(
                "http_port 127.0.0.1:15004\n\
                 https_port {SQUID_BUMP_PORT} intercept ssl-bump generate-host-certificates=on \
                 dynamic_cert_mem_cache_size=4MB tls-cert={ca} tls-key={key}\n\
                 sslcrtd_program /usr/lib/squid/security_file_certgen -s {db} -M 4MB\n\
                 sslcrtd_children 2 startup=1 idle=1\n\
                 acl step1 at_step SslBump1\n\
                 ssl_bump peek step1\n\
                 ssl_bump bump all\n\
                 tls_outgoing_options cafile={origin_ca}\n",
                ca = p(&ca),
                key = p(&key),
                db = p(&db),
                origin_ca = p(&lab.ca_path()),
            ),
            &format!("{SERVER_V4} {ORIGIN_NAME}\n{SERVER_V6} {ORIGIN_NAME}\n"),
            "synack-lab-mid",
        )?;
        redirect_to(lab, SQUID_BUMP_PORT)?;
        let m = &lab.mid;
        let mut c = m.command("chrt");
        // Real-time class like the lab's other proxies (see Mitmproxy).
        c.args(["-f", "30", "squid", "-N", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(lab.log("squid-bump")?);
        let mut proc = Proc::spawn(c, "squid (ssl-bump)")?;
        // One [::] socket serves both families (squid's default).
        until_listening(
            lab,
            &mut proc,
            SQUID_BUMP_PORT,
            Duration::from_secs(30),
            "squid (ssl-bump) to listen",
            &d.join("cache.log"),
            |listening| !listening.trim().is_empty(),
        )?;
        Ok(SquidBump { proc, ca })
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }
}

/// A URL on the origin's big-certificate HTTPS port, reached the given way
/// (`Via::Direct` or `Via::TcpProxy`).
pub fn big_cert_url(via: Via, v6: bool, path: &str) -> Result<String> {
    let port = match via {
        Via::Direct => BIG_HTTPS,
        Via::TcpProxy => PROXY_BIG_HTTPS,
        other => bail!("the big certificate is not served {other:?}"),
    };
    let host = if v6 {
        format!("[{SERVER_V6}]")
    } else {
        SERVER_V4.to_string()
    };
    Ok(format!("https://{host}:{port}{path}"))
}
