//! `records.log`: an append-only JSON-lines log of [`Record`]s, like ninja's `.ninja_log`.
//! The last record per logical id wins. A torn or garbled line (e.g. the last line after a
//! crash) is skipped, never fatal.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom, Write};

use super::LocalStore;
use super::error::{Result, StoreError};
use super::fs;
use super::types::Record;

/// What `records.log` holds: the records that parse, and the lines that do not.
pub(crate) struct RecordLog {
    pub records: Vec<Record>,
    /// 1-based line numbers of lines that do not parse.
    pub garbled: Vec<usize>,
}

impl LocalStore {
    /// Appends `record` with a single `write` of one line to the log opened `O_APPEND`, then
    /// syncs it. If the log ends in a torn line, the new line starts on a fresh line.
    pub fn append_record(&self, record: &Record) -> Result<()> {
        let path = &self.records;
        if !self.sync_each() {
            // The record is the commit point: what it refers to must be durable first.
            fs::sync_filesystem(&self.root)?;
        }
        let mut line = serde_json::to_vec(record).map_err(|source| StoreError::Encode {
            what: format!("the record of {}", record.id),
            source,
        })?;
        line.push(b'\n');
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
        if len > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1))
                .and_then(|_| file.read_exact(&mut last))
                .map_err(StoreError::io("read", path))?;
            if last[0] != b'\n' {
                line.insert(0, b'\n');
            }
        }
        file.write_all(&line)
            .map_err(StoreError::io("append to", path))?;
        file.sync_data().map_err(StoreError::io("sync", path))
    }

    /// The last record of every logical id.
    pub fn load_records(&self) -> Result<BTreeMap<String, Record>> {
        Ok(self
            .record_history()?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect())
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
        let mut log = RecordLog {
            records: Vec::new(),
            garbled: Vec::new(),
        };
        for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<Record>(line) {
                Ok(record) => log.records.push(record),
                Err(_) => log.garbled.push(i + 1),
            }
        }
        Ok(log)
    }

    /// Replaces the log with `records`, atomically.
    pub(crate) fn rewrite_records(&self, records: &[Record]) -> Result<()> {
        let mut bytes = Vec::new();
        for record in records {
            serde_json::to_writer(&mut bytes, record).map_err(|source| StoreError::Encode {
                what: format!("the record of {}", record.id),
                source,
            })?;
            bytes.push(b'\n');
        }
        fs::write_atomic(&self.tmp, &self.records, &bytes, false, true)
    }
}
