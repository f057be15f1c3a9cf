//! Compiles kiln's static step supervisor, `src/process/supervise/static_main.rs`, into
//! `$OUT_DIR/kiln-supervise`, and tells the library where it is (`KILN_SUPERVISOR`, which it
//! embeds with `include_bytes!`).
//!
//! One `rustc` call, not a `[[bin]]`: the program has no std, so it must be built with
//! `panic=abort`, and cargo builds all of a package's targets with one panic strategy. It has no
//! dependencies, and it is always optimized, whatever the profile. It is linked statically
//! without start files or libc (it defines `_start` and makes its system calls itself). Its
//! lints are checked where the library compiles the same `run.rs` and `sys.rs`.

use std::path::PathBuf;
use std::process::Command;

pub fn compile() {
    let dir = "src/process/supervise";
    println!("cargo:rerun-if-changed={dir}");
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    let linker_var = format!(
        "CARGO_TARGET_{}_LINKER",
        target.to_uppercase().replace(['-', '.'], "_")
    );
    println!("cargo:rerun-if-env-changed={linker_var}");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("kiln-supervise");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut cmd = Command::new(rustc);
    cmd.args(["--edition", "2024", "--crate-type", "bin"])
        .args(["--crate-name", "kiln_supervise", "--target", &target])
        .args([
            "-C",
            "panic=abort",
            "-C",
            "opt-level=2",
            "-C",
            "strip=symbols",
        ])
        // A static executable at a fixed address: nothing has to relocate it at start.
        .args([
            "-C",
            "relocation-model=static",
            "-C",
            "target-feature=+crt-static",
        ])
        .args(["-C", "link-arg=-nostartfiles", "-C", "link-arg=-nostdlib"])
        .arg("-o")
        .arg(&out)
        .arg(format!("{dir}/static_main.rs"));
    if let Ok(linker) = std::env::var(&linker_var) {
        cmd.arg("-C").arg(format!("linker={linker}"));
    }
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run rustc to build kiln's step supervisor: {e}"));
    if !output.status.success() {
        panic!(
            "compiling kiln's step supervisor ({dir}/static_main.rs) failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    println!("cargo:rustc-env=KILN_SUPERVISOR={}", out.display());
}
