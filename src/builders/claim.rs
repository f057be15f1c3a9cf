//! A publish result as a claim about the world, and what checking one found.

use std::collections::BTreeMap;

use super::StepCtx;

/// A cached publish result to check against the world before it is trusted.
pub struct Claim<'a> {
    /// The node as it would run (parameters, secrets), with an empty work directory.
    pub ctx: StepCtx,
    /// The facts of the result to check: the claim.
    pub facts: &'a BTreeMap<String, String>,
    /// What the last refresh (or the publish) left as evidence, if it applies to this claim.
    pub witness: Option<&'a str>,
}

/// What a refresh found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// Everything claimed is there as claimed. The witness lets the next refresh confirm an
    /// unchanged target cheaply (e.g. the stat of a `file://` object).
    Held { witness: Option<String> },
    /// Something claimed is missing or different: reasons to publish again.
    Drift(Vec<crate::plan::DirtyReason>),
    /// The check could not run (no credentials, the network is down, ...).
    Unknown(String),
}
