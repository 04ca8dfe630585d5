//! The bad-input matrix, as root: synack against malformed URLs, names that
//! do not resolve, servers that refuse, time out at each phase, reset
//! mid-response, speak garbage, send a head over 64 KiB or drip slowly, and
//! TLS that does not verify. Each case has its exact error kind and exit
//! status, and nothing crashes. Every server is in the test's own namespace.

use anyhow::{Context, Result};
use serde_json::Value;
use std::{fs, path::PathBuf, process::Stdio, time::Duration};
use synack_tests::*;

/// A server with one misbehaviour per port (Python, in the server
/// namespace).
const MISBEHAVING: &str = r#"
import socket, struct, sys, threading, time
def serve(port, handler):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('0.0.0.0', port)); s.listen(16)
    while True:
        c, _ = s.accept()
        threading.Thread(target=handler, args=(c,), daemon=True).start()
def garbage(c):
    c.recv(4096); c.sendall(b'this is not HTTP at all\r\n\r\n'); c.close()
def reset(c):
    c.recv(4096)
    c.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial body')
    time.sleep(0.05)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0)); c.close()
def drip(c):
    c.recv(4096)
    for b in b'HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello':
        c.sendall(bytes([b])); time.sleep(0.2)
    c.close()
def silent(c):
    time.sleep(30); c.close()
def huge(c):
    c.recv(4096)
    c.sendall(b'HTTP/1.1 200 OK\r\nX-Big: ' + b'a' * (70 * 1024) + b'\r\nContent-Length: 0\r\n\r\n')
    time.sleep(1); c.close()
def forbids(c):
    c.recv(4096)
    c.sendall(b'HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n'); time.sleep(0.2); c.close()
def wants_auth(c):
    c.recv(4096)
    c.sendall(b'HTTP/1.1 407 Proxy Authentication Required\r\n'
              b'Proxy-Authenticate: Basic realm="lab"\r\nContent-Length: 0\r\n\r\n')
    time.sleep(0.2); c.close()
for port, h in ((7001, garbage), (7002, reset), (7003, drip), (7004, silent), (7005, huge),
                (7007, forbids), (7008, wants_auth)):
    threading.Thread(target=serve, args=(port, h), daemon=True).start()
open(sys.argv[1], 'w').close()
while True:
    time.sleep(1)
"#;

struct Case {
    name: &'static str,
    args: Vec<String>,
    /// Expected exit status and error kind (None: no error).
    exit: i32,
    kind: Option<&'static str>,
    /// A word the message must hold (the phase of a timeout, say).
    message: Option<&'static str>,
}

#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn every_bad_input_has_its_error_and_exit_status() -> Result<()> {
    assert!(
        is_root(),
        "the bad-input matrix builds namespaces and loads eBPF programs: run it as root"
    );
    let served = Served::new()?;
    let (pair, dir) = (&served.pair, &served.dir);
    let ready = dir.join("misbehaving.ready");
    let mut c = pair.server.command("python3");
    c.args(["-c", MISBEHAVING])
        .arg(&ready)
        .stdout(Stdio::null())
        // Its handlers' broken pipes (synack gave up first) are expected.
        .stderr(Stdio::null());
    let _bad = Proc::spawn(c, "misbehaving server")?;
    wait_for(Duration::from_secs(10), "the misbehaving server", || {
        ready.exists().then_some(())
    })?;
    // SYNs to this port vanish: a connect that never completes.
    pair.server.exec(&[
        "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "7006", "-j", "DROP",
    ])?;
    // Name resolution inside the client namespace goes to the server's
    // address, where nothing answers on port 53: an immediate failure, and
    // no query leaves the test's namespaces (`ip netns exec` mounts
    // /etc/netns/NAME/resolv.conf over /etc/resolv.conf).
    let netns_etc = PathBuf::from("/etc/netns").join(&pair.client.name);
    fs::create_dir_all(&netns_etc)?;
    let _etc = EtcGuard(netns_etc.clone());
    fs::write(
        netns_etc.join("resolv.conf"),
        format!(
            "nameserver {}\noptions timeout:1 attempts:1\n",
            pair.server_v4
        ),
    )?;

    let s = pair.server_v4.to_string();
    let ca = served.ca();
    let a = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let cases = vec![
        Case {
            name: "malformed URL",
            args: a(&["http://[::1/"]),
            exit: 1,
            kind: Some("invalid_url"),
            message: None,
        },
        Case {
            name: "unsupported scheme",
            args: a(&["ftp://example.test/"]),
            exit: 1,
            kind: Some("unsupported_scheme"),
            message: None,
        },
        Case {
            name: "a name that does not resolve",
            args: a(&["-m", "5", "http://nothing.synack-test.invalid/"]),
            exit: 1,
            kind: Some("dns"),
            message: None,
        },
        Case {
            name: "connection refused",
            args: a(&[&format!("http://{s}:9/")]),
            exit: 1,
            kind: Some("connect_refused"),
            message: None,
        },
        Case {
            name: "timeout while connecting",
            args: a(&["-m", "1", &format!("http://{s}:7006/")]),
            exit: 1,
            kind: Some("timeout"),
            message: Some("connect"),
        },
        Case {
            name: "timeout in the TLS handshake",
            args: a(&["-m", "1", "-k", &format!("https://{s}:7004/")]),
            exit: 1,
            kind: Some("timeout"),
            message: Some("tls"),
        },
        Case {
            name: "timeout waiting for the response",
            args: a(&["-m", "1", &format!("http://{s}:8080/delay/5000")]),
            exit: 1,
            kind: Some("timeout"),
            message: None,
        },
        Case {
            name: "slow-drip server",
            args: a(&["-m", "2", &format!("http://{s}:7003/")]),
            exit: 1,
            kind: Some("timeout"),
            message: None,
        },
        Case {
            name: "reset mid-response",
            args: a(&[&format!("http://{s}:7002/")]),
            exit: 1,
            kind: Some("io"),
            message: None,
        },
        Case {
            name: "HTTP garbage",
            args: a(&[&format!("http://{s}:7001/")]),
            exit: 1,
            kind: Some("http"),
            message: None,
        },
        Case {
            name: "a response head over 64 KiB",
            args: a(&[&format!("http://{s}:7005/")]),
            exit: 1,
            kind: Some("http"),
            message: None,
        },
        Case {
            name: "TLS: the certificate names another host",
            args: a(&[
                "--cacert",
                &ca,
                "--resolve",
                &format!("wrong.test:8443:{s}"),
                "https://wrong.test:8443/",
            ]),
            exit: 1,
            kind: Some("tls"),
            message: None,
        },
        Case {
            name: "TLS: a CA that is not trusted (no --cacert)",
            args: a(&[
                "--resolve",
                &format!("origin.test:8443:{s}"),
                "https://origin.test:8443/",
            ]),
            exit: 1,
            kind: Some("tls"),
            message: None,
        },
        Case {
            name: "TLS: an expired certificate",
            args: a(&[
                "--cacert",
                &ca,
                "--resolve",
                &format!("origin.test:8444:{s}"),
                "https://origin.test:8444/",
            ]),
            exit: 1,
            kind: Some("tls"),
            message: Some("expired"),
        },
        Case {
            name: "the control: a good request",
            args: a(&[
                "--cacert",
                &ca,
                "--resolve",
                &format!("origin.test:8443:{s}"),
                "https://origin.test:8443/",
            ]),
            exit: 0,
            kind: None,
            message: None,
        },
        Case {
            name: "a proxy whose name does not resolve",
            args: a(&[
                "-m",
                "5",
                "-x",
                "http://proxy.synack-test.invalid:3128",
                "http://x/",
            ]),
            exit: 1,
            kind: Some("proxy_dns"),
            message: Some("proxy"),
        },
        Case {
            name: "a proxy that refuses the connection",
            args: a(&["-x", &format!("{s}:9"), "http://origin.test/"]),
            exit: 1,
            kind: Some("proxy_refused"),
            message: Some("proxy"),
        },
        Case {
            name: "a proxy that never answers the SYN",
            args: a(&["-m", "1", "-x", &format!("{s}:7006"), "http://origin.test/"]),
            exit: 1,
            kind: Some("timeout"),
            message: Some("connect to the proxy"),
        },
        Case {
            name: "a proxy that answers CONNECT with 403",
            args: a(&["-x", &format!("http://{s}:7007"), "https://origin.test/"]),
            exit: 1,
            kind: Some("proxy_tunnel"),
            message: Some("403 Forbidden"),
        },
        Case {
            name: "a proxy that wants credentials (407)",
            args: a(&["-x", &format!("http://{s}:7008"), "https://origin.test/"]),
            exit: 1,
            kind: Some("proxy_auth"),
            message: Some("-U"),
        },
        Case {
            name: "a proxy that refuses the credentials given",
            args: a(&[
                "-x",
                &format!("http://u:wrong@{s}:7008"),
                "https://origin.test/",
            ]),
            exit: 1,
            kind: Some("proxy_auth"),
            message: Some("refused the credentials"),
        },
        Case {
            name: "a proxy that speaks garbage to CONNECT",
            args: a(&["-x", &format!("http://{s}:7001"), "https://origin.test/"]),
            exit: 1,
            kind: Some("http"),
            message: Some("not HTTP"),
        },
        Case {
            name: "a SOCKS proxy (not supported)",
            args: a(&["-x", "socks5://127.0.0.1:1080", "http://x/"]),
            exit: 1,
            kind: Some("unsupported_scheme"),
            message: Some("HTTP proxies only"),
        },
        Case {
            name: "a bad option",
            args: a(&["--count", "zero", "http://x/"]),
            exit: 2,
            kind: None,
            message: None,
        },
        Case {
            name: "a duration too big for any clock",
            args: a(&["--max-time", "1e300", "http://x/"]),
            exit: 2,
            kind: None,
            message: None,
        },
    ];

    let bin = synack_bin();
    let mut failures = Vec::new();
    for case in &cases {
        let o = pair
            .client
            .command(bin.to_str().context("path")?)
            .arg("--json")
            .args(&case.args)
            .output()?;
        let code = o.status.code().unwrap_or(-1);
        let stderr = String::from_utf8_lossy(&o.stderr);
        let rec: Option<Value> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .and_then(|l| serde_json::from_str(l).ok());
        let kind = rec
            .as_ref()
            .and_then(|r| r["error"]["kind"].as_str().map(str::to_string));
        let message = rec
            .as_ref()
            .and_then(|r| r["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_default();
        eprintln!(
            "{:<46} exit {code}  kind {:<18} {}",
            case.name,
            kind.as_deref().unwrap_or("-"),
            message.chars().take(90).collect::<String>()
        );
        let ok = code == case.exit
            && kind.as_deref() == case.kind
            && case.message.is_none_or(|m| message.contains(m))
            && !stderr.contains("panicked")
            && (case.exit == 2 || rec.is_some());
        if !ok {
            failures.push(format!(
                "{}: exit {code}, kind {kind:?}, message {message:?}, stderr {stderr}",
                case.name
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    Ok(())
}

/// Removes /etc/netns/NAME (the test's resolver for its namespace).
struct EtcGuard(PathBuf);

impl Drop for EtcGuard {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A targets file with broken lines: each is reported on stderr with its
/// number and why, and the good line is still checked (monitor keeps
/// running; a service must not die on a typo).
#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn a_targets_file_with_broken_lines() -> Result<()> {
    assert!(is_root(), "builds namespaces: run it as root");
    let served = Served::new()?;
    let (pair, dir) = (&served.pair, &served.dir);
    let targets = dir.join("targets.txt");
    fs::write(
        &targets,
        format!(
            "# a comment\n\
             not-a-url name=broken\n\
             http://{}:8080/ timeout=soon\n\
             http://{}:8080/delay/5 name=good expect=2xx\n",
            pair.server_v4, pair.server_v4
        ),
    )?;
    let (out, err) = (dir.join("out.jsonl"), dir.join("err.txt"));
    let mut c = pair.client.command(synack_bin().to_str().context("path")?);
    c.args(["monitor", "--json", "--interval", "1s", "--targets"])
        .arg(&targets)
        .stdout(fs::File::create(&out)?)
        .stderr(fs::File::create(&err)?);
    let mut p = Proc::spawn(c, "synack monitor")?;
    let rec = wait_for(Duration::from_secs(20), "the good target's record", || {
        let text = fs::read_to_string(&out).ok()?;
        serde_json::from_str::<Value>(text.lines().next()?).ok()
    });
    let said = fs::read_to_string(&err)?;
    let rec = rec.with_context(|| format!("stderr: {said}"))?;
    assert_eq!(rec["target"], "good", "{rec}");
    assert!(rec["error"].is_null(), "{rec}");
    for n in ["line 2", "line 3"] {
        assert!(said.contains(n), "stderr does not name {n}: {said}");
    }
    assert!(
        !said.contains("line 1") && !said.contains("line 4"),
        "{said}"
    );
    p.signal(libc::SIGTERM);
    let st = p.wait_exit(Duration::from_secs(10))?;
    assert!(st.success(), "monitor did not stop cleanly ({st}): {said}");
    Ok(())
}
