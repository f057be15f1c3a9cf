//! Checking the whole cache, and repairing it by removing whatever is corrupt so the next build
//! redoes it.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;

use super::LocalStore;
use super::ac::read_action;
use super::cas::mismatch;
use super::error::{Result, StoreError};
use super::fs::{self, FanoutEntry};
use super::records::BadLine;
use crate::hash::Digest;

/// What is wrong with one file of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// A blob whose content does not hash to its name.
    CorruptBlob,
    /// An action entry that is truncated, garbled, or stored under the wrong key.
    CorruptAction,
    /// An intact action entry that refers to an output or log blob that is missing or corrupt.
    MissingBlob,
    /// A file under `cas/` or `ac/` that is not named like an entry.
    StrayFile,
    /// A line of `records.log` that cannot be read (e.g. torn by a crash) or fails its checksum.
    GarbledRecord,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    pub path: PathBuf,
    pub what: String,
    /// Whether repair removed it.
    pub repaired: bool,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.what)?;
        if self.repaired {
            f.write_str(" (removed)")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub blobs_checked: usize,
    pub actions_checked: usize,
    pub records_checked: usize,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl LocalStore {
    /// Checks that every blob hashes to its name, that every action entry is intact and every
    /// blob it refers to is present and intact, and that `records.log` reads cleanly.
    /// Changes nothing.
    pub fn verify(&self) -> Result<VerifyReport> {
        self.check(false)
    }

    /// Like [`LocalStore::verify`], and removes every problem found: corrupt blobs, corrupt
    /// action entries, entries whose blobs are gone, stray files, and garbled lines of
    /// `records.log`. Hold the cache lock while repairing.
    pub fn repair(&self) -> Result<VerifyReport> {
        self.check(true)
    }

    fn check(&self, repair: bool) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let mut problem = |kind, path: PathBuf, what: String| -> Result<()> {
            if repair {
                remove_any(&path)?;
            }
            report.problems.push(Problem {
                kind,
                path,
                what,
                repaired: repair,
            });
            Ok(())
        };

        let mut good_blobs: HashSet<Digest> = HashSet::new();
        let mut blobs_checked = 0;
        for entry in fs::walk_fanout(&self.cas)? {
            match entry {
                FanoutEntry::Stray { path } => {
                    problem(ProblemKind::StrayFile, path, "not a blob".into())?
                }
                FanoutEntry::Entry { digest, path } => {
                    blobs_checked += 1;
                    match fs::hash_file(&path) {
                        Ok((actual, _)) if actual == digest => {
                            good_blobs.insert(digest);
                        }
                        Ok((actual, _)) => {
                            problem(ProblemKind::CorruptBlob, path, mismatch(&actual))?
                        }
                        Err(e) => problem(
                            ProblemKind::CorruptBlob,
                            path,
                            format!("it cannot be read: {e}"),
                        )?,
                    }
                }
            }
        }

        let mut actions_checked = 0;
        for entry in fs::walk_fanout(&self.ac)? {
            match entry {
                FanoutEntry::Stray { path } => {
                    problem(ProblemKind::StrayFile, path, "not an action entry".into())?
                }
                FanoutEntry::Entry { digest, path } => {
                    actions_checked += 1;
                    match read_action(&path, &digest)? {
                        None => {}
                        Some(Err(what)) => problem(ProblemKind::CorruptAction, path, what)?,
                        Some(Ok(result)) => {
                            let missing: Vec<String> = result
                                .outputs
                                .iter()
                                .map(|o| (format!("output `{}`", o.name), o.digest))
                                .chain(result.log.map(|d| ("log".to_string(), d)))
                                .filter(|(_, d)| !good_blobs.contains(d))
                                .map(|(what, d)| format!("{what} ({})", d.short()))
                                .collect();
                            if !missing.is_empty() {
                                problem(
                                    ProblemKind::MissingBlob,
                                    path,
                                    format!(
                                        "the result of {} refers to missing or corrupt blobs: {}",
                                        result.id,
                                        missing.join(", ")
                                    ),
                                )?;
                            }
                        }
                    }
                }
            }
        }

        let log = self.read_record_log()?;
        for (line, bad) in &log.garbled {
            report.problems.push(Problem {
                kind: ProblemKind::GarbledRecord,
                path: self.records.clone(),
                what: match bad {
                    BadLine::Garbled => format!("line {line} is garbled"),
                    BadLine::Checksum => format!("line {line} does not match its checksum"),
                },
                repaired: repair,
            });
        }
        if repair && !log.garbled.is_empty() {
            self.rewrite_records(&log.records)?;
        }

        report.blobs_checked = blobs_checked;
        report.actions_checked = actions_checked;
        report.records_checked = log.records.len() + log.garbled.len();
        Ok(report)
    }
}

/// Removes a file, or a directory that has no business being where it is.
fn remove_any(path: &std::path::Path) -> Result<()> {
    if path.is_dir() {
        std::fs::remove_dir_all(path).map_err(StoreError::io("remove", path))
    } else {
        fs::remove_file(path).map(|_| ())
    }
}
