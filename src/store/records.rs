//! `records.log`: an append-only JSON-lines log of [`Record`]s, like ninja's `.ninja_log`.
//! The last record per logical id wins. A torn or garbled line (e.g. the last line after a
//! crash) is skipped, never fatal.

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
    /// 1-based line numbers of lines that do not parse.
    pub garbled: Vec<usize>,
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
        let mut lines = Vec::with_capacity(records.len() * 160);
        for record in records {
            serde_json::to_writer(&mut lines, record).map_err(|source| StoreError::Encode {
                what: format!("the record of {}", record.id),
                source,
            })?;
            lines.push(b'\n');
        }
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
        fs::write_atomic(&self.tmp, &self.records, &bytes, false, true)?;
        // The open handle belongs to the replaced file.
        *self.records_file.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }
}
