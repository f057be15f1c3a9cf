//! End-to-end tests of the `kiln` binary: each test copies a fixture into a temporary directory,
//! runs the real binary there and compares what it prints with golden files in `tests/data/`.
//!
//! `KILN_BLESS=1 cargo test --test cli` rewrites the golden files; review the diff before
//! committing it.

mod build;
mod config;
mod diagnostics;
mod dockerfile;
mod examples;
mod export;
mod fuzz;
mod hardening;
mod image_builder;
mod immutable;
mod live;
mod makefile;
mod plan;
mod publish;
mod releases;
mod remote;
mod report;
mod run;
mod s3;
mod serve;
mod store;
mod support;
mod truth;
mod update;
