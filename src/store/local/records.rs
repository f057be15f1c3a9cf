//! `records.log`: an append-only log of [`Record`]s, like ninja's `.ninja_log`, one line each:
//! the record as JSON, a space, and a checksum of that JSON (the first 16 bytes of its blake3, in
//! hex). The last record per logical id wins. A torn or garbled line (e.g. the last line after a
//! crash) or one whose checksum fails (a flipped bit) is skipped, never fatal.
//!
//! Lines written before the checksum existed (the JSON alone, ending in `}`) are still read; any
//! rewrite of the log (gc, repair) gives them a checksum.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};

use super::LocalStore;
use super::error::{Result, StoreError};
use super::fs;
use super::types::Record;

/// What `records.log` holds: the records that parse, and the lines that do not.
pub(crate) struct RecordLog {
    pub records: Vec<Record>,
    /// 1-based line numbers of lines that cannot be read, and why.
    pub garbled: Vec<(usize, BadLine)>,
}

/// Why a line of `records.log` was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadLine {
    /// Not a record (torn, truncated, not JSON).
    Garbled,
    /// A record whose checksum does not match it.
    Checksum,
}

/// Hex digits of a line's checksum.
const SUM_HEX: usize = 32;

/// The checksum of a record's JSON, as it ends its line.
fn line_sum(json: &[u8]) -> [u8; SUM_HEX] {
    let hash = blake3::hash(json);
    let mut out = [0u8; SUM_HEX];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in hash.as_bytes()[..SUM_HEX / 2].iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 15) as usize];
    }
    out
}

/// A line's JSON after its checksum is checked; `Ok(line)` for a line without one (old format).
fn checked_json(line: &[u8]) -> std::result::Result<&[u8], BadLine> {
    if line.last() == Some(&b'}') {
        return Ok(line);
    }
    let split = line
        .len()
        .checked_sub(SUM_HEX + 1)
        .ok_or(BadLine::Garbled)?;
    let (json, sum) = line.split_at(split);
    let sum = sum.strip_prefix(b" ").ok_or(BadLine::Garbled)?;
    if json.last() != Some(&b'}') {
        return Err(BadLine::Garbled);
    }
    if line_sum(json) != sum {
        return Err(BadLine::Checksum);
    }
    Ok(json)
}

impl LocalStore {
    /// Appends `record` with a single `write` of one line to the log opened `O_APPEND`, then
    /// syncs it. If the log ends in a torn line, the new line starts on a fresh line.
    ///
    /// The log stays open between appends (a build appends once per node); the check for a torn
    /// last line is done when it is opened, and again after a failed append.
    pub fn append_record(&self, record: &Record) -> Result<()> {
        self.append_records(std::slice::from_ref(record))
    }

    /// Appends several records with one `write` and one sync (and, in group-commit mode, one
    /// `syncfs` before them).
    pub fn append_records(&self, records: &[Record]) -> Result<()> {
        let path = &self.records;
        let mut lines = encode_lines(records)?;
        let (file, torn) = self.records_file()?;
        if !self.sync_each() {
            // The records are the commit point: what they refer to must be durable first.
            fs::sync_filesystem(&file, path)?;
        }
        if torn {
            lines.insert(0, b'\n');
        }
        let appended = (&*file)
            .write_all(&lines)
            .map_err(StoreError::io("append to", path))
            .and_then(|()| file.sync_data().map_err(StoreError::io("sync", path)));
        if appended.is_err() {
            // Part of the lines may be there: check again before the next append.
            *self.records_file.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        appended
    }

    /// `records.log`, open for appending, and whether it ends in a torn line (only the first
    /// time it is opened).
    fn records_file(&self) -> Result<(std::sync::Arc<File>, bool)> {
        let path = &self.records;
        let mut open = self.records_file.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = &*open {
            return Ok((file.clone(), false));
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(StoreError::io("open", path))?;
        let len = file
            .metadata()
            .map_err(StoreError::io("inspect", path))?
            .len();
        let mut torn = false;
        if len > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1))
                .and_then(|_| file.read_exact(&mut last))
                .map_err(StoreError::io("read", path))?;
            torn = last[0] != b'\n';
        }
        let file = std::sync::Arc::new(file);
        *open = Some(file.clone());
        Ok((file, torn))
    }

    /// The last record of every logical id.
    pub fn load_records(&self) -> Result<BTreeMap<String, Record>> {
        Ok(self
            .record_history()?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect())
    }

    /// The stat of `records.log`: it changes with every append and every rewrite. `None` if
    /// there is no log.
    pub fn records_stamp(&self) -> Option<super::Stamp> {
        rustix::fs::stat(&self.records)
            .ok()
            .map(|st| super::Stamp::of(&st))
    }

    /// Every record, oldest first.
    pub fn record_history(&self) -> Result<Vec<Record>> {
        Ok(self.read_record_log()?.records)
    }

    pub(crate) fn read_record_log(&self) -> Result<RecordLog> {
        let path = &self.records;
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(StoreError::io("read", path)(e)),
        };
        Ok(parse_record_log(&bytes))
    }

    /// Replaces the log with `records`, atomically.
    pub(crate) fn rewrite_records(&self, records: &[Record]) -> Result<()> {
        let bytes = encode_lines(records)?;
        fs::write_atomic(&self.tmp, &self.records, &bytes, false, true)?;
        // The open handle belongs to the replaced file.
        *self.records_file.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }
}

/// One line per record: its JSON, a space and the JSON's checksum.
fn encode_lines(records: &[Record]) -> Result<Vec<u8>> {
    let mut lines = Vec::with_capacity(records.len() * 200);
    for record in records {
        let start = lines.len();
        serde_json::to_writer(&mut lines, record).map_err(|source| StoreError::Encode {
            what: format!("the record of {}", record.id),
            source,
        })?;
        let sum = line_sum(&lines[start..]);
        lines.push(b' ');
        lines.extend_from_slice(&sum);
        lines.push(b'\n');
    }
    Ok(lines)
}

/// Parses the log's lines in parallel (planners read tens of thousands of them).
fn parse_record_log(bytes: &[u8]) -> RecordLog {
    use rayon::prelude::*;
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let parsed: Vec<Option<std::result::Result<Record, BadLine>>> = lines
        .par_iter()
        .map(|line| {
            if line.iter().all(u8::is_ascii_whitespace) {
                return None;
            }
            Some(checked_json(line).and_then(|json| {
                parse_plain_line(json).map(Ok).unwrap_or_else(|| {
                    serde_json::from_slice::<Record>(json).map_err(|_| BadLine::Garbled)
                })
            }))
        })
        .collect();
    let mut log = RecordLog {
        records: Vec::with_capacity(parsed.len()),
        garbled: Vec::new(),
    };
    for (i, p) in parsed.into_iter().enumerate() {
        match p {
            Some(Ok(record)) => log.records.push(record),
            Some(Err(bad)) => log.garbled.push((i + 1, bad)),
            None => {}
        }
    }
    log
}

/// The JSON of a line exactly as `append_record` writes it, `{"id":"…","key":"<hex>","unix_ms":N}`,
/// with an id that needs no escaping; anything else is left to serde_json.
fn parse_plain_line(line: &[u8]) -> Option<Record> {
    let rest = line.strip_prefix(b"{\"id\":\"")?;
    let end = rest
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    let (id, rest) = rest.split_at(end);
    let rest = rest.strip_prefix(b"\",\"key\":\"")?;
    let (hex, rest) = rest.split_at_checked(64)?;
    let rest = rest.strip_prefix(b"\",\"unix_ms\":")?;
    let digits = rest.strip_suffix(b"}")?;
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(Record {
        id: std::str::from_utf8(id).ok()?.to_string(),
        key: std::str::from_utf8(hex).ok()?.parse().ok()?,
        unix_ms: std::str::from_utf8(digits).ok()?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Digest;

    #[test]
    fn plain_lines_parse_like_serde_json_does() {
        let rec = |id: &str| Record {
            id: id.into(),
            key: Digest::of_bytes(id.as_bytes()),
            unix_ms: 1_763_800_000_123,
        };
        for id in [
            "aws/ubuntu-2404/1.31/build",
            "",
            "a\"b",
            "tab\there",
            "ünïcode/ß",
            "back\\slash",
        ] {
            let line = serde_json::to_vec(&rec(id)).unwrap();
            let fast = parse_plain_line(&line);
            if let Some(r) = &fast {
                assert_eq!(r, &rec(id));
            }
            // An old line (no checksum) and a new one read the same.
            let log = parse_record_log(&line);
            assert_eq!(log.records, vec![rec(id)], "{id:?}");
            let encoded = encode_lines(&[rec(id)]).unwrap();
            let log = parse_record_log(&encoded);
            assert_eq!(log.records, vec![rec(id)], "{id:?}");
            assert!(log.garbled.is_empty());
        }
        assert!(parse_plain_line(&serde_json::to_vec(&rec("x")).unwrap()).is_some());
        for bad in [
            &b"{\"id\":\"x\",\"key\":\"00\",\"unix_ms\":1}"[..],
            b"{\"id\":\"x\"",
            b"garbage",
        ] {
            assert!(parse_plain_line(bad).is_none());
        }
        let log = parse_record_log(b"garbage\n\n{\"id\":\"x\"");
        let g = BadLine::Garbled;
        assert_eq!((log.records.len(), log.garbled), (0, vec![(1, g), (3, g)]));
    }

    #[test]
    fn a_flipped_bit_anywhere_in_a_line_fails_it() {
        let rec = Record {
            id: "aws/ubuntu-2404/1.31/build".into(),
            key: Digest::of_bytes(b"k"),
            unix_ms: 1_763_800_000_123,
        };
        let line = encode_lines(std::slice::from_ref(&rec)).unwrap();
        assert_eq!(parse_record_log(&line).records, vec![rec]);
        let body = line.len() - 1; // not the newline
        for i in 0..body {
            for bit in 0..8 {
                let mut bad = line.clone();
                bad[i] ^= 1 << bit;
                if bad[i] == b'\n' {
                    continue; // splits the line: each half is garbled
                }
                let log = parse_record_log(&bad);
                assert!(
                    log.records.is_empty(),
                    "byte {i} bit {bit}: {:?}",
                    log.records
                );
                assert_eq!(log.garbled.len(), 1, "byte {i} bit {bit}");
            }
        }
        // The id changed, the line still JSON and still of the plain shape: the checksum says.
        let flipped = String::from_utf8(line.clone())
            .unwrap()
            .replacen("build", "bui|d", 1);
        let log = parse_record_log(flipped.as_bytes());
        assert_eq!(log.garbled, vec![(1, BadLine::Checksum)]);
    }
}
