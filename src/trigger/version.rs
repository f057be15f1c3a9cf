//! Kubernetes versions as the release sources spell them: a series (`1.32`), a patch version
//! (`1.32.5`, written `v1.32.5` by dl.k8s.io and GitHub) and a pkgs.k8s.io package revision
//! (the `1.1` of deb `1.32.5-1.1`). Pure.

use std::cmp::Ordering;
use std::fmt;

/// A minor release series, such as `1.32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Series {
    pub major: u64,
    pub minor: u64,
}

impl Series {
    /// `1.32` (no `v`, no patch).
    pub fn parse(s: &str) -> Option<Series> {
        let (major, minor) = s.split_once('.')?;
        Some(Series {
            major: number(major)?,
            minor: number(minor)?,
        })
    }
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

fn number(s: &str) -> Option<u64> {
    (!s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// A release version: `1.32.5`, or a pre-release such as `1.33.0-rc.1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(semver::Version);

impl Version {
    /// Parses `1.32.5` or `v1.32.5` (surrounding whitespace allowed, as in a `.txt` file).
    pub fn parse(s: &str) -> Option<Version> {
        let s = s.trim();
        let s = s.strip_prefix('v').unwrap_or(s);
        let v = semver::Version::parse(s).ok()?;
        v.build.is_empty().then_some(Version(v))
    }

    pub fn series(&self) -> Series {
        Series {
            major: self.0.major,
            minor: self.0.minor,
        }
    }

    pub fn patch(&self) -> u64 {
        self.0.patch
    }

    pub fn is_prerelease(&self) -> bool {
        !self.0.pre.is_empty()
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.cmp(&other.0)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A Debian revision of pkgs.k8s.io (`1.1`, `2.1`), ordered the way dpkg orders revisions made
/// of digits and dots: number by number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Revision(String);

impl Revision {
    /// A revision of digits separated by dots, as pkgs.k8s.io (OBS) writes them.
    pub fn parse(s: &str) -> Option<Revision> {
        (!s.is_empty() && s.split('.').all(|p| number(p).is_some()))
            .then(|| Revision(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn parts(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.split('.').map(|p| p.parse().unwrap_or(0))
    }
}

impl Ord for Revision {
    fn cmp(&self, other: &Self) -> Ordering {
        let (mut a, mut b) = (self.parts(), other.parts());
        loop {
            match (a.next(), b.next()) {
                (None, None) => return Ordering::Equal,
                (None, Some(_)) => return Ordering::Less,
                (Some(_), None) => return Ordering::Greater,
                (Some(x), Some(y)) if x != y => return x.cmp(&y),
                _ => {}
            }
        }
    }
}

impl PartialOrd for Revision {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_as_the_sources_write_them() {
        let v = Version::parse("v1.32.5\n").unwrap();
        assert_eq!(v.to_string(), "1.32.5");
        assert_eq!(v.series(), Series::parse("1.32").unwrap());
        assert!(!v.is_prerelease());
        assert!(Version::parse("v1.33.0-rc.1").unwrap().is_prerelease());
        assert!(Version::parse("1.32").is_none());
        assert!(Version::parse("<html>").is_none());
        assert!(Version::parse("").is_none());
    }

    #[test]
    fn versions_order_numerically_and_before_their_prereleases_not() {
        let v = |s| Version::parse(s).unwrap();
        assert!(v("1.32.10") > v("1.32.9"));
        assert!(v("1.33.0-rc.1") < v("1.33.0"));
        assert!(v("1.33.0-alpha.2") < v("1.33.0-beta.0"));
    }

    #[test]
    fn revisions_order_number_by_number() {
        let r = |s| Revision::parse(s).unwrap();
        assert!(r("2.1") > r("1.1"));
        assert!(r("1.10") > r("1.9"));
        assert!(r("1.1.1") > r("1.1"));
        assert!(Revision::parse("1.x").is_none());
        assert!(Revision::parse("").is_none());
    }

    #[test]
    fn series_parse() {
        assert_eq!(Series::parse("1.9").unwrap().to_string(), "1.9");
        assert!(Series::parse("1").is_none());
        assert!(Series::parse("1.32.1").is_none());
        assert!(Series::parse("v1.32").is_none());
    }
}
