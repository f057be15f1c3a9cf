//! kiln: builds Cluster API machine images from a declarative matrix, the way Nix builds packages.

pub mod hash;
