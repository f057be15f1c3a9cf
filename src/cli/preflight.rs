//! Where image-builder is for this run (the config, `--image-builder-source` /
//! `KILN_IMAGE_BUILDER_SOURCE`, `--image-builder-image` / `KILN_IMAGE_BUILDER_IMAGE`), and the
//! preflight of `kiln build` and `kiln check --build` as diagnostics, one per problem.

use super::{Cli, CliError};
use crate::builders::preflight::{self, Problem};
use crate::config::{Config, Diag, Diags};
use crate::graph::Node;
use crate::imagebuilder::Install;

/// How many node ids a problem lists before `and N more`.
const SHOWN: usize = 3;

/// image-builder as this run finds it: the config's `tool "image-builder"`, overridden by the
/// command line, then the environment. In no key.
pub fn install(cli: &Cli, config: &Config) -> Install {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let source = cli
        .image_builder_source
        .clone()
        .or_else(|| env("KILN_IMAGE_BUILDER_SOURCE").map(Into::into));
    let image = cli
        .image_builder_image
        .clone()
        .or_else(|| env("KILN_IMAGE_BUILDER_IMAGE").map(|v| v.to_string_lossy().into_owned()));
    Install::from_config(config).with_overrides(source, image)
}

/// The preflight of `nodes`: an error with one diagnostic per problem, or nothing.
pub fn run<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    install: &Install,
) -> Result<(), CliError> {
    let path = std::env::var_os("PATH");
    let problems = preflight::check(nodes, install, path.as_deref());
    if problems.is_empty() {
        return Ok(());
    }
    Err(CliError::Config(Diags(problems.iter().map(diag).collect())))
}

fn diag(p: &Problem) -> Diag {
    let mut nodes = p
        .nodes
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if p.nodes.len() > SHOWN {
        nodes.push_str(&format!(" and {} more", p.nodes.len() - SHOWN));
    }
    Diag::error(p.code, format!("{} (needed by {nodes})", p.message))
        .help(format!("{}; nothing was started", p.help))
}
