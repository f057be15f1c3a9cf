//! Expands a matrix declaration into cells, with exactly the semantics of GitHub Actions'
//! `strategy.matrix`.
//!
//! Axis names carry no meaning here: an axis is a name and a list of values. The expansion is
//!
//! 1. the cartesian product of the axes, the first axis varying slowest;
//! 2. minus every combination matched by an exclude (a partial match: an exclude only constrains
//!    the keys it names);
//! 3. extended by the includes, in order: an include's pairs are added to every remaining
//!    combination in which they overwrite no *original* axis value (values added by earlier
//!    includes may be overwritten); an include that fits no combination becomes a cell of its
//!    own.
//!
//! Nothing here knows about source locations: errors and warnings name axes and rules by their
//! index in the [`MatrixSpec`], and the caller maps those back to spans.

use std::collections::HashMap;
use std::fmt;

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::template::{Segment, TemplateError};

/// The name template used when a matrix declares none.
pub const DEFAULT_NAME_TEMPLATE: &str = "{provider}-{os}-k8s-{kubernetes}";

/// A matrix declaration, as read from the config.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MatrixSpec {
    /// The matrix's name, e.g. `release`.
    pub name: String,
    /// The axes in declared order; the first axis varies slowest.
    pub axes: Vec<Axis>,
    pub excludes: Vec<Props>,
    pub includes: Vec<Props>,
    /// `None` means [`DEFAULT_NAME_TEMPLATE`].
    pub name_template: Option<String>,
}

/// One dimension of a matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Axis {
    pub name: String,
    pub values: Vec<String>,
}

/// The key/value pairs of an include or exclude, in source order.
pub type Props = Vec<(String, String)>;

/// An ordered map from key to value: the original axes in declared order, then the keys added by
/// includes in the order they were first added.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Values(Vec<(String, String)>);

impl Values {
    pub fn new() -> Values {
        Values(Vec::new())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`, keeping the key's position if it is already present and appending
    /// it otherwise.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_slice(&self) -> &[(String, String)] {
        &self.0
    }
}

impl FromIterator<(String, String)> for Values {
    /// Later pairs overwrite earlier ones with the same key, as [`Values::insert`] does.
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Values {
        let mut values = Values::new();
        for (k, v) in iter {
            values.insert(k, v);
        }
        values
    }
}

impl Serialize for Values {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// One expanded combination of a matrix.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Cell {
    pub matrix: String,
    pub name: String,
    pub values: Values,
}

/// The result of [`expand`]: the cells in order, and what looked suspicious on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expansion {
    pub cells: Vec<Cell>,
    pub warnings: Vec<MatrixWarning>,
}

/// Something legal but probably unintended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatrixWarning {
    /// The exclude removed no combination: it matches none, or only ones that earlier excludes
    /// already removed.
    ExcludeMatchesNothing { exclude: usize },
    /// The include fit no combination, so it was appended as a cell of its own.
    IncludeAppended { include: usize },
}

impl fmt::Display for MatrixWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MatrixWarning::ExcludeMatchesNothing { exclude } => write!(
                f,
                "exclude {} removes no combination of the axes",
                exclude + 1
            ),
            MatrixWarning::IncludeAppended { include } => write!(
                f,
                "include {} fits no combination without overwriting an axis value, \
                 so it was added as a cell of its own",
                include + 1
            ),
        }
    }
}

/// Whether a rule is an include or an exclude.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    Include,
    Exclude,
}

impl fmt::Display for RuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuleKind::Include => "include",
            RuleKind::Exclude => "exclude",
        })
    }
}

/// Why a matrix cannot be expanded. Indices are 0-based positions in the [`MatrixSpec`]'s lists;
/// `property` is the position of a pair inside its rule, and `offset` a byte offset into the
/// template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatrixError {
    #[error("matrix `{matrix}` declares no axes and no includes, so it has no cells")]
    EmptyMatrix { matrix: String },

    #[error("axis `{name}` has no values")]
    EmptyAxis { axis: usize, name: String },

    #[error("axis `{name}` is declared twice")]
    DuplicateAxis {
        first: usize,
        second: usize,
        name: String,
    },

    #[error("{kind} {} has no properties", .rule + 1)]
    EmptyRule { kind: RuleKind, rule: usize },

    #[error("{kind} {} names `{key}` twice", .rule + 1)]
    DuplicateKey {
        kind: RuleKind,
        rule: usize,
        key: String,
        first: usize,
        second: usize,
    },

    #[error("exclude {} names `{key}`, which is not an axis{}", .exclude + 1, did_you_mean(.suggestion))]
    UnknownExcludeKey {
        exclude: usize,
        property: usize,
        key: String,
        suggestion: Option<String>,
    },

    #[error(
        "exclude {} names `{axis}={value}`, but axis `{axis}` has no value `{value}`{}",
        .exclude + 1,
        did_you_mean(.suggestion)
    )]
    UnknownExcludeValue {
        exclude: usize,
        property: usize,
        axis: String,
        value: String,
        suggestion: Option<String>,
    },

    #[error(
        "name template `{template}` has an unbalanced brace at byte {offset} (write `{{{{` or `}}}}` for a literal brace)"
    )]
    UnbalancedTemplate { template: String, offset: usize },

    #[error("name template `{template}` has an empty placeholder `{{}}` at byte {offset}")]
    EmptyPlaceholder { template: String, offset: usize },

    #[error("name template uses `{{{placeholder}}}`, but no axis or include provides `{placeholder}`{}", did_you_mean(.suggestion))]
    UnknownPlaceholder {
        placeholder: String,
        suggestion: Option<String>,
    },

    #[error(
        "every combination of the axes is excluded and there are no includes, so the matrix has no cells"
    )]
    AllCombinationsExcluded,

    #[error("cells {} and {} are both named `{name}`", .first + 1, .second + 1)]
    DuplicateCellName {
        first: usize,
        second: usize,
        name: String,
    },
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!("; did you mean `{s}`?"),
        None => String::new(),
    }
}

/// The closest candidate to `wanted`, if one is close enough to be a plausible typo.
fn suggest<'a>(wanted: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let limit = (wanted.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(wanted, c), c))
        .filter(|&(distance, c)| distance <= limit && c != wanted)
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, c)| c.to_string())
}

/// Expands `spec` into its cells.
pub fn expand(spec: &MatrixSpec) -> Result<Expansion, MatrixError> {
    validate_axes(spec)?;
    validate_rules(spec)?;
    let template = spec
        .name_template
        .as_deref()
        .unwrap_or(DEFAULT_NAME_TEMPLATE);
    let pieces = parse_template(template)?;
    // The default template is a convention, not a promise: a generic matrix (GitHub's
    // `fruit`/`animal` examples) names its cells from their own values instead.
    if spec.name_template.is_some() {
        check_placeholders(spec, &pieces)?;
    }

    let mut warnings = Vec::new();
    let originals = apply_excludes(combinations(&spec.axes), &spec.excludes, &mut warnings);
    if !spec.axes.is_empty() && originals.is_empty() && spec.includes.is_empty() {
        return Err(MatrixError::AllCombinationsExcluded);
    }
    let all_values = apply_includes(
        originals,
        &spec.includes,
        !spec.axes.is_empty(),
        &mut warnings,
    );
    let cells = name_cells(&spec.name, &pieces, all_values)?;
    Ok(Expansion { cells, warnings })
}

fn validate_axes(spec: &MatrixSpec) -> Result<(), MatrixError> {
    if spec.axes.is_empty() && spec.includes.is_empty() {
        return Err(MatrixError::EmptyMatrix {
            matrix: spec.name.clone(),
        });
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (index, axis) in spec.axes.iter().enumerate() {
        if axis.values.is_empty() {
            return Err(MatrixError::EmptyAxis {
                axis: index,
                name: axis.name.clone(),
            });
        }
        if let Some(&first) = seen.get(axis.name.as_str()) {
            return Err(MatrixError::DuplicateAxis {
                first,
                second: index,
                name: axis.name.clone(),
            });
        }
        seen.insert(&axis.name, index);
    }
    Ok(())
}

fn validate_rules(spec: &MatrixSpec) -> Result<(), MatrixError> {
    for (index, rule) in spec.excludes.iter().enumerate() {
        validate_rule_shape(RuleKind::Exclude, index, rule)?;
        validate_exclude_against_axes(index, rule, &spec.axes)?;
    }
    for (index, rule) in spec.includes.iter().enumerate() {
        validate_rule_shape(RuleKind::Include, index, rule)?;
    }
    Ok(())
}

/// A rule must name at least one key, and no key twice.
fn validate_rule_shape(kind: RuleKind, rule: usize, props: &Props) -> Result<(), MatrixError> {
    if props.is_empty() {
        return Err(MatrixError::EmptyRule { kind, rule });
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (position, (key, _)) in props.iter().enumerate() {
        if let Some(&first) = seen.get(key.as_str()) {
            return Err(MatrixError::DuplicateKey {
                kind,
                rule,
                key: key.clone(),
                first,
                second: position,
            });
        }
        seen.insert(key, position);
    }
    Ok(())
}

/// An exclude may only name existing axes and their existing values: anything else could never
/// match, and is almost certainly a typo.
fn validate_exclude_against_axes(
    exclude: usize,
    props: &Props,
    axes: &[Axis],
) -> Result<(), MatrixError> {
    for (property, (key, value)) in props.iter().enumerate() {
        let Some(axis) = axes.iter().find(|a| a.name == *key) else {
            return Err(MatrixError::UnknownExcludeKey {
                exclude,
                property,
                key: key.clone(),
                suggestion: suggest(key, axes.iter().map(|a| a.name.as_str())),
            });
        };
        if !axis.values.contains(value) {
            return Err(MatrixError::UnknownExcludeValue {
                exclude,
                property,
                axis: key.clone(),
                value: value.clone(),
                suggestion: suggest(value, axis.values.iter().map(String::as_str)),
            });
        }
    }
    Ok(())
}

/// The name template, parsed; errors point into the template.
fn parse_template(template: &str) -> Result<Vec<Segment<'_>>, MatrixError> {
    crate::template::parse(template).map_err(|e| match e {
        TemplateError::Unbalanced(offset) => MatrixError::UnbalancedTemplate {
            template: template.to_string(),
            offset,
        },
        TemplateError::Empty(offset) => MatrixError::EmptyPlaceholder {
            template: template.to_string(),
            offset,
        },
    })
}

/// Every placeholder must be provided by an axis or an include, or no cell could ever use it.
fn check_placeholders(spec: &MatrixSpec, pieces: &[Segment]) -> Result<(), MatrixError> {
    let known: Vec<&str> = spec
        .axes
        .iter()
        .map(|a| a.name.as_str())
        .chain(spec.includes.iter().flatten().map(|(k, _)| k.as_str()))
        .collect();
    let placeholders = pieces.iter().filter_map(|piece| match piece {
        Segment::Placeholder(key) => Some(*key),
        Segment::Text(_) => None,
    });
    for key in placeholders {
        if !known.contains(&key) {
            return Err(MatrixError::UnknownPlaceholder {
                placeholder: key.to_string(),
                suggestion: suggest(key, known.iter().copied()),
            });
        }
    }
    Ok(())
}

/// The cartesian product of the axes, first axis slowest. No axes means no combinations.
fn combinations(axes: &[Axis]) -> Vec<Values> {
    if axes.is_empty() {
        return Vec::new();
    }
    let mut combos = vec![Values::new()];
    for axis in axes {
        combos = combos
            .iter()
            .flat_map(|combo| {
                axis.values.iter().map(move |value| {
                    let mut extended = combo.clone();
                    extended.insert(axis.name.as_str(), value.as_str());
                    extended
                })
            })
            .collect();
    }
    combos
}

fn exclude_matches(exclude: &Props, combo: &Values) -> bool {
    exclude
        .iter()
        .all(|(k, v)| combo.get(k) == Some(v.as_str()))
}

fn apply_excludes(
    mut combos: Vec<Values>,
    excludes: &[Props],
    warnings: &mut Vec<MatrixWarning>,
) -> Vec<Values> {
    for (index, exclude) in excludes.iter().enumerate() {
        let before = combos.len();
        combos.retain(|combo| !exclude_matches(exclude, combo));
        if combos.len() == before {
            warnings.push(MatrixWarning::ExcludeMatchesNothing { exclude: index });
        }
    }
    combos
}

/// Whether `include` can be added to a combination without overwriting one of its original axis
/// values.
fn include_fits(include: &Props, original: &Values) -> bool {
    include
        .iter()
        .all(|(k, v)| original.get(k).is_none_or(|o| o == v))
}

fn apply_includes(
    originals: Vec<Values>,
    includes: &[Props],
    has_axes: bool,
    warnings: &mut Vec<MatrixWarning>,
) -> Vec<Values> {
    if includes.is_empty() {
        return originals;
    }
    let mut extended = originals.clone();
    let mut appended = Vec::new();
    for (index, include) in includes.iter().enumerate() {
        let mut fitted = false;
        for (original, cell) in originals.iter().zip(extended.iter_mut()) {
            if include_fits(include, original) {
                for (k, v) in include {
                    cell.insert(k.as_str(), v.as_str());
                }
                fitted = true;
            }
        }
        if !fitted {
            appended.push(include.iter().cloned().collect::<Values>());
            // An include-only matrix is made of appended includes by design.
            if has_axes {
                warnings.push(MatrixWarning::IncludeAppended { include: index });
            }
        }
    }
    extended.extend(appended);
    extended
}

/// The cell's name from the template, or, when the cell lacks a key the template uses, its own
/// values joined with `-`.
fn render_name(pieces: &[Segment], values: &Values) -> String {
    let mut name = String::new();
    for piece in pieces {
        match piece {
            Segment::Text(text) => name.push_str(text),
            Segment::Placeholder(key) => match values.get(key) {
                Some(value) => name.push_str(value),
                None => return values.iter().map(|(_, v)| v).collect::<Vec<_>>().join("-"),
            },
        }
    }
    name
}

fn name_cells(
    matrix: &str,
    pieces: &[Segment],
    all_values: Vec<Values>,
) -> Result<Vec<Cell>, MatrixError> {
    let mut seen: rustc_hash::FxHashMap<String, usize> = Default::default();
    let mut cells: Vec<Cell> = Vec::with_capacity(all_values.len());
    for values in all_values {
        let name = render_name(pieces, &values);
        if let Some(&first) = seen.get(&name) {
            return Err(MatrixError::DuplicateCellName {
                first,
                second: cells.len(),
                name,
            });
        }
        seen.insert(name.clone(), cells.len());
        cells.push(Cell {
            matrix: matrix.to_string(),
            name,
            values,
        });
    }
    Ok(cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axis(name: &str, values: &[&str]) -> Axis {
        Axis {
            name: name.to_string(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn props(pairs: &[(&str, &str)]) -> Props {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn spec(axes: Vec<Axis>, excludes: &[Props], includes: &[Props], template: &str) -> MatrixSpec {
        MatrixSpec {
            name: "release".to_string(),
            axes,
            excludes: excludes.to_vec(),
            includes: includes.to_vec(),
            name_template: Some(template.to_string()),
        }
    }

    fn cell_values(expansion: &Expansion) -> Vec<Props> {
        expansion
            .cells
            .iter()
            .map(|c| c.values.as_slice().to_vec())
            .collect()
    }

    fn names(expansion: &Expansion) -> Vec<&str> {
        expansion.cells.iter().map(|c| c.name.as_str()).collect()
    }

    fn expect_err(spec: &MatrixSpec) -> MatrixError {
        match expand(spec) {
            Ok(expansion) => panic!("expected an error, got {expansion:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn github_example_expanding_and_adding() {
        let spec = spec(
            vec![
                axis("fruit", &["apple", "pear"]),
                axis("animal", &["cat", "dog"]),
            ],
            &[],
            &[
                props(&[("color", "green")]),
                props(&[("color", "pink"), ("animal", "cat")]),
                props(&[("fruit", "apple"), ("shape", "circle")]),
                props(&[("fruit", "banana")]),
                props(&[("fruit", "banana"), ("animal", "cat")]),
            ],
            "{fruit}-{animal}",
        );
        let expansion = expand(&spec).unwrap();
        assert_eq!(
            cell_values(&expansion),
            vec![
                props(&[
                    ("fruit", "apple"),
                    ("animal", "cat"),
                    ("color", "pink"),
                    ("shape", "circle"),
                ]),
                props(&[
                    ("fruit", "apple"),
                    ("animal", "dog"),
                    ("color", "green"),
                    ("shape", "circle"),
                ]),
                props(&[("fruit", "pear"), ("animal", "cat"), ("color", "pink")]),
                props(&[("fruit", "pear"), ("animal", "dog"), ("color", "green")]),
                props(&[("fruit", "banana")]),
                props(&[("fruit", "banana"), ("animal", "cat")]),
            ]
        );
        assert_eq!(
            names(&expansion),
            [
                "apple-cat",
                "apple-dog",
                "pear-cat",
                "pear-dog",
                "banana",
                "banana-cat"
            ]
        );
        assert_eq!(
            expansion.warnings,
            [
                MatrixWarning::IncludeAppended { include: 3 },
                MatrixWarning::IncludeAppended { include: 4 },
            ]
        );
        assert!(expansion.cells.iter().all(|c| c.matrix == "release"));
    }

    #[test]
    fn github_example_adding_a_key_to_one_combination() {
        let spec = spec(
            vec![
                axis("os", &["windows-latest", "ubuntu-latest"]),
                axis("node", &["14", "16"]),
            ],
            &[],
            &[props(&[
                ("os", "windows-latest"),
                ("node", "16"),
                ("npm", "6"),
            ])],
            "{os}-{node}",
        );
        let expansion = expand(&spec).unwrap();
        assert_eq!(
            cell_values(&expansion),
            vec![
                props(&[("os", "windows-latest"), ("node", "14")]),
                props(&[("os", "windows-latest"), ("node", "16"), ("npm", "6")]),
                props(&[("os", "ubuntu-latest"), ("node", "14")]),
                props(&[("os", "ubuntu-latest"), ("node", "16")]),
            ]
        );
        assert!(expansion.warnings.is_empty());
    }

    #[test]
    fn github_example_excluding() {
        let spec = spec(
            vec![
                axis("os", &["macos-latest", "windows-latest"]),
                axis("version", &["12", "14", "16"]),
                axis("environment", &["staging", "production"]),
            ],
            &[
                props(&[
                    ("os", "macos-latest"),
                    ("version", "12"),
                    ("environment", "production"),
                ]),
                props(&[("os", "windows-latest"), ("version", "16")]),
            ],
            &[],
            "{os}-{version}-{environment}",
        );
        let expansion = expand(&spec).unwrap();
        assert_eq!(
            names(&expansion),
            [
                "macos-latest-12-staging",
                "macos-latest-14-staging",
                "macos-latest-14-production",
                "macos-latest-16-staging",
                "macos-latest-16-production",
                "windows-latest-12-staging",
                "windows-latest-12-production",
                "windows-latest-14-staging",
                "windows-latest-14-production",
            ]
        );
        assert_eq!(
            expansion.cells[1].values.as_slice(),
            props(&[
                ("os", "macos-latest"),
                ("version", "14"),
                ("environment", "staging"),
            ])
        );
        assert!(expansion.warnings.is_empty());
    }

    #[test]
    fn github_example_expanding_configurations_and_a_key_for_every_cell() {
        let spec = spec(
            vec![
                axis("os", &["ubuntu-latest", "windows-latest"]),
                axis("node", &["14", "16", "18"]),
            ],
            &[],
            &[
                props(&[("os", "windows-latest"), ("node", "16"), ("npm", "6")]),
                props(&[("experimental", "false")]),
            ],
            "{os}-{node}",
        );
        let expansion = expand(&spec).unwrap();
        let mut expected = Vec::new();
        for os in ["ubuntu-latest", "windows-latest"] {
            for node in ["14", "16", "18"] {
                let mut cell = props(&[("os", os), ("node", node)]);
                if os == "windows-latest" && node == "16" {
                    cell.push(("npm".to_string(), "6".to_string()));
                }
                cell.push(("experimental".to_string(), "false".to_string()));
                expected.push(cell);
            }
        }
        assert_eq!(cell_values(&expansion), expected);
        assert!(expansion.warnings.is_empty());
    }

    #[test]
    fn keys_keep_the_order_of_first_addition() {
        let spec = spec(
            vec![axis("a", &["1"]), axis("b", &["2"])],
            &[],
            &[
                props(&[("y", "first"), ("x", "first")]),
                props(&[("z", "z"), ("x", "second"), ("y", "second")]),
            ],
            "{a}",
        );
        let expansion = expand(&spec).unwrap();
        assert_eq!(
            cell_values(&expansion),
            vec![props(&[
                ("a", "1"),
                ("b", "2"),
                ("y", "second"),
                ("x", "second"),
                ("z", "z"),
            ])]
        );
    }

    #[test]
    fn include_naming_an_excluded_combination_is_appended() {
        let spec = spec(
            vec![axis("a", &["1", "2"])],
            &[props(&[("a", "2")])],
            &[props(&[("a", "2"), ("extra", "x")])],
            "{a}",
        );
        let expansion = expand(&spec).unwrap();
        assert_eq!(
            cell_values(&expansion),
            vec![props(&[("a", "1")]), props(&[("a", "2"), ("extra", "x")])]
        );
        assert_eq!(
            expansion.warnings,
            [MatrixWarning::IncludeAppended { include: 0 }]
        );
    }

    #[test]
    fn include_only_matrix_makes_one_cell_per_include_without_warnings() {
        let spec = spec(
            vec![],
            &[],
            &[
                props(&[("site", "production"), ("datacenter", "site-a")]),
                props(&[("site", "staging"), ("datacenter", "site-b")]),
            ],
            "{site}",
        );
        let expansion = expand(&spec).unwrap();
        assert_eq!(names(&expansion), ["production", "staging"]);
        assert_eq!(
            expansion.cells[1].values.as_slice(),
            props(&[("site", "staging"), ("datacenter", "site-b")])
        );
        assert!(expansion.warnings.is_empty());
    }

    #[test]
    fn default_template_names_cells_and_cells_serialize_in_order() {
        let spec = MatrixSpec {
            name: "release".to_string(),
            axes: vec![
                axis("provider", &["aws", "gcp"]),
                axis("os", &["ubuntu-2404"]),
                axis("kubernetes", &["1.31.2"]),
            ],
            excludes: vec![],
            includes: vec![props(&[("arch", "amd64")])],
            name_template: None,
        };
        let expansion = expand(&spec).unwrap();
        assert_eq!(
            names(&expansion),
            ["aws-ubuntu-2404-k8s-1.31.2", "gcp-ubuntu-2404-k8s-1.31.2"]
        );
        assert_eq!(
            serde_json::to_string(&expansion.cells[0]).unwrap(),
            r#"{"matrix":"release","name":"aws-ubuntu-2404-k8s-1.31.2","values":{"provider":"aws","os":"ubuntu-2404","kubernetes":"1.31.2","arch":"amd64"}}"#
        );
        assert_eq!(expansion.cells[1].values.get("provider"), Some("gcp"));
        assert_eq!(expansion.cells[1].values.get("missing"), None);
    }

    #[test]
    fn a_cell_lacking_a_template_key_is_named_from_its_own_values() {
        let spec = spec(
            vec![],
            &[],
            &[
                props(&[("fruit", "banana"), ("animal", "cat")]),
                props(&[("color", "red")]),
            ],
            "{color}",
        );
        let expansion = expand(&spec).unwrap();
        assert_eq!(names(&expansion), ["banana-cat", "red"]);
    }

    #[test]
    fn doubled_braces_are_literal() {
        let spec = spec(vec![axis("a", &["x"])], &[], &[], "{{lit}}-{a}-}}{{");
        let expansion = expand(&spec).unwrap();
        assert_eq!(names(&expansion), ["{lit}-x-}{"]);
    }

    #[test]
    fn redundant_exclude_warns() {
        let spec = spec(
            vec![axis("a", &["1", "2"]), axis("b", &["1", "2"])],
            &[props(&[("a", "1")]), props(&[("a", "1"), ("b", "2")])],
            &[],
            "{a}-{b}",
        );
        let expansion = expand(&spec).unwrap();
        assert_eq!(names(&expansion), ["2-1", "2-2"]);
        assert_eq!(
            expansion.warnings,
            [MatrixWarning::ExcludeMatchesNothing { exclude: 1 }]
        );
        assert_eq!(
            expansion.warnings[0].to_string(),
            "exclude 2 removes no combination of the axes"
        );
    }

    #[test]
    fn empty_matrix_is_an_error() {
        let spec = spec(vec![], &[], &[], "{a}");
        assert_eq!(
            expect_err(&spec),
            MatrixError::EmptyMatrix {
                matrix: "release".to_string()
            }
        );
    }

    #[test]
    fn axis_without_values_is_an_error() {
        let spec = spec(vec![axis("a", &["1"]), axis("b", &[])], &[], &[], "{a}");
        assert_eq!(
            expect_err(&spec),
            MatrixError::EmptyAxis {
                axis: 1,
                name: "b".to_string()
            }
        );
    }

    #[test]
    fn duplicate_axis_is_an_error() {
        let spec = spec(
            vec![axis("a", &["1"]), axis("b", &["1"]), axis("a", &["2"])],
            &[],
            &[],
            "{a}",
        );
        assert_eq!(
            expect_err(&spec),
            MatrixError::DuplicateAxis {
                first: 0,
                second: 2,
                name: "a".to_string()
            }
        );
    }

    #[test]
    fn empty_rules_are_errors() {
        let axes = vec![axis("a", &["1"])];
        let spec_exclude = spec(axes.clone(), &[props(&[])], &[], "{a}");
        assert_eq!(
            expect_err(&spec_exclude),
            MatrixError::EmptyRule {
                kind: RuleKind::Exclude,
                rule: 0
            }
        );
        let spec_include = spec(axes, &[], &[props(&[("b", "1")]), props(&[])], "{a}");
        let err = expect_err(&spec_include);
        assert_eq!(
            err,
            MatrixError::EmptyRule {
                kind: RuleKind::Include,
                rule: 1
            }
        );
        assert_eq!(err.to_string(), "include 2 has no properties");
    }

    #[test]
    fn duplicate_key_in_a_rule_is_an_error() {
        let spec = spec(
            vec![axis("a", &["1", "2"])],
            &[],
            &[props(&[("a", "1"), ("x", "y"), ("a", "2")])],
            "{a}",
        );
        assert_eq!(
            expect_err(&spec),
            MatrixError::DuplicateKey {
                kind: RuleKind::Include,
                rule: 0,
                key: "a".to_string(),
                first: 0,
                second: 2
            }
        );
    }

    #[test]
    fn exclude_naming_an_unknown_axis_is_an_error_with_a_suggestion() {
        let axes = vec![axis("fruit", &["apple"]), axis("animal", &["cat"])];
        let close = spec(
            axes.clone(),
            &[props(&[("fruits", "apple")])],
            &[],
            "{fruit}",
        );
        let err = expect_err(&close);
        assert_eq!(
            err,
            MatrixError::UnknownExcludeKey {
                exclude: 0,
                property: 0,
                key: "fruits".to_string(),
                suggestion: Some("fruit".to_string())
            }
        );
        assert_eq!(
            err.to_string(),
            "exclude 1 names `fruits`, which is not an axis; did you mean `fruit`?"
        );
        let far = spec(
            axes,
            &[props(&[("fruit", "apple"), ("zzz", "1")])],
            &[],
            "{fruit}",
        );
        assert_eq!(
            expect_err(&far),
            MatrixError::UnknownExcludeKey {
                exclude: 0,
                property: 1,
                key: "zzz".to_string(),
                suggestion: None
            }
        );
    }

    #[test]
    fn exclude_naming_an_unknown_value_is_an_error_with_a_suggestion() {
        let spec = spec(
            vec![axis("kubernetes", &["1.30.4", "1.31.2"])],
            &[props(&[("kubernetes", "1.31.3")])],
            &[],
            "{kubernetes}",
        );
        let err = expect_err(&spec);
        assert_eq!(
            err,
            MatrixError::UnknownExcludeValue {
                exclude: 0,
                property: 0,
                axis: "kubernetes".to_string(),
                value: "1.31.3".to_string(),
                suggestion: Some("1.31.2".to_string())
            }
        );
        assert_eq!(
            err.to_string(),
            "exclude 1 names `kubernetes=1.31.3`, but axis `kubernetes` has no value `1.31.3`; \
             did you mean `1.31.2`?"
        );
    }

    #[test]
    fn includes_may_name_new_values() {
        let spec = spec(vec![axis("a", &["1"])], &[], &[props(&[("a", "9")])], "{a}");
        assert_eq!(names(&expand(&spec).unwrap()), ["1", "9"]);
    }

    #[test]
    fn malformed_templates_are_errors() {
        let unbalanced = [("{a", 0), ("a}", 1), ("x-{a{b}}", 2), ("{{a}", 3)];
        for (template, offset) in unbalanced {
            let spec = spec(vec![axis("a", &["1"])], &[], &[], template);
            assert_eq!(
                expect_err(&spec),
                MatrixError::UnbalancedTemplate {
                    template: template.to_string(),
                    offset
                },
                "template {template:?}"
            );
        }
        let spec = spec(vec![axis("a", &["1"])], &[], &[], "{a}-{}");
        assert_eq!(
            expect_err(&spec),
            MatrixError::EmptyPlaceholder {
                template: "{a}-{}".to_string(),
                offset: 4
            }
        );
    }

    #[test]
    fn placeholder_nothing_provides_is_an_error() {
        let spec = spec(
            vec![axis("os", &["ubuntu"])],
            &[],
            &[props(&[("arch", "amd64")])],
            "{os}-{archh}",
        );
        let err = expect_err(&spec);
        assert_eq!(
            err,
            MatrixError::UnknownPlaceholder {
                placeholder: "archh".to_string(),
                suggestion: Some("arch".to_string())
            }
        );
        assert_eq!(
            err.to_string(),
            "name template uses `{archh}`, but no axis or include provides `archh`; \
             did you mean `arch`?"
        );
        // The default template never fails: cells lacking its axes are named from their values.
        let default = MatrixSpec {
            name_template: None,
            ..spec.clone()
        };
        let cells = expand(&default).unwrap().cells;
        assert_eq!(cells[0].name, "ubuntu-amd64");
    }

    #[test]
    fn excluding_everything_is_an_error() {
        let spec = spec(
            vec![axis("a", &["1"]), axis("b", &["1", "2"])],
            &[props(&[("a", "1")])],
            &[],
            "{a}",
        );
        assert_eq!(expect_err(&spec), MatrixError::AllCombinationsExcluded);
    }

    #[test]
    fn duplicate_cell_names_are_an_error() {
        let spec = spec(
            vec![
                axis("os", &["ubuntu", "flatcar"]),
                axis("arch", &["amd64", "arm64"]),
            ],
            &[],
            &[],
            "{os}",
        );
        let err = expect_err(&spec);
        assert_eq!(
            err,
            MatrixError::DuplicateCellName {
                first: 0,
                second: 1,
                name: "ubuntu".to_string()
            }
        );
        assert_eq!(err.to_string(), "cells 1 and 2 are both named `ubuntu`");
    }

    /// A deliberately naive restatement of GitHub's rules, to check [`expand`] against.
    mod reference {
        use super::super::{MatrixWarning, Props};

        pub type Pairs = Vec<(String, String)>;

        #[derive(Debug, PartialEq, Eq)]
        pub enum Outcome {
            Cells(Vec<(String, Pairs)>, Vec<MatrixWarning>),
            Empty,
            AllExcluded,
            Duplicate(usize, usize, String),
        }

        fn lookup<'a>(pairs: &'a Pairs, key: &str) -> Option<&'a String> {
            pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
        }

        fn set(pairs: &mut Pairs, key: &str, value: &str) {
            for pair in pairs.iter_mut() {
                if pair.0 == key {
                    pair.1 = value.to_string();
                    return;
                }
            }
            pairs.push((key.to_string(), value.to_string()));
        }

        fn product(axes: &[(String, Vec<String>)]) -> Vec<Pairs> {
            match axes.split_first() {
                None => vec![vec![]],
                Some(((name, values), rest)) => {
                    let mut out = Vec::new();
                    for value in values {
                        for tail in product(rest) {
                            let mut combo = vec![(name.clone(), value.clone())];
                            combo.extend(tail);
                            out.push(combo);
                        }
                    }
                    out
                }
            }
        }

        pub fn expand(
            axes: &[(String, Vec<String>)],
            excludes: &[Props],
            includes: &[Props],
            template_keys: &[String],
        ) -> Outcome {
            if axes.is_empty() && includes.is_empty() {
                return Outcome::Empty;
            }
            let mut warnings = Vec::new();
            let mut originals = if axes.is_empty() {
                vec![]
            } else {
                product(axes)
            };
            for (i, exclude) in excludes.iter().enumerate() {
                let before = originals.len();
                originals.retain(|combo| !exclude.iter().all(|(k, v)| lookup(combo, k) == Some(v)));
                if originals.len() == before {
                    warnings.push(MatrixWarning::ExcludeMatchesNothing { exclude: i });
                }
            }
            if !axes.is_empty() && originals.is_empty() && includes.is_empty() {
                return Outcome::AllExcluded;
            }
            let mut cells = originals.clone();
            let mut extra = Vec::new();
            for (i, include) in includes.iter().enumerate() {
                let mut any = false;
                for c in 0..originals.len() {
                    let fits = include.iter().all(|(k, v)| match lookup(&originals[c], k) {
                        None => true,
                        Some(original) => original == v,
                    });
                    if fits {
                        any = true;
                        for (k, v) in include {
                            set(&mut cells[c], k, v);
                        }
                    }
                }
                if !any {
                    let mut own = Vec::new();
                    for (k, v) in include {
                        set(&mut own, k, v);
                    }
                    extra.push(own);
                    if !axes.is_empty() {
                        warnings.push(MatrixWarning::IncludeAppended { include: i });
                    }
                }
            }
            cells.extend(extra);
            let named: Vec<(String, Pairs)> = cells
                .into_iter()
                .map(|cell| (name(&cell, template_keys), cell))
                .collect();
            for i in 0..named.len() {
                for j in 0..i {
                    if named[i].0 == named[j].0 {
                        return Outcome::Duplicate(j, i, named[i].0.clone());
                    }
                }
            }
            Outcome::Cells(named, warnings)
        }

        /// The name for a template made of the placeholders `keys` joined with `-`.
        fn name(cell: &Pairs, keys: &[String]) -> String {
            let found: Vec<&String> = keys.iter().filter_map(|k| lookup(cell, k)).collect();
            if found.len() == keys.len() {
                found
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("-")
            } else {
                cell.iter()
                    .map(|(_, v)| v.as_str())
                    .collect::<Vec<_>>()
                    .join("-")
            }
        }
    }

    mod properties {
        use super::super::*;
        use super::reference::{self, Outcome};
        use proptest::prelude::*;

        const KEYS: [&str; 4] = ["a", "b", "c", "d"];
        const VALUES: [&str; 4] = ["1", "2", "3", "4"];

        type RawRule = Vec<(usize, usize)>;

        /// Keeps the first occurrence of each key, so rules are always well formed.
        fn dedup_keys(pairs: Vec<(String, String)>) -> Props {
            let mut out: Props = Vec::new();
            for (k, v) in pairs {
                if !out.iter().any(|(seen, _)| *seen == k) {
                    out.push((k, v));
                }
            }
            out
        }

        fn build(
            raw_axes: Vec<Vec<usize>>,
            raw_excludes: Vec<RawRule>,
            raw_includes: Vec<RawRule>,
        ) -> MatrixSpec {
            let axes: Vec<Axis> = raw_axes
                .into_iter()
                .enumerate()
                .map(|(i, raw)| {
                    let mut values: Vec<String> = Vec::new();
                    for v in raw {
                        let value = VALUES[v % 3].to_string();
                        if !values.contains(&value) {
                            values.push(value);
                        }
                    }
                    Axis {
                        name: KEYS[i].to_string(),
                        values,
                    }
                })
                .collect();
            let excludes = if axes.is_empty() {
                vec![]
            } else {
                raw_excludes
                    .into_iter()
                    .map(|rule| {
                        dedup_keys(
                            rule.into_iter()
                                .map(|(k, v)| {
                                    let axis = &axes[k % axes.len()];
                                    (
                                        axis.name.clone(),
                                        axis.values[v % axis.values.len()].clone(),
                                    )
                                })
                                .collect(),
                        )
                    })
                    .collect()
            };
            let includes = raw_includes
                .into_iter()
                .map(|rule| {
                    dedup_keys(
                        rule.into_iter()
                            .map(|(k, v)| (KEYS[k].to_string(), VALUES[v].to_string()))
                            .collect(),
                    )
                })
                .collect();
            MatrixSpec {
                name: "m".to_string(),
                axes,
                excludes,
                includes,
                name_template: None,
            }
        }

        /// Every key that an axis or include provides, in first-seen order.
        fn provided_keys(spec: &MatrixSpec) -> Vec<String> {
            let mut keys: Vec<String> = Vec::new();
            let all = spec
                .axes
                .iter()
                .map(|a| &a.name)
                .chain(spec.includes.iter().flatten().map(|(k, _)| k));
            for key in all {
                if !keys.contains(key) {
                    keys.push(key.clone());
                }
            }
            keys
        }

        fn arb_spec() -> impl Strategy<Value = MatrixSpec> {
            let axes = prop::collection::vec(prop::collection::vec(0..3usize, 1..=3), 0..=3);
            let rule = || prop::collection::vec((0..4usize, 0..4usize), 1..=3);
            let excludes = prop::collection::vec(rule(), 0..=3);
            let includes = prop::collection::vec(rule(), 0..=4);
            (axes, excludes, includes).prop_map(|(a, e, i)| build(a, e, i))
        }

        fn outcome(result: Result<Expansion, MatrixError>) -> Outcome {
            match result {
                Ok(expansion) => Outcome::Cells(
                    expansion
                        .cells
                        .into_iter()
                        .map(|c| (c.name, c.values.as_slice().to_vec()))
                        .collect(),
                    expansion.warnings,
                ),
                Err(MatrixError::EmptyMatrix { .. }) => Outcome::Empty,
                Err(MatrixError::AllCombinationsExcluded) => Outcome::AllExcluded,
                Err(MatrixError::DuplicateCellName {
                    first,
                    second,
                    name,
                }) => Outcome::Duplicate(first, second, name),
                Err(other) => panic!("unexpected error: {other}"),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn expand_agrees_with_the_reference(spec in arb_spec()) {
                let keys = provided_keys(&spec);
                let template: Vec<String> = keys.iter().map(|k| format!("{{{k}}}")).collect();
                let spec = MatrixSpec {
                    name_template: Some(template.join("-")),
                    ..spec
                };
                let axes: Vec<(String, Vec<String>)> = spec
                    .axes
                    .iter()
                    .map(|a| (a.name.clone(), a.values.clone()))
                    .collect();
                let expected = reference::expand(&axes, &spec.excludes, &spec.includes, &keys);
                prop_assert_eq!(outcome(expand(&spec)), expected);
            }
        }
    }
}
