//! The typed config: what `images.kdl`, its imports and `images.lock` declare, spans kept.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::source::{Loc, SourceMap, Spanned};
use super::step::{BuilderKind, Consumes, StepKind};
use crate::matrix::MatrixSpec;

/// A setting, variable or parameter value. Versions and names are strings; KDL floats are
/// rejected at parse time so `1.31` never silently becomes `1.31000…`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    List(Vec<String>),
}

impl Value {
    /// The value as a template placeholder renders it: lists are comma-separated, as
    /// image-builder's `ami_regions` expects.
    pub fn render(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::List(l) => l.join(","),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Str(s) => s.clone().into(),
            Value::Int(i) => (*i).into(),
            Value::Bool(b) => (*b).into(),
            Value::List(l) => l.clone().into(),
        }
    }

    /// A canonical, typed spelling for keys and manifests (`"x"`, `3`, `true`, `["a","b"]`).
    pub fn canonical(&self) -> String {
        let quote = |s: &str| serde_json::to_string(s).expect("a string serializes");
        match self {
            Value::Str(s) => quote(s),
            Value::Int(i) => i.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::List(l) => format!(
                "[{}]",
                l.iter().map(|s| quote(s)).collect::<Vec<_>>().join(",")
            ),
        }
    }

    pub fn as_list(&self) -> Vec<String> {
        match self {
            Value::List(l) => l.clone(),
            other => vec![other.render()],
        }
    }
}

#[derive(Debug)]
pub struct Config {
    /// The directory of the root config file; input paths are relative to it.
    pub root: PathBuf,
    pub sources: SourceMap,
    pub tools: BTreeMap<String, Tool>,
    pub releases: BTreeMap<String, Release>,
    pub matrices: Vec<MatrixDecl>,
    pub providers: BTreeMap<String, Provider>,
    pub modules: BTreeMap<String, Module>,
    /// `remote-cache "URL"`: the shared cache, unless the command line or environment names one.
    pub remote_cache: Option<String>,
    /// `trusted-keys "NAME:BASE64" …`: whose signed results the remote cache is read for.
    pub trusted_keys: Vec<String>,
}

impl Config {
    /// The provider a build request names: by its name, or by one of its `alias` names.
    pub fn provider_named(&self, name: &str) -> Option<&Provider> {
        self.providers.get(name).or_else(|| {
            self.providers
                .values()
                .find(|p| p.aliases.iter().any(|a| a.value == name))
        })
    }

    /// A digest over every config file read (images.kdl, its imports, images.lock), each named
    /// relative to the config root, so `-f ./images.kdl` and `-f images.kdl` agree.
    pub fn digest(&self) -> crate::hash::Digest {
        let mut h = crate::hash::KeyHasher::new("config");
        for f in self.sources.files() {
            let name = f.path.strip_prefix(&self.root).unwrap_or(&f.path);
            h.str(&name.to_string_lossy()).str(&f.text);
        }
        h.finish()
    }
}

/// A pinned external tool, such as `tool "image-builder" "v0.1.55"`.
#[derive(Debug, Clone)]
pub struct Tool {
    pub name: String,
    pub version: String,
    /// The container image, pinned by digest, when the tool runs in a container.
    pub image: Option<String>,
    /// `source=`: a local checkout (relative to the file that names it). Not part of any key.
    pub source: Option<std::path::PathBuf>,
    /// `engine="make"|"docker"|"podman"`: how to run it. Not part of any key.
    pub engine: Option<crate::imagebuilder::Engine>,
    pub loc: Loc,
    /// Where the version was written.
    pub version_loc: Loc,
}

/// The default image-builder pin when the config names none.
pub const DEFAULT_IMAGE_BUILDER: &str = "v0.1.55";

/// A Kubernetes release series and its pins.
#[derive(Debug, Clone)]
pub struct Release {
    pub series: String,
    /// The patch version (`1.31.4`), from the config or, for a tracked series, from images.lock.
    pub version: String,
    /// The pkgs.k8s.io package revision: deb `1.31.4-1.1` has revision `1.1`.
    pub revision: String,
    pub tracked: bool,
    /// Component pins: cni, containerd, crictl, runc.
    pub components: BTreeMap<Component, String>,
    pub loc: Loc,
}

/// Components pinned per release, with the image-builder variable each one sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    Cni,
    Containerd,
    Crictl,
    Runc,
}

impl Component {
    pub const ALL: [Component; 4] = [
        Component::Cni,
        Component::Containerd,
        Component::Crictl,
        Component::Runc,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Component::Cni => "cni",
            Component::Containerd => "containerd",
            Component::Crictl => "crictl",
            Component::Runc => "runc",
        }
    }

    pub fn parse(s: &str) -> Option<Component> {
        Component::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The image-builder variable (packer/config/*.json) that pins this component.
    pub fn variable(self) -> &'static str {
        match self {
            Component::Cni => "kubernetes_cni_semver",
            Component::Containerd => "containerd_version",
            Component::Crictl => "crictl_version",
            Component::Runc => "runc_version",
        }
    }
}

impl Release {
    /// The variables image-builder's kubernetes.json declares, resolved for this release.
    pub fn variables(&self) -> BTreeMap<String, Value> {
        let mut vars = BTreeMap::new();
        let s = |v: String| Value::Str(v);
        vars.insert("kubernetes_semver".into(), s(format!("v{}", self.version)));
        vars.insert("kubernetes_series".into(), s(format!("v{}", self.series)));
        vars.insert(
            "kubernetes_deb_version".into(),
            s(format!("{}-{}", self.version, self.revision)),
        );
        vars.insert("kubernetes_rpm_version".into(), s(self.version.clone()));
        for (c, v) in &self.components {
            vars.insert(c.variable().into(), s(v.clone()));
        }
        vars
    }
}

/// A `matrix` block with the locations needed to report on its rules.
#[derive(Debug, Clone)]
pub struct MatrixDecl {
    pub spec: MatrixSpec,
    pub loc: Loc,
    pub name_template_loc: Option<Loc>,
    /// Per axis: the node, and each value.
    pub axis_locs: Vec<(Loc, Vec<Loc>)>,
    pub include_locs: Vec<RuleLocs>,
    pub exclude_locs: Vec<RuleLocs>,
}

#[derive(Debug, Clone)]
pub struct RuleLocs {
    pub node: Loc,
    /// One per property, in order.
    pub props: Vec<Loc>,
}

/// Settings shared by a provider block and its `override` blocks.
#[derive(Debug, Clone, Default)]
pub struct Overlay {
    pub vars: BTreeMap<String, Spanned<Value>>,
    pub settings: BTreeMap<String, Spanned<Value>>,
    pub patches: Vec<Patch>,
    pub files: Vec<Ship>,
    pub secrets: Vec<Secret>,
    pub policy: Policy,
}

/// Execution policy: cloud quotas, retries, timeouts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    pub limit: Option<u32>,
    pub retries: Option<u32>,
    pub timeout: Option<Duration>,
    /// `debug #true`: every attempt runs with the step's debug settings (`PACKER_LOG=1`), not
    /// only retries.
    #[serde(default)]
    pub debug: Option<bool>,
}

impl Policy {
    /// `other` wins where it says something.
    pub fn then(self, other: Policy) -> Policy {
        Policy {
            limit: other.limit.or(self.limit),
            retries: other.retries.or(self.retries),
            timeout: other.timeout.or(self.timeout),
            debug: other.debug.or(self.debug),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    /// `alias "capa"`: other names a build request may use for this provider (the seeds'
    /// `capa`, `capg`, `capo`).
    pub aliases: Vec<Spanned<String>>,
    pub module: Spanned<String>,
    pub body: Overlay,
    pub overrides: Vec<Override>,
    pub loc: Loc,
}

/// Settings for the cells whose values match all of `when`.
#[derive(Debug, Clone)]
pub struct Override {
    pub when: Vec<(Spanned<String>, Spanned<String>)>,
    pub body: Overlay,
    pub loc: Loc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PatchOp {
    /// Append to arrays (`jq '.provisioners += $patch[0].provisioners'`).
    Append,
    /// RFC 7396 JSON merge patch.
    Merge,
}

impl PatchOp {
    pub fn as_str(self) -> &'static str {
        match self {
            PatchOp::Append => "append",
            PatchOp::Merge => "merge",
        }
    }
}

/// A path written in the config: `rel` relative to the config root (what keys hash), `path`
/// on disk.
#[derive(Debug, Clone)]
pub struct ConfigPath {
    pub rel: String,
    pub path: PathBuf,
    pub loc: Loc,
}

#[derive(Debug, Clone)]
pub struct Patch {
    pub file: ConfigPath,
    pub op: PatchOp,
}

/// A file or directory shipped into the build, e.g. scripts mounted at `packer/hcloud/scripts`.
#[derive(Debug, Clone)]
pub struct Ship {
    pub from: ConfigPath,
    pub to: String,
    pub is_dir: bool,
}

/// A secret by reference: handed to the step at run time, never hashed, logged or stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Secret {
    /// The name the step sees (an environment variable).
    pub name: String,
    /// Where kiln reads it from.
    pub source: SecretSource,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

/// A provider module: which builder runs each step, with which parameters.
#[derive(Debug, Clone)]
pub struct Module {
    pub name: String,
    pub settings: BTreeMap<String, SettingDecl>,
    pub vars: BTreeMap<String, Spanned<Value>>,
    pub steps: Vec<StepDecl>,
    pub policy: Policy,
    pub loc: Loc,
}

#[derive(Debug, Clone)]
pub struct SettingDecl {
    pub name: String,
    pub default: Option<Value>,
    pub required: bool,
    pub loc: Loc,
}

#[derive(Debug, Clone)]
pub struct StepDecl {
    pub kind: StepKind,
    pub builder: BuilderKind,
    /// Which provider inputs the step takes (default: what its builder takes).
    pub consumes: Consumes,
    pub params: BTreeMap<String, Spanned<Value>>,
    /// `secrets "NAME" …`: the provider's secrets this step is given (default: the builder's,
    /// see [`crate::config::step::BuilderKind::default_secrets`]).
    pub secrets: Option<Vec<String>>,
    pub policy: Policy,
    pub loc: Loc,
}
