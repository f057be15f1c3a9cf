//! What every engine's export is made of: one task per node, the edges between them, and each
//! task's retries, timeout, provider limit and secrets (by name only), built from the graph and
//! the plan. Everything is sorted, so the same graph gives the same export.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use crate::config::{SecretSource, StepKind};
use crate::graph::Graph;

/// Kubernetes names (DNS-1123 labels) are at most this long.
const NAME_MAX: usize = 63;

/// How long a task may take beyond its step's attempts: the checkout, and moving its inputs and
/// result through the remote cache.
pub const TASK_OVERHEAD: Duration = Duration::from_secs(15 * 60);

/// Where kiln reads one secret of a step from, in a task.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SecretRef {
    /// An environment variable of the task, from the engine's secret of that name.
    Env(String),
    /// A file kiln reads, at `path` (relative to the repository root), from the engine's
    /// secret `name` (the name the step sees).
    File { name: String, path: String },
}

impl SecretRef {
    /// The key of the engine's secret holding it.
    pub fn key(&self) -> &str {
        match self {
            SecretRef::Env(var) => var,
            SecretRef::File { name, .. } => name,
        }
    }
}

/// What a task runs with, apart from its node: tasks of one variant share a template.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Variant {
    pub provider: String,
    pub step: StepKind,
    pub retries: u32,
    pub timeout: Option<Duration>,
    /// The provider's `limit`, when this step has one.
    pub limit: Option<u32>,
    pub secrets: Vec<SecretRef>,
}

impl Variant {
    /// How long one attempt of the task may take: every attempt of the step, and the
    /// [`TASK_OVERHEAD`]; `None` when the step has no timeout.
    pub fn deadline(&self) -> Option<Duration> {
        self.timeout.map(|t| t * (self.retries + 1) + TASK_OVERHEAD)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// A DNS-1123 label, unique in the export.
    pub name: String,
    /// The node id `kiln run` takes.
    pub node: String,
    /// The names of the tasks it runs after, sorted.
    pub after: Vec<String>,
    /// How many tasks it waits on at most, one after another (0 for a task that waits on none).
    pub depth: usize,
    /// Its index in [`Export::variants`].
    pub variant: usize,
}

/// The graph as tasks, for any engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// By name.
    pub tasks: Vec<Task>,
    /// Sorted; each with its template name.
    pub variants: Vec<(String, Variant)>,
    /// The `limit` of each provider that has one (the smallest, when its steps differ).
    pub limits: BTreeMap<String, u32>,
}

/// Why a graph cannot be exported.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExportError {
    #[error(
        "the secret `{name}` of {node} is read from {path}, outside the repository; move the file into the repository or read the secret from env="
    )]
    SecretOutside {
        name: String,
        node: String,
        path: String,
    },
}

/// `s` as a DNS-1123 label: lowercase letters, digits and `-`, starting and ending with a
/// letter or digit, at most 63 characters (a long one ends with a hash of the whole).
pub fn dns_label(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let mut out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        out.push_str("node");
    }
    if out.len() > NAME_MAX {
        let hash = crate::hash::Digest::of_bytes(s.as_bytes()).to_hex();
        out.truncate(NAME_MAX - 9);
        out = format!("{}-{}", out.trim_end_matches('-'), &hash[..8]);
    }
    out
}

/// Makes `name` unique among `taken` with a `-2`, `-3`, … suffix (kept within 63 characters).
fn unique(name: String, taken: &mut BTreeSet<String>) -> String {
    let mut candidate = name.clone();
    let mut n = 2;
    while taken.contains(&candidate) {
        let suffix = format!("-{n}");
        let mut base = name.clone();
        base.truncate(NAME_MAX - suffix.len());
        candidate = format!("{}{suffix}", base.trim_end_matches('-'));
        n += 1;
    }
    taken.insert(candidate.clone());
    candidate
}

/// The export of `graph`: every node, or only those `todo` names (a set closed under
/// dependents, as a plan's nodes to run are: an edge to a node left out is a dependency already
/// in the cache). A secret file is named by its path relative to `repo` (or as written, when
/// relative).
pub fn build(
    graph: &Graph,
    todo: Option<&BTreeSet<String>>,
    repo: &Path,
) -> Result<Export, ExportError> {
    let mut ixs: Vec<_> = graph
        .order()
        .into_iter()
        .filter(|ix| todo.is_none_or(|t| t.contains(&graph.node(*ix).id)))
        .collect();
    // Depths in graph order (dependencies first).
    let mut depth: HashMap<_, usize> = HashMap::new();
    for &ix in &ixs {
        let d = graph
            .deps(ix)
            .filter_map(|d| depth.get(&d))
            .map(|d| d + 1)
            .max()
            .unwrap_or(0);
        depth.insert(ix, d);
    }
    ixs.sort_by(|a, b| graph.node(*a).id.cmp(&graph.node(*b).id));

    let mut taken = BTreeSet::new();
    let names: HashMap<_, String> = ixs
        .iter()
        .map(|&ix| (ix, unique(dns_label(&graph.node(ix).id), &mut taken)))
        .collect();

    let mut variants: BTreeSet<Variant> = BTreeSet::new();
    let mut of_node = HashMap::new();
    let mut limits: BTreeMap<String, u32> = BTreeMap::new();
    for &ix in &ixs {
        let n = graph.node(ix);
        let mut secrets = Vec::new();
        for s in n.secrets.iter() {
            secrets.push(match &s.source {
                SecretSource::Env(var) => SecretRef::Env(var.clone()),
                SecretSource::File(path) => {
                    let rel = if path.is_relative() {
                        Some(path.as_path())
                    } else {
                        path.strip_prefix(repo).ok()
                    };
                    let Some(rel) = rel.and_then(Path::to_str) else {
                        return Err(ExportError::SecretOutside {
                            name: s.name.clone(),
                            node: n.id.clone(),
                            path: path.display().to_string(),
                        });
                    };
                    SecretRef::File {
                        name: s.name.clone(),
                        path: rel.to_string(),
                    }
                }
            });
        }
        secrets.sort();
        secrets.dedup();
        if let Some(l) = n.policy.limit {
            let e = limits.entry(n.provider.to_string()).or_insert(l);
            *e = (*e).min(l);
        }
        let v = Variant {
            provider: n.provider.to_string(),
            step: n.step,
            retries: n.policy.retries.unwrap_or(0),
            timeout: n.policy.timeout,
            limit: n.policy.limit,
            secrets,
        };
        of_node.insert(ix, v.clone());
        variants.insert(v);
    }
    let mut taken = BTreeSet::new();
    let variants: Vec<(String, Variant)> = variants
        .into_iter()
        .map(|v| {
            let base = dns_label(&format!("{}-{}", v.provider, v.step.as_str()));
            (unique(base, &mut taken), v)
        })
        .collect();
    let tasks = ixs
        .iter()
        .map(|&ix| {
            let mut after: Vec<String> = graph
                .deps(ix)
                .filter_map(|d| names.get(&d).cloned())
                .collect();
            after.sort();
            after.dedup();
            Task {
                name: names[&ix].clone(),
                node: graph.node(ix).id.clone(),
                after,
                depth: depth[&ix],
                variant: variants
                    .iter()
                    .position(|(_, v)| *v == of_node[&ix])
                    .expect("every node's variant is listed"),
            }
        })
        .collect();
    Ok(Export {
        tasks,
        variants,
        limits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_are_valid_and_short() {
        assert_eq!(
            dns_label("aws/ubuntu-2404/1.31/build"),
            "aws-ubuntu-2404-1-31-build"
        );
        assert_eq!(dns_label("--A__b--"), "a-b");
        assert_eq!(dns_label("///"), "node");
        let long = dns_label(&"x".repeat(100));
        assert_eq!(long.len(), 63);
        assert_ne!(long, dns_label(&"x".repeat(101)));
        let mut taken = BTreeSet::new();
        assert_eq!(unique("a".into(), &mut taken), "a");
        assert_eq!(unique("a".into(), &mut taken), "a-2");
        assert_eq!(unique("a".into(), &mut taken), "a-3");
        let l = "y".repeat(63);
        assert_eq!(unique(l.clone(), &mut taken), l);
        assert_eq!(unique(l.clone(), &mut taken).len(), 63);
    }
}
