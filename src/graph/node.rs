//! A node of the build graph: one step of one image (or of several images that share it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::lazy::Lazy;
use crate::config::{BuilderKind, PatchOp, Policy, Secret, StepKind, Value};
use crate::hash::{Digest, KeyHasher};

/// What a file or directory input holds, as digested by the caller.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Content {
    File(Digest),
    /// Every file below the directory, sorted by relative path.
    Dir(Vec<DirEntry>),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirEntry {
    /// Relative to the directory, with `/` separators.
    pub rel: String,
    pub digest: Digest,
    pub exec: bool,
}

/// A file or directory a node reads.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// A part of a recipe shared by many nodes (a cell's variables, a provider's files, the tool
/// pins): its digest is computed once; its manifest entries when a manifest is asked for.
pub struct Section<T> {
    value: Lazy<T>,
    pub digest: Digest,
    entries: fn(&T) -> Vec<(InputName, String)>,
}

impl<T> Section<T> {
    fn new(what: &str, value: T, entries: fn(&T) -> Vec<(InputName, String)>) -> Section<T> {
        let mut list = entries(&value);
        list.sort();
        let mut h = KeyHasher::new(what);
        h.begin("entries", list.len());
        for (k, v) in &list {
            h.str(&k.label()).str(v);
        }
        Section {
            value: Lazy::new(value),
            digest: h.finish(),
            entries,
        }
    }

    /// A section whose digest was computed before (see `graph::snapshot`).
    pub(super) fn restore(
        value: Lazy<T>,
        digest: Digest,
        entries: fn(&T) -> Vec<(InputName, String)>,
    ) -> Section<T> {
        Section {
            value,
            digest,
            entries,
        }
    }
}

impl<T: DeserializeOwned> Section<T> {
    /// The section's manifest entries, sorted.
    pub fn entries(&self) -> Vec<(InputName, String)> {
        let mut list = (self.entries)(&self.value);
        list.sort();
        list
    }
}

impl<T: DeserializeOwned + std::fmt::Debug> std::fmt::Debug for Section<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Section")
            .field("value", &self.value)
            .field("digest", &self.digest)
            .finish()
    }
}

impl<T: DeserializeOwned> std::ops::Deref for Section<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// A small sorted name → value table: far lighter than a `BTreeMap` for the handful of
/// parameters and variables every node carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Table(Box<[(String, Value)]>);

impl Table {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| &self.0[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(String, Value)> for Table {
    /// Sorted by name; a later duplicate wins.
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Table {
        let map: BTreeMap<String, Value> = iter.into_iter().collect();
        Table(map.into_iter().collect())
    }
}

pub type Vars = Section<Table>;
pub type Files = Section<Vec<FileInput>>;
pub type Tools = Section<BTreeMap<String, String>>;

pub fn vars_section(vars: Table) -> Vars {
    Section::new("vars", vars, var_entries)
}

pub(super) fn var_entries(vars: &Table) -> Vec<(InputName, String)> {
    vars.iter()
        .map(|(k, v)| (InputName::Var(k.clone()), v.canonical()))
        .collect()
}

pub fn tools_section(tools: BTreeMap<String, String>) -> Tools {
    Section::new("tools", tools, tool_entries)
}

pub(super) fn tool_entries(tools: &BTreeMap<String, String>) -> Vec<(InputName, String)> {
    tools
        .iter()
        .map(|(k, v)| (InputName::Tool(k.clone()), v.clone()))
        .collect()
}

/// A shipped directory is listed file by file, so a plan can name the file that changed and
/// see files added or removed.
pub fn files_section(files: Vec<FileInput>) -> Files {
    Section::new("files", files, file_entries)
}

pub(super) fn file_entries(files: &Vec<FileInput>) -> Vec<(InputName, String)> {
    let mut entries = Vec::new();
    for f in files {
        match (&f.content, &f.role) {
            (Content::File(d), FileRole::Patch(op)) => {
                entries.push((
                    InputName::File(f.rel.clone()),
                    format!("{d} patch:{}", op.as_str()),
                ));
            }
            (Content::File(d), FileRole::Ship { to }) => {
                entries.push((InputName::File(f.rel.clone()), format!("{d} ship:{to}")));
            }
            (Content::Dir(list), role) => {
                let to = match role {
                    FileRole::Ship { to } => to.as_str(),
                    FileRole::Patch(_) => "",
                };
                for e in list {
                    let exec = if e.exec { " exec" } else { "" };
                    entries.push((
                        InputName::File(format!("{}/{}", f.rel, e.rel)),
                        format!("{} ship:{to}/{}{exec}", e.digest, e.rel),
                    ));
                }
            }
        }
    }
    entries
}

/// What a node's key is computed from. Secrets are not here: they never reach a key.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub step: StepKind,
    pub builder: BuilderKind,
    pub params: Lazy<Table>,
    pub vars: Arc<Vars>,
    pub files: Arc<Files>,
    pub tools: Arc<Tools>,
}

impl Recipe {
    /// The digest of the node's own inputs (no dependencies): early cutoff compares it.
    pub fn digest(&self) -> Digest {
        let mut h = KeyHasher::new("recipe");
        h.str(self.step.as_str()).str(self.builder.as_str());
        h.begin("params", self.params.len());
        for (k, v) in self.params.iter() {
            h.str(k).str(&v.canonical());
        }
        h.digest(&self.vars.digest)
            .digest(&self.files.digest)
            .digest(&self.tools.digest);
        h.finish()
    }

    /// Every named input, with the dependencies' keys.
    pub fn manifest(&self, deps: &[(StepKind, Digest)]) -> Manifest {
        let mut m = Manifest::new();
        m.insert(InputName::Step, self.step.to_string());
        m.insert(InputName::Builder, self.builder.to_string());
        for (k, v) in self.params.iter() {
            m.insert(InputName::Param(k.clone()), v.canonical());
        }
        m.extend(self.vars.entries());
        m.extend(self.files.entries());
        m.extend(self.tools.entries());
        for (kind, key) in deps {
            m.insert(InputName::Dep(*kind), key.to_hex());
        }
        m
    }
}

/// A node's key: its recipe digest and its dependencies' keys.
pub fn node_key(recipe: Digest, deps: &[(StepKind, Digest)]) -> Digest {
    let mut h = KeyHasher::new("node");
    h.digest(&recipe);
    h.begin("deps", deps.len());
    for (kind, key) in deps {
        h.str(kind.as_str()).digest(key);
    }
    h.finish()
}

#[derive(Debug, Clone)]
pub struct Node {
    /// Stable logical name, e.g. `aws/ubuntu-2404/1.31/build`.
    pub id: String,
    pub step: StepKind,
    pub builder: BuilderKind,
    pub provider: Arc<str>,
    /// Names of the cells this node belongs to (several when shared).
    pub cells: Vec<Arc<str>>,
    pub recipe: Recipe,
    /// The keys of the upstream steps, by step kind.
    pub deps: Vec<(StepKind, Digest)>,
    pub secrets: Arc<[Secret]>,
    pub policy: Policy,
    /// Content hash over the recipe and the dependency keys.
    pub key: Digest,
    /// Content hash over the recipe alone (for early cutoff).
    pub recipe_digest: Digest,
}

impl Node {
    /// Every named input with its value or digest, as `kiln explain` shows and records keep.
    pub fn manifest(&self) -> Manifest {
        self.recipe.manifest(&self.deps)
    }

    /// The manifest with string labels, as stored in result records.
    pub fn manifest_labels(&self) -> BTreeMap<String, String> {
        self.manifest()
            .into_iter()
            .map(|(k, v)| (k.label(), v))
            .collect()
    }
}
