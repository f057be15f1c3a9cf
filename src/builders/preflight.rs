//! Preflight: before a build starts anything, every prerequisite of every node it will run is
//! checked together — its secrets can be read, image-builder's checkout or image is set (and the
//! checkout holds `images/capi`), the programs its builder runs are on `PATH` — and each problem
//! is reported once, with the nodes it stops. No retry can fix these, so a build that has any
//! starts nothing. `kiln check --build` runs the same checks without building.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::graph::Node;
use crate::imagebuilder::Install;

/// One problem, and the nodes it stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub code: &'static str,
    pub message: String,
    pub help: String,
    pub nodes: Vec<String>,
}

/// The problems of `nodes`, in the order first met; each once. `path` is the `PATH` programs
/// are looked up in.
pub fn check<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    install: &Install,
    path: Option<&std::ffi::OsStr>,
) -> Vec<Problem> {
    let mut found: Vec<Problem> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut add = |code: &'static str, message: String, help: String, node: &str| {
        let i = *index.entry(message.clone()).or_insert_with(|| {
            found.push(Problem {
                code,
                message,
                help,
                nodes: Vec::new(),
            });
            found.len() - 1
        });
        if !found[i].nodes.iter().any(|n| n == node) {
            found[i].nodes.push(node.to_string());
        }
    };
    for node in nodes {
        for s in node.secrets.iter() {
            if let Some(why) = crate::secrets::problem(s) {
                add(
                    "kiln::preflight::secret",
                    why,
                    "export the variable (or write the file) before the build; kiln never stores secrets".into(),
                    &node.id,
                );
            }
        }
        for (program, why) in super::builder(node.builder).programs(node, install) {
            if !on_path(&program, path) {
                add(
                    "kiln::preflight::tool",
                    format!("`{program}` is not installed: {why}"),
                    "install it, or put it on PATH".into(),
                    &node.id,
                );
            }
        }
        if let Some((message, help)) = super::builder(node.builder).setup_problem(install) {
            add("kiln::preflight::image-builder", message, help, &node.id);
        }
    }
    found
}

/// Whether `program` is an executable file in a directory of `path`.
fn on_path(program: &str, path: Option<&std::ffi::OsStr>) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = path else {
        return false;
    };
    std::env::split_paths(path)
        .map(|d: PathBuf| d.join(program))
        .any(|p: PathBuf| is_executable(&p, |m| m.permissions().mode() & 0o111 != 0))
}

fn is_executable(p: &Path, exec: impl Fn(&std::fs::Metadata) -> bool) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && exec(&m))
}
