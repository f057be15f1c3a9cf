//! The store contract (`kiln::store::contract`) against a real S3-compatible server: the
//! object-store backend in a moto bucket keeps every promise the local cache keeps. The other
//! backends (the local cache, an object store in memory, the layered store over a failing remote)
//! run the same suite in the unit tests.

use std::sync::Arc;

use kiln::store::contract;
use kiln::store::object::ObjectBackend;
use kiln::store::remote::keys::SecretKey;

use crate::s3::{BUCKET, moto_without_auth};

/// moto without authentication: it refuses correctly signed listings (getmoto/moto#5948), which
/// reading the build records makes.
#[test]
fn an_s3_bucket_keeps_the_store_contract() {
    let m = moto_without_auth().unwrap();
    let key = SecretKey::generate("ci-1").unwrap();
    // Uploads carry a SHA-256 of each part, as the remote cache's do: moto checks every part
    // and the completion.
    let backend = ObjectBackend::new(
        &format!("s3://{BUCKET}/contract"),
        Arc::new(m.store_checked()),
        "contract",
        Some(key),
        Vec::new(),
    );
    let scratch = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(contract::check(&backend, scratch.path()))
        .unwrap();
    assert!(backend.take_warnings().is_empty());
    assert!(
        m.list("contract/cas").len() >= 4,
        "{:?}",
        m.list("contract")
    );
}
