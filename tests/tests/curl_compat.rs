//! synack as a drop-in for curl (issue 17), as root: the same command lines
//! run with Debian's curl and with synack against Debian's nginx, serving a
//! self-signed certificate made as people make one (`openssl req -x509`),
//! and what lands on stdout, stderr's error codes and the exit statuses are
//! compared: strings equal, times within the lab's noise.

use anyhow::{Context, Result, bail};
use std::{net::IpAddr, process::Stdio, time::Duration};
use synack_tests::*;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The name nginx's certificate carries; clients reach it with --resolve.
const NAME: &str = "origin.lab";
const HTTP: u16 = 9080;
const HTTPS: u16 = 9443;
/// nginx with keep-alive off: it answers with Connection: close.
const CLOSING: u16 = 9081;
/// nginx speaking cleartext HTTP/2 (h2c) only: --http2-prior-knowledge.
const H2C: u16 = 9083;
/// The body of /file.txt (and its size in size_download).
const BODY: &str = "synack and curl read the same bytes\n";

/// nginx in the lab's server namespace: HTTP and HTTPS (HTTP/2 offered
/// in ALPN, as nginx is mostly deployed) on IPv4 and IPv6,
/// a file, a 404 and a redirect, and a self-signed certificate for NAME.
struct Nginx {
    // Drop order: nginx before the namespaces and files.
    _nginx: Proc,
    lab: Served,
    cert: String,
}

impl Nginx {
    fn start() -> Result<Self> {
        let lab = Served::new()?;
        let d = &lab.dir;
        let (cert, key) = (d.join("self.pem"), d.join("self.key"));
        // As the tutorials do it; OpenSSL marks such a certificate CA:TRUE.
        sh(&[
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-subj",
            &format!("/CN={NAME}"),
            "-addext",
            &format!("subjectAltName=DNS:{NAME}"),
            "-keyout",
            key.to_str().context("path")?,
            "-out",
            cert.to_str().context("path")?,
        ])?;
        let root = d.join("www");
        std::fs::create_dir_all(&root)?;
        std::fs::write(root.join("file.txt"), BODY)?;
        let conf = d.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nuser root;\nworker_processes 1;\npid {pid};\nerror_log {err};\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n  access_log off;\n  default_type text/plain;\n\
                 client_body_temp_path {tmp};\n\
                 server {{\n    listen {HTTP}; listen [::]:{HTTP};\n\
                 listen {HTTPS} ssl http2; listen [::]:{HTTPS} ssl http2;\n\
                 ssl_certificate {cert}; ssl_certificate_key {key};\n\
                 root {root};\n    location = /moved {{ return 301 /file.txt; }}\n  }}\n\
                 server {{\n    listen {CLOSING}; listen [::]:{CLOSING};\n    keepalive_timeout 0;\n\
                 root {root};\n  }}\n\
                 server {{\n    listen {H2C} http2; listen [::]:{H2C} http2;\n    root {root};\n  }}\n}}\n",
                pid = d.join("nginx.pid").display(),
                err = d.join("nginx.err").display(),
                tmp = d.join("nginx-body").display(),
                cert = cert.display(),
                key = key.display(),
                root = root.display(),
            ),
        )?;
        let mut c = lab.pair.server.command("nginx");
        c.args(["-c", conf.to_str().context("path")?, "-p"])
            .arg(d.join(""))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let nginx = Proc::spawn(c, "nginx")?;
        let v4 = lab.pair.server_v4;
        wait_for(Duration::from_secs(10), "nginx to listen", || {
            lab.pair
                .client
                .command("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    &format!("http://{v4}:{HTTP}/file.txt"),
                ])
                .status()
                .ok()
                .filter(|s| s.success())
        })?;
        Ok(Nginx {
            _nginx: nginx,
            cert: cert.to_string_lossy().into_owned(),
            lab,
        })
    }

    /// One command line run by `tool` (curl or synack) in the client
    /// namespace: exit status, stdout, stderr.
    fn run(&self, tool: &str, args: &[&str]) -> Result<(i32, String, String)> {
        let bin = match tool {
            "curl" => "curl".to_string(),
            _ => synack_bin().to_string_lossy().into_owned(),
        };
        let o = self
            .lab
            .pair
            .client
            .command(&bin)
            .args(args)
            .output()
            .with_context(|| format!("running {tool}"))?;
        Ok((
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ))
    }

    /// Both tools, the same arguments.
    fn both(&self, args: &[&str]) -> Result<[(i32, String, String); 2]> {
        Ok([self.run("curl", args)?, self.run("synack", args)?])
    }
}

fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(a) => format!("[{a}]"),
        IpAddr::V4(a) => a.to_string(),
    }
}

/// curl's and synack's lines of TIMES, each time within 10 ms of the
/// other's; both as numbers.
fn times_agree(what: &str, curl: &str, synack: &str) -> (Vec<f64>, Vec<f64>) {
    let nums = |l: &str| -> Vec<f64> {
        l.split(' ')
            .map(|x| x.parse().unwrap_or(f64::NAN))
            .collect()
    };
    let (ct, st) = (nums(curl), nums(synack));
    assert_eq!(ct.len(), st.len(), "{what}: curl {curl}, synack {synack}");
    for (i, (a, b)) in ct.iter().zip(&st).enumerate() {
        assert!(
            (a - b).abs() <= 0.010,
            "{what}: time {i}: curl {a}, synack {b} ({synack})"
        );
    }
    (ct, st)
}

fn need_root() -> std::sync::MutexGuard<'static, ()> {
    let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        is_root(),
        "these tests create namespaces and load eBPF: run them as root"
    );
    g
}

const STRINGS: &str = "%{http_code}|%{http_version}|%{remote_ip}|%{remote_port}|%{size_download}|%{size_header}|%{num_redirects}|%{url_effective}|%{exitcode}|%{content_type}|%header{content-length}|%{scheme}";
const TIMES: &str = "%{time_namelookup} %{time_connect} %{time_appconnect} %{time_pretransfer} %{time_starttransfer} %{time_total}";

/// `-s -o /dev/null -w FORMAT`, the seed's line, over plain HTTP on IPv4
/// and HTTPS on IPv6 with the self-signed certificate: every string
/// variable equal, every time within 10 ms of curl's and in curl's order.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn write_out_prints_what_curl_prints() -> Result<()> {
    let _g = need_root();
    let n = Nginx::start()?;
    let p = &n.lab.pair;
    let resolve = format!("{NAME}:{HTTPS}:{}", p.server_v6);
    let cases: Vec<(String, Vec<String>)> = vec![
        (
            format!("http://{}:{HTTP}/file.txt", host(p.server_v4)),
            vec![],
        ),
        (
            format!("http://{}:{HTTP}/moved", host(p.server_v6)),
            vec!["-L".into()],
        ),
        (
            format!("https://{NAME}:{HTTPS}/file.txt"),
            vec![
                "--cacert".into(),
                n.cert.clone(),
                "--resolve".into(),
                resolve,
            ],
        ),
    ];
    for (url, extra) in &cases {
        // The seed's exact line: one number on stdout, nothing else.
        let mut args: Vec<&str> = extra.iter().map(String::as_str).collect();
        args.extend(["-s", "-o", "/dev/null", "-w", "%{time_starttransfer}", url]);
        let [curl, synack] = n.both(&args)?;
        assert_eq!(
            (curl.0, synack.0),
            (0, 0),
            "{url}: curl {curl:?}, synack {synack:?}"
        );
        let t: f64 = synack
            .1
            .parse()
            .with_context(|| format!("synack printed {:?}", synack.1))?;
        assert!(t > 0.0 && t < 5.0, "{url}: {t}");
        assert!(
            synack.2.is_empty(),
            "-s: nothing on stderr, got {:?}",
            synack.2
        );

        let fmt = format!("{STRINGS}\\n{TIMES}");
        let mut args: Vec<&str> = extra.iter().map(String::as_str).collect();
        args.extend(["-s", "-o", "/dev/null", "-w", &fmt, url]);
        let [curl, synack] = n.both(&args)?;
        let (c, s) = (
            curl.1.lines().collect::<Vec<_>>(),
            synack.1.lines().collect::<Vec<_>>(),
        );
        assert_eq!(c.len(), 2, "curl: {curl:?}");
        assert_eq!(s.len(), 2, "synack: {synack:?}");
        assert_eq!(s[0], c[0], "{url}: string variables differ");
        let (_, st) = times_agree(url, c[1], s[1]);
        // A redirect to the same origin is followed on the connection, as
        // curl follows it: one connect for both hops.
        let mut args: Vec<&str> = extra.iter().map(String::as_str).collect();
        args.extend([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{num_connects} %{num_redirects}",
            url,
        ]);
        let [curl, synack] = n.both(&args)?;
        let redirects = if extra.iter().any(|e| e == "-L") {
            1
        } else {
            0
        };
        assert_eq!(curl.1, format!("1 {redirects}"), "{url}: curl {curl:?}");
        assert_eq!(synack.1, curl.1, "{url}: synack {synack:?}");
        if redirects == 1 {
            // Each hop has its record; the second rode the first's connection.
            let o = p
                .client
                .command(synack_bin().to_str().context("path")?)
                .arg("--json")
                .args(extra)
                .arg(url)
                .output()?;
            let recs = json_lines(&o.stdout)?;
            assert_eq!(recs.len(), 2, "{}", String::from_utf8_lossy(&o.stderr));
            assert_eq!(
                (&recs[0]["http_status"], &recs[1]["http_status"]),
                (&serde_json::json!(301), &serde_json::json!(200))
            );
            assert_eq!(recs[1]["redirect_hop"], 1, "{}", recs[1]);
            assert_eq!(recs[1]["connection_reused"], true, "{}", recs[1]);
            assert_eq!(recs[1]["local_addr"], recs[0]["local_addr"]);
            assert!(
                recs[1]["url"]
                    .as_str()
                    .is_some_and(|u| u.ends_with("/file.txt"))
            );
            assert!(recs[1]["wire"]["ttfb_ms"].as_f64().is_some(), "{}", recs[1]);
        }
        let order: Vec<f64> = st.iter().copied().filter(|&v| v > 0.0).collect();
        assert!(
            order.windows(2).all(|w| w[0] <= w[1]),
            "{url}: times out of order: {}",
            s[1]
        );
    }
    Ok(())
}

/// The body on stdout, or in -o's file; -i and -I print the head as curl
/// (header names compared without case: synack prints them as hyper gives
/// them, in lower case; Date is left out, the two requests are a second
/// apart at most).
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn bodies_and_heads_go_where_curl_puts_them() -> Result<()> {
    let _g = need_root();
    let n = Nginx::start()?;
    let url = format!("http://{}:{HTTP}/file.txt", host(n.lab.pair.server_v4));
    let [curl, synack] = n.both(&["-s", &url])?;
    assert_eq!(curl.1, BODY);
    assert_eq!(synack.1, BODY);

    let file = n.lab.dir.join("out.txt");
    let f = file.to_str().context("path")?;
    let (code, out, _) = n.run("synack", &["-o", f, "-w", "%{size_download}", &url])?;
    assert_eq!(code, 0);
    assert_eq!(out, BODY.len().to_string(), "-o: only -w's text on stdout");
    assert_eq!(std::fs::read_to_string(&file)?, BODY);

    let norm = |s: &str| -> Vec<String> {
        s.split("\r\n")
            .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
            .map(|l| match l.split_once(':') {
                Some((k, v)) if !l.starts_with("HTTP/") => {
                    format!("{}:{v}", k.to_ascii_lowercase())
                }
                _ => l.to_string(),
            })
            .collect()
    };
    for flag in ["-i", "-I"] {
        let [curl, synack] = n.both(&["-s", flag, &url])?;
        assert_eq!(
            norm(&synack.1),
            norm(&curl.1),
            "{flag}: synack {:?}",
            synack.1
        );
        if flag == "-i" {
            assert!(synack.1.ends_with(BODY));
        } else {
            assert!(!synack.1.contains(BODY.trim()), "-I prints no body");
        }
    }
    Ok(())
}

/// Failures: curl's exit codes and http_code 000, for a refused port, a
/// 404 with -f, a certificate for another name and one not trusted.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn failures_exit_as_curl_does() -> Result<()> {
    let _g = need_root();
    let n = Nginx::start()?;
    let p = &n.lab.pair;
    let v4 = host(p.server_v4);
    let other = format!("other.lab:{HTTPS}:{}", p.server_v4);
    let right = format!("{NAME}:{HTTPS}:{}", p.server_v4);
    let (refused, missing) = (
        format!("http://{v4}:9/"),
        format!("http://{v4}:{HTTP}/nothing"),
    );
    let (wrong_name, self_signed) = (
        format!("https://other.lab:{HTTPS}/file.txt"),
        format!("https://{NAME}:{HTTPS}/file.txt"),
    );
    let cases: Vec<(Vec<&str>, i32)> = vec![
        (vec![refused.as_str()], 7),
        (vec![missing.as_str()], 0),
        (vec!["-f", missing.as_str()], 22),
        (
            vec![
                "--cacert",
                &n.cert,
                "--resolve",
                &other,
                wrong_name.as_str(),
            ],
            60,
        ),
        (vec!["--resolve", &right, self_signed.as_str()], 60),
    ];
    for (args, want) in cases {
        let mut a = vec!["-s", "-o", "/dev/null", "-w", "%{http_code} %{exitcode}"];
        a.extend(&args);
        let [curl, synack] = n.both(&a)?;
        if curl.0 != want {
            bail!(
                "the case itself is wrong: curl {args:?} exited {} ({curl:?})",
                curl.0
            );
        }
        assert_eq!(synack.0, want, "{args:?}: synack {synack:?}");
        assert_eq!(synack.1, curl.1, "{args:?}: -w");
        // -s alone keeps errors quiet; -sS shows them, as curl.
        assert!(synack.2.is_empty(), "{args:?}: {:?}", synack.2);
        if want != 0 {
            let mut a = vec!["-sS", "-o", "/dev/null"];
            a.extend(&args);
            let (_, _, err) = n.run("synack", &a)?;
            assert!(
                err.starts_with(&format!("synack: ({want}) ")),
                "{args:?}: {err:?}"
            );
        }
    }
    Ok(())
}

/// Output options that cannot be honoured fail before any request, with
/// what to fix (exit status 2, synack's for bad set-up); an unknown -w variable is curl's warning, not a failure.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn output_options_that_cannot_work_say_why() -> Result<()> {
    let _g = need_root();
    let n = Nginx::start()?;
    let url = format!("http://{}:{HTTP}/file.txt", host(n.lab.pair.server_v4));
    let (code, out, err) = n.run("synack", &["-o", "/nonexistent-dir/x", &url])?;
    assert_eq!(code, 2, "{out} {err}");
    assert!(
        err.contains("cannot write to -o /nonexistent-dir/x"),
        "{err}"
    );
    let (code, _, err) = n.run("synack", &["-s", "-w", "@/nonexistent-format", &url])?;
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot read --write-out @/nonexistent-format"),
        "{err}"
    );
    let fmt = n.lab.dir.join("fmt.txt");
    std::fs::write(&fmt, "%{http_code} %{no_such_thing}\\n")?;
    let at = format!("@{}", fmt.display());
    let [curl, synack] = n.both(&["-s", "-o", "/dev/null", "-w", &at, &url])?;
    assert_eq!((synack.0, synack.1.as_str()), (0, curl.1.as_str()));
    assert!(
        synack
            .2
            .contains("unknown --write-out variable: 'no_such_thing'"),
        "{:?}",
        synack.2
    );
    Ok(())
}

/// --reuse against servers that close after each response: nginx with
/// keep-alive off (Connection: close) and Python's http.server (HTTP/1.0).
/// Each request opens a new connection, as curl would, and its record says
/// why; nginx with keep-alive is the control (one connection).
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn reuse_reconnects_when_the_server_closes() -> Result<()> {
    let _g = need_root();
    let n = Nginx::start()?;
    let p = &n.lab.pair;
    let www = n.lab.dir.join("www");
    let mut py = p.server.command("python3");
    py.args(["-m", "http.server", "9082", "--bind", "::", "--directory"])
        .arg(&www)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _py = Proc::spawn(py, "python3 -m http.server")?;
    let v4 = host(p.server_v4);
    wait_for(Duration::from_secs(10), "http.server to listen", || {
        p.client
            .command("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                &format!("http://{v4}:9082/file.txt"),
            ])
            .status()
            .ok()
            .filter(|s| s.success())
    })?;
    for (port, reason) in [
        (HTTP, None),
        (CLOSING, Some("Connection: close")),
        (9082, Some("HTTP/1.0")),
    ] {
        let url = format!("http://{v4}:{port}/file.txt");
        let (code, out, err) = n.run("synack", &["--json", "--reuse", "3", &url])?;
        assert_eq!(code, 0, "{url}: {err}");
        let recs = json_lines(out.as_bytes())?;
        assert_eq!(recs.len(), 3, "{url}: {out}");
        for (i, r) in recs.iter().enumerate() {
            assert!(r["error"].is_null(), "{url} request {i}: {r}");
            assert_eq!(r["http_status"], 200);
            match reason {
                None => {
                    assert_eq!(r["connection_reused"], i > 0, "{url}: {r}");
                    assert!(r["reconnect_reason"].is_null());
                }
                Some(why) => {
                    assert_eq!(r["connection_reused"], false, "{url}: {r}");
                    assert_eq!(r["request_index"], 0);
                    let got = r["reconnect_reason"].as_str().unwrap_or("");
                    if i == 0 {
                        assert_eq!(got, "", "{url}: {r}");
                    } else {
                        assert!(got.contains(why), "{url} request {i}: {got:?}");
                    }
                }
            }
        }
    }
    Ok(())
}

/// The proxy's port in the server namespace.
const SQUID: u16 = 3128;

/// Debian's squid as a forward proxy (plain requests and CONNECT), in the
/// server namespace beside nginx; it resolves NAME to nginx's address.
struct Squid {
    _squid: Proc,
}

impl Squid {
    fn start(n: &Nginx) -> Result<Self> {
        let p = &n.lab.pair;
        let cfg = squid_config(
            &n.lab.dir.join("squid"),
            &format!("http_port {SQUID}\n"),
            &format!("{} {NAME}\n", p.server_v4),
            "synack-test-proxy",
        )?;
        let mut c = p.server.command("squid");
        c.arg("-N")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let squid = Proc::spawn(c, "squid")?;
        // Both of its addresses, each warm (the first contact over a new
        // path can lose its SYN to neighbour discovery: a 1 s retransmit
        // that is no part of what the comparison measures).
        for proxy in [
            format!("http://{}:{SQUID}", p.server_v4),
            format!("http://[{}]:{SQUID}", p.server_v6),
        ] {
            wait_for(Duration::from_secs(20), "squid to proxy", || {
                p.client
                    .command("curl")
                    .args(["-s", "-o", "/dev/null", "-m", "5", "-x", &proxy])
                    .arg(format!("http://{NAME}:{HTTP}/file.txt"))
                    .status()
                    .ok()
                    .filter(|s| s.success())
            })?;
        }
        Ok(Squid { _squid: squid })
    }
}

/// Through squid (-x, IPv4 and IPv6 to the proxy): plain HTTP in absolute
/// form and HTTPS through CONNECT give curl's strings (the proxy's
/// address as remote_ip, http_connect 200 for the tunnel) and times within
/// 10 ms; the environment and NO_PROXY / --noproxy choose as in curl; the
/// record names the proxy and the verdict's path is `proxy`, with the
/// tunnel's CONNECT timed on the wire.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn proxies_give_what_curl_gives() -> Result<()> {
    let _g = need_root();
    let n = Nginx::start()?;
    let _squid = Squid::start(&n)?;
    let p = &n.lab.pair;
    let strings = "%{http_code}|%{http_connect}|%{remote_ip}|%{remote_port}|%{num_connects}|\
                   %{size_download}|%{url_effective}|%{exitcode}";
    let http_url = format!("http://{NAME}:{HTTP}/file.txt");
    let https_url = format!("https://{NAME}:{HTTPS}/file.txt");
    for proxy in [
        format!("http://{}:{SQUID}", p.server_v4),
        format!("[{}]:{SQUID}", p.server_v6),
    ] {
        for url in [&http_url, &https_url] {
            let fmt = format!("{strings}\\n{TIMES}");
            let args = [
                "-s",
                "-o",
                "/dev/null",
                "--cacert",
                &n.cert,
                "-x",
                &proxy,
                "-w",
                &fmt,
                url,
            ];
            let [curl, synack] = n.both(&args)?;
            let (c, s) = (
                curl.1.lines().collect::<Vec<_>>(),
                synack.1.lines().collect::<Vec<_>>(),
            );
            assert_eq!(
                (curl.0, synack.0),
                (0, 0),
                "{proxy} {url}: {curl:?} {synack:?}"
            );
            assert_eq!(c.len(), 2, "curl: {curl:?}");
            assert_eq!(s.len(), 2, "synack: {synack:?}");
            assert_eq!(s[0], c[0], "{proxy} {url}: string variables differ");
            assert!(c[0].starts_with("200|"), "{c:?}");
            let (ct, st) = times_agree(&format!("{proxy} {url}"), c[1], s[1]);
            // Through a tunnel, appconnect (CONNECT and TLS) follows connect.
            if url == &https_url {
                assert!(st[2] > st[1] && ct[2] > ct[1], "{c:?} {s:?}");
            }
        }
    }

    // The environment, as curl reads it; JSON names the proxy.
    let json_of = |env: &[(&str, &str)], extra: &[&str], url: &str| -> Result<serde_json::Value> {
        let mut c = p.client.command(synack_bin().to_str().context("path")?);
        for (k, v) in env {
            c.env(k, v);
        }
        let o = c
            .args(["--json", "--cacert", &n.cert])
            .args(extra)
            .arg(url)
            .output()?;
        let recs = json_lines(&o.stdout)?;
        recs.into_iter()
            .next()
            .with_context(|| format!("no record: {}", String::from_utf8_lossy(&o.stderr)))
    };
    let proxy = format!("http://{}:{SQUID}", p.server_v4);
    let r = json_of(&[("HTTPS_PROXY", &proxy)], &[], &https_url)?;
    assert_eq!(r["http_status"], 200, "{r}");
    assert_eq!(r["proxy"]["from"], "HTTPS_PROXY", "{r}");
    assert_eq!(r["proxy"]["tunnel"], true, "{r}");
    assert_eq!(r["proxy"]["connect_status"], 200, "{r}");
    assert_eq!(r["remote_addr"], format!("{}:{SQUID}", p.server_v4), "{r}");
    assert_eq!(r["verdict"]["path"], "proxy", "{r}");
    let connect = r["wire"]["proxy_connect_ms"]
        .as_f64()
        .context("CONNECT on the wire")?;
    let user = r["user"]["proxy_connect_ms"]
        .as_f64()
        .context("CONNECT in user space")?;
    // The wire sees the answer before user space reads it.
    assert!(connect > 0.0 && connect <= user + 0.5, "{connect} {user}");
    // The TLS round trip is the one through the tunnel, not the CONNECT's.
    let tls_start = r["timeline"]
        .as_array()
        .and_then(|t| t.iter().find(|e| e["event"] == "client_hello_out"))
        .and_then(|e| e["t_ns"].as_u64());
    let answer_in = r["timeline"]
        .as_array()
        .and_then(|t| t.iter().find(|e| e["event"] == "proxy_connect_in"))
        .and_then(|e| e["t_ns"].as_u64());
    assert!(
        matches!((answer_in, tls_start), (Some(a), Some(b)) if a < b),
        "the ClientHello leaves after the CONNECT answer: {r}"
    );
    // http_proxy (lowercase) for plain HTTP; HTTP_PROXY is not read (curl's rule).
    let r = json_of(&[("http_proxy", &proxy)], &[], &http_url)?;
    assert_eq!(
        (r["proxy"]["from"].as_str(), r["proxy"]["tunnel"].as_bool()),
        (Some("http_proxy"), Some(false)),
        "{r}"
    );
    assert_eq!(r["verdict"]["path"], "proxy", "{r}");
    let r = json_of(
        &[("HTTP_PROXY", &proxy)],
        &[],
        &format!("http://{}:{HTTP}/file.txt", p.server_v4),
    )?;
    assert!(r["proxy"].is_null(), "HTTP_PROXY is ignored: {r}");
    // NO_PROXY, and --noproxy over it, and -x "" over the environment.
    let direct = format!("{}:{HTTP}", p.server_v4);
    let to_nginx = format!("{NAME}:{HTTP}:{}", p.server_v4);
    let no = json_of(
        &[("http_proxy", &proxy), ("NO_PROXY", NAME)],
        &["--resolve", &to_nginx],
        &http_url,
    )?;
    assert!(no["proxy"].is_null(), "{no}");
    assert_eq!(no["remote_addr"], direct, "{no}");
    let star = json_of(
        &[("http_proxy", &proxy)],
        &["--noproxy", "*", "--resolve", &to_nginx],
        &http_url,
    )?;
    assert!(star["proxy"].is_null(), "{star}");
    let off = json_of(
        &[("http_proxy", &proxy)],
        &["-x", "", "--resolve", &to_nginx],
        &http_url,
    )?;
    assert!(off["proxy"].is_null(), "{off}");
    assert_eq!(off["remote_addr"], direct, "{off}");
    Ok(())
}

/// HTTP/2 as curl speaks it, against nginx: h2 chosen in ALPN by default
/// (and HTTP/1.1 with --http1.1), h2c with --http2-prior-knowledge; -w's
/// strings equal to curl's (http_version 2, curl's size_header) and times
/// within 10 ms; -i's status line as curl writes it; --reuse 3 sends three
/// streams on one connection, each with its wire TTFB, and the first
/// record carries the PING round trip.
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn http2_as_curl_speaks_it() -> Result<()> {
    let _g = need_root();
    let n = Nginx::start()?;
    let p = &n.lab.pair;
    let resolve = format!("{NAME}:{HTTPS}:{}", p.server_v4);
    let url = format!("https://{NAME}:{HTTPS}/file.txt");
    let h2c = format!("http://{}:{H2C}/file.txt", p.server_v4);
    let fmt = format!("{STRINGS}\\n{TIMES}");
    for (flags, version) in [
        (vec!["--cacert", &n.cert, "--resolve", &resolve, &url], "2"),
        (
            vec![
                "--http1.1",
                "--cacert",
                &n.cert,
                "--resolve",
                &resolve,
                &url,
            ],
            "1.1",
        ),
        (vec!["--http2-prior-knowledge", &h2c], "2"),
    ] {
        let mut args = vec!["-s", "-o", "/dev/null", "-w", &fmt];
        args.extend(&flags);
        let [curl, synack] = n.both(&args)?;
        assert_eq!((curl.0, synack.0), (0, 0), "{flags:?}: {curl:?} {synack:?}");
        let (c, s) = (
            curl.1.lines().collect::<Vec<_>>(),
            synack.1.lines().collect::<Vec<_>>(),
        );
        assert_eq!(s.len(), 2, "synack: {synack:?}");
        assert_eq!(s[0], c[0], "{flags:?}: string variables differ");
        assert!(
            c[0].starts_with(&format!("200|{version}|")),
            "{flags:?}: {c:?}"
        );
        times_agree(&format!("{flags:?}"), c[1], s[1]);
    }
    // Headers HTTP/2 has no place for are left out, as curl leaves them.
    let args = [
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{http_version}",
        "-H",
        "Connection: close",
        "-H",
        "Keep-Alive: 5",
        "--cacert",
        &n.cert,
        "--resolve",
        &resolve,
        &url,
    ];
    let [curl, synack] = n.both(&args)?;
    assert_eq!(
        (curl.1.as_str(), synack.0),
        ("200 2", 0),
        "{curl:?} {synack:?}"
    );
    assert_eq!(synack.1, curl.1, "{synack:?}");
    // -i: the status line as curl writes it, then the same body.
    let args = ["-si", "--cacert", &n.cert, "--resolve", &resolve, &url];
    let [curl, synack] = n.both(&args)?;
    let first = |o: &str| o.lines().next().unwrap_or("").to_string();
    assert_eq!(first(&synack.1), first(&curl.1), "{curl:?} {synack:?}");
    assert!(
        synack.1.ends_with(BODY) && curl.1.ends_with(BODY),
        "{synack:?}"
    );

    // --reuse 3: three streams on one connection.
    let o = p
        .client
        .command(synack_bin().to_str().context("path")?)
        .args([
            "--json",
            "--reuse",
            "3",
            "--cacert",
            &n.cert,
            "--resolve",
            &resolve,
            &url,
        ])
        .output()?;
    let recs = json_lines(&o.stdout)?;
    assert_eq!(recs.len(), 3, "{}", String::from_utf8_lossy(&o.stderr));
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["http_version"], "2", "{r}");
        assert_eq!(r["http_status"], 200, "{r}");
        assert_eq!(r["request_index"], i, "{r}");
        assert_eq!(r["connection_reused"], i > 0, "{r}");
        assert_eq!(
            r["local_addr"], recs[0]["local_addr"],
            "one connection: {r}"
        );
        let ttfb = r["wire"]["ttfb_ms"].as_f64().context("wire TTFB")?;
        let user = r["user"]["ttfb_ms"].as_f64().context("user TTFB")?;
        assert!(ttfb > 0.0 && ttfb < 1000.0, "{r}");
        // The HEADERS frame's segment, not a SETTINGS or WINDOW_UPDATE one:
        // user space reads the response after the wire saw it, unless its
        // thread was held off the CPU (then by no more than it waited).
        let held = r["client"]["run_delay_ms"].as_f64().unwrap_or(0.0);
        assert!(user >= ttfb - 0.2 - held, "user {user} wire {ttfb}: {r}");
        let at = |name: &str| {
            r["timeline"]
                .as_array()
                .and_then(|t| t.iter().find(|e| e["event"] == name))
                .and_then(|e| e["t_ns"].as_u64())
        };
        assert!(
            matches!((at("request_out"), at("response_in")), (Some(a), Some(b)) if a < b),
            "{r}"
        );
    }
    let ping = recs[0]["wire"]["h2_ping_rtt_ms"]
        .as_f64()
        .context("the PING on the wire")?;
    let user_ping = recs[0]["user"]["h2_ping_ms"]
        .as_f64()
        .context("the PING in user space")?;
    assert!(ping > 0.0 && ping <= user_ping + 0.2, "{ping} {user_ping}");
    assert_eq!(recs[0]["tls_info"]["alpn"], "h2");
    Ok(())
}
