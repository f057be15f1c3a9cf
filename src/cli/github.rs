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
        let stream = if to_stderr {
            crate::output::Stream::Stderr
        } else {
            crate::output::Stream::Stdout
        };
        crate::output::write_bytes(stream, line.as_bytes());
    }

    /// An error of kiln itself (not of a node) as an annotation, on stderr: see
    /// [`cli_error_command`].
    pub fn cli_error(&self, error: &serde_json::Value) {
        let line = cli_error_command(error);
        crate::output::write_bytes(crate::output::Stream::Stderr, line.as_bytes());
    }

    /// Appends markdown to the job summary; a failure is a warning (the build's outcome does not
    /// depend on it).
    pub fn append_summary(&self, markdown: &str) {
        let Some(path) = &self.summary else { return };
        let markdown = fit_summary(markdown, SUMMARY_LIMIT);
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

/// GitHub takes at most 1 MiB of job summary from one step; what is larger is not shown at all.
const SUMMARY_LIMIT: usize = 1024 * 1024;

/// The markdown, cut at a line so that it stays within `limit` bytes with a closing note
/// saying so (an open code block or fold is closed first).
pub fn fit_summary(markdown: &str, limit: usize) -> std::borrow::Cow<'_, str> {
    if markdown.len() <= limit {
        return markdown.into();
    }
    const FENCE: &str = "```\n";
    const FOLD: &str = "\n</details>\n";
    const CUT: &str = "\n**The rest is cut: a job summary holds at most 1 MiB; run the same kiln command with `--format markdown` or `--json` for all of it.**\n";
    let room = limit.saturating_sub(FENCE.len() + FOLD.len() + CUT.len());
    // A newline is one byte of its own: the last one within `room` is a place to cut.
    let cut = markdown.as_bytes()[..room.min(markdown.len())]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let kept = &markdown[..cut];
    let open_fence = kept.matches("```").count() % 2 == 1;
    let open_fold = kept.matches("<details>").count() > kept.matches("</details>").count();
    let mut out = kept.to_string();
    if open_fence {
        out.push_str(FENCE);
    }
    if open_fold {
        out.push_str(FOLD);
    }
    out.push_str(CUT);
    out.into()
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

/// An error of [`super::CliError::to_json`] as `::error file=F,line=L,col=C,title=CODE::…`: a
/// config diagnostic at its file, line and column, its help after the message; anything else
/// without a position, titled with its code.
pub fn cli_error_command(error: &serde_json::Value) -> String {
    let text = |k: &str| error[k].as_str().map(str::to_string);
    let mut props = Vec::new();
    if let Some(file) = text("file") {
        props.push(format!("file={}", escape_property(&file)));
        for (k, name) in [("line", "line"), ("column", "col")] {
            if let Some(n) = error[k].as_u64() {
                props.push(format!("{name}={n}"));
            }
        }
    }
    let title = text("code").unwrap_or_else(|| "kiln".into());
    props.push(format!("title={}", escape_property(&title)));
    let mut message = text("message").unwrap_or_default();
    if let Some(help) = text("help") {
        message.push_str("\nhelp: ");
        message.push_str(&help);
    }
    format!("::error {}::{}\n", props.join(","), escape_data(&message))
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
    fn a_config_error_is_annotated_at_its_position() {
        let e = serde_json::json!({"code": "kiln::config::unknown", "message": "unknown property",
            "file": "images.kdl", "line": 3, "column": 7, "help": "did you mean `to`?"});
        assert_eq!(
            cli_error_command(&e),
            "::error file=images.kdl,line=3,col=7,title=kiln%3A%3Aconfig%3A%3Aunknown::unknown property%0Ahelp: did you mean `to`?\n"
        );
        let e = serde_json::json!({"code": "usage", "message": "no such cell", "file": null,
            "line": null, "column": null, "help": null});
        assert_eq!(cli_error_command(&e), "::error title=usage::no such cell\n");
    }

    #[test]
    fn a_summary_too_large_is_cut_at_a_line_with_its_fences_closed() {
        let md = "## kiln plan\n\n<details><summary>x</summary>\n\n```diff\n".to_string()
            + &"+ a node line\n".repeat(1000);
        assert_eq!(fit_summary(&md, md.len()), md);
        let cut = fit_summary(&md, 2000);
        assert!(cut.len() <= 2000, "{}", cut.len());
        assert!(
            cut.contains("+ a node line\n```\n\n</details>\n\n**The rest is cut"),
            "{cut}"
        );
        assert_eq!(cut.matches("```").count() % 2, 0);
    }

    #[test]
    fn annotations_escape_what_the_runner_would_read_as_syntax() {
        assert_eq!(
            error_command("a/b:c,d", "50% done\nboom: disk full\n"),
            "::error title=a/b%3Ac%2Cd::50%25 done%0Aboom: disk full\n"
        );
    }
}
