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

/// One run of one task of an Argo workflow, as the stand-in controller saw it.
#[derive(Debug)]
struct Attempt {
    task: String,
    node: String,
    code: i32,
    stdout: String,
    stderr: String,
}

/// What a workflow run gets from the cluster: its parameters, the Kubernetes Secrets by name,
/// a fresh checkout of the repository for every pod, and a fault to inject into a task's first
/// attempt (made before it, cleared after it).
struct Cluster<'a> {
    params: BTreeMap<String, String>,
    secrets: BTreeMap<String, BTreeMap<String, String>>,
    checkout: &'a (dyn Fn() -> Project + Sync),
    fault: Option<(&'a str, &'a (dyn Fn(bool) + Sync))>,
}

/// Replaces Argo's `{{…}}` expressions the templates use.
fn substitute(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = s.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    assert!(
        !out.contains("{{"),
        "an expression the stand-in does not know: {out}"
    );
    out
}

/// Runs one attempt of `task` the way its pod would: a fresh checkout at the template's
/// `workingDir`, only the container's environment (values, `secretKeyRef`s, `envFrom`), the
/// Secret volumes mounted (under the pod's own directory), and its command and arguments.
fn run_pod(wf: &Value, task: &Value, attempt: u32, c: &Cluster) -> Attempt {
    let spec = &wf["spec"];
    let template = spec["templates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == task["template"])
        .unwrap();
    let name = task["name"].as_str().unwrap().to_string();
    let node = node_param(&task["arguments"]["parameters"]);
    let mut vars: BTreeMap<String, String> = c
        .params
        .iter()
        .map(|(k, v)| (format!("workflow.parameters.{k}"), v.clone()))
        .collect();
    vars.insert("inputs.parameters.node".into(), node.clone());
    vars.insert("pod.name".into(), format!("{name}-{attempt}"));
    let container = &template["container"];
    let checkout = (c.checkout)();
    let pod = tempfile::tempdir().unwrap();
    let source = template["inputs"]["artifacts"][0]["path"].as_str().unwrap();
    assert_eq!(container["workingDir"], source);
    // A path in the container, on this machine: the checkout, or the pod's own directory.
    let host = |p: &str| -> PathBuf {
        match p.strip_prefix(source) {
            Some(rest) => checkout.path().join(rest.trim_start_matches('/')),
            None => pod.path().join(p.trim_start_matches('/')),
        }
    };
    let secret = |name: &str| c.secrets.get(name);
    for m in container["volumeMounts"].as_array().unwrap() {
        let volume = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap();
        let secret_name = volume["secret"]["secretName"].as_str().unwrap();
        let keys = secret(secret_name).unwrap_or_else(|| panic!("no Secret {secret_name}"));
        let at = host(m["mountPath"].as_str().unwrap());
        match m["subPath"].as_str() {
            Some(key) => {
                std::fs::create_dir_all(at.parent().unwrap()).unwrap();
                std::fs::write(&at, &keys[key]).unwrap();
            }
            None => {
                std::fs::create_dir_all(&at).unwrap();
                for (k, v) in keys {
                    std::fs::write(at.join(k), v).unwrap();
                }
            }
        }
    }
    let mut env = BTreeMap::new();
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let r = &from["secretRef"];
        match secret(r["name"].as_str().unwrap()) {
            Some(keys) => env.extend(keys.clone()),
            None => assert_eq!(r["optional"], true, "{r}"),
        }
    }
    for e in container["env"].as_array().unwrap() {
        let value = match e.get("value") {
            Some(v) => substitute(v.as_str().unwrap(), &vars),
            None => {
                let r = &e["valueFrom"]["secretKeyRef"];
                secret(r["name"].as_str().unwrap()).unwrap()[r["key"].as_str().unwrap()].clone()
            }
        };
        // A file a mount provides: where it is on this machine.
        let value = if value.starts_with('/') {
            host(&value).to_string_lossy().into_owned()
        } else {
            value
        };
        env.insert(e["name"].as_str().unwrap().to_string(), value);
    }
    assert_eq!(container["command"], serde_json::json!(["kiln"]));
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| substitute(a.as_str().unwrap(), &vars))
        .collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(&args)
        .current_dir(checkout.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .envs(&env)
        .output()
        .unwrap();
    Attempt {
        task: name,
        node,
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// A stand-in for Argo's controller: runs the workflow's DAG, each task once its dependencies
/// succeeded, `parallel` pods at a time, retrying a failed task as its template's
/// `retryStrategy` allows. Returns every attempt in the order they ended, and the most pods
/// that ran at once. Panics if a task fails for good.
fn run_workflow(wf: &Value, c: &Cluster, parallel: usize) -> (Vec<Attempt>, usize) {
    let dag = &wf["spec"]["templates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == wf["spec"]["entrypoint"])
        .unwrap()["dag"]["tasks"];
    let tasks: BTreeMap<String, &Value> = dag
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_string(), t))
        .collect();
    let limit = |t: &Value| -> u32 {
        let template = wf["spec"]["templates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == t["template"])
            .unwrap();
        template["retryStrategy"]["limit"]
            .as_str()
            .map_or(0, |l| l.parse().unwrap())
    };
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut started: BTreeMap<String, u32> = BTreeMap::new();
    let mut attempts = Vec::new();
    let mut most = 0;
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel::<(Attempt, u32)>();
        let mut running = 0;
        loop {
            let ready: Vec<&String> = tasks
                .iter()
                .filter(|(n, t)| {
                    !done.contains(*n)
                        && !started.contains_key(*n)
                        && strings(&t["dependencies"]).iter().all(|d| done.contains(d))
                })
                .map(|(n, _)| n)
                .collect();
            for name in ready {
                if running == parallel {
                    break;
                }
                let attempt = 1;
                started.insert(name.clone(), attempt);
                running += 1;
                let (tx, task) = (tx.clone(), tasks[name]);
                s.spawn(move || pod(wf, task, attempt, c, &tx));
            }
            most = most.max(running);
            if running == 0 {
                break;
            }
            let (a, attempt) = rx.recv().unwrap();
            running -= 1;
            let task = tasks[&a.task];
            if a.code == 0 {
                done.insert(a.task.clone());
            } else if attempt <= limit(task) {
                // The retry: a new pod.
                started.insert(a.task.clone(), attempt + 1);
                running += 1;
                let tx = tx.clone();
                s.spawn(move || pod(wf, task, attempt + 1, c, &tx));
                most = most.max(running);
            } else {
                panic!(
                    "task {} failed after {attempt} attempts:\n{}{}",
                    a.task, a.stdout, a.stderr
                );
            }
            attempts.push(a);
        }
    });
    assert_eq!(done.len(), tasks.len(), "tasks never started");
    (attempts, most)
}

/// One pod: the injected fault around the first attempt of its task, then the run.
fn pod(
    wf: &Value,
    task: &Value,
    attempt: u32,
    c: &Cluster,
    tx: &std::sync::mpsc::Sender<(Attempt, u32)>,
) {
    let fault = c
        .fault
        .filter(|(t, _)| task["name"] == *t && attempt == 1)
        .map(|(_, f)| f);
    if let Some(f) = fault {
        f(true);
    }
    let a = run_pod(wf, task, attempt, c);
    if let Some(f) = fault {
        f(false);
    }
    tx.send((a, attempt)).unwrap();
}

/// The `N built, M cached` line of a `kiln run`.
fn built(a: &Attempt) -> usize {
    let line = a.stdout.lines().last().unwrap_or_default();
    line.split(" built")
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{} printed no summary:\n{}{}", a.node, a.stdout, a.stderr))
}

/// The exported Argo workflow of the local example, run by a stand-in for Argo's controller: a
/// pod per task with its own empty cache, four at a time, sharing only the remote cache in moto
/// and the publish bucket. The first attempt of one publish fails (the bucket refuses the
/// image) and the retry from its `retryStrategy` publishes it. Every node is built exactly once,
/// every image published once, and the whole workflow run again builds and publishes nothing.
#[test]
fn the_argo_workflow_runs_task_by_task_against_a_shared_remote() {
    let m = crate::s3::moto_without_auth().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let bucket = shared.path().join("bucket");
    let checkout = || {
        let p = local_example();
        p.edit(F, |s| {
            s.replace(
                "bucket \"file://images\"",
                &format!("bucket \"file://{}\"", bucket.display()),
            )
            .replace(
                "provider \"local\" {",
                "provider \"local\" {\n    retries 1",
            )
        });
        p
    };
    let repo = checkout();
    let keyfile = repo.path().join("ci.key");
    repo.kiln(&["cache", "keygen", "argo", "-o", &keyfile.to_string_lossy()])
        .expect_code(0);
    let (_, docs) = export(&repo, F, "argo", &["--all"]);
    let wf = kind(&docs, "Workflow");
    Schemas::load().check_export("argo", &docs);
    let params: BTreeMap<String, String> = wf["spec"]["arguments"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_string(),
                p["value"].as_str()?.to_string(),
            ))
        })
        .chain([(
            "remote-cache".to_string(),
            format!("s3://{}/argo", crate::s3::BUCKET),
        )])
        .collect();
    let remote_creds: BTreeMap<String, String> = [
        ("AWS_ACCESS_KEY_ID", m.key_id.clone()),
        ("AWS_SECRET_ACCESS_KEY", m.secret.clone()),
        ("AWS_ENDPOINT_URL", m.endpoint()),
        ("AWS_REGION", "us-east-1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let secrets = BTreeMap::from([
        ("kiln-remote-cache".to_string(), remote_creds),
        (
            "kiln-signing-key".to_string(),
            BTreeMap::from([(
                "key".to_string(),
                std::fs::read_to_string(&keyfile).unwrap(),
            )]),
        ),
    ]);
    let faulty = "local-ubuntu-2404-1-32-publish";
    let in_the_way = bucket.join("local-ubuntu-2404-k8s-1.32.qcow2");
    let fault = |on: bool| {
        if on {
            std::fs::create_dir_all(&in_the_way).unwrap();
        } else {
            std::fs::remove_dir(&in_the_way).unwrap();
        }
    };
    let cluster = Cluster {
        params: params.clone(),
        secrets: secrets.clone(),
        checkout: &checkout,
        fault: Some((faulty, &fault)),
    };
    let graph = graph_dag(&repo, F);
    let (attempts, most) = run_workflow(wf, &cluster, 4);
    assert_eq!(most, 4, "the four builds run at once");
    let failed: Vec<&Attempt> = attempts.iter().filter(|a| a.code != 0).collect();
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert_eq!(failed[0].task, faulty);
    assert!(
        failed[0].stderr.contains("Is a directory"),
        "{}",
        failed[0].stderr
    );
    assert_eq!(attempts.len(), graph.len() + 1);
    // Every node built once, by its own task; what it reads came from the remote.
    for a in attempts.iter().filter(|a| a.code == 0) {
        assert_eq!(built(a), 1, "{}: {}{}", a.node, a.stdout, a.stderr);
        assert!(!a.stderr.contains("warning"), "{}: {}", a.node, a.stderr);
        for s in [&m.secret, &m.key_id] {
            assert!(!a.stdout.contains(s.as_str()) && !a.stderr.contains(s.as_str()));
        }
    }
    let records = m.list("argo/ac").len();
    assert_eq!(records, graph.len());
    assert!(m.list("argo/claims").is_empty(), "a claim was left behind");
    let published = |bucket: &std::path::Path| -> BTreeMap<String, (u64, i64, i64)> {
        use std::os::unix::fs::MetadataExt;
        std::fs::read_dir(bucket)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let md = e.metadata().unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    (md.ino(), md.mtime(), md.mtime_nsec()),
                )
            })
            .collect()
    };
    let images = published(&bucket);
    assert_eq!(images.len(), 8, "{images:?}");

    // Again: every task finds its node in the remote, and nothing is built or published.
    let cluster = Cluster {
        params,
        secrets,
        checkout: &checkout,
        fault: None,
    };
    let (again, _) = run_workflow(wf, &cluster, 4);
    assert_eq!(again.len(), graph.len());
    for a in &again {
        assert_eq!(a.code, 0, "{}", a.stderr);
        assert_eq!(built(a), 0, "{}: {}{}", a.node, a.stdout, a.stderr);
    }
    assert_eq!(published(&bucket), images, "an image was published again");
    assert_eq!(m.list("argo/ac").len(), records);
}
