//! The refresh that `kiln plan` (by default) and `kiln build` (always) make before trusting a
//! cached publish result: see [`crate::exec::refresh`].

use std::sync::Arc;

use super::CliError;
use super::context::Loaded;
use super::plan::StoreView;
use crate::builders::{Builtin, makes_claims};
use crate::exec::refresh::{self, Refreshed};
use crate::graph::Graph;
use crate::plan::{self, Action, CacheView, Plan};

/// Checks the claims of the publish nodes `plan` marks cached; a claim that no longer holds
/// makes its node rebuild (the plan is made again with the drift). A claim that cannot be checked
/// is a warning naming the node. Returns what was found.
pub fn refresh_plan(
    loaded: &Loaded,
    graph: &Graph,
    view: &mut StoreView,
    plan: &mut Plan,
    forced: &std::collections::BTreeSet<String>,
) -> Result<Refreshed, CliError> {
    let Some(store) = view.store.clone() else {
        return Ok(Refreshed::default());
    };
    // Cached publish nodes, and those whose last result early cutoff may reuse.
    let nodes: Vec<_> = graph
        .order()
        .into_iter()
        .filter(|ix| makes_claims(graph.node(*ix).builder))
        .filter_map(|ix| match plan.action(ix) {
            Action::Cached { .. } => Some((ix, graph.node(ix).key)),
            Action::RebuildIfUpstreamChanges { .. } => {
                view.last(&graph.node(ix).id).map(|l| (ix, l.key))
            }
            _ => None,
        })
        .collect();
    if nodes.is_empty() {
        return Ok(Refreshed::default());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the runtime: {e}")))?;
    let install = Arc::new(crate::imagebuilder::Install::from_config(&loaded.config));
    let found = runtime.block_on(refresh::refresh(
        graph,
        &nodes,
        &|key| view.pack_facts(key),
        &store,
        &Builtin,
        &loaded.config.root,
        &install,
    ));
    for w in store.take_warnings() {
        eprintln!("warning: {w}");
    }
    // One line per claim, up to a point: a matrix whose credentials are missing has thousands.
    const SHOWN: usize = 20;
    for (id, why) in found.unchecked.iter().take(SHOWN) {
        eprintln!(
            "warning: the published state of {id} was not checked: {why}; it is planned as cached on trust"
        );
    }
    if found.unchecked.len() > SHOWN {
        eprintln!(
            "warning: … and {} more publish nodes whose published state was not checked (`kiln images` lists them)",
            found.unchecked.len() - SHOWN
        );
    }
    if let Some(e) = &found.not_saved {
        eprintln!("warning: the refresh verdicts were not saved: {e}");
    }
    if !found.drift.is_empty() {
        view.set_drift(found.drift.clone());
        *plan = plan::plan(graph, view, forced);
    }
    Ok(found)
}
