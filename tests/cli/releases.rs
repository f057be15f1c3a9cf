//! A stand-in for the Kubernetes release sources on 127.0.0.1, replaying the real releases of
//! `tests/data/k8s-releases/endoflife-kubernetes.json` as they stood on a given day.
//!
//! Every URL starts with the day it answers for, so one server replays a whole year:
//!
//! ```text
//! /<YYYY-MM-DD>/release/stable-1.31.txt                        dl.k8s.io's marker: v1.31.N
//! /<YYYY-MM-DD>/packages/v1.31/deb/Packages                    pkgs.k8s.io's index of the minor
//! /<YYYY-MM-DD>/github/repos/kubernetes/kubernetes/releases    GitHub's releases, newest first
//! ```
//!
//! A minor not released yet is a 404, as on dl.k8s.io. The `Packages` stanzas are the real
//! kubeadm stanza of `Packages-v1.27-excerpt` with the package name and version replaced (no
//! real index of these minors was found), next to its real cri-tools stanza. GitHub's releases
//! are built from its documented fields with the real versions and dates, plus each minor's
//! alpha, beta and rc pre-releases before its `.0`; pages hold [`PAGE`] releases (whatever
//! `per_page` asks), are linked with `Link: <…>; rel="next"`, carry an `ETag`, and answer
//! `If-None-Match` with a 304. Any path can be given another answer with [`ReleaseServer::set`].

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::data_dir;

/// Releases per page of the GitHub stand-in.
pub const PAGE: usize = 25;

/// One request the server answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub status: u16,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct State {
    seen: Vec<Seen>,
    overrides: HashMap<String, (u16, String)>,
}

pub struct ReleaseServer {
    pub addr: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A real release: version and date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub version: String,
    pub date: String,
}

impl Release {
    pub fn minor(&self) -> String {
        let mut parts = self.version.split('.');
        format!("{}.{}", parts.next().unwrap(), parts.next().unwrap())
    }

    pub fn patch(&self) -> u64 {
        self.version.split('.').nth(2).unwrap().parse().unwrap()
    }
}

/// Every stable release of endoflife-kubernetes.json.
pub fn releases() -> Vec<Release> {
    let text =
        std::fs::read_to_string(data_dir().join("k8s-releases/endoflife-kubernetes.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["versions"]
        .as_object()
        .unwrap()
        .values()
        .map(|r| Release {
            version: r["name"].as_str().unwrap().to_string(),
            date: r["date"].as_str().unwrap().to_string(),
        })
        .collect()
}

/// The newest release of `minor` out on `day`.
pub fn newest(all: &[Release], minor: &str, day: &str) -> Option<Release> {
    all.iter()
        .filter(|r| r.minor() == minor && r.date.as_str() <= day)
        .max_by_key(|r| r.patch())
        .cloned()
}

/// `day` moved by `days` (dates as `YYYY-MM-DD`).
pub fn add_days(day: &str, days: u64) -> String {
    let t = humantime::parse_rfc3339(&format!("{day}T00:00:00Z")).unwrap();
    let t = t + Duration::from_secs(days * 86_400);
    humantime::format_rfc3339(t).to_string()[..10].to_string()
}

impl ReleaseServer {
    pub fn start() -> ReleaseServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let all = Arc::new(releases());
        let thread = {
            let (state, stop, addr) = (state.clone(), stop.clone(), addr.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (state, all, addr) = (state.clone(), all.clone(), addr.clone());
                    std::thread::spawn(move || serve(conn, &state, &all, &addr));
                }
            })
        };
        ReleaseServer {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// The environment pointing kiln at this server as it stood on `day`.
    pub fn env(&self, day: &str) -> [(&'static str, String); 3] {
        [
            (
                "KILN_K8S_RELEASE_URL",
                format!("{}/{day}/release", self.addr),
            ),
            (
                "KILN_K8S_PACKAGES_URL",
                format!("{}/{day}/packages", self.addr),
            ),
            ("GITHUB_API_URL", format!("{}/{day}/github", self.addr)),
        ]
    }

    /// Answers `path` (without the query) with `status` and `body` from now on.
    pub fn set(&self, path: &str, status: u16, body: &str) {
        self.state
            .lock()
            .unwrap()
            .overrides
            .insert(path.to_string(), (status, body.to_string()));
    }

    /// Answers `path` as the replay does again.
    pub fn unset(&self, path: &str) {
        self.state.lock().unwrap().overrides.remove(path);
    }

    /// The requests answered so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }
}

impl Drop for ReleaseServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr.trim_start_matches("http://"));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>, all: &[Release], addr: &str) {
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let over = state.lock().unwrap().overrides.get(path).cloned();
    let (status, body, extra) = match over {
        Some((status, body)) => (status, body, Vec::new()),
        None => answer(path, query, all, addr),
    };
    let etag = format!("\"{}\"", blake3::hash(body.as_bytes()).to_hex());
    let github = path.contains("/github/");
    let (status, body) = if github && status == 200 && headers.get("if-none-match") == Some(&etag) {
        (304, String::new())
    } else {
        (status, body)
    };
    state.lock().unwrap().seen.push(Seen {
        path: target.clone(),
        status,
        authorization: headers.get("authorization").cloned(),
    });
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if github && status < 300 {
        head.push_str(&format!("ETag: {etag}\r\n"));
    }
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut conn = conn;
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body.as_bytes());
    let _ = conn.flush();
    // Drain what the client may still send, then close.
    let _ = reader
        .get_mut()
        .set_read_timeout(Some(Duration::from_millis(50)));
    let _ = reader.read(&mut [0; 64]);
}

type Answer = (u16, String, Vec<(String, String)>);

fn not_found() -> Answer {
    (
        404,
        "<html><body>404 Not Found</body></html>".into(),
        Vec::new(),
    )
}

fn answer(path: &str, query: &str, all: &[Release], addr: &str) -> Answer {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (Some(day), Some(rest)) = (parts.next(), parts.next()) else {
        return not_found();
    };
    let out: Vec<&Release> = all.iter().filter(|r| r.date.as_str() <= day).collect();
    if let Some(file) = rest.strip_prefix("release/") {
        let Some(minor) = file
            .strip_prefix("stable-")
            .and_then(|f| f.strip_suffix(".txt"))
        else {
            return not_found();
        };
        return match newest(all, minor, day) {
            // dl.k8s.io's markers have no newline.
            Some(r) => (200, format!("v{}", r.version), Vec::new()),
            None => not_found(),
        };
    }
    if let Some(minor) = rest
        .strip_prefix("packages/v")
        .and_then(|r| r.strip_suffix("/deb/Packages"))
    {
        let versions: Vec<&&Release> = out.iter().filter(|r| r.minor() == minor).collect();
        if versions.is_empty() {
            return not_found();
        }
        return (200, packages(&versions), Vec::new());
    }
    if rest == "github/repos/kubernetes/kubernetes/releases" {
        return github(day, query, all, addr);
    }
    not_found()
}

/// The real stanzas of the excerpt: the cri-tools one, and the amd64 kubeadm 1.27.1-1.1 one as
/// the template of every package.
fn stanzas() -> (String, String) {
    let text =
        std::fs::read_to_string(data_dir().join("k8s-releases/Packages-v1.27-excerpt")).unwrap();
    let all: Vec<&str> = text.split("\n\n").collect();
    let cri = all
        .iter()
        .find(|s| s.starts_with("Package: cri-tools"))
        .unwrap();
    let kubeadm = all
        .iter()
        .find(|s| s.contains("Version: 1.27.1-1.1") && s.contains("Architecture: amd64"))
        .unwrap();
    (cri.to_string(), kubeadm.to_string())
}

fn packages(versions: &[&&Release]) -> String {
    let (cri, template) = stanzas();
    let mut out = vec![cri];
    for r in versions {
        for p in ["kubeadm", "kubectl", "kubelet"] {
            out.push(
                template
                    .replace("1.27.1-1.1", &format!("{}-1.1", r.version))
                    .replace("kubeadm", p),
            );
        }
    }
    out.join("\n\n") + "\n"
}

/// Each minor's pre-releases: alpha.1, beta.0 and rc.1, 60, 30 and 10 days before its `.0`.
fn prereleases(all: &[Release]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for r in all.iter().filter(|r| r.patch() == 0) {
        let before = |days: u64| {
            let t = humantime::parse_rfc3339(&format!("{}T00:00:00Z", r.date)).unwrap();
            humantime::format_rfc3339(t - Duration::from_secs(days * 86_400)).to_string()[..10]
                .to_string()
        };
        for (suffix, days) in [("alpha.1", 60), ("beta.0", 30), ("rc.1", 10)] {
            out.push((format!("{}-{suffix}", r.version), before(days)));
        }
    }
    out
}

fn github(day: &str, query: &str, all: &[Release], addr: &str) -> Answer {
    let mut list: Vec<(String, String, bool)> = all
        .iter()
        .map(|r| (r.version.clone(), r.date.clone(), false))
        .chain(prereleases(all).into_iter().map(|(v, d)| (v, d, true)))
        .filter(|(_, d, _)| d.as_str() <= day)
        .collect();
    // Newest first, as GitHub lists them.
    list.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    let page: usize = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("page="))
        .and_then(|p| p.parse().ok())
        .unwrap_or(1);
    let chunk: Vec<serde_json::Value> = list
        .iter()
        .skip((page - 1) * PAGE)
        .take(PAGE)
        .enumerate()
        .map(|(i, (v, d, pre))| {
            serde_json::json!({
                "url": format!("{addr}/{day}/github/repos/kubernetes/kubernetes/releases/{}", 1000 + i),
                "html_url": format!("https://github.com/kubernetes/kubernetes/releases/tag/v{v}"),
                "id": 1000 + i,
                "tag_name": format!("v{v}"),
                "target_commitish": "master",
                "name": format!("Kubernetes v{v}"),
                "draft": false,
                "prerelease": pre,
                "created_at": format!("{d}T12:00:00Z"),
                "published_at": format!("{d}T14:00:00Z"),
                "assets": [],
                "body": "See [kubernetes-announce@](https://groups.google.com/forum/#!forum/kubernetes-announce)."
            })
        })
        .collect();
    let mut extra = Vec::new();
    if page * PAGE < list.len() {
        let base = format!("{addr}/{day}/github/repos/kubernetes/kubernetes/releases");
        extra.push((
            "Link".to_string(),
            format!(
                "<{base}?per_page=100&page={}>; rel=\"next\", <{base}?per_page=100&page={}>; rel=\"last\"",
                page + 1,
                list.len().div_ceil(PAGE)
            ),
        ));
    }
    (200, serde_json::to_string(&chunk).unwrap(), extra)
}
