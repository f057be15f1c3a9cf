//! Garbage collection: keep the action entries that `records.log` names (per policy) and the
//! blobs they refer to; remove everything else.

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
    /// Lines of `records.log` dropped because their entries were collected (or were garbled).
    pub records_dropped: usize,
}

impl GcReport {
    pub fn bytes_freed(&self) -> u64 {
        self.action_bytes_freed + self.blob_bytes_freed + self.temp_bytes_freed
    }
}

impl LocalStore {
    /// Collects garbage according to `policy`. Hold the cache lock: every action entry that no
    /// record names is removed, including one a concurrent build has just written.
    pub fn gc(&self, policy: &GcPolicy) -> Result<GcReport> {
        let mut report = GcReport {
            dry_run: policy.dry_run,
            ..GcReport::default()
        };
        let log = self.read_record_log()?;
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
        report.records_dropped = log.records.len() - kept_records.len() + log.garbled.len();
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
fn roots(history: &[super::Record], policy: &GcPolicy) -> HashSet<Digest> {
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
