//! `aws-ami`: checks and publishes the AMIs an image-builder build made. packer (with
//! `ami_regions`, `ami_groups=all`, `snapshot_groups=all`, `encrypted=false`) copies and shares
//! them already; this step takes the per-region ids from the build's `ami.<region>` facts, checks
//! through EC2's query API that each exists and is available, and with `public #true` makes sure
//! the AMI has launch permission for group `all` and its snapshots create-volume permission for
//! group `all` (adding what is missing), then reads the launch permission back.
//!
//! Requests are signed with SigV4 using the secrets `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY` and, when given, `AWS_SESSION_TOKEN`.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;

use super::cloud::{self, bounded, http_err};
use super::{
    Builder, BuilderError, Checked, Claim, RefreshFuture, StepCtx, StepFuture, StepOutput,
    one_by_one,
};
use crate::config::BuilderKind;
use crate::config::step::{BuilderSpec, Consumes, ParamSpec, ParamType, SecretUse};
use crate::imagebuilder::AWS_SECRETS;
use crate::plan::DirtyReason;

/// What a `aws-ami` step takes: its parameters, and the provider inputs it receives.
pub static SPEC: BuilderSpec = BuilderSpec {
    kind: BuilderKind::AwsAmi,
    params: &[
        ParamSpec::new(
            "regions",
            ParamType::List,
            true,
            "regions the AMI is copied to",
        ),
        ParamSpec::new(
            "public",
            ParamType::Bool,
            false,
            "make the AMI and its snapshots public",
        ),
        ParamSpec::new(
            "endpoint",
            ParamType::Str,
            false,
            "the EC2 endpoint for every region (default https://ec2.<region>.amazonaws.com)",
        ),
    ],
    consumes: Consumes {
        vars: false,
        patches: false,
        files: false,
        secrets: true,
        image_builder: false,
    },
    secrets: SecretUse::Named(AWS_SECRETS),
};

pub struct AwsAmi;

/// How an `aws-ami` step fails.
#[derive(Debug, thiserror::Error)]
pub enum AwsAmiError {
    #[error("`regions` names no region to publish to")]
    NoRegions,
    /// The build's facts have no AMI for a region to publish to (`known`: the ones they have).
    #[error(
        "the build recorded no AMI for region {region} (its facts have {known}); add {region} to the build's ami_regions"
    )]
    NoAmi { region: String, known: String },
    #[error("signing {action}: {message}")]
    Signing { action: String, message: String },
    /// EC2 answered with an error.
    #[error("EC2 {action} in {region} failed: {code}: {message}")]
    Api {
        action: String,
        region: String,
        code: String,
        message: String,
    },
    #[error("AMI {ami} does not exist in {region} ({code}: {message})")]
    NoSuchAmi {
        ami: String,
        region: String,
        code: String,
        message: String,
    },
    /// DescribeImages answered without the AMI.
    #[error("AMI {ami} does not exist in {region}")]
    NotListed { ami: String, region: String },
    #[error("AMI {ami} in {region} is {state}, not available")]
    NotAvailable {
        ami: String,
        region: String,
        state: String,
    },
    #[error("{0} (encrypted snapshots cannot be made public: build with encrypted=false)")]
    SnapshotNotShared(Box<BuilderError>),
    #[error("AMI {ami} in {region} is still not public after ModifyImageAttribute")]
    StillPrivate { ami: String, region: String },
}

impl AwsAmiError {
    fn api(action: &str, region: &str, e: ApiError) -> AwsAmiError {
        AwsAmiError::Api {
            action: action.to_string(),
            region: region.to_string(),
            code: e.code,
            message: e.message,
        }
    }
}

impl Builder for AwsAmi {
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
}

const VERSION: &str = "2016-11-15";
const FORM: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// Percent-encodes a query value the way SigV4 expects (RFC 3986 unreserved characters kept).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The form body of an EC2 query action.
pub fn form(action: &str, params: &[(&str, &str)]) -> String {
    let mut parts = vec![
        format!("Action={}", encode(action)),
        format!("Version={VERSION}"),
    ];
    parts.extend(
        params
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v))),
    );
    parts.join("&")
}

/// The texts of every `<tag>…</tag>` in `xml`, in order (EC2's responses do not nest a tag in
/// itself).
pub fn tag_texts<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

fn first<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    tag_texts(xml, tag).into_iter().next()
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// An EC2 error response: its `Code` and `Message`.
#[derive(Debug)]
struct ApiError {
    code: String,
    message: String,
}

/// EC2's query API for one set of credentials.
struct Ec2 {
    client: reqwest::Client,
    /// `None`: `https://ec2.<region>.amazonaws.com/`.
    endpoint: Option<String>,
    key_id: String,
    secret: String,
    token: Option<String>,
}

impl Ec2 {
    fn url(&self, region: &str) -> String {
        let base = match &self.endpoint {
            Some(e) => e.clone(),
            None => format!("https://ec2.{region}.amazonaws.com/"),
        };
        // The canonical request needs a path; an endpoint given as `http://host:port` has none.
        match base.split_once("://") {
            Some((_, rest)) if !rest.contains('/') => format!("{base}/"),
            _ => base,
        }
    }

    /// Signed headers for a POST of `body` to `url`.
    fn sign(&self, region: &str, url: &str, body: &str) -> Result<Vec<(String, String)>, String> {
        let identity =
            Credentials::new(&self.key_id, &self.secret, self.token.clone(), None, "kiln").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name("ec2")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| e.to_string())?
            .into();
        let headers = [("content-type", FORM)];
        let req = SignableRequest::new(
            "POST",
            url,
            headers.into_iter(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| e.to_string())?;
        let (instructions, _) = sign(req, &params).map_err(|e| e.to_string())?.into_parts();
        Ok(instructions
            .headers()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// Runs `action` in `region`; the response body, or EC2's error.
    async fn call(
        &self,
        region: &str,
        action: &str,
        params: &[(&str, &str)],
    ) -> Result<Result<String, ApiError>, BuilderError> {
        let url = self.url(region);
        let body = form(action, params);
        let headers = self
            .sign(region, &url, &body)
            .map_err(|message| AwsAmiError::Signing {
                action: action.to_string(),
                message,
            })?;
        let mut req = self
            .client
            .post(&url)
            .header("content-type", FORM)
            .body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let what = format!("EC2 {action} in {region}");
        let resp = req.send().await.map_err(http_err(&what))?;
        let status = resp.status();
        let text = resp.text().await.map_err(http_err(&what))?;
        if status.is_success() {
            return Ok(Ok(text));
        }
        Ok(Err(ApiError {
            code: first(&text, "Code")
                .map(unescape)
                .unwrap_or_else(|| format!("HTTP {status}")),
            message: first(&text, "Message").map(unescape).unwrap_or_default(),
        }))
    }

    /// Like [`Ec2::call`], with EC2's errors as step failures.
    async fn ok(
        &self,
        region: &str,
        action: &str,
        params: &[(&str, &str)],
    ) -> Result<String, BuilderError> {
        self.call(region, action, params)
            .await?
            .map_err(|e| AwsAmiError::api(action, region, e).into())
    }
}

/// Checks (and with `public`, shares) one region's AMI.
async fn publish_region(
    ctx: &StepCtx,
    ec2: &Ec2,
    region: &str,
    ami: &str,
    public: bool,
) -> Result<(), BuilderError> {
    let log = &ctx.spawner.log;
    let described = match ec2
        .call(region, "DescribeImages", &[("ImageId.1", ami)])
        .await?
    {
        Ok(xml) => xml,
        Err(e) if e.code.starts_with("InvalidAMIID") => {
            return Err(AwsAmiError::NoSuchAmi {
                ami: ami.to_string(),
                region: region.to_string(),
                code: e.code,
                message: e.message,
            }
            .into());
        }
        Err(e) => return Err(AwsAmiError::api("DescribeImages", region, e).into()),
    };
    let images = first(&described, "imagesSet").unwrap_or("");
    if !tag_texts(images, "imageId").contains(&ami) {
        return Err(AwsAmiError::NotListed {
            ami: ami.to_string(),
            region: region.to_string(),
        }
        .into());
    }
    let state = first(images, "imageState").unwrap_or("unknown");
    if state != "available" {
        return Err(AwsAmiError::NotAvailable {
            ami: ami.to_string(),
            region: region.to_string(),
            state: state.to_string(),
        }
        .into());
    }
    if !public {
        log.line(&format!("{region}: {ami} is available"));
        return Ok(());
    }
    if first(images, "isPublic") == Some("true") {
        log.line(&format!("{region}: {ami} is already public"));
    } else {
        ec2.ok(
            region,
            "ModifyImageAttribute",
            &[("ImageId", ami), ("LaunchPermission.Add.1.Group", "all")],
        )
        .await?;
        log.line(&format!(
            "{region}: gave group all launch permission on {ami}"
        ));
    }
    for snap in tag_texts(images, "snapshotId") {
        let attr = ec2
            .ok(
                region,
                "DescribeSnapshotAttribute",
                &[
                    ("SnapshotId", snap),
                    ("Attribute", "createVolumePermission"),
                ],
            )
            .await?;
        if tag_texts(&attr, "group").contains(&"all") {
            continue;
        }
        ec2.ok(
            region,
            "ModifySnapshotAttribute",
            &[
                ("SnapshotId", snap),
                ("Attribute", "createVolumePermission"),
                ("OperationType", "add"),
                ("UserGroup.1", "all"),
            ],
        )
        .await
        .map_err(|e| match e {
            // Ctrl-C or the deadline is not a refusal to share.
            BuilderError::Cancelled | BuilderError::TimedOut(_) => e,
            e => AwsAmiError::SnapshotNotShared(Box::new(e)).into(),
        })?;
        log.line(&format!(
            "{region}: gave group all create-volume permission on {snap}"
        ));
    }
    let perms = ec2
        .ok(
            region,
            "DescribeImageAttribute",
            &[("ImageId", ami), ("Attribute", "launchPermission")],
        )
        .await?;
    if !tag_texts(&perms, "group").contains(&"all") {
        return Err(AwsAmiError::StillPrivate {
            ami: ami.to_string(),
            region: region.to_string(),
        }
        .into());
    }
    log.line(&format!("{region}: {ami} is public"));
    Ok(())
}

async fn run(ctx: &StepCtx) -> Result<StepOutput, BuilderError> {
    let regions = cloud::list_param(ctx, "regions");
    if regions.is_empty() {
        return Err(AwsAmiError::NoRegions.into());
    }
    let public = matches!(
        ctx.node.recipe.params.get("public"),
        Some(crate::config::Value::Bool(true))
    );
    let mut amis = Vec::new();
    for region in &regions {
        match cloud::upstream_fact(ctx, &format!("ami.{region}")) {
            Some(id) => amis.push((region.clone(), id.to_string())),
            None => {
                let known: Vec<String> = ctx
                    .upstream
                    .iter()
                    .flat_map(|(_, r)| r.facts.keys())
                    .filter(|k| k.starts_with("ami."))
                    .cloned()
                    .collect();
                return Err(AwsAmiError::NoAmi {
                    region: region.clone(),
                    known: if known.is_empty() {
                        "no ami.<region>".to_string()
                    } else {
                        known.join(", ")
                    },
                }
                .into());
            }
        }
    }
    let ec2 = Ec2 {
        client: cloud::client()?,
        endpoint: cloud::str_param(ctx, "endpoint"),
        key_id: cloud::required_secret(ctx, "AWS_ACCESS_KEY_ID")?.to_string(),
        secret: cloud::required_secret(ctx, "AWS_SECRET_ACCESS_KEY")?.to_string(),
        token: cloud::secret(ctx, "AWS_SESSION_TOKEN").map(String::from),
    };
    let mut out = StepOutput::default();
    for (region, ami) in &amis {
        bounded(ctx, publish_region(ctx, &ec2, region, ami, public)).await?;
        out.facts.insert(format!("ami.{region}"), ami.clone());
    }
    out.facts.insert("public".into(), public.to_string());
    cloud::log_facts(ctx, &out);
    Ok(out)
}

/// Refresh: every region's AMI still exists, is available, and is public when it was published
/// public (one DescribeImages per region).
async fn refresh(c: &Claim<'_>) -> Checked {
    let ctx = &c.ctx;
    let amis: Vec<(&str, &str)> = c
        .facts
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("ami.")?, v.as_str())))
        .collect();
    if amis.is_empty() {
        return Checked::Unknown("its cached result records no ami.<region>".into());
    }
    let public = c.facts.get("public").map(String::as_str) == Some("true");
    let ec2 = match (|| {
        Ok::<_, BuilderError>(Ec2 {
            client: cloud::client()?,
            endpoint: cloud::str_param(ctx, "endpoint"),
            key_id: cloud::required_secret(ctx, "AWS_ACCESS_KEY_ID")?.to_string(),
            secret: cloud::required_secret(ctx, "AWS_SECRET_ACCESS_KEY")?.to_string(),
            token: cloud::secret(ctx, "AWS_SESSION_TOKEN").map(String::from),
        })
    })() {
        Ok(e) => e,
        Err(e) => return Checked::Unknown(e.to_string()),
    };
    let mut reasons = Vec::new();
    for (region, ami) in amis {
        let target = format!("{ami} in {region}");
        let xml = match ec2
            .call(region, "DescribeImages", &[("ImageId.1", ami)])
            .await
        {
            Ok(Ok(xml)) => xml,
            Ok(Err(e)) if e.code.starts_with("InvalidAMIID") => {
                reasons.push(DirtyReason::PublishedMissing { target });
                continue;
            }
            Ok(Err(e)) => {
                return Checked::Unknown(AwsAmiError::api("DescribeImages", region, e).to_string());
            }
            Err(e) => return Checked::Unknown(e.to_string()),
        };
        let images = first(&xml, "imagesSet").unwrap_or("");
        if !tag_texts(images, "imageId").contains(&ami) {
            reasons.push(DirtyReason::PublishedMissing { target });
            continue;
        }
        let drift = |what: &str, found: &str, expected: &str| DirtyReason::PublishedDrift {
            target: target.clone(),
            what: what.into(),
            found: found.into(),
            expected: expected.into(),
        };
        let state = first(images, "imageState").unwrap_or("unknown");
        if state != "available" {
            reasons.push(drift("state", state, "available"));
        } else if public && first(images, "isPublic") != Some("true") {
            reasons.push(drift("launch permission", "private", "public"));
        }
    }
    if reasons.is_empty() {
        Checked::Held { witness: None }
    } else {
        Checked::Drift(reasons)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_are_encoded_for_sigv4() {
        assert_eq!(
            form(
                "ModifyImageAttribute",
                &[
                    ("ImageId", "ami-1"),
                    ("LaunchPermission.Add.1.Group", "a b/c")
                ]
            ),
            "Action=ModifyImageAttribute&Version=2016-11-15&ImageId=ami-1&LaunchPermission.Add.1.Group=a%20b%2Fc"
        );
    }

    #[test]
    fn tags_are_found_in_order() {
        let xml = "<r><imagesSet><item><imageId>ami-1</imageId><isPublic>false</isPublic>\
            <blockDeviceMapping><item><ebs><snapshotId>snap-1</snapshotId></ebs></item>\
            <item><ebs><snapshotId>snap-2</snapshotId></ebs></item></blockDeviceMapping>\
            </item></imagesSet></r>";
        assert_eq!(tag_texts(xml, "snapshotId"), ["snap-1", "snap-2"]);
        assert_eq!(first(xml, "isPublic"), Some("false"));
        assert_eq!(first(xml, "group"), None);
        assert_eq!(unescape("a &amp;lt; b &lt;"), "a &lt; b <");
    }

    #[test]
    fn endpoints_get_a_path() {
        let ec2 = |endpoint: Option<&str>| Ec2 {
            client: reqwest::Client::new(),
            endpoint: endpoint.map(String::from),
            key_id: "AKIDEXAMPLE".into(),
            secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            token: None,
        };
        assert_eq!(
            ec2(None).url("eu-west-1"),
            "https://ec2.eu-west-1.amazonaws.com/"
        );
        assert_eq!(
            ec2(Some("http://127.0.0.1:5000")).url("x"),
            "http://127.0.0.1:5000/"
        );
        let headers = ec2(None)
            .sign(
                "eu-west-1",
                "https://ec2.eu-west-1.amazonaws.com/",
                "Action=DescribeImages",
            )
            .unwrap();
        let auth = &headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .unwrap()
            .1;
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
            "{auth}"
        );
        assert!(auth.contains("/eu-west-1/ec2/aws4_request"), "{auth}");
        assert!(!auth.contains("wJalr"), "{auth}");
    }
}
