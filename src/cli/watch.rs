//! `kiln watch --once | --every 24h`: update every tracked series, then build. No time window:
//! each round compares the release sources with `images.lock`, so a watcher that stalled catches
//! up on its next round, and the cache makes sure nothing is built twice.

use std::time::Duration;

use clap::Args;

use super::build::BuildArgs;
use super::{Cli, CliError, Select};
use crate::trigger::watch::{self, WatchError};

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct WatchArgs {
    /// One round, then exit (for a CronJob): exit 1 if the update or the build failed.
    #[arg(long)]
    pub once: bool,
    /// A round now, then one every DURATION (`24h`, `30m`), until stopped; a round that fails
    /// is reported and the next one runs on time.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub every: Option<Duration>,
}

pub fn run(cli: &Cli, args: &WatchArgs) -> Result<(), CliError> {
    if args.once {
        return round(cli);
    }
    let every = args.every.unwrap_or(Duration::from_secs(24 * 3600));
    if every < Duration::from_secs(1) {
        return Err(CliError::Usage("--every must be at least 1s".into()));
    }
    loop {
        let started = std::time::Instant::now();
        if let Err(e) = round(cli) {
            e.report();
        }
        let next = every.saturating_sub(started.elapsed());
        println!(
            "Next round in {}.",
            humantime::format_duration(Duration::from_secs(next.as_secs()))
        );
        std::thread::sleep(next);
    }
}

/// Update, then build the whole matrix (the plan builds what is not cached: after an update, the
/// moved series' cells; after a failed build, what it left undone).
fn round(cli: &Cli) -> Result<(), CliError> {
    let options = crate::config::LoadOptions {
        unlocked_ok: true,
        ..Default::default()
    };
    let (config, _) = crate::config::load_with(&cli.file, &options).map_err(CliError::Config)?;
    let sources = super::update::sources(&config, cli);
    let outcome = super::update::runtime()?
        .block_on(watch::once(&cli.file, &sources))
        .map_err(|e| match e {
            WatchError::Config(d) => CliError::Config(d),
            WatchError::Update(u) => super::update::failed(u),
        })?;
    if outcome.changes.is_empty() {
        println!("No updates: every tracked series is at its newest stable release.");
    }
    for c in &outcome.changes {
        println!("• Updated {}", c.describe());
    }
    let build = BuildArgs::unattended(Select::default(), None);
    super::build::run(cli, &build)
}
