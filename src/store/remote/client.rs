//! Object-store client setup and file transfers shared by the remote cache and the `upload`
//! builder: timeouts, retries, and big files in parallel parts.

use std::path::Path;
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, PutResult,
    RetryConfig, WriteMultipart,
};
use tokio::io::AsyncReadExt;

/// Files larger than this go up in parts of this size (S3 wants parts of 5 MiB or more).
pub const PART_SIZE: usize = 8 << 20;
/// Parts in flight at once.
pub const PARTS_IN_FLIGHT: usize = 8;

/// Retries for transient errors: `patient` for a publish (it must get through), otherwise brief
/// (a cache that does not answer soon is worth less than going on without it).
pub fn retry(patient: bool) -> RetryConfig {
    if patient {
        RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(60),
            ..RetryConfig::default()
        }
    } else {
        RetryConfig {
            max_retries: 1,
            retry_timeout: Duration::from_secs(10),
            ..RetryConfig::default()
        }
    }
}

/// Connection and request timeouts (a request moves at most one part or one small file).
pub fn options(patient: bool) -> ClientOptions {
    ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(if patient { 10 } else { 5 }))
        .with_timeout(Duration::from_secs(if patient { 300 } else { 120 }))
}

/// Why a file could not be sent.
#[derive(Debug)]
pub enum SendError {
    Read(std::io::Error),
    Store(object_store::Error),
}

/// Sends the file at `path` (`size` bytes) to `key`: one request up to [`PART_SIZE`], else a
/// multipart upload of parallel parts, aborted on failure so no part is left behind. `create`
/// makes a single-request put conditional on the object not existing yet (multipart uploads
/// complete atomically, so a reader never sees half of one either way).
pub async fn send_file(
    store: &dyn ObjectStore,
    key: &ObjectPath,
    path: &Path,
    size: u64,
    create: bool,
) -> Result<PutResult, SendError> {
    if size as usize <= PART_SIZE {
        let bytes = tokio::fs::read(path).await.map_err(SendError::Read)?;
        let opts = PutOptions {
            mode: if create {
                PutMode::Create
            } else {
                PutMode::Overwrite
            },
            ..PutOptions::default()
        };
        return store
            .put_opts(key, PutPayload::from(bytes), opts)
            .await
            .map_err(SendError::Store);
    }
    let parts = store.put_multipart(key).await.map_err(SendError::Store)?;
    let mut w = WriteMultipart::new_with_chunk_size(parts, PART_SIZE);
    if let Err(e) = send_parts(path, &mut w).await {
        let _ = w.abort().await;
        return Err(e);
    }
    w.finish().await.map_err(SendError::Store)
}

async fn send_parts(path: &Path, w: &mut WriteMultipart) -> Result<(), SendError> {
    let mut f = tokio::fs::File::open(path).await.map_err(SendError::Read)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).await.map_err(SendError::Read)?;
        if n == 0 {
            return Ok(());
        }
        w.wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .map_err(SendError::Store)?;
        w.write(&buf[..n]);
    }
}
