//! What kiln says is built and published is what is built and published: early cutoff judged on
//! every upstream result a step receives, and publish claims checked against their bucket.

use std::process::Command;

use crate::support::Project;

pub(crate) const F: &str = "examples/local/images.kdl";

pub(crate) fn local_example() -> Project {
    let root = crate::support::repo_root();
    Project::new()
        .with_path(&root.join("modules/local.kdl"), "modules/local.kdl")
        .with_path(&root.join(F), F)
        .with_path(&root.join("examples/local/files"), "examples/local/files")
}

/// `/etc/image-release` of a published qcow2, read back with qemu-img and debugfs.
fn release_file(p: &Project, image: &str) -> String {
    let raw = p.path().join("image.raw");
    let st = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(p.path().join(image))
        .arg(&raw)
        .status()
        .unwrap();
    assert!(st.success());
    let out = Command::new("debugfs")
        .args(["-R", "cat /etc/image-release"])
        .arg(&raw)
        .output()
        .unwrap();
    std::fs::remove_file(&raw).unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn sha256_of(p: &Project, file: &str) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(p.path().join(file)).unwrap();
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `kiln images --json` entry of a cell.
fn catalog_entry(p: &Project, cell: &str) -> serde_json::Value {
    let out = p.kiln(&["-f", F, "images", "--json"]);
    out.expect_code(0);
    out.json()
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["cell"] == cell)
        .cloned()
        .unwrap_or_else(|| panic!("no cell {cell} in {}", out.stdout))
}

const CELL: &str = "local-ubuntu-2404-k8s-1.32";
const IMAGE: &str = "examples/local/images/local-ubuntu-2404-k8s-1.32.qcow2";

fn bump_containerd(p: &Project, from: &str, to: &str) {
    p.edit(F, |s| {
        let at = s.find("kubernetes \"1.32\"").unwrap();
        let (head, tail) = s.split_at(at);
        format!(
            "{head}{}",
            tail.replacen(
                &format!("containerd \"{from}\""),
                &format!("containerd \"{to}\""),
                1
            )
        )
    });
}

/// A containerd bump changes the built image; the validate step between build and publish
/// outputs nothing, yet publish must upload the new image, and the catalog must say so.
#[test]
fn a_change_through_a_step_without_outputs_reaches_the_bucket() {
    let p = local_example();
    p.kiln(&["-f", F, "build", "--quiet"]).expect_code(0);
    let old_sum = sha256_of(&p, IMAGE);
    bump_containerd(&p, "2.2.0", "2.2.1");

    let plan = p.kiln(&["-f", F, "plan"]);
    plan.expect_code(0);
    assert!(
        plan.stdout
            .contains("· waits on: local/ubuntu-2404/1.32/build, local/ubuntu-2404/1.32/validate"),
        "{}",
        plan.stdout
    );

    let out = p.kiln(&["-f", F, "build", "--quiet"]);
    out.expect_code(0);
    assert_eq!(out.stdout.trim(), "6 built, 6 cached", "{}", out.stderr);
    let release = release_file(&p, IMAGE);
    assert!(release.contains("containerd_version=2.2.1"), "{release}");
    let new_sum = sha256_of(&p, IMAGE);
    assert_ne!(new_sum, old_sum);
    let entry = catalog_entry(&p, CELL);
    assert_eq!(entry["facts"]["sha256"], new_sum.as_str(), "{entry}");
    assert_eq!(entry["current"], true, "{entry}");
    assert_eq!(
        p.read(&format!("{IMAGE}.sha256")),
        format!("{new_sum}  local-ubuntu-2404-k8s-1.32.qcow2\n")
    );
}

/// Change a script, build, revert it, build: every key is cached again, but the bucket holds the
/// changed build's image; the refresh sees it and the reverted image is published again.
#[test]
fn a_revert_republishes_what_the_bucket_no_longer_holds() {
    let p = local_example();
    p.kiln(&["-f", F, "build", "--quiet"]).expect_code(0);
    let original = sha256_of(&p, IMAGE);
    let motd = "examples/local/files/motd";
    let before = p.read(motd);
    p.write(motd, "changed for a while\n");
    p.kiln(&["-f", F, "build", "--quiet"]).expect_code(0);
    assert_ne!(sha256_of(&p, IMAGE), original);
    p.write(motd, &before);

    let plan = p.kiln(&["-f", F, "plan"]);
    plan.expect_code(0);
    assert!(
        plan.stdout
            .contains("· drift: file://images/local-ubuntu-2404-k8s-1.32.qcow2.sha256 has sha256 "),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .ends_with("Plan: 0 to build, 4 to rebuild, 8 cached\n"),
        "{}",
        plan.stdout
    );
    // The catalog shows what the bucket holds: the changed build's image, of an earlier config.
    let entry = catalog_entry(&p, CELL);
    assert_eq!(entry["current"], false, "{entry}");

    let out = p.kiln(&["-f", F, "build", "--quiet"]);
    out.expect_code(0);
    assert_eq!(out.stdout.trim(), "4 built, 8 cached", "{}", out.stderr);
    assert_eq!(sha256_of(&p, IMAGE), original);
    let entry = catalog_entry(&p, CELL);
    assert_eq!(entry["facts"]["sha256"], original.as_str(), "{entry}");
    assert_eq!(entry["current"], true, "{entry}");
    let again = p.kiln(&["-f", F, "plan"]);
    assert!(
        again.stdout.ends_with("No changes. 12 nodes cached.\n"),
        "{}",
        again.stdout
    );
}

/// A published object replaced (same size, other bytes), or deleted, is drift: the plan says so
/// with the digests, `--refresh=false` says it did not look, and the build publishes again.
#[test]
fn a_tampered_or_deleted_bucket_object_is_published_again() {
    let p = local_example();
    p.kiln(&["-f", F, "build", "--quiet"]).expect_code(0);
    let good = sha256_of(&p, IMAGE);
    let mut bytes = std::fs::read(p.path().join(IMAGE)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(p.path().join(IMAGE), &bytes).unwrap();
    let bad = sha256_of(&p, IMAGE);
    let other = "examples/local/images/local-flatcar-k8s-1.31.qcow2";
    std::fs::remove_file(p.path().join(other)).unwrap();

    let plan = p.kiln(&["-f", F, "plan", "--json"]);
    plan.expect_code(0);
    let nodes = plan.json()["nodes"].as_array().unwrap().clone();
    let node = |id: &str| nodes.iter().find(|n| n["id"] == id).unwrap().clone();
    let tampered = node("local/ubuntu-2404/1.32/publish");
    assert_eq!(tampered["action"], "rebuild");
    assert_eq!(
        tampered["reasons"][0],
        serde_json::json!({
            "kind": "published_drift",
            "target": "file://images/local-ubuntu-2404-k8s-1.32.qcow2",
            "what": "sha256",
            "found": bad,
            "expected": good,
        })
    );
    let text = p.kiln(&["-f", F, "plan"]).stdout;
    assert!(
        text.contains(&format!(
            "· drift: file://images/local-ubuntu-2404-k8s-1.32.qcow2 has sha256 {bad}, expected {good}"
        )),
        "{text}"
    );
    // `kiln images` says what that refresh found.
    let entry = catalog_entry(&p, CELL);
    assert_eq!(entry["current"], false, "{entry}");
    assert_eq!(entry["refresh"], "drift", "{entry}");
    let deleted = node("local/flatcar/1.31/publish");
    assert_eq!(deleted["reasons"][0]["kind"], "published_missing");
    assert_eq!(
        deleted["reasons"][0]["target"],
        "file://images/local-flatcar-k8s-1.31.qcow2"
    );

    let unchecked = p.kiln(&["-f", F, "plan", "--refresh=false"]);
    unchecked.expect_code(0);
    assert!(
        unchecked.stdout.ends_with(
            "No changes. 12 nodes cached.\nThe published state was not checked (--refresh=false): publish nodes are planned from the cache alone.\n"
        ),
        "{}",
        unchecked.stdout
    );

    let out = p.kiln(&["-f", F, "build", "--quiet"]);
    out.expect_code(0);
    assert_eq!(out.stdout.trim(), "2 built, 10 cached", "{}", out.stderr);
    assert_eq!(sha256_of(&p, IMAGE), good);
    assert!(p.path().join(other).is_file());
    p.kiln(&["-f", F, "plan", "--detailed-exitcode"])
        .expect_code(0);
}

/// The largest blob of the cache: the disk image of one of the example's builds.
fn largest_blob(p: &Project) -> std::path::PathBuf {
    let mut best: Option<(u64, std::path::PathBuf)> = None;
    for fan in std::fs::read_dir(p.path().join("examples/local/cache/cas")).unwrap() {
        for e in std::fs::read_dir(fan.unwrap().path()).unwrap() {
            let e = e.unwrap();
            let len = e.metadata().unwrap().len();
            if best.as_ref().is_none_or(|(l, _)| len > *l) {
                best = Some((len, e.path()));
            }
        }
    }
    best.unwrap().1
}

/// A corrupt upstream blob makes its node rebuild first in the same build: the forced step never
/// runs without its input.
#[test]
fn a_step_never_runs_without_its_upstream_blob() {
    let p = local_example();
    p.kiln(&["-f", F, "build", "--quiet"]).expect_code(0);
    let blob = largest_blob(&p);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[100] ^= 1;
    let mut perms = std::fs::metadata(&blob).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&blob, perms).unwrap();
    std::fs::write(&blob, &bytes).unwrap();
    let plan = p.kiln(&["-f", F, "plan", "--json", "--refresh=false"]);
    let forced = plan.json()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["step"] == "validate")
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect::<Vec<_>>();
    let mut args = vec!["-f", F, "build"];
    for id in &forced {
        args.extend(["--force", id.as_str()]);
    }
    let out = p.kiln(&args);
    out.expect_code(0);
    assert!(
        out.stderr.contains("warning: corrupt blob"),
        "{}",
        out.stderr
    );
    // Four validates forced, and the one build whose image was damaged rebuilt before its own.
    let built = out.stderr.matches(" built  ").count();
    assert_eq!(built, 5, "{}", out.stderr);
    assert!(out.stdout.starts_with("5 built, "), "{}", out.stdout);
    p.kiln(&["-f", F, "cache", "verify"]).expect_code(0);
}

/// build → validate (outputs nothing) → publish, with a validate command the provider sets.
fn chain(check: &str) -> String {
    format!(
        r#"module "chain" {{
    setting "check" default="true"
    step "build" builder="command" {{
        argv "sh" "-c" "echo an image > image.qcow2"
        outputs "image.qcow2"
    }}
    step "validate" builder="command" {{
        argv "sh" "-c" "{{check}}"
    }}
    step "publish" builder="upload" {{
        bucket "file://published"
    }}
}}

kubernetes "1.31" {{
    version "1.31.4"
}}

matrix "m" {{
    kubernetes "1.31"
    provider "p"
    os "one"
}}

provider "p" module="chain" {{
    check "{check}"
}}
"#
    )
}

/// Early cutoff reuses a publish node's last result only while its claim holds: with the image
/// gone from the bucket, a changed validate step (which outputs nothing) must not let publish
/// say `same`.
#[test]
fn early_cutoff_never_reuses_a_claim_that_no_longer_holds() {
    let p = Project::new().with_file("images.kdl", &chain("true"));
    p.kiln(&["build", "--quiet"]).expect_code(0);
    let published = "published/p-one-k8s-1.31.qcow2";
    assert!(p.path().join(published).is_file());
    p.write("images.kdl", &chain("test -s upstream/build/image.qcow2"));
    let plan = p.kiln(&["plan"]);
    plan.expect_code(0);
    assert!(
        plan.stdout.contains("~? p/one/1.31/publish"),
        "{}",
        plan.stdout
    );
    // With the bucket intact, publish is cut off.
    let out = p.kiln(&["build", "--quiet"]);
    assert_eq!(
        out.stdout.trim(),
        "1 built, 1 cached, 1 unchanged after upstream rebuild",
        "{}",
        out.stderr
    );

    p.write("images.kdl", &chain("test -f upstream/build/image.qcow2"));
    std::fs::remove_file(p.path().join(published)).unwrap();
    let plan = p.kiln(&["plan"]);
    plan.expect_code(0);
    assert!(
        plan.stdout.contains("~  p/one/1.31/publish")
            && plan
                .stdout
                .contains("· missing: file://published/p-one-k8s-1.31.qcow2"),
        "{}",
        plan.stdout
    );
    let out = p.kiln(&["build", "--quiet"]);
    out.expect_code(0);
    assert_eq!(out.stdout.trim(), "2 built, 1 cached", "{}", out.stderr);
    assert!(p.path().join(published).is_file());
}
