//! `command`: any argv, run in a work directory holding the shipped files. Variables and
//! secrets arrive as environment variables; declared outputs are collected.

use super::{StepCtx, StepOutput, copy_into, io_err};
use crate::config::Value;
use crate::exec::process::StepError;
use crate::graph::FileRole;

pub async fn run(ctx: &StepCtx) -> Result<StepOutput, StepError> {
    let p = &ctx.node.recipe.params;
    let argv = p.get("argv").map(Value::as_list).unwrap_or_default();
    for f in ctx.node.recipe.files.iter() {
        if let FileRole::Ship { to } = &f.role {
            copy_into(&f.path, &ctx.work.join(to)).map_err(io_err("copying shipped files"))?;
        }
    }
    // Upstream outputs appear read-only under upstream/<step>/<name>.
    for (step, r) in &ctx.upstream {
        for o in &r.outputs {
            if let Ok(Some(blob)) = ctx.store.blob_path(&o.digest) {
                let link = ctx.work.join("upstream").join(step.as_str()).join(&o.name);
                std::fs::create_dir_all(link.parent().expect("has parent"))
                    .map_err(io_err("linking upstream outputs"))?;
                std::os::unix::fs::symlink(blob, &link)
                    .map_err(io_err("linking upstream outputs"))?;
            }
        }
    }
    let mut env: Vec<(String, String)> = ctx
        .node
        .recipe
        .vars
        .iter()
        .map(|(k, v)| (k.clone(), v.render()))
        .collect();
    env.push(("KILN_NODE".into(), ctx.node.id.clone()));
    env.push(("KILN_ATTEMPT".into(), ctx.attempt.to_string()));
    if ctx.is_retry() {
        for pair in p.get("debug-env").map(Value::as_list).unwrap_or_default() {
            if let Some((k, v)) = pair.split_once('=') {
                env.push((k.to_string(), v.to_string()));
            }
        }
    }
    env.extend(ctx.secrets.iter().cloned());
    ctx.spawner.run(&argv, &env, &ctx.work).await?;
    let mut out = StepOutput::default();
    for name in p.get("outputs").map(Value::as_list).unwrap_or_default() {
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
