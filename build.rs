//! Puts the commit kiln is built from into `kiln --version` (`KILN_COMMIT`), when the source is
//! a git checkout and git is there; otherwise the version stands alone. And builds the static
//! step supervisor kiln embeds (`build/supervisor.rs`).

use std::process::Command;

#[path = "build/supervisor.rs"]
mod supervisor;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    supervisor::compile();
    println!("cargo:rerun-if-env-changed=KILN_COMMIT");
    // Only kiln's own checkout names the commit, not a repository kiln's source sits in.
    let own = git(&["rev-parse", "--show-toplevel"]).is_some_and(|top| {
        let here = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
        std::fs::canonicalize(top).ok() == std::fs::canonicalize(here).ok()
    });
    let commit = std::env::var("KILN_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            own.then(|| git(&["rev-parse", "--short=12", "HEAD"]))
                .flatten()
        });
    // Built again when HEAD moves: HEAD itself, the branch it names, and packed refs.
    for path in ["HEAD", "packed-refs"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(p) = git(&["rev-parse", "--git-path", &branch])
    {
        println!("cargo:rerun-if-changed={p}");
    }
    let suffix = commit.map(|c| format!(" (commit {c})")).unwrap_or_default();
    println!("cargo:rustc-env=KILN_VERSION_SUFFIX={suffix}");
}
