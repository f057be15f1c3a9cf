//! Which of a provider's secrets each step is given, when its module does not list them with
//! `secrets "NAME" …`: a step gets only the secrets it uses. Pure.
//!
//! - a publish builder (`upload`, `aws-ami`, `gcp-image`, `hcloud-snapshot`) gets the names it
//!   reads (its [`SecretUse::Named`], in its file under `crate::builders`);
//! - an `image-builder` step gets the names packer's builder for its template directory reads
//!   (`packer/ami` the AWS ones, `packer/hcloud` HCLOUD_TOKEN, `packer/qemu` none), plus every
//!   secret no builder knows, which only the user's template patches can use (a registry
//!   password); a directory kiln has no table for gets every secret;
//! - a `command` step gets every secret.

use crate::config::step::SecretUse;
use crate::config::{BuilderKind, Secret};

/// The environment variables AWS credentials are read from: packer's `amazon-ebs` builder and
/// kiln's `upload` (to `s3://`) and `aws-ami` steps.
pub const AWS_SECRETS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
];

/// Per packer directory: the environment variables its packer builder reads (`NAME*`: a prefix).
const PACKER: &[(&str, &[&str])] = &[
    ("ami", AWS_SECRETS),
    ("hcloud", &["HCLOUD_TOKEN"]),
    (
        "gce",
        &[
            "GOOGLE_APPLICATION_CREDENTIALS_JSON",
            "GOOGLE_APPLICATION_CREDENTIALS",
        ],
    ),
    ("azure", &["AZURE_*", "ARM_*"]),
    ("openstack", &["OS_*"]),
    ("digitalocean", &["DIGITALOCEAN_*"]),
    ("qemu", &[]),
    ("raw", &[]),
];

/// The names a builder reads, when it names them (see [`SecretUse::Named`]).
fn named(builder: BuilderKind) -> Option<&'static [&'static str]> {
    match builder.spec().secrets {
        SecretUse::Named(names) => Some(names),
        _ => None,
    }
}

fn matches(patterns: &[&str], name: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => *p == name,
    })
}

/// Whether some builder of kiln knows `name` as its own.
fn known(name: &str) -> bool {
    PACKER.iter().any(|(_, p)| matches(p, name))
        || BuilderKind::ALL
            .into_iter()
            .filter_map(named)
            .any(|p| matches(p, name))
}

/// The secrets of `all` (the provider's) that a step of `builder` gets: those `listed` when the
/// module lists them, else the builder's default (see the module docs). `dir` is an
/// image-builder step's `packer/<dir>`.
pub fn step_secrets(
    builder: BuilderKind,
    dir: Option<&str>,
    listed: Option<&[String]>,
    all: &[Secret],
) -> Vec<Secret> {
    let keep = |s: &Secret| -> bool {
        if let Some(list) = listed {
            return list.contains(&s.name);
        }
        match builder.spec().secrets {
            SecretUse::Packer => match dir.and_then(|d| PACKER.iter().find(|(k, _)| *k == d)) {
                Some((_, p)) => matches(p, &s.name) || !known(&s.name),
                None => true,
            },
            SecretUse::Every => true,
            SecretUse::Named(names) => matches(names, &s.name),
            SecretUse::None => false,
        }
    };
    all.iter().filter(|s| keep(s)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretSource;

    fn s(name: &str) -> Secret {
        Secret {
            name: name.into(),
            source: SecretSource::Env(name.into()),
        }
    }

    fn names(v: Vec<Secret>) -> Vec<String> {
        v.into_iter().map(|s| s.name).collect()
    }

    #[test]
    fn each_step_gets_what_it_uses() {
        let openstack = [s("AWS_ACCESS_KEY_ID"), s("AWS_SECRET_ACCESS_KEY")];
        assert!(step_secrets(BuilderKind::ImageBuilder, Some("qemu"), None, &openstack).is_empty());
        assert_eq!(
            names(step_secrets(BuilderKind::Upload, None, None, &openstack)),
            ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
        );
        let hcloud = [s("HCLOUD_TOKEN"), s("REGISTRY_PASSWORD")];
        assert_eq!(
            names(step_secrets(
                BuilderKind::ImageBuilder,
                Some("hcloud"),
                None,
                &hcloud
            )),
            ["HCLOUD_TOKEN", "REGISTRY_PASSWORD"]
        );
        assert_eq!(
            names(step_secrets(
                BuilderKind::HcloudSnapshot,
                None,
                None,
                &hcloud
            )),
            ["HCLOUD_TOKEN"]
        );
        let listed = ["REGISTRY_PASSWORD".to_string()];
        assert_eq!(
            names(step_secrets(
                BuilderKind::ImageBuilder,
                Some("hcloud"),
                Some(&listed),
                &hcloud
            )),
            ["REGISTRY_PASSWORD"]
        );
        assert_eq!(
            names(step_secrets(
                BuilderKind::ImageBuilder,
                Some("vsphere"),
                None,
                &openstack
            ))
            .len(),
            2
        );
    }
}
