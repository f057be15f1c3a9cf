//! `command`: any argv, run in a work directory holding the shipped files. Variables and
//! secrets arrive as environment variables; declared outputs are collected.

use super::{
    Builder, BuilderError, StepCtx, StepFuture, StepOutput, copy_into, copy_upstream, io_err,
};
use crate::config::BuilderKind;
use crate::config::Value;
use crate::config::step::{BuilderSpec, Consumes, ParamSpec, ParamType, SecretUse};
use crate::graph::{FileRole, Node};
use crate::imagebuilder::Install;

/// What a `command` step takes: its parameters, and the provider inputs it receives.
pub static SPEC: BuilderSpec = BuilderSpec {
    kind: BuilderKind::Command,
    params: &[
        ParamSpec::new(
            "argv",
            ParamType::List,
            true,
            "the program and its arguments",
        ),
        ParamSpec::new(
            "outputs",
            ParamType::List,
            false,
            "files the command writes, relative to its work directory",
        )
        .inside("the work directory"),
        ParamSpec::new(
            "debug-env",
            ParamType::List,
            false,
            "NAME=VALUE pairs set on retries",
        ),
    ],
    consumes: Consumes {
        vars: true,
        patches: false,
        files: true,
        secrets: true,
        image_builder: false,
    },
    secrets: SecretUse::Every,
};

pub struct Command;

/// How a `command` step fails beyond its program's exit status.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("the command did not write its declared output `{0}`")]
    OutputMissing(String),
}

impl Builder for Command {
    fn spec(&self) -> &'static BuilderSpec {
        &SPEC
    }

    fn run<'a>(&'a self, ctx: &'a StepCtx) -> StepFuture<'a> {
        Box::pin(run(ctx))
    }

    /// The step's `debug-env` pairs.
    fn debug_env(&self, node: &Node) -> Vec<String> {
        debug_env(node)
    }

    /// Its declared `outputs`.
    fn produces(&self, node: &Node) -> Vec<String> {
        node.recipe
            .params
            .get("outputs")
            .map(Value::as_list)
            .unwrap_or_default()
    }

    /// Its program, when it is looked up on `PATH`.
    fn programs(&self, node: &Node, _install: &Install) -> Vec<(String, String)> {
        match node.recipe.params.get("argv").map(Value::as_list) {
            Some(argv) if argv.first().is_some_and(|p| !p.contains('/')) => {
                vec![(argv[0].clone(), "the command step runs it".into())]
            }
            _ => Vec::new(),
        }
    }
}

/// The `NAME=VALUE` pairs of the step's `debug-env`.
fn debug_env(node: &Node) -> Vec<String> {
    node.recipe
        .params
        .get("debug-env")
        .map(Value::as_list)
        .unwrap_or_default()
        .into_iter()
        .filter(|pair| pair.contains('='))
        .collect()
}

async fn run(ctx: &StepCtx) -> Result<StepOutput, BuilderError> {
    let p = &ctx.node.recipe.params;
    let argv = p.get("argv").map(Value::as_list).unwrap_or_default();
    for f in ctx.node.recipe.files.iter() {
        if let FileRole::Ship { to } = &f.role {
            confined(to, "a shipped file's to=")?;
            copy_into(&f.path, &ctx.work.join(to)).map_err(io_err("copying shipped files"))?;
        }
    }
    // Upstream outputs appear as the step's own read-only copies under upstream/<step>/<name>
    // (reflinks where the file system has them); a missing one fails the step.
    for (step, r) in &ctx.upstream {
        for o in &r.outputs {
            let dest = ctx.work.join("upstream").join(step.as_str()).join(&o.name);
            copy_upstream(ctx, r, o, &dest)?;
        }
    }
    let mut env: Vec<(String, String)> = ctx
        .node
        .recipe
        .vars
        .iter()
        .filter(|(k, _)| !k.starts_with(crate::imagebuilder::ENV_PREFIX))
        .map(|(k, v)| (k.clone(), v.render()))
        .collect();
    env.extend(crate::imagebuilder::plain_env(&ctx.node));
    env.push(("KILN_NODE".into(), ctx.node.id.clone()));
    env.push(("KILN_ATTEMPT".into(), ctx.attempt.to_string()));
    if ctx.debug() {
        for pair in debug_env(&ctx.node) {
            if let Some((k, v)) = pair.split_once('=') {
                env.push((k.to_string(), v.to_string()));
            }
        }
    }
    env.extend(ctx.secrets.iter().cloned());
    ctx.spawner.run(&argv, &env, &ctx.work).await?;
    let mut out = StepOutput::default();
    for name in p.get("outputs").map(Value::as_list).unwrap_or_default() {
        confined(&name, "an output")?;
        let path = ctx.work.join(&name);
        if !path.is_file() {
            return Err(CommandError::OutputMissing(name).into());
        }

        out.outputs.push((name, path));
    }
    Ok(out)
}

/// A path from the recipe that must stay inside the directory it is joined to (`kiln check`
/// refuses others; this guards a step run from a plan made elsewhere).
pub(super) fn confined(path: &str, what: &str) -> Result<(), BuilderError> {
    match crate::config::files::unsafe_relative(path) {
        Some(why) => Err(BuilderError::NotConfined {
            what: what.to_string(),
            path: path.to_string(),
            why: why.to_string(),
        }),
        None => Ok(()),
    }
}
