//! What kiln knows about kubernetes-sigs/image-builder, per version: its make targets and the
//! packer variables it declares (embedded, so checks need no I/O), JSON template patches and
//! packer's manifest post-processor output. Pure; the runner is in `crate::builders`.

mod env;
mod install;
pub mod lookups;
mod manifest;
mod patch;
mod secrets;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

pub use env::{ENV_PREFIX, builds_flatcar, check_env_name, escape_for_make, ib_version, plain_env};
pub use install::{Engine, Install, NO_IMAGE, NO_SOURCE, NOT_SET_UP};
pub use manifest::{ManifestError, manifest_facts};
pub use patch::{PatchError, append, apply_patch, merge_patch};
pub use secrets::{AWS_SECRETS, step_secrets};

/// The data shipped for one image-builder version.
#[derive(Debug)]
pub struct Data {
    pub version: &'static str,
    /// Every `build-*` and `validate-*` target of `images/capi/Makefile`, sorted.
    pub targets: Vec<&'static str>,
    /// Scope (`config`, or a `packer/<dir>` name) → the variables it declares.
    pub variables: BTreeMap<&'static str, BTreeSet<&'static str>>,
    /// Every packer template under `images/capi` (`packer/ami/packer.json`, …), sorted.
    pub templates: Vec<&'static str>,
    /// For directories with several templates: the one each target runs.
    pub target_templates: BTreeMap<&'static str, &'static str>,
}

/// Embedded data files: (version, make-targets.txt, variables.txt, templates.txt,
/// target-templates.txt).
const SHIPPED: &[(&str, &str, &str, &str, &str)] = &[(
    "v0.1.55",
    include_str!("../../data/image-builder/v0.1.55/make-targets.txt"),
    include_str!("../../data/image-builder/v0.1.55/variables.txt"),
    include_str!("../../data/image-builder/v0.1.55/templates.txt"),
    include_str!("../../data/image-builder/v0.1.55/target-templates.txt"),
)];

fn lines(text: &'static str) -> impl Iterator<Item = &'static str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

static DATA: LazyLock<Vec<Data>> = LazyLock::new(|| {
    SHIPPED
        .iter()
        .map(|(version, targets, vars, templates, target_templates)| {
            let mut targets: Vec<&str> = lines(targets).collect();
            targets.sort_unstable();
            let mut templates: Vec<&str> = lines(templates).collect();
            templates.sort_unstable();
            let mut variables: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
            for l in lines(vars) {
                if let Some((scope, name)) = l.split_once(' ') {
                    variables.entry(scope).or_default().insert(name.trim());
                }
            }
            Data {
                version,
                targets,
                variables,
                templates,
                target_templates: lines(target_templates)
                    .filter_map(|l| l.split_once(' '))
                    .collect(),
            }
        })
        .collect()
});

/// The data for `version`, if this kiln ships it.
pub fn data(version: &str) -> Option<&'static Data> {
    DATA.iter().find(|d| d.version == version)
}

/// The image-builder versions this kiln knows.
pub fn versions() -> Vec<&'static str> {
    SHIPPED.iter().map(|(v, ..)| *v).collect()
}

/// The scope of variables every build reads (`packer/config/*.json`).
pub const CONFIG_SCOPE: &str = "config";

impl Data {
    pub fn has_target(&self, target: &str) -> bool {
        self.targets.binary_search(&target).is_ok()
    }

    pub fn has_template(&self, path: &str) -> bool {
        self.templates.binary_search(&path).is_ok()
    }

    /// The closest known template, for a "did you mean".
    pub fn suggest_template(&self, path: &str) -> Option<&'static str> {
        crate::config::diag::suggest(path, self.templates.iter().copied())
    }

    /// The closest known target, for a "did you mean".
    pub fn suggest_target(&self, target: &str) -> Option<&'static str> {
        crate::config::diag::suggest(target, self.targets.iter().copied())
    }

    /// The packer template `make TARGET` runs (`build-hcloud-flatcar` →
    /// `packer/hcloud/packer-flatcar.json`), if kiln knows it: read from the Makefile for
    /// directories with several templates, else the directory's only one.
    pub fn template_of(&self, target: &str) -> Option<&'static str> {
        if let Some(t) = self.target_templates.get(target) {
            return Some(t);
        }
        let prefix = format!("packer/{}/", self.template_dir(target)?);
        let mut own = self.templates.iter().filter(|t| {
            t.strip_prefix(&prefix)
                .is_some_and(|rest| !rest.contains('/'))
        });
        match (own.next(), own.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        }
    }

    /// For a target this version lacks, the targets of the same verb and template family that
    /// build the same operating system at the releases nearest the one asked for, nearest
    /// first: `build-ami-ubuntu-2004` → `build-ami-ubuntu-2204`, `build-ami-ubuntu-2404`.
    /// `None` when the target names no `<os>-<release>` or the family builds no such OS.
    pub fn closest_targets(&self, target: &str) -> Option<Closest> {
        let (head, os, variant) = split_os(target)?;
        let wanted = os_version(os)?;
        let family = os.trim_end_matches(|c: char| c.is_ascii_digit());
        let mut near: Vec<(u32, u32, &'static str)> = Vec::new();
        let mut newest = 0;
        for t in &self.targets {
            let Some((h, o, v)) = split_os(t) else {
                continue;
            };
            let Some(release) = os_version(o) else {
                continue;
            };
            if h == head
                && v == variant
                && o.trim_end_matches(|c: char| c.is_ascii_digit()) == family
            {
                newest = newest.max(release);
                near.push((release.abs_diff(wanted), u32::MAX - release, t));
            }
        }
        near.sort_unstable();
        let targets: Vec<&'static str> = near.into_iter().take(2).map(|(.., t)| t).collect();
        Some(Closest {
            os: targets.first()?.strip_prefix(head)?,
            targets,
            removed: wanted < newest,
        })
    }

    /// The `packer/<dir>` a make target builds from: `build-ami-flatcar` → `ami`,
    /// `validate-qemu-ubuntu-2404` → `qemu`. `None` for targets whose templates kiln has no
    /// variable data for.
    pub fn template_dir(&self, target: &str) -> Option<&'static str> {
        let rest = target
            .strip_prefix("build-")
            .or_else(|| target.strip_prefix("validate-"))?;
        self.variables
            .keys()
            .copied()
            .filter(|d| *d != CONFIG_SCOPE)
            .filter(|d| {
                rest.strip_prefix(d)
                    .is_some_and(|r| r.is_empty() || r.starts_with('-'))
            })
            .max_by_key(|d| d.len())
    }

    /// Whether a build from `packer/<dir>` may be given `name` in a var file: declared by
    /// `packer/config/*.json` or by the directory's templates and var files.
    pub fn declares(&self, dir: &str, name: &str) -> bool {
        [CONFIG_SCOPE, dir]
            .iter()
            .any(|s| self.variables.get(s).is_some_and(|v| v.contains(name)))
    }

    /// The closest declared variable for a build from `packer/<dir>`.
    pub fn suggest_variable(&self, dir: &str, name: &str) -> Option<&'static str> {
        let candidates = [CONFIG_SCOPE, dir]
            .into_iter()
            .filter_map(|s| self.variables.get(s))
            .flat_map(|v| v.iter().copied());
        crate::config::diag::suggest(name, candidates)
    }
}

/// See [`Data::closest_targets`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closest {
    /// Nearest first (at most two).
    pub targets: Vec<&'static str>,
    /// The `{os}` value that makes the nearest one (`ubuntu-2204`).
    pub os: &'static str,
    /// Whether the release asked for is older than one this version builds: its targets were
    /// removed (image-builder drops releases past their end of life), rather than not there yet.
    pub removed: bool,
}

/// `build-ami-ubuntu-2204-arm64` → (`build-ami-`, `ubuntu-2204`, `-arm64`): the target up to
/// the first `<letters>-<digits>` segment pair that names an OS release, that pair, and the rest.
fn split_os(target: &str) -> Option<(&str, &str, &str)> {
    let parts: Vec<&str> = target.split('-').collect();
    let i = (1..parts.len()).find(|&i| {
        !parts[i].is_empty()
            && parts[i].bytes().all(|b| b.is_ascii_digit())
            && parts[i - 1].bytes().all(|b| b.is_ascii_lowercase())
    })?;
    let start: usize = parts[..i - 1].iter().map(|p| p.len() + 1).sum();
    let end = start + parts[i - 1].len() + 1 + parts[i].len();
    Some((&target[..start], &target[start..end], &target[end..]))
}

/// The release number of `ubuntu-2204` (2204).
fn os_version(os: &str) -> Option<u32> {
    os.rsplit('-').next()?.parse().ok()
}

/// A variable passed on packer's command line (`-var NAME=VALUE` in PACKER_FLAGS) rather than
/// in the var file: `var "NAME" VALUE flag=#true`. Such variables are stored under this prefix.
pub const FLAG_PREFIX: &str = "-var ";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_targets_build_the_same_os_at_the_nearest_releases() {
        let d = data("v0.1.55").unwrap();
        let c = d.closest_targets("build-ami-ubuntu-2004").unwrap();
        assert_eq!(
            c.targets,
            ["build-ami-ubuntu-2204", "build-ami-ubuntu-2404"]
        );
        assert_eq!((c.os, c.removed), ("ubuntu-2204", true));
        let c = d.closest_targets("validate-gce-ubuntu-1804").unwrap();
        assert_eq!(
            c.targets,
            ["validate-gce-ubuntu-2204", "validate-gce-ubuntu-2404"]
        );
        // The variant stays: an arm64 target is offered arm64 targets.
        let c = d.closest_targets("build-ami-ubuntu-2004-arm64").unwrap();
        assert_eq!(
            c.targets,
            ["build-ami-ubuntu-2204-arm64", "build-ami-ubuntu-2404-arm64"]
        );
        assert_eq!(c.os, "ubuntu-2204-arm64");
        // A release newer than any it builds is not "removed".
        let c = d.closest_targets("build-hcloud-ubuntu-2804").unwrap();
        assert_eq!(
            (c.targets[0], c.removed),
            ("build-hcloud-ubuntu-2604", false)
        );
        // No release number, or an OS the family does not build: nothing to offer.
        assert_eq!(d.closest_targets("build-ami-flatcar-lts"), None);
        assert_eq!(d.closest_targets("build-hcloud-debian-12"), None);
    }

    #[test]
    fn template_of_follows_the_makefile() {
        let d = data("v0.1.55").unwrap();
        assert_eq!(
            d.template_of("build-hcloud-flatcar"),
            Some("packer/hcloud/packer-flatcar.json")
        );
        assert_eq!(
            d.template_of("validate-hcloud-ubuntu-2404"),
            Some("packer/hcloud/packer.json")
        );
        assert_eq!(
            d.template_of("build-ami-windows-2019"),
            Some("packer/ami/packer-windows.json")
        );
        assert_eq!(
            d.template_of("build-ami-ubuntu-2404"),
            Some("packer/ami/packer.json")
        );
        assert_eq!(
            d.template_of("build-qemu-ubuntu-2404"),
            Some("packer/qemu/packer.json.tmpl")
        );
    }

    #[test]
    fn split_os_finds_the_release() {
        assert_eq!(
            split_os("build-ami-ubuntu-2204-arm64"),
            Some(("build-ami-", "ubuntu-2204", "-arm64"))
        );
        assert_eq!(
            split_os("build-qemu-rhel-8"),
            Some(("build-qemu-", "rhel-8", ""))
        );
        assert_eq!(split_os("build-ami-flatcar"), None);
    }
}
