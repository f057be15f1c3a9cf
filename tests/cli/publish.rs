//! The publish builders against stand-ins on 127.0.0.1: `aws-ami` against moto's EC2 API (which
//! checks SigV4 signatures once IAM auth is on), `hcloud-snapshot` against a small recording
//! server shaped on the Hetzner Cloud API, and `gcp-image` through a recording fake `gcloud`.
//! The builds before them use the fake image-builder of `image_builder.rs`, whose packer
//! manifest gives the AMI ids, the snapshot id and the image name.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::image_builder::{SECRET, build_provider, fakes_with_publish};
use crate::support::{Project, assert_nowhere};

const REGIONS: [&str; 4] = ["eu-central-1", "eu-west-1", "us-east-1", "us-west-1"];

/// A free port on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---- aws-ami against moto -------------------------------------------------------------------

/// moto's server, killed when dropped.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `moto_server` on 127.0.0.1 with IAM auth after the first three requests (so the
/// test can create a user and its keys, and every later request must be signed correctly).
/// Panics when moto is not installed (`.ci/run` installs it).
fn start_moto() -> Option<Moto> {
    let installed = Command::new("moto_server")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        installed,
        "moto_server is not installed; .ci/run installs it with pip install 'moto[server]'"
    );
    let port = free_port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let moto = Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "moto_server did not listen within 60s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(moto)
}

/// Runs a boto3 script against moto with a bounded time; its stdout as JSON.
fn boto3(endpoint: &str, script: &str, args: &[&str]) -> Value {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(endpoint)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("the boto3 script did not finish within 120s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "boto3 script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Creates a user with keys, an AMI in us-east-1 (from an instance) and copies of it in the
/// other regions, as packer's ami_regions leaves them: private.
const SETUP: &str = r#"
import boto3, json, sys
ep = sys.argv[1]
iam = boto3.client("iam", endpoint_url=ep, region_name="us-east-1",
                   aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
iam.create_user(UserName="kiln")
iam.put_user_policy(UserName="kiln", PolicyName="all", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
key = iam.create_access_key(UserName="kiln")["AccessKey"]
ak, sk = key["AccessKeyId"], key["SecretAccessKey"]
def ec2(r):
    return boto3.client("ec2", endpoint_url=ep, region_name=r,
                        aws_access_key_id=ak, aws_secret_access_key=sk)
src = ec2("us-east-1")
base = src.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
inst = src.run_instances(ImageId=base, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
ami = src.create_image(InstanceId=inst, Name="ubuntu-2404-kube-v1.31.4")["ImageId"]
amis = {"us-east-1": ami}
for r in sys.argv[2:]:
    if r != "us-east-1":
        amis[r] = ec2(r).copy_image(SourceImageId=ami, SourceRegion="us-east-1",
                                    Name="ubuntu-2404-kube-v1.31.4")["ImageId"]
print(json.dumps({"key_id": ak, "secret": sk, "amis": amis}))
"#;

/// Per region: the AMI's launch-permission groups, whether DescribeImages calls it public, and
/// its snapshots' create-volume-permission groups.
const INSPECT: &str = r#"
import boto3, json, sys
ep, ak, sk = sys.argv[1:4]
out = {}
for pair in sys.argv[4:]:
    r, ami = pair.split("=")
    c = boto3.client("ec2", endpoint_url=ep, region_name=r,
                     aws_access_key_id=ak, aws_secret_access_key=sk)
    perms = c.describe_image_attribute(ImageId=ami, Attribute="launchPermission")["LaunchPermissions"]
    img = c.describe_images(ImageIds=[ami])["Images"][0]
    snaps = [m["Ebs"]["SnapshotId"] for m in img["BlockDeviceMappings"] if "Ebs" in m]
    vol = [g.get("Group") for s in snaps for g in
           c.describe_snapshot_attribute(SnapshotId=s, Attribute="createVolumePermission")["CreateVolumePermissions"]]
    out[r] = {"groups": [p.get("Group") for p in perms], "public": img["Public"],
              "snapshots": len(snaps), "volume_groups": vol}
print(json.dumps(out))
"#;

#[test]
fn aws_ami_makes_every_region_public_through_moto() {
    let Some(moto) = start_moto() else { return };
    let setup = boto3(&moto.endpoint, SETUP, &REGIONS);
    let key_id = setup["key_id"].as_str().unwrap().to_string();
    let secret = setup["secret"].as_str().unwrap().to_string();
    let amis: BTreeMap<String, String> = serde_json::from_value(setup["amis"].clone()).unwrap();
    let artifact = REGIONS
        .iter()
        .map(|r| format!("{r}:{}", amis[*r]))
        .collect::<Vec<_>>()
        .join(",");
    let mut f = fakes_with_publish("source=\"image-builder\"", "amazon-ebs", &artifact);
    f.project.edit("modules/aws.kdl", |t| {
        t.replace(
            "        public #true\n",
            &format!(
                "        public #true\n        endpoint \"{}\"\n",
                moto.endpoint
            ),
        )
    });
    f.project.set_env("AWS_ACCESS_KEY_ID", &key_id);
    let build = |p: &Project| {
        p.kiln(&[
            "build",
            "--provider",
            "aws",
            "--kubernetes",
            "1.31",
            "--os",
            "ubuntu-2404",
            "-j",
            "1",
        ])
    };

    // A wrong secret key: moto rejects the signature, and the step says so.
    f.project
        .set_env("AWS_SECRET_ACCESS_KEY", "not-the-secret-key");
    let out = build(&f.project);
    assert_ne!(out.code, 0, "{out:?}");
    let log = f.project.kiln(&["logs", "aws/ubuntu-2404/1.31/publish"]);
    let all = format!("{}{}{}", out.stderr, out.stdout, log.stdout);
    assert!(
        all.contains("EC2 DescribeImages in eu-central-1 failed: AuthFailure"),
        "{all}"
    );

    // The right one: every region's AMI becomes public, with its snapshots.
    f.project.set_env("AWS_SECRET_ACCESS_KEY", &secret);
    let out = build(&f.project);
    out.expect_code(0);
    assert_eq!(out.stdout.trim(), "1 built, 2 cached", "{out:?}");
    let pairs: Vec<String> = REGIONS
        .iter()
        .map(|r| format!("{r}={}", amis[*r]))
        .collect();
    let mut args = vec![key_id.as_str(), secret.as_str()];
    args.extend(pairs.iter().map(String::as_str));
    let seen = boto3(&moto.endpoint, INSPECT, &args);
    for r in REGIONS {
        assert_eq!(seen[r]["groups"], json!(["all"]), "{r}: {seen}");
        assert_eq!(seen[r]["public"], json!(true), "{r}: {seen}");
        assert!(seen[r]["snapshots"].as_u64().unwrap() >= 1, "{r}: {seen}");
        assert_eq!(seen[r]["volume_groups"], json!(["all"]), "{r}: {seen}");
    }
    let explain = f
        .project
        .kiln(&["logs", "aws/ubuntu-2404/1.31/publish"])
        .stdout;
    for r in REGIONS {
        assert!(
            explain.contains(&format!("{r}: {} is public", amis[r])),
            "{explain}"
        );
    }
    let facts = publish_facts(&f.project, "aws/ubuntu-2404/1.31/publish");
    for r in REGIONS {
        assert_eq!(facts[&format!("ami.{r}")], amis[r], "{facts:?}");
    }
    assert_eq!(facts["public"], "true");
    assert_nowhere(f.project.path(), &secret);

    // Built again with nothing changed: cached, once the refresh found every AMI still public.
    let out = build(&f.project);
    out.expect_code(0);
    assert_eq!(out.stdout.trim(), "0 built, 3 cached", "{out:?}");
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);

    // Someone made one region's AMI private and deregistered another's: the plan says so.
    let west = amis["us-west-1"].as_str();
    let eu = amis["eu-west-1"].as_str();
    boto3(
        &moto.endpoint,
        TAMPER,
        &[
            &key_id,
            &secret,
            &format!("eu-west-1={eu}"),
            &format!("us-west-1={west}"),
        ],
    );
    let plan = f.project.kiln(&[
        "plan",
        "--provider",
        "aws",
        "--os",
        "ubuntu-2404",
        "--kubernetes",
        "1.31",
    ]);
    plan.expect_code(0);
    assert!(
        plan.stdout
            .contains(&format!("· missing: {west} in us-west-1")),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains(&format!(
            "· drift: {eu} in eu-west-1 has launch permission private, expected public"
        )),
        "{}",
        plan.stdout
    );
    let images = f
        .project
        .kiln(&["images", "--json", "--provider", "aws"])
        .json();
    let entry = images
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["node"] == "aws/ubuntu-2404/1.31/publish")
        .unwrap()
        .clone();
    assert_eq!(entry["current"], false, "{entry}");
    assert_eq!(entry["refresh"], "drift", "{entry}");
    drop(moto);
}

/// Makes the AMI of the first `region=ami` pair private again and deregisters the second.
const TAMPER: &str = r#"
import boto3, sys
ep, ak, sk = sys.argv[1:4]
def ec2(r):
    return boto3.client("ec2", endpoint_url=ep, region_name=r,
                        aws_access_key_id=ak, aws_secret_access_key=sk)
r, ami = sys.argv[4].split("=")
ec2(r).modify_image_attribute(ImageId=ami, LaunchPermission={"Remove": [{"Group": "all"}]})
r, ami = sys.argv[5].split("=")
ec2(r).deregister_image(ImageId=ami)
print("{}")
"#;

/// The facts a node recorded, from the `fact NAME=VALUE` lines of its log.
fn publish_facts(p: &Project, node: &str) -> BTreeMap<String, String> {
    let out = p.kiln(&["logs", node]);
    out.expect_code(0);
    out.stdout
        .lines()
        .filter_map(|l| l.split_once("fact ").map(|(_, f)| f))
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn aws_ami_fails_clearly_when_a_region_has_no_ami() {
    let f = fakes_with_publish(
        "source=\"image-builder\"",
        "amazon-ebs",
        "eu-central-1:ami-0aaa,eu-west-1:ami-0bbb,us-east-1:ami-0ccc",
    );
    f.project.edit("modules/aws.kdl", |t| {
        // Nothing listens there; the step must fail before any request.
        t.replace(
            "        public #true\n",
            "        public #true\n        endpoint \"http://127.0.0.1:9\"\n",
        )
    });
    let out = f.project.kiln(&[
        "build",
        "--provider",
        "aws",
        "--kubernetes",
        "1.31",
        "--os",
        "ubuntu-2404",
        "-j",
        "1",
    ]);
    assert_ne!(out.code, 0, "{out:?}");
    let log = f.project.kiln(&["logs", "aws/ubuntu-2404/1.31/publish"]);
    let all = format!("{}{}", out.stderr, log.stdout);
    assert!(
        all.contains("the build recorded no AMI for region us-west-1 (its facts have ami.eu-central-1, ami.eu-west-1, ami.us-east-1); add us-west-1 to the build's ami_regions"),
        "{all}"
    );
}

// ---- hcloud-snapshot against a recording server ---------------------------------------------

#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    authorization: String,
    body: String,
}

/// A one-image Hetzner Cloud API on 127.0.0.1: `GET` and `PUT /v1/images/{id}`, answering the
/// way the API documents (an `image` object; `labels` replaced by a PUT), recording requests.
/// Stopped and joined when dropped; it stops by itself after 60 s.
struct HcloudStub {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
    /// The snapshot's labels as the server holds them.
    labels: Arc<Mutex<Value>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for HcloudStub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn image_json(id: u64, labels: &Value) -> Value {
    json!({
        "image": {
            "id": id,
            "type": "snapshot",
            "status": "available",
            "name": null,
            "description": "ubuntu-2404-kube-v1.31.4",
            "image_size": 2.3,
            "disk_size": 10,
            "created": "2025-01-10T12:00:00+00:00",
            "created_from": {"id": 1, "name": "packer-6780e1c0"},
            "bound_to": null,
            "os_flavor": "ubuntu",
            "os_version": null,
            "rapid_deploy": false,
            "protection": {"delete": false},
            "deprecated": null,
            "deleted": null,
            "labels": labels,
            "architecture": "x86"
        }
    })
}

fn handle(
    stream: TcpStream,
    id: u64,
    labels: &Mutex<Value>,
    requests: &Mutex<Vec<Request>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut len = 0usize;
    let mut authorization = String::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap_or(0),
                "authorization" => authorization = v.trim().to_string(),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body).into_owned();
    requests.lock().unwrap().push(Request {
        method: method.clone(),
        path: path.clone(),
        authorization: authorization.clone(),
        body: body.clone(),
    });
    let (status, answer) = if authorization != format!("Bearer {SECRET}") {
        (
            "401 Unauthorized",
            json!({"error": {"code": "unauthorized", "message": "unable to authenticate"}}),
        )
    } else if path != format!("/v1/images/{id}") {
        (
            "404 Not Found",
            json!({"error": {"code": "not_found", "message": "image not found"}}),
        )
    } else if method == "GET" {
        ("200 OK", image_json(id, &labels.lock().unwrap()))
    } else if method == "PUT" {
        let doc: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let mut l = labels.lock().unwrap();
        if let Some(new) = doc.get("labels") {
            *l = new.clone();
        }
        ("200 OK", image_json(id, &l))
    } else {
        (
            "405 Method Not Allowed",
            json!({"error": {"code": "method_not_allowed", "message": "no"}}),
        )
    };
    let text = answer.to_string();
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    )?;
    stream.flush()
}

fn start_hcloud(id: u64, labels: Value) -> HcloudStub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (r, s) = (requests.clone(), stop.clone());
    let labels = Arc::new(Mutex::new(labels));
    let held = labels.clone();
    let thread = std::thread::spawn(move || {
        let labels = held;
        let start = Instant::now();
        while !s.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(60) {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    let _ = handle(stream, id, &labels, &r);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    HcloudStub {
        port,
        requests,
        labels,
        stop,
        thread: Some(thread),
    }
}

#[test]
fn hcloud_snapshot_labels_through_the_api() {
    let stub = start_hcloud(123456, json!({"packer": "built"}));
    let f = fakes_with_publish("source=\"image-builder\"", "hcloud", "123456");
    point_hcloud_at(&f.project, stub.port);
    let out = build_provider(&f.project, "hcloud");
    out.expect_code(0);
    assert_eq!(out.stdout.trim(), "4 built, 0 cached", "{out:?}");
    let requests = stub.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        (requests[0].method.as_str(), requests[0].path.as_str()),
        ("GET", "/v1/images/123456")
    );
    assert_eq!(
        (requests[1].method.as_str(), requests[1].path.as_str()),
        ("PUT", "/v1/images/123456")
    );
    for r in &requests {
        assert_eq!(r.authorization, format!("Bearer {SECRET}"));
    }
    let body: Value = serde_json::from_str(&requests[1].body).unwrap();
    assert_eq!(
        body,
        json!({"labels": {"kubernetes": "1.31.4", "os": "ubuntu-2404", "packer": "built"}})
    );
    let facts = publish_facts(&f.project, "hcloud/ubuntu-2404/1.31/publish");
    assert_eq!(facts["snapshot"], "123456");
    assert_eq!(facts["label.kubernetes"], "1.31.4");
    assert_eq!(facts["label.os"], "ubuntu-2404");
    let log = f.project.kiln(&["logs", "hcloud/ubuntu-2404/1.31/publish"]);
    assert!(
        log.stdout
            .contains("labelled snapshot 123456: kubernetes=1.31.4 os=ubuntu-2404"),
        "{}",
        log.stdout
    );
    assert!(!out.stdout.contains(SECRET) && !out.stderr.contains(SECRET));
    assert!(!log.stdout.contains(SECRET));
    assert_nowhere(f.project.path(), SECRET);

    // The refresh reads the snapshot back: a label changed behind kiln's back is drift.
    stub.labels.lock().unwrap()["os"] = json!("flatcar");
    let plan = f.project.kiln(&["plan", "--provider", "hcloud"]);
    plan.expect_code(0);
    assert!(
        plan.stdout
            .contains("· drift: hcloud snapshot 123456 has label os flatcar, expected ubuntu-2404"),
        "{}",
        plan.stdout
    );
    drop(stub);
}

#[test]
fn hcloud_snapshot_reports_api_errors() {
    let stub = start_hcloud(1, json!({}));
    let f = fakes_with_publish("source=\"image-builder\"", "hcloud", "123456");
    point_hcloud_at(&f.project, stub.port);
    let out = build_provider(&f.project, "hcloud");
    assert_ne!(out.code, 0);
    let log = f.project.kiln(&["logs", "hcloud/ubuntu-2404/1.31/publish"]);
    let all = format!("{}{}", out.stderr, log.stdout);
    assert!(
        all.contains(
            "reading hcloud image 123456 failed: HTTP 404 Not Found: not_found: image not found"
        ),
        "{all}"
    );
    assert!(!all.contains(SECRET));
}

// ---- gcp-image through a fake gcloud --------------------------------------------------------

/// Records argv, the credential variables, the key file's mode and whether it holds the
/// secret (never the secret itself); prints the newest image of a family, or a policy, like
/// gcloud does.
const FAKE_GCLOUD: &str = r#"
n=$(ls "$FAKE_LOG" | grep -c '^gcloud-')
f="$FAKE_LOG/gcloud-$n.txt"
{ for a in "$@"; do echo "arg $a"; done
  echo "env CLOUDSDK_CORE_DISABLE_PROMPTS=$CLOUDSDK_CORE_DISABLE_PROMPTS"
  echo "env CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE=$CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE"
  echo "env GOOGLE_APPLICATION_CREDENTIALS=$GOOGLE_APPLICATION_CREDENTIALS"
  echo "mode $(stat -c %a "$GOOGLE_APPLICATION_CREDENTIALS")"
  if [ "$(cat "$GOOGLE_APPLICATION_CREDENTIALS")" = "$EXPECTED_KEY" ]; then echo "key ok"; else echo "key differs"; fi
} > "$f"
case "$3" in
  describe-from-family) echo "cluster-api-ubuntu-2404-v1-31-4-1736500000";;
  add-iam-policy-binding) echo '{"bindings": [{"members": ["allAuthenticatedUsers"], "role": "roles/compute.imageUser"}], "etag": "BwX=", "version": 1}';;
  get-iam-policy)
    if [ -e "$FAKE_LOG/gone" ]; then
      echo "ERROR: (gcloud.compute.images.get-iam-policy) Could not fetch resource: The resource 'projects/capi-images/global/images/$4' was not found" >&2; exit 1
    elif [ -e "$FAKE_LOG/revoked" ]; then echo '{"etag": "BwY=", "version": 1}'
    else echo '{"bindings": [{"members": ["allAuthenticatedUsers"], "role": "roles/compute.imageUser"}], "etag": "BwX=", "version": 1}'; fi;;
  *) echo "unexpected $3" >&2; exit 2;;
esac
"#;

#[test]
fn gcp_image_grants_the_role_with_gcloud() {
    let mut f = fakes_with_publish(
        "source=\"image-builder\"",
        "googlecompute",
        "not-recorded-by-the-gce-template",
    );
    let bin = f.project.path().join("fakebin");
    fs::write(bin.join("gcloud"), format!("#!/bin/sh\n{FAKE_GCLOUD}")).unwrap();
    fs::set_permissions(
        bin.join("gcloud"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    f.project.set_env("EXPECTED_KEY", SECRET);
    let out = f.project.kiln(&[
        "build",
        "--provider",
        "gcp",
        "--kubernetes",
        "1.31",
        "--os",
        "ubuntu-2404",
        "-j",
        "1",
    ]);
    out.expect_code(0);
    assert_eq!(out.stdout.trim(), "3 built, 0 cached", "{out:?}");
    let family = fs::read_to_string(f.log.join("gcloud-0.txt")).unwrap();
    let text = fs::read_to_string(f.log.join("gcloud-1.txt")).unwrap();
    assert!(!f.log.join("gcloud-2.txt").exists());
    let args_of = |t: &str| -> Vec<String> {
        t.lines()
            .filter_map(|l| l.strip_prefix("arg "))
            .map(String::from)
            .collect()
    };
    // No manifest from the gce template: the image is the newest of image-builder's family.
    assert_eq!(
        args_of(&family),
        [
            "compute",
            "images",
            "describe-from-family",
            "capi-ubuntu-2404-k8s-v1-31",
            "--project=capi-images",
            "--format=value(name)",
            "--quiet"
        ]
    );
    assert_eq!(
        args_of(&text),
        [
            "compute",
            "images",
            "add-iam-policy-binding",
            "cluster-api-ubuntu-2404-v1-31-4-1736500000",
            "--project=capi-images",
            "--member=allAuthenticatedUsers",
            "--role=roles/compute.imageUser",
            "--format=json",
            "--quiet"
        ]
    );
    for t in [&family, &text] {
        assert!(t.contains("env CLOUDSDK_CORE_DISABLE_PROMPTS=1\n"), "{t}");
        assert!(t.contains("mode 600\n"), "{t}");
        assert!(t.contains("key ok\n"), "{t}");
    }
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("env GOOGLE_APPLICATION_CREDENTIALS="))
        .unwrap();
    assert!(
        text.contains(&format!(
            "env CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE={key}\n"
        )),
        "{text}"
    );
    assert!(
        !Path::new(key).exists(),
        "the key file {key} was left behind"
    );
    let facts = publish_facts(&f.project, "gcp/ubuntu-2404/1.31/publish");
    assert_eq!(facts["image"], "cluster-api-ubuntu-2404-v1-31-4-1736500000");
    assert_eq!(facts["family"], "capi-ubuntu-2404-k8s-v1-31");
    assert_eq!(facts["member"], "allAuthenticatedUsers");
    assert_eq!(facts["role"], "roles/compute.imageUser");
    assert_eq!(facts["project"], "capi-images");
    let log = f.project.kiln(&["logs", "gcp/ubuntu-2404/1.31/publish"]);
    assert!(
        log.stdout.contains("granted allAuthenticatedUsers roles/compute.imageUser on capi-images/cluster-api-ubuntu-2404-v1-31-4-1736500000"),
        "{}",
        log.stdout
    );
    assert_nowhere(f.project.path(), SECRET);

    // The refresh reads the image's IAM policy: held, then revoked, then the image gone.
    let plan = |p: &Project| {
        let out = p.kiln(&[
            "plan",
            "--all",
            "--provider",
            "gcp",
            "--os",
            "ubuntu-2404",
            "--kubernetes",
            "1.31",
        ]);
        out.expect_code(0);
        out.stdout
    };
    let held = plan(&f.project);
    assert!(held.contains("=  gcp/ubuntu-2404/1.31/publish"), "{held}");
    fs::write(f.log.join("revoked"), "").unwrap();
    let revoked = plan(&f.project);
    assert!(
        revoked.contains("· drift: gcp image capi-images/cluster-api-ubuntu-2404-v1-31-4-1736500000 has IAM policy no roles/compute.imageUser for allAuthenticatedUsers, expected roles/compute.imageUser for allAuthenticatedUsers"),
        "{revoked}"
    );
    fs::write(f.log.join("gone"), "").unwrap();
    let gone = plan(&f.project);
    assert!(
        gone.contains(
            "· missing: gcp image capi-images/cluster-api-ubuntu-2404-v1-31-4-1736500000"
        ),
        "{gone}"
    );
    assert_nowhere(f.project.path(), SECRET);
}

/// Points the hcloud module's publish step at the stub API on `port`.
fn point_hcloud_at(p: &Project, port: u16) {
    p.edit("modules/hcloud.kdl", |t| {
        t.replace(
            "        labels \"kubernetes={kubernetes_version}\" \"os={os}\"\n",
            &format!(
                "        labels \"kubernetes={{kubernetes_version}}\" \"os={{os}}\"\n        endpoint \"http://127.0.0.1:{port}/v1\"\n"
            ),
        )
    });
}
