//! Progress. On a terminal: a live view (indicatif) with one line per running node — its id,
//! step, elapsed time and last log line — under an overall bar. Elsewhere (CI, pipes): plain
//! timestamped lines, one when a node starts and one when it ends.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Outcome;
use super::log::NodeLog;
use crate::graph::Node;

#[derive(Clone)]
pub struct Progress {
    mode: Mode,
}

#[derive(Clone)]
enum Mode {
    Quiet,
    Lines,
    Live(Arc<Live>),
}

struct Live {
    multi: MultiProgress,
    overall: ProgressBar,
    running: Mutex<HashMap<String, (ProgressBar, tokio::task::JoinHandle<()>)>>,
}

fn stamp() -> String {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

fn outcome_word(outcome: &Outcome) -> Option<String> {
    Some(match outcome {
        Outcome::Built => "built ".to_string(),
        Outcome::Cutoff => "same  ".to_string(),
        Outcome::Failed(e) => format!("FAILED: {e} —"),
        Outcome::Cancelled => "cancelled".to_string(),
        Outcome::Cached | Outcome::Skipped { .. } | Outcome::NotStarted => return None,
    })
}

impl Progress {
    /// Live on a terminal (unless `NO_COLOR`/`CI` ask for plain output), lines otherwise.
    pub fn new(quiet: bool, total: usize) -> Progress {
        let tty = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        let mode = if quiet {
            Mode::Quiet
        } else if tty {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let overall = multi.add(ProgressBar::new(total as u64));
            overall.set_style(
                ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} nodes")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            Mode::Live(Arc::new(Live {
                multi,
                overall,
                running: Mutex::new(HashMap::new()),
            }))
        } else {
            Mode::Lines
        };
        Progress { mode }
    }

    pub fn started(&self, node: &Node, log: Arc<NodeLog>) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Lines => eprintln!("[{}] start  {} ({})", stamp(), node.id, node.builder),
            Mode::Live(live) => {
                let bar = live
                    .multi
                    .insert_before(&live.overall, ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {prefix} {elapsed:>4} │ {wide_msg}")
                        .expect("a valid template"),
                );
                bar.set_prefix(format!("{} ({})", node.id, node.step));
                bar.enable_steady_tick(Duration::from_millis(120));
                let ticker = {
                    let bar = bar.clone();
                    tokio::spawn(async move {
                        loop {
                            bar.set_message(log.last_line());
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    })
                };
                live.running
                    .lock()
                    .expect("progress lock")
                    .insert(node.id.clone(), (bar, ticker));
            }
        }
    }

    /// A retry starts: its own line, `retry 2/3 with PACKER_LOG=1`.
    pub fn retry(&self, node: &Node, what: &str) {
        let line = format!("[{}] {what}  {}", stamp(), node.id);
        match &self.mode {
            Mode::Quiet => {}
            Mode::Lines => eprintln!("{line}"),
            Mode::Live(live) => {
                let _ = live.multi.println(line);
            }
        }
    }

    pub fn finished(&self, node: &Node, outcome: &Outcome, took: Duration) {
        let Some(what) = outcome_word(outcome) else {
            return;
        };
        let line = format!(
            "[{}] {what} {} ({:.1}s)",
            stamp(),
            node.id,
            took.as_secs_f64()
        );
        match &self.mode {
            Mode::Quiet => {}
            Mode::Lines => eprintln!("{line}"),
            Mode::Live(live) => {
                if let Some((bar, ticker)) =
                    live.running.lock().expect("progress lock").remove(&node.id)
                {
                    ticker.abort();
                    bar.finish_and_clear();
                    live.multi.remove(&bar);
                }
                let _ = live.multi.println(line);
                live.overall.inc(1);
            }
        }
    }

    /// Clears the live view before the summary is printed.
    pub fn done(&self) {
        if let Mode::Live(live) = &self.mode {
            for (_, (bar, ticker)) in live.running.lock().expect("progress lock").drain() {
                ticker.abort();
                bar.finish_and_clear();
            }
            live.overall.finish_and_clear();
        }
    }
}
