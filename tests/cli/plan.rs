//! `kiln plan` against what `kiln build` then really does: for every kind of edit the plan
//! names the nodes that run and why; goldens of the three renderings and of `kiln explain`;
//! saved plans and their staleness checks; `--force` and `--detailed-exitcode`.
//!
//! The fixture `tests/data/plan-project` has two providers, two OSes and two Kubernetes
//! releases (one tracked in images.lock) of `command` steps that really run: `validate` takes
//! only the shipped scripts, so one validate node is shared by both releases of a provider and
//! OS; `build` runs the shipped `make.sh` with the variables (and, for beta, a secret read from
//! `token.txt`); `publish` uploads the image into `published/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

use crate::support::{Output, Project, copy_tree, golden};

const FIXTURE: &str = "plan-project";
const GOLDEN: &str = "plan-golden";
const NODES: usize = 20;

/// A built copy of the fixture (cache included), made once per test run; every test starts
/// from a copy of it. It lives in cargo's scratch directory for integration tests, since a
/// static's temporary directory would never be removed.
fn built_template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let p = Project::from_case(FIXTURE);
        let out = p.kiln(&["build", "-j", "2"]);
        out.expect_code(0);
        assert_eq!(out.stdout.trim(), format!("{NODES} built, 0 cached"));
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("plan-template-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        copy_tree(p.path(), &dir);
        dir
    })
}

/// A project whose cache holds a result for every node.
fn built() -> Project {
    let p = Project::new().with_dir(built_template());
    let plan = p.kiln(&["plan", "--detailed-exitcode"]);
    plan.expect_code(0);
    p
}

fn plan_json(p: &Project, extra: &[&str]) -> Value {
    let mut args = vec!["plan", "--json"];
    args.extend_from_slice(extra);
    let out = p.kiln(&args);
    out.expect_code(0);
    out.json()
}

fn nodes(plan: &Value) -> &Vec<Value> {
    plan["nodes"].as_array().expect("nodes")
}

fn node<'a>(plan: &'a Value, id: &str) -> &'a Value {
    nodes(plan)
        .iter()
        .find(|n| n["id"] == id)
        .unwrap_or_else(|| panic!("no node {id} in the plan"))
}

/// Ids of the nodes whose action is one of `actions`.
fn with_action(plan: &Value, actions: &[&str]) -> BTreeSet<String> {
    nodes(plan)
        .iter()
        .filter(|n| actions.iter().any(|a| n["action"] == *a))
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect()
}

fn will_run(plan: &Value) -> BTreeSet<String> {
    with_action(plan, &["new", "rebuild", "rebuild_if_upstream_changes"])
}

fn ids(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// What a build did, from its progress lines on stderr.
#[derive(Debug, Default)]
struct Ran {
    built: BTreeSet<String>,
    /// Cut off: upstream rebuilt with identical outputs.
    same: BTreeSet<String>,
}

impl Ran {
    fn all(&self) -> BTreeSet<String> {
        self.built.union(&self.same).cloned().collect()
    }
}

fn ran(out: &Output) -> Ran {
    let mut r = Ran::default();
    for line in out.stderr.lines() {
        // `[hh:mm:ss] built  ID (0.1s)` / `[hh:mm:ss] same   ID (0.0s)`
        let Some((_, rest)) = line.split_once("] ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        match (words.next(), words.next()) {
            (Some("built"), Some(id)) => r.built.insert(id.to_string()),
            (Some("same"), Some(id)) => r.same.insert(id.to_string()),
            _ => continue,
        };
    }
    r
}

fn build(p: &Project, extra: &[&str]) -> (Output, Ran) {
    let mut args = vec!["build", "-j", "2"];
    args.extend_from_slice(extra);
    let out = p.kiln(&args);
    out.expect_code(0);
    let r = ran(&out);
    (out, r)
}

/// The plan's promises hold for what the build did.
#[track_caller]
fn assert_build_matches_plan(name: &str, plan: &Value, r: &Ran) {
    let planned = will_run(plan);
    let unplanned: Vec<_> = r.all().difference(&planned).cloned().collect();
    assert!(
        unplanned.is_empty(),
        "{name}: the build ran nodes the plan said were cached: {unplanned:?}"
    );
    for id in with_action(plan, &["new", "rebuild"]) {
        assert!(
            r.built.contains(&id),
            "{name}: {id} was planned to build but was not built ({r:?})"
        );
    }
    for id in with_action(plan, &["rebuild_if_upstream_changes"]) {
        assert!(
            r.built.contains(&id) || r.same.contains(&id),
            "{name}: {id} was neither built nor cut off ({r:?})"
        );
    }
    for id in &r.same {
        assert_eq!(
            node(plan, id)["action"],
            "rebuild_if_upstream_changes",
            "{name}: {id} was cut off but not planned as `~?`"
        );
    }
}

/// A reason of `kind` whose `field` is `value` (no field check when `field` is empty).
#[derive(Clone, Copy)]
struct Reason {
    kind: &'static str,
    field: &'static str,
    value: &'static str,
}

const fn reason(kind: &'static str, field: &'static str, value: &'static str) -> Reason {
    Reason { kind, field, value }
}

fn has_reason(n: &Value, want: Reason) -> bool {
    n["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["kind"] == want.kind && (want.field.is_empty() || r[want.field] == want.value))
}

struct Scenario {
    name: &'static str,
    edit: fn(&Project),
    /// Exactly the ids planned `new` or `rebuild`.
    run: &'static [&'static str],
    /// Exactly the ids planned `rebuild_if_upstream_changes`.
    maybe: &'static [&'static str],
    /// Every `rebuild` node has this reason.
    reason: Option<Reason>,
    /// Of the `~?` nodes, these are expected to be cut off (`same`), the others built.
    cutoff: bool,
}

fn set_greeting(p: &Project) {
    p.edit("images.kdl", |t| {
        t.replace(r#"var "greeting" "hello""#, r#"var "greeting" "howdy""#)
    });
}

fn edit_beta_script(p: &Project) {
    p.edit("scripts/beta/make.sh", |t| {
        t.replace("echo \"beta image\"\n", "echo \"beta image v2\"\n")
    });
}

const ALPHA_BUILDS: &[&str] = &[
    "alpha/one/1.31/build",
    "alpha/two/1.31/build",
    "alpha/one/1.32/build",
    "alpha/two/1.32/build",
];
const ALPHA_PUBLISHES: &[&str] = &[
    "alpha/one/1.31/publish",
    "alpha/two/1.31/publish",
    "alpha/one/1.32/publish",
    "alpha/two/1.32/publish",
];
/// The nodes that take a provider's shipped scripts: its validates and builds.
const ALPHA_SHIPPED: &[&str] = &[
    "alpha/one/validate",
    "alpha/two/validate",
    "alpha/one/1.31/build",
    "alpha/two/1.31/build",
    "alpha/one/1.32/build",
    "alpha/two/1.32/build",
];
const BETA_SHIPPED: &[&str] = &[
    "beta/one/validate",
    "beta/two/validate",
    "beta/one/1.31/build",
    "beta/two/1.31/build",
    "beta/one/1.32/build",
    "beta/two/1.32/build",
];
const BETA_PUBLISHES: &[&str] = &[
    "beta/one/1.31/publish",
    "beta/two/1.31/publish",
    "beta/one/1.32/publish",
    "beta/two/1.32/publish",
];
const ALL_PUBLISHES: &[&str] = &[
    "alpha/one/1.31/publish",
    "alpha/two/1.31/publish",
    "alpha/one/1.32/publish",
    "alpha/two/1.32/publish",
    "beta/one/1.31/publish",
    "beta/two/1.31/publish",
    "beta/one/1.32/publish",
    "beta/two/1.32/publish",
];

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "a provider variable",
        edit: set_greeting,
        run: ALPHA_BUILDS,
        maybe: ALPHA_PUBLISHES,
        reason: Some(reason("var_changed", "name", "greeting")),
        cutoff: false,
    },
    Scenario {
        name: "a shipped script",
        edit: edit_beta_script,
        run: BETA_SHIPPED,
        maybe: BETA_PUBLISHES,
        reason: Some(reason("file_changed", "path", "scripts/beta/make.sh")),
        cutoff: false,
    },
    Scenario {
        name: "a file added to a shipped directory",
        edit: |p| p.write("scripts/alpha/extra.sh", "echo extra\n"),
        run: ALPHA_SHIPPED,
        maybe: ALPHA_PUBLISHES,
        reason: Some(reason("file_added", "path", "scripts/alpha/extra.sh")),
        cutoff: true,
    },
    Scenario {
        name: "a file removed from a shipped directory",
        edit: |p| std::fs::remove_file(p.path().join("scripts/beta/notes.txt")).unwrap(),
        run: BETA_SHIPPED,
        maybe: BETA_PUBLISHES,
        reason: Some(reason("file_removed", "path", "scripts/beta/notes.txt")),
        cutoff: true,
    },
    Scenario {
        name: "a step parameter in the module",
        edit: |p| {
            p.edit("modules/cmd.kdl", |t| {
                t.replace("sh scripts/make.sh >", "sh scripts/make.sh unused-arg >")
            })
        },
        run: &[
            "alpha/one/1.31/build",
            "alpha/two/1.31/build",
            "alpha/one/1.32/build",
            "alpha/two/1.32/build",
            "beta/one/1.31/build",
            "beta/two/1.31/build",
            "beta/one/1.32/build",
            "beta/two/1.32/build",
        ],
        maybe: ALL_PUBLISHES,
        reason: Some(reason("param_changed", "name", "argv")),
        cutoff: true,
    },
    Scenario {
        name: "a tracked release's version in images.lock",
        edit: |p| p.edit("images.lock", |t| t.replace("1.32.4", "1.32.5")),
        run: &[
            "alpha/one/1.32/build",
            "alpha/two/1.32/build",
            "beta/one/1.32/build",
            "beta/two/1.32/build",
        ],
        maybe: &[
            "alpha/one/1.32/publish",
            "alpha/two/1.32/publish",
            "beta/one/1.32/publish",
            "beta/two/1.32/publish",
        ],
        reason: Some(reason("var_changed", "name", "kubernetes_semver")),
        cutoff: false,
    },
    Scenario {
        name: "a deleted action-cache entry",
        edit: |p| {
            std::fs::remove_file(ac_entry(p, "beta/one/1.31/build")).unwrap();
        },
        run: &["beta/one/1.31/build"],
        maybe: &[],
        reason: Some(reason("result_missing", "", "")),
        cutoff: false,
    },
    Scenario {
        name: "a new cell",
        edit: |p| {
            p.edit("images.kdl", |t| {
                t.replace(r#"os "one" "two""#, r#"os "one" "two" "three""#)
            })
        },
        run: &[
            "alpha/three/validate",
            "alpha/three/1.31/build",
            "alpha/three/1.31/publish",
            "alpha/three/1.32/build",
            "alpha/three/1.32/publish",
            "beta/three/validate",
            "beta/three/1.31/build",
            "beta/three/1.31/publish",
            "beta/three/1.32/build",
            "beta/three/1.32/publish",
        ],
        maybe: &[],
        reason: None,
        cutoff: false,
    },
    Scenario {
        name: "a secret's value",
        edit: |p| p.write("token.txt", "tok-2\n"),
        run: &[],
        maybe: &[],
        reason: None,
        cutoff: false,
    },
    Scenario {
        name: "a comment in a script (byte-identical output)",
        edit: |p| {
            p.edit("scripts/alpha/make.sh", |t| {
                format!("# prints the image\n{t}")
            })
        },
        run: ALPHA_SHIPPED,
        maybe: ALPHA_PUBLISHES,
        reason: Some(reason("file_changed", "path", "scripts/alpha/make.sh")),
        cutoff: true,
    },
];

/// The path of the action-cache entry for `key`.
/// The action-cache entry of node `id`'s current key.
fn ac_entry(p: &Project, id: &str) -> std::path::PathBuf {
    let plan = plan_json(p, &[]);
    let key = node(&plan, id)["key"].as_str().unwrap();
    p.path().join("cache/ac").join(&key[..2]).join(key)
}

/// Makes every fan-out directory of `ac/` look last changed an hour ago, so the planner trusts
/// them once it has checked them.
fn settle_result_dirs(p: &Project) {
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for dir in std::fs::read_dir(p.path().join("cache/ac")).unwrap() {
        let dir = std::fs::File::open(dir.unwrap().path()).unwrap();
        dir.set_modified(an_hour_ago).unwrap();
    }
}

#[test]
fn the_plan_predicts_what_the_build_runs() {
    for s in SCENARIOS {
        let p = built();
        (s.edit)(&p);
        let plan = plan_json(&p, &[]);
        let name = s.name;

        // Exactly the expected nodes run, for the expected reason.
        let run = with_action(&plan, &["new", "rebuild"]);
        assert_eq!(run, ids(s.run), "{name}: nodes to (re)build");
        let maybe = with_action(&plan, &["rebuild_if_upstream_changes"]);
        assert_eq!(
            maybe,
            ids(s.maybe),
            "{name}: nodes to rebuild if upstream changes"
        );
        if let Some(want) = s.reason {
            for id in with_action(&plan, &["rebuild"]) {
                assert!(
                    has_reason(node(&plan, &id), want),
                    "{name}: {id} does not give the reason {}: {}",
                    want.kind,
                    node(&plan, &id)["reasons"]
                );
            }
        } else {
            assert!(
                with_action(&plan, &["rebuild"]).is_empty(),
                "{name}: nothing should be rebuilt"
            );
        }
        for id in &maybe {
            let reasons = node(&plan, id)["reasons"].as_array().unwrap().clone();
            assert!(
                !reasons.is_empty() && reasons.iter().all(|r| r["kind"] == "upstream_rebuilt"),
                "{name}: {id} is `~?` for other reasons than upstream: {reasons:?}"
            );
        }
        let s_json = &plan["summary"];
        assert_eq!(
            s_json["new"].as_u64().unwrap() + s_json["rebuild"].as_u64().unwrap(),
            s.run.len() as u64,
            "{name}: summary {s_json}"
        );
        assert_eq!(s_json["maybe"].as_u64().unwrap(), s.maybe.len() as u64);
        let code = p.kiln(&["plan", "--detailed-exitcode"]).code;
        assert_eq!(
            code,
            if s.run.is_empty() && s.maybe.is_empty() {
                0
            } else {
                2
            },
            "{name}: --detailed-exitcode"
        );

        let (out, r) = build(&p, &[]);
        assert_build_matches_plan(name, &plan, &r);
        if s.cutoff {
            assert_eq!(r.same, maybe, "{name}: cut off");
            assert!(
                out.stdout
                    .contains(&format!("{} unchanged after upstream rebuild", maybe.len())),
                "{name}: {}",
                out.stdout
            );
        } else {
            assert!(r.same.is_empty(), "{name}: nothing is cut off: {r:?}");
        }
        // The build did everything the plan promised.
        p.kiln(&["plan", "--detailed-exitcode"]).expect_code(0);
    }
}

#[test]
fn a_changed_file_reason_carries_a_unified_diff() {
    let p = built();
    edit_beta_script(&p);
    let plan = plan_json(&p, &[]);
    let n = node(&plan, "beta/one/1.31/build");
    let r = n["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "file_changed")
        .expect("a file_changed reason");
    assert_eq!(r["path"], "scripts/beta/make.sh");
    let diff = r["diff"].as_str().expect("a diff");
    assert!(
        diff.starts_with("--- a/scripts/beta/make.sh\n+++ b/scripts/beta/make.sh\n@@ "),
        "{diff}"
    );
    assert!(diff.contains("\n-echo \"beta image\"\n"), "{diff}");
    assert!(diff.contains("\n+echo \"beta image v2\"\n"), "{diff}");
    // Variables are named with their old and new values, as rendered in the manifest.
    set_greeting(&p);
    let plan = plan_json(&p, &[]);
    let r = node(&plan, "alpha/two/1.32/build")["reasons"][0].clone();
    assert_eq!(
        r,
        serde_json::json!({
            "kind": "var_changed", "name": "greeting", "old": "\"hello\"", "new": "\"howdy\""
        })
    );
    // A `~?` node names the chain down to the root cause.
    let r = &node(&plan, "beta/one/1.31/publish")["reasons"][0];
    assert_eq!(r["kind"], "upstream_rebuilt");
    assert_eq!(r["dep"], "beta/one/1.31/build");
    assert_eq!(
        r["because"],
        serde_json::json!(["beta/one/1.31/build", "scripts/beta/make.sh changed"])
    );
}

fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { count_files(&p) } else { 1 })
        .sum()
}

#[test]
fn a_removed_cell_is_an_orphan_and_nothing_is_deleted() {
    let p = built();
    p.edit("images.kdl", |t| {
        t.replace(
            "    os \"one\" \"two\"\n",
            "    os \"one\" \"two\"\n    exclude provider=\"alpha\" os=\"one\" kubernetes=\"1.32\"\n",
        )
    });
    let plan = plan_json(&p, &[]);
    assert!(will_run(&plan).is_empty(), "{plan}");
    let orphans: Vec<&str> = plan["orphans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert!(orphans.contains(&"alpha/one/1.32/build"), "{orphans:?}");
    assert!(orphans.contains(&"alpha/one/1.32/publish"), "{orphans:?}");
    // The validate node stopped being shared by the two releases, so its id changed; its result
    // is still in use under the new id, so the old id is no orphan.
    assert!(!orphans.contains(&"alpha/one/validate"), "{orphans:?}");
    assert!(
        plan["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == "alpha/one/1.31/validate" && n["action"] == "cached")
    );
    let published = &plan["orphans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == "alpha/one/1.32/publish")
        .unwrap()["published"];
    assert_eq!(
        published["url"],
        "file://published/alpha/alpha-one-k8s-1.32.img"
    );
    assert_eq!(published["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(plan["summary"]["orphan"], orphans.len());
    let text = p.kiln(&["plan"]).stdout;
    assert!(
        text.contains(
            "-  alpha/one/1.32/publish  orphan: declared no more, kept; published: sha256="
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!("{} orphans kept.\n", orphans.len())),
        "{text}"
    );

    let ac = count_files(&p.path().join("cache/ac"));
    let cas = count_files(&p.path().join("cache/cas"));
    let (out, r) = build(&p, &[]);
    assert!(r.all().is_empty(), "{r:?}");
    assert_eq!(
        out.stdout.trim(),
        format!("0 built, {} cached", nodes(&plan).len())
    );
    assert!(
        p.path()
            .join("published/alpha/alpha-one-k8s-1.32.img")
            .is_file()
    );
    assert!(
        p.path()
            .join("published/alpha/alpha-one-k8s-1.32.img.sha256")
            .is_file()
    );
    assert_eq!(count_files(&p.path().join("cache/ac")), ac);
    assert_eq!(count_files(&p.path().join("cache/cas")), cas);
    // Still orphans after the build: kiln build never forgets them.
    let again = plan_json(&p, &[]);
    assert_eq!(again["orphans"], plan["orphans"]);
}

/// Flips bytes in the middle of an action entry: the entry is replaced (a new file renamed over
/// it, as a crash or a restore would leave it), or overwritten in place.
fn garble(path: &std::path::Path, in_place: bool) {
    let mut bytes = std::fs::read(path).unwrap();
    for b in &mut bytes[100..110] {
        *b ^= 0xff;
    }
    if in_place {
        std::fs::write(path, bytes).unwrap();
    } else {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
}

/// A corrupt action-cache entry must read as missing: the plan says rebuild, the build redoes
/// it, and the cache verifies afterwards.
#[test]
fn a_corrupt_cache_entry_is_rebuilt() {
    let p = built();
    garble(&ac_entry(&p, "beta/two/1.31/build"), false);
    let plan = plan_json(&p, &[]);
    assert_eq!(
        with_action(&plan, &["rebuild"]),
        ids(&["beta/two/1.31/build"])
    );
    assert!(has_reason(
        node(&plan, "beta/two/1.31/build"),
        reason("result_missing", "", "")
    ));
    let (_, r) = build(&p, &[]);
    assert_build_matches_plan("a corrupt entry", &plan, &r);
    p.kiln(&["cache", "verify"]).expect_code(0);
}

/// The planner does not stat entries in a fan-out directory that has not changed since it last
/// checked them. An entry overwritten in place (kiln never does that) therefore still plans as
/// cached; `kiln cache verify` finds it and `--repair` takes it out, after which it rebuilds.
#[test]
fn an_entry_overwritten_in_place_is_found_by_cache_verify() {
    let p = built();
    settle_result_dirs(&p);
    garble(&ac_entry(&p, "beta/two/1.31/build"), true);
    assert!(with_action(&plan_json(&p, &[]), &["rebuild"]).is_empty());
    p.kiln(&["cache", "verify"]).expect_code(1);
    p.kiln(&["cache", "verify", "--repair"]).expect_code(0);
    let plan = plan_json(&p, &[]);
    assert_eq!(will_run(&plan), ids(&["beta/two/1.31/build"]));
    let (_, r) = build(&p, &[]);
    assert_build_matches_plan("an entry repaired after an in-place overwrite", &plan, &r);
}

/// A build reads the results its running nodes depend on before it starts: one damaged in place
/// is moved aside and its node rebuilt, instead of failing the nodes after it.
#[test]
fn a_build_rebuilds_a_damaged_upstream_it_needs() {
    let p = built();
    settle_result_dirs(&p);
    garble(&ac_entry(&p, "beta/two/1.31/build"), true);
    let (out, r) = build(&p, &["--force", "beta/two/1.31/publish"]);
    assert_eq!(
        r.built,
        ids(&["beta/two/1.31/build", "beta/two/1.31/publish"]),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("warning:"), "{}", out.stderr);
    p.kiln(&["cache", "verify"]).expect_code(0);
}

/// What does work today: once `kiln cache verify --repair` has moved the corrupt entry aside,
/// the plan says `result_missing` and the build redoes exactly that node.
#[test]
fn a_corrupt_cache_entry_is_rebuilt_after_repair() {
    let p = built();
    garble(&ac_entry(&p, "beta/two/1.31/build"), false);
    p.kiln(&["cache", "verify"]).expect_code(1);
    p.kiln(&["cache", "verify", "--repair"]).expect_code(0);
    let plan = plan_json(&p, &[]);
    assert_eq!(will_run(&plan), ids(&["beta/two/1.31/build"]));
    assert!(has_reason(
        node(&plan, "beta/two/1.31/build"),
        reason("result_missing", "", "")
    ));
    let (_, r) = build(&p, &[]);
    assert_build_matches_plan("a repaired entry", &plan, &r);
    assert_eq!(r.built, ids(&["beta/two/1.31/build"]));
    p.kiln(&["cache", "verify"]).expect_code(0);
}

// ---------------------------------------------------------------------------------------------
// Goldens
// ---------------------------------------------------------------------------------------------

#[test]
fn plan_renderings_and_explain_match_their_goldens() {
    let p = built();
    set_greeting(&p);
    edit_beta_script(&p);
    let text = p.kiln(&["plan"]);
    text.expect_code(0);
    golden(GOLDEN, "plan.txt", &text.stdout);
    let json = p.kiln(&["plan", "--json"]);
    json.expect_code(0);
    golden(GOLDEN, "plan.json", &json.stdout);
    assert_eq!(p.kiln(&["plan", "--format", "json"]).stdout, json.stdout);
    let md = p.kiln(&["plan", "--format", "markdown"]);
    md.expect_code(0);
    golden(GOLDEN, "plan.md", &md.stdout);
    let explain = p.kiln(&["explain", "beta/one/1.31/build"]);
    explain.expect_code(0);
    golden(GOLDEN, "explain.txt", &explain.stdout);
    // Only the secret's file is an absolute path (redacted in the golden).
    assert!(
        explain
            .stdout
            .contains("secret    TOKEN from file [ROOT]/token.txt (value never shown"),
        "{}",
        explain.stdout
    );
    for out in [&text, &json, &md] {
        assert!(!out.stdout.contains("[ROOT]"), "{}", out.stdout);
    }
    for out in [&text, &json, &md, &explain] {
        assert!(!out.stdout.contains('\x1b'), "colour in a pipe");
    }
}

// ---------------------------------------------------------------------------------------------
// Saved plans, --detailed-exitcode, --force
// ---------------------------------------------------------------------------------------------

fn save_plan(p: &Project) -> Value {
    let out = p.kiln(&["plan", "-o", "plan.json"]);
    out.expect_code(0);
    // The text plan is still printed.
    assert!(
        out.stdout.starts_with("alpha-one-k8s-1.31\n") || out.stdout.starts_with("No changes."),
        "{}",
        out.stdout
    );
    let saved: Value = serde_json::from_str(&p.read("plan.json")).unwrap();
    assert_eq!(saved["format_version"], 1);
    saved
}

#[test]
fn a_saved_plan_runs_exactly_its_nodes() {
    let p = built();
    set_greeting(&p);
    let saved = save_plan(&p);
    assert_eq!(saved, plan_json(&p, &[]), "-o saves what --json prints");
    let (_, r) = build(&p, &["--plan", "plan.json"]);
    assert_eq!(r.all(), will_run(&saved));
    assert_build_matches_plan("saved plan", &saved, &r);
    p.kiln(&["plan", "--detailed-exitcode"]).expect_code(0);

    // A plan with nothing to do is still valid after a build that did nothing.
    save_plan(&p);
    build(&p, &[]);
    let (out, r) = build(&p, &["--plan", "plan.json"]);
    assert!(r.all().is_empty());
    assert_eq!(out.stdout.trim(), format!("0 built, {NODES} cached"));
}

#[test]
fn a_stale_saved_plan_is_refused() {
    type Case = (&'static str, fn(&Project), &'static str);
    let cases: &[Case] = &[
        (
            "images.kdl",
            |p| {
                p.edit("images.kdl", |t| {
                    t.replace(r#"var "greeting" "hi""#, r#"var "greeting" "hey""#)
                })
            },
            "the config (images.kdl, its modules or images.lock) changed since it was saved",
        ),
        (
            "a comment in images.kdl",
            |p| p.edit("images.kdl", |t| format!("// a comment\n{t}")),
            "the config (images.kdl, its modules or images.lock) changed since it was saved",
        ),
        (
            "images.lock",
            |p| p.edit("images.lock", |t| t.replace("1.32.4", "1.32.5")),
            "the config (images.kdl, its modules or images.lock) changed since it was saved",
        ),
        (
            "a module",
            |p| p.edit("modules/cmd.kdl", |t| t.replace("{name}.img", "{name}.raw")),
            "the config (images.kdl, its modules or images.lock) changed since it was saved",
        ),
        (
            "a shipped script",
            edit_beta_script,
            "an input of beta/one/validate changed (key ",
        ),
        (
            "a build in between",
            |p| {
                build(p, &[]);
            },
            "the cache changed: alpha/one/1.31/build was `rebuild`, is now `cached`",
        ),
    ];
    for (what, edit, why) in cases {
        let p = built();
        set_greeting(&p);
        save_plan(&p);
        edit(&p);
        let out = p.kiln(&["build", "--plan", "plan.json"]);
        assert_eq!(out.code, 1, "{what}: {out:?}");
        assert!(
            out.stderr
                .contains("error: the saved plan plan.json is stale: ")
                && out.stderr.contains(why)
                && out.stderr.contains("run `kiln plan -o plan.json` again"),
            "{what}: {}",
            out.stderr
        );
        assert!(ran(&out).all().is_empty(), "{what}: {}", out.stderr);
        assert!(!out.stderr.contains("] start "), "{what}: {}", out.stderr);
    }
}

#[test]
fn a_file_that_is_no_saved_plan_is_a_usage_error() {
    let p = built();
    p.write("garbage.json", "this is not json\n");
    let out = p.kiln(&["build", "--plan", "garbage.json"]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("garbage.json is not a saved kiln plan")
            && out.stderr.contains("make one with `kiln plan -o FILE`"),
        "{}",
        out.stderr
    );
    let out = p.kiln(&["build", "--plan", "missing.json"]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("cannot read the plan missing.json"),
        "{}",
        out.stderr
    );

    let mut saved = save_plan(&p);
    saved["format_version"] = 2.into();
    p.write("v2.json", &saved.to_string());
    let out = p.kiln(&["build", "--plan", "v2.json"]);
    out.expect_code(2);
    assert!(
        out.stderr
            .contains("v2.json is a plan of format 2, this kiln reads format 1"),
        "{}",
        out.stderr
    );
    // Selecting or forcing conflicts with a saved plan.
    p.kiln(&[
        "build",
        "--plan",
        "plan.json",
        "--force",
        "alpha-one-k8s-1.31",
    ])
    .expect_code(2);
    p.kiln(&["build", "--plan", "plan.json", "--os", "one"])
        .expect_code(2);
}

/// A saved plan made for some cells runs only those.
#[test]
fn a_saved_plan_of_selected_cells() {
    let p = built();
    set_greeting(&p);
    let out = p.kiln(&["plan", "--cell", "alpha-two-k8s-1.31", "-o", "plan.json"]);
    out.expect_code(0);
    let saved: Value = serde_json::from_str(&p.read("plan.json")).unwrap();
    assert_eq!(saved["cells"], serde_json::json!(["alpha-two-k8s-1.31"]));
    assert_eq!(
        will_run(&saved),
        ids(&["alpha/two/1.31/build", "alpha/two/1.31/publish"])
    );
    assert_eq!(saved["orphans"], serde_json::json!([]));
    let (_, r) = build(&p, &["--plan", "plan.json"]);
    assert_eq!(r.built, will_run(&saved));
}

/// The same config spelled `-f ./images.kdl` or `-f /abs/images.kdl` is the same config.
#[test]
fn a_saved_plan_does_not_depend_on_how_the_config_path_is_spelled() {
    let p = built();
    set_greeting(&p);
    save_plan(&p);
    let out = p.kiln(&["-f", "./images.kdl", "build", "--plan", "plan.json"]);
    out.expect_code(0);
}

#[test]
fn detailed_exitcode_says_whether_anything_would_run() {
    let fresh = Project::from_case(FIXTURE);
    let out = fresh.kiln(&["plan", "--detailed-exitcode"]);
    out.expect_code(2);
    assert!(
        out.stdout
            .ends_with("Plan: 20 to build, 0 to rebuild, 0 cached\n"),
        "{}",
        out.stdout
    );
    let p = built();
    let out = p.kiln(&["plan", "--detailed-exitcode"]);
    out.expect_code(0);
    assert!(
        out.stdout.ends_with("No changes. 20 nodes cached.\n"),
        "{}",
        out.stdout
    );
    p.kiln(&["plan", "--json", "--detailed-exitcode"])
        .expect_code(0);
    // A forced node would run.
    p.kiln(&[
        "plan",
        "--force",
        "beta/one/validate",
        "--detailed-exitcode",
    ])
    .expect_code(2);
    set_greeting(&p);
    let out = p.kiln(&["plan", "--format", "markdown", "--detailed-exitcode"]);
    out.expect_code(2);
    assert!(out.stdout.starts_with("## kiln plan\n"), "{}", out.stdout);
}

#[test]
fn force_reruns_exactly_the_named_nodes() {
    // A cell: every node of it, including the validate node it shares with another cell.
    let p = built();
    let plan = plan_json(&p, &["--force", "alpha-one-k8s-1.31"]);
    let cell = ids(&[
        "alpha/one/validate",
        "alpha/one/1.31/build",
        "alpha/one/1.31/publish",
    ]);
    assert_eq!(will_run(&plan), cell);
    assert_eq!(with_action(&plan, &["rebuild"]), cell);
    assert_eq!(
        plan["forced"],
        serde_json::json!(cell.iter().collect::<Vec<_>>())
    );
    for id in &cell {
        assert!(
            has_reason(node(&plan, id), reason("forced", "", "")),
            "{id}"
        );
    }
    let text = p.kiln(&["plan", "--force", "alpha-one-k8s-1.31"]).stdout;
    assert!(text.contains("· forced with --force"), "{text}");
    let (_, r) = build(&p, &["--force", "alpha-one-k8s-1.31"]);
    assert_eq!(r.built, cell);
    assert!(r.same.is_empty());

    // A node: just that node.
    let plan = plan_json(&p, &["--force", "beta/two/1.32/build"]);
    assert_eq!(will_run(&plan), ids(&["beta/two/1.32/build"]));
    assert_eq!(
        node(&plan, "beta/two/1.32/build")["reasons"],
        serde_json::json!([{ "kind": "forced" }])
    );
    let (out, r) = build(&p, &["--force", "beta/two/1.32/build"]);
    assert_eq!(r.built, ids(&["beta/two/1.32/build"]));
    assert_eq!(out.stdout.trim(), format!("1 built, {} cached", NODES - 1));

    // A forced plan saved with -o reruns the same nodes.
    p.kiln(&["plan", "--force", "beta/two/1.32/build", "-o", "plan.json"])
        .expect_code(0);
    let (_, r) = build(&p, &["--plan", "plan.json"]);
    assert_eq!(r.built, ids(&["beta/two/1.32/build"]));

    let out = p.kiln(&["plan", "--force", "nope"]);
    out.expect_code(2);
    assert!(
        out.stderr
            .contains("--force nope: no node id or cell of that name"),
        "{}",
        out.stderr
    );
}

/// The lowered graph is kept in `cache/graph.snapshot` and used while nothing it was lowered
/// from changes; a garbled snapshot is ignored and written anew.
#[test]
fn the_graph_snapshot_is_used_only_while_it_is_valid() {
    let p = built();
    let first = plan_json(&p, &[]);
    let snapshot = p.path().join("cache/graph.snapshot");
    let bytes = std::fs::read(&snapshot).expect("plan keeps a snapshot");
    let mut garbled = bytes.clone();
    let mid = garbled.len() / 2;
    garbled[mid] ^= 0xff;
    std::fs::write(&snapshot, &garbled).unwrap();
    assert_eq!(plan_json(&p, &[]), first);
    assert_eq!(std::fs::read(&snapshot).unwrap(), bytes);
    set_greeting(&p);
    let changed = plan_json(&p, &[]);
    assert_ne!(changed["nodes"], first["nodes"]);
    assert_ne!(std::fs::read(&snapshot).unwrap(), bytes);
}
