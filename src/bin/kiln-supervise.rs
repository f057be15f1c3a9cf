//! kiln's per-step supervisor as an executable of its own (see `kiln::process::supervise`): a
//! small program is much cheaper to start than kiln itself, and a step starts one per process.
//!
//! `kiln-supervise ARG0 PROGRAM ARGS...`

fn main() {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    kiln::process::supervise::run(&argv)
}
