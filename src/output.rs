//! Writing to stdout and stderr without ever panicking. A write that fails (a full disk, a
//! closed pipe) is remembered, later writes to that stream are dropped, and the work goes on: a
//! build still records every node. [`finish`] turns what happened into the exit code.
//!
//! The crate's `println!`, `print!`, `eprintln!` and `eprint!` (defined in `lib.rs`) shadow the
//! standard ones and write through here, so no output line anywhere in kiln can panic.

use std::fmt;
use std::io::{self, Write};
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn failure(self) -> &'static OnceLock<(io::ErrorKind, String)> {
        static OUT: OnceLock<(io::ErrorKind, String)> = OnceLock::new();
        static ERR: OnceLock<(io::ErrorKind, String)> = OnceLock::new();
        match self {
            Stream::Stdout => &OUT,
            Stream::Stderr => &ERR,
        }
    }
}

/// The exit code when stdout or stderr could not be written (sysexits' `EX_IOERR`).
pub const EXIT_IO_ERROR: i32 = 74;

/// The exit code when a reader closed the pipe: what a program killed by `SIGPIPE` reports.
pub const EXIT_BROKEN_PIPE: i32 = 128 + 13;

fn record(stream: Stream, result: io::Result<()>) {
    if let Err(e) = result {
        let _ = stream.failure().set((e.kind(), e.to_string()));
    }
}

fn with_stream(stream: Stream, f: impl FnOnce(&mut dyn Write) -> io::Result<()>) {
    if stream.failure().get().is_some() {
        return;
    }
    let result = match stream {
        Stream::Stdout => f(&mut io::stdout().lock()),
        Stream::Stderr => f(&mut io::stderr().lock()),
    };
    record(stream, result);
}

/// Writes formatted text.
pub fn write(stream: Stream, args: fmt::Arguments<'_>) {
    with_stream(stream, |w| w.write_fmt(args));
}

/// Writes formatted text and a newline.
pub fn write_line(stream: Stream, args: fmt::Arguments<'_>) {
    with_stream(stream, |w| {
        w.write_fmt(args)?;
        w.write_all(b"\n")
    });
}

/// Writes bytes and flushes them.
pub fn write_bytes(stream: Stream, bytes: &[u8]) {
    with_stream(stream, |w| {
        w.write_all(bytes)?;
        w.flush()
    });
}

/// The first write error of a stream.
pub fn failure(stream: Stream) -> Option<io::ErrorKind> {
    stream.failure().get().map(|(k, _)| *k)
}

/// Flushes stdout and gives the exit code: `code` when the command itself failed; else
/// [`EXIT_BROKEN_PIPE`] (quietly) when a reader closed stdout or stderr, [`EXIT_IO_ERROR`] (said
/// on stderr when it can be) when another write failed, and 0 when everything was written.
pub fn finish(code: i32) -> i32 {
    with_stream(Stream::Stdout, |w| w.flush());
    if code != 0 {
        return code;
    }
    let failures = [Stream::Stdout, Stream::Stderr]
        .map(|s| s.failure().get().map(|(kind, msg)| (s, *kind, msg.clone())));
    if failures
        .iter()
        .flatten()
        .any(|(_, kind, _)| *kind == io::ErrorKind::BrokenPipe)
    {
        return EXIT_BROKEN_PIPE;
    }
    match failures.into_iter().flatten().next() {
        Some((stream, _, msg)) => {
            write_line(
                Stream::Stderr,
                format_args!("error: cannot write to {}: {msg}", stream.name()),
            );
            EXIT_IO_ERROR
        }
        None => 0,
    }
}
