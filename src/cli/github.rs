//! GitHub Actions: with `GITHUB_ACTIONS=true`, failures become `::error` annotations on the
//! run's page, and the markdown plan or build summary is appended to `$GITHUB_STEP_SUMMARY`.
//! <https://docs.github.com/actions/using-workflows/workflow-commands-for-github-actions>

use std::io::Write;
use std::path::PathBuf;

/// Where the workflow commands go, when kiln runs as a step of a GitHub Actions job.
pub struct GitHub {
    /// `$GITHUB_STEP_SUMMARY`: the job summary file markdown is appended to.
    summary: Option<PathBuf>,
}

impl GitHub {
    /// `Some` when `GITHUB_ACTIONS` is `true`, as on every GitHub-hosted or self-hosted runner.
    pub fn from_env() -> Option<GitHub> {
        if std::env::var_os("GITHUB_ACTIONS").is_none_or(|v| v != "true") {
            return None;
        }
        Some(GitHub {
            summary: std::env::var_os("GITHUB_STEP_SUMMARY")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        })
    }

    /// Prints an error annotation titled `title` (a node id) to stdout, where the runner reads
    /// workflow commands, or to stderr (which it reads too) when stdout holds JSON.
    pub fn error(&self, title: &str, message: &str, to_stderr: bool) {
        let line = error_command(title, message);
        if to_stderr {
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        } else {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }
    }

    /// Appends markdown to the job summary; a failure is a warning (the build's outcome does not
    /// depend on it).
    pub fn append_summary(&self, markdown: &str) {
        let Some(path) = &self.summary else { return };
        let r = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(markdown.as_bytes()));
        if let Err(e) = r {
            eprintln!(
                "warning: cannot append to the job summary $GITHUB_STEP_SUMMARY ({}): {e}",
                path.display()
            );
        }
    }
}

/// `::error title=TITLE::MESSAGE`, with the escapes GitHub's runner undoes: `%`, CR and LF in
/// the message; those and `:` and `,` in a property.
pub fn error_command(title: &str, message: &str) -> String {
    format!(
        "::error title={}::{}\n",
        escape_property(title),
        escape_data(message.trim_end_matches('\n'))
    )
}

fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_escape_what_the_runner_would_read_as_syntax() {
        assert_eq!(
            error_command("a/b:c,d", "50% done\nboom: disk full\n"),
            "::error title=a/b%3Ac%2Cd::50%25 done%0Aboom: disk full\n"
        );
    }
}
