//! dl.k8s.io's release markers: `<base>/stable-<minor>.txt` holds the newest stable patch
//! release of a minor (`v1.32.5`).

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::source::{Found, Http, ReleaseSource, SourceError, SourceKind, excerpt, join};
use super::version::{Series, Version};

pub struct StableTxt {
    http: Arc<Http>,
    base: String,
}

impl StableTxt {
    pub fn new(http: Arc<Http>, base: String) -> StableTxt {
        StableTxt { http, base }
    }

    /// The version a marker file holds.
    pub fn parse(url: &str, body: &str) -> Result<Version, SourceError> {
        Version::parse(body).ok_or_else(|| SourceError::Garbage {
            url: url.to_string(),
            expected: "a version such as v1.32.5",
            got: excerpt(body),
        })
    }
}

impl ReleaseSource for StableTxt {
    fn kind(&self) -> SourceKind {
        SourceKind::StableTxt
    }

    fn url(&self, series: Series) -> String {
        join(&self.base, &format!("stable-{series}.txt"))
    }

    fn releases(&self, series: Series) -> BoxFuture<'_, Result<Vec<Found>, SourceError>> {
        Box::pin(async move {
            let url = self.url(series);
            let body = self.http.get(&url, &[], None, false).await?.body;
            let version = StableTxt::parse(&url, &body)?;
            Ok(vec![Found {
                prerelease: version.is_prerelease(),
                version,
                revision: None,
            }])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_is_one_version() {
        assert_eq!(
            StableTxt::parse("u", "v1.31.14").unwrap().to_string(),
            "1.31.14"
        );
        assert_eq!(
            StableTxt::parse("u", "v1.31.14\n").unwrap().to_string(),
            "1.31.14"
        );
        let e = StableTxt::parse("http://x/stable-1.31.txt", "<html><body>oops</body></html>")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "http://x/stable-1.31.txt answered something that is not a version such as v1.32.5: \"<html><body>oops</body></html>\""
        );
    }
}
