//! What several subcommands share: load the config, expand and select cells, lower the graph.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{CliError, Select};
use crate::config::{self, Config};
use crate::graph::{self, Graph};
use crate::hash::Digest;
use crate::matrix::Cell;
use crate::statcache::StatCache;
use crate::store::{Memo, Memos};

pub struct Loaded {
    pub config: Config,
    /// Every cell of every matrix: ids are computed over all of them, so they do not depend on
    /// the filters.
    pub all: Arc<[Cell]>,
    /// The cells the filters select (`all` itself when no filter narrows them).
    pub cells: Arc<[Cell]>,
    /// Whether no filter narrowed the cells (orphans are only meaningful then).
    pub whole: bool,
}

/// Loads and expands the config; prints its warnings. `images` checks that the cells name
/// declared providers and releases (everything but `kiln matrix` needs that).
pub fn load(file: &Path, select: &Select, images: bool) -> Result<Loaded, CliError> {
    let (loaded, warnings) = load_with_warnings(file, select, images)?;
    if !warnings.0.is_empty() {
        super::report::print_diags(&warnings);
    }
    Ok(loaded)
}

/// [`load`], returning the warnings instead of printing them.
pub fn load_with_warnings(
    file: &Path,
    select: &Select,
    images: bool,
) -> Result<(Loaded, config::Diags), CliError> {
    let (config, warnings) = config::load(file).map_err(CliError::Config)?;
    from_config(config, warnings, select, images)
}

/// [`load_with_warnings`] of a config already loaded.
pub fn from_config(
    config: Config,
    warnings: config::Diags,
    select: &Select,
    images: bool,
) -> Result<(Loaded, config::Diags), CliError> {
    let (cells, more) = config::cells::expand_all(&config).map_err(CliError::Config)?;
    if images {
        config::cells::check_images(&config, &cells).map_err(CliError::Config)?;
    }
    let mut all_warnings = warnings;
    all_warnings.0.extend(more.0);
    let whole = select.matrix.is_none()
        && select.kubernetes.is_empty()
        && select.provider.is_empty()
        && select.os.is_empty()
        && select.cell.is_empty();
    let all: Arc<[Cell]> = cells.into();
    let selected = if whole {
        all.clone()
    } else {
        filter(&config, &all, select)?.into()
    };
    Ok((
        Loaded {
            config,
            all,
            cells: selected,
            whole,
        },
        all_warnings,
    ))
}

fn filter(config: &Config, cells: &[Cell], s: &Select) -> Result<Vec<Cell>, CliError> {
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
        .iter()
        .filter(|c| s.matrix.as_ref().is_none_or(|m| &c.matrix == m))
        .filter(|c| s.cell.is_empty() || s.cell.contains(&c.name))
        .filter(|c| {
            axis(c, "kubernetes", &s.kubernetes)
                && axis(c, "provider", &s.provider)
                && axis(c, "os", &s.os)
        })
        .cloned()
        .collect();
    if out.is_empty() {
        return Err(CliError::Usage(
            "the filters select no cell; run `kiln matrix` to list them".into(),
        ));
    }
    Ok(out)
}

/// The cache directory: --cache-dir (made absolute against the working directory, since steps
/// run in directories of their own), or `cache/` beside the config.
pub fn cache_dir(config: &Config, flag: &Option<PathBuf>) -> PathBuf {
    cache_dir_at(&config.root, flag)
}

/// [`cache_dir`] of a config whose root is `root`.
fn cache_dir_at(root: &Path, flag: &Option<PathBuf>) -> PathBuf {
    match flag {
        Some(dir) => std::path::absolute(dir).unwrap_or_else(|_| dir.clone()),
        None => root.join("cache"),
    }
}

/// Digests every input file (through the stat cache under `cache`) and lowers the cells.
/// The node a command names by id; an id that names none is a usage error with the closest ids.
pub fn find_node(graph: &Graph, id: &str) -> Result<petgraph::graph::NodeIndex, CliError> {
    graph.find(id).ok_or_else(|| unknown_node(graph, id))
}

/// The usage error for an id that names no node of `graph`.
pub fn unknown_node(graph: &Graph, id: &str) -> CliError {
    let ids: Vec<&str> = graph
        .order()
        .into_iter()
        .map(|ix| graph.node(ix).id.as_str())
        .collect();
    CliError::Usage(format!(
        "no node `{id}`; {} (node ids are listed by `kiln plan`)",
        config::diag::did_you_mean(id, &ids, "node")
    ))
}

pub fn lower(loaded: &Loaded, cache: Option<&Path>) -> Result<Graph, CliError> {
    lower_keyed(loaded, cache, None).map(|(g, _)| g)
}

/// The graph snapshot of a cache, read and checked on a thread of its own while the config
/// loads: until the snapshot's key is computed the two do not depend on each other.
pub struct Prefetch {
    cache: PathBuf,
    image: std::thread::JoinHandle<Option<graph::snapshot::Image>>,
}

impl Prefetch {
    /// Starts reading the snapshot of the cache that `--cache-dir` or the config file `file`
    /// names (as [`cache_dir`] will, once the config is loaded).
    pub fn start(file: &Path, flag: &Option<PathBuf>) -> Prefetch {
        let cache = cache_dir_at(&config::root_of(file), flag);
        let memos = Memos::at(&cache);
        let image = std::thread::spawn(move || {
            graph::snapshot::read(memos.read(Memo::GraphSnapshot)?.into())
        });
        Prefetch { cache, image }
    }

    /// What was read, if it was read from `cache`: the image, or `None` when there was no
    /// intact one (then it is not read again).
    fn image(self, cache: &Path) -> Option<Option<graph::snapshot::Image>> {
        let image = self.image.join().ok().flatten();
        (self.cache == cache).then_some(image)
    }
}

/// [`lower`], and the graph's snapshot key: a digest of everything the graph was lowered from
/// (`None` when this kiln binary cannot be identified). A snapshot `prefetch` read from the same
/// cache is used instead of reading it again.
pub fn lower_keyed(
    loaded: &Loaded,
    cache: Option<&Path>,
    prefetch: Option<Prefetch>,
) -> Result<(Graph, Option<Digest>), CliError> {
    let memos = cache.map(Memos::at);
    let saved = memos.as_ref().and_then(|m| m.read(Memo::StatCache));
    let stat = StatCache::decode(saved.as_deref());
    let paths = graph::input_paths(&loaded.config);
    let digests = stat
        .digest_all(&paths)
        .map_err(|(p, e)| CliError::Failed(format!("cannot read {}: {e}", p.display())))?;
    // Failing to save the stat cache costs speed next time, never correctness.
    if let (Some(m), Some(bytes)) = (&memos, stat.encode()) {
        m.save(Memo::StatCache, &bytes);
    }
    let key = build_id().map(|b| {
        graph::snapshot::snapshot_key(
            loaded.config.digest(),
            &loaded.config.root,
            &digests,
            b.as_str(),
        )
    });
    let prefetched = cache.zip(prefetch).and_then(|(dir, p)| p.image(dir));
    let snapshot = key.zip(memos);
    let graph = lower_cached(loaded, snapshot, prefetched, &digests)?;
    let graph = if loaded.whole {
        graph
    } else {
        let names: std::collections::HashSet<&str> =
            loaded.cells.iter().map(|c| c.name.as_str()).collect();
        graph.select(&names)
    };
    Ok((graph, key))
}

/// Lowers through the graph snapshot kept in the cache ([`Memo::GraphSnapshot`], valid for one
/// key): when nothing lowering reads has changed since it was written, the graph is loaded
/// instead of lowered again.
fn lower_cached(
    loaded: &Loaded,
    snapshot: Option<(Digest, Memos)>,
    prefetched: Option<Option<graph::snapshot::Image>>,
    digests: &std::collections::HashMap<PathBuf, graph::Content>,
) -> Result<Graph, CliError> {
    if let Some((key, memos)) = &snapshot {
        let found = match prefetched {
            Some(image) => image.and_then(|i| i.into_graph(*key, loaded.all.clone())),
            None => memos
                .read(Memo::GraphSnapshot)
                .and_then(|bytes| graph::snapshot::decode(bytes.into(), *key, loaded.all.clone())),
        };
        if let Some(g) = found {
            return Ok(g);
        }
    }
    let g = graph::lower(&loaded.config, loaded.all.clone(), digests).map_err(CliError::Config)?;
    if let Some((key, memos)) = snapshot
        && let Some(bytes) = graph::snapshot::encode(&g, key)
    {
        memos.save(Memo::GraphSnapshot, &bytes);
    }
    Ok(g)
}

/// Identifies this kiln binary: its version and the size, modification time and inode of its
/// executable, so a rebuilt kiln never trusts a graph lowered by another build. `None` when the
/// executable cannot be found: then no snapshot is used.
fn build_id() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::env::current_exe().and_then(std::fs::metadata).ok()?;
    Some(format!(
        "{} {} {}.{} {}",
        env!("CARGO_PKG_VERSION"),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ino()
    ))
}
