//! `hcloud-snapshot`: labels the snapshot an image-builder build left in the Hetzner Cloud
//! project (the build's `snapshot` fact). It reads the image (`GET /images/{id}`), adds the
//! configured labels to the ones it has (packer may have set some) and writes them back
//! (`PUT /images/{id}` with `{"labels": {…}}`), authenticated with the secret `HCLOUD_TOKEN`.

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json};

use super::cloud::{self, bounded, http_err};
use super::{
    Builder, BuilderError, Checked, Claim, RefreshFuture, StepCtx, StepFuture, StepOutput,
    one_by_one,
};
use crate::config::BuilderKind;
use crate::config::step::{BuilderSpec, Consumes, ParamSpec, ParamType, SecretUse};
use crate::plan::DirtyReason;

/// What a `hcloud-snapshot` step takes: its parameters, and the provider inputs it receives.
pub static SPEC: BuilderSpec = BuilderSpec {
    kind: BuilderKind::HcloudSnapshot,
    params: &[
        ParamSpec::new(
            "labels",
            ParamType::List,
            false,
            "KEY=VALUE labels put on the snapshot",
        ),
        ParamSpec::new(
            "endpoint",
            ParamType::Str,
            false,
            "the API endpoint (default https://api.hetzner.cloud/v1)",
        ),
    ],
    consumes: Consumes {
        vars: false,
        patches: false,
        files: false,
        secrets: true,
        image_builder: false,
    },
    secrets: SecretUse::Named(&[TOKEN]),
};

pub struct HcloudSnapshot;

/// How an `hcloud-snapshot` step fails.
#[derive(Debug, thiserror::Error)]
pub enum HcloudError {
    #[error("label `{0}` is not KEY=VALUE")]
    NotKeyValue(String),
    #[error("label `{0}` has an empty key")]
    EmptyKey(String),
    #[error(
        "the build recorded no `snapshot` fact: is the build step an hcloud image-builder build?"
    )]
    NoSnapshot,
    #[error("`{0}` is not an hcloud image id")]
    BadId(String),
    /// The API answered with an error (`HTTP 404 Not Found: not_found: …`).
    #[error("{what} failed: {error}")]
    Api { what: String, error: String },
    #[error("{what}: the answer is not JSON: {source}")]
    NotJson {
        what: String,
        source: serde_json::Error,
    },
    #[error("hcloud image {id} does not have the label {key}={value} after the update")]
    LabelNotSet {
        id: String,
        key: String,
        value: String,
    },
}

impl Builder for HcloudSnapshot {
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

/// The secret the API token is read from.
pub const TOKEN: &str = "HCLOUD_TOKEN";

pub const DEFAULT_ENDPOINT: &str = "https://api.hetzner.cloud/v1";

/// `KEY=VALUE` items → labels.
pub fn parse_labels(items: &[String]) -> Result<BTreeMap<String, String>, HcloudError> {
    let mut out = BTreeMap::new();
    for item in items {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| HcloudError::NotKeyValue(item.clone()))?;
        if k.is_empty() {
            return Err(HcloudError::EmptyKey(item.clone()));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// The message of an API error body (`{"error": {"code", "message"}}`).
fn api_error(status: reqwest::StatusCode, body: &str) -> String {
    let doc: Json = serde_json::from_str(body).unwrap_or(Json::Null);
    let e = &doc["error"];
    match (e["code"].as_str(), e["message"].as_str()) {
        (Some(c), Some(m)) => format!("HTTP {status}: {c}: {m}"),
        _ => format!("HTTP {status}"),
    }
}

async fn send(req: reqwest::RequestBuilder, what: &str) -> Result<Json, BuilderError> {
    let resp = req.send().await.map_err(http_err(what))?;
    let status = resp.status();
    let text = resp.text().await.map_err(http_err(what))?;
    if !status.is_success() {
        return Err(HcloudError::Api {
            what: what.to_string(),
            error: api_error(status, &text),
        }
        .into());
    }
    serde_json::from_str(&text).map_err(|source| {
        HcloudError::NotJson {
            what: what.to_string(),
            source,
        }
        .into()
    })
}

fn labels_of(doc: &Json) -> Map<String, Json> {
    doc["image"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

async fn run(ctx: &StepCtx) -> Result<StepOutput, BuilderError> {
    let labels = parse_labels(&cloud::list_param(ctx, "labels"))?;
    let id = cloud::upstream_fact(ctx, "snapshot")
        .or_else(|| cloud::upstream_fact(ctx, "image"))
        .ok_or(HcloudError::NoSnapshot)?
        .to_string();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HcloudError::BadId(id).into());
    }
    let token = cloud::required_secret(ctx, TOKEN)?;
    let endpoint = cloud::str_param(ctx, "endpoint").unwrap_or_else(|| DEFAULT_ENDPOINT.into());
    let url = format!("{}/images/{id}", endpoint.trim_end_matches('/'));
    let client = cloud::client()?;
    let log = &ctx.spawner.log;
    let work = async {
        let current = send(
            client.get(&url).bearer_auth(token),
            &format!("reading hcloud image {id}"),
        )
        .await?;
        let mut merged = labels_of(&current);
        let missing = labels
            .iter()
            .any(|(k, v)| merged.get(k).and_then(Json::as_str) != Some(v.as_str()));
        if !missing {
            log.line(&format!("snapshot {id} already has its labels"));
            return Ok(());
        }
        for (k, v) in &labels {
            merged.insert(k.clone(), Json::String(v.clone()));
        }
        let body = serde_json::json!({ "labels": merged });
        let updated = send(
            client
                .put(&url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body.to_string()),
            &format!("labelling hcloud image {id}"),
        )
        .await?;
        let now = labels_of(&updated);
        for (k, v) in &labels {
            if now.get(k).and_then(Json::as_str) != Some(v.as_str()) {
                return Err(HcloudError::LabelNotSet {
                    id: id.clone(),
                    key: k.clone(),
                    value: v.clone(),
                }
                .into());
            }
        }
        let shown: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        log.line(&format!("labelled snapshot {id}: {}", shown.join(" ")));
        Ok(())
    };
    bounded(ctx, work).await?;
    let mut out = StepOutput::default();
    out.facts.insert("snapshot".into(), id);
    for (k, v) in labels {
        out.facts.insert(format!("label.{k}"), v);
    }
    cloud::log_facts(ctx, &out);
    Ok(out)
}

/// Refresh: the snapshot still exists (`GET /images/{id}`) and still has its labels.
async fn refresh(c: &Claim<'_>) -> Checked {
    let ctx = &c.ctx;
    let Some(id) = c.facts.get("snapshot") else {
        return Checked::Unknown("its cached result records no `snapshot`".into());
    };
    let token = match cloud::required_secret(ctx, TOKEN) {
        Ok(t) => t,
        Err(e) => return Checked::Unknown(e.to_string()),
    };
    let client = match cloud::client() {
        Ok(c) => c,
        Err(e) => return Checked::Unknown(e.to_string()),
    };
    let endpoint = cloud::str_param(ctx, "endpoint").unwrap_or_else(|| DEFAULT_ENDPOINT.into());
    let url = format!("{}/images/{id}", endpoint.trim_end_matches('/'));
    let target = format!("hcloud snapshot {id}");
    let what = format!("reading hcloud image {id}");
    let resp = match client.get(&url).bearer_auth(token).send().await {
        Ok(r) => r,
        Err(e) => return Checked::Unknown(http_err(&what)(e).to_string()),
    };
    let status = resp.status();
    let text = match resp.text().await {
        Ok(t) => t,
        Err(e) => return Checked::Unknown(http_err(&what)(e).to_string()),
    };
    if status == reqwest::StatusCode::NOT_FOUND {
        return Checked::Drift(vec![DirtyReason::PublishedMissing { target }]);
    }
    if !status.is_success() {
        return Checked::Unknown(format!("{what} failed: {}", api_error(status, &text)));
    }
    let doc: Json = match serde_json::from_str(&text) {
        Ok(d) => d,
        Err(e) => return Checked::Unknown(format!("{what}: the answer is not JSON: {e}")),
    };
    let labels = labels_of(&doc);
    let reasons: Vec<DirtyReason> = c
        .facts
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("label.")?, v)))
        .filter(|(k, v)| labels.get(*k).and_then(Json::as_str) != Some(v.as_str()))
        .map(|(k, v)| DirtyReason::PublishedDrift {
            target: target.clone(),
            what: format!("label {k}"),
            found: labels
                .get(k)
                .and_then(Json::as_str)
                .unwrap_or("(unset)")
                .to_string(),
            expected: v.clone(),
        })
        .collect();
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
    fn labels_are_key_value_pairs() {
        let l = parse_labels(&["os=ubuntu-2404".into(), "kubernetes=1.31.4".into()]).unwrap();
        assert_eq!(l["os"], "ubuntu-2404");
        assert_eq!(l["kubernetes"], "1.31.4");
        assert!(parse_labels(&["novalue".into()]).is_err());
        assert!(parse_labels(&["=x".into()]).is_err());
    }

    #[test]
    fn api_errors_are_readable() {
        let body = r#"{"error": {"code": "not_found", "message": "image with ID '1' not found"}}"#;
        assert_eq!(
            api_error(reqwest::StatusCode::NOT_FOUND, body),
            "HTTP 404 Not Found: not_found: image with ID '1' not found"
        );
        assert_eq!(
            api_error(reqwest::StatusCode::BAD_GATEWAY, "<html>"),
            "HTTP 502 Bad Gateway"
        );
    }
}
