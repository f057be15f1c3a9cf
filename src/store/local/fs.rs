//! Filesystem helpers: atomic writes through `tmp/`, directory syncs, hashing files, and walking
//! the two-level `<first 2 hex>/<64 hex>` fan-out used by `cas/` and `ac/`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use super::error::{Result, StoreError};
use crate::hash::Digest;

/// `dir/<first 2 hex>/<64 hex>`.
pub(crate) fn fanout_path(dir: &Path, d: &Digest) -> PathBuf {
    let hex = d.to_hex();
    dir.join(&hex[..2]).join(hex)
}

/// Creates `dir` if missing; when it had to be created, syncs its parent so the new directory
/// entry survives a crash.
pub(crate) fn ensure_dir(dir: &Path) -> Result<()> {
    ensure_dir_synced(dir, true)
}

/// Like [`ensure_dir`]; without `sync` the caller makes the new entry durable later.
fn ensure_dir_synced(dir: &Path, sync: bool) -> Result<()> {
    create_dir(dir, sync).map_err(StoreError::io("create directory", dir))
}

fn create_dir(dir: &Path, sync: bool) -> io::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => {
            if sync && let Some(parent) = dir.parent() {
                File::open(parent)?.sync_all()?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes renames and creations inside `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(StoreError::io("sync directory", dir))
}

/// A new, empty temp file in `tmp_dir` (same filesystem as the store, so it can be renamed in).
pub(crate) fn temp_file(tmp_dir: &Path, prefix: &str) -> Result<NamedTempFile> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempfile_in(tmp_dir)
        .map_err(StoreError::io("create a temp file in", tmp_dir))
}

/// Renames a fully written temp file to `dest`: readers see either the old file or the complete
/// new one, never a partial one. With `sync`, the file and then `dest`'s directory are synced
/// too; without, the caller makes them durable later (see `LocalStore::defer_sync`).
///
/// `dest`'s directory (a fan-out directory) is created the first time a rename into it finds it
/// missing, so an existing one costs nothing.
pub(crate) fn persist(tmp: NamedTempFile, dest: &Path, read_only: bool, sync: bool) -> Result<()> {
    let tmp_path = tmp.path().to_path_buf();
    if read_only {
        set_read_only(&tmp_path)?;
    }
    if sync {
        tmp.as_file()
            .sync_all()
            .map_err(StoreError::io("sync", &tmp_path))?;
    }
    let parent = dest.parent().expect("store paths have a parent");
    let tmp = match tmp.persist(dest) {
        Ok(_) => None,
        Err(e) if e.error.kind() == io::ErrorKind::NotFound => Some(e.file),
        Err(e) => return Err(StoreError::io("move a temp file to", dest)(e.error)),
    };
    if let Some(tmp) = tmp {
        ensure_dir_synced(parent, sync)?;
        tmp.persist(dest)
            .map_err(|e| StoreError::io("move a temp file to", dest)(e.error))?;
    }
    if sync { sync_dir(parent) } else { Ok(()) }
}

/// How [`link_new`] ended.
pub(crate) enum Linked {
    /// `dest` is a new name of `src`.
    New,
    /// Something already has the name `dest`; nothing was changed.
    Exists,
}

/// Gives the file `src` the new name `dest` with one `link(2)`, straight to the final name: no
/// temp name, so two writers of the same `dest` cannot race (one gets [`Linked::Exists`]).
/// `dest`'s directory is created when missing. With `sync`, the directory is synced.
pub(crate) fn link_new(src: &Path, dest: &Path, sync: bool) -> io::Result<Linked> {
    let parent = dest.parent().expect("store paths have a parent");
    let linked = match fs::hard_link(src, dest) {
        // The fan-out directory is missing, or was missing when we looked and another writer
        // created it since: create it (an existing one is fine) and link again.
        Err(e) if e.kind() == io::ErrorKind::NotFound && src.exists() => {
            create_dir(parent, sync)?;
            fs::hard_link(src, dest)
        }
        other => other,
    };
    match linked {
        Ok(()) => {
            if sync {
                File::open(parent)?.sync_all()?;
            }
            Ok(Linked::New)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Linked::Exists),
        Err(e) => Err(e),
    }
}

/// Fills the empty file `dest` with the bytes of the file at `src`: a reflink (`FICLONE`, which
/// shares the blocks copy-on-write, so neither file's later writes reach the other) where the
/// file system has them, a plain copy otherwise (no reflinks there, or across file systems).
/// Either way `dest` is a new inode that no descriptor of anyone else refers to.
pub(crate) fn clone_or_copy(src: &Path, dest: &mut File) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    use std::os::fd::AsRawFd;
    let mut from = File::open(src)?;
    // SAFETY: ioctl(FICLONE) on two descriptors kept open for the duration of the call.
    if unsafe { libc::ioctl(dest.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) } == 0 {
        return Ok(());
    }
    // EOPNOTSUPP, EXDEV, EINVAL, ENOTTY...: whatever the reason, a copy does the same job.
    dest.set_len(0)?;
    dest.seek(SeekFrom::Start(0))?;
    io::copy(&mut from, dest)?;
    Ok(())
}

/// Flushes everything written to the file system that holds `file` (one `syncfs`); `path` is
/// its name, for errors.
pub(crate) fn sync_filesystem(file: &File, path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: syncfs(2) on a descriptor that `file` keeps open for the duration of the call.
    if unsafe { libc::syncfs(file.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(StoreError::io("sync the file system of", path)(
            io::Error::last_os_error(),
        ))
    }
}

/// Writes `bytes` to `dest` atomically (temp file, fsync, rename, directory fsync).
pub(crate) fn write_atomic(
    tmp_dir: &Path,
    dest: &Path,
    bytes: &[u8],
    read_only: bool,
    sync: bool,
) -> Result<()> {
    let mut tmp = temp_file(tmp_dir, "write-")?;
    tmp.write_all(bytes)
        .map_err(StoreError::io("write", tmp.path()))?;
    persist(tmp, dest, read_only, sync)
}

#[cfg(unix)]
pub(crate) fn set_read_only(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o444))
        .map_err(StoreError::io("set permissions of", path))
}

#[cfg(not(unix))]
pub(crate) fn set_read_only(_path: &Path) -> Result<()> {
    Ok(())
}

/// The bytes of a file the store replaces only by renaming over it, memory-mapped: large
/// indexes and snapshots are read without copying them into fresh memory. `None` if it is
/// missing, empty or cannot be mapped.
pub fn map_file(path: &Path) -> Option<memmap2::Mmap> {
    let file = File::open(path).ok()?;
    // SAFETY: the mapping is only read. The files mapped here are written to a temp file and
    // renamed into place, never changed in place, so the mapped inode does not change while
    // it is mapped (a reader of a garbled file finds a bad checksum, never undefined bytes).
    unsafe { memmap2::Mmap::map(&file) }.ok()
}

/// Hashes a file, memory-mapping and hashing it on all cores when it is big.
/// Returns the digest and the number of bytes hashed.
pub(crate) fn hash_file(path: &Path) -> io::Result<(Digest, u64)> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap_rayon(path)?;
    Ok((
        Digest::from_bytes(*hasher.finalize().as_bytes()),
        hasher.count(),
    ))
}

/// A file found while walking a fan-out directory.
pub(crate) enum FanoutEntry {
    /// `<2 hex>/<64 hex>` with matching prefix.
    Entry { digest: Digest, path: PathBuf },
    /// Anything else: a misnamed file, a file where a prefix directory belongs, a subdirectory.
    Stray { path: PathBuf },
}

/// Lists everything under a fan-out directory (`cas/` or `ac/`) by reading directories only.
pub(crate) fn walk_fanout(dir: &Path) -> Result<Vec<FanoutEntry>> {
    let mut out = Vec::new();
    for prefix in read_dir(dir)? {
        let prefix_name = prefix.file_name().to_string_lossy().into_owned();
        let prefix_path = prefix.path();
        let is_dir = prefix
            .file_type()
            .map_err(StoreError::io("inspect", &prefix_path))?
            .is_dir();
        if !is_dir || !is_prefix_name(&prefix_name) {
            out.push(FanoutEntry::Stray { path: prefix_path });
            continue;
        }
        for entry in read_dir(&prefix_path)? {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_file = entry
                .file_type()
                .map_err(StoreError::io("inspect", &path))?
                .is_file();
            match name.parse::<Digest>() {
                Ok(digest)
                    if is_file && digest.to_hex() == name && name.starts_with(&prefix_name) =>
                {
                    out.push(FanoutEntry::Entry { digest, path })
                }
                _ => out.push(FanoutEntry::Stray { path }),
            }
        }
    }
    Ok(out)
}

fn is_prefix_name(name: &str) -> bool {
    name.len() == 2
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The entries of a directory; a missing directory is empty.
pub(crate) fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    let iter = match fs::read_dir(dir) {
        Ok(iter) => iter,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io("list", dir)(e)),
    };
    iter.collect::<io::Result<Vec<_>>>()
        .map_err(StoreError::io("list", dir))
}

/// Removes a file; one that is already gone counts as removed. Returns whether it existed.
pub(crate) fn remove_file(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io("remove", path)(e)),
    }
}

/// The size of a file, or 0 if it cannot be inspected.
pub(crate) fn file_len(path: &Path) -> u64 {
    fs::symlink_metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The size of a file, or `None` if it does not exist (or is not a regular file).
pub(crate) fn file_len_if_exists(path: &Path) -> Option<u64> {
    fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}
