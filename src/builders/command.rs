//! `command`: any argv, run in a work directory holding the shipped files. Variables and
//! secrets arrive as environment variables; declared outputs are collected.

use super::StepError;
use super::{StepCtx, StepOutput, copy_into, copy_upstream, io_err};
use crate::config::Value;
use crate::graph::FileRole;

pub async fn run(ctx: &StepCtx) -> Result<StepOutput, StepError> {
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
        for pair in super::debug_settings(&ctx.node) {
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
            return Err(StepError::Failed(format!(
                "the command did not write its declared output `{name}`"
            )));
        }

        out.outputs.push((name, path));
    }
    Ok(out)
}

/// A path from the recipe that must stay inside the directory it is joined to (`kiln check`
/// refuses others; this guards a step run from a plan made elsewhere).
pub(super) fn confined(path: &str, what: &str) -> Result<(), StepError> {
    match crate::config::files::unsafe_relative(path) {
        Some(why) => Err(StepError::Failed(format!(
            "{what} `{path}` is not a path inside its directory: {why}"
        ))),
        None => Ok(()),
    }
}
