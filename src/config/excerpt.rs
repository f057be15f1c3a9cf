//! What a diagnostic shows of its source: only the lines its labels are on (and one line of
//! context around them), each long line clipped to a window around its labels. The renderer then
//! never sees a huge line or column, and rendering costs what it prints, not the file's size.

use std::fmt;

use miette::{
    Diagnostic, LabeledSpan, MietteError, MietteSpanContents, Severity, SourceCode, SourceSpan,
    SpanContents,
};

use super::diag::Diag;

/// Lines longer than this (in characters) are clipped.
pub const MAX_LINE_CHARS: usize = 160;

/// How many characters of a clipped line are kept before its first label.
const LEAD_CHARS: usize = 40;

/// A label spanning more lines than this is shortened to its first line.
const MAX_LABEL_LINES: usize = 12;

/// Lines of context around a label (miette's default).
const CONTEXT_LINES: usize = 1;

/// Messages, labels and help longer than this (in characters) are clipped.
const MAX_TEXT_CHARS: usize = 1000;

const ELLIPSIS: &str = "…";

/// One line of the excerpt.
#[derive(Debug, Clone)]
struct Line {
    /// 0-based line number in the file.
    number: usize,
    /// Byte offset of the line's start in the file.
    file_start: usize,
    /// The kept part of the line, in bytes relative to its start in the file.
    kept: (usize, usize),
    /// Byte offset of the line in the excerpt.
    start: usize,
    /// Length in the excerpt, newline excluded.
    len: usize,
    /// Bytes of the leading ellipsis (0 when the line is not clipped at its start).
    prefix: usize,
}

/// The lines of one file that a diagnostic shows; a [`SourceCode`] in its own coordinates.
#[derive(Debug)]
pub struct Excerpt {
    name: String,
    text: String,
    lines: Vec<Line>,
}

/// The byte range of the line holding `offset` (newline excluded).
fn line_at(text: &str, offset: usize) -> (usize, usize) {
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    (start, end)
}

fn floor_boundary(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The byte offset `chars` characters after `from` in `line` (or its end).
fn advance(line: &str, from: usize, chars: usize) -> usize {
    line[from..]
        .char_indices()
        .nth(chars)
        .map_or(line.len(), |(i, _)| from + i)
}

/// The byte offset `chars` characters before `from` in `line` (or 0).
fn retreat(line: &str, from: usize, chars: usize) -> usize {
    line[..from]
        .char_indices()
        .rev()
        .nth(chars.saturating_sub(1))
        .map_or(0, |(i, _)| i)
        .min(from)
}

impl Excerpt {
    /// The excerpt of `text` for labels at `spans` (byte ranges of the file), and the spans
    /// mapped into it.
    fn build(name: &str, text: &str, spans: &[(usize, usize)]) -> (Excerpt, Vec<(usize, usize)>) {
        // Clamp spans to the text and to whole characters; shorten very long ones.
        let spans: Vec<(usize, usize)> = spans
            .iter()
            .map(|&(s, len)| {
                let start = floor_boundary(text, s);
                let mut end = floor_boundary(text, s.saturating_add(len)).max(start);
                let first_line_end = line_at(text, start).1;
                if text[start..end].matches('\n').count() >= MAX_LABEL_LINES {
                    end = first_line_end;
                }
                (start, end)
            })
            .collect();
        // The lines to show: (line start, line end, line number), in file order.
        let mut wanted: std::collections::BTreeMap<usize, (usize, usize)> = Default::default();
        let mut numbers = LineNumbers::new(text);
        for &(start, end) in &spans {
            let (mut ls, mut le) = line_at(text, start);
            let last = line_at(text, end).0;
            loop {
                wanted.insert(ls, (le, numbers.at(ls)));
                if ls >= last || le + 1 >= text.len() {
                    break;
                }
                (ls, le) = line_at(text, le + 1);
            }
            // context before the first line and after the last
            let (first, _) = line_at(text, start);
            let mut ls = first;
            for _ in 0..CONTEXT_LINES {
                if ls == 0 {
                    break;
                }
                let (ps, pe) = line_at(text, ls - 1);
                wanted.insert(ps, (pe, numbers.at(ps)));
                ls = ps;
            }
            let (_, mut le) = line_at(text, end);
            for _ in 0..CONTEXT_LINES {
                if le + 1 >= text.len() {
                    break;
                }
                let (ns, ne) = line_at(text, le + 1);
                wanted.insert(ns, (ne, numbers.at(ns)));
                le = ne;
            }
        }
        let mut out = String::new();
        let mut lines = Vec::with_capacity(wanted.len());
        for (&ls, &(le, number)) in &wanted {
            let line = &text[ls..le];
            // The labels' starts on this line (relative to it).
            let first_label = spans
                .iter()
                .filter(|&&(s, e)| s >= ls && s <= le || (s < ls && e > ls))
                .map(|&(s, _)| s.saturating_sub(ls))
                .min();
            let kept = if line.chars().count() <= MAX_LINE_CHARS {
                (0, line.len())
            } else {
                let from = first_label.map_or(0, |f| retreat(line, f, LEAD_CHARS));
                (from, advance(line, from, MAX_LINE_CHARS))
            };
            let prefix = if kept.0 > 0 { ELLIPSIS.len() } else { 0 };
            let start = out.len();
            if prefix > 0 {
                out.push_str(ELLIPSIS);
            }
            out.push_str(&line[kept.0..kept.1]);
            if kept.1 < line.len() {
                out.push_str(ELLIPSIS);
            }
            let len = out.len() - start;
            out.push('\n');
            lines.push(Line {
                number,
                file_start: ls,
                kept,
                start,
                len,
                prefix,
            });
        }
        if lines.is_empty() {
            out.push('\n');
            lines.push(Line {
                number: 0,
                file_start: 0,
                kept: (0, 0),
                start: 0,
                len: 0,
                prefix: 0,
            });
        }
        let ex = Excerpt {
            name: name.to_string(),
            text: out,
            lines,
        };
        let mapped = spans
            .iter()
            .map(|&(s, e)| {
                let a = ex.map(s);
                let b = ex.map(e).max(a);
                (a, b - a)
            })
            .collect();
        (ex, mapped)
    }

    /// The index of the excerpt line holding file offset `offset`.
    fn line_of_file_offset(&self, offset: usize) -> usize {
        self.lines
            .partition_point(|l| l.file_start <= offset)
            .saturating_sub(1)
    }

    /// A file offset mapped into the excerpt (clamped to the kept part of its line).
    fn map(&self, offset: usize) -> usize {
        let l = &self.lines[self.line_of_file_offset(offset)];
        let rel = offset.saturating_sub(l.file_start);
        let in_kept = rel.clamp(l.kept.0, l.kept.1) - l.kept.0;
        l.start + l.prefix + in_kept
    }

    /// The index of the excerpt line holding excerpt offset `offset`.
    fn line_of(&self, offset: usize) -> usize {
        self.lines
            .partition_point(|l| l.start <= offset)
            .saturating_sub(1)
    }
}

/// Line numbers of offsets visited in increasing order, counted once.
struct LineNumbers<'a> {
    text: &'a str,
    offset: usize,
    line: usize,
}

impl<'a> LineNumbers<'a> {
    fn new(text: &'a str) -> Self {
        LineNumbers {
            text,
            offset: 0,
            line: 0,
        }
    }

    fn at(&mut self, offset: usize) -> usize {
        if offset < self.offset {
            self.offset = 0;
            self.line = 0;
        }
        self.line += self.text.as_bytes()[self.offset..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        self.offset = offset;
        self.line
    }
}

impl SourceCode for Excerpt {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        before: usize,
        after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let first = self.line_of(span.offset());
        let last = self.line_of(span.offset() + span.len().saturating_sub(1));
        if self.lines[first..=last]
            .windows(2)
            .any(|w| w[0].number + 1 != w[1].number)
        {
            return Err(MietteError::OutOfBounds); // a gap: not one stretch of the file
        }
        let (mut a, mut b) = (first, last);
        for _ in 0..before {
            if a > 0 && self.lines[a - 1].number + 1 == self.lines[a].number {
                a -= 1;
            }
        }
        for _ in 0..after {
            if b + 1 < self.lines.len() && self.lines[b].number + 1 == self.lines[b + 1].number {
                b += 1;
            }
        }
        let l = &self.lines[a];
        let (start, column) = if before == 0 {
            let in_line = span.offset().saturating_sub(l.start + l.prefix);
            (span.offset(), l.kept.0 + in_line)
        } else {
            (l.start, 0)
        };
        let end = (self.lines[b].start + self.lines[b].len + 1).min(self.text.len());
        let start = start.min(end);
        Ok(Box::new(MietteSpanContents::new_named(
            self.name.clone(),
            &self.text.as_bytes()[start..end],
            (start, end - start).into(),
            l.number,
            column,
            b - a + 1,
        )))
    }
}

fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT_CHARS) {
        Some((i, _)) => format!("{}{ELLIPSIS}", &text[..i]),
        None => text.to_string(),
    }
}

/// A diagnostic as rendered: its source cut down to an [`Excerpt`], its texts clipped.
#[derive(Debug)]
pub struct View {
    message: String,
    code: &'static str,
    severity: Severity,
    help: Option<String>,
    source: Option<Excerpt>,
    labels: Vec<LabeledSpan>,
    related: Vec<View>,
}

impl View {
    pub fn of(d: &Diag) -> View {
        let (source, labels) = match d.source() {
            Some((name, text)) => {
                let spans: Vec<(usize, usize)> =
                    d.spans().iter().map(|l| (l.offset(), l.len())).collect();
                let (ex, mapped) = Excerpt::build(name, text, &spans);
                let labels = d
                    .spans()
                    .iter()
                    .zip(mapped)
                    .map(|(l, (o, len))| LabeledSpan::new(l.label().map(clip), o, len))
                    .collect();
                (Some(ex), labels)
            }
            None => (None, Vec::new()),
        };
        View {
            message: clip(&d.message),
            code: d.code,
            severity: d.severity,
            help: d.help_text().map(clip),
            source,
            labels,
            related: d.related_diags().iter().map(View::of).collect(),
        }
    }
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for View {}

impl Diagnostic for View {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }

    fn severity(&self) -> Option<Severity> {
        Some(self.severity)
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.source.as_ref().map(|s| s as &dyn SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() || self.source.is_none() {
            None
        } else {
            Some(Box::new(self.labels.iter().cloned()))
        }
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        if self.related.is_empty() {
            None
        } else {
            Some(Box::new(self.related.iter().map(|d| d as &dyn Diagnostic)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_files_are_shown_as_they_are() {
        let text = "a\nbb\nccc\ndddd\n";
        let (ex, spans) = Excerpt::build("f", text, &[(5, 3)]);
        assert_eq!(ex.text, "bb\nccc\ndddd\n");
        assert_eq!(spans, vec![(3, 3)]);
        let c = ex.read_span(&(3, 3).into(), 0, 0).unwrap();
        assert_eq!((c.line(), c.column()), (2, 0));
    }

    #[test]
    fn long_lines_are_clipped_around_the_label() {
        let line = format!("{}X{}", "a".repeat(100_000), "b".repeat(100_000));
        let (ex, spans) = Excerpt::build("f", &line, &[(100_000, 1)]);
        assert!(ex.text.len() < 4 * MAX_LINE_CHARS, "{}", ex.text.len());
        assert!(ex.text.starts_with(ELLIPSIS));
        let (o, len) = spans[0];
        assert_eq!(&ex.text[o..o + len], "X");
        let c = ex.read_span(&(o, len).into(), 0, 0).unwrap();
        assert_eq!((c.line(), c.column()), (0, 100_000));
    }

    #[test]
    fn far_apart_labels_do_not_pull_in_the_lines_between() {
        let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        let a = text.find("line 10\n").unwrap();
        let b = text.find("line 900\n").unwrap();
        let (ex, _) = Excerpt::build("f", &text, &[(a, 4), (b, 4)]);
        assert_eq!(ex.lines.len(), 6);
        assert!(ex.text.contains("line 899\nline 900\nline 901\n"));
    }

    #[test]
    fn offsets_past_the_end_and_inside_characters_are_clamped() {
        let text = "é\u{2028}x";
        let (ex, spans) = Excerpt::build("f", text, &[(1, 1), (99, 3)]);
        assert!(ex.text.is_char_boundary(spans[0].0));
        assert!(spans[1].0 <= ex.text.len());
    }
}
