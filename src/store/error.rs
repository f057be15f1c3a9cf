//! Errors returned by the store, and warnings about corrupt entries it stepped around.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A store operation that could not be completed.
///
/// A cache miss is never an error: lookups return `Ok(None)`. Corrupt entries met while reading
/// are treated as misses and reported as [`StoreWarning`]s instead.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "another kiln holds the cache: {holder} holding {}; wait for it to finish, or run again without --no-wait to queue behind it",
        path.display()
    )]
    Locked { holder: String, path: PathBuf },

    #[error(
        "corrupt cache entry {}: {what}; run `kiln cache verify --repair` to remove it",
        path.display()
    )]
    Corrupt { path: PathBuf, what: String },

    #[error(
        "{} changed while it was being stored in the cache; make sure nothing is still writing it and retry",
        path.display()
    )]
    SourceChanged { path: PathBuf },

    #[error("{url}: cannot {op} {path}: {source}")]
    Remote {
        url: String,
        op: &'static str,
        path: String,
        #[source]
        source: Box<object_store::Error>,
    },

    #[error(
        "{url}: this runner holds no signing key, so it writes nothing there; pass --signing-key FILE or set KILN_SIGNING_KEY"
    )]
    ReadOnly { url: String },

    #[error("cannot encode {what} for the cache: {source}")]
    Encode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.to_path_buf();
        move |source| StoreError::Io { op, path, source }
    }
}

/// Which kind of entry a warning or a verify problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A content-addressed blob under `cas/`.
    Blob,
    /// An action cache entry under `ac/`.
    Action,
    /// `claims`, the latest refresh of every publish claim.
    Claims,
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryKind::Blob => "blob",
            EntryKind::Action => "action cache entry",
            EntryKind::Claims => "refresh state",
        })
    }
}

/// A corrupt entry found while reading: it was treated as missing and taken out of the way, so
/// the next build redoes it. Collect these with [`super::LocalStore::take_warnings`] and show them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreWarning {
    pub kind: EntryKind,
    /// Where the entry was.
    pub path: PathBuf,
    /// What was wrong with it.
    pub problem: String,
    /// Where it was moved for inspection (under `tmp/`, cleaned by gc); `None` if it was deleted.
    pub moved_to: Option<PathBuf>,
}

impl fmt::Display for StoreWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "corrupt {} {}: {}; treated as missing",
            self.kind,
            self.path.display(),
            self.problem
        )?;
        match &self.moved_to {
            Some(to) => write!(f, " and moved to {}", to.display()),
            None => write!(f, " and deleted"),
        }
    }
}
