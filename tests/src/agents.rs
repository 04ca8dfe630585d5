//! The monitoring agents `synack monitor` talks to in the tests, inside a
//! lab namespace: a DogStatsD receiver (a UDP socket) and Debian's
//! Prometheus with its query API.

use crate::{Netns, Proc, TempDir};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::{fs, net::UdpSocket, os::fd::AsRawFd, process::Stdio};

/// A UDP socket bound inside a namespace (a thread enters it, binds, and
/// hands the socket back; the socket stays in that namespace).
pub fn udp_in(ns: &Netns) -> Result<UdpSocket> {
    let path = format!("/run/netns/{}", ns.name);
    std::thread::spawn(move || -> Result<UdpSocket> {
        let f = fs::File::open(&path).with_context(|| path.clone())?;
        // SAFETY: setns on this (short-lived) thread only, with a valid fd.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        Ok(UdpSocket::bind("127.0.0.1:0")?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the setns thread panicked"))?
}

/// Debian's Prometheus with this configuration, in the namespace, its
/// API on 127.0.0.1:9090.
pub fn prometheus(ns: &Netns, dir: &TempDir, config: &str) -> Result<Proc> {
    let cfg = dir.join("prometheus.yml");
    fs::write(&cfg, config)?;
    let data = dir.join("prometheus-data");
    let log = fs::File::create(dir.join("prometheus.log"))?;
    let mut c = ns.command("prometheus");
    c.arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg("--web.listen-address=127.0.0.1:9090")
        .stdout(Stdio::null())
        .stderr(log);
    Proc::spawn(c, "prometheus")
}

/// One instant query; returns (labels, value) per series.
pub fn query(ns: &Netns, q: &str) -> Result<Vec<(Value, f64)>> {
    let out = ns.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        "--get",
        "--data-urlencode",
        &format!("query={q}"),
        "http://127.0.0.1:9090/api/v1/query",
    ])?;
    let v: Value = serde_json::from_str(&out).with_context(|| format!("prometheus said {out}"))?;
    if v["status"] != "success" {
        bail!("query {q}: {out}");
    }
    Ok(v["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|s| {
            let val = s["value"][1].as_str()?.parse::<f64>().ok()?;
            Some((s["metric"].clone(), val))
        })
        .collect())
}

/// The value of a query that must return one series.
pub fn one(ns: &Netns, q: &str) -> Option<f64> {
    match query(ns, q).ok()?.as_slice() {
        [(_, v)] => Some(*v),
        _ => None,
    }
}
