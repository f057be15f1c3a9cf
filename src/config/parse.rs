//! KDL nodes → typed config items. One function per node kind; cross-file checks are in `check`.

use std::collections::BTreeMap;
use std::path::Path;

use kdl::KdlNode;

use super::kdl::{Reader, args, children, name, props};
use super::model::*;
use super::source::{Loc, Spanned};
use super::step::{BuilderKind, Consumes, ParamType, StepKind};
use crate::matrix::{Axis, MatrixSpec};

/// Lexically normalises `base/rel` (no file-system access): `a/./b/../c` → `a/c`.
pub fn join_normalized(base: &Path, rel: &str) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in base.join(rel).components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// A path written in `file`'s directory, made relative to the config root for keys.
pub fn config_path(
    r: &mut Reader,
    root: &Path,
    file_dir: &Path,
    s: Spanned<String>,
    what: &str,
) -> Option<ConfigPath> {
    let path = join_normalized(file_dir, &s.value);
    let rel = path
        .strip_prefix(root)
        .map(|p| p.to_string_lossy().replace('\\', "/"))
        .unwrap_or_else(|_| path.to_string_lossy().into_owned());
    if !path.exists() {
        r.error_at(
            s.loc,
            "kiln::config::file-not-found",
            format!("{what} `{}` does not exist", s.value),
            "no such file or directory",
            format!(
                "paths are relative to the file that names them; looked for {}",
                path.display()
            ),
        );
        return None;
    }
    let special = std::fs::metadata(&path)
        .ok()
        .filter(|m| !m.is_dir())
        .and_then(|m| super::files::not_regular(&path, &m));
    if let Some(kind) = special {
        r.error_at(
            s.loc,
            "kiln::config::not-a-file",
            format!("{what} `{}` is {kind}, not a regular file", s.value),
            "not a regular file",
            "name a regular file (or, for `ship`, a directory)".into(),
        );
        return None;
    }
    Some(ConfigPath {
        rel,
        path,
        loc: s.loc,
    })
}

/// `tool "NAME" "VERSION" [image="REF"] [source="PATH"] [engine="make"|"docker"|"podman"]`;
/// `source` is relative to `dir`, the directory of the file that names it.
pub fn tool(r: &mut Reader, node: &KdlNode, dir: &Path) -> Option<Tool> {
    r.check_shape(node, &["image", "source", "engine"], false);
    let mut a = args(node);
    let (Some(n), Some(v)) = (a.next(), a.next()) else {
        r.missing(
            node,
            "a name and a version",
            "`tool \"image-builder\" \"v0.1.55\"`",
        );
        return None;
    };
    let name = r.string(n, "a tool name")?;
    let version = r.string(v, "a tool version")?;
    let image = match node.entry("image") {
        Some(e) => Some(r.string(e, "image")?.value),
        None => None,
    };
    let source = match node.entry("source") {
        Some(e) => Some(join_normalized(dir, &r.string(e, "source")?.value)),
        None => None,
    };
    let engine = match node.entry("engine") {
        Some(e) => {
            let s = r.string(e, "engine")?;
            match crate::imagebuilder::Engine::parse(&s.value) {
                Some(engine) => Some(engine),
                None => {
                    r.error_at(
                        s.loc,
                        "kiln::config::unknown",
                        format!("unknown engine `{}`", s.value),
                        "unknown engine",
                        "use engine=\"make\" (a local checkout, with source=), \"docker\" or \"podman\" (the image, with image=)".into(),
                    );
                    return None;
                }
            }
        }
        None => None,
    };
    Some(Tool {
        name: name.value,
        version: version.value,
        image,
        source,
        engine,
        loc: r.node_loc(node),
        version_loc: version.loc,
    })
}

fn is_series(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// A release's `version`: `MAJOR.MINOR.PATCH` within its series.
pub fn check_patch_version(r: &mut Reader, series: &str, v: &Spanned<String>) -> bool {
    let ok = v
        .value
        .strip_prefix(series)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !ok {
        r.error_at(
            v.loc,
            "kiln::config::version",
            format!(
                "version `{}` is not a patch release of series {series}",
                v.value
            ),
            "not MAJOR.MINOR.PATCH of this series",
            format!("write the full version without a leading v, e.g. \"{series}.0\""),
        );
    }
    ok
}

/// `kubernetes "1.31" [track=#true] { version "1.31.4"; revision "1.1"; cni "v1.9.0"; … }`.
/// A tracked release's version comes from images.lock (filled in by the loader).
pub fn release(r: &mut Reader, node: &KdlNode) -> Option<(Release, Option<Loc>)> {
    r.check_shape(node, &["track"], true);
    let series = r.single_string(node, "a release series")?;
    if !is_series(&series.value) {
        r.error_at(
            series.loc,
            "kiln::config::version",
            format!("`{}` is not a Kubernetes series", series.value),
            "expected MAJOR.MINOR",
            "name the series, e.g. \"1.31\"; the patch version goes in `version`".into(),
        );
        return None;
    }
    let tracked = match node.entry("track") {
        Some(e) => r.bool(e, "track")?,
        None => false,
    };
    let mut version: Option<Spanned<String>> = None;
    let mut revision = "1.1".to_string();
    let mut components = BTreeMap::new();
    let allowed = ["version", "revision", "cni", "containerd", "crictl", "runc"];
    for child in children(node) {
        r.check_shape(child, &[], false);
        let n = name(child);
        let Some(value) = r.single_string(child, n) else {
            continue;
        };
        match n {
            "version" => {
                if tracked {
                    r.error_at(
                        value.loc,
                        "kiln::config::tracked-version",
                        format!(
                            "series {} is tracked, so its version comes from images.lock",
                            series.value
                        ),
                        "a version on a tracked series",
                        "remove this line, or remove track=#true to pin the version here".into(),
                    );
                } else if check_patch_version(r, &series.value, &value) {
                    version = Some(value);
                }
            }
            "revision" => revision = value.value,
            other => match Component::parse(other) {
                Some(c) => {
                    components.insert(c, value.value);
                }
                None => r.unknown_node(child, "a `kubernetes` release", &allowed),
            },
        }
    }
    let loc = r.node_loc(node);
    // A `version` that failed to parse was reported already.
    if !tracked && version.is_none() && !children(node).iter().any(|c| name(c) == "version") {
        r.error_at(
            series.loc,
            "kiln::config::missing",
            format!("release {} has no version", series.value),
            "no `version` in this block",
            format!(
                "add `version \"{}.0\"` (quoted) inside the block, or mark it track=#true and pin it in images.lock",
                series.value
            ),
        );
        return None;
    }
    Some((
        Release {
            series: series.value,
            version: version
                .as_ref()
                .map(|v| v.value.clone())
                .unwrap_or_default(),
            revision,
            tracked,
            components,
            loc,
        },
        Some(series.loc),
    ))
}

/// `matrix "NAME" [name="{…}"] { axis "v"…; include k="v"…; exclude k="v"… }`.
pub fn matrix(r: &mut Reader, node: &KdlNode) -> Option<MatrixDecl> {
    r.check_shape(node, &["name"], true);
    let mname = r.single_string(node, "a matrix name")?;
    let name_template = match node.entry("name") {
        Some(e) => Some(r.string(e, "the cell name template")?),
        None => None,
    };
    let mut spec = MatrixSpec {
        name: mname.value,
        axes: Vec::new(),
        excludes: Vec::new(),
        includes: Vec::new(),
        name_template: name_template.as_ref().map(|t| t.value.clone()),
    };
    let mut decl_axis_locs = Vec::new();
    let mut include_locs = Vec::new();
    let mut exclude_locs = Vec::new();
    for child in children(node) {
        let n = name(child);
        match n {
            "include" | "exclude" => {
                r.no_block(child);
                r.no_args(child);
                let mut rule = Vec::new();
                let mut locs = Vec::new();
                for (key, entry) in props(child) {
                    if let Some(v) = r.axis_value(entry, &format!("`{key}`")) {
                        rule.push((key.to_string(), v.value));
                        locs.push(v.loc);
                    }
                }
                let rl = RuleLocs {
                    node: r.node_loc(child),
                    props: locs,
                };
                if n == "include" {
                    spec.includes.push(rule);
                    include_locs.push(rl);
                } else {
                    spec.excludes.push(rule);
                    exclude_locs.push(rl);
                }
            }
            axis => {
                r.check_shape(child, &[], false);
                let mut values = Vec::new();
                let mut locs = Vec::new();
                for e in args(child) {
                    if let Some(v) = r.axis_value(e, &format!("a value of axis `{axis}`")) {
                        values.push(v.value);
                        locs.push(v.loc);
                    }
                }
                spec.axes.push(Axis {
                    name: axis.to_string(),
                    values,
                });
                decl_axis_locs.push((r.node_loc(child), locs));
            }
        }
    }
    Some(MatrixDecl {
        spec,
        loc: mname.loc,
        name_template_loc: name_template.map(|t| t.loc),
        axis_locs: decl_axis_locs,
        include_locs,
        exclude_locs,
    })
}

const OVERLAY_NODES: [&str; 10] = [
    "var", "env", "patch", "ship", "secret", "limit", "retries", "timeout", "debug", "override",
];

fn policy_node(r: &mut Reader, node: &KdlNode, policy: &mut Policy) {
    r.check_shape(node, &[], false);
    let n = name(node);
    let Some(e) = args(node).next() else {
        r.missing(node, "a value", "the value");
        return;
    };
    match n {
        "limit" => policy.limit = r.limit(e).or(policy.limit),
        "retries" => policy.retries = r.u32(e, "retries").or(policy.retries),
        "debug" => policy.debug = r.bool(e, "debug").or(policy.debug),
        _ => policy.timeout = r.duration(e, "timeout").or(policy.timeout),
    }
}

/// `env "NAME" "VALUE"`: a plain, non-secret environment variable of the steps, part of their
/// key. Stored among the variables under [`crate::imagebuilder::ENV_PREFIX`].
fn env(r: &mut Reader, node: &KdlNode, vars: &mut BTreeMap<String, Spanned<Value>>) {
    r.check_shape(node, &[], false);
    let entries: Vec<_> = args(node).collect();
    let [n, v] = entries.as_slice() else {
        r.error_at(
            r.node_loc(node),
            "kiln::config::missing",
            "`env` takes a name and a value".into(),
            "expected `env \"NAME\" \"VALUE\"`",
            "write e.g. `env \"FLATCAR_VERSION\" \"4152.2.3\"`; a secret goes in `secret`".into(),
        );
        return;
    };
    let (Some(ename), Some(value)) = (
        r.string(n, "an environment variable name"),
        r.string(v, "an environment variable's value"),
    ) else {
        return;
    };
    if let Err(why) = crate::imagebuilder::check_env_name(&ename.value) {
        r.error_at(
            ename.loc,
            "kiln::config::env",
            format!("`env \"{}\"`: {why}", ename.value),
            "not an environment variable kiln can set",
            "name a variable of letters, digits and `_` that kiln does not set itself".into(),
        );
        return;
    }
    let key = format!("{}{}", crate::imagebuilder::ENV_PREFIX, ename.value);
    if let Some(prev) = vars.get(&key) {
        r.duplicate(&format!("`env \"{}\"`", ename.value), prev.loc, ename.loc);
    }
    vars.insert(key, Spanned::new(Value::Str(value.value), value.loc));
}

/// `var "NAME" VALUE… [flag=#true]`. A flag variable goes on packer's command line
/// (`-var NAME=VALUE`) instead of into the var file; it is stored under
/// [`crate::imagebuilder::FLAG_PREFIX`].
fn var(r: &mut Reader, node: &KdlNode, vars: &mut BTreeMap<String, Spanned<Value>>) {
    r.check_shape(node, &["flag"], false);
    let flag = match node.entry("flag") {
        Some(e) => r.bool(e, "flag").unwrap_or(false),
        None => false,
    };
    let mut a = args(node);
    let Some(n) = a.next() else {
        r.missing(
            node,
            "a variable name and value",
            "`var \"name\" \"value\"`",
        );
        return;
    };
    let Some(vname) = r.string(n, "a variable name") else {
        return;
    };
    let rest: Vec<_> = a.collect();
    let value = match rest.as_slice() {
        [] => {
            r.missing(node, "a value", "the value");
            return;
        }
        [one] => r.value(one, &format!("variable `{}`", vname.value)),
        many => many
            .iter()
            .map(|e| {
                r.string(e, &format!("variable `{}`", vname.value))
                    .map(|s| s.value)
            })
            .collect::<Option<Vec<_>>>()
            .map(Value::List),
    };
    if let Some(value) = value {
        // The value's span: a placeholder error in it points there.
        let loc = match (rest.first(), rest.last()) {
            (Some(first), Some(last)) => {
                let start = first.span().offset();
                let end = last.span().offset() + last.span().len();
                r.loc((start, end - start).into())
            }
            _ => vname.loc,
        };
        let key = if flag {
            format!("{}{}", crate::imagebuilder::FLAG_PREFIX, vname.value)
        } else {
            vname.value.clone()
        };
        if let Some(prev) = vars.get(&key) {
            let what = format!("variable `{}`", vname.value);
            r.duplicate(&what, prev.loc, loc);
        }
        vars.insert(key, Spanned::new(value, loc));
    }
}

/// `secret "NAME" var="VARIABLE"`: packer's user variable VARIABLE takes the secret's value
/// from the environment, as image-builder's own `hcloud-config.json` takes `token` from
/// `HCLOUD_TOKEN`: a flag variable `-var 'VARIABLE={{env `NAME`}}'`, so the value itself is in
/// no argv, var file or key; only its name is.
fn secret_var(
    r: &mut Reader,
    secret: &str,
    var: Spanned<String>,
    vars: &mut BTreeMap<String, Spanned<Value>>,
) {
    let key = format!("{}{}", crate::imagebuilder::FLAG_PREFIX, var.value);
    if let Some(prev) = vars.get(&key) {
        r.duplicate(&format!("variable `{}`", var.value), prev.loc, var.loc);
    }
    // `{{` is a literal brace in kiln's templates.
    let reference = format!("{{{{{{{{env `{secret}`}}}}}}}}");
    vars.insert(key, Spanned::new(Value::Str(reference), var.loc));
}

/// Reads the nodes a provider block and its overrides share; returns the nodes it did not know.
pub fn overlay<'n>(
    r: &mut Reader,
    root: &Path,
    dir: &Path,
    nodes: &'n [KdlNode],
    out: &mut Overlay,
) -> Vec<&'n KdlNode> {
    let mut rest = Vec::new();
    for node in nodes {
        match name(node) {
            "var" => var(r, node, &mut out.vars),
            "env" => env(r, node, &mut out.vars),
            "limit" | "retries" | "timeout" | "debug" => policy_node(r, node, &mut out.policy),
            "patch" => {
                r.check_shape(node, &["op"], false);
                let Some(file) = r.single_string(node, "a patch file") else {
                    continue;
                };
                let op = match node.entry("op") {
                    None => Some(PatchOp::Append),
                    Some(e) => match r.string(e, "op").map(|s| s.value).as_deref() {
                        Some("append") => Some(PatchOp::Append),
                        Some("merge") => Some(PatchOp::Merge),
                        Some(other) => {
                            r.error_at(
                                r.entry_loc(e),
                                "kiln::config::unknown",
                                format!("unknown patch op `{other}`"),
                                "unknown op",
                                "use op=\"append\" (append to arrays, like jq's +=) or op=\"merge\" (RFC 7396)".into(),
                            );
                            None
                        }
                        None => None,
                    },
                };
                if let (Some(file), Some(op)) = (config_path(r, root, dir, file, "patch file"), op)
                {
                    out.patches.push(Patch { file, op });
                }
            }
            "ship" => {
                r.check_shape(node, &["to"], false);
                let Some(from) = r.single_string(node, "a file or directory") else {
                    continue;
                };
                let Some(to) = node.entry("to") else {
                    r.error_at(
                        r.node_loc(node),
                        "kiln::config::missing",
                        "`ship` needs a destination".into(),
                        "no to=",
                        "add to=\"path/in/the/build\", e.g. to=\"packer/hcloud/scripts\"".into(),
                    );
                    continue;
                };
                let Some(to) = r.string(to, "to") else {
                    continue;
                };
                if let Some(why) = super::files::unsafe_relative(&to.value) {
                    r.error_at(
                        to.loc,
                        "kiln::config::path-escapes",
                        format!(
                            "`to=\"{}\"` is not a path inside the staged tree: {why}",
                            to.value
                        ),
                        "outside the staged tree",
                        "write a relative path without `..`, e.g. to=\"packer/hcloud/scripts\""
                            .into(),
                    );
                    continue;
                }
                if let Some(from) = config_path(r, root, dir, from, "shipped path") {
                    let project =
                        std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
                    if let Err(problem) =
                        super::files::check_tree(&project, &from.path, Path::new(&from.rel))
                    {
                        let help = match problem {
                            super::files::TreeProblem::Escapes { .. } => {
                                "ship files from inside the project (the directory of images.kdl); copy what you need there"
                            }
                            super::files::TreeProblem::Special { .. } => {
                                "ship regular files and directories only"
                            }
                            _ => "fix or remove the symlink",
                        };
                        r.error_at(
                            from.loc,
                            "kiln::config::ship-unsafe",
                            format!("cannot ship `{}`: {problem}", from.rel),
                            "shipped here",
                            help.into(),
                        );
                        continue;
                    }
                    let is_dir = from.path.is_dir();
                    out.files.push(Ship {
                        from,
                        to: to.value,
                        is_dir,
                    });
                }
            }
            "secret" => {
                r.check_shape(node, &["env", "file", "var"], false);
                let Some(sname) = r.single_string(node, "a secret name") else {
                    continue;
                };
                if let Some(e) = node.entry("var") {
                    let Some(vname) = r.string(e, "var") else {
                        continue;
                    };
                    secret_var(r, &sname.value, vname, &mut out.vars);
                }
                let source = match (node.entry("env"), node.entry("file")) {
                    (Some(_), Some(f)) => {
                        r.error_at(
                            r.entry_loc(f),
                            "kiln::config::extra",
                            "a secret comes from env= or file=, not both".into(),
                            "second source",
                            "keep one of env= and file=".into(),
                        );
                        continue;
                    }
                    (Some(e), None) => match r.string(e, "env") {
                        Some(s) => SecretSource::Env(s.value),
                        None => continue,
                    },
                    (None, Some(f)) => match r.string(f, "file") {
                        Some(s) => {
                            let path = join_normalized(dir, &s.value);
                            let special = std::fs::metadata(&path)
                                .ok()
                                .and_then(|m| super::files::not_regular(&path, &m));
                            if let Some(what) = special {
                                r.error_at(
                                    s.loc,
                                    "kiln::config::secret-file",
                                    format!(
                                        "secret file `{}` is {what}, not a regular file",
                                        s.value
                                    ),
                                    "read as the secret",
                                    "point file= at a regular file holding the secret".into(),
                                );
                                continue;
                            }
                            SecretSource::File(path)
                        }
                        None => continue,
                    },
                    (None, None) => SecretSource::Env(sname.value.clone()),
                };
                out.secrets.push(Secret {
                    name: sname.value,
                    source,
                });
            }
            _ => rest.push(node),
        }
    }
    rest
}

/// Settings: nodes that are not overlay keywords, checked against the module later.
fn settings(r: &mut Reader, nodes: Vec<&KdlNode>, out: &mut Overlay) {
    for node in nodes {
        r.check_shape(node, &[], false);
        let key = name(node).to_string();
        if let Some(v) = r.values(node, &format!("setting `{key}`")) {
            if let Some(prev) = out.settings.get(&key) {
                r.duplicate(&format!("setting `{key}`"), prev.loc, v.loc);
            }
            out.settings.insert(key, v);
        }
    }
}

/// `provider "NAME" [module="M"] { var…; patch…; ship…; secret…; override k="v" { … }; SETTING v… }`.
pub fn provider(r: &mut Reader, root: &Path, dir: &Path, node: &KdlNode) -> Option<Provider> {
    r.check_shape(node, &["module"], true);
    let pname = r.single_string(node, "a provider name")?;
    let module = match node.entry("module") {
        Some(e) => r.string(e, "module")?,
        None => pname.clone(),
    };
    let mut body = Overlay::default();
    let mut overrides = Vec::new();
    let rest = overlay(r, root, dir, children(node), &mut body);
    let mut plain = Vec::new();
    let mut aliases: Vec<Spanned<String>> = Vec::new();
    for node in rest {
        if name(node) == "alias" {
            r.check_shape(node, &[], false);
            if let Some(a) = r.single_string(node, "an alias name") {
                if let Some(prev) = aliases.iter().find(|p| p.value == a.value) {
                    let (first, second) = (prev.loc, a.loc);
                    r.duplicate(&format!("alias `{}`", a.value), first, second);
                }
                aliases.push(a);
            }
            continue;
        }
        if name(node) != "override" {
            plain.push(node);
            continue;
        }
        r.no_args(node);
        let mut when = Vec::new();
        for (key, entry) in props(node) {
            if let Some(v) = r.axis_value(entry, &format!("`{key}`")) {
                when.push((Spanned::new(key.to_string(), v.loc), v));
            }
        }
        if when.is_empty() {
            r.error_at(
                r.node_loc(node),
                "kiln::config::missing",
                "`override` needs at least one axis=value property".into(),
                "matches every cell",
                "say which cells it applies to, e.g. `override os=\"flatcar\" { … }`".into(),
            );
            continue;
        }
        let mut ob = Overlay::default();
        let orest = overlay(r, root, dir, children(node), &mut ob);
        let (nested, orest): (Vec<_>, Vec<_>) =
            orest.into_iter().partition(|n| name(n) == "override");
        for n in nested {
            r.unknown_node(
                n,
                "an `override` block (overrides do not nest)",
                &OVERLAY_NODES[..7],
            );
        }
        settings(r, orest, &mut ob);
        overrides.push(Override {
            when,
            body: ob,
            loc: r.node_loc(node),
        });
    }
    settings(r, plain, &mut body);
    Some(Provider {
        name: pname.value,
        aliases,
        module,
        body,
        overrides,
        loc: pname.loc,
    })
}

fn param_value(r: &mut Reader, node: &KdlNode, ty: ParamType) -> Option<Spanned<Value>> {
    let what = format!("parameter `{}`", name(node));
    let v = r.values(node, &what)?;
    let ok = matches!(
        (ty, &v.value),
        (ParamType::Str, Value::Str(_))
            | (ParamType::List, Value::Str(_) | Value::List(_))
            | (ParamType::Bool, Value::Bool(_))
            | (ParamType::Int, Value::Int(_))
    );
    if !ok {
        r.error_at(
            v.loc,
            "kiln::config::type",
            format!("{what} must be {}", ty.describe()),
            "wrong type",
            format!("give {what} {}", ty.describe()),
        );
        return None;
    }
    Some(match (ty, v.value) {
        (ParamType::List, Value::Str(s)) => Spanned::new(Value::List(vec![s]), v.loc),
        (_, value) => Spanned::new(value, v.loc),
    })
}

/// `step "build" builder="image-builder" [retries=1 timeout="2h" limit=2] { PARAM v… }`.
fn step(r: &mut Reader, node: &KdlNode) -> Option<StepDecl> {
    r.check_shape(
        node,
        &["builder", "retries", "timeout", "limit", "debug", "inputs"],
        true,
    );
    let kind_s = r.single_string(node, "a step kind")?;
    let Some(kind) = StepKind::parse(&kind_s.value) else {
        let kinds: Vec<&str> = StepKind::ALL.iter().map(|k| k.as_str()).collect();
        r.error_at(
            kind_s.loc,
            "kiln::config::unknown",
            format!("unknown step kind `{}`", kind_s.value),
            "unknown step",
            super::diag::did_you_mean(&kind_s.value, &kinds, "step"),
        );
        return None;
    };
    let Some(b) = node.entry("builder") else {
        r.error_at(
            kind_s.loc,
            "kiln::config::missing",
            format!("step `{kind}` names no builder"),
            "no builder=",
            format!(
                "add builder=\"…\", one of: {}",
                BuilderKind::names().join(", ")
            ),
        );
        return None;
    };
    let bname = r.string(b, "builder")?;
    let Some(builder) = BuilderKind::parse(&bname.value) else {
        r.error_at(
            bname.loc,
            "kiln::config::unknown-builder",
            format!("unknown builder `{}`", bname.value),
            "unknown builder",
            super::diag::did_you_mean(&bname.value, &BuilderKind::names(), "builder"),
        );
        return None;
    };
    let mut policy = Policy::default();
    if let Some(e) = node.entry("retries") {
        policy.retries = r.u32(e, "retries");
    }
    if let Some(e) = node.entry("limit") {
        policy.limit = r.limit(e);
    }
    if let Some(e) = node.entry("timeout") {
        policy.timeout = r.duration(e, "timeout");
    }
    if let Some(e) = node.entry("debug") {
        policy.debug = r.bool(e, "debug");
    }
    let mut consumes = builder.consumes();
    if let Some(e) = node.entry("inputs") {
        let s = r.string(e, "inputs")?;
        let mut c = Consumes {
            image_builder: consumes.image_builder,
            ..Consumes::default()
        };
        for word in s.value.split([',', ' ']).filter(|w| !w.is_empty()) {
            match word {
                "vars" => c.vars = true,
                "files" => c.files = true,
                "patches" => c.patches = true,
                "secrets" => c.secrets = true,
                other => {
                    r.error_at(
                        s.loc,
                        "kiln::config::unknown",
                        format!("unknown input kind `{other}`"),
                        "unknown input kind",
                        "inputs= lists some of: vars, files, patches, secrets (e.g. inputs=\"vars,secrets\")".into(),
                    );
                    return None;
                }
            }
        }
        consumes = c;
    }
    let specs = builder.params();
    let mut params = BTreeMap::new();
    let mut secrets: Option<Vec<String>> = None;
    for child in children(node) {
        let pn = name(child);
        // Not parameters: what every step may say about how it runs.
        match pn {
            "env" => {
                env(r, child, &mut params);
                continue;
            }
            "debug" => {
                policy_node(r, child, &mut policy);
                continue;
            }
            "secrets" => {
                r.check_shape(child, &[], false);
                let mut names = Vec::new();
                for e in args(child) {
                    if let Some(n) = r.string(e, "a secret name") {
                        names.push(n.value);
                    }
                }
                secrets = Some(names);
                continue;
            }
            _ => {}
        }
        r.check_shape(child, &[], false);
        let Some(spec) = specs.iter().find(|s| s.name == pn) else {
            let mut names: Vec<&str> = specs.iter().map(|s| s.name).collect();
            names.extend(["env", "debug", "secrets"]);
            r.unknown_node(child, &format!("a `{builder}` step"), &names);
            continue;
        };
        if let Some(v) = param_value(r, child, spec.ty) {
            if let Some(prev) = params.get(pn) {
                let prev: &Spanned<Value> = prev;
                r.duplicate(&format!("parameter `{pn}`"), prev.loc, r.node_loc(child));
            }
            params.insert(pn.to_string(), v);
        }
    }
    for spec in specs.iter().filter(|s| s.required) {
        if !params.contains_key(spec.name) {
            r.error_at(
                kind_s.loc,
                "kiln::config::missing",
                format!("step `{kind}` ({builder}) needs parameter `{}`", spec.name),
                "parameter missing in this step",
                format!("add `{} …` inside the step: {}", spec.name, spec.doc),
            );
        }
    }
    Some(StepDecl {
        kind,
        builder,
        consumes,
        params,
        secrets,
        policy,
        loc: kind_s.loc,
    })
}

/// `module "NAME" { setting "x" [required=#true] [default=…]; var…; limit…; step… }`.
pub fn module(r: &mut Reader, node: &KdlNode) -> Option<Module> {
    r.check_shape(node, &[], true);
    let mname = r.single_string(node, "a module name")?;
    let mut m = Module {
        name: mname.value,
        settings: BTreeMap::new(),
        vars: BTreeMap::new(),
        steps: Vec::new(),
        policy: Policy::default(),
        loc: mname.loc,
    };
    for child in children(node) {
        match name(child) {
            "var" => var(r, child, &mut m.vars),
            "env" => env(r, child, &mut m.vars),
            "limit" | "retries" | "timeout" | "debug" => policy_node(r, child, &mut m.policy),
            "setting" => {
                r.check_shape(child, &["required", "default"], false);
                let Some(sname) = r.single_string(child, "a setting name") else {
                    continue;
                };
                let required = match child.entry("required") {
                    Some(e) => r.bool(e, "required").unwrap_or(false),
                    None => false,
                };
                let default = match child.entry("default") {
                    Some(e) => r.value(e, "default"),
                    None => None,
                };
                if let Some(prev) = m.settings.get(&sname.value) {
                    r.duplicate(&format!("setting `{}`", sname.value), prev.loc, sname.loc);
                }
                m.settings.insert(
                    sname.value.clone(),
                    SettingDecl {
                        name: sname.value,
                        default,
                        required,
                        loc: sname.loc,
                    },
                );
            }
            "step" => {
                if let Some(s) = step(r, child) {
                    if let Some(prev) = m.steps.iter().find(|p| p.kind == s.kind) {
                        r.duplicate(&format!("step `{}`", s.kind), prev.loc, s.loc);
                        continue;
                    }
                    m.steps.push(s);
                }
            }
            _ => r.unknown_node(
                child,
                "a `module` block",
                &[
                    "setting", "var", "env", "step", "limit", "retries", "timeout", "debug",
                ],
            ),
        }
    }
    // A step that failed to parse was reported already.
    if m.steps.is_empty() && !children(node).iter().any(|c| name(c) == "step") {
        r.error_at(
            m.loc,
            "kiln::config::missing",
            format!("module `{}` declares no steps", m.name),
            "no `step` in this module",
            "declare at least a build step: `step \"build\" builder=\"…\" { … }`".into(),
        );
    }
    Some(m)
}
