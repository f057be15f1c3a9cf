//! The builders: what a step's `builder=` names. Each is one [`Builder`] implementation in a file
//! of its own, which owns everything about it: its [`BuilderSpec`] (the parameter table and the
//! provider inputs it consumes, which config checks steps against), how a step of it runs, the
//! programs it needs, how a publish builder refreshes its claims, and what `kiln explain` shows
//! of it. [`builder`] finds the one for a [`BuilderKind`].
//!
//! The executor runs steps through the [`Runner`] trait ([`Builtin`] dispatches to the builders;
//! tests swap in a fake). Builders run programs through [`crate::process`], never through the
//! executor.

pub mod aws_ami;
mod claim;
mod cloud;
pub mod command;
mod context;
mod error;
pub mod gcp_image;
pub mod hcloud;
pub mod image_builder;
pub mod local;
pub mod preflight;
pub mod template_patch;
pub mod upload;

use std::future::Future;
use std::pin::Pin;

use crate::config::BuilderKind;
use crate::config::step::BuilderSpec;
use crate::graph::Node;
use crate::imagebuilder::Install;

pub use claim::{Checked, Claim};
use context::io_err;
pub use context::{StepCtx, StepOutput, copy_into, copy_upstream, debug_on};
pub use error::BuilderError;

pub type StepFuture<'a> =
    Pin<Box<dyn Future<Output = Result<StepOutput, BuilderError>> + Send + 'a>>;
pub type RefreshFuture<'a> = Pin<Box<dyn Future<Output = Vec<Checked>> + Send + 'a>>;

/// What `kiln explain` shows of a node beyond what every node has: lines of text, and the same
/// facts as fields of its `--json` object.
#[derive(Debug, Default)]
pub struct Explanation {
    pub text: String,
    pub json: serde_json::Map<String, serde_json::Value>,
}

/// One builder. Its futures are boxed so that builders are trait objects: [`builder`] maps each
/// [`BuilderKind`] to a `&'static dyn Builder`, and a step allocates one future per attempt.
pub trait Builder: Send + Sync {
    /// Its parameters and the provider inputs it consumes.
    fn spec(&self) -> &'static BuilderSpec;

    /// Runs one attempt of a step: its outputs and facts, which the executor stores.
    fn run<'a>(&'a self, ctx: &'a StepCtx) -> StepFuture<'a>;

    /// The outputs a successful step of it always leaves, by name: a success without one of them
    /// is a failure. (A builder may check more itself: an image-builder build checks the manifest
    /// and disk image its template writes.)
    fn produces(&self, _node: &Node) -> Vec<String> {
        Vec::new()
    }

    /// Whether its results are claims about something outside kiln, checked by [`Builder::refresh`].
    fn makes_claims(&self) -> bool {
        false
    }

    /// Checks cached claims of its steps against their targets: one verdict per claim, in order.
    /// All come in one call so that a builder can answer many with one request (an S3 LIST).
    fn refresh<'a>(&'a self, claims: &'a [&'a Claim]) -> RefreshFuture<'a> {
        let why = format!("the {} builder makes no claim to check", self.spec().kind);
        Box::pin(async move { vec![Checked::Unknown(why); claims.len()] })
    }

    /// The environment a retry of the node runs with on top of its own, as `NAME=value`.
    fn debug_env(&self, _node: &Node) -> Vec<String> {
        Vec::new()
    }

    /// The programs a node of it runs, each with how to get it: what preflight looks for on
    /// `PATH` before a build starts.
    fn programs(&self, _node: &Node, _install: &Install) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Why the builder cannot run any step with this image-builder installation, if so: the
    /// message and help preflight reports.
    fn setup_problem(&self, _install: &Install) -> Option<(String, String)> {
        None
    }

    /// What `kiln explain` shows of `node`, given its upstream nodes (nearest first).
    fn explain(
        &self,
        _node: &Node,
        _upstream: &[&Node],
        _install: &Install,
    ) -> Option<Explanation> {
        None
    }
}

/// The builder of a kind.
pub fn builder(kind: BuilderKind) -> &'static dyn Builder {
    match kind {
        BuilderKind::TemplatePatch => &template_patch::TemplatePatch,
        BuilderKind::ImageBuilder => &image_builder::ImageBuilder,
        BuilderKind::Command => &command::Command,
        BuilderKind::Local => &local::Local,
        BuilderKind::Upload => &upload::Upload,
        BuilderKind::AwsAmi => &aws_ami::AwsAmi,
        BuilderKind::GcpImage => &gcp_image::GcpImage,
        BuilderKind::HcloudSnapshot => &hcloud::HcloudSnapshot,
    }
}

/// The environment a retry of the node runs with on top of its own (see [`Builder::debug_env`]).
pub fn debug_settings(node: &Node) -> Vec<String> {
    builder(node.builder).debug_env(node)
}

/// Whether a builder's results are claims about something outside kiln, checked by a refresh.
pub fn makes_claims(kind: BuilderKind) -> bool {
    builder(kind).makes_claims()
}

/// A refresh that checks its claims one after another.
fn one_by_one<'a, F>(
    claims: &'a [&'a Claim<'a>],
    check: impl Fn(&'a Claim<'a>) -> F + Send + 'a,
) -> RefreshFuture<'a>
where
    F: Future<Output = Checked> + Send + 'a,
{
    Box::pin(async move {
        let mut verdicts = Vec::with_capacity(claims.len());
        for c in claims {
            verdicts.push(check(c).await);
        }
        verdicts
    })
}

/// Fails a step's output that lacks one of the outputs its builder promised.
fn check_produced(
    kind: BuilderKind,
    promised: &[String],
    out: &StepOutput,
) -> Result<(), BuilderError> {
    match promised
        .iter()
        .find(|name| !out.outputs.iter().any(|(n, _)| n == *name))
    {
        Some(name) => Err(BuilderError::NotProduced {
            builder: kind,
            output: name.clone(),
        }),
        None => Ok(()),
    }
}

/// What the executor runs steps and refreshes through.
pub trait Runner: Send + Sync {
    fn run<'a>(&'a self, ctx: &'a StepCtx) -> StepFuture<'a>;

    /// Checks cached publish claims against their targets: one verdict per claim, in order.
    fn refresh<'a>(&'a self, claims: &'a [Claim]) -> RefreshFuture<'a>;
}

/// The builders this version of kiln ships.
pub struct Builtin;

impl Runner for Builtin {
    /// Runs the node's builder, and fails a success that lacks an output it promised.
    fn run<'a>(&'a self, ctx: &'a StepCtx) -> StepFuture<'a> {
        let b = builder(ctx.node.builder);
        Box::pin(async move {
            let out = b.run(ctx).await?;
            check_produced(ctx.node.builder, &b.produces(&ctx.node), &out)?;
            Ok(out)
        })
    }

    /// Each builder gets all of its claims at once.
    fn refresh<'a>(&'a self, claims: &'a [Claim]) -> RefreshFuture<'a> {
        Box::pin(async move {
            let mut by_kind: std::collections::BTreeMap<BuilderKind, Vec<usize>> =
                Default::default();
            for (i, c) in claims.iter().enumerate() {
                by_kind.entry(c.ctx.node.builder).or_default().push(i);
            }
            let mut verdicts: Vec<Option<Checked>> = vec![None; claims.len()];
            for (kind, indices) in by_kind {
                let batch: Vec<&Claim> = indices.iter().map(|&i| &claims[i]).collect();
                let found = builder(kind).refresh(&batch).await;
                for (&i, v) in indices.iter().zip(found) {
                    verdicts[i] = Some(v);
                }
            }
            verdicts
                .into_iter()
                .map(|v| {
                    v.unwrap_or_else(|| Checked::Unknown("the builder gave no verdict".into()))
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_builder_and_config_reads_the_same_spec() {
        for kind in BuilderKind::ALL {
            let b = builder(kind);
            assert_eq!(b.spec().kind, kind);
            assert!(std::ptr::eq(b.spec(), kind.spec()), "{kind}");
        }
    }

    #[test]
    fn a_success_without_a_promised_output_fails() {
        let mut out = StepOutput::default();
        out.outputs.push((
            "image.qcow2".into(),
            std::path::PathBuf::from("image.qcow2"),
        ));
        let promised = ["image.qcow2".to_string()];
        assert!(check_produced(BuilderKind::Local, &promised, &out).is_ok());
        assert!(check_produced(BuilderKind::Local, &[], &StepOutput::default()).is_ok());
        let e = check_produced(BuilderKind::Local, &promised, &StepOutput::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the local step succeeded but left no `image.qcow2`; nothing is recorded"
        );
    }
}
