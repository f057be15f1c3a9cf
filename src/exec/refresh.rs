//! Refresh, as `terraform plan` refreshes its state: the cached result of a publish node is a
//! claim about the world (an object in a bucket, an AMI in four regions, a snapshot), checked
//! against its target before it is trusted. The verdicts are kept in the store's `claims`, so
//! `kiln images` can say which images were current at the latest refresh, and when.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use petgraph::graph::NodeIndex;
use tokio::sync::watch;

use crate::builders::{Checked, Claim, Runner, StepCtx};
use crate::graph::{Graph, Node};
use crate::hash::Digest;
use crate::plan::DirtyReason;
use crate::process::log::NodeLog;
use crate::process::{ProcTable, Spawner};
use crate::store::{ActionResult, ClaimRecord, ClaimStatus, Claims, LocalStore, now_unix_ms};

/// How long one refresh may take, all claims together.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(120);

/// What a refresh found, by node id.
#[derive(Debug, Default)]
pub struct Refreshed {
    /// Claims that no longer hold: the reasons to publish again.
    pub drift: BTreeMap<String, Vec<DirtyReason>>,
    /// Claims that could not be checked, and why.
    pub unchecked: BTreeMap<String, String>,
    /// How many claims held.
    pub held: usize,
    /// The claims that held just as their latest verdict found them: only its time moves.
    pub confirmed: Vec<String>,
    /// The verdicts could not be saved (they still apply to this run).
    pub not_saved: Option<String>,
}

/// How many claims go to the runner at once: bounds the memory of their step contexts, and an
/// S3 LIST still answers a whole chunk's claims under one prefix.
const CHUNK: usize = 512;

/// Checks the results of `nodes` against their targets and records the verdicts: each node with
/// the key of the result to check (its own key when cached; the key of its last result when
/// early cutoff may reuse that). The facts come from the latest verdict for that key, else from
/// the action cache, else from `known` (the facts a remote cache's pack lists); a node whose
/// result cannot be read is left out: the planner already treats it as missing.
pub async fn refresh(
    graph: &Graph,
    nodes: &[(NodeIndex, Digest)],
    known_facts: &(dyn Fn(&Digest) -> Option<BTreeMap<String, String>> + Sync),
    store: &Arc<LocalStore>,
    runner: &dyn Runner,
    root: &std::path::Path,
    image_builder: &Arc<crate::imagebuilder::Install>,
) -> Refreshed {
    let nodes: Vec<(&Node, Digest)> = nodes.iter().map(|&(ix, k)| (graph.node(ix), k)).collect();
    let mut known = store.load_claims();
    let (mut out, records) = check(
        &nodes,
        known.records(),
        known_facts,
        store,
        runner,
        root,
        image_builder,
    )
    .await;
    if records.is_empty() && out.confirmed.is_empty() {
        return out;
    }
    known.confirm(&out.confirmed, now_unix_ms());
    known.merge(records);
    if let Err(e) = store.save_claims(&mut known) {
        out.not_saved = Some(e.to_string());
    }
    // Freeing tens of thousands of records takes a while: not on the way to the plan.
    std::thread::spawn(move || drop(known));
    out
}

/// Checks the claims of `nodes` (each with the key of the result to check) and returns what was
/// found with the new verdicts to keep, without saving them: see [`refresh`]. `known` are the
/// verdicts kept so far; a claim found as its verdict there says is not among the new ones but
/// in [`Refreshed::confirmed`].
pub async fn check(
    nodes: &[(&Node, Digest)],
    known: &Claims,
    known_facts: &(dyn Fn(&Digest) -> Option<BTreeMap<String, String>> + Sync),
    store: &Arc<LocalStore>,
    runner: &dyn Runner,
    root: &std::path::Path,
    image_builder: &Arc<crate::imagebuilder::Install>,
) -> (Refreshed, Claims) {
    let mut out = Refreshed::default();
    let mut records = Claims::new();
    if nodes.is_empty() {
        return (out, records);
    }
    let now = now_unix_ms();
    let secrets: Vec<Vec<(String, String)>> = nodes
        .iter()
        .map(|&(node, _)| crate::secrets::available(node))
        .collect();
    let values: BTreeSet<String> = secrets.iter().flatten().map(|(_, v)| v.clone()).collect();
    // One log and one work directory serve every check: a check writes to neither, save what
    // gcloud needs (a key file with a name of its own) and the lines of a failure.
    let (work, log, log_path) = match prepare(store, values.into_iter().collect()) {
        Ok(p) => p,
        Err(e) => {
            let why = format!(
                "cannot prepare the check in {}: {e}",
                store.tmp_dir().display()
            );
            for &(node, _) in nodes {
                out.unchecked.insert(node.id.clone(), why.clone());
            }
            return (out, records);
        }
    };
    let (_cancel_tx, cancel) = watch::channel(false);
    let spawner = Spawner {
        log: Arc::new(log),
        procs: Arc::new(ProcTable::default()),
        cancel,
        deadline: Some((
            tokio::time::Instant::now() + REFRESH_TIMEOUT,
            REFRESH_TIMEOUT,
        )),
    };
    for (chunk, secrets) in nodes.chunks(CHUNK).zip(secrets.chunks(CHUNK)) {
        // The facts to check: the latest verdict's when it was about this key (borrowed), else
        // those of the action cache or of the remote's pack (kept here while the claims borrow).
        let lasts: Vec<Option<&ClaimRecord>> = chunk
            .iter()
            .map(|&(node, key)| known.get(&node.id).filter(|k| k.key == key))
            .collect();
        let fetched: Vec<Option<BTreeMap<String, String>>> = chunk
            .iter()
            .zip(&lasts)
            .map(|(&(_, key), last)| match last {
                Some(_) => None,
                None => store
                    .get_any_action(&key)
                    .map(|r| r.facts)
                    .or_else(|| known_facts(&key)),
            })
            .collect();
        let mut claims = Vec::with_capacity(chunk.len());
        let mut checked = Vec::with_capacity(chunk.len());
        for (i, (&(node, key), secrets)) in chunk.iter().zip(secrets).enumerate() {
            let Some(facts) = lasts[i].map(|k| &k.facts).or(fetched[i].as_ref()) else {
                continue;
            };
            // The evidence the last verdict left applies to the same claim only.
            let witness = match lasts[i] {
                Some(last) => last.witness.as_deref(),
                None => known
                    .get(&node.id)
                    .filter(|k| k.facts == *facts)
                    .and_then(|k| k.witness.as_deref()),
            };
            claims.push(Claim {
                ctx: StepCtx {
                    node: node.clone(),
                    work: work.path().to_path_buf(),
                    root: root.to_path_buf(),
                    image_builder: image_builder.clone(),
                    upstream: Vec::new(),
                    store: store.clone(),
                    secrets: secrets.clone(),
                    attempt: 1,
                    spawner: spawner.clone(),
                },
                facts,
                witness,
            });
            checked.push((key, lasts[i]));
        }
        let verdicts = tokio::select! {
            v = runner.refresh(&claims) => v,
            _ = tokio::time::sleep_until(spawner.deadline.map(|d| d.0).expect("a deadline")) => {
                vec![Checked::Unknown(format!("no answer within {}", humantime::format_duration(REFRESH_TIMEOUT))); claims.len()]
            }
        };
        for ((c, v), (key, last)) in claims.into_iter().zip(verdicts).zip(checked) {
            let id = &c.ctx.node.id;
            let (status, witness) = match v {
                Checked::Held { witness } => {
                    out.held += 1;
                    // The common case: the claim holds as the last verdict found it.
                    if let Some(last) = last
                        && last.status == ClaimStatus::Held
                        && last.witness == witness
                    {
                        out.confirmed.push(id.clone());
                        continue;
                    }
                    (ClaimStatus::Held, witness)
                }
                Checked::Drift(reasons) => {
                    let described = reasons.iter().map(DirtyReason::describe).collect();
                    out.drift.insert(id.clone(), reasons);
                    // The evidence of what was published stays: a drifted target that is put
                    // back some other way must still match it.
                    let witness = c.witness.map(str::to_string);
                    (ClaimStatus::Drift { reasons: described }, witness)
                }
                Checked::Unknown(why) => {
                    let why = spawner.log.redact(&why);
                    out.unchecked.insert(id.clone(), why.clone());
                    (
                        ClaimStatus::Unchecked { why },
                        c.witness.map(str::to_string),
                    )
                }
            };
            records.insert(
                id.clone(),
                ClaimRecord {
                    key,
                    facts: c.facts.clone(),
                    checked_unix_ms: now,
                    status,
                    witness,
                },
            );
        }
    }
    let _ = std::fs::remove_file(log_path);
    (out, records)
}

/// The shared work directory and log of a refresh, under the store's `tmp/`.
fn prepare(
    store: &LocalStore,
    secrets: Vec<String>,
) -> std::io::Result<(tempfile::TempDir, NodeLog, std::path::PathBuf)> {
    let work = tempfile::Builder::new()
        .prefix("refresh-")
        .tempdir_in(store.tmp_dir())?;
    let path = work.path().join("refresh.log");
    // Never kept (it goes with the directory), and redacted like every log.
    let log = NodeLog::create(&path, secrets)?;
    Ok((work, log, path))
}

/// The claim record a publish leaves: it held when it was made.
pub fn published(result: &ActionResult, witness: Option<String>) -> ClaimRecord {
    ClaimRecord {
        key: result.key,
        facts: result.facts.clone(),
        checked_unix_ms: now_unix_ms(),
        status: ClaimStatus::Held,
        witness,
    }
}
