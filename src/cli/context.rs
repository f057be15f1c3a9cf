//! What several subcommands share: load the config, expand and select cells, lower the graph.

use std::path::{Path, PathBuf};

use super::{CliError, Select};
use crate::config::{self, Config};
use crate::graph::{self, Graph};
use crate::matrix::Cell;
use crate::statcache::StatCache;

pub struct Loaded {
    pub config: Config,
    /// Every cell of every matrix: ids are computed over all of them, so they do not depend on
    /// the filters.
    pub all: Vec<Cell>,
    /// The cells the filters select.
    pub cells: Vec<Cell>,
    /// Whether no filter narrowed the cells (orphans are only meaningful then).
    pub whole: bool,
}

/// Loads and expands the config; prints its warnings. `images` checks that the cells name
/// declared providers and releases (everything but `kiln matrix` needs that).
pub fn load(file: &Path, select: &Select, images: bool) -> Result<Loaded, CliError> {
    let (config, warnings) = config::load(file).map_err(CliError::Config)?;
    let (cells, more) = config::cells::expand_all(&config).map_err(CliError::Config)?;
    if images {
        config::cells::check_images(&config, &cells).map_err(CliError::Config)?;
    }
    let mut all = warnings;
    all.0.extend(more.0);
    if !all.0.is_empty() {
        super::report::print_diags(&all);
    }
    let whole = select.matrix.is_none()
        && select.kubernetes.is_empty()
        && select.provider.is_empty()
        && select.os.is_empty()
        && select.cell.is_empty();
    let selected = filter(&config, cells.clone(), select)?;
    Ok(Loaded {
        config,
        all: cells,
        cells: selected,
        whole,
    })
}

fn filter(config: &Config, cells: Vec<Cell>, s: &Select) -> Result<Vec<Cell>, CliError> {
    if let Some(m) = &s.matrix
        && !config.matrices.iter().any(|d| &d.spec.name == m)
    {
        let names: Vec<&str> = config
            .matrices
            .iter()
            .map(|d| d.spec.name.as_str())
            .collect();
        return Err(CliError::Usage(format!(
            "--matrix {m}: no such matrix; {}",
            config::diag::did_you_mean(m, &names, "matrix")
        )));
    }
    for name in &s.cell {
        if !cells.iter().any(|c| &c.name == name) {
            let names: Vec<&str> = cells.iter().map(|c| c.name.as_str()).collect();
            return Err(CliError::Usage(format!(
                "--cell {name}: no such cell; {}",
                config::diag::did_you_mean(name, &names, "cell")
            )));
        }
    }
    let axis = |c: &Cell, key: &str, wanted: &[String]| {
        wanted.is_empty()
            || c.values
                .get(key)
                .is_some_and(|v| wanted.iter().any(|w| w == v))
    };
    let out: Vec<Cell> = cells
        .into_iter()
        .filter(|c| s.matrix.as_ref().is_none_or(|m| &c.matrix == m))
        .filter(|c| s.cell.is_empty() || s.cell.contains(&c.name))
        .filter(|c| {
            axis(c, "kubernetes", &s.kubernetes)
                && axis(c, "provider", &s.provider)
                && axis(c, "os", &s.os)
        })
        .collect();
    if out.is_empty() {
        return Err(CliError::Usage(
            "the filters select no cell; run `kiln matrix` to list them".into(),
        ));
    }
    Ok(out)
}

/// The cache directory: --cache-dir, or `cache/` beside the config.
pub fn cache_dir(config: &Config, flag: &Option<PathBuf>) -> PathBuf {
    flag.clone().unwrap_or_else(|| config.root.join("cache"))
}

/// Digests every input file (through the stat cache under `cache`) and lowers the cells.
pub fn lower(loaded: &Loaded, cache: Option<&Path>) -> Result<Graph, CliError> {
    let stat = StatCache::load(cache.map(|c| c.join("statcache")));
    let paths = graph::input_paths(&loaded.config);
    let digests = stat
        .digest_all(&paths)
        .map_err(|(p, e)| CliError::Failed(format!("cannot read {}: {e}", p.display())))?;
    // Failing to save the stat cache costs speed next time, never correctness.
    if cache.is_some_and(Path::exists) {
        let _ = stat.save();
    }
    let graph =
        graph::lower(&loaded.config, loaded.all.clone(), &digests).map_err(CliError::Config)?;
    Ok(if loaded.whole {
        graph
    } else {
        let names: std::collections::HashSet<&str> =
            loaded.cells.iter().map(|c| c.name.as_str()).collect();
        graph.select(&names)
    })
}
