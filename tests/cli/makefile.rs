//! kiln through image-builder's **real** Makefile (v0.1.55's whole `images/capi`, in
//! tests/fixtures), with recording fakes of `packer`, `ansible`, `ansible-galaxy`,
//! `ansible-playbook`, `pip3` and `curl` first on `PATH` (tests/data/image-builder-fakes/): the
//! `deps-*` targets run offline, and every `packer validate|build` is recorded with its argv,
//! working directory, environment, var files in order, merged variables and the sha256 of its
//! template. Each comparison runs the seed's own procedure on the same tree (its jq patch by
//! hand, its environment, `make validate-…` then `make build-…`) and lists every difference
//! that is allowed, with its reason.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::{Project, copy_tree, repo_root};

pub(crate) const TOKEN: &str = "hcl0ud-t0ken-secret-value";

pub(crate) fn capi_fixture() -> PathBuf {
    repo_root().join("tests/fixtures/image-builder-v0.1.55-capi")
}

fn fakes_dir() -> PathBuf {
    repo_root().join("tests/data/image-builder-fakes")
}

/// The python3 on PATH, resolved to its executable once.
fn python3() -> &'static Path {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 is installed (.ci/run installs it)");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// A project with image-builder's tree at `image-builder/images/capi` (what `source=` names), the
/// fakes first on `PATH` and their log directory. Runs with a clean environment.
pub(crate) struct Bench {
    pub(crate) project: Project,
    pub(crate) log: PathBuf,
}

impl Bench {
    pub(crate) fn new(project: Project) -> Bench {
        let project = project.with_path(&capi_fixture(), "image-builder/images/capi");
        let log = project.path().join("fakelog");
        let bin = project.path().join("fakebin");
        fs::create_dir_all(&log).unwrap();
        copy_tree(&fakes_dir(), &bin);
        // The interpreter itself rather than a version manager's shim (which takes a second a
        // call): the Makefile's hack/ensure-python.sh and the fake packer run it.
        std::os::unix::fs::symlink(python3(), bin.join("python3")).unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let project = project
            .clean_env()
            .env("PATH", &path)
            .env("FAKE_LOG", &log.to_string_lossy());
        Bench { project, log }
    }

    /// Every packer call recorded so far, in order; clears the log.
    pub(crate) fn take_calls(&self) -> Vec<PackerCall> {
        let calls = packer_calls(&self.log);
        for e in fs::read_dir(&self.log).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "json") {
                fs::remove_file(p).unwrap();
            }
        }
        calls
    }

    /// Runs `make TARGET` in `capi` as a user of image-builder does, with the bench's
    /// environment (the same kiln runs with) and `env`.
    pub(crate) fn make(&self, capi: &Path, target: &str, env: &[(&str, &str)]) {
        let out = Command::new("make")
            .arg(target)
            .current_dir(capi)
            .env_clear()
            .env("NO_COLOR", "1") // as Project::kiln runs kiln
            .envs(self.project.env_vars())
            .envs(env.iter().copied())
            .output()
            .expect("run make");
        assert!(
            out.status.success(),
            "make {target} failed\n--- stdout\n{}\n--- stderr\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A fresh copy of image-builder's tree for a seed's procedure, at `<name>/images/capi`.
    pub(crate) fn seed_tree(&self, name: &str) -> PathBuf {
        let capi = self.project.path().join(name).join("images/capi");
        copy_tree(&capi_fixture(), &capi);
        capi
    }
}

/// `jq --slurpfile patch PATCH '.provisioners += $patch[0].provisioners' packer.json`, in place,
/// as the hcloud seed does.
pub(crate) fn jq_append(template: &Path, patch: &Path) {
    let out = Command::new("jq")
        .arg("--slurpfile")
        .arg("patch")
        .arg(patch)
        .arg(".provisioners += $patch[0].provisioners")
        .arg(template)
        .output()
        .expect("jq is installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(template, out.stdout).unwrap();
}

/// `sha256sum FILE`.
pub(crate) fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// One recorded `packer validate|build`.
#[derive(Debug, Clone)]
pub(crate) struct PackerCall {
    pub(crate) command: String,
    pub(crate) argv: Vec<String>,
    pub(crate) cwd: PathBuf,
    pub(crate) env: BTreeMap<String, String>,
    /// (path as passed, content), in order.
    pub(crate) var_files: Vec<(String, Value)>,
    pub(crate) template_sha256: String,
    pub(crate) merged: BTreeMap<String, Value>,
    /// With FAKE_TREE=1: every file of the tree packer ran in, relative path → sha256.
    pub(crate) tree: BTreeMap<String, String>,
    /// The sha256 of the file GOOGLE_APPLICATION_CREDENTIALS named when packer ran.
    pub(crate) credentials_sha256: Option<String>,
}

/// The fakes' JSON records in `log` whose file names contain `tag`, in order.
fn recorded(log: &Path, tag: &str) -> Vec<Value> {
    let mut files: Vec<PathBuf> = fs::read_dir(log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(tag))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| serde_json::from_str(&fs::read_to_string(f).unwrap()).unwrap())
        .collect()
}

pub(crate) fn packer_calls(log: &Path) -> Vec<PackerCall> {
    recorded(log, "-packer-")
        .into_iter()
        .map(|v| {
            let strings = |v: &Value| -> Vec<String> {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_string())
                    .collect()
            };
            PackerCall {
                command: v["command"].as_str().unwrap().into(),
                argv: strings(&v["argv"]),
                cwd: v["cwd"].as_str().unwrap().into(),
                env: v["env"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect(),
                var_files: v["var_files"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| (f["path"].as_str().unwrap().into(), f["vars"].clone()))
                    .collect(),
                template_sha256: v["template_sha256"].as_str().unwrap().into(),
                merged: v["merged"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                tree: v
                    .get("tree")
                    .and_then(Value::as_object)
                    .map(|t| {
                        t.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
                credentials_sha256: v
                    .get("credentials_sha256")
                    .and_then(Value::as_str)
                    .map(String::from),
            }
        })
        .collect()
}

/// A packer call with the places that differ by construction named: the image-builder tree it
/// runs in as `<capi>`, the file `PACKER_VAR_FILES` names as `<PACKER_VAR_FILES>`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Shape {
    pub(crate) command: String,
    pub(crate) argv: Vec<String>,
    pub(crate) var_files: Vec<(String, Value)>,
    pub(crate) merged: BTreeMap<String, Value>,
    pub(crate) env_names: BTreeSet<String>,
    pub(crate) template_sha256: String,
}

pub(crate) fn shape(c: &PackerCall) -> Shape {
    let capi = c.cwd.to_string_lossy().into_owned();
    let user = c.env.get("PACKER_VAR_FILES").cloned().unwrap_or_default();
    let norm = |s: &str| {
        let s = if !user.is_empty() {
            s.replace(&user, "<PACKER_VAR_FILES>")
        } else {
            s.to_string()
        };
        s.replace(&capi, "<capi>")
    };
    Shape {
        command: c.command.clone(),
        argv: c.argv.iter().map(|a| norm(a)).collect(),
        var_files: c
            .var_files
            .iter()
            .map(|(p, v)| (norm(p), v.clone()))
            .collect(),
        merged: c.merged.clone(),
        env_names: c.env.keys().cloned().collect(),
        template_sha256: c.template_sha256.clone(),
    }
}

/// One way kiln's packer call differs from the seed's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Diff {
    Argv,
    /// Only the value of one `-var NAME=VALUE` on the command line.
    FlagValue(String),
    /// The var file at this position (its normalized path).
    VarFile(String),
    /// A merged variable, by name.
    Merged(String),
    /// An environment variable only the seed's packer sees.
    EnvOnlySeed(String),
    /// An environment variable only kiln's packer sees.
    EnvOnlyKiln(String),
    Template,
}

pub(crate) fn diff(seed: &Shape, kiln: &Shape) -> BTreeSet<Diff> {
    let mut out = BTreeSet::new();
    assert_eq!(seed.command, kiln.command);
    if seed.argv != kiln.argv {
        // Differences in the values of `-var NAME=…` only are named by variable.
        let name = |a: &str| a.split_once('=').map(|(n, _)| n.to_string());
        let pairs: Vec<(usize, (&String, &String))> = seed
            .argv
            .iter()
            .zip(&kiln.argv)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .collect();
        let values: Option<Vec<String>> = (seed.argv.len() == kiln.argv.len())
            .then(|| {
                pairs
                    .iter()
                    .map(|(i, (a, b))| {
                        (*i > 0 && seed.argv[i - 1] == "-var" && name(a) == name(b))
                            .then(|| name(a))
                            .flatten()
                    })
                    .collect()
            })
            .flatten();
        match values {
            Some(names) => out.extend(names.into_iter().map(Diff::FlagValue)),
            None => {
                out.insert(Diff::Argv);
            }
        }
    }
    let paths = |s: &Shape| {
        s.var_files
            .iter()
            .map(|(p, _)| p.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        paths(seed),
        paths(kiln),
        "the var files and their order are the same"
    );
    for ((p, a), (_, b)) in seed.var_files.iter().zip(&kiln.var_files) {
        if a != b {
            out.insert(Diff::VarFile(p.clone()));
        }
    }
    let names: BTreeSet<&String> = seed.merged.keys().chain(kiln.merged.keys()).collect();
    for k in names {
        let (a, b) = (seed.merged.get(k), kiln.merged.get(k));
        if a != b {
            out.insert(Diff::Merged(k.clone()));
        }
    }
    for k in seed.env_names.difference(&kiln.env_names) {
        out.insert(Diff::EnvOnlySeed(k.clone()));
    }
    for k in kiln.env_names.difference(&seed.env_names) {
        out.insert(Diff::EnvOnlyKiln(k.clone()));
    }
    if seed.template_sha256 != kiln.template_sha256 {
        out.insert(Diff::Template);
    }
    out
}

/// Asserts that the differences between the seed's calls and kiln's are exactly `allowed`
/// (each with its reason, printed when they do not match).
#[track_caller]
pub(crate) fn assert_differences(
    seed: &[PackerCall],
    kiln: &[PackerCall],
    allowed: &[(Diff, &str)],
) {
    assert_eq!(
        seed.iter().map(|c| &c.command).collect::<Vec<_>>(),
        kiln.iter().map(|c| &c.command).collect::<Vec<_>>(),
        "the same packer commands in the same order"
    );
    let want: BTreeSet<Diff> = allowed.iter().map(|(d, _)| d.clone()).collect();
    for (s, k) in seed.iter().zip(kiln) {
        let (s, k) = (shape(s), shape(k));
        let got = diff(&s, &k);
        let unexpected: Vec<&Diff> = got.difference(&want).collect();
        assert!(
            unexpected.is_empty(),
            "`packer {}`: differences nobody allowed: {unexpected:#?}\n--- seed argv\n{:#?}\n--- kiln argv\n{:#?}",
            s.command,
            s.argv,
            k.argv
        );
    }
    // Every allowed difference is still real for at least one call: the list stays exact.
    let all: BTreeSet<Diff> = seed
        .iter()
        .zip(kiln)
        .flat_map(|(s, k)| diff(&shape(s), &shape(k)))
        .collect();
    let stale: Vec<&(Diff, &str)> = allowed.iter().filter(|(d, _)| !all.contains(d)).collect();
    assert!(
        stale.is_empty(),
        "allowed differences that no longer occur (remove them): {stale:#?}"
    );
}

/// The repository's hcloud module and scripts, the hcloud user's files, and a config that says
/// what their procedure does.
fn hcloud_project() -> Project {
    let root = repo_root();
    let user = root.join("tests/fixtures/hcloud-machine-images/config");
    Project::new()
        .with_path(&root.join("modules/hcloud.kdl"), "modules/hcloud.kdl")
        .with_path(&root.join("config/scripts"), "config/scripts")
        .with_path(&user.join("packer-patch.json"), "config/packer-patch.json")
        .with_path(
            &user.join("hcloud-config.json"),
            "config/hcloud-config.json",
        )
        .with_path(
            &user.join("vars/k8s-1.31.json"),
            "config/vars/k8s-1.31.json",
        )
        .with_file(
            "images.kdl",
            r#"import "modules/hcloud.kdl"

tool "image-builder" "v0.1.55" source="image-builder"

kubernetes "1.31" {
    version "1.31.4"
    revision "1.1"
    cni "v1.9.0"
    containerd "2.2.0"
}

matrix "hcloud" {
    kubernetes "1.31"
    provider "hcloud"
    os "ubuntu-2404"
}

provider "hcloud" {
    location "fsn1"
    patch "config/packer-patch.json" op="append"
    ship "config/scripts" to="packer/hcloud/scripts"
    ship "config/hcloud-config.json" to="packer/hcloud/hcloud-config.json"
    var "container_registry_url" "https://harbor.example.com" flag=#true
    secret "HCLOUD_TOKEN"
}
"#,
        )
}

/// Drops a module's publish step (for tests that stop at the build).
pub(crate) fn without_publish(p: &Project, module: &str) {
    p.edit(module, |text| {
        let start = text.find("    step \"publish\"").unwrap();
        let end = start + text[start..].find("\n    }\n").unwrap() + 7;
        format!("{}{}", &text[..start], &text[end..])
    });
}

/// The hcloud seed's procedure on a fresh tree: their scripts over image-builder's, their
/// hcloud-config.json, the jq patch, their environment; `make validate-…` then `make build-…`.
/// `PACKER_FLAGS` is what its shell script exports; `token` the HCLOUD_TOKEN of the project
/// (GitHub environment) it builds for.
pub(crate) fn hcloud_seed(
    bench: &Bench,
    name: &str,
    os: &str,
    flags: &str,
    token: &str,
) -> Vec<PackerCall> {
    let p = &bench.project;
    let capi = bench.seed_tree(name);
    // `-v config/scripts:…/packer/hcloud/scripts` hides the stock directory.
    fs::remove_dir_all(capi.join("packer/hcloud/scripts")).unwrap();
    copy_tree(
        &p.path().join("config/scripts"),
        &capi.join("packer/hcloud/scripts"),
    );
    fs::copy(
        p.path().join("config/hcloud-config.json"),
        capi.join("packer/hcloud/hcloud-config.json"),
    )
    .unwrap();
    jq_append(
        &capi.join("packer/hcloud/packer.json"),
        &p.path().join("config/packer-patch.json"),
    );
    let vars = p.path().join("config/vars/k8s-1.31.json");
    let env = [
        ("HCLOUD_LOCATION", "fsn1"),
        ("HCLOUD_TOKEN", token),
        ("PACKER_VAR_FILES", &*vars.to_string_lossy()),
        ("OS_INFO", os),
        ("PACKER_FLAGS", flags),
    ];
    bench.make(&capi, &format!("validate-hcloud-{os}"), &env);
    bench.make(&capi, &format!("build-hcloud-{os}"), &env);
    bench.take_calls()
}

/// What makes kiln's hcloud calls differ from the seed's, and why.
pub(crate) fn hcloud_allowed() -> Vec<(Diff, &'static str)> {
    vec![
        (
            Diff::VarFile("<PACKER_VAR_FILES>".into()),
            "kiln writes the var file from the release (the same pins as the user's k8s-1.31.json) plus hcloud_location and manifest_output",
        ),
        (
            Diff::Merged("manifest_output".into()),
            "kiln points packer's manifest into its own work directory, to read the snapshot id and to fail a build that wrote none",
        ),
        (
            Diff::Merged("ib_version".into()),
            "the seed's copy is no git checkout, so the Makefile's `git describe` gives nothing; kiln passes IB_VERSION from its pin (v0.1.55)",
        ),
        (
            Diff::Merged("ansible_common_vars".into()),
            "it ends with image_builder_version={{user `ib_version`}}, which is the pin's with kiln",
        ),
        (
            Diff::EnvOnlySeed("HCLOUD_LOCATION".into()),
            "the seed passes the location through hcloud-config.json's {{env `HCLOUD_LOCATION`}}; kiln sets hcloud_location in its var file (same merged value)",
        ),
        (
            Diff::EnvOnlySeed("OS_INFO".into()),
            "the seed's shell script reads OS_INFO to pick its make targets; kiln names the target itself",
        ),
    ]
}

// ---- the gaps the real Makefile shows ------------------------------------------------------

/// The hcloud project through the real Makefile, stopping at the build.
fn hcloud_bench() -> Bench {
    let bench = Bench::new(hcloud_project().env("HCLOUD_TOKEN", TOKEN));
    without_publish(&bench.project, "modules/hcloud.kdl");
    bench
}

fn build_calls(bench: &Bench, args: &[&str]) -> Vec<PackerCall> {
    let mut argv = vec!["build", "-j", "1"];
    argv.extend(args);
    let out = bench.project.kiln(&argv);
    out.expect_code(0);
    bench.take_calls()
}

/// Gap 1: IB_VERSION (image_builder_version) is the pin's, not whatever `git describe` finds: not
/// empty in a staged copy, and not the user's own tag when their config is a git repository.
#[test]
fn ib_version_is_the_pin_even_in_the_users_git_repository() {
    let bench = hcloud_bench();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=u", "-c", "user.email=u@example.com"])
            .args(args)
            .current_dir(bench.project.path())
            .output()
            .expect("git is installed (.ci/run installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q"]);
    git(&["add", "images.kdl"]);
    git(&["commit", "-qm", "config"]);
    git(&["tag", "v7.7.7-users-own"]);
    for c in build_calls(&bench, &[]) {
        assert_eq!(c.env["IB_VERSION"], "v0.1.55");
        assert_eq!(c.merged["ib_version"], "v0.1.55");
    }
}

/// Gap 2: A flag variable's `$` reaches packer as written: make would expand `a$HOME` to `aOME`.
#[test]
fn a_dollar_in_a_flag_variable_reaches_packer_unexpanded() {
    let bench = hcloud_bench();
    bench.project.edit("images.kdl", |t| {
        t.replace(
            "https://harbor.example.com",
            "https://h.example.com/a$HOME$$x",
        )
    });
    for c in build_calls(&bench, &[]) {
        assert_eq!(
            c.merged["container_registry_url"],
            "https://h.example.com/a$HOME$$x"
        );
    }
}

/// Gap 3: A plain `env` on a provider or a step reaches packer and is part of the key; pinning
/// FLATCAR_VERSION stops the Makefile's run-time lookup, which `kiln check` warns about.
#[test]
fn env_is_passed_keyed_and_pins_flatcar() {
    let bench = hcloud_bench();
    let p = &bench.project;
    p.edit("images.kdl", |t| {
        t.replace("os \"ubuntu-2404\"", "os \"flatcar\"")
    });
    // Flatcar builds run packer-flatcar.json: a patch of packer.json would never reach packer.
    let check = p.kiln(&["check"]);
    check.expect_code(1);
    assert!(
        check.stderr.contains("kiln::image-builder::patch-not-run"),
        "{}",
        check.stderr
    );
    p.edit("images.kdl", |t| {
        t.replace(
            "    secret \"HCLOUD_TOKEN\"\n",
            "    secret \"HCLOUD_TOKEN\"\n    override os=\"flatcar\" {\n        template \"packer/hcloud/packer-flatcar.json\"\n    }\n",
        )
    });
    let check = p.kiln(&["check"]);
    check.expect_code(0);
    assert!(
        check
            .stderr
            .contains("kiln::image-builder::run-time-lookup")
            && check
                .stderr
                .contains("provider `hcloud` builds Flatcar (hcloud/flatcar/1.31/validate)"),
        "{}",
        check.stderr
    );
    p.edit("images.kdl", |t| {
        t.replace(
            "    secret \"HCLOUD_TOKEN\"\n",
            "    secret \"HCLOUD_TOKEN\"\n    env \"FLATCAR_VERSION\" \"4152.2.3\"\n",
        )
    });
    p.edit("modules/hcloud.kdl", |t| {
        t.replace(
            "        target \"build-hcloud-{os}\"\n",
            "        target \"build-hcloud-{os}\"\n        env \"FLATCAR_CHANNEL\" \"beta\"\n",
        )
    });
    let check = p.kiln(&["check"]);
    check.expect_code(0);
    assert!(
        !check.stderr.contains("run-time-lookup"),
        "{}",
        check.stderr
    );
    let _ = fs::remove_file(bench.log.join("curl.txt"));
    let calls = build_calls(&bench, &[]);
    assert_eq!(calls.len(), 2);
    // The user's patch reached the Flatcar template, as jq would have patched it.
    let patched = p.path().join("flatcar-patched.json");
    fs::copy(
        capi_fixture().join("packer/hcloud/packer-flatcar.json"),
        &patched,
    )
    .unwrap();
    jq_append(&patched, &p.path().join("config/packer-patch.json"));
    for c in &calls {
        assert_eq!(c.env["FLATCAR_VERSION"], "4152.2.3");
        assert_eq!(c.merged["flatcar_version"], "4152.2.3");
        assert_eq!(c.argv.last().unwrap(), "packer/hcloud/packer-flatcar.json");
        assert_eq!(c.template_sha256, sha256_file(&patched));
    }
    // The step's own env is the build's only.
    assert_eq!(calls[0].env["FLATCAR_CHANNEL"], "stable");
    assert_eq!(calls[1].env["FLATCAR_CHANNEL"], "beta");
    assert_eq!(calls[1].merged["distribution_version"], "beta-4152.2.3");
    assert!(
        !bench.log.join("curl.txt").exists(),
        "a pinned version is not looked up"
    );
    // Part of the key: moving the pin rebuilds, and says why.
    p.edit("images.kdl", |t| t.replace("4152.2.3", "4230.2.0"));
    let plan = p.kiln(&["plan"]);
    assert!(
        plan.stdout.contains("~  hcloud/flatcar/1.31/build")
            && plan.stdout.contains("env FLATCAR_VERSION")
            && plan.stdout.contains("\"4152.2.3\" → \"4230.2.0\""),
        "{}",
        plan.stdout
    );
}

/// Gap 7: `kiln build --debug` runs every attempt with PACKER_LOG=1, `debug #true` a step's; without
/// either, only retries do.
#[test]
fn debug_on_every_attempt() {
    let bench = hcloud_bench();
    let calls = build_calls(&bench, &["--debug"]);
    assert!(
        calls
            .iter()
            .all(|c| c.env.get("PACKER_LOG").map(String::as_str) == Some("1"))
    );
    bench.project.edit("modules/hcloud.kdl", |t| {
        t.replace(
            "        target \"build-hcloud-{os}\"\n",
            "        target \"build-hcloud-{os}\"\n        debug #true\n",
        )
    });
    // Policy, not key: nothing rebuilds for it.
    let plan = bench.project.kiln(&["plan"]);
    assert!(plan.stdout.contains("No changes."), "{}", plan.stdout);
    let calls = build_calls(&bench, &["--force", "hcloud-ubuntu-2404-k8s-1.31"]);
    let log: Vec<Option<&str>> = calls
        .iter()
        .map(|c| c.env.get("PACKER_LOG").map(String::as_str))
        .collect();
    assert_eq!(log, [None, Some("1")], "validate, then build");
}

const S3_KEY: &str = "s3-secret-access-key-value";

/// The openstack module (qemu, uploaded with its sha256) into a file:// bucket.
fn openstack_bench() -> Bench {
    let root = repo_root();
    let p = Project::new()
        .with_path(&root.join("modules/openstack.kdl"), "modules/openstack.kdl")
        .with_file(
            "images.kdl",
            r#"import "modules/openstack.kdl"

tool "image-builder" "v0.1.55" source="image-builder"

kubernetes "1.31" {
    version "1.31.4"
}

matrix "capo" {
    kubernetes "1.31"
    provider "openstack"
    os "ubuntu-2404"
}

provider "openstack" {
    bucket "file://bucket"
    secret "AWS_ACCESS_KEY_ID" env="S3_ACCESS_KEY_ID"
    secret "AWS_SECRET_ACCESS_KEY" env="S3_SECRET_ACCESS_KEY"
}
"#,
        )
        .env("S3_ACCESS_KEY_ID", "AKIAS3EXAMPLE")
        .env("S3_SECRET_ACCESS_KEY", S3_KEY)
        // Another provider's credentials, as a CI runner's environment has them.
        .env("AWS_ACCESS_KEY_ID", "AKIAAWSEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "aws-secret-value");
    Bench::new(p)
}

/// Gap 4: a step gets only the secrets it uses: the qemu build none of the S3 upload's (neither
/// by the name steps see nor by the variable they are read from), the upload both.
#[test]
fn a_step_gets_only_its_secrets() {
    let bench = openstack_bench();
    let p = &bench.project;
    let calls = build_calls(&bench, &[]);
    assert_eq!(calls.len(), 2, "validate and build");
    for c in &calls {
        for k in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "S3_ACCESS_KEY_ID",
            "S3_SECRET_ACCESS_KEY",
        ] {
            assert!(!c.env.contains_key(k), "packer {} sees {k}", c.command);
        }
    }
    let secrets = |id: &str| -> Vec<String> {
        let v = p.kiln(&["explain", id, "--json"]).json();
        v["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(secrets("openstack/ubuntu-2404/1.31/build").is_empty());
    assert_eq!(
        secrets("openstack/ubuntu-2404/1.31/publish"),
        ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    );
    // The qemu disk went through the upload, with its sha256.
    let image = p.read("bucket/openstack-ubuntu-2404-k8s-1.31.qcow2");
    assert_eq!(image, "qcow2 of ubuntu-2404 v1.31.4\n");
    assert!(
        p.read("bucket/openstack-ubuntu-2404-k8s-1.31.qcow2.sha256")
            .ends_with("  openstack-ubuntu-2404-k8s-1.31.qcow2\n")
    );
    // A module may say which secrets a step gets.
    p.edit("modules/openstack.kdl", |t| {
        t.replace(
            "        target \"build-qemu-{os}\"\n",
            "        target \"build-qemu-{os}\"\n        secrets \"AWS_ACCESS_KEY_ID\"\n",
        )
    });
    assert_eq!(
        secrets("openstack/ubuntu-2404/1.31/build"),
        ["AWS_ACCESS_KEY_ID"]
    );
}

/// Gap 9: a packer run that exits 0 without its artifact fails and records nothing: the
/// manifest (also where the config moves it), the qemu disk (also in a custom
/// output_directory, as the giantswarm pipeline sets it).
#[test]
fn a_build_without_its_artifact_fails() {
    let mut bench = openstack_bench();
    bench.project.edit("images.kdl", |t| {
        t.replace(
            "    bucket \"file://bucket\"\n",
            "    bucket \"file://bucket\"\n    var \"output_directory\" \"./output/cluster-api-v{kubernetes_version}\"\n",
        )
    });
    bench.project.set_env("FAKE_NO_PRODUCTS", "1");
    let out = bench.project.kiln(&["build", "-j", "1"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("the qemu build succeeded but left no disk image")
            && out.stderr.contains("output/cluster-api-v1.31.4"),
        "{}",
        out.stderr
    );
    let plan = bench.project.kiln(&["plan"]);
    assert!(
        plan.stdout.contains("+  openstack/ubuntu-2404/1.31/build"),
        "{}",
        plan.stdout
    );
    bench.project.set_env("FAKE_NO_PRODUCTS", "");
    bench.project.kiln(&["build", "-j", "1"]).expect_code(0);
    let log = bench
        .project
        .kiln(&["logs", "openstack/ubuntu-2404/1.31/build"]);
    assert!(
        log.stdout
            .contains("fact image=output/cluster-api-v1.31.4/ubuntu-2404-kube-v1.31.4"),
        "{}",
        log.stdout
    );
    assert_eq!(
        bench
            .project
            .read("bucket/openstack-ubuntu-2404-k8s-1.31.qcow2"),
        "qcow2 of ubuntu-2404 v1.31.4\n"
    );

    // hcloud: the manifest, where kiln puts it and where the config does.
    let mut bench = hcloud_bench();
    bench.project.set_env("FAKE_NO_PRODUCTS", "1");
    let out = bench.project.kiln(&["build", "-j", "1"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("packer's manifest post-processor wrote no manifest"),
        "{}",
        out.stderr
    );
    bench.project.set_env("FAKE_NO_PRODUCTS", "");
    bench.project.edit("images.kdl", |t| {
        t.replace(
            "    secret \"HCLOUD_TOKEN\"\n",
            "    secret \"HCLOUD_TOKEN\"\n    var \"manifest_output\" \"output/hcloud-manifest.json\"\n",
        )
    });
    bench.project.kiln(&["build", "-j", "1"]).expect_code(0);
    let calls = bench.take_calls();
    assert_eq!(
        calls.last().unwrap().merged["manifest_output"],
        "output/hcloud-manifest.json"
    );
    let log = bench
        .project
        .kiln(&["logs", "hcloud/ubuntu-2404/1.31/build"]);
    assert!(log.stdout.contains("fact snapshot=1"), "{}", log.stdout);
}

const IMAGE: &str = "registry.k8s.io/scl-image-builder/cluster-node-image-builder-amd64:v0.1.55@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Gap 5: in a container, kiln mounts a staged merge of each shipped directory with the image's,
/// so the container sees, file by file, the tree the make engine stages (the stock
/// install-flatcar.sh beside the shipped scripts), not a mount that hides the image's files.
#[test]
fn the_container_sees_the_tree_make_stages() {
    let mut bench = hcloud_bench();
    let root = bench.project.path().join("image-builder/images/capi");
    bench.project.set_env("FAKE_TREE", "1");
    bench
        .project
        .set_env("FAKE_IMAGE_ROOT", &root.to_string_lossy());
    let make = build_calls(&bench, &[]);
    bench.project.edit("images.kdl", |t| {
        t.replace(
            "source=\"image-builder\"",
            &format!("image=\"{IMAGE}\" engine=\"docker\""),
        )
    });
    bench.project.kiln(&["build", "-j", "1"]).expect_code(0);
    let runs = docker_runs(&bench.log);
    assert_eq!(runs.len(), 2, "validate and build");
    for (made, run) in make.iter().zip(&runs) {
        let ours = |rel: &&String| !rel.starts_with("kiln/") && !rel.starts_with("output/");
        let container: BTreeMap<&String, &String> = run.iter().filter(|(k, _)| ours(k)).collect();
        let staged: BTreeMap<&String, &String> = made.tree.iter().collect();
        let only =
            |a: &BTreeMap<&String, &String>, b: &BTreeMap<&String, &String>| -> Vec<String> {
                a.iter()
                    .filter(|(k, v)| b.get(*k) != Some(*v))
                    .map(|(k, _)| k.to_string())
                    .collect()
            };
        assert_eq!(
            only(&container, &staged),
            Vec::<String>::new(),
            "in the container, not staged"
        );
        assert_eq!(
            only(&staged, &container),
            Vec::<String>::new(),
            "staged, not in the container"
        );
        for f in [
            "install-flatcar.sh",
            "additional-tools.sh",
            "cri.sh",
            "validate.sh",
        ] {
            assert!(
                container.contains_key(&format!("packer/hcloud/scripts/{f}")),
                "{f}"
            );
        }
    }
}

/// The tree each recorded `docker run` saw under /home/imagebuilder: relative path → sha256.
fn docker_runs(log: &Path) -> Vec<BTreeMap<String, String>> {
    recorded(log, "-docker-run")
        .into_iter()
        .map(|v| {
            v["tree"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect()
        })
        .collect()
}

/// Gap 6: the command line or the environment says where image-builder is, in no key.
#[test]
fn image_builder_source_and_image_from_the_command_line() {
    let mut bench = hcloud_bench();
    bench
        .project
        .edit("images.kdl", |t| t.replace(" source=\"image-builder\"", ""));
    let out = bench.project.kiln(&["build", "-j", "1"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("image-builder is not set up"),
        "{}",
        out.stderr
    );
    let calls = build_calls(&bench, &["--image-builder-source", "image-builder"]);
    assert_eq!(calls.len(), 2);
    // The same keys whichever way the checkout is named.
    bench
        .project
        .set_env("KILN_IMAGE_BUILDER_SOURCE", "image-builder");
    let plan = bench.project.kiln(&["plan"]);
    assert!(plan.stdout.contains("No changes."), "{}", plan.stdout);
    // An image instead: the container engine, still in no key.
    bench.project.set_env("KILN_IMAGE_BUILDER_SOURCE", "");
    let root = bench.project.path().join("image-builder/images/capi");
    bench
        .project
        .set_env("FAKE_IMAGE_ROOT", &root.to_string_lossy());
    let explain = bench.project.kiln(&[
        "explain",
        "hcloud/ubuntu-2404/1.31/build",
        "--image-builder-image",
        IMAGE,
    ]);
    assert!(
        explain.stdout.contains("command   docker run --rm") && explain.stdout.contains(IMAGE),
        "{}",
        explain.stdout
    );
    bench.project.set_env("KILN_IMAGE_BUILDER_IMAGE", IMAGE);
    let out = bench.project.kiln(&[
        "build",
        "-j",
        "1",
        "--force",
        "hcloud/ubuntu-2404/1.31/build",
    ]);
    out.expect_code(0);
    let runs = docker_runs(&bench.log);
    assert_eq!(runs.len(), 1, "the forced build ran in the container");
}

/// Gap 8: a build first checks every prerequisite of what it will run and reports each problem
/// once, starting nothing; `kiln check --build` runs the same preflight.
#[test]
fn preflight_reports_every_problem_before_anything_runs() {
    let mut bench = hcloud_bench();
    bench.project.unset_env("HCLOUD_TOKEN");
    bench
        .project
        .edit("images.kdl", |t| t.replace(" source=\"image-builder\"", ""));
    let out = bench.project.kiln(&["build", "-j", "1"]);
    assert_eq!(out.code, 1, "{out:?}");
    let err = &out.stderr;
    assert_eq!(
        err.matches("kiln::preflight::image-builder").count(),
        1,
        "{err}"
    );
    assert_eq!(err.matches("kiln::preflight::secret").count(), 1, "{err}");
    assert!(
        err.contains("secret `HCLOUD_TOKEN` needs the environment variable HCLOUD_TOKEN"),
        "{err}"
    );
    assert!(err.contains("hcloud/ubuntu-2404/1.31/patch"), "{err}");
    assert!(err.contains("nothing was started"), "{err}");
    assert!(!err.contains("after 2 attempts"), "{err}");
    assert!(
        fs::read_dir(&bench.log).unwrap().next().is_none(),
        "nothing ran"
    );
    // `kiln check` checks the config; `--build` also what a build needs.
    bench.project.kiln(&["check"]).expect_code(0);
    let check = bench.project.kiln(&["check", "--build"]);
    assert_eq!(check.code, 1);
    assert_eq!(
        check.stderr.matches("kiln::preflight::").count(),
        2,
        "{}",
        check.stderr
    );
    // A tool that is not on PATH.
    bench.project.set_env("HCLOUD_TOKEN", TOKEN);
    bench.project.edit("images.kdl", |t| {
        t.replace(
            "tool \"image-builder\" \"v0.1.55\"",
            &format!("tool \"image-builder\" \"v0.1.55\" image=\"{IMAGE}\" engine=\"podman\""),
        )
    });
    let check = bench.project.kiln(&["check", "--build", "--json"]);
    assert_eq!(check.code, 1);
    let lines: Vec<Value> = check
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{}", check.stdout);
    assert_eq!(lines[0]["code"], "kiln::preflight::tool");
    assert!(
        lines[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("`podman` is not installed")
    );
}
