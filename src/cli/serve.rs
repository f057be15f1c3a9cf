//! `kiln serve`: the HTTP server of build requests (see [`crate::trigger::serve`]), with kiln's
//! own [`Engine`]: requests are resolved against images.kdl and images.lock, and queued builds
//! run through [`super::build::execute`], exactly what `kiln build --cell …` runs.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::build::BuildArgs;
use super::{Cli, CliError, Command, Select, context};
use crate::exec::Outcome;
use crate::trigger::serve::page::CatalogRow;
use crate::trigger::serve::{
    self, Auth, BuildRequest, BuildResult, Engine, NodeRow, PrepareError, Prepared, RequestError,
};
use crate::trigger::update::{self, Target};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The address to listen on (`0.0.0.0:8080` in a container; port 0 picks a free port,
    /// printed when the server starts).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// How many nodes of a build run at once (default: the number of cores).
    #[arg(short = 'j', long = "jobs")]
    pub jobs: Option<usize>,
    /// Also run `kiln watch` rounds: one now, then one every DURATION (`24h`): every tracked
    /// series is moved to its newest stable release and a build of its cells queued.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub watch: Option<std::time::Duration>,
    /// Answer 202 without writing the queue or building anything: the reference
    /// `bench/serve.sh` measures the durable queue against.
    #[arg(long, hide = true)]
    pub no_persist: bool,
}

/// The global flags a build of the server runs with.
#[derive(Clone)]
struct Globals {
    file: PathBuf,
    cache_dir: Option<PathBuf>,
    remote_cache: Option<String>,
    signing_key: Option<PathBuf>,
    image_builder_source: Option<PathBuf>,
    image_builder_image: Option<String>,
    jobs: Option<usize>,
}

struct KilnEngine {
    g: Globals,
}

/// A CLI error as one line (a config error's diagnostics are also printed to the server's
/// log in full).
fn one_line(e: &CliError) -> String {
    if let CliError::Config(_) = e {
        e.report();
    }
    let parts: Vec<String> = e
        .to_json()
        .iter()
        .map(|j| {
            let m = j["message"].as_str().unwrap_or_default();
            match (j["file"].as_str(), j["line"].as_u64()) {
                (Some(f), Some(l)) => format!("{f}:{l}: {m}"),
                _ => m.to_string(),
            }
        })
        .collect();
    parts.join("; ")
}

fn unavailable(e: &CliError) -> PrepareError {
    PrepareError::Unavailable(format!("the config does not load: {}", one_line(e)))
}

fn unprocessable(field: &str, message: String, help: String) -> PrepareError {
    PrepareError::Request(RequestError::unprocessable(field, message).help(help))
}

impl KilnEngine {
    fn load(&self, select: &Select) -> Result<context::Loaded, CliError> {
        context::load_with_warnings(&self.g.file, select, true).map(|(l, _)| l)
    }

    fn cache_dir(&self, loaded: &context::Loaded) -> PathBuf {
        context::cache_dir(&loaded.config, &self.g.cache_dir)
    }

    fn cli(&self, args: BuildArgs) -> Cli {
        Cli {
            file: self.g.file.clone(),
            cache_dir: self.g.cache_dir.clone(),
            remote_cache: self.g.remote_cache.clone(),
            signing_key: self.g.signing_key.clone(),
            image_builder_source: self.g.image_builder_source.clone(),
            image_builder_image: self.g.image_builder_image.clone(),
            color: super::settings::ColorChoice::Never,
            command: Command::Build(args),
        }
    }

    /// Checks the request against the config; returns the provider's name and, for a tracked
    /// series the request moves forward, the lock changes.
    fn check(
        &self,
        loaded: &context::Loaded,
        req: &BuildRequest,
    ) -> Result<(Option<String>, Option<String>), PrepareError> {
        let config = &loaded.config;
        let series = req.version.series();
        let version = req.version.to_string();
        let Some(release) = config.releases.get(&series) else {
            let declared: Vec<&str> = config.releases.keys().map(String::as_str).collect();
            return Err(unprocessable(
                "k8s.version",
                format!(
                    "{version} is a release of kubernetes {series}, which the config does not declare (declared: {})",
                    declared.join(", ")
                ),
                format!(
                    "add `kubernetes \"{series}\" track=#true {{ … }}` to images.kdl and a matrix that builds it"
                ),
            ));
        };
        let provider = match &req.provider {
            None => None,
            Some(name) => match config.provider_named(name) {
                Some(p) => Some(p.name.clone()),
                None => {
                    let mut names: Vec<String> = Vec::new();
                    for p in config.providers.values() {
                        names.push(p.name.clone());
                        names.extend(p.aliases.iter().map(|a| a.value.clone()));
                    }
                    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                    return Err(unprocessable(
                        "provider",
                        format!("unknown provider `{name}`"),
                        format!(
                            "{}; a provider block can declare `alias \"{name}\"` to take this name",
                            crate::config::diag::did_you_mean(name, &refs, "provider")
                        ),
                    ));
                }
            },
        };
        let cells = loaded.all.iter().filter(|c| {
            c.values.get("kubernetes") == Some(&series)
                && provider
                    .as_ref()
                    .is_none_or(|p| c.values.get("provider") == Some(p))
        });
        if cells.count() == 0 {
            let (field, what) = match &provider {
                Some(p) => ("provider", format!(" with provider {p}")),
                None => ("k8s.version", String::new()),
            };
            return Err(unprocessable(
                field,
                format!("no cell of the matrix builds kubernetes {series}{what}"),
                "add the series and provider to a matrix in images.kdl; `kiln matrix` lists the cells".into(),
            ));
        }
        let position = config.sources.position(release.loc);
        if !release.tracked {
            if release.version != version {
                return Err(unprocessable(
                    "k8s.version",
                    format!(
                        "kubernetes {series} is pinned to {} ({position}); {version} is not what it builds",
                        release.version
                    ),
                    format!(
                        "ask for {} (builds what is not cached), change `version` in the `kubernetes \"{series}\"` block, or track the series with track=#true so requests move images.lock",
                        release.version
                    ),
                ));
            }
            return Ok((provider, None));
        }
        let locked = serve::Version::parse(&release.version).ok();
        match locked {
            Some(l) if l == req.version => Ok((provider, None)),
            Some(l) if l > req.version => Err(unprocessable(
                "k8s.version",
                format!(
                    "kubernetes {series} is locked at {l} in images.lock; {version} is older, and the lock never moves backwards"
                ),
                format!("ask for {l} or newer"),
            )),
            _ => {
                let sources = crate::trigger::source::Sources::from_env()
                    .with_cache_dir(self.cache_dir(loaded).join("http"));
                let changes = tokio::runtime::Handle::current()
                    .block_on(update::resolve(
                        config,
                        &sources,
                        std::slice::from_ref(&series),
                        &Target::Exact(version.clone()),
                    ))
                    .map_err(|e| match &e {
                        update::UpdateError::Source { .. } | update::UpdateError::Lock { .. } => {
                            PrepareError::Unavailable(e.to_string())
                        }
                        _ => unprocessable("k8s.version", e.to_string(), e.help()),
                    })?;
                if changes.is_empty() {
                    return Ok((provider, None));
                }
                update::apply(&config.root, &changes)
                    .map_err(|e| PrepareError::Unavailable(e.to_string()))?;
                let text: Vec<String> = changes.iter().map(|c| c.describe()).collect();
                for t in &text {
                    eprintln!("kiln serve: • Updated {t}");
                }
                Ok((provider, Some(text.join("; "))))
            }
        }
    }
}

impl Engine for KilnEngine {
    fn prepare(&self, req: &BuildRequest) -> Result<Prepared, PrepareError> {
        let loaded = self.load(&Select::default()).map_err(|e| unavailable(&e))?;
        let (provider, lock) = self.check(&loaded, req)?;
        let select = Select {
            kubernetes: vec![req.version.series()],
            provider: provider.iter().cloned().collect(),
            ..Select::default()
        };
        // Loaded again: the lock may have moved.
        let loaded = self.load(&select).map_err(|e| unavailable(&e))?;
        let dir = self.cache_dir(&loaded);
        let graph = context::lower(&loaded, Some(&dir)).map_err(|e| unavailable(&e))?;
        let keys = graph
            .order()
            .into_iter()
            .map(|ix| graph.node(ix).key.to_hex())
            .collect();
        Ok(Prepared {
            cells: loaded.cells.iter().map(|c| c.name.clone()).collect(),
            keys,
            provider,
            lock,
        })
    }

    fn build(&self, cells: &[String]) -> BuildResult {
        let select = Select {
            cell: cells.to_vec(),
            ..Select::default()
        };
        let args = BuildArgs::unattended(select, self.g.jobs);
        let cli = self.cli(args);
        let Command::Build(args) = &cli.command else {
            unreachable!("built as a build command above")
        };
        match super::build::report(&cli, args) {
            Err(e) => BuildResult::Done {
                ok: false,
                summary: "not built".into(),
                error: Some(one_line(&e)),
                nodes: Vec::new(),
            },
            Ok(report) if report.cancelled => BuildResult::Interrupted,
            Ok(report) => {
                let nodes = report
                    .nodes
                    .iter()
                    .map(|n| NodeRow {
                        id: n.id.clone(),
                        outcome: n.outcome.word().replace(' ', "_"),
                        duration_ms: n.duration.as_millis() as u64,
                        attempts: n.attempts,
                        error: match &n.outcome {
                            Outcome::Failed(e) => Some(
                                crate::exec::failure_message(n)
                                    .lines()
                                    .next()
                                    .unwrap_or(e)
                                    .to_string(),
                            ),
                            Outcome::Skipped { failed_dep } => {
                                Some(format!("upstream {failed_dep} failed"))
                            }
                            _ => None,
                        },
                    })
                    .collect();
                BuildResult::Done {
                    ok: report.ok(),
                    summary: report.summary(),
                    error: None,
                    nodes,
                }
            }
        }
    }

    fn catalog(&self) -> Result<Vec<CatalogRow>, String> {
        let loaded = self.load(&Select::default()).map_err(|e| one_line(&e))?;
        let dir = self.cache_dir(&loaded);
        let entries = super::images::catalog(&loaded, &dir).map_err(|e| one_line(&e))?;
        Ok(entries
            .into_iter()
            .map(|e| CatalogRow {
                state: match (&e.node, &e.facts) {
                    (None, _) => "no publish step".into(),
                    (Some(_), None) => "not published".into(),
                    (Some(_), Some(_)) => e.state(),
                },
                drift: e.refresh == Some(super::images::Refresh::Drift),
                cell: e.cell,
                node: e.node,
                current: e.current,
                facts: e.facts.unwrap_or_default(),
            })
            .collect())
    }

    fn config_name(&self) -> String {
        self.g.file.display().to_string()
    }

    fn watch_round(&self) -> Result<Vec<BuildRequest>, String> {
        let loaded = self.load(&Select::default()).map_err(|e| one_line(&e))?;
        let sources = crate::trigger::source::Sources::from_env()
            .with_cache_dir(self.cache_dir(&loaded).join("http"));
        let outcome = tokio::runtime::Handle::current()
            .block_on(crate::trigger::watch::once(&self.g.file, &sources))
            .map_err(|e| match e {
                crate::trigger::watch::WatchError::Config(d) => one_line(&CliError::Config(d)),
                crate::trigger::watch::WatchError::Update(u) => format!("{u} ({})", u.help()),
            })?;
        for c in &outcome.changes {
            eprintln!("kiln serve: watch: • Updated {}", c.describe());
        }
        // The lock as the round left it.
        let loaded = self.load(&Select::default()).map_err(|e| one_line(&e))?;
        Ok(loaded
            .config
            .releases
            .values()
            .filter(|r| r.tracked)
            .filter_map(|r| serve::Version::parse(&r.version).ok())
            .map(|version| BuildRequest {
                version,
                provider: None,
                origin: serve::request::Origin::Watch,
            })
            .collect())
    }
}

fn secret_env(name: &str) -> Option<Vec<u8>> {
    std::env::var_os(name).map(|v| {
        use std::os::unix::ffi::OsStringExt;
        v.into_vec()
    })
}

pub fn run(cli: &Cli, args: &ServeArgs) -> Result<(), CliError> {
    let auth = Auth::new(
        secret_env("KILN_WEBHOOK_SECRET"),
        secret_env("KILN_API_TOKEN"),
    );
    if args
        .watch
        .is_some_and(|w| w < std::time::Duration::from_secs(1))
    {
        return Err(CliError::Usage("--watch must be at least 1s".into()));
    }
    if !auth.any() {
        return Err(CliError::Usage(
            "kiln serve needs KILN_WEBHOOK_SECRET (for GitHub webhooks and signed requests) or KILN_API_TOKEN (for bearer tokens), or both: without either it would refuse every request".into(),
        ));
    }
    // The config must load now: a server that cannot resolve any request should not start.
    let (loaded, warnings) = context::load_with_warnings(&cli.file, &Select::default(), true)?;
    if !warnings.0.is_empty() {
        super::report::print_diags(&warnings);
    }
    let cache_dir = context::cache_dir(&loaded.config, &cli.cache_dir);
    let engine = Arc::new(KilnEngine {
        g: Globals {
            file: cli.file.clone(),
            cache_dir: cli.cache_dir.clone(),
            remote_cache: cli.remote_cache.clone(),
            signing_key: cli.signing_key.clone(),
            image_builder_source: cli.image_builder_source.clone(),
            image_builder_image: cli.image_builder_image.clone(),
            jobs: args.jobs,
        },
    });
    serve::run(
        serve::ServeOptions {
            listen: args.listen.clone(),
            cache_dir,
            auth,
            durable: !args.no_persist,
            watch: args.watch,
        },
        engine,
    )
    .map_err(|e| CliError::Failed(e.to_string()))
}
