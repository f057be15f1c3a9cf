//! What the publish builders share: secrets by name, facts of the upstream build, list
//! parameters, and HTTP calls bounded by the step's timeout and cancellation.

use std::future::Future;
use std::time::Duration;

use super::BuilderError;
use super::StepCtx;
use crate::config::Value;

/// A secret the step received, by the name it sees.
pub fn secret<'a>(ctx: &'a StepCtx, name: &str) -> Option<&'a str> {
    ctx.secrets
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A secret the step needs.
pub fn required_secret<'a>(ctx: &'a StepCtx, name: &str) -> Result<&'a str, BuilderError> {
    secret(ctx, name).ok_or_else(|| BuilderError::MissingSecret {
        builder: ctx.node.builder,
        name: name.to_string(),
    })
}

/// A fact of the nearest upstream node that has it.
pub fn upstream_fact<'a>(ctx: &'a StepCtx, name: &str) -> Option<&'a str> {
    ctx.upstream
        .iter()
        .find_map(|(_, r)| r.facts.get(name).map(String::as_str))
}

/// A string parameter, empty when absent.
pub fn str_param(ctx: &StepCtx, name: &str) -> Option<String> {
    ctx.node
        .recipe
        .params
        .get(name)
        .map(Value::render)
        .filter(|s| !s.is_empty())
}

/// A list parameter: every item, with comma-separated items (what a `{list}` placeholder
/// renders to) split apart.
pub fn list_param(ctx: &StepCtx, name: &str) -> Vec<String> {
    let items = match ctx.node.recipe.params.get(name) {
        Some(Value::List(l)) => l.clone(),
        Some(v) => vec![v.render()],
        None => Vec::new(),
    };
    items
        .iter()
        .flat_map(|i| i.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// The HTTP client of the publish builders: rustls, bounded connect and request times, no
/// proxies from the environment (requests carry credentials).
pub fn client() -> Result<reqwest::Client, BuilderError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .timeout(Duration::from_secs(120))
        .no_proxy()
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(BuilderError::HttpClient)
}

/// Runs `fut` unless the step times out or is cancelled first.
pub async fn bounded<T>(
    ctx: &StepCtx,
    fut: impl Future<Output = Result<T, BuilderError>>,
) -> Result<T, BuilderError> {
    let mut cancel = ctx.spawner.cancel.clone();
    let deadline = ctx.spawner.deadline;
    let sleep = async {
        match deadline {
            Some((at, _)) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = fut => r,
        _ = sleep => Err(BuilderError::TimedOut(deadline.map(|d| d.1).unwrap_or_default())),
        _ = cancel.wait_for(|c| *c) => Err(BuilderError::Cancelled),
    }
}

/// An HTTP error without the URL's query (which may carry signed parameters).
pub fn http_err(what: &str) -> impl Fn(reqwest::Error) -> BuilderError + '_ {
    BuilderError::http(what)
}

/// Logs every fact as `fact NAME=VALUE`, as the image-builder runner does.
pub fn log_facts(ctx: &StepCtx, out: &super::StepOutput) {
    for (k, v) in &out.facts {
        ctx.spawner.log.line(&format!("fact {k}={v}"));
    }
}
