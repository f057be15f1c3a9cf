//! `kiln explain NODE`: one node's key, its full input manifest, and its diff against the last
//! recorded result. Secrets appear by name and source only.

use std::collections::BTreeSet;

use super::plan::StoreView;
use super::{Cli, CliError, Select, context};
use crate::config::SecretSource;
use crate::plan::{self, CacheView};

pub fn run(cli: &Cli, id: &str, json: bool) -> Result<(), CliError> {
    let loaded = context::load(&cli.file, &Select::default(), true)?;
    let dir = context::cache_dir(&loaded.config, &cli.cache_dir);
    let graph = context::lower(&loaded, Some(&dir))?;
    let ix = context::find_node(&graph, id)?;
    let view = StoreView::open(dir, &graph, super::remote::open(cli, &loaded.config)?)?;
    let install = super::preflight::install(cli, &loaded.config);
    let plan = plan::plan(&graph, &view, &BTreeSet::new());
    let n = graph.node(ix);
    if json {
        println!("{}", explain_json(&graph, ix, &plan, &view, &install));
        return Ok(());
    }
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<9} {v}\n"));
    line("node", n.id.clone());
    line("step", format!("{} (builder {})", n.step, n.builder));
    line("key", n.key.to_hex());
    line("recipe", n.recipe_digest.to_hex());
    line("cells", n.cells.join(", "));
    for d in graph.deps(ix) {
        let dep = graph.node(d);
        line("depends", format!("{} ({})", dep.id, dep.key.short()));
    }
    let p = n.policy;
    line(
        "policy",
        format!(
            "retries={} timeout={} limit={}",
            p.retries.unwrap_or(0),
            p.timeout
                .map_or("none".into(), |t| humantime::format_duration(t).to_string()),
            p.limit.map_or("none".into(), |l| l.to_string())
        ),
    );
    for s in n.secrets.iter() {
        let from = match &s.source {
            SecretSource::Env(v) => format!("environment variable {v}"),
            SecretSource::File(f) => format!("file {}", f.display()),
        };
        line(
            "secret",
            format!(
                "{} from {from} (value never shown, hashed or stored)",
                s.name
            ),
        );
    }
    if let Some(shown) = builder_explanation(&graph, ix, &install) {
        out.push_str(&shown.text);
    }
    out.push_str("inputs\n");
    let manifest = n.manifest_labels();
    let width = manifest.keys().map(String::len).max().unwrap_or(0);
    for (k, v) in &manifest {
        out.push_str(&format!("  {k:<width$}  {v}\n"));
    }
    let action = plan.action(ix);
    out.push_str(&format!(
        "plan      {} {}\n",
        action.symbol(),
        action.label()
    ));
    match view.last(&n.id) {
        Some(last) if last.key != n.key => {
            out.push_str(&format!("last      {} (recorded)\n", last.key.short()))
        }
        Some(_) => out.push_str("last      the recorded result has this key\n"),
        None => out.push_str("last      no recorded result\n"),
    }
    for r in action.reasons() {
        out.push_str(&format!("  · {}\n", r.describe()));
        if let plan::DirtyReason::FileChanged { diff: Some(d), .. } = r {
            for l in d.lines() {
                out.push_str(&format!("      {l}\n"));
            }
        }
    }
    print!("{out}");
    Ok(())
}

/// What `kiln explain --json` prints: the same facts as the text, as one object.
fn explain_json(
    graph: &crate::graph::Graph,
    ix: petgraph::graph::NodeIndex,
    plan: &plan::Plan,
    view: &StoreView,
    install: &crate::imagebuilder::Install,
) -> serde_json::Value {
    let n = graph.node(ix);
    let deps: Vec<serde_json::Value> = graph
        .deps(ix)
        .map(|d| serde_json::json!({ "id": graph.node(d).id, "key": graph.node(d).key }))
        .collect();
    let secrets: Vec<serde_json::Value> = n
        .secrets
        .iter()
        .map(|s| match &s.source {
            SecretSource::Env(v) => serde_json::json!({ "name": s.name, "env": v }),
            SecretSource::File(f) => {
                serde_json::json!({ "name": s.name, "file": f.display().to_string() })
            }
        })
        .collect();
    let p = n.policy;
    let mut v = serde_json::json!({
        "id": n.id,
        "step": n.step.as_str(),
        "builder": n.builder.to_string(),
        "key": n.key,
        "recipe": n.recipe_digest,
        "cells": n.cells.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        "deps": deps,
        "policy": {
            "retries": p.retries.unwrap_or(0),
            "timeout_ms": p.timeout.map(|t| t.as_millis() as u64),
            "limit": p.limit,
        },
        "secrets": secrets,
        "inputs": n.manifest_labels(),
        "plan": plan.action(ix),
        "last_key": view.last(&n.id).map(|l| l.key),
    });
    if let Some(shown) = builder_explanation(graph, ix, install)
        && let Some(fields) = v.as_object_mut()
    {
        fields.extend(shown.json);
    }
    v
}

/// The upstream nodes of `ix`, nearest first, each once: what its builder's explanation may
/// draw on (an image-builder step's patched template comes from its cell's patch node).
fn upstream(
    graph: &crate::graph::Graph,
    ix: petgraph::graph::NodeIndex,
) -> Vec<&crate::graph::Node> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut stack: Vec<_> = graph.deps(ix).collect();
    while let Some(d) = stack.pop() {
        if seen.insert(d) {
            out.push(graph.node(d));
            stack.extend(graph.deps(d));
        }
    }
    out
}

/// What the node's builder shows of it (the exact command of an image-builder step).
fn builder_explanation(
    graph: &crate::graph::Graph,
    ix: petgraph::graph::NodeIndex,
    install: &crate::imagebuilder::Install,
) -> Option<crate::builders::Explanation> {
    let n = graph.node(ix);
    crate::builders::builder(n.builder).explain(n, &upstream(graph, ix), install)
}
