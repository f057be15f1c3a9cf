//! The values the store keeps: build outputs, action results and build records.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hash::{Digest, KeyHasher};

/// One named output of a node, stored as a blob.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub name: String,
    pub digest: Digest,
    pub size: u64,
}

/// What a node produced, stored in the action cache under the node's key.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ActionResult {
    /// The node key this result is stored under.
    pub key: Digest,
    /// Logical id of the node that produced it, e.g. `aws/ubuntu-2404/1.31/build`.
    pub id: String,
    /// Digest of the node's own inputs without dependency keys (for early cutoff).
    pub recipe: Digest,
    /// Dependency id -> digest over that dependency's outputs.
    pub dep_outputs: BTreeMap<String, Digest>,
    /// Sorted by name.
    pub outputs: Vec<Output>,
    /// Facts learnt while building, e.g. artifact ids.
    pub facts: BTreeMap<String, String>,
    /// Every named input -> its value or digest (for plan diffs).
    pub manifest: BTreeMap<String, String>,
    pub attempts: u32,
    pub started_unix_ms: u64,
    pub duration_ms: u64,
    /// The node's log, stored as a blob.
    pub log: Option<Digest>,
}

impl ActionResult {
    /// A canonical digest over everything this result hands on to a dependent: the
    /// `(name, digest, size)` of every output, independent of the order they are listed in, and
    /// every fact (a publish step reads the build's artifact id). Dependents compare it for
    /// early cutoff.
    pub fn outputs_digest(&self) -> Digest {
        let mut outputs: Vec<&Output> = self.outputs.iter().collect();
        outputs.sort_by(|a, b| a.name.cmp(&b.name));
        let mut h = KeyHasher::new("kiln-outputs-v2");
        h.begin("outputs", outputs.len());
        for o in outputs {
            h.str(&o.name).digest(&o.digest).u64(o.size);
        }
        h.begin("facts", self.facts.len());
        for (k, v) in &self.facts {
            h.str(k).str(v);
        }
        h.finish()
    }

    /// Every blob this entry refers to: its outputs and its log.
    pub fn referenced_blobs(&self) -> impl Iterator<Item = Digest> + '_ {
        self.outputs.iter().map(|o| o.digest).chain(self.log)
    }

    /// The digests of the node's input files as its manifest names them (`file:PATH` →
    /// `DIGEST …`): the stored copies of the small ones are what the next plan diffs a changed
    /// file against.
    pub fn input_copies(&self) -> impl Iterator<Item = Digest> + '_ {
        self.manifest
            .iter()
            .filter(|(k, _)| k.starts_with("file:"))
            .filter_map(|(_, v)| v.split(' ').next()?.parse().ok())
    }
}

/// One line of `records.log`: logical id `id` was built (or found cached) as `key` at `unix_ms`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: String,
    pub key: Digest,
    pub unix_ms: u64,
}
