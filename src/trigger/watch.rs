//! One round of the watcher (`kiln watch`, `kiln serve --watch`): load the config, move every
//! tracked series to its newest stable release, write the lock. There is no time window: the
//! lock is what is compared against, so a watcher that stalled for weeks catches up on its next
//! round, and a round that finds nothing new changes nothing. Building is the caller's: the
//! command builds at once, a server queues the build.

use std::path::Path;

use super::source::Sources;
use super::update::{self, LockChange, Target, UpdateError};
use crate::config::{self, Diags, LoadOptions};

/// What a round did.
#[derive(Debug, Default)]
pub struct WatchOutcome {
    /// The series it moved (written to `images.lock`); empty when every one was up to date.
    pub changes: Vec<LockChange>,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The config cannot be loaded (each diagnostic says why).
    #[error("the config has errors")]
    Config(Diags),
    #[error(transparent)]
    Update(#[from] UpdateError),
}

/// One round against the config at `config_file`; nothing is written when any tracked series
/// cannot be resolved.
pub async fn once(config_file: &Path, sources: &Sources) -> Result<WatchOutcome, WatchError> {
    let options = LoadOptions {
        unlocked_ok: true,
        ..LoadOptions::default()
    };
    let (config, _warnings) =
        config::load_with(config_file, &options).map_err(WatchError::Config)?;
    let changes = update::resolve(&config, sources, &[], &Target::Latest).await?;
    update::apply(&config.root, &changes)?;
    Ok(WatchOutcome { changes })
}
