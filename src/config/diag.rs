//! Config diagnostics: data with positions, rendered by miette's fancy handler.

use std::fmt;
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, Severity};

use super::source::{Loc, SourceMap};

/// One error or warning about the config, pointing into a file.
#[derive(Debug)]
pub struct Diag {
    pub message: String,
    pub code: &'static str,
    pub severity: Severity,
    src: Option<NamedSource<Arc<String>>>,
    labels: Vec<LabeledSpan>,
    help: Option<String>,
    related: Vec<Diag>,
}

impl Diag {
    pub fn error(code: &'static str, message: impl Into<String>) -> Diag {
        Diag {
            message: message.into(),
            code,
            severity: Severity::Error,
            src: None,
            labels: Vec::new(),
            help: None,
            related: Vec::new(),
        }
    }

    pub fn warning(code: &'static str, message: impl Into<String>) -> Diag {
        Diag {
            severity: Severity::Warning,
            ..Diag::error(code, message)
        }
    }

    /// Labels a span. A label in another file than the first becomes a related diagnostic.
    pub fn label(mut self, sources: &SourceMap, loc: Loc, text: impl Into<String>) -> Diag {
        let text = text.into();
        match &self.src {
            Some(src) if src.name() != sources.get(loc.file).name => {
                let mut note = Diag::error(self.code, text.clone());
                note.severity = Severity::Advice;
                self.related.push(note.label(sources, loc, text));
            }
            _ => {
                if self.src.is_none() {
                    self.src = Some(sources.named(loc.file));
                }
                self.labels
                    .push(LabeledSpan::new_with_span(Some(text), loc.span));
            }
        }
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Diag {
        self.help = Some(help.into());
        self
    }

    pub fn with_source(mut self, src: NamedSource<Arc<String>>) -> Diag {
        self.src = Some(src);
        self
    }

    pub fn raw_label(mut self, label: LabeledSpan) -> Diag {
        self.labels.push(label);
        self
    }

    /// The file the labels point into: its name and text.
    pub fn source(&self) -> Option<(&str, &str)> {
        self.src.as_ref().map(|s| (s.name(), s.inner().as_str()))
    }

    pub fn spans(&self) -> &[LabeledSpan] {
        &self.labels
    }

    pub fn help_text(&self) -> Option<&str> {
        self.help.as_deref()
    }

    pub fn related_diags(&self) -> &[Diag] {
        &self.related
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Diag {}

impl Diagnostic for Diag {
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

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.src.as_ref().map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() {
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

/// "did you mean" over a set of candidates.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// A help line: "did you mean `x`?" when close, else the list of what is allowed.
pub fn did_you_mean(word: &str, candidates: &[&str], what: &str) -> String {
    match suggest(word, candidates.iter().copied()) {
        Some(s) => format!("did you mean `{s}`?"),
        None if candidates.is_empty() => format!("no {what} is declared"),
        None => format!("expected one of: {}", candidates.join(", ")),
    }
}

/// All the problems found while loading; errors first, in source order.
#[derive(Debug, Default)]
pub struct Diags(pub Vec<Diag>);

impl Diags {
    pub fn push(&mut self, d: Diag) {
        self.0.push(d);
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diag::is_error)
    }

    pub fn errors(&self) -> usize {
        self.0.iter().filter(|d| d.is_error()).count()
    }
}
