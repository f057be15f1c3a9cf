//! `kiln plan`: every node with its action and the reasons for it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;

use clap::Args;

use super::{Cli, CliError, Select, context};
use crate::graph::Graph;
use crate::hash::Digest;
use crate::plan::{self, Action, CacheView, LastResult, Plan};
use crate::store::{LocalStore, Record};

#[derive(Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    pub select: Select,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    /// Rebuild this node id or every node of this cell, even if cached (repeatable).
    #[arg(long, value_name = "NODE|CELL")]
    pub force: Vec<String>,
    /// Exit 0 when there is nothing to do, 2 when something would run, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
}

/// The cache as the planner sees it, backed by a local store (or nothing, before a first build).
pub struct StoreView {
    pub store: Option<LocalStore>,
    keys: HashSet<Digest>,
    records: BTreeMap<String, Record>,
}

impl StoreView {
    pub fn open(dir: PathBuf) -> Result<StoreView, CliError> {
        if !dir.exists() {
            return Ok(StoreView {
                store: None,
                keys: HashSet::new(),
                records: BTreeMap::new(),
            });
        }
        let fail = |e: crate::store::StoreError| CliError::Failed(e.to_string());
        let store = LocalStore::open(&dir).map_err(fail)?;
        let keys = store.action_keys().map_err(fail)?;
        let records = store.load_records().map_err(fail)?;
        Ok(StoreView {
            store: Some(store),
            keys,
            records,
        })
    }

    pub fn recorded_ids(&self) -> Vec<String> {
        self.records.keys().cloned().collect()
    }
}

impl CacheView for StoreView {
    fn has_result(&self, key: &Digest) -> bool {
        self.keys.contains(key)
    }

    fn blob(&self, digest: &Digest) -> Option<Vec<u8>> {
        self.store.as_ref()?.get_blob(digest).ok().flatten()
    }

    fn read(&self, path: &std::path::Path) -> Option<Vec<u8>> {
        std::fs::read(path).ok()
    }

    fn last(&self, id: &str) -> Option<LastResult> {
        let rec = self.records.get(id)?;
        let manifest = self
            .store
            .as_ref()
            .and_then(|s| s.get_action(&rec.key).ok().flatten())
            .map(|a| a.manifest);
        Some(LastResult {
            key: rec.key,
            manifest,
        })
    }
}

/// Node ids named by --force, directly or through their cell.
pub fn forced_ids(graph: &Graph, force: &[String]) -> Result<BTreeSet<String>, CliError> {
    let mut out = BTreeSet::new();
    for f in force {
        let mut hit = false;
        for ix in graph.order() {
            let n = graph.node(ix);
            if &n.id == f || n.cells.iter().any(|c| **c == **f) {
                out.insert(n.id.clone());
                hit = true;
            }
        }
        if !hit {
            return Err(CliError::Usage(format!(
                "--force {f}: no node id or cell of that name in the selected graph"
            )));
        }
    }
    Ok(out)
}

pub fn run(cli: &Cli, args: &PlanArgs) -> Result<(), CliError> {
    let loaded = context::load(&cli.file, &args.select, true)?;
    let dir = context::cache_dir(&loaded.config, &cli.cache_dir);
    let graph = context::lower(&loaded, Some(&dir))?;
    let view = StoreView::open(dir)?;
    let forced = forced_ids(&graph, &args.force)?;
    let plan = plan::plan(&graph, &view, &forced, &view.recorded_ids(), loaded.whole);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&graph, &plan)).expect("plan JSON")
        );
    } else {
        print!("{}", render_text(&graph, &plan));
    }
    if args.detailed_exitcode && plan.has_work() {
        return Err(CliError::Exit(2));
    }
    Ok(())
}

fn status(a: &Action) -> &'static str {
    match a {
        Action::Cached => "cached",
        Action::New => "new",
        Action::Rebuild { .. } => "rebuild",
        Action::RebuildIfUpstreamChanges { .. } => "rebuild if upstream output changes",
    }
}

pub fn render_text(graph: &Graph, plan: &Plan) -> String {
    let order = graph.order();
    let width = order
        .iter()
        .map(|ix| graph.node(*ix).id.len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for ix in order {
        let n = graph.node(ix);
        let a = plan.action(ix);
        out.push_str(&format!(
            "{:2} {:width$}  {:8}  {}  {}\n",
            a.symbol(),
            n.id,
            n.step.as_str(),
            n.key.short(),
            status(a)
        ));
        if let Action::Rebuild { reasons } | Action::RebuildIfUpstreamChanges { reasons } = a {
            for r in reasons {
                out.push_str(&format!("     · {}\n", r.describe()));
            }
        }
    }
    for o in &plan.orphans {
        out.push_str(&format!(
            "-  {o}  orphan: declared no more (its artifacts are kept)\n"
        ));
    }
    out.push_str(&plan.summary().line());
    out.push('\n');
    out
}

fn to_json(graph: &Graph, plan: &Plan) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = graph
        .order()
        .into_iter()
        .map(|ix| {
            let n = graph.node(ix);
            let mut deps: Vec<&str> = graph.deps(ix).map(|d| graph.node(d).id.as_str()).collect();
            deps.sort_unstable();
            let mut v = serde_json::json!({
                "id": n.id,
                "step": n.step,
                "builder": n.builder,
                "cells": n.cells,
                "key": n.key,
                "deps": deps,
            });
            let a = serde_json::to_value(plan.action(ix)).expect("action JSON");
            if let (Some(obj), serde_json::Value::Object(a)) = (v.as_object_mut(), a) {
                obj.extend(a);
            }
            v
        })
        .collect();
    serde_json::json!({
        "version": 1,
        "nodes": nodes,
        "orphans": plan.orphans,
        "summary": plan.summary(),
    })
}
