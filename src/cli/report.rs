//! Errors as the binary reports them: diagnostics rendered by miette, and exit codes.

use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme};

use crate::config::Diags;
use crate::config::excerpt::View;

#[derive(Debug)]
pub enum CliError {
    /// The config is wrong: exit 1.
    Config(Diags),
    /// The command line is wrong: exit 2.
    Usage(String),
    /// Anything else that failed: exit 1.
    Failed(String),
    /// The command ran and wants this exit code (e.g. --detailed-exitcode).
    Exit(i32),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Config(_) | CliError::Failed(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Exit(code) => *code,
        }
    }

    /// The same error, exiting 1 whatever its kind: under `--detailed-exitcode`, 2 means
    /// "changes" and every error is 1.
    pub fn as_failure(self) -> CliError {
        match self {
            CliError::Usage(m) => CliError::Failed(m),
            e => e,
        }
    }

    /// The error as JSON objects `{code, message, file, line, column, help}`, one per
    /// diagnostic (a config error may have several; warnings are left out). `file`, `line`
    /// and `column` (1-based) are those of the diagnostic's first label, `null` without one.
    pub fn to_json(&self) -> Vec<serde_json::Value> {
        match self {
            CliError::Config(diags) => diags
                .0
                .iter()
                .filter(|d| d.is_error())
                .map(|d| diagnostic_json(d))
                .collect(),
            CliError::Usage(m) => vec![plain_json("usage", m)],
            CliError::Failed(m) => vec![plain_json("failed", m)],
            CliError::Exit(_) => Vec::new(),
        }
    }

    /// Prints [`CliError::to_json`] to stdout, one object a line: with `--json`, stdout is for
    /// machines whether the command succeeded or not.
    pub fn report_json(&self) {
        for v in self.to_json() {
            println!("{v}");
        }
    }

    pub fn report(&self) {
        match self {
            CliError::Config(diags) => print_diags(diags),
            CliError::Usage(m) => eprintln!("error: {m}"),
            CliError::Failed(m) => eprintln!("error: {m}"),
            CliError::Exit(_) => {}
        }
    }
}

pub fn plain_json(code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({
        "code": code,
        "message": message,
        "file": null,
        "line": null,
        "column": null,
        "help": null,
    })
}

/// A diagnostic as JSON, through miette's `Diagnostic` view of it: where its first label is.
pub fn diagnostic_json(d: &dyn Diagnostic) -> serde_json::Value {
    let at = d.source_code().and_then(|src| {
        let label = d.labels()?.next()?;
        let span = src.read_span(label.inner(), 0, 0).ok()?;
        Some((
            span.name().map(str::to_string),
            span.line() + 1,
            span.column() + 1,
        ))
    });
    let (file, line, column) = match at {
        Some((file, line, column)) => (file, Some(line), Some(column)),
        None => (None, None, None),
    };
    serde_json::json!({
        "code": d.code().map(|c| c.to_string()),
        "message": d.to_string(),
        "file": file,
        "line": line,
        "column": column,
        "help": d.help().map(|h| h.to_string()),
    })
}

fn handler() -> GraphicalReportHandler {
    let theme = if super::settings::colors().stderr {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    GraphicalReportHandler::new_themed(theme)
        .with_width(100)
        .with_links(false)
}

/// At most this many diagnostics are rendered; the rest are counted.
pub const MAX_DIAGS: usize = 50;

/// Renders diagnostics (errors and warnings) to stderr: at most [`MAX_DIAGS`], errors first,
/// each showing only the lines it points at.
pub fn print_diags(diags: &Diags) {
    let h = handler();
    let mut shown: Vec<&crate::config::Diag> = diags.0.iter().filter(|d| d.is_error()).collect();
    shown.extend(diags.0.iter().filter(|d| !d.is_error()));
    let total = shown.len();
    for d in shown.into_iter().take(MAX_DIAGS) {
        let mut out = String::new();
        if h.render_report(&mut out, &View::of(d)).is_ok() {
            eprintln!("{out}");
        }
    }
    if total > MAX_DIAGS {
        eprintln!("… and {} more", total - MAX_DIAGS);
    }
    let n = diags.errors();
    if n > 0 {
        eprintln!(
            "error: the config has {n} error{}",
            if n == 1 { "" } else { "s" }
        );
    }
}
