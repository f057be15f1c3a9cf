//! `kiln logs NODE` and `kiln cache verify|gc`.

use std::collections::HashSet;
use std::time::Duration;

use clap::Subcommand;

use super::{Cli, CliError, context};
use crate::store::{GcPolicy, LocalStore, now_unix_ms};

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// Check every blob and entry of the cache.
    Verify {
        /// Remove what is corrupt, so the next build redoes it.
        #[arg(long, conflicts_with = "remote")]
        repair: bool,
        /// Print `{blobs_checked, results_checked, records_checked, problems}`.
        #[arg(long)]
        json: bool,
        /// Check the remote cache instead: the record of every selected node is signed by a
        /// trusted key and intact, and its blobs are there.
        #[arg(long)]
        remote: bool,
        #[command(flatten)]
        select: super::Select,
    },
    /// Copy the local results of the selected nodes, and their blobs, to the remote cache
    /// (needs a signing key).
    Push {
        #[command(flatten)]
        select: super::Select,
    },
    /// Copy the trusted remote results of the selected nodes, and their blobs, to the local
    /// cache.
    Pull {
        #[command(flatten)]
        select: super::Select,
    },
    /// Remove results no longer needed.
    Gc {
        /// Keep the last N results of each node id.
        #[arg(long, value_name = "N")]
        keep_last: Option<usize>,
        /// Remove results recorded longer ago than this (e.g. 30d); the latest of each id stays.
        #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
        /// Say what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also forget the ids the config declares no more (the plan's orphans): their records
        /// go, and with them their results unless a declared node shares them. Whatever they
        /// published stays where it is; its facts are printed.
        #[arg(long)]
        orphans: bool,
        /// Print what was (or would be) removed and forgotten as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Make a signing key for the remote cache: writes the secret key file (Nix's format) and
    /// prints the public key, NAME:BASE64, for `trusted-keys`.
    Keygen {
        /// The key's name, e.g. `ci-1`.
        name: String,
        /// The secret key file to write (it must not exist yet).
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        out: std::path::PathBuf,
    },
}

/// `kiln cache keygen NAME -o FILE`.
fn keygen(name: &str, out: &std::path::Path) -> Result<(), CliError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if name.is_empty() || name.contains(':') || name.chars().any(char::is_whitespace) {
        return Err(CliError::Usage(format!(
            "key name `{name}`: it must be non-empty, without colons or spaces (e.g. ci-1)"
        )));
    }
    let key = crate::store::remote::keys::SecretKey::generate(name).map_err(CliError::Failed)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| {
            CliError::Usage(format!(
                "cannot create {}: {e} (kiln never overwrites a key file)",
                out.display()
            ))
        })?;
    file.write_all(key.to_file_text().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", out.display())))?;
    println!("{}", key.public());
    Ok(())
}

impl CacheCommand {
    pub fn json(&self) -> bool {
        match self {
            CacheCommand::Verify { json, .. } | CacheCommand::Gc { json, .. } => *json,
            CacheCommand::Keygen { .. } | CacheCommand::Push { .. } | CacheCommand::Pull { .. } => {
                false
            }
        }
    }
}

fn open(cli: &Cli) -> Result<LocalStore, CliError> {
    let (config, _) = crate::config::load(&cli.file).map_err(CliError::Config)?;
    let dir = context::cache_dir(&config, &cli.cache_dir);
    if !dir.exists() {
        return Err(CliError::Failed(format!(
            "no cache at {} yet: run `kiln build` first",
            dir.display()
        )));
    }
    LocalStore::open(&dir).map_err(|e| CliError::Failed(e.to_string()))
}

/// Prints the log that the node's last recorded result names, read from its blob and checked
/// against its digest. The live log file under `logs/` is never printed: anyone may have changed
/// it.
pub fn logs(cli: &Cli, node: &str, json: bool) -> Result<(), CliError> {
    let store = open(cli)?;
    let fail = |e: crate::store::StoreError| CliError::Failed(e.to_string());
    let records = store.load_records().map_err(fail)?;
    let Some(record) = records.get(node) else {
        let live = crate::exec::log_path(&store, node);
        let live = if live.is_file() {
            format!(
                "; the log of a run that recorded nothing is at {} (kept as written, unchecked)",
                live.display()
            )
        } else {
            String::new()
        };
        return Err(no_log(cli, node, &live));
    };
    let damaged = |what: &str| {
        CliError::Failed(format!(
            "the {what} of `{node}`'s last result is missing or damaged in the cache; `kiln cache verify` lists what is wrong"
        ))
    };
    let result = store
        .get_action(&record.key)
        .map_err(fail)?
        .ok_or_else(|| damaged("entry"))?;
    let Some(digest) = result.log else {
        return Err(CliError::Failed(format!(
            "`{node}`'s last result has no stored log"
        )));
    };
    let bytes = store
        .get_blob(&digest)
        .map_err(fail)?
        .ok_or_else(|| damaged("log"))?;
    if json {
        let v = serde_json::json!({
            "node": node,
            "key": record.key,
            "log_digest": digest,
            "log": String::from_utf8_lossy(&bytes),
        });
        println!("{v}");
        return Ok(());
    }
    crate::output::write_bytes(crate::output::Stream::Stdout, &bytes);
    Ok(())
}

/// Why a node has no log to print: a node of the config that has no recorded result (exit 1),
/// or an id that names no node (a usage error, exit 2).
fn no_log(cli: &Cli, node: &str, live: &str) -> CliError {
    let graph = context::load(&cli.file, &super::Select::default(), true)
        .and_then(|loaded| context::lower(&loaded, None));
    let Ok(graph) = graph else {
        return CliError::Failed(format!("no recorded result for `{node}`, so no log{live}"));
    };
    if graph.find(node).is_some() {
        CliError::Failed(format!(
            "`{node}` has no recorded result, so no log: it has not run yet, or its last run failed; `kiln build` runs it{live}"
        ))
    } else {
        context::unknown_node(&graph, node)
    }
}

pub fn run(cli: &Cli, cmd: &CacheCommand) -> Result<(), CliError> {
    match cmd {
        CacheCommand::Keygen { name, out } => return keygen(name, out),
        CacheCommand::Push { select } => return super::share::push(cli, select),
        CacheCommand::Pull { select } => return super::share::pull(cli, select),
        CacheCommand::Verify {
            remote: true,
            select,
            ..
        } => return super::share::verify(cli, select),
        _ => {}
    }
    let store = match open(cli) {
        Ok(s) => s,
        Err(CliError::Failed(m)) if m.starts_with("no cache") => {
            let what = m.split(':').next().unwrap_or("no cache");
            if cmd.json() {
                println!("{}", serde_json::json!({ "cache": null, "message": what }));
            } else {
                println!("{what}: nothing to do");
            }
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let fail = |e: crate::store::StoreError| CliError::Failed(e.to_string());
    let _lock = store
        .lock(true, |h| eprintln!("waiting for the cache lock: {h}"))
        .map_err(fail)?;
    match cmd {
        CacheCommand::Keygen { .. } | CacheCommand::Push { .. } | CacheCommand::Pull { .. } => {
            Ok(())
        }
        CacheCommand::Verify { repair, json, .. } => {
            let report = if *repair {
                store.repair()
            } else {
                store.verify()
            }
            .map_err(fail)?;
            if *json {
                let problems: Vec<serde_json::Value> = report
                    .problems
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "path": p.path.display().to_string(),
                            "what": p.what,
                            "repaired": p.repaired,
                        })
                    })
                    .collect();
                let v = serde_json::json!({
                    "blobs_checked": report.blobs_checked,
                    "results_checked": report.actions_checked,
                    "records_checked": report.records_checked,
                    "problems": problems,
                });
                println!("{v}");
            }
            for p in report.problems.iter().filter(|_| !*json) {
                println!("{p}");
            }
            if !*json {
                println!(
                    "checked {} blobs, {} results, {} records: {} problem{}",
                    report.blobs_checked,
                    report.actions_checked,
                    report.records_checked,
                    report.problems.len(),
                    if report.problems.len() == 1 { "" } else { "s" }
                );
            }
            if report.is_ok() || *repair {
                Ok(())
            } else {
                Err(CliError::Exit(1))
            }
        }
        CacheCommand::Gc {
            keep_last,
            older_than,
            dry_run,
            orphans,
            json,
        } => {
            let forget = if *orphans {
                orphans_of(cli, &store)?
            } else {
                Vec::new()
            };
            for (id, published) in forget.iter().filter(|_| !*json) {
                let what = if published.is_empty() {
                    String::new()
                } else {
                    let facts: Vec<String> =
                        published.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!(
                        "; it published {} (kiln removes nothing published)",
                        facts.join(" ")
                    )
                };
                let verb = if *dry_run { "would forget" } else { "forgot" };
                println!("{verb} orphan {id}{what}");
            }
            let forgotten = forget.clone();
            let forget: HashSet<String> = forget.into_iter().map(|(id, _)| id).collect();
            let r = store
                .gc_forgetting(
                    &GcPolicy {
                        keep_last: *keep_last,
                        older_than: *older_than,
                        dry_run: *dry_run,
                        now_unix_ms: now_unix_ms(),
                    },
                    &forget,
                )
                .map_err(fail)?;
            if *json {
                let orphans: Vec<serde_json::Value> = forgotten
                    .iter()
                    .map(|(id, published)| serde_json::json!({ "id": id, "published": published }))
                    .collect();
                let v = serde_json::json!({
                    "dry_run": r.dry_run,
                    "results_removed": r.actions_removed,
                    "results_kept": r.actions_kept,
                    "blobs_removed": r.blobs_removed,
                    "blobs_kept": r.blobs_kept,
                    "temp_files_removed": r.temp_files_removed,
                    "records_dropped": r.records_dropped,
                    "remote_records_removed": r.remote_records_removed,
                    "bytes_freed": r.bytes_freed(),
                    "orphans_forgotten": orphans,
                });
                println!("{v}");
                return Ok(());
            }
            let what = match r.remote_records_removed {
                0 => format!(
                    "{} results and {} blobs",
                    r.actions_removed, r.blobs_removed
                ),
                n => format!(
                    "{} results, {} blobs and {n} records fetched from the remote cache",
                    r.actions_removed, r.blobs_removed
                ),
            };
            println!(
                "{}{what} {} ({} bytes), {} results kept",
                if *dry_run { "dry run: " } else { "" },
                if *dry_run {
                    "would be removed"
                } else {
                    "removed"
                },
                r.bytes_freed(),
                r.actions_kept
            );
            Ok(())
        }
    }
}

type Facts = std::collections::BTreeMap<String, String>;

/// The ids with a record that the whole config declares no more (see [`plan::orphans`]), each
/// with what its last result published (a publish step's facts).
fn orphans_of(cli: &Cli, store: &LocalStore) -> Result<Vec<(String, Facts)>, CliError> {
    let loaded = context::load(&cli.file, &super::Select::default(), true)?;
    let graph = context::lower(&loaded, None)?;
    let records = store
        .load_records()
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let recorded: Vec<(&str, crate::hash::Digest)> =
        records.iter().map(|(id, r)| (id.as_str(), r.key)).collect();
    Ok(crate::plan::orphans(&graph, &recorded)
        .into_iter()
        .map(|id| {
            let published = records
                .get(&id)
                .and_then(|r| store.get_action(&r.key).ok().flatten())
                .map(super::plan::published_facts)
                .unwrap_or_default();
            (id, published)
        })
        .collect())
}
