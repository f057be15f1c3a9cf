//! `kiln images`: the catalog of what is published, per cell, from the last recorded result of
//! each cell's publish node (AMI ids per region, image names, bucket URLs with their sha256, …).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Cli, CliError, Select, context};
use crate::config::StepKind;
use crate::store::LocalStore;

#[derive(Serialize)]
struct Entry {
    cell: String,
    /// The cell's publish node, if its module has a publish step.
    node: Option<String>,
    /// The facts of that node's last result; `null` when it never ran.
    facts: Option<BTreeMap<String, String>>,
    /// Whether that result is of the node as the config declares it now.
    current: bool,
}

pub fn run(cli: &Cli, select: &Select, json: bool) -> Result<(), CliError> {
    let loaded = context::load(&cli.file, select, true)?;
    let dir = context::cache_dir(&loaded.config, &cli.cache_dir);
    let graph = context::lower(&loaded, Some(&dir))?;
    let fail = |e: crate::store::StoreError| CliError::Failed(e.to_string());
    let store = if dir.exists() {
        Some(LocalStore::open(&dir).map_err(fail)?)
    } else {
        None
    };
    let records = match &store {
        Some(s) => s.load_records().map_err(fail)?,
        None => BTreeMap::new(),
    };
    let publish: Vec<_> = graph
        .order()
        .into_iter()
        .map(|ix| graph.node(ix))
        .filter(|n| n.step == StepKind::Publish)
        .collect();
    let mut entries = Vec::new();
    for cell in loaded.cells.iter() {
        let node = publish
            .iter()
            .find(|n| n.cells.iter().any(|c| **c == *cell.name));
        let mut entry = Entry {
            cell: cell.name.clone(),
            node: node.map(|n| n.id.clone()),
            facts: None,
            current: false,
        };
        if let (Some(n), Some(s)) = (node, &store)
            && let Some(rec) = records.get(&n.id)
            && let Some(r) = s.get_action(&rec.key).map_err(fail)?
        {
            entry.facts = Some(r.facts);
            entry.current = rec.key == n.key;
        }
        entries.push(entry);
    }
    if json {
        let text =
            serde_json::to_string_pretty(&entries).map_err(|e| CliError::Failed(e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    let mut out = String::new();
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        match (&e.node, &e.facts) {
            (None, _) => out.push_str(&format!("{}  (no publish step)\n", e.cell)),
            (Some(n), None) => out.push_str(&format!("{}  {n}  not published\n", e.cell)),
            (Some(n), Some(facts)) => {
                let stale = if e.current {
                    ""
                } else {
                    "  (published by an earlier config; `kiln plan` shows what changed)"
                };
                out.push_str(&format!("{}  {n}{stale}\n", e.cell));
                let width = facts.keys().map(String::len).max().unwrap_or(0);
                for (k, v) in facts {
                    out.push_str(&format!("  {k:width$}  {v}\n"));
                }
            }
        }
    }
    print!("{out}");
    Ok(())
}
