//! A node of the build graph: one step of one image (or of several images that share it).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::config::{BuilderKind, PatchOp, Policy, Secret, StepKind, Value};
use crate::hash::{Digest, KeyHasher};

/// What a file or directory input holds, as digested by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    File(Digest),
    /// Every file below the directory, sorted by relative path.
    Dir(Vec<DirEntry>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Relative to the directory, with `/` separators.
    pub rel: String,
    pub digest: Digest,
    pub exec: bool,
}

/// A file or directory a node reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInput {
    /// Relative to the config root, with `/` separators: what keys and plans name.
    pub rel: String,
    pub path: PathBuf,
    pub content: Content,
    pub role: FileRole,
}

impl FileInput {
    pub fn is_dir(&self) -> bool {
        matches!(self.content, Content::Dir(_))
    }

    /// Every file this input stands for: (name as plans show it, path on disk, digest).
    pub fn files(&self) -> Vec<(String, PathBuf, Digest)> {
        match &self.content {
            Content::File(d) => vec![(self.rel.clone(), self.path.clone(), *d)],
            Content::Dir(entries) => entries
                .iter()
                .map(|e| {
                    (
                        format!("{}/{}", self.rel, e.rel),
                        self.path.join(&e.rel),
                        e.digest,
                    )
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRole {
    /// A JSON patch on the packer template.
    Patch(PatchOp),
    /// Shipped into the build at this path.
    Ship { to: String },
}

/// One named input of a node, as recorded in its manifest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InputName {
    Step,
    Builder,
    Param(String),
    Var(String),
    File(String),
    Tool(String),
    /// The output of the upstream step of this kind.
    Dep(StepKind),
}

impl InputName {
    /// `var:kubernetes_semver`, `file:config/scripts`, `dep:patch`, …
    pub fn label(&self) -> String {
        match self {
            InputName::Step => "step".into(),
            InputName::Builder => "builder".into(),
            InputName::Param(p) => format!("param:{p}"),
            InputName::Var(v) => format!("var:{v}"),
            InputName::File(f) => format!("file:{f}"),
            InputName::Tool(t) => format!("tool:{t}"),
            InputName::Dep(s) => format!("dep:{s}"),
        }
    }

    pub fn is_dep(&self) -> bool {
        matches!(self, InputName::Dep(_))
    }
}

/// Every named input of a node with its value (canonical JSON) or digest (hex). Sorted, so the
/// key does not depend on declaration order.
pub type Manifest = BTreeMap<InputName, String>;

/// What a node's key is computed from. Secrets are not here: they never reach a key.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub step: StepKind,
    pub builder: BuilderKind,
    pub params: BTreeMap<String, Value>,
    pub vars: BTreeMap<String, Value>,
    pub files: Vec<FileInput>,
    pub tools: BTreeMap<String, String>,
}

impl Recipe {
    pub fn manifest(&self, deps: &[(StepKind, Digest)]) -> Manifest {
        let mut m = Manifest::new();
        m.insert(InputName::Step, self.step.to_string());
        m.insert(InputName::Builder, self.builder.to_string());
        for (k, v) in &self.params {
            m.insert(InputName::Param(k.clone()), v.canonical());
        }
        for (k, v) in &self.vars {
            m.insert(InputName::Var(k.clone()), v.canonical());
        }
        // A shipped directory is listed file by file, so a plan can name the file that changed
        // and see files added or removed.
        for f in &self.files {
            let to = match &f.role {
                FileRole::Patch(op) => {
                    if let Content::File(d) = &f.content {
                        m.insert(
                            InputName::File(f.rel.clone()),
                            format!("{d} patch:{}", op.as_str()),
                        );
                    }
                    continue;
                }
                FileRole::Ship { to } => to,
            };
            match &f.content {
                Content::File(d) => {
                    m.insert(InputName::File(f.rel.clone()), format!("{d} ship:{to}"));
                }
                Content::Dir(entries) => {
                    for e in entries {
                        let exec = if e.exec { " exec" } else { "" };
                        m.insert(
                            InputName::File(format!("{}/{}", f.rel, e.rel)),
                            format!("{} ship:{to}/{}{exec}", e.digest, e.rel),
                        );
                    }
                }
            }
        }
        for (k, v) in &self.tools {
            m.insert(InputName::Tool(k.clone()), v.clone());
        }
        for (kind, key) in deps {
            m.insert(InputName::Dep(*kind), key.to_hex());
        }
        m
    }
}

/// The key over a manifest; the recipe digest is the same over its non-dependency entries.
pub fn manifest_digest(domain: &str, m: &Manifest, with_deps: bool) -> Digest {
    let mut h = KeyHasher::new(domain);
    let entries: Vec<_> = m.iter().filter(|(k, _)| with_deps || !k.is_dep()).collect();
    h.begin("manifest", entries.len());
    for (k, v) in entries {
        h.str(&k.label()).str(v);
    }
    h.finish()
}

#[derive(Debug, Clone)]
pub struct Node {
    /// Stable logical name, e.g. `aws/ubuntu-2404/1.31/build`.
    pub id: String,
    pub step: StepKind,
    pub builder: BuilderKind,
    pub provider: String,
    /// Names of the cells this node belongs to (several when shared).
    pub cells: Vec<String>,
    pub recipe: Recipe,
    pub manifest: Manifest,
    pub secrets: Vec<Secret>,
    pub policy: Policy,
    /// Content hash over the manifest, dependency keys included.
    pub key: Digest,
    /// Content hash over the manifest without dependency keys (for early cutoff).
    pub recipe_digest: Digest,
    /// The cell values the id was made from (shared by all of `cells`).
    pub values: Vec<(String, String)>,
}
