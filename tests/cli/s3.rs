//! `upload` to a real S3-compatible server: moto on 127.0.0.1, with IAM authentication on, so
//! wrong credentials are refused as AWS would refuse them. The CAPO flow: the offline `local`
//! builder makes a real qcow2 and the publish step puts it and its `.sha256` into a bucket.
//!
//! moto comes from `pip install 'moto[server]'` (`.ci/run` installs it); without it these tests
//! fail.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest as _, Sha256};

use crate::support::Project;

pub(crate) const BUCKET: &str = "capo-images";
const CELL: &str = "capo-ubuntu-2404-k8s-1.31";
const PUBLISH: &str = "capo/ubuntu-2404/1.31/publish";

/// A moto server on a free port of 127.0.0.1, killed when dropped.
pub(crate) struct Moto {
    child: Child,
    port: u16,
    /// Credentials of an IAM user allowed `s3:*`.
    pub(crate) key_id: String,
    pub(crate) secret: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn has_moto() -> bool {
    Command::new("python3")
        .args(["-c", "import moto.server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

/// One HTTP/1.0 request; returns the status and body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to moto");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn xml_field(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = xml
        .find(&open)
        .unwrap_or_else(|| panic!("no <{tag}> in {xml}"))
        + open.len();
    let end = xml[start..].find('<').unwrap() + start;
    xml[start..end].to_string()
}

/// Starts moto, creates the bucket and an IAM user with an access key, then turns
/// authentication on. `None` (with the reason printed) when moto is not installed.
pub(crate) fn moto() -> Option<Moto> {
    start_moto(true)
}

/// Like [`moto`], but moto keeps accepting any signature: its IAM check rejects correctly signed
/// ListObjectsV2 requests (getmoto/moto#5948), which the refresh of S3 claims makes.
pub(crate) fn moto_without_auth() -> Option<Moto> {
    start_moto(false)
}

fn start_moto(auth: bool) -> Option<Moto> {
    assert!(
        has_moto(),
        "moto is not installed; .ci/run installs it with python3 -m pip install 'moto[server]'"
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let args = [
        "-H".to_string(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
    ];
    let mut cmd = if on_path("moto_server") {
        Command::new("moto_server")
    } else {
        let mut c = Command::new("python3");
        c.args(["-m", "moto.server"]);
        c
    };
    let child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto");
    let mut m = Moto {
        child,
        port,
        key_id: String::new(),
        secret: String::new(),
    };
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = m.child.try_wait() {
            panic!("moto exited before answering: {status}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "moto did not answer on port {port} within 60s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, body) = http(port, "PUT", &format!("/{BUCKET}"), &[], "");
    assert_eq!(code, 200, "creating the bucket: {body}");
    // IAM calls go to the same port; moto routes them by the credential scope.
    let iam = |query: &str| {
        let auth = "AWS4-HMAC-SHA256 Credential=AKIAKILNSETUP0000000/20240101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=00";
        let (code, body) = http(
            port,
            "POST",
            "/",
            &[
                ("Authorization", auth),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            &format!("{query}&Version=2010-05-08"),
        );
        assert_eq!(code, 200, "{query}: {body}");
        body
    };
    iam("Action=CreateUser&UserName=kiln");
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
    iam(&format!(
        "Action=PutUserPolicy&UserName=kiln&PolicyName=s3&PolicyDocument={}",
        urlencode(policy)
    ));
    let key = iam("Action=CreateAccessKey&UserName=kiln");
    m.key_id = xml_field(&key, "AccessKeyId");
    m.secret = xml_field(&key, "SecretAccessKey");
    if !auth {
        return Some(m);
    }
    // From now on every request must be signed by a known key.
    let (code, body) = http(
        port,
        "POST",
        "/moto-api/reset-auth",
        &[("Content-Type", "text/plain")],
        "0",
    );
    assert_eq!(code, 200, "enabling authentication: {body}");
    Some(m)
}

impl Moto {
    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn store(&self) -> object_store::aws::AmazonS3 {
        self.builder().build().unwrap()
    }

    /// [`Moto::store`], its uploads carrying a SHA-256 of each part.
    pub(crate) fn store_checked(&self) -> object_store::aws::AmazonS3 {
        self.builder()
            .with_checksum_algorithm(object_store::aws::Checksum::SHA256)
            .build()
            .unwrap()
    }

    fn builder(&self) -> AmazonS3Builder {
        AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_access_key_id(&self.key_id)
            .with_secret_access_key(&self.secret)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// An object's bytes, or `None` when the bucket does not hold it.
    pub(crate) fn get(&self, key: &str) -> Option<Vec<u8>> {
        let store = self.store();
        Moto::runtime().block_on(async {
            match store.get(&ObjectPath::from(key)).await {
                Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("GET {key}: {e}"),
            }
        })
    }

    pub(crate) fn delete(&self, key: &str) {
        let store = self.store();
        Moto::runtime()
            .block_on(store.delete(&ObjectPath::from(key)))
            .unwrap();
    }

    pub(crate) fn put(&self, key: &str, bytes: Vec<u8>) {
        let store = self.store();
        Moto::runtime()
            .block_on(store.put(&ObjectPath::from(key), bytes.into()))
            .unwrap();
    }

    /// The keys under `prefix` (moto must run without authentication: it refuses signed
    /// listings).
    pub(crate) fn list(&self, prefix: &str) -> Vec<String> {
        use futures_util::TryStreamExt;
        let store = self.store();
        let mut keys: Vec<String> = Moto::runtime()
            .block_on(
                store
                    .list(Some(&ObjectPath::from(prefix)))
                    .map_ok(|m| m.location.to_string())
                    .try_collect(),
            )
            .unwrap();
        keys.sort();
        keys
    }

    fn last_modified(&self, key: &str) -> String {
        let store = self.store();
        let meta = Moto::runtime()
            .block_on(store.head(&ObjectPath::from(key)))
            .unwrap();
        format!("{} {:?}", meta.last_modified, meta.e_tag)
    }
}

/// The CAPO layout with the offline builder: one cell, published to `s3://capo-images/capo`.
fn project(m: &Moto, key_id: &str, secret: &str) -> Project {
    let root = crate::support::repo_root();
    let config = format!(
        r#"import "modules/local.kdl"

kubernetes "1.31" {{
    version "1.31.4"
}}

matrix "capo" {{
    kubernetes "1.31"
    provider "capo"
    os "ubuntu-2404"
}}

provider "capo" module="local" {{
    bucket "s3://{BUCKET}/capo"
    endpoint "{}"
    size "64M"
    ship "files/payload.bin" to="opt/payload.bin"
    secret "AWS_ACCESS_KEY_ID" env="KILN_TEST_S3_KEY_ID"
    secret "AWS_SECRET_ACCESS_KEY" env="KILN_TEST_S3_SECRET"
}}
"#,
        m.endpoint()
    );
    let p = Project::new()
        .with_path(&root.join("modules/local.kdl"), "modules/local.kdl")
        .with_file("images.kdl", &config)
        .env("KILN_TEST_S3_KEY_ID", key_id)
        .env("KILN_TEST_S3_SECRET", secret);
    // Incompressible bytes, so the qcow2 is large enough to go up in several parts.
    std::fs::create_dir_all(p.path().join("files")).unwrap();
    std::fs::write(
        p.path().join("files/payload.bin"),
        kiln::store::contract::noise(20 << 20, 1),
    )
    .unwrap();
    p
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn scan(dir: &Path, needles: &[&str], files: &mut usize) {
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            scan(&path, needles, files);
        } else {
            *files += 1;
            let bytes = std::fs::read(&path).unwrap();
            for needle in needles {
                let hit = bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
                assert!(!hit, "{} contains a secret", path.display());
            }
        }
    }
}

/// Build → the image and its `.sha256` are in the bucket; again → nothing runs; a forced
/// publish finds the same digest and skips; a missing `.sha256` is published again.
#[test]
fn capo_images_go_to_an_s3_bucket_with_their_sha256() {
    let Some(m) = moto() else { return };
    let p = project(&m, &m.key_id, &m.secret);
    let image_key = format!("capo/{CELL}.qcow2");
    let sum_key = format!("{image_key}.sha256");

    let build = p.kiln(&["build", "--quiet"]);
    build.expect_code(0);
    assert_eq!(build.stdout.trim(), "3 built, 0 cached");
    let image = m.get(&image_key).expect("the image is in the bucket");
    let sum = String::from_utf8(m.get(&sum_key).expect("its .sha256 too")).unwrap();
    let hex = sha256_hex(&image);
    assert_eq!(sum, format!("{hex}  {CELL}.qcow2\n"));
    assert_eq!(&image[..4], b"QFI\xfb", "not a qcow2 image");
    assert!(image.len() > 16 << 20, "the image is {} bytes", image.len());
    let log = p.kiln(&["logs", PUBLISH]).stdout;
    assert!(log.contains("parts of up to 8 MiB"), "{log}");
    assert!(log.contains(&format!("fact sha256={hex}")), "{log}");
    assert!(
        log.contains(&format!("fact url=s3://{BUCKET}/capo/{CELL}.qcow2")),
        "{log}"
    );
    let images = p.kiln(&["images", "--json"]);
    images.expect_code(0);
    let facts = &images.json()[0]["facts"];
    assert_eq!(facts["sha256"], hex.as_str());
    assert_eq!(facts["size"], image.len().to_string().as_str());
    assert!(facts.get("skipped").is_none(), "{facts}");

    // Cached: nothing is published again.
    let stamp = m.last_modified(&image_key);
    let again = p.kiln(&["build", "--quiet"]);
    again.expect_code(0);
    assert_eq!(again.stdout.trim(), "0 built, 3 cached");
    assert_eq!(m.last_modified(&image_key), stamp);

    // Forced: the bucket already holds this digest, so the upload is skipped.
    let forced = p.kiln(&["build", "--quiet", "--force", PUBLISH]);
    forced.expect_code(0);
    assert_eq!(forced.stdout.trim(), "1 built, 2 cached");
    let log = p.kiln(&["logs", PUBLISH]).stdout;
    assert!(log.contains("fact skipped=true"), "{log}");
    assert!(log.contains("; skipped"), "{log}");
    assert_eq!(m.last_modified(&image_key), stamp);
    assert_eq!(
        p.kiln(&["images", "--json"]).json()[0]["facts"]["skipped"],
        "true"
    );

    // Without its .sha256 the pair is incomplete: a forced publish uploads both again.
    m.delete(&sum_key);
    let forced = p.kiln(&["build", "--quiet", "--force", PUBLISH]);
    forced.expect_code(0);
    let log = p.kiln(&["logs", PUBLISH]).stdout;
    assert!(!log.contains("skipped"), "{log}");
    assert_eq!(
        String::from_utf8(m.get(&sum_key).expect("the .sha256 is back")).unwrap(),
        sum
    );

    // The credentials appear nowhere: not in output, logs, records or any cache file.
    let outputs = [&build, &again, &forced, &images];
    for out in outputs {
        for s in [&m.secret, &m.key_id] {
            assert!(!out.stdout.contains(s.as_str()) && !out.stderr.contains(s.as_str()));
        }
    }
    assert!(
        !log.contains(&m.secret) && !log.contains(&m.key_id),
        "{log}"
    );
    let mut files = 0;
    scan(&p.path().join("cache"), &[&m.secret, &m.key_id], &mut files);
    assert!(files > 5, "scanned only {files} files");
}

/// Wrong credentials: the publish step fails with a message that says so, nothing is recorded
/// for it, and the bucket stays empty; with the right ones the next build publishes.
#[test]
fn wrong_s3_credentials_fail_clearly_and_record_nothing() {
    let Some(m) = moto() else { return };
    const WRONG: &str = "wrong-s3cr3t-4c1e9a";
    let mut p = project(&m, &m.key_id, WRONG);
    let out = p.kiln(&["build", "--quiet"]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("credentials") && out.stderr.contains("AWS_SECRET_ACCESS_KEY"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(PUBLISH), "{}", out.stderr);
    for s in [WRONG, m.key_id.as_str()] {
        assert!(
            !out.stdout.contains(s) && !out.stderr.contains(s),
            "{}",
            out.stderr
        );
    }
    let images = p.kiln(&["images", "--json"]).json();
    assert!(images[0]["facts"].is_null(), "{images}");
    assert!(m.get(&format!("capo/{CELL}.qcow2")).is_none());
    let mut files = 0;
    scan(&p.path().join("cache"), &[WRONG, &m.key_id], &mut files);

    p.set_env("KILN_TEST_S3_SECRET", &m.secret);
    let out = p.kiln(&["build", "--quiet"]);
    out.expect_code(0);
    assert_eq!(out.stdout.trim(), "1 built, 2 cached");
    assert!(m.get(&format!("capo/{CELL}.qcow2.sha256")).is_some());
}

/// An s3:// bucket without the credential secrets is refused before any request.
#[test]
fn an_s3_bucket_needs_its_secrets() {
    let root = crate::support::repo_root();
    let p = Project::new()
        .with_path(&root.join("modules/local.kdl"), "modules/local.kdl")
        .with_file(
            "images.kdl",
            r#"import "modules/local.kdl"
kubernetes "1.31" {
    version "1.31.4"
}
matrix "capo" {
    kubernetes "1.31"
    provider "capo"
    os "ubuntu-2404"
}
provider "capo" module="local" {
    bucket "s3://capo-images"
    endpoint "http://127.0.0.1:9"
}
"#,
        );
    let out = p.kiln(&["build", "--quiet"]);
    out.expect_code(1);
    assert!(
        out.stderr.contains(
            "an s3:// bucket needs the secrets AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        ),
        "{}",
        out.stderr
    );
}

/// The refresh checks the bucket before a cached publish is trusted: a deleted image, an image
/// replaced by other bytes of the same size, and a rewritten `.sha256` are each drift, published
/// again by the next build; without credentials the check is a warning, not a silent "cached".
#[test]
fn s3_claims_are_refreshed_against_the_bucket() {
    let Some(m) = moto_without_auth() else {
        return;
    };
    let p = project(&m, &m.key_id, &m.secret);
    let image_key = format!("capo/{CELL}.qcow2");
    let sum_key = format!("{image_key}.sha256");
    let url = format!("s3://{BUCKET}/capo/{CELL}.qcow2");
    p.kiln(&["build", "--quiet"]).expect_code(0);
    let image = m.get(&image_key).unwrap();
    let sum = m.get(&sum_key).unwrap();
    let plan = p.kiln(&["plan", "--detailed-exitcode"]);
    plan.expect_code(0);
    let images = p.kiln(&["images", "--json"]);
    assert_eq!(
        images.json()[0]["current"],
        true,
        "{}\n{}",
        images.stdout,
        plan.stderr
    );

    let reasons = |p: &Project| {
        let plan = p.kiln(&["plan", "--json"]);
        plan.expect_code(0);
        let v = plan.json();
        let n = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == PUBLISH)
            .unwrap()
            .clone();
        assert_eq!(n["action"], "rebuild", "{n}");
        n["reasons"].clone()
    };

    m.delete(&image_key);
    assert_eq!(
        reasons(&p)[0],
        serde_json::json!({"kind": "published_missing", "target": url})
    );
    let images = p.kiln(&["images"]);
    assert!(images.stdout.contains("NOT CURRENT"), "{}", images.stdout);
    let out = p.kiln(&["build", "--quiet"]);
    out.expect_code(0);
    assert_eq!(out.stdout.trim(), "1 built, 2 cached", "{}", out.stderr);
    assert!(
        m.get(&image_key).unwrap() == image,
        "the bucket does not hold the image"
    );

    // Other bytes of the same size: only the ETag tells.
    let mut other = image.clone();
    other[image.len() / 2] ^= 0xff;
    m.put(&image_key, other);
    let r = reasons(&p);
    assert_eq!(r[0]["kind"], "published_drift", "{r}");
    assert_eq!(r[0]["what"], "ETag", "{r}");
    p.kiln(&["build", "--quiet"]).expect_code(0);
    assert!(
        m.get(&image_key).unwrap() == image,
        "the bucket does not hold the image"
    );

    m.put(&sum_key, b"0000  elsewhere.qcow2\n".to_vec());
    let r = reasons(&p);
    assert_eq!(
        r[0],
        serde_json::json!({
            "kind": "published_drift",
            "target": format!("{url}.sha256"),
            "what": "sha256",
            "found": "0000",
            "expected": sha256_hex(&image),
        })
    );
    p.kiln(&["build", "--quiet"]).expect_code(0);
    assert!(
        m.get(&sum_key).unwrap() == sum,
        "the bucket does not hold the .sha256"
    );
    p.kiln(&["plan", "--detailed-exitcode"]).expect_code(0);

    // No credentials: a warning naming the node, and the image is not called current.
    let mut bare = p;
    bare.set_env("KILN_TEST_S3_SECRET", "");
    let plan = bare.kiln(&["plan", "--json"]);
    plan.expect_code(0);
    assert!(
        plan.stderr.contains(&format!(
            "warning: the published state of {PUBLISH} was not checked"
        )),
        "{}",
        plan.stderr
    );
    let images = bare.kiln(&["images", "--json"]).json();
    assert_eq!(images[0]["current"], false);
    assert_eq!(images[0]["refresh"], "unchecked");
}
