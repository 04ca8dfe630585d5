//! The classifiers' own cost per packet, from `BPF_PROG_TEST_RUN` with a
//! repeat count: each kind of packet run a few hundred thousand times in the
//! kernel, round after round, with a no-op classifier measured in the same
//! rounds so the test-run loop's own cost comes off. Quiet and repeatable
//! where the run-time statistics under wrk are not, and it can hold two
//! builds side by side (`--before OBJECT`).

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::Array,
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use etherparse::PacketBuilder;
use probe_common::CFG_TRACK_ALL_OUT;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// One build of the classifiers, loaded.
struct Build {
    ebpf: Ebpf,
    /// Per classifier: how long its load (the verifier) took, in ms, and
    /// how many instructions the verifier walked.
    verify: Vec<(&'static str, f64, Option<u32>)>,
}

/// The packets timed: what every other program's traffic looks like to
/// synack (untracked TCP, UDP, ARP) and a followed connection's ACK.
struct Frames {
    tcp4: Vec<u8>,
    tcp6: Vec<u8>,
    udp4: Vec<u8>,
    arp: Vec<u8>,
    syn4: Vec<u8>,
    synack4: Vec<u8>,
    ack4: Vec<u8>,
}

const A4: [u8; 4] = [10, 77, 0, 1];
const B4: [u8; 4] = [10, 77, 0, 2];

fn tcp4(
    sport: u16,
    dport: u16,
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    src: [u8; 4],
    dst: [u8; 4],
) -> Result<Vec<u8>> {
    let mut t = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, 64)
        .tcp(sport, dport, seq, 64240);
    if syn {
        t = t.syn();
    }
    if let Some(a) = ack {
        t = t.ack(a);
    }
    let mut b = Vec::new();
    t.write(&mut b, &[])?;
    Ok(b)
}

fn frames() -> Result<Frames> {
    let mut tcp6 = Vec::new();
    let (mut a6, mut b6) = ([0u8; 16], [0u8; 16]);
    a6[0] = 0xfd;
    a6[15] = 1;
    b6[0] = 0xfd;
    b6[15] = 2;
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv6(a6, b6, 64)
        .tcp(50001, 443, 1, 64240)
        .ack(1)
        .write(&mut tcp6, &[])?;
    let mut udp4 = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(A4, B4, 64)
        .udp(5353, 53)
        .write(&mut udp4, b"dns query")?;
    // An ARP request: Ethernet header, ethertype 0x0806, 28 bytes.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1]);
    arp.extend_from_slice(&A4);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&B4);
    Ok(Frames {
        tcp4: tcp4(50001, 443, 1, Some(1), false, A4, B4)?,
        tcp6,
        udp4,
        arp,
        syn4: tcp4(50002, 443, 1000, None, true, A4, B4)?,
        synack4: tcp4(443, 50002, 9000, Some(1001), true, B4, A4)?,
        ack4: tcp4(50002, 443, 1001, Some(9001), false, A4, B4)?,
    })
}

impl Build {
    fn load(object: &Path) -> Result<Self> {
        let bytes = std::fs::read(object)
            .with_context(|| format!("{}: build it with `cargo xtask build`", object.display()))?;
        let mut ebpf =
            Ebpf::load(&bytes).with_context(|| format!("loading {}", object.display()))?;
        let mut verify = Vec::new();
        for name in ["synack_egress", "synack_ingress"] {
            let p: &mut SchedClassifier = ebpf.program_mut(name).context(name)?.try_into()?;
            let t = std::time::Instant::now();
            p.load().with_context(|| format!("loading {name}"))?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let insns = p.info().ok().and_then(|i| i.verified_instruction_count());
            verify.push((name, ms, insns));
        }
        if let Some(p) = ebpf.program_mut("synack_noop") {
            let p: &mut SchedClassifier = p.try_into()?;
            p.load()?;
        }
        // A test run has no socket: follow every outgoing SYN, so the
        // tracked connection below can be set up by its packets.
        let mut cfg: Array<_, u32> = Array::try_from(ebpf.map_mut("CONFIG").context("CONFIG")?)?;
        cfg.set(0, CFG_TRACK_ALL_OUT, 0)?;
        Ok(Build { ebpf, verify })
    }

    /// The verifier's work per classifier, for results.json.
    fn verify_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (name, ms, insns) in &self.verify {
            m.insert(
                name.to_string(),
                json!({"load_ms": ms, "verified_insns": insns}),
            );
        }
        Value::Object(m)
    }

    fn has(&self, name: &str) -> bool {
        self.ebpf.program(name).is_some()
    }

    /// Mean ns per run of `name` on `frame` over `repeat` runs.
    fn run(&self, name: &str, frame: &[u8], repeat: u32) -> Result<f64> {
        let p: &SchedClassifier = self
            .ebpf
            .program(name)
            .with_context(|| name.to_string())?
            .try_into()?;
        let r = p.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        })?;
        if r.return_value as i32 != -1 {
            bail!(
                "{name} returned {} instead of TC_ACT_UNSPEC",
                r.return_value as i32
            );
        }
        Ok(r.duration.as_nanos() as f64)
    }
}

/// The middle value (the upper one of an even count); NaN when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The object `cargo xtask build` makes (or SYNACK_EBPF_OBJECT).
pub fn default_object() -> PathBuf {
    std::env::var_os("SYNACK_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bpf/bpfel-unknown-none/release/probe-ebpf"))
}

/// Per-packet cost of the build at `object` (and of `before`, side by side
/// in the same rounds), net of the no-op classifier.
pub fn test_run(quick: bool, object: &Path, before: Option<&Path>) -> Result<Value> {
    let f = frames()?;
    // What aya 0.14's loader did before anything else, whatever the object
    // needed: read and parse the kernel's BTF. The patched loader
    // (third_party/aya) skips it for an object without CO-RE relocations;
    // this is what that saves each start-up.
    let btf_ms = median(
        (0..3)
            .map(|_| {
                let t = std::time::Instant::now();
                let _ = aya::Btf::from_sys_fs();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    let now = Build::load(object)?;
    if !now.has("synack_noop") {
        bail!(
            "{} has no synack_noop program: not a build of this tree",
            object.display()
        );
    }
    let then = before.map(Build::load).transpose()?;
    // The tracked connection: SYN out, SYN-ACK in; its ACKs are then a
    // followed flow's ordinary packet (state read and updated, no event).
    let builds: Vec<&Build> = std::iter::once(&now).chain(then.as_ref()).collect();
    for b in &builds {
        b.run("synack_egress", &f.syn4, 1)?;
        b.run("synack_ingress", &f.synack4, 1)?;
    }
    let (rounds, repeat) = if quick { (5, 100_000) } else { (11, 300_000) };
    let cases: [(&str, &str, &[u8]); 6] = [
        ("untracked_tcp4", "synack_egress", &f.tcp4),
        ("untracked_tcp6", "synack_egress", &f.tcp6),
        ("untracked_udp4", "synack_egress", &f.udp4),
        ("untracked_arp", "synack_egress", &f.arp),
        ("untracked_tcp4_in", "synack_ingress", &f.tcp4),
        ("tracked_ack", "synack_egress", &f.ack4),
    ];
    let mut noop = Vec::new();
    let mut got: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); cases.len()]; builds.len()];
    for _ in 0..rounds {
        noop.push(now.run("synack_noop", &f.tcp4, repeat)?);
        for (bi, b) in builds.iter().enumerate() {
            for (ci, (_, prog, frame)) in cases.iter().enumerate() {
                got[bi][ci].push(b.run(prog, frame, repeat)?);
            }
        }
    }
    let noop_ns = median(noop.clone());
    let net = |v: &[f64]| (median(v.to_vec()) - noop_ns).max(0.0);
    let figures = |bi: usize| -> Value {
        let mut m = serde_json::Map::new();
        for (ci, (name, _, _)) in cases.iter().enumerate() {
            m.insert(format!("{name}_ns"), json!(net(&got[bi][ci])));
            m.insert(format!("{name}_rounds_ns"), json!(got[bi][ci]));
        }
        Value::Object(m)
    };
    let untracked = |bi: usize| {
        // The figure the targets name: the worst of the untracked kinds.
        (0..5).map(|ci| net(&got[bi][ci])).fold(0.0, f64::max)
    };
    Ok(json!({
        "rounds": rounds,
        "repeat": repeat,
        "noop_ns": noop_ns,
        "noop_rounds_ns": noop,
        "untracked_ns": untracked(0),
        "tracked_ns": net(&got[0][5]),
        "object": object.display().to_string(),
        "now": figures(0),
        "verify": now.verify_json(),
        "vmlinux_btf_parse_ms": btf_ms,
        "before": then.as_ref().map(|t| json!({
            "verify": t.verify_json(),
            "object": before.map(|p| p.display().to_string()),
            "untracked_ns": untracked(1),
            "tracked_ns": net(&got[1][5]),
            "figures": figures(1),
        })),
        "note": "BPF_PROG_TEST_RUN with repeat, mean ns per run, median over rounds, less synack_noop's median; untracked_ns is the worst of IPv4/IPv6 TCP, UDP, ARP egress and IPv4 TCP ingress",
    }))
}

/// The table's lines for a `test_run` result.
pub fn table(v: &Value) -> String {
    let g = |x: &Value, k: &str| x[k].as_f64().unwrap_or(f64::NAN);
    let mut s = format!(
        "classifier cost per packet (BPF_PROG_TEST_RUN, ns net of a no-op at {:.1} ns, median of {} rounds x {}):\n",
        g(v, "noop_ns"),
        v["rounds"],
        v["repeat"]
    );
    let kinds = [
        "untracked_tcp4",
        "untracked_tcp6",
        "untracked_udp4",
        "untracked_arp",
        "untracked_tcp4_in",
        "tracked_ack",
    ];
    let before = &v["before"]["figures"];
    s.push_str(&format!(
        "  {:<22}{:>10}{:>10}\n",
        "packet",
        "now",
        if before.is_null() { "" } else { "before" }
    ));
    for k in kinds {
        let key = format!("{k}_ns");
        s.push_str(&format!("  {k:<22}{:>10.1}", g(&v["now"], &key)));
        if !before.is_null() {
            s.push_str(&format!("{:>10.1}", g(before, &key)));
        }
        s.push('\n');
    }
    s.push_str(&format!(
        "  reading and parsing /sys/kernel/btf/vmlinux, which the patched loader skips: {:.0} ms\n",
        g(v, "vmlinux_btf_parse_ms")
    ));
    for (label, x) in [("now", &v["verify"]), ("before", &v["before"]["verify"])] {
        if let Some(m) = x.as_object() {
            s.push_str(&format!("  verifier ({label}):"));
            for (name, e) in m {
                s.push_str(&format!(
                    " {name} {:.0} ms, {} insns;",
                    g(e, "load_ms"),
                    e["verified_insns"]
                ));
            }
            s.push('\n');
        }
    }
    s
}
