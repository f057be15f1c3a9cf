//! The runners behind builders. A step gets a [`StepCtx`] and returns its output files and
//! facts; the executor stores them. Tests swap the runner through the [`Runner`] trait.

mod aws_ami;
mod cloud;
mod command;
mod gcp_image;
mod hcloud;
pub mod image_builder;
mod local;
pub mod preflight;
mod upload;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use crate::config::{BuilderKind, StepKind};
use crate::graph::Node;
use crate::process::{ProcessError, Spawner};
use crate::store::{ActionResult, LocalStore};

/// Why a step stopped without success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepError {
    Failed(String),
    TimedOut(std::time::Duration),
    Cancelled,
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::Failed(m) => f.write_str(m),
            StepError::TimedOut(d) => {
                write!(f, "timed out after {}", humantime::format_duration(*d))
            }
            StepError::Cancelled => f.write_str("cancelled"),
        }
    }
}

impl From<ProcessError> for StepError {
    fn from(e: ProcessError) -> StepError {
        match e {
            ProcessError::TimedOut(d) => StepError::TimedOut(d),
            ProcessError::Cancelled => StepError::Cancelled,
            e => StepError::Failed(e.to_string()),
        }
    }
}

/// Everything a step may use while it runs.
pub struct StepCtx {
    pub node: Node,
    /// An empty directory for this attempt, emptied afterwards (after the outputs are stored)
    /// and reused by later attempts of any node.
    pub work: PathBuf,
    /// The config root: relative bucket paths resolve against it.
    pub root: PathBuf,
    /// Where image-builder is: a checkout, a container image, and the engine to run it with.
    pub image_builder: Arc<crate::imagebuilder::Install>,
    /// Results of every upstream node, nearest first.
    pub upstream: Vec<(StepKind, ActionResult)>,
    pub store: Arc<LocalStore>,
    /// Secret values by the name the step sees. Never logged or stored.
    pub secrets: Vec<(String, String)>,
    /// 1 for the first run; retries run with the step's debug settings.
    pub attempt: u32,
    pub spawner: Spawner,
}

impl StepCtx {
    /// Whether this attempt runs with the step's debug settings (see [`debug_on`]).
    pub fn debug(&self) -> bool {
        debug_on(&self.node, self.attempt)
    }

    /// The stored file of an upstream output, by output name, verified: the blob itself, for
    /// kiln to read in process. A path handed to a spawned process comes from
    /// [`StepCtx::upstream_copy`] instead.
    pub fn upstream_file(&self, name: &str) -> Result<PathBuf, StepError> {
        for (_, r) in &self.upstream {
            if let Some(o) = r.outputs.iter().find(|o| o.name == name) {
                return match self.store.blob_path(&o.digest) {
                    Ok(Some(p)) => Ok(p),
                    _ => Err(StepError::Failed(format!(
                        "the output `{name}` of {} is missing from the cache; run `kiln cache verify --repair` and build again",
                        r.id
                    ))),
                };
            }
        }
        Err(StepError::Failed(format!(
            "no upstream step produced `{name}`"
        )))
    }

    /// The step's own copy of an upstream output, by output name, under `upstream/<name>` of the
    /// work directory: for a path given to a spawned process, which could otherwise write to
    /// the blob.
    pub fn upstream_copy(&self, name: &str) -> Result<PathBuf, StepError> {
        for (_, r) in &self.upstream {
            if let Some(o) = r.outputs.iter().find(|o| o.name == name) {
                let dest = self.work.join("upstream").join(name);
                copy_upstream(self, r, o, &dest)?;
                return Ok(dest);
            }
        }
        Err(StepError::Failed(format!(
            "no upstream step produced `{name}`"
        )))
    }
}

/// Gives the step its own copy (a reflink where the file system has them) of the output `o` of
/// the upstream result `r` at `dest`, so nothing the step does reaches the stored blob. A blob
/// that is missing or damaged fails the step, naming the node and the output.
pub fn copy_upstream(
    ctx: &StepCtx,
    r: &ActionResult,
    o: &crate::store::Output,
    dest: &std::path::Path,
) -> Result<(), StepError> {
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("copying upstream outputs"))?;
    }
    match ctx.store.copy_blob_to(&o.digest, dest) {
        Ok(true) => Ok(()),
        Ok(false) => Err(StepError::Failed(format!(
            "the output `{}` of {} ({}) is missing from the cache or damaged; run `kiln cache verify --repair` and build again",
            o.name,
            r.id,
            o.digest.short()
        ))),
        Err(e) => Err(StepError::Failed(format!(
            "copying the output `{}` of {}: {e}",
            o.name, r.id
        ))),
    }
}

#[derive(Debug, Default)]
pub struct StepOutput {
    /// Output name → file written by the step (stored in the content store afterwards).
    pub outputs: Vec<(String, PathBuf)>,
    pub facts: BTreeMap<String, String>,
    /// For a publish step: evidence of what it left in the world (see [`Checked::Held`]).
    pub witness: Option<String>,
}

/// A cached publish result to check against the world before it is trusted.
pub struct Claim {
    /// The node as it would run (parameters, secrets), with an empty work directory.
    pub ctx: StepCtx,
    /// The facts of the result to check: the claim.
    pub facts: BTreeMap<String, String>,
    /// What the last refresh (or the publish) left as evidence, if it applies to this claim.
    pub witness: Option<String>,
}

/// What a refresh found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// Everything claimed is there as claimed. The witness lets the next refresh confirm an
    /// unchanged target cheaply (e.g. the stat of a `file://` object).
    Held { witness: Option<String> },
    /// Something claimed is missing or different: reasons to publish again.
    Drift(Vec<crate::plan::DirtyReason>),
    /// The check could not run (no credentials, the network is down, ...).
    Unknown(String),
}

pub type StepFuture<'a> = Pin<Box<dyn Future<Output = Result<StepOutput, StepError>> + Send + 'a>>;
pub type RefreshFuture<'a> = Pin<Box<dyn Future<Output = Vec<Checked>> + Send + 'a>>;

pub trait Runner: Send + Sync {
    fn run<'a>(&'a self, ctx: &'a StepCtx) -> StepFuture<'a>;

    /// Checks cached publish claims against their targets: one verdict per claim, in order. All
    /// come in one call so that a builder can answer many with one request (an S3 LIST).
    fn refresh<'a>(&'a self, claims: &'a [Claim]) -> RefreshFuture<'a>;
}

/// The environment a retry of the node runs with on top of its own, as `NAME=value`: a
/// `command` step's `debug-env`, `PACKER_LOG=1` for image-builder; none for the others.
pub fn debug_settings(node: &Node) -> Vec<String> {
    match node.builder {
        BuilderKind::Command => node
            .recipe
            .params
            .get("debug-env")
            .map(crate::config::Value::as_list)
            .unwrap_or_default()
            .into_iter()
            .filter(|pair| pair.contains('='))
            .collect(),
        BuilderKind::ImageBuilder => vec![image_builder::DEBUG_ENV.to_string()],
        _ => Vec::new(),
    }
}

/// Whether an attempt runs with the node's debug settings: every retry, and every attempt of a
/// node with `debug #true` (or of any node under `kiln build --debug`).
pub fn debug_on(node: &Node, attempt: u32) -> bool {
    attempt > 1 || node.policy.debug == Some(true)
}

/// Whether a builder's results are claims about something outside kiln, checked by a refresh.
pub fn makes_claims(builder: BuilderKind) -> bool {
    matches!(
        builder,
        BuilderKind::Upload
            | BuilderKind::AwsAmi
            | BuilderKind::GcpImage
            | BuilderKind::HcloudSnapshot
    )
}

/// The runners this version of kiln ships.
pub struct Builtin;

impl Runner for Builtin {
    fn run<'a>(&'a self, ctx: &'a StepCtx) -> StepFuture<'a> {
        Box::pin(async move {
            match (ctx.node.builder, ctx.node.step) {
                (BuilderKind::Command, _) => command::run(ctx).await,
                (BuilderKind::Local, StepKind::Validate) => local::validate(ctx).await,
                (BuilderKind::Local, _) => local::build(ctx).await,
                (BuilderKind::Upload, _) => upload::run(ctx).await,
                (BuilderKind::TemplatePatch, _) => image_builder::patch(ctx).await,
                (BuilderKind::ImageBuilder, _) => image_builder::run(ctx).await,
                (BuilderKind::AwsAmi, _) => aws_ami::run(ctx).await,
                (BuilderKind::GcpImage, _) => gcp_image::run(ctx).await,
                (BuilderKind::HcloudSnapshot, _) => hcloud::run(ctx).await,
            }
        })
    }

    fn refresh<'a>(&'a self, claims: &'a [Claim]) -> RefreshFuture<'a> {
        Box::pin(async move {
            let mut verdicts: Vec<Option<Checked>> = vec![None; claims.len()];
            let uploads: Vec<usize> = (0..claims.len())
                .filter(|i| claims[*i].ctx.node.builder == BuilderKind::Upload)
                .collect();
            let batch: Vec<&Claim> = uploads.iter().map(|i| &claims[*i]).collect();
            for (i, v) in uploads.iter().zip(upload::refresh(&batch).await) {
                verdicts[*i] = Some(v);
            }
            for (i, c) in claims.iter().enumerate() {
                if verdicts[i].is_some() {
                    continue;
                }
                verdicts[i] = Some(match c.ctx.node.builder {
                    BuilderKind::AwsAmi => aws_ami::refresh(c).await,
                    BuilderKind::HcloudSnapshot => hcloud::refresh(c).await,
                    BuilderKind::GcpImage => gcp_image::refresh(c).await,
                    b => Checked::Unknown(format!("the {b} builder makes no claim to check")),
                });
            }
            verdicts.into_iter().flatten().collect()
        })
    }
}

/// Copies a shipped file or directory into `dest`.
pub fn copy_into(src: &std::path::Path, dest: &std::path::Path) -> std::io::Result<()> {
    if src.is_dir() {
        std::fs::create_dir_all(dest)?;
        for e in std::fs::read_dir(src)? {
            let e = e?;
            copy_into(&e.path(), &dest.join(e.file_name()))?;
        }
        Ok(())
    } else {
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::copy(src, dest).map(|_| ())
    }
}

fn io_err(what: &str) -> impl Fn(std::io::Error) -> StepError + '_ {
    move |e| StepError::Failed(format!("{what}: {e}"))
}
