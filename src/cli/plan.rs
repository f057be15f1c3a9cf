//! `kiln plan`: every node with its action and the reasons for it; `-o` saves the plan for
//! `kiln build --plan`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::render::{self, Style};
pub use super::view::{StoreView, published_facts};
use super::{Cli, CliError, Select, context};
use crate::graph::Graph;
use crate::hash::Digest;
use crate::plan::{self, Plan};
use crate::store::remote::Remote;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    Text,
    Json,
    Markdown,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    pub select: Select,
    /// How to print the plan.
    #[arg(long, value_enum, default_value = "text")]
    pub format: PlanFormat,
    /// Shorthand for --format json.
    #[arg(long)]
    pub json: bool,
    /// List every node, cached ones included (by default the text and markdown plans list the
    /// nodes that run and count the cached ones per cell; JSON always lists every node).
    #[arg(long)]
    pub all: bool,
    /// Save the plan (JSON) for `kiln build --plan FILE`.
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Rebuild this node id or every node of this cell, even if cached (repeatable).
    #[arg(long, value_name = "NODE|CELL")]
    pub force: Vec<String>,
    /// Exit 0 when there is nothing to do, 2 when something would run, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Check every cached publish result against its target (bucket, AMIs, snapshot) before
    /// trusting it; `--refresh=false` plans from the cache alone.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub refresh: bool,
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

/// The publish nodes due to run that another runner holds a live claim on, and who.
fn claimed_publishes(remote: &Remote, graph: &Graph, plan: &Plan) -> BTreeMap<String, String> {
    let due: Vec<(String, Digest)> = graph
        .order()
        .into_iter()
        .filter(|ix| plan.action(*ix).will_run())
        .map(|ix| graph.node(ix))
        .filter(|n| n.step == crate::config::StepKind::Publish)
        .map(|n| (n.id.clone(), n.key))
        .collect();
    remote.block_on(async {
        use futures_util::StreamExt;
        futures_util::stream::iter(due)
            .map(|(id, key)| async move { Some((id, remote.current_claim(&key).await?.owner)) })
            .buffer_unordered(16)
            .filter_map(|c| async move { c })
            .collect()
            .await
    })
}

/// Plans; under `--detailed-exitcode` exits 0 with nothing to do, 2 with changes, 1 on any
/// error (a usage error included, as in Terraform).
pub fn run(cli: &Cli, args: &PlanArgs) -> Result<(), CliError> {
    let r = plan_and_print(cli, args);
    match r {
        Err(e) if args.detailed_exitcode && !matches!(e, CliError::Exit(2)) => Err(e.as_failure()),
        r => r,
    }
}

fn plan_and_print(cli: &Cli, args: &PlanArgs) -> Result<(), CliError> {
    let prefetch = context::Prefetch::start(&cli.file, &cli.cache_dir);
    let loaded = context::load(&cli.file, &args.select, true)?;
    print_plan(cli, args, loaded, Some(prefetch))
}

/// Plans `loaded` (however it was loaded: `kiln update --dry-run` loads the lock it would
/// write) and prints the plan as `args` say.
/// A snapshot `prefetch` started before the config loaded is used if it is of the same cache.
pub fn print_plan(
    cli: &Cli,
    args: &PlanArgs,
    loaded: context::Loaded,
    prefetch: Option<context::Prefetch>,
) -> Result<(), CliError> {
    let dir = context::cache_dir(&loaded.config, &cli.cache_dir);
    let (graph, graph_key) = context::lower_keyed(&loaded, Some(&dir), prefetch)?;
    let remote = super::remote::open(cli, &loaded.config)?;
    let mut view = StoreView::open(dir, &graph, remote.clone())?;
    let forced = forced_ids(&graph, &args.force)?;
    let mut plan = plan::plan(&graph, &view, &forced);
    if args.refresh {
        super::refresh::refresh_plan(&loaded, &graph, &mut view, &mut plan, &forced)?;
    }
    if loaded.whole {
        plan.orphans = view.orphans(&graph, graph_key);
    }
    if let Some(r) = &remote {
        plan.claimed = claimed_publishes(r, &graph, &plan);
    }
    let orphans: Vec<(String, BTreeMap<String, String>)> = plan
        .orphans
        .iter()
        .map(|id| (id.clone(), view.published(id)))
        .collect();
    let cells: Vec<String> = if loaded.whole {
        Vec::new()
    } else {
        loaded.cells.iter().map(|c| c.name.clone()).collect()
    };
    let json = || {
        let mut v = render::json(&graph, &plan, &orphans, loaded.config.digest(), &cells);
        v["forced"] = serde_json::json!(forced);
        v["refreshed"] = serde_json::json!(args.refresh);
        if let Some(r) = &remote {
            use std::sync::atomic::Ordering::Relaxed;
            v["remote"] = serde_json::json!({
                "url": r.url(),
                "requests": r.stats().requests.load(Relaxed),
                "bytes_fetched": r.stats().bytes_in.load(Relaxed),
                "failed": r.is_down(),
            });
        }
        v
    };
    if let Some(path) = &args.out {
        let text = serde_json::to_string_pretty(&json()).expect("plan JSON") + "\n";
        std::fs::write(path, text)
            .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", path.display())))?;
    }
    let format = if args.json {
        PlanFormat::Json
    } else {
        args.format
    };
    let detail = render::Detail { all: args.all };
    let text = match format {
        PlanFormat::Json => serde_json::to_string_pretty(&json()).expect("plan JSON") + "\n",
        PlanFormat::Markdown => render::markdown(&graph, &plan, &orphans, detail),
        PlanFormat::Text => {
            let color = super::settings::colors().stdout;
            let mut text = render::text(&graph, &plan, &orphans, Style { color }, detail);
            if !args.refresh {
                text.push_str("The published state was not checked (--refresh=false): publish nodes are planned from the cache alone.\n");
            }
            text
        }
    };
    crate::output::write_bytes(crate::output::Stream::Stdout, text.as_bytes());
    if let Some(gh) = super::github::GitHub::from_env() {
        let md = match format {
            PlanFormat::Markdown => text,
            _ => render::markdown(&graph, &plan, &orphans, detail),
        };
        gh.append_summary(&md);
    }
    let work = plan.has_work();
    // Freeing a large graph costs time and changes nothing: the process ends here.
    std::mem::forget((graph, plan, view, loaded));
    if args.detailed_exitcode && work {
        return Err(CliError::Exit(2));
    }
    Ok(())
}

/// The parts of a saved plan `kiln build --plan` checks.
#[derive(serde::Deserialize)]
pub struct SavedPlan {
    pub format_version: u32,
    pub config_digest: Digest,
    pub cells: Vec<String>,
    #[serde(default)]
    pub forced: Vec<String>,
    pub nodes: Vec<SavedNode>,
}

#[derive(serde::Deserialize)]
pub struct SavedNode {
    pub id: String,
    pub key: Digest,
    pub action: String,
}

impl SavedPlan {
    pub fn read(path: &std::path::Path) -> Result<SavedPlan, CliError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::Usage(format!("cannot read the plan {}: {e}", path.display()))
        })?;
        let plan: SavedPlan = serde_json::from_str(&text).map_err(|e| {
            CliError::Usage(format!(
                "{} is not a saved kiln plan: {e}; make one with `kiln plan -o FILE`",
                path.display()
            ))
        })?;
        if plan.format_version != render::PLAN_FORMAT_VERSION {
            return Err(CliError::Usage(format!(
                "{} is a plan of format {}, this kiln reads format {}; plan again with this kiln",
                path.display(),
                plan.format_version,
                render::PLAN_FORMAT_VERSION
            )));
        }
        Ok(plan)
    }

    /// Refuses when anything differs from what was saved: the config, an input (a key), or the
    /// cache (an action).
    pub fn check(
        &self,
        config: Digest,
        graph: &Graph,
        plan: &Plan,
        path: &std::path::Path,
    ) -> Result<(), CliError> {
        let stale = |why: String| {
            CliError::Failed(format!(
                "the saved plan {} is stale: {why}; run `kiln plan -o {}` again",
                path.display(),
                path.display()
            ))
        };
        if config != self.config_digest {
            return Err(stale(
                "the config (images.kdl, its modules or images.lock) changed since it was saved"
                    .into(),
            ));
        }
        if self.nodes.len() != graph.len() {
            return Err(stale(format!(
                "it has {} nodes, the config now gives {}",
                self.nodes.len(),
                graph.len()
            )));
        }
        for saved in &self.nodes {
            let Some(ix) = graph.find(&saved.id) else {
                return Err(stale(format!("node {} is no longer declared", saved.id)));
            };
            let node = graph.node(ix);
            if node.key != saved.key {
                return Err(stale(format!(
                    "an input of {} changed (key {} → {})",
                    saved.id,
                    saved.key.short(),
                    node.key.short()
                )));
            }
            let now = serde_json::to_value(plan.action(ix)).ok();
            let now = now
                .as_ref()
                .and_then(|v| v["action"].as_str())
                .unwrap_or_default();
            if now != saved.action {
                return Err(stale(format!(
                    "the cache changed: {} was `{}`, is now `{now}`",
                    saved.id, saved.action
                )));
            }
        }
        Ok(())
    }
}
