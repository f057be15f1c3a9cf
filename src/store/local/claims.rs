//! `claims`: what the latest refresh found for each publish node's claim, like Terraform's state
//! after a refresh. A publish result says "this object is in that bucket with this sha256"; the
//! refresh checks it against the world, and this file remembers the verdict, when it was reached,
//! and a builder's witness (e.g. the stat of a `file://` object) that lets the next refresh
//! confirm an unchanged claim without reading the artifact again.
//!
//! The file is a header line with the blake3 of the body, then the body: the records in a compact
//! binary form (postcard), since a refresh of a large matrix reads and rewrites every record. A
//! file that does not verify, or is of an older format, is read as empty (every claim is then
//! checked in full); a damaged one is reported.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::LocalStore;
use super::error::{EntryKind, Result, StoreWarning};
use super::fs;
use crate::hash::Digest;

const HEADER: &str = "kiln-claims-v2";

/// The verdict of a refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimStatus {
    /// Every artifact the result claims is there as claimed.
    Held,
    /// Something claimed is missing or different (the reasons, described for people).
    Drift { reasons: Vec<String> },
    /// The refresh could not run (no credentials, network down, ...).
    Unchecked { why: String },
}

/// The latest refresh of one node's claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRecord {
    /// The key of the result whose claim was checked.
    pub key: Digest,
    /// Its facts: the claim itself. A record applies to any result that claims exactly these
    /// (a result reused by early cutoff keeps them), and a refresh of the same key needs no
    /// read of the action cache.
    pub facts: BTreeMap<String, String>,
    pub checked_unix_ms: u64,
    pub status: ClaimStatus,
    /// Builder-specific evidence of the state that was verified; `None` when there is none.
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
        // A file of an older format is no damage: its claims are checked in full once.
        if bytes.starts_with(b"kiln-claims-") && !bytes.starts_with(HEADER.as_bytes()) {
            return Claims::new();
        }
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

/// A record as the file holds it (postcard has no internally tagged or flattened forms), borrowed
/// for writing ...
#[derive(Serialize)]
struct RecordOut<'a> {
    key: &'a Digest,
    facts: &'a BTreeMap<String, String>,
    checked_unix_ms: u64,
    status: StatusOut<'a>,
    witness: Option<&'a str>,
}

#[derive(Serialize)]
enum StatusOut<'a> {
    Held,
    Drift(&'a [String]),
    Unchecked(&'a str),
}

/// ... and owned for reading: the same shape.
#[derive(Deserialize)]
struct RecordIn {
    key: Digest,
    facts: BTreeMap<String, String>,
    checked_unix_ms: u64,
    status: StatusIn,
    witness: Option<String>,
}

#[derive(Deserialize)]
enum StatusIn {
    Held,
    Drift(Vec<String>),
    Unchecked(String),
}

fn encode(claims: &Claims) -> Vec<u8> {
    let records: Vec<(&str, RecordOut)> = claims
        .iter()
        .map(|(id, r)| {
            let status = match &r.status {
                ClaimStatus::Held => StatusOut::Held,
                ClaimStatus::Drift { reasons } => StatusOut::Drift(reasons),
                ClaimStatus::Unchecked { why } => StatusOut::Unchecked(why),
            };
            let out = RecordOut {
                key: &r.key,
                facts: &r.facts,
                checked_unix_ms: r.checked_unix_ms,
                status,
                witness: r.witness.as_deref(),
            };
            (id.as_str(), out)
        })
        .collect();
    let body = postcard::to_stdvec(&records).expect("claims encode");
    let mut out = format!("{HEADER} {}\n", Digest::of_bytes(&body).to_hex()).into_bytes();
    out.extend_from_slice(&body);
    out
}

fn decode(bytes: &[u8]) -> Option<Claims> {
    let nl = bytes.iter().position(|b| *b == b'\n')?;
    let header = std::str::from_utf8(&bytes[..nl]).ok()?;
    let digest: Digest = header.strip_prefix(HEADER)?.trim().parse().ok()?;
    let body = &bytes[nl + 1..];
    if Digest::of_bytes(body) != digest {
        return None;
    }
    let records: Vec<(String, RecordIn)> = postcard::from_bytes(body).ok()?;
    Some(
        records
            .into_iter()
            .map(|(id, r)| {
                let status = match r.status {
                    StatusIn::Held => ClaimStatus::Held,
                    StatusIn::Drift(reasons) => ClaimStatus::Drift { reasons },
                    StatusIn::Unchecked(why) => ClaimStatus::Unchecked { why },
                };
                let record = ClaimRecord {
                    key: r.key,
                    facts: r.facts,
                    checked_unix_ms: r.checked_unix_ms,
                    status,
                    witness: r.witness,
                };
                (id, record)
            })
            .collect(),
    )
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
