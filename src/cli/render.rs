//! Plan renderings: text for people (grouped by cell, colour on a terminal), JSON for machines
//! (a documented, versioned schema; also the saved-plan format), markdown for pull requests.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use petgraph::graph::NodeIndex;

use crate::graph::Graph;
use crate::hash::Digest;
use crate::plan::{Action, Plan, Summary, summarize};

/// The version of the plan JSON schema (docs/plan-json.md).
pub const PLAN_FORMAT_VERSION: u32 = 1;

#[derive(Clone, Copy)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// The escape sequences that start and end a line painted for `a` (empty without color).
    fn action_codes(&self, a: &Action) -> (&'static str, &'static str) {
        if !self.color {
            return ("", "");
        }
        let start = match a {
            Action::New => "\x1b[32m",
            Action::Rebuild { .. } => "\x1b[33m",
            Action::RebuildIfUpstreamChanges { .. } => "\x1b[36m",
            Action::Cached { .. } => "\x1b[2m",
        };
        (start, "\x1b[0m")
    }
}

/// Nodes grouped under the first cell (in matrix order) that has them.
fn by_cell(graph: &Graph) -> Vec<(String, Vec<NodeIndex>)> {
    let mut groups: Vec<(String, Vec<NodeIndex>)> = graph
        .cells
        .iter()
        .map(|c| (c.name.clone(), Vec::new()))
        .collect();
    let pos: HashMap<&str, usize, rustc_hash::FxBuildHasher> = graph
        .cells
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    for ix in graph.order() {
        let node = graph.node(ix);
        if let Some(&i) = node.cells.iter().filter_map(|c| pos.get(&**c)).min() {
            groups[i].1.push(ix);
        }
    }
    groups.retain(|(_, nodes)| !nodes.is_empty());
    groups
}

fn reason_lines(a: &Action, indent: &str, out: &mut String) {
    if let Action::RebuildIfUpstreamChanges { waits_on, .. } = a {
        let _ = writeln!(out, "{indent}· waits on: {}", waits_on.join(", "));
    }
    for r in a.reasons() {
        let _ = writeln!(out, "{indent}· {}", r.describe());
        if let crate::plan::DirtyReason::FileChanged { diff: Some(d), .. } = r {
            for line in d.lines() {
                let _ = writeln!(out, "{indent}    {line}");
            }
        }
    }
}

/// How much of the plan the text and markdown renderings show.
#[derive(Clone, Copy, Default)]
pub struct Detail {
    /// Every node, cached ones included; otherwise only the nodes that run, each cell's cached
    /// nodes in one line, and cells with nothing to do in one line for all of them.
    pub all: bool,
}

fn node_line(
    graph: &Graph,
    plan: &Plan,
    ix: NodeIndex,
    width: usize,
    style: Style,
    out: &mut String,
) {
    let n = graph.node(ix);
    let a = plan.action(ix);
    let (start, end) = style.action_codes(a);
    let _ = writeln!(
        out,
        "  {start}{:2} {:width$}  {:8}  {}  {}{end}",
        a.symbol(),
        n.id,
        n.step.as_str(),
        n.key.short_display(),
        a.label()
    );
    if let Some(owner) = plan.claimed.get(&n.id) {
        let _ = writeln!(out, "       · publishing (by {owner})");
    }
    held_line(plan, &n.id, a, "       ", out);
    reason_lines(a, "       ", out);
}

/// `· held: …` under a publish node that a build on this runner holds (`held if it runs` when
/// early cutoff may still reuse its last result).
fn held_line(plan: &Plan, id: &str, a: &Action, indent: &str, out: &mut String) {
    let Some(why) = plan.held.get(id) else {
        return;
    };
    let when = match a {
        Action::RebuildIfUpstreamChanges { .. } => "held if it runs",
        _ => "held",
    };
    let _ = writeln!(
        out,
        "{indent}· {when}: a build on this runner does not publish it ({})",
        why.short()
    );
}

/// The note after the summary of a plan with held publish nodes: how many, why, and how to
/// publish them.
fn held_note(plan: &Plan) -> Option<String> {
    let why = plan.held.values().next()?;
    let held = plan.held.len();
    Some(format!(
        "{} held: {}; {}.",
        plural(held, "publish node", "publish nodes"),
        why.describe(),
        why.remedy()
    ))
}

/// `3 nodes cached`, `3 nodes cached (1 in the remote cache)`.
fn cached_count(cached: usize, remote: usize) -> String {
    let n = plural(cached, "node cached", "nodes cached");
    if remote == 0 {
        n
    } else {
        format!("{n} ({remote} in the remote cache)")
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// What an orphan's line says it published: only a publish step's facts are published
/// artifacts (a build's facts are only where its outputs went).
fn orphan_what(facts: &BTreeMap<String, String>) -> String {
    if facts.is_empty() {
        return String::new();
    }
    let artifacts: Vec<String> = facts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("; published: {}", artifacts.join(" "))
}

/// The plan for people, like `terraform plan`: the nodes that run, with their reasons, grouped
/// by cell and first; each such cell's cached nodes in one line; the cells with nothing to do
/// in one line; orphans; the counts. `No changes. N nodes cached.` when nothing runs.
/// `detail.all` lists every node instead.
pub fn text(
    graph: &Graph,
    plan: &Plan,
    orphans: &[(String, BTreeMap<String, String>)],
    style: Style,
    detail: Detail,
) -> String {
    // Nothing runs: no node is listed, so none is grouped (a large no-op plan stays cheap).
    let groups = if detail.all || plan.has_work() {
        by_cell(graph)
    } else {
        Vec::new()
    };
    let shown = |ix: &NodeIndex| detail.all || plan.action(*ix).will_run();
    let width = groups
        .iter()
        .flat_map(|(_, nodes)| nodes.iter().filter(|ix| shown(ix)))
        .map(|ix| graph.node(*ix).id.len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    let (mut quiet_cells, mut quiet_nodes, mut quiet_remote) = (0, 0, 0);
    let remote = |ix: &&NodeIndex| {
        matches!(
            plan.action(**ix),
            Action::Cached {
                source: crate::plan::Source::Remote
            }
        )
    };
    for (cell, nodes) in &groups {
        let cached = nodes
            .iter()
            .filter(|ix| !plan.action(**ix).will_run())
            .count();
        let from_remote = nodes.iter().filter(remote).count();
        if !detail.all && cached == nodes.len() {
            quiet_cells += 1;
            quiet_nodes += cached;
            quiet_remote += from_remote;
            continue;
        }
        let _ = writeln!(out, "{}", style.paint("1", cell));
        for ix in nodes.iter().filter(|ix| shown(ix)) {
            node_line(graph, plan, *ix, width, style, &mut out);
        }
        if !detail.all && cached > 0 {
            let line = format!("=  {}", cached_count(cached, from_remote));
            let _ = writeln!(out, "  {}", style.paint("2", &line));
        }
    }
    if quiet_cells > 0 && plan.has_work() {
        let line = format!(
            "=  {} with nothing to do: {}; `kiln plan --all` lists every node",
            plural(quiet_cells, "other cell", "other cells"),
            cached_count(quiet_nodes, quiet_remote)
        );
        let _ = writeln!(out, "{}", style.paint("2", &line));
    }
    for (id, facts) in orphans {
        let what = orphan_what(facts);
        let _ = writeln!(
            out,
            "{}",
            style.paint(
                "31",
                &format!("-  {id}  orphan: declared no more, kept{what}")
            )
        );
    }
    if plan.has_work() && !out.is_empty() {
        out.push('\n');
    }
    out.push_str(&plan.summary().line());
    out.push('\n');
    if let Some(note) = held_note(plan) {
        let _ = writeln!(out, "{}", style.paint("33", &note));
    }
    out
}

pub fn json(
    graph: &Graph,
    plan: &Plan,
    orphans: &[(String, BTreeMap<String, String>)],
    config_digest: Digest,
    cells: &[String],
) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = graph
        .order()
        .into_iter()
        .map(|ix| {
            let mut v = graph.node_json(ix);
            let a = serde_json::to_value(plan.action(ix)).expect("action JSON");
            if let (Some(obj), serde_json::Value::Object(a)) = (v.as_object_mut(), a) {
                obj.extend(a);
            }
            if let Some(obj) = v.as_object_mut() {
                obj.entry("reasons")
                    .or_insert_with(|| serde_json::json!([]));
                if let Some(owner) = plan.claimed.get(&graph.node(ix).id) {
                    obj.insert("claimed_by".into(), serde_json::json!(owner));
                }
                if let Some(why) = plan.held.get(&graph.node(ix).id) {
                    obj.insert("held".into(), serde_json::json!(why));
                }
            }
            v
        })
        .collect();
    let orphans: Vec<serde_json::Value> = orphans
        .iter()
        .map(|(id, facts)| serde_json::json!({ "id": id, "published": facts }))
        .collect();
    serde_json::json!({
        "format_version": PLAN_FORMAT_VERSION,
        "config_digest": config_digest,
        "cells": cells,
        "summary": plan.summary(),
        "nodes": nodes,
        "orphans": orphans,
    })
}

fn counts_row(s: &Summary) -> String {
    format!("{} | {} | {} | {}", s.new, s.rebuild, s.maybe, s.cached)
}

/// The plan for a pull request or a job summary: the counts, a table of the cells that run
/// something (every cell with `detail.all`), and each such cell's nodes with their reasons.
pub fn markdown(
    graph: &Graph,
    plan: &Plan,
    orphans: &[(String, BTreeMap<String, String>)],
    detail: Detail,
) -> String {
    let mut out = String::from("## kiln plan\n\n");
    let _ = writeln!(out, "**{}**\n", plan.summary().line());
    if let Some(note) = held_note(plan) {
        let _ = writeln!(out, "{note}\n");
    }
    let groups = by_cell(graph);
    let busy = |nodes: &[NodeIndex]| nodes.iter().any(|ix| plan.action(*ix).will_run());
    let shown: Vec<&(String, Vec<NodeIndex>)> = groups
        .iter()
        .filter(|(_, nodes)| detail.all || busy(nodes))
        .collect();
    if !shown.is_empty() {
        out.push_str("| cell | + new | ~ rebuild | ~? if upstream changes | = cached |\n| --- | ---: | ---: | ---: | ---: |\n");
        for (cell, nodes) in &shown {
            let s = summarize(nodes.iter().map(|ix| plan.action(*ix)), 0);
            let _ = writeln!(out, "| `{cell}` | {} |", counts_row(&s));
        }
        let quiet: Vec<&(String, Vec<NodeIndex>)> = groups
            .iter()
            .filter(|(_, nodes)| !detail.all && !busy(nodes))
            .collect();
        if !quiet.is_empty() {
            let cached: usize = quiet.iter().map(|(_, nodes)| nodes.len()).sum();
            let _ = writeln!(
                out,
                "| {} with nothing to do | 0 | 0 | 0 | {cached} |",
                plural(quiet.len(), "other cell", "other cells")
            );
        }
        out.push('\n');
    }
    for (cell, nodes) in &groups {
        let running: Vec<&NodeIndex> = nodes
            .iter()
            .filter(|ix| plan.action(**ix).will_run())
            .collect();
        if running.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "<details><summary><code>{cell}</code>: {} to run</summary>\n\n```diff",
            running.len()
        );
        for ix in running {
            let n = graph.node(*ix);
            let a = plan.action(*ix);
            let sign = if matches!(a, Action::New) { "+" } else { "!" };
            let _ = writeln!(
                out,
                "{sign} {} ({}, {}): {}",
                n.id,
                n.step,
                n.key.short(),
                a.label()
            );
            let mut reasons = String::new();
            held_line(plan, &n.id, a, "    ", &mut reasons);
            reason_lines(a, "    ", &mut reasons);
            out.push_str(&reasons);
        }
        out.push_str("```\n\n</details>\n\n");
    }
    if !orphans.is_empty() {
        out.push_str("Orphans (declared no more; their artifacts are kept):\n\n");
        for (id, facts) in orphans {
            let artifacts: Vec<String> = facts.iter().map(|(k, v)| format!("`{k}={v}`")).collect();
            let what = if artifacts.is_empty() {
                String::new()
            } else {
                format!(" published: {}", artifacts.join(" "))
            };
            let _ = writeln!(out, "- `{id}`{what}");
        }
    }
    out
}
