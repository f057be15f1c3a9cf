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
    if n.builder == crate::config::BuilderKind::ImageBuilder {
        describe_invocation(&graph, ix, &install, &mut out);
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
    if n.builder == crate::config::BuilderKind::ImageBuilder {
        v["invocation"] = match image_builder_invocation(graph, ix, install) {
            Ok(inv) => serde_json::json!({
                "argv": inv.argv,
                "env": inv.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
                "secrets": inv.secrets,
                "debug_env_on_retry": crate::builders::image_builder::DEBUG_ENV,
                "files": inv
                    .files
                    .iter()
                    .map(|(from, to)| serde_json::json!({ "from": from.display().to_string(), "to": to }))
                    .collect::<Vec<_>>(),
                "vars": inv.vars,
            }),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        };
    }
    v
}

/// The invocation of an image-builder node, in a work directory shown as `<work>`: the patched
/// template comes from the cell's patch node, upstream of validate and build.
fn image_builder_invocation(
    graph: &crate::graph::Graph,
    ix: petgraph::graph::NodeIndex,
    install: &crate::imagebuilder::Install,
) -> Result<crate::builders::image_builder::Invocation, crate::builders::StepError> {
    use crate::builders::image_builder::invocation;
    let n = graph.node(ix);
    let mut upstream: Vec<_> = graph.deps(ix).collect();
    let mut template = None;
    while let Some(d) = upstream.pop() {
        let dep = graph.node(d);
        if dep.step == crate::config::StepKind::Patch {
            template = dep
                .recipe
                .params
                .get("template")
                .map(crate::config::Value::render);
            break;
        }
        upstream.extend(graph.deps(d));
    }
    invocation(
        n,
        install,
        std::path::Path::new("<work>"),
        template.as_deref(),
        1,
    )
}

/// The exact command an image-builder node runs, in a work directory shown as `<work>`.
fn describe_invocation(
    graph: &crate::graph::Graph,
    ix: petgraph::graph::NodeIndex,
    install: &crate::imagebuilder::Install,
    out: &mut String,
) {
    match image_builder_invocation(graph, ix, install) {
        Ok(inv) => {
            out.push_str(&format!("command   {}\n", inv.argv.join(" ")));
            for (k, v) in &inv.env {
                out.push_str(&format!("env       {k}={v}\n"));
            }
            for name in &inv.secrets {
                out.push_str(&format!("env       {name}=*** (secret)\n"));
            }
            if !inv.env.iter().any(|(k, _)| k == "PACKER_LOG") {
                out.push_str("env       PACKER_LOG=1 (on retries)\n");
            }
            for (from, to) in &inv.files {
                out.push_str(&format!("file      {} → {to}\n", from.display()));
            }
            let vars = serde_json::to_string_pretty(&inv.vars).unwrap_or_default();
            out.push_str("var file\n");
            for line in vars.lines() {
                out.push_str(&format!("  {line}\n"));
            }
        }
        Err(e) => out.push_str(&format!("command   (cannot run here: {e})\n")),
    }
}
