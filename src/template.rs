//! `{placeholder}` templates: cell names, module parameters, variables. `{{` and `}}` are
//! literal braces; a lone brace is an error.

/// A piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment<'a> {
    Text(&'a str),
    Placeholder(&'a str),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unbalanced brace at byte {0}")]
    Unbalanced(usize),
    #[error("empty placeholder `{{}}` at byte {0}")]
    Empty(usize),
}

/// Walks a template segment by segment, without allocating.
struct Segments<'a> {
    rest: &'a str,
    offset: usize,
}

impl<'a> Iterator for Segments<'a> {
    type Item = Result<Segment<'a>, TemplateError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.rest;
        if rest.is_empty() {
            return None;
        }
        let Some(i) = rest.find(['{', '}']) else {
            self.rest = "";
            return Some(Ok(Segment::Text(rest)));
        };
        if i > 0 {
            self.rest = &rest[i..];
            self.offset += i;
            return Some(Ok(Segment::Text(&rest[..i])));
        }
        let brace = &rest[..1];
        if rest[1..].starts_with(brace) {
            self.rest = &rest[2..];
            self.offset += 2;
            return Some(Ok(Segment::Text(brace)));
        }
        let end = rest[1..]
            .find(['{', '}'])
            .filter(|e| brace == "{" && rest[1 + e..].starts_with('}'));
        let Some(end) = end else {
            self.rest = "";
            return Some(Err(TemplateError::Unbalanced(self.offset)));
        };
        let name = rest[1..1 + end].trim();
        if name.is_empty() {
            self.rest = "";
            return Some(Err(TemplateError::Empty(self.offset)));
        }
        self.rest = &rest[end + 2..];
        self.offset += end + 2;
        Some(Ok(Segment::Placeholder(name)))
    }
}

fn segments(template: &str) -> Segments<'_> {
    Segments {
        rest: template,
        offset: 0,
    }
}

/// Splits a template into text and placeholders.
pub fn parse(template: &str) -> Result<Vec<Segment<'_>>, TemplateError> {
    segments(template).collect()
}

/// Renders a template; `lookup` returns `None` for an unknown placeholder, which is returned as
/// the error so the caller can point at it. One pass, no intermediate list: templates are
/// rendered for every node of a large matrix.
pub fn render<'t, F>(template: &'t str, mut lookup: F) -> Result<String, RenderError<'t>>
where
    F: FnMut(&str) -> Option<String>,
{
    let mut out = String::with_capacity(template.len() + 16);
    for segment in segments(template) {
        match segment.map_err(RenderError::Syntax)? {
            Segment::Text(t) => out.push_str(t),
            Segment::Placeholder(p) => match lookup(p) {
                Some(v) => out.push_str(&v),
                None => return Err(RenderError::Unknown(p)),
            },
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError<'t> {
    Syntax(TemplateError),
    Unknown(&'t str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_escapes() {
        let r = render("{provider}-{os}-k8s-{kubernetes}", |k| {
            Some(k.to_uppercase())
        });
        assert_eq!(r.unwrap(), "PROVIDER-OS-k8s-KUBERNETES");
        assert_eq!(render("a{{b}}c", |_| None).unwrap(), "a{b}c");
        assert_eq!(render("{ os }", |k| Some(k.into())).unwrap(), "os");
    }

    #[test]
    fn render_agrees_with_parse() {
        for t in ["a{b}c", "{{x}}", "}}{a}", "plain", "{a}{b}", "x}}y"] {
            let via_parse: String = parse(t)
                .unwrap()
                .into_iter()
                .map(|s| match s {
                    Segment::Text(x) => x.to_string(),
                    Segment::Placeholder(p) => format!("<{p}>"),
                })
                .collect();
            assert_eq!(
                render(t, |p| Some(format!("<{p}>"))).unwrap(),
                via_parse,
                "{t}"
            );
        }
    }

    #[test]
    fn reports_errors() {
        assert_eq!(parse("ab{cd"), Err(TemplateError::Unbalanced(2)));
        assert_eq!(parse("a}b"), Err(TemplateError::Unbalanced(1)));
        assert_eq!(parse("{a{b}}"), Err(TemplateError::Unbalanced(0)));
        assert_eq!(parse("ab{}"), Err(TemplateError::Empty(2)));
        assert_eq!(
            render("x-{nope}", |_| None),
            Err(RenderError::Unknown("nope"))
        );
    }
}
