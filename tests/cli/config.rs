//! The config language through the CLI: every diagnostic as rendered, matrix expansion, graph and
//! plan output, and which edits change which node keys.

use std::collections::{BTreeMap, BTreeSet};

use crate::support::{Output, Project, blessing, golden};

// ---------------------------------------------------------------------------------------------
// Diagnostics
// ---------------------------------------------------------------------------------------------

/// One case directory per config error: `images.kdl` (plus imports or a lock file) and the exact
/// `expected.stderr` of `kiln check`. Each case declares a module, a provider, a release and a
/// matrix that are valid, so that only the intended error fires.
const ERROR_CASES: &[&str] = &[
    "error-syntax",
    "error-unknown-top-level",
    "error-unknown-property",
    "error-float-version",
    "error-float-series",
    "error-missing-version",
    "error-duplicate",
    "error-duplicate-across-files",
    "error-exclude-unknown-value",
    "error-exclude-unknown-key",
    "error-override-unknown-value",
    "error-unknown-provider",
    "error-unknown-series",
    "error-unknown-module",
    "error-unknown-builder",
    "error-unknown-builder-param",
    "error-missing-step-param",
    "error-import-not-found",
    "error-import-cycle",
    "error-patch-not-found",
    "error-ship-not-found",
    "error-unknown-placeholder",
    "error-tracked-without-lock",
    "error-duplicate-cell-name",
    "error-bad-duration",
    "error-unquoted-version",
    "error-zero-limit",
    "error-trusted-key",
    "error-kdl1-boolean",
    "error-failed-import",
    "error-zero-timeout",
    "error-negative-limit",
    "error-unquoted-timeout",
    "error-duplicate-cell-across-matrices",
    "error-alias-taken",
    "error-alias-is-provider",
    "error-secret-var-taken",
    "error-removed-release",
    "error-patch-not-run",
];

#[test]
fn every_config_error_is_rendered_exactly() {
    let mut failures = Vec::new();
    for case in ERROR_CASES {
        let out = Project::from_case(case).kiln(&["check"]);
        let result = std::panic::catch_unwind(|| {
            assert_eq!(out.code, 1, "exit code\n--- stderr\n{}", out.stderr);
            assert_eq!(out.stdout, "", "stdout");
            golden(case, "expected.stderr", &out.stderr);
        });
        if let Err(e) = result {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("== {case}: {msg}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        ERROR_CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn every_error_case_names_its_file_position_span_and_help() {
    for case in ERROR_CASES {
        let out = Project::from_case(case).kiln(&["check"]);
        let err = &out.stderr;
        assert!(
            err.contains("─[images.kdl:")
                || err.contains("─[a.kdl:")
                || err.contains("─[b.kdl:")
                || err.contains("─[modules/"),
            "{case}: no file:line:column\n{err}"
        );
        assert!(err.contains("╰──"), "{case}: no labelled span\n{err}");
        assert!(err.contains("  help: "), "{case}: no help line\n{err}");
        assert!(
            err.ends_with("error: the config has 1 error\n"),
            "{case}: expected exactly 1 error\n{err}"
        );
    }
}

#[test]
fn only_the_first_syntax_error_is_shown() {
    let out = Project::from_case("error-syntax").kiln(&["check"]);
    out.expect_code(1);
    assert_eq!(out.stderr.matches("kiln::config::syntax").count(), 1);
}

#[test]
fn warnings_do_not_fail_the_check() {
    let case = "warning-unused-rules";
    let out = Project::from_case(case).kiln(&["check"]);
    out.expect_code(0);
    assert_eq!(
        out.stdout,
        "images.kdl: ok — 1 file, 1 matrix, 2 cells, 2 nodes\n"
    );
    golden(case, "expected.stderr", &out.stderr);
}

#[test]
fn usage_errors_exit_2() {
    let case = "usage-errors";
    let p = Project::from_case(case);
    for (args, file) in [
        (&["plan", "--matrix", "nope"][..], "plan-matrix.stderr"),
        (&["matrix", "--cell", "nope"][..], "matrix-cell.stderr"),
        (
            &["matrix", "--cell", "p-ubuntu-2404-k8s-1.3"][..],
            "matrix-cell-typo.stderr",
        ),
        (&["plan", "--force", "nope"][..], "plan-force.stderr"),
        (
            &["matrix", "--provider", "nope"][..],
            "matrix-provider.stderr",
        ),
    ] {
        let out = p.kiln(args);
        out.expect_code(2);
        assert_eq!(out.stdout, "", "{args:?}");
        golden(case, file, &out.stderr);
    }
    // clap's own usage errors use 2 as well.
    p.kiln(&["plan", "--no-such-flag"]).expect_code(2);
    p.kiln(&["graph", "--format", "png"]).expect_code(2);
}

#[test]
fn a_missing_config_file_is_a_config_error() {
    let out = Project::new().kiln(&["check"]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("cannot read config `images.kdl`"),
        "{}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// Matrix expansion
// ---------------------------------------------------------------------------------------------

/// `kiln matrix --json` on a case's `images.kdl`, compared with its `expected.json`.
fn matrix_golden(case: &str) -> Output {
    let out = Project::from_case(case).kiln(&["matrix", "--json"]);
    out.expect_code(0);
    golden(case, "expected.json", &out.stdout);
    out
}

/// The cells' values, for asserting on the expansion independently of names.
fn cell_values(out: &Output) -> Vec<BTreeMap<String, String>> {
    out.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| serde_json::from_value(c["values"].clone()).unwrap())
        .collect()
}

fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// GitHub's documented examples ("Expanding or adding matrix configurations", "Excluding matrix
// configurations"). They have no provider or kubernetes axis: `kiln matrix` is a generic matrix
// tool. Today `kiln matrix` refuses them (every cell "has no `provider` value"), so these tests
// are ignored until the provider/kubernetes check moves out of `kiln matrix`.

#[test]
fn github_include_example() {
    let out = matrix_golden("matrix-github-include");
    assert_eq!(
        cell_values(&out),
        vec![
            values(&[
                ("fruit", "apple"),
                ("animal", "cat"),
                ("color", "pink"),
                ("shape", "circle")
            ]),
            values(&[
                ("fruit", "apple"),
                ("animal", "dog"),
                ("color", "green"),
                ("shape", "circle")
            ]),
            values(&[("fruit", "pear"), ("animal", "cat"), ("color", "pink")]),
            values(&[("fruit", "pear"), ("animal", "dog"), ("color", "green")]),
            values(&[("fruit", "banana")]),
            values(&[("fruit", "banana"), ("animal", "cat")]),
        ]
    );
}

#[test]
fn github_extend_example() {
    let out = matrix_golden("matrix-github-extend");
    assert_eq!(
        cell_values(&out),
        vec![
            values(&[("os", "windows-latest"), ("node", "14")]),
            values(&[("os", "windows-latest"), ("node", "16"), ("npm", "6")]),
            values(&[("os", "ubuntu-latest"), ("node", "14")]),
            values(&[("os", "ubuntu-latest"), ("node", "16")]),
        ]
    );
}

#[test]
fn github_exclude_example() {
    let out = matrix_golden("matrix-github-exclude");
    let cells = cell_values(&out);
    assert_eq!(cells.len(), 12 - 2 - 1);
    assert!(!cells.contains(&values(&[
        ("os", "macos-latest"),
        ("version", "12"),
        ("environment", "production")
    ])));
    assert!(
        !cells
            .iter()
            .any(|c| c["os"] == "windows-latest" && c["version"] == "16")
    );
}

/// The same goldens through the library (config loader and matrix expansion), which accept these
/// matrices today: this keeps the expected files honest while the CLI tests above are ignored.
#[test]
fn github_examples_expand_as_documented() {
    for case in [
        "matrix-github-include",
        "matrix-github-extend",
        "matrix-github-exclude",
    ] {
        let dir = crate::support::case_dir(case);
        let (config, _warnings) = kiln::config::load(&dir.join("images.kdl"))
            .unwrap_or_else(|e| panic!("{case}: {} errors", e.errors()));
        let mut cells = Vec::new();
        for decl in &config.matrices {
            cells.extend(kiln::matrix::expand(&decl.spec).unwrap().cells);
        }
        let actual = serde_json::to_string_pretty(&cells).unwrap() + "\n";
        golden(case, "expected.json", &actual);
    }
}

#[test]
fn repo_matrix_text() {
    let out = Project::repo_config().kiln(&["matrix"]);
    out.expect_code(0);
    assert_eq!(out.stderr, "");
    golden("repo", "matrix.stdout", &out.stdout);
}

#[test]
fn repo_matrix_filters() {
    let p = Project::repo_config();
    let out = p.kiln(&["matrix", "--provider", "hcloud", "--json"]);
    out.expect_code(0);
    let names: Vec<String> = out
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        ["hcloud-ubuntu-2404-k8s-1.31", "hcloud-ubuntu-2404-k8s-1.32"]
    );
    let out = p.kiln(&["matrix", "--cell", "gcp-ubuntu-2204-k8s-1.32"]);
    out.expect_code(0);
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
}

// ---------------------------------------------------------------------------------------------
// Graph and plan on the repository's images.kdl
// ---------------------------------------------------------------------------------------------

#[test]
fn repo_check_is_offline_and_needs_no_credentials() {
    let out = Project::repo_config().clean_env().kiln(&["check"]);
    out.expect_code(0);
    assert_eq!(out.stderr, "");
    assert_eq!(
        out.stdout,
        "images.kdl: ok — 6 files, 1 matrix, 12 cells, 37 nodes\n"
    );
}

#[test]
fn repo_graph_goldens() {
    let p = Project::repo_config();
    for (format, file) in [
        ("mermaid", "graph.mermaid"),
        ("json", "graph.json"),
        ("dot", "graph.dot"),
    ] {
        let out = p.kiln(&["graph", "--format", format]);
        out.expect_code(0);
        assert_eq!(out.stderr, "");
        golden("repo", file, &out.stdout);
    }
}

#[test]
fn repo_plan_goldens() {
    let p = Project::repo_config();
    let out = p.kiln(&["plan"]);
    out.expect_code(0);
    assert_eq!(out.stderr, "");
    // Nodes are grouped under their cells (indented); every one is new.
    let nodes: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(nodes.len(), 37, "{}", out.stdout);
    assert!(
        nodes
            .iter()
            .all(|l| l.starts_with("  +  ") && l.ends_with(" new")),
        "every node is new against an empty cache:\n{}",
        out.stdout
    );
    golden("repo", "plan.stdout", &out.stdout);

    let out = p.kiln(&["plan", "--json"]);
    out.expect_code(0);
    golden("repo", "plan.json", &out.stdout);

    let out = p.kiln(&["plan", "--provider", "hcloud"]);
    out.expect_code(0);
    golden("repo", "plan-hcloud.stdout", &out.stdout);

    // Planning never creates the cache.
    assert!(!p.path().join("cache").exists());
}

#[test]
fn detailed_exitcode_is_2_when_there_is_work() {
    let p = Project::repo_config();
    let out = p.kiln(&["plan", "--detailed-exitcode"]);
    out.expect_code(2);
    assert_eq!(out.stderr, "");
    assert_eq!(out.stdout, p.kiln(&["plan"]).stdout);
    p.kiln(&["plan", "--json", "--detailed-exitcode"])
        .expect_code(2);
}

// ---------------------------------------------------------------------------------------------
// Key stability
// ---------------------------------------------------------------------------------------------

/// Node id → key, from `kiln plan --json`.
fn keys(p: &Project) -> BTreeMap<String, String> {
    let out = p.kiln(&["plan", "--json"]);
    out.expect_code(0);
    out.json()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_string(),
                n["key"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The ids whose key differs (both maps must have the same ids).
fn changed(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> BTreeSet<String> {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the node ids changed"
    );
    a.iter()
        .filter(|(id, k)| b[*id] != **k)
        .map(|(id, _)| id.clone())
        .collect()
}

fn ids_where(keys: &BTreeMap<String, String>, f: impl Fn(&str) -> bool) -> BTreeSet<String> {
    keys.keys().filter(|id| f(id)).cloned().collect()
}

#[test]
fn reformatting_the_config_changes_no_key() {
    let p = Project::repo_config();
    let before = keys(&p);
    assert_eq!(before.len(), 37);
    let reformatted = crate::support::case_dir("key-stability").join("images.kdl");
    p.write("images.kdl", &std::fs::read_to_string(reformatted).unwrap());
    let after = keys(&p);
    assert_eq!(changed(&before, &after), BTreeSet::new());
    assert_eq!(before, after);
}

#[test]
fn a_shipped_script_changes_only_the_nodes_that_ship_it() {
    let p = Project::repo_config();
    let before = keys(&p);
    p.edit("config/scripts/cri.sh", |s| format!("{s}echo changed\n"));
    let after = keys(&p);
    let expected = ids_where(&before, |id| {
        id.starts_with("hcloud/")
            && (id.ends_with("/validate") || id.ends_with("/build") || id.ends_with("/publish"))
    });
    assert_eq!(expected.len(), 6, "{expected:?}");
    assert_eq!(changed(&before, &after), expected);
}

#[test]
fn secret_values_never_reach_keys_or_output() {
    const A: &str = "tok-aaaa-7c1d0e5f";
    const B: &str = "tok-bbbb-93aa41c2";
    let mut p = Project::repo_config().clean_env();
    let mut outputs = Vec::new();
    let mut all_keys = Vec::new();
    for value in [A, B] {
        for var in [
            "HCLOUD_TOKEN",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "GCP_SERVICE_ACCOUNT_JSON",
            "S3_ACCESS_KEY_ID",
            "S3_SECRET_ACCESS_KEY",
        ] {
            p.set_env(var, value);
        }
        all_keys.push(keys(&p));
        for args in [
            &["check"][..],
            &["matrix", "--json"],
            &["graph", "--format", "json"],
            &["graph", "--format", "dot"],
            &["plan"],
            &["plan", "--json"],
        ] {
            let out = p.kiln(args);
            out.expect_code(0);
            outputs.push((value, args, out));
        }
    }
    assert_eq!(all_keys[0], all_keys[1]);
    for (value, args, out) in &outputs {
        assert!(
            !out.stdout.contains(value) && !out.stderr.contains(value),
            "the secret's value appears in the output of {args:?}"
        );
    }
    // What a plan prints does not depend on the secret either.
    let plans: Vec<&Output> = outputs
        .iter()
        .filter(|(_, args, _)| *args == ["plan", "--json"])
        .map(|(_, _, o)| o)
        .collect();
    assert_eq!(plans[0].stdout, plans[1].stdout);
}

#[test]
fn a_component_pin_changes_only_its_release() {
    let p = Project::repo_config();
    let before = keys(&p);
    p.edit("images.kdl", |s| {
        s.replacen(
            "version \"1.31.4\"\n    revision \"1.1\"\n    cni \"v1.9.0\"\n    containerd \"2.2.0\"",
            "version \"1.31.4\"\n    revision \"1.1\"\n    cni \"v1.9.0\"\n    containerd \"2.2.1\"",
            1,
        )
    });
    let after = keys(&p);
    // Every node of a 1.31 cell, except hcloud's patch node: it is shared with 1.32 and does not
    // read image-builder variables.
    let expected = ids_where(&before, |id| id.contains("/1.31/"));
    assert!(!expected.is_empty());
    assert!(before.contains_key("hcloud/ubuntu-2404/patch"));
    assert_eq!(changed(&before, &after), expected);
}

#[test]
fn a_provider_setting_changes_only_that_provider() {
    let p = Project::repo_config();
    let before = keys(&p);
    p.edit("images.kdl", |s| {
        s.replacen(
            "regions \"eu-central-1\" \"eu-west-1\"",
            "regions \"eu-central-1\" \"eu-north-1\"",
            1,
        )
    });
    let after = keys(&p);
    let aws = ids_where(&before, |id| id.starts_with("aws/"));
    assert_eq!(aws.len(), 12, "{aws:?}");
    assert_eq!(changed(&before, &after), aws);
}

#[test]
fn a_replan_with_nothing_changed_is_identical_and_uses_the_stat_cache() {
    let p = Project::repo_config();
    std::fs::create_dir(p.path().join("cache")).unwrap();
    let first = p.kiln(&["plan"]);
    first.expect_code(0);
    let statcache = p.read("cache/statcache");
    assert!(statcache.contains("config/scripts"), "{statcache}");
    assert!(
        statcache.contains("config/packer-patch.json"),
        "{statcache}"
    );
    let second = p.kiln(&["plan"]);
    second.expect_code(0);
    assert_eq!(first.stdout, second.stdout);
    assert_eq!(first.stderr, second.stderr);
    // Nothing was re-hashed, so the stat cache was not rewritten.
    assert_eq!(p.read("cache/statcache"), statcache);
    if !blessing() {
        assert_eq!(
            first.stdout,
            std::fs::read_to_string(crate::support::case_dir("repo").join("plan.stdout")).unwrap()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Documentation
// ---------------------------------------------------------------------------------------------

/// Every `kdl` example in docs/config.md is a complete config that passes `kiln check` beside
/// the repository's modules/, config/ and images.lock (the images.lock example is checked as a
/// lock file).
#[test]
fn every_documented_example_checks() {
    let doc = std::fs::read_to_string(crate::support::repo_root().join("docs/config.md")).unwrap();
    let blocks: Vec<&str> = doc
        .split("```kdl\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap())
        .collect();
    assert!(blocks.len() >= 10, "{} examples", blocks.len());
    for block in blocks {
        let p = Project::repo_config();
        if block.starts_with("// Resolved versions") {
            p.write("images.lock", block);
        } else {
            p.write("images.kdl", block);
        }
        let out = p.kiln(&["check"]);
        assert_eq!(
            (out.code, out.stderr.as_str()),
            (0, ""),
            "example fails `kiln check`:\n{block}"
        );
    }
}
