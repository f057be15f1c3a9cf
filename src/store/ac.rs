//! The action cache: node key -> [`ActionResult`], under `ac/`.
//!
//! An entry is self-checking: a header line `kiln-action-v1 <blake3 hex of the body>`, then the
//! JSON body. A truncated, garbled or mismatched entry, or one whose `key` differs from its file
//! name, is corrupt and reads as missing.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use super::LocalStore;
use super::error::{EntryKind, Result, StoreError};
use super::fs::{self, fanout_path};
use super::types::ActionResult;
use crate::hash::Digest;

const HEADER: &str = "kiln-action-v1";

/// What `ac.verified` remembers of an entry found intact: size, mtime (s, ns) and inode.
type Stamp = (u64, i64, i64, u64);

impl LocalStore {
    pub(crate) fn action_location(&self, key: &Digest) -> PathBuf {
        fanout_path(&self.ac, key)
    }

    /// Stores `result` under `result.key`, replacing any previous entry.
    pub fn put_action(&self, result: &ActionResult) -> Result<()> {
        let bytes = encode_action(result)?;
        fs::write_atomic(
            &self.tmp,
            &self.action_location(&result.key),
            &bytes,
            false,
            self.sync_each(),
        )
    }

    /// The result stored under `key`. A corrupt entry reads as missing and is reported through
    /// [`LocalStore::take_warnings`].
    pub fn get_action(&self, key: &Digest) -> Result<Option<ActionResult>> {
        let path = self.action_location(key);
        match read_action(&path, key)? {
            None => Ok(None),
            Some(Ok(result)) => Ok(Some(result)),
            Some(Err(problem)) => {
                self.quarantine(EntryKind::Action, &path, problem)?;
                Ok(None)
            }
        }
    }

    /// Whether the entry under `key` exists and its body matches the digest in its header,
    /// without decoding it: a planner checks every cached node this way. A corrupt entry is
    /// moved aside and reported, like [`LocalStore::get_action`] does.
    pub fn action_intact(&self, key: &Digest) -> bool {
        let path = self.action_location(key);
        let Ok(bytes) = std::fs::read(&path) else {
            return false;
        };
        match check_header(&bytes) {
            Ok(_) => true,
            Err(problem) => {
                let _ = self.quarantine(EntryKind::Action, &path, problem);
                false
            }
        }
    }

    /// Which of `keys` have an intact entry. An entry whose size, modification time and inode
    /// are those recorded when it was last found intact (the index `ac.verified`, like a stat
    /// cache) is not read again; every other one is checked by its header digest, in parallel.
    /// Corrupt entries are moved aside and reported.
    pub fn intact_keys(&self, keys: &[Digest]) -> HashSet<Digest> {
        use rayon::prelude::*;
        use std::os::unix::fs::MetadataExt;
        let index_path = self.root.join("ac.verified");
        let known: std::collections::HashMap<Digest, Stamp> = std::fs::read_to_string(&index_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut it = l.split(' ');
                let key = it.next()?.parse().ok()?;
                let stamp = (
                    it.next()?.parse().ok()?,
                    it.next()?.parse().ok()?,
                    it.next()?.parse().ok()?,
                    it.next()?.parse().ok()?,
                );
                Some((key, stamp))
            })
            .collect();
        let checked: Vec<(Digest, Stamp, bool)> = keys
            .par_iter()
            .filter_map(|k| {
                let meta = std::fs::metadata(self.action_location(k)).ok()?;
                let stamp = (meta.len(), meta.mtime(), meta.mtime_nsec(), meta.ino());
                if known.get(k) == Some(&stamp) {
                    return Some((*k, stamp, false));
                }
                self.action_intact(k).then_some((*k, stamp, true))
            })
            .collect();
        if checked.iter().any(|(_, _, fresh)| *fresh) || checked.len() != known.len() {
            let mut text = String::with_capacity(checked.len() * 110);
            for (k, (size, s, ns, ino), _) in &checked {
                text.push_str(&format!("{k} {size} {s} {ns} {ino}\n"));
            }
            // Only an optimisation: failing to save it costs time next run, never correctness.
            let _ = fs::write_atomic(&self.tmp, &index_path, text.as_bytes(), false, false);
        }
        checked.into_iter().map(|(k, _, _)| k).collect()
    }

    /// The keys of every action entry, from directory listings alone (no entry is read).
    pub fn action_keys(&self) -> Result<HashSet<Digest>> {
        use rayon::prelude::*;
        // A planner calls this once for tens of thousands of nodes: list the 256 fan-out
        // directories in parallel and parse names without building paths.
        let prefixes: Vec<std::fs::DirEntry> = match std::fs::read_dir(&self.ac) {
            Ok(rd) => rd.filter_map(|e| e.ok()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
            Err(e) => return Err(StoreError::io("list", &self.ac)(e)),
        };
        let lists: Vec<Vec<Digest>> = prefixes
            .par_iter()
            .map(|p| {
                let Ok(rd) = std::fs::read_dir(p.path()) else {
                    return Vec::new();
                };
                rd.filter_map(|e| {
                    let e = e.ok()?;
                    let name = e.file_name();
                    let name = name.to_str()?;
                    let lower_hex = name.len() == 64
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                    if lower_hex { name.parse().ok() } else { None }
                })
                .collect()
            })
            .collect();
        let mut keys = HashSet::with_capacity(lists.iter().map(Vec::len).sum());
        keys.extend(lists.into_iter().flatten());
        Ok(keys)
    }

    /// Removes the entry stored under `key`; returns whether there was one.
    pub fn remove_action(&self, key: &Digest) -> Result<bool> {
        fs::remove_file(&self.action_location(key))
    }
}

/// The bytes of an entry: header line with the body's digest, then the body.
pub(crate) fn encode_action(result: &ActionResult) -> Result<Vec<u8>> {
    let body = serde_json::to_vec_pretty(result).map_err(|source| StoreError::Encode {
        what: format!("the result of {}", result.id),
        source,
    })?;
    let mut bytes = format!("{HEADER} {}\n", Digest::of_bytes(&body).to_hex()).into_bytes();
    bytes.extend_from_slice(&body);
    bytes.push(b'\n');
    Ok(bytes)
}

/// Reads the entry at `path`, expected to be stored under `key`: `None` if there is none,
/// `Some(Err(problem))` if it is corrupt.
pub(crate) fn read_action(
    path: &Path,
    key: &Digest,
) -> Result<Option<std::result::Result<ActionResult, String>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(decode_action(&bytes, key))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io("read", path)(e)),
    }
}

/// Checks and decodes an entry's bytes; the error says what is wrong with it.
/// The body of an entry whose header digest matches it.
fn check_header(bytes: &[u8]) -> std::result::Result<&[u8], String> {
    let newline = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("it has no header line (truncated?)")?;
    let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| "its header is garbled")?;
    let expected = header
        .strip_prefix(HEADER)
        .and_then(|rest| rest.strip_prefix(' '))
        .and_then(|hex| hex.parse::<Digest>().ok())
        .ok_or_else(|| format!("its header is not `{HEADER} <digest>`"))?;
    let mut body = &bytes[newline + 1..];
    if let Some(stripped) = body.strip_suffix(b"\n") {
        body = stripped;
    }
    if Digest::of_bytes(body) != expected {
        return Err(
            "its body does not match the digest in its header (truncated or garbled)".into(),
        );
    }
    Ok(body)
}

pub(crate) fn decode_action(
    bytes: &[u8],
    key: &Digest,
) -> std::result::Result<ActionResult, String> {
    let body = check_header(bytes)?;
    let result: ActionResult =
        serde_json::from_slice(body).map_err(|e| format!("its body cannot be decoded: {e}"))?;
    if result.key != *key {
        return Err(format!(
            "it holds the result for key {}, not for the key it is named after",
            result.key.short()
        ));
    }
    Ok(result)
}
