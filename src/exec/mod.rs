//! The executor: runs the nodes a plan marks, in dependency order, on tokio, within the job and
//! per-provider limits; retries with debug settings, timeouts, early cutoff, cancellation.
//! A node's result is recorded only once it fully succeeded, so an interrupted build resumes.

mod commit;
pub mod log;
pub mod process;
mod progress;
pub mod refresh;
pub mod supervise;
mod workdir;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use petgraph::graph::NodeIndex;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::builders::{Runner, StepCtx};
use crate::config::SecretSource;
use crate::graph::{Graph, Node};
use crate::plan::{Action, Plan};
use crate::store::{ActionResult, LocalStore, Output, Record, now_unix_ms};
use commit::Committer;
use log::NodeLog;
use process::{ProcTable, Spawner, StepError};
pub use progress::Progress;
use workdir::WorkDirs;

pub struct BuildOptions {
    pub jobs: usize,
    pub fail_fast: bool,
    /// The config root (relative buckets resolve against it).
    pub root: PathBuf,
    pub progress: Progress,
    /// Where image-builder is at run time (`tool "image-builder" … source= image= engine=`).
    pub image_builder: crate::imagebuilder::Install,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Cached,
    Built,
    /// Upstream rebuilt with identical outputs, so this node's previous result was reused.
    Cutoff,
    Failed(String),
    /// Not run because an upstream node failed.
    Skipped {
        failed_dep: String,
    },
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct NodeReport {
    pub id: String,
    pub outcome: Outcome,
    pub attempts: u32,
    pub log: Option<PathBuf>,
    pub duration: Duration,
}

#[derive(Debug, Default)]
pub struct BuildReport {
    pub nodes: Vec<NodeReport>,
    pub cancelled: bool,
    /// Problems that failed no node, for the caller to show.
    pub warnings: Vec<String>,
}

impl BuildReport {
    pub fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.nodes.iter().filter(|n| f(&n.outcome)).count()
    }

    pub fn ok(&self) -> bool {
        !self.cancelled
            && self.count(|o| {
                matches!(
                    o,
                    Outcome::Failed(_) | Outcome::Skipped { .. } | Outcome::Cancelled
                )
            }) == 0
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} built, {} cached",
            self.count(|o| *o == Outcome::Built),
            self.count(|o| *o == Outcome::Cached)
        );
        let cutoff = self.count(|o| *o == Outcome::Cutoff);
        if cutoff > 0 {
            s.push_str(&format!(", {cutoff} unchanged after upstream rebuild"));
        }
        let failed = self.count(|o| matches!(o, Outcome::Failed(_)));
        if failed > 0 {
            s.push_str(&format!(", {failed} failed"));
        }
        let skipped = self.count(|o| matches!(o, Outcome::Skipped { .. }));
        if skipped > 0 {
            s.push_str(&format!(", {skipped} skipped"));
        }
        if self.cancelled {
            s.push_str(", interrupted");
        }
        s
    }
}

/// A node's live log, written while it runs: `logs/<id>.log` with the id encoded by
/// [`log::file_name`], so that distinct ids never share a file. Only a view: `kiln logs` prints
/// the log blob the node's result names, never this file.
pub fn log_path(store: &LocalStore, id: &str) -> PathBuf {
    store.logs_dir().join(format!("{}.log", log::file_name(id)))
}

fn secret_values(node: &Node) -> Result<Vec<(String, String)>, String> {
    node.secrets
        .iter()
        .map(|s| match &s.source {
            SecretSource::Env(var) => std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| (s.name.clone(), v))
                .ok_or_else(|| {
                    format!(
                        "secret `{}` needs the environment variable {var} (unset or empty)",
                        s.name
                    )
                }),
            SecretSource::File(p) => std::fs::read_to_string(p)
                .map(|v| (s.name.clone(), v.trim_end_matches('\n').to_string()))
                .map_err(|e| format!("secret `{}`: cannot read {}: {e}", s.name, p.display())),
        })
        .collect()
}

struct Shared {
    store: Arc<LocalStore>,
    runner: Arc<dyn Runner>,
    procs: Arc<ProcTable>,
    cancel: watch::Receiver<bool>,
    root: PathBuf,
    progress: Progress,
    image_builder: Arc<crate::imagebuilder::Install>,
    work_dirs: WorkDirs,
    committer: Committer,
}

/// How one node's run ended.
struct JobOutcome {
    outcome: Outcome,
    attempts: u32,
    log: Option<PathBuf>,
    result: Option<ActionResult>,
    /// What a publish step left as evidence of its claim (see [`refresh`]).
    witness: Option<String>,
}

fn ended(
    outcome: Outcome,
    attempts: u32,
    log: Option<PathBuf>,
    result: Option<ActionResult>,
) -> JobOutcome {
    JobOutcome {
        outcome,
        attempts,
        log,
        result,
        witness: None,
    }
}

/// What a task needs about one node.
struct Job {
    node: Node,
    action: Action,
    upstream: Vec<(crate::config::StepKind, ActionResult)>,
    dep_outputs: BTreeMap<String, crate::hash::Digest>,
}

fn result_for(
    job: &Job,
    outputs: Vec<Output>,
    facts: BTreeMap<String, String>,
    attempts: u32,
    started: u64,
    took: Duration,
    log: Option<crate::hash::Digest>,
) -> ActionResult {
    ActionResult {
        key: job.node.key,
        id: job.node.id.clone(),
        recipe: job.node.recipe_digest,
        dep_outputs: job.dep_outputs.clone(),
        outputs,
        facts,
        manifest: job.node.manifest_labels(),
        attempts,
        started_unix_ms: started,
        duration_ms: took.as_millis() as u64,
        log,
    }
}

/// Stores a step's output files in the content store. Each becomes a blob of its own, a reflink
/// or a copy hashed where it is stored (see [`LocalStore::put_copy`]): every process of the step
/// has ended by now, and whatever still has a file of the work directory open cannot reach the
/// stored bytes.
fn store_outputs(
    store: &LocalStore,
    out: crate::builders::StepOutput,
) -> Result<(Vec<Output>, BTreeMap<String, String>), String> {
    let mut outputs = Vec::new();
    for (name, path) in out.outputs {
        let (digest, size) = store
            .put_copy(&path, None)
            .map_err(|e| format!("storing the output `{name}`: {e}"))?;
        outputs.push(Output { name, digest, size });
    }
    outputs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((outputs, out.facts))
}

/// Keeps small input files in the content store, so a later plan can show what changed in them.
fn keep_inputs(store: &LocalStore, node: &Node) {
    for f in node.recipe.files.iter() {
        for (_, path, digest) in f.files() {
            let small =
                std::fs::metadata(&path).is_ok_and(|m| m.len() as usize <= crate::plan::DIFF_LIMIT);
            if small && !store.has_blob(&digest) {
                let _ = store.put_file(&path);
            }
        }
    }
}

fn record(store: &LocalStore, r: &ActionResult) -> Result<(), String> {
    store.put_action(r).map_err(|e| e.to_string())?;
    store
        .append_record(&Record {
            id: r.id.clone(),
            key: r.key,
            unix_ms: now_unix_ms(),
        })
        .map_err(|e| e.to_string())
}

/// Early cutoff: the last result for this id had the same own inputs and saw the same upstream
/// outputs, so it is this node's result too.
fn try_cutoff(sh: &Shared, job: &Job) -> Option<ActionResult> {
    let records = sh.store.load_records().ok()?;
    let last = records.get(&job.node.id)?;
    let prev = sh.store.get_action(&last.key).ok()??;
    if prev.recipe != job.node.recipe_digest || prev.dep_outputs != job.dep_outputs {
        return None;
    }
    let mut r = prev;
    r.key = job.node.key;
    r.manifest = job.node.manifest_labels();
    Some(r)
}

/// Tells the executor that a job's step succeeded, so its job slot (and provider slot) can take
/// the next node while the job stores and commits its result. A failed step frees its slot only
/// when its job ends, so `--fail-fast` sees the failure before anything new starts.
struct StepSlot {
    ix: NodeIndex,
    done: tokio::sync::mpsc::UnboundedSender<NodeIndex>,
}

impl StepSlot {
    fn free(&self) {
        let _ = self.done.send(self.ix);
    }
}

async fn run_job(sh: Arc<Shared>, job: Job, slot: StepSlot) -> JobOutcome {
    let job = Arc::new(job);
    let node = &job.node;
    if matches!(job.action, Action::RebuildIfUpstreamChanges { .. })
        && let Some(r) = try_cutoff(&sh, &job)
    {
        return match record(&sh.store, &r) {
            Ok(()) => ended(Outcome::Cutoff, 0, None, Some(r)),
            Err(e) => ended(Outcome::Failed(e), 0, None, None),
        };
    }
    let secrets = match secret_values(node) {
        Ok(s) => s,
        Err(e) => return ended(Outcome::Failed(e), 0, None, None),
    };
    let log_file = log_path(&sh.store, &node.id);
    let log = match NodeLog::create(&log_file, secrets.iter().map(|(_, v)| v.clone()).collect()) {
        Ok(l) => Arc::new(l),
        Err(e) => {
            return ended(
                Outcome::Failed(format!("cannot write the log {}: {e}", log_file.display())),
                0,
                None,
                None,
            );
        }
    };
    sh.progress.started(node, log.clone());
    let tries = node.policy.retries.unwrap_or(0) + 1;
    let started = now_unix_ms();
    let t0 = Instant::now();
    let mut last_err = StepError::Failed("not run".into());
    let mut attempts = 0;
    for attempt in 1..=tries {
        attempts = attempt;
        if *sh.cancel.borrow() {
            last_err = StepError::Cancelled;
            break;
        }
        log.line(&format!(
            "== {} ({}), attempt {attempt} of {tries}",
            node.id, node.builder
        ));
        let work = match sh.work_dirs.take() {
            Ok(w) => w,
            Err(e) => {
                last_err = StepError::Failed(format!(
                    "cannot create a work directory in {}: {e}",
                    sh.store.tmp_dir().display()
                ));
                break;
            }
        };
        let ctx = StepCtx {
            node: node.clone(),
            work: work.clone(),
            root: sh.root.clone(),
            image_builder: sh.image_builder.clone(),
            upstream: job.upstream.clone(),
            store: sh.store.clone(),
            secrets: secrets.clone(),
            attempt,
            spawner: Spawner {
                log: log.clone(),
                procs: sh.procs.clone(),
                cancel: sh.cancel.clone(),
                deadline: node
                    .policy
                    .timeout
                    .map(|d| (tokio::time::Instant::now() + d, d)),
            },
        };
        let res = sh.runner.run(&ctx).await;
        match res {
            Ok(mut out) => {
                let witness = out.witness.take();
                log.line(&format!(
                    "== succeeded in {:.1}s",
                    t0.elapsed().as_secs_f64()
                ));
                slot.free();
                // Storing outputs and committing the result block on the file system: keep
                // that off the runtime's workers, so other nodes go on starting meanwhile.
                let commit = {
                    let (sh, job, log, work) = (sh.clone(), job.clone(), log.clone(), work.clone());
                    let took = t0.elapsed();
                    tokio::task::spawn_blocking(move || {
                        let stored = store_outputs(&sh.store, out);
                        sh.work_dirs.release(work);
                        let (outputs, facts) = stored?;
                        // The finished log becomes a blob of its own, checked against the digest
                        // of every byte written: the file under logs/ is only the live view.
                        let log_digest = log.seal().and_then(|sealed| {
                            sh.store
                                .put_copy(log.path(), Some(sealed))
                                .ok()
                                .map(|(digest, _)| digest)
                        });
                        let r =
                            result_for(&job, outputs, facts, attempt, started, took, log_digest);
                        keep_inputs(&sh.store, &job.node);
                        sh.store.put_action(&r).map_err(|e| e.to_string())?;
                        Ok(r)
                    })
                };
                // The record is the commit point; it goes with whatever else is ready.
                let commit = match commit.await {
                    Ok(Ok(r)) => sh
                        .committer
                        .commit(Record {
                            id: r.id.clone(),
                            key: r.key,
                            unix_ms: now_unix_ms(),
                        })
                        .await
                        .map(|()| r),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(format!("storing the result: {e}")),
                };
                return match commit {
                    Ok(r) => JobOutcome {
                        witness,
                        ..ended(Outcome::Built, attempt, Some(log_file), Some(r))
                    },
                    Err(e) => ended(Outcome::Failed(e), attempt, Some(log_file), None),
                };
            }
            Err(e) => {
                sh.work_dirs.release(work);
                log.line(&format!("== attempt {attempt} failed: {e}"));
                let stop = matches!(e, StepError::Cancelled);
                last_err = e;
                if stop {
                    break;
                }
            }
        }
    }
    match last_err {
        StepError::Cancelled => ended(Outcome::Cancelled, attempts, Some(log_file), None),
        e => ended(
            Outcome::Failed(e.to_string()),
            attempts,
            Some(log_file),
            None,
        ),
    }
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
    let signals = tokio::spawn({
        let procs = procs.clone();
        async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
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
            outcome.insert(
                ix,
                NodeReport {
                    id: node.id.clone(),
                    outcome: Outcome::Cached,
                    attempts: 0,
                    log: None,
                    duration: Duration::ZERO,
                },
            );
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
                outcome.insert(ix, NodeReport { id: node.id.clone(), outcome: Outcome::Failed(format!("the cached result of {m} is unreadable; run `kiln cache verify --repair`")), attempts: 0, log: None, duration: Duration::ZERO });
                continue;
            }
            *per_provider.entry(node.provider.clone()).or_default() += 1;
            let job = Job {
                node: node.clone(),
                action: plan.action(ix).clone(),
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
    let mut warnings = Vec::new();
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
        warnings,
    };
    for &ix in &order {
        let node = graph.node(ix);
        let r = outcome.remove(&ix).unwrap_or_else(|| {
            let failed_dep = first_failed_ancestor(graph, ix, &report_failed(&report));
            NodeReport {
                id: node.id.clone(),
                outcome: match failed_dep {
                    Some(d) if !cancelled => Outcome::Skipped { failed_dep: d },
                    _ => Outcome::Cancelled,
                },
                attempts: 0,
                log: None,
                duration: Duration::ZERO,
            }
        });
        report.nodes.push(r);
    }
    report
}

fn report_failed(r: &BuildReport) -> HashSet<String> {
    r.nodes
        .iter()
        .filter(|n| matches!(n.outcome, Outcome::Failed(_) | Outcome::Skipped { .. }))
        .map(|n| n.id.clone())
        .collect()
}

fn first_failed_ancestor(graph: &Graph, ix: NodeIndex, failed: &HashSet<String>) -> Option<String> {
    for d in graph.deps(ix) {
        let id = &graph.node(d).id;
        if failed.contains(id) {
            return Some(id.clone());
        }
        if let Some(x) = first_failed_ancestor(graph, d, failed) {
            return Some(x);
        }
    }
    None
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
