//! `kiln matrix`: the expanded cells, like `docker buildx bake --print`.

use std::path::Path;

use super::{CliError, Select, context};

pub fn run(file: &Path, select: &Select, json: bool) -> Result<(), CliError> {
    let loaded = context::load(file, select, false)?;
    if json {
        let text = serde_json::to_string_pretty(&loaded.cells)
            .map_err(|e| CliError::Failed(e.to_string()))?;
        println!("{text}");
        return Ok(());
    }
    let width = loaded.cells.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in loaded.cells.iter() {
        let values: Vec<String> = c.values.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("{:width$}  {}  [{}]", c.name, values.join(" "), c.matrix);
    }
    Ok(())
}
