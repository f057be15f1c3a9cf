//! One node's job: its secrets and log, each attempt in a fresh work directory (run with the
//! step's retries, debug settings and deadline), then its outputs stored and its result
//! committed; or, for a node that may be cut off, its previous result reused.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use petgraph::graph::NodeIndex;
use tokio::sync::watch;

use super::commit::Committer;
use super::progress::Progress;
use super::report::Outcome;
use super::workdir::WorkDirs;
use crate::builders::{BuilderError, Runner, StepCtx};
use crate::config::StepKind;
use crate::graph::Node;
use crate::hash::Digest;
use crate::plan::Action;
use crate::process::log::{self, NodeLog};
use crate::process::{ProcTable, Spawner};
use crate::store::remote::{CLAIM_LEASE, Claimed, Remote, runner_name};
use crate::store::{ActionResult, ClaimRecord, LocalStore, Output, Record, now_unix_ms};

/// A node's live log, written while it runs: `logs/<id>.log` with the id encoded by
/// [`log::file_name`], so that distinct ids never share a file. Only a view: `kiln logs` prints
/// the log blob the node's result names, never this file.
pub fn log_path(store: &LocalStore, id: &str) -> PathBuf {
    store.logs_dir().join(format!("{}.log", log::file_name(id)))
}

pub(super) struct Shared {
    pub(super) store: Arc<LocalStore>,
    pub(super) runner: Arc<dyn Runner>,
    pub(super) procs: Arc<ProcTable>,
    pub(super) cancel: watch::Receiver<bool>,
    pub(super) root: PathBuf,
    pub(super) progress: Progress,
    pub(super) image_builder: Arc<crate::imagebuilder::Install>,
    pub(super) work_dirs: WorkDirs,
    pub(super) committer: Committer,
    /// The shared cache: results built here go to it, and publish steps claim their node in it.
    pub(super) remote: Option<Arc<Remote>>,
}

/// How one node's run ended.
pub(super) struct JobOutcome {
    pub(super) outcome: Outcome,
    pub(super) attempts: u32,
    pub(super) log: Option<PathBuf>,
    pub(super) result: Option<ActionResult>,
    /// What a publish step left as evidence of its claim (see [`refresh`]).
    pub(super) witness: Option<String>,
    /// The verdict on the claim of a publish result that early cutoff reused, checked just now.
    pub(super) claim: Option<ClaimRecord>,
    /// Something the user must hear about this node although it did not fail.
    pub(super) warning: Option<String>,
    /// The last lines of the log of a node that failed.
    pub(super) tail: Vec<String>,
    /// `retry 2/3 with PACKER_LOG=1`, one per retry.
    pub(super) retries: Vec<String>,
}

pub(super) fn ended(
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
        claim: None,
        warning: None,
        tail: Vec::new(),
        retries: Vec::new(),
    }
}

/// What a task needs about one node.
pub(super) struct Job {
    pub(super) node: Node,
    pub(super) action: Action,
    /// The plan holds the node: it runs nothing, unless early cutoff reuses its last result.
    pub(super) held: bool,
    pub(super) upstream: Vec<(crate::config::StepKind, ActionResult)>,
    pub(super) dep_outputs: BTreeMap<String, Digest>,
}

pub(super) fn result_for(
    job: &Job,
    outputs: Vec<Output>,
    facts: BTreeMap<String, String>,
    attempts: u32,
    started: u64,
    took: Duration,
    log: Option<Digest>,
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
pub(super) fn store_outputs(
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
pub(super) fn keep_inputs(store: &LocalStore, node: &Node) {
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

pub(super) fn record(store: &LocalStore, r: &ActionResult) -> Result<(), String> {
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
/// outputs, so it is this node's result too. Returns it with the key it was stored under.
pub(super) fn try_cutoff(sh: &Shared, job: &Job) -> Option<(ActionResult, Digest)> {
    let records = sh.store.load_records().ok()?;
    let last = records.get(&job.node.id)?;
    let prev = sh.store.get_action(&last.key).ok()??;
    if prev.recipe != job.node.recipe_digest || prev.dep_outputs != job.dep_outputs {
        return None;
    }
    let mut r = prev;
    r.key = job.node.key;
    r.manifest = job.node.manifest_labels();
    Some((r, last.key))
}

/// What checking a reused publish result against its target found.
enum Recheck {
    /// The claim holds, or could not be checked (then `warning` says so): reuse the result.
    Reuse {
        claim: Option<ClaimRecord>,
        warning: Option<String>,
    },
    /// The target no longer holds what was published: publish again.
    Drift(String),
}

/// A publish result is a claim about the world: before early cutoff reuses one, it is checked
/// against its target now, whatever the plan's refresh found earlier (the node may have become
/// a candidate for cutoff only during this build, and the world may have moved since).
async fn recheck(sh: &Shared, node: &Node, last_key: Digest, key: Digest) -> Recheck {
    let known = sh.store.load_claims();
    let (found, mut records) = super::refresh::check(
        &[(node, last_key)],
        known.records(),
        &|_| None,
        &sh.store,
        sh.runner.as_ref(),
        &sh.root,
        &sh.image_builder,
    )
    .await;
    if let Some(reasons) = found.drift.get(&node.id) {
        let why: Vec<String> = reasons.iter().map(|r| r.describe()).collect();
        return Recheck::Drift(why.join("; "));
    }
    // The verdict now belongs to the result under its new key (same facts, same evidence); one
    // found as it was is the kept verdict, checked now.
    let confirmed = || {
        let mut c = known.get(&node.id)?.clone();
        c.checked_unix_ms = now_unix_ms();
        Some(c)
    };
    let claim = records
        .remove(&node.id)
        .or_else(|| found.confirmed.contains(&node.id).then(confirmed).flatten())
        .map(|mut c| {
            c.key = key;
            c
        });
    let warning = found.unchecked.get(&node.id).map(|why| {
        format!(
            "the published state of {} was not checked before its result was reused: {why}",
            node.id
        )
    });
    Recheck::Reuse { claim, warning }
}

/// Tells the executor that a job's step succeeded, so its job slot (and provider slot) can take
/// the next node while the job stores and commits its result. A failed step frees its slot only
/// when its job ends, so `--fail-fast` sees the failure before anything new starts.
pub(super) struct StepSlot {
    pub(super) ix: NodeIndex,
    pub(super) done: tokio::sync::mpsc::UnboundedSender<NodeIndex>,
}

impl StepSlot {
    fn free(&self) {
        let _ = self.done.send(self.ix);
    }
}

pub(super) async fn run_job(sh: Arc<Shared>, job: Job, slot: StepSlot) -> JobOutcome {
    let job = Arc::new(job);
    let node = &job.node;
    let mut drifted = None;
    if matches!(job.action, Action::RebuildIfUpstreamChanges { .. })
        && let Some((r, last_key)) = try_cutoff(&sh, &job)
    {
        let (claim, warning) = if crate::builders::makes_claims(node.builder) {
            match recheck(&sh, node, last_key, r.key).await {
                Recheck::Reuse { claim, warning } => (claim, warning),
                Recheck::Drift(why) => {
                    drifted = Some(format!(
                        "{} is published again: its last result no longer holds ({why})",
                        node.id
                    ));
                    (None, None)
                }
            }
        } else {
            (None, None)
        };
        if drifted.is_none() {
            return match record(&sh.store, &r) {
                Ok(()) => {
                    share(&sh, &r).await;
                    JobOutcome {
                        claim,
                        warning,
                        ..ended(Outcome::Cutoff, 0, None, Some(r))
                    }
                }
                Err(e) => ended(Outcome::Failed(e), 0, None, None),
            };
        }
    }
    // A runner that cannot record a publish in the remote does not publish: nobody would know.
    if job.held {
        return ended(Outcome::Held, 0, None, None);
    }
    // Of two runners reaching the same publish node, one publishes; the other takes its result.
    let mut claim = None;
    if node.step == StepKind::Publish
        && let Some(remote) = &sh.remote
    {
        let owner = runner_name();
        match remote.claim(&node.key, &owner).await {
            Claimed::Mine { generation } => {
                // Renewed while the step runs, so a runner that dies lets go within a lease.
                let renew = tokio::spawn({
                    let (remote, key, owner) = (remote.clone(), node.key, owner.clone());
                    async move {
                        loop {
                            tokio::time::sleep(CLAIM_LEASE / 3).await;
                            remote.renew(&key, generation, &owner).await;
                        }
                    }
                });
                claim = Some((remote.clone(), generation, renew));
            }
            Claimed::Done(theirs) => return adopt(&sh, remote, theirs.result).await,
            Claimed::Alone => {}
        }
    }
    let mut out = run_steps(&sh, &job, slot).await;
    if out.warning.is_none() {
        out.warning = drifted;
    }
    if let Some((remote, generation, renew)) = claim {
        renew.abort();
        remote.release(&node.key, generation).await;
    }
    out
}

/// Writes a result built here to the shared cache (a runner without a signing key writes
/// nothing; a failure is the remote's warning).
async fn share(sh: &Shared, r: &ActionResult) {
    if let Some(remote) = &sh.remote {
        remote.push(r, &sh.store).await;
    }
}

/// Takes the result another runner published for this node: its blobs are fetched, and it is
/// recorded here as cached.
async fn adopt(sh: &Shared, remote: &Remote, r: ActionResult) -> JobOutcome {
    for d in r.referenced_blobs() {
        if let Err(e) = remote.fetch_blob(&d, &sh.store).await {
            return ended(
                Outcome::Failed(format!(
                    "another runner published {}, but its result cannot be fetched: {e}",
                    r.id
                )),
                0,
                None,
                None,
            );
        }
    }
    match record(&sh.store, &r) {
        Ok(()) => ended(Outcome::Cached, 0, None, Some(r)),
        Err(e) => ended(Outcome::Failed(e), 0, None, None),
    }
}

/// Why the attempts of a step ended without a result: where a builder's error becomes the
/// node's outcome.
enum Stopped {
    Cancelled,
    Failed(String),
}

impl From<BuilderError> for Stopped {
    fn from(e: BuilderError) -> Stopped {
        if e.is_cancelled() {
            Stopped::Cancelled
        } else {
            Stopped::Failed(e.to_string())
        }
    }
}

/// Runs the step with its retries, and stores and commits what it made.
async fn run_steps(sh: &Arc<Shared>, job: &Arc<Job>, slot: StepSlot) -> JobOutcome {
    let node = &job.node;
    let secrets = match crate::secrets::values(node) {
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
    let mut last_err = Stopped::Failed("not run".into());
    let mut attempts = 0;
    let mut retries = Vec::new();
    for attempt in 1..=tries {
        attempts = attempt;
        if *sh.cancel.borrow() {
            last_err = Stopped::Cancelled;
            break;
        }
        if attempt > 1 {
            let debug = crate::builders::debug_settings(node);
            let retry = if debug.is_empty() {
                format!("retry {attempt}/{tries}")
            } else {
                format!("retry {attempt}/{tries} with {}", debug.join(" "))
            };
            sh.progress.retry(node, &retry);
            retries.push(retry);
        }
        log.line(&format!(
            "== {} ({}), attempt {attempt} of {tries}",
            node.id, node.builder
        ));
        let work = match sh.work_dirs.take() {
            Ok(w) => w,
            Err(e) => {
                last_err = Stopped::Failed(format!(
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
                    Ok(r) => {
                        share(sh, &r).await;
                        JobOutcome {
                            witness,
                            retries,
                            ..ended(Outcome::Built, attempt, Some(log_file), Some(r))
                        }
                    }
                    Err(e) => JobOutcome {
                        retries,
                        tail: log.tail(),
                        ..ended(
                            Outcome::Failed(log.redact(&e)),
                            attempt,
                            Some(log_file),
                            None,
                        )
                    },
                };
            }
            Err(e) => {
                sh.work_dirs.release(work);
                log.line(&format!("== attempt {attempt} failed: {e}"));
                last_err = Stopped::from(e);
                if matches!(last_err, Stopped::Cancelled) {
                    break;
                }
            }
        }
    }
    match last_err {
        Stopped::Cancelled => JobOutcome {
            retries,
            ..ended(Outcome::Cancelled, attempts, Some(log_file), None)
        },
        Stopped::Failed(e) => JobOutcome {
            retries,
            tail: log.tail(),
            ..ended(
                Outcome::Failed(log.redact(&e)),
                attempts,
                Some(log_file),
                None,
            )
        },
    }
}
