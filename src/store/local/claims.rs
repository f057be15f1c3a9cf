//! `claims`: what the latest refresh found for each publish node's claim, like Terraform's state
//! after a refresh. A publish result says "this object is in that bucket with this sha256"; the
//! refresh checks it against the world, and this file remembers the verdict, when it was reached,
//! and a builder's witness (e.g. the stat of a `file://` object) that lets the next refresh
//! confirm an unchanged claim without reading the artifact again.
//!
//! Two files. `claims` is a header line with the blake3 of the body, then the body: the records
//! in a compact binary form, in chunks of a postcard list each, every chunk after its length (a
//! little-endian `u32`), so that the chunks are decoded in parallel. `claims.times` holds when each record was last confirmed,
//! one number per record in the body's order, under the digest of the body it belongs to. A
//! refresh that finds every claim as it was (the common case: nothing was published or touched)
//! rewrites only the small times file, not the records. A `claims` that does not verify, or is of
//! an older format, is read as empty (every claim is then checked in full); a damaged one is
//! reported. A times file that does not verify or belongs to another body is ignored: the records
//! then keep the times they were written with.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::LocalStore;
use super::error::{EntryKind, Result, StoreWarning};
use super::fs;
use crate::hash::Digest;

const HEADER: &str = "kiln-claims-v3";
/// Records per chunk of the body: chunks are decoded on every core.
const CHUNK: usize = 1024;
const TIMES_HEADER: &str = "kiln-claim-times-v1";

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

impl ClaimRecord {
    /// The same verdict about the same claim, whenever it was reached.
    fn same_verdict(&self, other: &ClaimRecord) -> bool {
        self.key == other.key
            && self.status == other.status
            && self.witness == other.witness
            && self.facts == other.facts
    }
}

/// Claim records by node id.
pub type Claims = BTreeMap<String, ClaimRecord>;

/// The claims as stored, with what it takes to save them cheaply: whether any record differs
/// from the stored body other than in its time.
#[derive(Debug, Default)]
pub struct StoredClaims {
    records: Claims,
    /// The digest of the stored body the records are, times aside; `None` once one changed.
    body: Option<Digest>,
}

impl StoredClaims {
    pub fn get(&self, id: &str) -> Option<&ClaimRecord> {
        self.records.get(id)
    }

    pub fn records(&self) -> &Claims {
        &self.records
    }

    /// Moves the time of these claims' verdicts, found again at `now`.
    pub fn confirm(&mut self, ids: &[String], now: u64) {
        for id in ids {
            if let Some(r) = self.records.get_mut(id) {
                r.checked_unix_ms = r.checked_unix_ms.max(now);
            }
        }
    }

    /// Takes in newer verdicts. One that repeats the stored verdict only moves its time.
    pub fn merge(&mut self, updates: impl IntoIterator<Item = (String, ClaimRecord)>) {
        for (id, record) in updates {
            match self.records.get_mut(&id) {
                Some(old) if old.same_verdict(&record) => {
                    old.checked_unix_ms = old.checked_unix_ms.max(record.checked_unix_ms);
                }
                _ => {
                    self.records.insert(id, record);
                    self.body = None;
                }
            }
        }
    }
}

impl LocalStore {
    fn claims_path(&self) -> std::path::PathBuf {
        self.root.join("claims")
    }

    fn claim_times_path(&self) -> std::path::PathBuf {
        self.root.join("claims.times")
    }

    /// The latest refresh of every claim; empty when none was made, and when the file is damaged
    /// (reported through [`LocalStore::take_warnings`]).
    pub fn load_claims(&self) -> StoredClaims {
        let path = self.claims_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(_) => return StoredClaims::default(),
        };
        // A file of an older format is no damage: its claims are checked in full once.
        if bytes.starts_with(b"kiln-claims-") && !bytes.starts_with(HEADER.as_bytes()) {
            return StoredClaims::default();
        }
        match decode(&bytes) {
            Some((mut records, body)) => {
                let times = std::fs::read(self.claim_times_path()).unwrap_or_default();
                if let Some(times) = decode_times(&times, body, records.len()) {
                    for (r, t) in records.values_mut().zip(times) {
                        r.checked_unix_ms = r.checked_unix_ms.max(t);
                    }
                }
                StoredClaims {
                    records,
                    body: Some(body),
                }
            }
            None => {
                let _ = std::fs::remove_file(&path);
                self.warn(StoreWarning {
                    kind: EntryKind::Claims,
                    path,
                    problem: "it does not verify, so every published claim is checked in full"
                        .into(),
                    moved_to: None,
                });
                StoredClaims::default()
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
        claims.merge(updates);
        self.save_claims(&mut claims)
    }

    /// Stores `claims`: the records only when one changed, the times always.
    pub fn save_claims(&self, claims: &mut StoredClaims) -> Result<()> {
        // Atomic, but not synced: the files only remember what the world looked like, and a
        // lost update makes the next refresh check again.
        let body = match claims.body {
            Some(body) => body,
            None => {
                let (bytes, body) = encode(&claims.records);
                fs::write_atomic(&self.tmp, &self.claims_path(), &bytes, false, false)?;
                claims.body = Some(body);
                body
            }
        };
        let times = encode_times(&claims.records, body);
        fs::write_atomic(&self.tmp, &self.claim_times_path(), &times, false, false)
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

fn encode(claims: &Claims) -> (Vec<u8>, Digest) {
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
    let mut body = Vec::new();
    for chunk in records.chunks(CHUNK) {
        let bytes = postcard::to_stdvec(chunk).expect("claims encode");
        body.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        body.extend_from_slice(&bytes);
    }
    let digest = Digest::of_bytes(&body);
    let mut out = format!("{HEADER} {}\n", digest.to_hex()).into_bytes();
    out.extend_from_slice(&body);
    (out, digest)
}

/// The times file: the header with the body it belongs to and the blake3 of the times, then one
/// little-endian `u64` per record.
fn encode_times(claims: &Claims, body: Digest) -> Vec<u8> {
    let times: Vec<u8> = claims
        .values()
        .flat_map(|r| r.checked_unix_ms.to_le_bytes())
        .collect();
    let header = format!(
        "{TIMES_HEADER} {} {}\n",
        body.to_hex(),
        Digest::of_bytes(&times).to_hex()
    );
    let mut out = header.into_bytes();
    out.extend_from_slice(&times);
    out
}

/// The times, if the file verifies and belongs to `body` of `count` records.
fn decode_times(bytes: &[u8], body: Digest, count: usize) -> Option<impl Iterator<Item = u64>> {
    let nl = bytes.iter().position(|b| *b == b'\n')?;
    let header = std::str::from_utf8(&bytes[..nl]).ok()?;
    let mut words = header.strip_prefix(TIMES_HEADER)?.split_whitespace();
    let of: Digest = words.next()?.parse().ok()?;
    let sum: Digest = words.next()?.parse().ok()?;
    let times = &bytes[nl + 1..];
    if of != body || times.len() != count * 8 || Digest::of_bytes(times) != sum {
        return None;
    }
    Some(
        times
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))),
    )
}

fn decode(bytes: &[u8]) -> Option<(Claims, Digest)> {
    let nl = bytes.iter().position(|b| *b == b'\n')?;
    let header = std::str::from_utf8(&bytes[..nl]).ok()?;
    let digest: Digest = header.strip_prefix(HEADER)?.trim().parse().ok()?;
    let body = &bytes[nl + 1..];
    if Digest::of_bytes(body) != digest {
        return None;
    }
    let mut chunks = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (len, more) = rest.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        chunks.push(more.get(..len)?);
        rest = &more[len..];
    }
    use rayon::prelude::*;
    let chunks: Vec<Vec<(String, RecordIn)>> = chunks
        .par_iter()
        .map(|c| postcard::from_bytes(c).ok())
        .collect::<Option<_>>()?;
    let claims = chunks
        .into_iter()
        .flatten()
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
        .collect();
    Some((claims, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: ClaimStatus, checked_unix_ms: u64) -> ClaimRecord {
        ClaimRecord {
            key: Digest::of_bytes(b"key"),
            facts: BTreeMap::from([("url".into(), "file://x".into())]),
            checked_unix_ms,
            status,
            witness: Some("1:2:3".into()),
        }
    }

    #[test]
    fn claims_round_trip_and_a_damaged_file_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        assert!(store.load_claims().records().is_empty());
        let drift = ClaimStatus::Drift {
            reasons: vec!["missing: file://x".into()],
        };
        let rec = record(drift, 7);
        store
            .update_claims(Claims::from([("a/b/publish".into(), rec.clone())]))
            .unwrap();
        assert_eq!(store.load_claims().get("a/b/publish"), Some(&rec));
        let path = dir.path().join("claims");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(store.load_claims().records().is_empty());
        assert_eq!(store.take_warnings().len(), 1);
    }

    #[test]
    fn a_repeated_verdict_rewrites_only_the_times() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let id = "a/b/publish".to_string();
        store
            .update_claims(Claims::from([(id.clone(), record(ClaimStatus::Held, 7))]))
            .unwrap();
        let body = std::fs::read(dir.path().join("claims")).unwrap();
        let stat = |p: &str| std::fs::metadata(dir.path().join(p)).unwrap().ino();
        use std::os::unix::fs::MetadataExt;
        let ino = stat("claims");

        // The same verdict, later: only the time moves.
        store
            .update_claims(Claims::from([(id.clone(), record(ClaimStatus::Held, 9))]))
            .unwrap();
        assert_eq!(stat("claims"), ino, "the records are not rewritten");
        assert_eq!(std::fs::read(dir.path().join("claims")).unwrap(), body);
        assert_eq!(
            store.load_claims().get(&id),
            Some(&record(ClaimStatus::Held, 9))
        );

        // A damaged times file is ignored: the records keep the time they were written with.
        let times = dir.path().join("claims.times");
        let mut bytes = std::fs::read(&times).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&times, bytes).unwrap();
        assert_eq!(
            store.load_claims().get(&id),
            Some(&record(ClaimStatus::Held, 7))
        );

        // Another verdict rewrites the records, with its own time.
        let why = ClaimStatus::Unchecked {
            why: "offline".into(),
        };
        store
            .update_claims(Claims::from([(id.clone(), record(why.clone(), 11))]))
            .unwrap();
        assert_ne!(stat("claims"), ino);
        assert_eq!(store.load_claims().get(&id), Some(&record(why, 11)));
    }
}
