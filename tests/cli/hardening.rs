//! Hostile input: configs that used to crash kiln or make it print without bound, outputs that
//! cannot be written, secrets that must not leak in any form, and paths that must stay inside
//! their roots.

use std::fs::File;
use std::process::{Command, Stdio};

use crate::support::{Output, Project, golden};

/// A valid module, provider, release and matrix, to which a case adds its problem.
const VALID: &str = r#"module "m" {
    step "build" builder="command" {
        argv "true"
    }
}
provider "p" module="m"
kubernetes "1.31" {
    version "1.31.4"
}
matrix "release" {
    kubernetes "1.31"
    provider "p"
    os "ubuntu-2404"
}
"#;

/// Runs `kiln check` on `images.kdl` = `text` and returns what it printed; it must fail with
/// exit 1 (a config error), not crash.
#[track_caller]
fn check_fails(text: &str) -> Output {
    let out = Project::new()
        .with_file("images.kdl", text)
        .kiln(&["check"]);
    out.expect_code(1);
    assert!(
        !out.stderr.contains("panicked") && !out.stderr.contains("overflow"),
        "{}",
        out.stderr
    );
    out
}

// ---------------------------------------------------------------------------------------------
// Crashes
// ---------------------------------------------------------------------------------------------

#[test]
fn deep_nesting_is_refused_before_the_parser_recurses() {
    let out = check_fails(&"a{".repeat(1400));
    golden("hardening", "deep-nesting.stderr", &out.stderr);
}

#[test]
fn nested_block_comments_are_refused_before_the_parser_recurses() {
    let out = check_fails(&format!("{VALID}{}", "/*".repeat(100_000)));
    assert!(
        out.stderr.contains("kiln::config::comment-too-complex"),
        "{}",
        out.stderr
    );
}

/// The parser's error recovery recurses once per bad token; many of them must not overflow.
#[test]
fn many_bad_tokens_do_not_overflow_the_stack() {
    for text in [
        "}".repeat(100_000),
        "(a)".repeat(50_000),
        "x=\n".repeat(50_000),
    ] {
        let out = check_fails(&text);
        assert!(
            out.stderr.contains("kiln::config::syntax"),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn a_long_import_chain_stops_at_the_depth_limit() {
    let mut p = Project::new().with_file("images.kdl", &format!("{VALID}import \"i/0.kdl\"\n"));
    for i in 0..3000 {
        p = p.with_file(
            &format!("i/{i}.kdl"),
            &format!("import \"{}.kdl\"\n", i + 1),
        );
    }
    let out = p.kiln(&["check"]);
    out.expect_code(1);
    golden("hardening", "import-chain.stderr", &out.stderr);
}

/// An error past column 65,535 used to panic in the renderer: the line is clipped around it.
#[test]
fn an_error_far_along_a_line_is_shown_clipped() {
    let line = format!("x {}\"unterminated\n", "a ".repeat(40_000));
    let out = check_fails(&format!("{VALID}{line}"));
    assert!(out.stderr.len() < 2_000, "{} bytes", out.stderr.len());
    golden("hardening", "long-line.stderr", &out.stderr);
}

/// A byte-order mark or a Unicode line separator next to a syntax error is quoted, not a panic.
#[test]
fn multibyte_separators_next_to_an_error_do_not_panic() {
    for sep in ["\u{feff}", "\u{2028}", "\u{2029}", "\u{85}"] {
        for text in [
            format!("{sep}module \"m\" {{\n  x 1.2.3 {{\n"),
            format!("module \"m\" {sep}{{ 1.2.3. \n"),
            format!("a{sep}1.2.3.4{sep}\n"),
        ] {
            check_fails(&text);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Output that cannot be written
// ---------------------------------------------------------------------------------------------

/// A project of two `command` nodes that succeed.
fn buildable() -> Project {
    Project::new().with_file(
        "images.kdl",
        r#"module "m" {
    step "build" builder="command" {
        argv "sh" "-c" "echo built {os} > out.txt; echo a line of log"
        outputs "out.txt"
    }
    step "publish" builder="command" {
        argv "sh" "-c" "echo published {os}"
    }
}
provider "p" module="m"
kubernetes "1.31" { version "1.31.4"; }
matrix "m" { kubernetes "1.31"; provider "p"; os "x" "y"; }
"#,
    )
}

enum Sink {
    Full,
    Closed,
}

/// Runs kiln with stdout (or stderr) going to `/dev/full` or to a pipe whose reader is gone.
fn run_into(p: &Project, args: &[&str], stderr: bool, sink: Sink) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.args(args).current_dir(p.path()).env("NO_COLOR", "1");
    let (target, keep): (Stdio, Option<std::io::PipeReader>) = match sink {
        Sink::Full => (
            File::options()
                .write(true)
                .open("/dev/full")
                .unwrap()
                .into(),
            None,
        ),
        Sink::Closed => {
            let (reader, writer) = std::io::pipe().unwrap();
            drop(reader);
            (writer.into(), None)
        }
    };
    drop(keep);
    if stderr {
        cmd.stderr(target).stdout(Stdio::piped());
    } else {
        cmd.stdout(target).stderr(Stdio::piped());
    }
    let out = cmd.output().unwrap();
    let text = if stderr { out.stdout } else { out.stderr };
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&text).into_owned(),
    )
}

#[test]
fn a_full_stdout_is_an_io_error_exit_and_the_build_still_records() {
    let p = buildable();
    let (code, stderr) = run_into(&p, &["build"], false, Sink::Full);
    assert_eq!(code, 74, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.ends_with("error: cannot write to stdout: No space left on device (os error 28)\n"),
        "{stderr}"
    );
    assert_eq!(
        p.kiln(&["build"]).expect_code(0).stdout,
        "0 built, 4 cached\n"
    );
    let (code, stderr) = run_into(&p, &["plan"], false, Sink::Full);
    assert_eq!(code, 74, "kiln plan >/dev/full must fail: {stderr}");
    let (code, _) = run_into(&p, &["check"], false, Sink::Full);
    assert_eq!(code, 74);
}

#[test]
fn a_full_stderr_loses_no_node() {
    let p = buildable();
    let (code, stdout) = run_into(&p, &["build"], true, Sink::Full);
    assert_eq!(code, 74, "{stdout}");
    assert_eq!(stdout, "4 built, 0 cached\n");
    assert_eq!(
        p.kiln(&["build"]).expect_code(0).stdout,
        "0 built, 4 cached\n"
    );
}

#[test]
fn a_closed_pipe_ends_quietly() {
    let p = buildable();
    let (code, stderr) = run_into(&p, &["plan"], false, Sink::Closed);
    assert_eq!((code, stderr.as_str()), (141, ""));
    let (code, stderr) = run_into(&p, &["build"], false, Sink::Closed);
    assert_eq!(code, 141, "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
    assert_eq!(
        p.kiln(&["build"]).expect_code(0).stdout,
        "0 built, 4 cached\n"
    );
}

// ---------------------------------------------------------------------------------------------
// Unbounded diagnostics
// ---------------------------------------------------------------------------------------------

/// 24,000 errors on one 48 KB line: 50 are shown, each with its line clipped, then a count.
#[test]
fn at_most_50_diagnostics_are_shown_each_clipped() {
    let out = check_fails(&"a;".repeat(24_000));
    assert_eq!(out.stderr.matches("kiln::config::unknown").count(), 50);
    assert!(
        out.stderr
            .ends_with("… and 23950 more\nerror: the config has 24000 errors\n"),
        "{}",
        &out.stderr[out.stderr.len().saturating_sub(300)..]
    );
    assert!(out.stderr.len() < 50 * 1_000, "{} bytes", out.stderr.len());
}

/// Two labels far apart show their own lines, not every line between them.
#[test]
fn far_apart_labels_show_only_their_lines() {
    let filler: String = (0..5_000).map(|i| format!("// filler {i}\n")).collect();
    let text = format!(
        "{VALID}{filler}matrix \"release\" {{\n    kubernetes \"1.31\"\n    provider \"p\"\n    os \"x\"\n}}\n"
    );
    let out = check_fails(&text);
    assert!(!out.stderr.contains("filler 2500"), "{}", out.stderr);
    assert!(out.stderr.len() < 3_000, "{} bytes", out.stderr.len());
}
