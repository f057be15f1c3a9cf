//! The build graph: a DAG of step nodes, lowered from cells, with renderings for people.

mod lazy;
mod lower;
mod node;
mod render;
pub mod snapshot;

use std::sync::Arc;

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};

pub use lower::{input_paths, lower};
pub use node::{Content, DirEntry, FileInput, FileRole, InputName, Manifest, Node, Recipe, Table};
pub use render::GraphFormat;

use crate::matrix::Cell;

pub struct Graph {
    g: DiGraph<Node, ()>,
    /// Nodes by the hash of their id (the ids themselves are the nodes': not copied).
    by_id: hashbrown::HashTable<NodeIndex>,
    /// The cells the graph was lowered from (or selected), in matrix order.
    pub cells: Arc<[Cell]>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("g", &self.g)
            .field("cells", &self.cells)
            .finish()
    }
}

fn id_hash(id: &str) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(id)
}

impl Graph {
    fn new(g: DiGraph<Node, ()>, cells: Arc<[Cell]>) -> Graph {
        let mut by_id = hashbrown::HashTable::with_capacity(g.node_count());
        for ix in g.node_indices() {
            let id = &g[ix].id;
            match by_id.entry(
                id_hash(id),
                |&o: &NodeIndex| g[o].id == *id,
                |&o| id_hash(&g[o].id),
            ) {
                hashbrown::hash_table::Entry::Occupied(mut e) => *e.get_mut() = ix,
                hashbrown::hash_table::Entry::Vacant(e) => {
                    e.insert(ix);
                }
            }
        }
        Graph { g, by_id, cells }
    }

    /// Node indices in a topological order (dependencies first).
    pub fn order(&self) -> Vec<NodeIndex> {
        // Lowering adds every node after its dependencies, so index order is topological.
        self.g.node_indices().collect()
    }

    pub fn node(&self, ix: NodeIndex) -> &Node {
        &self.g[ix]
    }

    /// Every node runs with its debug settings on every attempt, not only on retries
    /// (`kiln build --debug`). Policy, so no key changes.
    pub fn debug_every_attempt(&mut self) {
        for n in self.g.node_weights_mut() {
            n.policy.debug = Some(true);
        }
    }

    pub fn len(&self) -> usize {
        self.g.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.g.node_count() == 0
    }

    pub fn edge_count(&self) -> usize {
        self.g.edge_count()
    }

    pub fn find(&self, id: &str) -> Option<NodeIndex> {
        self.by_id
            .find(id_hash(id), |&ix| self.g[ix].id == id)
            .copied()
    }

    pub fn deps(&self, ix: NodeIndex) -> impl Iterator<Item = NodeIndex> + '_ {
        self.g.neighbors_directed(ix, Direction::Incoming)
    }

    /// By node index: whether the node is one of `roots` or something they depend on.
    pub fn with_ancestors(&self, roots: impl IntoIterator<Item = NodeIndex>) -> Vec<bool> {
        let mut keep = vec![false; self.g.node_count()];
        let mut stack: Vec<NodeIndex> = roots.into_iter().collect();
        while let Some(ix) = stack.pop() {
            if !std::mem::replace(&mut keep[ix.index()], true) {
                stack.extend(self.deps(ix));
            }
        }
        keep
    }

    /// The nodes of the named cells and everything they depend on; ids and keys unchanged.
    pub fn select(&self, cells: &std::collections::HashSet<&str>) -> Graph {
        let keep = self.with_ancestors(
            self.g
                .node_indices()
                .filter(|ix| self.g[*ix].cells.iter().any(|c| cells.contains(&**c))),
        );
        let g = self.g.filter_map(
            |ix, n| keep[ix.index()].then(|| n.clone()),
            |_, &()| Some(()),
        );
        let kept = self
            .cells
            .iter()
            .filter(|c| cells.contains(c.name.as_str()))
            .cloned()
            .collect();
        Graph::new(g, kept)
    }

    /// The node `ix` and everything it depends on, and the cells of that node; ids and keys
    /// unchanged.
    pub fn upstream_of(&self, ix: NodeIndex) -> Graph {
        let keep = self.with_ancestors([ix]);
        let g = self
            .g
            .filter_map(|i, n| keep[i.index()].then(|| n.clone()), |_, &()| Some(()));
        let own = &self.g[ix].cells;
        let kept = self
            .cells
            .iter()
            .filter(|c| own.iter().any(|o| **o == *c.name))
            .cloned()
            .collect();
        Graph::new(g, kept)
    }

    pub fn dependents(&self, ix: NodeIndex) -> impl Iterator<Item = NodeIndex> + '_ {
        self.g.neighbors_directed(ix, Direction::Outgoing)
    }
}
