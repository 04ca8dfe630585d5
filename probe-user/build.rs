//! Embeds the eBPF object built by `cargo xtask build` into the binary, so the
//! release binary is self-contained.
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let default = manifest.join("../target/bpf/bpfel-unknown-none/release/probe-ebpf");
    let src = env::var_os("SYNACK_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or(default);
    println!("cargo:rerun-if-env-changed=SYNACK_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", src.display());
    let dst = out.join("probe-ebpf.o");
    match fs::read(&src) {
        Ok(bytes) => fs::write(&dst, bytes).expect("write OUT_DIR/probe-ebpf.o"),
        Err(_) => {
            // Plain `cargo build`/`clippy`/unit tests work without the nightly
            // toolchain; such a binary says at run time how to get the object.
            println!(
                "cargo:warning=eBPF object {} not found: build with `cargo xtask build` to embed it",
                src.display()
            );
            fs::write(&dst, b"").expect("write OUT_DIR/probe-ebpf.o");
        }
    }
}
