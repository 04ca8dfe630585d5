//! Reports what synack has attached in the current network namespace (tcx
//! links and clsact filters named synack_*) and whether given program ids
//! are still loaded. The end-to-end tests run it with `ip netns exec`.
//!
//! Output: one JSON object {"attached": [prog ids], "loaded": [ids of the
//! asked ones still loaded]}.

use aya::programs::{SchedClassifier, TcAttachType, loaded_programs};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut ifaces = Vec::new();
    let mut ask = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--iface" => ifaces.extend(args.next()),
            "--id" => ask.extend(args.next().and_then(|s| s.parse::<u32>().ok())),
            _ => {
                eprintln!("usage: synack-inspect [--iface IF]... [--id PROG_ID]...");
                std::process::exit(2);
            }
        }
    }
    let mut attached = Vec::new();
    for i in &ifaces {
        for t in [TcAttachType::Ingress, TcAttachType::Egress] {
            match SchedClassifier::query_tcx(i, t) {
                Ok((_, progs)) => attached.extend(
                    progs
                        .iter()
                        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("synack_")))
                        .map(|p| p.id()),
                ),
                Err(e) => {
                    eprintln!("query_tcx {i}: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    let loaded: Vec<u32> = loaded_programs()
        .filter_map(|p| p.ok())
        .map(|p| p.id())
        .filter(|id| ask.contains(id))
        .collect();
    println!(
        "{}",
        serde_json::json!({ "attached": attached, "loaded": loaded })
    );
}
