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
use super::{StepCtx, StepOutput, io_err};
use crate::exec::process::StepError;

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

/// `gcloud compute images describe-from-family`: the name of the family's newest image. Its
/// standard output is the answer; its errors go to the log.
async fn from_family(
    ctx: &StepCtx,
    family: &str,
    project: &str,
    env: &[(String, String)],
) -> Result<String, StepError> {
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
    ctx.spawner.log.line(&format!("$ {}", argv.join(" ")));
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&ctx.work)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = cloud::bounded(ctx, async {
        cmd.output().await.map_err(|e| {
            StepError::Failed(match e.kind() {
                std::io::ErrorKind::NotFound => "`gcloud` is not installed or not on PATH".into(),
                _ => format!("cannot start `gcloud`: {e}"),
            })
        })
    })
    .await?;
    for l in String::from_utf8_lossy(&out.stderr).lines() {
        ctx.spawner.log.line(l);
    }
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || name.is_empty() {
        return Err(StepError::Failed(format!(
            "found no image of family {family} in project {project} (`gcloud compute images describe-from-family` {})",
            match out.status.code() {
                Some(0) => "printed nothing".to_string(),
                Some(c) => format!("exited with status {c}"),
                None => "was killed by a signal".to_string(),
            }
        )));
    }
    Ok(name)
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

fn required(ctx: &StepCtx, name: &str) -> Result<String, StepError> {
    cloud::str_param(ctx, name)
        .ok_or_else(|| StepError::Failed(format!("the step has no `{name}` parameter")))
}

pub async fn run(ctx: &StepCtx) -> Result<StepOutput, StepError> {
    let member = required(ctx, "member")?;
    let role = required(ctx, "role")?;
    let project = required(ctx, "project")?;
    let fact = cloud::upstream_fact(ctx, "image").map(String::from);
    let named = fact.or_else(|| cloud::str_param(ctx, "image"));
    let family = cloud::str_param(ctx, "family").map(|f| clean_resource_name(&f));
    if named.is_none() && family.is_none() {
        return Err(StepError::Failed(
            "the build recorded no `image` fact: give the step `image \"NAME\"` or `family \"FAMILY\"`".into(),
        ));
    }
    let mut env: Vec<(String, String)> = vec![("CLOUDSDK_CORE_DISABLE_PROMPTS".into(), "1".into())];
    let key = match cloud::secret(ctx, KEY_SECRET) {
        Some(json) => {
            // tempfile creates the file 0600; it is removed when `key` is dropped.
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
            Some(f)
        }
        None => None,
    };
    let result = async {
        let image = match (named, &family) {
            (Some(n), _) => n,
            (None, Some(f)) => from_family(ctx, f, &project, &env).await?,
            (None, None) => unreachable!("checked above"),
        };
        ctx.spawner
            .run(&argv(&image, &project, &member, &role), &env, &ctx.work)
            .await?;
        Ok::<_, StepError>(image)
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
