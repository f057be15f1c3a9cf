//! Request bodies → typed build requests. Every way a body can be wrong is a [`RequestError`]
//! naming the field (`k8s.version`, `provider`, `release.tag_name`), what is wrong with it and
//! how to fix it; nothing here panics on any input.

use serde::Deserialize;

/// A stable patch release, `1.31.5`, and its series, `1.31`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    /// Parses `1.31.5` or `v1.31.5`; a pre-release (`1.32.0-rc.1`) or anything else is refused
    /// with the reason.
    pub fn parse(text: &str) -> Result<Version, String> {
        let t = text.strip_prefix('v').unwrap_or(text);
        if t.contains('-') || t.contains('+') {
            return Err(format!(
                "`{text}` is a pre-release or build; kiln builds only stable releases such as `1.31.5`"
            ));
        }
        let parts: Vec<&str> = t.split('.').collect();
        let num = |s: &str| {
            (!s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u32>().ok())
                .flatten()
        };
        match parts.as_slice() {
            [a, b, c] => match (num(a), num(b), num(c)) {
                (Some(major), Some(minor), Some(patch)) => Ok(Version {
                    major,
                    minor,
                    patch,
                }),
                _ => Err(format!(
                    "`{text}` is not a version: write MAJOR.MINOR.PATCH, e.g. `1.31.5`"
                )),
            },
            [_, _] => Err(format!(
                "`{text}` is a series, not a release: name the patch release, e.g. `{t}.0`"
            )),
            _ => Err(format!(
                "`{text}` is not a version: write MAJOR.MINOR.PATCH, e.g. `1.31.5`"
            )),
        }
    }

    pub fn series(&self) -> String {
        format!("{}.{}", self.major, self.minor)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Where a request came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Origin {
    /// `POST /v1/builds`.
    Api,
    /// A GitHub `release` event.
    GithubRelease { tag: String, action: String },
    /// A round of `kiln serve --watch`.
    Watch,
}

/// A request to build the cells of one Kubernetes release.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BuildRequest {
    pub version: Version,
    /// The provider as the request names it (a provider's name or `alias`), if it names one.
    pub provider: Option<String>,
    pub origin: Origin,
}

/// What a GitHub webhook delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `ping`: sent when the webhook is created.
    Ping {
        zen: Option<String>,
    },
    Build(BuildRequest),
    /// A delivery kiln has nothing to do for (another event, an edited release, a pre-release).
    Ignored(String),
}

/// A request kiln refuses: an HTTP status, the field, what is wrong, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RequestError {
    #[serde(skip)]
    pub status: u16,
    /// `k8s.version`, `provider`, a header name; `null` when the body as a whole is wrong.
    pub field: Option<String>,
    #[serde(rename = "error")]
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl RequestError {
    pub fn new(status: u16, field: Option<&str>, message: impl Into<String>) -> RequestError {
        RequestError {
            status,
            field: field.map(str::to_string),
            message: message.into(),
            help: None,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> RequestError {
        self.help = Some(help.into());
        self
    }

    /// A 422: the body is JSON of the right shape, but asks for something kiln cannot do.
    pub fn unprocessable(field: &str, message: impl Into<String>) -> RequestError {
        RequestError::new(422, Some(field), message)
    }
}

/// The seed's payload: `{"k8s":{"version":"1.31.5"},"provider":"capa"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    k8s: K8s,
    #[serde(default)]
    provider: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct K8s {
    version: String,
}

const EXAMPLE: &str = r#"{"k8s":{"version":"1.31.5"},"provider":"capa"}"#;

/// Parses a `POST /v1/builds` body.
pub fn parse_build(body: &[u8]) -> Result<BuildRequest, RequestError> {
    let p: Payload = decode(body)?;
    let version = Version::parse(&p.k8s.version)
        .map_err(|m| RequestError::unprocessable("k8s.version", m))?;
    if let Some(name) = &p.provider
        && name.trim().is_empty()
    {
        return Err(RequestError::unprocessable(
            "provider",
            "`provider` is empty: name a provider, or leave the field out to build every provider",
        ));
    }
    Ok(BuildRequest {
        version,
        provider: p.provider,
        origin: Origin::Api,
    })
}

#[derive(Deserialize)]
struct Ping {
    #[serde(default)]
    zen: Option<String>,
}

#[derive(Deserialize)]
struct ReleaseEvent {
    action: String,
    release: Release,
}

#[derive(Deserialize)]
struct Release {
    tag_name: String,
    #[serde(default)]
    prerelease: bool,
    #[serde(default)]
    draft: bool,
}

/// Parses a GitHub webhook delivery of event `event` (the `X-GitHub-Event` header).
pub fn parse_github(event: Option<&str>, body: &[u8]) -> Result<Event, RequestError> {
    let Some(event) = event else {
        return Err(RequestError::new(
            400,
            Some("X-GitHub-Event"),
            "no X-GitHub-Event header: this endpoint takes GitHub webhook deliveries",
        )
        .help("send seed-style requests to POST /v1/builds instead"));
    };
    match event {
        "ping" => {
            let p: Ping = decode(body)?;
            Ok(Event::Ping { zen: p.zen })
        }
        "release" => {
            let e: ReleaseEvent = decode(body)?;
            if e.action != "published" && e.action != "released" {
                return Ok(Event::Ignored(format!(
                    "release action `{}`: only published releases are built",
                    e.action
                )));
            }
            if e.release.draft || e.release.prerelease {
                return Ok(Event::Ignored(format!(
                    "release {} is a draft or pre-release",
                    e.release.tag_name
                )));
            }
            let version = Version::parse(&e.release.tag_name)
                .map_err(|m| RequestError::unprocessable("release.tag_name", m))?;
            Ok(Event::Build(BuildRequest {
                version,
                provider: None,
                origin: Origin::GithubRelease {
                    tag: e.release.tag_name,
                    action: e.action,
                },
            }))
        }
        other => Ok(Event::Ignored(format!(
            "event `{other}` is not handled: subscribe the webhook to `release` events"
        ))),
    }
}

/// Decodes JSON, naming the field of a wrong type, a missing or an unknown field.
fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, RequestError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| json_error(".", e))?;
    if !value.is_object() {
        return Err(
            RequestError::new(422, None, "the body must be a JSON object")
                .help(format!("send a JSON object such as {EXAMPLE}")),
        );
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        json_error(&path, e.into_inner())
    })
}

/// The request error of a JSON error at `path` (`.` for the whole body).
fn json_error(path: &str, inner: serde_json::Error) -> RequestError {
    let at = format!("line {} column {}", inner.line(), inner.column());
    match inner.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            RequestError::new(400, None, format!("the body is not valid JSON: {inner}"))
                .help(format!("send a JSON object such as {EXAMPLE}"))
        }
        serde_json::error::Category::Io => {
            RequestError::new(400, None, format!("the body cannot be read: {inner}"))
        }
        serde_json::error::Category::Data => {
            let text = inner.to_string();
            let text = text
                .strip_suffix(&format!(" at {at}"))
                .unwrap_or(&text)
                .to_string();
            let quoted = |prefix: &str| {
                text.strip_prefix(prefix)
                    .and_then(|r| r.split('`').next())
                    .map(str::to_string)
            };
            let whole = path == "." || path.is_empty();
            let join = |name: &str| {
                if whole {
                    name.to_string()
                } else {
                    format!("{path}.{name}")
                }
            };
            let (field, message) = if let Some(name) = quoted("missing field `") {
                let f = join(&name);
                (Some(f.clone()), format!("`{f}` is missing"))
            } else if let Some(name) = quoted("unknown field `") {
                // The path already ends with the unknown field.
                let f = if whole { name } else { path.to_string() };
                (Some(f.clone()), format!("unknown field `{f}` ({text})"))
            } else if whole {
                (None, format!("the body must be a JSON object: {text}"))
            } else {
                (Some(path.to_string()), format!("`{path}`: {text}"))
            };
            RequestError {
                status: 422,
                field,
                message,
                help: Some(format!("send a JSON object such as {EXAMPLE}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> RequestError {
        parse_build(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn the_seed_payload() {
        let r = parse_build(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(r.version.to_string(), "1.31.5");
        assert_eq!(r.version.series(), "1.31");
        assert_eq!(r.provider.as_deref(), Some("capa"));
        let r = parse_build(br#"{"k8s":{"version":"v1.22.12"}}"#).unwrap();
        assert_eq!(
            (r.version.to_string(), r.provider),
            ("1.22.12".into(), None)
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = err(r#"{"k8s":{"version":1.31}}"#);
        assert_eq!((e.status, e.field.as_deref()), (422, Some("k8s.version")));
        assert!(e.message.contains("expected a string"), "{}", e.message);
        let e = err(r#"{"k8s":{}}"#);
        assert_eq!(e.field.as_deref(), Some("k8s.version"));
        assert_eq!(e.message, "`k8s.version` is missing");
        let e = err(r#"{"provider":"capa"}"#);
        assert_eq!(e.field.as_deref(), Some("k8s"));
        let e = err(r#"{"k8s":{"version":"1.31.5"},"provder":"capa"}"#);
        assert_eq!(e.field.as_deref(), Some("provder"));
        let e = err(r#"{"k8s":{"version":"1.31.5"},"provider":7}"#);
        assert_eq!(e.field.as_deref(), Some("provider"));
        let e = err(r#"{"k8s":{"version":"1.31"}}"#);
        assert!(e.message.contains("series"), "{}", e.message);
        let e = err(r#"{"k8s":{"version":"1.32.0-rc.1"}}"#);
        assert!(e.message.contains("pre-release"), "{}", e.message);
        let e = err(r#"[1,2]"#);
        assert_eq!((e.status, e.field), (422, None));
    }

    #[test]
    fn malformed_json_is_a_400() {
        for body in [
            "",
            "{",
            "{\"k8s\":",
            "nul",
            "{\"k8s\":{\"version\":\"1.31.5\"}} x",
        ] {
            let e = err(body);
            assert_eq!((e.status, &e.field), (400, &None), "{body:?}: {e:?}");
        }
    }

    #[test]
    fn github_events() {
        let ev = |event: &str, body: &str| parse_github(Some(event), body.as_bytes());
        assert_eq!(
            ev("ping", r#"{"zen":"Keep it simple.","hook_id":1}"#).unwrap(),
            Event::Ping {
                zen: Some("Keep it simple.".into())
            }
        );
        let body = r#"{"action":"published","release":{"tag_name":"v1.31.5","prerelease":false,"draft":false,"name":"v1.31.5"},"repository":{"full_name":"kubernetes/kubernetes"}}"#;
        let Event::Build(r) = ev("release", body).unwrap() else {
            panic!("not a build")
        };
        assert_eq!(r.version.to_string(), "1.31.5");
        let pre = body.replace("\"prerelease\":false", "\"prerelease\":true");
        assert!(matches!(ev("release", &pre).unwrap(), Event::Ignored(_)));
        let edited = body.replace("published", "edited");
        assert!(matches!(ev("release", &edited).unwrap(), Event::Ignored(_)));
        assert!(matches!(ev("push", "{}").unwrap(), Event::Ignored(_)));
        let e = ev(
            "release",
            r#"{"action":"published","release":{"tag_name":"latest"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("release.tag_name"));
        let e = ev("release", r#"{"action":"published"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("release"));
        let e = parse_github(None, b"{}").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("X-GitHub-Event"));
    }

    proptest::proptest! {
        #[test]
        fn any_body_is_a_request_or_an_error(body in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            if let Err(e) = parse_build(&body) {
                proptest::prop_assert!(e.status == 400 || e.status == 422);
            }
            let _ = parse_github(Some("release"), &body);
        }
    }
}
