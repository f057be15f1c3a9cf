//! `kiln check`: load, expand and lower everything; report problems or a one-line summary.

use std::path::Path;

use super::{CliError, Select, context};

pub fn run(file: &Path) -> Result<(), CliError> {
    let loaded = context::load(file, &Select::default(), true)?;
    let graph = context::lower(&loaded, None)?;
    let c = &loaded.config;
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
