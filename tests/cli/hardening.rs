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
    let (code, _) = run_into(&p, &["--help"], false, Sink::Full);
    assert_eq!(code, 74, "kiln --help >/dev/full must fail");
    let (code, stderr) = run_into(&p, &["completions", "bash"], false, Sink::Full);
    assert_eq!(code, 74, "{stderr}");
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

// ---------------------------------------------------------------------------------------------
// Files that are not configs
// ---------------------------------------------------------------------------------------------

/// A config whose provider has `provider` lines and whose one step has `step` lines.
fn config_with(provider: &str, step: &str) -> String {
    format!(
        r#"module "m" {{
    step "build" builder="command" {{
        argv "true"
        {step}
    }}
}}
provider "p" module="m" {{
    {provider}
}}
kubernetes "1.31" {{
    version "1.31.4"
}}
matrix "release" {{
    kubernetes "1.31"
    provider "p"
    os "ubuntu-2404"
}}
"#
    )
}

/// `import` takes only `.kdl` files, so a kernel file or a system file is never read, let alone
/// quoted in a syntax error.
#[test]
fn import_reads_only_kdl_files() {
    let p = Project::new()
        .env("HARDENING_CANARY", "canary-value-93f1")
        .with_file(
            "images.kdl",
            &format!("{VALID}import \"/proc/self/environ\"\nimport \"/etc/shadow\"\nimport \"shadow.kdl\"\n"),
        )
        .with_file("shadow", "root:$6$not-a-config\n");
    std::os::unix::fs::symlink(p.path().join("shadow"), p.path().join("shadow.kdl")).unwrap();
    let out = p.kiln(&["check"]);
    out.expect_code(1);
    assert!(!out.stderr.contains("canary-value-93f1"), "{}", out.stderr);
    assert!(!out.stderr.contains("root:"), "{}", out.stderr);
    golden("hardening", "import-not-kdl.stderr", &out.stderr);
}

/// Only regular files are read as configs: a FIFO or a device is a diagnostic, not a hang or an
/// endless read; a config has a size limit.
#[test]
fn configs_must_be_regular_files_of_bounded_size() {
    let p = Project::new().with_file("images.kdl", &format!("{VALID}import \"fifo.kdl\"\n"));
    let status = Command::new("mkfifo")
        .arg(p.path().join("fifo.kdl"))
        .status()
        .unwrap();
    assert!(status.success());
    let fifo = p.kiln(&["check"]);
    fifo.expect_code(1);
    let zero = p.kiln(&["-f", "/dev/zero", "check"]);
    zero.expect_code(1);
    p.write(
        "big.kdl",
        &"// a comment line of forty characters..\n".repeat(30_000),
    );
    let big = p.kiln(&["-f", "big.kdl", "check"]);
    big.expect_code(1);
    let text = [fifo.stderr, zero.stderr, big.stderr].join("\n");
    golden("hardening", "not-regular.stderr", &text);
}

#[test]
fn invalid_utf8_is_located() {
    let p = Project::new();
    let mut bytes = VALID.as_bytes().to_vec();
    bytes.extend_from_slice(b"// caf\xe9\n");
    std::fs::write(p.path().join("images.kdl"), bytes).unwrap();
    let out = p.kiln(&["check"]);
    out.expect_code(1);
    golden("hardening", "invalid-utf8.stderr", &out.stderr);
}

// ---------------------------------------------------------------------------------------------
// Paths confined to their roots
// ---------------------------------------------------------------------------------------------

/// Every way a path could leave its root is a diagnostic of `kiln check` at the property that
/// names it.
#[test]
fn paths_that_escape_their_roots_are_reported_where_they_are_written() {
    let outside = Project::new(); // under /tmp, so its path has the same length everywhere
    std::fs::write(outside.path().join("secret.txt"), "outside").unwrap();
    let cases: Vec<(&str, String)> = vec![
        (
            "ship-absolute",
            config_with(
                &format!("ship \"{}\" to=\"x\"", outside.path().join("secret.txt").display()),
                "",
            ),
        ),
        ("ship-parent", config_with("ship \"../outside\" to=\"x\"", "")),
        ("ship-stdin", config_with("ship \"/dev/stdin\" to=\"x\"", "")),
        ("ship-symlink-out", config_with("ship \"files\" to=\"x\"", "")),
        ("to-parent", config_with("ship \"files/a.txt\" to=\"../../x\"", "")),
        ("to-absolute", config_with("ship \"files/a.txt\" to=\"/abs\"", "")),
        ("outputs-parent", config_with("", "outputs \"../../outside\"")),
        ("outputs-absolute", config_with("", "outputs \"/etc/passwd\"")),
        (
            "object-parent",
            config_with("", "").replace(
                "step \"build\" builder=\"command\" {\n        argv \"true\"",
                "step \"build\" builder=\"command\" {\n        argv \"true\"\n    }\n    step \"publish\" builder=\"upload\" {\n        bucket \"file://bucket\"\n        object \"../../x.qcow2\"",
            ),
        ),
        (
            "cell-name",
            config_with("", "").replace("matrix \"release\" {", "matrix \"release\" name=\"../{os}\" {"),
        ),
        ("secret-device", config_with("secret \"KEY\" file=\"/dev/zero\"", "")),
        ("patch-device", config_with("patch \"/dev/zero\"", "")),
    ];
    let mut text = String::new();
    for (name, config) in cases {
        // The project is `proj/`; `outside` is beside it.
        let p = Project::new()
            .with_file("proj/images.kdl", &config)
            .with_file("proj/files/a.txt", "a\n")
            .with_file("outside", "outside\n");
        if name == "ship-symlink-out" {
            std::os::unix::fs::symlink(
                outside.path().join("secret.txt"),
                p.path().join("proj/files/link"),
            )
            .unwrap();
        }
        let out = p.kiln(&["-f", "proj/images.kdl", "check"]);
        assert_eq!(out.code, 1, "{name}: {}{}", out.stdout, out.stderr);
        let stderr = out
            .stderr
            .replace(&*outside.path().to_string_lossy(), "[OUTSIDE]")
            .replace(
                &*std::fs::canonicalize(outside.path())
                    .unwrap()
                    .to_string_lossy(),
                "[OUTSIDE]",
            );
        text.push_str(&format!("== {name}\n{stderr}"));
    }
    golden("hardening", "confinement.stderr", &text);
}

#[test]
fn a_broken_symlink_or_a_loop_in_a_shipped_directory_is_named() {
    let mut text = String::new();
    for (name, target) in [("dangling", "nowhere"), ("loop", "..")] {
        let p = Project::new()
            .with_file("images.kdl", &config_with("ship \"files\" to=\"x\"", ""))
            .with_file("files/sub/a.txt", "a\n");
        std::os::unix::fs::symlink(target, p.path().join("files/sub/bad")).unwrap();
        let out = p.kiln(&["check"]);
        out.expect_code(1);
        text.push_str(&format!("== {name}\n{}", out.stderr));
    }
    golden("hardening", "ship-symlinks.stderr", &text);
}

// ---------------------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------------------

/// A service-account key: a multi-line secret.
const KEY_JSON: &str = r#"{
  "type": "service_account",
  "project_id": "hardening-test-4471",
  "private_key_id": "0c1e9d2f7a3b5e8d",
  "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7Zp1x\n-----END PRIVATE KEY-----\n",
  "client_email": "builder@hardening-test-4471.iam.gserviceaccount.com"
}"#;

/// Every form of the key that must never be written: the whole of it, each of its lines, and
/// its JSON-escaped form.
fn key_forms() -> Vec<String> {
    let mut forms = vec![
        KEY_JSON.to_string(),
        serde_json::to_string(KEY_JSON)
            .unwrap()
            .trim_matches('"')
            .to_string(),
    ];
    forms.extend(
        KEY_JSON
            .lines()
            .map(str::trim)
            .filter(|l| l.len() >= 6)
            .map(String::from),
    );
    forms
}

fn scan_tree(dir: &std::path::Path, forms: &[String], files: &mut usize) {
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            scan_tree(&path, forms, files);
        } else if meta.is_file() {
            *files += 1;
            let bytes = std::fs::read(&path).unwrap();
            for f in forms {
                let hit = bytes.windows(f.len()).any(|w| w == f.as_bytes());
                assert!(!hit, "{} holds {f:?}", path.display());
            }
        }
    }
}

/// A build whose step prints a multi-line secret — whole, line by line, JSON-escaped, and in an
/// error — leaves none of it in any output of kiln or any file of the cache.
#[test]
fn a_multi_line_secret_is_in_no_output_and_no_cache_file() {
    let script = r#"printf '%s\n' "$KEY"
printf 'as json: {"key": "%s"}\n' "$(printf '%s' "$KEY" | sed 's/\\/\\\\/g; s/"/\\"/g' | awk 'BEGIN{ORS="\\n"} {print}' | sed 's/\\n$//')"
printf '%s\n' "$KEY" | sed -n 3p >&2
echo built {os} > out.txt
"#;
    let p = Project::new()
        .with_file(
            "images.kdl",
            &config_with(
                "secret \"KEY\" file=\"key.json\"\n    ship \"scripts\" to=\"scripts\"",
                "outputs \"out.txt\"",
            )
            .replace("argv \"true\"", "argv \"sh\" \"scripts/leak.sh\""),
        )
        .with_file("key.json", KEY_JSON)
        .with_file("scripts/leak.sh", script);
    let build = p.kiln(&["build"]);
    build.expect_code(0);
    let id = "p/ubuntu-2404/1.31/build";
    let logs = p.kiln(&["logs", id]);
    logs.expect_code(0);
    assert!(
        logs.stdout.contains("as json: {\"key\": \"***\"}"),
        "{}",
        logs.stdout
    );
    assert!(
        !logs.stdout.contains("\"type\": \"service_account\""),
        "{}",
        logs.stdout
    );
    let outputs = [
        build,
        logs,
        p.kiln(&["plan", "--json"]),
        p.kiln(&["explain", id]),
        p.kiln(&["images", "--json"]),
        p.kiln(&["build", "--force", id]),
    ];
    let forms = key_forms();
    for out in &outputs {
        for f in &forms {
            assert!(
                !out.stdout.contains(f.as_str()) && !out.stderr.contains(f.as_str()),
                "{f:?} in\n{}{}",
                out.stdout,
                out.stderr
            );
        }
    }
    let mut files = 0;
    scan_tree(&p.path().join("cache"), &forms, &mut files);
    assert!(files > 10, "scanned only {files} files");
}
