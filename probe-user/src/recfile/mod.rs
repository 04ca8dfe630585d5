//! Files of synack records read back (`synack compare`, `synack report`):
//! the NAME=FILE argument, the file streamed a line at a time (a day of
//! monitor records is too big to hold as JSON values), bad lines reported
//! with their numbers and left out, one line read again by its offset.

use crate::model::compare::parse_line;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::{
    fs::File,
    io::{BufRead, BufReader, Seek, SeekFrom},
    path::PathBuf,
};

/// A side as the command line names it: NAME=FILE, or FILE (named by its
/// file name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Named {
    pub name: String,
    pub path: PathBuf,
}

pub(crate) fn named(arg: &str) -> Named {
    match arg.split_once('=') {
        Some((n, p)) if !n.is_empty() && !n.contains('/') => Named {
            name: n.to_string(),
            path: PathBuf::from(p),
        },
        _ => Named {
            name: std::path::Path::new(arg)
                .file_name()
                .map_or(arg.to_string(), |f| f.to_string_lossy().into_owned()),
            path: PathBuf::from(arg),
        },
    }
}

/// Where a record is in its file: its line (from 1) and the byte offset
/// the line starts at (to read it again).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Place {
    pub line: usize,
    pub offset: u64,
}

/// What reading a file gave besides its records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub records: usize,
    pub bad_lines: usize,
}

/// At most this many bad lines are named per file; the rest are counted.
const BAD_NAMED: usize = 20;

/// Hands each record of the file to `f`, in order. Bad lines are reported
/// on stderr (`tool: FILE:LINE: why, left out`) and skipped; an unreadable
/// file, an empty one, or one without a single record is an error that
/// says what to do.
pub(crate) fn each(tool: &str, n: &Named, mut f: impl FnMut(Value, Place)) -> Result<Counts> {
    let shown = n.path.display();
    let file = File::open(&n.path)
        .with_context(|| format!("cannot read {shown} (a file of synack --json records)"))?;
    let mut r = BufReader::with_capacity(1 << 16, file);
    let mut buf = Vec::new();
    let (mut line, mut offset) = (0usize, 0u64);
    let mut c = Counts::default();
    let mut any_text = false;
    loop {
        buf.clear();
        let got = r
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("reading {shown} after line {line}"))?;
        if got == 0 {
            break;
        }
        line += 1;
        let place = Place { line, offset };
        offset += got as u64;
        let parsed = match std::str::from_utf8(&buf) {
            Ok(text) => {
                any_text |= !text.trim().is_empty();
                parse_line(text)
            }
            Err(_) => {
                any_text = true;
                Err("not UTF-8 text: not a synack record".to_string())
            }
        };
        match parsed {
            Ok(Some(v)) => {
                c.records += 1;
                f(v, place);
            }
            Ok(None) => {}
            Err(why) => {
                c.bad_lines += 1;
                if c.bad_lines <= BAD_NAMED {
                    eprintln!("{tool}: {shown}:{line}: {why}, left out");
                }
            }
        }
    }
    if c.bad_lines > BAD_NAMED {
        eprintln!(
            "{tool}: {shown}: {} more bad lines left out (the first {BAD_NAMED} are named above)",
            c.bad_lines - BAD_NAMED
        );
    }
    if c.records == 0 {
        if !any_text {
            bail!("{shown} is empty: record with `synack --json --count N URL > {shown}`");
        }
        bail!(
            "{shown} holds no synack record ({} line{} left out)",
            c.bad_lines,
            if c.bad_lines == 1 { "" } else { "s" }
        );
    }
    Ok(c)
}

/// The record on the line that starts at `offset` (one `each` handed out).
pub(crate) fn record_at(n: &Named, offset: u64) -> Result<Value> {
    let shown = n.path.display();
    let mut file = File::open(&n.path).with_context(|| format!("cannot read {shown} again"))?;
    file.seek(SeekFrom::Start(offset))
        .with_context(|| format!("seeking in {shown}"))?;
    let mut text = String::new();
    BufReader::new(file)
        .read_line(&mut text)
        .with_context(|| format!("reading {shown} again at byte {offset}"))?;
    match parse_line(&text) {
        Ok(Some(v)) => Ok(v),
        _ => bail!("{shown} changed while it was read (byte {offset} is no longer a record)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        assert_eq!(
            named("fargate=/tmp/a.jsonl"),
            Named {
                name: "fargate".into(),
                path: "/tmp/a.jsonl".into()
            }
        );
        assert_eq!(named("/tmp/x=y/a.jsonl").name, "a.jsonl");
        assert_eq!(named("b.jsonl").name, "b.jsonl");
    }

    #[test]
    fn streams_records_skips_bad_lines_and_reads_one_again() {
        let dir = std::env::temp_dir().join(format!("synack-recfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.jsonl");
        let rec = r#"{"url":"http://h/","user":{},"wire":{},"phases":{},"n":1}"#;
        let rec2 = r#"{"url":"http://h/","user":{},"wire":{},"phases":{},"n":2}"#;
        std::fs::write(
            &p,
            format!("{rec}\n\n{{\"url\": \"x\"\n{{\"other\": 1}}\n{rec2}\n\u{00ff}"),
        )
        .unwrap();
        let n = named(&format!("A={}", p.display()));
        let mut got = Vec::new();
        let c = each("test", &n, |v, at| got.push((v["n"].as_u64(), at))).unwrap();
        assert_eq!(
            c,
            Counts {
                records: 2,
                bad_lines: 3
            }
        );
        assert_eq!(got[0].1.line, 1);
        assert_eq!(got[1].1.line, 5);
        assert_eq!(record_at(&n, got[1].1.offset).unwrap()["n"], 2);

        std::fs::write(&p, "\n  \n").unwrap();
        let e = each("test", &n, |_, _| {}).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
        std::fs::write(&p, "{\"url\": 1}\n").unwrap();
        let e = each("test", &n, |_, _| {}).unwrap_err().to_string();
        assert!(
            e.contains("holds no synack record (1 line left out)"),
            "{e}"
        );
        let e = each("test", &named("/nonexistent/x.jsonl"), |_, _| {}).unwrap_err();
        assert!(format!("{e:#}").contains("cannot read"), "{e:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
