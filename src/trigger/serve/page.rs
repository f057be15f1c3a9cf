//! The status page at `GET /`: server-rendered HTML (no script) of the queue, the recent builds
//! with each node's outcome and duration, and the image catalog per cell as `kiln images` has
//! it. It reloads itself every 15 seconds.

use std::collections::BTreeMap;

use maud::{DOCTYPE, Markup, html};

use super::queue::{BuildView, State};

/// One cell of the image catalog (see `kiln images`).
#[derive(Debug, Clone)]
pub struct CatalogRow {
    pub cell: String,
    /// The cell's publish node, if its module has one.
    pub node: Option<String>,
    /// What `kiln images` says of it: `current (verified …)`, `NOT CURRENT: …`, `not published`.
    pub state: String,
    pub current: bool,
    /// The latest refresh found the published image changed or gone.
    pub drift: bool,
    pub facts: BTreeMap<String, String>,
}

pub struct Status<'a> {
    pub queue: &'a [BuildView],
    pub recent: &'a [BuildView],
    /// The catalog, or why it could not be read (a config error, say).
    pub catalog: &'a Result<Vec<CatalogRow>, String>,
    pub config: &'a str,
}

fn time(ms: Option<u64>) -> String {
    ms.map(|ms| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string()
    })
    .unwrap_or_else(|| "—".into())
}

fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

fn what(b: &BuildView) -> String {
    let r = &b.request;
    let version = r["version"].as_str().unwrap_or("?");
    let mut s = format!("kubernetes {version}");
    if let Some(p) = r["provider"].as_str() {
        s.push_str(&format!(", provider {p}"));
    }
    if let Some(change) = r["lock"].as_str() {
        s.push_str(&format!(" (lock {change})"));
    }
    s
}

fn queue_table(builds: &[BuildView]) -> Markup {
    html! {
        @if builds.is_empty() {
            p.empty { "Nothing queued or running." }
        } @else {
            table {
                thead { tr { th { "build" } th { "state" } th { "request" } th { "cells" } th { "queued at" } th { "started at" } } }
                tbody {
                    @for b in builds {
                        tr.build data-id=(b.id) data-state=(b.state.as_str()) {
                            td { a href={ "/v1/builds/" (b.id) } { "#" (b.id) } }
                            td.state { (b.state.as_str()) }
                            td { (what(b)) }
                            td { (b.cells.join(", ")) }
                            td { (time(Some(b.created_unix_ms))) }
                            td { (time(b.started_unix_ms)) }
                        }
                    }
                }
            }
        }
    }
}

fn build_details(b: &BuildView) -> Markup {
    let duration = match (b.started_unix_ms, b.finished_unix_ms) {
        (Some(s), Some(f)) => seconds(f.saturating_sub(s)),
        _ => "—".into(),
    };
    html! {
        section.build id={ "build-" (b.id) } data-id=(b.id) data-state=(b.state.as_str()) {
            h3 {
                a href={ "/v1/builds/" (b.id) } { "#" (b.id) } " "
                span.state { (b.state.as_str()) } " · " (what(b)) " · " (duration)
            }
            p {
                (b.summary.as_deref().unwrap_or("")) " · finished " (time(b.finished_unix_ms))
                @if b.requests > 1 { " · " (b.requests) " requests" }
                @if b.attempts > 1 { " · resumed, " (b.attempts) " attempts" }
            }
            @if let Some(e) = &b.error { p.error { (e) } }
            @if !b.nodes.is_empty() {
                table.nodes {
                    thead { tr { th { "node" } th { "outcome" } th { "duration" } th { "attempts" } } }
                    tbody {
                        @for n in &b.nodes {
                            tr.node data-outcome=(n.outcome) {
                                td.id { (n.id) }
                                td.outcome { (n.outcome) @if let Some(e) = &n.error { ": " (e) } }
                                td.duration { (seconds(n.duration_ms)) }
                                td { (n.attempts) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn catalog(rows: &Result<Vec<CatalogRow>, String>) -> Markup {
    html! {
        @match rows {
            Err(e) => p.error { "The catalog cannot be read: " (e) },
            Ok(rows) => table #catalog-table {
                thead { tr { th { "cell" } th { "publish node" } th { "state" } th { "published" } } }
                tbody {
                    @for r in rows {
                        tr.cell.drift[r.drift] data-cell=(r.cell) data-current=(r.current) data-drift=(r.drift) {
                            td.name { (r.cell) }
                            td { (r.node.as_deref().unwrap_or("(no publish step)")) }
                            td.state { @if r.drift { strong { "drift: " } } (r.state) }
                            td.facts {
                                @if !r.facts.is_empty() {
                                    dl { @for (k, v) in &r.facts { dt { (k) } dd { (v) } } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub fn render(s: &Status) -> String {
    let finished: Vec<&BuildView> = s
        .recent
        .iter()
        .filter(|b| matches!(b.state, State::Succeeded | State::Failed))
        .collect();
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content="15";
                title { "kiln · builds" }
                style { (STYLE) }
            }
            body {
                h1 { "kiln" }
                p.config { "config " code { (s.config) } }
                section #queue {
                    h2 { "Queue" }
                    (queue_table(s.queue))
                }
                section #builds {
                    h2 { "Recent builds" }
                    @if finished.is_empty() { p.empty { "No build has finished yet." } }
                    @for b in &finished { (build_details(b)) }
                }
                section #catalog {
                    h2 { "Images" }
                    (catalog(s.catalog))
                }
            }
        }
    };
    page.into_string()
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:80em}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left;vertical-align:top}\
[data-state=failed] .state,[data-outcome=failed] .outcome,.error,.drift .state{color:#b00}\
[data-state=succeeded] .state{color:#070}dl{margin:0}dt{font-weight:bold}dd{margin:0 0 .3em 1em;font-family:monospace}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_it_shows() {
        let b = BuildView {
            id: 1,
            state: State::Failed,
            cells: vec!["<cell>".into()],
            request: serde_json::json!({"version": "1.31.4", "provider": "<script>"}),
            requests: 1,
            created_unix_ms: 0,
            started_unix_ms: Some(0),
            finished_unix_ms: Some(1500),
            attempts: 1,
            summary: Some("0 built".into()),
            error: Some("a & b".into()),
            nodes: Vec::new(),
        };
        let html = render(&Status {
            queue: &[],
            recent: &[b],
            catalog: &Ok(Vec::new()),
            config: "images.kdl",
        });
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains("&lt;script&gt;") && html.contains("a &amp; b"),
            "{html}"
        );
    }
}
