//! The executor: runs the nodes a plan marks, in dependency order, on tokio, within the job and
//! per-provider limits; retries with debug settings, timeouts, early cutoff, cancellation.
//! A node's result is recorded only once it fully succeeded, so an interrupted build resumes.

mod commit;
mod job;
mod progress;
pub mod refresh;
mod report;
mod workdir;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use petgraph::graph::NodeIndex;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::builders::Runner;
use crate::graph::Graph;
use crate::plan::Plan;
use crate::process::ProcTable;
use crate::store::{ActionResult, LocalStore, Record, now_unix_ms};
use commit::Committer;
pub use job::log_path;
use job::{Job, JobOutcome, Shared, StepSlot, run_job};
pub use progress::{Progress, View};
pub use report::{
    BuildReport, NodeReport, Outcome, TAIL_LINES, failure_message, summary_markdown, summary_table,
};
use report::{first_failed_ancestor, report_failed};
use workdir::WorkDirs;

pub struct BuildOptions {
    pub jobs: usize,
    pub fail_fast: bool,
    /// The config root (relative buckets resolve against it).
    pub root: PathBuf,
    pub progress: Progress,
    /// Where image-builder is at run time (`tool "image-builder" … source= image= engine=`).
    pub image_builder: crate::imagebuilder::Install,
    /// The shared cache, if one is configured.
    pub remote: Option<Arc<crate::store::remote::Remote>>,
}

/// Runs the plan. Cancellation (Ctrl-C, SIGTERM) stops new work, signals running children and
/// waits for them; nothing unfinished is recorded.
pub async fn execute(
    graph: &Graph,
    plan: &Plan,
    store: Arc<LocalStore>,
    runner: Arc<dyn Runner>,
    opts: BuildOptions,
) -> BuildReport {
    store.defer_sync(true);
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let procs = Arc::new(ProcTable::default());
    let caught = Arc::new(std::sync::atomic::AtomicI32::new(0));
    let signals = tokio::spawn({
        let procs = procs.clone();
        let caught = caught.clone();
        async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            let sig = tokio::select! {
                _ = int.recv() => libc::SIGINT,
                _ = term.recv() => libc::SIGTERM,
            };
            caught.store(sig, std::sync::atomic::Ordering::SeqCst);
            let _ = cancel_tx.send(true);
            procs.signal_all(libc::SIGTERM);
        }
    });
    let sh = Arc::new(Shared {
        store: store.clone(),
        runner,
        procs,
        cancel: cancel_rx.clone(),
        root: opts.root.clone(),
        progress: opts.progress.clone(),
        image_builder: Arc::new(opts.image_builder.clone()),
        work_dirs: WorkDirs::new(store.tmp_dir()),
        committer: Committer::start(store.clone()),
        remote: opts.remote.clone(),
    });

    let order = graph.order();
    let mut results: HashMap<NodeIndex, ActionResult> = HashMap::new();
    let mut outcome: HashMap<NodeIndex, NodeReport> = HashMap::new();
    let mut waiting: HashMap<NodeIndex, usize> = HashMap::new();
    let mut ready: Vec<NodeIndex> = Vec::new();
    let records = store.load_records().unwrap_or_default();
    for &ix in &order {
        let node = graph.node(ix);
        if !plan.action(ix).will_run() {
            outcome.insert(ix, NodeReport::idle(&node.id, Outcome::Cached));
            if records.get(&node.id).map(|r| r.key) != Some(node.key) {
                let _ = store.append_record(&Record {
                    id: node.id.clone(),
                    key: node.key,
                    unix_ms: now_unix_ms(),
                });
            }
        }
    }
    for &ix in &order {
        if outcome.contains_key(&ix) {
            continue;
        }
        let n = graph.deps(ix).filter(|d| !outcome.contains_key(d)).count();
        if n == 0 {
            ready.push(ix);
        } else {
            waiting.insert(ix, n);
        }
    }
    ready.reverse(); // pop() takes them in graph order

    let mut running: JoinSet<(NodeIndex, Duration, JobOutcome)> = JoinSet::new();
    // Jobs by task, and the jobs whose step still runs: a job slot (and a provider slot) is
    // taken while a step runs, not while its result is stored and committed.
    let mut tasks: HashMap<tokio::task::Id, NodeIndex> = HashMap::new();
    let mut stepping: HashSet<NodeIndex> = HashSet::new();
    let (step_done_tx, mut step_done) = tokio::sync::mpsc::unbounded_channel();
    let mut per_provider: HashMap<std::sync::Arc<str>, u32> = HashMap::new();
    let free_slot = |ix: NodeIndex,
                     stepping: &mut HashSet<NodeIndex>,
                     per_provider: &mut HashMap<Arc<str>, u32>| {
        if stepping.remove(&ix)
            && let Some(c) = per_provider.get_mut(&graph.node(ix).provider)
        {
            *c -= 1;
        }
    };
    let mut stop = false;
    let mut warnings = Vec::new();
    // The claims of the publish steps that ran: they held when they were made.
    let mut published = crate::store::Claims::new();
    loop {
        let cancelled = *cancel_rx.borrow();
        // Start what fits.
        let mut deferred = Vec::new();
        while !stop && !cancelled && stepping.len() < opts.jobs.max(1) {
            let Some(ix) = ready.pop() else { break };
            let node = graph.node(ix);
            let used = per_provider.get(&node.provider).copied().unwrap_or(0);
            if node.policy.limit.is_some_and(|l| used >= l) {
                deferred.push(ix);
                continue;
            }
            // A publish node the plan holds (this runner could not record it where other
            // runners look, see `CacheView::publish_hold`) does not run: nothing is read or
            // fetched for it. One that early cutoff may reuse is held by its job instead.
            if plan.holds(graph, ix) {
                sh.progress.finished(node, &Outcome::Held, Duration::ZERO);
                outcome.insert(ix, NodeReport::idle(&node.id, Outcome::Held));
                continue;
            }
            // Upstream results: every ancestor's, nearest first.
            let mut upstream = Vec::new();
            let mut dep_outputs = BTreeMap::new();
            let mut seen = HashSet::new();
            let mut frontier: Vec<NodeIndex> = graph.deps(ix).collect();
            let mut missing = None;
            // Early cutoff is judged on every upstream result the step can read, not only on
            // its nearest upstream nodes' (a publish step uploads the build's image through a
            // validate step that outputs nothing).
            while let Some(d) = frontier.pop() {
                if !seen.insert(d) {
                    continue;
                }
                match load_result(&store, graph, &mut results, d) {
                    Some(r) => {
                        dep_outputs.insert(graph.node(d).id.clone(), r.outputs_digest());
                        upstream.push((graph.node(d).step, r));
                    }
                    None => missing = Some(graph.node(d).id.clone()),
                }
                frontier.extend(graph.deps(d));
            }
            if let Some(m) = missing {
                let failed = Outcome::Failed(format!(
                    "the cached result of {m} is unreadable; run `kiln cache verify --repair`"
                ));
                outcome.insert(ix, NodeReport::idle(&node.id, failed));
                continue;
            }
            *per_provider.entry(node.provider.clone()).or_default() += 1;
            let job = Job {
                node: node.clone(),
                action: plan.action(ix).clone(),
                held: plan.held.contains_key(&node.id),
                upstream,
                dep_outputs,
            };
            let sh = sh.clone();
            let slot = StepSlot {
                ix,
                done: step_done_tx.clone(),
            };
            let task = running.spawn(async move {
                let t = Instant::now();
                let r = run_job(sh, job, slot).await;
                (ix, t.elapsed(), r)
            });
            tasks.insert(task.id(), ix);
            stepping.insert(ix);
        }
        ready.extend(deferred.into_iter().rev());
        if running.is_empty() {
            break;
        }
        let done = tokio::select! {
            Some(ix) = step_done.recv() => {
                free_slot(ix, &mut stepping, &mut per_provider);
                continue;
            }
            done = running.join_next_with_id() => done,
        };
        let Some(done) = done else { break };
        let task = match &done {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        if let Some(ix) = tasks.remove(&task) {
            free_slot(ix, &mut stepping, &mut per_provider);
        }
        let Ok((
            _,
            (
                ix,
                took,
                JobOutcome {
                    outcome: out,
                    attempts,
                    log,
                    result,
                    witness,
                    claim,
                    warning,
                    tail,
                    retries,
                },
            ),
        )) = done
        else {
            continue;
        };
        let node = graph.node(ix);
        if out == Outcome::Built
            && crate::builders::makes_claims(node.builder)
            && let Some(r) = &result
        {
            published.insert(node.id.clone(), refresh::published(r, witness));
        }
        if let Some(c) = claim {
            published.insert(node.id.clone(), c);
        }
        warnings.extend(warning);
        sh.progress.finished(node, &out, took);
        let failed = matches!(out, Outcome::Failed(_));
        if let Some(r) = result {
            results.insert(ix, r);
        }
        outcome.insert(
            ix,
            NodeReport {
                id: node.id.clone(),
                outcome: out.clone(),
                attempts,
                log,
                duration: took,
                tail,
                retries,
            },
        );
        if failed && opts.fail_fast {
            stop = true;
        }
        if matches!(out, Outcome::Built | Outcome::Cutoff) {
            for dep in graph.dependents(ix) {
                if let Some(n) = waiting.get_mut(&dep) {
                    *n -= 1;
                    if *n == 0 {
                        waiting.remove(&dep);
                        ready.push(dep);
                    }
                }
            }
        }
    }
    signals.abort();
    if let Err(e) = store.update_claims(published) {
        warnings.push(format!(
            "the publish claims of this build were not saved ({e}); the next refresh checks them in full"
        ));
    }
    sh.progress.done();
    let cancelled = *cancel_rx.borrow();
    // Whatever never ran: skipped behind a failure, or not started.
    let mut report = BuildReport {
        nodes: Vec::new(),
        cancelled,
        signal: match caught.load(std::sync::atomic::Ordering::SeqCst) {
            0 => None,
            sig => Some(sig),
        },
        warnings,
    };
    for &ix in &order {
        let node = graph.node(ix);
        let r = outcome.remove(&ix).unwrap_or_else(|| {
            let failed_dep = first_failed_ancestor(graph, ix, &report_failed(&report));
            let outcome = match failed_dep {
                _ if cancelled => Outcome::Cancelled,
                Some(d) => Outcome::Skipped { failed_dep: d },
                None => Outcome::NotStarted,
            };
            NodeReport::idle(&node.id, outcome)
        });
        report.nodes.push(r);
    }
    report
}

fn load_result(
    store: &LocalStore,
    graph: &Graph,
    cache: &mut HashMap<NodeIndex, ActionResult>,
    ix: NodeIndex,
) -> Option<ActionResult> {
    if let Some(r) = cache.get(&ix) {
        return Some(r.clone());
    }
    let r = store.get_action(&graph.node(ix).key).ok()??;
    cache.insert(ix, r.clone());
    Some(r)
}

#[cfg(test)]
mod tests;
