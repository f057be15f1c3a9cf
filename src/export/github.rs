//! GitHub Actions: a `plan` job that plans against the remote cache and says, for every group
//! of nodes, which of them still have to run; then a job per group — the nodes of one provider
//! at one depth of the graph, at most [`MATRIX_MAX`] of them — whose matrix, read with
//! `fromJSON` from the plan job, runs `kiln run` once per node. A group runs after the groups
//! holding its nodes' dependencies. Secrets come from the repository's secrets by name; pull
//! requests run without the signing key, so they write nothing.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::{Export, Options, SecretRef, Task};

/// At most this many nodes in one job's matrix (GitHub allows 256 jobs per matrix).
pub const MATRIX_MAX: usize = 255;

/// The plan job writes each group's matrix with this filter: the group's nodes that the plan
/// does not find cached.
const TODO_FILTER: &str = r#"[.nodes[] | select(.action != "cached") | .id] as $todo | {include: [$nodes[] | select(.node as $n | any($todo[]; . == $n))]}"#;

/// A job id (and output name): letters, digits and `_`.
fn ident(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The groups of tasks, by job id: (depth, provider) in order, chunked.
fn groups(x: &Export) -> Vec<(String, Vec<&Task>)> {
    let mut by: BTreeMap<(usize, &str), Vec<&Task>> = BTreeMap::new();
    for t in &x.tasks {
        by.entry((t.depth, &x.variants[t.variant].1.provider))
            .or_default()
            .push(t);
    }
    let mut out = Vec::new();
    for ((depth, provider), tasks) in by {
        let chunks: Vec<&[&Task]> = tasks.chunks(MATRIX_MAX).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut id = format!("w{}_{}", depth + 1, ident(provider));
            if chunks.len() > 1 {
                id.push_str(&format!("_{}", i + 1));
            }
            out.push((id, chunk.to_vec()));
        }
    }
    out
}

/// The variables the remote cache's client reads, for the scheme of `url` (S3's when unknown).
fn remote_env(url: Option<&str>) -> Vec<(&'static str, &'static str)> {
    let scheme = url.and_then(|u| u.split_once("://")).map(|(s, _)| s);
    match scheme {
        Some("file") => vec![],
        Some("gs") => vec![("GOOGLE_SERVICE_ACCOUNT_KEY", "secrets")],
        Some("az" | "azure" | "abfs" | "abfss") => vec![
            ("AZURE_STORAGE_ACCOUNT_NAME", "vars"),
            ("AZURE_STORAGE_ACCOUNT_KEY", "secrets"),
        ],
        _ => vec![
            ("AWS_ACCESS_KEY_ID", "secrets"),
            ("AWS_SECRET_ACCESS_KEY", "secrets"),
            ("AWS_REGION", "vars"),
            ("AWS_ENDPOINT_URL", "vars"),
        ],
    }
}

fn checkout() -> Value {
    json!({"uses": "actions/checkout@v4"})
}

pub fn documents(x: &Export, o: &Options) -> Vec<Value> {
    let groups = groups(x);
    let group_of: BTreeMap<&str, &str> = groups
        .iter()
        .flat_map(|(id, tasks)| tasks.iter().map(move |t| (t.name.as_str(), id.as_str())))
        .collect();
    let node_of: BTreeMap<&str, &str> = x
        .tasks
        .iter()
        .map(|t| (t.name.as_str(), t.node.as_str()))
        .collect();

    let mut env = serde_json::Map::new();
    env.insert("KILN_CONFIG".into(), json!(o.config));
    env.insert(
        "KILN_REMOTE_CACHE".into(),
        json!("${{ secrets.KILN_REMOTE_CACHE }}"),
    );
    env.insert(
        "KILN_TRUSTED_KEYS".into(),
        json!("${{ vars.KILN_TRUSTED_KEYS }}"),
    );
    for (name, from) in remote_env(o.remote_cache.as_deref()) {
        env.insert(name.into(), json!(format!("${{{{ {from}.{name} }}}}")));
    }

    let mut jobs = serde_json::Map::new();
    // The plan job: which nodes of each group still have to run.
    let mut plan_env = serde_json::Map::new();
    let mut script = vec![
        "kiln -f \"$KILN_CONFIG\" plan --json > \"$RUNNER_TEMP/plan.json\"".to_string(),
        format!(
            "todo() {{ jq -c --argjson nodes \"$1\" '{TODO_FILTER}' \"$RUNNER_TEMP/plan.json\"; }}"
        ),
    ];
    let mut outputs = serde_json::Map::new();
    for (id, tasks) in &groups {
        let entries: Vec<Value> = tasks
            .iter()
            .map(|t| {
                let after: Vec<&str> = t.after.iter().map(|a| node_of[a.as_str()]).collect();
                json!({
                    "node": t.node,
                    "step": x.variants[t.variant].1.step.as_str(),
                    "after": after,
                })
            })
            .collect();
        plan_env.insert(
            format!("NODES_{id}"),
            json!(serde_json::to_string(&entries).expect("JSON")),
        );
        script.push(format!(
            "echo \"{id}=$(todo \"$NODES_{id}\")\" >> \"$GITHUB_OUTPUT\""
        ));
        outputs.insert(
            id.clone(),
            json!(format!("${{{{ steps.todo.outputs.{id} }}}}")),
        );
    }
    jobs.insert(
        "plan".into(),
        json!({
            "runs-on": "ubuntu-latest",
            "container": {"image": o.image},
            "outputs": outputs,
            "steps": [
                checkout(),
                {
                    "id": "todo",
                    "name": "What still has to run",
                    "shell": "bash",
                    "env": plan_env,
                    "run": script.join("\n") + "\n",
                },
            ],
        }),
    );

    for (id, tasks) in &groups {
        let mut needs: BTreeSet<&str> = BTreeSet::new();
        for t in tasks {
            for a in &t.after {
                needs.insert(group_of[a.as_str()]);
            }
        }
        let mut needs: Vec<&str> = needs.into_iter().collect();
        needs.insert(0, "plan");
        let variants: Vec<&super::Variant> = {
            let ix: BTreeSet<usize> = tasks.iter().map(|t| t.variant).collect();
            ix.into_iter().map(|i| &x.variants[i].1).collect()
        };
        let secrets: BTreeSet<&SecretRef> = variants.iter().flat_map(|v| &v.secrets).collect();
        let mut job_env = serde_json::Map::new();
        let mut steps = vec![checkout()];
        steps.push(json!({
            "name": "Signing key (not on pull requests)",
            "if": "github.event_name != 'pull_request'",
            "shell": "bash",
            "env": {"KEY": "${{ secrets.KILN_SIGNING_KEY }}"},
            "run": "umask 077\nprintf '%s\\n' \"$KEY\" > \"$RUNNER_TEMP/kiln.key\"\necho \"KILN_SIGNING_KEY=$RUNNER_TEMP/kiln.key\" >> \"$GITHUB_ENV\"\n",
        }));
        for s in &secrets {
            match s {
                SecretRef::Env(var) => {
                    job_env.insert(var.clone(), json!(format!("${{{{ secrets.{var} }}}}")));
                }
                SecretRef::File { name, path } => steps.push(json!({
                    "name": format!("Secret {name}"),
                    "shell": "bash",
                    "env": {"VALUE": format!("${{{{ secrets.{name} }}}}"), "FILE": path},
                    "run": "umask 077\nmkdir -p \"$(dirname \"$FILE\")\"\nprintf '%s\\n' \"$VALUE\" > \"$FILE\"\n",
                })),
            }
        }
        steps.push(json!({
            "name": "kiln run ${{ matrix.node }}",
            "if": "github.event_name != 'pull_request' || matrix.step != 'publish'",
            "shell": "bash",
            "env": {
                "NODE": "${{ matrix.node }}",
                "KILN_RUNNER_NAME": "github-${{ github.run_id }}-${{ github.run_attempt }}-${{ github.job }}-${{ strategy.job-index }}",
                // A pull request writes nothing: what a task needs, it builds itself.
                "WITH_DEPS": "${{ github.event_name == 'pull_request' && '--with-deps' || '' }}",
            },
            "run": "kiln -f \"$KILN_CONFIG\" run \"$NODE\" --progress plain $WITH_DEPS\n",
        }));
        let provider = &variants[0].provider;
        let mut strategy = json!({
            "fail-fast": false,
            "matrix": format!("${{{{ fromJSON(needs.plan.outputs.{id}) }}}}"),
        });
        if let Some(l) = x.limits.get(provider) {
            strategy["max-parallel"] = json!(l);
        }
        let mut job = json!({
            "name": "${{ matrix.node }}",
            "needs": needs,
            "if": format!(
                "${{{{ !cancelled() && !contains(needs.*.result, 'failure') && fromJSON(needs.plan.outputs.{id}).include[0] != null }}}}"
            ),
            "runs-on": "ubuntu-latest",
            "container": {"image": o.image},
            "strategy": strategy,
        });
        if let Some(d) = variants.iter().filter_map(|v| v.deadline()).max() {
            job["timeout-minutes"] = json!(d.as_secs().div_ceil(60));
        }
        if !job_env.is_empty() {
            job["env"] = Value::Object(job_env);
        }
        job["steps"] = Value::Array(steps);
        jobs.insert(id.clone(), job);
    }
    vec![json!({
        "name": "kiln",
        "on": {"push": null, "pull_request": null, "workflow_dispatch": null},
        "permissions": {"contents": "read"},
        "env": env,
        "jobs": jobs,
    })]
}
