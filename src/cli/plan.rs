//! `kiln plan`: every node with its action and the reasons for it; `-o` saves the plan for
//! `kiln build --plan`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::render::{self, Style};
use super::{Cli, CliError, Select, context};
use crate::graph::Graph;
use crate::hash::{Digest, DigestSet};
use crate::plan::{self, CacheView, LastResult, Plan};
use std::sync::Arc;

use crate::store::LocalStore;
use crate::store::remote::{Remote, pack};

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
        let store = std::sync::Arc::new(
            LocalStore::open(&dir).map_err(|e| CliError::Failed(e.to_string()))?,
        );
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
                let (entries, exact) = r.block_on(r.get_pack(&graph_digest)).unwrap_or_default();
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
                // The pack of this very graph lists every result its signer had: what it does
                // not list is taken as missing rather than asked for one by one.
                if !exact {
                    for v in r.block_on(r.get_actions(&ask)) {
                        let _ = store.put_mirrored(&v.result, &v.signer);
                        remote_keys.insert(v.result.key);
                    }
                }
            }
            keys.extend(remote_keys.iter().copied());
            super::remote::print_warnings(&remote);
        }
        Ok(StoreView {
            store: Some(store),
            keys,
            remote_keys,
            remote,
            pack_facts,
            records: std::sync::OnceLock::new(),
            drift: BTreeMap::new(),
        })
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
    /// kept in `cache/orphans` under the graph's snapshot key and the log's stat, and
    /// `records.log` is not read again while neither changes.
    pub fn orphans(&self, graph: &Graph, graph_key: Option<Digest>) -> Vec<String> {
        let Some(store) = &self.store else {
            return Vec::new();
        };
        let memo_path = store.root().join("orphans");
        let memo_key = graph_key.and_then(|g| Some((g, store.records_stamp()?)));
        if let Some(key) = &memo_key
            && let Some(memo) = std::fs::read(&memo_path)
                .ok()
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
            context::save_memo(&memo_path, &serde_json::to_vec(&memo).expect("orphan memo"));
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
        let needed = graph.with_ancestors(
            graph
                .order()
                .into_iter()
                .filter(|ix| plan.action(*ix).will_run()),
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
    let loaded = context::load(&cli.file, &args.select, true)?;
    print_plan(cli, args, loaded)
}

/// Plans `loaded` (however it was loaded: `kiln update --dry-run` loads the lock it would
/// write) and prints the plan as `args` say.
pub fn print_plan(cli: &Cli, args: &PlanArgs, loaded: context::Loaded) -> Result<(), CliError> {
    let dir = context::cache_dir(&loaded.config, &cli.cache_dir);
    let (graph, graph_key) = context::lower_keyed(&loaded, Some(&dir))?;
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
                "requests": r.stats.requests.load(Relaxed),
                "bytes_fetched": r.stats.bytes_in.load(Relaxed),
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
