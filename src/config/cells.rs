//! Expands every matrix of a config into cells and checks what the cells name: providers,
//! Kubernetes releases, and the axis values that provider overrides match.

use std::collections::BTreeSet;

use super::diag::{Diag, Diags, did_you_mean};
use super::model::{Config, MatrixDecl};
use super::source::Loc;
use crate::matrix::{self, Cell, MatrixError, MatrixWarning, RuleKind};

fn rule_loc(decl: &MatrixDecl, kind: RuleKind, rule: usize, prop: Option<usize>) -> Loc {
    let locs = match kind {
        RuleKind::Include => &decl.include_locs,
        RuleKind::Exclude => &decl.exclude_locs,
    };
    match locs.get(rule) {
        Some(r) => prop.and_then(|p| r.props.get(p).copied()).unwrap_or(r.node),
        None => decl.loc,
    }
}

fn matrix_error(config: &Config, decl: &MatrixDecl, err: &MatrixError) -> Diag {
    let s = &config.sources;
    let template_loc = decl.name_template_loc.unwrap_or(decl.loc);
    // The suggestion goes in the help line, not in the message as well.
    let message = match err {
        MatrixError::UnknownExcludeKey { exclude, key, .. } => {
            format!(
                "exclude {} names `{key}`, which is not an axis",
                exclude + 1
            )
        }
        MatrixError::UnknownExcludeValue {
            exclude,
            axis,
            value,
            ..
        } => {
            format!(
                "exclude {} names `{axis}={value}`, but axis `{axis}` has no value `{value}`",
                exclude + 1
            )
        }
        MatrixError::UnknownPlaceholder { placeholder, .. } => {
            format!(
                "name template uses `{{{placeholder}}}`, but no axis or include provides `{placeholder}`"
            )
        }
        other => other.to_string(),
    };
    let d = Diag::error("kiln::matrix", message);
    match err {
        MatrixError::EmptyMatrix { .. } | MatrixError::AllCombinationsExcluded => d
            .label(s, decl.loc, "this matrix has no cells")
            .help("declare axes such as `provider \"aws\"`, or remove excludes"),
        MatrixError::EmptyAxis { axis, .. } => d
            .label(s, decl.axis_locs[*axis].0, "no values")
            .help("list the axis values after its name, e.g. `os \"ubuntu-2404\" \"flatcar\"`"),
        MatrixError::DuplicateAxis { first, second, .. } => d
            .label(s, decl.axis_locs[*second].0, "declared again here")
            .label(s, decl.axis_locs[*first].0, "first declared here")
            .help("list all of an axis's values on one line"),
        MatrixError::EmptyRule { kind, rule } => d
            .label(s, rule_loc(decl, *kind, *rule, None), "no properties")
            .help(format!("write axis=value properties, e.g. `{kind} provider=\"aws\" os=\"flatcar\"`")),
        MatrixError::DuplicateKey { kind, rule, second, .. } => d
            .label(s, rule_loc(decl, *kind, *rule, Some(*second)), "named again here")
            .help("a rule names each key once"),
        MatrixError::UnknownExcludeKey { exclude, property, suggestion, .. } => {
            let axes: Vec<&str> = decl.spec.axes.iter().map(|a| a.name.as_str()).collect();
            d.label(s, rule_loc(decl, RuleKind::Exclude, *exclude, Some(*property)), "not an axis of this matrix")
                .help(match suggestion {
                    Some(x) => format!("did you mean `{x}`?"),
                    None => format!("excludes match axes: {}", axes.join(", ")),
                })
        }
        MatrixError::UnknownExcludeValue { exclude, property, axis, suggestion, .. } => {
            let values = decl
                .spec
                .axes
                .iter()
                .find(|a| &a.name == axis)
                .map(|a| a.values.join(", "))
                .unwrap_or_default();
            d.label(s, rule_loc(decl, RuleKind::Exclude, *exclude, Some(*property)), "no such value")
                .help(match suggestion {
                    Some(x) => format!("did you mean `{x}`?"),
                    None => format!("axis `{axis}` has: {values}"),
                })
        }
        MatrixError::UnbalancedTemplate { .. } | MatrixError::EmptyPlaceholder { .. } => d
            .label(s, template_loc, "invalid template")
            .help("placeholders are written {axis}; write {{ or }} for a literal brace"),
        MatrixError::UnknownPlaceholder { suggestion, .. } => d
            .label(s, template_loc, "unknown placeholder")
            .help(match suggestion {
                Some(x) => format!("did you mean `{{{x}}}`?"),
                None => "use the name of an axis or of an include property".into(),
            }),
        MatrixError::DuplicateCellName { .. } => d
            .label(s, template_loc, "this template gives two cells one name")
            .help("use every axis that varies in the name template, e.g. name=\"{provider}-{os}-k8s-{kubernetes}-{arch}\""),
    }
}

fn warning(config: &Config, decl: &MatrixDecl, w: &MatrixWarning) -> Diag {
    let s = &config.sources;
    match w {
        MatrixWarning::ExcludeMatchesNothing { exclude } => {
            Diag::warning("kiln::matrix::unused-exclude", format!("exclude {} matches no combination", exclude + 1))
                .label(s, rule_loc(decl, RuleKind::Exclude, *exclude, None), "removes nothing")
                .help("check its values, or delete it")
        }
        MatrixWarning::IncludeAppended { include } => Diag::warning(
            "kiln::matrix::unmatched-include",
            format!("include {} matches no combination, so it was added as a cell of its own", include + 1),
        )
        .label(s, rule_loc(decl, RuleKind::Include, *include, None), "added as a new cell")
        .help("if it was meant to extend existing cells, check that its axis values are spelled as the axes declare them"),
    }
}

/// Where a cell's `key=value` was written: an axis value, or an include property.
pub fn value_loc(decl: &MatrixDecl, key: &str, value: &str) -> Loc {
    for (axis, (_, locs)) in decl.spec.axes.iter().zip(&decl.axis_locs) {
        if axis.name == key
            && let Some(i) = axis.values.iter().position(|v| v == value)
        {
            return locs[i];
        }
    }
    for (rule, locs) in decl.spec.includes.iter().zip(&decl.include_locs) {
        if let Some(i) = rule.iter().position(|(k, v)| k == key && v == value) {
            return locs.props.get(i).copied().unwrap_or(locs.node);
        }
    }
    decl.loc
}

/// Every matrix's cells, in declaration order, plus warnings; or every error. Axes are generic
/// here: what `provider` and `kubernetes` mean is checked by [`check_images`].
pub fn expand_all(config: &Config) -> Result<(Vec<Cell>, Diags), Diags> {
    let mut diags = Diags::default();
    let mut cells = Vec::new();
    for decl in &config.matrices {
        match matrix::expand(&decl.spec) {
            Ok(exp) => {
                for w in &exp.warnings {
                    diags.push(warning(config, decl, w));
                }
                let template_loc = decl.name_template_loc.unwrap_or(decl.loc);
                if let Some((cell, why)) = exp
                    .cells
                    .iter()
                    .find_map(|c| super::files::unsafe_name(&c.name).map(|w| (c, w)))
                {
                    diags.push(
                        Diag::error(
                            "kiln::matrix::unsafe-name",
                            format!("cell name `{}` cannot name a file: {why}", cell.name.escape_debug()),
                        )
                        .label(&config.sources, template_loc, "this template gives it")
                        .help("cell names become file and object names: build them from values without `..`, a leading `/` or control characters"),
                    );
                }
                cells.extend(exp.cells);
            }
            Err(e) => diags.push(matrix_error(config, decl, &e)),
        }
    }
    let mut seen: std::collections::HashMap<&str, &Cell> = Default::default();
    let mut reported = BTreeSet::new();
    for c in &cells {
        match seen.get(c.name.as_str()) {
            Some(first) if first.values != c.values && reported.insert(c.name.as_str()) => {
                let loc_of = |m: &str| {
                    config
                        .matrices
                        .iter()
                        .find(|d| d.spec.name == m)
                        .map(|d| d.name_template_loc.unwrap_or(d.loc))
                };
                let mut d = Diag::error(
                    "kiln::matrix::duplicate-cell-name",
                    format!(
                        "matrices `{}` and `{}` both have a cell named `{}`, with different values",
                        first.matrix, c.matrix, c.name
                    ),
                );
                if let Some(l) = loc_of(&first.matrix) {
                    d = d.label(&config.sources, l, "names a cell here");
                }
                if let Some(l) = loc_of(&c.matrix) {
                    d = d.label(&config.sources, l, "gives a different cell the same name");
                }
                diags.push(d.help(
                    "give the matrices name templates that differ, e.g. name=\"nightly-{provider}-{os}-k8s-{kubernetes}\"",
                ));
            }
            Some(_) => {}
            None => {
                seen.insert(&c.name, c);
            }
        }
    }
    if diags.has_errors() {
        Err(diags)
    } else {
        Ok((cells, diags))
    }
}

/// Before cells become images: the providers and releases they name must be declared, and
/// provider overrides must match values some cell has.
pub fn check_images(config: &Config, cells: &[Cell]) -> Result<(), Diags> {
    let mut diags = Diags::default();
    check_cells(config, cells, &mut diags);
    if diags.has_errors() {
        Err(diags)
    } else {
        Ok(())
    }
}

fn check_cells(config: &Config, cells: &[Cell], diags: &mut Diags) {
    let s = &config.sources;
    let providers: Vec<&str> = config.providers.keys().map(String::as_str).collect();
    let releases: Vec<&str> = config.releases.keys().map(String::as_str).collect();
    let mut reported = BTreeSet::new();
    for cell in cells {
        let Some(decl) = config.matrices.iter().find(|m| m.spec.name == cell.matrix) else {
            continue;
        };
        for (key, known, what) in [
            ("provider", &providers, "provider"),
            ("kubernetes", &releases, "kubernetes release"),
        ] {
            let declared = |v: &str| match key {
                "provider" => config.providers.contains_key(v),
                _ => config.releases.contains_key(v),
            };
            match cell.values.get(key) {
                Some(v) if !declared(v) => {
                    if reported.insert((key, v.to_string())) {
                        let declare = match key {
                            "provider" => format!("declare `provider \"{v}\" {{ … }}`"),
                            _ => format!("declare `kubernetes \"{v}\" {{ version \"{v}.0\" }}`"),
                        };
                        let hint = match super::diag::suggest(v, known.iter().copied()) {
                            Some(s) => format!("did you mean `{s}`? Otherwise {declare}"),
                            None => format!("{declare}; declared: {}", known.join(", ")),
                        };
                        diags.push(
                            Diag::error(
                                "kiln::config::unknown-value",
                                format!(
                                    "cell `{}` names {what} `{v}`, which is not declared",
                                    cell.name
                                ),
                            )
                            .label(s, value_loc(decl, key, v), format!("unknown {what}"))
                            .help(hint),
                        );
                    }
                }
                Some(_) => {}
                None => {
                    if reported.insert((key, format!("missing in {}", cell.name))) {
                        diags.push(
                            Diag::error("kiln::config::missing", format!("cell `{}` has no `{key}` value", cell.name))
                                .label(s, decl.loc, format!("a cell of this matrix lacks `{key}`"))
                                .help(format!("every image needs kubernetes and provider: add a `{key}` axis, or `{key}=…` to the include that made this cell")),
                        );
                    }
                }
            }
        }
    }
    // Override selectors must name axis values that some cell has.
    for p in config.providers.values() {
        for o in &p.overrides {
            for (key, value) in &o.when {
                let values: BTreeSet<&str> = cells
                    .iter()
                    .filter(|c| c.values.get("provider") == Some(p.name.as_str()))
                    .filter_map(|c| c.values.get(&key.value))
                    .collect();
                if values.contains(value.value.as_str()) {
                    continue;
                }
                let (msg, label, help) = if values.is_empty() {
                    let keys: BTreeSet<&str> = cells.iter().flat_map(|c| c.values.keys()).collect();
                    let keys: Vec<&str> = keys.into_iter().collect();
                    (
                        format!(
                            "override matches on `{}`, which no cell of provider `{}` has",
                            key.value, p.name
                        ),
                        "unknown axis",
                        did_you_mean(&key.value, &keys, "axis"),
                    )
                } else {
                    let vals: Vec<&str> = values.into_iter().collect();
                    (
                        format!(
                            "no cell of provider `{}` has {}=\"{}\"",
                            p.name, key.value, value.value
                        ),
                        "no such value",
                        did_you_mean(&value.value, &vals, "value"),
                    )
                };
                diags.push(
                    Diag::error("kiln::config::unknown-value", msg)
                        .label(s, value.loc, label)
                        .help(help),
                );
            }
        }
    }
}
