//! `kiln build`: plan, then run what the plan marks, and record the results.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::context::Loaded;
use super::plan::{SavedPlan, StoreView, forced_ids};
use super::{Cli, CliError, Select, context};
use crate::builders::Builtin;
use crate::exec::{self, BuildOptions, BuildReport, Progress, View};
use crate::graph::Graph;
use crate::plan::{self, Plan};
use crate::store::remote::Remote;
use crate::store::{CacheLock, LocalStore};

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

impl BuildArgs {
    /// A build no one started by hand (a watcher's, a server's): `select`ed cells, plain
    /// progress lines, and the defaults of `kiln build` otherwise.
    pub(super) fn unattended(select: Select, jobs: Option<usize>) -> BuildArgs {
        BuildArgs {
            select,
            jobs,
            fail_fast: false,
            no_wait: false,
            force: Vec::new(),
            quiet: false,
            progress: super::settings::ProgressChoice::Plain,
            json: false,
            plan: None,
            debug: false,
        }
    }
}

/// The progress view `--quiet` and `--progress` ask for, where stderr can show it.
pub(super) fn progress_view(quiet: bool, progress: super::settings::ProgressChoice) -> View {
    use std::io::IsTerminal;
    let env = super::settings::Env::read();
    if quiet {
        View::Quiet
    } else if super::settings::live(progress, std::io::stderr().is_terminal(), &env) {
        View::Live
    } else {
        View::Plain
    }
}

/// The local cache of a build, locked for it.
pub(super) struct Cache {
    pub dir: PathBuf,
    pub store: Arc<LocalStore>,
    pub _lock: CacheLock,
}

/// Opens and locks the cache of `loaded` (waiting for another kiln unless `no_wait`).
pub(super) fn lock_cache(cli: &Cli, loaded: &Loaded, no_wait: bool) -> Result<Cache, CliError> {
    let dir = context::cache_dir(&loaded.config, &cli.cache_dir);
    let fail = |e: crate::store::StoreError| CliError::Failed(e.to_string());
    let store = Arc::new(LocalStore::open(&dir).map_err(fail)?);
    let lock = store
        .lock(!no_wait, |holder| {
            eprintln!("waiting for the cache lock: {holder}")
        })
        .map_err(fail)?;
    Ok(Cache {
        dir,
        store,
        _lock: lock,
    })
}

/// The plan a build executes: made against the local and remote cache, with every cached
/// publish result's claim refreshed, and every cached upstream result a running node reads
/// fetched and checked (one that cannot be read is planned again).
pub(super) fn plan_to_run(
    loaded: &Loaded,
    graph: &Graph,
    cache: &Cache,
    remote: Option<Arc<Remote>>,
    forced: &BTreeSet<String>,
) -> Result<(StoreView, Plan), CliError> {
    let mut view = StoreView::with_store(cache.store.clone(), graph, remote);
    let mut plan = plan::plan(graph, &view, forced);
    // A publish node is skipped only when its claim still holds.
    super::refresh::refresh_plan(loaded, graph, &mut view, &mut plan, forced)?;
    while view.forget_unreadable_upstream(graph, &plan) {
        plan = plan::plan(graph, &view, forced);
    }
    for w in cache.store.take_warnings() {
        eprintln!("warning: {w}");
    }
    Ok((view, plan))
}

/// How [`execute`] runs and reports.
pub(super) struct Run {
    pub jobs: Option<usize>,
    pub fail_fast: bool,
    pub view: View,
    pub json: bool,
    /// Whether to write the pack of the graph to the remote afterwards (a whole build does; a
    /// run of one node does not replace the latest pack with its few nodes).
    pub write_pack: bool,
}

/// Runs `plan` on the executor and prints the summary (and, in GitHub Actions, the
/// annotations and job summary). Returns the report; the caller turns it into an exit code
/// with [`exit`].
#[allow(clippy::too_many_arguments)]
pub(super) fn execute(
    cli: &Cli,
    loaded: &Loaded,
    graph: &Graph,
    plan: &Plan,
    cache: &Cache,
    remote: &Option<Arc<Remote>>,
    view: &StoreView,
    run: &Run,
) -> Result<BuildReport, CliError> {
    let store = &cache.store;
    // Nothing starts while a prerequisite of what will run is missing.
    let install = super::preflight::install(cli, &loaded.config);
    super::preflight::run(
        graph
            .order()
            .into_iter()
            .filter(|ix| plan.action(*ix).will_run())
            .map(|ix| graph.node(ix)),
        &install,
    )?;
    let jobs = run
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the runtime: {e}")))?;
    let opts = BuildOptions {
        jobs,
        fail_fast: run.fail_fast,
        root: loaded.config.root.clone(),
        progress: Progress::new(
            run.view,
            plan.actions.iter().filter(|a| a.will_run()).count(),
            super::settings::colors().stderr,
        ),
        image_builder: install,
        remote: remote.clone(),
    };
    let report = runtime.block_on(exec::execute(
        graph,
        plan,
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
    if let Some(r) = remote
        && run.write_pack
    {
        super::remote::write_pack(r, graph, store, &|k| view.pack_facts(k));
    }
    super::remote::print_warnings(remote);
    if !run.json {
        let table = exec::summary_table(&report);
        if !table.is_empty() {
            eprint!("\n{table}");
        }
    }
    if let Some(gh) = super::github::GitHub::from_env() {
        for n in &report.nodes {
            if matches!(n.outcome, exec::Outcome::Failed(_)) {
                // With --json stdout is the report's; the runner reads commands on stderr too.
                gh.error(&n.id, &exec::failure_message(n), run.json);
            }
        }
        gh.append_summary(&exec::summary_markdown(&report));
    }
    if run.json {
        println!("{}", report.to_json());
    } else {
        println!("{}", report.summary());
    }
    Ok(report)
}

/// The exit of a build that ended with `report`.
pub(super) fn exit(report: &BuildReport) -> Result<(), CliError> {
    if report.cancelled {
        return Err(CliError::Exit(report.cancelled_exit_code()));
    }
    if !report.ok() {
        return Err(CliError::Exit(1));
    }
    Ok(())
}

pub fn run(cli: &Cli, args: &BuildArgs) -> Result<(), CliError> {
    exit(&report(cli, args)?)
}

/// What `kiln build` runs before its exit code, and what `kiln serve` runs for each queued
/// build: plan, refresh, execute, print the summary; the report.
pub fn report(cli: &Cli, args: &BuildArgs) -> Result<BuildReport, CliError> {
    let saved = args.plan.as_deref().map(SavedPlan::read).transpose()?;
    let select = match &saved {
        Some(s) => Select {
            cell: s.cells.clone(),
            ..Select::default()
        },
        None => args.select.clone(),
    };
    let prefetch = context::Prefetch::start(&cli.file, &cli.cache_dir);
    let loaded = context::load(&cli.file, &select, true)?;
    let cache = lock_cache(cli, &loaded, args.no_wait)?;
    let (mut graph, _) = context::lower_keyed(&loaded, Some(&cache.dir), Some(prefetch))?;
    if args.debug {
        graph.debug_every_attempt();
    }
    let remote = super::remote::open(cli, &loaded.config)?;
    let forced: BTreeSet<String> = match &saved {
        Some(s) => s.forced.iter().cloned().collect(),
        None => forced_ids(&graph, &args.force)?,
    };
    let (view, plan) = plan_to_run(&loaded, &graph, &cache, remote.clone(), &forced)?;
    if let (Some(saved), Some(path)) = (&saved, &args.plan) {
        saved.check(loaded.config.digest(), &graph, &plan, path)?;
    }
    let run = Run {
        jobs: args.jobs,
        fail_fast: args.fail_fast,
        view: progress_view(args.quiet, args.progress),
        json: args.json,
        write_pack: true,
    };
    execute(cli, &loaded, &graph, &plan, &cache, &remote, &view, &run)
}
