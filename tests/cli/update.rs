//! `kiln update` and `kiln watch` against the release sources' stand-in on 127.0.0.1
//! (`releases.rs`), which replays the real patch releases of endoflife-kubernetes.json.

use crate::releases::{ReleaseServer, add_days, newest, releases};
use crate::support::{Output, Project, golden, repo_root};

const SERIES: [&str; 3] = ["1.30", "1.31", "1.32"];

/// The `update` case: three tracked series of the `local` provider.
fn project() -> Project {
    Project::from_case("update")
        .with_path(&repo_root().join("modules/local.kdl"), "modules/local.kdl")
}

fn run(p: &Project, server: &ReleaseServer, day: &str, args: &[&str]) -> Output {
    let mut cmd = p.command(args);
    for (k, v) in server.env(day) {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run kiln");
    let text = |b: Vec<u8>| {
        p.redact(&String::from_utf8(b).unwrap())
            .replace(&server.addr, "[SERVER]")
    };
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: text(out.stdout),
        stderr: text(out.stderr),
    }
}

/// `series → (version, revision, source)` of the lock file.
fn locked(p: &Project) -> std::collections::BTreeMap<String, (String, String, String)> {
    let doc: kdl::KdlDocument = p.read("images.lock").parse().unwrap();
    doc.nodes()
        .iter()
        .map(|n| {
            let s = |k: &str| {
                n.entry(k)
                    .and_then(|e| e.value().as_string())
                    .unwrap_or_default()
                    .to_string()
            };
            let series = n.entries()[0].value().as_string().unwrap().to_string();
            (series, (s("version"), s("revision"), s("source")))
        })
        .collect()
}

fn patch(v: &str) -> u64 {
    v.rsplit('.').next().unwrap().parse().unwrap()
}

/// A year of real patch releases of three minors, replayed day by day: after every update the
/// lock holds each series' newest stable release of that day — never a pre-release, never an
/// older one than before, none missed when updates are 40 days apart.
#[test]
fn a_year_of_real_releases_is_locked_as_it_came_out() {
    let server = ReleaseServer::start();
    let p = project();
    let all = releases();
    let gaps = [
        1, 6, 40, 2, 14, 40, 7, 30, 21, 40, 3, 10, 40, 28, 5, 40, 15, 40,
    ];
    let mut day = "2025-01-01".to_string();
    let mut before = locked(&p);
    let mut moves = 0;
    for gap in std::iter::once(0).chain(gaps) {
        day = add_days(&day, gap);
        let out = run(&p, &server, &day, &["update", "--detailed-exitcode"]);
        let now = locked(&p);
        let mut changed = false;
        for s in SERIES {
            let want = newest(&all, s, &day).unwrap();
            let (version, revision, source) = &now[s];
            assert_eq!(
                version, &want.version,
                "{day}: kubernetes {s}\n{}",
                out.stdout
            );
            assert_eq!(revision, "1.1");
            assert!(!version.contains('-'), "{day}: a pre-release {version}");
            if before.get(s).is_none_or(|b| &b.0 != version) {
                assert_eq!(
                    source,
                    &format!("{}/{day}/release/stable-{s}.txt", server.addr)
                );
            }
            if let Some((old, _, _)) = before.get(s) {
                assert!(
                    patch(version) >= patch(old),
                    "{day}: {s} went back from {old} to {version}"
                );
                if old != version {
                    changed = true;
                    moves += 1;
                    assert!(
                        out.stdout.contains(&format!(
                            "• Updated kubernetes {s}: {old} ({old}-1.1) → {version} ({version}-1.1)\n"
                        )) || out.stdout.contains(&format!("• Updated kubernetes {s}: {old} ({old}-")),
                        "{day}: {}",
                        out.stdout
                    );
                }
            } else {
                changed = true;
            }
        }
        out.expect_code(if changed { 2 } else { 0 });
        if !changed {
            assert!(
                out.stdout.starts_with("No updates: kubernetes 1.30 at"),
                "{}",
                out.stdout
            );
        }
        before = now;
    }
    assert!(moves >= 15, "the year moved the lock {moves} times");
    // The final patch of 1.30 (end of life on 2025-06-28) stays locked once it is out.
    assert_eq!(before["1.30"].0, "1.30.14");
    // Comments and order are as written; 1.32, not in the lock at first, was appended.
    let text = p.read("images.lock");
    assert!(text.starts_with(
        "// Resolved versions of tracked Kubernetes series.\n// 1.30 is the oldest series still built.\nkubernetes \"1.30\" version=\"1.30.14\""
    ), "{text}");
    assert!(
        text.contains(
            "\n\n/* pinned by hand before kiln update existed */\nkubernetes \"1.31\" version="
        ),
        "{text}"
    );
    assert!(
        text.contains("   // the last one we tested by hand\nkubernetes \"1.32\" version="),
        "{text}"
    );
    // Only dl.k8s.io and pkgs.k8s.io were asked: GitHub is for exact versions.
    assert!(server.seen().iter().all(|s| !s.path.contains("/github/")));
    p.kiln(&["check"]).expect_code(0);
}

/// The update lines, then the plan of what the update rebuilds (the cells of the moved series,
/// with the variables that changed); `--dry-run` prints the same and writes nothing.
#[test]
fn an_update_prints_what_moved_and_the_plan_of_its_effect() {
    let server = ReleaseServer::start();
    let p = project();
    run(&p, &server, "2025-01-15", &["update"]).expect_code(0);
    p.kiln(&["build", "--quiet"]).expect_code(0);
    let lock = p.read("images.lock");
    let dry = run(&p, &server, "2025-02-15", &["update", "--dry-run"]);
    dry.expect_code(0);
    assert_eq!(p.read("images.lock"), lock, "--dry-run wrote the lock");
    golden("update", "dry-run.stdout", &dry.stdout);
    let out = run(&p, &server, "2025-02-15", &["update"]);
    out.expect_code(0);
    golden("update", "update.stdout", &out.stdout);
    golden(
        "update",
        "updated.lock",
        &p.read("images.lock").replace(&server.addr, "[SERVER]"),
    );
    assert_eq!(
        dry.stdout
            .replace("• Would update", "• Updated")
            .replace("Dry run: images.lock was not written.\n", ""),
        out.stdout,
        "the dry run shows what the update does"
    );
    // Up to date: nothing to say but that.
    let again = run(
        &p,
        &server,
        "2025-02-15",
        &["update", "1.30", "1.31", "--detailed-exitcode"],
    );
    again.expect_code(0);
    assert_eq!(
        again.stdout,
        "No updates: kubernetes 1.30 at 1.30.10 (1.30.10-1.1), 1.31 at 1.31.6 (1.31.6-1.1).\n"
    );
}

/// A series that cannot be resolved — a 404, an answer that is not a version or not an index, a
/// pre-release, a source that is down — names the series and the source, exits 1 and leaves the
/// lock as it was, other series included.
#[test]
fn a_series_that_cannot_be_resolved_is_an_error_and_nothing_is_written() {
    let server = ReleaseServer::start();
    let p = project();
    let lock = p.read("images.lock");
    let day = "2025-03-01";
    let cases: [(&str, u16, &str, &str); 5] = [
        (
            "release/stable-1.31.txt",
            404,
            "Not Found",
            "kubernetes 1.31: cannot read the dl.k8s.io stable release marker: [SERVER]/2025-03-01/release/stable-1.31.txt answered 404 (not found)",
        ),
        (
            "release/stable-1.31.txt",
            200,
            "<html><body>maintenance</body></html>",
            "kubernetes 1.31: cannot read the dl.k8s.io stable release marker: [SERVER]/2025-03-01/release/stable-1.31.txt answered something that is not a version such as v1.32.5: \"<html><body>maintenance</body></html>\"",
        ),
        (
            "release/stable-1.31.txt",
            200,
            "v1.31.0-rc.1",
            "kubernetes 1.31: 1.31.0-rc.1 is a pre-release ([SERVER]/2025-03-01/release/stable-1.31.txt); kiln only locks stable releases",
        ),
        (
            "release/stable-1.31.txt",
            200,
            "v1.32.9",
            "kubernetes 1.31: the dl.k8s.io stable release marker answered 1.32.9, a release of another series ([SERVER]/2025-03-01/release/stable-1.31.txt)",
        ),
        (
            "packages/v1.32/deb/Packages",
            200,
            "Package: cri-tools\nVersion: 1.32.0-1.1\n",
            "kubernetes 1.32: cannot read the pkgs.k8s.io Packages index: [SERVER]/2025-03-01/packages/v1.32/deb/Packages answered something that is not a Debian Packages index with kubeadm, kubelet or kubectl: 1 stanzas of other packages",
        ),
    ];
    for (path, status, body, message) in cases {
        let full = format!("/{day}/{path}");
        server.set(&full, status, body);
        let out = run(&p, &server, day, &["update"]);
        out.expect_code(1);
        assert!(
            out.stderr.contains(&format!("error: {message}\n  help: ")),
            "{}",
            out.stderr
        );
        assert_eq!(p.read("images.lock"), lock);
        // Under --detailed-exitcode an error is 1 too, never 2.
        run(&p, &server, day, &["update", "--detailed-exitcode"]).expect_code(1);
        server.unset(&full);
    }
    // Down: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut cmd = p.command(&["update"]);
    for (k, v) in server.env(day) {
        cmd.env(k, v);
    }
    cmd.env("KILN_K8S_PACKAGES_URL", &down);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("kubernetes 1.30: cannot read the pkgs.k8s.io Packages index: {down}/v1.30/deb/Packages: cannot connect")), "{stderr}");
    assert!(
        stderr.contains("kubernetes 1.31: cannot read"),
        "every series that failed is named: {stderr}"
    );
    assert_eq!(p.read("images.lock"), lock);
    // A series that is not declared, or not tracked.
    let out = run(&p, &server, day, &["update", "1.29"]);
    out.expect_code(1);
    assert!(
        out.stderr
            .contains("error: kubernetes 1.29 is not declared"),
        "{}",
        out.stderr
    );
    let out = run(&p, &server, day, &["update", "banana"]);
    out.expect_code(2);
}

/// `kiln update 1.32.3` moves the series to exactly that release once GitHub's releases API
/// lists it as stable (page after page, with the token, and with a 304 for an unchanged page
/// the next time); a pre-release, a release GitHub does not list, or one older than the lock is
/// refused.
#[test]
fn an_exact_release_is_checked_against_github() {
    let server = ReleaseServer::start();
    let p = project().env("GITHUB_TOKEN", "ghp_test_token_never_printed");
    let day = "2025-12-31";
    let out = run(&p, &server, day, &["update", "1.31.5"]);
    out.expect_code(0);
    assert!(
        out.stdout
            .starts_with("• Updated kubernetes 1.31: 1.31.3 (1.31.3-1.1) → 1.31.5 (1.31.5-1.1)\n"),
        "{}",
        out.stdout
    );
    assert_eq!(
        locked(&p)["1.31"].2,
        format!(
            "{}/{day}/github/repos/kubernetes/kubernetes/releases/tags/v1.31.5",
            server.addr
        )
    );
    let github: Vec<_> = server
        .seen()
        .into_iter()
        .filter(|s| s.path.contains("/github/"))
        .collect();
    // 1.31.0 came out in August 2024: more than one page back.
    assert!(github.len() > 1, "{github:?}");
    assert!(github.iter().all(|s| s.status == 200));
    assert!(
        github
            .iter()
            .all(|s| s.authorization.as_deref() == Some("Bearer ghp_test_token_never_printed"))
    );
    assert!(
        server
            .seen()
            .iter()
            .filter(|s| !s.path.contains("/github/"))
            .all(|s| s.authorization.is_none()),
        "the token goes to GitHub only"
    );
    assert!(!out.stdout.contains("ghp_") && !out.stderr.contains("ghp_"));
    // The same pages again: every one a 304.
    let n = github.len();
    let out = run(&p, &server, day, &["update", "1.31.7", "--dry-run"]);
    out.expect_code(0);
    let again: Vec<_> = server
        .seen()
        .into_iter()
        .filter(|s| s.path.contains("/github/"))
        .skip(n)
        .collect();
    assert_eq!(again.len(), n, "{again:?}");
    assert!(again.iter().all(|s| s.status == 304), "{again:?}");
    let refused = [
        (
            "1.32.0-rc.1",
            "kubernetes 1.32: 1.32.0-rc.1 is a pre-release",
        ),
        (
            "1.31.99",
            "kubernetes 1.31: 1.31.99 is not a release on [SERVER]/2025-12-31/github/repos/kubernetes/kubernetes/releases",
        ),
        (
            "1.31.4",
            "kubernetes 1.31: 1.31.4 is older than 1.31.5, which images.lock already has; an update never moves backwards",
        ),
    ];
    let lock = p.read("images.lock");
    for (v, message) in refused {
        let out = run(&p, &server, day, &["update", v]);
        out.expect_code(1);
        assert!(
            out.stderr.contains(&format!("error: {message}")),
            "{v}: {}",
            out.stderr
        );
        assert_eq!(p.read("images.lock"), lock);
    }
}

/// `kiln watch --once` updates, then builds what the update changed; run again, it finds
/// nothing new and builds nothing. `check`, `plan` and `build` never ask a release source.
#[test]
fn watch_once_twice_builds_once_and_only_update_and_watch_ask_the_sources() {
    let server = ReleaseServer::start();
    let p = project();
    let day = "2025-02-15";
    let first = run(&p, &server, day, &["watch", "--once"]);
    first.expect_code(0);
    assert!(
        first
            .stdout
            .contains("• Updated kubernetes 1.30: 1.30.8 (1.30.8-1.1) → 1.30.10 (1.30.10-1.1)\n"),
        "{}",
        first.stdout
    );
    assert!(
        first.stderr.contains("9 built") || first.stdout.contains("9 built"),
        "{}\n{}",
        first.stdout,
        first.stderr
    );
    let image = p.path().join("images/local-ubuntu-2404-k8s-1.30.qcow2");
    let built = std::fs::metadata(&image).unwrap().modified().unwrap();
    let asked = server.seen().len();
    let second = run(&p, &server, day, &["watch", "--once"]);
    second.expect_code(0);
    assert!(second.stdout.contains("No updates"), "{}", second.stdout);
    assert!(
        second.stdout.contains("0 built") || second.stderr.contains("0 built"),
        "{}\n{}",
        second.stdout,
        second.stderr
    );
    assert_eq!(
        std::fs::metadata(&image).unwrap().modified().unwrap(),
        built
    );
    assert!(
        server.seen().len() > asked,
        "the second round asked the sources again"
    );
    let asked = server.seen().len();
    for args in [&["check"][..], &["plan"], &["build"], &["images"]] {
        run(&p, &server, day, args).expect_code(0);
    }
    assert_eq!(
        server.seen().len(),
        asked,
        "check, plan, build and images asked a release source"
    );
}
