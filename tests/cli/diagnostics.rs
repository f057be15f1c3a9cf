//! Messages of commands other than `kiln check`: what `kiln logs` says of a node with no log,
//! and what a dry run of `kiln cache gc` says it would do.

use crate::support::{Project, golden};

fn project() -> Project {
    Project::new().with_file(
        "images.kdl",
        r#"module "m" {
    step "build" builder="command" {
        argv "sh" "-c" "echo {os} > out.txt"
        outputs "out.txt"
    }
}
provider "p" module="m"
kubernetes "1.31" { version "1.31.4"; }
matrix "m" { kubernetes "1.31"; provider "p"; os "x" "y"; }
"#,
    )
}

/// A node of the config that never ran has no log: a plain failure (exit 1) that says so, not a
/// usage error; an id that names no node is a usage error with a suggestion (exit 2).
#[test]
fn logs_of_a_node_that_never_ran_say_so() {
    let p = project();
    p.kiln(&["build", "--cell", "p-x-k8s-1.31"]).expect_code(0);
    let never = p.kiln(&["logs", "p/y/1.31/build"]);
    never.expect_code(1);
    let typo = p.kiln(&["logs", "p/y/1.31/biuld"]);
    typo.expect_code(2);
    golden(
        "diagnostics",
        "logs.stderr",
        &format!("{}{}", never.stderr, typo.stderr),
    );
}

/// A dry run says what would be removed, and removes nothing.
#[test]
fn gc_dry_run_says_would_be_removed() {
    let p = project();
    p.kiln(&["build"]).expect_code(0);
    p.edit("images.kdl", |t| t.replace("echo {os}", "echo again {os}"));
    p.kiln(&["build"]).expect_code(0);
    let dry = p.kiln(&["cache", "gc", "--dry-run", "--keep-last", "1"]);
    dry.expect_code(0);
    let real = p.kiln(&["cache", "gc", "--keep-last", "1"]);
    real.expect_code(0);
    // Sizes vary with the recorded durations; the words and counts are what is pinned.
    let text = format!("{}{}", dry.stdout, real.stdout);
    let text: String = text
        .split(" bytes)")
        .map(|part| match part.rfind('(') {
            Some(i) => format!("{}(N", &part[..i]),
            None => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" bytes)");
    golden("diagnostics", "gc.stdout", &text);
}
