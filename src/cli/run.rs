//! `kiln run NODE`: builds exactly one node, for a workflow engine that runs kiln's graph one
//! task per node (see `kiln export`). Its dependencies' results come from the cache, local then
//! remote; its own result goes to the remote, where the tasks after it find it.

use std::collections::BTreeSet;

use clap::Args;

use super::build::{self, Run};
use super::{Cli, CliError, Select, context};
use crate::exec::Outcome;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The node id, as `kiln plan` prints it.
    pub node: String,
    /// Also build the dependencies that neither the local nor the remote cache holds (without
    /// it, kiln refuses and names them).
    #[arg(long)]
    pub with_deps: bool,
    /// How many nodes run at once with --with-deps (default: the number of cores).
    #[arg(short = 'j', long = "jobs", requires = "with_deps")]
    pub jobs: Option<usize>,
    /// Fail at once if another kiln holds the cache, instead of waiting.
    #[arg(long)]
    pub no_wait: bool,
    /// No progress lines, only the summary.
    #[arg(short, long)]
    pub quiet: bool,
    /// The progress view, as for `kiln build`.
    #[arg(long, value_enum, default_value = "auto", value_name = "VIEW")]
    pub progress: super::settings::ProgressChoice,
    /// Print the summary as one JSON object on stdout, as `kiln build --json` does.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cli: &Cli, args: &RunArgs) -> Result<(), CliError> {
    let loaded = context::load(&cli.file, &Select::default(), true)?;
    let dir = context::cache_dir(&loaded.config, &cli.cache_dir);
    let whole = context::lower(&loaded, Some(&dir))?;
    let ix = context::find_node(&whole, &args.node)?;
    // The node and what it reads: the executor runs on that graph alone.
    let graph = whole.upstream_of(ix);
    drop(whole);
    let cache = build::lock_cache(cli, &loaded, args.no_wait)?;
    let remote = super::remote::open(cli, &loaded.config)?;
    let (view, plan) =
        build::plan_to_run(&loaded, &graph, &cache, remote.clone(), &BTreeSet::new())?;
    let target = graph
        .find(&args.node)
        .expect("the node is in its own upstream graph");
    let missing: Vec<&str> = graph
        .order()
        .into_iter()
        .filter(|ix| *ix != target && plan.action(*ix).will_run())
        .map(|ix| graph.node(ix).id.as_str())
        .collect();
    if !missing.is_empty() && !args.with_deps {
        let shown: Vec<String> = missing.iter().map(|id| format!("`{id}`")).collect();
        return Err(CliError::Failed(format!(
            "cannot run `{}`: {} of its dependencies {} in neither the local nor the remote cache: {}; run {} first (`kiln run {}`), or pass --with-deps to build {} here",
            args.node,
            missing.len(),
            if missing.len() == 1 { "is" } else { "are" },
            shown.join(", "),
            if missing.len() == 1 { "it" } else { "them" },
            missing[0],
            if missing.len() == 1 { "it" } else { "them" },
        )));
    }
    let run = Run {
        jobs: args.jobs,
        fail_fast: false,
        view: build::progress_view(args.quiet, args.progress),
        json: args.json,
        write_pack: false,
    };
    let report = build::execute(cli, &loaded, &graph, &plan, &cache, &remote, &view, &run)?;
    build::exit(&report)?;
    // The tasks after this one read its result from the remote: it must be there.
    let Some(remote) = remote.clone().filter(|r| r.writes()) else {
        if remote.is_some() {
            eprintln!(
                "warning: no signing key, so the result of {} stays in this cache only",
                args.node
            );
        }
        return Ok(());
    };
    let node = graph.node(target);
    let outcome = report.nodes.iter().find(|n| n.id == node.id);
    if outcome.is_some_and(|n| n.outcome == Outcome::Cached) && !remote.has_seen(&node.key) {
        // Cached here only (a cache kept between runs): share it now.
        if let Ok(Some(r)) = cache.store.get_action(&node.key) {
            remote.block_on(remote.push(&r, &cache.store));
        }
        super::remote::print_warnings(&Some(remote.clone()));
    }
    if !remote.has_seen(&node.key) {
        return Err(CliError::Failed(format!(
            "the result of `{}` is not in the remote cache {} (see the warning above), so the tasks after it would not find it; run it again",
            node.id,
            remote.url()
        )));
    }
    Ok(())
}
