//! The local cache: a content-addressed blob store, an action cache mapping node keys to their
//! results, and an append-only log of which key each logical node was last built as.
//!
//! Layout under the cache root:
//!
//! ```text
//! cas/<first 2 hex>/<64 hex>   blobs, named by the blake3 of their bytes
//! ac/<first 2 hex>/<64 hex>    node key -> ActionResult (self-checking JSON)
//! records.log                  one Record per line (JSON + checksum); the last one per id wins
//! claims                       the latest refresh of every publish claim (self-checking JSON)
//! remote/<first 2 hex>/<64 hex> result records fetched from a remote cache, their blobs not yet
//!                              (see [`LocalStore::put_mirrored`])
//! logs/                        free for the caller (live logs of running steps)
//! tmp/                         temp files for atomic writes (same filesystem)
//! lock                         the cache lock; holds the holder's pid and start time
//! ```
//!
//! Every write goes to a temp file in `tmp/`, is synced and renamed into place, so a crash at any
//! moment never leaves a partial entry under `cas/` or `ac/`. A blob is never a second name of a
//! file someone else may still write: a step's outputs and logs are reflinked or copied into
//! `tmp/` and hashed there ([`LocalStore::put_copy`]), and steps get copies of the blobs they read
//! ([`LocalStore::copy_blob_to`]). Fan-out directories are created when a rename or link first
//! finds them missing. Readers verify what they read: a corrupt entry is treated as a miss,
//! moved aside and reported through [`LocalStore::take_warnings`].

mod ac;
mod cas;
mod claims;
mod fs;
mod gc;
mod lock;
mod memo;
mod mirror;
mod records;
mod service;
mod verified;
mod verify;

use super::{error, types};

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

pub use claims::{ClaimRecord, ClaimStatus, Claims, StoredClaims};
pub(crate) use fs::hash_file;
pub use gc::{GcPolicy, GcReport};
pub use lock::CacheLock;
pub use memo::{Memo, Memos};
pub use verified::Stamp;
pub use verify::{Problem, ProblemKind, VerifyReport};

use error::{EntryKind, Result, StoreError, StoreWarning};

/// A cache directory on the local filesystem.
///
/// All methods take `&self`, so one store can be shared between threads. Writers should hold the
/// [`CacheLock`] (see [`LocalStore::lock`]); gc in particular must, since it removes every action
/// entry that no record names.
#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
    cas: PathBuf,
    ac: PathBuf,
    logs: PathBuf,
    tmp: PathBuf,
    records: PathBuf,
    lock_path: PathBuf,
    warnings: Mutex<Vec<StoreWarning>>,
    /// See [`LocalStore::defer_sync`].
    deferred_sync: std::sync::atomic::AtomicBool,
    /// `records.log`, kept open for appending once a record has been appended.
    records_file: Mutex<Option<std::sync::Arc<std::fs::File>>>,
}

impl LocalStore {
    /// Group commit for builds: blobs and results are renamed into place without a sync each,
    /// and one `syncfs` before every record append makes them durable before the record that
    /// names them. Readers verify digests, so an entry lost in a power cut is only a miss.
    pub fn defer_sync(&self, on: bool) {
        self.deferred_sync
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn sync_each(&self) -> bool {
        !self
            .deferred_sync
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Opens the cache at `root`, creating it and its directories if missing.
    pub fn open(root: &Path) -> Result<LocalStore> {
        std::fs::create_dir_all(root).map_err(StoreError::io("create directory", root))?;
        let store = LocalStore {
            root: root.to_path_buf(),
            cas: root.join("cas"),
            ac: root.join("ac"),
            logs: root.join("logs"),
            tmp: root.join("tmp"),
            records: root.join("records.log"),
            lock_path: root.join("lock"),
            warnings: Mutex::new(Vec::new()),
            deferred_sync: std::sync::atomic::AtomicBool::new(false),
            records_file: Mutex::new(None),
        };
        for dir in [&store.cas, &store.ac, &store.logs, &store.tmp] {
            fs::ensure_dir(dir)?;
        }
        fs::ensure_dir(&store.mirror_dir())?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A directory the caller may use freely, e.g. for per-node log files.
    pub fn logs_dir(&self) -> &Path {
        &self.logs
    }

    /// Temp files for atomic writes; on the same filesystem as the store.
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// The corrupt entries met (and taken out of the way) since the last call, oldest first.
    pub fn take_warnings(&self) -> Vec<StoreWarning> {
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Takes a corrupt entry out of the way so it reads as missing: moves it under `tmp/` for
    /// inspection (gc cleans it up later), or deletes it if it cannot be moved, and records a
    /// warning.
    fn quarantine(&self, kind: EntryKind, path: &Path, problem: String) -> Result<()> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tag = match kind {
            EntryKind::Blob => "blob",
            EntryKind::Action => "action",
            EntryKind::Claims => "claims",
        };
        let dest = self.tmp.join(format!(
            "corrupt-{tag}-{name}-{}-{}-{}",
            std::process::id(),
            super::now_unix_ms(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let moved_to = match std::fs::rename(path, &dest) {
            Ok(()) => Some(dest),
            // Someone else already took it away.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(rename_err) => match fs::remove_file(path) {
                Ok(_) => None,
                Err(_) => {
                    return Err(StoreError::Corrupt {
                        path: path.to_path_buf(),
                        what: format!("{problem}, and it could not be moved aside: {rename_err}"),
                    });
                }
            },
        };
        self.warn(StoreWarning {
            kind,
            path: path.to_path_buf(),
            problem,
            moved_to,
        });
        Ok(())
    }

    fn warn(&self, warning: StoreWarning) {
        self.warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(warning);
    }
}
