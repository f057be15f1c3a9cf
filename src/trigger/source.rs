//! The release sources behind one trait, and the HTTP client they share.
//!
//! Three sources answer for a series: dl.k8s.io's `stable-<minor>.txt` (the newest stable patch
//! release), pkgs.k8s.io's Debian `Packages` index of the minor (the package revisions) and
//! GitHub's releases API (every release with its metadata). Their base URLs come from the
//! environment, for mirrors and tests: `KILN_K8S_RELEASE_URL`, `KILN_K8S_PACKAGES_URL` and
//! GitHub's own `GITHUB_API_URL` (with `GITHUB_TOKEN`, when set, for GitHub only).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::github::GitHubReleases;
use super::packages::PackagesIndex;
use super::stable::StableTxt;
use super::version::{Revision, Series, Version};

pub const DEFAULT_RELEASE_URL: &str = "https://dl.k8s.io/release";
pub const DEFAULT_PACKAGES_URL: &str = "https://pkgs.k8s.io/core:/stable:";
pub const DEFAULT_GITHUB_API_URL: &str = "https://api.github.com";

/// The most a source's answer may be: a `Packages` index of a minor is about 1 MB.
const MAX_BODY: usize = 64 << 20;

/// One release a source knows of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub version: Version,
    /// The package revision, from a source that gives one (the `Packages` index).
    pub revision: Option<Revision>,
    /// Marked a pre-release by the source, or spelled as one.
    pub prerelease: bool,
}

/// Which source answered, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    StableTxt,
    Packages,
    GitHub,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::StableTxt => "dl.k8s.io stable release marker",
            SourceKind::Packages => "pkgs.k8s.io Packages index",
            SourceKind::GitHub => "GitHub releases API",
        }
    }
}

/// Why a source could not answer.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{url}: {error}")]
    Request { url: String, error: String },
    #[error("{url} answered {status}{hint}")]
    Status {
        url: String,
        status: u16,
        hint: &'static str,
    },
    #[error("{url} answered more than {MAX_BODY} bytes")]
    TooLarge { url: String },
    #[error("{url} answered something that is not {expected}: {got}")]
    Garbage {
        url: String,
        expected: &'static str,
        got: String,
    },
}

/// A source of Kubernetes releases.
pub trait ReleaseSource: Send + Sync {
    fn kind(&self) -> SourceKind;
    /// Where this source reads the releases of `series` (a URL, named in messages and recorded
    /// in `images.lock`).
    fn url(&self, series: Series) -> String;
    /// The releases of `series` this source knows, pre-releases included (marked).
    fn releases(&self, series: Series) -> BoxFuture<'_, Result<Vec<Found>, SourceError>>;
}

/// The three sources, configured from the environment.
pub struct Sources {
    pub stable: StableTxt,
    pub packages: PackagesIndex,
    pub github: GitHubReleases,
}

impl Sources {
    /// Base URLs from `KILN_K8S_RELEASE_URL`, `KILN_K8S_PACKAGES_URL`, `GITHUB_API_URL` (each
    /// with its public default) and `GITHUB_TOKEN`.
    pub fn from_env() -> Sources {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Sources::new(
            var("KILN_K8S_RELEASE_URL").unwrap_or_else(|| DEFAULT_RELEASE_URL.into()),
            var("KILN_K8S_PACKAGES_URL").unwrap_or_else(|| DEFAULT_PACKAGES_URL.into()),
            var("GITHUB_API_URL").unwrap_or_else(|| DEFAULT_GITHUB_API_URL.into()),
            var("GITHUB_TOKEN"),
        )
    }

    pub fn new(
        release_url: String,
        packages_url: String,
        github_api_url: String,
        github_token: Option<String>,
    ) -> Sources {
        let http = std::sync::Arc::new(Http::new());
        Sources {
            stable: StableTxt::new(http.clone(), release_url),
            packages: PackagesIndex::new(http.clone(), packages_url),
            github: GitHubReleases::new(http, github_api_url, github_token),
        }
    }

    /// Keeps GitHub's answers (with their `ETag`) in `dir`, so that the next run asks with
    /// `If-None-Match` and an unchanged page costs a 304 instead of a rate-limited request.
    pub fn with_cache_dir(self, dir: PathBuf) -> Sources {
        self.github.http().set_cache_dir(dir);
        self
    }
}

/// An answer kept for a conditional request.
#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct Kept {
    etag: String,
    link: Option<String>,
    body: String,
}

/// The HTTP client the sources share: timeouts, a user agent, bounded bodies, and the answers
/// kept by `ETag` for conditional requests (in memory, and in a directory when one is set).
pub struct Http {
    client: reqwest::Client,
    kept: Mutex<HashMap<String, Kept>>,
    dir: Mutex<Option<PathBuf>>,
    /// How many requests were answered 304 Not Modified (for tests and messages).
    pub not_modified: std::sync::atomic::AtomicU64,
}

/// A successful answer.
pub struct Response {
    pub body: String,
    /// The `Link` header (GitHub's pagination).
    pub link: Option<String>,
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

impl Http {
    pub fn new() -> Http {
        let client = reqwest::Client::builder()
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client with rustls builds");
        Http {
            client,
            kept: Mutex::new(HashMap::new()),
            dir: Mutex::new(None),
            not_modified: 0.into(),
        }
    }

    fn set_cache_dir(&self, dir: PathBuf) {
        *self.dir.lock().unwrap_or_else(|e| e.into_inner()) = Some(dir);
    }

    fn kept_path(&self, url: &str) -> Option<PathBuf> {
        let dir = self.dir.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        Some(dir.join(blake3::hash(url.as_bytes()).to_hex().as_str()))
    }

    fn kept(&self, url: &str) -> Option<Kept> {
        if let Some(k) = self.kept.lock().unwrap_or_else(|e| e.into_inner()).get(url) {
            return Some(k.clone());
        }
        let bytes = std::fs::read(self.kept_path(url)?).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn keep(&self, url: &str, kept: Kept) {
        if let Some(path) = self.kept_path(url)
            && let Some(dir) = path.parent()
            && std::fs::create_dir_all(dir).is_ok()
            && let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir)
        {
            use std::io::Write;
            let json = serde_json::to_vec(&kept).expect("a kept answer serializes");
            // Losing it costs a full request next time, nothing else.
            if tmp.write_all(&json).is_ok() {
                let _ = tmp.persist(&path);
            }
        }
        self.kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(url.to_string(), kept);
    }

    /// GETs `url` as text. `conditional`: ask with the `ETag` of the answer kept for it and
    /// take the kept answer on a 304. `token`: sent as a bearer token (never logged).
    pub async fn get(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        token: Option<&str>,
        conditional: bool,
    ) -> Result<Response, SourceError> {
        let err = |error: String| SourceError::Request {
            url: url.to_string(),
            error,
        };
        let mut req = self.client.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let kept = conditional.then(|| self.kept(url)).flatten();
        if let Some(k) = &kept {
            req = req.header("If-None-Match", &k.etag);
        }
        let mut resp = req.send().await.map_err(|e| err(describe(&e)))?;
        let status = resp.status().as_u16();
        if status == 304
            && let Some(k) = kept
        {
            self.not_modified
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(Response {
                body: k.body,
                link: k.link,
            });
        }
        if !(200..300).contains(&status) {
            let limited = resp
                .headers()
                .get("x-ratelimit-remaining")
                .is_some_and(|v| v == "0");
            let hint = match status {
                403 | 429 if limited => {
                    " (rate limited: set GITHUB_TOKEN to a token with read access to public repositories)"
                }
                401 => " (GITHUB_TOKEN was refused)",
                404 => " (not found)",
                _ => "",
            };
            return Err(SourceError::Status {
                url: url.to_string(),
                status,
                hint,
            });
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let etag = header("etag");
        let link = header("link");
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| err(describe(&e)))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(SourceError::TooLarge {
                    url: url.to_string(),
                });
            }
            body.extend_from_slice(&chunk);
        }
        let body = String::from_utf8(body).map_err(|_| SourceError::Garbage {
            url: url.to_string(),
            expected: "UTF-8 text",
            got: "invalid UTF-8".into(),
        })?;
        if conditional && let Some(etag) = etag {
            self.keep(
                url,
                Kept {
                    etag,
                    link: link.clone(),
                    body: body.clone(),
                },
            );
        }
        Ok(Response { body, link })
    }
}

/// A reqwest error with its causes (connection refused, timed out, …), without the URL it
/// already names.
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut out = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    // The innermost cause says what happened (connection refused, a TLS failure, …).
    let mut cause = e.source();
    let mut last = None;
    while let Some(c) = cause {
        last = Some(c.to_string());
        cause = c.source();
    }
    if let Some(c) = last {
        out.push_str(": ");
        out.push_str(&c);
    }
    out
}

/// The start of an answer that is not what was expected, for a message: one line, bounded.
pub fn excerpt(body: &str) -> String {
    let line = body.trim().lines().next().unwrap_or("");
    let mut s: String = line.chars().take(60).collect();
    if s.is_empty() {
        s = "an empty answer".into();
    } else {
        s = format!("{s:?}");
        if line.chars().count() > 60 || body.trim().lines().count() > 1 {
            s.push('…');
        }
    }
    s
}

/// `base` without a trailing slash, joined with `rest`.
pub fn join(base: &str, rest: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        rest.trim_start_matches('/')
    )
}
