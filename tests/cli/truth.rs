//! What kiln says is built and published is what is built and published: early cutoff judged on
//! every upstream result a step receives, and publish claims checked against their bucket.

use std::process::Command;

use crate::support::Project;

const F: &str = "examples/local/images.kdl";

fn local_example() -> Project {
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
