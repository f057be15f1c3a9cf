//! kiln: builds Cluster API machine images from a declarative matrix, the way Nix builds packages.

pub mod builders;
pub mod cli;
pub mod config;
pub mod exec;
pub mod graph;
pub mod hash;
pub mod imagebuilder;
pub mod matrix;
pub mod plan;
pub mod statcache;
pub mod store;
pub mod template;
