//! The layered store: a local backend in front of a remote one, as tvix castore combines its
//! stores. Reads go to the local backend first, then to the remote; a remote hit is backfilled
//! locally. Writes go to the local backend, then to the remote. The remote is an accelerator,
//! never a dependency: its first failure is one warning (see [`Layered::take_warnings`]), and
//! from then on the store works as if the remote were empty. A remote that refuses writes
//! because this runner holds no signing key ([`StoreError::ReadOnly`]) is read from and never
//! written to, without a warning.
//!
//! Two rules keep the local backend whole: a result fetched from the remote is backfilled only
//! once every blob it names is local (a local result never names a missing blob), and records
//! are this runner's own log, kept in the local backend only.

use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::error::{Result, StoreError};
use super::service::{ActionService, BlobService, RecordService, Store};
use super::types::{ActionResult, Record};
use crate::hash::Digest;

pub struct Layered {
    local: Arc<dyn Store>,
    remote: Arc<dyn Store>,
    /// The remote, for warnings.
    name: String,
    down: AtomicBool,
    warnings: Mutex<Vec<String>>,
}

impl Layered {
    pub fn new(local: Arc<dyn Store>, remote: Arc<dyn Store>, name: &str) -> Layered {
        Layered {
            local,
            remote,
            name: name.to_string(),
            down: AtomicBool::new(false),
            warnings: Mutex::new(Vec::new()),
        }
    }

    /// Whether the remote failed (and is no longer asked).
    pub fn remote_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// The warnings since the last call: at most one, the remote's first failure.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The remote's answer, or `None` when it is down or fails now (the first failure taking it
    /// out, with one warning). A read-only refusal is `None` without a warning.
    async fn ask<T>(&self, what: &str, f: impl Future<Output = Result<T>>) -> Option<T> {
        if self.remote_down() {
            return None;
        }
        match f.await {
            Ok(v) => Some(v),
            Err(StoreError::ReadOnly { .. }) => None,
            Err(e) => {
                if !self.down.swap(true, Ordering::Relaxed) {
                    self.warnings
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!(
                            "remote cache {}: cannot {what}: {e}; going on without it",
                            self.name
                        ));
                }
                None
            }
        }
    }
}

#[async_trait]
impl BlobService for Layered {
    async fn has(&self, digest: &Digest) -> Result<bool> {
        if self.local.blobs().has(digest).await? {
            return Ok(true);
        }
        Ok(self
            .ask("look up a blob", self.remote.blobs().has(digest))
            .await
            .unwrap_or(false))
    }

    async fn get(&self, digest: &Digest) -> Result<Option<Bytes>> {
        if let Some(b) = self.local.blobs().get(digest).await? {
            return Ok(Some(b));
        }
        let Some(Some(bytes)) = self
            .ask("read a blob", self.remote.blobs().get(digest))
            .await
        else {
            return Ok(None);
        };
        self.local.blobs().put(bytes.clone()).await?;
        Ok(Some(bytes))
    }

    async fn put(&self, bytes: Bytes) -> Result<Digest> {
        let digest = self.local.blobs().put(bytes.clone()).await?;
        self.ask("write a blob", self.remote.blobs().put(bytes))
            .await;
        Ok(digest)
    }

    async fn put_file(&self, path: &Path) -> Result<(Digest, u64)> {
        let stored = self.local.blobs().put_file(path).await?;
        self.ask("write a blob", self.remote.blobs().put_file(path))
            .await;
        Ok(stored)
    }

    async fn materialize(&self, digest: &Digest, dest: &Path) -> Result<bool> {
        if self.local.blobs().materialize(digest, dest).await? {
            return Ok(true);
        }
        let fetched = self
            .ask("read a blob", self.remote.blobs().materialize(digest, dest))
            .await;
        if fetched != Some(true) {
            return Ok(false);
        }
        // The copy was verified as it came: it is the blob.
        self.local.blobs().put_file(dest).await?;
        Ok(true)
    }
}

#[async_trait]
impl ActionService for Layered {
    async fn get(&self, key: &Digest) -> Result<Option<ActionResult>> {
        if let Some(r) = self.local.actions().get(key).await? {
            return Ok(Some(r));
        }
        let Some(Some(result)) = self
            .ask("read a result", self.remote.actions().get(key))
            .await
        else {
            return Ok(None);
        };
        let mut local = true;
        for d in result.referenced_blobs() {
            local &= self.local.blobs().has(&d).await?;
        }
        if local {
            self.local.actions().put(&result).await?;
        }
        Ok(Some(result))
    }

    async fn put(&self, result: &ActionResult) -> Result<()> {
        self.local.actions().put(result).await?;
        self.ask("write a result", self.remote.actions().put(result))
            .await;
        Ok(())
    }
}

#[async_trait]
impl RecordService for Layered {
    async fn append(&self, records: &[Record]) -> Result<()> {
        self.local.records().append(records).await
    }

    async fn last(&self, id: &str) -> Result<Option<Record>> {
        self.local.records().last(id).await
    }

    async fn history(&self) -> Result<Vec<Record>> {
        self.local.records().history().await
    }
}
