//! [`LocalStore`] as the store's three services. The file operations are short and synchronous
//! (a rename, a read of a small entry); a big blob is copied or reflinked, never read into memory.

use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;

use super::LocalStore;
use super::error::Result;
use super::types::{ActionResult, Record};
use crate::hash::Digest;
use crate::store::service::{ActionService, BlobService, RecordService};

#[async_trait]
impl BlobService for LocalStore {
    async fn has(&self, digest: &Digest) -> Result<bool> {
        Ok(self.has_blob(digest))
    }

    async fn get(&self, digest: &Digest) -> Result<Option<Bytes>> {
        Ok(self.get_blob(digest)?.map(Bytes::from))
    }

    async fn put(&self, bytes: Bytes) -> Result<Digest> {
        self.put_blob(&bytes)
    }

    async fn put_file(&self, path: &Path) -> Result<(Digest, u64)> {
        self.put_file(path)
    }

    async fn materialize(&self, digest: &Digest, dest: &Path) -> Result<bool> {
        self.copy_blob_to(digest, dest)
    }
}

#[async_trait]
impl ActionService for LocalStore {
    async fn get(&self, key: &Digest) -> Result<Option<ActionResult>> {
        self.get_action(key)
    }

    async fn put(&self, result: &ActionResult) -> Result<()> {
        self.put_action(result)
    }
}

#[async_trait]
impl RecordService for LocalStore {
    async fn append(&self, records: &[Record]) -> Result<()> {
        self.append_records(records)
    }

    async fn last(&self, id: &str) -> Result<Option<Record>> {
        Ok(self
            .record_history()?
            .into_iter()
            .rev()
            .find(|r| r.id == id))
    }

    async fn history(&self) -> Result<Vec<Record>> {
        self.record_history()
    }
}
