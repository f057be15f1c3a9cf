//! `kiln graph`: the DAG of step nodes as dot, mermaid or JSON.

use std::path::Path;

use super::{CliError, Select, context};
use crate::graph::GraphFormat;

pub fn run(file: &Path, select: &Select, format: GraphFormat) -> Result<(), CliError> {
    let loaded = context::load(file, select, true)?;
    let graph = context::lower(&loaded, None)?;
    print!("{}", graph.render(format));
    Ok(())
}
