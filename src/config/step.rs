//! Step kinds and the builders that run them: what a module may name, and the shape of what each
//! builder declares about itself (its parameters, the inputs it consumes). Pure data; each
//! builder's table lives beside its runner in `crate::builders`.

use std::fmt;

/// The four steps of an image, in their usual order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    Patch,
    Validate,
    Build,
    Publish,
}

impl StepKind {
    pub const ALL: [StepKind; 4] = [
        StepKind::Patch,
        StepKind::Validate,
        StepKind::Build,
        StepKind::Publish,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Patch => "patch",
            StepKind::Validate => "validate",
            StepKind::Build => "build",
            StepKind::Publish => "publish",
        }
    }

    pub fn parse(s: &str) -> Option<StepKind> {
        StepKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What runs a node.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum BuilderKind {
    /// Applies the provider's JSON patches to an image-builder packer template.
    TemplatePatch,
    /// `make validate-…` / `make build-…` in kubernetes-sigs/image-builder.
    ImageBuilder,
    /// Any argv.
    Command,
    /// The offline disk-image builder (ext4 tree → qcow2) and its checks.
    Local,
    /// Copies an artifact and its sha256 into a bucket.
    Upload,
    /// Checks the AMIs a build copied to regions, and makes them public.
    AwsAmi,
    /// Shares a GCE image with a member and role.
    GcpImage,
    /// Labels an hcloud snapshot.
    HcloudSnapshot,
}

/// The type of a builder parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    Str,
    List,
    Bool,
    Int,
}

impl ParamType {
    pub fn describe(self) -> &'static str {
        match self {
            ParamType::Str => "a string",
            ParamType::List => "one or more strings",
            ParamType::Bool => "a boolean (#true or #false)",
            ParamType::Int => "an integer",
        }
    }
}

pub struct ParamSpec {
    pub name: &'static str,
    pub ty: ParamType,
    pub required: bool,
    pub doc: &'static str,
    /// For a path relative to a directory: the directory it must stay inside ("the bucket").
    pub inside: Option<&'static str>,
}

impl ParamSpec {
    pub const fn new(
        name: &'static str,
        ty: ParamType,
        required: bool,
        doc: &'static str,
    ) -> ParamSpec {
        ParamSpec {
            name,
            ty,
            required,
            doc,
            inside: None,
        }
    }

    /// The parameter is a path (or paths) that must stay inside `dir` once placeholders are
    /// filled.
    pub const fn inside(self, dir: &'static str) -> ParamSpec {
        ParamSpec {
            inside: Some(dir),
            ..self
        }
    }
}

/// Which of a provider's inputs a builder receives.
#[derive(Debug, Clone, Copy, Default)]
pub struct Consumes {
    pub vars: bool,
    pub patches: bool,
    pub files: bool,
    pub secrets: bool,
    /// The image-builder pin is part of the node's recipe.
    pub image_builder: bool,
}

/// Which of a provider's secrets a step of a builder gets when its module does not list them
/// with `secrets "NAME" …` (see [`crate::imagebuilder::step_secrets`]).
#[derive(Debug, Clone, Copy)]
pub enum SecretUse {
    /// None.
    None,
    /// Every one: the program it runs may read any.
    Every,
    /// Those packer's builder for the step's template directory reads, and those no builder
    /// knows (which only the user's template patches can use).
    Packer,
    /// The ones it reads, by name.
    Named(&'static [&'static str]),
}

/// What config knows of a builder: the parameters a step of it takes and the provider inputs
/// (and secrets) it receives. Pure data: each builder declares its own as a `SPEC` constant in its file under
/// `crate::builders`, and config reads only those constants, never the code that runs a step.
pub struct BuilderSpec {
    pub kind: BuilderKind,
    pub params: &'static [ParamSpec],
    pub consumes: Consumes,
    pub secrets: SecretUse,
}

impl BuilderKind {
    pub const ALL: [BuilderKind; 8] = [
        BuilderKind::TemplatePatch,
        BuilderKind::ImageBuilder,
        BuilderKind::Command,
        BuilderKind::Local,
        BuilderKind::Upload,
        BuilderKind::AwsAmi,
        BuilderKind::GcpImage,
        BuilderKind::HcloudSnapshot,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BuilderKind::TemplatePatch => "template-patch",
            BuilderKind::ImageBuilder => "image-builder",
            BuilderKind::Command => "command",
            BuilderKind::Local => "local",
            BuilderKind::Upload => "upload",
            BuilderKind::AwsAmi => "aws-ami",
            BuilderKind::GcpImage => "gcp-image",
            BuilderKind::HcloudSnapshot => "hcloud-snapshot",
        }
    }

    pub fn parse(s: &str) -> Option<BuilderKind> {
        BuilderKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn names() -> Vec<&'static str> {
        BuilderKind::ALL.iter().map(|b| b.as_str()).collect()
    }

    /// The builder's own description (see [`BuilderSpec`]).
    pub fn spec(self) -> &'static BuilderSpec {
        use crate::builders::{
            aws_ami, command, gcp_image, hcloud, image_builder, local, template_patch, upload,
        };
        match self {
            BuilderKind::TemplatePatch => &template_patch::SPEC,
            BuilderKind::ImageBuilder => &image_builder::SPEC,
            BuilderKind::Command => &command::SPEC,
            BuilderKind::Local => &local::SPEC,
            BuilderKind::Upload => &upload::SPEC,
            BuilderKind::AwsAmi => &aws_ami::SPEC,
            BuilderKind::GcpImage => &gcp_image::SPEC,
            BuilderKind::HcloudSnapshot => &hcloud::SPEC,
        }
    }

    pub fn params(self) -> &'static [ParamSpec] {
        self.spec().params
    }

    pub fn consumes(self) -> Consumes {
        self.spec().consumes
    }
}

impl fmt::Display for BuilderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
