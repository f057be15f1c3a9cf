//! Step kinds and the builders that run them: what a module may name, and which parameters each
//! builder takes. Pure data; the runners live in `crate::builders`.

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
}

const fn p(name: &'static str, ty: ParamType, required: bool, doc: &'static str) -> ParamSpec {
    ParamSpec {
        name,
        ty,
        required,
        doc,
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

const TEMPLATE_PATCH_PARAMS: &[ParamSpec] = &[p(
    "template",
    ParamType::Str,
    true,
    "the packer template to patch, relative to image-builder's images/capi",
)];
const IMAGE_BUILDER_PARAMS: &[ParamSpec] = &[p(
    "target",
    ParamType::Str,
    true,
    "the make target, e.g. \"build-ami-{os}\"",
)];
const COMMAND_PARAMS: &[ParamSpec] = &[
    p(
        "argv",
        ParamType::List,
        true,
        "the program and its arguments",
    ),
    p(
        "outputs",
        ParamType::List,
        false,
        "files the command writes, relative to its work directory",
    ),
    p(
        "debug-env",
        ParamType::List,
        false,
        "NAME=VALUE pairs set on retries",
    ),
];
const LOCAL_PARAMS: &[ParamSpec] = &[
    p(
        "size",
        ParamType::Str,
        false,
        "the filesystem size, e.g. \"64M\"",
    ),
    p("label", ParamType::Str, false, "the filesystem label"),
    p(
        "mirrors",
        ParamType::List,
        false,
        "registry mirrors written as containerd hosts.toml files",
    ),
];
const UPLOAD_PARAMS: &[ParamSpec] = &[
    p(
        "bucket",
        ParamType::Str,
        true,
        "where to upload: file:///dir or s3://bucket/prefix",
    ),
    p(
        "checksum",
        ParamType::Bool,
        false,
        "also upload a .sha256 file (default #true)",
    ),
    p(
        "object",
        ParamType::Str,
        false,
        "the object name (default: the cell name + .qcow2)",
    ),
    p(
        "endpoint",
        ParamType::Str,
        false,
        "s3:// buckets: the S3-compatible endpoint URL (default: AWS)",
    ),
    p(
        "region",
        ParamType::Str,
        false,
        "s3:// buckets: the region (default \"us-east-1\")",
    ),
    p(
        "path-style",
        ParamType::Bool,
        false,
        "s3:// buckets: path-style requests (default #true; #false for virtual-hosted style)",
    ),
];
const AWS_AMI_PARAMS: &[ParamSpec] = &[
    p(
        "regions",
        ParamType::List,
        true,
        "regions the AMI is copied to",
    ),
    p(
        "public",
        ParamType::Bool,
        false,
        "make the AMI and its snapshots public",
    ),
    p(
        "endpoint",
        ParamType::Str,
        false,
        "the EC2 endpoint for every region (default https://ec2.<region>.amazonaws.com)",
    ),
];
const GCP_IMAGE_PARAMS: &[ParamSpec] = &[
    p(
        "member",
        ParamType::Str,
        true,
        "e.g. \"allAuthenticatedUsers\"",
    ),
    p(
        "role",
        ParamType::Str,
        true,
        "e.g. \"roles/compute.imageUser\"",
    ),
    p(
        "project",
        ParamType::Str,
        true,
        "the project holding the image",
    ),
    p(
        "image",
        ParamType::Str,
        false,
        "the image name, when the build records none",
    ),
    p(
        "family",
        ParamType::Str,
        false,
        "otherwise: share the newest image of this family",
    ),
];
const HCLOUD_SNAPSHOT_PARAMS: &[ParamSpec] = &[
    p(
        "labels",
        ParamType::List,
        false,
        "KEY=VALUE labels put on the snapshot",
    ),
    p(
        "endpoint",
        ParamType::Str,
        false,
        "the API endpoint (default https://api.hetzner.cloud/v1)",
    ),
];

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

    pub fn params(self) -> &'static [ParamSpec] {
        match self {
            BuilderKind::TemplatePatch => TEMPLATE_PATCH_PARAMS,
            BuilderKind::ImageBuilder => IMAGE_BUILDER_PARAMS,
            BuilderKind::Command => COMMAND_PARAMS,
            BuilderKind::Local => LOCAL_PARAMS,
            BuilderKind::Upload => UPLOAD_PARAMS,
            BuilderKind::AwsAmi => AWS_AMI_PARAMS,
            BuilderKind::GcpImage => GCP_IMAGE_PARAMS,
            BuilderKind::HcloudSnapshot => HCLOUD_SNAPSHOT_PARAMS,
        }
    }

    pub fn consumes(self) -> Consumes {
        match self {
            BuilderKind::TemplatePatch => Consumes {
                patches: true,
                image_builder: true,
                ..Consumes::default()
            },
            BuilderKind::ImageBuilder => Consumes {
                vars: true,
                files: true,
                secrets: true,
                image_builder: true,
                ..Consumes::default()
            },
            BuilderKind::Command | BuilderKind::Local => Consumes {
                vars: true,
                files: true,
                secrets: self == BuilderKind::Command,
                ..Consumes::default()
            },
            BuilderKind::Upload
            | BuilderKind::AwsAmi
            | BuilderKind::GcpImage
            | BuilderKind::HcloudSnapshot => Consumes {
                secrets: true,
                ..Consumes::default()
            },
        }
    }
}

impl fmt::Display for BuilderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
