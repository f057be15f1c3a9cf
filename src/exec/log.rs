//! A node's log file: every line timestamped relative to the start, secrets redacted before
//! anything is written, the last line kept for the progress view.
//!
//! A finished log becomes a blob of the content store by a hard link (see [`NodeLog::seal`]):
//! the file under `logs/` and the blob are one inode. That is why a new log never truncates the
//! old file, which may be a blob, but unlinks it and creates a new one.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use crate::hash::Digest;

pub struct NodeLog {
    path: PathBuf,
    file: Mutex<Written>,
    secrets: Vec<String>,
    start: Instant,
    last: Mutex<String>,
}

/// The open file and a running digest of every byte written to it.
struct Written {
    file: File,
    hasher: blake3::Hasher,
    /// A write failed: the file may not hold what the digest says.
    failed: bool,
    /// Sealed: nothing more is written.
    sealed: bool,
}

impl NodeLog {
    pub fn create(path: &Path, secrets: Vec<String>) -> io::Result<NodeLog> {
        // Never truncate: the old log may be a blob of the content store under another name.
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let open = || OpenOptions::new().write(true).create_new(true).open(path);
        let file = match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                open()?
            }
            other => other?,
        };
        Ok(NodeLog {
            path: path.to_path_buf(),
            file: Mutex::new(Written {
                file,
                hasher: blake3::Hasher::new(),
                failed: false,
                sealed: false,
            }),
            secrets: secrets.into_iter().filter(|s| !s.is_empty()).collect(),
            start: Instant::now(),
            last: Mutex::new(String::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn redact(&self, line: &str) -> String {
        let mut out = line.to_string();
        for s in &self.secrets {
            out = out.replace(s.as_str(), "***");
        }
        out
    }

    pub fn line(&self, line: &str) {
        let line = self.redact(line);
        let t = self.start.elapsed().as_secs_f64();
        let text = format!("[{t:8.3}] {line}\n");
        {
            let mut w = self.file.lock().expect("log lock");
            if !w.sealed {
                match w.file.write_all(text.as_bytes()) {
                    Ok(()) => {
                        w.hasher.update(text.as_bytes());
                    }
                    Err(_) => w.failed = true,
                }
            }
        }
        *self.last.lock().expect("log lock") = line;
    }

    /// Ends the log: later lines are dropped, so the file can become a blob. Returns the
    /// digest and size of everything written, or `None` if a write failed.
    pub fn seal(&self) -> Option<(Digest, u64)> {
        let mut w = self.file.lock().expect("log lock");
        w.sealed = true;
        (!w.failed).then(|| {
            (
                Digest::from_bytes(*w.hasher.finalize().as_bytes()),
                w.hasher.count(),
            )
        })
    }

    pub fn last_line(&self) -> String {
        self.last.lock().expect("log lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_that_of_the_file_and_a_sealed_log_takes_no_more_lines() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("logs/a.log");
        let log = NodeLog::create(&path, vec!["hunter2".into()]).unwrap();
        log.line("one");
        log.line("the secret is hunter2");
        let (digest, size) = log.seal().unwrap();
        log.line("after the end");
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(Digest::of_bytes(&bytes), digest);
        assert_eq!(bytes.len() as u64, size);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("the secret is ***") && !text.contains("hunter2"));
        assert!(!text.contains("after the end"));
    }

    #[test]
    fn a_new_log_replaces_the_old_file_instead_of_truncating_it() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("a.log");
        let other_name = dir.path().join("blob");
        let old = NodeLog::create(&path, vec![]).unwrap();
        old.line("old");
        old.seal().unwrap();
        std::fs::hard_link(&path, &other_name).unwrap();
        let before = std::fs::read(&other_name).unwrap();
        let new = NodeLog::create(&path, vec![]).unwrap();
        new.line("new");
        assert_eq!(std::fs::read(&other_name).unwrap(), before);
        assert!(std::fs::read_to_string(&path).unwrap().contains("new"));
    }
}
