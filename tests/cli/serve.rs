//! `kiln serve` end to end: the real binary listening on 127.0.0.1 (a free port), started and
//! killed by each test, asked over HTTP. Builds are `command` steps that take milliseconds; a
//! step can be held at a gate (a file the test creates) to keep builds queued or running.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::support::Project;

const SECRET: &str = "serve-test-webhook-secret";
const TOKEN: &str = "serve-test-api-token";
const SEED: &str = r#"{"k8s":{"version":"1.31.4"},"provider":"capa"}"#;

/// Build logs `start CELL` and waits for the gate file; publish logs `published CELL`.
const MODULE: &str = r#"
module "cmd" {
    setting "runlog" required=#true
    setting "gate" required=#true
    var "image_os" "{os}"
    step "build" builder="command" {
        argv "sh" "-c" "echo start {name} >> {runlog}; i=0; while [ ! -e {gate} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; echo image-{name} > out.txt"
        outputs "out.txt"
    }
    step "publish" builder="command" inputs="vars" {
        argv "sh" "-c" "echo published {name} >> {runlog}"
    }
}
"#;

const CONFIG: &str = r#"
import "modules/cmd.kdl"
kubernetes "1.31" {
    version "1.31.4"
    containerd "2.2.0"
}
kubernetes "1.32" track=#true {
    containerd "2.2.0"
}
matrix "m" {
    kubernetes "1.31" "1.32"
    provider "aws" "gcp"
    os "one"
}
provider "aws" module="cmd" {
    alias "capa"
    runlog "RUNLOG"
    gate "GATE"
}
provider "gcp" module="cmd" {
    alias "capg"
    runlog "RUNLOG"
    gate "GATE"
}
"#;

/// The same, publishing with the `upload` builder to `published/` (a claim kiln refreshes).
const UPLOAD_MODULE: &str = r#"
module "cmd" {
    setting "runlog" required=#true
    setting "gate" required=#true
    step "build" builder="command" {
        argv "sh" "-c" "echo start {name} >> {runlog}; echo image-{name} > image.qcow2"
        outputs "image.qcow2"
    }
    step "publish" builder="upload" {
        bucket "file://published/{provider}"
        object "{name}.img"
    }
}
"#;

/// A project of 4 cells (aws and gcp × 1.31 pinned and 1.32 tracked); `open` creates the gate.
fn project(open: bool) -> Project {
    project_with(MODULE, open)
}

fn project_with(module: &str, open: bool) -> Project {
    let p = Project::new().with_file("modules/cmd.kdl", module);
    let text = CONFIG
        .replace("RUNLOG", &p.path().join("runs.log").to_string_lossy())
        .replace("GATE", &p.path().join("gate").to_string_lossy());
    let p = p
        .with_file("images.kdl", &text)
        .with_file("images.lock", "kubernetes \"1.32\" version=\"1.32.4\"\n")
        .env("KILN_WEBHOOK_SECRET", SECRET)
        .env("KILN_API_TOKEN", TOKEN);
    if open {
        p.write("gate", "");
    }
    p
}

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// The lines of the run log (`start CELL`, `published CELL`), counted.
fn runs(p: &Project) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let text = std::fs::read_to_string(p.path().join("runs.log")).unwrap_or_default();
    for l in text.lines() {
        *out.entry(l.to_string()).or_insert(0) += 1;
    }
    out
}

/// Waits (at most `secs`) for `f` to give a value.
#[track_caller]
fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A response: status and body.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A running `kiln serve`, killed (SIGKILL) and reaped when dropped.
struct Server {
    child: Option<Child>,
    base: String,
    log: PathBuf,
    agent: ureq::Agent,
}

impl Server {
    fn start(p: &Project) -> Server {
        Server::start_with(p, &[])
    }

    fn start_with(p: &Project, extra: &[&str]) -> Server {
        let n = std::fs::read_dir(p.path()).unwrap().count();
        let log = p.path().join(format!("serve-{n}.log"));
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "-j", "2"];
        args.extend_from_slice(extra);
        let child = p
            .command(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .expect("start kiln serve");
        let mut s = Server {
            child: Some(child),
            base: String::new(),
            log,
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(60)))
                .build()
                .into(),
        };
        let log_path = s.log.clone();
        s.base = wait_for(60, "the server to listen", || {
            if let Some(status) = s.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "kiln serve exited with {status}:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            text.lines().find_map(|l| {
                let rest = l.split_once("listening on ")?.1;
                Some(rest.split_whitespace().next()?.to_string())
            })
        });
        s
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn post(&self, path: &str, body: &[u8], headers: &[(&str, &str)]) -> Reply {
        let mut req = self.agent.post(&self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut resp = req
            .send(body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", self.log()));
        Reply {
            status: resp.status().as_u16(),
            body: resp.body_mut().read_to_string().unwrap_or_default(),
        }
    }

    /// A POST signed with the webhook secret.
    fn signed(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
        let sig = sign(body.as_bytes());
        let mut all = vec![("X-Hub-Signature-256", sig.as_str())];
        all.extend_from_slice(headers);
        self.post(path, body.as_bytes(), &all)
    }

    fn get(&self, path: &str) -> Reply {
        let mut resp = self
            .agent
            .get(&self.url(path))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log()));
        Reply {
            status: resp.status().as_u16(),
            body: resp.body_mut().read_to_string().unwrap_or_default(),
        }
    }

    /// Waits for build `id` to finish; returns it.
    #[track_caller]
    fn finished(&self, id: u64) -> Value {
        wait_for(120, &format!("build {id} to finish"), || {
            let b = self.get(&format!("/v1/builds/{id}")).json();
            matches!(b["state"].as_str(), Some("succeeded" | "failed")).then_some(b)
        })
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and the exit status (bounded wait).
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        wait_for(60, "the server to stop", || c.try_wait().unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[test]
fn unsigned_and_wrongly_signed_requests_are_401_and_queue_nothing() {
    let p = project(true);
    let s = Server::start(&p);
    let r = s.post("/v1/builds", SEED.as_bytes(), &[]);
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.json()["field"], "X-Hub-Signature-256");
    let bad = sign(b"another body");
    let r = s.post(
        "/v1/builds",
        SEED.as_bytes(),
        &[("X-Hub-Signature-256", &bad)],
    );
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("does not match")
    );
    let r = s.post(
        "/v1/builds",
        SEED.as_bytes(),
        &[("X-Hub-Signature-256", "sha256=zz")],
    );
    assert_eq!(r.status, 401, "{r:?}");
    let r = s.post(
        "/v1/builds",
        SEED.as_bytes(),
        &[("Authorization", "Bearer not-the-token")],
    );
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (401, json!("Authorization"))
    );
    // Authentication comes before the body is parsed: garbage unsigned is a 401, not a 400.
    let r = s.post("/v1/github", b"{not json", &[("X-GitHub-Event", "release")]);
    assert_eq!(r.status, 401, "{r:?}");
    let builds = s.get("/v1/builds").json();
    assert_eq!(builds["builds"], json!([]));
    assert!(runs(&p).is_empty());
    // The secrets are nowhere in what the server printed.
    let log = s.log();
    assert!(!log.contains(SECRET) && !log.contains(TOKEN), "{log}");
}

#[test]
fn a_signed_seed_payload_is_built_and_shown() {
    let p = project(true);
    let s = Server::start(&p);
    let r = s.signed("/v1/builds", SEED, &[]);
    assert_eq!(r.status, 202, "{r:?}");
    let accepted = r.json();
    assert_eq!(accepted["cells"], json!(["aws-one-k8s-1.31"]));
    let id = accepted["id"].as_u64().unwrap();
    let b = s.finished(id);
    assert_eq!(b["state"], "succeeded", "{b:#}\n{}", s.log());
    assert_eq!(b["cells"], json!(["aws-one-k8s-1.31"]));
    assert_eq!(b["request"]["provider"], "aws");
    let outcomes: BTreeMap<String, String> = b["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_string(),
                n["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        BTreeMap::from([
            ("aws/one/1.31/build".to_string(), "built".to_string()),
            ("aws/one/1.31/publish".to_string(), "built".to_string()),
        ])
    );
    assert_eq!(
        runs(&p),
        BTreeMap::from([
            ("start aws-one-k8s-1.31".to_string(), 1),
            ("published aws-one-k8s-1.31".to_string(), 1),
        ])
    );
    // The same request with the bearer token, now that the first finished: a new build, which
    // finds everything cached.
    let r = s.post(
        "/v1/builds",
        SEED.as_bytes(),
        &[("Authorization", &format!("Bearer {TOKEN}"))],
    );
    assert_eq!(r.status, 202, "{r:?}");
    let second = r.json()["id"].as_u64().unwrap();
    assert_ne!(second, id);
    let b = s.finished(second);
    assert_eq!(
        (b["state"].as_str(), b["summary"].as_str()),
        (Some("succeeded"), Some("0 built, 2 cached"))
    );
    assert_eq!(runs(&p).values().sum::<usize>(), 2);

    let list = s.get("/v1/builds").json();
    let ids: Vec<u64> = list["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [second, id]);
    let h = s.get("/healthz");
    assert_eq!((h.status, h.json()["queued"].clone()), (200, json!(0)));
    let m = s.get("/metrics");
    assert_eq!(m.status, 200);
    for want in [
        "kiln_builds_total{outcome=\"succeeded\"} 2",
        "kiln_queue_depth{state=\"queued\"} 0",
        "kiln_node_duration_seconds_count{step=\"build\",outcome=\"built\"} 1",
        "kiln_http_requests_total{endpoint=\"/v1/builds\",status=\"202\"} 2",
    ] {
        assert!(m.body.contains(want), "{want} not in\n{}", m.body);
    }
    let missing = s.get("/v1/builds/999");
    assert_eq!(
        (missing.status, missing.json()["field"].clone()),
        (404, json!("id"))
    );
    assert_eq!(s.get("/v1/builds/x").status, 400);
}

#[test]
fn one_delivery_twice_is_one_build() {
    let p = project(false);
    let s = Server::start(&p);
    let release = json!({
        "action": "published",
        "release": {"tag_name": "v1.31.4", "prerelease": false, "draft": false},
        "repository": {"full_name": "kubernetes/kubernetes"}
    })
    .to_string();
    let headers = [
        ("X-GitHub-Event", "release"),
        ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
    ];
    let first = s.signed("/v1/github", &release, &headers);
    assert_eq!(first.status, 202, "{first:?}");
    let again = s.signed("/v1/github", &release, &headers);
    assert_eq!(again.status, 202, "{again:?}");
    assert_eq!(again.json()["id"], first.json()["id"]);
    assert_eq!(again.json()["coalesced"], "delivery");
    // The same delivery id on the seed endpoint is still the same delivery.
    let third = s.signed("/v1/builds", SEED, &headers[1..]);
    assert_eq!(third.json()["id"], first.json()["id"]);
    // GitHub also sends `released` for the same release, with another delivery id: the same
    // nodes as the queued build, so the same build.
    let released = release.replace("published", "released");
    let other = s.signed(
        "/v1/github",
        &released,
        &[("X-GitHub-Event", "release"), ("X-GitHub-Delivery", "d-2")],
    );
    assert_eq!(other.json()["id"], first.json()["id"]);
    assert_eq!(other.json()["coalesced"], "same_nodes");
    let ping = s.signed(
        "/v1/github",
        r#"{"zen":"Design for failure.","hook_id":1}"#,
        &[("X-GitHub-Event", "ping")],
    );
    assert_eq!(
        (ping.status, ping.json()["ping"].clone()),
        (200, json!("pong"))
    );
    let pre = s.signed(
        "/v1/github",
        &release.replace("\"prerelease\":false", "\"prerelease\":true"),
        &[("X-GitHub-Event", "release")],
    );
    assert_eq!(pre.status, 200, "{pre:?}");
    assert!(pre.json()["ignored"].is_string());

    p.write("gate", "");
    let id = first.json()["id"].as_u64().unwrap();
    let b = s.finished(id);
    assert_eq!(b["state"], "succeeded", "{b:#}");
    // Three requests made it: the first delivery, its duplicates (which add nothing), the
    // `released` one.
    assert_eq!(b["requests"], 2);
    assert_eq!(b["cells"], json!(["aws-one-k8s-1.31", "gcp-one-k8s-1.31"]));
    assert_eq!(
        s.get("/v1/builds").json()["builds"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let r = runs(&p);
    assert_eq!(r.get("start aws-one-k8s-1.31"), Some(&1), "{r:?}");
    assert_eq!(r.get("start gcp-one-k8s-1.31"), Some(&1), "{r:?}");
}

#[test]
fn fifty_concurrent_signed_requests_are_all_answered_and_coalesced() {
    let p = project(false);
    let s = Arc::new(Server::start(&p));
    let bodies = [
        SEED.to_string(),
        r#"{"k8s":{"version":"1.31.4"}}"#.to_string(),
        r#"{"k8s":{"version":"v1.31.4"},"provider":"gcp"}"#.to_string(),
    ];
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let s = s.clone();
            let body = bodies[i % bodies.len()].clone();
            std::thread::spawn(move || {
                let delivery = format!("delivery-{i}");
                let r = s.signed("/v1/builds", &body, &[("X-GitHub-Delivery", &delivery)]);
                (i, r)
            })
        })
        .collect();
    let replies: Vec<(usize, Reply)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut ids = BTreeSet::new();
    for (i, r) in &replies {
        assert_eq!(r.status, 202, "request {i}: {r:?}");
        ids.insert(r.json()["id"].as_u64().unwrap());
    }
    // The three bodies ask for two cells at most: while the first builds are held at the gate,
    // everything coalesces into at most three builds (aws, all, gcp; fewer when "all" came
    // first).
    assert!(ids.len() <= 3, "{ids:?}");
    p.write("gate", "");
    let mut requests = 0;
    for id in &ids {
        let b = s.finished(*id);
        assert_eq!(b["state"], "succeeded", "{b:#}");
        requests += b["requests"].as_u64().unwrap();
    }
    assert_eq!(
        requests, 50,
        "every request is recorded with the build it joined"
    );
    let r = runs(&p);
    for cell in ["aws-one-k8s-1.31", "gcp-one-k8s-1.31"] {
        assert_eq!(r.get(&format!("start {cell}")), Some(&1), "{r:?}");
        assert_eq!(r.get(&format!("published {cell}")), Some(&1), "{r:?}");
    }
    // Redelivering all 50 changes nothing.
    for i in 0..50 {
        let delivery = format!("delivery-{i}");
        let r = s.signed("/v1/builds", SEED, &[("X-GitHub-Delivery", &delivery)]);
        assert!(ids.contains(&r.json()["id"].as_u64().unwrap()), "{r:?}");
    }
    assert_eq!(
        s.get("/v1/builds").json()["builds"]
            .as_array()
            .unwrap()
            .len(),
        ids.len()
    );
}

#[test]
fn queued_builds_survive_kill_9_and_each_runs_once() {
    let p = project(false);
    let mut s = Server::start(&p);
    let asks = [
        SEED,
        r#"{"k8s":{"version":"1.31.4"},"provider":"capg"}"#,
        r#"{"k8s":{"version":"1.32.4"},"provider":"capa"}"#,
    ];
    let ids: Vec<u64> = asks
        .iter()
        .map(|body| {
            let r = s.signed("/v1/builds", body, &[]);
            assert_eq!(r.status, 202, "{r:?}");
            r.json()["id"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 3);
    // The first build is running, held at the gate; the two others are queued.
    wait_for(60, "the first build to start", || {
        runs(&p)
            .contains_key("start aws-one-k8s-1.31")
            .then_some(())
    });
    s.kill9();

    let s = Server::start(&p);
    assert!(
        s.log()
            .contains("1 build(s) were running when the server stopped"),
        "{}",
        s.log()
    );
    p.write("gate", "");
    for id in &ids {
        let b = s.finished(*id);
        assert_eq!(b["state"], "succeeded", "{b:#}\n{}", s.log());
    }
    assert_eq!(
        s.get(&format!("/v1/builds/{}", ids[0])).json()["attempts"],
        2
    );
    for id in &ids[1..] {
        assert_eq!(s.get(&format!("/v1/builds/{id}")).json()["attempts"], 1);
    }
    let r = runs(&p);
    for cell in ["aws-one-k8s-1.31", "gcp-one-k8s-1.31", "aws-one-k8s-1.32"] {
        assert_eq!(r.get(&format!("published {cell}")), Some(&1), "{r:?}");
    }
    // The interrupted step ran again (it never finished); the queued ones ran once.
    assert_eq!(r.get("start gcp-one-k8s-1.31"), Some(&1), "{r:?}");
    assert_eq!(r.get("start aws-one-k8s-1.32"), Some(&1), "{r:?}");
    assert_eq!(r.get("start aws-one-k8s-1.31"), Some(&2), "{r:?}");
    assert_eq!(
        s.get("/v1/builds").json()["builds"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn sigterm_stops_a_running_build_and_requeues_it() {
    let p = project(false);
    let mut s = Server::start(&p);
    let id = s.signed("/v1/builds", SEED, &[]).json()["id"]
        .as_u64()
        .unwrap();
    wait_for(60, "the build to start", || {
        runs(&p)
            .contains_key("start aws-one-k8s-1.31")
            .then_some(())
    });
    let status = s.terminate();
    assert!(status.success(), "{status:?}\n{}", s.log());
    assert!(s.log().contains("interrupted"), "{}", s.log());
    p.write("gate", "");
    let s = Server::start(&p);
    assert_eq!(s.finished(id)["state"], "succeeded");
}

#[test]
fn bad_requests_are_4xx_naming_the_field() {
    let p = project(true);
    let s = Server::start(&p);
    let cases: &[(&str, u16, Option<&str>, &str)] = &[
        ("{", 400, None, "not valid JSON"),
        ("", 400, None, "not valid JSON"),
        ("[1]", 422, None, "JSON object"),
        (
            r#"{"k8s":{"version":131}}"#,
            422,
            Some("k8s.version"),
            "expected a string",
        ),
        (r#"{"k8s":{}}"#, 422, Some("k8s.version"), "missing"),
        (r#"{"k8s":"1.31.4"}"#, 422, Some("k8s"), "k8s"),
        (
            r#"{"k8s":{"version":"1.31.4"},"provider":["capa"]}"#,
            422,
            Some("provider"),
            "provider",
        ),
        (
            r#"{"k8s":{"version":"1.31.4"},"provder":"capa"}"#,
            422,
            Some("provder"),
            "unknown field",
        ),
        (
            r#"{"k8s":{"version":"1.31.4"},"provider":"capx"}"#,
            422,
            Some("provider"),
            "unknown provider `capx`",
        ),
        (
            r#"{"k8s":{"version":"1.29.3"}}"#,
            422,
            Some("k8s.version"),
            "does not declare",
        ),
        (
            r#"{"k8s":{"version":"1.31"}}"#,
            422,
            Some("k8s.version"),
            "series",
        ),
        (
            r#"{"k8s":{"version":"1.33.0-rc.1"}}"#,
            422,
            Some("k8s.version"),
            "pre-release",
        ),
        (
            r#"{"k8s":{"version":"1.31.5"}}"#,
            422,
            Some("k8s.version"),
            "pinned to 1.31.4",
        ),
        (
            r#"{"k8s":{"version":"1.32.3"}}"#,
            422,
            Some("k8s.version"),
            "locked at 1.32.4",
        ),
    ];
    for (body, status, field, says) in cases {
        let r = s.signed("/v1/builds", body, &[]);
        assert_eq!(r.status, *status, "{body}: {r:?}");
        let j = r.json();
        assert_eq!(j["field"].as_str(), *field, "{body}: {j}");
        let msg = j["error"].as_str().unwrap();
        assert!(msg.contains(says), "{body}: {msg}");
    }
    let pinned = s
        .signed("/v1/builds", r#"{"k8s":{"version":"1.31.5"}}"#, &[])
        .json();
    assert!(
        pinned["error"].as_str().unwrap().contains("images.kdl"),
        "{pinned}"
    );
    // Bodies over the limit: told by Content-Length, or streamed.
    let big = vec![b' '; 10 << 20];
    let sig = sign(&big);
    let r = s.post("/v1/builds", &big, &[("X-Hub-Signature-256", &sig)]);
    assert_eq!(r.status, 413, "{r:?}");
    assert!(r.json()["error"].is_string());
    assert_eq!(s.get("/healthz").status, 200);
    assert_eq!(s.get("/v1/builds").json()["builds"], json!([]));
}

/// A fixed-seed xorshift: the same mutations on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    const PIECES: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b":",
        b",",
        b"null",
        b"true",
        b"1e999",
        b"-0",
        b"\\u0000",
        b"\xff",
        b"\xc3\x28",
        b"\"k8s\"",
        b"\"version\"",
        b"{\"a\":",
        b"[[[[[[[[",
    ];
    let mut b = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(b.len() + 1);
        match rng.below(5) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 => b.truncate(at),
            2 => {
                let piece = PIECES[rng.below(PIECES.len())];
                b.splice(at..at, piece.iter().copied());
            }
            3 if !b.is_empty() => {
                let end = (at + rng.below(8)).min(b.len());
                b.drain(at.min(end)..end);
            }
            _ => b.insert(at, rng.next() as u8),
        }
    }
    b
}

#[test]
fn fuzzed_bodies_are_4xx_and_the_server_stays_up() {
    let p = project(true);
    let s = Server::start(&p);
    let release = br#"{"action":"published","release":{"tag_name":"v1.31.4","prerelease":false}}"#;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut statuses = BTreeMap::new();
    for i in 0..300 {
        let (path, seed): (&str, &[u8]) = if i % 2 == 0 {
            ("/v1/builds", SEED.as_bytes())
        } else {
            ("/v1/github", release)
        };
        let body = mutate(&mut rng, seed);
        let sig = sign(&body);
        let r = s.post(
            path,
            &body,
            &[("X-Hub-Signature-256", &sig), ("X-GitHub-Event", "release")],
        );
        assert!(
            r.status < 500 && r.status != 404,
            "{path} {:?}: {r:?}\n{}",
            String::from_utf8_lossy(&body),
            s.log()
        );
        if r.status >= 400 {
            assert!(r.json()["error"].is_string(), "{r:?}");
        }
        *statuses.entry(r.status).or_insert(0) += 1;
    }
    // Most mutations break the body; the server answered every one and is still up.
    assert!(
        statuses.keys().any(|s| *s == 400) && statuses.keys().any(|s| *s == 422),
        "{statuses:?}"
    );
    assert_eq!(s.get("/healthz").status, 200, "{statuses:?}");
    let r = s.signed("/v1/builds", SEED, &[]);
    assert_eq!(r.status, 202);
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

/// The release sources on 127.0.0.1: GitHub's releases API and a pkgs.k8s.io `Packages` index,
/// each a fixed answer, with the paths asked recorded.
struct ReleaseStub {
    port: u16,
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for ReleaseStub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn release_stub() -> ReleaseStub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (a, st) = (asked.clone(), stop.clone());
    let thread = std::thread::spawn(move || {
        let start = Instant::now();
        while !st.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(120) {
            let Ok((stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            stream.set_nonblocking(false).unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            a.lock().unwrap().push(path.clone());
            let (status, body) = if path.starts_with("/repos/kubernetes/kubernetes/releases") {
                (
                    "200 OK",
                    json!([
                        {"tag_name": "v1.33.0-rc.0", "draft": false, "prerelease": true},
                        {"tag_name": "v1.32.5", "draft": false, "prerelease": false},
                        {"tag_name": "v1.31.9", "draft": false, "prerelease": false},
                        {"tag_name": "v1.32.4", "draft": false, "prerelease": false},
                        {"tag_name": "v1.32.0", "draft": false, "prerelease": false}
                    ])
                    .to_string(),
                )
            } else if path == "/stable-1.32.txt" {
                ("200 OK", "v1.32.5\n".to_string())
            } else if path == "/v1.32/deb/Packages" {
                (
                    "200 OK",
                    ["kubeadm", "kubelet", "kubectl"]
                        .iter()
                        .flat_map(|p| {
                            ["1.32.4-1.1", "1.32.5-1.1"].map(|v| {
                                format!("Package: {p}\nVersion: {v}\nArchitecture: amd64\n\n")
                            })
                        })
                        .collect::<String>(),
                )
            } else {
                ("404 Not Found", "not found".to_string())
            };
            let mut stream = reader.into_inner();
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.flush();
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
        }
    });
    ReleaseStub {
        port,
        asked,
        stop,
        thread: Some(thread),
    }
}

#[test]
fn a_newer_release_of_a_tracked_series_moves_the_lock_then_builds() {
    let stub = release_stub();
    let base = format!("http://127.0.0.1:{}", stub.port);
    let p = project(true)
        .env("GITHUB_API_URL", &base)
        .env("KILN_K8S_PACKAGES_URL", &base)
        .env("KILN_K8S_RELEASE_URL", &base);
    let s = Server::start(&p);
    let release = json!({
        "action": "released",
        "release": {"tag_name": "v1.32.5", "prerelease": false, "draft": false}
    })
    .to_string();
    let r = s.signed(
        "/v1/github",
        &release,
        &[("X-GitHub-Event", "release"), ("X-GitHub-Delivery", "r-1")],
    );
    assert_eq!(r.status, 202, "{r:?}\n{}", s.log());
    let j = r.json();
    assert_eq!(j["cells"], json!(["aws-one-k8s-1.32", "gcp-one-k8s-1.32"]));
    assert!(j["lock"].as_str().unwrap().contains("1.32.5"), "{j}");
    let lock = p.read("images.lock");
    assert!(lock.contains("version=\"1.32.5\""), "{lock}");
    let b = s.finished(j["id"].as_u64().unwrap());
    assert_eq!(b["state"], "succeeded", "{b:#}");
    let plan = p.kiln(&["plan", "--kubernetes", "1.32", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    assert!(
        stub.asked
            .lock()
            .unwrap()
            .iter()
            .any(|a| a == "/v1.32/deb/Packages")
    );
    // Asking for the locked version again moves nothing and asks no source.
    let before = stub.asked.lock().unwrap().len();
    let again = s.signed("/v1/builds", r#"{"k8s":{"version":"1.32.5"}}"#, &[]);
    assert_eq!(again.status, 202, "{again:?}");
    assert!(again.json().get("lock").is_none());
    assert_eq!(stub.asked.lock().unwrap().len(), before);
    // A release of a series the config does not build, or of a pinned one, is ignored.
    for tag in ["v1.29.3", "v1.31.9"] {
        let body = release.replace("v1.32.5", tag);
        let r = s.signed("/v1/github", &body, &[("X-GitHub-Event", "release")]);
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.json()["ignored"].is_string(), "{r:?}");
    }
    // A version no source lists is refused, and the lock stays.
    let r = s.signed("/v1/builds", r#"{"k8s":{"version":"1.32.7"}}"#, &[]);
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (422, json!("k8s.version")),
        "{r:?}"
    );
    assert!(p.read("images.lock").contains("version=\"1.32.5\""));
}

#[test]
fn serve_watch_moves_the_lock_and_queues_the_tracked_cells() {
    let stub = release_stub();
    let base = format!("http://127.0.0.1:{}", stub.port);
    let p = project(true)
        .env("GITHUB_API_URL", &base)
        .env("KILN_K8S_PACKAGES_URL", &base)
        .env("KILN_K8S_RELEASE_URL", &base);
    let s = Server::start_with(&p, &["--watch", "1h"]);
    let id = wait_for(60, "the watch round to queue a build", || {
        let list = s.get("/v1/builds").json();
        list["builds"].as_array()?.first()?["id"].as_u64()
    });
    let b = s.finished(id);
    assert_eq!(b["state"], "succeeded", "{b:#}\n{}", s.log());
    assert_eq!(b["cells"], json!(["aws-one-k8s-1.32", "gcp-one-k8s-1.32"]));
    assert_eq!(b["request"]["origin"]["kind"], "watch");
    assert!(p.read("images.lock").contains("version=\"1.32.5\""));
    assert!(
        s.log().contains("Updated kubernetes 1.32: 1.32.4"),
        "{}",
        s.log()
    );
    assert!(
        stub.asked
            .lock()
            .unwrap()
            .iter()
            .any(|a| a == "/stable-1.32.txt")
    );
}

/// The status page, as a browser renders it (headless Chromium) and as served.
#[test]
fn the_status_page_shows_the_queue_builds_and_catalog() {
    let p = project_with(UPLOAD_MODULE, true);
    let s = Server::start(&p);
    let aws = s.signed("/v1/builds", SEED, &[]).json()["id"]
        .as_u64()
        .unwrap();
    assert_eq!(s.finished(aws)["state"], "succeeded");
    let gcp = s.signed(
        "/v1/builds",
        r#"{"k8s":{"version":"1.31.4"},"provider":"capg"}"#,
        &[],
    );
    assert_eq!(
        s.finished(gcp.json()["id"].as_u64().unwrap())["state"],
        "succeeded"
    );
    // The gcp image disappears from its bucket; the next refresh flags it.
    std::fs::remove_file(p.path().join("published/gcp/gcp-one-k8s-1.31.img")).unwrap();
    p.kiln(&["plan"]).expect_code(0);
    // Queue a build that cannot start while the cache is locked by another kiln, so that the
    // queue is not empty when the page is read.
    let lock = hold_cache_lock(&p);
    let held = s
        .signed("/v1/builds", r#"{"k8s":{"version":"1.32.4"}}"#, &[])
        .json()["id"]
        .as_u64()
        .unwrap();
    let served = s.get("/");
    assert_eq!(served.status, 200);
    check_page(&served.body, aws, held);

    let profile = tempfile::tempdir().unwrap();
    let mut chromium = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=2000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(s.url("/"))
        .env("HOME", profile.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium (Debian's `chromium` package; .ci/run installs it)");
    let mut out = chromium.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let status = wait_for(90, "chromium to dump the page", || {
        chromium.try_wait().unwrap()
    });
    let dom = reader.join().unwrap();
    assert!(status.success(), "chromium: {status:?}\n{dom}");
    check_page(&dom, aws, held);
    drop(lock);
    assert_eq!(s.finished(held)["state"], "succeeded");
}

/// A process holding the cache's lock; killed when dropped.
struct LockHolder(Child);

impl Drop for LockHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Holds the cache's lock (as a `kiln build` would) until dropped: a build of the server waits.
fn hold_cache_lock(p: &Project) -> LockHolder {
    // --no-fork: the process killed is the one holding the lock.
    let child = std::process::Command::new("flock")
        .arg("--no-fork")
        .arg(p.path().join("cache/lock"))
        .args(["sleep", "60"])
        .spawn()
        .expect("flock");
    wait_for(10, "flock to take the lock", || {
        let busy = std::process::Command::new("flock")
            .args(["-n"])
            .arg(p.path().join("cache/lock"))
            .arg("true")
            .status()
            .unwrap();
        (!busy.success()).then_some(())
    });
    LockHolder(child)
}

fn check_page(html: &str, done: u64, held: u64) {
    use scraper::{Html, Selector};
    let doc = Html::parse_document(html);
    let sel = |s: &str| Selector::parse(s).unwrap();
    let text = |e: scraper::ElementRef| e.text().collect::<String>();
    assert_eq!(
        doc.select(&sel("title")).next().map(text).as_deref(),
        Some("kiln · builds"),
        "{html}"
    );
    // The queue: the held build, running or queued.
    let queued: Vec<_> = doc.select(&sel("#queue tr.build")).collect();
    assert_eq!(queued.len(), 1, "{html}");
    assert_eq!(
        queued[0].value().attr("data-id"),
        Some(held.to_string().as_str())
    );
    // The finished build, its nodes with their outcomes and durations.
    let build = doc
        .select(&sel(&format!("#builds section#build-{done}")))
        .next()
        .unwrap_or_else(|| panic!("no build {done} in\n{html}"));
    assert_eq!(build.value().attr("data-state"), Some("succeeded"));
    let nodes: Vec<(String, String, String)> = build
        .select(&sel("tr.node"))
        .map(|r| {
            let cell = |c: &str| r.select(&sel(c)).next().map(text).unwrap_or_default();
            (cell("td.id"), cell("td.outcome"), cell("td.duration"))
        })
        .collect();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    assert_eq!(
        (nodes[0].0.as_str(), nodes[0].1.as_str()),
        ("aws/one/1.31/build", "built")
    );
    assert!(nodes.iter().all(|n| n.2.ends_with('s')), "{nodes:?}");
    // The catalog: every cell, the built one published.
    let cells: BTreeMap<String, String> = doc
        .select(&sel("#catalog tr.cell"))
        .map(|r| {
            (
                r.value().attr("data-cell").unwrap().to_string(),
                r.select(&sel("td.state"))
                    .next()
                    .map(text)
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(cells.len(), 4, "{cells:?}");
    assert!(
        cells["aws-one-k8s-1.31"].starts_with("current (verified"),
        "{cells:?}"
    );
    assert!(
        cells["gcp-one-k8s-1.31"].starts_with("drift: NOT CURRENT"),
        "{cells:?}"
    );
    let drifted = doc.select(&sel("#catalog tr.drift")).count();
    assert_eq!(drifted, 1, "{html}");
    assert_eq!(cells["gcp-one-k8s-1.32"], "not published");
    let facts = doc
        .select(&sel("#catalog tr[data-cell=\"aws-one-k8s-1.31\"] dd"))
        .map(text)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        facts.contains("published/aws/aws-one-k8s-1.31.img"),
        "{facts}"
    );
}
