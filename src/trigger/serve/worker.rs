//! The one worker: takes the oldest queued build, runs it through the [`Engine`] (the same
//! executor and limits as `kiln build`), and records each node's outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::metrics::Metrics;
use super::queue::{Finished, Queue};
use super::{BuildResult, Engine};

pub fn spawn(
    queue: Arc<Queue>,
    engine: Arc<dyn Engine>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let wake = queue.subscribe();
    std::thread::Builder::new()
        .name("kiln-worker".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let next = match queue.next_queued() {
                    Ok(n) => n,
                    Err(e) => {
                        eprintln!("warning: {e}");
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                };
                let Some(build) = next else {
                    let _ = wake.recv_timeout(Duration::from_millis(250));
                    continue;
                };
                if let Err(e) = queue.start(build.id) {
                    eprintln!("warning: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
                eprintln!(
                    "kiln serve: build {} started: {}",
                    build.id,
                    build.cells.join(", ")
                );
                match engine.build(&build.cells) {
                    BuildResult::Interrupted => {
                        eprintln!(
                            "kiln serve: build {} interrupted; it stays queued and resumes from the cache",
                            build.id
                        );
                        if let Err(e) = queue.requeue(build.id) {
                            eprintln!("warning: {e}");
                        }
                        break;
                    }
                    BuildResult::Done {
                        ok,
                        summary,
                        error,
                        nodes,
                    } => {
                        for n in nodes.iter().filter(|n| n.outcome != "cached") {
                            let step = n.id.rsplit('/').next().unwrap_or(&n.id);
                            metrics.node(step, &n.outcome, n.duration_ms as f64 / 1000.0);
                        }
                        let outcome = if ok { "succeeded" } else { "failed" };
                        eprintln!("kiln serve: build {} {outcome}: {summary}", build.id);
                        let f = Finished {
                            ok,
                            summary,
                            error,
                            nodes,
                        };
                        match queue.finish(build.id, f) {
                            Ok(()) => metrics.builds_finished(outcome, 1),
                            Err(e) => eprintln!("warning: {e}"),
                        }
                    }
                }
            }
        })
        .expect("the worker thread starts")
}
