//! The store's three narrow services, keyed by [`Digest`]. Every backend implements all three and
//! passes the [`super::contract`] suite.
//!
//! The services are async (a remote backend waits on the network) and object-safe, so a caller
//! holds an `Arc<dyn Store>` without knowing which backend is behind it. A miss is never an
//! error: lookups return `Ok(None)` (or `false`), and an entry that does not verify against its
//! name reads as a miss.

use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;

use super::error::Result;
use super::types::{ActionResult, Record};
use crate::hash::Digest;

/// Content-addressed blobs: the name of a blob is the blake3 of its bytes, computed by the
/// store as it is written, and checked again whenever it is read.
#[async_trait]
pub trait BlobService: Send + Sync {
    /// Whether the blob is present (without reading it).
    async fn has(&self, digest: &Digest) -> Result<bool>;

    /// The blob's bytes, verified against `digest`; `None` when it is missing.
    async fn get(&self, digest: &Digest) -> Result<Option<Bytes>>;

    /// Stores `bytes` and returns their digest. Storing bytes that are there already is no error
    /// and changes nothing.
    async fn put(&self, bytes: Bytes) -> Result<Digest>;

    /// Stores a copy of the file at `path` (which may be too big to read into memory) and returns
    /// its digest and size.
    async fn put_file(&self, path: &Path) -> Result<(Digest, u64)>;

    /// Writes the blob to `dest`, a new file (an existing one is an error), verified against
    /// `digest`: a step's own copy, which it may change freely. `Ok(false)` when the blob is
    /// missing (then nothing is left at `dest`).
    async fn materialize(&self, digest: &Digest, dest: &Path) -> Result<bool>;
}

/// The action cache: node key → the result of building that node.
#[async_trait]
pub trait ActionService: Send + Sync {
    /// The result stored under `key`; `None` on a miss.
    async fn get(&self, key: &Digest) -> Result<Option<ActionResult>>;

    /// Stores `result` under `result.key`; it must be readable once this returns.
    async fn put(&self, result: &ActionResult) -> Result<()>;
}

/// The build records: an append-only log of which key each logical node id was built (or found
/// cached) as, for plan diffs and gc.
#[async_trait]
pub trait RecordService: Send + Sync {
    /// Appends `records`, in order.
    async fn append(&self, records: &[Record]) -> Result<()>;

    /// The last record appended for `id`; `None` if there is none.
    async fn last(&self, id: &str) -> Result<Option<Record>>;

    /// Every record, oldest first.
    async fn history(&self) -> Result<Vec<Record>>;
}

/// A whole store: blobs, actions and records.
pub trait Store: BlobService + ActionService + RecordService {
    /// The store as its three services, for callers that hold it as `dyn Store`.
    fn blobs(&self) -> &dyn BlobService;
    fn actions(&self) -> &dyn ActionService;
    fn records(&self) -> &dyn RecordService;
}

impl<T: BlobService + ActionService + RecordService> Store for T {
    fn blobs(&self) -> &dyn BlobService {
        self
    }
    fn actions(&self) -> &dyn ActionService {
        self
    }
    fn records(&self) -> &dyn RecordService {
        self
    }
}
