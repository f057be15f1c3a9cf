//! Reading typed values out of KDL nodes, with a diagnostic for every mismatch.

use kdl::{KdlEntry, KdlNode, KdlValue};

use super::diag::{Diag, Diags, did_you_mean};
use super::model::Value;
use super::source::{FileId, Loc, SourceMap, Spanned};

/// The file being read and where its problems go.
pub struct Reader<'a> {
    pub sources: &'a SourceMap,
    pub file: FileId,
    pub diags: &'a mut Diags,
}

pub fn name(node: &KdlNode) -> &str {
    node.name().value()
}

pub fn args(node: &KdlNode) -> impl Iterator<Item = &KdlEntry> {
    node.entries().iter().filter(|e| e.name().is_none())
}

pub fn props(node: &KdlNode) -> impl Iterator<Item = (&str, &KdlEntry)> {
    node.entries()
        .iter()
        .filter_map(|e| e.name().map(|n| (n.value(), e)))
}

pub fn children(node: &KdlNode) -> &[KdlNode] {
    node.children().map(|d| d.nodes()).unwrap_or(&[])
}

fn kind_of(v: &KdlValue) -> &'static str {
    match v {
        KdlValue::String(_) => "a string",
        KdlValue::Integer(_) => "an integer",
        KdlValue::Float(_) => "a number",
        KdlValue::Bool(_) => "a boolean",
        KdlValue::Null => "#null",
    }
}

/// How a number was written, to quote it back in a help line.
fn written(entry: &KdlEntry) -> String {
    match entry.value() {
        KdlValue::Float(f) => entry
            .format()
            .map(|f| f.value_repr.trim().to_string())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| f.to_string()),
        other => other.to_string(),
    }
}

impl Reader<'_> {
    pub fn loc(&self, span: miette::SourceSpan) -> Loc {
        Loc {
            file: self.file,
            span,
        }
    }

    pub fn node_loc(&self, node: &KdlNode) -> Loc {
        self.loc(node.name().span())
    }

    pub fn entry_loc(&self, entry: &KdlEntry) -> Loc {
        self.loc(entry.span())
    }

    pub fn push(&mut self, d: Diag) {
        self.diags.push(d);
    }

    pub fn error_at(
        &mut self,
        loc: Loc,
        code: &'static str,
        msg: String,
        label: &str,
        help: String,
    ) {
        let d = Diag::error(code, msg)
            .label(self.sources, loc, label)
            .help(help);
        self.push(d);
    }

    /// A string where the config needs one. Numbers get the "quote it" help, because KDL reads
    /// `1.31` as the float 1.31 and `1.30` would lose its zero.
    pub fn string(&mut self, entry: &KdlEntry, what: &str) -> Option<Spanned<String>> {
        match entry.value() {
            KdlValue::String(s) => Some(Spanned::new(s.clone(), self.entry_loc(entry))),
            v @ (KdlValue::Float(_) | KdlValue::Integer(_)) => {
                let w = written(entry);
                self.error_at(
                    self.entry_loc(entry),
                    "kiln::config::type",
                    format!("{what} must be a string, found {}", kind_of(v)),
                    "a number in KDL",
                    format!("quote it: \"{w}\" (an unquoted {w} is a KDL number, so 1.30 would read as 1.3)"),
                );
                None
            }
            v => {
                self.error_at(
                    self.entry_loc(entry),
                    "kiln::config::type",
                    format!("{what} must be a string, found {}", kind_of(v)),
                    "expected a string",
                    "write it in double quotes".into(),
                );
                None
            }
        }
    }

    /// A matrix value: a string, or an integer (GitHub matrices allow `node 14 16`).
    pub fn axis_value(&mut self, entry: &KdlEntry, what: &str) -> Option<Spanned<String>> {
        match entry.value() {
            KdlValue::Integer(i) => Some(Spanned::new(i.to_string(), self.entry_loc(entry))),
            KdlValue::Bool(b) => Some(Spanned::new(b.to_string(), self.entry_loc(entry))),
            _ => self.string(entry, what),
        }
    }

    pub fn value(&mut self, entry: &KdlEntry, what: &str) -> Option<Value> {
        match entry.value() {
            KdlValue::String(s) => Some(Value::Str(s.clone())),
            KdlValue::Bool(b) => Some(Value::Bool(*b)),
            KdlValue::Integer(i) => match i64::try_from(*i) {
                Ok(i) => Some(Value::Int(i)),
                Err(_) => {
                    self.error_at(
                        self.entry_loc(entry),
                        "kiln::config::type",
                        format!("{what} is out of range"),
                        "too large",
                        "write it as a string".into(),
                    );
                    None
                }
            },
            KdlValue::Float(_) | KdlValue::Null => {
                self.string(entry, what).map(|s| Value::Str(s.value))
            }
        }
    }

    /// All arguments of `node` as one value: one argument is itself, several are a list.
    pub fn values(&mut self, node: &KdlNode, what: &str) -> Option<Spanned<Value>> {
        let entries: Vec<&KdlEntry> = args(node).collect();
        let loc = self.node_loc(node);
        match entries.as_slice() {
            [] => {
                self.missing(node, what, "a value");
                None
            }
            [one] => self.value(one, what).map(|v| Spanned::new(v, loc)),
            many => {
                let mut list = Vec::new();
                for e in many {
                    list.push(self.string(e, what)?.value);
                }
                Some(Spanned::new(Value::List(list), loc))
            }
        }
    }

    pub fn bool(&mut self, entry: &KdlEntry, what: &str) -> Option<bool> {
        match entry.value() {
            KdlValue::Bool(b) => Some(*b),
            v => {
                self.error_at(
                    self.entry_loc(entry),
                    "kiln::config::type",
                    format!("{what} must be a boolean, found {}", kind_of(v)),
                    "expected #true or #false",
                    "KDL 2 booleans are written #true and #false".into(),
                );
                None
            }
        }
    }

    pub fn u32(&mut self, entry: &KdlEntry, what: &str) -> Option<u32> {
        match entry.value() {
            KdlValue::Integer(i) if (0..=u32::MAX as i128).contains(i) => Some(*i as u32),
            KdlValue::Integer(i) => {
                let (found, help) = if *i < 0 {
                    (
                        "a negative number",
                        format!("write {what} as a whole number, e.g. 2"),
                    )
                } else {
                    (
                        "a number too large",
                        format!("write {what} as at most {}", u32::MAX),
                    )
                };
                self.error_at(
                    self.entry_loc(entry),
                    "kiln::config::type",
                    format!("{what} must be a non-negative integer, found {i}"),
                    found,
                    help,
                );
                None
            }
            v => {
                self.error_at(
                    self.entry_loc(entry),
                    "kiln::config::type",
                    format!(
                        "{what} must be a non-negative integer, found {}",
                        kind_of(v)
                    ),
                    "expected an integer",
                    format!("write {what} as a whole number, e.g. 2"),
                );
                None
            }
        }
    }

    /// A concurrency limit: at least 1.
    pub fn limit(&mut self, entry: &KdlEntry) -> Option<u32> {
        if let KdlValue::Integer(i) = entry.value()
            && *i < 0
        {
            self.error_at(
                self.entry_loc(entry),
                "kiln::config::type",
                format!("limit must be at least 1, found {i}"),
                "a negative limit",
                "write the number of nodes that may run at once, or remove the line for no limit"
                    .into(),
            );
            return None;
        }
        let n = self.u32(entry, "limit")?;
        if n == 0 {
            self.error_at(
                self.entry_loc(entry),
                "kiln::config::type",
                "limit must be at least 1".into(),
                "a limit of 0 would never run anything",
                "write the number of nodes that may run at once, or remove the line for no limit"
                    .into(),
            );
            return None;
        }
        Some(n)
    }

    pub fn duration(&mut self, entry: &KdlEntry, what: &str) -> Option<std::time::Duration> {
        if let v @ (KdlValue::Integer(_) | KdlValue::Float(_)) = entry.value() {
            let w = written(entry);
            self.error_at(
                self.entry_loc(entry),
                "kiln::config::type",
                format!("{what} must be a duration string, found {}", kind_of(v)),
                "a number without a unit",
                format!("write the duration as a string with its unit, e.g. {what} \"{w}s\" or {what} \"{w}m\""),
            );
            return None;
        }
        let s = self.string(entry, what)?;
        match humantime::parse_duration(&s.value) {
            Ok(d) if d.is_zero() => {
                self.error_at(
                    s.loc,
                    "kiln::config::type",
                    format!("{what} must be longer than 0s"),
                    "every step would time out at once",
                    format!("write a duration such as \"90m\", or remove `{what}` for no limit"),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.error_at(
                    s.loc,
                    "kiln::config::type",
                    format!("{what} is not a duration: {e}"),
                    "not a duration",
                    "write a duration such as \"90m\", \"2h\" or \"1h 30m\"".into(),
                );
                None
            }
        }
    }

    pub fn missing(&mut self, node: &KdlNode, what: &str, expected: &str) {
        let n = name(node).to_string();
        self.error_at(
            self.node_loc(node),
            "kiln::config::missing",
            format!("`{n}` needs {what}"),
            &format!("{expected} is missing here"),
            format!("write it after the node name, e.g. `{n} \"…\"`"),
        );
    }

    /// The one argument a node takes: `node "value"`.
    pub fn single_string(&mut self, node: &KdlNode, what: &str) -> Option<Spanned<String>> {
        let entries: Vec<&KdlEntry> = args(node).collect();
        match entries.as_slice() {
            [] => {
                self.missing(node, what, what);
                None
            }
            [one] => self.string(one, what),
            [_, extra, ..] => {
                self.error_at(
                    self.entry_loc(extra),
                    "kiln::config::extra",
                    format!("`{}` takes one argument", name(node)),
                    "unexpected argument",
                    "remove the extra arguments".into(),
                );
                None
            }
        }
    }

    /// Errors for properties not in `allowed` and for any children when `children` is false.
    pub fn check_shape(&mut self, node: &KdlNode, allowed: &[&str], children_ok: bool) {
        for (key, entry) in props(node) {
            if !allowed.contains(&key) {
                let msg = format!("unknown property `{key}` on `{}`", name(node));
                let help = if allowed.is_empty() {
                    format!("`{}` takes no properties", name(node))
                } else {
                    did_you_mean(key, allowed, "property")
                };
                self.error_at(
                    self.entry_loc(entry),
                    "kiln::config::unknown",
                    msg,
                    "unknown property",
                    help,
                );
            }
        }
        if !children_ok {
            self.no_block(node);
        }
    }

    pub fn no_block(&mut self, node: &KdlNode) {
        if let Some(doc) = node.children() {
            self.error_at(
                self.loc(doc.span()),
                "kiln::config::extra",
                format!("`{}` takes no block", name(node)),
                "unexpected block",
                "remove the `{ … }` block".into(),
            );
        }
    }

    pub fn no_args(&mut self, node: &KdlNode) {
        if let Some(extra) = args(node).next() {
            self.error_at(
                self.entry_loc(extra),
                "kiln::config::extra",
                format!("`{}` takes no arguments here", name(node)),
                "unexpected argument",
                "use properties (key=\"value\") instead".into(),
            );
        }
    }

    pub fn unknown_node(&mut self, node: &KdlNode, within: &str, allowed: &[&str]) {
        let n = name(node);
        self.error_at(
            self.node_loc(node),
            "kiln::config::unknown",
            format!("unknown node `{n}` in {within}"),
            "unknown node",
            did_you_mean(n, allowed, "node"),
        );
    }

    /// Reports a second definition, pointing at both.
    pub fn duplicate(&mut self, what: &str, first: Loc, second: Loc) {
        let d = Diag::error(
            "kiln::config::duplicate",
            format!("{what} is defined twice"),
        )
        .label(self.sources, second, "defined again here")
        .label(self.sources, first, "first defined here")
        .help("remove one of the two definitions, or rename one");
        self.push(d);
    }
}
