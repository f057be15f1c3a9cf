//! Cells → step nodes. Pure: file digests are handed in, computed by the caller.
//!
//! Lowering runs in two phases: every cell's recipes are resolved and hashed in parallel (cells
//! are independent), then nodes are chained and shared by key in matrix order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use petgraph::graph::{DiGraph, NodeIndex};
use rayon::prelude::*;

use super::Graph;
use super::node::{
    Content, FileInput, FileRole, Files, Node, Recipe, Table, Tools, Vars, files_section, node_key,
    tools_section, vars_section,
};
use crate::config::{
    BuilderKind, Config, DEFAULT_IMAGE_BUILDER, Diag, Diags, Loc, Module, Override, Patch, Policy,
    Provider, Release, Secret, Ship, StepKind, Value,
};
use crate::hash::Digest;
use crate::imagebuilder;
use crate::matrix::Cell;
use crate::template::{self, RenderError};

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

fn matches(o: &Override, cell: &Cell) -> bool {
    o.when
        .iter()
        .all(|(k, v)| cell.values.get(&k.value) == Some(v.value.as_str()))
}

/// What cells of one provider, release and set of matching overrides share, resolved once.
struct Base<'a> {
    module: &'a Module,
    release: &'a Release,
    settings: BTreeMap<String, Value>,
    /// Unrendered variables, with where each was written (release variables have no place).
    vars: Vec<(String, Value, Option<Loc>)>,
    patches: Vec<&'a Patch>,
    files: Vec<&'a Ship>,
    secrets: Arc<[Secret]>,
    policy: Policy,
    provider_name: Arc<str>,
}

impl<'a> Base<'a> {
    fn new(
        config: &'a Config,
        provider: &'a Provider,
        release: &'a Release,
        overrides: &[usize],
    ) -> Option<Base<'a>> {
        let module = config.modules.get(&provider.module.value)?;
        let bodies: Vec<_> = std::iter::once(&provider.body)
            .chain(overrides.iter().map(|i| &provider.overrides[*i].body))
            .collect();
        let mut settings: BTreeMap<String, Value> = module
            .settings
            .values()
            .filter_map(|s| s.default.clone().map(|d| (s.name.clone(), d)))
            .collect();
        for b in &bodies {
            settings.extend(b.settings.iter().map(|(k, v)| (k.clone(), v.value.clone())));
        }
        let mut vars: BTreeMap<String, (Value, Option<Loc>)> = release
            .variables()
            .into_iter()
            .map(|(k, v)| (k, (v, None)))
            .collect();
        for m in std::iter::once(&module.vars).chain(bodies.iter().map(|b| &b.vars)) {
            vars.extend(
                m.iter()
                    .map(|(k, v)| (k.clone(), (v.value.clone(), Some(v.loc)))),
            );
        }
        let mut files: Vec<&Ship> = Vec::new();
        let mut secrets: Vec<Secret> = Vec::new();
        for b in &bodies {
            for s in &b.files {
                files.retain(|f| f.to != s.to); // an override replaces what ships to the same place
                files.push(s);
            }
            for s in &b.secrets {
                secrets.retain(|x| x.name != s.name);
                secrets.push(s.clone());
            }
        }
        Some(Base {
            module,
            release,
            settings,
            vars: vars.into_iter().map(|(k, (v, l))| (k, v, l)).collect(),
            patches: bodies.iter().flat_map(|b| b.patches.iter()).collect(),
            files,
            secrets: secrets.into(),
            policy: bodies.iter().fold(module.policy, |p, b| p.then(b.policy)),
            provider_name: provider.name.as_str().into(),
        })
    }
}

/// A template or image-builder problem, reported once per place and subject.
struct TemplateProblem {
    code: &'static str,
    label: &'static str,
    loc: Loc,
    what: String,
    message: String,
    help: String,
}

/// One step of one cell, resolved and hashed, not yet placed in the graph.
struct StepPlan {
    kind: StepKind,
    builder: BuilderKind,
    recipe: Recipe,
    recipe_digest: Digest,
    secrets: Arc<[Secret]>,
    policy: Policy,
}

struct CellPlan {
    steps: Vec<StepPlan>,
    problems: Vec<TemplateProblem>,
}

/// Read-only context of the parallel phase.
struct Ctx<'a> {
    digests: &'a HashMap<PathBuf, Content>,
    tools: Arc<Tools>,
    no_vars: Arc<Vars>,
    no_tools: Arc<Tools>,
    /// The data of the pinned image-builder version (`None`: not shipped, reported once).
    image_builder: Option<&'static imagebuilder::Data>,
}

impl Ctx<'_> {
    fn render(
        &self,
        text: &str,
        loc: Option<Loc>,
        cell: &Cell,
        base: &Base,
        settings: &BTreeMap<String, Value>,
        problems: &mut Vec<TemplateProblem>,
    ) -> String {
        let lookup = |p: &str| -> Option<String> {
            if let Some(v) = cell.values.get(p) {
                return Some(v.to_string());
            }
            if let Some(v) = settings.get(p) {
                return Some(v.render());
            }
            match p {
                "name" => Some(cell.name.clone()),
                "kubernetes_version" => Some(base.release.version.clone()),
                _ => None,
            }
        };
        match template::render(text, lookup) {
            Ok(s) => s,
            Err(e) => {
                let loc = loc.unwrap_or(base.module.loc);
                let (what, message, help) = match e {
                    RenderError::Unknown(p) => {
                        let mut known: Vec<&str> = cell.values.keys().collect();
                        known.extend(settings.keys().map(String::as_str));
                        known.extend(["name", "kubernetes_version"]);
                        (
                            p.to_string(),
                            format!(
                                "unknown placeholder `{{{p}}}` (first in cell `{}`)",
                                cell.name
                            ),
                            format!(
                                "{}; placeholders name cell values, module settings, `name` or `kubernetes_version`",
                                crate::config::diag::did_you_mean(p, &known, "placeholder")
                            ),
                        )
                    }
                    RenderError::Syntax(e) => (
                        e.to_string(),
                        format!("invalid template: {e}"),
                        "write {{ or }} for a literal brace".into(),
                    ),
                };
                problems.push(TemplateProblem {
                    code: "kiln::config::placeholder",
                    label: "in this template",
                    loc,
                    what,
                    message,
                    help,
                });
                String::new()
            }
        }
    }

    fn render_value(
        &self,
        v: &Value,
        loc: Option<Loc>,
        cell: &Cell,
        base: &Base,
        settings: &BTreeMap<String, Value>,
        problems: &mut Vec<TemplateProblem>,
    ) -> Value {
        match v {
            Value::Str(s) => Value::Str(self.render(s, loc, cell, base, settings, problems)),
            Value::List(l) => Value::List(
                l.iter()
                    .map(|s| self.render(s, loc, cell, base, settings, problems))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    fn files(&self, base: &Base, patches: bool, ships: bool) -> Result<Files, (String, Loc)> {
        let mut files = Vec::new();
        let mut add =
            |path: &PathBuf, rel: &str, role: FileRole, loc: Loc| match self.digests.get(path) {
                Some(content) => {
                    files.push(FileInput {
                        rel: rel.to_string(),
                        path: path.clone(),
                        content: content.clone(),
                        role,
                    });
                    Ok(())
                }
                None => Err((rel.to_string(), loc)),
            };
        if patches {
            for p in &base.patches {
                add(&p.file.path, &p.file.rel, FileRole::Patch(p.op), p.file.loc)?;
            }
        }
        if ships {
            for s in &base.files {
                add(
                    &s.from.path,
                    &s.from.rel,
                    FileRole::Ship { to: s.to.clone() },
                    s.from.loc,
                )?;
            }
        }
        Ok(files_section(files))
    }

    /// Resolves and hashes the steps of one cell.
    fn plan_cell(
        &self,
        cell: &Cell,
        base: &Base,
        files: &HashMap<(bool, bool), Arc<Files>>,
    ) -> CellPlan {
        let mut problems = Vec::new();
        // Cell values that name a module setting override it for this cell.
        let mut own = None;
        for (k, v) in cell.values.iter() {
            if base.module.settings.contains_key(k) {
                own.get_or_insert_with(|| base.settings.clone())
                    .insert(k.to_string(), Value::Str(v.to_string()));
            }
        }
        let settings = own.as_ref().unwrap_or(&base.settings);
        let vars: Table = base
            .vars
            .iter()
            .filter(|(_, v, _)| !unset_optional(v, base.module, settings))
            .map(|(k, v, loc)| {
                (
                    k.clone(),
                    self.render_value(v, *loc, cell, base, settings, &mut problems),
                )
            })
            .collect();
        let vars = Arc::new(vars_section(vars));
        let mut steps = Vec::with_capacity(base.module.steps.len());
        for step in &base.module.steps {
            if step.builder == BuilderKind::TemplatePatch && base.patches.is_empty() {
                continue; // nothing to patch: the stock template is used as is
            }
            let c = step.consumes;
            let params: Table = step
                .params
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        self.render_value(
                            &v.value,
                            Some(v.loc),
                            cell,
                            base,
                            settings,
                            &mut problems,
                        ),
                    )
                })
                .collect();
            check_confined(step, &params, &mut problems);
            if let Some(data) = self.image_builder {
                match step.builder {
                    BuilderKind::ImageBuilder => {
                        check_image_builder(data, step, &params, base, &mut problems)
                    }
                    BuilderKind::TemplatePatch => {
                        check_template(data, step, &params, &mut problems)
                    }
                    _ => {}
                }
            }
            let recipe = Recipe {
                step: step.kind,
                builder: step.builder,
                params: params.into(),
                vars: if c.vars {
                    vars.clone()
                } else {
                    self.no_vars.clone()
                },
                files: files[&(c.patches, c.files)].clone(),
                tools: if c.image_builder {
                    self.tools.clone()
                } else {
                    self.no_tools.clone()
                },
            };
            let secrets = if c.secrets {
                let dir = self.image_builder.and_then(|d| {
                    let target = recipe.params.get("target")?.render();
                    d.template_dir(&target)
                });
                imagebuilder::step_secrets(
                    step.builder,
                    dir,
                    step.secrets.as_deref(),
                    &base.secrets,
                )
                .into()
            } else {
                Arc::from([])
            };
            steps.push(StepPlan {
                kind: step.kind,
                builder: step.builder,
                recipe_digest: recipe.digest(),
                recipe,
                secrets,
                policy: base.policy.then(step.policy),
            });
        }
        if let Some(data) = self.image_builder {
            check_patched_template(data, cell, base.module, &steps, &mut problems);
        }
        CellPlan { steps, problems }
    }
}

/// A cell's template-patch step must patch the template its image-builder steps run, which
/// image-builder's Makefile picks by target (hcloud's Flatcar builds run `packer-flatcar.json`,
/// not `packer.json`): a patch of another template would never reach packer.
fn check_patched_template(
    data: &imagebuilder::Data,
    cell: &Cell,
    module: &Module,
    steps: &[StepPlan],
    problems: &mut Vec<TemplateProblem>,
) {
    let Some(patch) = steps
        .iter()
        .find(|s| s.builder == BuilderKind::TemplatePatch)
    else {
        return;
    };
    // An unknown template is an error of its own (see `check_template`).
    let Some(patched) = patch
        .recipe
        .params
        .get("template")
        .map(Value::render)
        .filter(|t| data.has_template(t))
    else {
        return;
    };
    let Some(decl) = module.steps.iter().find(|d| d.kind == patch.kind) else {
        return;
    };
    for step in steps
        .iter()
        .filter(|s| s.builder == BuilderKind::ImageBuilder)
    {
        let Some(target) = step.recipe.params.get("target").map(Value::render) else {
            continue;
        };
        let Some(runs) = data.template_of(&target) else {
            continue;
        };
        if runs == patched {
            continue;
        }
        let written = decl.params.get("template");
        // `template "{SETTING}"`: say which setting to override, and for which cells.
        let setting = written.and_then(|w| match &w.value {
            Value::Str(s) => s
                .strip_prefix('{')
                .and_then(|r| r.strip_suffix('}'))
                .filter(|n| module.settings.contains_key(*n)),
            _ => None,
        });
        let select = match cell.values.get("os") {
            Some(os) => format!("os=\"{os}\""),
            None => "…".into(),
        };
        let help = match setting {
            Some(name) => format!(
                "set the module's `{name}` for these cells: `override {select} {{ {name} \"{runs}\" }}` in the provider block"
            ),
            None => format!(
                "make the patch step's `template` a setting (`template \"{{template}}\"` with `setting \"template\" default=\"{patched}\"`) and set it to \"{runs}\" with `override {select} {{ … }}`"
            ),
        };
        problems.push(TemplateProblem {
            code: "kiln::image-builder::patch-not-run",
            label: "the template patched",
            loc: written.map_or(decl.loc, |w| w.loc),
            what: format!("patch {patched} {target}"),
            message: format!(
                "`{target}` runs `{runs}`, but the patch step patches `{patched}`: the patches would never reach packer"
            ),
            help,
        });
        return;
    }
}

/// Whether a variable is exactly `"{SETTING}"` for a setting of the module that has no default,
/// is not required and is not set: such a variable is not passed at all, so image-builder's own
/// default (or a var file the user ships) applies instead of a value kiln would invent.
fn unset_optional(v: &Value, module: &Module, settings: &BTreeMap<String, Value>) -> bool {
    let Value::Str(s) = v else {
        return false;
    };
    let Some(name) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) else {
        return false;
    };
    module
        .settings
        .get(name)
        .is_some_and(|d| !d.required && d.default.is_none() && !settings.contains_key(name))
}

/// Paths a step writes or reads relative to a directory stay inside it (the parameters its
/// builder's table marks so): a `command` step's `outputs` inside its work directory, an
/// `upload` step's `object` inside its bucket.
fn check_confined(
    step: &crate::config::StepDecl,
    params: &Table,
    problems: &mut Vec<TemplateProblem>,
) {
    for spec in step.builder.params() {
        if let Some(inside) = spec.inside {
            check_inside(step, params, spec.name, inside, problems);
        }
    }
}

fn check_inside(
    step: &crate::config::StepDecl,
    params: &Table,
    name: &str,
    inside: &str,
    problems: &mut Vec<TemplateProblem>,
) {
    let (Some(value), Some(written)) = (params.get(name), step.params.get(name)) else {
        return;
    };
    for path in value.as_list() {
        if let Some(why) = crate::config::files::unsafe_relative(&path) {
            problems.push(TemplateProblem {
                code: "kiln::config::path-escapes",
                label: "not inside its directory",
                loc: written.loc,
                message: format!("{name} `{path}` is not a path inside {inside}: {why}"),
                what: path,
                help: format!(
                    "write {name} as a relative path without `..`; every value that fills its placeholders must keep it so"
                ),
            });
        }
    }
}

/// A template-patch step's rendered `template` must be a packer template of the pinned version.
fn check_template(
    data: &imagebuilder::Data,
    step: &crate::config::StepDecl,
    params: &Table,
    problems: &mut Vec<TemplateProblem>,
) {
    let Some(template) = params.get("template").map(Value::render) else {
        return;
    };
    if data.has_template(&template) {
        return;
    }
    let help = match data.suggest_template(&template) {
        Some(s) => format!(
            "did you mean `{s}`? Templates are named relative to image-builder's images/capi"
        ),
        None => format!(
            "image-builder {} has these templates: {}",
            data.version,
            data.templates.join(", ")
        ),
    };
    problems.push(TemplateProblem {
        code: "kiln::image-builder::unknown-template",
        label: "renders to an unknown template",
        loc: step.params.get("template").map_or(step.loc, |p| p.loc),
        what: format!("template {template}"),
        message: format!(
            "image-builder {} has no packer template `{template}`",
            data.version
        ),
        help,
    });
}

/// An image-builder step against the pinned version's data: its rendered make target must exist,
/// and every variable it writes into its var file must be declared by image-builder's
/// `packer/config/*.json` or by the target's `packer/<dir>/` templates and var files.
fn check_image_builder(
    data: &imagebuilder::Data,
    step: &crate::config::StepDecl,
    params: &Table,
    base: &Base,
    problems: &mut Vec<TemplateProblem>,
) {
    let Some(target) = params.get("target").map(Value::render) else {
        return;
    };
    let loc = step.params.get("target").map_or(step.loc, |p| p.loc);
    if !data.has_target(&target) {
        let help = match (data.closest_targets(&target), data.suggest_target(&target)) {
            (Some(c), _) => format!(
                "image-builder {} {}; the closest targets it has are {}: change the matrix's value, e.g. `os \"{}\"`",
                data.version,
                if c.removed {
                    "no longer builds this release (image-builder removes releases past their end of life)"
                } else {
                    "does not build this release"
                },
                c.targets
                    .iter()
                    .map(|t| format!("`{t}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                c.os,
            ),
            (None, Some(s)) => format!(
                "did you mean `{s}`? `make` targets are `build-<provider>-<os>` and `validate-<provider>-<os>` as image-builder's images/capi/Makefile defines them"
            ),
            (None, None) => format!(
                "image-builder {} defines {} build-*/validate-* targets; none is close to this one",
                data.version,
                data.targets.len()
            ),
        };
        problems.push(TemplateProblem {
            code: "kiln::image-builder::unknown-target",
            label: "renders to an unknown make target",
            loc,
            what: format!("target {target}"),
            message: format!(
                "image-builder {} has no make target `{target}`",
                data.version
            ),
            help,
        });
        return;
    }
    let Some(dir) = data.template_dir(&target) else {
        return; // no variable data for this template family: nothing to check against
    };
    for (name, _, vloc) in &base.vars {
        if name.starts_with(imagebuilder::FLAG_PREFIX)
            || name.starts_with(imagebuilder::ENV_PREFIX)
            || data.declares(dir, name)
        {
            continue;
        }
        let help = match data.suggest_variable(dir, name) {
            Some(s) => format!(
                "did you mean `{s}`? A variable packer does not declare is an error, not a no-op; to pass a variable a template patch uses, write `var \"{name}\" … flag=#true` (it goes into PACKER_FLAGS as -var)"
            ),
            None => format!(
                "neither packer/config/*.json nor packer/{dir}/ declares it; to pass a variable a template patch uses, write `var \"{name}\" … flag=#true` (it goes into PACKER_FLAGS as -var)"
            ),
        };
        problems.push(TemplateProblem {
            code: "kiln::image-builder::unknown-variable",
            label: "not declared by image-builder",
            loc: vloc.unwrap_or(base.release.loc),
            what: format!("var {name} {dir}"),
            message: format!(
                "image-builder {} does not declare variable `{name}` for `{target}`",
                data.version
            ),
            help,
        });
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

/// Per node: the cell it was first lowered for, and which of that cell's id values (as bits
/// over [`id_values`]) every cell sharing the node has too.
type IdSource = (usize, u64);

/// Ids from the values all sharers have in common; a clash falls back to the full cell name.
fn assign_ids(g: &mut DiGraph<Node, ()>, cells: &[Cell], sources: &[IdSource]) {
    let mut taken: HashSet<String> = HashSet::with_capacity(g.node_count());
    for ix in g.node_indices() {
        let node = &g[ix];
        let (cell, mask) = sources[ix.index()];
        let values = id_values(&cells[cell]);
        let base: Vec<&str> = values
            .iter()
            .enumerate()
            .filter(|(i, _)| *i >= 64 || mask & (1 << i) != 0)
            .map(|(_, (_, v))| v.as_str())
            .collect();
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

type BaseKey = (String, String, Vec<usize>);
/// A base's file sections, by (patches, shipped files) taken.
type FilesByUse = HashMap<(bool, bool), Arc<Files>>;

/// Lowers cells to a graph. `digests` holds every path of [`input_paths`]. Cells must name
/// declared providers and releases (see `config::cells::check_images`).
pub fn lower(
    config: &Config,
    cells: Arc<[Cell]>,
    digests: &HashMap<PathBuf, Content>,
) -> Result<Graph, Diags> {
    let tool = config.tools.get("image-builder");
    let pin = tool.map_or(DEFAULT_IMAGE_BUILDER.to_string(), |t| match &t.image {
        Some(image) => format!("{} {image}", t.version),
        None => t.version.clone(),
    });
    let mut diags = Diags::default();
    let version = tool.map_or(DEFAULT_IMAGE_BUILDER, |t| t.version.as_str());
    let image_builder = imagebuilder::data(version);
    let uses_image_builder = config
        .modules
        .values()
        .any(|m| m.steps.iter().any(|s| s.builder.consumes().image_builder));
    if image_builder.is_none() && uses_image_builder {
        let known = imagebuilder::versions();
        let help = match crate::config::diag::suggest(version, known.iter().copied()) {
            Some(s) => format!(
                "did you mean `{s}`? kiln ships image-builder data (make targets, variables) for: {}",
                known.join(", ")
            ),
            None => format!(
                "kiln ships image-builder data (make targets, variables) for: {}; pin one of them",
                known.join(", ")
            ),
        };
        let d = Diag::error(
            "kiln::image-builder::unknown-version",
            format!("kiln knows nothing about image-builder `{version}`"),
        );
        diags.push(match tool {
            Some(t) => d
                .label(&config.sources, t.version_loc, "no data for this version")
                .help(help),
            None => d.help(help),
        });
    }
    let ctx = Ctx {
        digests,
        tools: Arc::new(tools_section([("image-builder".to_string(), pin)].into())),
        no_vars: Arc::new(vars_section(Table::default())),
        no_tools: Arc::new(tools_section(BTreeMap::new())),
        image_builder,
    };

    // What cells share: one base and one set of file sections per provider, release and overrides.
    let mut bases: HashMap<BaseKey, (Base, FilesByUse)> = HashMap::new();
    let mut cell_base: Vec<Option<BaseKey>> = Vec::with_capacity(cells.len());
    for cell in cells.iter() {
        let (Some(p), Some(k)) = (cell.values.get("provider"), cell.values.get("kubernetes"))
        else {
            cell_base.push(None);
            continue;
        };
        let (Some(provider), Some(release)) = (config.providers.get(p), config.releases.get(k))
        else {
            cell_base.push(None);
            continue;
        };
        let overrides: Vec<usize> = provider
            .overrides
            .iter()
            .enumerate()
            .filter(|(_, o)| matches(o, cell))
            .map(|(i, _)| i)
            .collect();
        let key = (p.to_string(), k.to_string(), overrides);
        if !bases.contains_key(&key) {
            let Some(base) = Base::new(config, provider, release, &key.2) else {
                cell_base.push(None);
                continue;
            };
            let mut files = HashMap::new();
            for use_key in [(false, false), (false, true), (true, false), (true, true)] {
                match ctx.files(&base, use_key.0, use_key.1) {
                    Ok(f) => {
                        files.insert(use_key, Arc::new(f));
                    }
                    Err((rel, loc)) => {
                        diags.push(
                            Diag::error(
                                "kiln::config::file-not-found",
                                format!("cannot read `{rel}`"),
                            )
                            .label(&config.sources, loc, "named here")
                            .help("check that the file exists and is readable"),
                        );
                        break;
                    }
                }
            }
            bases.insert(key.clone(), (base, files));
        }
        cell_base.push(Some(key));
    }
    if diags.has_errors() {
        return Err(diags);
    }

    let plans: Vec<Option<CellPlan>> = cells
        .par_iter()
        .zip(cell_base.par_iter())
        .map(|(cell, key)| {
            let (base, files) = bases.get(key.as_ref()?)?;
            Some(ctx.plan_cell(cell, base, files))
        })
        .collect();

    let mut reported: HashSet<(Loc, String)> = HashSet::new();
    let mut g: DiGraph<Node, ()> = DiGraph::with_capacity(cells.len() * 4, cells.len() * 4);
    let mut by_key: HashMap<Digest, NodeIndex> = HashMap::with_capacity(cells.len() * 4);
    let mut shared_vars: HashMap<Digest, Arc<Vars>> = HashMap::new();
    let mut sources: Vec<IdSource> = Vec::with_capacity(cells.len() * 4);
    for (ci, ((cell, plan), key)) in cells.iter().zip(plans).zip(&cell_base).enumerate() {
        let (Some(plan), Some(key)) = (plan, key) else {
            continue;
        };
        for p in plan.problems {
            if reported.insert((p.loc, p.what)) {
                diags.push(
                    Diag::error(p.code, p.message)
                        .label(&config.sources, p.loc, p.label)
                        .help(p.help),
                );
            }
        }
        let provider = bases[key].0.provider_name.clone();
        let cell_name: Arc<str> = cell.name.as_str().into();
        let mut prev: Option<(StepKind, NodeIndex)> = None;
        for mut step in plan.steps {
            let deps: Vec<(StepKind, Digest)> =
                prev.iter().map(|(k, ix)| (*k, g[*ix].key)).collect();
            let key = node_key(step.recipe_digest, &deps);
            let ix = match by_key.get(&key) {
                Some(&ix) => {
                    let node = &mut g[ix];
                    if !node.cells.contains(&cell_name) {
                        node.cells.push(cell_name.clone()); // the same cell in two matrices is one
                    }
                    let (first, mask) = &mut sources[ix.index()];
                    for (i, (k, v)) in id_values(&cells[*first]).iter().enumerate().take(64) {
                        if cell.values.get(k) != Some(v.as_str()) {
                            *mask &= !(1 << i);
                        }
                    }
                    ix
                }
                None => {
                    // Cells with equal variables share one copy.
                    let v = step.recipe.vars.clone();
                    step.recipe.vars = shared_vars.entry(v.digest).or_insert(v).clone();
                    let ix = g.add_node(Node {
                        id: String::new(),
                        step: step.kind,
                        builder: step.builder,
                        provider: provider.clone(),
                        cells: vec![cell_name.clone()],
                        recipe: step.recipe,
                        deps,
                        secrets: step.secrets,
                        policy: step.policy,
                        key,
                        recipe_digest: step.recipe_digest,
                    });
                    sources.push((ci, u64::MAX));
                    by_key.insert(key, ix);
                    if let Some((_, p)) = prev {
                        g.add_edge(p, ix, ());
                    }
                    ix
                }
            };
            prev = Some((step.kind, ix));
        }
    }
    if diags.has_errors() {
        return Err(diags);
    }
    assign_ids(&mut g, &cells, &sources);
    Ok(Graph::new(g, cells))
}
