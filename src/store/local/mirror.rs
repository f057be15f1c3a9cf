//! Result records fetched from a remote cache, kept under `remote/` until their blobs are
//! fetched too.
//!
//! `ac/` only holds results whose blobs are all in `cas/`. A record from the remote arrives
//! without its blobs (a plan never downloads a blob), so it waits here: the next plan finds it
//! without asking the remote again, and a build that needs its blobs fetches them and moves it
//! to `ac/`. Each entry names the trusted key its signature was checked against when it was
//! fetched; a reader that no longer trusts that key treats the entry as missing.

use super::LocalStore;
use super::ac::{decode_action, encode_action};
use super::error::Result;
use super::fs::{self, fanout_path};
use super::types::ActionResult;
use crate::hash::Digest;

impl LocalStore {
    pub(crate) fn mirror_dir(&self) -> std::path::PathBuf {
        self.root.join("remote")
    }

    fn mirror_location(&self, key: &Digest) -> std::path::PathBuf {
        fanout_path(&self.mirror_dir(), key)
    }

    /// Keeps `result`, checked against the trusted key `signer`, until its blobs are fetched.
    pub fn put_mirrored(&self, result: &ActionResult, signer: &str) -> Result<()> {
        let mut bytes = format!("signer {signer}\n").into_bytes();
        bytes.extend(encode_action(result)?);
        fs::write_atomic(
            &self.tmp,
            &self.mirror_location(&result.key),
            &bytes,
            false,
            false,
        )
    }

    /// The fetched record under `key` and the key that signed it. A damaged entry is removed
    /// (it is only a copy) and reads as missing.
    pub fn get_mirrored(&self, key: &Digest) -> Option<(ActionResult, String)> {
        let path = self.mirror_location(key);
        let bytes = std::fs::read(&path).ok()?;
        let decoded = bytes.iter().position(|&b| b == b'\n').and_then(|nl| {
            let signer = std::str::from_utf8(&bytes[..nl])
                .ok()?
                .strip_prefix("signer ")?;
            let result = decode_action(&bytes[nl + 1..], key).ok()?;
            Some((result, signer.to_string()))
        });
        if decoded.is_none() {
            let _ = std::fs::remove_file(&path);
        }
        decoded
    }

    /// Drops the fetched record under `key` (its result moved to `ac/`, or it proved wrong).
    pub fn forget_mirrored(&self, key: &Digest) {
        let _ = std::fs::remove_file(self.mirror_location(key));
    }

    /// The result under `key` from `ac/`, else from the fetched records: what a plan reads for
    /// facts and diffs, which need no blob.
    pub fn get_any_action(&self, key: &Digest) -> Option<ActionResult> {
        match self.get_action(key) {
            Ok(Some(r)) => Some(r),
            _ => self.get_mirrored(key).map(|(r, _)| r),
        }
    }
}
