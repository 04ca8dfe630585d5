//! `synack compare A.jsonl B.jsonl`: reads two files of records, compares
//! them (model::compare) and prints the table and the sentences, or JSON.

use crate::{cli::CompareArgs, model::compare, output};
use anyhow::{Context, Result, bail};
use std::process::ExitCode;

/// One side: its name (NAME=FILE, else the file's name) and its records.
struct Source {
    name: String,
    records: Vec<serde_json::Value>,
}

/// Reads one side; bad lines are reported with their numbers and left out,
/// a side with no usable record is an error.
fn read(arg: &str) -> Result<Source> {
    let (name, path) = match arg.split_once('=') {
        Some((n, p)) if !n.is_empty() && !n.contains('/') => (n.to_string(), p),
        _ => (
            std::path::Path::new(arg)
                .file_name()
                .map_or(arg.to_string(), |f| f.to_string_lossy().into_owned()),
            arg,
        ),
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {path} (a file of synack --json records)"))?;
    let (records, bad) = compare::parse_records(&text);
    for b in &bad {
        eprintln!("synack compare: {path}:{}: {}, left out", b.line, b.why);
    }
    if records.is_empty() {
        if text.trim().is_empty() {
            bail!("{path} is empty: record with `synack --json --count N URL > {path}`");
        }
        bail!(
            "{path} holds no synack record ({} line{} left out)",
            bad.len(),
            if bad.len() == 1 { "" } else { "s" }
        );
    }
    Ok(Source { name, records })
}

pub fn command(a: &CompareArgs) -> Result<ExitCode> {
    let (x, y) = (read(&a.a)?, read(&a.b)?);
    let (an, bn) = if x.name == y.name {
        ("A".to_string(), "B".to_string())
    } else {
        (x.name, y.name)
    };
    let report = compare::compare(&an, &x.records, &bn, &y.records);
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&report).context("cannot write the report as JSON")?
        );
    } else {
        print!("{}", output::compare_table(&report));
    }
    Ok(ExitCode::SUCCESS)
}
