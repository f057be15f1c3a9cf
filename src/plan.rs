//! Graph + what the cache holds → a plan: for every node an action and the typed reasons for
//! it, each recorded where the decision is made. Pure: the cache and the current input files
//! are seen through [`CacheView`], which the caller backs with a store and the file system.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use petgraph::graph::NodeIndex;

use crate::graph::{Graph, Node};
use crate::hash::Digest;

/// Inputs larger than this get no inline diff in a plan.
pub const DIFF_LIMIT: usize = 64 * 1024;

/// What the planner may ask of the world.
pub trait CacheView {
    /// Whether a result for this key is stored.
    fn has_result(&self, key: &Digest) -> bool;
    /// The last result recorded for a logical id: its key and input manifest (`None` when the
    /// entry is gone or corrupt).
    fn last(&self, id: &str) -> Option<LastResult>;
    /// A stored blob (old versions of small input files are kept, for diffs).
    fn blob(&self, digest: &Digest) -> Option<Vec<u8>>;
    /// The current content of an input file.
    fn read(&self, path: &std::path::Path) -> Option<Vec<u8>>;
    /// Why the published artifacts that the cached result of this id claims no longer hold, as
    /// a refresh found them (`None`: they held, were not checked, or the node publishes nothing).
    fn drift(&self, _id: &str) -> Option<Vec<DirtyReason>> {
        None
    }
    /// Where the result for this key comes from.
    fn source(&self, _key: &Digest) -> Source {
        Source::Local
    }
    /// Why a build on this runner holds every publish node due to run, if it does.
    fn publish_hold(&self) -> Option<Hold> {
        None
    }
}

/// Where a cached result is: in this machine's cache, or only in the shared remote cache (its
/// record fetched, its blobs fetched when a step that runs needs them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Local,
    Remote,
}

#[derive(Debug, Clone)]
pub struct LastResult {
    pub key: Digest,
    pub manifest: Option<BTreeMap<String, String>>,
}

/// Why a node must run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DirtyReason {
    /// The previous result for this id is gone from the cache, or its entry is corrupt.
    ResultMissing,
    VarChanged {
        name: String,
        old: Option<String>,
        new: Option<String>,
    },
    ParamChanged {
        name: String,
        old: Option<String>,
        new: Option<String>,
    },
    ToolChanged {
        name: String,
        old: Option<String>,
        new: Option<String>,
    },
    /// The step kind or builder of the node changed.
    StepChanged {
        what: String,
        old: Option<String>,
        new: Option<String>,
    },
    /// A file's content or destination changed; `diff` is a unified diff for small text files.
    FileChanged {
        path: String,
        diff: Option<String>,
    },
    FileAdded {
        path: String,
    },
    FileRemoved {
        path: String,
    },
    /// An upstream node will run. `because` is the chain down to the root cause, nearest first.
    UpstreamRebuilt {
        dep: String,
        because: Vec<String>,
    },
    /// An upstream node has a new result since this node last ran.
    UpstreamChanged {
        dep: String,
    },
    Forced,
    /// A published artifact this node's cached result claims is gone (refresh).
    PublishedMissing {
        target: String,
    },
    /// A published artifact differs from what this node's cached result claims (refresh).
    PublishedDrift {
        target: String,
        what: String,
        found: String,
        expected: String,
    },
}

impl DirtyReason {
    /// One line for people.
    pub fn describe(&self) -> String {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unset)".into());
        match self {
            DirtyReason::ResultMissing => "the recorded result is missing or corrupt".into(),
            DirtyReason::VarChanged { name, old, new } => {
                format!("variable {name}: {} → {}", show(old), show(new))
            }
            DirtyReason::ParamChanged { name, old, new } => {
                format!("parameter {name}: {} → {}", show(old), show(new))
            }
            DirtyReason::ToolChanged { name, old, new } => {
                format!("tool {name}: {} → {}", show(old), show(new))
            }
            DirtyReason::StepChanged { what, old, new } => {
                format!("{what}: {} → {}", show(old), show(new))
            }
            DirtyReason::FileChanged { path, .. } => format!("{path} changed"),
            DirtyReason::FileAdded { path } => format!("{path} added"),
            DirtyReason::FileRemoved { path } => format!("{path} removed"),
            DirtyReason::UpstreamRebuilt { because, .. } => {
                format!("upstream: {}", because.join(" ← "))
            }
            DirtyReason::UpstreamChanged { dep } => format!("upstream {dep} has a new result"),
            DirtyReason::Forced => "forced with --force".into(),
            DirtyReason::PublishedMissing { target } => format!("missing: {target}"),
            DirtyReason::PublishedDrift {
                target,
                what,
                found,
                expected,
            } => format!("drift: {target} has {what} {found}, expected {expected}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// The result for this key is in the cache (`source`: this machine's, or the shared one).
    Cached { source: Source },
    /// Never built under this id.
    New,
    /// Built before with other inputs.
    Rebuild { reasons: Vec<DirtyReason> },
    /// Only upstream nodes change; if every upstream result this node receives comes out
    /// identical, this node is skipped (early cutoff). `waits_on` names the upstream nodes that
    /// run, in dependency order.
    RebuildIfUpstreamChanges {
        reasons: Vec<DirtyReason>,
        waits_on: Vec<String>,
    },
}

impl Action {
    pub fn will_run(&self) -> bool {
        !matches!(self, Action::Cached { .. })
    }

    pub fn symbol(&self) -> &'static str {
        match self {
            Action::Cached { .. } => "=",
            Action::New => "+",
            Action::Rebuild { .. } => "~",
            Action::RebuildIfUpstreamChanges { .. } => "~?",
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Action::Cached {
                source: Source::Local,
            } => "cached (local)",
            Action::Cached {
                source: Source::Remote,
            } => "cached (remote)",
            Action::New => "new",
            Action::Rebuild { .. } => "rebuild",
            Action::RebuildIfUpstreamChanges { .. } => "rebuild if upstream output changes",
        }
    }

    pub fn reasons(&self) -> &[DirtyReason] {
        match self {
            Action::Rebuild { reasons } | Action::RebuildIfUpstreamChanges { reasons, .. } => {
                reasons
            }
            _ => &[],
        }
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    /// By node index: the graph's nodes in order.
    pub actions: Vec<Action>,
    /// Logical ids with a record that the config no longer declares (only when the whole
    /// config was planned).
    pub orphans: Vec<String>,
    /// Publish nodes another runner is publishing now (id -> that runner), from the claims
    /// of a shared cache.
    pub claimed: BTreeMap<String, String>,
    /// Publish nodes due to run that a build on this runner holds instead of publishing
    /// (id -> why), see [`CacheView::publish_hold`].
    pub held: BTreeMap<String, Hold>,
}

/// Why a build on this runner holds a publish node instead of running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hold {
    /// A remote cache is configured but this runner has no signing key: it could not record
    /// the publish where other runners look, so none of them would know it happened.
    NoSigningKey,
}

impl Hold {
    /// Why, in a few words (under the node).
    pub fn short(&self) -> &'static str {
        match self {
            Hold::NoSigningKey => "no signing key for the remote cache",
        }
    }

    /// Why, for people.
    pub fn describe(&self) -> &'static str {
        match self {
            Hold::NoSigningKey => {
                "this runner has no signing key for the remote cache, so no other runner would see what it published and the next one would publish again"
            }
        }
    }

    /// How to publish after all.
    pub fn remedy(&self) -> &'static str {
        match self {
            Hold::NoSigningKey => {
                "publish from a runner with --signing-key FILE or KILN_SIGNING_KEY set"
            }
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub new: usize,
    pub rebuild: usize,
    pub maybe: usize,
    pub cached: usize,
    /// Of `cached`, how many are only in the remote cache.
    #[serde(default)]
    pub remote: usize,
    pub orphan: usize,
    /// Of the nodes that run, the publish nodes a build on this runner holds (printed only when
    /// there are some).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Plan {
    pub fn action(&self, ix: NodeIndex) -> &Action {
        &self.actions[ix.index()]
    }

    pub fn summary(&self) -> Summary {
        Summary {
            held: self.held.len(),
            ..summarize(self.actions.iter(), self.orphans.len())
        }
    }

    pub fn has_work(&self) -> bool {
        self.actions.iter().any(Action::will_run)
    }

    /// Whether a build holds the node without running anything for it: held, and not one that
    /// early cutoff may still reuse (that one is held only if its upstream outputs change).
    pub fn holds(&self, graph: &Graph, ix: NodeIndex) -> bool {
        self.held.contains_key(&graph.node(ix).id)
            && !matches!(self.action(ix), Action::RebuildIfUpstreamChanges { .. })
    }

    /// Marks every publish node due to run as held for `why`, as `kiln build` holds them (a
    /// `rebuild_if_upstream_changes` one only if its upstream outputs do change).
    pub fn hold_publishes(&mut self, graph: &Graph, why: Hold) {
        for ix in graph.order() {
            let n = graph.node(ix);
            if n.step == crate::config::StepKind::Publish && self.action(ix).will_run() {
                self.held.insert(n.id.clone(), why);
            }
        }
    }
}

pub fn summarize<'a>(actions: impl Iterator<Item = &'a Action>, orphans: usize) -> Summary {
    let mut s = Summary {
        orphan: orphans,
        ..Summary::default()
    };
    for a in actions {
        match a {
            Action::Cached { source } => {
                s.cached += 1;
                s.remote += usize::from(*source == Source::Remote);
            }
            Action::New => s.new += 1,
            Action::Rebuild { .. } => s.rebuild += 1,
            Action::RebuildIfUpstreamChanges { .. } => s.maybe += 1,
        }
    }
    s
}

impl Summary {
    fn remote_note(&self) -> String {
        if self.remote == 0 {
            String::new()
        } else {
            format!(" ({} in the remote cache)", self.remote)
        }
    }

    /// `Plan: 2 to build, 1 to rebuild, 5 cached`, or `No changes. 8 nodes cached.` when
    /// nothing runs (orphans alone are nothing to do).
    pub fn line(&self) -> String {
        if self.new + self.rebuild + self.maybe == 0 {
            let mut s = format!(
                "No changes. {} node{} cached{}",
                self.cached,
                if self.cached == 1 { "" } else { "s" },
                self.remote_note()
            );
            if self.orphan > 0 {
                s.push_str(&format!(
                    ", {} orphan{} kept",
                    self.orphan,
                    if self.orphan == 1 { "" } else { "s" }
                ));
            }
            s.push('.');
            return s;
        }
        let mut s = format!("Plan: {} to build, {} to rebuild", self.new, self.rebuild);
        if self.maybe > 0 {
            s.push_str(&format!(
                ", {} to rebuild if upstream output changes",
                self.maybe
            ));
        }
        s.push_str(&format!(", {} cached{}", self.cached, self.remote_note()));
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

/// A unified diff of two small UTF-8 texts, or `None`.
fn text_diff(old: &[u8], new: &[u8], path: &str) -> Option<String> {
    if old.len() > DIFF_LIMIT || new.len() > DIFF_LIMIT {
        return None;
    }
    let (old, new) = (
        std::str::from_utf8(old).ok()?,
        std::str::from_utf8(new).ok()?,
    );
    let diff = similar::TextDiff::from_lines(old, new);
    Some(
        diff.unified_diff()
            .context_radius(2)
            .header(&format!("a/{path}"), &format!("b/{path}"))
            .to_string(),
    )
}

/// The first token of a file manifest value is its digest.
fn file_digest(v: &str) -> Option<Digest> {
    v.split(' ').next()?.parse().ok()
}

/// Typed differences between a recorded manifest and the current one, dependencies aside.
fn input_changes(
    node: &Node,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    view: &dyn CacheView,
) -> Vec<DirtyReason> {
    let keys: BTreeSet<&String> = old
        .keys()
        .chain(new.keys())
        .filter(|k| !k.starts_with("dep:"))
        .collect();
    let mut out = Vec::new();
    for k in keys {
        let (o, n) = (old.get(k).cloned(), new.get(k).cloned());
        if o == n {
            continue;
        }
        let reason = if let Some(name) = k.strip_prefix("var:") {
            DirtyReason::VarChanged {
                name: name.into(),
                old: o,
                new: n,
            }
        } else if let Some(name) = k.strip_prefix("param:") {
            DirtyReason::ParamChanged {
                name: name.into(),
                old: o,
                new: n,
            }
        } else if let Some(name) = k.strip_prefix("tool:") {
            DirtyReason::ToolChanged {
                name: name.into(),
                old: o,
                new: n,
            }
        } else if let Some(path) = k.strip_prefix("file:") {
            match (&o, &n) {
                (None, Some(_)) => DirtyReason::FileAdded { path: path.into() },
                (Some(_), None) => DirtyReason::FileRemoved { path: path.into() },
                (Some(o), Some(_)) => {
                    let current = node
                        .recipe
                        .files
                        .iter()
                        .flat_map(|f| f.files())
                        .find(|(name, _, _)| name == path)
                        .map(|(_, p, _)| p);
                    let diff = match (
                        file_digest(o).and_then(|d| view.blob(&d)),
                        current.and_then(|p| view.read(&p)),
                    ) {
                        (Some(old), Some(new)) => text_diff(&old, &new, path),
                        _ => None,
                    };
                    DirtyReason::FileChanged {
                        path: path.into(),
                        diff,
                    }
                }
                (None, None) => continue,
            }
        } else {
            DirtyReason::StepChanged {
                what: k.clone(),
                old: o,
                new: n,
            }
        };
        out.push(reason);
    }
    out
}

/// Plans every node of `graph`. `forced` ids always run; `recorded` are the ids with a record
/// and the key of their last result; `whole` says the graph holds the whole config, so records
/// of undeclared ids are orphans — unless their result is still in use under another id (a node
/// that stopped or started being shared between cells changes its id, not its key).
pub fn plan(graph: &Graph, view: &dyn CacheView, forced: &BTreeSet<String>) -> Plan {
    let mut actions: Vec<Action> = Vec::with_capacity(graph.len());
    // Per node that runs: the chain from it to the root cause, for "upstream" reasons.
    let mut cause: HashMap<NodeIndex, Vec<String>> = HashMap::new();
    // Per node that runs or has an ancestor that runs: the ancestors that run.
    let mut running_above: HashMap<NodeIndex, BTreeSet<NodeIndex>> = HashMap::new();
    for ix in graph.order() {
        let mut above = BTreeSet::new();
        for d in graph.deps(ix) {
            if let Some(a) = running_above.get(&d) {
                above.extend(a.iter().copied());
            }
            if actions[d.index()].will_run() {
                above.insert(d);
            }
        }
        if !above.is_empty() {
            running_above.insert(ix, above);
        }
        let node = graph.node(ix);
        let forced_here = forced.contains(&node.id);
        if !forced_here && view.has_result(&node.key) {
            match view.drift(&node.id).filter(|r| !r.is_empty()) {
                None => actions.push(Action::Cached {
                    source: view.source(&node.key),
                }),
                Some(reasons) => {
                    cause.insert(ix, vec![node.id.clone(), reasons[0].describe()]);
                    actions.push(Action::Rebuild { reasons });
                }
            }
            continue;
        }
        let last = view.last(&node.id);
        let mut reasons = Vec::new();
        if forced_here {
            reasons.push(DirtyReason::Forced);
        }
        let own = match &last {
            None => Vec::new(),
            Some(LastResult {
                manifest: Some(m), ..
            }) => {
                let current = node.manifest_labels();
                input_changes(node, m, &current, view)
            }
            Some(LastResult { manifest: None, .. }) => vec![DirtyReason::ResultMissing],
        };
        // A previous result that early cutoff would reuse is a claim too: one that no longer
        // holds must not be reused.
        let drift = view.drift(&node.id).unwrap_or_default();
        let own_unchanged = own.is_empty() && drift.is_empty();
        reasons.extend(own);
        reasons.extend(drift);
        let mut upstream_runs = false;
        for d in graph.deps(ix) {
            let dep = graph.node(d);
            if actions[d.index()].will_run() {
                upstream_runs = true;
                let mut because = vec![dep.id.clone()];
                because.extend(cause.get(&d).into_iter().flatten().skip(1).cloned());
                reasons.push(DirtyReason::UpstreamRebuilt {
                    dep: dep.id.clone(),
                    because,
                });
            } else if let Some(LastResult {
                manifest: Some(m), ..
            }) = &last
                && m.get(&format!("dep:{}", dep.step)) != Some(&dep.key.to_hex())
            {
                reasons.push(DirtyReason::UpstreamChanged {
                    dep: dep.id.clone(),
                });
            }
        }
        if last.as_ref().is_some_and(|l| l.key == node.key) && reasons.is_empty() {
            reasons.push(DirtyReason::ResultMissing);
        }
        let chain = match reasons
            .iter()
            .find(|r| !matches!(r, DirtyReason::UpstreamRebuilt { .. }))
        {
            Some(r) => vec![node.id.clone(), r.describe()],
            None => match reasons.first() {
                Some(DirtyReason::UpstreamRebuilt { because, .. }) => {
                    std::iter::once(node.id.clone())
                        .chain(because.iter().cloned())
                        .collect()
                }
                _ => vec![node.id.clone(), "new".into()],
            },
        };
        cause.insert(ix, chain);
        let action = match last {
            None if !forced_here => Action::New,
            _ if own_unchanged && upstream_runs && !forced_here => {
                // Index order is dependency order.
                let waits_on = running_above
                    .get(&ix)
                    .into_iter()
                    .flatten()
                    .map(|d| graph.node(*d).id.clone())
                    .collect();
                Action::RebuildIfUpstreamChanges { reasons, waits_on }
            }
            _ => Action::Rebuild { reasons },
        };
        actions.push(action);
    }
    let mut plan = Plan {
        actions,
        orphans: Vec::new(),
        claimed: BTreeMap::new(),
        held: BTreeMap::new(),
    };
    if let Some(why) = view.publish_hold() {
        plan.hold_publishes(graph, why);
    }
    plan
}

/// The recorded ids (with the key of their last result) that `graph` no longer declares, sorted.
/// An id whose result is still in use under another id is not one: its node was renamed.
/// Only meaningful when `graph` is the whole config.
pub fn orphans(graph: &Graph, recorded: &[(&str, Digest)]) -> Vec<String> {
    let in_use: crate::hash::DigestSet = graph
        .order()
        .into_iter()
        .map(|ix| graph.node(ix).key)
        .collect();
    let mut orphans: Vec<String> = recorded
        .iter()
        .filter(|(id, key)| graph.find(id).is_none() && !in_use.contains(key))
        .map(|(id, _)| id.to_string())
        .collect();
    orphans.sort();
    orphans
}
