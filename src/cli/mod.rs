//! The command line: flags, resolved settings, one file per subcommand.

mod build;
mod cache;
mod check;
mod context;
mod explain;
mod export;
mod github;
mod graph;
mod images;
mod init;
mod matrix;
mod plan;
mod preflight;
mod refresh;
mod remote;
mod render;
mod report;
mod run;
mod serve;
mod settings;
mod share;
mod update;
mod view;
mod watch;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use report::CliError;

/// `kiln --version`: the version and, when built from a git checkout, the commit.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), env!("KILN_VERSION_SUFFIX"));

const EXAMPLES: &str = "\
Examples:
  kiln init                              # a starter images.kdl (offline `local` provider)
  kiln check                             # validate images.kdl, its modules and images.lock
  kiln plan                              # what a build would do, and why
  kiln plan --detailed-exitcode          # exit 0: nothing to do, 2: changes, 1: error
  kiln build --provider aws -j 4         # build the aws cells, 4 nodes at once
  kiln build --plan plan.json            # run exactly a plan saved with `kiln plan -o plan.json`
  kiln explain aws/ubuntu-2404/1.31/build
  kiln logs aws/ubuntu-2404/1.31/build
  kiln matrix --format github            # {\"include\":[…]} for a GitHub Actions matrix
  kiln cache gc --orphans --dry-run";

#[derive(Parser, Debug)]
#[command(
    name = "kiln",
    version = VERSION,
    about = "Builds Cluster API machine images from a declarative matrix",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// The config file.
    #[arg(
        short = 'f',
        long = "file",
        global = true,
        default_value = "images.kdl"
    )]
    pub file: PathBuf,
    /// The cache directory (default: `cache/` beside the config file).
    #[arg(long, global = true)]
    pub cache_dir: Option<PathBuf>,
    /// The shared cache: s3://BUCKET/PREFIX, gs://…, az://… or file:///PATH (default:
    /// KILN_REMOTE_CACHE, then `remote-cache` in the config). Credentials come from the
    /// standard environment of each cloud; an S3-compatible server from AWS_ENDPOINT_URL.
    #[arg(long, global = true, value_name = "URL")]
    pub remote_cache: Option<String>,
    /// Sign results with this key and write them to the remote cache (default:
    /// KILN_SIGNING_KEY). Without one, kiln only reads from the remote.
    #[arg(long, global = true, value_name = "FILE")]
    pub signing_key: Option<PathBuf>,
    /// When to colour the output: `auto` colours a terminal unless `NO_COLOR` is set, and any
    /// stream when `CLICOLOR_FORCE` is.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "auto",
        value_name = "WHEN"
    )]
    pub color: settings::ColorChoice,
    /// A checkout of kubernetes-sigs/image-builder (the directory holding `images/capi`) to
    /// run image-builder steps with, over the config's `source=` (default:
    /// KILN_IMAGE_BUILDER_SOURCE). In no key.
    #[arg(long, global = true, value_name = "PATH")]
    pub image_builder_source: Option<PathBuf>,
    /// image-builder's container image (`REF@sha256:…`) to run image-builder steps with, over
    /// the config's `image=` (default: KILN_IMAGE_BUILDER_IMAGE). In no key.
    #[arg(long, global = true, value_name = "REF")]
    pub image_builder_image: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate the config and every module it imports.
    Check {
        /// Print `{file, files, matrices, cells, nodes, warnings}`; errors as JSON objects.
        #[arg(long)]
        json: bool,
        /// Also run a build's preflight for every node: secrets present, image-builder's
        /// checkout or image set, the programs each step runs on PATH.
        #[arg(long)]
        build: bool,
    },
    /// Print the expanded matrix cells.
    Matrix {
        #[command(flatten)]
        select: Select,
        /// Print a JSON array of cells.
        #[arg(long)]
        json: bool,
        /// How to print the cells: a table, a JSON array, or GitHub Actions' `{"include": […]}`
        /// for `strategy.matrix: ${{ fromJSON(…) }}` (one object per cell: `cell`, `matrix` and
        /// its axis values).
        #[arg(long, value_enum, default_value = "text", conflicts_with = "json")]
        format: matrix::MatrixFormat,
    },
    /// Print the graph of step nodes.
    Graph {
        #[command(flatten)]
        select: Select,
        #[arg(long, value_enum, default_value = "dot")]
        format: crate::graph::GraphFormat,
    },
    /// Show what a build would do, node by node, and why.
    #[command(after_help = "Examples:
  kiln plan                              # what runs, and why; cached nodes counted per cell
  kiln plan --all                        # every node, cached ones included
  kiln plan --provider aws --kubernetes 1.31
  kiln plan --format markdown            # for a pull request comment
  kiln plan --detailed-exitcode          # exit 0: nothing to do, 2: changes, 1: error
  kiln plan -o plan.json && kiln build --plan plan.json")]
    Plan(plan::PlanArgs),
    /// Run every node the plan marks, in dependency order, and record the results.
    #[command(after_help = "Examples:
  kiln build                             # the whole matrix
  kiln build --cell aws-ubuntu-2404-k8s-1.31 -j 2
  kiln build --fail-fast --progress plain
  kiln build --force aws/ubuntu-2404/1.31/build
  kiln build --json > build.json         # the summary for a machine; progress on stderr")]
    Build(build::BuildArgs),
    /// Build exactly one node: its dependencies' results come from the cache (local, then
    /// remote), its own goes to the remote. For workflow engines (see `kiln export`).
    #[command(after_help = "Examples:
  kiln run aws/ubuntu-2404/1.31/build    # refuses if the validate step's result is in no cache
  kiln run aws/ubuntu-2404/1.31/publish --with-deps")]
    Run(run::RunArgs),
    /// Write the graph as an Argo Workflow, a Tekton Pipeline or a GitHub Actions workflow
    /// whose tasks each `kiln run` one node against the remote cache.
    #[command(after_help = "Examples:
  kiln export argo --all -o kiln-workflow.yaml      # then: kubectl create -f kiln-workflow.yaml
  kiln export argo --template --image registry.example.com/kiln:0.1.0
  kiln export tekton --provider aws --all
  kiln export github --all -o .github/workflows/kiln.yml")]
    Export(export::ExportArgs),
    /// Show one node's key, inputs, and why it would run.
    Explain {
        /// The node id, as `kiln plan` prints it.
        node: String,
        /// Print the node, its inputs and its plan as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// List what is published, per cell: the facts of each publish node's last result.
    Images {
        #[command(flatten)]
        select: Select,
        /// Print a JSON array of `{cell, node, facts, current}`.
        #[arg(long)]
        json: bool,
    },
    /// Print a node's last log.
    Logs {
        /// The node id, as `kiln plan` prints it.
        node: String,
        /// Print `{node, key, log_digest, log}`.
        #[arg(long)]
        json: bool,
    },
    /// Serve build requests over HTTP: the seeds' payload at POST /v1/builds, GitHub release
    /// webhooks at POST /v1/github; a durable queue, one worker, a status page at /.
    #[command(after_help = "Examples:
  KILN_WEBHOOK_SECRET=… kiln serve --listen 0.0.0.0:8080
  KILN_API_TOKEN=… kiln serve -j 2

Every POST is authenticated: X-Hub-Signature-256 (HMAC-SHA256 of the body with
KILN_WEBHOOK_SECRET) or Authorization: Bearer KILN_API_TOKEN.")]
    Serve(serve::ServeArgs),
    /// Inspect or clean the cache.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Write a starter images.kdl (at -f, default ./images.kdl) and the provider module it
    /// imports; `kiln check` accepts it as written.
    #[command(
        after_help = "Examples:\n  kiln init                      # the offline `local` provider: small ext4 images in qcow2\n  kiln init --provider aws\n  kiln -f images/images.kdl init --provider hcloud"
    )]
    Init {
        /// The provider of the matrix.
        #[arg(long, value_enum, default_value = "local")]
        provider: init::Provider,
    },
    /// Print a shell completion script: `kiln completions bash > /etc/bash_completion.d/kiln`,
    /// `kiln completions zsh > "${fpath[1]}/_kiln"`, `kiln completions fish >
    /// ~/.config/fish/completions/kiln.fish`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Move tracked Kubernetes series to their newest stable patch release in images.lock, and
    /// show the plan of what that rebuilds.
    #[command(after_help = "Examples:
  kiln update                            # every tracked series
  kiln update 1.32 --dry-run             # what would change, and its plan; nothing written
  kiln update 1.32.5                     # exactly this release (a stable release on GitHub)
  kiln update --detailed-exitcode        # exit 0: up to date, 2: updated, 1: error")]
    Update(update::UpdateArgs),
    /// Update, then build: once (for a CronJob) or on a schedule.
    #[command(after_help = "Examples:
  kiln watch --once                      # one round: update, then build what is not cached
  kiln watch --every 24h                 # a round now, then one a day")]
    Watch(watch::WatchArgs),
    /// Runs one process of a step and ends every process it leaves behind (kiln starts this
    /// itself for every process of a step).
    #[command(name = "__supervise", hide = true)]
    Supervise {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        argv: Vec<std::ffi::OsString>,
    },
}

impl Command {
    /// Whether the command only reads files and prints (no network, no child process).
    fn only_prints(&self) -> bool {
        matches!(
            self,
            Command::Check { .. }
                | Command::Matrix { .. }
                | Command::Graph { .. }
                | Command::Explain { .. }
                | Command::Logs { .. }
                | Command::Completions { .. }
        )
    }

    /// Whether the command was asked for JSON: then its errors are JSON too.
    pub fn json(&self) -> bool {
        match self {
            Command::Check { json, .. }
            | Command::Images { json, .. }
            | Command::Explain { json, .. }
            | Command::Logs { json, .. } => *json,
            Command::Matrix { json, format, .. } => *json || *format != matrix::MatrixFormat::Text,
            Command::Plan(args) => args.json || args.format == plan::PlanFormat::Json,
            Command::Build(args) => args.json,
            Command::Run(args) => args.json,
            Command::Serve(_) => false,
            Command::Cache(cmd) => cmd.json(),
            Command::Graph { format, .. } => *format == crate::graph::GraphFormat::Json,
            Command::Supervise { .. } | Command::Init { .. } | Command::Completions { .. } => false,
            Command::Update(_) | Command::Watch(_) => false,
            Command::Export(_) => false,
        }
    }
}

/// Which cells to work on.
#[derive(Args, Debug, Clone, Default)]
pub struct Select {
    /// Only the cells of this matrix (default: every matrix).
    #[arg(long = "matrix", value_name = "NAME")]
    pub matrix: Option<String>,
    /// Only cells with this Kubernetes series (repeatable).
    #[arg(long = "kubernetes", value_name = "SERIES")]
    pub kubernetes: Vec<String>,
    /// Only cells of this provider (repeatable).
    #[arg(long = "provider", value_name = "NAME")]
    pub provider: Vec<String>,
    /// Only cells with this OS (repeatable).
    #[arg(long = "os", value_name = "OS")]
    pub os: Vec<String>,
    /// Only the cell with this name (repeatable).
    #[arg(long = "cell", value_name = "NAME")]
    pub cell: Vec<String>,
}

/// Parses the command line, runs it and reports an error; returns the exit code. A command line
/// clap rejects exits 2, or 1 under `--detailed-exitcode` (where 2 means "changes").
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> i32 {
    let args: Vec<std::ffi::OsString> = args.into_iter().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            if !e.use_stderr() {
                print_clap(&e);
                return 0;
            }
            if args.iter().any(|a| a == "--json") {
                let text = e.render().to_string();
                let message = text.lines().next().unwrap_or_default();
                let message = message.strip_prefix("error: ").unwrap_or(message);
                CliError::Usage(message.to_string()).report_json();
            } else {
                print_clap(&e);
            }
            let detailed = args.iter().any(|a| a == "--detailed-exitcode");
            return if detailed { 1 } else { 2 };
        }
    };
    settings::init(cli.color);
    if cli.command.only_prints() {
        // `kiln matrix | head` ends quietly when head does, as other Unix tools do, instead
        // of failing to print. Commands that talk to the network or to children keep the
        // ignored SIGPIPE Rust starts with, and see EPIPE as an error.
        // SAFETY: setting a signal's disposition to its default is always sound.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let json = cli.command.json();
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            if json {
                e.report_json();
            } else {
                e.report();
            }
            if let Some(gh) = github::GitHub::from_env() {
                for error in e.to_json() {
                    gh.cli_error(&error);
                }
            }
            e.exit_code()
        }
    }
}

/// Prints clap's help, `--version` or usage error: by clap itself on a terminal (in colour),
/// else through [`crate::output`], so that a failed write (`kiln --help >/dev/full`) gives an
/// exit code too.
fn print_clap(e: &clap::Error) {
    use std::io::IsTerminal;
    let to_stderr = e.use_stderr();
    let tty = if to_stderr {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    };
    if tty {
        let _ = e.print();
    } else if to_stderr {
        eprint!("{}", e.render());
    } else {
        print!("{}", e.render());
    }
}

pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Check { json, build } => check::run(&cli, json, build),
        Command::Matrix {
            ref select,
            json,
            format,
        } => {
            let format = if json {
                matrix::MatrixFormat::Json
            } else {
                format
            };
            matrix::run(&cli.file, select, format)
        }
        Command::Graph { ref select, format } => graph::run(&cli.file, select, format),
        Command::Plan(ref args) => plan::run(&cli, args),
        Command::Build(ref args) => build::run(&cli, args),
        Command::Run(ref args) => run::run(&cli, args),
        Command::Export(ref args) => export::run(&cli, args),
        Command::Serve(ref args) => serve::run(&cli, args),
        Command::Images { ref select, json } => images::run(&cli, select, json),
        Command::Logs { ref node, json } => cache::logs(&cli, node, json),
        Command::Explain { ref node, json } => explain::run(&cli, node, json),
        Command::Cache(ref cmd) => cache::run(&cli, cmd),
        Command::Init { provider } => init::run(&cli.file, provider),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            // Generated in memory: clap_complete panics when it cannot write.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "kiln", &mut script);
            crate::output::write_bytes(crate::output::Stream::Stdout, &script);
            Ok(())
        }
        Command::Update(ref args) => update::run(&cli, args),
        Command::Watch(ref args) => watch::run(&cli, args),
        Command::Supervise { ref argv } => crate::process::supervise::run(argv),
    }
}
