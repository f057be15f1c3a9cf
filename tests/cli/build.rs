//! `kiln build` end to end: incremental runs, early cutoff, failures, retries, timeouts,
//! interruption, concurrent builds on one cache, and secrets that must never leak.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Output, Project};

/// A module of `command` steps: build writes `out.txt` from the shipped script's output,
/// publish copies the upstream output into `published/` of the project.
const MODULE: &str = r#"
module "cmd" {
    setting "publish_dir" required=#true
    var "image_os" "{os}"
    step "build" builder="command" {
        argv "sh" "-c" "sh scripts/make.sh > out.txt"
        outputs "out.txt"
    }
    step "publish" builder="command" inputs="vars" {
        argv "sh" "-c" "mkdir -p {publish_dir} && cp upstream/build/out.txt {publish_dir}/{name}.txt"
    }
}
"#;

fn config(extra_provider: &str) -> String {
    format!(
        r#"
import "modules/cmd.kdl"
kubernetes "1.31" {{
    version "1.31.4"
    containerd "2.2.0"
}}
matrix "m" {{
    kubernetes "1.31"
    provider "alpha" "beta"
    os "one" "two"
}}
provider "alpha" module="cmd" {{
    publish_dir "PUBDIR/alpha"
    ship "alpha" to="scripts"
}}
provider "beta" module="cmd" {{
    publish_dir "PUBDIR/beta"
    ship "beta" to="scripts"
    {extra_provider}
}}
"#
    )
}

/// One cell whose module has the given step.
fn one_step(step: &str) -> Project {
    Project::new()
        .with_file(
            "modules/cmd.kdl",
            &format!("module \"cmd\" {{\n    {step}\n}}\n"),
        )
        .with_file(
            "images.kdl",
            r#"
import "modules/cmd.kdl"
kubernetes "1.31" { version "1.31.4"; }
matrix "m" { kubernetes "1.31"; provider "p"; os "x"; }
provider "p" module="cmd"
"#,
        )
}

fn project(extra_provider: &str) -> Project {
    let p = Project::new().with_file("modules/cmd.kdl", MODULE);
    let pubdir = p.path().join("published");
    let text = config(extra_provider).replace("PUBDIR", &pubdir.to_string_lossy());
    p.with_file("images.kdl", &text)
        .with_file("alpha/make.sh", "echo alpha-image $image_os\n")
        .with_file("beta/make.sh", "echo beta-image $image_os\n")
}

/// The node ids a build ran, from its progress lines.
fn built(out: &Output) -> Vec<String> {
    let mut ids: Vec<String> = out
        .stderr
        .lines()
        .filter_map(|l| {
            l.split_once("] built  ")
                .map(|(_, rest)| rest.split(' ').next().unwrap_or("").to_string())
        })
        .collect();
    ids.sort();
    ids
}

#[test]
fn second_build_runs_nothing() {
    let p = project("");
    let first = p.kiln(&["build", "-j", "2"]);
    first.expect_code(0);
    assert_eq!(first.stdout.trim(), "8 built, 0 cached");
    assert_eq!(
        p.read("published/alpha/alpha-one-k8s-1.31.txt"),
        "alpha-image one\n"
    );
    let second = p.kiln(&["build"]);
    second.expect_code(0);
    assert_eq!(second.stdout.trim(), "0 built, 8 cached");
    let plan = p.kiln(&["plan", "--detailed-exitcode"]);
    plan.expect_code(0);
    assert!(
        plan.stdout.contains("No changes. 8 nodes cached."),
        "{}",
        plan.stdout
    );
}

#[test]
fn a_changed_script_rebuilds_exactly_its_dependents_and_cutoff_holds() {
    let p = project("");
    p.kiln(&["build"]).expect_code(0);

    // A change that alters beta's output: beta's builds and publishes run again, nothing else.
    p.write("beta/make.sh", "echo beta-image-v2 $image_os\n");
    let plan = p.kiln(&["plan"]);
    assert!(
        plan.stdout.contains(
            "Plan: 0 to build, 2 to rebuild, 2 to rebuild if upstream output changes, 4 cached"
        ),
        "{}",
        plan.stdout
    );
    let out = p.kiln(&["build"]);
    out.expect_code(0);
    assert_eq!(
        built(&out),
        [
            "beta/one/1.31/build",
            "beta/one/1.31/publish",
            "beta/two/1.31/build",
            "beta/two/1.31/publish"
        ]
    );
    assert_eq!(
        p.read("published/beta/beta-two-k8s-1.31.txt"),
        "beta-image-v2 two\n"
    );

    // A change that leaves the output byte-identical (a comment): the builds rerun, the
    // publishes are cut off.
    p.write(
        "alpha/make.sh",
        "# reformatted\necho alpha-image $image_os\n",
    );
    let out = p.kiln(&["build"]);
    out.expect_code(0);
    assert_eq!(
        built(&out),
        ["alpha/one/1.31/build", "alpha/two/1.31/build"]
    );
    assert_eq!(
        out.stdout.trim(),
        "2 built, 4 cached, 2 unchanged after upstream rebuild"
    );
    assert_eq!(p.kiln(&["build"]).stdout.trim(), "0 built, 8 cached");
}

#[test]
fn failures_skip_dependents_and_independent_branches_finish() {
    let p = project("");
    p.write("beta/make.sh", "echo broken >&2; exit 3\n");
    let out = p.kiln(&["build", "-j", "1"]);
    out.expect_code(1);
    assert_eq!(out.stdout.trim(), "4 built, 0 cached, 2 failed, 2 skipped");
    assert!(out.stderr.contains("beta/one/1.31/build"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("failed after 1 attempt: `sh` exited with status 3\n"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("beta/one/1.31/publish   skipped: upstream beta/one/1.31/build failed"),
        "{}",
        out.stderr
    );
    // A failed run records no result, so `kiln logs` has no checked log to print; it says so
    // and names the live log, which the failure message names too.
    let log = p.kiln(&["logs", "beta/one/1.31/build"]);
    log.expect_code(1);
    assert!(
        log.stderr
            .contains("`beta/one/1.31/build` has no recorded result, so no log"),
        "{}",
        log.stderr
    );
    let live = "cache/logs/beta%2Fone%2F1.31%2Fbuild.log";
    assert!(log.stderr.contains(live), "{}", log.stderr);
    assert!(out.stderr.contains(live), "{}", out.stderr);
    assert!(p.read(live).contains("broken"));

    // --fail-fast: nothing new starts after the first failure.
    let p = project("");
    p.write("alpha/make.sh", "exit 1\n");
    let out = p.kiln(&["build", "-j", "1", "--fail-fast"]);
    out.expect_code(1);
    assert!(
        out.stdout.starts_with("0 built, 0 cached, 1 failed"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_retry_runs_with_the_debug_settings() {
    let p = one_step(
        r#"step "build" builder="command" retries=1 {
        argv "sh" "-c" "echo attempt=$KILN_ATTEMPT debug=${{PACKER_LOG:-unset}}; test -f ../../seen || {{ touch ../../seen; exit 1; }}"
        debug-env "PACKER_LOG=1"
    }"#,
    );
    let out = p.kiln(&["build"]);
    out.expect_code(0);
    let log = p.kiln(&["logs", "p/x/1.31/build"]).stdout;
    assert!(log.contains("attempt=1 debug=unset"), "{log}");
    assert!(log.contains("attempt 1 failed"), "{log}");
    assert!(log.contains("attempt=2 debug=1"), "{log}");
}

#[test]
fn a_step_that_runs_too_long_times_out() {
    let p = one_step(r#"step "build" builder="command" timeout="1s" { argv "sleep" "30"; }"#);
    let t = Instant::now();
    let out = p.kiln(&["build"]);
    out.expect_code(1);
    assert!(out.stderr.contains("timed out after 1s"), "{}", out.stderr);
    assert!(
        t.elapsed() < Duration::from_secs(25),
        "the sleeping child was not stopped"
    );
}

/// A secret's value appears nowhere: not in output, logs, records, plans or any cache file.
#[test]
fn secrets_never_leak() {
    const VALUE: &str = "s3cr3t-VALUE-8f1d2c";
    let p = project("secret \"TOKEN\" env=\"KILN_TEST_TOKEN\"").env("KILN_TEST_TOKEN", VALUE);
    p.write(
        "beta/make.sh",
        "echo using token $TOKEN >&2; echo beta-image\n",
    );
    let build = p.kiln(&["build"]);
    build.expect_code(0);
    let plan = p.kiln(&["plan", "--json"]);
    let logs = p.kiln(&["logs", "beta/one/1.31/build"]);
    assert!(logs.stdout.contains("using token ***"), "{}", logs.stdout);
    for out in [&build, &plan, &logs] {
        assert!(!out.stdout.contains(VALUE) && !out.stderr.contains(VALUE));
    }
    let mut files = 0;
    scan(&p.path().join("cache"), VALUE, &mut files);
    assert!(files > 10, "scanned only {files} files");
}

fn scan(dir: &Path, needle: &str, files: &mut usize) {
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            scan(&path, needle, files);
        } else {
            *files += 1;
            let bytes = std::fs::read(&path).unwrap();
            let hit = bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
            assert!(!hit, "{} contains the secret", path.display());
        }
    }
}

fn spawn(p: &Project, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(p.path())
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// kill -9 at varied moments never leaves the cache inconsistent, and the next run finishes.
#[test]
fn kill_9_mid_build_always_resumes() {
    let p = project("");
    p.write("alpha/make.sh", "sleep 0.05; echo alpha-image $image_os\n");
    p.write("beta/make.sh", "sleep 0.08; echo beta-image $image_os\n");
    for i in 0..20u64 {
        // Each round changes the inputs so there is always work to interrupt.
        p.write("alpha/round", &i.to_string());
        p.write("beta/round", &i.to_string());
        let mut child = spawn(&p, &["build", "-j", "2", "--quiet"]);
        std::thread::sleep(Duration::from_millis(5 + (i * 37) % 250));
        let _ = child.kill();
        let _ = child.wait();
        p.kiln(&["cache", "verify"]).expect_code(0);
    }
    let out = p.kiln(&["build"]);
    out.expect_code(0);
    p.kiln(&["cache", "verify"]).expect_code(0);
    assert_eq!(p.kiln(&["build"]).stdout.trim(), "0 built, 8 cached");
}

/// SIGTERM reaches the running children, nothing partial is recorded, and the next run resumes.
#[test]
fn sigterm_stops_children_and_records_nothing_partial() {
    let p = project("");
    p.write("beta/make.sh", "sleep 20; echo beta-image\n");
    let mut child = spawn(&p, &["build", "-j", "4"]);
    // Wait until the sleeping builds have started.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p
        .path()
        .join("cache/logs/beta%2Fone%2F1.31%2Fbuild.log")
        .exists()
    {
        assert!(Instant::now() < deadline, "the build never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    unsafe {
        libc_kill(child.id() as i32, 15);
    }
    let status = child.wait().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "kiln did not stop its children"
    );
    assert_eq!(status.code(), Some(143), "SIGTERM exits 128 + 15");
    p.write("beta/make.sh", "echo beta-image\n");
    let plan = p.kiln(&["plan"]);
    assert!(
        plan.stdout.contains("+  beta/one/1.31/build"),
        "{}",
        plan.stdout
    );
    p.kiln(&["build"]).expect_code(0);
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Two builds on one cache: the second waits for the lock, then finds everything cached;
/// `--no-wait` fails at once instead.
#[test]
fn concurrent_builds_share_one_cache_safely() {
    let p = project("");
    p.write("alpha/make.sh", "sleep 0.3; echo alpha-image $image_os\n");
    let first = spawn(&p, &["build", "-j", "2"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p.path().join("cache/logs").exists() {
        assert!(Instant::now() < deadline, "the first build never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let no_wait = p.kiln(&["build", "--no-wait"]);
    no_wait.expect_code(1);
    assert!(
        no_wait.stderr.contains("another kiln holds the cache"),
        "{}",
        no_wait.stderr
    );
    let second = p.kiln(&["build"]);
    let first = first.wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(0));
    second.expect_code(0);
    assert!(
        second.stderr.contains("waiting for the cache lock"),
        "{}",
        second.stderr
    );
    assert_eq!(second.stdout.trim(), "0 built, 8 cached");
    p.kiln(&["cache", "verify"]).expect_code(0);
}

/// The offline `local` provider builds real qcow2 images and validates them.
#[test]
fn local_example_builds_real_images() {
    let root = crate::support::repo_root();
    let p = Project::new()
        .with_path(&root.join("modules/local.kdl"), "modules/local.kdl")
        .with_path(
            &root.join("examples/local/images.kdl"),
            "examples/local/images.kdl",
        )
        .with_path(&root.join("examples/local/files"), "examples/local/files");
    let before = p.kiln(&["-f", "examples/local/images.kdl", "images"]);
    before.expect_code(0);
    assert_eq!(
        before.stdout.matches(" not published\n").count(),
        4,
        "{}",
        before.stdout
    );
    let out = p.kiln(&["-f", "examples/local/images.kdl", "build", "--quiet"]);
    out.expect_code(0);
    assert_eq!(out.stdout.trim(), "12 built, 0 cached");
    let image = p
        .path()
        .join("examples/local/images/local-ubuntu-2404-k8s-1.31.qcow2");
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&image)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    let sum = p.read("examples/local/images/local-ubuntu-2404-k8s-1.31.qcow2.sha256");
    assert!(
        sum.ends_with("  local-ubuntu-2404-k8s-1.31.qcow2\n"),
        "{sum}"
    );
    images_catalog(&p);
    let log = p
        .kiln(&[
            "-f",
            "examples/local/images.kdl",
            "logs",
            "local/ubuntu-2404/1.31/validate",
        ])
        .stdout;
    assert!(
        log.contains("/etc/image-release matches the declared versions"),
        "{log}"
    );
    // Images are reproducible: a forced rebuild gives the same bytes.
    let before = p.read("examples/local/images/local-ubuntu-2404-k8s-1.31.qcow2.sha256");
    let again = p.kiln(&[
        "-f",
        "examples/local/images.kdl",
        "build",
        "--quiet",
        "--force",
        "local-ubuntu-2404-k8s-1.31",
    ]);
    again.expect_code(0);
    assert_eq!(again.stdout.trim(), "3 built, 9 cached");
    assert_eq!(
        p.read("examples/local/images/local-ubuntu-2404-k8s-1.31.qcow2.sha256"),
        before
    );
    // A relative --cache-dir is the working directory's, also for the steps (which run in
    // directories of their own): the same image, from a cache of its own.
    let other = p.kiln(&[
        "-f",
        "examples/local/images.kdl",
        "build",
        "--quiet",
        "--cache-dir",
        "other-cache",
        "--os",
        "ubuntu-2404",
        "--kubernetes",
        "1.31",
    ]);
    other.expect_code(0);
    assert_eq!(other.stdout.trim(), "3 built, 0 cached");
    assert!(p.path().join("other-cache/records.log").is_file());
    assert_eq!(
        p.read("examples/local/images/local-ubuntu-2404-k8s-1.31.qcow2.sha256"),
        before
    );
}

/// `kiln images` lists each cell's published image, with the sha256 its `.sha256` file holds
/// and its size; digests and sizes depend on the e2fsprogs and qemu versions, so the golden
/// files have them replaced after they are checked against the bucket.
fn images_catalog(p: &Project) {
    let f = "examples/local/images.kdl";
    let text = p.kiln(&["-f", f, "images"]);
    text.expect_code(0);
    let json = p.kiln(&["-f", f, "images", "--json"]);
    json.expect_code(0);
    let (mut text, mut json) = (text.stdout, json.stdout);
    for e in p
        .kiln(&["-f", f, "images", "--json"])
        .json()
        .as_array()
        .unwrap()
    {
        let cell = e["cell"].as_str().unwrap();
        let file = format!("examples/local/images/{cell}.qcow2");
        let sum = p.read(&format!("{file}.sha256"));
        let size = std::fs::metadata(p.path().join(&file)).unwrap().len();
        assert_eq!(e["facts"]["sha256"].as_str(), sum.split(' ').next());
        assert_eq!(e["facts"]["size"].as_str(), Some(size.to_string().as_str()));
        assert_eq!(e["current"], true);
        assert_eq!(e["refresh"], "held");
        let checked = e["checked_unix_ms"].as_u64().unwrap().to_string();
        json = json.replace(&checked, "[checked]");
        let hex = sum.split(' ').next().unwrap();
        for out in [&mut text, &mut json] {
            *out = out
                .replace(hex, "[sha256]")
                .replace(&format!("\"{size}\""), "\"[size]\"")
                .replace(&format!("  {size}\n"), "  [size]\n");
        }
    }
    let text = redact_between(&text, "(verified ", ")", "[time]");
    crate::support::golden("images-local", "images.txt", &text);
    crate::support::golden("images-local", "images.json", &json);
}

/// `text` with whatever stands between each `start` and the next `end` replaced by `with`.
fn redact_between(text: &str, start: &str, end: &str, with: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(start) {
        out.push_str(&rest[..i + start.len()]);
        rest = &rest[i + start.len()..];
        let j = rest.find(end).unwrap_or(rest.len());
        out.push_str(with);
        rest = &rest[j..];
    }
    out.push_str(rest);
    out
}

/// A missing image tool is a clear error naming the package to install.
#[test]
fn a_missing_tool_names_its_package() {
    let root = crate::support::repo_root();
    let mut p = Project::new()
        .with_path(&root.join("modules/local.kdl"), "modules/local.kdl")
        .with_path(
            &root.join("examples/local/images.kdl"),
            "examples/local/images.kdl",
        )
        .with_path(&root.join("examples/local/files"), "examples/local/files");
    let empty = p.path().join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    p.set_env("PATH", &empty.to_string_lossy());
    let out = p.kiln(&[
        "-f",
        "examples/local/images.kdl",
        "build",
        "--quiet",
        "--cell",
        "local-flatcar-k8s-1.31",
    ]);
    out.expect_code(1);
    assert!(
        out.stderr
            .contains("`qemu-img` is not installed: install the qemu-utils package"),
        "{}",
        out.stderr
    );
}

/// `cache verify` finds a corrupt blob, `--repair` removes it, and the next build redoes what
/// needed it; `cache gc` keeps the last results of each node and frees the rest.
#[test]
fn cache_verify_repair_and_gc() {
    let p = project("");
    p.kiln(&["build", "--quiet"]).expect_code(0);
    // Corrupt the stored output of one build.
    let mut blobs = Vec::new();
    collect_files(&p.path().join("cache/cas"), &mut blobs);
    let victim = blobs
        .iter()
        .find(|b| std::fs::read_to_string(b).is_ok_and(|t| t == "alpha-image one\n"))
        .expect("the output blob");
    let mut perms = std::fs::metadata(victim).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(victim, perms).unwrap();
    std::fs::write(victim, "tampered\n").unwrap();
    let verify = p.kiln(&["cache", "verify"]);
    verify.expect_code(1);
    assert!(verify.stdout.contains("problem"), "{}", verify.stdout);
    p.kiln(&["cache", "verify", "--repair"]).expect_code(0);
    p.kiln(&["cache", "verify"]).expect_code(0);
    let rebuilt = p.kiln(&["build", "--quiet"]);
    rebuilt.expect_code(0);
    assert!(
        rebuilt.stdout.starts_with("1 built") || rebuilt.stdout.starts_with("2 built"),
        "{}",
        rebuilt.stdout
    );
    assert_eq!(
        p.read("published/alpha/alpha-one-k8s-1.31.txt"),
        "alpha-image one\n"
    );

    // Two generations of alpha's results; gc --keep-last 1 drops the older one.
    p.write("alpha/make.sh", "echo alpha-image-2 $image_os\n");
    p.kiln(&["build", "--quiet"]).expect_code(0);
    let dry = p.kiln(&["cache", "gc", "--keep-last", "1", "--dry-run"]);
    dry.expect_code(0);
    assert!(
        dry.stdout.starts_with("dry run: 4 results"),
        "{}",
        dry.stdout
    );
    let gc = p.kiln(&["cache", "gc", "--keep-last", "1"]);
    gc.expect_code(0);
    assert!(gc.stdout.starts_with("4 results"), "{}", gc.stdout);
    p.kiln(&["cache", "verify"]).expect_code(0);
    assert_eq!(p.kiln(&["build"]).stdout.trim(), "0 built, 8 cached");
}

fn collect_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            collect_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Every attempt starts in an empty work directory, though directories are reused: whatever a
/// step (or a failed attempt) left there is gone before the next one starts, and nothing is left
/// under `tmp/` after the build.
#[test]
fn every_attempt_starts_in_an_empty_work_directory() {
    let step = r#"step "build" builder="command" inputs="vars" retries=1 {
        argv "sh" "-c" "test -z \"$(ls -A)\" || {{ echo not empty: $(ls -A); exit 3; }}; mkdir -p d/e; touch junk .hidden d/e/f; chmod 0444 junk; test $KILN_ATTEMPT = 2 || test {os} = one"
    }"#;
    let p = Project::new()
        .with_file(
            "modules/cmd.kdl",
            &format!("module \"cmd\" {{\n    var \"cell\" \"{{name}}\"\n    {step}\n}}\n"),
        )
        .with_file(
            "images.kdl",
            r#"
import "modules/cmd.kdl"
kubernetes "1.31" { version "1.31.4"; }
matrix "m" { kubernetes "1.31"; provider "p"; os "one" "two" "three" "four" "five"; }
provider "p" module="cmd"
"#,
        );
    let out = p.kiln(&["build", "-j", "2", "--quiet"]);
    out.expect_code(0);
    assert_eq!(out.stdout.trim(), "5 built, 0 cached");
    let log = p.kiln(&["logs", "p/two/1.31/build"]).stdout;
    assert!(log.contains("attempt 1 failed"), "{log}");
    assert!(!log.contains("] not empty"), "{log}");
    let left: Vec<_> = std::fs::read_dir(p.path().join("cache/tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in tmp/: {left:?}");
}

/// A finished log is stored as a blob of its own; the file under `logs/` is only a live view.
/// `kiln logs` prints the blob the last result names, whatever happened to that file: edited in
/// place, or replaced by a symlink to another file. A rebuild leaves the old blob intact.
#[test]
fn kiln_logs_prints_the_stored_log_whatever_happens_to_the_live_file() {
    let p = project("");
    p.kiln(&["build", "-j", "2", "--quiet"]).expect_code(0);
    let node = "alpha/one/1.31/build";
    let live = p.path().join("cache/logs/alpha%2Fone%2F1.31%2Fbuild.log");
    let true_log = p.kiln(&["logs", node]).stdout;
    assert!(
        true_log.contains("== alpha/one/1.31/build (command)"),
        "{true_log}"
    );
    assert_eq!(std::fs::read_to_string(&live).unwrap(), true_log);
    let mut blobs = Vec::new();
    collect_files(&p.path().join("cache/cas"), &mut blobs);
    let blob = blobs
        .iter()
        .find(|b| std::fs::read_to_string(b).is_ok_and(|t| t == true_log))
        .expect("the log's blob")
        .clone();

    // Edited in place (it is the same inode as nothing in the store).
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&live)
            .unwrap();
        f.write_all(b"forged line\n").unwrap();
    }
    assert_eq!(p.kiln(&["logs", node]).stdout, true_log);
    assert_eq!(std::fs::read_to_string(&blob).unwrap(), true_log);
    // Replaced by a symlink to another file.
    std::fs::remove_file(&live).unwrap();
    std::os::unix::fs::symlink(p.path().join("images.kdl"), &live).unwrap();
    let out = p.kiln(&["logs", node]);
    out.expect_code(0);
    assert_eq!(out.stdout, true_log);
    p.kiln(&["cache", "verify"]).expect_code(0);

    // A new run, whose log says something the first one did not (its timings alone may come out
    // the same): `kiln logs` prints the new log, and the old blob is untouched.
    p.write(
        "alpha/make.sh",
        "echo a second run >&2; echo alpha-image $image_os\n",
    );
    let again = p.kiln(&["build", "--quiet", "--force", "alpha-one-k8s-1.31"]);
    again.expect_code(0);
    assert_eq!(std::fs::read_to_string(&blob).unwrap(), true_log);
    let new = p.kiln(&["logs", node]).stdout;
    assert!(new.contains("== alpha/one/1.31/build (command)"), "{new}");
    assert!(new.contains("a second run"), "{new}");
    assert_ne!(new, true_log);
    p.kiln(&["cache", "verify"]).expect_code(0);
}

/// Ids that a lossy file name would confuse (`a__b` and `a/b`) get logs of their own.
#[test]
fn colliding_ids_get_distinct_logs() {
    let p = Project::new()
        .with_file(
            "modules/cmd.kdl",
            r#"module "cmd" {
    var "cell" "{os}"
    step "build" builder="command" inputs="vars" { argv "sh" "-c" "echo I am $KILN_NODE"; }
}
"#,
        )
        .with_file(
            "images.kdl",
            r#"
import "modules/cmd.kdl"
kubernetes "1.31" { version "1.31.4"; }
matrix "m" { kubernetes "1.31"; provider "p"; os "a__b" "a/b"; }
provider "p" module="cmd"
"#,
        );
    let out = p.kiln(&["build", "-j", "1", "--quiet"]);
    out.expect_code(0);
    assert_eq!(out.stdout.trim(), "2 built, 0 cached");
    for id in ["p/a__b/1.31/build", "p/a/b/1.31/build"] {
        let log = p.kiln(&["logs", id]);
        log.expect_code(0);
        assert!(
            log.stdout.contains(&format!("I am {id}\n")),
            "{id}: {}",
            log.stdout
        );
    }
    let live: Vec<_> = std::fs::read_dir(p.path().join("cache/logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(live.len(), 2, "{live:?}");
}

/// A flipped bit that changes an id in `records.log` is caught by its line's checksum.
#[test]
fn a_bit_flip_in_records_log_is_reported() {
    let p = project("");
    p.kiln(&["build", "--quiet"]).expect_code(0);
    let path = p.path().join("cache/records.log");
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text
        .lines()
        .position(|l| l.contains("\"id\":\"alpha/one/1.31/build\""))
        .unwrap();
    // `o` (0x6f) → `n` (0x6e): still a valid record of another id, but not the one checksummed.
    std::fs::write(
        &path,
        text.replacen("alpha/one/1.31/build", "alpha/nne/1.31/build", 1),
    )
    .unwrap();
    let out = p.kiln(&["cache", "verify"]);
    out.expect_code(1);
    assert!(
        out.stdout
            .contains(&format!("line {} does not match its checksum", line + 1)),
        "{}",
        out.stdout
    );
    // Readers skip it, as they skip a garbled line: the node reads as never recorded.
    let plan = p.kiln(&["plan"]);
    assert!(!plan.stdout.contains("alpha/nne"), "{}", plan.stdout);
    p.kiln(&["cache", "verify", "--repair"]).expect_code(0);
    p.kiln(&["cache", "verify"]).expect_code(0);
}

/// Outputs become blobs by reflinks or copies: several nodes writing identical outputs at the
/// same time all succeed and share one blob, which has no other name; an output that is a
/// symlink to a file outside the work directory is copied, and that file is left as it was.
#[test]
fn identical_outputs_stored_concurrently_share_one_blob() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let module = r#"module "cmd" {
    var "cell" "{name}"
    step "build" builder="command" inputs="vars" {
        argv "sh" "-c" "sleep 0.1; echo same > out.txt; ln -s SHARED shared.txt"
        outputs "out.txt" "shared.txt"
    }
    step "publish" builder="command" inputs="vars" {
        argv "sh" "-c" "test \"$(cat upstream/build/out.txt)\" = same && test \"$(cat upstream/build/shared.txt)\" = outside"
    }
}
"#;
    let p = Project::new().with_file("shared.txt", "outside\n");
    let shared = p.path().join("shared.txt");
    let p = p
        .with_file(
            "modules/cmd.kdl",
            &module.replace("SHARED", &shared.to_string_lossy()),
        )
        .with_file(
            "images.kdl",
            r#"
import "modules/cmd.kdl"
kubernetes "1.31" { version "1.31.4"; }
matrix "m" { kubernetes "1.31"; provider "p"; os "a" "b" "c" "d" "e" "f"; }
provider "p" module="cmd"
"#,
        );
    let out = p.kiln(&["build", "-j", "4", "--quiet"]);
    out.expect_code(0);
    assert_eq!(out.stdout.trim(), "12 built, 0 cached");
    p.kiln(&["cache", "verify"]).expect_code(0);
    let mut blobs = Vec::new();
    collect_files(&p.path().join("cache/cas"), &mut blobs);
    let same: Vec<_> = blobs
        .iter()
        .filter(|b| std::fs::read(b).unwrap() == b"same\n")
        .collect();
    assert_eq!(same.len(), 1, "{same:?}");
    assert_eq!(std::fs::metadata(same[0]).unwrap().nlink(), 1);
    let meta = std::fs::metadata(&shared).unwrap();
    assert_eq!(meta.nlink(), 1);
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    assert!(
        std::fs::read_dir(p.path().join("cache/tmp"))
            .unwrap()
            .next()
            .is_none()
    );
}

/// `-j` bounds the steps that run at once, and a provider's `limit` bounds its own; a job slot
/// is free again once its step is over, while its result is still being stored.
#[test]
fn jobs_and_provider_limits_bound_concurrent_steps() {
    let p = Project::new();
    let runs = p.path().join("runs");
    std::fs::create_dir_all(runs.join("all")).unwrap();
    std::fs::create_dir_all(runs.join("a")).unwrap();
    std::fs::create_dir_all(runs.join("b")).unwrap();
    // Each step marks itself running (globally and per provider), notes how many are, waits a
    // little and unmarks itself.
    let module = r#"module "cmd" {
    var "cell" "{name}"
    step "build" builder="command" inputs="vars" {
        argv "sh" "-c" "R=RUNS; touch $R/all/{name} $R/{provider}/{name}; ls $R/all | wc -l >> $R/all.seen; ls $R/{provider} | wc -l >> $R/{provider}.seen; sleep 0.1; rm $R/all/{name} $R/{provider}/{name}"
    }
}
"#;
    let p = p
        .with_file(
            "modules/cmd.kdl",
            &module.replace("RUNS", &runs.to_string_lossy()),
        )
        .with_file(
            "images.kdl",
            r#"
import "modules/cmd.kdl"
kubernetes "1.31" { version "1.31.4"; }
matrix "m" { kubernetes "1.31"; provider "a" "b"; os "1" "2" "3" "4" "5"; }
provider "a" module="cmd" { limit 1; }
provider "b" module="cmd"
"#,
        );
    let out = p.kiln(&["build", "-j", "3", "--quiet"]);
    out.expect_code(0);
    assert_eq!(out.stdout.trim(), "10 built, 0 cached");
    let max = |f: &str| {
        p.read(&format!("runs/{f}.seen"))
            .lines()
            .map(|l| l.trim().parse::<u32>().unwrap())
            .max()
            .unwrap()
    };
    assert!(max("all") <= 3, "{}", max("all"));
    assert_eq!(max("a"), 1);
    assert!(max("b") <= 3);
}
