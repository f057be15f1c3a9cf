//! What people and CI read: exit codes, the plan's layout (changes first, cached nodes
//! summarised), a failure with its log tail, retries, the build summary, and GitHub Actions'
//! annotations and step summary.

use crate::support::{Output, Project, golden};

const GOLDEN: &str = "report";

/// Two providers × two OSes of `command` steps: build runs the shipped `make.sh`, publish copies
/// its output into `published/`.
fn project() -> Project {
    Project::new()
        .with_file(
            "modules/cmd.kdl",
            r#"
module "cmd" {
    var "image_os" "{os}"
    step "build" builder="command" {
        argv "sh" "-c" "sh scripts/make.sh > out.txt"
        outputs "out.txt"
    }
    step "publish" builder="command" inputs="vars" {
        argv "sh" "-c" "mkdir -p ../../../published && cp upstream/build/out.txt ../../../published/{name}.txt"
    }
}
"#,
        )
        .with_file(
            "images.kdl",
            r#"
import "modules/cmd.kdl"
kubernetes "1.31" {
    version "1.31.4"
    containerd "2.2.0"
}
matrix "m" {
    kubernetes "1.31"
    provider "alpha" "beta"
    os "one" "two"
}
provider "alpha" module="cmd" {
    ship "alpha" to="scripts"
}
provider "beta" module="cmd" {
    ship "beta" to="scripts"
}
"#,
        )
        .with_file("alpha/make.sh", "echo alpha-image $image_os\n")
        .with_file("beta/make.sh", "echo beta-image $image_os\n")
}

fn code_line(what: &str, out: &Output) -> String {
    format!("{:>3}  {what}\n", out.code)
}

/// `--detailed-exitcode`: 0 with nothing to do, 2 with changes, 1 on every error, a usage
/// error included; without it a usage error is 2.
#[test]
fn exit_codes() {
    let p = project();
    let mut table = String::new();
    let mut run = |what: &str, args: &[&str]| {
        let out = p.kiln(args);
        table.push_str(&code_line(what, &out));
        out
    };
    run(
        "plan --detailed-exitcode (a new config)",
        &["plan", "--detailed-exitcode"],
    );
    run("build (a new config)", &["build"]).expect_code(0);
    run(
        "plan --detailed-exitcode (nothing to do)",
        &["plan", "--detailed-exitcode"],
    );
    run(
        "plan --detailed-exitcode --os windows (the filters select no cell)",
        &["plan", "--detailed-exitcode", "--os", "windows"],
    );
    run(
        "plan --os windows (the filters select no cell)",
        &["plan", "--os", "windows"],
    );
    run(
        "plan --detailed-exitcode --force nope (no such node)",
        &["plan", "--detailed-exitcode", "--force", "nope"],
    );
    run(
        "plan --detailed-exitcode --bogus (a flag clap rejects)",
        &["plan", "--detailed-exitcode", "--bogus"],
    );
    run("plan --bogus (a flag clap rejects)", &["plan", "--bogus"]);
    run(
        "plan --detailed-exitcode -f missing.kdl (no config)",
        &["-f", "missing.kdl", "plan", "--detailed-exitcode"],
    );
    run(
        "plan --detailed-exitcode --force alpha/one/1.31/build (changes)",
        &[
            "plan",
            "--detailed-exitcode",
            "--force",
            "alpha/one/1.31/build",
        ],
    );
    p.write("beta/make.sh", "echo broken >&2; exit 3\n");
    run(
        "plan --detailed-exitcode (changes)",
        &["plan", "--detailed-exitcode"],
    );
    run("build (a step fails)", &["build"]);
    run("--help", &["--help"]);
    run("--version", &["--version"]);
    golden(GOLDEN, "exit-codes.txt", &table);
}

/// A plan lists what runs first, counts each cell's cached nodes in one line and the cells with
/// nothing to do in another; `--all` lists every node; a plan with nothing to do says so in one
/// line.
#[test]
fn plans_show_changes_first_and_summarise_what_is_cached() {
    let p = project();
    p.kiln(&["build"]).expect_code(0);
    let noop = p.kiln(&["plan"]);
    noop.expect_code(0);
    golden(GOLDEN, "plan-noop.txt", &noop.stdout);
    let md = p.kiln(&["plan", "--format", "markdown"]);
    golden(GOLDEN, "plan-noop.md", &md.stdout);

    p.write("alpha/make.sh", "echo alpha-image v2 $image_os\n");
    let changes = p.kiln(&["plan"]);
    changes.expect_code(0);
    golden(GOLDEN, "plan-changes.txt", &changes.stdout);
    let all = p.kiln(&["plan", "--all"]);
    golden(GOLDEN, "plan-changes-all.txt", &all.stdout);
    let md = p.kiln(&["plan", "--format", "markdown"]);
    golden(GOLDEN, "plan-changes.md", &md.stdout);
    // JSON lists every node, --all or not.
    let json = p.kiln(&["plan", "--json"]).json();
    assert_eq!(json["nodes"].as_array().map(Vec::len), Some(8));
    assert_eq!(p.kiln(&["plan", "--json", "--all"]).json(), json);
}

/// Replaces what differs between runs: `[hh:mm:ss]` stamps and durations such as `0.8s`.
fn steady(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        // [hh:mm:ss]
        if b[i] == b'['
            && b.len() >= i + 10
            && b[i + 9] == b']'
            && b[i + 3] == b':'
            && b[i + 6] == b':'
            && [1, 2, 4, 5, 7, 8].iter().all(|k| b[i + k].is_ascii_digit())
        {
            out.push_str("[hh:mm:ss]");
            i += 10;
            continue;
        }
        // 12.3s after a space or an opening parenthesis
        if b[i].is_ascii_digit() && (i == 0 || b[i - 1] == b' ' || b[i - 1] == b'(') {
            let mut j = i;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            if j + 2 < b.len() && b[j] == b'.' && b[j + 1].is_ascii_digit() {
                let mut k = j + 1;
                while k < b.len() && b[k].is_ascii_digit() {
                    k += 1;
                }
                if k < b.len() && b[k] == b's' {
                    out.push_str("N.Ns");
                    i = k + 1;
                    continue;
                }
            }
        }
        let c = text[i..].chars().next().unwrap();
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// The summary after the progress lines: from the first blank line on.
fn summary_part(stderr: &str) -> &str {
    stderr.split_once("\n\n").map_or("", |(_, s)| s)
}

/// A failing project: beta's build prints 25 lines, one with its secret, and fails; it is
/// retried once with its debug settings.
fn failing() -> Project {
    let p = project();
    p.edit("modules/cmd.kdl", |t| {
        t.replace(
            r#"step "build" builder="command" {"#,
            "step \"build\" builder=\"command\" retries=1 {\n        debug-env \"PACKER_LOG=1\"",
        )
    });
    p.edit("images.kdl", |t| {
        t.replace(
            "ship \"beta\" to=\"scripts\"",
            "ship \"beta\" to=\"scripts\"\n    secret \"TOKEN\" file=\"token.txt\"",
        )
    });
    p.write("token.txt", "s3cr3t-t0ken\n");
    p.write(
        "beta/make.sh",
        "for i in $(seq 1 25); do echo \"step $i of 25\" >&2; done\necho \"token was $TOKEN\" >&2\necho 'boom: disk full' >&2\nexit 3\n",
    );
    p
}

/// A failed node shows the last lines of its log, secrets redacted; each retry is a line of its
/// own; every node is in the summary with its outcome.
#[test]
fn a_failure_shows_its_log_tail_and_retries() {
    let p = failing();
    let out = p.kiln(&["build", "-j", "1"]);
    out.expect_code(1);
    assert!(!out.stderr.contains("s3cr3t-t0ken"), "{}", out.stderr);
    assert!(!out.stdout.contains("s3cr3t-t0ken"), "{}", out.stdout);
    let progress = steady(&out.stderr);
    assert!(
        progress.contains("[hh:mm:ss] retry 2/2 with PACKER_LOG=1  beta/one/1.31/build\n"),
        "{progress}"
    );
    golden(
        GOLDEN,
        "build-failure.txt",
        &format!("{}{}", steady(summary_part(&out.stderr)), out.stdout),
    );
}

/// With `--fail-fast`, the nodes that never started are in the summary as `not started`, and
/// the counts add up to every node.
#[test]
fn fail_fast_lists_what_never_started() {
    let p = failing();
    p.write("alpha/make.sh", "echo no >&2; exit 1\n");
    let out = p.kiln(&["build", "-j", "1", "--fail-fast"]);
    out.expect_code(1);
    golden(
        GOLDEN,
        "build-fail-fast.txt",
        &format!("{}{}", steady(summary_part(&out.stderr)), out.stdout),
    );
}

/// The offline example, copied into a project.
fn local_example() -> Project {
    let root = crate::support::repo_root();
    Project::new()
        .with_path(&root.join("modules/local.kdl"), "modules/local.kdl")
        .with_path(
            &root.join("examples/local/images.kdl"),
            "examples/local/images.kdl",
        )
        .with_path(&root.join("examples/local/files"), "examples/local/files")
}

/// `kiln cache gc` keeps the stored copies of input files that the next plan diffs against;
/// orphan lines call only a publish step's facts published; `kiln cache gc --orphans` forgets
/// the orphans' records (and says what they published, which stays).
#[test]
fn gc_keeps_what_plans_diff_against_and_forgets_orphans_on_request() {
    const F: &str = "examples/local/images.kdl";
    let p = local_example();
    p.kiln(&["-f", F, "build", "--quiet"]).expect_code(0);
    p.kiln(&["-f", F, "cache", "gc"]).expect_code(0);
    p.edit("examples/local/files/motd", |t| {
        format!("{t}one more line\n")
    });
    let plan = p.kiln(&["-f", F, "plan"]);
    plan.expect_code(0);
    assert!(
        plan.stdout.contains("· files/motd changed\n"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("+one more line"),
        "no diff after gc:\n{}",
        plan.stdout
    );

    // Drop the 1.32 series: its six nodes are orphans.
    p.edit(F, |t| {
        t.replace(r#"kubernetes "1.31" "1.32""#, r#"kubernetes "1.31""#)
    });
    let plan = p.kiln(&["-f", F, "plan"]);
    let orphans: Vec<&str> = plan
        .stdout
        .lines()
        .filter(|l| l.starts_with("-  "))
        .collect();
    assert_eq!(orphans.len(), 6, "{}", plan.stdout);
    for line in &orphans {
        if line.contains("/publish ") {
            assert!(line.contains("; published: "), "{line}");
        } else {
            // The build's `format=qcow2` is no published artifact.
            assert!(!line.contains("published"), "{line}");
        }
    }
    let dry = p.kiln(&["-f", F, "cache", "gc", "--orphans", "--dry-run"]);
    dry.expect_code(0);
    assert_eq!(
        dry.stdout.matches("would forget orphan ").count(),
        6,
        "{}",
        dry.stdout
    );
    assert!(dry.stdout.contains("would be removed"), "{}", dry.stdout);
    assert_eq!(p.kiln(&["-f", F, "plan"]).stdout, plan.stdout);
    let gc = p.kiln(&["-f", F, "cache", "gc", "--orphans"]);
    gc.expect_code(0);
    assert_eq!(
        gc.stdout.matches("forgot orphan ").count(),
        6,
        "{}",
        gc.stdout
    );
    assert!(
        gc.stdout
            .contains("forgot orphan local/flatcar/1.32/publish; it published "),
        "{}",
        gc.stdout
    );
    let after = p.kiln(&["-f", F, "plan"]);
    assert!(!after.stdout.contains("orphan"), "{}", after.stdout);
    // What was published stays.
    assert!(
        p.path()
            .join("examples/local/images/local-flatcar-k8s-1.32.qcow2")
            .is_file()
    );
    p.kiln(&["-f", F, "cache", "verify"]).expect_code(0);
}

/// Under GitHub Actions, a failed node is an `::error` annotation titled with its id, and the
/// markdown plan and build summary go to the job summary file.
#[test]
fn github_actions_get_annotations_and_a_job_summary() {
    let mut p = failing();
    p.set_env("GITHUB_ACTIONS", "true");
    let summary = p.path().join("step-summary.md");
    p.set_env("GITHUB_STEP_SUMMARY", &summary.to_string_lossy());
    let plan = p.kiln(&["plan"]);
    plan.expect_code(0);
    assert!(
        plan.stdout
            .ends_with("Plan: 8 to build, 0 to rebuild, 0 cached\n"),
        "{}",
        plan.stdout
    );
    let out = p.kiln(&["build", "-j", "1"]);
    out.expect_code(1);
    assert!(!out.stdout.contains("s3cr3t-t0ken"));
    golden(GOLDEN, "github-annotations.txt", &steady(&out.stdout));
    golden(
        GOLDEN,
        "github-step-summary.md",
        &steady(&p.read("step-summary.md")),
    );

    // A config error is annotated at its position.
    p.edit("images.kdl", |t| {
        t.replace("ship \"alpha\" to=", "ship \"alpha\" too=")
    });
    let check = p.kiln(&["check"]);
    check.expect_code(1);
    assert!(
        check.stderr.contains("::error file=images.kdl,line=13,col=18,title=kiln%3A%3Aconfig%3A%3Aunknown::unknown property `too` on `ship`%0Ahelp: did you mean `to`?\n"),
        "{}",
        check.stderr
    );

    // Elsewhere, neither.
    let q = failing();
    let out = q.kiln(&["build", "-j", "1"]);
    assert!(!out.stdout.contains("::error"), "{}", out.stdout);
}

/// `kiln matrix --format github` is a matrix for `fromJSON`.
#[test]
fn matrix_for_github_actions() {
    let p = project();
    let out = p.kiln(&["matrix", "--format", "github", "--provider", "beta"]);
    out.expect_code(0);
    assert_eq!(
        out.stdout,
        concat!(
            r#"{"include":[{"cell":"beta-one-k8s-1.31","matrix":"m","kubernetes":"1.31","provider":"beta","os":"one"},"#,
            r#"{"cell":"beta-two-k8s-1.31","matrix":"m","kubernetes":"1.31","provider":"beta","os":"two"}]}"#,
            "\n"
        )
    );
}

/// `--color` against `NO_COLOR` and `CLICOLOR_FORCE`, on a pipe (where `auto` means none).
#[test]
fn color_follows_the_flag_then_no_color_then_clicolor_force() {
    let mut p = project();
    p.unset_env("NO_COLOR");
    let colored = |p: &Project, args: &[&str]| p.kiln(args).stdout.contains('\x1b');
    assert!(!colored(&p, &["plan"]));
    assert!(colored(&p, &["plan", "--color", "always"]));
    assert!(colored(&p, &["--color=always", "plan"]));
    p.set_env("CLICOLOR_FORCE", "1");
    assert!(colored(&p, &["plan"]));
    assert!(!colored(&p, &["plan", "--color", "never"]));
    p.set_env("CLICOLOR_FORCE", "0");
    assert!(!colored(&p, &["plan"]));
    p.set_env("CLICOLOR_FORCE", "1");
    p.set_env("NO_COLOR", "1");
    assert!(!colored(&p, &["plan"]));
    assert!(colored(&p, &["plan", "--color", "always"]));
    // Progress lines are coloured the same way; plain lines on a pipe whatever is asked.
    let out = p.kiln(&["build", "--color", "always", "--progress", "live"]);
    out.expect_code(0);
    assert!(
        out.stderr.contains("\x1b[32mbuilt \x1b[0m"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("] start  "), "{}", out.stderr);
}

/// With `--json`, errors are JSON objects on stdout: `{code, message, file, line, column, help}`.
#[test]
fn json_errors() {
    let p = project();
    let mut out = String::new();
    let mut run = |args: &[&str]| {
        let o = p.kiln(args);
        assert!(o.code != 0, "{args:?} succeeded");
        out.push_str(&format!(
            "$ kiln {}  (exit {})\n{}",
            args.join(" "),
            o.code,
            o.stdout
        ));
        for line in o.stdout.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON object a line");
            for k in ["code", "message", "file", "line", "column", "help"] {
                assert!(v.get(k).is_some(), "no {k} in {v}");
            }
        }
    };
    run(&["plan", "--json", "--os", "windows"]);
    run(&["check", "--json", "--bogus"]);
    run(&["logs", "alpha/one/1.31/build", "--json"]);
    run(&["build", "--json", "--cell", "nope"]);
    p.edit("images.kdl", |t| {
        t.replace(
            "ship \"alpha\" to=\"scripts\"",
            "ship \"alpha\" too=\"scripts\"",
        )
    });
    run(&["check", "--json"]);
    run(&["explain", "alpha/one/1.31/build", "--json"]);
    golden(GOLDEN, "json-errors.txt", &out);
}

/// `--json` on every command that reports.
#[test]
fn json_on_every_reporting_command() {
    let p = project();
    let json = |args: &[&str], code: i32| {
        let o = p.kiln(args);
        o.expect_code(code);
        o.json()
    };
    let check = json(&["check", "--json"], 0);
    assert_eq!(
        (check["cells"].as_u64(), check["nodes"].as_u64()),
        (Some(4), Some(8))
    );
    let explain = json(&["explain", "alpha/one/1.31/build", "--json"], 0);
    assert_eq!(explain["plan"]["action"], "new");
    assert_eq!(explain["deps"], serde_json::json!([]));
    p.write("beta/make.sh", "echo broken >&2; exit 3\n");
    let build = json(&["build", "--json"], 1);
    assert_eq!(build["summary"]["built"], 4);
    assert_eq!(build["summary"]["failed"], 2);
    let failed = build["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "beta/one/1.31/build")
        .unwrap();
    assert_eq!(failed["outcome"], "failed");
    assert!(
        failed["log_tail"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == "broken"),
        "{failed}"
    );
    let logs = json(&["logs", "alpha/one/1.31/build", "--json"], 0);
    assert!(
        logs["log"]
            .as_str()
            .unwrap()
            .contains("alpha/one/1.31/build"),
        "{logs}"
    );
    let verify = json(&["cache", "verify", "--json"], 0);
    assert_eq!(verify["problems"], serde_json::json!([]));
    assert!(verify["blobs_checked"].as_u64().unwrap() > 0);
    let gc = json(&["cache", "gc", "--json", "--dry-run"], 0);
    assert_eq!(gc["dry_run"], true);
    let images = json(&["images", "--json"], 0);
    assert_eq!(images.as_array().map(Vec::len), Some(4));
    let plan = json(&["plan", "--json"], 0);
    assert_eq!(plan["summary"]["new"], 4);
}

/// `kiln init` writes a starter config that `kiln check` accepts, for every provider; it
/// overwrites nothing.
#[test]
fn init_writes_a_config_that_checks() {
    for provider in ["local", "aws", "gcp", "openstack", "hcloud"] {
        let p = Project::new();
        let out = p.kiln(&["init", "--provider", provider]);
        out.expect_code(0);
        assert!(
            p.path().join(format!("modules/{provider}.kdl")).is_file(),
            "{provider}"
        );
        let check = p.kiln(&["check"]);
        check.expect_code(0);
        assert!(check.stderr.is_empty(), "{provider}: {}", check.stderr);
        p.kiln(&["plan", "--refresh=false"]).expect_code(0);
        let again = p.kiln(&["init", "--provider", provider]);
        again.expect_code(1);
        assert!(again.stderr.contains("exists already"), "{}", again.stderr);
    }
    // The default is the offline provider, and it builds.
    let p = Project::new();
    p.kiln(&["-f", "sub/images.kdl", "init"]).expect_code(0);
    assert!(
        p.read("sub/images.kdl")
            .contains("import \"modules/local.kdl\"")
    );
    let out = p.kiln(&["-f", "sub/images.kdl", "build", "--quiet"]);
    out.expect_code(0);
    assert_eq!(out.stdout, "6 built, 0 cached\n");
}

/// Completions for bash, zsh and fish; the version with the commit when built from git; help
/// with examples.
#[test]
fn completions_version_and_help() {
    let p = Project::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = p.kiln(&["completions", shell]);
        out.expect_code(0);
        for sub in ["plan", "build", "completions", "init"] {
            assert!(out.stdout.contains(sub), "{shell} lacks {sub}");
        }
    }
    let version = p.kiln(&["--version"]).stdout;
    let rest = version
        .strip_prefix(&format!("kiln {}", env!("CARGO_PKG_VERSION")))
        .unwrap_or_else(|| panic!("{version}"));
    let commit = rest
        .strip_prefix(" (commit ")
        .and_then(|r| r.strip_suffix(")\n"));
    assert!(
        rest == "\n"
            || commit.is_some_and(|c| c.len() == 12 && c.bytes().all(|b| b.is_ascii_hexdigit())),
        "{version}"
    );
    let help = p.kiln(&["--help"]).stdout;
    assert!(help.contains("Examples:\n  kiln init"), "{help}");
}

/// A cached node found in the remote cache is counted as such in the summarised plan.
#[test]
fn summarised_plans_count_remote_hits() {
    let p = project();
    let key = p.kiln(&["cache", "keygen", "ci-1", "-o", "ci-1.key"]);
    key.expect_code(0);
    let mut p = p;
    p.set_env("KILN_TRUSTED_KEYS", key.stdout.trim());
    let remote = format!("file://{}/remote", p.path().display());
    p.kiln(&[
        "build",
        "-q",
        "--remote-cache",
        &remote,
        "--signing-key",
        "ci-1.key",
    ])
    .expect_code(0);
    std::fs::remove_dir_all(p.path().join("cache")).unwrap();
    let plan = p.kiln(&[
        "plan",
        "--remote-cache",
        &remote,
        "--force",
        "alpha/one/1.31/build",
    ]);
    plan.expect_code(0);
    assert!(
        plan.stdout
            .contains("\n  =  1 node cached (1 in the remote cache)\n"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains(
            "=  3 other cells with nothing to do: 6 nodes cached (6 in the remote cache); "
        ),
        "{}",
        plan.stdout
    );
}
