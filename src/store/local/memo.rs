//! Memos: files of the cache that only save time (the lowered graph, the orphans of the last
//! plan, the stat cache of input files). Each is one whole file, replaced through a temp file in
//! `tmp/` and a rename, so a reader never sees half of one; a memo that cannot be read or written
//! costs time in the next run, never correctness.

use std::path::{Path, PathBuf};

/// Which memo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memo {
    /// `graph.snapshot`: the graph lowered from a config, under its snapshot key.
    GraphSnapshot,
    /// `orphans`: the ids the last plan found no longer declared, under the graph and the
    /// record log they were found for.
    Orphans,
    /// `statcache`: the digest of every input file by its stat.
    StatCache,
}

impl Memo {
    fn file_name(self) -> &'static str {
        match self {
            Memo::GraphSnapshot => "graph.snapshot",
            Memo::Orphans => "orphans",
            Memo::StatCache => "statcache",
        }
    }
}

/// The memos of the cache at a root, which may not exist yet: then nothing is read, and nothing
/// is written (a plan before the first build leaves no cache behind).
#[derive(Debug, Clone)]
pub struct Memos {
    root: PathBuf,
}

impl Memos {
    pub fn at(root: &Path) -> Memos {
        Memos {
            root: root.to_path_buf(),
        }
    }

    fn path(&self, memo: Memo) -> PathBuf {
        self.root.join(memo.file_name())
    }

    /// The memo's bytes.
    pub fn read(&self, memo: Memo) -> Option<Vec<u8>> {
        std::fs::read(self.path(memo)).ok()
    }

    /// Replaces the memo with `bytes`, if the cache exists.
    pub fn save(&self, memo: Memo, bytes: &[u8]) {
        if !self.root.is_dir() {
            return;
        }
        let file = self.path(memo);
        let tmp_dir = self.root.join("tmp");
        let _ = std::fs::create_dir_all(&tmp_dir);
        let tmp = tmp_dir.join(format!("{}-{}", memo.file_name(), std::process::id()));
        if std::fs::write(&tmp, bytes).is_err() || std::fs::rename(&tmp, &file).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

impl super::LocalStore {
    /// The memos of this cache.
    pub fn memos(&self) -> Memos {
        Memos::at(&self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memos_round_trip_and_are_not_written_without_a_cache() {
        let dir = tempfile::tempdir().unwrap();
        let absent = Memos::at(&dir.path().join("cache"));
        absent.save(Memo::Orphans, b"x");
        assert!(absent.read(Memo::Orphans).is_none());
        assert!(!dir.path().join("cache").exists());

        let store = super::super::LocalStore::open(&dir.path().join("cache")).unwrap();
        let memos = store.memos();
        for (memo, bytes) in [
            (Memo::GraphSnapshot, &b"graph"[..]),
            (Memo::Orphans, b"orphans"),
            (Memo::StatCache, b"stat"),
        ] {
            memos.save(memo, bytes);
            assert_eq!(memos.read(memo).as_deref(), Some(bytes));
        }
        memos.save(Memo::Orphans, b"again");
        assert_eq!(memos.read(Memo::Orphans).as_deref(), Some(&b"again"[..]));
        let left = std::fs::read_dir(store.tmp_dir()).unwrap().count();
        assert_eq!(left, 0, "no temp file is left");
    }
}
