//! `upload`: copies the image and then its `.sha256` into a bucket; skipped when the bucket
//! already holds the same digest. `file://` buckets are directories (relative ones resolve
//! against the config root); `s3://bucket/prefix` buckets are S3 or any S3-compatible store,
//! with the credentials taken from the step's secrets only.
//!
//! Nothing half-published is ever visible: the image appears under its final name only once it
//! is complete (a renamed temp file; one S3 PUT, or a multipart upload that S3 shows only when
//! completed), a stale `.sha256` is removed before the image changes, and the new `.sha256` is
//! written last, so a reader who trusts the `.sha256` never sees a pair that does not match.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest as _, Sha256};

use super::{
    Builder, BuilderError, Checked, Claim, RefreshFuture, StepCtx, StepFuture, StepOutput, io_err,
    local::IMAGE,
};
use crate::config::BuilderKind;
use crate::config::Value;
use crate::config::step::{BuilderSpec, Consumes, ParamSpec, ParamType, SecretUse};
use crate::imagebuilder::AWS_SECRETS;
use crate::plan::DirtyReason;
use crate::store::remote::client::{self, PART_SIZE};

/// The secrets an `s3://` bucket needs, and the one it may use.
pub const ACCESS_KEY: &str = "AWS_ACCESS_KEY_ID";
pub const SECRET_KEY: &str = "AWS_SECRET_ACCESS_KEY";
const SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";

/// What a `upload` step takes: its parameters, and the provider inputs it receives.
pub static SPEC: BuilderSpec = BuilderSpec {
    kind: BuilderKind::Upload,
    params: &[
        ParamSpec::new(
            "bucket",
            ParamType::Str,
            true,
            "where to upload: file:///dir or s3://bucket/prefix",
        ),
        ParamSpec::new(
            "checksum",
            ParamType::Bool,
            false,
            "also upload a .sha256 file (default #true)",
        ),
        ParamSpec::new(
            "object",
            ParamType::Str,
            false,
            "the object name (default: the cell name + .qcow2)",
        )
        .inside("the bucket"),
        ParamSpec::new(
            "endpoint",
            ParamType::Str,
            false,
            "s3:// buckets: the S3-compatible endpoint URL (default: AWS)",
        ),
        ParamSpec::new(
            "region",
            ParamType::Str,
            false,
            "s3:// buckets: the region (default \"us-east-1\")",
        ),
        ParamSpec::new(
            "path-style",
            ParamType::Bool,
            false,
            "s3:// buckets: path-style requests (default #true; #false for virtual-hosted style)",
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

pub struct Upload;

/// How an `upload` step fails beyond reading the image and writing a `file://` bucket.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("bucket `{0}` names no bucket: write s3://BUCKET or s3://BUCKET/PREFIX")]
    NoBucketName(String),
    #[error("bucket `{0}`: kiln uploads to file:///dir and s3://bucket/prefix buckets")]
    Scheme(String),
    /// What went wrong with an `s3://` bucket, secrets redacted.
    #[error("{0}")]
    S3(String),
}

impl Builder for Upload {
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
        Box::pin(refresh(claims))
    }
}

fn sha256_file(p: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The ETag S3 gives `p` as kiln uploads it: the MD5 of the bytes for one PUT, and for a multipart
/// upload the MD5 of the parts' MD5s, `-` and the number of parts. A bucket whose image has this
/// ETag holds exactly these bytes (stores that compute ETags otherwise never match: the image is
/// then uploaded again, never wrongly skipped).
fn s3_etag(p: &Path) -> std::io::Result<String> {
    use md5::Digest as _;
    let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut f = std::fs::File::open(p)?;
    let mut part = vec![0u8; PART_SIZE];
    let mut parts = Vec::new();
    loop {
        let mut n = 0;
        while n < PART_SIZE {
            match f.read(&mut part[n..])? {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 && !parts.is_empty() {
            break;
        }
        parts.push(md5::Md5::digest(&part[..n]).to_vec());
        if n < PART_SIZE {
            break;
        }
    }
    if parts.len() == 1 {
        return Ok(format!("\"{}\"", hex(&parts[0])));
    }
    let joined: Vec<u8> = parts.concat();
    Ok(format!(
        "\"{}-{}\"",
        hex(&md5::Md5::digest(&joined)),
        parts.len()
    ))
}

fn atomic_write(
    dest: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    write(tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    // Published objects are readable like any file a user copies; temp files start as 0600.
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    tmp.persist(dest).map_err(|e| e.error)?;
    Ok(())
}

/// Where a bucket is.
#[derive(Debug, PartialEq, Eq)]
enum Bucket {
    Dir(PathBuf),
    S3 { name: String, prefix: String },
}

fn parse_bucket(root: &Path, bucket: &str) -> Result<Bucket, BuilderError> {
    if let Some(p) = bucket.strip_prefix("file://") {
        return Ok(Bucket::Dir(if Path::new(p).is_absolute() {
            PathBuf::from(p)
        } else {
            root.join(p)
        }));
    }
    if let Some(rest) = bucket.strip_prefix("s3://") {
        let (name, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if name.is_empty() {
            return Err(UploadError::NoBucketName(bucket.to_string()).into());
        }
        return Ok(Bucket::S3 {
            name: name.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        });
    }
    Err(UploadError::Scheme(bucket.to_string()).into())
}

/// What one upload is about: the image, its digest and where it goes.
struct Artifact {
    image: PathBuf,
    name: String,
    sum: String,
    size: u64,
    /// `<hex>  <name>\n`, as `sha256sum` writes it.
    line: String,
    checksum: bool,
}

fn param(ctx: &StepCtx, name: &str) -> Option<String> {
    ctx.node
        .recipe
        .params
        .get(name)
        .map(Value::render)
        .filter(|v| !v.is_empty())
}

async fn run(ctx: &StepCtx) -> Result<StepOutput, BuilderError> {
    let p = &ctx.node.recipe.params;
    let bucket = param(ctx, "bucket").unwrap_or_default();
    let checksum = !matches!(p.get("checksum"), Some(Value::Bool(false)));
    let name = param(ctx, "object").unwrap_or_else(|| format!("{}.qcow2", ctx.node.cells[0]));
    super::command::confined(&name, "the object")?;
    let image = ctx.upstream_file(IMAGE)?;
    let where_to = parse_bucket(&ctx.root, &bucket)?;
    let sum = sha256_file(&image).map_err(io_err("hashing the image"))?;
    let size = std::fs::metadata(&image)
        .map_err(io_err("reading the image"))?
        .len();
    let art = Artifact {
        image,
        line: format!("{sum}  {name}\n"),
        name,
        sum,
        size,
        checksum,
    };
    let mut out = StepOutput::default();
    out.facts.insert(
        "url".into(),
        format!("{}/{}", bucket.trim_end_matches('/'), art.name),
    );
    out.facts.insert("sha256".into(), art.sum.clone());
    out.facts.insert("size".into(), art.size.to_string());
    let skipped = match &where_to {
        Bucket::Dir(dir) => {
            let skipped = to_dir(dir, &art)?;
            out.witness = Some(dir_witness(
                &BucketDir::by_path(dir),
                &art.name,
                art.checksum,
                None,
            ));
            skipped
        }
        Bucket::S3 { name, prefix } => {
            let (skipped, witness) = to_s3(ctx, name, prefix, &art)
                .await
                .map_err(|e| UploadError::S3(redact(ctx, &e)))?;
            if let Some(tag) = witness.as_deref().and_then(|w| w.split(' ').next()) {
                out.facts.insert("etag".into(), tag.to_string());
            }
            out.witness = witness;
            skipped
        }
    };
    let log = &ctx.spawner.log;
    if skipped {
        log.line(&format!(
            "{bucket} already holds {} with sha256 {}; skipped",
            art.name, art.sum
        ));
        out.facts.insert("skipped".into(), "true".into());
    } else {
        log.line(&format!(
            "uploaded {} ({} bytes, sha256 {}) to {bucket}",
            art.name, art.size, art.sum
        ));
    }
    for (k, v) in &out.facts {
        log.line(&format!("fact {k}={v}"));
    }
    Ok(out)
}

/// Publishes into a directory; returns whether the same digest was there already.
fn to_dir(dir: &Path, art: &Artifact) -> Result<bool, BuilderError> {
    let dest = dir.join(&art.name);
    let sum_path = dir.join(format!("{}.sha256", art.name));
    let old_line = std::fs::read_to_string(&sum_path).ok();
    if art.checksum
        && old_line.as_deref() == Some(art.line.as_str())
        && sha256_file(&dest).ok().as_deref() == Some(art.sum.as_str())
    {
        return Ok(true);
    }
    let err = io_err("uploading");
    if old_line.is_some() {
        // The image is about to change: its old checksum must not describe the new one.
        std::fs::remove_file(&sum_path).map_err(&err)?;
    }
    atomic_write(&dest, |f| {
        let mut src = std::fs::File::open(&art.image)?;
        std::io::copy(&mut src, f).map(|_| ())
    })
    .map_err(&err)?;
    if art.checksum {
        atomic_write(&sum_path, |f| f.write_all(art.line.as_bytes())).map_err(&err)?;
    }
    Ok(false)
}

/// Replaces every secret value in `msg` with `***`.
fn redact(ctx: &StepCtx, msg: &str) -> String {
    crate::redact::Redactor::new(ctx.secrets.iter().map(|(_, v)| v.as_str())).redact(msg)
}

fn secret<'a>(secrets: &'a BTreeMap<&str, &str>, name: &str) -> Result<&'a str, String> {
    secrets.get(name).copied().ok_or_else(|| {
        format!(
            "an s3:// bucket needs the secrets {ACCESS_KEY} and {SECRET_KEY}: declare them in the provider (`secret \"{name}\"`, optionally with env= or file=)"
        )
    })
}

/// The S3 client for one bucket: endpoint, region and addressing from the step's parameters,
/// credentials from its secrets and nowhere else (not the environment, not instance metadata).
fn s3_client(ctx: &StepCtx, bucket: &str) -> Result<Arc<dyn ObjectStore>, String> {
    let secrets: BTreeMap<&str, &str> = ctx
        .secrets
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let region = param(ctx, "region").unwrap_or_else(|| "us-east-1".into());
    let path_style = !matches!(
        ctx.node.recipe.params.get("path-style"),
        Some(Value::Bool(false))
    );
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(region)
        .with_access_key_id(secret(&secrets, ACCESS_KEY)?)
        .with_secret_access_key(secret(&secrets, SECRET_KEY)?)
        .with_virtual_hosted_style_request(!path_style)
        .with_retry(client::retry(true))
        .with_client_options(client::options(true));
    if let Some(token) = secrets.get(SESSION_TOKEN) {
        b = b.with_token(*token);
    }
    // Each part carries a checksum the server checks, as the remote cache's uploads do (and as
    // the standard AWS_REQUEST_CHECKSUM_CALCULATION=when_required turns off).
    if let Some(checksum) = client::s3_checksum(&client::env_var) {
        b = b.with_checksum_algorithm(checksum);
    }
    if let Some(endpoint) = param(ctx, "endpoint") {
        b = b
            .with_allow_http(endpoint.starts_with("http://"))
            .with_endpoint(endpoint);
    }
    b.build()
        .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
        .map_err(|e| format!("bucket s3://{bucket}: {e}"))
}

fn describe(bucket: &str, what: &str, e: object_store::Error) -> String {
    match e {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => {
            format!(
                "s3://{bucket} refused to {what}: the credentials ({ACCESS_KEY}, {SECRET_KEY}) are wrong or lack permission ({e})"
            )
        }
        e => format!("s3://{bucket}: cannot {what}: {e}"),
    }
}

fn object_key(prefix: &str, name: &str) -> ObjectPath {
    if prefix.is_empty() {
        ObjectPath::from(name)
    } else {
        ObjectPath::from(format!("{prefix}/{name}"))
    }
}

/// The evidence an S3 upload leaves: the ETags of the image and of its `.sha256`.
fn s3_witness(image: Option<String>, sum: Option<String>) -> Option<String> {
    Some(format!("{} {}", image?, sum.unwrap_or_else(|| "-".into())))
}

/// Publishes into an S3 bucket; returns whether the same digest was there already, and the
/// witness of what is there now.
async fn to_s3(
    ctx: &StepCtx,
    bucket: &str,
    prefix: &str,
    art: &Artifact,
) -> Result<(bool, Option<String>), String> {
    let store = s3_client(ctx, bucket)?;
    let image_key = object_key(prefix, &art.name);
    let sum_key = object_key(prefix, &format!("{}.sha256", art.name));
    let (old_line, old_tag) = match store.get(&sum_key).await {
        Ok(r) => {
            let tag = r.meta.e_tag.clone();
            let bytes = r
                .bytes()
                .await
                .map_err(|e| describe(bucket, &format!("read {sum_key}"), e))?;
            (Some(bytes), tag)
        }
        Err(object_store::Error::NotFound { .. }) => (None, None),
        Err(e) => return Err(describe(bucket, &format!("read {sum_key}"), e)),
    };
    if art.checksum && old_line.as_deref() == Some(art.line.as_bytes()) {
        let expected = s3_etag(&art.image).map_err(|e| format!("reading the image: {e}"))?;
        match store.head(&image_key).await {
            Ok(meta) if meta.size == art.size && meta.e_tag.as_deref() == Some(&expected) => {
                return Ok((true, s3_witness(meta.e_tag, old_tag)));
            }
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(describe(bucket, &format!("inspect {image_key}"), e)),
        }
    }
    if old_line.is_some() {
        // The image is about to change: its old checksum must not describe the new one.
        store
            .delete(&sum_key)
            .await
            .map_err(|e| describe(bucket, &format!("remove the stale {sum_key}"), e))?;
    }
    let upload = format!("upload {image_key}");
    let done = client::send_file(&*store, &image_key, &art.image, art.size, false)
        .await
        .map_err(|e| describe_send(bucket, &upload, e))?;
    if art.size > PART_SIZE as u64 {
        ctx.spawner.log.line(&format!(
            "{image_key}: {} parts of up to {} MiB",
            art.size.div_ceil(PART_SIZE as u64),
            PART_SIZE >> 20
        ));
    }
    let image_tag = done.e_tag;
    let mut sum_tag = None;
    if art.checksum {
        sum_tag = store
            .put(&sum_key, PutPayload::from(art.line.clone().into_bytes()))
            .await
            .map_err(|e| describe(bucket, &format!("upload {sum_key}"), e))?
            .e_tag;
    }
    Ok((false, s3_witness(image_tag, sum_tag)))
}

fn describe_send(bucket: &str, what: &str, e: client::SendError) -> String {
    match e {
        client::SendError::Read(e) => format!("reading the image: {e}"),
        client::SendError::Store(e) => describe(bucket, what, e),
    }
}

// ---------------------------------------------------------------------------------------------
// Refresh: is the image still in the bucket as the cached result claims?
// ---------------------------------------------------------------------------------------------

/// What one upload result claims: where, and which bytes.
struct Claimed {
    bucket: Bucket,
    /// The bucket URL as written in the config (for messages).
    url: String,
    name: String,
    checksum: bool,
    sha256: String,
    size: u64,
}

fn claimed(c: &Claim) -> Result<Claimed, String> {
    let ctx = &c.ctx;
    let url = param(ctx, "bucket").unwrap_or_default();
    let bucket = parse_bucket(&ctx.root, &url).map_err(|e| e.to_string())?;
    let fact = |k: &str| {
        c.facts
            .get(k)
            .cloned()
            .ok_or_else(|| format!("its cached result records no `{k}`"))
    };
    let size = fact("size")?
        .parse()
        .map_err(|_| "its cached result records no valid `size`".to_string())?;
    Ok(Claimed {
        bucket,
        name: param(ctx, "object").unwrap_or_else(|| format!("{}.qcow2", ctx.node.cells[0])),
        checksum: !matches!(
            ctx.node.recipe.params.get("checksum"),
            Some(Value::Bool(false))
        ),
        sha256: fact("sha256")?,
        size,
        url: url.trim_end_matches('/').to_string(),
    })
}

impl Claimed {
    fn target(&self, name: &str) -> String {
        format!("{}/{name}", self.url)
    }

    fn sum_name(&self) -> String {
        format!("{}.sha256", self.name)
    }

    fn drift(
        &self,
        name: &str,
        what: &str,
        found: impl Into<String>,
        expected: impl Into<String>,
    ) -> DirtyReason {
        DirtyReason::PublishedDrift {
            target: self.target(name),
            what: what.into(),
            found: found.into(),
            expected: expected.into(),
        }
    }

    fn missing(&self, name: &str) -> DirtyReason {
        DirtyReason::PublishedMissing {
            target: self.target(name),
        }
    }

    /// The reason, if any, why a `.sha256` with this content does not back the claim.
    fn check_line(&self, line: &[u8]) -> Option<DirtyReason> {
        let expected = format!("{}  {}\n", self.sha256, self.name);
        if line == expected.as_bytes() {
            return None;
        }
        let text = String::from_utf8_lossy(line);
        let found = text
            .split_whitespace()
            .next()
            .unwrap_or("nothing")
            .to_string();
        Some(self.drift(&self.sum_name(), "sha256", found, &self.sha256))
    }
}

async fn refresh(claims: &[&Claim<'_>]) -> Vec<Checked> {
    let mut verdicts: Vec<Option<Checked>> = vec![None; claims.len()];
    // S3 claims by bucket, prefix and client settings: one LIST answers them all.
    type Group = (String, String, Vec<Option<String>>);
    let mut groups: BTreeMap<Group, Vec<(usize, Claimed)>> = BTreeMap::new();
    // `file://` claims with the index of their bucket directory, each opened once (its path
    // compared as bytes).
    let mut dirs = Vec::new();
    let mut opened: Vec<BucketDir> = Vec::new();
    let mut index: rustc_hash::FxHashMap<std::ffi::OsString, usize> = Default::default();
    use rayon::prelude::*;
    // Reading a claim's parameters and facts is pure work: on every core.
    let found: Vec<Result<Claimed, String>> = claims.par_iter().map(|c| claimed(c)).collect();
    for (i, (c, found)) in claims.iter().zip(found).enumerate() {
        match found {
            Err(e) => verdicts[i] = Some(Checked::Unknown(e)),
            Ok(cl) => match &cl.bucket {
                Bucket::Dir(dir) => {
                    let at = match index.get(dir.as_os_str()) {
                        Some(&at) => at,
                        None => {
                            opened.push(BucketDir::open(dir));
                            index.insert(dir.as_os_str().to_owned(), opened.len() - 1);
                            opened.len() - 1
                        }
                    };
                    dirs.push((i, at, c.witness, cl));
                }
                Bucket::S3 { name, prefix } => {
                    groups
                        .entry((name.clone(), prefix.clone(), client_settings(&c.ctx)))
                        .or_default()
                        .push((i, cl));
                }
            },
        }
    }
    // `file://` claims are a few stats each: checked on every core.
    let found: Vec<(usize, Checked)> = dirs
        .par_iter()
        .map(|(i, at, witness, cl)| (*i, refresh_dir(&opened[*at], cl, *witness)))
        .collect();
    for (i, v) in found {
        verdicts[i] = Some(v);
    }
    for ((bucket, prefix, _), members) in groups {
        let first = claims[members[0].0];
        let results = refresh_s3(first, &bucket, &prefix, &members, claims).await;
        for ((i, _), v) in members.iter().zip(results) {
            verdicts[*i] = Some(v);
        }
    }
    verdicts.into_iter().flatten().collect()
}

/// What makes two S3 claims answerable by one client: endpoint, region, addressing and
/// credentials (compared, never printed).
fn client_settings(ctx: &StepCtx) -> Vec<Option<String>> {
    let mut v = vec![
        param(ctx, "endpoint"),
        param(ctx, "region"),
        param(ctx, "path-style"),
    ];
    for name in [ACCESS_KEY, SECRET_KEY, SESSION_TOKEN] {
        v.push(
            ctx.secrets
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| crate::hash::Digest::of_bytes(v.as_bytes()).to_hex()),
        );
    }
    v
}

/// What a witness records of one file: `ino:size:mtime.nsec:ctime.nsec`. The ctime changes on
/// every write, rename onto it or `touch`, and cannot be set back.
struct Stamp {
    regular: bool,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            regular: m.is_file(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    /// Appends the stamp to a witness. A refresh formats one per claimed file, thousands per
    /// plan: numbers are written without `format!`.
    fn push(&self, out: &mut String) {
        let mut b = itoa::Buffer::new();
        out.push_str(b.format(self.ino));
        out.push(':');
        out.push_str(b.format(self.size));
        out.push(':');
        out.push_str(b.format(self.mtime.0));
        out.push('.');
        out.push_str(b.format(self.mtime.1));
        out.push(':');
        out.push_str(b.format(self.ctime.0));
        out.push('.');
        out.push_str(b.format(self.ctime.1));
    }
}

/// A `file://` bucket's directory, opened once for all the claims a refresh checks in it, so
/// that each stat looks up one name instead of walking the whole path again.
struct BucketDir {
    path: PathBuf,
    fd: Option<rustix::fd::OwnedFd>,
}

impl BucketDir {
    fn open(path: &Path) -> BucketDir {
        use rustix::fs::{Mode, OFlags};
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        BucketDir {
            path: path.to_path_buf(),
            fd: rustix::fs::open(path, flags, Mode::empty()).ok(),
        }
    }

    /// Without a descriptor: every stat goes by the whole path.
    fn by_path(path: &Path) -> BucketDir {
        BucketDir {
            path: path.to_path_buf(),
            fd: None,
        }
    }

    /// The stamp of `name` in the directory, not following a symlink.
    fn stat(&self, name: &str) -> std::io::Result<Stamp> {
        let Some(fd) = &self.fd else {
            return std::fs::symlink_metadata(self.path.join(name)).map(|m| Stamp::of(&m));
        };
        let st = rustix::fs::statat(fd, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)?;
        let kind = rustix::fs::FileType::from_raw_mode(st.st_mode as _);
        Ok(Stamp {
            regular: kind == rustix::fs::FileType::RegularFile,
            ino: st.st_ino as u64,
            size: st.st_size as u64,
            mtime: (st.st_mtime as i64, st.st_mtime_nsec as i64),
            ctime: (st.st_ctime as i64, st.st_ctime_nsec as i64),
        })
    }

    /// Appends the stamp of `name`, or `-` when there is none.
    fn push_stat(&self, out: &mut String, name: &str) {
        match self.stat(name) {
            Ok(s) => s.push(out),
            Err(_) => out.push('-'),
        }
    }
}

/// The evidence a `file://` upload leaves: the stat of the image (`image`, when the caller has
/// it already) and of its `.sha256`, as `IMAGE SUM` (`-` for a file there is none of).
fn dir_witness(dir: &BucketDir, name: &str, checksum: bool, image: Option<&Stamp>) -> String {
    let mut out = String::with_capacity(112);
    match image {
        Some(s) => s.push(&mut out),
        None => dir.push_stat(&mut out, name),
    }
    out.push(' ');
    if checksum {
        let mut sum = String::with_capacity(name.len() + 7);
        sum.push_str(name);
        sum.push_str(".sha256");
        dir.push_stat(&mut out, &sum);
    } else {
        out.push('-');
    }
    out
}

/// A `file://` claim: a stat of the image and its `.sha256` against the witness; only when one
/// changed is the `.sha256` read (and the image hashed again when the image changed).
fn refresh_dir(bucket: &BucketDir, cl: &Claimed, witness: Option<&str>) -> Checked {
    let dir = &bucket.path;
    let image = dir.join(&cl.name);
    let meta = match bucket.stat(&cl.name) {
        Ok(m) if m.regular => m,
        Ok(_) => return Checked::Drift(vec![cl.drift(&cl.name, "type", "not a file", "a file")]),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Checked::Drift(vec![cl.missing(&cl.name)]);
        }
        Err(e) => return Checked::Unknown(format!("cannot inspect {}: {e}", image.display())),
    };
    if meta.size != cl.size {
        return Checked::Drift(vec![cl.drift(
            &cl.name,
            "size",
            meta.size.to_string(),
            cl.size.to_string(),
        )]);
    }
    let now = dir_witness(bucket, &cl.name, cl.checksum, Some(&meta));
    if witness == Some(now.as_str()) {
        return Checked::Held { witness: Some(now) };
    }
    let (image_was, _) = witness.and_then(|w| w.split_once(' ')).unwrap_or(("", ""));
    let (image_now, _) = now.split_once(' ').unwrap_or(("", ""));
    let mut reasons = Vec::new();
    if cl.checksum {
        match std::fs::read(dir.join(cl.sum_name())) {
            Ok(line) => reasons.extend(cl.check_line(&line)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                reasons.push(cl.missing(&cl.sum_name()))
            }
            Err(e) => {
                return Checked::Unknown(format!("cannot read {}.sha256: {e}", image.display()));
            }
        }
    }
    if image_was != image_now {
        match sha256_file(&image) {
            Ok(sum) if sum == cl.sha256 => {}
            Ok(sum) => reasons.push(cl.drift(&cl.name, "sha256", sum, &cl.sha256)),
            Err(e) => return Checked::Unknown(format!("cannot read {}: {e}", image.display())),
        }
    }
    if reasons.is_empty() {
        Checked::Held { witness: Some(now) }
    } else {
        Checked::Drift(reasons)
    }
}

/// S3 claims under one bucket and prefix: one LIST; a `.sha256` is fetched only when its ETag is
/// not the one the witness recorded.
async fn refresh_s3(
    first: &Claim<'_>,
    bucket: &str,
    prefix: &str,
    members: &[(usize, Claimed)],
    claims: &[&Claim<'_>],
) -> Vec<Checked> {
    let all_unknown = |why: String| vec![Checked::Unknown(redact(&first.ctx, &why)); members.len()];
    let store = match s3_client(&first.ctx, bucket) {
        Ok(s) => s,
        Err(e) => return all_unknown(e),
    };
    use futures_util::TryStreamExt;
    let dir = (!prefix.is_empty()).then(|| ObjectPath::from(prefix));
    let listed: Vec<object_store::ObjectMeta> = match store.list(dir.as_ref()).try_collect().await {
        Ok(l) => l,
        Err(e) => return all_unknown(describe(bucket, "list the bucket", e)),
    };
    let objects: BTreeMap<String, &object_store::ObjectMeta> =
        listed.iter().map(|m| (m.location.to_string(), m)).collect();
    let mut out = Vec::new();
    for (i, cl) in members {
        let witness = claims[*i].witness;
        let (tag_was, sum_tag_was) = witness.and_then(|w| w.split_once(' ')).unwrap_or(("", ""));
        let image = objects.get(object_key(prefix, &cl.name).as_ref());
        let Some(image) = image else {
            out.push(Checked::Drift(vec![cl.missing(&cl.name)]));
            continue;
        };
        if image.size != cl.size {
            out.push(Checked::Drift(vec![cl.drift(
                &cl.name,
                "size",
                image.size.to_string(),
                cl.size.to_string(),
            )]));
            continue;
        }
        let tag = image.e_tag.clone().unwrap_or_default();
        let mut reasons = Vec::new();
        // The ETag the publish saw (a fact, so it holds on any machine), else the witness.
        let expected_tag = claims[*i]
            .facts
            .get("etag")
            .map(String::as_str)
            .or(witness.map(|_| tag_was));
        if let Some(expected) = expected_tag
            && tag != expected
        {
            reasons.push(cl.drift(&cl.name, "ETag", &tag, expected));
        }
        let mut sum_tag = "-".to_string();
        if cl.checksum {
            let key = object_key(prefix, &cl.sum_name());
            match objects.get(key.as_ref()) {
                None => reasons.push(cl.missing(&cl.sum_name())),
                Some(m) => {
                    sum_tag = m.e_tag.clone().unwrap_or_default();
                    if witness.is_none() || sum_tag != sum_tag_was {
                        match store.get(&key).await {
                            Ok(r) => match r.bytes().await {
                                Ok(line) => reasons.extend(cl.check_line(&line)),
                                Err(e) => {
                                    out.push(Checked::Unknown(redact(
                                        &first.ctx,
                                        &describe(bucket, &format!("read {key}"), e),
                                    )));
                                    continue;
                                }
                            },
                            Err(object_store::Error::NotFound { .. }) => {
                                reasons.push(cl.missing(&cl.sum_name()))
                            }
                            Err(e) => {
                                out.push(Checked::Unknown(redact(
                                    &first.ctx,
                                    &describe(bucket, &format!("read {key}"), e),
                                )));
                                continue;
                            }
                        }
                    }
                }
            }
        }
        out.push(if reasons.is_empty() {
            Checked::Held {
                witness: Some(format!("{tag} {sum_tag}")),
            }
        } else {
            Checked::Drift(reasons)
        });
    }
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_dir_witness_is_the_stat_of_the_image_and_its_sum() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x.qcow2"), "image").unwrap();
        let m = std::fs::metadata(d.path().join("x.qcow2")).unwrap();
        let stat = format!(
            "{}:{}:{}.{}:{}.{}",
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        );
        // By path (as a publish writes it) and through the opened directory (as a refresh
        // checks it): the same witness.
        let (by_path, opened) = (BucketDir::by_path(d.path()), BucketDir::open(d.path()));
        assert!(opened.fd.is_some());
        for dir in [&by_path, &opened] {
            assert_eq!(
                dir_witness(dir, "x.qcow2", false, None),
                format!("{stat} -")
            );
            assert_eq!(
                dir_witness(dir, "x.qcow2", true, Some(&Stamp::of(&m))),
                format!("{stat} -")
            );
        }
        std::fs::write(d.path().join("x.qcow2.sha256"), "sum").unwrap();
        let s = std::fs::metadata(d.path().join("x.qcow2.sha256")).unwrap();
        let sum = format!(
            "{}:{}:{}.{}:{}.{}",
            s.ino(),
            s.size(),
            s.mtime(),
            s.mtime_nsec(),
            s.ctime(),
            s.ctime_nsec()
        );
        for dir in [&by_path, &opened] {
            assert_eq!(
                dir_witness(dir, "x.qcow2", true, None),
                format!("{stat} {sum}")
            );
        }
        assert!(opened.stat("x.qcow2").unwrap().regular);
        std::os::unix::fs::symlink("x.qcow2", d.path().join("link")).unwrap();
        assert!(
            !opened.stat("link").unwrap().regular,
            "a symlink is not followed"
        );
    }

    use super::*;

    #[test]
    fn buckets() {
        let root = Path::new("/cfg");
        assert_eq!(
            parse_bucket(root, "file://images").unwrap(),
            Bucket::Dir("/cfg/images".into())
        );
        assert_eq!(
            parse_bucket(root, "file:///srv/images").unwrap(),
            Bucket::Dir("/srv/images".into())
        );
        assert_eq!(
            parse_bucket(root, "s3://capo-images").unwrap(),
            Bucket::S3 {
                name: "capo-images".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            parse_bucket(root, "s3://capo-images/kiln/v1/").unwrap(),
            Bucket::S3 {
                name: "capo-images".into(),
                prefix: "kiln/v1".into()
            }
        );
        assert!(parse_bucket(root, "s3:///x").is_err());
        assert!(parse_bucket(root, "gs://x").is_err());
    }
}
