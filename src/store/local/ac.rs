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
use super::verified::{Stamp, Verified};
use crate::hash::{Digest, DigestSet};

const HEADER: &str = "kiln-action-v1";

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

    /// Which of `keys` have an intact entry. Planners call this for tens of thousands of keys,
    /// so it goes by the index `ac.verified`:
    /// - a fan-out directory whose stat is the one recorded when its entries were last checked
    ///   has had no entry created, removed or renamed since, so the entries recorded then are
    ///   taken as they are, without a system call;
    /// - in any other directory, an entry whose stat is the one recorded is not read again;
    /// - every other entry is read and checked against its header digest; corrupt ones are moved
    ///   aside and reported.
    ///
    /// An entry overwritten in place (not renamed over) keeps its directory's stat, so only
    /// `kiln cache verify` and readers of the entry notice that; kiln itself never does that.
    pub fn intact_keys(&self, keys: &[Digest]) -> DigestSet {
        use rayon::prelude::*;
        use rustix::fs::{AtFlags, Mode, OFlags};
        let index_path = self.root.join("ac.verified");
        // A directory changed less than this long ago could change again within the same tick
        // of its clock and keep its stat: its stamp is not recorded.
        let settled = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64 - 2);
        let mapped = fs::map_file(&index_path);
        let known = Verified::decode(mapped.as_deref().unwrap_or_default());
        // Directories are stat-ed before their entries: a change made meanwhile shows next time.
        let dir_path = |b: usize| self.ac.join(format!("{b:02x}"));
        let dirs: Vec<Option<Stamp>> = (0..256)
            .map(|b| rustix::fs::stat(dir_path(b)).ok().map(|st| Stamp::of(&st)))
            .collect();
        let trusted: Vec<bool> = (0..=255u8)
            .map(|b| dirs[b as usize].is_some() && dirs[b as usize] == known.dir(b))
            .collect();
        let (mut intact, unsure): (DigestSet, Vec<Digest>) = keys.par_iter().partition_map(|k| {
            if trusted[k.as_bytes()[0] as usize] && known.get(k).is_some() {
                rayon::iter::Either::Left(*k)
            } else {
                rayon::iter::Either::Right(*k)
            }
        });
        // Entries are stat-ed relative to their directory, opened when first needed.
        let fds: Vec<std::sync::OnceLock<Option<rustix::fd::OwnedFd>>> =
            (0..256).map(|_| std::sync::OnceLock::new()).collect();
        let checked: Vec<(Digest, Stamp, bool)> = unsure
            .par_iter()
            .filter_map(|k| {
                let b = k.as_bytes()[0] as usize;
                let dir = fds[b]
                    .get_or_init(|| {
                        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
                        rustix::fs::open(dir_path(b), flags, Mode::empty()).ok()
                    })
                    .as_ref()?;
                let name = blake3::Hash::from_bytes(*k.as_bytes()).to_hex();
                let st = rustix::fs::statat(dir, name.as_str(), AtFlags::empty()).ok()?;
                let stamp = Stamp::of(&st);
                if known.get(k) == Some(stamp) {
                    return Some((*k, stamp, false));
                }
                self.action_intact(k).then_some((*k, stamp, true))
            })
            .collect();
        let dir_stamps: Vec<Option<Stamp>> = dirs
            .iter()
            .map(|s| s.filter(|s| s.mtime.0 < settled))
            .collect();
        let changed = checked.iter().any(|(_, _, fresh)| *fresh)
            || (0..=255u8).any(|b| dir_stamps[b as usize] != known.dir(b));
        if changed {
            // What was known of unchanged directories stays known, wanted now or not.
            let mut entries: Vec<(Digest, Stamp)> =
                checked.iter().map(|(k, s, _)| (*k, *s)).collect();
            for b in (0..=255u8).filter(|b| trusted[*b as usize]) {
                entries.extend(known.entries_in(b));
            }
            // Only an optimisation: failing to save it costs time next run, never correctness.
            let _ = fs::write_atomic(
                &self.tmp,
                &index_path,
                &Verified::encode(&dir_stamps, &mut entries),
                false,
                false,
            );
        }
        intact.extend(checked.into_iter().map(|(k, _, _)| k));
        intact
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
