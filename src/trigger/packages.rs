//! pkgs.k8s.io's Debian `Packages` index of a minor, `<base>/v<minor>/deb/Packages`: which
//! versions of kubeadm, kubelet and kubectl are packaged, with which revisions (`1.32.5-1.1`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::source::{Found, Http, ReleaseSource, SourceError, SourceKind, excerpt, join};
use super::version::{Revision, Series, Version};

/// The packages image-builder installs at `kubernetes_deb_version`.
pub const PACKAGES: [&str; 3] = ["kubeadm", "kubelet", "kubectl"];

pub struct PackagesIndex {
    http: Arc<Http>,
    base: String,
}

impl PackagesIndex {
    pub fn new(http: Arc<Http>, base: String) -> PackagesIndex {
        PackagesIndex { http, base }
    }

    /// The releases an index packages: a version with the revisions that every one of
    /// [`PACKAGES`] the index holds at all has (one [`Found`] per such revision). An index with
    /// none of them, or with no stanza at all, is not a Kubernetes `Packages` index.
    pub fn parse(url: &str, body: &str) -> Result<Vec<Found>, SourceError> {
        let mut seen: BTreeMap<&str, BTreeSet<(String, String)>> = BTreeMap::new();
        let mut stanzas = 0;
        for stanza in body.split("\n\n") {
            let (mut package, mut version) = (None, None);
            for line in stanza.lines() {
                if let Some(v) = line.strip_prefix("Package:") {
                    package = Some(v.trim());
                } else if let Some(v) = line.strip_prefix("Version:") {
                    version = Some(v.trim());
                }
            }
            let (Some(p), Some(v)) = (package, version) else {
                continue;
            };
            stanzas += 1;
            let Some(p) = PACKAGES.into_iter().find(|x| *x == p) else {
                continue;
            };
            // [epoch:]upstream-revision
            let v = v.split_once(':').map_or(v, |(_, rest)| rest);
            if let Some((upstream, revision)) = v.rsplit_once('-') {
                seen.entry(p)
                    .or_default()
                    .insert((upstream.to_string(), revision.to_string()));
            }
        }
        if seen.is_empty() {
            return Err(SourceError::Garbage {
                url: url.to_string(),
                expected: "a Debian Packages index with kubeadm, kubelet or kubectl",
                got: if stanzas == 0 {
                    excerpt(body)
                } else {
                    format!("{stanzas} stanzas of other packages")
                },
            });
        }
        let mut sets = seen.into_values();
        let mut common = sets.next().unwrap_or_default();
        for s in sets {
            common = common.intersection(&s).cloned().collect();
        }
        Ok(common
            .into_iter()
            .filter_map(|(upstream, revision)| {
                // Debian spells a pre-release `1.33.0~rc.1`.
                let prerelease = upstream.contains('~');
                let version = Version::parse(&upstream.replace('~', "-"))?;
                Some(Found {
                    prerelease: prerelease || version.is_prerelease(),
                    version,
                    revision: Some(Revision::parse(&revision)?),
                })
            })
            .collect())
    }
}

impl ReleaseSource for PackagesIndex {
    fn kind(&self) -> SourceKind {
        SourceKind::Packages
    }

    fn url(&self, series: Series) -> String {
        join(&self.base, &format!("v{series}/deb/Packages"))
    }

    fn releases(&self, series: Series) -> BoxFuture<'_, Result<Vec<Found>, SourceError>> {
        Box::pin(async move {
            let url = self.url(series);
            let body = self.http.get(&url, &[], None, false).await?.body;
            PackagesIndex::parse(&url, &body)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real pkgs.k8s.io stanzas: kubeadm 1.27.0-2.1 and 1.27.1-1.1, and cri-tools.
    const EXCERPT: &str = include_str!("../../tests/data/k8s-releases/Packages-v1.27-excerpt");

    #[test]
    fn the_real_index_gives_each_version_its_revision() {
        let found = PackagesIndex::parse("u", EXCERPT).unwrap();
        let got: Vec<String> = found
            .iter()
            .map(|f| format!("{}-{}", f.version, f.revision.as_ref().unwrap()))
            .collect();
        assert_eq!(got, ["1.27.0-2.1", "1.27.1-1.1"]);
        assert!(found.iter().all(|f| !f.prerelease));
    }

    #[test]
    fn a_version_counts_only_when_every_package_has_it() {
        let index = "Package: kubeadm\nVersion: 1.32.5-1.1\n\nPackage: kubelet\nVersion: 1.32.4-1.1\n\n\
                     Package: kubeadm\nVersion: 1.32.4-1.1\n\nPackage: kubeadm\nVersion: 1.33.0~rc.1-1.1\n\n\
                     Package: kubelet\nVersion: 1.33.0~rc.1-1.1\n";
        let found = PackagesIndex::parse("u", index).unwrap();
        let got: Vec<(String, bool)> = found
            .iter()
            .map(|f| (f.version.to_string(), f.prerelease))
            .collect();
        assert_eq!(
            got,
            [
                ("1.32.4".to_string(), false),
                ("1.33.0-rc.1".to_string(), true)
            ]
        );
    }

    #[test]
    fn anything_else_is_an_error() {
        for body in [
            "",
            "<html>404</html>",
            "Package: cri-tools\nVersion: 1.25.0-1.1\n",
        ] {
            assert!(PackagesIndex::parse("u", body).is_err(), "{body:?}");
        }
    }
}
