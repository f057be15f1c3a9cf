//! The cache lock: an exclusive file lock on `lock` under the cache root. The holder writes its
//! pid and start time into the file, so a waiter can say whom it is waiting for.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::LocalStore;
use super::error::{Result, StoreError};

/// Holds the cache lock; releases it when dropped.
#[derive(Debug)]
pub struct CacheLock {
    file: File,
    path: PathBuf,
}

impl CacheLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for CacheLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first makes it immediate.
        let _ = self.file.unlock();
    }
}

impl LocalStore {
    /// Takes the cache lock. If another handle (in this or another process) holds it: with
    /// `wait == false`, fails with [`StoreError::Locked`]; with `wait == true`, calls `on_wait`
    /// with a description of the holder, e.g. `kiln (pid 1234, since 2026-01-01T10:00:00Z)
    /// holding cache/lock`, then blocks until the lock is free.
    pub fn lock(&self, wait: bool, on_wait: impl FnOnce(&str)) -> Result<CacheLock> {
        let path = &self.lock_path;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(StoreError::io("open", path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = read_holder(&mut file);
                if !wait {
                    return Err(StoreError::Locked {
                        holder,
                        path: path.clone(),
                    });
                }
                on_wait(&format!("{holder} holding {}", path.display()));
                file.lock().map_err(StoreError::io("lock", path))?;
            }
            Err(TryLockError::Error(e)) => return Err(StoreError::io("lock", path)(e)),
        }
        write_holder(&mut file).map_err(StoreError::io("write", path))?;
        Ok(CacheLock {
            file,
            path: path.clone(),
        })
    }
}

/// What the holder wrote into the lock file.
fn read_holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file
        .seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_string(&mut text));
    let text = text.trim();
    if text.is_empty() {
        "another kiln process".to_string()
    } else {
        text.to_string()
    }
}

fn write_holder(file: &mut File) -> std::io::Result<()> {
    let since = humantime::format_rfc3339_seconds(SystemTime::now());
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(format!("kiln (pid {}, since {since})\n", std::process::id()).as_bytes())?;
    file.flush()
}
