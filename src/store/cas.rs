//! The content store: blobs under `cas/`, named by the blake3 of their bytes.

use std::io;
use std::path::{Path, PathBuf};

use super::LocalStore;
use super::error::{EntryKind, Result, StoreError};
use super::fs::{self, fanout_path};
use crate::hash::Digest;

impl LocalStore {
    /// Where the blob `d` lives (or would live).
    pub(crate) fn blob_location(&self, d: &Digest) -> PathBuf {
        fanout_path(&self.cas, d)
    }

    /// Stores `bytes` and returns their digest. A blob that is already present is not rewritten.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of_bytes(bytes);
        let dest = self.blob_location(&digest);
        if fs::file_len_if_exists(&dest) == Some(bytes.len() as u64) {
            return Ok(digest);
        }
        fs::write_atomic(&self.tmp, &dest, bytes, true, self.sync_each())?;
        Ok(digest)
    }

    /// Stores a copy of the file at `path` and returns its digest and size. The file is hashed in
    /// place first (memory-mapped, on all cores when big) and not copied if the blob is present;
    /// otherwise it is copied into `tmp/`, the copy is hashed again to make sure the file did not
    /// change meanwhile, and renamed into place.
    pub fn put_file(&self, path: &Path) -> Result<(Digest, u64)> {
        let (digest, size) = fs::hash_file(path).map_err(StoreError::io("read", path))?;
        let dest = self.blob_location(&digest);
        if fs::file_len_if_exists(&dest) == Some(size) {
            return Ok((digest, size));
        }
        self.copy_in(path, &digest, size, &dest)?;
        Ok((digest, size))
    }

    /// Copies `path`, expected to hash to `digest`, into `tmp/`, checks the copy and renames it
    /// to `dest` (replacing whatever is there).
    fn copy_in(&self, path: &Path, digest: &Digest, size: u64, dest: &Path) -> Result<()> {
        let mut tmp = fs::temp_file(&self.tmp, "blob-")?;
        let mut src = std::fs::File::open(path).map_err(StoreError::io("open", path))?;
        io::copy(&mut src, tmp.as_file_mut()).map_err(StoreError::io("copy", path))?;
        let (copied, copied_size) =
            fs::hash_file(tmp.path()).map_err(StoreError::io("read", tmp.path()))?;
        if copied != *digest || copied_size != size {
            return Err(StoreError::SourceChanged {
                path: path.to_path_buf(),
            });
        }
        fs::persist(tmp, dest, true, self.sync_each())
    }

    /// Stores the file at `path` by giving it a second name under `cas/` (a hard link) instead
    /// of copying it, and returns its digest and size. The file becomes read-only and must not
    /// change afterwards: it *is* the blob. Whoever rewrites `path` later must unlink it first
    /// and create a new file, never truncate it in place.
    ///
    /// A file that changed while it was hashed and linked (size or modification time) is an
    /// error; the blob it may have left is caught by readers, which verify every blob.
    pub fn link_file(&self, path: &Path) -> Result<(Digest, u64)> {
        let stamp = |path: &Path| {
            std::fs::metadata(path)
                .and_then(|m| Ok((m.len(), m.modified()?)))
                .map_err(StoreError::io("inspect", path))
        };
        let before = stamp(path)?;
        let (digest, size) = fs::hash_file(path).map_err(StoreError::io("read", path))?;
        self.link_blob(path, &digest, size)?;
        if stamp(path)? != before || before.0 != size {
            return Err(StoreError::SourceChanged {
                path: path.to_path_buf(),
            });
        }
        Ok((digest, size))
    }

    /// Like [`LocalStore::link_file`] for a file whose digest and size the caller already knows
    /// (it wrote every byte itself). Readers verify blobs, so a wrong digest is only a miss.
    ///
    /// The link goes straight to the final name: if a blob is already there (another writer of
    /// the same bytes was first), this one is left as it is. A blob of the wrong size there is
    /// replaced by a copy, and so is the link when the file system refuses hard links.
    pub fn link_blob(&self, path: &Path, digest: &Digest, size: u64) -> Result<()> {
        let dest = self.blob_location(digest);
        let linked = (|| {
            fs::set_read_only(path)?;
            if self.sync_each() {
                std::fs::File::open(path)
                    .and_then(|f| f.sync_all())
                    .map_err(StoreError::io("sync", path))?;
            }
            fs::link_new(path, &dest, self.sync_each()).map_err(StoreError::io("link", path))
        })();
        match linked {
            Ok(fs::Linked::New) => Ok(()),
            Ok(fs::Linked::Exists) if fs::file_len_if_exists(&dest) == Some(size) => Ok(()),
            // A damaged blob, a file that is not ours to make read-only, or no hard links
            // here: store a copy the usual way.
            Ok(fs::Linked::Exists) | Err(_) => self.copy_in(path, digest, size, &dest),
        }
    }

    /// Whether the blob is present. Cheap: does not check its content (readers do).
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_location(d).is_file()
    }

    /// The blob's bytes, verified against its name. A corrupt blob reads as missing and is
    /// reported through [`LocalStore::take_warnings`].
    pub fn get_blob(&self, d: &Digest) -> Result<Option<Vec<u8>>> {
        let path = self.blob_location(d);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("read", &path)(e)),
        };
        let actual = Digest::of_bytes(&bytes);
        if actual != *d {
            self.quarantine(EntryKind::Blob, &path, mismatch(&actual))?;
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    /// The path of the blob, after verifying its content; for blobs too big to read into memory.
    /// A corrupt blob reads as missing and is reported through [`LocalStore::take_warnings`].
    pub fn blob_path(&self, d: &Digest) -> Result<Option<PathBuf>> {
        let path = self.blob_location(d);
        let actual = match fs::hash_file(&path) {
            Ok((actual, _)) => actual,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("read", &path)(e)),
        };
        if actual != *d {
            self.quarantine(EntryKind::Blob, &path, mismatch(&actual))?;
            return Ok(None);
        }
        Ok(Some(path))
    }
}

/// The problem with a blob whose content hashes to `actual` instead of its name.
pub(crate) fn mismatch(actual: &Digest) -> String {
    format!("its content hashes to {}, not to its name", actual.short())
}
