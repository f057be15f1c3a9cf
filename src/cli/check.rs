//! `kiln check`: load, expand and lower everything; report problems or a one-line summary.

use super::{Cli, CliError, Select, context};

pub fn run(cli: &Cli, json: bool, build: bool) -> Result<(), CliError> {
    let file = &cli.file;
    let (loaded, mut warnings) = context::load_with_warnings(file, &Select::default(), true)?;
    let graph = context::lower(&loaded, None)?;
    warnings
        .0
        .extend(crate::imagebuilder::lookups::warnings(&loaded.config, &graph).0);
    if !json && !warnings.0.is_empty() {
        super::report::print_diags(&warnings);
    }
    if build {
        let install = super::preflight::install(cli, &loaded.config);
        let nodes = graph.order().into_iter().map(|ix| graph.node(ix));
        super::preflight::run(nodes, &install)?;
    }
    let c = &loaded.config;
    if json {
        let warnings: Vec<serde_json::Value> = warnings
            .0
            .iter()
            .map(|d| super::report::diagnostic_json(d))
            .collect();
        let v = serde_json::json!({
            "file": file.display().to_string(),
            "ok": true,
            "files": c.sources.files().count(),
            "matrices": c.matrices.len(),
            "cells": loaded.cells.len(),
            "nodes": graph.len(),
            "warnings": warnings,
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "{}: ok — {} file{}, {} matri{}, {} cell{}, {} node{}",
        file.display(),
        c.sources.files().count(),
        if c.sources.files().count() == 1 {
            ""
        } else {
            "s"
        },
        c.matrices.len(),
        if c.matrices.len() == 1 { "x" } else { "ces" },
        loaded.cells.len(),
        if loaded.cells.len() == 1 { "" } else { "s" },
        graph.len(),
        if graph.len() == 1 { "" } else { "s" },
    );
    Ok(())
}
