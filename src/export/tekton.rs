//! Tekton (`tekton.dev/v1`): a `Task` per [`Variant`] that checks the repository out and runs
//! `kiln run $(params.node)`, a `Pipeline` with a task per node (`runAfter` the graph's edges,
//! with `retries` and `timeout`), and a `PipelineRun` of it. Tekton has no semaphore: the
//! per-provider limits are not exported (see the README).

use serde_json::{Value, json};

use super::{Export, Options, go_duration, k8s_container, k8s_volumes, parameters, run_args};

/// Where the repository is checked out in a task's steps.
pub const SOURCE: &str = "/workspace/src";

fn labels() -> Value {
    json!({"app.kubernetes.io/managed-by": "kiln"})
}

pub fn documents(x: &Export, o: &Options) -> Vec<Value> {
    let params = parameters(o);
    let mut docs = Vec::new();
    let param = |p: &str| format!("$(params.{p})");
    for (name, v) in &x.variants {
        let mut task_params =
            vec![json!({"name": "node", "type": "string", "description": "the node id"})];
        task_params.extend(
            params
                .iter()
                .map(|(p, _, what)| json!({"name": p, "type": "string", "description": what})),
        );
        let mut run = serde_json::Map::new();
        run.insert("name".into(), json!("run"));
        run.insert("image".into(), json!(o.image));
        run.insert("workingDir".into(), json!(SOURCE));
        run.insert("command".into(), json!(["kiln"]));
        run.insert("args".into(), run_args(&param("config"), &param("node")));
        run.extend(k8s_container(v, SOURCE, &param, "$(context.taskRun.name)"));
        docs.push(json!({
            "apiVersion": "tekton.dev/v1",
            "kind": "Task",
            "metadata": {"name": format!("kiln-{name}"), "labels": labels()},
            "spec": {
                "params": task_params,
                "volumes": k8s_volumes(&[v]),
                "steps": [
                    {
                        "name": "clone",
                        "image": o.image,
                        "command": ["git", "clone", "--quiet", param("repo"), SOURCE],
                    },
                    {
                        "name": "checkout",
                        "image": o.image,
                        "workingDir": SOURCE,
                        "command": ["git", "checkout", "--quiet", param("revision")],
                    },
                    run,
                ],
            },
        }));
    }
    let tasks: Vec<Value> = x
        .tasks
        .iter()
        .map(|t| {
            let v = &x.variants[t.variant];
            let mut pass = vec![json!({"name": "node", "value": t.node})];
            pass.extend(
                params
                    .iter()
                    .map(|(p, _, _)| json!({"name": p, "value": param(p)})),
            );
            let mut task = json!({
                "name": t.name,
                "taskRef": {"name": format!("kiln-{}", v.0)},
                "params": pass,
            });
            if !t.after.is_empty() {
                task["runAfter"] = json!(t.after);
            }
            if v.1.retries > 0 {
                task["retries"] = json!(v.1.retries);
            }
            if let Some(d) = v.1.deadline() {
                task["timeout"] = json!(go_duration(d));
            }
            task
        })
        .collect();
    let pipeline_params: Vec<Value> = params
        .iter()
        .map(|(p, default, what)| {
            let mut v = json!({"name": p, "type": "string", "description": what});
            if let Some(d) = default {
                v["default"] = json!(d);
            }
            v
        })
        .collect();
    docs.push(json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "Pipeline",
        "metadata": {"name": "kiln", "labels": labels()},
        "spec": {"params": pipeline_params, "tasks": tasks},
    }));
    let mut run = json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": {"generateName": "kiln-", "labels": labels()},
        "spec": {
            "pipelineRef": {"name": "kiln"},
            // A build of the whole graph takes as long as it takes: every task has its own.
            "timeouts": {"pipeline": "0h0m0s"},
        },
    });
    if let Some(repo) = &o.repo {
        run["spec"]["params"] = json!([{"name": "repo", "value": repo}]);
    }
    docs.push(run);
    docs
}
