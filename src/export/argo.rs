//! Argo Workflows: a `Workflow` (or `WorkflowTemplate`) whose `dag` has a task per node, each
//! running `kiln run` with the node as its argument `node`; a template per [`Variant`] holds
//! the retries, deadline, secrets and the provider's semaphore, whose ConfigMap comes first.

use serde_json::{Value, json};

use super::{Export, LIMITS, Options, k8s_container, k8s_volumes, parameters, run_args};

/// Where the repository is checked out in a task's container.
pub const SOURCE: &str = "/src";

pub fn documents(x: &Export, o: &Options) -> Vec<Value> {
    let mut docs = Vec::new();
    if !x.limits.is_empty() {
        let data: serde_json::Map<String, Value> = x
            .limits
            .iter()
            .map(|(p, l)| (p.clone(), Value::String(l.to_string())))
            .collect();
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": LIMITS, "labels": {"app.kubernetes.io/managed-by": "kiln"}},
            "data": data,
        }));
    }
    let tasks: Vec<Value> = x
        .tasks
        .iter()
        .map(|t| {
            let mut task = json!({
                "name": t.name,
                "template": x.variants[t.variant].0,
                "arguments": {"parameters": [{"name": "node", "value": t.node}]},
            });
            if !t.after.is_empty() {
                task["dependencies"] = json!(t.after);
            }
            task
        })
        .collect();
    let mut templates = vec![json!({"name": "graph", "dag": {"tasks": tasks}})];
    let param = |p: &str| format!("{{{{workflow.parameters.{p}}}}}");
    for (name, v) in &x.variants {
        let mut c = serde_json::Map::new();
        c.insert("image".into(), json!(o.image));
        c.insert("command".into(), json!(["kiln"]));
        c.insert(
            "args".into(),
            run_args(&param("config"), "{{inputs.parameters.node}}"),
        );
        c.insert("workingDir".into(), json!(SOURCE));
        c.extend(k8s_container(v, SOURCE, &param, "{{pod.name}}"));
        let mut t = json!({
            "name": name,
            "inputs": {
                "parameters": [{"name": "node"}],
                "artifacts": [{
                    "name": "source",
                    "path": SOURCE,
                    "git": {"repo": param("repo"), "revision": param("revision")},
                }],
            },
            "container": c,
        });
        if v.retries > 0 {
            t["retryStrategy"] = json!({"limit": v.retries.to_string(), "retryPolicy": "Always"});
        }
        if let Some(d) = v.deadline() {
            t["activeDeadlineSeconds"] = json!(d.as_secs().to_string());
        }
        if v.limit.is_some() {
            t["synchronization"] = json!({
                "semaphores": [{"configMapKeyRef": {"name": LIMITS, "key": v.provider}}],
            });
        }
        templates.push(t);
    }
    let params: Vec<Value> = parameters(o)
        .into_iter()
        .map(|(name, value, what)| {
            let mut p = json!({"name": name, "description": what});
            if let Some(v) = value {
                p["value"] = json!(v);
            }
            p
        })
        .collect();
    let variants: Vec<_> = x.variants.iter().map(|(_, v)| v).collect();
    let metadata = if o.template {
        json!({"name": "kiln", "labels": {"app.kubernetes.io/managed-by": "kiln"}})
    } else {
        json!({"generateName": "kiln-", "labels": {"app.kubernetes.io/managed-by": "kiln"}})
    };
    docs.push(json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": if o.template { "WorkflowTemplate" } else { "Workflow" },
        "metadata": metadata,
        "spec": {
            "entrypoint": "graph",
            "arguments": {"parameters": params},
            "volumes": k8s_volumes(&variants),
            "templates": templates,
        },
    }));
    docs
}
