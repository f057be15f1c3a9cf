//! Graph + what the cache holds → a plan: for every node, an action and the typed reasons for it.
//! Pure: the cache is seen through [`CacheView`], which the caller backs with a store.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use petgraph::graph::NodeIndex;

use crate::graph::Graph;
use crate::hash::Digest;

/// What the planner may ask of the cache.
pub trait CacheView {
    /// Whether a result for this key is stored.
    fn has_result(&self, key: &Digest) -> bool;
    /// The last result recorded for a logical id: its key and input manifest (`None` when the
    /// entry is gone or corrupt).
    fn last(&self, id: &str) -> Option<LastResult>;
}

#[derive(Debug, Clone)]
pub struct LastResult {
    pub key: Digest,
    pub manifest: Option<BTreeMap<String, String>>,
}

/// Why a node must run. Recorded where the decision is made.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DirtyReason {
    /// The previous result for this id is gone from the cache, or its entry is corrupt.
    ResultMissing,
    /// An input of the node changed: a variable, parameter, file, tool pin or the step itself.
    InputChanged {
        input: String,
        old: Option<String>,
        new: Option<String>,
    },
    /// An upstream node will run; its outputs may differ.
    UpstreamRebuilt { dep: String },
    /// An upstream node has a new result (built since this node's last run).
    UpstreamChanged { dep: String },
    /// Requested with --force.
    Forced,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// The result for this key is in the cache.
    Cached,
    /// Never built under this id.
    New,
    /// Built before with other inputs.
    Rebuild { reasons: Vec<DirtyReason> },
    /// Only upstream nodes change; if their outputs come out identical, this node is skipped
    /// (early cutoff).
    RebuildIfUpstreamChanges { reasons: Vec<DirtyReason> },
}

impl Action {
    pub fn will_run(&self) -> bool {
        !matches!(self, Action::Cached)
    }

    pub fn symbol(&self) -> &'static str {
        match self {
            Action::Cached => "=",
            Action::New => "+",
            Action::Rebuild { .. } => "~",
            Action::RebuildIfUpstreamChanges { .. } => "~?",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub actions: HashMap<NodeIndex, Action>,
    /// Logical ids with a record that the config no longer declares (only when the whole
    /// config was planned).
    pub orphans: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub new: usize,
    pub rebuild: usize,
    pub maybe: usize,
    pub cached: usize,
    pub orphan: usize,
}

impl Plan {
    pub fn action(&self, ix: NodeIndex) -> &Action {
        &self.actions[&ix]
    }

    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            orphan: self.orphans.len(),
            ..Summary::default()
        };
        for a in self.actions.values() {
            match a {
                Action::Cached => s.cached += 1,
                Action::New => s.new += 1,
                Action::Rebuild { .. } => s.rebuild += 1,
                Action::RebuildIfUpstreamChanges { .. } => s.maybe += 1,
            }
        }
        s
    }

    pub fn has_work(&self) -> bool {
        self.actions.values().any(Action::will_run)
    }
}

impl Summary {
    pub fn line(&self) -> String {
        let mut s = format!("Plan: {} to build, {} to rebuild", self.new, self.rebuild);
        if self.maybe > 0 {
            s.push_str(&format!(
                ", {} to rebuild if upstream output changes",
                self.maybe
            ));
        }
        s.push_str(&format!(", {} cached", self.cached));
        if self.orphan > 0 {
            s.push_str(&format!(
                ", {} orphan{}",
                self.orphan,
                if self.orphan == 1 { "" } else { "s" }
            ));
        }
        s
    }
}

/// The differences between a recorded manifest and the current one, dependencies aside.
fn input_changes(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Vec<DirtyReason> {
    let keys: BTreeSet<&String> = old
        .keys()
        .chain(new.keys())
        .filter(|k| !k.starts_with("dep:"))
        .collect();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .map(|k| DirtyReason::InputChanged {
            input: k.clone(),
            old: old.get(k).cloned(),
            new: new.get(k).cloned(),
        })
        .collect()
}

/// Plans every node of `graph`. `forced` ids always run; `whole` says the graph holds the whole
/// config, so records of undeclared ids are orphans.
pub fn plan(
    graph: &Graph,
    cache: &dyn CacheView,
    forced: &BTreeSet<String>,
    recorded_ids: &[String],
    whole: bool,
) -> Plan {
    let mut actions: HashMap<NodeIndex, Action> = HashMap::with_capacity(graph.len());
    for ix in graph.order() {
        let node = graph.node(ix);
        let forced_here = forced.contains(&node.id);
        if !forced_here && cache.has_result(&node.key) {
            actions.insert(ix, Action::Cached);
            continue;
        }
        let Some(last) = cache.last(&node.id) else {
            actions.insert(
                ix,
                if forced_here {
                    Action::Rebuild {
                        reasons: vec![DirtyReason::Forced],
                    }
                } else {
                    Action::New
                },
            );
            continue;
        };
        let mut reasons = Vec::new();
        if forced_here {
            reasons.push(DirtyReason::Forced);
        }
        let current: BTreeMap<String, String> = node
            .manifest
            .iter()
            .map(|(k, v)| (k.label(), v.clone()))
            .collect();
        let own = match &last.manifest {
            Some(m) => input_changes(m, &current),
            None => vec![DirtyReason::ResultMissing],
        };
        let own_unchanged = own.is_empty();
        reasons.extend(own);
        let mut upstream_runs = false;
        for d in graph.deps(ix) {
            let dep = graph.node(d);
            if actions[&d].will_run() {
                upstream_runs = true;
                reasons.push(DirtyReason::UpstreamRebuilt {
                    dep: dep.id.clone(),
                });
            } else if let Some(m) = &last.manifest
                && m.get(&format!("dep:{}", dep.step)) != Some(&dep.key.to_hex())
            {
                reasons.push(DirtyReason::UpstreamChanged {
                    dep: dep.id.clone(),
                });
            }
        }
        if reasons.is_empty() && last.key == node.key {
            reasons.push(DirtyReason::ResultMissing);
        }
        let action = if own_unchanged && upstream_runs && !forced_here {
            Action::RebuildIfUpstreamChanges { reasons }
        } else {
            Action::Rebuild { reasons }
        };
        actions.insert(ix, action);
    }
    let orphans = if whole {
        recorded_ids
            .iter()
            .filter(|id| graph.find(id).is_none())
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    Plan { actions, orphans }
}
