//! The AWS shared credentials and config files (`~/.aws/credentials`, `~/.aws/config`), read as
//! the AWS CLI reads them, for an `s3://` remote cache when the environment names no keys:
//! profile `AWS_PROFILE` (else `default`); the files at `AWS_SHARED_CREDENTIALS_FILE` and
//! `AWS_CONFIG_FILE` (else under `$HOME/.aws/`). The environment wins over the files, key by key
//! for the region, as it does for the AWS CLI. Values are never printed.

use std::path::PathBuf;

/// What a profile of the files gives.
#[derive(Default, PartialEq, Eq)]
pub struct Profile {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub region: Option<String>,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the values.
        f.debug_struct("Profile")
            .field("access_key_id", &self.access_key_id.is_some())
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// The profile the environment `env` selects, from the files it names; `None` when neither file
/// has that profile. A file that cannot be parsed is an error naming it.
pub fn profile(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Profile>, String> {
    let name = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let home = env("HOME").map(PathBuf::from);
    let file = |var: &str, rel: &str| {
        env(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(rel)))
    };
    let mut found = None;
    // In the credentials file a profile is `[name]`; in the config file `[profile name]`, and
    // `[default]` for the default one.
    let config_section = if name == "default" {
        name.clone()
    } else {
        format!("profile {name}")
    };
    for (path, section) in [
        (
            file("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
            name.as_str(),
        ),
        (file("AWS_CONFIG_FILE", "config"), config_section.as_str()),
    ] {
        let Some(path) = path.filter(|p| p.is_file()) else {
            continue;
        };
        let ini = ini::Ini::load_from_file(&path)
            .map_err(|e| format!("cannot read the AWS file {}: {e}", path.display()))?;
        let Some(props) = ini.section(Some(section)) else {
            continue;
        };
        let p: &mut Profile = found.get_or_insert_with(Profile::default);
        let get = |k: &str| props.get(k).map(str::to_string).filter(|v| !v.is_empty());
        // The credentials file comes first: what it sets wins over the config file.
        p.access_key_id = p.access_key_id.take().or_else(|| get("aws_access_key_id"));
        p.secret_access_key = p
            .secret_access_key
            .take()
            .or_else(|| get("aws_secret_access_key"));
        p.session_token = p.session_token.take().or_else(|| get("aws_session_token"));
        p.region = p.region.take().or_else(|| get("region"));
    }
    Ok(found)
}

/// Applies the files' profile to `b` where the environment leaves a gap.
pub fn apply(
    mut b: object_store::aws::AmazonS3Builder,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<object_store::aws::AmazonS3Builder, String> {
    let Some(p) = profile(env)? else {
        return Ok(b);
    };
    if env("AWS_ACCESS_KEY_ID").is_none()
        && let (Some(id), Some(secret)) = (p.access_key_id, p.secret_access_key)
    {
        b = b.with_access_key_id(id).with_secret_access_key(secret);
        if let Some(token) = p.session_token {
            b = b.with_token(token);
        }
    }
    if env("AWS_REGION").is_none()
        && env("AWS_DEFAULT_REGION").is_none()
        && let Some(region) = p.region
    {
        b = b.with_region(region);
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn a_profile_comes_from_both_files_the_credentials_file_first() {
        let home = tempfile::tempdir().unwrap();
        let aws = home.path().join(".aws");
        std::fs::create_dir_all(&aws).unwrap();
        std::fs::write(
            aws.join("credentials"),
            "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = d\n\n\
             [ci]\naws_access_key_id = AKIACI\naws_secret_access_key = s3cr3t\naws_session_token = tok\n",
        )
        .unwrap();
        std::fs::write(
            aws.join("config"),
            "[default]\nregion = eu-west-1\n\n[profile ci]\nregion = eu-central-1\naws_access_key_id = AKIAIGNORED\n",
        )
        .unwrap();
        let home_var = ("HOME", home.path().display().to_string());
        let ci = profile(&env(&[home_var.clone(), ("AWS_PROFILE", "ci".into())]))
            .unwrap()
            .unwrap();
        assert_eq!(ci.access_key_id.as_deref(), Some("AKIACI"));
        assert_eq!(ci.secret_access_key.as_deref(), Some("s3cr3t"));
        assert_eq!(ci.session_token.as_deref(), Some("tok"));
        assert_eq!(ci.region.as_deref(), Some("eu-central-1"));
        assert!(!format!("{ci:?}").contains("s3cr3t"));
        let default = profile(&env(std::slice::from_ref(&home_var)))
            .unwrap()
            .unwrap();
        assert_eq!(default.access_key_id.as_deref(), Some("AKIADEFAULT"));
        assert_eq!(default.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            profile(&env(&[home_var, ("AWS_PROFILE", "none".into())])).unwrap(),
            None
        );
        // The files the environment names win over those under HOME.
        let other = home.path().join("other");
        std::fs::write(&other, "[default]\naws_access_key_id = AKIAOTHER\n").unwrap();
        let named = profile(&env(&[
            ("HOME", "/nonexistent".into()),
            ("AWS_SHARED_CREDENTIALS_FILE", other.display().to_string()),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(named.access_key_id.as_deref(), Some("AKIAOTHER"));
    }

    #[test]
    fn a_file_that_does_not_parse_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("credentials");
        std::fs::write(&f, "[default\naws_access_key_id = x\n").unwrap();
        let e = profile(&env(&[(
            "AWS_SHARED_CREDENTIALS_FILE",
            f.display().to_string(),
        )]))
        .unwrap_err();
        assert!(e.contains(&f.display().to_string()), "{e}");
    }
}
