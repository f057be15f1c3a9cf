//! GitHub's releases API for kubernetes/kubernetes: `GET <api>/repos/kubernetes/kubernetes/
//! releases?per_page=100`, newest first, page after page by the `Link: <…>; rel="next"` header.
//! Every page is asked for with the `ETag` of its last answer, so an unchanged page is a 304
//! (which GitHub does not count against the rate limit); `GITHUB_TOKEN`, when set, is sent as a
//! bearer token.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::source::{Found, Http, ReleaseSource, SourceError, SourceKind, excerpt, join};
use super::version::{Series, Version};

/// The most pages read for one series: kubernetes/kubernetes has about 700 releases.
const MAX_PAGES: usize = 30;

pub struct GitHubReleases {
    http: Arc<Http>,
    api: String,
    token: Option<String>,
}

/// The fields of a release kiln reads (GitHub documents many more).
#[derive(serde::Deserialize)]
struct Release {
    tag_name: String,
    #[serde(default)]
    draft: bool,
    #[serde(default)]
    prerelease: bool,
}

impl GitHubReleases {
    pub fn new(http: Arc<Http>, api: String, token: Option<String>) -> GitHubReleases {
        GitHubReleases { http, api, token }
    }

    pub(super) fn http(&self) -> &Http {
        &self.http
    }

    /// The releases of one page, drafts left out; tags that are not versions (GitHub lists
    /// every release of the repository) are skipped.
    pub fn parse(url: &str, body: &str) -> Result<Vec<Found>, SourceError> {
        let releases: Vec<Release> =
            serde_json::from_str(body).map_err(|e| SourceError::Garbage {
                url: url.to_string(),
                expected: "a JSON array of releases",
                got: format!("{e} in {}", excerpt(body)),
            })?;
        Ok(releases
            .into_iter()
            .filter(|r| !r.draft)
            .filter_map(|r| {
                let version = Version::parse(&r.tag_name)?;
                Some(Found {
                    prerelease: r.prerelease || version.is_prerelease(),
                    version,
                    revision: None,
                })
            })
            .collect())
    }
}

/// The `rel="next"` URL of a `Link` header.
fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    })
}

impl ReleaseSource for GitHubReleases {
    fn kind(&self) -> SourceKind {
        SourceKind::GitHub
    }

    fn url(&self, _series: Series) -> String {
        join(&self.api, "repos/kubernetes/kubernetes/releases")
    }

    /// Reads pages until the one with the series' `.0` release (releases come newest first, and
    /// every patch release of a minor comes after its `.0`), or the last page.
    fn releases(&self, series: Series) -> BoxFuture<'_, Result<Vec<Found>, SourceError>> {
        Box::pin(async move {
            let headers = [
                ("Accept", "application/vnd.github+json"),
                ("X-GitHub-Api-Version", "2022-11-28"),
            ];
            let mut url = format!("{}?per_page=100", self.url(series));
            let mut out = Vec::new();
            for _ in 0..MAX_PAGES {
                let page = self
                    .http
                    .get(&url, &headers, self.token.as_deref(), true)
                    .await?;
                let found = GitHubReleases::parse(&url, &page.body)?;
                let mut first_seen = false;
                for f in found {
                    if f.version.series() == series {
                        first_seen |= f.version.patch() == 0 && !f.version.is_prerelease();
                        out.push(f);
                    }
                }
                match page.link.as_deref().and_then(next_link) {
                    Some(next) if !first_seen => url = next,
                    _ => break,
                }
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_link_is_found_among_the_others() {
        let link = r#"<https://api.github.com/repositories/20580498/releases?per_page=100&page=2>; rel="next", <https://api.github.com/repositories/20580498/releases?per_page=100&page=7>; rel="last""#;
        assert_eq!(
            next_link(link).as_deref(),
            Some("https://api.github.com/repositories/20580498/releases?per_page=100&page=2")
        );
        assert_eq!(
            next_link(r#"<https://x/?page=1>; rel="prev", <https://x/?page=1>; rel="first""#),
            None
        );
    }

    #[test]
    fn drafts_are_left_out_and_prereleases_marked() {
        let body = r#"[
            {"tag_name": "v1.33.0-rc.1", "draft": false, "prerelease": true},
            {"tag_name": "v1.32.5", "draft": false, "prerelease": false},
            {"tag_name": "v1.32.6", "draft": true, "prerelease": false},
            {"tag_name": "not-a-version", "draft": false, "prerelease": false}
        ]"#;
        let found = GitHubReleases::parse("u", body).unwrap();
        let got: Vec<(String, bool)> = found
            .iter()
            .map(|f| (f.version.to_string(), f.prerelease))
            .collect();
        assert_eq!(
            got,
            [
                ("1.33.0-rc.1".to_string(), true),
                ("1.32.5".to_string(), false)
            ]
        );
        assert!(GitHubReleases::parse("u", "{\"message\": \"Not Found\"}").is_err());
    }
}
