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

    /// Copies `path`, expected to hash to `digest`, into `tmp/` (a reflink where the file system
    /// has them), checks the copy and renames it to `dest` (replacing whatever is there).
    fn copy_in(&self, path: &Path, digest: &Digest, size: u64, dest: &Path) -> Result<()> {
        let mut tmp = fs::temp_file(&self.tmp, "blob-")?;
        fs::clone_or_copy(path, tmp.as_file_mut()).map_err(StoreError::io("copy", path))?;
        let (copied, copied_size) =
            fs::hash_file(tmp.path()).map_err(StoreError::io("read", tmp.path()))?;
        if copied != *digest || copied_size != size {
            return Err(StoreError::SourceChanged {
                path: path.to_path_buf(),
            });
        }
        fs::persist(tmp, dest, true, self.sync_each())
    }

    /// Stores the file at `path` as a blob of its own and returns its digest and size: the file
    /// is reflinked (or, where the file system cannot, copied) into `tmp/`, and that private copy
    /// is hashed and given its final name. Nothing that still has `path` open, or writes to it
    /// later, can reach the stored bytes. For a step's outputs and logs, which may be big: a
    /// reflink costs no copy, and the bytes are hashed once, where they are stored.
    ///
    /// With `expect`, the copy must have that digest and size (the caller knows every byte it
    /// wrote), or it is [`StoreError::SourceChanged`] and nothing is stored.
    ///
    /// The copy is linked straight to its final name: if a blob of that size is already there
    /// (another writer of the same bytes was first), it is left as it is and the copy dropped;
    /// one of the wrong size is replaced.
    pub fn put_copy(&self, path: &Path, expect: Option<(Digest, u64)>) -> Result<(Digest, u64)> {
        let mut tmp = fs::temp_file(&self.tmp, "blob-")?;
        fs::clone_or_copy(path, tmp.as_file_mut()).map_err(StoreError::io("copy", path))?;
        let (digest, size) =
            fs::hash_file(tmp.path()).map_err(StoreError::io("read", tmp.path()))?;
        if expect.is_some_and(|e| e != (digest, size)) {
            return Err(StoreError::SourceChanged {
                path: path.to_path_buf(),
            });
        }
        let dest = self.blob_location(&digest);
        if fs::file_len_if_exists(&dest) == Some(size) {
            return Ok((digest, size));
        }
        fs::set_read_only(tmp.path())?;
        if self.sync_each() {
            tmp.as_file()
                .sync_all()
                .map_err(StoreError::io("sync", tmp.path()))?;
        }
        let linked = fs::link_new(tmp.path(), &dest, self.sync_each())
            .map_err(StoreError::io("link", tmp.path()))?;
        match linked {
            fs::Linked::New => {}
            fs::Linked::Exists if fs::file_len_if_exists(&dest) == Some(size) => {}
            // A damaged blob under that name: replace it.
            fs::Linked::Exists => fs::persist(tmp, &dest, true, self.sync_each())?,
        }
        Ok((digest, size))
    }

    /// Gives a step its own copy of the blob `d` at `dest` (a new file; a reflink where the file
    /// system has them): the step may read it, change it or remove it, the blob stays as it is.
    /// The copy is checked against `d`; a corrupt blob reads as missing (`Ok(false)`), is moved
    /// aside and reported through [`LocalStore::take_warnings`].
    pub fn copy_blob_to(&self, d: &Digest, dest: &Path) -> Result<bool> {
        let blob = self.blob_location(d);
        if !blob.is_file() {
            return Ok(false);
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dest)
            .map_err(StoreError::io("create", dest))?;
        let copied = fs::clone_or_copy(&blob, &mut file)
            .and_then(|()| fs::hash_file(dest))
            .map_err(StoreError::io("copy", &blob));
        match copied {
            Ok((actual, _)) if actual == *d => {
                drop(file);
                fs::set_read_only(dest)?;
                Ok(true)
            }
            other => {
                fs::remove_file(dest)?;
                other?;
                // The copy does not hash to `d`, so the blob is damaged: checking it moves it aside.
                match self.blob_path(d)? {
                    None => Ok(false),
                    Some(_) => Err(StoreError::SourceChanged { path: blob }),
                }
            }
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

impl LocalStore {
    /// A temp file in `tmp/` to fill with a blob's bytes, then give to
    /// [`LocalStore::adopt_blob`].
    pub fn blob_temp(&self) -> Result<tempfile::NamedTempFile> {
        fs::temp_file(&self.tmp, "fetch-")
    }

    /// Stores the filled temp file `tmp` as the blob `digest`, which the caller computed over
    /// every byte it wrote (a download checks its digest as it arrives).
    pub fn adopt_blob(&self, tmp: tempfile::NamedTempFile, digest: &Digest) -> Result<()> {
        let dest = self.blob_location(digest);
        tmp.as_file()
            .sync_all()
            .map_err(StoreError::io("sync", tmp.path()))?;
        fs::persist(tmp, &dest, true, false)
    }
}
