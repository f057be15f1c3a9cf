//! The files a config names, checked before anything reads them: only regular files are read
//! (a FIFO, a device or a kernel file under `/proc` or `/sys` would hang, never end, or quote
//! what is not kiln's to quote), within a size limit, and shipped trees stay inside the project.

use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

/// What a path is when kiln will not read it as a file, or `None` for a regular file.
pub fn not_regular(path: &Path, meta: &std::fs::Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    let kind = if t.is_file() {
        let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let kernel = resolved.starts_with("/proc") || resolved.starts_with("/sys");
        return kernel.then_some("a kernel file");
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a special file"
    };
    Some(kind)
}

/// Why a file could not be read.
#[derive(Debug)]
pub enum ReadError {
    Io(std::io::Error),
    NotRegular(&'static str),
    TooLarge { size: u64, limit: u64 },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::NotRegular(what) => write!(f, "it is {what}, not a regular file"),
            ReadError::TooLarge { size, limit } => {
                write!(f, "it is {size} bytes, more than the {limit} bytes allowed")
            }
        }
    }
}

/// Reads a regular file of at most `limit` bytes (following symlinks).
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let meta = std::fs::metadata(path).map_err(ReadError::Io)?;
    if let Some(what) = not_regular(path, &meta) {
        return Err(ReadError::NotRegular(what));
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge {
            size: meta.len(),
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .map_err(ReadError::Io)?
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// Why a path written in the config is not a safe path relative to a directory (the staged
/// tree, a work directory, a bucket): it must be relative and never climb out with `..`.
pub fn unsafe_relative(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some("it is empty");
    }
    if path.contains('\0') {
        return Some("it contains a NUL byte");
    }
    let p = Path::new(path);
    if p.has_root() {
        return Some("it is absolute");
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Some("it climbs out with `..`");
    }
    None
}

/// Why a cell name cannot become part of a path (object and file names are made from it): the
/// rules of [`unsafe_relative`], and no control characters. A `/` is allowed: it nests the name
/// below its directory, which is still inside it.
pub fn unsafe_name(name: &str) -> Option<&'static str> {
    if name.chars().any(|c| c.is_control() && c != '\0') {
        return Some("it contains a control character");
    }
    unsafe_relative(name)
}

/// A problem found in a shipped tree.
#[derive(Debug, PartialEq, Eq)]
pub enum TreeProblem {
    /// The entry (or the shipped path itself) resolves outside the project.
    Escapes { entry: PathBuf, target: PathBuf },
    /// A symlink that points nowhere, or into a loop.
    Broken { entry: PathBuf, why: String },
    /// A symlink to a directory that holds it: copying would never end.
    Loop { entry: PathBuf },
    /// Not a regular file, a directory or a symlink to one.
    Special { entry: PathBuf, what: &'static str },
}

impl std::fmt::Display for TreeProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TreeProblem::Escapes { entry, target } if entry == target => {
                write!(f, "`{}` is outside the project", entry.display())
            }
            TreeProblem::Escapes { entry, target } => write!(
                f,
                "`{}` resolves to {}, outside the project",
                entry.display(),
                target.display()
            ),
            TreeProblem::Broken { entry, why } => {
                write!(f, "`{}` is a broken symlink: {why}", entry.display())
            }
            TreeProblem::Loop { entry } => write!(
                f,
                "`{}` is a symlink to a directory that holds it",
                entry.display()
            ),
            TreeProblem::Special { entry, what } => {
                write!(f, "`{}` is {what}, not a regular file", entry.display())
            }
        }
    }
}

/// How deep a shipped tree may nest.
const MAX_TREE_DEPTH: usize = 64;

/// Checks a shipped file or directory: it and everything in it resolve inside `project` (a
/// canonical path), hold no broken symlink, loop or special file. Entries are named as
/// `shown` joined with their path below it.
pub fn check_tree(project: &Path, path: &Path, shown: &Path) -> Result<(), TreeProblem> {
    check_entry(project, path, shown, &mut Vec::new())
}

fn check_entry(
    project: &Path,
    path: &Path,
    shown: &Path,
    ancestors: &mut Vec<PathBuf>,
) -> Result<(), TreeProblem> {
    let target = std::fs::canonicalize(path).map_err(|e| TreeProblem::Broken {
        entry: shown.to_path_buf(),
        why: e.to_string(),
    })?;
    if !target.starts_with(project) {
        return Err(TreeProblem::Escapes {
            entry: shown.to_path_buf(),
            target,
        });
    }
    if ancestors.contains(&target) || ancestors.len() >= MAX_TREE_DEPTH {
        return Err(TreeProblem::Loop {
            entry: shown.to_path_buf(),
        });
    }
    let meta = std::fs::metadata(&target).map_err(|e| TreeProblem::Broken {
        entry: shown.to_path_buf(),
        why: e.to_string(),
    })?;
    if meta.is_dir() {
        let entries = std::fs::read_dir(&target).map_err(|e| TreeProblem::Broken {
            entry: shown.to_path_buf(),
            why: e.to_string(),
        })?;
        let mut names: Vec<std::ffi::OsString> = entries
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        ancestors.push(target.clone());
        for name in names {
            check_entry(project, &path.join(&name), &shown.join(&name), ancestors)?;
        }
        ancestors.pop();
        return Ok(());
    }
    match not_regular(&target, &meta) {
        None => Ok(()),
        Some(what) => Err(TreeProblem::Special {
            entry: shown.to_path_buf(),
            what,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_must_stay_below() {
        for ok in ["a", "a/b.txt", "./a", "a/./b", "{name}.qcow2"] {
            assert_eq!(unsafe_relative(ok), None, "{ok}");
        }
        for bad in ["", "/abs", "../x", "a/../../x", "a/..", "a\0b"] {
            assert!(unsafe_relative(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn cell_names_stay_below_their_directory() {
        assert_eq!(unsafe_name("aws-ubuntu-2404-k8s-1.31"), None);
        assert_eq!(unsafe_name("p-a/b-k8s-1.31"), None);
        for bad in ["", "..", "../x", "/abs", "a/../../b", "a\nb", "a\0b"] {
            assert!(unsafe_name(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn shipped_trees_stay_inside_the_project() {
        let d = tempfile::tempdir().unwrap();
        let project = std::fs::canonicalize(d.path()).unwrap().join("p");
        let ship = project.join("ship");
        std::fs::create_dir_all(ship.join("sub")).unwrap();
        std::fs::write(ship.join("sub/f"), "x").unwrap();
        std::fs::write(d.path().join("outside"), "secret").unwrap();
        assert_eq!(check_tree(&project, &ship, Path::new("ship")), Ok(()));
        std::os::unix::fs::symlink("../../../outside", ship.join("sub/out")).unwrap();
        assert!(matches!(
            check_tree(&project, &ship, Path::new("ship")),
            Err(TreeProblem::Escapes { entry, .. }) if entry == Path::new("ship/sub/out")
        ));
        std::fs::remove_file(ship.join("sub/out")).unwrap();
        std::os::unix::fs::symlink("nowhere", ship.join("dangling")).unwrap();
        assert!(matches!(
            check_tree(&project, &ship, Path::new("ship")),
            Err(TreeProblem::Broken { entry, .. }) if entry == Path::new("ship/dangling")
        ));
        std::fs::remove_file(ship.join("dangling")).unwrap();
        std::os::unix::fs::symlink("..", ship.join("sub/up")).unwrap();
        assert!(matches!(
            check_tree(&project, &ship, Path::new("ship")),
            Err(TreeProblem::Loop { entry }) if entry == Path::new("ship/sub/up")
        ));
    }
}
