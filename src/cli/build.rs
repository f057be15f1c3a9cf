//! `kiln build`: plan, then run what the plan marks, and record the results.

use std::collections::BTreeSet;
use std::sync::Arc;

use clap::Args;

use super::plan::{SavedPlan, StoreView, forced_ids};
use super::{Cli, CliError, Select, context};
use crate::builders::Builtin;
use crate::exec::{self, BuildOptions, Progress, View};
use crate::plan;
use crate::store::LocalStore;

#[derive(Args, Debug)]
pub struct BuildArgs {
    #[command(flatten)]
    pub select: Select,
    /// How many nodes run at once (default: the number of cores).
    #[arg(short = 'j', long = "jobs")]
    pub jobs: Option<usize>,
    /// Stop starting nodes after the first failure.
    #[arg(long)]
    pub fail_fast: bool,
    /// Fail at once if another kiln holds the cache, instead of waiting.
    #[arg(long)]
    pub no_wait: bool,
    /// Rebuild this node id or every node of this cell (repeatable).
    #[arg(long, value_name = "NODE|CELL")]
    pub force: Vec<String>,
    /// No progress lines, only the summary.
    #[arg(short, long)]
    pub quiet: bool,
    /// The progress view: `live` (one line per running node under an overall bar; needs a
    /// terminal), `plain` (timestamped lines), or `auto`: live on a terminal unless `CI` is set
    /// or `TERM` is `dumb`. `NO_COLOR` only removes colour.
    #[arg(long, value_enum, default_value = "auto", value_name = "VIEW")]
    pub progress: super::settings::ProgressChoice,
    /// Print the summary as one JSON object on stdout: the counts and every node with its
    /// outcome (errors too are JSON); progress stays on stderr.
    #[arg(long)]
    pub json: bool,
    /// Run every attempt of every node with its debug settings (`PACKER_LOG=1` for
    /// image-builder), not only retries.
    #[arg(long)]
    pub debug: bool,
    /// Execute exactly this saved plan (`kiln plan -o FILE`); refuse if anything changed since.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["force", "matrix", "kubernetes", "provider", "os", "cell"])]
    pub plan: Option<std::path::PathBuf>,
}

/// The progress view `--quiet` and `--progress` ask for, where stderr can show it.
fn progress_view(args: &BuildArgs) -> View {
    use std::io::IsTerminal;
    let env = super::settings::Env::read();
    if args.quiet {
        View::Quiet
    } else if super::settings::live(args.progress, std::io::stderr().is_terminal(), &env) {
        View::Live
    } else {
        View::Plain
    }
}

pub fn run(cli: &Cli, args: &BuildArgs) -> Result<(), CliError> {
    let saved = args.plan.as_deref().map(SavedPlan::read).transpose()?;
    let select = match &saved {
        Some(s) => Select {
            cell: s.cells.clone(),
            ..Select::default()
        },
        None => args.select.clone(),
    };
    let loaded = context::load(&cli.file, &select, true)?;
    let dir = context::cache_dir(&loaded.config, &cli.cache_dir);
    let fail = |e: crate::store::StoreError| CliError::Failed(e.to_string());
    let store = Arc::new(LocalStore::open(&dir).map_err(fail)?);
    let _lock = store
        .lock(!args.no_wait, |holder| {
            eprintln!("waiting for the cache lock: {holder}")
        })
        .map_err(fail)?;
    let mut graph = context::lower(&loaded, Some(&dir))?;
    if args.debug {
        graph.debug_every_attempt();
    }
    let remote = super::remote::open(cli, &loaded.config)?;
    let mut view = StoreView::open(dir.clone(), &graph, remote.clone())?;
    let forced: BTreeSet<String> = match &saved {
        Some(s) => s.forced.iter().cloned().collect(),
        None => forced_ids(&graph, &args.force)?,
    };
    let mut plan = plan::plan(&graph, &view, &forced);
    // A publish node is skipped only when its claim still holds.
    super::refresh::refresh_plan(&loaded, &graph, &mut view, &mut plan, &forced)?;
    while view.forget_unreadable_upstream(&graph, &plan) {
        plan = plan::plan(&graph, &view, &forced);
    }
    if let (Some(saved), Some(path)) = (&saved, &args.plan) {
        saved.check(loaded.config.digest(), &graph, &plan, path)?;
    }
    for w in store.take_warnings() {
        eprintln!("warning: {w}");
    }
    let install = super::preflight::install(cli, &loaded.config);
    super::preflight::run(
        graph
            .order()
            .into_iter()
            .filter(|ix| plan.action(*ix).will_run())
            .map(|ix| graph.node(ix)),
        &install,
    )?;
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the runtime: {e}")))?;
    let opts = BuildOptions {
        jobs,
        fail_fast: args.fail_fast,
        root: loaded.config.root.clone(),
        progress: Progress::new(
            progress_view(args),
            plan.actions.iter().filter(|a| a.will_run()).count(),
            super::settings::colors().stderr,
        ),
        image_builder: install,
        remote: remote.clone(),
    };
    let report = runtime.block_on(exec::execute(
        &graph,
        &plan,
        store.clone(),
        Arc::new(Builtin),
        opts,
    ));
    for w in store.take_warnings() {
        eprintln!("warning: {w}");
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(r) = &remote {
        super::remote::write_pack(r, &graph, &store, &|k| view.pack_facts(k));
    }
    super::remote::print_warnings(&remote);
    if !args.json {
        let table = exec::summary_table(&report);
        if !table.is_empty() {
            eprint!("\n{table}");
        }
    }
    if let Some(gh) = super::github::GitHub::from_env() {
        for n in &report.nodes {
            if matches!(n.outcome, exec::Outcome::Failed(_)) {
                // With --json stdout is the report's; the runner reads commands on stderr too.
                gh.error(&n.id, &exec::failure_message(n), args.json);
            }
        }
        gh.append_summary(&exec::summary_markdown(&report));
    }
    if args.json {
        println!("{}", report.to_json());
    } else {
        println!("{}", report.summary());
    }
    if report.cancelled {
        return Err(CliError::Exit(report.cancelled_exit_code()));
    }
    if !report.ok() {
        return Err(CliError::Exit(1));
    }
    Ok(())
}
