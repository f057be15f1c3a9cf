//! Refresh, as `terraform plan` refreshes its state: the cached result of a publish node is a
//! claim about the world (an object in a bucket, an AMI in four regions, a snapshot), checked
//! against its target before it is trusted. The verdicts are kept in the store's `claims`, so
//! `kiln images` can say which images were current at the latest refresh, and when.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use petgraph::graph::NodeIndex;
use tokio::sync::watch;

use super::log::NodeLog;
use super::process::{ProcTable, Spawner};
use super::workdir::WorkDirs;
use crate::builders::{Checked, Claim, Runner, StepCtx};
use crate::graph::Graph;
use crate::plan::DirtyReason;
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
    /// The verdicts could not be saved (they still apply to this run).
    pub not_saved: Option<String>,
}

/// Checks the results of `nodes` against their targets and records the verdicts: each node with
/// the key of the result to check (its own key when cached; the key of its last result when
/// early cutoff may reuse that). A node whose result cannot be read is left out: the planner
/// already treats it as missing.
pub async fn refresh(
    graph: &Graph,
    nodes: &[(NodeIndex, crate::hash::Digest)],
    store: &Arc<LocalStore>,
    runner: &dyn Runner,
    root: &std::path::Path,
    image_builder: &Arc<crate::imagebuilder::Install>,
) -> Refreshed {
    let mut out = Refreshed::default();
    if nodes.is_empty() {
        return out;
    }
    let known = store.load_claims();
    let (_cancel_tx, cancel) = watch::channel(false);
    let procs = Arc::new(ProcTable::default());
    let work_dirs = WorkDirs::new(store.tmp_dir());
    let deadline = Some((
        tokio::time::Instant::now() + REFRESH_TIMEOUT,
        REFRESH_TIMEOUT,
    ));
    let mut claims = Vec::new();
    let mut logs = Vec::new();
    let mut records = Claims::new();
    let now = now_unix_ms();
    for &(ix, key) in nodes {
        let node = graph.node(ix);
        let Ok(Some(result)) = store.get_action(&key) else {
            continue;
        };
        let secrets = super::available_secrets(node);
        let prepared = (|| {
            let work = work_dirs.take()?;
            let path = store.tmp_dir().join(format!(
                "refresh-{}-{}.log",
                std::process::id(),
                claims.len()
            ));
            let log = NodeLog::create(&path, secrets.iter().map(|(_, v)| v.clone()).collect())?;
            Ok::<_, std::io::Error>((work, log, path))
        })();
        let (work, log, log_path) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let why = format!(
                    "cannot prepare the check in {}: {e}",
                    store.tmp_dir().display()
                );
                records.insert(node.id.clone(), unchecked(&result, why.clone(), None, now));
                out.unchecked.insert(node.id.clone(), why);
                continue;
            }
        };
        logs.push(log_path);
        let witness = known
            .get(&node.id)
            .filter(|k| k.claim == result.claim_digest())
            .and_then(|k| k.witness.clone());
        claims.push(Claim {
            ctx: StepCtx {
                node: node.clone(),
                work,
                root: root.to_path_buf(),
                image_builder: image_builder.clone(),
                upstream: Vec::new(),
                store: store.clone(),
                secrets,
                attempt: 1,
                spawner: Spawner {
                    log: Arc::new(log),
                    procs: procs.clone(),
                    cancel: cancel.clone(),
                    deadline,
                },
            },
            result,
            witness,
        });
    }
    let verdicts = tokio::select! {
        v = runner.refresh(&claims) => v,
        _ = tokio::time::sleep(REFRESH_TIMEOUT) => {
            vec![Checked::Unknown(format!("no answer within {}", humantime::format_duration(REFRESH_TIMEOUT))); claims.len()]
        }
    };
    for (c, v) in claims.iter().zip(verdicts) {
        let id = c.ctx.node.id.clone();
        let (status, witness) = match v {
            Checked::Held { witness } => {
                out.held += 1;
                (ClaimStatus::Held, witness)
            }
            Checked::Drift(reasons) => {
                let described = reasons.iter().map(DirtyReason::describe).collect();
                out.drift.insert(id.clone(), reasons);
                // The evidence of what was published stays: a drifted target that is put back
                // some other way must still match it.
                (ClaimStatus::Drift { reasons: described }, c.witness.clone())
            }
            Checked::Unknown(why) => {
                out.unchecked.insert(id.clone(), why.clone());
                (ClaimStatus::Unchecked { why }, c.witness.clone())
            }
        };
        records.insert(
            id,
            ClaimRecord {
                claim: c.result.claim_digest(),
                checked_unix_ms: now,
                status,
                witness,
            },
        );
    }
    for c in claims {
        work_dirs.release(c.ctx.work);
    }
    for l in logs {
        let _ = std::fs::remove_file(l);
    }
    if let Err(e) = store.update_claims(records) {
        out.not_saved = Some(e.to_string());
    }
    out
}

fn unchecked(result: &ActionResult, why: String, witness: Option<String>, now: u64) -> ClaimRecord {
    ClaimRecord {
        claim: result.claim_digest(),
        checked_unix_ms: now,
        status: ClaimStatus::Unchecked { why },
        witness,
    }
}

/// The claim record a publish leaves: it held when it was made.
pub fn published(result: &ActionResult, witness: Option<String>) -> ClaimRecord {
    ClaimRecord {
        claim: result.claim_digest(),
        checked_unix_ms: now_unix_ms(),
        status: ClaimStatus::Held,
        witness,
    }
}
