//! The remote cache settings: `--remote-cache` / `KILN_REMOTE_CACHE` / `remote-cache` in
//! images.kdl (in that order), the signing key (`--signing-key` / `KILN_SIGNING_KEY`), and the
//! trusted keys (`trusted-keys` in images.kdl and `KILN_TRUSTED_KEYS`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Cli, CliError};
use crate::config::Config;
use crate::store::remote::keys::{self, PublicKey, SecretKey};
use crate::store::remote::{Remote, Settings};

/// A key file is a line; anything much longer is not one.
const KEY_FILE_MAX: u64 = 4096;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Reads the secret key file at `path`; the error names the file and never quotes it.
pub fn read_secret_key(path: &Path, from: &str) -> Result<SecretKey, CliError> {
    let bad = |why: String| {
        CliError::Usage(format!(
            "{from} {}: {why}; create one with `kiln cache keygen NAME -o FILE`",
            path.display()
        ))
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() > KEY_FILE_MAX {
        return Err(bad(format!(
            "{} bytes is too long for a key file",
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    SecretKey::parse(&text).map_err(|e| bad(format!("not a secret key: {e}")))
}

/// The URL of the remote cache this command uses, if any.
pub fn url(cli: &Cli, config: &Config) -> Option<String> {
    cli.remote_cache
        .clone()
        .or_else(|| env("KILN_REMOTE_CACHE"))
        .or_else(|| config.remote_cache.clone())
}

/// The remote cache this command uses, if any. A URL kiln cannot use and a bad key are usage
/// errors; a remote that does not answer is a warning later, not an error.
pub fn open(cli: &Cli, config: &Config) -> Result<Option<Arc<Remote>>, CliError> {
    let Some(url) = url(cli, config) else {
        return Ok(None);
    };
    let signing = match (&cli.signing_key, env("KILN_SIGNING_KEY")) {
        (Some(p), _) => Some(read_secret_key(p, "--signing-key")?),
        (None, Some(p)) => Some(read_secret_key(&PathBuf::from(p), "KILN_SIGNING_KEY")?),
        (None, None) => None,
    };
    let mut trusted: Vec<PublicKey> = config
        .trusted_keys
        .iter()
        .filter_map(|k| PublicKey::parse(k).ok())
        .collect();
    if let Some(list) = env("KILN_TRUSTED_KEYS") {
        let more = keys::parse_trusted(&list).map_err(|(k, e)| {
            CliError::Usage(format!(
                "KILN_TRUSTED_KEYS: `{k}` is not a public key: {e}; list NAME:BASE64 keys separated by spaces"
            ))
        })?;
        trusted.extend(more);
    }
    let remote = Remote::open(Settings {
        url,
        signing,
        trusted,
    })
    .map_err(|e| CliError::Usage(e.to_string()))?;
    if !remote.reads() {
        eprintln!(
            "warning: remote cache {}: no trusted keys (`trusted-keys` in the config, or KILN_TRUSTED_KEYS), so no result is read from it",
            remote.url()
        );
    }
    Ok(Some(Arc::new(remote)))
}

/// Prints what the remote had to say since the last call.
pub fn print_warnings(remote: &Option<Arc<Remote>>) {
    if let Some(r) = remote {
        for w in r.take_warnings() {
            eprintln!("warning: {w}");
        }
    }
}

/// After a signing runner's build or push: the pack of `graph`, listing every node whose result
/// this run saw in the remote (with the facts of publish results), so a fresh runner plans the
/// graph with one request.
pub fn write_pack(
    remote: &Remote,
    graph: &crate::graph::Graph,
    store: &crate::store::LocalStore,
    known_facts: &dyn Fn(
        &crate::hash::Digest,
    ) -> Option<std::collections::BTreeMap<String, String>>,
) {
    use crate::store::remote::pack::{PackEntry, graph_digest};
    if !remote.writes() || remote.is_down() {
        return;
    }
    let keys: Vec<crate::hash::Digest> = graph
        .order()
        .into_iter()
        .map(|ix| graph.node(ix).key)
        .collect();
    let entries: Vec<PackEntry> = graph
        .order()
        .into_iter()
        .map(|ix| graph.node(ix))
        .filter(|n| remote.has_seen(&n.key))
        .map(|n| PackEntry {
            key: n.key,
            facts: (n.step == crate::config::StepKind::Publish)
                .then(|| {
                    store
                        .get_any_action(&n.key)
                        .map(|r| r.facts)
                        .or_else(|| known_facts(&n.key))
                })
                .flatten(),
        })
        .collect();
    remote.block_on(remote.put_pack(&graph_digest(&keys), &entries));
}
