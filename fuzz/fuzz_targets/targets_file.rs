//! The `synack monitor` targets file: a person writes it, but a bad line
//! must cost one error message, never the monitor (which reloads the file
//! while it runs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use synack::model::targets;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (t, e) = targets::parse(&text);
    let lines = text.lines().count();
    // At most one outcome per line, each naming a real line, in order: the
    // messages point a person at the line to fix.
    assert!(t.len() + e.len() <= lines);
    assert!(e.iter().all(|e| (1..=lines).contains(&e.line)));
    assert!(e.windows(2).all(|w| w[0].line < w[1].line));
    assert!(t.windows(2).all(|w| w[0].line < w[1].line));
    // Names are metric label values: two targets sharing one would merge.
    let names: HashSet<&str> = t.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names.len(), t.len());
    for t in &t {
        // The monitor schedules with these: zero would spin, and it does
        // arithmetic with them (timeout x attempts, now + interval) that
        // must not overflow.
        for d in [t.timeout, t.interval].into_iter().flatten() {
            assert!(!d.is_zero() && d <= targets::MAX_DURATION, "{d:?}");
        }
        assert!((1..=100).contains(&t.reuse));
    }
});
