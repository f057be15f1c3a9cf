//! Garbage collection: keep the action entries that `records.log` names (per policy) and the
//! blobs they refer to — their outputs, logs and the stored copies of their input files, which
//! the next plan diffs a changed file against; remove everything else. The records of ids named
//! to be forgotten (orphans, which only the caller can tell) go too.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, UNIX_EPOCH};

use super::LocalStore;
use super::ac::read_action;
use super::error::{EntryKind, Result, StoreWarning};
use super::fs::{self, FanoutEntry};
use crate::hash::Digest;

/// Temp files younger than this are left alone by gc: a writer may still be using them.
pub const TEMP_GRACE: Duration = Duration::from_secs(60 * 60);

/// Which action entries gc keeps. The roots are the entries named by records: per logical id,
/// the last `keep_last` distinct keys (all if `None`), and of those only the ones recorded within
/// `older_than` of `now_unix_ms` (if set). The latest record of each id is always kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcPolicy {
    pub keep_last: Option<usize>,
    pub older_than: Option<Duration>,
    /// Remove nothing; report what would be removed.
    pub dry_run: bool,
    pub now_unix_ms: u64,
}

/// What gc removed (or, on a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub dry_run: bool,
    pub actions_kept: usize,
    /// Includes corrupt entries that would otherwise have been kept.
    pub actions_removed: usize,
    pub action_bytes_freed: u64,
    pub blobs_kept: usize,
    pub blobs_removed: usize,
    pub blob_bytes_freed: u64,
    /// Temp files and step work directories under `tmp/` older than [`TEMP_GRACE`], left by
    /// interrupted builds.
    pub temp_files_removed: usize,
    pub temp_bytes_freed: u64,
    /// Records fetched from a remote cache (`remote/`): copies of the remote's, which the next
    /// plan fetches again (one request when the remote holds a pack of the graph).
    pub remote_records_removed: usize,
    pub remote_bytes_freed: u64,
    /// Lines of `records.log` dropped because their entries were collected (or were garbled).
    pub records_dropped: usize,
    /// Ids whose every record was dropped because they were to be forgotten.
    pub ids_forgotten: usize,
}

impl GcReport {
    pub fn bytes_freed(&self) -> u64 {
        self.action_bytes_freed
            + self.blob_bytes_freed
            + self.temp_bytes_freed
            + self.remote_bytes_freed
    }
}

impl LocalStore {
    /// Collects garbage according to `policy`. Hold the cache lock: every action entry that no
    /// record names is removed, including one a concurrent build has just written.
    pub fn gc(&self, policy: &GcPolicy) -> Result<GcReport> {
        self.gc_forgetting(policy, &HashSet::new())
    }

    /// [`LocalStore::gc`], and every record of the ids in `forget` is dropped as well, so their
    /// results go unless another id's record keeps them (`kiln cache gc --orphans`).
    pub fn gc_forgetting(&self, policy: &GcPolicy, forget: &HashSet<String>) -> Result<GcReport> {
        let mut report = GcReport {
            dry_run: policy.dry_run,
            ..GcReport::default()
        };
        let mut log = self.read_record_log()?;
        let before = log.records.len();
        let forgotten: HashSet<&str> = log
            .records
            .iter()
            .filter(|r| forget.contains(&r.id))
            .map(|r| r.id.as_str())
            .collect();
        report.ids_forgotten = forgotten.len();
        log.records.retain(|r| !forget.contains(&r.id));
        let dropped_ids = before - log.records.len();
        let roots = roots(&log.records, policy);

        // Action entries.
        let mut live_blobs: HashSet<Digest> = HashSet::new();
        for entry in fs::walk_fanout(&self.ac)? {
            let FanoutEntry::Entry { digest, path } = entry else {
                continue;
            };
            if roots.contains(&digest) {
                match read_action(&path, &digest)? {
                    None => continue,
                    Some(Ok(result)) => {
                        report.actions_kept += 1;
                        live_blobs.extend(result.referenced_blobs());
                        live_blobs.extend(result.input_copies());
                        continue;
                    }
                    Some(Err(problem)) if !policy.dry_run => self.warn(StoreWarning {
                        kind: EntryKind::Action,
                        path: path.clone(),
                        problem,
                        moved_to: None,
                    }),
                    Some(Err(_)) => {}
                }
            }
            report.actions_removed += 1;
            report.action_bytes_freed += fs::file_len(&path);
            if !policy.dry_run {
                fs::remove_file(&path)?;
            }
        }

        // History lines whose entries were collected.
        let kept_records: Vec<_> = log
            .records
            .iter()
            .filter(|r| roots.contains(&r.key))
            .cloned()
            .collect();
        report.records_dropped =
            log.records.len() - kept_records.len() + log.garbled.len() + dropped_ids;
        if report.records_dropped > 0 && !policy.dry_run {
            self.rewrite_records(&kept_records)?;
        }

        // Blobs.
        for entry in fs::walk_fanout(&self.cas)? {
            let FanoutEntry::Entry { digest, path } = entry else {
                continue;
            };
            if live_blobs.contains(&digest) {
                report.blobs_kept += 1;
                continue;
            }
            report.blobs_removed += 1;
            report.blob_bytes_freed += fs::file_len(&path);
            if !policy.dry_run {
                fs::remove_file(&path)?;
            }
        }

        // Records fetched from a remote cache.
        let mirror = self.mirror_dir();
        if mirror.is_dir() {
            for entry in fs::walk_fanout(&mirror)? {
                let FanoutEntry::Entry { path, .. } = entry else {
                    continue;
                };
                report.remote_records_removed += 1;
                report.remote_bytes_freed += fs::file_len(&path);
                if !policy.dry_run {
                    fs::remove_file(&path)?;
                }
            }
        }

        // Stale temp files.
        let cutoff = policy
            .now_unix_ms
            .saturating_sub(TEMP_GRACE.as_millis() as u64);
        for entry in fs::read_dir(&self.tmp)? {
            let Ok(meta) = entry.metadata() else { continue };
            let modified_ms = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64);
            if modified_ms.is_none_or(|m| m >= cutoff) {
                continue;
            }
            let path = entry.path();
            if meta.is_file() {
                report.temp_files_removed += 1;
                report.temp_bytes_freed += meta.len();
                if !policy.dry_run {
                    fs::remove_file(&path)?;
                }
            } else if meta.is_dir() && entry.file_name().to_string_lossy().starts_with("work-") {
                // A step's work directory that a killed build left behind.
                report.temp_files_removed += 1;
                report.temp_bytes_freed += tree_len(&path);
                if !policy.dry_run {
                    std::fs::remove_dir_all(&path)
                        .map_err(super::error::StoreError::io("remove", &path))?;
                }
            }
        }
        Ok(report)
    }
}

/// The bytes of every file below `dir`.
fn tree_len(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_len(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// The keys gc keeps, per `policy`.
fn roots(history: &[crate::store::Record], policy: &GcPolicy) -> HashSet<Digest> {
    // Per id, its distinct keys newest first, each with the time it was last recorded.
    let mut by_id: HashMap<&str, Vec<(Digest, u64)>> = HashMap::new();
    for r in history.iter().rev() {
        let keys = by_id.entry(r.id.as_str()).or_default();
        if !keys.iter().any(|(k, _)| *k == r.key) {
            keys.push((r.key, r.unix_ms));
        }
    }
    let cutoff = policy
        .older_than
        .map(|d| policy.now_unix_ms.saturating_sub(d.as_millis() as u64));
    let mut roots = HashSet::new();
    for keys in by_id.values() {
        for (rank, (key, unix_ms)) in keys.iter().enumerate() {
            let recent_enough = cutoff.is_none_or(|c| *unix_ms >= c);
            let within_last = policy.keep_last.is_none_or(|n| rank < n);
            if rank == 0 || (recent_enough && within_last) {
                roots.insert(*key);
            }
        }
    }
    roots
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::*;
    use crate::store::{ActionResult, Record};

    fn result(store: &LocalStore, id: &str, n: u8, input: &[u8]) -> ActionResult {
        let copy = store.put_blob(input).unwrap();
        let r = ActionResult {
            key: Digest::of_bytes(&[n]),
            id: id.into(),
            recipe: Digest::of_bytes(id.as_bytes()),
            dep_outputs: BTreeMap::new(),
            outputs: Vec::new(),
            facts: BTreeMap::new(),
            manifest: BTreeMap::from([("file:files/motd".into(), format!("{copy} 6"))]),
            attempts: 1,
            started_unix_ms: 0,
            duration_ms: 0,
            log: None,
        };
        store.put_action(&r).unwrap();
        store
            .append_record(&Record {
                id: id.into(),
                key: r.key,
                unix_ms: 1,
            })
            .unwrap();
        r
    }

    fn policy() -> GcPolicy {
        GcPolicy {
            keep_last: None,
            older_than: None,
            dry_run: false,
            now_unix_ms: 1000,
        }
    }

    #[test]
    fn gc_keeps_the_input_copies_of_kept_results_and_forgets_the_named_ids() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = LocalStore::open(&dir.path().join("cache")).unwrap();
        let kept = result(&store, "a/build", 1, b"hello\n");
        let gone = result(&store, "old/build", 2, b"bye\n");
        let input = |r: &ActionResult| r.input_copies().next().unwrap();

        let report = store.gc(&policy()).unwrap();
        assert_eq!(report.blobs_removed, 0, "{report:?}");
        assert!(store.has_blob(&input(&kept)) && store.has_blob(&input(&gone)));

        let forget = HashSet::from(["old/build".to_string()]);
        let report = store.gc_forgetting(&policy(), &forget).unwrap();
        assert_eq!(report.ids_forgotten, 1);
        assert_eq!(report.records_dropped, 1);
        assert_eq!(report.actions_removed, 1);
        assert!(store.has_blob(&input(&kept)));
        assert!(!store.has_blob(&input(&gone)));
        let ids: Vec<String> = store
            .record_history()
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["a/build"]);
    }

    #[test]
    fn gc_drops_the_records_fetched_from_a_remote_cache() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = LocalStore::open(&dir.path().join("cache")).unwrap();
        let mut fetched = result(&store, "a/build", 1, b"hello\n");
        fetched.key = Digest::of_bytes(b"fetched");
        store.put_mirrored(&fetched, "ci-1:AAAA").unwrap();
        let dry = store
            .gc(&GcPolicy {
                dry_run: true,
                ..policy()
            })
            .unwrap();
        assert_eq!(dry.remote_records_removed, 1);
        assert!(store.get_mirrored(&fetched.key).is_some());
        let report = store.gc(&policy()).unwrap();
        assert_eq!(report.remote_records_removed, 1);
        assert!(report.remote_bytes_freed > 0);
        assert!(store.get_mirrored(&fetched.key).is_none());
        // The local result stays.
        assert_eq!(report.actions_kept, 1);
    }
}
