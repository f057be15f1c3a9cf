//! Why a step failed: [`BuilderError`]. Its own variants are what any builder may meet (a
//! program that failed, a parameter, secret or upstream output that is missing, a file it cannot
//! write, an HTTP call); each builder's own failures are an enum in its file, carried here. The
//! executor turns one into the node's outcome (see [`BuilderError::is_cancelled`]).

use std::time::Duration;

use super::aws_ami::AwsAmiError;
use super::command::CommandError;
use super::gcp_image::GcpImageError;
use super::hcloud::HcloudError;
use super::image_builder::ImageBuilderError;
use super::local::LocalError;
use super::template_patch::TemplatePatchError;
use super::upload::UploadError;
use crate::config::BuilderKind;
use crate::process::ProcessError;

#[derive(Debug, thiserror::Error)]
pub enum BuilderError {
    /// A program the step ran did not succeed.
    #[error(transparent)]
    Process(ProcessError),
    /// The step's deadline passed.
    #[error("timed out after {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    /// The build was cancelled (Ctrl-C, SIGTERM).
    #[error("cancelled")]
    Cancelled,
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the step has no `{0}` parameter")]
    MissingParam(String),
    /// A path from the recipe that leaves the directory it is joined to.
    #[error("{what} `{path}` is not a path inside its directory: {why}")]
    NotConfined {
        what: String,
        path: String,
        why: String,
    },
    /// No upstream result has an output of this name.
    #[error("no upstream step produced `{0}`")]
    NoUpstream(String),
    /// An upstream output whose blob is not in the cache.
    #[error(
        "the output `{output}` of {node} is missing from the cache; run `kiln cache verify --repair` and build again"
    )]
    UpstreamMissing { output: String, node: String },
    /// An upstream output whose blob is missing or does not match its digest.
    #[error(
        "the output `{output}` of {node} ({digest}) is missing from the cache or damaged; run `kiln cache verify --repair` and build again"
    )]
    UpstreamDamaged {
        output: String,
        node: String,
        digest: String,
    },
    #[error("copying the output `{output}` of {node}: {source}")]
    UpstreamCopy {
        output: String,
        node: String,
        source: crate::store::StoreError,
    },
    #[error(
        "the `{builder}` builder needs the secret `{name}`: declare `secret \"{name}\"` in the provider"
    )]
    MissingSecret { builder: BuilderKind, name: String },
    #[error("cannot set up the HTTP client: {0}")]
    HttpClient(reqwest::Error),
    /// An HTTP call that failed; the error carries no URL (its query may be signed).
    #[error("{what}: {source}")]
    Http {
        what: String,
        source: reqwest::Error,
    },
    /// A step that succeeded without an output its builder promised.
    #[error("the {builder} step succeeded but left no `{output}`; nothing is recorded")]
    NotProduced {
        builder: BuilderKind,
        output: String,
    },
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error(transparent)]
    TemplatePatch(#[from] TemplatePatchError),
    #[error(transparent)]
    ImageBuilder(#[from] ImageBuilderError),
    #[error(transparent)]
    Upload(#[from] UploadError),
    #[error(transparent)]
    AwsAmi(#[from] AwsAmiError),
    #[error(transparent)]
    GcpImage(#[from] GcpImageError),
    #[error(transparent)]
    Hcloud(#[from] HcloudError),
}

impl BuilderError {
    /// Whether the step stopped because the build was cancelled: not a failure, and no retry.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, BuilderError::Cancelled)
    }

    /// What went wrong doing `what` with a file.
    pub fn io(what: impl Into<String>) -> impl Fn(std::io::Error) -> BuilderError {
        let what = what.into();
        move |source| BuilderError::Io {
            what: what.clone(),
            source,
        }
    }

    /// An HTTP call that failed while doing `what`, without the URL.
    pub fn http(what: impl Into<String>) -> impl Fn(reqwest::Error) -> BuilderError {
        let what = what.into();
        move |e| BuilderError::Http {
            what: what.clone(),
            source: e.without_url(),
        }
    }
}

/// A program's timeout and cancellation are the step's.
impl From<ProcessError> for BuilderError {
    fn from(e: ProcessError) -> BuilderError {
        match e {
            ProcessError::TimedOut(d) => BuilderError::TimedOut(d),
            ProcessError::Cancelled => BuilderError::Cancelled,
            e => BuilderError::Process(e),
        }
    }
}
