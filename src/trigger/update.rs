//! `kiln update`: the newest stable patch release of each tracked series (or the exact release a
//! build request names), its package revision, and the rewrite of `images.lock`.
//!
//! An update never moves a series to a pre-release and never backwards: a source that answers an
//! older version than the lock (a mirror lagging behind) changes nothing, and an exact version
//! older than the lock is an error ([`UpdateError::Older`]). A series that cannot be resolved is
//! an error naming the series and the source, and nothing is written.

use std::path::Path;

use super::lockfile::{self, LockLine};
use super::source::{Found, ReleaseSource, SourceError, SourceKind, Sources};
use super::version::{Revision, Series, Version};
use crate::config::{Config, LOCK_FILE};

/// Which release to move a series to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The newest stable patch release (dl.k8s.io's `stable-<minor>.txt`).
    Latest,
    /// Exactly this release (`1.31.5`), which GitHub's releases API must list as a stable
    /// release: the version a build request names.
    Exact(String),
}

/// A series as the lock records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locked {
    pub version: String,
    pub revision: String,
    /// Where the version came from (a URL); empty when the lock does not say.
    pub source: String,
    /// Where the revision came from (a URL); empty when the lock does not say.
    pub revision_source: String,
}

/// One series moved forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockChange {
    pub series: String,
    /// `None` for a tracked series the lock has no line for yet.
    pub from: Option<Locked>,
    pub to: Locked,
}

impl LockChange {
    /// `kubernetes 1.32: 1.32.4 (1.32.4-1.1) → 1.32.5 (1.32.5-1.1)`
    pub fn describe(&self) -> String {
        let deb = |l: &Locked| format!("{} ({}-{})", l.version, l.version, l.revision);
        match &self.from {
            Some(from) => format!(
                "kubernetes {}: {} → {}",
                self.series,
                deb(from),
                deb(&self.to)
            ),
            None => format!(
                "kubernetes {}: (not locked) → {}",
                self.series,
                deb(&self.to)
            ),
        }
    }
}

/// Why an update could not be made.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("kubernetes {series} is not declared{hint}")]
    UnknownSeries { series: String, hint: String },
    #[error("kubernetes {series} is pinned to {version} in the config, not tracked")]
    NotTracked { series: String, version: String },
    #[error("`{given}` is not a Kubernetes version (MAJOR.MINOR.PATCH, such as 1.32.5)")]
    BadVersion { given: String },
    #[error(
        "kubernetes {series}: {version} is a pre-release ({source_url}); kiln only locks stable releases"
    )]
    NotStable {
        series: String,
        version: String,
        source_url: String,
    },
    #[error("kubernetes {series}: the {} answered {version}, a release of another series ({source_url})", kind.as_str())]
    WrongSeries {
        series: String,
        version: String,
        kind: SourceKind,
        source_url: String,
    },
    #[error("kubernetes {series}: {version} is not a release on {source_url}")]
    NotReleased {
        series: String,
        version: String,
        source_url: String,
    },
    #[error(
        "kubernetes {series}: {version} has no kubeadm, kubelet and kubectl packages in {source_url} (yet)"
    )]
    NotPackaged {
        series: String,
        version: String,
        source_url: String,
    },
    #[error(
        "kubernetes {series}: {requested} is older than {locked}, which {LOCK_FILE} already has; an update never moves backwards"
    )]
    Older {
        series: String,
        requested: String,
        locked: String,
    },
    #[error("kubernetes {series}: cannot read the {}: {error}", kind.as_str())]
    Source {
        series: String,
        kind: SourceKind,
        error: SourceError,
    },
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Several(Vec<UpdateError>),
    #[error("{path}: {error}")]
    Lock {
        path: String,
        error: lockfile::LockError,
    },
}

impl UpdateError {
    /// How to fix it, for the command line.
    pub fn help(&self) -> String {
        match self {
            UpdateError::UnknownSeries { .. } => {
                "declare it in images.kdl as `kubernetes \"1.32\" track=#true { … }`".into()
            }
            UpdateError::NotTracked { series, .. } => format!(
                "change the version in images.kdl, or track the series: `kubernetes \"{series}\" track=#true {{ … }}`"
            ),
            UpdateError::BadVersion { .. } => "name a series (1.32) or a release (1.32.5)".into(),
            UpdateError::NotStable { .. } | UpdateError::NotReleased { .. } => {
                "name a stable patch release listed on GitHub's kubernetes/kubernetes releases".into()
            }
            UpdateError::WrongSeries { .. } => {
                "check KILN_K8S_RELEASE_URL: it must serve dl.k8s.io's release markers".into()
            }
            UpdateError::NotPackaged { .. } => {
                "packages follow a release by some hours: run kiln update again later".into()
            }
            UpdateError::Older { .. } => "name the locked release or a newer one".into(),
            UpdateError::Source { kind, .. } => match kind {
                SourceKind::StableTxt => {
                    "check the network, or KILN_K8S_RELEASE_URL (default https://dl.k8s.io/release)".into()
                }
                SourceKind::Packages => "check the network, or KILN_K8S_PACKAGES_URL (default https://pkgs.k8s.io/core:/stable:)".into(),
                SourceKind::GitHub => {
                    "check the network, GITHUB_API_URL (default https://api.github.com) or GITHUB_TOKEN".into()
                }
            },
            UpdateError::Several(all) => all.first().map(|e| e.help()).unwrap_or_default(),
            UpdateError::Lock { .. } => "fix images.lock (kiln check names the problem), then run kiln update again".into(),
        }
    }
}

/// What the lock records for a series now: the loaded config's values, and the sources the lock
/// file names for them.
fn current(config: &Config, series: &str) -> Option<Locked> {
    let rel = config.releases.get(series)?;
    if rel.version.is_empty() {
        return None;
    }
    let entry = lock_text(config)
        .and_then(|t| lockfile::entries(t).ok())
        .and_then(|es| es.into_iter().find(|e| e.series == series))
        .unwrap_or_default();
    Some(Locked {
        version: rel.version.clone(),
        revision: rel.revision.clone(),
        source: entry.source.unwrap_or_default(),
        revision_source: entry.revision_source.unwrap_or_default(),
    })
}

/// The text of `images.lock` as the config was loaded with it.
fn lock_text(config: &Config) -> Option<&str> {
    let path = config.root.join(LOCK_FILE);
    config
        .sources
        .files()
        .find(|f| f.path == path)
        .map(|f| f.text.as_str())
}

/// The series to update: the named ones (each declared and tracked), else every tracked one.
fn chosen(config: &Config, series: &[String]) -> Result<Vec<String>, UpdateError> {
    if series.is_empty() {
        return Ok(config
            .releases
            .values()
            .filter(|r| r.tracked)
            .map(|r| r.series.clone())
            .collect());
    }
    let mut out = Vec::new();
    for s in series {
        let Some(rel) = config.releases.get(s) else {
            let names: Vec<&str> = config.releases.keys().map(String::as_str).collect();
            return Err(UpdateError::UnknownSeries {
                series: s.clone(),
                hint: format!(
                    "; {}",
                    crate::config::diag::did_you_mean(s, &names, "series")
                ),
            });
        };
        if !rel.tracked {
            return Err(UpdateError::NotTracked {
                series: s.clone(),
                version: rel.version.clone(),
            });
        }
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    Ok(out)
}

async fn ask(
    source: &dyn ReleaseSource,
    series: &str,
    s: Series,
) -> Result<Vec<Found>, UpdateError> {
    source
        .releases(s)
        .await
        .map_err(|error| UpdateError::Source {
            series: series.to_string(),
            kind: source.kind(),
            error,
        })
}

/// The newest revision the `Packages` index has for `version`.
async fn revision(
    sources: &Sources,
    series: &str,
    s: Series,
    version: &Version,
) -> Result<Revision, UpdateError> {
    ask(&sources.packages, series, s)
        .await?
        .into_iter()
        .filter(|f| &f.version == version && !f.prerelease)
        .filter_map(|f| f.revision)
        .max()
        .ok_or_else(|| UpdateError::NotPackaged {
            series: series.to_string(),
            version: version.to_string(),
            source_url: sources.packages.url(s),
        })
}

/// Resolves one series; `None` when the lock is already there (or ahead).
async fn resolve_one(
    config: &Config,
    sources: &Sources,
    series: &str,
    target: &Target,
) -> Result<Option<LockChange>, UpdateError> {
    let s = Series::parse(series).ok_or_else(|| UpdateError::BadVersion {
        given: series.to_string(),
    })?;
    let from = current(config, series);
    let locked = from.as_ref().and_then(|l| {
        Some((
            Version::parse(&l.version)?,
            Revision::parse(&l.revision).unwrap_or_else(|| Revision::parse("0").expect("0")),
        ))
    });
    let (version, source) = match target {
        Target::Latest => {
            let found = ask(&sources.stable, series, s).await?;
            let url = sources.stable.url(s);
            let Some(f) = found.into_iter().next() else {
                return Err(UpdateError::NotReleased {
                    series: series.into(),
                    version: "a stable release".into(),
                    source_url: url,
                });
            };
            check_stable(series, s, &f, SourceKind::StableTxt, &url)?;
            if let Some((v, _)) = &locked
                && f.version < *v
            {
                return Ok(None);
            }
            (f.version, url)
        }
        Target::Exact(given) => {
            let v = Version::parse(given).ok_or_else(|| UpdateError::BadVersion {
                given: given.clone(),
            })?;
            let url = sources.github.url(s);
            if v.is_prerelease() {
                return Err(UpdateError::NotStable {
                    series: series.into(),
                    version: v.to_string(),
                    source_url: url,
                });
            }
            if let Some((locked, _)) = &locked {
                if v < *locked {
                    return Err(UpdateError::Older {
                        series: series.into(),
                        requested: v.to_string(),
                        locked: locked.to_string(),
                    });
                }
                if v == *locked {
                    return Ok(None);
                }
            }
            let found = ask(&sources.github, series, s).await?;
            match found.into_iter().find(|f| f.version == v) {
                Some(f) => check_stable(series, s, &f, SourceKind::GitHub, &url)?,
                None => {
                    return Err(UpdateError::NotReleased {
                        series: series.into(),
                        version: v.to_string(),
                        source_url: url,
                    });
                }
            }
            (v.clone(), format!("{url}/tags/v{v}"))
        }
    };
    let rev = revision(sources, series, s, &version).await?;
    if let Some((v, r)) = &locked
        && *v == version
        && *r >= rev
    {
        return Ok(None);
    }
    Ok(Some(LockChange {
        series: series.to_string(),
        from,
        to: Locked {
            version: version.to_string(),
            revision: rev.to_string(),
            source,
            revision_source: sources.packages.url(s),
        },
    }))
}

fn check_stable(
    series: &str,
    s: Series,
    f: &Found,
    kind: SourceKind,
    url: &str,
) -> Result<(), UpdateError> {
    if f.version.series() != s {
        return Err(UpdateError::WrongSeries {
            series: series.into(),
            version: f.version.to_string(),
            kind,
            source_url: url.into(),
        });
    }
    if f.prerelease {
        return Err(UpdateError::NotStable {
            series: series.into(),
            version: f.version.to_string(),
            source_url: url.into(),
        });
    }
    Ok(())
}

/// What moves: for every chosen series (the named ones, else every tracked one), the lock change
/// to `target`, series that are already there left out. With [`Target::Exact`], `series` may be
/// empty: the version names its series. Every series is asked at once; if any cannot be
/// resolved, the result is an error naming each that could not (and no change at all).
pub async fn resolve(
    config: &Config,
    sources: &Sources,
    series: &[String],
    target: &Target,
) -> Result<Vec<LockChange>, UpdateError> {
    let chosen = match target {
        Target::Exact(v) => {
            let parsed =
                Version::parse(v).ok_or_else(|| UpdateError::BadVersion { given: v.clone() })?;
            let own = parsed.series().to_string();
            if !series.is_empty() && !series.contains(&own) {
                return Err(UpdateError::BadVersion { given: v.clone() });
            }
            chosen(config, &[own])?
        }
        Target::Latest => chosen(config, series)?,
    };
    let results = futures_util::future::join_all(
        chosen
            .iter()
            .map(|s| resolve_one(config, sources, s, target)),
    )
    .await;
    let mut changes = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(Some(c)) => changes.push(c),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    match errors.len() {
        0 => Ok(changes),
        1 => Err(errors.pop().expect("one error")),
        _ => Err(UpdateError::Several(errors)),
    }
}

/// The lines `changes` write.
fn lines(changes: &[LockChange]) -> Vec<LockLine> {
    changes
        .iter()
        .map(|c| LockLine {
            series: c.series.clone(),
            version: c.to.version.clone(),
            revision: c.to.revision.clone(),
            source: c.to.source.clone(),
            revision_source: c.to.revision_source.clone(),
        })
        .collect()
}

/// The text `images.lock` (as `current`, its text now; empty when there is none) has once
/// `changes` are applied. A change the file is already ahead of (another update moved it
/// further meanwhile) is left out: the lock never moves backwards.
pub fn rewritten(current: &str, changes: &[LockChange]) -> Result<String, lockfile::LockError> {
    let now = if current.trim().is_empty() {
        Vec::new()
    } else {
        lockfile::entries(current)?
    };
    let forward: Vec<LockChange> = changes
        .iter()
        .filter(|c| {
            let Some(e) = now.iter().find(|e| e.series == c.series) else {
                return true;
            };
            match (Version::parse(&e.version), Version::parse(&c.to.version)) {
                (Some(have), Some(want)) if have > want => false,
                (Some(have), Some(want)) if have == want => {
                    let r = |s: Option<&str>| s.and_then(Revision::parse);
                    r(e.revision.as_deref()) < r(Some(&c.to.revision))
                        || e.source.as_deref() != Some(c.to.source.as_str())
                }
                _ => true,
            }
        })
        .cloned()
        .collect();
    if forward.is_empty() {
        return Ok(current.to_string());
    }
    lockfile::rewrite(current, &lines(&forward))
}

/// Writes `changes` to `<config_dir>/images.lock` atomically, keeping its comments and order;
/// one writer at a time in this process, and never backwards (see [`rewritten`]).
pub fn apply(config_dir: &Path, changes: &[LockChange]) -> Result<(), UpdateError> {
    static WRITER: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = WRITER.lock().unwrap_or_else(|e| e.into_inner());
    let path = config_dir.join(LOCK_FILE);
    let lock_err = |error| UpdateError::Lock {
        path: path.display().to_string(),
        error,
    };
    let current = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(lock_err(e.into())),
    };
    let text = rewritten(&current, changes).map_err(lock_err)?;
    if text == current {
        return Ok(());
    }
    lockfile::write_atomic(&path, &text).map_err(lock_err)
}
