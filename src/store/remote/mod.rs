//! The shared remote cache: results and blobs in an object store (`s3://`, `gs://`, `az://`,
//! `file://`), signed by the runners allowed to write, read by every runner.
//!
//! Layout under the URL's path:
//!
//! ```text
//! cas/<blake3 hex>          blobs, named by the blake3 of their bytes
//! ac/<node key hex>         signed result records (see [`signed`])
//! claims/<node key hex>/<n> who publishes that node now (see [`Remote::claim`])
//! packs/<graph digest hex>  a signed index of one graph's results (see [`pack`]); packs/latest
//! ```
//!
//! Blobs go first and the record last, each with a conditional write (`PutMode::Create`): a
//! reader never sees a record whose blobs are missing, and two writers never replace each
//! other's record. The remote is an accelerator, never a dependency: the first error it gives
//! (down, slow, denied, no such bucket) is one warning, and from then on this run works as if
//! it were empty.

mod aws_files;
mod claim;
pub mod client;
pub mod keys;
pub mod pack;
pub mod signed;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

pub use self::claim::{CLAIM_LEASE, Claimed, PublishClaim, runner_name};
use self::keys::{PublicKey, SecretKey};
use self::signed::Verified;
use super::object::{ObjectBackend, Stats};
use super::{ActionResult, BlobService, LocalStore, StoreError};
use crate::hash::Digest;

/// How many requests run at once when many records or blobs are wanted.
const IN_FLIGHT: usize = 32;

/// Where the remote cache is and who this runner is to it.
#[derive(Debug)]
pub struct Settings {
    pub url: String,
    /// Present on runners allowed to write: their records are signed with it.
    pub signing: Option<SecretKey>,
    /// The keys whose signatures readers accept.
    pub trusted: Vec<PublicKey>,
}

/// A remote cache client: the [`ObjectBackend`] of its URL (blobs and signed results, the
/// store contract's backend), with what a run needs on top of it: claims, packs, the first
/// failure taking the remote out of the run, and the keys this run saw.
pub struct Remote {
    url: String,
    backend: ObjectBackend,
    down: AtomicBool,
    /// Keys this run saw a result for in the remote (fetched, listed in a trusted pack, or
    /// pushed): what a pack written by this run may list.
    known: Mutex<crate::hash::DigestSet>,
    /// For the callers that are not async themselves (the planner).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Remote {
    fn drop(&mut self) {
        // A runtime may not be dropped from async code, where the last user may be.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Why a remote cache URL cannot be used at all (a usage error, unlike a remote that fails).
#[derive(Debug, thiserror::Error)]
#[error("remote cache {url}: {why}")]
pub struct UrlError {
    pub url: String,
    pub why: String,
}

/// The object store and path prefix a URL names.
pub(crate) fn open_store(url: &str) -> Result<(Arc<dyn ObjectStore>, String), String> {
    let parsed = url::Url::parse(url).map_err(|e| {
        format!("not a URL ({e}); write s3://BUCKET/PREFIX, gs://…, az://… or file:///PATH")
    })?;
    let prefix = parsed.path().trim_matches('/').to_string();
    let store: Arc<dyn ObjectStore> = match parsed.scheme() {
        "file" => {
            let dir = parsed
                .to_file_path()
                .map_err(|()| "a file:// URL needs an absolute path".to_string())?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| e.to_string())?;
            return Ok((Arc::new(fs), String::new()));
        }
        "s3" | "s3a" => {
            // Payloads are not signed (readers check each blob against its blake3 and each
            // record against its signature, and TLS guards the bytes on their way) but carry a
            // checksum the server checks, see `client::s3_checksum`.
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_url(url)
                .with_unsigned_payload(true)
                .with_retry(client::retry(false))
                .with_client_options(client::options(false));
            if let Some(checksum) = client::s3_checksum(&client::env_var) {
                b = b.with_checksum_algorithm(checksum);
            }
            let mut b = aws_files::apply(b, &client::env_var)?;
            let endpoint = std::env::var("AWS_ENDPOINT_URL")
                .or_else(|_| std::env::var("AWS_ENDPOINT"))
                .unwrap_or_default();
            if endpoint.starts_with("http://") {
                b = b.with_allow_http(true);
            }
            Arc::new(b.build().map_err(|e| e.to_string())?)
        }
        "gs" => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(url)
                .with_retry(client::retry(false))
                .with_client_options(client::options(false))
                .build()
                .map_err(|e| e.to_string())?,
        ),
        "az" | "azure" | "abfs" | "abfss" => Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(url)
                .with_retry(client::retry(false))
                .with_client_options(client::options(false))
                .build()
                .map_err(|e| e.to_string())?,
        ),
        other => {
            return Err(format!(
                "unknown scheme {other}://; kiln reads s3://, gs://, az:// and file:// caches"
            ));
        }
    };
    Ok((store, prefix))
}

impl Remote {
    /// A client for `settings.url`. Only a URL kiln cannot use is an error; a remote that does
    /// not answer is found out (and warned about) by the first request.
    pub fn open(settings: Settings) -> Result<Remote, UrlError> {
        let (store, prefix) = open_store(&settings.url).map_err(|why| UrlError {
            url: settings.url.clone(),
            why,
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| UrlError {
                url: settings.url.clone(),
                why: format!("cannot start the runtime: {e}"),
            })?;
        // A runner trusts what it signed itself (the backend adds its own key).
        let backend = ObjectBackend::new(
            &settings.url,
            store,
            &prefix,
            settings.signing,
            settings.trusted,
        );
        Ok(Remote {
            url: settings.url,
            backend,
            down: AtomicBool::new(false),
            known: Mutex::new(Default::default()),
            runtime: Some(runtime),
        })
    }

    /// This client, fetching big blobs in `ranges` instead of [`client::RANGES`].
    pub fn with_ranges(mut self, ranges: client::Ranges) -> Remote {
        self.backend.set_ranges(ranges);
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Requests made and bytes moved in this run.
    pub fn stats(&self) -> &Stats {
        &self.backend.stats
    }

    /// Whether this runner writes to the remote (it holds a signing key).
    pub fn writes(&self) -> bool {
        self.backend.writes()
    }

    /// Whether records signed by the key named `name` are trusted.
    pub fn trusts(&self, name: &str) -> bool {
        self.trusted().iter().any(|k| k.name == name)
    }

    fn trusted(&self) -> &[PublicKey] {
        self.backend.trusted()
    }

    /// Whether any record can be trusted at all.
    pub fn reads(&self) -> bool {
        !self.trusted().is_empty()
    }

    /// Whether the remote failed in this run (and is no longer asked).
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Runs `f` to completion from code that is not async.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.as_ref().expect("a runtime").block_on(f)
    }

    /// The warnings since the last call, oldest first.
    pub fn take_warnings(&self) -> Vec<String> {
        self.backend.take_warnings()
    }

    fn know(&self, keys: impl IntoIterator<Item = Digest>) {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(keys);
    }

    /// Whether this run saw a result for `key` in the remote.
    pub fn has_seen(&self, key: &Digest) -> bool {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(key)
    }

    fn warn(&self, w: String) {
        self.backend.warn(w);
    }

    /// The first failure takes the remote out of this run, with one warning.
    fn fail(&self, what: &str, e: &object_store::Error) {
        if !self.down.swap(true, Ordering::Relaxed) {
            let hint = match e {
                object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. } => {
                    " (check the credentials in the environment)"
                }
                _ => "",
            };
            self.warn(format!(
                "remote cache {}: cannot {what}: {}{hint}; going on without it",
                self.url,
                brief(e)
            ));
        }
    }

    /// [`Remote::fail`] for what the backend returned: a failure of the remote takes it out of
    /// the run; any error is returned as a message.
    fn failed(&self, e: StoreError) -> String {
        if let StoreError::Remote {
            op, path, source, ..
        } = &e
        {
            self.fail(&format!("{op} {path}"), source);
            return format!("the remote cache {} is not answering", self.url);
        }
        e.to_string()
    }

    fn path(&self, dir: &str, name: &str) -> ObjectPath {
        self.backend.path(&format!("{dir}/{name}"))
    }

    fn count(&self) {
        self.backend.count();
    }

    fn store(&self) -> &dyn ObjectStore {
        self.backend.object_store()
    }

    /// The object at `path`: `None` when it does not exist or the remote fails.
    async fn get_bytes(&self, path: &ObjectPath) -> Option<bytes::Bytes> {
        if self.is_down() {
            return None;
        }
        self.backend
            .read(path)
            .await
            .map_err(|e| self.failed(e))
            .ok()
            .flatten()
    }

    /// Whether the object at `path` exists (`None` when the remote fails).
    async fn exists(&self, path: &ObjectPath) -> Option<bool> {
        if self.is_down() {
            return None;
        }
        self.backend
            .exists(path)
            .await
            .map_err(|e| self.failed(e))
            .ok()
    }

    /// The trusted record stored under `key`. A record that fails a check is a warning naming
    /// it, and reads as missing, so the node runs here.
    pub async fn get_action(&self, key: &Digest) -> Option<Verified> {
        if !self.reads() || self.is_down() {
            return None;
        }
        match self.backend.verified(key).await {
            Ok(found) => {
                if found.is_some() {
                    self.know([*key]);
                }
                found
            }
            Err(e) => {
                self.failed(e);
                None
            }
        }
    }

    /// [`Remote::get_action`] for many keys at once.
    pub async fn get_actions(&self, keys: &[Digest]) -> Vec<Verified> {
        futures_util::stream::iter(keys.iter().copied())
            .map(|k| async move { self.get_action(&k).await })
            .buffer_unordered(IN_FLIGHT)
            .filter_map(|v| async move { v })
            .collect()
            .await
    }

    /// Whether every blob `result` refers to is in the remote.
    pub async fn has_blobs(&self, result: &ActionResult) -> bool {
        for d in result.referenced_blobs() {
            if self.is_down() {
                return false;
            }
            match BlobService::has(&self.backend, &d).await {
                Ok(true) => {}
                Ok(false) => return false,
                Err(e) => {
                    self.failed(e);
                    return false;
                }
            }
        }
        true
    }

    /// Downloads the blob `d` into the local store, checking its digest on the way: a big blob
    /// in parallel ranges (see [`client::fetch_file`]). A blob whose bytes are not what its name
    /// says is an error, and nothing is stored.
    pub async fn fetch_blob(&self, d: &Digest, local: &LocalStore) -> Result<(), String> {
        if local.has_blob(d) {
            return Ok(());
        }
        if self.is_down() {
            return Err(format!("the remote cache {} is not answering", self.url));
        }
        let tmp = local.blob_temp().map_err(|e| e.to_string())?;
        match self.backend.fetch_into(d, tmp.as_file(), tmp.path()).await {
            Ok(Ok(_)) => local.adopt_blob(tmp, d).map_err(|e| e.to_string()),
            Ok(Err(why)) => Err(why.to_string()),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Sends the blob `d` from the local store unless the remote has it.
    async fn push_blob(&self, d: &Digest, local: &LocalStore) -> Result<(), String> {
        if self.is_down() {
            return Err(format!("the remote cache {} is not answering", self.url));
        }
        // Checked as it is sent (one read of a big blob, not two): a damaged blob is not sent.
        let file = local.blob_location(d);
        let size = match std::fs::metadata(&file) {
            Ok(m) => m.len(),
            Err(_) => return Err(format!("the blob {} is not in the local cache", d.short())),
        };
        match self.backend.send_named(d, &file, size).await {
            Ok(_) => Ok(()),
            Err(StoreError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::InvalidData =>
            {
                // Verifying it again moves it aside and reports it.
                let _ = local.blob_path(d);
                Err(format!(
                    "the local blob {} is damaged ({source})",
                    d.short()
                ))
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Publishes `result` to the remote: its blobs first, then its signed record, which is
    /// never written over another. Returns whether this call wrote the record. A runner without
    /// a signing key writes nothing. A failure is a warning, never an error.
    pub async fn push(&self, result: &ActionResult, local: &LocalStore) -> bool {
        match self.try_push(result, local).await {
            Ok(wrote) => wrote,
            Err(e) => {
                if !self.is_down() {
                    self.warn(format!(
                        "remote cache {}: the result of {} was not shared: {e}",
                        self.url, result.id
                    ));
                }
                false
            }
        }
    }

    async fn try_push(&self, result: &ActionResult, local: &LocalStore) -> Result<bool, String> {
        if !self.writes() || self.is_down() {
            return Ok(false);
        }
        let blobs: Vec<Digest> = result.referenced_blobs().collect();
        futures_util::stream::iter(blobs)
            .map(|d| async move { self.push_blob(&d, local).await })
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        let wrote = self
            .backend
            .put_record(result)
            .await
            .map_err(|e| self.failed(e))?;
        self.know([result.key]);
        Ok(wrote)
    }
}

/// Whether `e` says only that one object is absent. A missing bucket is a 404 too, but it is
/// the remote failing, not a miss.
pub(crate) fn is_miss(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. }) && !e.to_string().contains("NoSuchBucket")
}

/// An object-store error on one line: the server's error code instead of its XML or JSON body,
/// and no more than a line's worth of the rest.
fn brief(e: &object_store::Error) -> String {
    let text = e.to_string();
    let code = text
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| code.to_string());
    let head = text.split(['<', '{']).next().unwrap_or(&text);
    let mut line: String = head.split_whitespace().collect::<Vec<_>>().join(" ");
    line = line.trim_end_matches([':', ' ']).to_string();
    if line.chars().count() > 240 {
        line = line.chars().take(240).collect::<String>() + "…";
    }
    match code {
        Some(c) => format!("{line} ({c})"),
        None => line,
    }
}

impl Remote {
    /// The trusted pack for `graph` (with `true`), else the latest pack any signer wrote (for a
    /// graph that changed since, most of its keys are still there). `None` when neither is
    /// there or trusted.
    pub async fn get_pack(&self, graph: &Digest) -> Option<(Vec<pack::PackEntry>, bool)> {
        if !self.reads() {
            return None;
        }
        for (name, want) in [(graph.to_hex(), Some(graph)), ("latest".to_string(), None)] {
            let path = self.path("packs", &name);
            let Some(bytes) = self.get_bytes(&path).await else {
                continue;
            };
            match pack::decode(&bytes, want, self.trusted()) {
                Ok(entries) => {
                    self.know(entries.iter().map(|e| e.key));
                    return Some((entries, want.is_some()));
                }
                Err(why) => self.warn(format!(
                    "remote cache {}: ignoring the pack {path}: {why}",
                    self.url
                )),
            }
        }
        None
    }

    /// Writes the pack of `graph` (and makes it the latest). Only after every result it lists
    /// is in the remote.
    pub async fn put_pack(&self, graph: &Digest, entries: &[pack::PackEntry]) {
        let Ok(key) = self.backend.signing_key() else {
            return;
        };
        if self.is_down() || entries.is_empty() {
            return;
        }
        let bytes = bytes::Bytes::from(pack::encode(graph, entries, key));
        for name in [graph.to_hex(), "latest".to_string()] {
            let path = self.path("packs", &name);
            self.count();
            self.stats()
                .bytes_out
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            if let Err(e) = self.store().put(&path, bytes.clone().into()).await {
                self.fail(&format!("write {path}"), &e);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `file://` remote in `dir` fetching in ranges of 1000 bytes, 4 at once.
    fn remote(dir: &std::path::Path) -> Remote {
        Remote::open(Settings {
            url: format!("file://{}", dir.display()),
            signing: None,
            trusted: Vec::new(),
        })
        .unwrap()
        .with_ranges(client::Ranges {
            min: 1000,
            max: 1000,
            in_flight: 4,
        })
    }

    use crate::store::contract::noise;

    /// A local blob damaged after it was stored is checked as it is sent: it is not sent, the
    /// record that names it is not written, and the blob is moved aside.
    #[test]
    fn a_damaged_local_blob_is_not_pushed() {
        let dir = tempfile::tempdir().unwrap();
        let remote_dir = dir.path().join("remote");
        let r = Remote::open(Settings {
            url: format!("file://{}", remote_dir.display()),
            signing: Some(keys::SecretKey::generate("ci-1").unwrap()),
            trusted: Vec::new(),
        })
        .unwrap();
        let local = LocalStore::open(&dir.path().join("cache")).unwrap();
        for (n, len) in [(0u64, 3000), (1, client::PART_SIZE + 5000)] {
            let bytes = noise(len, 7 + n);
            let d = local.put_blob(&bytes).unwrap();
            let file = local.blob_location(&d);
            let mut perms = std::fs::metadata(&file).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            std::fs::set_permissions(&file, perms).unwrap();
            let mut damaged = bytes.clone();
            damaged[len / 2] ^= 1;
            std::fs::write(&file, damaged).unwrap();
            let result = crate::store::contract::result(
                Digest::of_bytes(&n.to_le_bytes()),
                "n",
                &[(d, len as u64)],
            );
            assert!(!r.block_on(r.push(&result, &local)), "blob {n}");
            let w = r.take_warnings();
            assert!(
                w.len() == 1 && w[0].contains("is damaged"),
                "blob {n}: {w:?}"
            );
            assert!(!remote_dir.join("cas").join(d.to_hex()).exists());
            assert!(!remote_dir.join("ac").join(result.key.to_hex()).exists());
            assert!(!local.has_blob(&d), "blob {n} was not moved aside");
            assert!(!r.is_down());
        }
    }

    /// A blob of many ranges arrives whole; one whose bytes are not what its name says is
    /// refused, nothing of it is stored, and the remote is not taken for down.
    #[test]
    fn blobs_come_in_ranges_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let remote_dir = dir.path().join("remote");
        let r = remote(&remote_dir);
        let local = LocalStore::open(&dir.path().join("cache")).unwrap();
        std::fs::create_dir_all(remote_dir.join("cas")).unwrap();

        let good = noise(10_500, 1);
        let d = Digest::of_bytes(&good);
        std::fs::write(remote_dir.join("cas").join(d.to_hex()), &good).unwrap();
        r.block_on(r.fetch_blob(&d, &local)).unwrap();
        assert_eq!(local.get_blob(&d).unwrap().as_deref(), Some(&good[..]));
        assert_eq!(r.stats().requests.load(Ordering::Relaxed), 11);
        assert_eq!(r.stats().bytes_in.load(Ordering::Relaxed), 10_500);

        // The same size, one byte changed in the last range.
        let mut bad = noise(10_500, 2);
        let named = Digest::of_bytes(&bad);
        bad[10_400] ^= 1;
        std::fs::write(remote_dir.join("cas").join(named.to_hex()), &bad).unwrap();
        let err = r.block_on(r.fetch_blob(&named, &local)).unwrap_err();
        assert!(
            err.contains("holds other bytes than its name says"),
            "{err}"
        );
        assert!(!local.has_blob(&named));
        assert!(!r.is_down());
        assert!(r.take_warnings().is_empty());
        let left: Vec<_> = std::fs::read_dir(local.tmp_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("fetch-"))
            .collect();
        assert!(left.is_empty(), "temp files left: {left:?}");

        let missing = Digest::of_bytes(b"not there");
        let err = r.block_on(r.fetch_blob(&missing, &local)).unwrap_err();
        assert!(err.contains("is missing from the remote cache"), "{err}");
        assert!(!r.is_down());
    }
}
