//! Hiding secret values in text kiln writes (logs, errors, warnings): every form of a value kiln
//! can predict is replaced with `***` — the whole value, its JSON-escaped form (a secret quoted
//! in a JSON document or error), and, for a multi-line value such as a service-account key, each
//! of its lines of [`MIN_LINE_CHARS`] characters or more (a program prints such a value one line
//! at a time, and logs are redacted line by line).

/// Lines of a multi-line secret shorter than this (after trimming) are not redacted on their
/// own: `{` or `}` alone would mask half of every log.
pub const MIN_LINE_CHARS: usize = 6;

const MASK: &str = "***";

/// The patterns to mask, longest first (so a whole value is masked before its parts).
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    patterns: Vec<String>,
}

/// `s` as it appears inside a JSON string (without the quotes).
fn json_escaped(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or_default()
        .to_string()
}

impl Redactor {
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Redactor {
        let mut patterns = Vec::new();
        for v in values.into_iter().filter(|v| !v.is_empty()) {
            patterns.push(v.to_string());
            patterns.push(json_escaped(v));
            if v.contains(['\n', '\r']) {
                for line in v.lines().map(str::trim) {
                    if line.chars().count() >= MIN_LINE_CHARS {
                        patterns.push(line.to_string());
                        patterns.push(json_escaped(line));
                    }
                }
            }
        }
        patterns.retain(|p| !p.is_empty());
        patterns.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        patterns.dedup();
        Redactor { patterns }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// `text` with every pattern replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for p in &self.patterns {
            if out.contains(p.as_str()) {
                out = out.replace(p.as_str(), MASK);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "{\n  \"type\": \"service_account\",\n  \"private_key\": \"-----BEGIN PRIVATE KEY-----\\nMIIEv\\n-----END PRIVATE KEY-----\\n\"\n}";

    #[test]
    fn a_multi_line_secret_is_masked_whole_line_by_line_and_json_escaped() {
        let r = Redactor::new([KEY]);
        assert_eq!(r.redact(&format!("a {KEY} b")), "a *** b");
        for line in KEY.lines() {
            let masked = r.redact(line);
            assert!(
                line.trim().len() < MIN_LINE_CHARS || masked.trim() == MASK,
                "{line:?} → {masked:?}"
            );
        }
        let escaped = serde_json::to_string(&serde_json::json!({ "key": KEY })).unwrap();
        assert_eq!(r.redact(&escaped), "{\"key\":\"***\"}");
        assert_eq!(r.redact("{"), "{", "short lines are kept");
    }

    #[test]
    fn a_one_line_secret_is_masked_wherever_it_appears() {
        let r = Redactor::new(["hunter2", ""]);
        assert_eq!(r.redact("pw=hunter2;hunter2"), "pw=***;***");
        assert!(Redactor::new([""]).is_empty());
    }
}
