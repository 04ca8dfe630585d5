//! `synack compare` on two real lab runs, as root: direct and through a
//! declared proxy (squid in mid) must differ in the path and in the
//! middlebox and network shares, two direct runs must not differ in total;
//! bad input (an empty file, a truncated line, another tool's records)
//! gives a message with its line number, never a panic.

use anyhow::{Context, Result};
use serde_json::Value;
use std::process::Command;
use synack_tests::{
    TempDir, is_root, json_lines, lab_synack, synack_bin,
    topo::{Bins, Delays, Lab, MID_C_V4, Via},
};

fn write(dir: &TempDir, name: &str, recs: &[Value]) -> Result<String> {
    let p = dir.0.join(name);
    let text: String = recs.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&p, text)?;
    Ok(p.to_string_lossy().into_owned())
}

fn compare(args: &[&str]) -> Result<(i32, String, String)> {
    let o = Command::new(synack_bin())
        .arg("compare")
        .args(args)
        .output()?;
    Ok((
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    ))
}

fn phase<'a>(t: &'a Value, name: &str) -> &'a Value {
    t["phases"]
        .as_array()
        .and_then(|p| p.iter().find(|x| x["phase"] == name))
        .unwrap_or(&Value::Null)
}

#[test]
#[cfg_attr(
    not(feature = "root"),
    ignore = "needs root, eBPF and the lab's tools: cargo xtask test"
)]
fn compare_names_the_phase_that_differs() -> Result<()> {
    assert!(is_root(), "the lab needs root: cargo xtask test");
    let lab = Lab::up(
        &Bins::beside_synack(),
        Delays::rtt(
            std::time::Duration::from_millis(4),
            std::time::Duration::from_millis(40),
        ),
        true,
    )?;
    let dir = TempDir::new()?;
    let url = lab.url(Via::Direct, true, false, "/delay/20");
    let proxy = format!("http://{MID_C_V4}:3128");
    let run = |extra: &[&str]| -> Result<Vec<Value>> {
        let mut args = vec!["--count", "8"];
        args.extend(extra);
        args.push(&url);
        Ok(lab_synack(&lab, &[], &args)?.0)
    };
    let direct = write(&dir, "direct.jsonl", &run(&[])?)?;
    let again = write(&dir, "again.jsonl", &run(&[])?)?;
    let proxied = write(&dir, "proxied.jsonl", &run(&["-x", &proxy])?)?;

    // Through the proxy: the path differs, and the proxy's share appears
    // where the network's was.
    let (code, out, err) = compare(&[
        &format!("direct={direct}"),
        &format!("proxied={proxied}"),
        "--json",
    ])?;
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).context("compare --json")?;
    let t = &r["targets"][0];
    assert_eq!(
        (t["a"]["path"].as_str(), t["b"]["path"].as_str()),
        (Some("direct"), Some("proxy")),
        "{t}"
    );
    let mb = phase(t, "middlebox");
    assert_eq!(mb["different"], true, "{mb}");
    assert!(mb["diff_ms"].as_f64().is_some_and(|d| d > 80.0), "{mb}");
    let net = phase(t, "network");
    assert!(
        net["different"] == true && net["diff_ms"].as_f64().is_some_and(|d| d < -80.0),
        "{net}"
    );
    assert_eq!(phase(t, "server")["different"], false, "{t}");
    let s = t["sentence"].as_str().unwrap_or("");
    assert!(s.starts_with("The paths differ (direct: direct"), "{s}");
    assert!(s.contains("middlebox"), "{s}");

    // The same path twice: no difference in total.
    let (code, out, err) = compare(&[&direct, &again, "--json"])?;
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out)?;
    let t = &r["targets"][0];
    assert_eq!(phase(t, "total")["different"], false, "{t}");
    assert!(
        t["sentence"]
            .as_str()
            .is_some_and(|s| s.starts_with("No difference")),
        "{t}"
    );
    // The human table names both sides and the method.
    let (code, out, _) = compare(&[&format!("a={direct}"), &format!("b={again}")])?;
    assert_eq!(code, 0);
    assert!(out.contains("a p50") && out.contains("bootstrap"), "{out}");

    // Bad input: messages with the file and line, exit 2 when nothing is left.
    let empty = dir.0.join("empty.jsonl");
    std::fs::write(&empty, "")?;
    let (code, _, err) = compare(&[empty.to_str().context("path")?, &direct])?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is empty"), "{err}");
    let text = std::fs::read_to_string(&direct)?;
    let cut = dir.0.join("cut.jsonl");
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(
        &cut,
        format!(
            "{}\n{}\n{{\"name\": \"other\"}}\n",
            lines[0],
            &lines[1][..40]
        ),
    )?;
    let (code, out, err) = compare(&[cut.to_str().context("path")?, &again])?;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("cut.jsonl:2: not JSON"), "{err}");
    assert!(err.contains("cut.jsonl:3: not a synack record"), "{err}");
    assert!(!err.contains("panicked") && !out.is_empty(), "{err}");
    let other = dir.0.join("other.jsonl");
    std::fs::write(&other, "{\"name\": \"other\"}\n")?;
    let (code, _, err) = compare(&[other.to_str().context("path")?, &direct])?;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("holds no synack record (1 line left out)"),
        "{err}"
    );
    // The records the probe printed parse as the lines they came from.
    assert_eq!(json_lines(text.as_bytes())?.len(), 8);
    Ok(())
}
