//! The seeds as examples: `examples/hcloud/` and `examples/giantswarm/` run through
//! image-builder's real Makefile with the recording fakes, compared with a recording of each
//! seed's own procedure on the same tree, made here. Every allowed difference has its reason.

use std::fs;
use std::path::Path;

use crate::makefile::{
    Bench, Diff, PackerCall, assert_differences, hcloud_allowed, hcloud_seed, shape,
    without_publish,
};
use crate::support::{Project, repo_root};

const DEVOPS1: &str = "hcl0ud-t0ken-devops1-project";
const STAGING: &str = "hcl0ud-t0ken-staging-project";
const REGISTRY_USER: &str = "robot-kiln-images";
const REGISTRY_PASSWORD: &str = "harb0r-r0bot-passw0rd-value";

/// An example directory at `examples/NAME` with the repository's modules beside it, as in the
/// repository (the examples import `../../modules/…`).
fn example(name: &str) -> Project {
    let root = repo_root();
    Project::new()
        .with_path(
            &root.join("examples").join(name),
            &format!("examples/{name}"),
        )
        .with_path(&root.join("modules"), "modules")
}

/// Runs kiln on the example, with image-builder's tree of the bench.
fn kiln_example(bench: &Bench, name: &str, args: &[&str]) -> crate::support::Output {
    let source = bench.project.path().join("image-builder");
    let config = format!("examples/{name}/images.kdl");
    let mut all = vec!["-f", &config];
    all.extend_from_slice(args);
    all.extend(["--image-builder-source", source.to_str().unwrap()]);
    bench.project.kiln(&all)
}

/// Nothing under `dir` holds `value`, but the fakes' own recordings (which log packer's whole
/// environment, as a stand-in for the process itself).
fn assert_no_file_holds(dir: &Path, value: &str) {
    for entry in walk(dir) {
        if entry.components().any(|c| c.as_os_str() == "fakelog") {
            continue;
        }
        let bytes = fs::read(&entry).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(value),
            "{} holds a secret",
            entry.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            out.extend(walk(&p));
        } else if m.is_file() {
            out.push(p);
        }
    }
    out
}

/// `examples/hcloud/` builds, for each Hetzner project of its matrix axis, exactly what the
/// hcloud seed's procedure builds in that project's GitHub environment (its HCLOUD_TOKEN, its
/// registry URL), up to the listed differences: the same packer argv, var files in order and
/// merged variables; the patched packer.json byte-identical to jq's. The registry credentials
/// the patch references reach packer without entering its argv, a key or any file.
#[test]
fn hcloud_example_matches_the_seed_in_every_project() {
    let root = repo_root();
    let user = root.join("tests/fixtures/hcloud-machine-images/config");
    // The seed's repository: their config/ (the user's real files, and the same scripts the
    // example ships).
    let project = example("hcloud").with_path(&user, "config").with_path(
        &root.join("examples/hcloud/config/scripts"),
        "config/scripts",
    );
    let mut bench = Bench::new(project);
    // The example ships the user's files unchanged.
    for f in ["packer-patch.json", "hcloud-config.json"] {
        assert_eq!(
            fs::read(user.join(f)).unwrap(),
            fs::read(root.join("examples/hcloud/config").join(f)).unwrap(),
            "examples/hcloud/config/{f} is the user's own"
        );
    }

    // The seed, once per GitHub environment, with the credentials on PACKER_FLAGS (the only way
    // their script can pass them; in kiln's order of the flags).
    let flags = |registry: &str| {
        format!(
            "-var container_registry_password='{REGISTRY_PASSWORD}' -var container_registry_url='{registry}' -var container_registry_username='{REGISTRY_USER}'"
        )
    };
    let devops1 = hcloud_seed(
        &bench,
        "seed-devops1",
        "ubuntu-2404",
        &flags("https://harbor.devops1.example.com"),
        DEVOPS1,
    );
    let staging = hcloud_seed(
        &bench,
        "seed-staging",
        "ubuntu-2404",
        &flags("https://harbor.staging.example.com"),
        STAGING,
    );
    assert_eq!((devops1.len(), staging.len()), (2, 2), "validate and build");

    for (k, v) in [
        ("HCLOUD_TOKEN_DEVOPS1", DEVOPS1),
        ("HCLOUD_TOKEN_STAGING", STAGING),
        ("CONTAINER_REGISTRY_USERNAME", REGISTRY_USER),
        ("CONTAINER_REGISTRY_PASSWORD", REGISTRY_PASSWORD),
    ] {
        bench.project.set_env(k, v);
    }
    without_publish(&bench.project, "modules/hcloud.kdl");
    let out = kiln_example(&bench, "hcloud", &["build", "-j", "1"]);
    out.expect_code(0);
    // One patch for both projects, then validate and build per project.
    assert_eq!(out.stdout.trim(), "5 built, 0 cached", "{}", out.stderr);
    let kiln = bench.take_calls();
    assert_eq!(kiln.len(), 4);
    let project_of = |c: &PackerCall| c.env["HCLOUD_TOKEN"].clone();
    let (kiln_devops1, kiln_staging): (Vec<PackerCall>, Vec<PackerCall>) =
        kiln.iter().cloned().partition(|c| project_of(c) == DEVOPS1);
    assert!(kiln_staging.iter().all(|c| project_of(c) == STAGING));

    let mut allowed = hcloud_allowed();
    allowed.extend([
        (
            Diff::FlagValue("container_registry_username".into()),
            "kiln passes `{{env `CONTAINER_REGISTRY_USERNAME`}}`, which packer resolves to the same value (same merged variable): the value is in no argv",
        ),
        (
            Diff::FlagValue("container_registry_password".into()),
            "the same for the password",
        ),
        (
            Diff::EnvOnlyKiln("CONTAINER_REGISTRY_USERNAME".into()),
            "the secret the reference reads",
        ),
        (
            Diff::EnvOnlyKiln("CONTAINER_REGISTRY_PASSWORD".into()),
            "the secret the reference reads",
        ),
    ]);
    assert_differences(&devops1, &kiln_devops1, &allowed);
    assert_differences(&staging, &kiln_staging, &allowed);

    let build = &kiln_devops1[1];
    let shown = shape(build);
    let config = |f: &str| format!("-var-file=<capi>/packer/config/{f}.json");
    let mut want: Vec<String> = [
        "kubernetes",
        "cni",
        "containerd",
        "wasm-shims",
        "ansible-args",
        "goss-args",
        "common",
        "additional_components",
        "ecr_credential_provider",
    ]
    .iter()
    .map(|f| config(f))
    .collect();
    want.insert(0, "build".into());
    want.extend(
        [
            "-var",
            "container_registry_password={{env `CONTAINER_REGISTRY_PASSWORD`}}",
            "-var",
            "container_registry_url=https://harbor.devops1.example.com",
            "-var",
            "container_registry_username={{env `CONTAINER_REGISTRY_USERNAME`}}",
            "-color=true",
            "-var-file=packer/hcloud/hcloud-config.json",
            "-var-file=<capi>/packer/hcloud/ubuntu-2404.json",
            "-var-file=<PACKER_VAR_FILES>",
            "packer/hcloud/packer.json",
        ]
        .map(String::from),
    );
    assert_eq!(shown.argv, want, "the seed's README shows this command");
    assert_eq!(build.merged["ib_version"], "v0.1.55");
    // Their hcloud-config.json wins over image-builder's: their server type; each project's
    // registry and token.
    assert_eq!(build.merged["server_type"], "cpx22");
    assert_eq!(build.merged["token"], DEVOPS1);
    assert_eq!(
        build.merged["container_registry_password"],
        REGISTRY_PASSWORD
    );
    assert_eq!(
        kiln_staging[1].merged["container_registry_url"],
        "https://harbor.staging.example.com"
    );
    assert_eq!(kiln_staging[1].merged["token"], STAGING);
    // The other project's token, and where kiln reads it from, are not in the step's
    // environment.
    for c in &kiln {
        for name in ["HCLOUD_TOKEN_DEVOPS1", "HCLOUD_TOKEN_STAGING"] {
            assert!(!c.env.contains_key(name), "{name} reached packer");
        }
    }
    // Secrets reach packer through the environment only: in no argv, var file, cache entry or
    // leftover file, and the publish step of each project reads its own token.
    for c in &kiln {
        for secret in [DEVOPS1, STAGING, REGISTRY_USER, REGISTRY_PASSWORD] {
            assert!(!c.argv.iter().any(|a| a.contains(secret)));
            assert!(
                !c.var_files
                    .iter()
                    .any(|(_, v)| v.to_string().contains(secret))
            );
        }
    }
    for secret in [DEVOPS1, STAGING, REGISTRY_USER, REGISTRY_PASSWORD] {
        assert_no_file_holds(&bench.project.path().join("examples"), secret);
    }
    // Changing a secret's value rebuilds nothing.
    bench
        .project
        .set_env("CONTAINER_REGISTRY_PASSWORD", "another-passw0rd");
    let plan = kiln_example(&bench, "hcloud", &["plan"]);
    plan.expect_code(0);
    assert_eq!(plan.stdout.trim(), "No changes. 5 nodes cached.");
}

/// The example's publish steps read each project's token from that project's variable.
#[test]
fn hcloud_example_publishes_each_project_with_its_token() {
    let p = example("hcloud");
    for (project, var) in [
        ("devops1", "HCLOUD_TOKEN_DEVOPS1"),
        ("staging", "HCLOUD_TOKEN_STAGING"),
    ] {
        let id = format!("hcloud/ubuntu-2404/1.31/{project}/publish");
        let out = p.kiln(&["-f", "examples/hcloud/images.kdl", "explain", &id]);
        out.expect_code(0);
        assert!(
            out.stdout.contains(&format!(
                "secret    HCLOUD_TOKEN from environment variable {var} "
            )),
            "{}",
            out.stdout
        );
    }
}
