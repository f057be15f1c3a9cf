//! `kiln update [SERIES|VERSION…] [--dry-run] [--detailed-exitcode]`: moves tracked series to
//! their newest stable patch release (or a named one) in `images.lock`, then shows the plan of
//! what that rebuilds.

use clap::Args;

use super::plan::{PlanArgs, PlanFormat};
use super::{Cli, CliError, Select, context};
use crate::config::{self, LOCK_FILE, LoadOptions};
use crate::trigger::source::Sources;
use crate::trigger::update::{self, LockChange, Target, UpdateError};

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// The series to update (`1.32`; default: every tracked series), or an exact release to
    /// move its series to (`1.32.5`, which must be a stable release on GitHub).
    #[arg(value_name = "SERIES|VERSION")]
    pub series: Vec<String>,
    /// Resolve and show what would change, and its plan; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Exit 0 when the lock is up to date, 2 when it changed (or would, with --dry-run), 1 on
    /// any error.
    #[arg(long)]
    pub detailed_exitcode: bool,
}

pub fn run(cli: &Cli, args: &UpdateArgs) -> Result<(), CliError> {
    let r = update(cli, args);
    match r {
        Err(e) if args.detailed_exitcode && !matches!(e, CliError::Exit(2)) => Err(e.as_failure()),
        r => r,
    }
}

/// An update error as the command line reports it: the message and how to fix it.
pub fn failed(e: UpdateError) -> CliError {
    CliError::Failed(format!("{e}\n  help: {}", e.help()))
}

/// A runtime for the release sources' requests.
pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the async runtime: {e}")))
}

/// The release sources, their GitHub answers kept in the cache for conditional requests.
pub fn sources(config: &config::Config, cli: &Cli) -> Sources {
    Sources::from_env().with_cache_dir(context::cache_dir(config, &cli.cache_dir).join("http"))
}

/// `1.32` asks for the newest release of the series, `1.32.5` for exactly that one.
fn targets(args: &[String]) -> Result<(Vec<String>, Vec<String>), CliError> {
    let (mut series, mut exact) = (Vec::new(), Vec::new());
    for a in args {
        let a = a.strip_prefix('v').unwrap_or(a);
        if crate::trigger::version::Series::parse(a).is_some() {
            series.push(a.to_string());
        } else if crate::trigger::version::Version::parse(a).is_some() {
            exact.push(a.to_string());
        } else {
            return Err(CliError::Usage(format!(
                "`{a}` is neither a series (1.32) nor a release (1.32.5)"
            )));
        }
    }
    Ok((series, exact))
}

fn update(cli: &Cli, args: &UpdateArgs) -> Result<(), CliError> {
    let (series, exact) = targets(&args.series)?;
    let options = LoadOptions {
        unlocked_ok: true,
        ..LoadOptions::default()
    };
    let (config, warnings) = config::load_with(&cli.file, &options).map_err(CliError::Config)?;
    if !warnings.0.is_empty() {
        super::report::print_diags(&warnings);
    }
    if series.is_empty() && exact.is_empty() && !config.releases.values().any(|r| r.tracked) {
        println!(
            "No series is tracked: mark one `kubernetes \"1.32\" track=#true {{ … }}` in the config to have kiln update maintain it."
        );
        return Ok(());
    }
    let sources = sources(&config, cli);
    let changes: Vec<LockChange> = runtime()?
        .block_on(async {
            let mut all = Vec::new();
            if !series.is_empty() || exact.is_empty() {
                all.extend(update::resolve(&config, &sources, &series, &Target::Latest).await?);
            }
            for v in &exact {
                let found =
                    update::resolve(&config, &sources, &[], &Target::Exact(v.clone())).await?;
                all.retain(|c: &LockChange| !found.iter().any(|f| f.series == c.series));
                all.extend(found);
            }
            Ok::<_, UpdateError>(all)
        })
        .map_err(failed)?;
    if changes.is_empty() {
        let at: Vec<String> = config
            .releases
            .values()
            .filter(|r| r.tracked && (series.is_empty() || series.contains(&r.series)))
            .map(|r| {
                format!(
                    "{} at {} ({}-{})",
                    r.series, r.version, r.version, r.revision
                )
            })
            .collect();
        println!("No updates: kubernetes {}.", at.join(", "));
        return Ok(());
    }
    let verb = if args.dry_run {
        "Would update"
    } else {
        "Updated"
    };
    for c in &changes {
        println!("• {verb} {}", c.describe());
    }
    let lock_path = config.root.join(LOCK_FILE);
    let current = match std::fs::read_to_string(&lock_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(CliError::Failed(format!(
                "cannot read {}: {e}",
                lock_path.display()
            )));
        }
    };
    let text = update::rewritten(&current, &changes).map_err(|error| {
        failed(UpdateError::Lock {
            path: lock_path.display().to_string(),
            error,
        })
    })?;
    if !args.dry_run {
        update::apply(&config.root, &changes).map_err(failed)?;
    }
    println!();
    // The plan of what the update rebuilds: the cells of the moved series, against the lock as
    // it is now (or would be).
    let loaded = config::load_with(
        &cli.file,
        &LoadOptions {
            lock: Some(text),
            unlocked_ok: false,
        },
    );
    let config = match loaded {
        Ok((config, _)) => config,
        // Another tracked series has no version yet: there is no graph to plan.
        Err(d)
            if d.0
                .iter()
                .all(|d| !d.is_error() || d.code == "kiln::lock::missing") =>
        {
            let unlocked: Vec<String> = config
                .releases
                .values()
                .filter(|r| r.tracked && r.version.is_empty())
                .filter(|r| !changes.iter().any(|c| c.series == r.series))
                .map(|r| r.series.clone())
                .collect();
            println!(
                "No plan: kubernetes {} is tracked and not locked yet; `kiln update {}` locks it.",
                unlocked.join(", "),
                unlocked.join(" ")
            );
            return finish(args);
        }
        Err(d) => return Err(CliError::Config(d)),
    };
    let select = Select {
        kubernetes: changes.iter().map(|c| c.series.clone()).collect(),
        ..Select::default()
    };
    let loaded = match context::from_config(config, config::Diags::default(), &select, true) {
        Ok((loaded, _)) => loaded,
        Err(CliError::Usage(_)) => {
            println!("No cell of the matrix uses these series: nothing rebuilds.");
            return finish(args);
        }
        Err(e) => return Err(e),
    };
    let plan_args = PlanArgs {
        select,
        format: PlanFormat::Text,
        json: false,
        all: false,
        out: None,
        force: Vec::new(),
        detailed_exitcode: false,
        refresh: true,
    };
    super::plan::print_plan(cli, &plan_args, loaded, None)?;
    finish(args)
}

fn finish(args: &UpdateArgs) -> Result<(), CliError> {
    if args.dry_run {
        println!("Dry run: {LOCK_FILE} was not written.");
    }
    if args.detailed_exitcode {
        return Err(CliError::Exit(2));
    }
    Ok(())
}
