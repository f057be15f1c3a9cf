//! The scheduler driven in-process by a fake runner, the way ninja's `build_test.cc` drives its
//! `Builder` with a `FakeCommandRunner`: no process is started; the fake records when each node
//! starts and ends, writes the outputs it is told to, and fails the nodes it is told to.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::builders::{
    BuilderError, Checked, Claim, RefreshFuture, StepCtx, StepFuture, StepOutput,
};
use crate::graph::Graph;
use crate::hash::Digest;
use crate::plan::{CacheView, LastResult};
use crate::process::ProcessError;

#[derive(Default)]
struct Fake {
    /// `start ID` and `end ID`, in the order they happened.
    events: Mutex<Vec<String>>,
    running: Mutex<usize>,
    most_at_once: Mutex<usize>,
    fail: HashSet<String>,
    /// What a build step writes to its `image.qcow2`.
    image: String,
    /// What a refresh finds of every claim (default: it holds).
    verdict: Option<Checked>,
}

impl Runner for Fake {
    fn run<'a>(&'a self, ctx: &'a StepCtx) -> StepFuture<'a> {
        Box::pin(async move {
            let id = ctx.node.id.clone();
            self.events.lock().unwrap().push(format!("start {id}"));
            {
                let mut n = self.running.lock().unwrap();
                *n += 1;
                let mut most = self.most_at_once.lock().unwrap();
                *most = (*most).max(*n);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            *self.running.lock().unwrap() -= 1;
            self.events.lock().unwrap().push(format!("end {id}"));
            if self.fail.contains(&id) {
                // As a program the step ran that exited with a failure.
                return Err(BuilderError::Process(ProcessError::Exited {
                    program: format!("{id} was told to fail"),
                    code: 1,
                }));
            }
            let mut out = StepOutput::default();
            if id.ends_with("/build") {
                let path = ctx.work.join("image.qcow2");
                std::fs::write(&path, &self.image).unwrap();
                out.outputs.push(("image.qcow2".into(), path));
            }
            Ok(out)
        })
    }

    fn refresh<'a>(&'a self, claims: &'a [Claim]) -> RefreshFuture<'a> {
        let v = self
            .verdict
            .clone()
            .unwrap_or(Checked::Held { witness: None });
        Box::pin(async move { vec![v; claims.len()] })
    }
}

/// The cache as the planner sees it, straight from the store.
struct View<'a>(&'a LocalStore);

impl CacheView for View<'_> {
    fn has_result(&self, key: &Digest) -> bool {
        matches!(self.0.get_action(key), Ok(Some(_)))
    }
    fn last(&self, id: &str) -> Option<LastResult> {
        let key = self.0.load_records().ok()?.get(id)?.key;
        let manifest = self.0.get_action(&key).ok().flatten().map(|a| a.manifest);
        Some(LastResult { key, manifest })
    }
    fn blob(&self, _: &Digest) -> Option<Vec<u8>> {
        None
    }
    fn read(&self, _: &Path) -> Option<Vec<u8>> {
        None
    }
}

/// Two providers × two systems, each cell build → validate → publish; `p` may run one node at a
/// time; `argv` is the build step's command line (a change changes only the build's own inputs).
fn config(dir: &Path, argv: &str) -> crate::config::Config {
    config_with(
        dir,
        argv,
        r#"builder="command" {
        argv "true" "{provider}" "{os}"
    }"#,
    )
}

/// The same, with the publish step's builder and parameters.
fn config_with(dir: &Path, argv: &str, publish: &str) -> crate::config::Config {
    let text = format!(
        r#"module "m" {{
    step "build" builder="command" {{
        argv "{argv}" "{{provider}}" "{{os}}"
        outputs "image.qcow2"
    }}
    step "validate" builder="command" {{
        argv "true" "{{provider}}" "{{os}}"
    }}
    step "publish" {publish}
}}

kubernetes "1.31" {{
    version "1.31.4"
}}

matrix "m" {{
    kubernetes "1.31"
    provider "p" "q"
    os "one" "two"
}}

provider "p" module="m" {{
    limit 1
}}

provider "q" module="m"
"#
    );
    let file = dir.join("images.kdl");
    std::fs::write(&file, text).unwrap();
    crate::config::load(&file).expect("the config loads").0
}

fn lower(config: &crate::config::Config) -> Graph {
    let (cells, _) = crate::config::cells::expand_all(config).expect("cells");
    let paths = crate::graph::input_paths(config);
    let digests = crate::statcache::StatCache::decode(None)
        .digest_all(&paths)
        .expect("inputs");
    crate::graph::lower(config, cells.into(), &digests).expect("lowers")
}

fn build(
    dir: &Path,
    argv: &str,
    fake: Arc<Fake>,
    jobs: usize,
    fail_fast: bool,
) -> (Graph, BuildReport) {
    run(&config(dir, argv), dir, fake, jobs, fail_fast)
}

fn run(
    config: &crate::config::Config,
    dir: &Path,
    fake: Arc<Fake>,
    jobs: usize,
    fail_fast: bool,
) -> (Graph, BuildReport) {
    let graph = lower(config);
    let store = Arc::new(LocalStore::open(&dir.join("cache")).unwrap());
    let plan = crate::plan::plan(&graph, &View(&store), &BTreeSet::new());
    let opts = BuildOptions {
        jobs,
        fail_fast,
        root: dir.to_path_buf(),
        progress: Progress::new(super::View::Quiet, graph.len(), false),
        image_builder: crate::imagebuilder::Install::from_config(config),
        remote: None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let report = runtime.block_on(execute(&graph, &plan, store, fake, opts));
    (graph, report)
}

fn outcomes(report: &BuildReport) -> BTreeMap<String, Outcome> {
    report
        .nodes
        .iter()
        .map(|n| (n.id.clone(), n.outcome.clone()))
        .collect()
}

fn position(events: &[String], e: &str) -> usize {
    events
        .iter()
        .position(|x| x == e)
        .unwrap_or_else(|| panic!("no `{e}` in {events:?}"))
}

#[test]
fn every_node_starts_after_its_dependencies_ended_within_the_limits() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::default());
    let (graph, report) = build(dir.path(), "make", fake.clone(), 3, false);
    assert!(report.ok(), "{:?}", report.nodes);
    assert_eq!(report.count(|o| *o == Outcome::Built), 12);
    let events = fake.events.lock().unwrap().clone();
    for ix in graph.order() {
        let id = &graph.node(ix).id;
        for d in graph.deps(ix) {
            let dep = &graph.node(d).id;
            assert!(
                position(&events, &format!("end {dep}"))
                    < position(&events, &format!("start {id}")),
                "{id} started before {dep} ended: {events:?}"
            );
        }
    }
    assert!(*fake.most_at_once.lock().unwrap() <= 3);
    // Provider p's limit 1: no two of its nodes overlap.
    let mut p_running = 0;
    for e in &events {
        if e.contains(" p/") {
            p_running += if e.starts_with("start") { 1 } else { -1 };
            assert!(p_running <= 1, "{events:?}");
        }
    }
}

#[test]
fn a_failure_skips_its_dependents_and_the_other_branches_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake {
        fail: HashSet::from(["q/one/1.31/build".to_string()]),
        ..Fake::default()
    });
    let (_, report) = build(dir.path(), "make", fake, 2, false);
    let o = outcomes(&report);
    assert!(matches!(o["q/one/1.31/build"], Outcome::Failed(_)));
    // Each skipped node names the nearest upstream node that failed or was skipped.
    for (id, dep) in [
        ("q/one/1.31/validate", "q/one/1.31/build"),
        ("q/one/1.31/publish", "q/one/1.31/validate"),
    ] {
        assert_eq!(
            o[id],
            Outcome::Skipped {
                failed_dep: dep.into()
            },
            "{id}"
        );
    }
    assert_eq!(report.count(|o| *o == Outcome::Built), 9);
    assert!(!report.ok());
}

#[test]
fn fail_fast_starts_nothing_after_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake {
        fail: HashSet::from(["p/one/1.31/build".to_string()]),
        ..Fake::default()
    });
    let (_, report) = build(dir.path(), "make", fake.clone(), 1, true);
    let events = fake.events.lock().unwrap().clone();
    let failed_at = position(&events, "end p/one/1.31/build");
    assert!(
        events[failed_at + 1..]
            .iter()
            .all(|e| !e.starts_with("start")),
        "{events:?}"
    );
    assert!(!report.ok());
    assert_eq!(report.count(|o| *o == Outcome::Built), 0);
    // Every node is in the report: what never started says so.
    let not_started = report.count(|o| *o == Outcome::NotStarted);
    assert!(not_started > 0, "{:?}", report.nodes);
    assert_eq!(
        report.count(|o| matches!(o, Outcome::Failed(_) | Outcome::Skipped { .. })) + not_started,
        report.nodes.len()
    );
    assert!(
        report
            .summary()
            .ends_with(&format!("{not_started} not started"))
    );
}

#[test]
fn identical_upstream_outputs_cut_off_their_dependents() {
    let dir = tempfile::tempdir().unwrap();
    let same = || {
        Arc::new(Fake {
            image: "an image".into(),
            ..Fake::default()
        })
    };
    let (_, first) = build(dir.path(), "make", same(), 2, false);
    assert!(first.ok());
    // The build's command line changes, its output does not: validate and publish are reused.
    let (_, second) = build(dir.path(), "make all", same(), 2, false);
    let o = outcomes(&second);
    assert_eq!(o["p/one/1.31/build"], Outcome::Built);
    assert_eq!(o["p/one/1.31/validate"], Outcome::Cutoff);
    assert_eq!(o["p/one/1.31/publish"], Outcome::Cutoff);
    // Another output: everything after the build runs.
    let other = Arc::new(Fake {
        image: "another image".into(),
        ..Fake::default()
    });
    let (_, third) = build(dir.path(), "make image", other.clone(), 2, false);
    let o = outcomes(&third);
    assert_eq!(o["p/one/1.31/validate"], Outcome::Built);
    assert_eq!(o["p/one/1.31/publish"], Outcome::Built);
}

/// Early cutoff reuses a publish result only when its claim holds now: the executor checks it
/// itself, whatever the plan's refresh found (none ran here).
#[test]
fn a_publish_result_is_reused_only_while_its_claim_holds() {
    let dir = tempfile::tempdir().unwrap();
    let upload = r#"builder="upload" {
        bucket "file://out"
    }"#;
    let fake = |verdict: Option<Checked>| {
        Arc::new(Fake {
            image: "an image".into(),
            verdict,
            ..Fake::default()
        })
    };
    let go = |argv: &str, verdict| {
        run(
            &config_with(dir.path(), argv, upload),
            dir.path(),
            fake(verdict),
            2,
            false,
        )
        .1
    };
    assert!(go("make", None).ok());
    // Held: reused.
    let o = outcomes(&go("make all", None));
    assert_eq!(o["p/one/1.31/publish"], Outcome::Cutoff);
    // Unchecked: reused, and the build says it was not checked.
    let unknown = go("make it", Some(Checked::Unknown("no credentials".into())));
    assert_eq!(outcomes(&unknown)["p/one/1.31/publish"], Outcome::Cutoff);
    assert!(
        unknown
            .warnings
            .iter()
            .any(|w| w.contains("p/one/1.31/publish")
                && w.contains("was not checked")
                && w.contains("no credentials")),
        "{:?}",
        unknown.warnings
    );
    // Drifted: published again, and the build says why.
    let drift = Checked::Drift(vec![crate::plan::DirtyReason::PublishedMissing {
        target: "file://out/x.qcow2".into(),
    }]);
    let drifted = go("make so", Some(drift));
    assert_eq!(outcomes(&drifted)["p/one/1.31/publish"], Outcome::Built);
    assert_eq!(outcomes(&drifted)["p/one/1.31/validate"], Outcome::Cutoff);
    assert!(
        drifted
            .warnings
            .iter()
            .any(|w| w.contains("p/one/1.31/publish is published again")
                && w.contains("file://out/x.qcow2")),
        "{:?}",
        drifted.warnings
    );
}
