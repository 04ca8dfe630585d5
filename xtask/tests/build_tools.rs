//! `cargo xtask build` on a machine without the tools the eBPF side needs
//! says what is missing and what to run, before anything is built. The
//! machine's PATH is replaced by a directory that holds only the tools the
//! case keeps (links to the real ones).

use std::{os::unix::fs::symlink, path::PathBuf, process::Command};

fn which(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Runs `xtask build` with a PATH holding only `keep`; returns its stderr.
fn build_with_only(keep: &[&str]) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!(
        "synack-xtask-path-{}-{}",
        std::process::id(),
        keep.len()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    for t in keep {
        let real = which(t).unwrap_or_else(|| panic!("{t} is not on this machine's PATH"));
        symlink(real, dir.join(t)).expect("link");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("build")
        .env("PATH", &dir)
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .expect("run xtask");
    let _ = std::fs::remove_dir_all(&dir);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn no_nightly_toolchain_is_named_with_the_fix() {
    // No rustup, no rustc: `rustc +nightly` cannot run.
    let (ok, err) = build_with_only(&[]);
    assert!(!ok);
    assert!(err.contains("no nightly toolchain"), "{err}");
    assert!(err.contains("cargo xtask setup"), "{err}");
}

#[test]
fn no_bpf_linker_is_named_with_the_fix() {
    // The toolchains are there (rustup's proxies), bpf-linker is not.
    let (ok, err) = build_with_only(&["rustc", "cargo", "rustup"]);
    assert!(!ok);
    assert!(err.contains("bpf-linker is missing"), "{err}");
    assert!(err.contains("cargo xtask setup"), "{err}");
}
