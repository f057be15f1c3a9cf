//! Graph renderings: Graphviz dot, Mermaid (renders in a GitHub comment), JSON.

use std::fmt::Write;

use super::Graph;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphFormat {
    Dot,
    Mermaid,
    Json,
}

fn quoted(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

impl Graph {
    pub fn render(&self, format: GraphFormat) -> String {
        match format {
            GraphFormat::Dot => self.to_dot(),
            GraphFormat::Mermaid => self.to_mermaid(),
            GraphFormat::Json => {
                serde_json::to_string_pretty(&self.to_json()).expect("JSON of strings") + "\n"
            }
        }
    }

    fn to_dot(&self) -> String {
        let mut out = String::from(
            "digraph kiln {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n",
        );
        for ix in self.order() {
            let n = self.node(ix);
            let _ = writeln!(
                out,
                "  \"{}\" [label=\"{}\\n{} · {}\"];",
                quoted(&n.id),
                quoted(&n.id),
                n.builder,
                n.key.short()
            );
        }
        for ix in self.order() {
            for d in self.deps(ix) {
                let _ = writeln!(
                    out,
                    "  \"{}\" -> \"{}\";",
                    quoted(&self.node(d).id),
                    quoted(&self.node(ix).id)
                );
            }
        }
        out.push_str("}\n");
        out
    }

    fn to_mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        for ix in self.order() {
            let n = self.node(ix);
            let _ = writeln!(
                out,
                "  n{}[\"{}<br/><small>{}</small>\"]",
                ix.index(),
                n.id.replace('"', "#quot;"),
                n.builder
            );
        }
        for ix in self.order() {
            for d in self.deps(ix) {
                let _ = writeln!(out, "  n{} --> n{}", d.index(), ix.index());
            }
        }
        out
    }

    /// One node as graph and plan JSON show it: id, step, builder, provider, cells, key and the
    /// ids of its dependencies.
    pub fn node_json(&self, ix: petgraph::graph::NodeIndex) -> serde_json::Value {
        let n = self.node(ix);
        let mut deps: Vec<&str> = self.deps(ix).map(|d| self.node(d).id.as_str()).collect();
        deps.sort_unstable();
        serde_json::json!({
            "id": n.id,
            "step": n.step,
            "builder": n.builder,
            "provider": n.provider,
            "cells": n.cells,
            "key": n.key,
            "deps": deps,
        })
    }

    fn to_json(&self) -> serde_json::Value {
        let nodes: Vec<serde_json::Value> = self
            .order()
            .into_iter()
            .map(|ix| self.node_json(ix))
            .collect();
        serde_json::json!({ "version": 1, "nodes": nodes })
    }
}
