//! `kiln run NODE`: one node, its dependencies from the local or remote cache, its result to the
//! remote; refused with the missing dependencies named, a no-op when cached, and of two runs of
//! one publish at once only one publishes.

use crate::remote::{keygen, race_project};
use crate::s3::moto;
use crate::support::Project;
use crate::truth::{F, local_example};

/// A runner of the local example with its own empty cache, a `file://` remote in `remote` and
/// the publish bucket beside it.
fn runner(shared: &std::path::Path, key: &str) -> Project {
    let p = local_example()
        .env(
            "KILN_REMOTE_CACHE",
            &format!("file://{}", shared.join("remote").display()),
        )
        .env("KILN_SIGNING_KEY", key);
    p.edit(F, |s| {
        s.replace(
            "bucket \"file://images\"",
            &format!("bucket \"file://{}\"", shared.join("bucket").display()),
        )
    });
    p
}

fn records(shared: &std::path::Path) -> usize {
    std::fs::read_dir(shared.join("remote/ac")).map_or(0, |d| d.count())
}

#[test]
fn run_builds_one_node_from_the_cache_or_names_what_is_missing() {
    let shared = tempfile::tempdir().unwrap();
    let keys = Project::new();
    let (key, _) = keygen(&keys, "ci-1");
    let publish = "local/flatcar/1.31/publish";

    let a = runner(shared.path(), &key);
    let unknown = a.kiln(&["-f", F, "run", "local/flatcar/1.31/publsh"]);
    unknown.expect_code(2);
    assert!(
        unknown.stderr.contains(
            "no node `local/flatcar/1.31/publsh`; did you mean `local/flatcar/1.31/publish`?"
        ),
        "{}",
        unknown.stderr
    );
    let refused = a.kiln(&["-f", F, "run", publish]);
    refused.expect_code(1);
    assert!(
        refused.stderr.contains(
            "cannot run `local/flatcar/1.31/publish`: 2 of its dependencies are in neither the local nor the remote cache: `local/flatcar/1.31/build`, `local/flatcar/1.31/validate`"
        ),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("--with-deps"), "{}", refused.stderr);
    assert_eq!(records(shared.path()), 0);

    // One node at a time, each from an empty cache: what it reads comes from the remote.
    for (node, summary) in [
        ("local/flatcar/1.31/build", "1 built, 0 cached"),
        ("local/flatcar/1.31/validate", "1 built, 1 cached"),
        (publish, "1 built, 2 cached"),
        (publish, "0 built, 3 cached"),
    ] {
        let out = runner(shared.path(), &key).kiln(&["-f", F, "run", node, "-q"]);
        out.expect_code(0);
        assert_eq!(out.stdout.trim(), summary, "{node}: {}", out.stderr);
    }
    assert_eq!(records(shared.path()), 3);
    assert!(
        shared
            .path()
            .join("bucket/local-flatcar-k8s-1.31.qcow2")
            .is_file()
    );

    // --with-deps builds what is missing, and shares all of it.
    let out = runner(shared.path(), &key).kiln(&[
        "-f",
        F,
        "run",
        "local/ubuntu-2404/1.32/publish",
        "--with-deps",
        "-q",
        "--json",
    ]);
    out.expect_code(0);
    assert_eq!(out.json()["summary"]["built"], 3, "{}", out.stderr);
    assert_eq!(records(shared.path()), 6);

    // A result cached only here (built without the remote) is shared by a run that finds it.
    let b = local_example();
    b.kiln(&[
        "-f",
        F,
        "build",
        "--quiet",
        "--cell",
        "local-flatcar-k8s-1.32",
    ])
    .expect_code(0);
    let b = b
        .env(
            "KILN_REMOTE_CACHE",
            &format!("file://{}", shared.path().join("remote").display()),
        )
        .env("KILN_SIGNING_KEY", &key);
    let out = b.kiln(&["-f", F, "run", "local/flatcar/1.32/build", "-q"]);
    out.expect_code(0);
    assert_eq!(out.stdout.trim(), "0 built, 1 cached", "{}", out.stderr);
    assert_eq!(records(shared.path()), 7);
}

/// Two `kiln run`s of one publish node at once (an engine's retry racing the first attempt):
/// one publishes, the other takes its result.
#[test]
fn two_runs_of_one_publish_at_once_publish_once() {
    let m = moto().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let calls = shared.path().join("calls.log");
    let first = race_project(&m, &calls);
    let (key, public) = keygen(&first, "ci-1");
    let project = || {
        race_project(&m, &calls)
            .env("KILN_SIGNING_KEY", &key)
            .env("KILN_TRUSTED_KEYS", &public)
    };
    let plan = project().kiln(&["plan", "--json"]).json();
    let id = |step: &str| {
        plan["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["step"] == step)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    project().kiln(&["run", &id("build"), "-q"]).expect_code(0);
    let runners: Vec<Project> = (0..2).map(|_| project()).collect();
    let mut summaries: Vec<String> =
        Project::kiln_at_once(&runners, &["run", &id("publish"), "-q"])
            .into_iter()
            .map(|o| {
                o.expect_code(0);
                o.stdout.trim().to_string()
            })
            .collect();
    summaries.sort();
    assert_eq!(summaries, ["0 built, 2 cached", "1 built, 1 cached"]);
    assert_eq!(std::fs::read_to_string(&calls).unwrap(), "published\n");
}
