//! `template-patch`: reads `images/capi/<template>` from image-builder's checkout or its
//! container image, applies the provider's JSON patches in order and outputs the result as
//! `template.json`, which the cell's image-builder steps use in place of the stock template.

use super::image_builder::{copy_out_of_image, engine, param, source};
use super::{Builder, BuilderError, StepCtx, StepFuture, StepOutput, io_err};
use crate::config::BuilderKind;
use crate::config::step::{BuilderSpec, Consumes, ParamSpec, ParamType, SecretUse};
use crate::graph::{FileRole, Node};
use crate::imagebuilder::{self, Engine, Install};

/// The patched template a `template-patch` node outputs.
pub const TEMPLATE: &str = "template.json";

/// What a `template-patch` step takes: its parameters, and the provider inputs it receives.
pub static SPEC: BuilderSpec = BuilderSpec {
    kind: BuilderKind::TemplatePatch,
    params: &[ParamSpec::new(
        "template",
        ParamType::Str,
        true,
        "the packer template to patch, relative to image-builder's images/capi",
    )],
    consumes: Consumes {
        vars: false,
        patches: true,
        files: false,
        secrets: false,
        image_builder: true,
    },
    secrets: SecretUse::None,
};

pub struct TemplatePatch;

/// How a `template-patch` step fails.
#[derive(Debug, thiserror::Error)]
pub enum TemplatePatchError {
    #[error(
        "cannot read {}: {source}; source= must be a checkout of kubernetes-sigs/image-builder (the directory holding images/capi)",
        path.display()
    )]
    NoTemplate {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{file} is not JSON: {source}")]
    NotJson {
        file: String,
        source: serde_json::Error,
    },
    #[error("{file} (op={op}): {source}")]
    Patch {
        file: String,
        op: &'static str,
        source: imagebuilder::PatchError,
    },
}

impl Builder for TemplatePatch {
    fn spec(&self) -> &'static BuilderSpec {
        &SPEC
    }

    fn run<'a>(&'a self, ctx: &'a StepCtx) -> StepFuture<'a> {
        Box::pin(patch(ctx))
    }

    fn produces(&self, _node: &Node) -> Vec<String> {
        vec![TEMPLATE.into()]
    }

    fn setup_problem(&self, install: &Install) -> Option<(String, String)> {
        super::image_builder::install_problem(install)
    }

    /// In a container, the stock template is copied out of the image.
    fn programs(&self, _node: &Node, install: &Install) -> Vec<(String, String)> {
        super::image_builder::engine_program(install)
            .into_iter()
            .collect()
    }
}

/// `template-patch`: reads `images/capi/<template>` from the checkout or the image, applies the
/// provider's patches in order and outputs the result as `template.json`.
async fn patch(ctx: &StepCtx) -> Result<StepOutput, BuilderError> {
    let template = param(ctx, "template")?;
    let install = &*ctx.image_builder;
    let text = match engine(install)? {
        Engine::Make => {
            let path = source(install)?.join("images/capi").join(&template);
            std::fs::read_to_string(&path)
                .map_err(|source| TemplatePatchError::NoTemplate { path, source })?
        }
        Engine::Docker | Engine::Podman => {
            let stock = ctx.work.join("stock.json");
            copy_out_of_image(ctx, install, &[(template.clone(), stock.clone())], true).await?;
            std::fs::read_to_string(&stock).map_err(io_err("reading the template"))?
        }
    };
    let mut doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| TemplatePatchError::NotJson {
            file: template.clone(),
            source,
        })?;
    for f in ctx.node.recipe.files.iter() {
        let FileRole::Patch(op) = f.role else {
            continue;
        };
        let patch_text = std::fs::read_to_string(&f.path).map_err(io_err(&f.rel))?;
        let p: serde_json::Value =
            serde_json::from_str(&patch_text).map_err(|source| TemplatePatchError::NotJson {
                file: f.rel.clone(),
                source,
            })?;
        imagebuilder::apply_patch(&mut doc, &p, op).map_err(|source| {
            TemplatePatchError::Patch {
                file: f.rel.clone(),
                op: op.as_str(),
                source,
            }
        })?;
        ctx.spawner.log.line(&format!(
            "applied {} (op={}) to {template}",
            f.rel,
            op.as_str()
        ));
    }
    let out = ctx.work.join(TEMPLATE);
    let mut pretty = serde_json::to_string_pretty(&doc).expect("JSON serializes");
    pretty.push('\n');
    std::fs::write(&out, pretty).map_err(io_err("writing the patched template"))?;
    let mut result = StepOutput::default();
    result.outputs.push((TEMPLATE.into(), out));
    result.facts.insert("template".into(), template);
    Ok(result)
}
