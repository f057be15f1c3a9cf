//! `kiln export argo|tekton|github`: the graph as a workflow for an engine that runs each node
//! as a task of its own (`kiln run NODE`); see [`crate::export`]. This file only plans, renders
//! and writes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::Args;

use super::plan::StoreView;
use super::{Cli, CliError, Select, context};
use crate::export::{self, Engine, Options};
use crate::plan;

/// The image the tasks run in unless `--image` names another (see the README and Dockerfile).
pub const DEFAULT_IMAGE: &str = concat!("kiln:", env!("CARGO_PKG_VERSION"));

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The engine to export for.
    #[arg(value_enum)]
    pub engine: Engine,
    #[command(flatten)]
    pub select: Select,
    /// Export every node, cached ones too (by default only those the plan marks to run); an
    /// export to commit to a repository wants --all.
    #[arg(long)]
    pub all: bool,
    /// Argo: a `WorkflowTemplate` named `kiln` instead of a `Workflow`.
    #[arg(long)]
    pub template: bool,
    /// The container image of the tasks (with kiln and the builders' tools).
    #[arg(long, value_name = "REF", default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// The git repository the tasks check out (default: a parameter to give when submitting).
    #[arg(long, value_name = "URL")]
    pub repo: Option<String>,
    /// Write the export to FILE instead of stdout.
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// The config file as the tasks find it in their checkout: relative to the repository root,
/// which is the directory `kiln export` runs in.
fn repo_path(file: &Path, cwd: &Path) -> Result<String, CliError> {
    let rel = if file.is_relative() {
        file.to_path_buf()
    } else {
        let canonical = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
        let root = std::fs::canonicalize(cwd).unwrap_or_else(|_| cwd.to_path_buf());
        canonical
            .strip_prefix(&root)
            .map(Path::to_path_buf)
            .map_err(|_| {
                CliError::Usage(format!(
                    "-f {}: the config is outside this directory; run `kiln export` from the repository root, with -f relative to it",
                    file.display()
                ))
            })?
    };
    let text = rel
        .to_str()
        .ok_or_else(|| CliError::Usage(format!("-f {}: the path is not UTF-8", file.display())))?;
    Ok(text.strip_prefix("./").unwrap_or(text).to_string())
}

pub fn run(cli: &Cli, args: &ExportArgs) -> Result<(), CliError> {
    if args.template && args.engine != Engine::Argo {
        return Err(CliError::Usage(
            "--template makes an Argo WorkflowTemplate; Tekton's Pipeline and GitHub's workflow are templates already"
                .into(),
        ));
    }
    let loaded = context::load(&cli.file, &args.select, true)?;
    let dir = context::cache_dir(&loaded.config, &cli.cache_dir);
    let graph = context::lower(&loaded, Some(&dir))?;
    let todo: Option<BTreeSet<String>> = if args.all {
        None
    } else {
        let remote = super::remote::open(cli, &loaded.config)?;
        let mut view = StoreView::open(dir, &graph, remote)?;
        let none = BTreeSet::new();
        let mut plan = plan::plan(&graph, &view, &none);
        super::refresh::refresh_plan(&loaded, &graph, &mut view, &mut plan, &none)?;
        Some(
            graph
                .order()
                .into_iter()
                .filter(|ix| plan.action(*ix).will_run())
                .map(|ix| graph.node(ix).id.clone())
                .collect(),
        )
    };
    if todo.as_ref().is_some_and(BTreeSet::is_empty) {
        eprintln!(
            "No changes: every node is cached, so there is nothing to export (--all exports every node)."
        );
        return Ok(());
    }
    let cwd = std::env::current_dir()
        .map_err(|e| CliError::Failed(format!("cannot tell the current directory: {e}")))?;
    let model = export::model::build(&graph, todo.as_ref(), &cwd)
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let options = Options {
        image: args.image.clone(),
        template: args.template,
        repo: args.repo.clone(),
        config: repo_path(&cli.file, &cwd)?,
        remote_cache: super::remote::url(cli, &loaded.config),
    };
    let text = export::render(args.engine, &model, &options);
    match &args.out {
        Some(path) => {
            std::fs::write(path, &text)
                .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", path.display())))?;
            eprintln!("wrote {} tasks to {}", model.tasks.len(), path.display());
        }
        None => crate::output::write_bytes(crate::output::Stream::Stdout, text.as_bytes()),
    }
    Ok(())
}
