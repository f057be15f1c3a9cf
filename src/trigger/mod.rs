//! New Kubernetes releases: the release sources, `images.lock` updates, and the watcher that
//! updates and builds on a schedule.

pub mod github;
pub mod lockfile;
pub mod packages;
pub mod serve;
pub mod source;
pub mod stable;
pub mod update;
pub mod version;
pub mod watch;
