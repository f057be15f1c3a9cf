//! `images.kdl` → typed [`Config`]: KDL parsing, imports, the lock file, and diagnostics.

pub mod cells;
pub mod diag;
pub mod excerpt;
pub mod files;
mod kdl;
pub mod limits;
mod load;
pub mod model;
mod parse;
pub mod source;
pub mod step;

pub use diag::{Diag, Diags};
pub use load::{LOCK_FILE, LoadOptions, load, load_with, root_of};
pub use model::*;
pub use source::{Loc, SourceMap, Spanned};
pub use step::{BuilderKind, StepKind};
