//! kiln: builds Cluster API machine images from a declarative matrix, the way Nix builds packages.

// Output that cannot panic: these shadow the standard macros in every module below (see
// `output`).
macro_rules! println {
    () => { $crate::output::write_line($crate::output::Stream::Stdout, format_args!("")) };
    ($($arg:tt)*) => {
        $crate::output::write_line($crate::output::Stream::Stdout, format_args!($($arg)*))
    };
}
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::output::write($crate::output::Stream::Stdout, format_args!($($arg)*))
    };
}
macro_rules! eprintln {
    () => { $crate::output::write_line($crate::output::Stream::Stderr, format_args!("")) };
    ($($arg:tt)*) => {
        $crate::output::write_line($crate::output::Stream::Stderr, format_args!($($arg)*))
    };
}
macro_rules! eprint {
    ($($arg:tt)*) => {
        $crate::output::write($crate::output::Stream::Stderr, format_args!($($arg)*))
    };
}

pub mod output;

pub mod builders;
pub mod cli;
pub mod config;
pub mod exec;
pub mod export;
pub mod graph;
pub mod hash;
pub mod imagebuilder;
pub mod matrix;
pub mod plan;
pub mod process;
pub mod redact;
pub mod secrets;
pub mod statcache;
pub mod store;
pub mod template;
pub mod trigger;
