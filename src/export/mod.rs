//! The graph as workflow documents for engines that schedule it across machines: Argo
//! Workflows, Tekton and GitHub Actions. Each task runs `kiln run NODE` against the shared
//! remote cache, the only state tasks share. Pure: the same graph and options give the same
//! bytes.

pub mod argo;
pub mod github;
pub mod model;
pub mod tekton;

use serde_json::{Value, json};

pub use model::{Export, ExportError, SecretRef, Task, Variant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// An Argo Workflows `Workflow` (or `WorkflowTemplate`), with the ConfigMap of its limits.
    Argo,
    /// A Tekton `Pipeline`, its `Task`s and a `PipelineRun`.
    Tekton,
    /// A GitHub Actions workflow.
    Github,
}

/// What the documents say besides the graph.
#[derive(Debug, Clone)]
pub struct Options {
    /// The container image of the tasks.
    pub image: String,
    /// Argo: a `WorkflowTemplate` instead of a `Workflow`.
    pub template: bool,
    /// The git repository the tasks check out (a parameter to give when submitting if `None`).
    pub repo: Option<String>,
    /// The config file, relative to the repository root.
    pub config: String,
    /// The remote cache URL, when the config or the command line names one.
    pub remote_cache: Option<String>,
}

/// The engine's documents for `export`, as YAML.
pub fn render(engine: Engine, export: &Export, o: &Options) -> String {
    let (docs, what) = match engine {
        Engine::Argo => (argo::documents(export, o), "argo"),
        Engine::Tekton => (tekton::documents(export, o), "tekton"),
        Engine::Github => (github::documents(export, o), "github"),
    };
    let mut out = format!(
        "# Made by `kiln export {what}` from {}: {} tasks. Export again after changing the config.\n",
        o.config,
        export.tasks.len()
    );
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_norway::to_string(d).expect("a JSON value is YAML"));
    }
    out
}

/// The Kubernetes Secret holding the steps' secrets, one key per variable (or secret file).
pub const STEP_SECRETS: &str = "kiln-secrets";
/// The Kubernetes Secret holding the signing key, as its key `key`.
pub const SIGNING_SECRET: &str = "kiln-signing-key";
/// The optional Kubernetes Secret whose keys are the remote cache's credentials
/// (`AWS_ACCESS_KEY_ID`, …), all passed as variables.
pub const REMOTE_SECRET: &str = "kiln-remote-cache";
/// The ConfigMap of the per-provider limits (Argo semaphores).
pub const LIMITS: &str = "kiln-limits";
const SIGNING_DIR: &str = "/etc/kiln/signing-key";

/// `kiln -f CONFIG run NODE`, as a container's arguments.
fn run_args(config: &str, node: &str) -> Value {
    json!(["-f", config, "run", node, "--progress", "plain"])
}

/// A Kubernetes container's `env`, `envFrom` and `volumeMounts` for a task of `v`, with the
/// checkout at `workdir`; `param` spells a workflow parameter in the engine's syntax.
fn k8s_container(
    v: &Variant,
    workdir: &str,
    param: &dyn Fn(&str) -> String,
    runner: &str,
) -> serde_json::Map<String, Value> {
    let mut env = vec![
        json!({"name": "KILN_REMOTE_CACHE", "value": param("remote-cache")}),
        json!({"name": "KILN_TRUSTED_KEYS", "value": param("trusted-keys")}),
        json!({"name": "KILN_SIGNING_KEY", "value": format!("{SIGNING_DIR}/key")}),
        json!({"name": "KILN_RUNNER_NAME", "value": runner}),
    ];
    let mut mounts =
        vec![json!({"name": "signing-key", "mountPath": SIGNING_DIR, "readOnly": true})];
    for s in &v.secrets {
        match s {
            SecretRef::Env(var) => env.push(json!({
                "name": var,
                "valueFrom": {"secretKeyRef": {"name": STEP_SECRETS, "key": var}},
            })),
            SecretRef::File { name, path } => mounts.push(json!({
                "name": "secret-files",
                "mountPath": format!("{workdir}/{path}"),
                "subPath": name,
                "readOnly": true,
            })),
        }
    }
    let mut c = serde_json::Map::new();
    c.insert("env".into(), Value::Array(env));
    c.insert(
        "envFrom".into(),
        json!([{"secretRef": {"name": REMOTE_SECRET, "optional": true}}]),
    );
    c.insert("volumeMounts".into(), Value::Array(mounts));
    c
}

/// The volumes the containers of `export` mount: the signing key, and the secret files.
fn k8s_volumes(variants: &[&Variant]) -> Value {
    let mut volumes =
        vec![json!({"name": "signing-key", "secret": {"secretName": SIGNING_SECRET}})];
    let files = variants.iter().any(|v| {
        v.secrets
            .iter()
            .any(|s| matches!(s, SecretRef::File { .. }))
    });
    if files {
        volumes.push(json!({"name": "secret-files", "secret": {"secretName": STEP_SECRETS}}));
    }
    Value::Array(volumes)
}

/// A duration as Go and Kubernetes write it: `3h0m0s`.
fn go_duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    format!("{}h{}m{}s", s / 3600, s / 60 % 60, s % 60)
}

/// The parameters every workflow takes: name, default (none: it must be given) and what it is.
fn parameters(o: &Options) -> Vec<(&'static str, Option<String>, &'static str)> {
    vec![
        (
            "repo",
            o.repo.clone(),
            "the git repository holding the config",
        ),
        ("revision", Some("HEAD".into()), "the commit to build"),
        (
            "config",
            Some(o.config.clone()),
            "the config file, in the repository",
        ),
        (
            "remote-cache",
            Some(o.remote_cache.clone().unwrap_or_default()),
            "the remote cache URL (empty: the config's remote-cache)",
        ),
        (
            "trusted-keys",
            Some(String::new()),
            "more public keys to trust, separated by spaces",
        ),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_as_go_writes_them() {
        use std::time::Duration;
        assert_eq!(super::go_duration(Duration::from_secs(3 * 3600)), "3h0m0s");
        assert_eq!(super::go_duration(Duration::from_secs(5430)), "1h30m30s");
    }
}
