//! `kiln export argo|tekton|github`: every document validates against the engine's published
//! schema (`tests/data/workflow-schemas/`), has exactly the graph of `kiln graph --format json`,
//! is the same bytes for the same graph, names secrets and never holds their values; and the
//! exported Argo workflow, run task by task by a stand-in for Argo's controller against moto,
//! builds every node once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::support::{Project, data_dir};
use crate::truth::{F, local_example};

/// Every YAML document of `text`, as JSON.
pub(crate) fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("not YAML: {e}\n{text}")))
        .collect()
}

fn schema_file(name: &str) -> PathBuf {
    data_dir().join("workflow-schemas").join(name)
}

fn json_schema(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(schema_file(name)).unwrap()).unwrap()
}

/// The `openAPIV3Schema` of the v1 version of a Tekton CRD.
fn tekton_schema(name: &str) -> Value {
    let crd = documents(&std::fs::read_to_string(schema_file(name)).unwrap())
        .into_iter()
        .next()
        .unwrap();
    crd["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "v1")
        .expect("a v1 version")["schema"]["openAPIV3Schema"]
        .clone()
}

struct Schemas {
    /// Argo's schema, and one per kind: its definition of that kind, among all the others (the
    /// whole schema's `oneOf` over every kind names no field when a document fails it).
    argo: jsonschema::Validator,
    argo_kinds: BTreeMap<&'static str, jsonschema::Validator>,
    github: jsonschema::Validator,
    tekton: BTreeMap<&'static str, jsonschema::Validator>,
}

impl Schemas {
    fn load() -> Schemas {
        let v = |s: &Value| jsonschema::validator_for(s).expect("a valid schema");
        let mut tekton = BTreeMap::new();
        for (kind, file) in [
            ("Task", "tekton-300-task.yaml"),
            ("Pipeline", "tekton-300-pipeline.yaml"),
            ("PipelineRun", "tekton-300-pipelinerun.yaml"),
        ] {
            tekton.insert(kind, v(&tekton_schema(file)));
        }
        let argo = json_schema("argo-workflows-schema.json");
        let mut argo_kinds = BTreeMap::new();
        for kind in ["Workflow", "WorkflowTemplate"] {
            let mut one = argo.clone();
            let one_map = one.as_object_mut().unwrap();
            one_map.remove("oneOf");
            one_map.insert(
                "$ref".into(),
                Value::String(format!(
                    "#/definitions/io.argoproj.workflow.v1alpha1.{kind}"
                )),
            );
            argo_kinds.insert(kind, v(&one));
        }
        Schemas {
            argo: v(&argo),
            argo_kinds,
            github: v(&json_schema("github-workflow.json")),
            tekton,
        }
    }

    /// Asserts `doc` (of `what`) is valid, listing every error.
    #[track_caller]
    fn check(&self, validator: &jsonschema::Validator, doc: &Value, what: &str) {
        let errors: Vec<String> = validator
            .iter_errors(doc)
            .map(|e| {
                let mut m: String = e.to_string().chars().take(300).collect();
                m.push('…');
                format!("{m} at {}", e.instance_path())
            })
            .collect();
        assert!(
            errors.is_empty(),
            "{what} is not valid:\n{}",
            errors.join("\n")
        );
    }

    /// Validates every document of an export by its kind; returns how many were checked.
    #[track_caller]
    fn check_export(&self, engine: &str, docs: &[Value]) -> usize {
        for doc in docs {
            let kind = doc["kind"].as_str().unwrap_or("workflow");
            let what = format!("the {engine} {kind}");
            match (engine, kind) {
                ("argo", k @ ("Workflow" | "WorkflowTemplate")) => {
                    self.check(&self.argo_kinds[k], doc, &what);
                    self.check(&self.argo, doc, &what);
                }
                // Argo's schema has no ConfigMap: its shape is Kubernetes' own.
                ("argo", "ConfigMap") => {
                    assert_eq!(doc["apiVersion"], "v1");
                    assert!(doc["metadata"]["name"].is_string());
                    for (k, v) in doc["data"].as_object().unwrap() {
                        assert!(v.is_string(), "{k}: {v}");
                        assert!(v.as_str().unwrap().parse::<u32>().unwrap() > 0);
                    }
                }
                ("tekton", k) => self.check(&self.tekton[k], doc, &what),
                ("github", _) => self.check(&self.github, doc, &what),
                other => panic!("unexpected document {other:?}"),
            }
        }
        docs.len()
    }
}

/// `kiln export ENGINE ARGS…` in `p` (config `file`), parsed.
fn export(p: &Project, file: &str, engine: &str, args: &[&str]) -> (String, Vec<Value>) {
    let mut all = vec!["-f", file, "export", engine];
    all.extend(args);
    let out = p.kiln(&all);
    out.expect_code(0);
    let docs = documents(&out.stdout);
    (out.stdout, docs)
}

type Dag = BTreeMap<String, BTreeSet<String>>;

/// The graph as `kiln graph --format json` prints it: each node with its dependencies.
fn graph_dag(p: &Project, file: &str) -> Dag {
    let out = p.kiln(&["-f", file, "graph", "--format", "json"]);
    out.expect_code(0);
    out.json()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let deps = n["deps"].as_array().unwrap().iter();
            (
                n["id"].as_str().unwrap().to_string(),
                deps.map(|d| d.as_str().unwrap().to_string()).collect(),
            )
        })
        .collect()
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {docs:#?}"))
}

/// The parameter `node` of a task's parameter list.
fn node_param(params: &Value) -> String {
    params
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "node")
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Maps task names to node ids in `deps`.
fn by_node(tasks: Vec<(String, String, BTreeSet<String>)>) -> Dag {
    let node: BTreeMap<&String, &String> = tasks.iter().map(|(n, id, _)| (n, id)).collect();
    tasks
        .iter()
        .map(|(_, id, after)| {
            (
                id.clone(),
                after
                    .iter()
                    .map(|a| node[a].clone())
                    .collect::<BTreeSet<_>>(),
            )
        })
        .collect()
}

/// The DAG an export describes, read back from its documents.
fn export_dag(engine: &str, docs: &[Value]) -> Dag {
    match engine {
        "argo" => {
            let wf = docs.iter().find(|d| d["kind"] != "ConfigMap").unwrap();
            let dag = wf["spec"]["templates"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["name"] == wf["spec"]["entrypoint"])
                .unwrap()["dag"]["tasks"]
                .clone();
            by_node(
                dag.as_array()
                    .unwrap()
                    .iter()
                    .map(|t| {
                        (
                            t["name"].as_str().unwrap().to_string(),
                            node_param(&t["arguments"]["parameters"]),
                            strings(&t["dependencies"]),
                        )
                    })
                    .collect(),
            )
        }
        "tekton" => by_node(
            kind(docs, "Pipeline")["spec"]["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    (
                        t["name"].as_str().unwrap().to_string(),
                        node_param(&t["params"]),
                        strings(&t["runAfter"]),
                    )
                })
                .collect(),
        ),
        "github" => {
            let wf = &docs[0];
            let jobs = wf["jobs"].as_object().unwrap();
            let env = jobs["plan"]["steps"][1]["env"].as_object().unwrap();
            let mut dag = Dag::new();
            let mut group = BTreeMap::new();
            for (var, list) in env {
                let job = var.strip_prefix("NODES_").unwrap();
                let entries: Value = serde_json::from_str(list.as_str().unwrap()).unwrap();
                for e in entries.as_array().unwrap() {
                    let id = e["node"].as_str().unwrap().to_string();
                    group.insert(id.clone(), job.to_string());
                    dag.insert(id, strings(&e["after"]));
                }
            }
            // A job runs after every job holding a dependency of its nodes.
            for (id, deps) in &dag {
                let needs = strings(&jobs[&group[id]]["needs"]);
                assert!(needs.contains("plan"), "{id}");
                for d in deps {
                    assert!(needs.contains(&group[d]), "{id} runs before {d}");
                }
            }
            dag
        }
        other => panic!("{other}"),
    }
}

const ENGINES: [&str; 3] = ["argo", "tekton", "github"];

/// The repository's matrix (secrets, limits, retries, timeouts, a shared node) and the local
/// example, exported for every engine: each document is valid by the engine's schema, and the
/// graph it describes is `kiln graph`'s.
#[test]
fn every_export_is_valid_and_has_the_graph() {
    let schemas = Schemas::load();
    let repo = Project::repo_config();
    let local = local_example();
    let mut checked = 0;
    for (p, file) in [(&repo, "images.kdl"), (&local, F)] {
        let graph = graph_dag(p, file);
        for engine in ENGINES {
            let (_, docs) = export(
                p,
                file,
                engine,
                &["--all", "--repo", "https://git.example.com/images.git"],
            );
            checked += schemas.check_export(engine, &docs);
            assert_eq!(export_dag(engine, &docs), graph, "{engine} of {file}");
        }
        let (_, docs) = export(p, file, "argo", &["--all", "--template"]);
        checked += schemas.check_export("argo", &docs);
        assert_eq!(kind(&docs, "WorkflowTemplate")["metadata"]["name"], "kiln");
    }
    // argo: a ConfigMap (the repository's aws limit) and a Workflow, a WorkflowTemplate, and the
    // local example's two; tekton: a Task per variant, the Pipeline and the PipelineRun.
    assert!(checked >= 16, "{checked} documents");

    // The schemas are strict enough to catch a document gone wrong.
    let (_, mut argo) = export(&repo, "images.kdl", "argo", &["--all"]);
    argo[1]["spec"]["templates"][0]["dag"]["tasks"][0]["dependencies"] = serde_json::json!("a");
    assert!(!schemas.argo_kinds["Workflow"].is_valid(&argo[1]));
    assert!(!schemas.argo.is_valid(&argo[1]));
    let (_, mut tekton) = export(&repo, "images.kdl", "tekton", &["--all"]);
    let pipeline = tekton.iter_mut().find(|d| d["kind"] == "Pipeline").unwrap();
    pipeline["spec"]["tasks"][0]["retries"] = serde_json::json!("once");
    assert!(!schemas.tekton["Pipeline"].is_valid(pipeline));
    let (_, mut github) = export(&repo, "images.kdl", "github", &["--all"]);
    github[0]["jobs"]["plan"]["runs-on"] = serde_json::json!(7);
    assert!(!schemas.github.is_valid(&github[0]));

    // The repository's matrix: what each engine makes of retries, timeouts, limits and secrets.
    let (_, argo) = export(&repo, "images.kdl", "argo", &["--all"]);
    assert_eq!(
        kind(&argo, "ConfigMap")["data"],
        serde_json::json!({"aws": "2"})
    );
    let templates = kind(&argo, "Workflow")["spec"]["templates"]
        .as_array()
        .unwrap()
        .clone();
    let aws = templates.iter().find(|t| t["name"] == "aws-build").unwrap();
    assert_eq!(aws["retryStrategy"]["limit"], "1");
    // 2 attempts of 3h, and 15 minutes for the checkout and the cache.
    assert_eq!(
        aws["activeDeadlineSeconds"],
        (2 * 3 * 3600 + 900).to_string()
    );
    assert_eq!(
        aws["synchronization"]["semaphores"][0]["configMapKeyRef"],
        serde_json::json!({"name": "kiln-limits", "key": "aws"})
    );
    let gcp = templates
        .iter()
        .find(|t| t["name"] == "gcp-publish")
        .unwrap();
    assert!(gcp.get("synchronization").is_none(), "{gcp}");
    let env = gcp["container"]["env"].as_array().unwrap();
    assert!(
        env.contains(&serde_json::json!({
            "name": "GCP_SERVICE_ACCOUNT_JSON",
            "valueFrom": {"secretKeyRef": {"name": "kiln-secrets", "key": "GCP_SERVICE_ACCOUNT_JSON"}},
        })),
        "{env:?}"
    );
    let (_, tekton) = export(&repo, "images.kdl", "tekton", &["--all"]);
    let pipeline = &kind(&tekton, "Pipeline")["spec"]["tasks"];
    let build = pipeline
        .as_array()
        .unwrap()
        .iter()
        .find(|t| node_param(&t["params"]) == "aws/ubuntu-2404/1.31/build")
        .unwrap();
    assert_eq!(build["retries"], 1);
    assert_eq!(build["timeout"], "6h15m0s");
    assert_eq!(build["taskRef"]["name"], "kiln-aws-build");
    let (_, github) = export(&repo, "images.kdl", "github", &["--all"]);
    let jobs = github[0]["jobs"].as_object().unwrap();
    let aws_jobs: Vec<&Value> = jobs
        .iter()
        .filter(|(id, _)| id.ends_with("_aws"))
        .map(|(_, j)| j)
        .collect();
    assert!(!aws_jobs.is_empty());
    for j in aws_jobs {
        assert_eq!(j["strategy"]["max-parallel"], 2, "{j}");
        assert_eq!(
            j["env"]["AWS_SECRET_ACCESS_KEY"],
            "${{ secrets.AWS_SECRET_ACCESS_KEY }}"
        );
        assert_eq!(j["timeout-minutes"], 375);
    }
}

/// The same graph gives the same bytes: exported twice, and from another checkout of the same
/// config in another directory, with and without a graph snapshot in the cache.
#[test]
fn exports_are_deterministic() {
    let a = Project::repo_config();
    let b = Project::repo_config();
    for engine in ENGINES {
        let (first, _) = export(&a, "images.kdl", engine, &["--all"]);
        let (again, _) = export(&a, "images.kdl", engine, &["--all"]);
        let (elsewhere, _) = export(&b, "images.kdl", engine, &["--all"]);
        assert_eq!(first, again, "{engine}");
        assert_eq!(first, elsewhere, "{engine}");
        assert!(!first.contains(&*a.path().to_string_lossy()), "{first}");
    }
    // Reordering the matrix's values changes no node, and so no byte.
    b.edit("images.kdl", |s| {
        s.replacen("provider \"aws\" \"gcp\"", "provider \"gcp\" \"aws\"", 1)
    });
    let (reordered, _) = export(&b, "images.kdl", "argo", &["--all"]);
    let (first, _) = export(&a, "images.kdl", "argo", &["--all"]);
    assert_eq!(first, reordered);
}

/// Secrets are exported by name: a variable from a Kubernetes Secret or a repository secret, a
/// secret file mounted where the config reads it; their values, though set, appear nowhere.
#[test]
fn secrets_are_exported_by_name_only() {
    const VALUE: &str = "s3cr3t-value-9f2c1e";
    let p = Project::repo_config()
        .with_file("config/gcp-key.json", "{\"not\": \"used\"}\n")
        .env("AWS_SECRET_ACCESS_KEY", VALUE)
        .env("HCLOUD_TOKEN", VALUE)
        .env("GCP_SERVICE_ACCOUNT_JSON", VALUE);
    p.edit("images.kdl", |s| {
        s.replace(
            "secret \"GOOGLE_APPLICATION_CREDENTIALS_JSON\" env=\"GCP_SERVICE_ACCOUNT_JSON\"",
            "secret \"GOOGLE_APPLICATION_CREDENTIALS_JSON\" file=\"config/gcp-key.json\"",
        )
    });
    let schemas = Schemas::load();
    for engine in ENGINES {
        let (text, docs) = export(&p, "images.kdl", engine, &["--all"]);
        assert!(!text.contains(VALUE), "{engine}: {text}");
        assert!(
            !text.contains("used"),
            "{engine}: the secret file's content"
        );
        schemas.check_export(engine, &docs);
        match engine {
            "github" => {
                assert!(text.contains("${{ secrets.HCLOUD_TOKEN }}"), "{text}");
                assert!(text.contains("${{ secrets.GOOGLE_APPLICATION_CREDENTIALS_JSON }}"));
                assert!(text.contains("FILE: config/gcp-key.json"), "{text}");
            }
            _ => {
                assert!(text.contains("key: HCLOUD_TOKEN"), "{text}");
                assert!(
                    text.contains("subPath: GOOGLE_APPLICATION_CREDENTIALS_JSON"),
                    "{text}"
                );
            }
        }
    }
    let (text, _) = export(&p, "images.kdl", "argo", &["--all"]);
    assert!(
        text.contains("mountPath: /src/config/gcp-key.json"),
        "{text}"
    );
}

/// Without --all only what the plan marks to run is exported, and an edge to a cached node is a
/// dependency already met; with nothing to do there is nothing to export.
#[test]
fn only_the_nodes_to_run_are_exported() {
    let p = local_example();
    let shared = tempfile::tempdir().unwrap();
    p.edit(F, |s| {
        s.replace(
            "bucket \"file://images\"",
            &format!("bucket \"file://{}\"", shared.path().display()),
        )
    });
    p.kiln(&[
        "-f",
        F,
        "build",
        "--quiet",
        "--cell",
        "local-flatcar-k8s-1.31",
    ])
    .expect_code(0);
    p.write("examples/local/files/motd", "changed\n");
    p.kiln(&[
        "-f",
        F,
        "build",
        "--quiet",
        "--cell",
        "local-ubuntu-2404-k8s-1.32",
    ])
    .expect_code(0);
    let (_, docs) = export(&p, F, "argo", &[]);
    let dag = export_dag("argo", &docs);
    // The flatcar 1.31 cell is cached but for the changed motd; the ubuntu 1.32 cell is built.
    let mut expected = graph_dag(&p, F);
    expected.retain(|id, _| !id.contains("ubuntu-2404/1.32"));
    assert_eq!(dag, expected);
    Schemas::load().check_export("argo", &docs);

    p.kiln(&["-f", F, "build", "--quiet"]).expect_code(0);
    let out = p.kiln(&["-f", F, "export", "tekton"]);
    out.expect_code(0);
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("No changes"), "{}", out.stderr);
    let bad = p.kiln(&["-f", F, "export", "github", "--template"]);
    bad.expect_code(2);
    assert!(
        bad.stderr
            .contains("--template makes an Argo WorkflowTemplate"),
        "{}",
        bad.stderr
    );
}

/// `-o FILE` writes the export there.
#[test]
fn an_export_goes_to_a_file() {
    let p = local_example();
    let out = p.kiln(&["-f", F, "export", "argo", "--all", "-o", "wf.yaml"]);
    out.expect_code(0);
    assert_eq!(out.stderr, "wrote 12 tasks to wf.yaml\n");
    let (stdout, _) = export(&p, F, "argo", &["--all"]);
    assert_eq!(p.read("wf.yaml"), stdout);
}
