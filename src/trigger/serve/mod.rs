//! `kiln serve`: an HTTP server that takes build requests (the seeds' payload at
//! `POST /v1/builds`, GitHub `release` webhooks at `POST /v1/github`), authenticates each before
//! reading its body, writes it to a durable queue in the cache directory, and runs the queue with
//! one worker through the same executor as `kiln build`. What kiln does with a request (resolve
//! it against the config, run a build, read the catalog) is an [`Engine`], so this module knows
//! HTTP, the queue and the worker, and nothing of the CLI.

pub mod auth;
mod http;
pub mod metrics;
pub mod page;
pub mod queue;
pub mod request;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use auth::Auth;
pub use queue::{NodeRow, Queue};
pub use request::{BuildRequest, RequestError, Version};

/// The largest request body taken; a larger one is a 413.
pub const MAX_BODY: usize = 1 << 20;

/// A request resolved against the config.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The cells to build.
    pub cells: Vec<String>,
    /// The keys of every node of those cells, with the lock as it is now.
    pub keys: Vec<String>,
    /// The provider's name, when the request named it by an alias or by name.
    pub provider: Option<String>,
    /// How the lock moved for this request (`1.32 1.32.4 → 1.32.5`), when it did.
    pub lock: Option<String>,
}

/// Why a request could not be resolved.
#[derive(Debug, Clone)]
pub enum PrepareError {
    /// The request asks for something the config does not allow (a 4xx).
    Request(RequestError),
    /// kiln cannot answer now: the config does not load, a release source is down (a 503).
    Unavailable(String),
}

/// How a build run by the worker ended.
#[derive(Debug, Clone)]
pub enum BuildResult {
    Done {
        ok: bool,
        summary: String,
        error: Option<String>,
        nodes: Vec<NodeRow>,
    },
    /// Stopped by SIGINT or SIGTERM: it goes back to the queue and resumes from the cache.
    Interrupted,
}

/// What kiln does for the server.
pub trait Engine: Send + Sync + 'static {
    /// Resolves a request against the config: checks its series and provider, moves the lock of
    /// a tracked series forward, and returns the cells and their node keys. Blocking.
    fn prepare(&self, request: &BuildRequest) -> Result<Prepared, PrepareError>;
    /// Builds the cells as `kiln build --cell …` would. Blocking (the worker's thread).
    fn build(&self, cells: &[String]) -> BuildResult;
    /// The image catalog per cell, as `kiln images` computes it.
    fn catalog(&self) -> Result<Vec<page::CatalogRow>, String>;
    /// The config file, as the status page names it.
    fn config_name(&self) -> String;
    /// One round of the watcher: moves every tracked series to its newest stable release
    /// (writing the lock), and returns a request for the locked release of each tracked series.
    /// Blocking.
    fn watch_round(&self) -> Result<Vec<BuildRequest>, String>;
}

pub struct ServeOptions {
    pub listen: String,
    pub cache_dir: PathBuf,
    pub auth: Auth,
    /// Write the queue (false only for `bench/serve.sh`'s reference: answer 202 and persist
    /// nothing, run nothing).
    pub durable: bool,
    /// `--watch`: a watcher round now and then at this interval, each queueing a build of every
    /// tracked series.
    pub watch: Option<std::time::Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Queue(#[from] queue::QueueError),
    #[error("another `kiln serve` runs on the cache {0}: one server per cache")]
    Busy(String),
    #[error("{0}")]
    Io(String),
}

/// Holds `serve.lock` in the cache directory for as long as the server runs: two servers on
/// one queue would both run its builds.
fn lock_cache(dir: &std::path::Path) -> Result<std::fs::File, ServeError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| ServeError::Io(format!("cannot create {}: {e}", dir.display())))?;
    let path = dir.join("serve.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ServeError::Io(format!("cannot open {}: {e}", path.display())))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(|_| ServeError::Busy(dir.display().to_string()))?;
    Ok(f)
}

/// Runs the server until SIGINT or SIGTERM: then it stops taking requests, lets a running
/// build stop (it is queued again, to resume), and returns.
pub fn run(opts: ServeOptions, engine: Arc<dyn Engine>) -> Result<(), ServeError> {
    let _lock = lock_cache(&opts.cache_dir)?;
    let queue = Arc::new(Queue::open(&opts.cache_dir, opts.durable)?);
    if queue.resumed > 0 {
        eprintln!(
            "kiln serve: {} build(s) were running when the server stopped; they are queued again and resume from the cache",
            queue.resumed
        );
    }
    let metrics = Arc::new(metrics::Metrics::new());
    let counts = queue.counts()?;
    metrics.builds_finished("succeeded", counts["succeeded"]);
    metrics.builds_finished("failed", counts["failed"]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| ServeError::Io(format!("cannot start the runtime: {e}")))?;
    let stop = Arc::new(AtomicBool::new(false));
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&opts.listen))
        .map_err(|source| ServeError::Listen {
            addr: opts.listen.clone(),
            source,
        })?;
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| opts.listen.clone());
    let worker = opts
        .durable
        .then(|| worker::spawn(queue.clone(), engine.clone(), metrics.clone(), stop.clone()));
    let state = Arc::new(http::AppState {
        queue: queue.clone(),
        engine,
        auth: opts.auth,
        metrics,
        prepare: tokio::sync::Mutex::new(()),
    });
    eprintln!(
        "kiln serve: listening on http://{addr} (queue {}{})",
        queue.path().display(),
        if opts.durable { "" } else { ", not persisted" }
    );
    if let Some(every) = opts.watch {
        runtime.spawn(watch(state.clone(), every));
    }
    let served = runtime.block_on(async {
        axum::serve(listener, http::router(state))
            .with_graceful_shutdown(shutdown_signal())
            .await
    });
    stop.store(true, Ordering::SeqCst);
    eprintln!("kiln serve: stopping");
    if let Some(w) = worker {
        let _ = w.join();
    }
    queue.close();
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    served.map_err(|e| ServeError::Io(format!("the server failed: {e}")))
}

/// `--watch`: a round now, then one every `every`; each round's failure is logged and the next
/// runs on time.
async fn watch(state: Arc<http::AppState>, every: std::time::Duration) {
    loop {
        let started = tokio::time::Instant::now();
        let engine = state.engine.clone();
        let round = tokio::task::spawn_blocking(move || engine.watch_round())
            .await
            .unwrap_or_else(|e| Err(format!("the watch round failed: {e}")));
        match round {
            Err(e) => eprintln!("kiln serve: watch: {e}"),
            Ok(requests) => {
                for req in requests {
                    match http::enqueue(&state, &req, None).await {
                        Ok((s, _)) => eprintln!(
                            "kiln serve: watch: kubernetes {} → build {}{}",
                            req.version,
                            s.id,
                            if s.coalesced.is_some() {
                                " (already queued)"
                            } else {
                                ""
                            },
                        ),
                        Err(e) => eprintln!(
                            "kiln serve: watch: kubernetes {}: {}",
                            req.version, e.message
                        ),
                    }
                }
            }
        }
        tokio::time::sleep_until(started + every).await;
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers the server runs until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}
