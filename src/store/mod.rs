//! The store: what kiln keeps between runs, behind three narrow services keyed by
//! [`Digest`](crate::hash::Digest)
//! (the way tvix castore shapes its `BlobService`):
//!
//! - [`BlobService`]: content-addressed blobs, named by the blake3 of their bytes (the writer
//!   computes the name);
//! - [`ActionService`]: node key → [`ActionResult`], a miss being `Ok(None)`;
//! - [`RecordService`]: the append-only log of which key each logical node was built as.
//!
//! Backends: [`local`] (the cache directory, `cache/`), [`object`] (any object store: S3, GCS,
//! Azure, a directory, memory) and [`Layered`] (a local backend in front of a remote one: read
//! local then remote, backfill local, a remote failure a warning). Every backend passes the one
//! [`contract`] suite. The shared remote cache of CI runners, with its signed records, packs and
//! publish claims, is [`remote`].

pub mod contract;
mod error;
mod layered;
pub mod local;
pub mod object;
pub mod remote;
mod service;
mod types;

use std::time::{SystemTime, UNIX_EPOCH};

pub use error::{EntryKind, Result, StoreError, StoreWarning};
pub use layered::Layered;
pub use local::{
    CacheLock, ClaimRecord, ClaimStatus, Claims, GcPolicy, GcReport, LocalStore, Memo, Memos,
    Problem, ProblemKind, Stamp, StoredClaims, VerifyReport,
};
pub use service::{ActionService, BlobService, RecordService, Store};
pub use types::{ActionResult, Output, Record};

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
