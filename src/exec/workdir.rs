//! Work directories for step attempts, reused instead of created and removed each time.
//!
//! Creating and removing a directory per attempt costs an inode allocation and a free per node,
//! and on ext4 freed inodes make later allocations slower. A build keeps a pool of directories
//! `tmp/work-<pid>-<n>`, about one per job slot. An attempt takes an empty one; when it ends (its
//! outputs stored), the directory is emptied and goes back to the pool. One that cannot be
//! emptied is removed instead, so nothing a step left behind reaches another step. (A process
//! that a step started in the background and that outlives the step could still write into the
//! directory later; with a directory per attempt it would have written into a removed one.)

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct WorkDirs {
    base: PathBuf,
    free: Mutex<Vec<PathBuf>>,
    made: AtomicUsize,
}

impl WorkDirs {
    /// A pool of directories under `base` (the store's `tmp/`).
    pub fn new(base: &Path) -> WorkDirs {
        WorkDirs {
            base: base.to_path_buf(),
            free: Mutex::new(Vec::new()),
            made: AtomicUsize::new(0),
        }
    }

    /// An empty directory, for one attempt; give it back with [`WorkDirs::release`].
    pub fn take(&self) -> io::Result<PathBuf> {
        if let Some(dir) = self.free.lock().expect("work dirs").pop() {
            return Ok(dir);
        }
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        let dir = self.base.join(format!("work-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => Ok(dir),
            // Left by an earlier process with the same pid.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                std::fs::remove_dir_all(&dir)?;
                std::fs::create_dir(&dir)?;
                Ok(dir)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&dir)?;
                Ok(dir)
            }
            Err(e) => Err(e),
        }
    }

    /// Empties `dir` and keeps it for the next attempt. Blocks on the file system.
    pub fn release(&self, dir: PathBuf) {
        if empty(&dir).is_ok() {
            self.free.lock().expect("work dirs").push(dir);
        } else {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

impl Drop for WorkDirs {
    fn drop(&mut self) {
        for dir in self.free.get_mut().expect("work dirs").drain(..) {
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// Removes everything inside `dir`.
fn empty(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_directory_comes_back_empty_and_is_reused() {
        let tmp = tempfile::TempDir::new().unwrap();
        let pool = WorkDirs::new(tmp.path());
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        assert_ne!(a, b);
        std::fs::create_dir_all(a.join("sub/deeper")).unwrap();
        std::fs::write(a.join("sub/deeper/f"), "x").unwrap();
        std::fs::write(a.join("out.txt"), "x").unwrap();
        std::os::unix::fs::symlink("/nonexistent", a.join("dangling")).unwrap();
        pool.release(a.clone());
        let again = pool.take().unwrap();
        assert_eq!(again, a);
        assert_eq!(std::fs::read_dir(&again).unwrap().count(), 0);
        pool.release(again);
        pool.release(b);
        drop(pool);
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
