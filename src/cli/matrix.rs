//! `kiln matrix`: the expanded cells, like `docker buildx bake --print`; as JSON, or as a GitHub
//! Actions matrix.

use std::path::Path;

use clap::ValueEnum;

use super::{CliError, Select, context};
use crate::matrix::Cell;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MatrixFormat {
    Text,
    Json,
    Github,
}

pub fn run(file: &Path, select: &Select, format: MatrixFormat) -> Result<(), CliError> {
    let loaded = context::load(file, select, false)?;
    match format {
        MatrixFormat::Json => {
            let text = serde_json::to_string_pretty(&loaded.cells)
                .map_err(|e| CliError::Failed(e.to_string()))?;
            println!("{text}");
        }
        MatrixFormat::Github => println!("{}", github(&loaded.cells)),
        MatrixFormat::Text => {
            let width = loaded.cells.iter().map(|c| c.name.len()).max().unwrap_or(0);
            for c in loaded.cells.iter() {
                let values: Vec<String> =
                    c.values.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("{:width$}  {}  [{}]", c.name, values.join(" "), c.matrix);
            }
        }
    }
    Ok(())
}

/// `{"include":[{"cell":…,"matrix":…,"kubernetes":…,…}]}` on one line, for
/// `echo "matrix=$(kiln matrix --format github)" >> "$GITHUB_OUTPUT"` and
/// `strategy.matrix: ${{ fromJSON(needs.plan.outputs.matrix) }}`; a job then builds its cell
/// with `kiln build --cell ${{ matrix.cell }}`.
pub fn github(cells: &[Cell]) -> String {
    let include: Vec<serde_json::Value> = cells
        .iter()
        .map(|c| {
            let mut o = serde_json::Map::new();
            o.insert("cell".into(), c.name.clone().into());
            o.insert("matrix".into(), c.matrix.clone().into());
            for (k, v) in c.values.iter() {
                o.entry(k.to_string()).or_insert_with(|| v.into());
            }
            serde_json::Value::Object(o)
        })
        .collect();
    serde_json::json!({ "include": include }).to_string()
}
