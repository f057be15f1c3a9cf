//! `gcp-image`: grants `member` the `role` on the image a googlecompute build made, as the seed
//! does, with `gcloud compute images add-iam-policy-binding IMAGE --project=P --member=M --role=R`.
//!
//! image-builder's gce template has no manifest post-processor and names images with a
//! timestamp, so the image is, in this order: the build's `image` fact (when a patch adds a
//! manifest), the `image` parameter, or the newest image of the `family` parameter
//! (`gcloud compute images describe-from-family`, the name cleaned as packer's
//! `clean_resource_name` does).
//!
//! The service-account key (the secret `GOOGLE_APPLICATION_CREDENTIALS_JSON`) is written to a
//! 0600 file in the step's work directory, handed to gcloud through
//! `CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE` and `GOOGLE_APPLICATION_CREDENTIALS` (never on the
//! command line, never activated into gcloud's configuration) and removed when gcloud is done.
//! Without that secret gcloud uses whatever account it is logged in with.

use std::io::Write;

use super::cloud;
use super::{
    Builder, BuilderError, Checked, Claim, RefreshFuture, StepCtx, StepFuture, StepOutput, io_err,
    one_by_one,
};
use crate::config::BuilderKind;
use crate::config::step::{BuilderSpec, Consumes, ParamSpec, ParamType, SecretUse};
use crate::graph::Node;
use crate::imagebuilder::Install;
use crate::plan::DirtyReason;
use crate::process::ProcessError;

/// What a `gcp-image` step takes: its parameters, and the provider inputs it receives.
pub static SPEC: BuilderSpec = BuilderSpec {
    kind: BuilderKind::GcpImage,
    params: &[
        ParamSpec::new(
            "member",
            ParamType::Str,
            true,
            "e.g. \"allAuthenticatedUsers\"",
        ),
        ParamSpec::new(
            "role",
            ParamType::Str,
            true,
            "e.g. \"roles/compute.imageUser\"",
        ),
        ParamSpec::new(
            "project",
            ParamType::Str,
            true,
            "the project holding the image",
        ),
        ParamSpec::new(
            "image",
            ParamType::Str,
            false,
            "the image name, when the build records none",
        ),
        ParamSpec::new(
            "family",
            ParamType::Str,
            false,
            "otherwise: share the newest image of this family",
        ),
    ],
    consumes: Consumes {
        vars: false,
        patches: false,
        files: false,
        secrets: true,
        image_builder: false,
    },
    secrets: SecretUse::Named(&[KEY_SECRET]),
};

pub struct GcpImage;

/// How a `gcp-image` step fails beyond gcloud's exit status.
#[derive(Debug, thiserror::Error)]
pub enum GcpImageError {
    #[error("`gcloud` is not installed or not on PATH")]
    NotInstalled,
    /// `status`: what `gcloud compute images describe-from-family` did instead.
    #[error(
        "found no image of family {family} in project {project} (`gcloud compute images describe-from-family` {status})"
    )]
    NoFamilyImage {
        family: String,
        project: String,
        status: String,
    },
    #[error(
        "the build recorded no `image` fact: give the step `image \"NAME\"` or `family \"FAMILY\"`"
    )]
    NoImage,
}

impl Builder for GcpImage {
    fn spec(&self) -> &'static BuilderSpec {
        &SPEC
    }

    fn run<'a>(&'a self, ctx: &'a StepCtx) -> StepFuture<'a> {
        Box::pin(run(ctx))
    }

    fn makes_claims(&self) -> bool {
        true
    }

    fn refresh<'a>(&'a self, claims: &'a [&'a Claim]) -> RefreshFuture<'a> {
        one_by_one(claims, refresh)
    }

    fn programs(&self, _node: &Node, _install: &Install) -> Vec<(String, String)> {
        vec![(
            "gcloud".into(),
            "install the Google Cloud CLI, which the gcp-image step shares images with".into(),
        )]
    }
}

pub const KEY_SECRET: &str = "GOOGLE_APPLICATION_CREDENTIALS_JSON";

/// packer's `clean_resource_name`: lower case, anything but `[a-z0-9-]` becomes `-`.
pub fn clean_resource_name(s: &str) -> String {
    s.to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Runs gcloud, supervised as every program a step runs, and returns how it exited and what it
/// printed on standard output; its errors go to the log.
async fn gcloud_output(
    ctx: &StepCtx,
    argv: &[String],
    env: &[(String, String)],
) -> Result<std::process::Output, BuilderError> {
    ctx.spawner
        .output(argv, env, &ctx.work)
        .await
        .map_err(|e| match e {
            ProcessError::NotFound { .. } => GcpImageError::NotInstalled.into(),
            e => BuilderError::from(e),
        })
}

fn status_text(status: std::process::ExitStatus) -> String {
    match status.code() {
        Some(0) => "printed nothing".to_string(),
        Some(c) => format!("exited with status {c}"),
        None => "was killed by a signal".to_string(),
    }
}

/// `gcloud compute images describe-from-family`: the name of the family's newest image.
async fn from_family(
    ctx: &StepCtx,
    family: &str,
    project: &str,
    env: &[(String, String)],
) -> Result<String, BuilderError> {
    let argv = [
        "gcloud".to_string(),
        "compute".into(),
        "images".into(),
        "describe-from-family".into(),
        family.into(),
        format!("--project={project}"),
        "--format=value(name)".into(),
        "--quiet".into(),
    ];
    let out = gcloud_output(ctx, &argv, env).await?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || name.is_empty() {
        return Err(GcpImageError::NoFamilyImage {
            family: family.to_string(),
            project: project.to_string(),
            status: status_text(out.status),
        }
        .into());
    }
    Ok(name)
}

type Env = Vec<(String, String)>;

/// The environment that points gcloud at the step's service-account key, written to a 0600 file
/// in the work directory that is removed when the returned file is dropped.
fn key_env(ctx: &StepCtx) -> Result<(Env, Option<tempfile::NamedTempFile>), BuilderError> {
    let mut env: Vec<(String, String)> = vec![("CLOUDSDK_CORE_DISABLE_PROMPTS".into(), "1".into())];
    let Some(json) = cloud::secret(ctx, KEY_SECRET) else {
        return Ok((env, None));
    };
    // tempfile creates the file 0600.
    let mut f = tempfile::Builder::new()
        .prefix("gcp-key-")
        .suffix(".json")
        .tempfile_in(&ctx.work)
        .map_err(io_err("writing the service-account key"))?;
    f.write_all(json.as_bytes())
        .and_then(|_| f.as_file().sync_all())
        .map_err(io_err("writing the service-account key"))?;
    let path = f.path().to_string_lossy().into_owned();
    env.push((
        "CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE".into(),
        path.clone(),
    ));
    env.push(("GOOGLE_APPLICATION_CREDENTIALS".into(), path));
    Ok((env, Some(f)))
}

/// Refresh: the image still exists and its IAM policy still grants the recorded role to the
/// recorded member (`gcloud compute images get-iam-policy`).
async fn refresh(c: &Claim<'_>) -> Checked {
    let ctx = &c.ctx;
    let facts = &c.facts;
    let (Some(image), Some(project), Some(member), Some(role)) = (
        facts.get("image"),
        facts.get("project"),
        facts.get("member"),
        facts.get("role"),
    ) else {
        return Checked::Unknown(
            "its cached result records no image, project, member and role".into(),
        );
    };
    let (env, key) = match key_env(ctx) {
        Ok(k) => k,
        Err(e) => return Checked::Unknown(e.to_string()),
    };
    let argv = vec![
        "gcloud".to_string(),
        "compute".into(),
        "images".into(),
        "get-iam-policy".into(),
        image.clone(),
        format!("--project={project}"),
        "--format=json".into(),
        "--quiet".into(),
    ];
    let out = gcloud_output(ctx, &argv, &env).await;
    drop(key);
    let target = format!("gcp image {project}/{image}");
    let out = match out {
        Ok(o) => o,
        Err(e) => return Checked::Unknown(e.to_string()),
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("was not found") || err.contains("notFound") {
            return Checked::Drift(vec![DirtyReason::PublishedMissing { target }]);
        }
        return Checked::Unknown(format!(
            "`gcloud compute images get-iam-policy` {}",
            status_text(out.status)
        ));
    }
    let policy: serde_json::Value = match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        Err(e) => return Checked::Unknown(format!("gcloud printed no IAM policy: {e}")),
    };
    let granted = policy["bindings"].as_array().is_some_and(|bs| {
        bs.iter().any(|b| {
            b["role"] == role.as_str()
                && b["members"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|m| m == member.as_str()))
        })
    });
    if granted {
        Checked::Held { witness: None }
    } else {
        Checked::Drift(vec![DirtyReason::PublishedDrift {
            target,
            what: "IAM policy".into(),
            found: format!("no {role} for {member}"),
            expected: format!("{role} for {member}"),
        }])
    }
}

/// The gcloud command line.
pub fn argv(image: &str, project: &str, member: &str, role: &str) -> Vec<String> {
    vec![
        "gcloud".into(),
        "compute".into(),
        "images".into(),
        "add-iam-policy-binding".into(),
        image.into(),
        format!("--project={project}"),
        format!("--member={member}"),
        format!("--role={role}"),
        "--format=json".into(),
        "--quiet".into(),
    ]
}

fn required(ctx: &StepCtx, name: &str) -> Result<String, BuilderError> {
    cloud::str_param(ctx, name).ok_or_else(|| BuilderError::MissingParam(name.to_string()))
}

async fn run(ctx: &StepCtx) -> Result<StepOutput, BuilderError> {
    let member = required(ctx, "member")?;
    let role = required(ctx, "role")?;
    let project = required(ctx, "project")?;
    let fact = cloud::upstream_fact(ctx, "image").map(String::from);
    let named = fact.or_else(|| cloud::str_param(ctx, "image"));
    let family = cloud::str_param(ctx, "family").map(|f| clean_resource_name(&f));
    if named.is_none() && family.is_none() {
        return Err(GcpImageError::NoImage.into());
    }
    let (env, key) = key_env(ctx)?;
    let result = async {
        let image = match (named, &family) {
            (Some(n), _) => n,
            (None, Some(f)) => from_family(ctx, f, &project, &env).await?,
            (None, None) => unreachable!("checked above"),
        };
        ctx.spawner
            .run(&argv(&image, &project, &member, &role), &env, &ctx.work)
            .await?;
        Ok::<_, BuilderError>(image)
    }
    .await;
    if let Some(f) = key {
        f.close()
            .map_err(io_err("removing the service-account key"))?;
    }
    let image = result?;
    ctx.spawner
        .log
        .line(&format!("granted {member} {role} on {project}/{image}"));
    let mut out = StepOutput::default();
    out.facts.insert("image".into(), image);
    out.facts.insert("project".into(), project);
    out.facts.insert("member".into(), member);
    out.facts.insert("role".into(), role);
    if let Some(f) = family {
        out.facts.insert("family".into(), f);
    }
    cloud::log_facts(ctx, &out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_cleaned_like_packer_does() {
        assert_eq!(
            clean_resource_name("capi-ubuntu-2404-k8s-v1.31"),
            "capi-ubuntu-2404-k8s-v1-31"
        );
        assert_eq!(clean_resource_name("A_b.C"), "a-b-c");
    }
}
