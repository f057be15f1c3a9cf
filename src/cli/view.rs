//! The cache as the planner sees it ([`StoreView`]): the local store and, when one is
//! configured, the shared remote cache, answering the planner's [`CacheView`] questions.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use super::CliError;
use crate::graph::Graph;
use crate::hash::{Digest, DigestSet};
use crate::plan::{self, CacheView, LastResult, Plan};
use crate::store::remote::{Remote, pack};
use crate::store::{LocalStore, Memo};

/// The cache as the planner sees it, backed by a local store (or nothing, before a first build)
/// and, when one is configured, the shared remote cache.
pub struct StoreView {
    pub store: Option<std::sync::Arc<LocalStore>>,
    keys: DigestSet,
    /// The keys of `keys` whose result is only in the remote cache (its record fetched).
    remote_keys: DigestSet,
    remote: Option<Arc<Remote>>,
    /// The facts of remote publish results known from a pack (their records not fetched).
    pack_facts: HashMap<Digest, BTreeMap<String, String>>,
    /// The key of the last record of every id: read from `records.log` when first needed
    /// (a plan with nothing to do needs none).
    records: std::sync::OnceLock<Records>,
    /// What the latest refresh found wrong with the claims of cached publish results.
    drift: BTreeMap<String, Vec<plan::DirtyReason>>,
}

type Records = HashMap<String, Digest, rustc_hash::FxBuildHasher>;

impl StoreView {
    /// Opens the cache and checks the result entry of every node of `graph` (see
    /// [`LocalStore::intact_keys`]): a corrupt entry is moved aside and reported, and counts as
    /// missing, so the plan and the build agree.
    ///
    /// With a remote, the keys missing here are looked up there: first among the records
    /// fetched before (under `remote/`, still signed by a trusted key), then in the remote
    /// itself. A plan fetches records only, never blobs.
    pub fn open(
        dir: PathBuf,
        graph: &Graph,
        remote: Option<Arc<Remote>>,
    ) -> Result<StoreView, CliError> {
        if !dir.exists() && remote.is_none() {
            return Ok(StoreView {
                store: None,
                keys: DigestSet::default(),
                remote_keys: DigestSet::default(),
                remote: None,
                pack_facts: HashMap::new(),
                records: Records::default().into(),
                drift: BTreeMap::new(),
            });
        }
        let store = Arc::new(LocalStore::open(&dir).map_err(|e| CliError::Failed(e.to_string()))?);
        Ok(StoreView::with_store(store, graph, remote))
    }

    /// [`StoreView::open`] over a store the caller opened already (a build, which holds its lock).
    pub fn with_store(
        store: Arc<LocalStore>,
        graph: &Graph,
        remote: Option<Arc<Remote>>,
    ) -> StoreView {
        let wanted: Vec<Digest> = graph
            .order()
            .into_iter()
            .map(|ix| graph.node(ix).key)
            .collect();
        let mut keys = store.intact_keys(&wanted);
        for w in store.take_warnings() {
            eprintln!("warning: {w}");
        }
        let mut remote_keys = DigestSet::default();
        let mut pack_facts = HashMap::new();
        if let Some(r) = remote.as_ref().filter(|r| r.reads()) {
            let mut ask = Vec::new();
            for k in wanted.iter().filter(|k| !keys.contains(*k)) {
                match store.get_mirrored(k) {
                    Some((_, signer)) if r.trusts(&signer) => {
                        remote_keys.insert(*k);
                    }
                    _ => ask.push(*k),
                }
            }
            if !ask.is_empty() {
                let graph_digest = pack::graph_digest(&wanted);
                let (entries, _) = r.block_on(r.get_pack(&graph_digest)).unwrap_or_default();
                let listed: HashMap<Digest, Option<BTreeMap<String, String>>> =
                    entries.into_iter().map(|e| (e.key, e.facts)).collect();
                ask.retain(|k| match listed.get(k) {
                    Some(facts) => {
                        remote_keys.insert(*k);
                        if let Some(f) = facts {
                            pack_facts.insert(*k, f.clone());
                        }
                        false
                    }
                    None => true,
                });
                // What a pack does not list (its signer had no result for it when it wrote the
                // pack, or the pack is of another graph) is asked for by key: only those keys,
                // so a graph whose pack lists everything costs one request.
                for v in r.block_on(r.get_actions(&ask)) {
                    let _ = store.put_mirrored(&v.result, &v.signer);
                    remote_keys.insert(v.result.key);
                }
            }
            keys.extend(remote_keys.iter().copied());
            super::remote::print_warnings(&remote);
        }
        StoreView {
            store: Some(store),
            keys,
            remote_keys,
            remote,
            pack_facts,
            records: std::sync::OnceLock::new(),
            drift: BTreeMap::new(),
        }
    }

    /// Claims found not to hold by a refresh: their nodes plan as rebuilds.
    pub fn set_drift(&mut self, drift: BTreeMap<String, Vec<plan::DirtyReason>>) {
        self.drift = drift;
    }

    fn records(&self) -> &Records {
        self.records.get_or_init(|| {
            let Some(store) = &self.store else {
                return Records::default();
            };
            match store.record_history() {
                Ok(history) => history.into_iter().map(|r| (r.id, r.key)).collect(),
                Err(e) => {
                    eprintln!("warning: {e}; the plan shows no reasons and no orphans");
                    Records::default()
                }
            }
        })
    }

    /// The recorded ids that `graph` (the whole config) no longer declares; see
    /// [`plan::orphans`]. They are a function of the graph and of `records.log`, so they are
    /// kept as a [`Memo::Orphans`] under the graph's snapshot key and the log's stat, and
    /// `records.log` is not read again while neither changes.
    pub fn orphans(&self, graph: &Graph, graph_key: Option<Digest>) -> Vec<String> {
        let Some(store) = &self.store else {
            return Vec::new();
        };
        let memos = store.memos();
        let memo_key = graph_key.and_then(|g| Some((g, store.records_stamp()?)));
        if let Some(key) = &memo_key
            && let Some(memo) = memos
                .read(Memo::Orphans)
                .and_then(|b| serde_json::from_slice::<OrphanMemo>(&b).ok())
            && memo.graph == key.0
            && memo.records == key.1
        {
            return memo.orphans;
        }
        let recorded: Vec<(&str, Digest)> = self
            .records()
            .iter()
            .map(|(id, key)| (id.as_str(), *key))
            .collect();
        let orphans = plan::orphans(graph, &recorded);
        if let Some((graph, records)) = memo_key {
            let memo = OrphanMemo {
                graph,
                records,
                orphans,
            };
            memos.save(
                Memo::Orphans,
                &serde_json::to_vec(&memo).expect("orphan memo"),
            );
            return memo.orphans;
        }
        orphans
    }

    /// Reads the result of every cached node that a node due to run depends on, and verifies its
    /// output blobs (the build reads them anyway), and forgets those that turn out unreadable: an
    /// entry or blob damaged in place, which the planner does not see (see
    /// [`LocalStore::intact_keys`]), is moved aside and reported, and its node is planned again,
    /// so it rebuilds first in the same build instead of its dependents running without it.
    /// Returns whether any was forgotten: then the plan must be made again.
    pub fn forget_unreadable_upstream(&mut self, graph: &Graph, plan: &Plan) -> bool {
        // A held publish does not run: its upstream blobs are not fetched for it.
        let needed = graph.with_ancestors(
            graph
                .order()
                .into_iter()
                .filter(|ix| plan.action(*ix).will_run() && !plan.holds(graph, *ix)),
        );
        let mut forgot = self.fetch_upstream(graph, plan, &needed);
        let Some(store) = self.store.clone() else {
            return forgot;
        };
        for ix in graph.order() {
            let key = graph.node(ix).key;
            if !needed[ix.index()] || plan.action(ix).will_run() || !self.keys.contains(&key) {
                continue;
            }
            if self.remote_keys.contains(&key) {
                continue;
            }
            // A step reads every upstream output: each blob must be there and intact (a
            // corrupt one is moved aside by the read and reported).
            let intact = match store.get_action(&key) {
                Ok(Some(r)) => r
                    .outputs
                    .iter()
                    .all(|o| matches!(store.blob_path(&o.digest), Ok(Some(_)))),
                _ => false,
            };
            if !intact {
                self.keys.remove(&key);
                forgot = true;
            }
        }
        for w in store.take_warnings() {
            eprintln!("warning: {w}");
        }
        forgot
    }

    /// Fetches the blobs of every remote result a node due to run reads, and moves the result
    /// to the local cache; a result whose blobs cannot be fetched is forgotten (a warning), so
    /// its node runs here. Returns whether any was forgotten.
    fn fetch_upstream(&mut self, graph: &Graph, plan: &Plan, needed: &[bool]) -> bool {
        let (Some(store), Some(remote)) = (&self.store, &self.remote) else {
            return false;
        };
        let wanted: Vec<(String, Digest)> = graph
            .order()
            .into_iter()
            .filter(|ix| needed[ix.index()] && !plan.action(*ix).will_run())
            .filter(|ix| self.remote_keys.contains(&graph.node(*ix).key))
            .map(|ix| (graph.node(ix).id.clone(), graph.node(ix).key))
            .collect();
        let failed: Vec<Digest> = remote.block_on(async {
            use futures_util::StreamExt;
            futures_util::stream::iter(wanted)
                .map(|(id, key)| async move {
                    // A result known from a pack has its record fetched (and checked) now.
                    let r = match store.get_mirrored(&key) {
                        Some((r, _)) => r,
                        None => match remote.get_action(&key).await {
                            Some(v) => v.result,
                            None => {
                                eprintln!(
                                    "warning: the remote result of {id} is not used: its record cannot be read; it runs here"
                                );
                                return Some(key);
                            }
                        },
                    };
                    for d in r.referenced_blobs() {
                        if let Err(e) = remote.fetch_blob(&d, store).await {
                            eprintln!(
                                "warning: the remote result of {id} is not used: {e}; it runs here"
                            );
                            return Some(r.key);
                        }
                    }
                    match store.put_action(&r) {
                        Ok(()) => {
                            store.forget_mirrored(&r.key);
                            None
                        }
                        Err(_) => Some(r.key),
                    }
                })
                .buffer_unordered(8)
                .filter_map(|k| async move { k })
                .collect()
                .await
        });
        super::remote::print_warnings(&self.remote);
        for k in &failed {
            self.keys.remove(k);
            self.remote_keys.remove(k);
            store.forget_mirrored(k);
        }
        // The rest of them are local now.
        let fetched: Vec<Digest> = self
            .remote_keys
            .iter()
            .filter(|k| matches!(store.get_action(k), Ok(Some(_))))
            .copied()
            .collect();
        for k in fetched {
            self.remote_keys.remove(&k);
        }
        !failed.is_empty()
    }

    /// The facts of a remote publish result that only a pack lists.
    pub fn pack_facts(&self, key: &Digest) -> Option<BTreeMap<String, String>> {
        self.pack_facts.get(key).cloned()
    }

    /// What an orphaned id published, from its last result: the facts of a publish step (a
    /// build's facts say where its outputs went, not what is published); empty for any other.
    pub fn published(&self, id: &str) -> BTreeMap<String, String> {
        self.records()
            .get(id)
            .and_then(|key| self.store.as_ref()?.get_any_action(key))
            .map(published_facts)
            .unwrap_or_default()
    }
}

/// What a result says was published: the facts of a publish step's result (a build's facts say
/// where its outputs went, nothing is published); empty for any other step.
pub fn published_facts(result: crate::store::ActionResult) -> BTreeMap<String, String> {
    let publish = crate::config::StepKind::Publish.as_str();
    if result.manifest.get("step").map(String::as_str) == Some(publish) {
        result.facts
    } else {
        BTreeMap::new()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct OrphanMemo {
    graph: Digest,
    records: crate::store::Stamp,
    orphans: Vec<String>,
}

impl CacheView for StoreView {
    fn has_result(&self, key: &Digest) -> bool {
        self.keys.contains(key)
    }

    fn last(&self, id: &str) -> Option<LastResult> {
        let key = *self.records().get(id)?;
        let manifest = self
            .store
            .as_ref()
            .and_then(|s| s.get_any_action(&key))
            .map(|a| a.manifest);
        Some(LastResult { key, manifest })
    }

    fn blob(&self, digest: &Digest) -> Option<Vec<u8>> {
        self.store.as_ref()?.get_blob(digest).ok().flatten()
    }

    fn read(&self, path: &std::path::Path) -> Option<Vec<u8>> {
        std::fs::read(path).ok()
    }

    fn drift(&self, id: &str) -> Option<Vec<plan::DirtyReason>> {
        self.drift.get(id).cloned()
    }

    fn source(&self, key: &Digest) -> plan::Source {
        if self.remote_keys.contains(key) {
            plan::Source::Remote
        } else {
            plan::Source::Local
        }
    }

    /// As the executor does: a runner that cannot record a publish in the remote cache (it
    /// holds no signing key) does not publish.
    fn publish_hold(&self) -> Option<plan::Hold> {
        self.remote
            .as_ref()
            .filter(|r| !r.writes())
            .map(|_| plan::Hold::NoSigningKey)
    }
}
