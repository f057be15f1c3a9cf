//! `kiln cache push|pull` and `kiln cache verify --remote`: moving results between the local and
//! the remote cache explicitly (an air-gapped hand-off, or seeding a new remote), and checking
//! what the remote holds.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::StreamExt;

use super::{Cli, CliError, Select, context};
use crate::hash::Digest;
use crate::store::remote::Remote;
use crate::store::{LocalStore, Record, now_unix_ms};

/// What push, pull and verify work on: the selected graph's node keys, the local store and the
/// remote.
struct Scope {
    graph: crate::graph::Graph,
    nodes: Vec<(String, Digest)>,
    store: Arc<LocalStore>,
    remote: Arc<Remote>,
}

fn scope(cli: &Cli, select: &Select) -> Result<Scope, CliError> {
    let loaded = context::load(&cli.file, select, true)?;
    let dir = context::cache_dir(&loaded.config, &cli.cache_dir);
    let graph = context::lower(&loaded, Some(&dir))?;
    let remote = super::remote::open(cli, &loaded.config)?.ok_or_else(|| {
        CliError::Usage(
            "no remote cache: pass --remote-cache URL, set KILN_REMOTE_CACHE, or write `remote-cache \"URL\"` in the config".into(),
        )
    })?;
    let store = Arc::new(LocalStore::open(&dir).map_err(|e| CliError::Failed(e.to_string()))?);
    let nodes = graph
        .order()
        .into_iter()
        .map(|ix| (graph.node(ix).id.clone(), graph.node(ix).key))
        .collect();
    Ok(Scope {
        graph,
        nodes,
        store,
        remote,
    })
}

/// Ends a command that talked to the remote: its warnings, and failure if it went down.
fn finish(remote: &Remote, what: &str) -> Result<(), CliError> {
    for w in remote.take_warnings() {
        eprintln!("warning: {w}");
    }
    if remote.is_down() {
        return Err(CliError::Failed(format!(
            "{what} stopped: the remote cache {} failed",
            remote.url()
        )));
    }
    Ok(())
}

/// The bytes sent (`out`) or received, and the requests made: `N bytes in M requests`.
fn traffic(remote: &Remote, out: bool) -> String {
    let s = remote.stats();
    let bytes = if out { &s.bytes_out } else { &s.bytes_in }.load(Ordering::Relaxed);
    let requests = s.requests.load(Ordering::Relaxed);
    format!(
        "{bytes} bytes in {requests} request{}",
        if requests == 1 { "" } else { "s" }
    )
}

/// `kiln cache push`: every local result of the selected nodes, with its blobs.
pub fn push(cli: &Cli, select: &Select) -> Result<(), CliError> {
    let s = scope(cli, select)?;
    if !s.remote.writes() {
        return Err(CliError::Usage(
            "pushing needs a signing key: pass --signing-key FILE or set KILN_SIGNING_KEY (make one with `kiln cache keygen NAME -o FILE`)".into(),
        ));
    }
    let results: Vec<_> = s
        .nodes
        .iter()
        .filter_map(|(_, key)| s.store.get_action(key).ok().flatten())
        .collect();
    let local = results.len();
    let (remote, store) = (&s.remote, &s.store);
    let wrote: usize = remote.block_on(
        futures_util::stream::iter(results)
            .map(|r| async move { usize::from(remote.push(&r, store).await) })
            .buffer_unordered(8)
            .fold(0, |a, b| async move { a + b }),
    );
    super::remote::write_pack(remote, &s.graph, store, &|_| None);
    finish(remote, "the push")?;
    println!(
        "pushed {wrote} results ({} already there, {} not built here), {}",
        local - wrote,
        s.nodes.len() - local,
        traffic(remote, true)
    );
    Ok(())
}

/// `kiln cache pull`: every trusted remote result of the selected nodes that is not here yet,
/// with its blobs.
pub fn pull(cli: &Cli, select: &Select) -> Result<(), CliError> {
    let s = scope(cli, select)?;
    let _lock = s
        .store
        .lock(true, |h| eprintln!("waiting for the cache lock: {h}"))
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let wanted: Vec<Digest> = s
        .nodes
        .iter()
        .filter(|(_, key)| !matches!(s.store.get_action(key), Ok(Some(_))))
        .map(|(_, key)| *key)
        .collect();
    let (remote, store) = (&s.remote, &s.store);
    let pulled: Vec<Record> = remote.block_on(async {
        let found = remote.get_actions(&wanted).await;
        futures_util::stream::iter(found)
            .map(|v| async move {
                for d in v.result.referenced_blobs() {
                    if let Err(e) = remote.fetch_blob(&d, store).await {
                        eprintln!("warning: {} not pulled: {e}", v.result.id);
                        return None;
                    }
                }
                store.put_action(&v.result).ok()?;
                store.forget_mirrored(&v.result.key);
                Some(Record {
                    id: v.result.id.clone(),
                    key: v.result.key,
                    unix_ms: now_unix_ms(),
                })
            })
            .buffer_unordered(8)
            .filter_map(|r| async move { r })
            .collect()
            .await
    });
    s.store
        .append_records(&pulled)
        .map_err(|e| CliError::Failed(e.to_string()))?;
    finish(remote, "the pull")?;
    println!(
        "pulled {} results ({} already here, {} not in the remote), {}",
        pulled.len(),
        s.nodes.len() - wanted.len(),
        wanted.len() - pulled.len(),
        traffic(remote, false)
    );
    Ok(())
}

/// `kiln cache verify --remote`: the record of every selected node must be signed by a trusted
/// key and match its digest, and every blob it names must be in the remote.
pub fn verify(cli: &Cli, select: &Select) -> Result<(), CliError> {
    let s = scope(cli, select)?;
    let remote = &s.remote;
    let keys: Vec<Digest> = s.nodes.iter().map(|(_, k)| *k).collect();
    let (found, missing_blobs) = remote.block_on(async {
        let found = remote.get_actions(&keys).await;
        let mut missing = Vec::new();
        for v in &found {
            if !remote.has_blobs(&v.result).await {
                missing.push(v.result.id.clone());
            }
        }
        (found, missing)
    });
    let rejected: Vec<String> = remote.take_warnings();
    for w in &rejected {
        println!("{w}");
    }
    for id in &missing_blobs {
        println!("{id}: a blob of its record is missing from the remote cache");
    }
    if remote.is_down() {
        return Err(CliError::Failed(format!(
            "the remote cache {} failed",
            remote.url()
        )));
    }
    let problems = rejected.len() + missing_blobs.len();
    println!(
        "checked {} records of {} nodes in {}: {problems} problem{}",
        found.len() + rejected.len(),
        keys.len(),
        remote.url(),
        if problems == 1 { "" } else { "s" }
    );
    if problems == 0 {
        Ok(())
    } else {
        Err(CliError::Exit(1))
    }
}
