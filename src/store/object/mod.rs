//! The object-store backend: the store's three services in any [`ObjectStore`] (S3, GCS, Azure,
//! a directory, memory), in the layout of the shared remote cache (see [`super::remote`]):
//!
//! ```text
//! cas/<blake3 hex>                             blobs
//! ac/<node key hex>                            signed result records (see [`signed`])
//! records/<blake3 of the id, hex>/<ms>-<ns>    one build record each (JSON)
//! ```
//!
//! Writes are conditional (`PutMode::Create`): a blob or a record already there is kept, never
//! replaced. Only a backend holding a signing key writes; without one every write is
//! [`StoreError::ReadOnly`]. Records are read only when signed by a trusted key; a record that
//! is not, and a blob whose bytes are not what its name says, read as misses, with a warning
//! (see [`ObjectBackend::take_warnings`]). Any other failure of the object store is an error:
//! [`super::Layered`] and [`super::remote::Remote`] (the shared cache of a run, built on this
//! backend) are what turn a failing remote into a warning.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::error::{Result, StoreError};
use super::remote::keys::{PublicKey, SecretKey};
use super::remote::signed::Verified;
use super::remote::{client, is_miss, signed};
use super::service::{ActionService, BlobService, RecordService};
use super::types::{ActionResult, Record};
use crate::hash::Digest;

/// How many records [`RecordService::history`] reads at once.
const IN_FLIGHT: usize = 32;

/// A store in an object store under a path prefix.
pub struct ObjectBackend {
    /// Where it is, for messages (`s3://bucket/prefix`, `memory://`).
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: String,
    signing: Option<SecretKey>,
    trusted: Vec<PublicKey>,
    ranges: client::Ranges,
    warnings: Mutex<Vec<String>>,
    pub stats: Stats,
}

/// Requests made and bytes moved, for reports and benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// Why a blob did not come down (the remote answering: not a failure of the remote).
#[derive(Debug, thiserror::Error)]
pub enum Unfetched {
    #[error("{0} is missing from the remote cache")]
    Missing(ObjectPath),
    #[error("{path} holds other bytes than its name says (blake3 {})", actual.short())]
    Wrong { path: ObjectPath, actual: Digest },
    #[error("{path} changed while it was read: {why}")]
    Changed { path: ObjectPath, why: String },
}

impl ObjectBackend {
    /// The backend in `store` under `prefix`, writing with `signing` (none: read-only) and
    /// reading the records signed by `trusted` (and by `signing`).
    pub fn new(
        url: &str,
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        signing: Option<SecretKey>,
        mut trusted: Vec<PublicKey>,
    ) -> ObjectBackend {
        if let Some(k) = &signing
            && !trusted.contains(&k.public())
        {
            trusted.push(k.public());
        }
        ObjectBackend {
            url: url.to_string(),
            store,
            prefix: prefix.trim_matches('/').to_string(),
            signing,
            trusted,
            ranges: client::RANGES,
            warnings: Mutex::new(Vec::new()),
            stats: Stats::default(),
        }
    }

    /// The backend a remote cache URL names (`s3://`, `gs://`, `az://`, `file://`), with the
    /// client setup of the remote cache.
    pub fn open(
        url: &str,
        signing: Option<SecretKey>,
        trusted: Vec<PublicKey>,
    ) -> std::result::Result<ObjectBackend, String> {
        let (store, prefix) = super::remote::open_store(url)?;
        Ok(ObjectBackend::new(url, store, &prefix, signing, trusted))
    }

    /// Fetches big blobs in `ranges` from now on, instead of [`client::RANGES`].
    pub(crate) fn set_ranges(&mut self, ranges: client::Ranges) {
        self.ranges = ranges;
    }

    /// The entries read as misses since the last call (untrusted records, damaged blobs).
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn warn(&self, w: String) {
        self.warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(w);
    }

    /// The object store itself, for what is not a blob, a result or a record (claims, packs).
    pub(crate) fn object_store(&self) -> &dyn ObjectStore {
        &*self.store
    }

    /// Whether this backend writes (it holds a signing key).
    pub fn writes(&self) -> bool {
        self.signing.is_some()
    }

    /// The keys whose records are read.
    pub(crate) fn trusted(&self) -> &[PublicKey] {
        &self.trusted
    }

    pub(crate) fn path(&self, rest: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(rest)
        } else {
            ObjectPath::from(format!("{}/{rest}", self.prefix))
        }
    }

    fn blob_path(&self, d: &Digest) -> ObjectPath {
        self.path(&format!("cas/{}", d.to_hex()))
    }

    fn records_of(&self, id: &str) -> ObjectPath {
        self.path(&format!(
            "records/{}",
            Digest::of_bytes(id.as_bytes()).to_hex()
        ))
    }

    pub(crate) fn failed(
        &self,
        op: &'static str,
        path: &ObjectPath,
        e: object_store::Error,
    ) -> StoreError {
        StoreError::Remote {
            url: self.url.clone(),
            op,
            path: path.to_string(),
            source: Box::new(e),
        }
    }

    pub(crate) fn count(&self) {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn signing_key(&self) -> Result<&SecretKey> {
        self.signing.as_ref().ok_or_else(|| StoreError::ReadOnly {
            url: self.url.clone(),
        })
    }

    /// Whether the object at `path` exists.
    pub(crate) async fn exists(&self, path: &ObjectPath) -> Result<bool> {
        self.count();
        match self.store.head(path).await {
            Ok(_) => Ok(true),
            Err(e) if is_miss(&e) => Ok(false),
            Err(e) => Err(self.failed("inspect", path, e)),
        }
    }

    /// The object at `path`, `None` if it does not exist.
    pub(crate) async fn read(&self, path: &ObjectPath) -> Result<Option<Bytes>> {
        self.count();
        let got = match self.store.get(path).await {
            Ok(got) => got,
            Err(e) if is_miss(&e) => return Ok(None),
            Err(e) => return Err(self.failed("read", path, e)),
        };
        let bytes = got
            .bytes()
            .await
            .map_err(|e| self.failed("read", path, e))?;
        self.stats
            .bytes_in
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(Some(bytes))
    }

    /// The trusted result stored under `key`. A record that fails a check reads as missing,
    /// with a warning naming it.
    pub(crate) async fn verified(&self, key: &Digest) -> Result<Option<Verified>> {
        let path = self.path(&format!("ac/{}", key.to_hex()));
        let Some(bytes) = self.read(&path).await? else {
            return Ok(None);
        };
        match signed::decode(&bytes, key, &self.trusted) {
            Ok(v) => Ok(Some(v)),
            Err(why) => {
                self.warn(format!(
                    "remote cache {}: ignoring the record {path}: {why}",
                    self.url
                ));
                Ok(None)
            }
        }
    }

    /// Writes the signed record of `result` unless one is there already: whether this call
    /// wrote it.
    pub(crate) async fn put_record(&self, result: &ActionResult) -> Result<bool> {
        let key = self.signing_key()?;
        let path = self.path(&format!("ac/{}", result.key.to_hex()));
        let bytes = Bytes::from(signed::encode(result, key));
        self.create(&path, bytes).await
    }

    /// Downloads the blob `d` into `file`, checking its digest on the way (a big blob in
    /// parallel ranges, see [`client::fetch_file`]): its size, or why it did not come.
    pub(crate) async fn fetch_into(
        &self,
        d: &Digest,
        file: &std::fs::File,
        dest: &Path,
    ) -> Result<std::result::Result<u64, Unfetched>> {
        let path = self.blob_path(d);
        let got =
            match client::fetch_file(&*self.store, &path, file, self.ranges, &self.stats.requests)
                .await
            {
                Ok(got) => got,
                Err(client::FetchError::Store(e)) if is_miss(&e) => {
                    return Ok(Err(Unfetched::Missing(path)));
                }
                Err(client::FetchError::Store(e)) => return Err(self.failed("read", &path, e)),
                Err(client::FetchError::Changed(why)) => {
                    return Ok(Err(Unfetched::Changed { path, why }));
                }
                Err(client::FetchError::Local(e)) => return Err(StoreError::io("write", dest)(e)),
            };
        self.stats.bytes_in.fetch_add(got.size, Ordering::Relaxed);
        let actual = Digest::from_bytes(*got.hash.as_bytes());
        if actual != *d {
            return Ok(Err(Unfetched::Wrong { path, actual }));
        }
        Ok(Ok(got.size))
    }

    /// Sends the file at `file` as the blob `d` unless the remote has it, checking on the way
    /// that its bytes are `d` (one read of a big blob, not two: a damaged file is not sent, and
    /// is the read error [`std::io::ErrorKind::InvalidData`]). Whether this call sent it.
    pub(crate) async fn send_named(&self, d: &Digest, file: &Path, size: u64) -> Result<bool> {
        self.signing_key()?;
        if BlobService::has(self, d).await? {
            return Ok(false);
        }
        let key = self.blob_path(d);
        self.stats
            .requests
            .fetch_add(client::send_requests(size), Ordering::Relaxed);
        let name = blake3::Hash::from_bytes(*d.as_bytes());
        match client::send_blob(&*self.store, &key, file, size, &name).await {
            Ok(_) => {
                self.stats.bytes_out.fetch_add(size, Ordering::Relaxed);
                Ok(true)
            }
            Err(client::SendError::Store(object_store::Error::AlreadyExists { .. })) => Ok(false),
            Err(client::SendError::Store(e)) => Err(self.failed("write", &key, e)),
            Err(client::SendError::Read(e)) => Err(StoreError::io("read", file)(e)),
        }
    }

    /// Writes `bytes` to `path` unless something is there already (then it is kept): whether
    /// this call wrote it.
    pub(crate) async fn create(&self, path: &ObjectPath, bytes: Bytes) -> Result<bool> {
        self.count();
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let len = bytes.len() as u64;
        match self
            .store
            .put_opts(path, PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => {
                self.stats.bytes_out.fetch_add(len, Ordering::Relaxed);
                Ok(true)
            }
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.failed("write", path, e)),
        }
    }
}

#[async_trait]
impl BlobService for ObjectBackend {
    async fn has(&self, digest: &Digest) -> Result<bool> {
        self.exists(&self.blob_path(digest)).await
    }

    async fn get(&self, digest: &Digest) -> Result<Option<Bytes>> {
        let path = self.blob_path(digest);
        let Some(bytes) = self.read(&path).await? else {
            return Ok(None);
        };
        let actual = Digest::of_bytes(&bytes);
        if actual != *digest {
            let why = Unfetched::Wrong { path, actual };
            self.warn(format!("remote cache {}: ignoring a blob: {why}", self.url));
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    async fn put(&self, bytes: Bytes) -> Result<Digest> {
        self.signing_key()?;
        let digest = Digest::of_bytes(&bytes);
        self.create(&self.blob_path(&digest), bytes).await?;
        Ok(digest)
    }

    async fn put_file(&self, path: &Path) -> Result<(Digest, u64)> {
        self.signing_key()?;
        let (digest, size) =
            crate::store::local::hash_file(path).map_err(StoreError::io("read", path))?;
        self.send_named(&digest, path, size).await?;
        Ok((digest, size))
    }

    async fn materialize(&self, digest: &Digest, dest: &Path) -> Result<bool> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dest)
            .map_err(StoreError::io("create", dest))?;
        let fetched = self.fetch_into(digest, &file, dest).await;
        drop(file);
        let outcome = match fetched {
            Ok(Ok(_)) => return Ok(true),
            Ok(Err(Unfetched::Missing(_))) => Ok(false),
            Ok(Err(why)) => {
                self.warn(format!("remote cache {}: ignoring a blob: {why}", self.url));
                Ok(false)
            }
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(dest);
        outcome
    }
}

#[async_trait]
impl ActionService for ObjectBackend {
    async fn get(&self, key: &Digest) -> Result<Option<ActionResult>> {
        Ok(self.verified(key).await?.map(|v| v.result))
    }

    async fn put(&self, result: &ActionResult) -> Result<()> {
        self.put_record(result).await.map(drop)
    }
}

#[async_trait]
impl RecordService for ObjectBackend {
    async fn append(&self, records: &[Record]) -> Result<()> {
        self.signing_key()?;
        for r in records {
            // Named by the record's time, then by the time it was appended: listing order is
            // history order.
            let appended = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let name = format!(
                "{}/{:020}-{appended:039}",
                self.records_of(&r.id),
                r.unix_ms
            );
            let body = serde_json::to_vec(r).map_err(|source| StoreError::Encode {
                what: format!("the record of {}", r.id),
                source,
            })?;
            self.create(&ObjectPath::from(name), Bytes::from(body))
                .await?;
        }
        Ok(())
    }

    async fn last(&self, id: &str) -> Result<Option<Record>> {
        let dir = self.records_of(id);
        self.count();
        let listed: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| self.failed("list", &dir, e))?;
        let Some(newest) = listed.iter().map(|m| &m.location).max() else {
            return Ok(None);
        };
        Ok(self.read_record(newest).await?.filter(|r| r.id == id))
    }

    async fn history(&self) -> Result<Vec<Record>> {
        let dir = self.path("records");
        self.count();
        let mut listed: Vec<ObjectPath> = self
            .store
            .list(Some(&dir))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(|e| self.failed("list", &dir, e))?;
        listed.sort_by(|a, b| a.filename().cmp(&b.filename()));
        // Made up front, so that the compiler sees the futures are `Send`.
        let reads: Vec<futures_util::future::BoxFuture<'_, Result<Option<Record>>>> = listed
            .iter()
            .map(|p| futures_util::FutureExt::boxed(self.read_record(p)))
            .collect();
        let read: Vec<Option<Record>> = futures_util::stream::iter(reads)
            .buffered(IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(read.into_iter().flatten().collect())
    }
}

impl ObjectBackend {
    /// A record object; one that does not decode is skipped with a warning.
    async fn read_record(&self, path: &ObjectPath) -> Result<Option<Record>> {
        let Some(bytes) = self.read(path).await? else {
            return Ok(None);
        };
        match serde_json::from_slice(&bytes) {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                self.warn(format!(
                    "remote cache {}: ignoring the record {path}: {e}",
                    self.url
                ));
                Ok(None)
            }
        }
    }
}
