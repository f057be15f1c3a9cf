//! Cells → step nodes. Pure: file digests are handed in, computed by the caller.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use petgraph::graph::{DiGraph, NodeIndex};

use super::Graph;
use super::node::{
    Content, FileInput, FileRole, Files, Node, Recipe, Tools, Vars, files_section, node_key,
    tools_section, vars_section,
};
use crate::config::template::{self, RenderError};
use crate::config::{
    BuilderKind, Config, DEFAULT_IMAGE_BUILDER, Diag, Diags, Loc, Module, Override, Patch,
    Provider, Secret, Ship, Spanned, StepKind, Value,
};
use crate::hash::Digest;
use crate::matrix::Cell;

/// Every file and directory the config names, to be digested before lowering.
pub fn input_paths(config: &Config) -> Vec<(PathBuf, bool)> {
    let mut out: Vec<(PathBuf, bool)> = Vec::new();
    for p in config.providers.values() {
        for body in std::iter::once(&p.body).chain(p.overrides.iter().map(|o| &o.body)) {
            out.extend(body.patches.iter().map(|x| (x.file.path.clone(), false)));
            out.extend(body.files.iter().map(|s| (s.from.path.clone(), s.is_dir)));
        }
    }
    out.sort();
    out.dedup();
    out
}

struct Lowerer<'a> {
    config: &'a Config,
    digests: &'a HashMap<PathBuf, Content>,
    diags: Diags,
    reported: HashSet<(Loc, String)>,
    g: DiGraph<Node, ()>,
    by_key: HashMap<Digest, NodeIndex>,
    /// Per node: the cell values its id is made from (those all its cells share).
    id_values: Vec<Vec<(String, String)>>,
    tools: Arc<Tools>,
    empty: (Arc<Vars>, Arc<Tools>),
}

/// Everything a cell's nodes are made from, after provider, overrides and cell values merge.
struct Resolved<'a> {
    provider: &'a Provider,
    module: &'a Module,
    settings: BTreeMap<String, Value>,
    vars: BTreeMap<String, (Value, Option<Loc>)>,
    patches: Vec<&'a Patch>,
    files: Vec<&'a Ship>,
    secrets: Vec<Secret>,
    policy: crate::config::Policy,
}

fn matches(o: &Override, cell: &Cell) -> bool {
    o.when
        .iter()
        .all(|(k, v)| cell.values.get(&k.value) == Some(v.value.as_str()))
}

impl<'a> Lowerer<'a> {
    fn resolve(&self, cell: &Cell) -> Option<Resolved<'a>> {
        let config = self.config;
        let provider = config.providers.get(cell.values.get("provider")?)?;
        let module = config.modules.get(&provider.module.value)?;
        let release = config.releases.get(cell.values.get("kubernetes")?)?;
        let overrides: Vec<&Override> = provider
            .overrides
            .iter()
            .filter(|o| matches(o, cell))
            .collect();
        let bodies: Vec<_> = std::iter::once(&provider.body)
            .chain(overrides.iter().map(|o| &o.body))
            .collect();

        let mut settings: BTreeMap<String, Value> = module
            .settings
            .values()
            .filter_map(|s| s.default.clone().map(|d| (s.name.clone(), d)))
            .collect();
        for b in &bodies {
            settings.extend(b.settings.iter().map(|(k, v)| (k.clone(), v.value.clone())));
        }
        for (k, v) in cell.values.iter() {
            if module.settings.contains_key(k) {
                settings.insert(k.to_string(), Value::Str(v.to_string()));
            }
        }

        let mut vars: BTreeMap<String, (Value, Option<Loc>)> = release
            .variables()
            .into_iter()
            .map(|(k, v)| (k, (v, None)))
            .collect();
        let spanned = |m: &BTreeMap<String, Spanned<Value>>| {
            m.iter()
                .map(|(k, v)| (k.clone(), (v.value.clone(), Some(v.loc))))
                .collect::<Vec<_>>()
        };
        vars.extend(spanned(&module.vars));
        for b in &bodies {
            vars.extend(spanned(&b.vars));
        }

        let mut files: Vec<&Ship> = Vec::new();
        for b in &bodies {
            for s in &b.files {
                files.retain(|f| f.to != s.to); // an override replaces what ships to the same place
                files.push(s);
            }
        }
        let mut secrets: Vec<Secret> = Vec::new();
        for b in &bodies {
            for s in &b.secrets {
                secrets.retain(|x| x.name != s.name);
                secrets.push(s.clone());
            }
        }
        let policy = bodies.iter().fold(module.policy, |p, b| p.then(b.policy));
        Some(Resolved {
            provider,
            module,
            settings,
            vars,
            patches: bodies.iter().flat_map(|b| b.patches.iter()).collect(),
            files,
            secrets,
            policy,
        })
    }

    /// Renders `{placeholder}`s from the cell's values, the settings, and a few release facts.
    fn render(&mut self, text: &str, loc: Option<Loc>, cell: &Cell, r: &Resolved) -> String {
        let release = cell
            .values
            .get("kubernetes")
            .and_then(|k| self.config.releases.get(k));
        let lookup = |p: &str| -> Option<String> {
            if let Some(v) = cell.values.get(p) {
                return Some(v.to_string());
            }
            if let Some(v) = r.settings.get(p) {
                return Some(v.render());
            }
            match p {
                "name" => Some(cell.name.clone()),
                "kubernetes_version" => release.map(|r| r.version.clone()),
                _ => None,
            }
        };
        match template::render(text, lookup) {
            Ok(s) => s,
            Err(e) => {
                let loc = loc.unwrap_or(r.module.loc);
                let (msg, help) = match e {
                    RenderError::Unknown(p) => {
                        let mut known: Vec<String> =
                            cell.values.keys().map(str::to_string).collect();
                        known.extend(r.settings.keys().cloned());
                        known.extend(["name".into(), "kubernetes_version".into()]);
                        let known: Vec<&str> = known.iter().map(String::as_str).collect();
                        (
                            format!("unknown placeholder `{{{p}}}` (in cell `{}`)", cell.name),
                            format!(
                                "{}; placeholders name cell values, module settings, `name` or `kubernetes_version`",
                                crate::config::diag::did_you_mean(p, &known, "placeholder")
                            ),
                        )
                    }
                    RenderError::Syntax(e) => (
                        format!("invalid template: {e}"),
                        "write {{ or }} for a literal brace".into(),
                    ),
                };
                if self.reported.insert((loc, msg.clone())) {
                    let d = Diag::error("kiln::config::placeholder", msg)
                        .label(&self.config.sources, loc, "in this template")
                        .help(help);
                    self.diags.push(d);
                }
                String::new()
            }
        }
    }

    fn render_value(&mut self, v: &Value, loc: Option<Loc>, cell: &Cell, r: &Resolved) -> Value {
        match v {
            Value::Str(s) => Value::Str(self.render(s, loc, cell, r)),
            Value::List(l) => Value::List(l.iter().map(|s| self.render(s, loc, cell, r)).collect()),
            other => other.clone(),
        }
    }

    fn file_input(
        &mut self,
        path: &PathBuf,
        rel: &str,
        role: FileRole,
        loc: Loc,
    ) -> Option<FileInput> {
        match self.digests.get(path) {
            Some(content) => Some(FileInput {
                rel: rel.to_string(),
                path: path.clone(),
                content: content.clone(),
                role,
            }),
            None => {
                let d = Diag::error(
                    "kiln::config::file-not-found",
                    format!("cannot read `{rel}`"),
                )
                .label(&self.config.sources, loc, "named here")
                .help("check that the file exists and is readable");
                self.diags.push(d);
                None
            }
        }
    }

    fn lower_cell(&mut self, cell: &Cell) {
        let Some(r) = self.resolve(cell) else { return };
        let vars: BTreeMap<String, Value> = r
            .vars
            .clone()
            .iter()
            .map(|(k, (v, loc))| (k.clone(), self.render_value(v, *loc, cell, &r)))
            .collect();
        let vars = Arc::new(vars_section(vars));
        let secrets: Arc<[crate::config::Secret]> = r.secrets.clone().into();
        let provider: Arc<str> = r.provider.name.as_str().into();
        let cell_name: Arc<str> = cell.name.as_str().into();
        let mut files_by_use: HashMap<(bool, bool), Arc<Files>> = HashMap::new();
        let mut prev: Option<(StepKind, NodeIndex)> = None;
        for step in &r.module.steps {
            let consumes = step.consumes;
            if step.builder == BuilderKind::TemplatePatch && r.patches.is_empty() {
                continue; // nothing to patch: the stock template is used as is
            }
            let params: BTreeMap<String, Value> = step
                .params
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        self.render_value(&v.value, Some(v.loc), cell, &r),
                    )
                })
                .collect();
            let use_key = (consumes.patches, consumes.files);
            let files = match files_by_use.get(&use_key) {
                Some(f) => f.clone(),
                None => {
                    let mut files = Vec::new();
                    if consumes.patches {
                        for p in r.patches.clone() {
                            files.extend(self.file_input(
                                &p.file.path,
                                &p.file.rel,
                                FileRole::Patch(p.op),
                                p.file.loc,
                            ));
                        }
                    }
                    if consumes.files {
                        for s in r.files.clone() {
                            let role = FileRole::Ship { to: s.to.clone() };
                            files.extend(self.file_input(
                                &s.from.path,
                                &s.from.rel,
                                role,
                                s.from.loc,
                            ));
                        }
                    }
                    let f = Arc::new(files_section(files));
                    files_by_use.insert(use_key, f.clone());
                    f
                }
            };
            let recipe = Recipe {
                step: step.kind,
                builder: step.builder,
                params,
                vars: if consumes.vars {
                    vars.clone()
                } else {
                    self.empty.0.clone()
                },
                files,
                tools: if consumes.image_builder {
                    self.tools.clone()
                } else {
                    self.empty.1.clone()
                },
            };
            let deps: Vec<(StepKind, Digest)> =
                prev.iter().map(|(k, ix)| (*k, self.g[*ix].key)).collect();
            let recipe_digest = recipe.digest();
            let key = node_key(recipe_digest, &deps);
            let ix = match self.by_key.get(&key) {
                Some(&ix) => {
                    let node = &mut self.g[ix];
                    if !node.cells.contains(&cell_name) {
                        node.cells.push(cell_name.clone()); // the same cell in two matrices is one
                    }
                    self.id_values[ix.index()]
                        .retain(|(k, v)| cell.values.get(k) == Some(v.as_str()));
                    ix
                }
                None => {
                    let node = Node {
                        id: String::new(),
                        step: step.kind,
                        builder: step.builder,
                        provider: provider.clone(),
                        cells: vec![cell_name.clone()],
                        recipe,
                        deps,
                        secrets: if consumes.secrets {
                            secrets.clone()
                        } else {
                            Arc::from([])
                        },
                        policy: r.policy.then(step.policy),
                        key,
                        recipe_digest,
                    };
                    let ix = self.g.add_node(node);
                    self.id_values.push(id_values(cell));
                    self.by_key.insert(key, ix);
                    if let Some((_, p)) = prev {
                        self.g.add_edge(p, ix, ());
                    }
                    ix
                }
            };
            prev = Some((step.kind, ix));
        }
    }
}

/// Cell values in id order: provider, os, kubernetes, then any other axis.
fn id_values(cell: &Cell) -> Vec<(String, String)> {
    let first = ["provider", "os", "kubernetes"];
    let mut out: Vec<(String, String)> = first
        .iter()
        .filter_map(|k| cell.values.get(k).map(|v| (k.to_string(), v.to_string())))
        .collect();
    out.extend(
        cell.values
            .iter()
            .filter(|(k, _)| !first.contains(k))
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    out
}

/// Ids from the values all sharers have in common; a clash falls back to the full cell name.
fn assign_ids(g: &mut DiGraph<Node, ()>, values: &[Vec<(String, String)>]) {
    let mut taken: HashSet<String> = HashSet::with_capacity(g.node_count());
    for ix in g.node_indices() {
        let node = &g[ix];
        let base: Vec<&str> = values[ix.index()].iter().map(|(_, v)| v.as_str()).collect();
        let mut id = format!("{}/{}", base.join("/"), node.step);
        if taken.contains(&id) {
            id = format!("{}/{}", node.cells[0], node.step);
        }
        if taken.contains(&id) {
            id = format!("{}/{}~{}", node.cells[0], node.step, node.key.short());
        }
        taken.insert(id.clone());
        g[ix].id = id;
    }
}

/// Lowers the selected cells to a graph. `digests` holds every path of [`input_paths`].
pub fn lower(
    config: &Config,
    cells: Vec<Cell>,
    digests: &HashMap<PathBuf, Content>,
) -> Result<Graph, Diags> {
    let pin = config
        .tools
        .get("image-builder")
        .map_or(DEFAULT_IMAGE_BUILDER.to_string(), |t| match &t.image {
            Some(image) => format!("{} {image}", t.version),
            None => t.version.clone(),
        });
    let mut l = Lowerer {
        config,
        digests,
        diags: Diags::default(),
        reported: HashSet::new(),
        g: DiGraph::new(),
        by_key: HashMap::new(),
        id_values: Vec::new(),
        tools: Arc::new(tools_section([("image-builder".to_string(), pin)].into())),
        empty: (
            Arc::new(vars_section(BTreeMap::new())),
            Arc::new(tools_section(BTreeMap::new())),
        ),
    };
    for cell in &cells {
        l.lower_cell(cell);
    }
    if l.diags.has_errors() {
        return Err(l.diags);
    }
    assign_ids(&mut l.g, &l.id_values);
    Ok(Graph::new(l.g, cells))
}
