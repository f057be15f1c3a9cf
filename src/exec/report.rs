//! What a build did, node by node: the outcome of each node and the summary line.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use petgraph::graph::NodeIndex;

use crate::graph::Graph;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Cached,
    Built,
    /// Upstream rebuilt with identical outputs, so this node's previous result was reused.
    Cutoff,
    Failed(String),
    /// Not run because an upstream node failed.
    Skipped {
        failed_dep: String,
    },
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct NodeReport {
    pub id: String,
    pub outcome: Outcome,
    pub attempts: u32,
    pub log: Option<PathBuf>,
    pub duration: Duration,
}

#[derive(Debug, Default)]
pub struct BuildReport {
    pub nodes: Vec<NodeReport>,
    pub cancelled: bool,
    /// Problems that failed no node, for the caller to show.
    pub warnings: Vec<String>,
}

impl BuildReport {
    pub fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.nodes.iter().filter(|n| f(&n.outcome)).count()
    }

    pub fn ok(&self) -> bool {
        !self.cancelled
            && self.count(|o| {
                matches!(
                    o,
                    Outcome::Failed(_) | Outcome::Skipped { .. } | Outcome::Cancelled
                )
            }) == 0
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} built, {} cached",
            self.count(|o| *o == Outcome::Built),
            self.count(|o| *o == Outcome::Cached)
        );
        let cutoff = self.count(|o| *o == Outcome::Cutoff);
        if cutoff > 0 {
            s.push_str(&format!(", {cutoff} unchanged after upstream rebuild"));
        }
        let failed = self.count(|o| matches!(o, Outcome::Failed(_)));
        if failed > 0 {
            s.push_str(&format!(", {failed} failed"));
        }
        let skipped = self.count(|o| matches!(o, Outcome::Skipped { .. }));
        if skipped > 0 {
            s.push_str(&format!(", {skipped} skipped"));
        }
        if self.cancelled {
            s.push_str(", interrupted");
        }
        s
    }
}

pub(super) fn report_failed(r: &BuildReport) -> HashSet<String> {
    r.nodes
        .iter()
        .filter(|n| matches!(n.outcome, Outcome::Failed(_) | Outcome::Skipped { .. }))
        .map(|n| n.id.clone())
        .collect()
}

pub(super) fn first_failed_ancestor(
    graph: &Graph,
    ix: NodeIndex,
    failed: &HashSet<String>,
) -> Option<String> {
    for d in graph.deps(ix) {
        let id = &graph.node(d).id;
        if failed.contains(id) {
            return Some(id.clone());
        }
        if let Some(x) = first_failed_ancestor(graph, d, failed) {
            return Some(x);
        }
    }
    None
}
