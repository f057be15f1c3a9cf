//! `images.lock`, read and rewritten as text: an update replaces the values it changes in
//! place, so comments, order, spacing and the other series stay exactly as written. Pure but for
//! [`write_atomic`].
//!
//! ```kdl
//! // Resolved versions of tracked Kubernetes series.
//! kubernetes "1.32" version="1.32.5" revision="1.1" source="https://dl.k8s.io/release/stable-1.32.txt" revision-source="https://pkgs.k8s.io/core:/stable:/v1.32/deb/Packages"
//! ```

use std::path::Path;

use kdl::{KdlDocument, KdlNode, KdlValue};

/// The header of a lock file kiln creates.
pub const HEADER: &str =
    "// Resolved versions of tracked Kubernetes series, maintained by `kiln update`.\n";

/// The values an update writes for a series, in the order of a new line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockLine {
    pub series: String,
    pub version: String,
    pub revision: String,
    /// Where the version came from (a URL).
    pub source: String,
    /// Where the revision came from (a URL).
    pub revision_source: String,
}

impl LockLine {
    fn properties(&self) -> [(&'static str, &str); 4] {
        [
            ("version", &self.version),
            ("revision", &self.revision),
            ("source", &self.source),
            ("revision-source", &self.revision_source),
        ]
    }
}

/// A series as a lock file records it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    pub series: String,
    pub version: String,
    pub revision: Option<String>,
    pub source: Option<String>,
    pub revision_source: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("it is not valid KDL: {0}")]
    Syntax(String),
    #[error("cannot write it: {0}")]
    Io(#[from] std::io::Error),
}

fn string_prop(node: &KdlNode, key: &str) -> Option<String> {
    node.entry(key)
        .and_then(|e| e.value().as_string())
        .map(str::to_string)
}

fn series_of(node: &KdlNode) -> Option<&str> {
    if node.name().value() != "kubernetes" {
        return None;
    }
    node.entries()
        .iter()
        .find(|e| e.name().is_none())
        .and_then(|e| e.value().as_string())
}

fn parse(text: &str) -> Result<KdlDocument, LockError> {
    KdlDocument::parse_v2(text).map_err(|e| {
        LockError::Syntax(
            e.diagnostics
                .first()
                .and_then(|d| d.message.clone())
                .unwrap_or_else(|| "invalid KDL".into()),
        )
    })
}

/// The series a lock file records, in file order (`kiln check` validates them further).
pub fn entries(text: &str) -> Result<Vec<Entry>, LockError> {
    Ok(parse(text)?
        .nodes()
        .iter()
        .filter_map(|node| {
            Some(Entry {
                series: series_of(node)?.to_string(),
                version: string_prop(node, "version")?,
                revision: string_prop(node, "revision"),
                source: string_prop(node, "source"),
                revision_source: string_prop(node, "revision-source"),
            })
        })
        .collect())
}

/// A KDL string literal of `s`.
fn quoted(s: &str) -> String {
    KdlValue::String(s.to_string()).to_string()
}

/// `text` with every line of `lines` written: the values of a series already there replaced
/// in place (missing ones added at the end of its line), a new series appended as a line.
pub fn rewrite(text: &str, lines: &[LockLine]) -> Result<String, LockError> {
    let doc = parse(text)?;
    // (start, end, replacement), applied from the end so offsets stay valid.
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut appended = String::new();
    for line in lines {
        let node = doc
            .nodes()
            .iter()
            .find(|n| series_of(n) == Some(line.series.as_str()));
        let Some(node) = node else {
            appended.push_str(&format!("kubernetes {}", quoted(&line.series)));
            for (k, v) in line.properties() {
                appended.push_str(&format!(" {k}={}", quoted(v)));
            }
            appended.push('\n');
            continue;
        };
        let mut end_of_entries = node
            .entries()
            .iter()
            .map(|e| e.span().offset() + e.span().len())
            .max()
            .unwrap_or(node.span().offset());
        // An entry's span starts at the whitespace before it.
        end_of_entries = text[..end_of_entries].trim_end().len();
        let mut tail = String::new();
        for (k, v) in line.properties() {
            let new = format!("{k}={}", quoted(v));
            match node
                .entries()
                .iter()
                .find(|e| e.name().map(|n| n.value()) == Some(k))
            {
                Some(e) => {
                    let (start, len) = (e.span().offset(), e.span().len());
                    let raw = &text[start..start + len];
                    let lead = raw.len() - raw.trim_start().len();
                    let trail = raw.len() - raw.trim_end().len();
                    edits.push((start + lead, start + len - trail, new));
                }
                None => tail.push_str(&format!(" {new}")),
            }
        }
        if !tail.is_empty() {
            edits.push((end_of_entries, end_of_entries, tail));
        }
    }
    edits.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    let mut out = text.to_string();
    for (start, end, new) in edits {
        out.replace_range(start..end, &new);
    }
    if !appended.is_empty() {
        if out.trim().is_empty() {
            out = HEADER.to_string();
        } else if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&appended);
    }
    // What was written reads back as written.
    let back = entries(&out)?;
    debug_assert!(
        lines
            .iter()
            .all(|l| back.iter().any(|e| e.series == l.series
                && e.version == l.version
                && e.revision.as_deref() == Some(l.revision.as_str())))
    );
    Ok(out)
}

/// Replaces `path` with `text` atomically: a temp file in the same directory, synced, renamed
/// over it, and the directory synced. A reader sees the old file or the new one, never a part.
pub fn write_atomic(path: &Path, text: &str) -> Result<(), LockError> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".images.lock.")
        .tempfile_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    if let Ok(meta) = std::fs::metadata(path) {
        tmp.as_file().set_permissions(meta.permissions())?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(series: &str, version: &str) -> LockLine {
        LockLine {
            series: series.into(),
            version: version.into(),
            revision: "1.1".into(),
            source: format!("https://dl.k8s.io/release/stable-{series}.txt"),
            revision_source: format!("https://pkgs.k8s.io/core:/stable:/v{series}/deb/Packages"),
        }
    }

    #[test]
    fn values_are_replaced_in_place_keeping_comments_and_order() {
        let text = "// top comment\n\
                    kubernetes \"1.32\"   version=\"1.32.4\" // why this is tracked\n\
                    /* a block */\n\
                    kubernetes \"1.31\" version=\"1.31.2\" revision=\"1.1\"\n";
        let out = rewrite(text, &[line("1.32", "1.32.5")]).unwrap();
        assert_eq!(
            out,
            "// top comment\n\
             kubernetes \"1.32\"   version=\"1.32.5\" revision=\"1.1\" source=\"https://dl.k8s.io/release/stable-1.32.txt\" revision-source=\"https://pkgs.k8s.io/core:/stable:/v1.32/deb/Packages\" // why this is tracked\n\
             /* a block */\n\
             kubernetes \"1.31\" version=\"1.31.2\" revision=\"1.1\"\n"
        );
        // Again: the same values replace themselves, nothing moves.
        let again = rewrite(&out, &[line("1.32", "1.32.5")]).unwrap();
        assert_eq!(again, out);
        let next = rewrite(&out, &[line("1.32", "1.32.6"), line("1.31", "1.31.3")]).unwrap();
        let e = entries(&next).unwrap();
        assert_eq!(e[0].series, "1.32");
        assert_eq!(e[0].version, "1.32.6");
        assert_eq!(e[1].version, "1.31.3");
        assert!(next.starts_with("// top comment\n"));
        assert!(next.contains("// why this is tracked\n/* a block */\n"));
    }

    #[test]
    fn a_new_series_is_appended_and_an_empty_file_gets_a_header() {
        let out = rewrite(
            "kubernetes \"1.32\" version=\"1.32.4\"",
            &[line("1.33", "1.33.1")],
        )
        .unwrap();
        assert_eq!(
            out.lines().nth(1).unwrap(),
            "kubernetes \"1.33\" version=\"1.33.1\" revision=\"1.1\" source=\"https://dl.k8s.io/release/stable-1.33.txt\" revision-source=\"https://pkgs.k8s.io/core:/stable:/v1.33/deb/Packages\""
        );
        let fresh = rewrite("", &[line("1.33", "1.33.1")]).unwrap();
        assert!(fresh.starts_with(HEADER));
        assert_eq!(entries(&fresh).unwrap()[0].version, "1.33.1");
    }

    #[test]
    fn odd_values_are_quoted_as_kdl() {
        let mut l = line("1.32", "1.32.5");
        l.source = "http://127.0.0.1:1/a \"b\"\\c".into();
        let out = rewrite("", &[l]).unwrap();
        assert_eq!(
            entries(&out).unwrap()[0].source.as_deref(),
            Some("http://127.0.0.1:1/a \"b\"\\c")
        );
    }

    #[test]
    fn an_atomic_write_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.lock");
        std::fs::write(&path, "old").unwrap();
        write_atomic(&path, "new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temp file is left behind");
    }
}
