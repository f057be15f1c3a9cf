//! A compact binary image of a lowered graph, so that an unchanged config is not lowered again:
//! like Nix's evaluation cache, the image is valid for exactly one [`snapshot_key`], a digest of
//! everything lowering reads (the config files, the input files' digests and the kiln binary).
//! Pure: bytes in, bytes out; the caller keeps the file.
//!
//! Layout: the magic line, the key (32 bytes), the blake3 of the body (32 bytes), then the body:
//! the shared tables and the node count, then every node, each a postcard value of its own, so
//! nodes are decoded one at a time straight into the graph. A truncated or garbled image, or one
//! made for another key, decodes to `None`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::{Deserialize, Serialize};

use super::Graph;
use super::lazy::Lazy;
use super::node::{
    Content, FileInput, Node, Recipe, Section, file_entries, tool_entries, var_entries,
};
use crate::config::{BuilderKind, Policy, Secret, StepKind};
use crate::hash::{Digest, KEY_ENCODING_VERSION, KeyHasher};
use crate::matrix::Cell;

const MAGIC: &[u8] = b"kiln-graph-v3\n";

/// The digest an image is valid for. `config` covers every config file read (images.kdl, its
/// imports, images.lock); `digests` every input file; `build` identifies the kiln binary, whose
/// lowering rules and embedded image-builder data the graph also depends on.
pub fn snapshot_key(
    config: Digest,
    root: &Path,
    digests: &HashMap<PathBuf, Content>,
    build: &str,
) -> Digest {
    let mut h = KeyHasher::new("graph-snapshot");
    h.str(KEY_ENCODING_VERSION)
        .str(build)
        .digest(&config)
        .str(&root.to_string_lossy());
    let mut inputs: Vec<(&PathBuf, &Content)> = digests.iter().collect();
    inputs.sort_by(|a, b| a.0.cmp(b.0));
    h.begin("inputs", inputs.len());
    for (path, content) in inputs {
        h.str(&path.to_string_lossy());
        match content {
            Content::File(d) => {
                h.str("file").digest(d);
            }
            Content::Dir(entries) => {
                h.begin("dir", entries.len());
                for e in entries {
                    h.str(&e.rel)
                        .digest(&e.digest)
                        .str(if e.exec { "x" } else { "-" });
                }
            }
        }
    }
    h.finish()
}

/// What nodes share, referred to by index. The variables (one table per cell) stay encoded
/// until a node that uses them is run or explained: they are spans of the lazy region.
#[derive(Serialize, Deserialize)]
struct Tables {
    /// The names of the cells the graph was lowered from, in matrix order: nodes name their
    /// cells by index here, and an image is only used with cells of these names.
    cells: Vec<String>,
    providers: Vec<String>,
    vars: Vec<(Span, Digest)>,
    files: Vec<(Vec<FileInput>, Digest)>,
    tools: Vec<(std::collections::BTreeMap<String, String>, Digest)>,
    secrets: Vec<Vec<Secret>>,
    policies: Vec<Policy>,
    /// The length of the lazy region, which follows the tables.
    region: u32,
    nodes: u32,
}

/// A postcard value in the lazy region: its offset there and its length.
#[derive(Serialize, Deserialize, Clone, Copy)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    /// Appends `value` to `region`.
    fn put<T: Serialize>(region: &mut Vec<u8>, value: &T) -> Option<Span> {
        let start = u32::try_from(region.len()).ok()?;
        let bytes = postcard::to_allocvec(value).ok()?;
        region.extend_from_slice(&bytes);
        let len = u32::try_from(bytes.len()).ok()?;
        start.checked_add(len)?;
        Some(Span { start, len })
    }

    /// The value's bytes, if the span is within `region`.
    fn of<T>(self, region: &Bytes) -> Option<Lazy<T>> {
        let (start, len) = (self.start as usize, self.len as usize);
        (start + len <= region.len()).then(|| Lazy::encoded(region.slice(start..start + len)))
    }
}

/// A node with its shared parts as indices into the image's tables and its parameters as a span
/// of the lazy region. Its dependencies' kinds and keys are those of its upstream nodes. Written
/// from a borrowed id, read back as an owned one: the encoding is the same.
#[derive(Serialize, Deserialize)]
struct NodeImage<S> {
    id: S,
    step: StepKind,
    builder: BuilderKind,
    provider: u32,
    cells: Vec<u32>,
    params: Span,
    vars: u32,
    files: u32,
    tools: u32,
    upstream: Vec<u32>,
    secrets: u32,
    policy: u32,
    key: Digest,
    recipe_digest: Digest,
}

/// Numbers shared values in first-seen order, by identity (an `Arc` pointer) or by value.
struct Interner<K, T> {
    index: HashMap<K, u32>,
    values: Vec<T>,
}

impl<K: std::hash::Hash + Eq, T> Interner<K, T> {
    fn new() -> Interner<K, T> {
        Interner {
            index: HashMap::new(),
            values: Vec::new(),
        }
    }

    fn add(&mut self, id: K, value: impl FnOnce() -> T) -> u32 {
        *self.index.entry(id).or_insert_with(|| {
            self.values.push(value());
            self.values.len() as u32 - 1
        })
    }
}

/// Encodes a whole lowered graph (not a selection: cell indices refer to `graph.cells`).
/// `None` if it cannot be encoded (a path that is not UTF-8, say): then nothing is cached.
pub fn encode(graph: &Graph, key: Digest) -> Option<Vec<u8>> {
    let cell_index: HashMap<&str, u32> = graph
        .cells
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i as u32))
        .collect();
    let mut region = Vec::new();
    let mut providers = Interner::new();
    let mut vars = Interner::new();
    let mut files = Interner::new();
    let mut tools = Interner::new();
    // Equal secret references and policies are one entry, however many copies lowering made.
    let mut secrets = Interner::new();
    let mut policies = Interner::new();
    // Shared parts and parameters first (the tables and the region come before the nodes),
    // then each node on its own.
    let shared: Vec<([u32; 6], Option<Span>)> = graph
        .order()
        .into_iter()
        .map(|ix| {
            let n = graph.node(ix);
            let r = &n.recipe;
            let shared = [
                providers.add(Arc::as_ptr(&n.provider) as *const u8 as usize, || {
                    n.provider.to_string()
                }),
                vars.add(Arc::as_ptr(&r.vars) as usize, || {
                    Span::put(&mut region, &**r.vars).map(|s| (s, r.vars.digest))
                }),
                files.add(Arc::as_ptr(&r.files) as usize, || {
                    (Vec::clone(&r.files), r.files.digest)
                }),
                tools.add(Arc::as_ptr(&r.tools) as usize, || {
                    (std::collections::BTreeMap::clone(&r.tools), r.tools.digest)
                }),
                secrets.add(postcard::to_allocvec(&*n.secrets).ok()?, || {
                    n.secrets.to_vec()
                }),
                policies.add(postcard::to_allocvec(&n.policy).ok()?, || n.policy),
            ];
            Some((shared, Span::put(&mut region, &*r.params)))
        })
        .collect::<Option<_>>()?;
    let tables = Tables {
        cells: graph.cells.iter().map(|c| c.name.clone()).collect(),
        providers: providers.values,
        vars: vars.values.into_iter().collect::<Option<_>>()?,
        files: files.values,
        tools: tools.values,
        secrets: secrets.values,
        policies: policies.values,
        region: u32::try_from(region.len()).ok()?,
        nodes: graph.len() as u32,
    };
    let mut body = postcard::to_allocvec(&tables).ok()?;
    body.extend_from_slice(&region);
    for (ix, ([provider, vars, files, tools, secrets, policy], params)) in
        graph.order().into_iter().zip(shared)
    {
        let n = graph.node(ix);
        let image = NodeImage {
            id: n.id.as_str(),
            step: n.step,
            builder: n.builder,
            provider,
            cells: n
                .cells
                .iter()
                .map(|c| cell_index.get(&**c).copied())
                .collect::<Option<_>>()?,
            params: params?,
            vars,
            files,
            tools,
            upstream: n
                .deps
                .iter()
                .map(|(_, key)| graph.deps(ix).find(|d| graph.node(*d).key == *key))
                .map(|d| d.map(|d| d.index() as u32))
                .collect::<Option<_>>()?,
            secrets,
            policy,
            key: n.key,
            recipe_digest: n.recipe_digest,
        };
        body = postcard::to_extend(&image, body).ok()?;
    }
    let mut out = Vec::with_capacity(MAGIC.len() + 64 + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(blake3::hash(&body).as_bytes());
    out.extend_from_slice(&body);
    Some(out)
}

/// The graph an image holds, if it is intact and was made for `key` from these `cells`. The
/// image's bytes are read into memory (not mapped), and the parameters and variables of its
/// nodes are decoded from them when first used.
pub fn decode(bytes: Bytes, key: Digest, cells: Arc<[Cell]>) -> Option<Graph> {
    if bytes.strip_prefix(MAGIC)?.get(..32)? != &key.as_bytes()[..] {
        return None;
    }
    read(bytes)?.into_graph(key, cells)
}

/// An image read back and checked, not yet matched with a config: it can be read while the
/// config loads, since only its key and cell names depend on the config.
pub struct Image {
    key: Digest,
    names: Vec<String>,
    graph: Graph,
}

impl Image {
    /// The image's graph, if it was made for `key` from cells of these names, in this order.
    pub fn into_graph(self, key: Digest, cells: Arc<[Cell]>) -> Option<Graph> {
        let same = self.key == key
            && self.names.len() == cells.len()
            && self
                .names
                .iter()
                .zip(cells.iter())
                .all(|(n, c)| *n == c.name);
        let mut graph = self.graph;
        graph.cells = cells;
        same.then_some(graph)
    }
}

/// The image `bytes` hold, if they are intact.
pub fn read(bytes: Bytes) -> Option<Image> {
    let rest = bytes.strip_prefix(MAGIC)?;
    if rest.len() < 64 {
        return None;
    }
    let key = Digest::from_bytes(rest[..32].try_into().ok()?);
    let (sum, body) = rest[32..].split_at(32);
    // On every core: the body of a large matrix's image is tens of MB.
    if blake3::Hasher::new()
        .update_rayon(body)
        .finalize()
        .as_bytes()[..]
        != sum[..]
    {
        return None;
    }
    let (tables, rest) = postcard::take_from_bytes::<Tables>(body).ok()?;
    let region_len = tables.region as usize;
    if region_len > rest.len() {
        return None;
    }
    let start = bytes.len() - rest.len();
    let region = bytes.slice(start..start + region_len);
    let mut rest = &rest[region_len..];
    let providers: Vec<Arc<str>> = tables.providers.iter().map(|p| p.as_str().into()).collect();
    let vars: Vec<Arc<_>> = tables
        .vars
        .into_iter()
        .map(|(span, d)| {
            Some(Arc::new(Section::restore(
                span.of(&region)?,
                d,
                var_entries,
            )))
        })
        .collect::<Option<_>>()?;
    let files: Vec<Arc<_>> = tables
        .files
        .into_iter()
        .map(|(v, d)| Arc::new(Section::restore(Lazy::new(v), d, file_entries)))
        .collect();
    let tools: Vec<Arc<_>> = tables
        .tools
        .into_iter()
        .map(|(v, d)| Arc::new(Section::restore(Lazy::new(v), d, tool_entries)))
        .collect();
    let secrets: Vec<Arc<[Secret]>> = tables.secrets.into_iter().map(Arc::from).collect();
    let names: Vec<Arc<str>> = tables.cells.iter().map(|c| c.as_str().into()).collect();

    // Every node takes at least a byte: a count larger than that is a garbled image.
    let count = tables.nodes as usize;
    if count > rest.len() {
        return None;
    }
    let mut g: DiGraph<Node, ()> = DiGraph::with_capacity(count, count);
    for _ in 0..count {
        let (n, more) = postcard::take_from_bytes::<NodeImage<String>>(rest).ok()?;
        rest = more;
        let mut deps = Vec::with_capacity(n.upstream.len());
        for &u in &n.upstream {
            // Nodes come after their dependencies.
            let up = g.node_weight(NodeIndex::new(u as usize))?;
            deps.push((up.step, up.key));
        }
        let ix = g.add_node(Node {
            id: n.id,
            step: n.step,
            builder: n.builder,
            provider: providers.get(n.provider as usize)?.clone(),
            cells: n
                .cells
                .iter()
                .map(|&c| names.get(c as usize).cloned())
                .collect::<Option<_>>()?,
            recipe: Recipe {
                step: n.step,
                builder: n.builder,
                params: n.params.of(&region)?,
                vars: vars.get(n.vars as usize)?.clone(),
                files: files.get(n.files as usize)?.clone(),
                tools: tools.get(n.tools as usize)?.clone(),
            },
            deps,
            secrets: secrets.get(n.secrets as usize)?.clone(),
            policy: *tables.policies.get(n.policy as usize)?,
            key: n.key,
            recipe_digest: n.recipe_digest,
        });
        for &u in &n.upstream {
            g.add_edge(NodeIndex::new(u as usize), ix, ());
        }
    }
    if !rest.is_empty() {
        return None;
    }
    Some(Image {
        key,
        names: tables.cells,
        graph: Graph::new(g, Arc::from(Vec::new())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lowers a config of this repository the way `kiln plan` does.
    fn lowered(file: &str) -> (Graph, Arc<[Cell]>, HashMap<PathBuf, Content>) {
        let (config, _) = crate::config::load(Path::new(file)).expect("the config loads");
        let (cells, _) = crate::config::cells::expand_all(&config).expect("cells");
        let cells: Arc<[Cell]> = cells.into();
        let paths = crate::graph::input_paths(&config);
        let digests = crate::statcache::StatCache::decode(None)
            .digest_all(&paths)
            .expect("inputs");
        let graph = crate::graph::lower(&config, cells.clone(), &digests).expect("lowers");
        (graph, cells, digests)
    }

    #[test]
    fn a_decoded_graph_is_the_lowered_graph() {
        for file in ["images.kdl", "examples/local/images.kdl"] {
            let (graph, cells, _) = lowered(file);
            let key = Digest::of_bytes(file.as_bytes());
            let bytes = encode(&graph, key).expect("encodes");
            let back = decode(bytes.into(), key, cells).expect("decodes");
            assert_eq!(back.len(), graph.len(), "{file}");
            assert_eq!(back.edge_count(), graph.edge_count(), "{file}");
            for ix in graph.order() {
                let (a, b) = (graph.node(ix), back.node(ix));
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "{file}: {}", a.id);
                assert_eq!(a.manifest(), b.manifest(), "{file}: {}", a.id);
                let deps = |g: &Graph| g.deps(ix).collect::<Vec<_>>();
                assert_eq!(deps(&graph), deps(&back), "{file}: {}", a.id);
                assert_eq!(back.find(&a.id), Some(ix));
            }
        }
    }

    #[test]
    fn an_image_is_only_read_back_intact_and_for_its_own_key() {
        let (graph, cells, _) = lowered("examples/local/images.kdl");
        let key = Digest::of_bytes(b"k");
        let bytes = encode(&graph, key).expect("encodes");
        let image = Bytes::from(bytes.clone());
        assert!(decode(image.clone(), key, cells.clone()).is_some());
        assert!(decode(image.clone(), Digest::of_bytes(b"other"), cells.clone()).is_none());
        for cut in [0, 10, MAGIC.len() + 40, bytes.len() - 1] {
            assert!(
                decode(image.slice(..cut), key, cells.clone()).is_none(),
                "{cut}"
            );
        }
        let mut flipped = bytes.clone();
        let last = flipped.len() - 5;
        flipped[last] ^= 1;
        assert!(decode(flipped.into(), key, cells.clone()).is_none());
        // Cells that no longer match the image's indices.
        assert!(decode(image.clone(), key, Arc::from(Vec::new())).is_none());
        // Read before the key is known (while the config loads), then matched with it.
        let read_back = || read(image.clone()).expect("reads");
        assert!(read_back().into_graph(key, cells.clone()).is_some());
        assert!(
            read_back()
                .into_graph(Digest::of_bytes(b"other"), cells.clone())
                .is_none()
        );
        let mut renamed = cells.to_vec();
        renamed[0].name.push('x');
        assert!(read_back().into_graph(key, renamed.into()).is_none());
    }

    #[test]
    fn the_key_covers_every_input_and_the_build() {
        let (graph, _, digests) = lowered("examples/local/images.kdl");
        assert!(!graph.is_empty());
        let root = Path::new("/r");
        let config = Digest::of_bytes(b"config");
        let base = snapshot_key(config, root, &digests, "b1");
        assert_eq!(base, snapshot_key(config, root, &digests.clone(), "b1"));
        assert_ne!(base, snapshot_key(config, root, &digests, "b2"));
        assert_ne!(
            base,
            snapshot_key(Digest::of_bytes(b"c2"), root, &digests, "b1")
        );
        assert_ne!(base, snapshot_key(config, Path::new("/s"), &digests, "b1"));
        let mut changed = digests.clone();
        let (path, _) = digests.iter().next().expect("an input");
        changed.insert(path.clone(), Content::File(Digest::of_bytes(b"new")));
        assert_ne!(base, snapshot_key(config, root, &changed, "b1"));
    }
}
