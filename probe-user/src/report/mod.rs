//! `synack report FILE.jsonl... -o report.html`: reads files of records a
//! line at a time (recfile), keeps a few fields of each, aggregates them
//! (model::report), reads the waterfalls' records again by their offsets,
//! and writes one self-contained page (output::report_html).

use crate::{
    cli::ReportArgs,
    model::report::{self, Row, SourceInfo, Waterfall},
    output, recfile,
};
use anyhow::{Context, Result, bail};
use std::{io::Write, process::ExitCode};

pub fn command(a: &ReportArgs) -> Result<ExitCode> {
    let mut named: Vec<recfile::Named> = a.files.iter().map(|f| recfile::named(f)).collect();
    // Two files of the same name (a/x.jsonl, b/x.jsonl) are told apart.
    for i in 0..named.len() {
        if named[..i].iter().any(|n| n.name == named[i].name) {
            named[i].name = format!("{} ({})", named[i].name, i + 1);
        }
    }
    // The waterfalls' records are read again by offset: a pipe cannot be.
    for n in &named {
        if let Ok(m) = std::fs::metadata(&n.path)
            && !m.is_file()
        {
            bail!(
                "{} is not a regular file (a pipe?): synack report reads it twice; save it first (zcat day.jsonl.gz > day.jsonl)",
                n.path.display()
            );
        }
    }
    let mut infos = Vec::new();
    let mut rows = Vec::new();
    for n in &named {
        let mut rs = Vec::new();
        let c = recfile::each("synack report", n, |v, at| {
            rs.push((at.line, Row::of(&v, at.offset)))
        })?;
        infos.push(SourceInfo {
            name: n.name.clone(),
            file: n.path.display().to_string(),
            records: c.records,
            bad_lines: c.bad_lines,
        });
        rows.push(rs);
    }
    let title = a.title.clone().unwrap_or_else(|| {
        let names: Vec<&str> = infos.iter().map(|s| s.name.as_str()).collect();
        format!("synack report: {}", names.join(" vs "))
    });
    let (mut data, picks) = report::build(&title, crate::host::clock::wall_of(None), infos, &rows);
    drop(rows);
    for (t, per_source) in data.targets.iter_mut().zip(picks) {
        for (s, chosen) in t.sources.iter_mut().zip(per_source) {
            for (label, offset, line) in chosen {
                let v = recfile::record_at(&named[s.source], offset)?;
                s.waterfalls.push(Waterfall::of(label, line, &v));
            }
        }
    }
    let html = output::report_html(&data).context("cannot lay out the page")?;
    if a.output == "-" {
        std::io::stdout()
            .lock()
            .write_all(html.as_bytes())
            .context("cannot write the page to standard output")?;
        return Ok(ExitCode::SUCCESS);
    }
    if std::path::Path::new(&a.output).is_dir() {
        bail!(
            "{} is a directory: give the page's file name, e.g. -o {}/report.html",
            a.output,
            a.output
        );
    }
    // Written beside the target and renamed: a page being read is never
    // half written, and a failure leaves the old one.
    let tmp = format!("{}.tmp{}", a.output, std::process::id());
    if let Err(e) = std::fs::write(&tmp, &html).and_then(|()| std::fs::rename(&tmp, &a.output)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| {
            format!(
                "cannot write {} (is its directory there and writable?)",
                a.output
            )
        });
    }
    let records: usize = data.sources.iter().map(|s| s.records).sum();
    eprintln!(
        "synack report: wrote {} ({} KB): {} target{}, {} record{} from {} file{}",
        a.output,
        html.len().div_ceil(1024),
        data.targets.len(),
        if data.targets.len() == 1 { "" } else { "s" },
        records,
        if records == 1 { "" } else { "s" },
        data.sources.len(),
        if data.sources.len() == 1 { "" } else { "s" },
    );
    Ok(ExitCode::SUCCESS)
}
