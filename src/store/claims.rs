//! `claims`: what the latest refresh found for each publish node's claim, like Terraform's state
//! after a refresh. A publish result says "this object is in that bucket with this sha256"; the
//! refresh checks it against the world, and this file remembers the verdict, when it was reached,
//! and a builder's witness (e.g. the stat of a `file://` object) that lets the next refresh
//! confirm an unchanged claim without reading the artifact again.
//!
//! The file is one JSON document followed by a line with the blake3 of that document: a file
//! that does not verify is reported and read as empty (every claim is then checked in full).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::LocalStore;
use super::error::{EntryKind, Result, StoreWarning};
use super::fs;
use crate::hash::Digest;

const HEADER: &str = "kiln-claims-v1";

/// The verdict of a refresh.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ClaimStatus {
    /// Every artifact the result claims is there as claimed.
    Held,
    /// Something claimed is missing or different (the reasons, described for people).
    Drift { reasons: Vec<String> },
    /// The refresh could not run (no credentials, network down, ...).
    Unchecked { why: String },
}

/// The latest refresh of one node's claim.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ClaimRecord {
    /// The key of the result whose claim was checked.
    pub key: Digest,
    /// Its facts: the claim itself. A record applies to any result that claims exactly these
    /// (a result reused by early cutoff keeps them), and a refresh of the same key needs no
    /// read of the action cache.
    pub facts: BTreeMap<String, String>,
    pub checked_unix_ms: u64,
    #[serde(flatten)]
    pub status: ClaimStatus,
    /// Builder-specific evidence of the state that was verified; `None` when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<String>,
}

/// By node id.
pub type Claims = BTreeMap<String, ClaimRecord>;

impl LocalStore {
    fn claims_path(&self) -> std::path::PathBuf {
        self.root.join("claims")
    }

    /// The latest refresh of every claim; empty when none was made, and when the file is damaged
    /// (reported through [`LocalStore::take_warnings`]).
    pub fn load_claims(&self) -> Claims {
        let path = self.claims_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(_) => return Claims::new(),
        };
        match decode(&bytes) {
            Some(c) => c,
            None => {
                let _ = std::fs::remove_file(&path);
                self.warn(StoreWarning {
                    kind: EntryKind::Claims,
                    path,
                    problem: "it does not verify, so every published claim is checked in full"
                        .into(),
                    moved_to: None,
                });
                Claims::new()
            }
        }
    }

    /// Merges `updates` into the stored claims (read, update, atomic rewrite). Callers hold the
    /// cache lock or accept that a concurrent refresh's verdicts may be lost (they are only a
    /// cache of the world: the next refresh finds them again).
    pub fn update_claims(&self, updates: Claims) -> Result<()> {
        if updates.is_empty() {
            return Ok(());
        }
        let mut claims = self.load_claims();
        claims.extend(updates);
        self.save_claims(&claims)
    }

    /// Replaces the stored claims with `claims`.
    pub fn save_claims(&self, claims: &Claims) -> Result<()> {
        // Atomic, but not synced: the file only remembers what the world looked like, and a
        // lost update makes the next refresh check again.
        fs::write_atomic(
            &self.tmp,
            &self.claims_path(),
            &encode(claims),
            false,
            false,
        )
    }
}

fn encode(claims: &Claims) -> Vec<u8> {
    let body = serde_json::to_vec(claims).expect("claims JSON");
    let mut out = format!("{HEADER} {}\n", Digest::of_bytes(&body).to_hex()).into_bytes();
    out.extend_from_slice(&body);
    out.push(b'\n');
    out
}

fn decode(bytes: &[u8]) -> Option<Claims> {
    let nl = bytes.iter().position(|b| *b == b'\n')?;
    let header = std::str::from_utf8(&bytes[..nl]).ok()?;
    let digest: Digest = header.strip_prefix(HEADER)?.trim().parse().ok()?;
    let body = bytes[nl + 1..].strip_suffix(b"\n")?;
    if Digest::of_bytes(body) != digest {
        return None;
    }
    serde_json::from_slice(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_round_trip_and_a_damaged_file_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        assert!(store.load_claims().is_empty());
        let rec = ClaimRecord {
            key: Digest::of_bytes(b"key"),
            facts: BTreeMap::from([("url".into(), "file://x".into())]),
            checked_unix_ms: 7,
            status: ClaimStatus::Drift {
                reasons: vec!["missing: file://x".into()],
            },
            witness: Some("1:2:3".into()),
        };
        store
            .update_claims(Claims::from([("a/b/publish".into(), rec.clone())]))
            .unwrap();
        assert_eq!(store.load_claims()["a/b/publish"], rec);
        let path = dir.path().join("claims");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(store.load_claims().is_empty());
        assert_eq!(store.take_warnings().len(), 1);
    }
}
