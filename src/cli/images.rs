//! `kiln images`: the catalog of what is published, per cell, from the last recorded result of
//! each cell's publish node (AMI ids per region, image names, bucket URLs with their sha256, …).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Cli, CliError, Select, context};
use crate::config::StepKind;
use crate::store::{ClaimStatus, LocalStore};

/// What the latest refresh found of a claim.
#[derive(Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Refresh {
    Held,
    Drift,
    Unchecked,
}

#[derive(Serialize)]
pub struct Entry {
    pub cell: String,
    /// The cell's publish node, if its module has a publish step.
    pub node: Option<String>,
    /// The facts of that node's last result; `null` when it never ran.
    pub facts: Option<BTreeMap<String, String>>,
    /// Whether that result is of the node as the config declares it now *and* its claim held at
    /// the latest refresh (`kiln plan` or `kiln build`).
    pub current: bool,
    /// What the latest refresh found: `held`, `drift`, `unchecked`, or `null` when none was made
    /// for this result.
    pub refresh: Option<Refresh>,
    /// When that refresh was, in milliseconds since the Unix epoch.
    pub checked_unix_ms: Option<u64>,
    /// Why the claim did not hold, or could not be checked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

pub fn run(cli: &Cli, select: &Select, json: bool) -> Result<(), CliError> {
    let loaded = context::load(&cli.file, select, true)?;
    let dir = context::cache_dir(&loaded.config, &cli.cache_dir);
    let entries = catalog(&loaded, &dir)?;
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
                out.push_str(&format!("{}  {n}  {}\n", e.cell, e.state()));
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

/// The catalog of the selected cells: per cell, its publish node's last result and what the
/// latest refresh found of its claim. Reads the cache at `dir`; changes nothing in it but the
/// memos lowering keeps.
pub fn catalog(loaded: &context::Loaded, dir: &std::path::Path) -> Result<Vec<Entry>, CliError> {
    let graph = context::lower(loaded, Some(dir))?;
    let fail = |e: crate::store::StoreError| CliError::Failed(e.to_string());
    let store = if dir.exists() {
        Some(LocalStore::open(dir).map_err(fail)?)
    } else {
        None
    };
    let records = match &store {
        Some(s) => s.load_records().map_err(fail)?,
        None => BTreeMap::new(),
    };
    let claims = store.as_ref().map(|s| s.load_claims()).unwrap_or_default();
    if let Some(s) = &store {
        for w in s.take_warnings() {
            eprintln!("warning: {w}");
        }
    }
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
            refresh: None,
            checked_unix_ms: None,
            problems: Vec::new(),
        };
        if let (Some(n), Some(s)) = (node, &store)
            && let Some(rec) = records.get(&n.id)
            && let Some(r) = s.get_action(&rec.key).map_err(fail)?
        {
            let claim = claims.get(&n.id).filter(|c| c.facts == r.facts);
            if let Some(c) = claim {
                entry.checked_unix_ms = Some(c.checked_unix_ms);
                let (status, problems) = match &c.status {
                    ClaimStatus::Held => (Refresh::Held, Vec::new()),
                    ClaimStatus::Drift { reasons } => (Refresh::Drift, reasons.clone()),
                    ClaimStatus::Unchecked { why } => (Refresh::Unchecked, vec![why.clone()]),
                };
                entry.refresh = Some(status);
                entry.problems = problems;
            }
            entry.current = rec.key == n.key && entry.refresh == Some(Refresh::Held);
            entry.facts = Some(r.facts);
        }
        entries.push(entry);
    }
    Ok(entries)
}

impl Entry {
    /// What `kiln images` says of a published image: current (verified when), drifted, or why
    /// it is not verified.
    pub fn state(&self) -> String {
        let when = self.checked_unix_ms.map(|ms| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
            )
        });
        match (self.refresh, &when) {
            (Some(Refresh::Held), Some(t)) if self.current => format!("current (verified {t})"),
            (Some(Refresh::Held), _) => {
                "published by an earlier config; `kiln plan` shows what changed".into()
            }
            (Some(Refresh::Drift), Some(t)) => format!(
                "NOT CURRENT: at the refresh of {t}: {}; `kiln build` publishes it again",
                self.problems.join("; ")
            ),
            (Some(_), Some(t)) => format!(
                "not verified: the refresh of {t} could not check it: {}",
                self.problems.join("; ")
            ),
            _ => "not verified: never refreshed; run `kiln plan`".into(),
        }
    }
}
