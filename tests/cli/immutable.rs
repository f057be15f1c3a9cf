//! Stored results never change: steps get their own copies of upstream outputs, every process a
//! step started has ended before its outputs are stored, and a missing upstream blob fails the
//! step that needs it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::Project;

/// One cell whose module has the given steps.
fn steps(body: &str) -> Project {
    Project::new()
        .with_file(
            "modules/cmd.kdl",
            &format!("module \"cmd\" {{\n{body}\n}}\n"),
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

/// Every blob and its bytes.
fn blobs(p: &Project) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.push((path, bytes));
            }
        }
    }
    let mut out = Vec::new();
    walk(&p.path().join("cache/cas"), &mut out);
    out.sort();
    out
}

/// A step that appends to its upstream input changes only its own copy: the upstream blob, the
/// upstream result and what a later step sees stay the original bytes.
#[test]
fn a_step_appending_to_its_input_changes_no_stored_result() {
    let p = steps(
        r#"
    step "build" builder="command" { argv "sh" "-c" "echo original > out.txt"; outputs "out.txt"; }
    step "validate" builder="command" {
        argv "sh" "-c" "chmod u+w upstream/build/out.txt && echo appended >> upstream/build/out.txt && cat upstream/build/out.txt"
    }
    step "publish" builder="command" {
        argv "sh" "-c" "cat upstream/build/out.txt > ../../../seen.txt"
    }
"#,
    );
    p.kiln(&["build", "--quiet"]).expect_code(0);
    assert_eq!(p.read("seen.txt"), "original\n");
    let validate = p.kiln(&["logs", "p/x/1.31/validate"]).stdout;
    assert!(validate.contains("appended"), "{validate}");
    p.kiln(&["cache", "verify"]).expect_code(0);
    let before = blobs(&p);
    assert!(before.iter().any(|(_, b)| b == b"original\n"));
    assert!(!before.iter().any(|(_, b)| b == b"original\nappended\n"));

    // Again, with the build cached: the validate step appends to a fresh copy.
    let again = p.kiln(&["build", "--quiet", "--force", "p/x/1.31/validate"]);
    again.expect_code(0);
    let validate = p.kiln(&["logs", "p/x/1.31/validate"]).stdout;
    assert!(validate.contains("original\n") && !validate.contains("appended\nappended"));
    p.kiln(&["cache", "verify"]).expect_code(0);
    let after = blobs(&p);
    for (path, bytes) in &before {
        if bytes == b"original\n" {
            assert!(after.contains(&(path.clone(), bytes.clone())));
        }
    }
}

/// A background process that a step leaves behind (in its process group, or escaped with
/// `setsid`) is ended before the step's outputs are stored: the stored output is what was there
/// when the step ended and never changes afterwards.
#[test]
fn processes_a_step_leaves_behind_are_ended_before_its_outputs_are_stored() {
    let p = Project::new();
    let marks = p.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let module = r#"
    var "cell" "{os}"
    step "build" builder="command" inputs="vars" {
        argv "sh" "-c" "BACKGROUND echo a > out.txt"
        outputs "out.txt"
    }
    step "publish" builder="command" inputs="vars" {
        argv "sh" "-c" "cat upstream/build/out.txt > MARKS/{os}.seen"
    }
"#
    .replace("MARKS", &marks.to_string_lossy());
    let in_group = "(sleep 0.5; echo x >> out.txt; touch MARKS/group.alive) &";
    let escaped = "setsid sh -c 'sleep 0.5; echo x >> out.txt; touch MARKS/setsid.alive' &";
    let module = module
        .replace(
            "BACKGROUND",
            "if [ $cell = group ]; then GROUP else ESCAPED fi;",
        )
        .replace("GROUP", in_group)
        .replace("ESCAPED", escaped)
        .replace("MARKS", &marks.to_string_lossy());
    let p = p
        .with_file(
            "modules/cmd.kdl",
            &format!("module \"cmd\" {{\n{module}\n}}\n"),
        )
        .with_file(
            "images.kdl",
            r#"
import "modules/cmd.kdl"
kubernetes "1.31" { version "1.31.4"; }
matrix "m" { kubernetes "1.31"; provider "p"; os "group" "setsid"; }
provider "p" module="cmd"
"#,
        );
    let out = p.kiln(&["build", "-j", "2", "--quiet"]);
    out.expect_code(0);
    assert_eq!(out.stdout.trim(), "4 built, 0 cached");
    let stored = blobs(&p);
    // Long after the background writers would have written, nothing has changed.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(blobs(&p), stored);
    for os in ["group", "setsid"] {
        assert_eq!(p.read(&format!("marks/{os}.seen")), "a\n", "{os}");
        assert!(
            !marks.join(format!("{os}.alive")).exists(),
            "the {os} background process outlived its step"
        );
    }
    assert!(stored.iter().any(|(_, b)| b == b"a\n"));
    assert!(!stored.iter().any(|(_, b)| b.starts_with(b"a\nx")));
    p.kiln(&["cache", "verify"]).expect_code(0);
}

/// An upstream output missing from the cache fails the `command` step that needs it, naming the
/// node and the output, instead of running the step without it.
#[test]
fn a_missing_upstream_blob_fails_the_step_naming_it() {
    // The validate step removes every blob, the build's output among them, before publish runs.
    let p = steps(
        r#"
    step "build" builder="command" { argv "sh" "-c" "echo image > out.txt"; outputs "out.txt"; }
    step "validate" builder="command" { argv "sh" "-c" "rm -f ../../cas/*/*"; }
    step "publish" builder="command" { argv "sh" "-c" "touch ../../../published"; }
"#,
    );
    let out = p.kiln(&["build", "-j", "1"]);
    out.expect_code(1);
    assert!(
        out.stderr
            .contains("the output `out.txt` of p/x/1.31/build"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("is missing from the cache"),
        "{}",
        out.stderr
    );
    assert!(!p.path().join("published").exists());
}

/// Where the kernel refuses to execute the supervisor kiln carries in memory, kiln runs itself
/// as the supervisor (`kiln __supervise`), with the same code: it too ends what the program
/// leaves behind, in its process group or in a session of its own, and exits like the program.
#[test]
fn kiln_itself_supervises_like_its_embedded_supervisor() {
    let p = Project::new();
    let script = "sleep 30 & echo $!; setsid sleep 30 & echo $!; exit 3";
    let out = p.kiln(&["__supervise", "--", "sh", "/bin/sh", "-c", script]);
    out.expect_code(3);
    let pids: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(pids.len(), 2, "{}", out.stdout);
    for pid in pids {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        assert_ne!(comm, "sleep\n", "{pid} outlived the supervisor");
    }
    let out = p.kiln(&["__supervise", "--", "tool", "/nonexistent/tool"]);
    out.expect_code(127);
    assert!(
        out.stderr
            .contains("kiln: cannot start `tool`: execve: No such file or directory"),
        "{}",
        out.stderr
    );
}
