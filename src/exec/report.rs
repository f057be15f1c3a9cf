//! What a build did, node by node: the outcome of each node and the summary line.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use petgraph::graph::NodeIndex;

use crate::graph::Graph;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Cached,
    Built,
    /// Upstream rebuilt with identical outputs, so this node's previous result was reused.
    Cutoff,
    Failed(String),
    /// Not run because an upstream node failed.
    Skipped {
        failed_dep: String,
    },
    /// Not started: `--fail-fast` stopped the build after another node failed.
    NotStarted,
    Cancelled,
    /// A publish node not run: a remote cache is configured and this runner holds no signing
    /// key, so no other runner could learn of its publish and the next one would publish again.
    Held,
}

impl Outcome {
    /// How the build summary names it.
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Cached => "cached",
            Outcome::Built => "built",
            Outcome::Cutoff => "same",
            Outcome::Failed(_) => "failed",
            Outcome::Skipped { .. } => "skipped",
            Outcome::NotStarted => "not started",
            Outcome::Cancelled => "cancelled",
            Outcome::Held => "held",
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeReport {
    pub id: String,
    pub outcome: Outcome,
    pub attempts: u32,
    pub log: Option<PathBuf>,
    pub duration: Duration,
    /// The last lines of a failed node's log ([`TAIL_LINES`] at most), secrets redacted.
    pub tail: Vec<String>,
    /// The retries it took, each with the debug settings it ran with (see
    /// [`crate::builders::debug_settings`]).
    pub retries: Vec<String>,
}

pub use crate::process::log::TAIL_LINES;

impl NodeReport {
    /// A node that did not run (cached, or never started).
    pub fn idle(id: &str, outcome: Outcome) -> NodeReport {
        NodeReport {
            id: id.to_string(),
            outcome,
            attempts: 0,
            log: None,
            duration: Duration::ZERO,
            tail: Vec::new(),
            retries: Vec::new(),
        }
    }

    /// What the summary says after the node's id: `built in 1.2s`, `failed after 2 attempts:
    /// …`, `skipped: upstream X failed`, `not started (--fail-fast)`.
    pub fn describe(&self) -> String {
        let secs = self.duration.as_secs_f64();
        match &self.outcome {
            Outcome::Built => format!("built in {secs:.1}s"),
            Outcome::Cutoff => {
                "same: unchanged after its upstream rebuilt, its last result reused".into()
            }
            Outcome::Cached => "cached".into(),
            Outcome::Failed(e) => format!(
                "failed after {} attempt{}: {e}",
                self.attempts,
                if self.attempts == 1 { "" } else { "s" }
            ),
            Outcome::Skipped { failed_dep } => format!("skipped: upstream {failed_dep} failed"),
            Outcome::NotStarted => "not started: --fail-fast stopped the build".into(),
            Outcome::Cancelled => "cancelled: the build was interrupted".into(),
            Outcome::Held => HELD.into(),
        }
    }
}

/// Why a publish node is [`Outcome::Held`], and what to do about it.
pub const HELD: &str = "held: not published, since this runner has no signing key for the remote cache: no other runner would see the publish, and the next one would publish again; publish from a runner with --signing-key FILE or KILN_SIGNING_KEY set";

#[derive(Debug, Default)]
pub struct BuildReport {
    pub nodes: Vec<NodeReport>,
    pub cancelled: bool,
    /// The signal that cancelled the build (`SIGINT` or `SIGTERM`), when one did.
    pub signal: Option<i32>,
    /// Problems that failed no node, for the caller to show.
    pub warnings: Vec<String>,
}

impl BuildReport {
    pub fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.nodes.iter().filter(|n| f(&n.outcome)).count()
    }

    /// The exit code of a cancelled build: 128 + the signal, as a shell reports a program the
    /// signal ended (130 for Ctrl-C, 143 for `SIGTERM`).
    pub fn cancelled_exit_code(&self) -> i32 {
        128 + self.signal.unwrap_or(libc::SIGINT)
    }

    pub fn ok(&self) -> bool {
        !self.cancelled
            && self.count(|o| {
                matches!(
                    o,
                    Outcome::Failed(_)
                        | Outcome::Skipped { .. }
                        | Outcome::NotStarted
                        | Outcome::Cancelled
                )
            }) == 0
    }

    /// `kiln build --json`: the counts, whether the build was interrupted, and every node with
    /// its outcome, attempts, retries, failure and log tail.
    pub fn to_json(&self) -> serde_json::Value {
        let nodes: Vec<serde_json::Value> = self
            .nodes
            .iter()
            .map(|n| {
                let mut v = serde_json::json!({
                    "id": n.id,
                    "outcome": n.outcome.word().replace(' ', "_"),
                    "attempts": n.attempts,
                    "duration_ms": n.duration.as_millis() as u64,
                    "retries": n.retries,
                });
                match &n.outcome {
                    Outcome::Failed(e) => {
                        v["error"] = e.as_str().into();
                        v["log_tail"] = n.tail.clone().into();
                        v["log"] = n.log.as_ref().map(|p| p.display().to_string()).into();
                    }
                    Outcome::Skipped { failed_dep } => v["failed_dep"] = failed_dep.as_str().into(),
                    _ => {}
                }
                v
            })
            .collect();
        let count = |f: fn(&Outcome) -> bool| self.count(f);
        serde_json::json!({
            "summary": {
                "built": count(|o| *o == Outcome::Built),
                "cached": count(|o| *o == Outcome::Cached),
                "cutoff": count(|o| *o == Outcome::Cutoff),
                "failed": count(|o| matches!(o, Outcome::Failed(_))),
                "skipped": count(|o| matches!(o, Outcome::Skipped { .. })),
                "not_started": count(|o| *o == Outcome::NotStarted),
                "cancelled": count(|o| *o == Outcome::Cancelled),
                "held": count(|o| *o == Outcome::Held),
            },
            "interrupted": self.cancelled,
            "ok": self.ok(),
            "nodes": nodes,
        })
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} built, {} cached",
            self.count(|o| *o == Outcome::Built),
            self.count(|o| *o == Outcome::Cached)
        );
        let cutoff = self.count(|o| *o == Outcome::Cutoff);
        if cutoff > 0 {
            s.push_str(&format!(", {cutoff} unchanged after upstream rebuild"));
        }
        let failed = self.count(|o| matches!(o, Outcome::Failed(_)));
        if failed > 0 {
            s.push_str(&format!(", {failed} failed"));
        }
        let skipped = self.count(|o| matches!(o, Outcome::Skipped { .. }));
        if skipped > 0 {
            s.push_str(&format!(", {skipped} skipped"));
        }
        let not_started = self.count(|o| *o == Outcome::NotStarted);
        if not_started > 0 {
            s.push_str(&format!(", {not_started} not started"));
        }
        let cancelled = self.count(|o| *o == Outcome::Cancelled);
        if cancelled > 0 {
            s.push_str(&format!(", {cancelled} cancelled"));
        }
        let held = self.count(|o| *o == Outcome::Held);
        if held > 0 {
            s.push_str(&format!(", {held} held (no signing key)"));
        }
        if self.cancelled {
            s.push_str(", interrupted");
        }
        s
    }
}

/// The build summary for people: one line per node that was due to run, with its outcome
/// (`built`, `same`, `failed`, `skipped`, `not started`, `cancelled`), a failed node's retries
/// and the last lines of its log; then one line counting the cached nodes. Every node of the
/// build is in it, and the summary line after it counts each once.
pub fn summary_table(r: &BuildReport) -> String {
    use std::fmt::Write;
    let due: Vec<&NodeReport> = r
        .nodes
        .iter()
        .filter(|n| n.outcome != Outcome::Cached)
        .collect();
    let mut out = String::new();
    let width = due.iter().map(|n| n.id.len()).max().unwrap_or(0);
    for n in &due {
        let _ = writeln!(out, "{:width$}  {}", n.id, n.describe());
        for retry in &n.retries {
            let _ = writeln!(out, "{:width$}    {retry}", "");
        }
        if let Outcome::Failed(_) = n.outcome {
            if !n.tail.is_empty() {
                let _ = writeln!(
                    out,
                    "{:width$}    last {} of its log:",
                    "",
                    if n.tail.len() == 1 {
                        "line".to_string()
                    } else {
                        format!("{} lines", n.tail.len())
                    }
                );
                for line in &n.tail {
                    let _ = writeln!(out, "{:width$}    │ {line}", "");
                }
            }
            if let Some(log) = &n.log {
                let _ = writeln!(out, "{:width$}    log: {}", "", log.display());
            }
        }
    }
    let cached = r.count(|o| *o == Outcome::Cached);
    if cached > 0 {
        let _ = writeln!(
            out,
            "{} node{} cached, not run",
            cached,
            if cached == 1 { "" } else { "s" }
        );
    }
    out
}

/// The build summary as markdown, for a job summary: the counts, a row per node that was due to
/// run with its outcome, a row for the cached ones, and each failure's log tail in a fold.
pub fn summary_markdown(r: &BuildReport) -> String {
    use std::fmt::Write;
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let mut out = format!("## kiln build\n\n**{}**\n\n", r.summary());
    let due: Vec<&NodeReport> = r
        .nodes
        .iter()
        .filter(|n| n.outcome != Outcome::Cached)
        .collect();
    let cached = r.count(|o| *o == Outcome::Cached);
    out.push_str("| node | outcome |\n| --- | --- |\n");
    for n in &due {
        let _ = writeln!(out, "| `{}` | {} |", n.id, cell(&n.describe()));
    }
    if cached > 0 {
        let _ = writeln!(out, "| {cached} cached | not run |");
    }
    out.push('\n');
    for n in due
        .iter()
        .filter(|n| matches!(n.outcome, Outcome::Failed(_)))
    {
        let _ = writeln!(
            out,
            "<details><summary><code>{}</code>: {}</summary>\n\n```",
            n.id,
            html_code(&n.describe().replace('\n', " "))
        );
        for line in n.retries.iter().chain(&n.tail) {
            let _ = writeln!(out, "{}", line.replace("```", "'''"));
        }
        out.push_str("```\n\n</details>\n\n");
    }
    out
}

/// Markdown's `code` as HTML's `<code>code</code>`, for text inside an HTML element (a fold's
/// summary), where markdown is not rendered; `<`, `>` and `&` escaped.
fn html_code(s: &str) -> String {
    let escaped = s
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let mut out = String::with_capacity(escaped.len());
    for (i, part) in escaped.split('`').enumerate() {
        if i % 2 == 1 {
            out.push_str("<code>");
            out.push_str(part);
            out.push_str("</code>");
        } else {
            out.push_str(part);
        }
    }
    out
}

/// The message of a failed node's annotation: what failed, its retries and its log tail.
pub fn failure_message(n: &NodeReport) -> String {
    let mut msg = n.describe();
    for retry in &n.retries {
        msg.push('\n');
        msg.push_str(retry);
    }
    if !n.tail.is_empty() {
        msg.push_str("\nlast lines of its log:");
        for line in &n.tail {
            msg.push('\n');
            msg.push_str(line);
        }
    }
    msg
}

pub(super) fn report_failed(r: &BuildReport) -> HashSet<String> {
    r.nodes
        .iter()
        .filter(|n| matches!(n.outcome, Outcome::Failed(_) | Outcome::Skipped { .. }))
        .map(|n| n.id.clone())
        .collect()
}

pub(super) fn first_failed_ancestor(
    graph: &Graph,
    ix: NodeIndex,
    failed: &HashSet<String>,
) -> Option<String> {
    for d in graph.deps(ix) {
        let id = &graph.node(d).id;
        if failed.contains(id) {
            return Some(id.clone());
        }
        if let Some(x) = first_failed_ancestor(graph, d, failed) {
            return Some(x);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn code_in_a_fold_summary_is_html() {
        assert_eq!(
            super::html_code("`sh` exited <3 & `x"),
            "<code>sh</code> exited &lt;3 &amp; <code>x</code>"
        );
    }
}
