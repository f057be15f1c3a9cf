//! A node's log file: every line timestamped relative to the start, secrets redacted before
//! anything is written, the last line kept for the progress view.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

pub struct NodeLog {
    path: PathBuf,
    file: Mutex<File>,
    secrets: Vec<String>,
    start: Instant,
    last: Mutex<String>,
}

impl NodeLog {
    pub fn create(path: &Path, secrets: Vec<String>) -> std::io::Result<NodeLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        Ok(NodeLog {
            path: path.to_path_buf(),
            file: Mutex::new(File::create(path)?),
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
        let _ = writeln!(self.file.lock().expect("log lock"), "[{t:8.3}] {line}");
        *self.last.lock().expect("log lock") = line;
    }

    pub fn last_line(&self) -> String {
        self.last.lock().expect("log lock").clone()
    }
}
