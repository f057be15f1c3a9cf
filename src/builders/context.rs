//! What a step runs with ([`StepCtx`]) and what it returns ([`StepOutput`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::BuilderError;
use crate::config::StepKind;
use crate::graph::Node;
use crate::process::Spawner;
use crate::store::{ActionResult, LocalStore};

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
    pub fn upstream_file(&self, name: &str) -> Result<PathBuf, BuilderError> {
        for (_, r) in &self.upstream {
            if let Some(o) = r.outputs.iter().find(|o| o.name == name) {
                return match self.store.blob_path(&o.digest) {
                    Ok(Some(p)) => Ok(p),
                    _ => Err(BuilderError::UpstreamMissing {
                        output: name.to_string(),
                        node: r.id.clone(),
                    }),
                };
            }
        }
        Err(BuilderError::NoUpstream(name.to_string()))
    }

    /// The step's own copy of an upstream output, by output name, under `upstream/<name>` of the
    /// work directory: for a path given to a spawned process, which could otherwise write to
    /// the blob.
    pub fn upstream_copy(&self, name: &str) -> Result<PathBuf, BuilderError> {
        for (_, r) in &self.upstream {
            if let Some(o) = r.outputs.iter().find(|o| o.name == name) {
                let dest = self.work.join("upstream").join(name);
                copy_upstream(self, r, o, &dest)?;
                return Ok(dest);
            }
        }
        Err(BuilderError::NoUpstream(name.to_string()))
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
) -> Result<(), BuilderError> {
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("copying upstream outputs"))?;
    }
    match ctx.store.copy_blob_to(&o.digest, dest) {
        Ok(true) => Ok(()),
        Ok(false) => Err(BuilderError::UpstreamDamaged {
            output: o.name.clone(),
            node: r.id.clone(),
            digest: o.digest.short(),
        }),
        Err(source) => Err(BuilderError::UpstreamCopy {
            output: o.name.clone(),
            node: r.id.clone(),
            source,
        }),
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

/// Whether an attempt runs with the node's debug settings: every retry, and every attempt of a
/// node with `debug #true` (or of any node under `kiln build --debug`).
pub fn debug_on(node: &Node, attempt: u32) -> bool {
    attempt > 1 || node.policy.debug == Some(true)
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

pub(super) fn io_err(what: &str) -> impl Fn(std::io::Error) -> BuilderError + '_ {
    BuilderError::io(what)
}
