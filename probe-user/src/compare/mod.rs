//! `synack compare A.jsonl B.jsonl`: reads two files of records, compares
//! them (model::compare) and prints the table and the sentences, or JSON.

use crate::{cli::CompareArgs, model::compare, output, recfile};
use anyhow::{Context, Result};
use std::process::ExitCode;

/// One side: its name (NAME=FILE, else the file's name) and what compare
/// needs of each record.
struct Source {
    name: String,
    records: Vec<compare::Obs>,
}

fn read(arg: &str) -> Result<Source> {
    let n = recfile::named(arg);
    let mut records = Vec::new();
    recfile::each("synack compare", &n, |v, _| {
        records.push(compare::Obs::of(&v))
    })?;
    Ok(Source {
        name: n.name,
        records,
    })
}

pub fn command(a: &CompareArgs) -> Result<ExitCode> {
    let (x, y) = (read(&a.a)?, read(&a.b)?);
    let (an, bn) = if x.name == y.name {
        ("A".to_string(), "B".to_string())
    } else {
        (x.name, y.name)
    };
    let report = compare::compare_obs(&an, &x.records, &bn, &y.records);
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
