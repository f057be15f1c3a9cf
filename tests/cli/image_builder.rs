//! The image-builder builders against recording fakes of `make` and `docker`: the exact
//! invocations for the seeds' configurations in both modes, var files checked against
//! image-builder's declared variables, secrets kept off every command line, retries with
//! PACKER_LOG=1, packer manifests turned into facts; plus the embedded data and `kiln check`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::{Project, blessing, repo_root};

pub(crate) const SECRET: &str = "s3cr3t-t0ken-value";
const IMAGE: &str = "registry.k8s.io/scl-image-builder/cluster-node-image-builder-amd64:v0.1.55@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures")
}

fn ib_fixture() -> PathBuf {
    fixtures().join("image-builder-v0.1.55")
}

/// Every variable name the fixture's image-builder declares, by scope (`config` or a
/// `packer/<dir>`), computed from the JSON files.
fn declared_variables() -> BTreeSet<(String, String)> {
    let packer = ib_fixture().join("packer");
    let mut out = BTreeSet::new();
    for dir in fs::read_dir(&packer).unwrap() {
        let dir = dir.unwrap().path();
        let scope = dir.file_name().unwrap().to_string_lossy().into_owned();
        for f in fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            // Azure's marketplace SKU description is not a var file.
            if !(name.ends_with(".json") || name.ends_with(".json.tmpl"))
                || name == "sku-template.json"
            {
                continue;
            }
            let doc: Value = serde_json::from_str(&fs::read_to_string(&f).unwrap()).unwrap();
            let vars = if doc.get("builders").is_some() {
                doc.get("variables").cloned().unwrap_or_default()
            } else {
                doc
            };
            for k in vars.as_object().unwrap().keys() {
                out.insert((scope.clone(), k.clone()));
            }
        }
    }
    out
}

/// data/image-builder/v0.1.55/variables.txt is what the fixtures declare (KILN_BLESS=1
/// regenerates it), and make-targets.txt is the fixture's list.
#[test]
fn shipped_data_matches_the_fixtures() {
    let data = repo_root().join("data/image-builder/v0.1.55");
    let header = "# Every packer variable image-builder v0.1.55 declares, as `SCOPE NAME`: SCOPE `config` is\n# packer/config/*.json (passed to every build), any other SCOPE is a packer/<SCOPE>/ directory\n# (its templates' `variables` and its var files). Checked against the fixtures by `cargo test`;\n# regenerate with KILN_BLESS=1.\n";
    let mut text = header.to_string();
    for (s, k) in declared_variables() {
        text.push_str(&format!("{s} {k}\n"));
    }
    assert_generated(&data.join("variables.txt"), &text);
    assert_eq!(
        fs::read_to_string(data.join("make-targets.txt")).unwrap(),
        fs::read_to_string(ib_fixture().join("make-targets.txt")).unwrap()
    );
    let mut text = "# Every packer template of image-builder v0.1.55 (a JSON file with `builders`), relative to\n# images/capi. Checked against the fixtures by `cargo test`; regenerate with KILN_BLESS=1.\n".to_string();
    for t in templates() {
        text.push_str(&format!("{t}\n"));
    }
    assert_generated(&data.join("templates.txt"), &text);
}

/// data/image-builder/v0.1.55/target-templates.txt is the template each `build-*`/`validate-*`
/// target of a directory with several templates runs, as image-builder's real Makefile says
/// (`make -n TARGET` on its whole `images/capi`).
#[test]
fn shipped_target_templates_are_the_makefiles() {
    let capi = crate::makefile::capi_fixture();
    let targets = fs::read_to_string(ib_fixture().join("make-targets.txt")).unwrap();
    let mut per_dir: BTreeMap<String, usize> = BTreeMap::new();
    for t in templates() {
        *per_dir
            .entry(t.split('/').nth(1).unwrap().to_string())
            .or_default() += 1;
    }
    let dirs: Vec<String> = per_dir
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(d, _)| d)
        .collect();
    let wanted: Vec<&str> = targets
        .lines()
        .filter(|t| !t.ends_with("-all"))
        .filter(|t| {
            dirs.iter().any(|d| {
                t.starts_with(&format!("build-{d}-")) || t.starts_with(&format!("validate-{d}-"))
            })
        })
        .collect();
    // Two at a time: each `make -n` runs the Makefile's $(shell …) lookups.
    let found: Vec<(String, String)> = std::thread::scope(|s| {
        let chunks: Vec<_> = wanted
            .chunks(wanted.len().div_ceil(2))
            .map(|chunk| {
                let capi = &capi;
                s.spawn(move || {
                    chunk
                        .iter()
                        .filter_map(|t| Some((t.to_string(), template_of(capi, t)?)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        chunks.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let mut text = "# The packer template each build-*/validate-* target of image-builder v0.1.55 runs, for the
# packer/<dir>/ directories with several templates, as `TARGET TEMPLATE` (read from
# `make -n TARGET`). Checked against the fixtures by `cargo test`; regenerate with KILN_BLESS=1.
".to_string();
    for (t, template) in found {
        text.push_str(&format!(
            "{t} {template}
"
        ));
    }
    assert_generated(
        &repo_root().join("data/image-builder/v0.1.55/target-templates.txt"),
        &text,
    );
}

/// The template `make -n TARGET` passes to `packer build|validate`; `None` for a target that
/// runs several builds (`build-azure-sigs`).
fn template_of(capi: &Path, target: &str) -> Option<String> {
    let out = std::process::Command::new("make")
        .args(["-n", target])
        .current_dir(capi)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("make is installed (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let runs: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("packer build ") || l.contains("packer validate "))
        .collect();
    match runs.as_slice() {
        [] => panic!("`make -n {target}` runs no packer build or validate:\n{text}"),
        [one] => Some(one.split_whitespace().last().unwrap().to_string()),
        _ => None,
    }
}

/// A shipped data file holds exactly `text`, generated from the fixtures (KILN_BLESS=1 writes it).
#[track_caller]
fn assert_generated(path: &Path, text: &str) {
    if blessing() {
        fs::write(path, text).unwrap();
    }
    assert!(
        fs::read_to_string(path).unwrap() == text,
        "{} is stale: run with KILN_BLESS=1",
        path.display()
    );
}

/// Every packer template of the fixture's image-builder: `packer/<dir>/<file>` whose JSON has
/// `builders`.
fn templates() -> BTreeSet<String> {
    let packer = ib_fixture().join("packer");
    let mut out = BTreeSet::new();
    for dir in fs::read_dir(&packer).unwrap() {
        let dir = dir.unwrap().path();
        for f in fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            let Ok(doc) = serde_json::from_str::<Value>(&fs::read_to_string(&f).unwrap()) else {
                continue;
            };
            if doc.get("builders").is_some() {
                out.insert(
                    f.strip_prefix(ib_fixture())
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out
}

/// kiln's `append` is exactly `jq --slurpfile patch packer-patch.json
/// '.provisioners += $patch[0].provisioners' packer.json` on the hcloud user's real files.
#[test]
fn the_hcloud_patch_equals_jq() {
    let template = ib_fixture().join("packer/hcloud/packer.json");
    let patch = fixtures().join("hcloud-machine-images/config/packer-patch.json");
    let jq = std::process::Command::new("jq")
        .arg("--slurpfile")
        .arg("patch")
        .arg(&patch)
        .arg(".provisioners += $patch[0].provisioners")
        .arg(&template)
        .output()
        .expect("jq is installed (.ci/run installs it)");
    assert!(
        jq.status.success(),
        "{}",
        String::from_utf8_lossy(&jq.stderr)
    );
    let want: Value = serde_json::from_slice(&jq.stdout).unwrap();
    let mut got: Value = serde_json::from_str(&fs::read_to_string(&template).unwrap()).unwrap();
    let p: Value = serde_json::from_str(&fs::read_to_string(&patch).unwrap()).unwrap();
    kiln::imagebuilder::apply_patch(&mut got, &p, kiln::config::PatchOp::Append).unwrap();
    assert_eq!(got, want);
}

// ---- kiln check ----------------------------------------------------------------------------

fn check_case(edit: impl Fn(&str) -> String, module_edit: impl Fn(&str) -> String) -> String {
    let p = Project::repo_config();
    p.edit("images.kdl", |t| edit(t));
    let m = p.read("modules/aws.kdl");
    let m2 = module_edit(&m);
    if m2 != m {
        p.write("modules/aws.kdl", &m2);
    }
    let out = p.kiln(&["check"]);
    out.expect_code(1);
    out.stderr
}

#[test]
fn check_rejects_an_unknown_make_target_with_a_suggestion() {
    let err = check_case(
        |t| {
            t.replace(
                "var \"encrypted\" \"false\"",
                "var \"encrypted\" \"false\" ",
            )
        },
        |m| m.replace("build-ami-{os}", "build-amis-{os}"),
    );
    assert!(err.contains("kiln::image-builder::unknown-target"), "{err}");
    assert!(
        err.contains("image-builder v0.1.55 has no make target `build-amis-flatcar`"),
        "{err}"
    );
    assert!(err.contains("did you mean `build-ami-flatcar`?"), "{err}");
    assert!(err.contains("modules/aws.kdl:17:"), "{err}");
}

/// The template a patch step patches must be one of the pinned version's packer templates
/// (hcloud's module patches one; without patches the step does not exist).
#[test]
fn check_rejects_an_unknown_template_with_a_suggestion() {
    let p = Project::repo_config();
    p.edit("modules/hcloud.kdl", |m| {
        m.replace("packer/hcloud/packer.json", "packer/hcloud/packr.json")
    });
    let out = p.kiln(&["check"]);
    out.expect_code(1);
    let err = out.stderr;
    assert!(
        err.contains("kiln::image-builder::unknown-template"),
        "{err}"
    );
    assert!(
        err.contains("image-builder v0.1.55 has no packer template `packer/hcloud/packr.json`"),
        "{err}"
    );
    assert!(
        err.contains("did you mean `packer/hcloud/packer.json`?"),
        "{err}"
    );
    assert!(err.contains("modules/hcloud.kdl:13:"), "{err}");
}

#[test]
fn check_rejects_a_variable_image_builder_does_not_declare() {
    let err = check_case(
        |t| t.replace("var \"encrypted\" \"false\"", "var \"encryptd\" \"false\""),
        |m| m.to_string(),
    );
    assert!(
        err.contains("kiln::image-builder::unknown-variable"),
        "{err}"
    );
    assert!(
        err.contains("does not declare variable `encryptd` for `validate-ami-"),
        "{err}"
    );
    assert!(err.contains("did you mean `encrypted`?"), "{err}");
    // Without flag=#true, the hcloud user's registry variable is an error too.
    let err = check_case(|t| t.replace(" flag=#true", ""), |m| m.to_string());
    assert!(
        err.contains("does not declare variable `container_registry_url`"),
        "{err}"
    );
    assert!(err.contains("flag=#true"), "{err}");
}

#[test]
fn check_rejects_an_image_builder_version_without_data() {
    let err = check_case(
        |t| {
            t.replace(
                "tool \"image-builder\" \"v0.1.55\"",
                "tool \"image-builder\" \"v0.1.54\"",
            )
        },
        |m| m.to_string(),
    );
    assert!(
        err.contains("kiln knows nothing about image-builder `v0.1.54`"),
        "{err}"
    );
    assert!(err.contains("v0.1.55"), "{err}");
    assert!(err.contains("images.kdl:8:22"), "{err}");
}

// ---- builds with recording fakes -----------------------------------------------------------

/// Records one invocation into $FAKE_LOG/<n>.txt: argv, environment (names; values of
/// PACKER_* and the secret's length) and the var file. A `build-*` target writes a packer
/// manifest where manifest_output says, and a qemu build its disk image where packer would
/// (`output_directory`/`vm_name` when the var file sets them); with FAKE_NO_PRODUCTS set, a
/// build succeeds and leaves neither.
const RECORD: &str = r#"
record() {
  n=$(ls "$FAKE_LOG" | wc -l)
  f="$FAKE_LOG/$(printf %03d $n).txt"
  { echo "tool $TOOL"; for a in "$@"; do echo "arg $a"; done
    env | cut -d= -f1 | grep -E '^(PACKER_|HCLOUD_|AWS_|GOOGLE_)' | sort | while read k; do
      case "$k" in PACKER_*) eval "echo \"env $k=\$$k\"";; *) eval "echo \"env $k len=\${#$k}\"";; esac
    done
    echo "varfile-begin"; cat "$VARFILE"; echo "varfile-end"
  } > "$f"
}
fake_products() { # $1 target, $2 dir for manifest, $3 output dir
  case "$1" in build-*) ;; *) return 0;; esac
  if [ -f "$FAKE_FAIL_ONCE" ]; then rm "$FAKE_FAIL_ONCE"; echo "packer failed" >&2; exit 1; fi
  [ -n "$FAKE_NO_PRODUCTS" ] && return 0
  out=$(sed -n 's/.*"manifest_output": "\(.*\)".*/\1/p' "$VARFILE")
  if [ -n "$out" ]; then
    cat > "$2/manifest.json" <<JSON
{"builds": [{"name": "fake", "builder_type": "$FAKE_BUILDER", "artifact_id": "$FAKE_ARTIFACT", "packer_run_uuid": "u1",
  "custom_data": {"kubernetes_semver": "$(sed -n 's/.*"kubernetes_semver": "\(.*\)".*/\1/p' "$VARFILE")"}}],
 "last_run_uuid": "u1"}
JSON
  fi
  case "$1" in build-qemu-*)
    semver=$(sed -n 's/.*"kubernetes_semver": "\(.*\)".*/\1/p' "$VARFILE")
    d=$(sed -n 's/.*"output_directory": "\(.*\)".*/\1/p' "$VARFILE")
    name=$(sed -n 's/.*"vm_name": "\(.*\)".*/\1/p' "$VARFILE")
    [ -n "$d" ] && d="$(dirname "$3")/$d" || d="$3/ubuntu-2404-kube-$semver"
    [ -n "$name" ] || name="ubuntu-2404-kube-$semver"
    mkdir -p "$d"; echo "qcow2 of $1" > "$d/$name";;
  esac
}
"#;

const FAKE_MAKE: &str = r#"
[ "$1" = "-C" ] || { echo "expected -C" >&2; exit 2; }
capi="$2"; target="$3"; TOOL=make; VARFILE="$PACKER_VAR_FILES"
record "$@"
# The patched template and shipped scripts are in place in the staged checkout.
cp "$capi/packer/hcloud/packer.json" "$FAKE_LOG/hcloud-template-seen.json" 2>/dev/null
ls "$capi/packer/hcloud/scripts" > "$FAKE_LOG/hcloud-scripts-seen.txt" 2>/dev/null
fake_products "$target" "$(dirname "$VARFILE")" "$capi/output"
"#;

const FAKE_DOCKER: &str = r#"
TOOL=docker
case "$1" in
  create) exit 0;;
  rm) exit 0;;
  cp) src="${2#*:/home/imagebuilder/}"; cp -r "$FAKE_IMAGE_ROOT/$src" "$3"; exit 0;;
  run) ;;
  *) echo "unexpected $1" >&2; exit 2;;
esac
kiln=""; output=""; prev=""; target=""
for a in "$@"; do
  if [ "$prev" = "-v" ]; then
    host="${a%%:*}"; rest="${a#*:}"; inside="${rest%%:*}"
    case "$inside" in
      /home/imagebuilder/kiln) kiln="$host";;
      /home/imagebuilder/output) output="$host";;
      /home/imagebuilder/packer/hcloud/packer.json) cp "$host" "$FAKE_LOG/hcloud-template-seen.json";;
      /home/imagebuilder/packer/hcloud/scripts) ls "$host" > "$FAKE_LOG/hcloud-scripts-seen.txt";;
    esac
  fi
  prev="$a"; target="$a"
done
VARFILE="$kiln/vars.json"
record "$@"
fake_products "$target" "$kiln" "$output"
"#;

pub(crate) struct Fakes {
    pub(crate) project: Project,
    pub(crate) log: PathBuf,
}

fn write_exec(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{RECORD}\n{body}")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// The repository's config with `tool` set to `tool_props`, the hcloud user's files, the
/// fake checkout and the fake tools first on PATH. Publish steps that need clouds are dropped.
fn fakes(tool_props: &str, builder: &str, artifact: &str) -> Fakes {
    let f = fakes_with_publish(tool_props, builder, artifact);
    for m in ["aws", "gcp", "hcloud"] {
        let rel = format!("modules/{m}.kdl");
        let text = f.project.read(&rel);
        let start = text.find("    step \"publish\"").unwrap();
        let end = start + text[start..].find("\n    }\n").unwrap() + 7;
        f.project
            .write(&rel, &format!("{}{}", &text[..start], &text[end..]));
    }
    f
}

/// Like [`fakes`], keeping the publish steps (for tests that stand in for the clouds).
pub(crate) fn fakes_with_publish(tool_props: &str, builder: &str, artifact: &str) -> Fakes {
    let mut p = Project::repo_config().with_path(&ib_fixture(), "image-builder/images/capi");
    p.edit("images.kdl", |t| {
        t.replace(
            "tool \"image-builder\" \"v0.1.55\"",
            &format!("tool \"image-builder\" \"v0.1.55\" {tool_props}"),
        )
        .replace("bucket \"s3://capo-images\"", "bucket \"file://bucket\"")
    });
    let bin = p.path().join("fakebin");
    let log = p.path().join("fakelog");
    fs::create_dir_all(&bin).unwrap();
    fs::create_dir_all(&log).unwrap();
    write_exec(&bin.join("make"), FAKE_MAKE);
    write_exec(&bin.join("docker"), FAKE_DOCKER);
    write_exec(&bin.join("podman"), FAKE_DOCKER);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let root = p.path().join("image-builder/images/capi");
    p = p
        .clean_env()
        .env("PATH", &path)
        .env("FAKE_LOG", &log.to_string_lossy())
        .env("FAKE_IMAGE_ROOT", &root.to_string_lossy())
        .env("FAKE_BUILDER", builder)
        .env("FAKE_ARTIFACT", artifact)
        .env("HCLOUD_TOKEN", SECRET)
        .env("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("GCP_SERVICE_ACCOUNT_JSON", SECRET)
        .env("S3_ACCESS_KEY_ID", "AKIAEXAMPLE")
        .env("S3_SECRET_ACCESS_KEY", SECRET);
    Fakes { project: p, log }
}

/// `kiln build` of one provider's 1.31 cells, one node at a time (so calls are recorded in order).
pub(crate) fn build_provider(p: &Project, provider: &str) -> crate::support::Output {
    p.kiln(&[
        "build",
        "--provider",
        provider,
        "--kubernetes",
        "1.31",
        "-j",
        "1",
    ])
}

/// One recorded invocation.
#[derive(Debug)]
struct Call {
    tool: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    vars: BTreeMap<String, String>,
}

fn calls(log: &Path) -> Vec<Call> {
    let mut names: Vec<PathBuf> = fs::read_dir(log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.len() == 7 && n.ends_with(".txt")
        })
        .collect();
    names.sort();
    names
        .iter()
        .map(|f| {
            let text = fs::read_to_string(f).unwrap();
            // The secret value never reaches a recorded line (argv, env values, var file).
            assert!(
                !text.contains(SECRET),
                "secret leaked into {}:\n{text}",
                f.display()
            );
            let (head, var_text) = text.split_once("varfile-begin\n").unwrap();
            let var_text = var_text.split_once("varfile-end").unwrap().0;
            let mut c = Call {
                tool: String::new(),
                args: Vec::new(),
                env: BTreeMap::new(),
                vars: serde_json::from_str(var_text).unwrap(),
            };
            for l in head.lines() {
                if let Some(t) = l.strip_prefix("tool ") {
                    c.tool = t.into();
                } else if let Some(a) = l.strip_prefix("arg ") {
                    c.args.push(a.into());
                } else if let Some(e) = l.strip_prefix("env ") {
                    let (k, v) = e.split_once(['=', ' ']).unwrap();
                    c.env.insert(k.into(), v.into());
                }
            }
            c
        })
        .collect()
}

/// Every key of every var file is declared by image-builder's config files or by the target's
/// packer/<dir>/ (from the fixture JSON, not from kiln's data).
fn assert_declared(calls: &[Call]) {
    let declared = declared_variables();
    for c in calls {
        let target = c.args.last().unwrap();
        let rest = target.split_once('-').unwrap().1;
        let dir = rest.split('-').next().unwrap();
        for k in c.vars.keys() {
            assert!(
                declared.contains(&("config".into(), k.clone()))
                    || declared.contains(&(dir.into(), k.clone())),
                "{target}: `{k}` is not declared by image-builder"
            );
        }
    }
}

fn target_of(c: &Call) -> &str {
    c.args.last().unwrap()
}

#[test]
fn hcloud_with_a_local_checkout() {
    let f = fakes("source=\"image-builder\"", "hcloud", "123456");
    let p = &f.project;
    let out = build_provider(p, "hcloud");
    out.expect_code(0);
    assert_eq!(out.stdout.trim(), "3 built, 0 cached");
    let calls = calls(&f.log);
    assert_eq!(calls.len(), 2, "{calls:?}");
    let work_capi = |c: &Call| c.args[1].clone();
    for (c, target) in calls
        .iter()
        .zip(["validate-hcloud-ubuntu-2404", "build-hcloud-ubuntu-2404"])
    {
        assert_eq!(c.tool, "make");
        assert_eq!(c.args, ["-C", work_capi(c).as_str(), target]);
        assert!(work_capi(c).ends_with("/capi"), "{:?}", c.args);
        assert_eq!(
            c.env["PACKER_FLAGS"],
            "-var 'container_registry_url=https://harbor.example.com'"
        );
        assert!(c.env["PACKER_VAR_FILES"].ends_with("/kiln/vars.json"));
        assert!(!c.env.contains_key("PACKER_LOG"));
        assert_eq!(c.env["HCLOUD_TOKEN"], format!("len={}", SECRET.len()));
        let mut vars = c.vars.clone();
        let manifest = vars.remove("manifest_output").unwrap();
        assert!(manifest.ends_with("/kiln/manifest.json"));
        assert_eq!(
            vars,
            BTreeMap::from([
                ("containerd_version".into(), "2.2.0".into()),
                ("crictl_version".into(), "1.31.1".into()),
                ("hcloud_location".into(), "fsn1".into()),
                ("kubernetes_cni_semver".into(), "v1.9.0".into()),
                ("kubernetes_deb_version".into(), "1.31.4-1.1".into()),
                ("kubernetes_rpm_version".into(), "1.31.4".into()),
                ("kubernetes_semver".into(), "v1.31.4".into()),
                ("kubernetes_series".into(), "v1.31".into()),
                ("runc_version".into(), "1.2.3".into()),
            ])
        );
    }
    assert_declared(&calls);
    assert_hcloud_template(&f);
    let log = p.kiln(&["logs", "hcloud/ubuntu-2404/1.31/build"]);
    assert!(
        log.stdout.contains("fact snapshot=123456"),
        "{}",
        log.stdout
    );
    // The checkout itself is untouched.
    assert_eq!(
        p.read("image-builder/images/capi/packer/hcloud/packer.json"),
        fs::read_to_string(ib_fixture().join("packer/hcloud/packer.json")).unwrap()
    );
}

/// The build saw the jq-patched template and the shipped scripts.
fn assert_hcloud_template(f: &Fakes) {
    let seen: Value =
        serde_json::from_str(&fs::read_to_string(f.log.join("hcloud-template-seen.json")).unwrap())
            .unwrap();
    let provisioners = seen["provisioners"].as_array().unwrap();
    let stock: Value = serde_json::from_str(
        &fs::read_to_string(ib_fixture().join("packer/hcloud/packer.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        provisioners.len(),
        stock["provisioners"].as_array().unwrap().len() + 1
    );
    assert_eq!(
        provisioners.last().unwrap()["scripts"][0],
        "./packer/hcloud/scripts/additional-tools.sh"
    );
    assert_eq!(
        fs::read_to_string(f.log.join("hcloud-scripts-seen.txt")).unwrap(),
        "additional-tools.sh\ncri.sh\nvalidate.sh\n"
    );
}

#[test]
fn hcloud_in_the_container_like_the_seed() {
    let f = fakes(&format!("image=\"{IMAGE}\""), "hcloud", "123456");
    let p = &f.project;
    let out = build_provider(p, "hcloud");
    out.expect_code(0);
    let calls = calls(&f.log);
    assert_eq!(calls.len(), 2, "{calls:?}");
    let root = fs::canonicalize(p.path()).unwrap();
    for (c, target) in calls
        .iter()
        .zip(["validate-hcloud-ubuntu-2404", "build-hcloud-ubuntu-2404"])
    {
        assert_eq!(c.tool, "docker");
        // Host paths are under the cache's work directories; show them as WORK and ROOT.
        let args: Vec<String> = c
            .args
            .iter()
            .map(|a| {
                let a = a
                    .replace(&*root.to_string_lossy(), "ROOT")
                    .replace(&*p.path().to_string_lossy(), "ROOT");
                match a.find("/work-") {
                    Some(i) => {
                        let end = a[i + 1..].find('/').map_or(a.len(), |j| i + 1 + j);
                        format!("WORK{}", &a[end..])
                    }
                    None => a,
                }
            })
            .collect();
        assert_eq!(
            args,
            [
                "run",
                "--rm",
                "--env",
                "PACKER_VAR_FILES=/home/imagebuilder/kiln/vars.json",
                "--env",
                "PACKER_FLAGS=-var 'container_registry_url=https://harbor.example.com'",
                "--env",
                "IB_VERSION=v0.1.55",
                "--env",
                "HCLOUD_TOKEN",
                "-v",
                "WORK/kiln:/home/imagebuilder/kiln",
                "-v",
                "WORK/output:/home/imagebuilder/output",
                "-v",
                "WORK/kiln/packer.json:/home/imagebuilder/packer/hcloud/packer.json:ro",
                "-v",
                "WORK/stage/packer/hcloud/scripts:/home/imagebuilder/packer/hcloud/scripts:ro",
                IMAGE,
                target,
            ]
        );
        assert_eq!(c.env["HCLOUD_TOKEN"], format!("len={}", SECRET.len()));
        assert_eq!(
            c.vars["manifest_output"],
            "/home/imagebuilder/kiln/manifest.json"
        );
    }
    assert_declared(&calls);
    assert_hcloud_template(&f);
    let log = p.kiln(&["logs", "hcloud/ubuntu-2404/1.31/build"]);
    assert!(
        log.stdout.contains("fact snapshot=123456"),
        "{}",
        log.stdout
    );
}

#[test]
fn capa_ubuntu_and_flatcar_in_both_modes() {
    for (props, tool) in [
        ("source=\"image-builder\"".to_string(), "make"),
        (format!("image=\"{IMAGE}\" engine=\"podman\""), "podman"),
    ] {
        let f = fakes(
            &props,
            "amazon-ebs",
            "eu-central-1:ami-0aaa,us-east-1:ami-0bbb",
        );
        let p = &f.project;
        let out = build_provider(p, "aws");
        out.expect_code(0);
        let calls = calls(&f.log);
        let targets: BTreeSet<&str> = calls.iter().map(target_of).collect();
        assert_eq!(
            targets,
            BTreeSet::from([
                "build-ami-flatcar",
                "build-ami-ubuntu-2404",
                "validate-ami-flatcar",
                "validate-ami-ubuntu-2404"
            ])
        );
        for c in &calls {
            assert_eq!(c.tool, if tool == "make" { "make" } else { "docker" }); // podman is the fake docker
            assert_eq!(
                c.vars["ami_regions"],
                "eu-central-1,eu-west-1,us-east-1,us-west-1"
            );
            assert_eq!(c.vars["aws_region"], "us-east-1");
            assert_eq!(c.vars["encrypted"], "false");
            assert!(!c.env.contains_key("PACKER_FLAGS"));
            assert_eq!(
                c.env["AWS_SECRET_ACCESS_KEY"],
                format!("len={}", SECRET.len())
            );
            if tool != "make" {
                assert!(
                    c.args
                        .windows(2)
                        .any(|w| w == ["--env", "AWS_SECRET_ACCESS_KEY"])
                );
                assert!(
                    !c.args.iter().any(|a| a.contains("packer/ami/packer.json")),
                    "no patch, no template mount"
                );
            }
        }
        assert_declared(&calls);
        let log = p.kiln(&["logs", "aws/flatcar/1.31/build"]);
        assert!(
            log.stdout.contains("fact ami.eu-central-1=ami-0aaa"),
            "{}",
            log.stdout
        );
        assert!(
            log.stdout.contains("fact ami.us-east-1=ami-0bbb"),
            "{}",
            log.stdout
        );
        assert!(
            log.stdout.contains("fact custom.kubernetes_semver=v1.31.4"),
            "{}",
            log.stdout
        );
    }
}

#[test]
fn capg_and_capo_with_a_local_checkout() {
    let f = fakes(
        "source=\"image-builder\"",
        "googlecompute",
        "cluster-api-ubuntu-2404",
    );
    let p = &f.project;
    let out = p.kiln(&[
        "build",
        "--provider",
        "gcp",
        "--provider",
        "openstack",
        "--kubernetes",
        "1.31",
        "-j",
        "1",
    ]);
    out.expect_code(0);
    let calls = calls(&f.log);
    let targets: BTreeSet<&str> = calls.iter().map(target_of).collect();
    assert_eq!(
        targets,
        BTreeSet::from([
            "build-gce-ubuntu-2204",
            "build-gce-ubuntu-2404",
            "build-qemu-ubuntu-2404",
            "validate-gce-ubuntu-2204",
            "validate-gce-ubuntu-2404",
            "validate-qemu-ubuntu-2404"
        ])
    );
    for c in &calls {
        if target_of(c).contains("gce") {
            assert_eq!(c.vars["project_id"], "capi-images");
            assert_eq!(c.vars["zone"], "us-central1-a");
            assert!(
                !c.vars.contains_key("manifest_output"),
                "gce has no manifest post-processor"
            );
            // packer's googlecompute builder reads the key from the file this names.
            assert!(c.env.contains_key("GOOGLE_APPLICATION_CREDENTIALS"));
            assert!(!c.env.contains_key("GOOGLE_APPLICATION_CREDENTIALS_JSON"));
        } else {
            assert_eq!(c.vars["disk_compression"], "true");
            assert_eq!(c.vars["accelerator"], "kvm");
        }
    }
    assert_declared(&calls);
    // The qemu image went through the upload publish step into the file:// bucket.
    assert_eq!(
        p.read("bucket/openstack-ubuntu-2404-k8s-1.31.qcow2"),
        "qcow2 of build-qemu-ubuntu-2404\n"
    );
    let log = p.kiln(&["logs", "openstack/ubuntu-2404/1.31/build"]);
    assert!(
        log.stdout
            .contains("fact image=output/ubuntu-2404-kube-v1.31.4/ubuntu-2404-kube-v1.31.4"),
        "{}",
        log.stdout
    );
}

#[test]
fn a_retry_sets_packer_log_only_on_the_second_attempt() {
    let mut f = fakes("source=\"image-builder\"", "hcloud", "1");
    let flag = f.project.path().join("fail-once");
    fs::write(&flag, "").unwrap();
    f.project.set_env("FAKE_FAIL_ONCE", &flag.to_string_lossy());
    let out = build_provider(&f.project, "hcloud");
    out.expect_code(0);
    let calls = calls(&f.log);
    let builds: Vec<&Call> = calls
        .iter()
        .filter(|c| target_of(c).starts_with("build-"))
        .collect();
    assert_eq!(builds.len(), 2, "{calls:?}");
    assert!(!builds[0].env.contains_key("PACKER_LOG"));
    assert_eq!(builds[1].env["PACKER_LOG"], "1");
    let validate = calls
        .iter()
        .find(|c| target_of(c).starts_with("validate-"))
        .unwrap();
    assert!(!validate.env.contains_key("PACKER_LOG"));
}

/// `kiln explain` shows the command, environment (secrets masked), files and var file a node
/// will run with — the same argv the build then runs, up to the work directory.
#[test]
fn explain_shows_the_exact_invocation() {
    let f = fakes(&format!("image=\"{IMAGE}\""), "hcloud", "123456");
    let p = &f.project;
    let explain = p.kiln(&["explain", "hcloud/ubuntu-2404/1.31/build"]);
    explain.expect_code(0);
    let text = &explain.stdout;
    assert!(!text.contains(SECRET), "{text}");
    assert!(
        text.contains("env       HCLOUD_TOKEN=*** (secret)"),
        "{text}"
    );
    assert!(
        text.contains("env       PACKER_VAR_FILES=/home/imagebuilder/kiln/vars.json"),
        "{text}"
    );
    assert!(
        text.contains("\"kubernetes_semver\": \"v1.31.4\""),
        "{text}"
    );
    let shown = text
        .lines()
        .find_map(|l| l.strip_prefix("command   "))
        .expect("a command line")
        .to_string();
    p.kiln(&["build", "--cell", "hcloud-ubuntu-2404-k8s-1.31", "-j", "1"])
        .expect_code(0);
    let ran = calls(&f.log)
        .into_iter()
        .find(|c| target_of(c) == "build-hcloud-ubuntu-2404")
        .expect("the build ran");
    let work = |s: &str| -> String {
        // The work directory differs: `<work>` in explain, a directory under the cache when run.
        s.split(' ')
            .map(|w| match (w.find("<work>"), w.find("/work-")) {
                (Some(i), _) => format!("{}WORK{}", &w[..i], &w[i + 6..]),
                (None, Some(i)) => {
                    let start = w[..i].rfind(['=', ':']).map_or(0, |j| j + 1);
                    let end = w[i + 1..].find('/').map_or(w.len(), |j| i + 1 + j);
                    format!("{}WORK{}", &w[..start], &w[end..])
                }
                _ => w.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let ran = p.redact(&format!("{} {}", ran.tool, ran.args.join(" ")));
    assert_eq!(work(&shown), work(&ran));
}

/// A build that succeeds without its artifacts is a failure: the manifest an ami template's
/// post-processor writes, the disk image of a qemu build. Nothing is recorded, and the plan
/// still shows the build to do.
#[test]
fn a_build_without_its_artifacts_fails_and_records_nothing() {
    let mut f = fakes("source=\"image-builder\"", "amazon-ebs", "us-east-1:ami-1");
    f.project.set_env("FAKE_NO_PRODUCTS", "1");
    for (provider, why) in [
        ("aws", "packer's manifest post-processor wrote no manifest"),
        (
            "openstack",
            "the qemu build succeeded but left no disk image",
        ),
    ] {
        let out = build_provider(&f.project, provider);
        assert_eq!(out.code, 1, "{out:?}");
        assert!(out.stderr.contains(why), "{}", out.stderr);
        let plan = f
            .project
            .kiln(&["plan", "--provider", provider, "--kubernetes", "1.31"]);
        assert!(
            plan.stdout
                .contains(&format!("+  {provider}/ubuntu-2404/1.31/build")),
            "{}",
            plan.stdout
        );
    }
    f.project.set_env("FAKE_NO_PRODUCTS", "");
    build_provider(&f.project, "aws").expect_code(0);
}

/// A qemu build whose config moves the disk (`output_directory`, `vm_name`) is found there.
#[test]
fn a_qemu_disk_is_found_where_output_directory_and_vm_name_put_it() {
    let f = fakes("source=\"image-builder\"", "qemu", "");
    f.project.edit("images.kdl", |t| {
        t.replace(
            "provider \"openstack\" {\n",
            "provider \"openstack\" {\n    var \"output_directory\" \"./output/capo\"\n    var \"vm_name\" \"capo.qcow2\"\n",
        )
    });
    build_provider(&f.project, "openstack").expect_code(0);
    let log = f
        .project
        .kiln(&["logs", "openstack/ubuntu-2404/1.31/build"]);
    assert!(
        log.stdout.contains("fact image=output/capo/capo.qcow2"),
        "{}",
        log.stdout
    );
    assert_eq!(
        f.project
            .read("bucket/openstack-ubuntu-2404-k8s-1.31.qcow2"),
        "qcow2 of build-qemu-ubuntu-2404\n"
    );
}
