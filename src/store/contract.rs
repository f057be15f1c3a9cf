//! The contract every store backend keeps, as one suite run against each of them: the local
//! cache, an object store in memory, a real S3-compatible server (in the integration tests), and
//! the layered store over a remote that fails. Like tvix castore's tests of every `BlobService`.
//!
//! [`check`] takes a fresh, empty store and returns the first broken promise, described.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::service::Store;
use super::types::{ActionResult, Output, Record};
use crate::hash::Digest;

macro_rules! ensure {
    ($cond:expr, $($why:tt)*) => {
        if !$cond {
            return Err(format!($($why)*));
        }
    };
}

/// Incompressible bytes, different for each seed.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A result under `key` naming `blobs` as its outputs.
pub fn result(key: Digest, id: &str, blobs: &[(Digest, u64)]) -> ActionResult {
    ActionResult {
        key,
        id: id.to_string(),
        recipe: Digest::of_bytes(id.as_bytes()),
        dep_outputs: BTreeMap::new(),
        outputs: blobs
            .iter()
            .enumerate()
            .map(|(i, (digest, size))| Output {
                name: format!("out-{i}"),
                digest: *digest,
                size: *size,
            })
            .collect(),
        facts: BTreeMap::from([("artifact_id".to_string(), format!("{id}-artifact"))]),
        manifest: BTreeMap::from([("var:x".to_string(), "1".to_string())]),
        attempts: 1,
        started_unix_ms: 1_763_800_000_000,
        duration_ms: 42,
        log: None,
    }
}

/// Runs the whole contract against `store`, which must be empty; `scratch` is an empty
/// directory for the files the suite writes and materializes.
pub async fn check(store: &dyn Store, scratch: &std::path::Path) -> Result<(), String> {
    blobs(store, scratch).await?;
    actions(store).await?;
    records(store).await
}

async fn blobs(store: &dyn Store, scratch: &std::path::Path) -> Result<(), String> {
    let b = store.blobs();
    let missing = Digest::of_bytes(b"never stored");
    ensure!(
        !b.has(&missing).await.map_err(err)?,
        "has: a missing blob is present"
    );
    ensure!(
        b.get(&missing).await.map_err(err)?.is_none(),
        "get: a miss is not Ok(None)"
    );
    let dest = scratch.join("missing");
    ensure!(
        !b.materialize(&missing, &dest).await.map_err(err)?,
        "materialize: a missing blob was materialized"
    );
    ensure!(!dest.exists(), "materialize: a miss left a file behind");

    // Small, empty, and bigger than one ranged read (8 MiB): the writer names the blob.
    for (n, bytes) in [noise(1000, 1), Vec::new(), noise((8 << 20) + 4321, 2)]
        .into_iter()
        .enumerate()
    {
        let d = b.put(Bytes::from(bytes.clone())).await.map_err(err)?;
        ensure!(
            d == Digest::of_bytes(&bytes),
            "put: blob {n} named {d}, not by its blake3"
        );
        ensure!(
            b.has(&d).await.map_err(err)?,
            "has: blob {n} is missing after put"
        );
        let got = b.get(&d).await.map_err(err)?;
        ensure!(
            got.as_deref() == Some(&bytes[..]),
            "get: blob {n} came back different"
        );
        let again = b.put(Bytes::from(bytes.clone())).await.map_err(err)?;
        ensure!(again == d, "put: storing blob {n} again named it otherwise");
        let dest = scratch.join(format!("blob-{n}"));
        ensure!(
            b.materialize(&d, &dest).await.map_err(err)?,
            "materialize: blob {n} was not found"
        );
        let copy = std::fs::read(&dest).map_err(err)?;
        ensure!(copy == bytes, "materialize: the copy of blob {n} differs");
        ensure!(
            b.materialize(&d, &dest).await.is_err(),
            "materialize: blob {n} was written over an existing file"
        );
    }

    // One request, and a multipart upload of two whole parts and a short one (8 MiB parts).
    for (n, len) in [(3, 70_000), (4, (16 << 20) + 4321)] {
        let file = scratch.join(format!("to-store-{n}"));
        let bytes = noise(len, n);
        std::fs::write(&file, &bytes).map_err(err)?;
        let (d, size) = b.put_file(&file).await.map_err(err)?;
        ensure!(
            (d, size) == (Digest::of_bytes(&bytes), bytes.len() as u64),
            "put_file: file {n} named {d} of {size} bytes"
        );
        let got = b.get(&d).await.map_err(err)?;
        ensure!(
            got.as_deref() == Some(&bytes[..]),
            "put_file: file {n} came back different"
        );
    }
    Ok(())
}

async fn actions(store: &dyn Store) -> Result<(), String> {
    let a = store.actions();
    let key = Digest::of_bytes(b"node key");
    ensure!(
        a.get(&key).await.map_err(err)?.is_none(),
        "get: a miss is not Ok(None)"
    );
    // Blobs first, then the result that names them.
    let bytes = noise(5000, 4);
    let d = store
        .blobs()
        .put(Bytes::from(bytes.clone()))
        .await
        .map_err(err)?;
    let r = result(key, "p/x/1.31/build", &[(d, bytes.len() as u64)]);
    a.put(&r).await.map_err(err)?;
    let got = a.get(&key).await.map_err(err)?;
    ensure!(
        got.as_ref() == Some(&r),
        "get: the result came back as {got:?}"
    );
    a.put(&r).await.map_err(err)?;
    let got = a.get(&key).await.map_err(err)?;
    ensure!(
        got.as_ref() == Some(&r),
        "put: storing the result again changed it to {got:?}"
    );
    let other = Digest::of_bytes(b"other key");
    ensure!(
        a.get(&other).await.map_err(err)?.is_none(),
        "get: another key found a result"
    );
    Ok(())
}

async fn records(store: &dyn Store) -> Result<(), String> {
    let r = store.records();
    ensure!(
        r.history().await.map_err(err)?.is_empty(),
        "history: a fresh store has records"
    );
    ensure!(
        r.last("a").await.map_err(err)?.is_none(),
        "last: a miss is not Ok(None)"
    );
    let rec = |id: &str, n: u8, unix_ms: u64| Record {
        id: id.to_string(),
        key: Digest::of_bytes(&[n]),
        unix_ms,
    };
    let (a1, b1, a2) = (
        rec("a/x/1/build", 1, 1000),
        rec("b", 2, 1001),
        rec("a/x/1/build", 3, 1002),
    );
    r.append(&[a1.clone(), b1.clone()]).await.map_err(err)?;
    r.append(std::slice::from_ref(&a2)).await.map_err(err)?;
    let last = r.last("a/x/1/build").await.map_err(err)?;
    ensure!(
        last.as_ref() == Some(&a2),
        "last: the latest record of an id is {last:?}"
    );
    let last = r.last("b").await.map_err(err)?;
    ensure!(
        last.as_ref() == Some(&b1),
        "last: the record of b is {last:?}"
    );
    ensure!(
        r.last("a").await.map_err(err)?.is_none(),
        "last: an id's prefix found a record"
    );
    let history = r.history().await.map_err(err)?;
    ensure!(
        history == [a1, b1, a2],
        "history: {history:?}, not the records in order"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::memory::InMemory;

    use super::*;
    use crate::store::object::ObjectBackend;
    use crate::store::remote::keys::SecretKey;
    use crate::store::{ActionService, BlobService, Layered, LocalStore};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    fn memory(signing: bool) -> ObjectBackend {
        let key = signing.then(|| SecretKey::generate("test-1").unwrap());
        ObjectBackend::new(
            "memory://",
            Arc::new(InMemory::new()),
            "cache",
            key,
            Vec::new(),
        )
    }

    /// An S3 backend whose server is gone: every request is refused.
    fn failing() -> ObjectBackend {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s3 = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name("gone")
            .with_region("us-east-1")
            .with_access_key_id("x")
            .with_secret_access_key("y")
            .with_endpoint(format!("http://127.0.0.1:{port}"))
            .with_allow_http(true)
            .with_retry(crate::store::remote::client::retry(false))
            .build()
            .unwrap();
        let key = SecretKey::generate("test-1").unwrap();
        ObjectBackend::new("s3://gone", Arc::new(s3), "", Some(key), Vec::new())
    }

    fn scratch() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn the_local_store_keeps_the_contract() {
        let dir = scratch();
        let store = LocalStore::open(&dir.path().join("cache")).unwrap();
        std::fs::create_dir(dir.path().join("s")).unwrap();
        runtime()
            .block_on(check(&store, &dir.path().join("s")))
            .unwrap();
    }

    #[test]
    fn an_object_store_in_memory_keeps_the_contract() {
        let dir = scratch();
        runtime()
            .block_on(check(&memory(true), dir.path()))
            .unwrap();
    }

    #[test]
    fn the_layered_store_over_a_failing_remote_keeps_the_contract_with_one_warning() {
        let dir = scratch();
        let local = Arc::new(LocalStore::open(&dir.path().join("cache")).unwrap());
        let layered = Layered::new(local, Arc::new(failing()), "s3://gone");
        std::fs::create_dir(dir.path().join("s")).unwrap();
        runtime()
            .block_on(check(&layered, &dir.path().join("s")))
            .unwrap();
        let warnings = layered.take_warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("s3://gone"), "{warnings:?}");
        assert!(layered.remote_down());
    }

    #[test]
    fn the_layered_store_over_memory_keeps_the_contract() {
        let dir = scratch();
        let local = Arc::new(LocalStore::open(&dir.path().join("cache")).unwrap());
        let layered = Layered::new(local, Arc::new(memory(true)), "memory://");
        std::fs::create_dir(dir.path().join("s")).unwrap();
        runtime()
            .block_on(check(&layered, &dir.path().join("s")))
            .unwrap();
        assert!(layered.take_warnings().is_empty());
    }

    /// A remote hit is backfilled locally: a blob, and a result once its blobs are local; a
    /// result whose blobs are not local is returned but not backfilled.
    #[test]
    fn remote_hits_are_backfilled() {
        let rt = runtime();
        let dir = scratch();
        let local = Arc::new(LocalStore::open(&dir.path().join("cache")).unwrap());
        let remote = Arc::new(memory(true));
        let layered = Layered::new(local.clone(), remote.clone(), "memory://");
        rt.block_on(async {
            let bytes = noise(3000, 9);
            let d = BlobService::put(&*remote, Bytes::from(bytes.clone()))
                .await
                .unwrap();
            let r = result(Digest::of_bytes(b"k"), "n", &[(d, 3000)]);
            ActionService::put(&*remote, &r).await.unwrap();

            assert_eq!(
                ActionService::get(&layered, &r.key).await.unwrap(),
                Some(r.clone())
            );
            assert!(
                local.get_action(&r.key).unwrap().is_none(),
                "its blob is not local"
            );

            let dest = dir.path().join("copy");
            assert!(layered.materialize(&d, &dest).await.unwrap());
            assert_eq!(std::fs::read(&dest).unwrap(), bytes);
            assert!(local.has_blob(&d), "the blob is backfilled");
            assert_eq!(
                ActionService::get(&layered, &r.key).await.unwrap(),
                Some(r.clone())
            );
            assert_eq!(
                local.get_action(&r.key).unwrap(),
                Some(r),
                "now the result is"
            );
        });
    }

    /// Without a signing key an object store is read-only, and the layered store writes nothing
    /// to it, without a warning.
    #[test]
    fn a_store_without_a_signing_key_writes_nothing() {
        let rt = runtime();
        let remote = memory(false);
        let err = rt
            .block_on(BlobService::put(&remote, Bytes::from_static(b"x")))
            .unwrap_err();
        assert!(
            matches!(err, crate::store::StoreError::ReadOnly { .. }),
            "{err}"
        );
        let dir = scratch();
        let local = Arc::new(LocalStore::open(&dir.path().join("cache")).unwrap());
        let remote = Arc::new(memory(false));
        let layered = Layered::new(local, remote.clone(), "memory://");
        let d = rt
            .block_on(BlobService::put(&layered, Bytes::from_static(b"x")))
            .unwrap();
        assert!(!rt.block_on(BlobService::has(&*remote, &d)).unwrap());
        assert!(layered.take_warnings().is_empty());
        assert!(!layered.remote_down());
    }

    /// A record signed by a key the reader does not trust, and a blob whose bytes are not its
    /// name, read as misses with a warning.
    #[test]
    fn untrusted_records_and_damaged_blobs_are_misses() {
        let rt = runtime();
        let mem: Arc<InMemory> = Arc::new(InMemory::new());
        let writer = ObjectBackend::new(
            "memory://",
            mem.clone(),
            "",
            Some(SecretKey::generate("ci-1").unwrap()),
            Vec::new(),
        );
        let stranger = SecretKey::generate("ci-9").unwrap();
        let reader =
            ObjectBackend::new("memory://", mem.clone(), "", None, vec![stranger.public()]);
        rt.block_on(async {
            let r = result(Digest::of_bytes(b"k"), "n", &[]);
            ActionService::put(&writer, &r).await.unwrap();
            assert_eq!(ActionService::get(&reader, &r.key).await.unwrap(), None);
            let d = Digest::of_bytes(b"the real bytes");
            let path = object_store::path::Path::from(format!("cas/{}", d.to_hex()));
            use object_store::ObjectStoreExt;
            mem.put(&path, b"other bytes".to_vec().into())
                .await
                .unwrap();
            assert_eq!(BlobService::get(&reader, &d).await.unwrap(), None);
            let dest = std::env::temp_dir().join(format!("kiln-contract-{}", std::process::id()));
            assert!(!reader.materialize(&d, &dest).await.unwrap());
            assert!(!dest.exists());
        });
        let w = reader.take_warnings();
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].contains("untrusted") || w[0].contains("ci-1"), "{w:?}");
    }
}
