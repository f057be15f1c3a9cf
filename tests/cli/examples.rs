//! The seeds as examples: `examples/hcloud/` and `examples/giantswarm/` run through
//! image-builder's real Makefile with the recording fakes, compared with a recording of each
//! seed's own procedure on the same tree, made here. Every allowed difference has its reason.

use std::fs;
use std::path::Path;

use crate::makefile::{
    Bench, Diff, PackerCall, assert_differences, hcloud_allowed, hcloud_seed, shape,
    without_publish,
};
use crate::support::{Project, assert_nowhere, repo_root};

const DEVOPS1: &str = "hcl0ud-t0ken-devops1-project";
const STAGING: &str = "hcl0ud-t0ken-staging-project";
const REGISTRY_USER: &str = "robot-kiln-images";
const REGISTRY_PASSWORD: &str = "harb0r-r0bot-passw0rd-value";

/// An example directory at `examples/NAME` with the repository's modules beside it, as in the
/// repository (the examples import `../../modules/…`).
fn example(name: &str) -> Project {
    let root = repo_root();
    let p = Project::new()
        .with_path(
            &root.join("examples").join(name),
            &format!("examples/{name}"),
        )
        .with_path(&root.join("modules"), "modules");
    // Not the cache of a run someone made in the repository.
    let _ = fs::remove_dir_all(p.path().join(format!("examples/{name}/cache")));
    p
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
        // The fakes' own recordings (packer's whole environment) are outside examples/.
        assert_nowhere(&bench.project.path().join("examples"), secret);
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

const AMI_KEY: &str = "AKIAGIANTSWARMAMI0001";
const AMI_SECRET: &str = "ami-secret-access-key-value-0001";
const S3_KEY: &str = "AKIAGIANTSWARMS30001";
const S3_SECRET: &str = "s3-secret-access-key-value-0001";
const GCP_KEY: &str = r#"{"type": "service_account", "project_id": "giantswarm-capi-images", "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEv-giantswarm-key\n-----END PRIVATE KEY-----\n"}"#;

/// The Kubernetes pins every giantswarm build passes in its var file.
fn giantswarm_release() -> serde_json::Value {
    serde_json::json!({
        "kubernetes_semver": "v1.31.4",
        "kubernetes_series": "v1.31",
        "kubernetes_deb_version": "1.31.4-1.1",
        "kubernetes_rpm_version": "1.31.4",
        "kubernetes_cni_semver": "v1.9.0",
        "containerd_version": "2.2.0"
    })
}

/// One giantswarm pipeline run on a fresh tree: its var file (the release's pins and the
/// provider's settings), its environment, `PACKER_LOG=1` on every attempt; `make validate-…`
/// then `make build-…`.
fn giantswarm_seed(
    bench: &Bench,
    target: &str,
    vars: serde_json::Value,
    env: &[(&str, &str)],
) -> Vec<PackerCall> {
    let capi = bench.seed_tree(&format!("seed-{target}"));
    let mut all = giantswarm_release();
    all.as_object_mut()
        .unwrap()
        .extend(vars.as_object().unwrap().clone());
    let file = bench.project.path().join(format!("seed-{target}.json"));
    fs::write(&file, serde_json::to_string_pretty(&all).unwrap()).unwrap();
    let mut env: Vec<(&str, &str)> = env.to_vec();
    let path = file.to_string_lossy().into_owned();
    env.extend([("PACKER_VAR_FILES", path.as_str()), ("PACKER_LOG", "1")]);
    bench.make(&capi, &format!("validate-{target}"), &env);
    bench.make(&capi, &format!("build-{target}"), &env);
    bench.take_calls()
}

/// `examples/giantswarm/` runs packer, provider by provider, as the giantswarm seed's pipeline
/// does: aws public and unencrypted in four regions, built in eu-central-1; gcp; openstack's
/// qemu build compressed, without an accelerator, with its cpus, memory and output directory.
#[test]
fn giantswarm_example_matches_the_seed_for_every_provider() {
    let mut bench = Bench::new(example("giantswarm"));
    let aws_env = [
        ("AWS_ACCESS_KEY_ID", AMI_KEY),
        ("AWS_SECRET_ACCESS_KEY", AMI_SECRET),
        ("FLATCAR_VERSION", "4152.2.3"),
    ];
    let aws = serde_json::json!({
        "aws_region": "eu-central-1",
        "ami_regions": "eu-central-1,eu-west-1,us-east-1,us-west-1",
        "ami_groups": "all",
        "snapshot_groups": "all",
        "encrypted": "false"
    });
    let key_file = bench.project.path().join("gcp-key.json");
    fs::write(&key_file, GCP_KEY).unwrap();
    let key_path = key_file.to_string_lossy().into_owned();
    let seeds = [
        (
            "ami-ubuntu-2404",
            giantswarm_seed(&bench, "ami-ubuntu-2404", aws.clone(), &aws_env),
        ),
        (
            "ami-flatcar",
            giantswarm_seed(&bench, "ami-flatcar", aws, &aws_env),
        ),
        (
            "gce-ubuntu-2404",
            giantswarm_seed(
                &bench,
                "gce-ubuntu-2404",
                serde_json::json!({"project_id": "giantswarm-capi-images", "zone": "us-central1-a"}),
                &[("GOOGLE_APPLICATION_CREDENTIALS", &key_path)],
            ),
        ),
        (
            "qemu-ubuntu-2404",
            giantswarm_seed(
                &bench,
                "qemu-ubuntu-2404",
                serde_json::json!({
                    "disk_compression": "true",
                    "accelerator": "none",
                    "cpus": "4",
                    "memory": "8192",
                    "output_directory": "./output/cluster-api-v1.31.4"
                }),
                &[],
            ),
        ),
    ];

    for (k, v) in [
        ("AMI_ACCESS_KEY_ID", AMI_KEY),
        ("AMI_SECRET_ACCESS_KEY", AMI_SECRET),
        ("S3_ACCESS_KEY_ID", S3_KEY),
        ("S3_SECRET_ACCESS_KEY", S3_SECRET),
        ("GCP_SERVICE_ACCOUNT_JSON", GCP_KEY),
    ] {
        bench.project.set_env(k, v);
    }
    for m in ["aws", "gcp", "openstack"] {
        without_publish(&bench.project, &format!("modules/{m}.kdl"));
    }
    let out = kiln_example(&bench, "giantswarm", &["build", "-j", "1", "--debug"]);
    out.expect_code(0);
    assert_eq!(out.stdout.trim(), "8 built, 0 cached", "{}", out.stderr);
    let kiln = bench.take_calls();
    let allowed = giantswarm_allowed();
    for (target, seed) in &seeds {
        let (dir, os) = target.split_once('-').unwrap();
        let mine: Vec<PackerCall> = kiln
            .iter()
            .filter(|c| {
                c.argv
                    .last()
                    .is_some_and(|t| t.starts_with(&format!("packer/{dir}/")))
                    && c.argv.iter().any(|a| a.ends_with(&format!("{os}.json")))
            })
            .cloned()
            .collect();
        assert_eq!(mine.len(), 2, "{target}: validate and build");
        assert_differences(seed, &mine, &allowed[*target]);
    }
    // The builds' artifacts, from packer's manifest (ami) and where packer writes the disk (the
    // seed's output directory).
    let facts = |id: &str| {
        let out = kiln_example(&bench, "giantswarm", &["logs", id]);
        out.expect_code(0);
        out.stdout
    };
    let ami = facts("aws/ubuntu-2404/1.31/build");
    for region in ["eu-central-1", "eu-west-1", "us-east-1", "us-west-1"] {
        assert!(ami.contains(&format!("fact ami.{region}=ami-")), "{ami}");
    }
    let qemu = facts("openstack/ubuntu-2404/1.31/build");
    assert!(
        qemu.contains("fact image=output/cluster-api-v1.31.4/ubuntu-2404-kube-v1.31.4\n"),
        "{qemu}"
    );
    // The seed's settings, as packer sees them.
    let build = |dir: &str| {
        kiln.iter()
            .find(|c| c.command == "build" && c.argv.last().unwrap().starts_with(dir))
            .unwrap()
    };
    let ami = build("packer/ami/");
    assert_eq!(
        ami.merged["ami_regions"],
        "eu-central-1,eu-west-1,us-east-1,us-west-1"
    );
    assert_eq!(ami.merged["aws_region"], "eu-central-1");
    assert_eq!(ami.merged["encrypted"], "false");
    assert_eq!(ami.env["AWS_ACCESS_KEY_ID"], AMI_KEY);
    // googlecompute read the same key from a file, as the seed's; the file is gone.
    let gce: Vec<&PackerCall> = kiln
        .iter()
        .filter(|c| c.argv.last().unwrap().starts_with("packer/gce/"))
        .collect();
    for c in &gce {
        assert_eq!(c.credentials_sha256, seeds[2].1[0].credentials_sha256);
        assert!(c.credentials_sha256.is_some());
        assert!(!c.env.contains_key("GOOGLE_APPLICATION_CREDENTIALS_JSON"));
        assert!(!Path::new(&c.env["GOOGLE_APPLICATION_CREDENTIALS"]).exists());
    }
    let qemu = build("packer/qemu/");
    assert_eq!(qemu.merged["accelerator"], "none");
    assert_eq!(
        qemu.merged["output_directory"],
        "./output/cluster-api-v1.31.4"
    );
    assert!(
        !qemu
            .env
            .keys()
            .any(|k| k.starts_with("AWS_") || k.starts_with("S3_")),
        "the qemu build gets none of the upload's credentials"
    );
    for c in &kiln {
        assert_eq!(
            c.env["PACKER_LOG"], "1",
            "--debug: every attempt, as the seed"
        );
        for secret in [AMI_KEY, AMI_SECRET, S3_KEY, S3_SECRET, GCP_KEY] {
            assert!(!c.argv.iter().any(|a| a.contains(secret)));
            assert!(
                !c.var_files
                    .iter()
                    .any(|(_, v)| v.to_string().contains(secret))
            );
        }
    }
    for secret in [
        AMI_KEY,
        AMI_SECRET,
        S3_KEY,
        S3_SECRET,
        "MIIEv-giantswarm-key",
    ] {
        // The fakes' own recordings (packer's whole environment) are outside examples/.
        assert_nowhere(&bench.project.path().join("examples"), secret);
    }
}

/// Per seed run (`<template dir>-<os>`): what makes kiln's calls differ from it, and why. The
/// var files of gce and qemu builds are the seed's, value for value.
fn giantswarm_allowed() -> std::collections::BTreeMap<&'static str, Vec<(Diff, &'static str)>> {
    let common = || {
        vec![
            (
                Diff::Merged("ib_version".into()),
                "the seed's tree is no git checkout, so the Makefile's `git describe` gives nothing; kiln passes IB_VERSION from its pin (v0.1.55)",
            ),
            (
                Diff::Merged("ansible_common_vars".into()),
                "it ends with image_builder_version={{user `ib_version`}}, which is the pin's with kiln",
            ),
        ]
    };
    let mut out = std::collections::BTreeMap::new();
    for target in ["ami-ubuntu-2404", "ami-flatcar"] {
        let mut v = common();
        v.extend([
            (
                Diff::VarFile("<PACKER_VAR_FILES>".into()),
                "the same values, plus manifest_output",
            ),
            (
                Diff::Merged("manifest_output".into()),
                "kiln points packer's manifest into its own work directory, to read the AMI ids and to fail a build that wrote none",
            ),
        ]);
        out.insert(target, v);
    }
    out.insert("gce-ubuntu-2404", common());
    let mut qemu = common();
    let random = "image-builder's hack/set-ssh-password.sh renders packer.json from packer.json.tmpl with a random SSH password on every run, so it differs between any two runs of the seed itself";
    qemu.extend([
        (Diff::Merged("ssh_password".into()), random),
        (Diff::Template, random),
    ]);
    out.insert("qemu-ubuntu-2404", qemu);
    out
}

/// The seed's own operating system, Ubuntu 20.04, in the example: `kiln check` says that
/// image-builder v0.1.55 no longer builds it and names the closest targets, per provider.
#[test]
fn giantswarm_example_with_the_seeds_ubuntu_2004_names_the_closest_targets() {
    let p = example("giantswarm");
    p.edit("examples/giantswarm/images.kdl", |t| {
        t.replace(
            r#"os "ubuntu-2404" "flatcar""#,
            r#"os "ubuntu-2004" "flatcar""#,
        )
    });
    let out = p.kiln(&["-f", "examples/giantswarm/images.kdl", "check"]);
    out.expect_code(1);
    // Compared without whitespace: the help wraps, also at hyphens.
    let flat = |s: &str| s.split_whitespace().collect::<String>();
    let err = flat(&out.stderr);
    for (target, closest) in [
        (
            "build-ami-ubuntu-2004",
            "`build-ami-ubuntu-2204`, `build-ami-ubuntu-2404`",
        ),
        (
            "build-gce-ubuntu-2004",
            "`build-gce-ubuntu-2204`, `build-gce-ubuntu-2404`",
        ),
        (
            "build-qemu-ubuntu-2004",
            "`build-qemu-ubuntu-2204`, `build-qemu-ubuntu-2404`",
        ),
    ] {
        assert!(
            err.contains(&flat(&format!("has no make target `{target}`"))),
            "{}",
            out.stderr
        );
        assert!(err.contains(&flat(closest)), "{closest}: {}", out.stderr);
    }
    assert!(err.contains(&flat("no longer builds this release")));
}
