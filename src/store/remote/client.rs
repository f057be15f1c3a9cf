//! Object-store client setup and file transfers shared by the remote cache and the `upload`
//! builder: timeouts, retries, big files up in parallel parts and down in parallel ranges.

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, PutResult, RetryConfig, WriteMultipart,
};
use tokio::io::AsyncReadExt;

/// Files larger than this go up in parts of this size (S3 wants parts of 5 MiB or more).
pub const PART_SIZE: usize = 8 << 20;
/// Parts in flight at once.
pub const PARTS_IN_FLIGHT: usize = 8;

/// The checksum an `s3://` remote cache's uploads carry, from the environment `env`:
/// SHA-256 unless `AWS_REQUEST_CHECKSUM_CALCULATION=when_required` (the AWS SDKs' setting for
/// servers that take no checksums) turns checksums off, or `AWS_CHECKSUM_ALGORITHM` (read by
/// object_store itself, `sha256` or `crc64nvme`) names one; `None` leaves the builder as the
/// environment set it.
///
/// The server checks each part (and each single-request upload) against its checksum and refuses
/// bytes damaged on their way, as it does for the awscli, which sends a CRC32 of every part. A
/// per-part checksum also makes the upload's checksum the composite of its parts' checksums: a
/// multipart upload that carries none gets a checksum of the whole object, which the server
/// computes at its completion (moto copies all the parts into a second buffer for it, which made
/// its completion of a 1 GiB upload seconds slower than of the awscli's). object_store offers
/// SHA-256 (per part, composite) and CRC64NVME (of the whole object only), so SHA-256 it is: one
/// pass over the bytes sent, on the client.
pub fn s3_checksum(env: &dyn Fn(&str) -> Option<String>) -> Option<object_store::aws::Checksum> {
    let off = env("AWS_REQUEST_CHECKSUM_CALCULATION")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("when_required"));
    if off || env("AWS_CHECKSUM_ALGORITHM").is_some() {
        return None;
    }
    Some(object_store::aws::Checksum::SHA256)
}

/// A variable of kiln's environment, when set and not empty: what the AWS settings read here
/// ([`s3_checksum`], the AWS config files) take as unset otherwise.
pub fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

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

/// The requests [`send_file`] makes for a file of `size` bytes when all goes well: one, or a
/// multipart upload's start, its parts and its completion.
pub fn send_requests(size: u64) -> u64 {
    if size as usize <= PART_SIZE {
        1
    } else {
        2 + size.div_ceil(PART_SIZE as u64)
    }
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

/// [`send_file`] for a blob named `digest`, reading the file once: its bytes are hashed as they
/// are read and sent, and the object is created only if they hash to `digest` (a multipart
/// upload is completed only then, and aborted otherwise). A file that does not is
/// [`SendError::Read`] of kind [`std::io::ErrorKind::InvalidData`], and nothing is stored.
///
/// Parts are read at their offsets on a blocking thread straight into the buffers that are
/// sent, the next one while [`PARTS_IN_FLIGHT`] others are on their way.
pub async fn send_blob(
    store: &dyn ObjectStore,
    key: &ObjectPath,
    path: &Path,
    size: u64,
    digest: &blake3::Hash,
) -> Result<PutResult, SendError> {
    let file = std::sync::Arc::new(std::fs::File::open(path).map_err(SendError::Read)?);
    let mut hasher = blake3::Hasher::new();
    if size as usize <= PART_SIZE {
        let (bytes, h) = read_part(file, 0, size as usize, hasher).await?;
        check_digest(&h, digest)?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        return store
            .put_opts(key, PutPayload::from(bytes), opts)
            .await
            .map_err(SendError::Store);
    }
    let mut upload = store.put_multipart(key).await.map_err(SendError::Store)?;
    let mut in_flight: futures_util::stream::FuturesUnordered<object_store::UploadPart> =
        futures_util::stream::FuturesUnordered::new();
    let sent: Result<(), SendError> = async {
        let mut at = 0u64;
        while at < size {
            let len = (size - at).min(PART_SIZE as u64) as usize;
            let (bytes, h) = read_part(file.clone(), at, len, hasher).await?;
            hasher = h;
            at += len as u64;
            while in_flight.len() >= PARTS_IN_FLIGHT {
                if let Some(done) = in_flight.next().await {
                    done.map_err(SendError::Store)?;
                }
            }
            in_flight.push(upload.put_part(PutPayload::from(bytes)));
        }
        check_digest(&hasher, digest)?;
        while let Some(done) = in_flight.next().await {
            done.map_err(SendError::Store)?;
        }
        Ok(())
    }
    .await;
    match sent {
        Ok(()) => upload.complete().await.map_err(SendError::Store),
        Err(e) => {
            drop(in_flight);
            let _ = upload.abort().await;
            Err(e)
        }
    }
}

/// `len` bytes of `file` at `at`, read on a blocking thread and added to `hasher` there.
async fn read_part(
    file: std::sync::Arc<std::fs::File>,
    at: u64,
    len: usize,
    mut hasher: blake3::Hasher,
) -> Result<(Vec<u8>, blake3::Hasher), SendError> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, at)?;
        hasher.update(&buf);
        Ok((buf, hasher))
    })
    .await
    .map_err(|e| SendError::Read(std::io::Error::other(e)))?
    .map_err(SendError::Read)
}

fn check_digest(hasher: &blake3::Hasher, digest: &blake3::Hash) -> Result<(), SendError> {
    let actual = hasher.finalize();
    if actual == *digest {
        return Ok(());
    }
    Err(SendError::Read(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!(
            "the file hashes to {}, not to the blob's name",
            &actual.to_hex()[..12]
        ),
    )))
}

/// How a big object comes down: in ranges of `min` to `max` bytes (about one range per request
/// in flight, so a medium object is as parallel as a big one), `in_flight` ranges at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranges {
    pub min: u64,
    pub max: u64,
    pub in_flight: usize,
}

/// Ranges of 8 to 64 MiB, 8 at once: a 1 GiB blob comes in 16 requests, one of 100 MiB in 8,
/// one of 8 MiB or less in one. Hashing follows the first unfinished range, so what is written
/// but not hashed yet (and read back from the page cache) stays below `in_flight × max`.
pub const RANGES: Ranges = Ranges {
    min: 8 << 20,
    max: 64 << 20,
    in_flight: 8,
};

impl Ranges {
    /// The size of each range of an object of `size` bytes (the last may be shorter): `size`
    /// itself when the object comes in one request.
    pub fn range_size(&self, size: u64) -> u64 {
        if self.in_flight <= 1 || size <= self.min {
            return size;
        }
        size.div_ceil(self.in_flight as u64)
            .clamp(self.min, self.max.max(self.min))
    }
}

/// Why an object could not be fetched.
#[derive(Debug)]
pub enum FetchError {
    /// The store failed (a missing object is [`object_store::Error::NotFound`]).
    Store(object_store::Error),
    /// The object changed while it was read: another size, or a response cut short.
    Changed(String),
    /// Writing the local file, or reading it back to hash it, failed.
    Local(std::io::Error),
}

/// What [`fetch_file`] wrote.
#[derive(Debug)]
pub struct Fetched {
    /// The blake3 of the object's bytes.
    pub hash: blake3::Hash,
    pub size: u64,
}

/// Downloads the object at `key` into `file` (empty, readable and writable) and hashes it.
///
/// The first request is a plain GET: an object no larger than one range (see
/// [`Ranges::range_size`]) comes in that one response. For a bigger object that response gives
/// the size and the first range, and the other ranges are ranged GETs, `ranges.in_flight` in
/// flight at once (the first among them), each written at its offset as it arrives. blake3 runs
/// on a blocking thread over the bytes in order, reading each range back as far as it has been
/// written, so hashing overlaps the download. `requests` counts the requests made.
pub async fn fetch_file(
    store: &dyn ObjectStore,
    key: &ObjectPath,
    file: &std::fs::File,
    ranges: Ranges,
    requests: &AtomicU64,
) -> Result<Fetched, FetchError> {
    requests.fetch_add(1, Ordering::Relaxed);
    let first = store
        .get_opts(key, GetOptions::default())
        .await
        .map_err(FetchError::Store)?;
    let size = first.meta.size;
    let step = ranges.range_size(size);
    let stream = first.into_stream();
    if step >= size {
        let mut hasher = blake3::Hasher::new();
        write_range(stream, file, 0..size, |chunk, _| {
            hasher.update(chunk);
        })
        .await?;
        return Ok(Fetched {
            hash: hasher.finalize(),
            size,
        });
    }

    let count = size.div_ceil(step) as usize;
    let bounds = move |i: usize| i as u64 * step..((i as u64 + 1) * step).min(size);
    let (progress, written) = mpsc::channel::<(usize, u64)>();
    let reader = file.try_clone().map_err(FetchError::Local)?;
    let hashing =
        tokio::task::spawn_blocking(move || hash_in_order(&reader, count, bounds, written));

    // Made up front (a few per GiB) rather than by a closure over borrowed captures, which
    // keeps the compiler from proving the future `Send` for the callers' spawned tasks.
    let mut parts: Vec<BoxFuture<'_, Result<(), FetchError>>> = Vec::with_capacity(count);
    parts.push(fetch_range(stream, file, bounds(0), 0, progress.clone()).boxed());
    for i in 1..count {
        parts.push(
            fetch_ranged(
                store,
                key,
                file,
                bounds(i),
                size,
                i,
                progress.clone(),
                requests,
            )
            .boxed(),
        );
    }
    drop(progress);
    // On an error the senders go with this future, and the hashing thread ends by itself.
    futures_util::stream::iter(parts)
        .buffered(ranges.in_flight.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    let hash = hashing
        .await
        .map_err(|e| FetchError::Local(std::io::Error::other(e)))?
        .map_err(FetchError::Local)?;
    Ok(Fetched { hash, size })
}

/// Writes the bytes `want` of the object, arriving on `stream` from `want.start`, at their
/// offset in `file`, calling `seen` with each piece and the offset it ends at. Stops once
/// `want.end` is reached (the first range comes from a plain GET of the whole object); a stream
/// that ends before is an error.
async fn write_range(
    mut stream: BoxStream<'static, object_store::Result<Bytes>>,
    file: &std::fs::File,
    want: Range<u64>,
    mut seen: impl FnMut(&[u8], u64),
) -> Result<(), FetchError> {
    let mut at = want.start;
    while at < want.end {
        let Some(chunk) = stream.next().await else {
            return Err(FetchError::Changed(format!(
                "the response for the bytes {want:?} ended at {at}"
            )));
        };
        let chunk = chunk.map_err(FetchError::Store)?;
        let piece = &chunk[..chunk.len().min((want.end - at) as usize)];
        file.write_all_at(piece, at).map_err(FetchError::Local)?;
        at += piece.len() as u64;
        seen(piece, at);
    }
    Ok(())
}

/// Range `index` of a parallel fetch, `want` of the `size` bytes of the object at `key`, by a
/// ranged GET.
#[allow(clippy::too_many_arguments)]
async fn fetch_ranged(
    store: &dyn ObjectStore,
    key: &ObjectPath,
    file: &std::fs::File,
    want: Range<u64>,
    size: u64,
    index: usize,
    progress: mpsc::Sender<(usize, u64)>,
    requests: &AtomicU64,
) -> Result<(), FetchError> {
    requests.fetch_add(1, Ordering::Relaxed);
    let opts = GetOptions {
        range: Some(GetRange::Bounded(want.clone())),
        ..GetOptions::default()
    };
    let got = store.get_opts(key, opts).await.map_err(FetchError::Store)?;
    if got.meta.size != size || got.range != want {
        return Err(FetchError::Changed(format!(
            "asked for the bytes {want:?} of {size}, got {:?} of {}",
            got.range, got.meta.size
        )));
    }
    fetch_range(got.into_stream(), file, want, index, progress).await
}

/// [`write_range`] for range `index` of a parallel fetch, telling the hashing thread how far it
/// is written, about every MiB and at its end.
async fn fetch_range(
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    file: &std::fs::File,
    want: Range<u64>,
    index: usize,
    progress: mpsc::Sender<(usize, u64)>,
) -> Result<(), FetchError> {
    let mut told = want.start;
    write_range(stream, file, want.clone(), |_, at| {
        if at - told >= 1 << 20 {
            told = at;
            let _ = progress.send((index, at));
        }
    })
    .await?;
    let _ = progress.send((index, want.end));
    Ok(())
}

/// The blake3 of the `count` ranges of `file` given by `bounds`, hashed in order as `written`
/// says how far each range is written (a range index and the offset written up to).
fn hash_in_order(
    file: &std::fs::File,
    count: usize,
    bounds: impl Fn(usize) -> Range<u64>,
    written: mpsc::Receiver<(usize, u64)>,
) -> std::io::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    let mut upto: Vec<u64> = (0..count).map(|i| bounds(i).start).collect();
    let mut buf = vec![0u8; 1 << 20];
    let (mut current, mut hashed) = (0, 0u64);
    while current < count {
        let Ok((i, at)) = written.recv() else {
            // The download failed: nobody waits for this hash.
            return Err(std::io::Error::other("the download stopped"));
        };
        upto[i] = upto[i].max(at);
        while current < count && hashed < upto[current] {
            let n = ((upto[current] - hashed) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..n], hashed)?;
            hasher.update(&buf[..n]);
            hashed += n as u64;
            if hashed == bounds(current).end {
                current += 1;
            }
        }
    }
    Ok(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    /// Incompressible test bytes.
    fn noise(len: usize) -> Vec<u8> {
        crate::store::contract::noise(len, 0x2545_f491_4f6c_dd1d)
    }

    async fn fetch(bytes: &[u8], ranges: Ranges) -> (Vec<u8>, Fetched, u64) {
        let store = InMemory::new();
        let key = ObjectPath::from("cas/blob");
        store
            .put(&key, PutPayload::from(bytes.to_vec()))
            .await
            .unwrap();
        let tmp = tempfile::tempfile().unwrap();
        let requests = AtomicU64::new(0);
        let got = fetch_file(&store, &key, &tmp, ranges, &requests)
            .await
            .unwrap();
        let mut written = vec![0u8; tmp.metadata().unwrap().len() as usize];
        tmp.read_exact_at(&mut written, 0).unwrap();
        (written, got, requests.load(Ordering::Relaxed))
    }

    #[test]
    fn s3_uploads_carry_a_sha256_unless_the_environment_says_otherwise() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            s3_checksum(&env(&[])),
            Some(object_store::aws::Checksum::SHA256)
        );
        assert_eq!(
            s3_checksum(&env(&[(
                "AWS_REQUEST_CHECKSUM_CALCULATION",
                "WHEN_SUPPORTED"
            )])),
            Some(object_store::aws::Checksum::SHA256)
        );
        assert_eq!(
            s3_checksum(&env(&[(
                "AWS_REQUEST_CHECKSUM_CALCULATION",
                "when_required"
            )])),
            None
        );
        // object_store reads this one itself.
        assert_eq!(
            s3_checksum(&env(&[("AWS_CHECKSUM_ALGORITHM", "crc64nvme")])),
            None
        );
    }

    #[test]
    fn range_sizes() {
        assert_eq!(RANGES.range_size(0), 0);
        assert_eq!(RANGES.range_size(8 << 20), 8 << 20);
        // Just over one range: two of 8 MiB at least.
        assert_eq!(RANGES.range_size((8 << 20) + 1), 8 << 20);
        assert_eq!(RANGES.range_size(100 << 20), (100 << 20) / 8);
        assert_eq!(RANGES.range_size(1 << 30), 64 << 20);
        let one = Ranges {
            in_flight: 1,
            ..RANGES
        };
        assert_eq!(one.range_size(1 << 30), 1 << 30);
    }

    /// A blob of many ranges (and a short last one), fetched 3 at once, arrives whole and is
    /// hashed in order.
    #[tokio::test]
    async fn a_big_object_comes_in_parallel_ranges() {
        let bytes = noise(100_000 + 7);
        let ranges = Ranges {
            min: 4096,
            max: 4096,
            in_flight: 3,
        };
        let (written, got, requests) = fetch(&bytes, ranges).await;
        assert!(written == bytes, "the file differs from the object");
        assert_eq!(got.size, bytes.len() as u64);
        assert_eq!(got.hash, blake3::hash(&bytes));
        assert_eq!(requests, 25);
    }

    /// Ranges of a few bytes each: the hasher is told about many small steps.
    #[tokio::test]
    async fn tiny_ranges_hash_in_order() {
        let bytes = noise(3 * 1000 + 1);
        let ranges = Ranges {
            min: 1000,
            max: 1000,
            in_flight: 8,
        };
        let (written, got, requests) = fetch(&bytes, ranges).await;
        assert!(written == bytes);
        assert_eq!(got.hash, blake3::hash(&bytes));
        assert_eq!(requests, 4);
    }

    #[tokio::test]
    async fn a_small_object_is_one_request() {
        for len in [0, 1, 4096] {
            let bytes = noise(len);
            let ranges = Ranges {
                min: 4096,
                max: 4096,
                in_flight: 8,
            };
            let (written, got, requests) = fetch(&bytes, ranges).await;
            assert!(written == bytes);
            assert_eq!(got.hash, blake3::hash(&bytes));
            assert_eq!(requests, 1, "{len} bytes");
        }
    }

    /// A blob of several parts and a small one go up whole; bytes that are not what the name
    /// says are refused and leave no object (the multipart upload is aborted).
    #[tokio::test]
    async fn blobs_go_up_checked_in_one_read() {
        let store = InMemory::new();
        let dir = tempfile::tempdir().unwrap();
        for (n, len) in [(0, 2 * PART_SIZE + 12_345), (1, 1000), (2, 0)] {
            let bytes = noise(len);
            let path = dir.path().join(format!("blob-{n}"));
            std::fs::write(&path, &bytes).unwrap();
            let key = ObjectPath::from(format!("cas/{n}"));
            let size = len as u64;
            send_blob(&store, &key, &path, size, &blake3::hash(&bytes))
                .await
                .unwrap();
            let got = store.get(&key).await.unwrap().bytes().await.unwrap();
            assert!(got == bytes, "blob {n} differs");

            let bad = ObjectPath::from(format!("cas/bad-{n}"));
            let other = blake3::hash(b"other bytes");
            let err = send_blob(&store, &bad, &path, size, &other)
                .await
                .unwrap_err();
            assert!(
                matches!(&err, SendError::Read(e) if e.kind() == std::io::ErrorKind::InvalidData),
                "{err:?}"
            );
            assert!(
                matches!(
                    store.head(&bad).await,
                    Err(object_store::Error::NotFound { .. })
                ),
                "a refused blob {n} was stored"
            );
        }
    }

    #[tokio::test]
    async fn a_missing_object_is_not_found() {
        let store = InMemory::new();
        let tmp = tempfile::tempfile().unwrap();
        let requests = AtomicU64::new(0);
        let err = fetch_file(&store, &ObjectPath::from("nope"), &tmp, RANGES, &requests)
            .await
            .unwrap_err();
        assert!(
            matches!(err, FetchError::Store(object_store::Error::NotFound { .. })),
            "{err:?}"
        );
    }
}
