//! `synack compare` and `synack report` on real lab runs, as root: direct
//! and through a declared proxy (squid in mid) must differ in the path and
//! in the middlebox and network shares, two direct runs must not differ in
//! total, a run with the client's CPU throttled must differ in the client's
//! share; the report of them opens in headless Chromium offline with no
//! console message, its charts drawn; bad input (an empty file, a truncated
//! line, another tool's records) gives a message with its line number,
//! never a panic.

use anyhow::{Context, Result};
use serde_json::Value;
use std::process::Command;
use synack_tests::{
    CpuCgroup, TempDir, browse, holds, is_root, json_lines, lab_synack, synack_bin,
    topo::{Bins, Delays, Lab, MID_C_V4, Via},
};

fn write(dir: &TempDir, name: &str, recs: &[Value]) -> Result<String> {
    let p = dir.0.join(name);
    let text: String = recs.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&p, text)?;
    Ok(p.to_string_lossy().into_owned())
}

fn compare(args: &[&str]) -> Result<(i32, String, String)> {
    synack(&[&["compare"], args].concat())
}

fn synack(args: &[&str]) -> Result<(i32, String, String)> {
    let o = Command::new(synack_bin()).args(args).output()?;
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

    // The client's CPU throttled (5% of a CPU shared with two spinners, as
    // tests/tests/lab_client.rs does): the client's share is what differs.
    holds("compare: a throttled client", || {
        let cg = CpuCgroup::new(5)?;
        let spinners = cg.spinners(2)?;
        // nsenter, not `ip netns exec`: that remounts /sys, and the
        // cgroup's directory with it.
        let o = Command::new("sh")
            .args(cg.wrap().iter().skip(1))
            .arg("nsenter")
            .arg(format!("--net=/run/netns/{}", lab.client.name))
            .arg(synack_bin())
            .args(["--json", "--cacert"])
            .arg(lab.ca_path())
            .args(["--count", "8", &url])
            .output()?;
        let recs = json_lines(&o.stdout)?;
        anyhow::ensure!(
            recs.len() == 8,
            "{} records: {}",
            recs.len(),
            String::from_utf8_lossy(&o.stderr)
        );
        drop(spinners);
        drop(cg);
        let path = write(&dir, "throttled.jsonl", &recs)?;
        let (code, out, err) = compare(&[
            &format!("free={direct}"),
            &format!("throttled={path}"),
            "--json",
        ])?;
        assert_eq!(code, 0, "{err}");
        let r: Value = serde_json::from_str(&out).context("compare --json")?;
        let t = &r["targets"][0];
        let client = phase(t, "client");
        let d = client["diff_ms"].as_f64().unwrap_or(0.0);
        anyhow::ensure!(
            client["different"] == true && d > 5.0,
            "the client's share did not move: {client}"
        );
        // Whatever else moved, the network did not take the client's time.
        let net = phase(t, "network")["diff_ms"].as_f64().unwrap_or(0.0);
        anyhow::ensure!(
            net.abs() < d / 2.0,
            "network {net} ms against client {d} ms: {t}"
        );
        let s = t["sentence"].as_str().unwrap_or("");
        // The client's time is in the total: it moves too, and the sentence
        // names the client first.
        anyhow::ensure!(
            phase(t, "total")["different"] == true,
            "the total did not move: {t}"
        );
        {
            anyhow::ensure!(
                s.starts_with("throttled is slower by")
                    && s.contains(": +")
                    && s.split(": +").nth(1).is_some_and(|x| {
                        x.split([',', ';'])
                            .next()
                            .is_some_and(|first| first.contains("(client)"))
                    }),
                "the sentence does not name the client first: {s}"
            );
        }
        eprintln!("throttled against free: {s}");
        Ok(())
    })?;
    let throttled = dir.0.join("throttled.jsonl").to_string_lossy().into_owned();

    report_opens_offline_with_its_charts(&dir, &direct, &proxied, &throttled)?;
    report_bad_input(&dir, &direct)?;
    Ok(())
}

/// The embedded data of a report page.
fn page_data(html: &str) -> Result<Value> {
    let start = html
        .find(r#"<script type="application/json" id="synack-data">"#)
        .context("no data element")?;
    let rest = &html[start..];
    let body = &rest[rest.find('>').context("data element")? + 1..];
    let end = body.find("</script>").context("data element's end")?;
    Ok(serde_json::from_str(&body[..end])?)
}

/// How many charts the page must draw for its data: per target, three
/// time charts per source with records, one histogram per phase seen, one
/// waterfall per chosen request.
fn charts_expected(d: &Value) -> usize {
    let mut n = 0;
    for t in d["targets"].as_array().into_iter().flatten() {
        let sources = t["sources"].as_array().cloned().unwrap_or_default();
        let drawn = sources.iter().filter(|s| s["records"].as_u64() > Some(0));
        n += 3 * drawn.clone().count();
        let mut phases: Vec<&str> = sources
            .iter()
            .flat_map(|s| s["dists"].as_array().into_iter().flatten())
            .filter_map(|x| x["phase"].as_str())
            .collect();
        phases.sort_unstable();
        phases.dedup();
        n += phases.len();
        n += drawn
            .map(|s| s["waterfalls"].as_array().map_or(0, Vec::len))
            .sum::<usize>();
    }
    n
}

fn report_opens_offline_with_its_charts(
    dir: &TempDir,
    direct: &str,
    proxied: &str,
    throttled: &str,
) -> Result<()> {
    let page = dir.0.join("report.html");
    let out = page.to_str().context("path")?;
    let (code, _, err) = synack(&[
        "report",
        &format!("direct={direct}"),
        &format!("proxied={proxied}"),
        &format!("throttled={throttled}"),
        "-o",
        out,
    ])?;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("wrote") && err.contains("24 records from 3 files"),
        "{err}"
    );
    let html = std::fs::read_to_string(&page)?;
    let data = page_data(&html)?;
    // Two comparisons (proxied, throttled, each against direct), whose
    // sentences are compare's own.
    let cmp = &data["targets"][0]["compare"];
    assert_eq!(cmp.as_array().map(Vec::len), Some(2), "{cmp}");
    let proxied_sentence = cmp[0]["sentence"].as_str().unwrap_or_default().to_string();
    assert!(
        proxied_sentence.starts_with("The paths differ"),
        "{proxied_sentence}"
    );
    let want = charts_expected(&data);
    assert!(
        want >= 3 * 3 + 10 + 6,
        "too few charts for three sources: {want}"
    );

    let seen = browse(&page, Some((1200, 3000)))?;
    assert!(
        seen.console.is_empty(),
        "console messages: {:?}",
        seen.console
    );
    assert!(
        seen.dom.contains(r#"data-rendered="ok""#),
        "not drawn: {}",
        &seen.dom[..seen.dom.len().min(3000)]
    );
    assert!(
        seen.dom.contains(&format!(r#"data-charts="{want}""#)),
        "charts: want {want}"
    );
    assert_eq!(seen.dom.matches(r#"<svg class="chart""#).count(), want);
    // The bars are there, and the comparison's sentence as text.
    assert!(seen.dom.matches("<rect").count() > 200, "few bars");
    let shown = proxied_sentence
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    assert!(
        seen.dom.contains(&shown),
        "the sentence is not on the page: {proxied_sentence}"
    );

    // The screenshot is a drawn page: many pixels not white, and the
    // shares' colours among them.
    let png = seen.png.context("no screenshot")?;
    let mut dec = png::Decoder::new(std::io::Cursor::new(png));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size().context("png size")?];
    let info = reader.next_frame(&mut buf)?;
    let px = info.color_type.samples();
    let mut inked = 0usize;
    let mut colours = std::collections::HashSet::new();
    for p in buf[..info.buffer_size()].chunks(px) {
        if p[..3].iter().any(|&c| c < 235) {
            inked += 1;
        }
        colours.insert((p[0] >> 4, p[1] >> 4, p[2] >> 4));
    }
    let total = (info.width * info.height) as usize;
    eprintln!(
        "report: {want} charts, {}x{} screenshot, {:.1}% inked, {} colours",
        info.width,
        info.height,
        100.0 * inked as f64 / total as f64,
        colours.len()
    );
    assert!(
        inked * 20 > total,
        "the screenshot is nearly blank: {inked} of {total}"
    );
    // network #4e79a7 and server #59a14f, as the stylesheet gives them.
    for (name, c) in [("network", (0x4, 0x7, 0xa)), ("server", (0x5, 0xa, 0x4))] {
        assert!(colours.contains(&c), "no {name} colour in the screenshot");
    }

    // The check can fail: a page that loads anything is caught by its own
    // Content-Security-Policy, as a console message (and no request).
    let leaky = dir.0.join("leaky.html");
    std::fs::write(
        &leaky,
        html.replacen("<body>", r#"<body><img src="http://127.0.0.1:9/x.png">"#, 1),
    )?;
    let seen = browse(&leaky, None)?;
    assert!(
        seen.console
            .iter()
            .any(|l| l.contains("Content Security Policy")),
        "a load was not reported: {:?}",
        seen.console
    );
    Ok(())
}

fn report_bad_input(dir: &TempDir, direct: &str) -> Result<()> {
    let out = dir.0.join("bad.html");
    let out = out.to_str().context("path")?;
    let empty = dir.0.join("empty.jsonl");
    let (code, _, err) = synack(&["report", empty.to_str().context("path")?, "-o", out])?;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("is empty") && !err.contains("panicked"),
        "{err}"
    );
    let (code, _, err) = synack(&[
        "report",
        dir.0.join("cut.jsonl").to_str().context("path")?,
        "-o",
        out,
    ])?;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("cut.jsonl:2: not JSON"), "{err}");
    assert!(err.contains("cut.jsonl:3: not a synack record"), "{err}");
    let (code, _, err) = synack(&[
        "report",
        dir.0.join("other.jsonl").to_str().context("path")?,
        "-o",
        out,
    ])?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("holds no synack record"), "{err}");
    let (code, _, err) = synack(&["report", direct, "-o", dir.0.to_str().context("path")?])?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is a directory"), "{err}");
    // Records of an older synack (no started_at): drawn on the records'
    // order instead of the clock.
    let text = std::fs::read_to_string(direct)?;
    let old: String = json_lines(text.as_bytes())?
        .into_iter()
        .map(|mut r| {
            r.as_object_mut().map(|o| o.remove("started_at"));
            format!("{r}\n")
        })
        .collect();
    let oldf = dir.0.join("old.jsonl");
    std::fs::write(&oldf, old)?;
    let (code, _, err) = synack(&["report", oldf.to_str().context("path")?, "-o", out])?;
    assert_eq!(code, 0, "{err}");
    let d = page_data(&std::fs::read_to_string(out)?)?;
    assert_eq!(d["targets"][0]["axis"], "order", "{d}");
    Ok(())
}
