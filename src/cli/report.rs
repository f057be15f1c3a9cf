//! Errors as the binary reports them: diagnostics rendered by miette, and exit codes.

use miette::{GraphicalReportHandler, GraphicalTheme};

use crate::config::Diags;

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

    pub fn report(&self) {
        match self {
            CliError::Config(diags) => print_diags(diags),
            CliError::Usage(m) => eprintln!("error: {m}"),
            CliError::Failed(m) => eprintln!("error: {m}"),
            CliError::Exit(_) => {}
        }
    }
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

/// Renders diagnostics (errors and warnings) to stderr.
pub fn print_diags(diags: &Diags) {
    let h = handler();
    for d in &diags.0 {
        let mut out = String::new();
        if h.render_report(&mut out, d).is_ok() {
            eprintln!("{out}");
        }
    }
    let n = diags.errors();
    if n > 0 {
        eprintln!(
            "error: the config has {n} error{}",
            if n == 1 { "" } else { "s" }
        );
    }
}
