//! The shared remote cache against a real S3-compatible server (moto on 127.0.0.1): runners with
//! empty caches share results through one bucket, only signed records by trusted keys are used,
//! a runner without a key writes nothing, a remote that fails is one warning, and of two runners
//! racing on one publish only one publishes.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::s3::{BUCKET, Moto, moto, moto_without_auth};
use crate::support::Project;
use crate::truth::{F, local_example};

const PREFIX: &str = "cache";

/// A runner: a fresh copy of `examples/local` with its own empty cache, publishing to the shared
/// directory `bucket`, and the remote cache in moto.
fn runner(m: &Moto, bucket: &Path) -> Project {
    let p = local_example();
    p.edit(F, |s| {
        s.replace(
            "bucket \"file://images\"",
            &format!("bucket \"file://{}\"", bucket.display()),
        )
    });
    with_remote(p, m)
}

/// `p` with the remote cache in moto's bucket, and moto's credentials in the environment.
fn with_remote(p: Project, m: &Moto) -> Project {
    p.env("KILN_REMOTE_CACHE", &format!("s3://{BUCKET}/{PREFIX}"))
        .env("AWS_ENDPOINT_URL", &m.endpoint())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", &m.key_id)
        .env("AWS_SECRET_ACCESS_KEY", &m.secret)
}

/// Makes a signing key in `dir`; returns its file and public key.
pub(crate) fn keygen(p: &Project, name: &str) -> (String, String) {
    let file = p.path().join(format!("{name}.key"));
    let out = p.kiln(&["cache", "keygen", name, "-o", &file.to_string_lossy()]);
    out.expect_code(0);
    let public = out.stdout.trim().to_string();
    assert!(public.starts_with(&format!("{name}:")), "{public}");
    (file.to_string_lossy().into_owned(), public)
}

fn plan_json(p: &Project) -> serde_json::Value {
    let out = p.kiln(&["-f", F, "plan", "--json"]);
    out.expect_code(0);
    out.json()
}

/// The key of node `id` in a plan.
fn key_of(plan: &serde_json::Value, id: &str) -> String {
    plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .unwrap_or_else(|| panic!("no node {id}"))["key"]
        .as_str()
        .unwrap()
        .to_string()
}

fn files_under(dir: &Path) -> usize {
    match std::fs::read_dir(dir) {
        Err(_) => 0,
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| {
                if e.file_type().unwrap().is_dir() {
                    files_under(&e.path())
                } else {
                    1
                }
            })
            .sum(),
    }
}

/// Runner A builds and signs; runner B, a fresh clone, plans and builds nothing and downloads
/// no blob; runner C, without a key, builds a change and writes nothing to the remote.
#[test]
fn runners_share_results_through_one_bucket() {
    let m = moto_without_auth().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let mut a = runner(&m, shared.path());
    let (key, public) = keygen(&a, "ci-1");
    a.set_env("KILN_SIGNING_KEY", &key);
    let built = a.kiln(&["-f", F, "build", "--quiet"]);
    built.expect_code(0);
    assert_eq!(
        built.stdout.trim(),
        "12 built, 0 cached",
        "{}",
        built.stderr
    );
    assert!(!built.stderr.contains("warning"), "{}", built.stderr);
    let objects = m.list(PREFIX);
    let records = objects.iter().filter(|k| k.contains("/ac/")).count();
    assert_eq!(records, 12, "{objects:#?}");
    assert!(objects.iter().any(|k| k.contains("/cas/")));

    let b = runner(&m, shared.path()).env("KILN_TRUSTED_KEYS", &public);
    let plan = b.kiln(&["-f", F, "plan", "--all"]);
    plan.expect_code(0);
    assert_eq!(
        plan.stdout.matches("cached (remote)").count(),
        12,
        "{}",
        plan.stdout
    );
    let plan = b.kiln(&["-f", F, "plan"]);
    assert_eq!(
        plan.stdout, "No changes. 12 nodes cached (12 in the remote cache).\n",
        "{}",
        plan.stderr
    );
    let json = plan_json(&b);
    for n in json["nodes"].as_array().unwrap() {
        assert_eq!(n["source"], "remote", "{n}");
    }
    // One request: A's signed pack of this graph lists every result.
    assert_eq!(json["remote"]["requests"], 1, "{}", json["remote"]);
    let out = b.kiln(&["-f", F, "build", "--quiet"]);
    out.expect_code(0);
    assert_eq!(out.stdout.trim(), "0 built, 12 cached", "{}", out.stderr);
    let cache = b.path().join("examples/local/cache");
    assert_eq!(files_under(&cache.join("cas")), 0, "B downloaded a blob");

    // C trusts A but cannot sign: it rebuilds and validates a change, publishes nothing (no
    // other runner would see what it published), and the bucket is as it was.
    let c = runner(&m, shared.path()).env("KILN_TRUSTED_KEYS", &public);
    c.write("examples/local/files/motd", "changed on a pull request\n");
    let images = files_under(shared.path());
    let out = c.kiln(&["-f", F, "build", "--quiet"]);
    out.expect_code(0);
    assert_eq!(
        out.stdout.trim(),
        "8 built, 0 cached, 4 held (no signing key)",
        "{}",
        out.stderr
    );
    assert_eq!(files_under(shared.path()), images, "C published");
    assert_eq!(m.list(PREFIX), objects, "a runner without a key wrote");

    // D, without a key, publishes to an empty bucket: its publishes would run, but it holds
    // them, so it fetches no image for them either.
    let elsewhere = tempfile::tempdir().unwrap();
    let d = runner(&m, elsewhere.path()).env("KILN_TRUSTED_KEYS", &public);
    let out = d.kiln(&["-f", F, "build", "--quiet"]);
    out.expect_code(0);
    assert_eq!(
        out.stdout.trim(),
        "0 built, 8 cached, 4 held (no signing key)",
        "{}",
        out.stderr
    );
    let cache = d.path().join("examples/local/cache");
    assert_eq!(files_under(&cache.join("cas")), 0, "D downloaded a blob");
}

/// A record changed in the bucket, one signed by an untrusted key, and one whose blob is gone
/// are each ignored with a warning naming it, and their node runs locally.
#[test]
fn untrustworthy_records_are_rebuilt() {
    let m = moto_without_auth().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let mut a = runner(&m, shared.path());
    let (key, public) = keygen(&a, "ci-1");
    a.set_env("KILN_SIGNING_KEY", &key);
    a.kiln(&["-f", F, "build", "--quiet"]).expect_code(0);
    let plan = plan_json(&a);
    let ac = |id: &str| format!("{PREFIX}/ac/{}", key_of(&plan, id));

    // Tampered: a fact of the flatcar 1.31 build changes after it was signed.
    let tampered = ac("local/flatcar/1.31/build");
    let text = String::from_utf8(m.get(&tampered).unwrap()).unwrap();
    assert!(text.contains("qcow2"), "{text}");
    m.put(&tampered, text.replacen("qcow2", "raw00", 1).into_bytes());

    // Untrusted: a runner with another key writes a record for the 1.32 flatcar build.
    let untrusted = ac("local/flatcar/1.32/build");
    m.delete(&untrusted);
    let mut d = runner(&m, shared.path());
    let (other, _) = keygen(&d, "ci-2");
    d.set_env("KILN_SIGNING_KEY", &other);
    d.kiln(&[
        "-f",
        F,
        "build",
        "--quiet",
        "--cell",
        "local-flatcar-k8s-1.32",
    ])
    .expect_code(0);
    assert!(m.get(&untrusted).is_some());

    // The packs that list every result are changed too, so B asks for each record.
    for pack in m.list(&format!("{PREFIX}/packs")) {
        let mut bytes = m.get(&pack).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        m.put(&pack, bytes);
    }

    // Missing blob: the image of the ubuntu 1.32 build is gone, and B must validate it again.
    let b = runner(&m, shared.path()).env("KILN_TRUSTED_KEYS", &public);
    let ubuntu = "local/ubuntu-2404/1.32/build";
    let record = String::from_utf8(m.get(&ac(ubuntu)).unwrap()).unwrap();
    let body: serde_json::Value =
        serde_json::from_str(&record[record.find("\n\n").unwrap() + 2..]).unwrap();
    let image = body["outputs"][0]["digest"].as_str().unwrap();
    m.delete(&format!("{PREFIX}/cas/{image}"));

    let plan = b.kiln(&["-f", F, "plan"]);
    plan.expect_code(0);
    assert!(
        plan.stderr.contains(&format!(
            "ignoring the pack {PREFIX}/packs/latest: its body does not match its digest"
        )),
        "{}",
        plan.stderr
    );
    assert!(
        plan.stderr.contains(&format!(
            "ignoring the record {tampered}: its body does not match its digest"
        )),
        "{}",
        plan.stderr
    );
    assert!(
        plan.stderr.contains(&format!(
            "ignoring the record {untrusted}: it is signed only by ci-2, which is not a trusted key"
        )),
        "{}",
        plan.stderr
    );
    let out = b.kiln(&[
        "-f",
        F,
        "build",
        "--quiet",
        "--force",
        "local/ubuntu-2404/1.32/validate",
    ]);
    out.expect_code(0);
    assert!(
        out.stderr.contains(&format!(
            "the remote result of {ubuntu} is not used: {PREFIX}/cas/{image} is missing from the remote cache"
        )),
        "{}",
        out.stderr
    );
    // Built here: the two builds whose records were rejected, the build whose image is gone and
    // the validate step forced after it. Their dependents' records hold (a dependent's key
    // depends on its inputs' keys, not on who built them), so they stay cached.
    assert_eq!(out.stdout.trim(), "4 built, 8 cached", "{}", out.stderr);
}

/// A remote that is down, refuses the credentials or has no such bucket is one warning; plan and
/// build go on locally.
#[test]
fn a_failing_remote_is_one_warning() {
    let m = moto().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let base = runner(&m, shared.path());
    let (key, public) = keygen(&base, "ci-1");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let cases: [(&str, Vec<(&str, String)>); 3] = [
        ("down", vec![("AWS_ENDPOINT_URL", dead)]),
        (
            "denied",
            vec![("AWS_SECRET_ACCESS_KEY", "not-the-secret".to_string())],
        ),
        (
            "no bucket",
            vec![("KILN_REMOTE_CACHE", "s3://no-such-bucket/cache".to_string())],
        ),
    ];
    for (what, env) in cases {
        let mut p = runner(&m, shared.path())
            .env("KILN_SIGNING_KEY", &key)
            .env("KILN_TRUSTED_KEYS", &public);
        for (k, v) in &env {
            p.set_env(k, v);
        }
        let plan = p.kiln(&["-f", F, "plan"]);
        plan.expect_code(0);
        let warnings: Vec<&str> = plan
            .stderr
            .lines()
            .filter(|l| l.starts_with("warning: remote cache"))
            .collect();
        assert_eq!(warnings.len(), 1, "{what}: {}", plan.stderr);
        assert!(
            warnings[0].ends_with("going on without it"),
            "{what}: {}",
            plan.stderr
        );
        let out = p.kiln(&["-f", F, "build", "--quiet"]);
        out.expect_code(0);
        assert_eq!(
            out.stdout.trim(),
            "12 built, 0 cached",
            "{what}: {}",
            out.stderr
        );
        let warnings = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("warning: remote cache"))
            .count();
        assert_eq!(warnings, 1, "{what}: {}", out.stderr);
    }
}

/// A module whose publish step appends to a file shared by both runners, slowly enough that the
/// two overlap.
pub(crate) fn race_project(m: &Moto, calls: &Path) -> Project {
    let publish = format!("echo published >> {}; sleep 2", calls.display());
    let p = build_and_publish("race", "echo built", &publish);
    with_remote(p, m)
}

/// Two runners reach the same publish node at once: one claims it and publishes, the other
/// waits for its record and takes it.
#[test]
fn two_runners_racing_on_one_publish_publish_once() {
    let m = moto().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let calls = shared.path().join("calls.log");
    let first = race_project(&m, &calls);
    let (key, public) = keygen(&first, "ci-1");
    let runners: Vec<Project> = (0..2)
        .map(|_| {
            race_project(&m, &calls)
                .env("KILN_SIGNING_KEY", &key)
                .env("KILN_TRUSTED_KEYS", &public)
        })
        .collect();
    for o in Project::kiln_at_once(&runners, &["build", "--quiet"]) {
        o.expect_code(0);
    }
    let published = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(published, "published\n", "both runners published");
}

/// Two runners without a signing key reach the same publish node: neither publishes (nor claims
/// it), since neither could record the publish for the other or for the next runner; both
/// builds succeed, and the summary says why each publish was held and how to publish.
#[test]
fn runners_without_a_key_hold_their_publishes() {
    let m = moto().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let calls = shared.path().join("calls.log");
    let first = race_project(&m, &calls);
    let (_, public) = keygen(&first, "ci-1");
    let runners: Vec<Project> = (0..2)
        .map(|_| race_project(&m, &calls).env("KILN_TRUSTED_KEYS", &public))
        .collect();
    for o in Project::kiln_at_once(&runners, &["build", "--quiet"]) {
        let (stdout, stderr) = (&o.stdout, &o.stderr);
        assert_eq!(o.code, 0, "{stderr}");
        assert_eq!(
            stdout.trim(),
            "1 built, 0 cached, 1 held (no signing key)",
            "{stderr}"
        );
        assert!(
            stderr.contains("p/one/1.31/publish  held: not published, since this runner has no signing key for the remote cache")
                && stderr.contains("--signing-key FILE or KILN_SIGNING_KEY"),
            "{stderr}"
        );
    }
    assert!(!calls.exists(), "a runner without a key published");

    // A signing runner then publishes it, once.
    let (key, _) = keygen(&first, "ci-1b");
    let signer = race_project(&m, &calls)
        .env("KILN_SIGNING_KEY", &key)
        .env("KILN_TRUSTED_KEYS", &public);
    let out = signer.kiln(&["build", "--quiet"]);
    out.expect_code(0);
    assert_eq!(out.stdout.trim(), "2 built, 0 cached", "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&calls).unwrap(), "published\n");
}

/// A build step and a publish step, with a `file://` remote cache in the project's `remote/`
/// (so the plan's goldens name it as `[ROOT]/remote`), trusting `public`.
fn held_project(build: &str) -> Project {
    let p = build_and_publish("held", build, "echo published");
    let url = format!("file://{}", p.path().join("remote").display());
    p.env("KILN_REMOTE_CACHE", &url)
}

/// The ids of the nodes a plan marks `held`, with the reason it gives.
/// Runs `kiln build --quiet` in `p` and checks its summary line.
fn builds(p: &Project, summary: &str) {
    let out = p.kiln(&["build", "--quiet"]);
    out.expect_code(0);
    assert_eq!(out.stdout.trim(), summary, "{}", out.stderr);
}

fn held_in(plan: &serde_json::Value) -> Vec<(String, String)> {
    plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| !n["held"].is_null())
        .map(|n| {
            let id = n["id"].as_str().unwrap().to_string();
            (id, n["held"].as_str().unwrap().to_string())
        })
        .collect()
}

/// `kiln plan` on a runner without a signing key says which publish nodes `kiln build` there
/// would hold and why (text, JSON and markdown goldens), and the build holds exactly those; a
/// publish that early cutoff may still reuse is `held if it runs`; with a key nothing is held.
#[test]
fn a_keyless_runners_plan_shows_the_publishes_it_would_hold() {
    const GOLDEN: &str = "remote-held";
    let mut p = held_project("echo built");
    let (key, public) = keygen(&p, "ci-1");
    p.set_env("KILN_TRUSTED_KEYS", &public);
    let text = p.kiln(&["plan"]);
    text.expect_code(0);
    crate::support::golden(GOLDEN, "plan.txt", &text.stdout);
    let json = p.kiln(&["plan", "--json"]);
    json.expect_code(0);
    crate::support::golden(GOLDEN, "plan.json", &json.stdout);
    let md = p.kiln(&["plan", "--format", "markdown"]);
    md.expect_code(0);
    crate::support::golden(GOLDEN, "plan.md", &md.stdout);
    let plan = json.json();
    let held = held_in(&plan);
    assert_eq!(
        held,
        [(
            "p/one/1.31/publish".to_string(),
            "no_signing_key".to_string()
        )],
        "{plan}"
    );
    assert_eq!(plan["summary"]["held"], 1, "{}", plan["summary"]);
    builds(&p, "1 built, 0 cached, 1 held (no signing key)");

    // With the key, the same plan holds nothing, and the build publishes.
    p.set_env("KILN_SIGNING_KEY", &key);
    let plan = p.kiln(&["plan", "--json"]);
    plan.expect_code(0);
    let plan = plan.json();
    assert!(held_in(&plan).is_empty(), "{plan}");
    assert!(plan["summary"].get("held").is_none(), "{}", plan["summary"]);
    let text = p.kiln(&["plan"]);
    assert!(!text.stdout.contains("held"), "{}", text.stdout);
    builds(&p, "1 built, 1 cached");

    // The build step changes: its publish waits on it, and would be held if it ran.
    p.set_env("KILN_SIGNING_KEY", "");
    p.edit("modules/held.kdl", |s| {
        s.replace("echo built", "echo built again")
    });
    let text = p.kiln(&["plan"]);
    text.expect_code(0);
    assert!(
        text.stdout.contains(
            "· held if it runs: a build on this runner does not publish it (no signing key for the remote cache)"
        ) && text
            .stdout
            .contains("1 publish node held: this runner has no signing key")
            && text
                .stdout
                .contains("publish from a runner with --signing-key FILE or KILN_SIGNING_KEY set."),
        "{}",
        text.stdout
    );
    builds(&p, "1 built, 0 cached, 1 held (no signing key)");

    // Without a remote cache, a runner publishes with no key at all.
    p.set_env("KILN_REMOTE_CACHE", "");
    let plan = p.kiln(&["plan", "--json"]);
    plan.expect_code(0);
    assert!(held_in(&plan.json()).is_empty());
}

/// `kiln cache push` seeds a remote from a local cache, `kiln cache pull` hands it to another
/// machine with every blob, and `kiln cache verify --remote` finds a record changed in place.
#[test]
fn push_pull_and_verify_a_file_remote() {
    let shared = tempfile::tempdir().unwrap();
    let remote_dir = shared.path().join("remote");
    let url = format!("file://{}", remote_dir.display());
    let bucket = shared.path().join("bucket");
    let make = || {
        let p = local_example();
        p.edit(F, |s| {
            s.replace(
                "bucket \"file://images\"",
                &format!("bucket \"file://{}\"", bucket.display()),
            )
        });
        p
    };
    let a = make();
    a.kiln(&["-f", F, "build", "--quiet"]).expect_code(0);
    let (key, public) = keygen(&a, "ci-1");
    let refused = a.kiln(&["-f", F, "--remote-cache", &url, "cache", "push"]);
    refused.expect_code(2);
    assert!(
        refused.stderr.contains("pushing needs a signing key"),
        "{}",
        refused.stderr
    );
    let pushed = a.kiln(&[
        "-f",
        F,
        "--remote-cache",
        &url,
        "--signing-key",
        &key,
        "cache",
        "push",
    ]);
    pushed.expect_code(0);
    assert!(
        pushed
            .stdout
            .starts_with("pushed 12 results (0 already there, 0 not built here)"),
        "{}",
        pushed.stdout
    );

    let b = make().env("KILN_TRUSTED_KEYS", &public);
    let pulled = b.kiln(&["-f", F, "--remote-cache", &url, "cache", "pull"]);
    pulled.expect_code(0);
    assert!(
        pulled
            .stdout
            .starts_with("pulled 12 results (0 already here, 0 not in the remote)"),
        "{}",
        pulled.stdout
    );
    // Everything is local now: no remote needed, and the local cache is whole.
    let plan = b.kiln(&["-f", F, "plan"]);
    assert_eq!(
        plan.stdout, "No changes. 12 nodes cached.\n",
        "{}",
        plan.stderr
    );
    b.kiln(&["-f", F, "cache", "verify"]).expect_code(0);

    let verify_remote = || {
        b.kiln(&[
            "-f",
            F,
            "--remote-cache",
            &url,
            "cache",
            "verify",
            "--remote",
        ])
    };
    let verify = verify_remote();
    verify.expect_code(0);
    assert!(
        verify.stdout.contains("checked 12 records of 12 nodes"),
        "{}",
        verify.stdout
    );
    // A record changed in place in the remote.
    let ac = remote_dir.join("ac");
    let first = std::fs::read_dir(&ac)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(&first).unwrap();
    std::fs::write(&first, text.replacen("\"attempts\":1", "\"attempts\":2", 1)).unwrap();
    let verify = verify_remote();
    verify.expect_code(1);
    assert!(
        verify.stdout.contains("its body does not match its digest"),
        "{}",
        verify.stdout
    );
    assert!(verify.stdout.contains(": 1 problem\n"), "{}", verify.stdout);
}

/// Every record in a `file://` remote names blobs that are there.
fn assert_records_complete(remote: &Path) {
    let Ok(rd) = std::fs::read_dir(remote.join("ac")) else {
        return;
    };
    for e in rd {
        let path = e.unwrap().path();
        // A write in progress, not yet renamed to its name.
        if path.file_name().unwrap().len() != 64 {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let body: serde_json::Value =
            serde_json::from_str(&text[text.find("\n\n").unwrap() + 2..]).unwrap();
        let mut blobs: Vec<&str> = body["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["digest"].as_str().unwrap())
            .collect();
        blobs.extend(body["log"].as_str());
        for b in blobs {
            assert!(
                remote.join("cas").join(b).is_file(),
                "{} names the blob {b}, which is not there",
                path.display()
            );
        }
    }
}

/// A runner killed (SIGKILL) at any moment while it builds and pushes never leaves a record
/// whose blobs are missing; the next run completes the remote.
#[test]
fn a_runner_killed_while_pushing_leaves_no_record_without_its_blobs() {
    let shared = tempfile::tempdir().unwrap();
    let remote_dir = shared.path().join("remote");
    let url = format!("file://{}", remote_dir.display());
    let p = local_example();
    let (key, public) = keygen(&p, "ci-1");
    let p = p
        .env("KILN_REMOTE_CACHE", &url)
        .env("KILN_SIGNING_KEY", &key)
        .env("KILN_TRUSTED_KEYS", &public);
    for i in 0..20u64 {
        // New inputs every time, so every run has new results to push.
        p.write("examples/local/files/motd", &format!("run {i}\n"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["-f", F, "build", "--quiet"])
            .current_dir(p.path())
            .envs(p.env_vars())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(40 + 45 * i));
        let _ = child.kill();
        let _ = child.wait();
        assert_records_complete(&remote_dir);
    }
    let out = p.kiln(&["-f", F, "build", "--quiet"]);
    out.expect_code(0);
    assert_records_complete(&remote_dir);
    p.kiln(&["-f", F, "cache", "verify", "--remote"])
        .expect_code(0);
}

/// The plan shows a publish node another runner is publishing; a claim left by a runner that died
/// (here: a process of this host that is gone, with an expiry hours away) holds up no one: the
/// next runner publishes at once.
#[test]
fn a_dead_runners_claim_is_taken_over() {
    let m = moto().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let calls = shared.path().join("calls.log");
    let p = race_project(&m, &calls);
    let (key, public) = keygen(&p, "ci-1");
    let p = p
        .env("KILN_SIGNING_KEY", &key)
        .env("KILN_TRUSTED_KEYS", &public);
    let plan = p.kiln(&["plan", "--json"]).json();
    let publish = plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["step"] == "publish")
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    // Another runner's live claim shows in the plan.
    let live = serde_json::json!({
        "owner": "runner-7",
        "host": "elsewhere",
        "pid": 1,
        "expires_unix_ms": u64::MAX / 2,
    });
    let claim_key = format!("{PREFIX}/claims/{publish}/0");
    m.put(&claim_key, live.to_string().into_bytes());
    let plan = p.kiln(&["plan"]);
    plan.expect_code(0);
    assert!(
        plan.stdout.contains("· publishing (by runner-7)"),
        "{}",
        plan.stdout
    );
    let plan = p.kiln(&["plan", "--json"]).json();
    assert!(
        plan["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["claimed_by"] == "runner-7"),
        "{plan}"
    );

    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let claim = serde_json::json!({
        "owner": "killed",
        "host": host.trim(),
        "pid": pid,
        "expires_unix_ms": u64::MAX / 2,
    });
    m.put(&claim_key, claim.to_string().into_bytes());
    let out = p.kiln(&["build", "--quiet"]);
    out.expect_code(0);
    assert_eq!(std::fs::read_to_string(&calls).unwrap(), "published\n");
}

const BIG_MODULE: &str = r#"module "big" {
    step "build" builder="command" {
        argv "sh" "-c" "head -c 20971520 /dev/urandom > big.img"
        outputs "big.img"
    }
}
"#;

const BIG_CONFIG: &str = r#"import "modules/big.kdl"
kubernetes "1.31" { version "1.31.4"; }
matrix "m" { kubernetes "1.31"; provider "p"; os "x"; }
provider "p" module="big"
"#;

/// The 20 MiB blob in a project's cache: its file and name.
fn big_blob(p: &Project) -> (std::path::PathBuf, String) {
    fn find(dir: &Path) -> Option<std::path::PathBuf> {
        for e in std::fs::read_dir(dir).ok()? {
            let path = e.unwrap().path();
            if path.is_dir() {
                if let Some(f) = find(&path) {
                    return Some(f);
                }
            } else if path.metadata().unwrap().len() == 20 << 20 {
                return Some(path);
            }
        }
        None
    }
    let file = find(&p.path().join("cache/cas")).expect("no 20 MiB blob in the cache");
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    (file, name)
}

/// A blob bigger than a part and a range goes up to S3 in parts and comes down in parallel
/// ranged GETs, whole; once replaced in the bucket by other bytes of its size, it is refused
/// and nothing of it is pulled.
#[test]
fn a_big_blob_goes_up_in_parts_and_comes_down_in_ranges() {
    let m = moto().unwrap();
    let url = format!("s3://{BUCKET}/{PREFIX}");
    let make = || {
        Project::new()
            .with_file("modules/big.kdl", BIG_MODULE)
            .with_file("images.kdl", BIG_CONFIG)
            .env("AWS_ENDPOINT_URL", &m.endpoint())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", &m.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &m.secret)
    };
    let a = make();
    a.kiln(&["build", "--quiet"]).expect_code(0);
    let (key, public) = keygen(&a, "ci-1");
    let pushed = a.kiln(&[
        "--remote-cache",
        &url,
        "--signing-key",
        &key,
        "cache",
        "push",
    ]);
    pushed.expect_code(0);
    // A HEAD and a PUT for the log, a HEAD and a multipart upload of 3 parts for the blob, the
    // record, and the pack (for the graph and as the latest).
    assert!(
        pushed.stdout.starts_with("pushed 1 results")
            && pushed.stdout.ends_with(" in 11 requests\n"),
        "{}{}",
        pushed.stdout,
        pushed.stderr
    );
    let (file, name) = big_blob(&a);
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        m.get(&format!("{PREFIX}/cas/{name}")).unwrap() == bytes,
        "the bucket holds other bytes"
    );

    let b = make().env("KILN_TRUSTED_KEYS", &public);
    let pulled = b.kiln(&["--remote-cache", &url, "cache", "pull"]);
    pulled.expect_code(0);
    // The record, the log, and the blob in 3 ranges: a plain GET and 2 ranged ones.
    assert!(
        pulled.stdout.starts_with("pulled 1 results")
            && pulled.stdout.ends_with(" in 5 requests\n"),
        "{}{}",
        pulled.stdout,
        pulled.stderr
    );
    assert!(!pulled.stderr.contains("warning"), "{}", pulled.stderr);
    assert!(
        std::fs::read(big_blob(&b).0).unwrap() == bytes,
        "the pulled blob differs"
    );
    b.kiln(&["cache", "verify"]).expect_code(0);
    assert_eq!(b.kiln(&["plan"]).stdout, "No changes. 1 node cached.\n");

    // One byte changed in the last range.
    let mut other = bytes.clone();
    other[(20 << 20) - 100] ^= 1;
    m.put(&format!("{PREFIX}/cas/{name}"), other);
    let c = make().env("KILN_TRUSTED_KEYS", &public);
    let pulled = c.kiln(&["--remote-cache", &url, "cache", "pull"]);
    pulled.expect_code(0);
    assert!(
        pulled.stdout.starts_with("pulled 0 results"),
        "{}",
        pulled.stdout
    );
    assert!(
        pulled
            .stderr
            .contains("holds other bytes than its name says"),
        "{}",
        pulled.stderr
    );
    assert_eq!(files_under(&c.path().join("cache/cas")), 0);
}

/// With no keys in the environment, an `s3://` remote takes them (and the region) from the
/// profile `AWS_PROFILE` selects in `~/.aws/credentials` and `~/.aws/config`, as the AWS CLI does:
/// a wrong secret there is the remote's one warning, the right one pushes what a runner with
/// keys in its environment then finds.
#[test]
fn an_s3_remote_takes_credentials_from_the_aws_files() {
    let m = moto().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let mut public = String::new();
    for (secret, pushed) in [("not-the-secret", false), (m.secret.as_str(), true)] {
        let home = tempfile::tempdir().unwrap();
        let aws = home.path().join(".aws");
        std::fs::create_dir_all(&aws).unwrap();
        std::fs::write(
            aws.join("credentials"),
            format!(
                "[default]\naws_access_key_id = unused\naws_secret_access_key = unused\n\n[ci]\naws_access_key_id = {}\naws_secret_access_key = {secret}\n",
                m.key_id
            ),
        )
        .unwrap();
        std::fs::write(aws.join("config"), "[profile ci]\nregion = us-east-1\n").unwrap();
        let mut p = local_example()
            .clean_env()
            .env("KILN_REMOTE_CACHE", &format!("s3://{BUCKET}/{PREFIX}"))
            .env("AWS_ENDPOINT_URL", &m.endpoint())
            .env("HOME", &home.path().to_string_lossy())
            .env("AWS_PROFILE", "ci");
        let (key, pubkey) = keygen(&p, "ci-1");
        public = pubkey;
        p.set_env("KILN_SIGNING_KEY", &key);
        p.edit(F, |s| {
            s.replace(
                "bucket \"file://images\"",
                &format!("bucket \"file://{}\"", shared.path().display()),
            )
        });
        let out = p.kiln(&["-f", F, "build", "--quiet"]);
        out.expect_code(0);
        let warned = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("warning: remote cache"))
            .count();
        assert_eq!(warned, usize::from(!pushed), "{}", out.stderr);
        assert!(!out.stderr.contains(secret), "{}", out.stderr);
    }
    let other = runner(&m, shared.path()).env("KILN_TRUSTED_KEYS", &public);
    let plan = other.kiln(&["-f", F, "plan"]);
    assert_eq!(
        plan.stdout, "No changes. 12 nodes cached (12 in the remote cache).\n",
        "{}",
        plan.stderr
    );
}

/// A pack of this very graph that lacks some keys (its signer had no result for them when it
/// wrote it; another runner pushed them since) is no verdict on those keys: B asks for their
/// records one by one, and only for them. A listed key costs no request; a key neither listed
/// nor in the remote costs one GET and plans to build.
#[test]
fn keys_a_pack_lacks_are_asked_for_one_by_one() {
    use kiln::store::remote::keys::SecretKey;
    use kiln::store::remote::pack;

    let m = moto_without_auth().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let mut a = runner(&m, shared.path());
    let (key, public) = keygen(&a, "ci-1");
    a.set_env("KILN_SIGNING_KEY", &key);
    a.kiln(&["-f", F, "build", "--quiet"]).expect_code(0);
    let plan = plan_json(&a);
    let lacked = key_of(&plan, "local/flatcar/1.31/build");
    let gone = key_of(&plan, "local/ubuntu-2404/1.32/publish");
    m.delete(&format!("{PREFIX}/ac/{gone}"));

    // The pack re-signed by A's key without those two keys.
    let sk = SecretKey::parse(&std::fs::read_to_string(&key).unwrap()).unwrap();
    let packs = m.list(&format!("{PREFIX}/packs"));
    assert_eq!(packs.len(), 2, "{packs:?}");
    for name in &packs {
        let bytes = m.get(name).unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let graph: kiln::hash::Digest = text
            .lines()
            .find_map(|l| l.strip_prefix("graph "))
            .unwrap()
            .parse()
            .unwrap();
        let mut entries = pack::decode(&bytes, None, &[sk.public()]).unwrap();
        let before = entries.len();
        entries.retain(|e| e.key.to_hex() != lacked && e.key.to_hex() != gone);
        assert_eq!(entries.len(), before - 2);
        m.put(name, pack::encode(&graph, &entries, &sk));
    }

    let b = runner(&m, shared.path()).env("KILN_TRUSTED_KEYS", &public);
    let json = plan_json(&b);
    // The pack, the records of the two keys it lacks, and who claims the publish that runs.
    assert_eq!(json["remote"]["requests"], 4, "{}", json["remote"]);
    let node = |k: &str| {
        json["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["key"] == k)
            .unwrap()
            .clone()
    };
    assert_eq!(node(&lacked)["source"], "remote", "{}", node(&lacked));
    assert_eq!(node(&lacked)["action"], "cached", "{}", node(&lacked));
    assert_ne!(node(&gone)["action"], "cached", "{}", node(&gone));
    let cached_remote = json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["source"] == "remote")
        .count();
    assert_eq!(cached_remote, 11, "{json}");
}

/// A project of one cell whose module `name` has two `command` steps: `build` (its shell
/// command writes `out.txt`, its output) and `publish`.
fn build_and_publish(name: &str, build: &str, publish: &str) -> Project {
    let module = format!(
        r#"module "{name}" {{
    step "build" builder="command" {{
        argv "sh" "-c" "{build} > out.txt"
        outputs "out.txt"
    }}
    step "publish" builder="command" {{
        argv "sh" "-c" "{publish}"
    }}
}}
"#
    );
    one_cell(name, &module)
}

/// A project of one cell whose provider uses `module` (the text of `modules/NAME.kdl`).
fn one_cell(name: &str, module: &str) -> Project {
    let config = format!(
        r#"import "modules/{name}.kdl"
kubernetes "1.31" {{
    version "1.31.4"
    containerd "2.2.0"
}}
matrix "m" {{
    kubernetes "1.31"
    provider "p"
    os "one"
}}
provider "p" module="{name}" {{}}
"#
    );
    Project::new()
        .with_file(&format!("modules/{name}.kdl"), module)
        .with_file("images.kdl", &config)
}
