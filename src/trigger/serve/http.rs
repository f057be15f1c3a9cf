//! The routes. A POST is authenticated from its headers (bearer token) or, for a signed body,
//! as soon as the body is read and before it is parsed; every refusal is a JSON error naming
//! the field.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::auth::{Auth, Presented, SIGNATURE_HEADER};
use super::metrics::Metrics;
use super::queue::{NewBuild, Queue, State as BuildState};
use super::request::{self, BuildRequest, Event, Origin, RequestError};
use super::{Engine, MAX_BODY, PrepareError};

pub struct AppState {
    pub queue: Arc<Queue>,
    pub engine: Arc<dyn Engine>,
    pub auth: Auth,
    pub metrics: Arc<Metrics>,
    /// One request is resolved at a time: resolving may rewrite images.lock.
    pub prepare: tokio::sync::Mutex<()>,
}

type Shared = Arc<AppState>;

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/builds", post(post_build).get(list_builds))
        .route("/v1/builds/{id}", get(get_build))
        .route("/v1/github", post(post_github))
        .fallback(not_found)
        .with_state(state)
}

fn json_response(status: u16, body: serde_json::Value) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (code, axum::Json(body)).into_response()
}

fn error_response(e: &RequestError) -> Response {
    let mut body = serde_json::to_value(e).unwrap_or_else(|_| json!({}));
    body["status"] = e.status.into();
    let mut r = json_response(e.status, body);
    if e.status == 401 {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"kiln\""),
        );
    }
    r
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Authenticates and reads a POST body: a bearer token is checked before the body is read, a
/// signature as soon as it is read; a body over [`MAX_BODY`] is a 413.
async fn authenticated_body(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, RequestError> {
    let unauthorized = |e: super::auth::AuthError| {
        RequestError::new(401, Some(e.field()), e.to_string()).help(
            "sign the raw body with KILN_WEBHOOK_SECRET (X-Hub-Signature-256: sha256=HMAC-SHA256 hex) or send Authorization: Bearer KILN_API_TOKEN",
        )
    };
    let presented = Auth::presented(
        header(headers, "authorization"),
        header(headers, SIGNATURE_HEADER),
    );
    match presented {
        Presented::Nothing => return Err(unauthorized(super::auth::AuthError::Missing)),
        Presented::Bearer(t) => s.auth.check_token(t).map_err(unauthorized)?,
        Presented::Signature(_) => {}
    }
    let too_large = || {
        RequestError::new(
            413,
            None,
            format!("the body is larger than the {MAX_BODY} bytes a request may be"),
        )
        .help("a build request is a small JSON object such as {\"k8s\":{\"version\":\"1.31.5\"}}")
    };
    let declared = header(headers, "content-length").and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_DRAIN as u64) {
        return Err(too_large());
    }
    let bytes = read_limited(body).await?.ok_or_else(too_large)?;
    if let Presented::Signature(sig) = presented {
        s.auth.check_signature(sig, &bytes).map_err(unauthorized)?;
    }
    Ok(bytes)
}

/// How much of a body over [`MAX_BODY`] is read and thrown away, so that the client, still
/// sending, reads the 413 instead of a reset connection.
const MAX_DRAIN: usize = 32 << 20;

/// The body, or `None` when it is over [`MAX_BODY`] (the rest read and discarded up to
/// [`MAX_DRAIN`]).
async fn read_limited(body: Body) -> Result<Option<Bytes>, RequestError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            RequestError::new(400, None, format!("the body could not be read: {e}"))
        })?;
        if let Ok(data) = frame.into_data() {
            seen = seen.saturating_add(data.len());
            if seen > MAX_DRAIN {
                return Ok(None);
            }
            if seen <= MAX_BODY {
                buf.extend_from_slice(&data);
            }
        }
    }
    Ok((seen <= MAX_BODY).then(|| buf.freeze()))
}

async fn post_build(State(s): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    let r = async {
        let bytes = authenticated_body(&s, &headers, body).await?;
        let req = request::parse_build(&bytes)?;
        accept(&s, &headers, req).await
    }
    .await;
    respond(&s, "/v1/builds", r)
}

async fn post_github(State(s): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    let r = async {
        let bytes = authenticated_body(&s, &headers, body).await?;
        match request::parse_github(header(&headers, "x-github-event"), &bytes)? {
            Event::Ping { zen } => Ok(json_response(200, json!({"ping": "pong", "zen": zen}))),
            Event::Ignored(why) => Ok(json_response(200, json!({"ignored": why}))),
            // A release this config does not build (another series, a pinned one) is not an
            // error of the delivery: GitHub would mark it failed.
            Event::Build(req) => match accept(&s, &headers, req).await {
                Err(e) if e.status == 422 => Ok(json_response(
                    200,
                    json!({"ignored": e.message, "field": e.field}),
                )),
                r => r,
            },
        }
    }
    .await;
    respond(&s, "/v1/github", r)
}

fn respond(s: &AppState, endpoint: &str, r: Result<Response, RequestError>) -> Response {
    let response = r.unwrap_or_else(|e| error_response(&e));
    s.metrics.request(endpoint, response.status().as_u16());
    response
}

/// Resolves a request, queues it (or finds the build it duplicates), answers 202 with the id.
async fn accept(
    s: &Shared,
    headers: &HeaderMap,
    req: BuildRequest,
) -> Result<Response, RequestError> {
    let delivery = match header(headers, "x-github-delivery") {
        Some(d) if d.is_empty() || d.len() > 128 || !d.bytes().all(|b| b.is_ascii_graphic()) => {
            return Err(RequestError::new(
                400,
                Some("X-GitHub-Delivery"),
                "X-GitHub-Delivery must be 1 to 128 printable ASCII characters",
            ));
        }
        Some(d) => Some(d.to_string()),
        None if headers.contains_key("x-github-delivery") => {
            return Err(RequestError::new(
                400,
                Some("X-GitHub-Delivery"),
                "X-GitHub-Delivery must be printable ASCII",
            ));
        }
        None => None,
    };
    let unavailable = |m: String| RequestError::new(503, None, m);
    if let Some(d) = &delivery
        && let Some(id) = s
            .queue
            .delivery(d)
            .map_err(|e| unavailable(e.to_string()))?
    {
        return Ok(accepted(s, id, Some("delivery"), None, None));
    }
    let (submitted, prepared) = enqueue(s, &req, delivery).await?;
    let coalesced = submitted.coalesced.map(|c| match c {
        super::queue::Coalesced::Delivery => "delivery",
        super::queue::Coalesced::SameNodes => "same_nodes",
    });
    Ok(accepted(
        s,
        submitted.id,
        coalesced,
        Some(prepared.cells),
        prepared.lock,
    ))
}

/// Resolves a request (one at a time) and writes it to the queue.
pub async fn enqueue(
    s: &AppState,
    req: &BuildRequest,
    delivery: Option<String>,
) -> Result<(super::queue::Submitted, super::Prepared), RequestError> {
    let unavailable = |m: String| RequestError::new(503, None, m);
    let prepared = {
        let _one = s.prepare.lock().await;
        let engine = s.engine.clone();
        let r = req.clone();
        tokio::task::spawn_blocking(move || engine.prepare(&r))
            .await
            .map_err(|e| unavailable(format!("resolving the request failed: {e}")))?
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(PrepareError::Request(e)) => return Err(e),
        Err(PrepareError::Unavailable(m)) => return Err(unavailable(m)),
    };
    let mut request = json!({
        "version": req.version.to_string(),
        "series": req.version.series(),
        "provider": prepared.provider,
        "origin": req.origin,
    });
    if let Some(l) = &prepared.lock {
        request["lock"] = l.as_str().into();
    }
    if let Origin::GithubRelease { tag, .. } = &req.origin {
        request["tag"] = tag.as_str().into();
    }
    let submitted = s
        .queue
        .submit(NewBuild {
            request,
            cells: prepared.cells.clone(),
            keys: prepared.keys.clone(),
            delivery,
        })
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    Ok((submitted, prepared))
}

fn accepted(
    s: &AppState,
    id: i64,
    coalesced: Option<&str>,
    cells: Option<Vec<String>>,
    lock: Option<String>,
) -> Response {
    let state = s
        .queue
        .get(id)
        .ok()
        .flatten()
        .map(|b| b.state)
        .unwrap_or(BuildState::Queued);
    let url = format!("/v1/builds/{id}");
    let mut body = json!({
        "id": id,
        "state": state,
        "url": url,
        "coalesced": coalesced,
    });
    if let Some(c) = cells {
        body["cells"] = c.into();
    }
    if let Some(l) = lock {
        body["lock"] = l.into();
    }
    let mut r = json_response(202, body);
    if let Ok(v) = HeaderValue::from_str(&url) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

async fn get_build(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    let r = (|| {
        let n: i64 = id.parse().map_err(|_| {
            RequestError::new(
                400,
                Some("id"),
                format!("`{id}` is not a build id (a number)"),
            )
        })?;
        match s.queue.get(n) {
            Ok(Some(b)) => Ok(json_response(200, json!(b))),
            Ok(None) => Err(RequestError::new(404, Some("id"), format!("no build {n}"))
                .help("GET /v1/builds lists the builds")),
            Err(e) => Err(RequestError::new(503, None, e.to_string())),
        }
    })();
    respond(&s, "/v1/builds/{id}", r)
}

async fn list_builds(State(s): State<Shared>, uri: Uri) -> Response {
    let r = (|| {
        let mut state = None;
        let mut limit = 50u32;
        for (k, v) in url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
            match &*k {
                "state" => {
                    state = Some(match &*v {
                        "queued" => BuildState::Queued,
                        "running" => BuildState::Running,
                        "succeeded" => BuildState::Succeeded,
                        "failed" => BuildState::Failed,
                        other => {
                            return Err(RequestError::new(
                                400,
                                Some("state"),
                                format!(
                                    "unknown state `{other}`: use queued, running, succeeded or failed"
                                ),
                            ));
                        }
                    })
                }
                "limit" => {
                    limit = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| {
                            RequestError::new(
                                400,
                                Some("limit"),
                                format!("limit `{v}` is not a number from 1 to 1000"),
                            )
                        })?
                }
                other => {
                    return Err(RequestError::new(
                        400,
                        Some(other),
                        format!("unknown parameter `{other}`: use state= and limit="),
                    ));
                }
            }
        }
        s.queue
            .list(state, limit)
            .map(|b| json_response(200, json!({ "builds": b })))
            .map_err(|e| RequestError::new(503, None, e.to_string()))
    })();
    respond(&s, "/v1/builds", r)
}

async fn healthz(State(s): State<Shared>) -> Response {
    match s.queue.counts() {
        Ok(c) => json_response(
            200,
            json!({"ok": true, "queued": c["queued"], "running": c["running"]}),
        ),
        Err(e) => json_response(503, json!({"ok": false, "error": e.to_string()})),
    }
}

async fn metrics(State(s): State<Shared>) -> Response {
    let (queued, running) = match s.queue.counts() {
        Ok(c) => (c["queued"], c["running"]),
        Err(e) => return json_response(503, json!({"error": e.to_string()})),
    };
    let text = s.metrics.render(queued, running);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn status_page(State(s): State<Shared>) -> Response {
    let read = || -> Result<_, super::queue::QueueError> {
        let mut queue = s.queue.list(Some(BuildState::Running), 100)?;
        let mut queued = s.queue.list(Some(BuildState::Queued), 100)?;
        queued.reverse();
        queue.extend(queued);
        Ok((queue, s.queue.list(None, 20)?))
    };
    let (queue, recent) = match read() {
        Ok(v) => v,
        Err(e) => return json_response(503, json!({"error": e.to_string()})),
    };
    let catalog = {
        let _one = s.prepare.lock().await;
        let engine = s.engine.clone();
        tokio::task::spawn_blocking(move || engine.catalog())
            .await
            .unwrap_or_else(|e| Err(format!("reading the catalog failed: {e}")))
    };
    let html = super::page::render(&super::page::Status {
        queue: &queue,
        recent: &recent,
        catalog: &catalog,
        config: &s.engine.config_name(),
    });
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

async fn not_found(uri: Uri) -> Response {
    error_response(
        &RequestError::new(404, None, format!("no such endpoint: {}", uri.path())).help(
            "POST /v1/builds, POST /v1/github, GET /v1/builds[/ID], GET /healthz, GET /metrics, GET /",
        ),
    )
}
