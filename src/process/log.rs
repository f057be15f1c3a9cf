//! A node's log file: every line timestamped relative to the start, secrets redacted before
//! anything is written, the last line kept for the progress view.
//!
//! A finished log is sealed (see [`NodeLog::seal`]) and stored as a blob of its own, a copy
//! checked against the digest of every byte written; the file under `logs/` is only the live
//! view of a running step. A new log unlinks the old file and creates a new one rather than
//! truncating it, so whoever still reads the old one keeps reading it whole.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use crate::hash::Digest;

pub struct NodeLog {
    path: PathBuf,
    file: Mutex<Written>,
    secrets: crate::redact::Redactor,
    start: Instant,
    last: Mutex<String>,
    /// The last [`TAIL_LINES`] lines, redacted, without their times: what the build output
    /// shows of a failed node.
    tail: Mutex<std::collections::VecDeque<String>>,
}

/// How many lines of a failed node's log the build output shows.
pub const TAIL_LINES: usize = 20;

/// The open file and a running digest of every byte written to it.
struct Written {
    file: File,
    hasher: blake3::Hasher,
    /// A write failed: the file may not hold what the digest says.
    failed: bool,
    /// Sealed: nothing more is written.
    sealed: bool,
}

/// A logical id as a file name, injectively: `%` becomes `%25` and `/` becomes `%2F`, every
/// other character stays. Two distinct ids never give the same name (`a/b` is `a%2Fb`, `a__b`
/// stays `a__b`, `a%2Fb` is `a%252Fb`), and the name never contains a `/`.
pub fn file_name(id: &str) -> String {
    let mut out = String::with_capacity(id.len() + 8);
    for c in id.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
    out
}

impl NodeLog {
    pub fn create(path: &Path, secrets: Vec<String>) -> io::Result<NodeLog> {
        // Never truncate: a reader of the old log keeps the whole of it.
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
            secrets: crate::redact::Redactor::new(secrets.iter().map(String::as_str)),
            start: Instant::now(),
            last: Mutex::new(String::new()),
            tail: Mutex::new(std::collections::VecDeque::with_capacity(TAIL_LINES)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `text` with the node's secrets masked (see [`crate::redact`]).
    pub fn redact(&self, text: &str) -> String {
        self.secrets.redact(text)
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
        {
            let mut tail = self.tail.lock().expect("log lock");
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.clone());
        }
        *self.last.lock().expect("log lock") = line;
    }

    /// The last lines written (at most [`TAIL_LINES`]), secrets redacted.
    pub fn tail(&self) -> Vec<String> {
        self.tail
            .lock()
            .expect("log lock")
            .iter()
            .cloned()
            .collect()
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
    fn file_names_of_distinct_ids_are_distinct() {
        let ids = [
            "a/b", "a__b", "a%2Fb", "a%2fb", "a%252Fb", "a%b", "%", "%25", "/", "", "a//b",
            "a/%2F/b", "ü/ß", "a b/c",
        ];
        let names: std::collections::HashSet<String> = ids.iter().map(|i| file_name(i)).collect();
        assert_eq!(names.len(), ids.len(), "{names:?}");
        assert!(names.iter().all(|n| !n.contains('/')));
        assert_eq!(
            file_name("aws/ubuntu-2404/1.31/build"),
            "aws%2Fubuntu-2404%2F1.31%2Fbuild"
        );
        // Decoding gives the id back, which is what makes the encoding injective.
        let decode = |n: &str| n.replace("%2F", "/").replace("%25", "%");
        for id in ids {
            let decoded = file_name(id)
                .split("%25")
                .map(decode)
                .collect::<Vec<_>>()
                .join("%");
            assert_eq!(decoded, id);
        }
    }

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
    fn the_tail_keeps_the_last_lines_redacted() {
        let dir = tempfile::TempDir::new().unwrap();
        let log = NodeLog::create(&dir.path().join("a.log"), vec!["hunter2".into()]).unwrap();
        for i in 0..TAIL_LINES + 5 {
            log.line(&format!("line {i} hunter2"));
        }
        let tail = log.tail();
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail[0], "line 5 ***");
        assert_eq!(tail[TAIL_LINES - 1], format!("line {} ***", TAIL_LINES + 4));
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
