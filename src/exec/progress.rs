//! Progress. The live view (indicatif, on a terminal): one line per running node — its id,
//! step, elapsed time and last log line — under an overall bar that is there from the start and
//! whose clock ticks on its own; finished nodes, retries and failures print above it, and it is
//! cleared whatever ends the build, an interrupt included. Plain (CI, pipes): timestamped
//! lines, one when a node starts, one per retry and one when it ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Outcome;
use crate::graph::Node;
use crate::process::log::NodeLog;

/// Which view a build shows (the CLI resolves `--progress`, `--quiet` and the terminal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Nothing but the summary.
    Quiet,
    /// Timestamped lines.
    Plain,
    /// The live view on stderr, a terminal.
    Live,
}

#[derive(Clone)]
pub struct Progress {
    mode: Mode,
    color: bool,
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

/// The terminal, one column narrower than it is: no line of the view reaches the last column,
/// so the `^C` a terminal echoes on an interrupt never wraps onto a line of its own, which the
/// view, clearing the lines it drew, would leave on the screen.
#[derive(Debug)]
struct Narrow(console::Term);

impl indicatif::TermLike for Narrow {
    fn width(&self) -> u16 {
        self.0.size().1.saturating_sub(1).max(1)
    }
    fn height(&self) -> u16 {
        self.0.size().0
    }
    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_up(n)
    }
    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_down(n)
    }
    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_right(n)
    }
    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_left(n)
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.0.write_line(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.0.write_str(s)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        self.0.clear_line()
    }
    fn flush(&self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// How often the live view redraws with nothing new: its clocks tick between completions.
const TICK: Duration = Duration::from_millis(200);

fn stamp() -> String {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

fn outcome_word(outcome: &Outcome) -> Option<(String, &'static str)> {
    Some(match outcome {
        Outcome::Built => ("built ".to_string(), "32"),
        Outcome::Cutoff => ("same  ".to_string(), "36"),
        Outcome::Failed(e) => (format!("FAILED: {e} —"), "31;1"),
        Outcome::Cancelled => ("cancelled".to_string(), "33"),
        Outcome::Held => ("held  ".to_string(), "33"),
        Outcome::Cached | Outcome::Skipped { .. } | Outcome::NotStarted => return None,
    })
}

impl Progress {
    /// `total` is the number of nodes that will run; `color` colours the words of the lines.
    pub fn new(view: View, total: usize, color: bool) -> Progress {
        let mode = match view {
            View::Quiet => Mode::Quiet,
            View::Plain => Mode::Lines,
            View::Live => {
                let multi = MultiProgress::with_draw_target(ProgressDrawTarget::term_like_with_hz(
                    Box::new(Narrow(console::Term::stderr())),
                    20,
                ));
                let overall = multi.add(ProgressBar::new(total as u64));
                overall.set_style(
                    ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} nodes")
                        .expect("a valid template")
                        .progress_chars("=> "),
                );
                // Drawn now, and redrawn on every tick: the bar is there before anything
                // finishes, and its clock does not stop between completions.
                overall.tick();
                overall.enable_steady_tick(TICK);
                Mode::Live(Arc::new(Live {
                    multi,
                    overall,
                    running: Mutex::new(HashMap::new()),
                }))
            }
        };
        Progress { mode, color }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn print(&self, line: String) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Lines => eprintln!("{line}"),
            Mode::Live(live) => {
                let _ = live.multi.println(line);
            }
        }
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
                            tokio::time::sleep(TICK).await;
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
        let line = format!("[{}] {}  {}", stamp(), self.paint("33", what), node.id);
        self.print(line);
    }

    pub fn finished(&self, node: &Node, outcome: &Outcome, took: Duration) {
        let Some((what, code)) = outcome_word(outcome) else {
            return;
        };
        let line = format!(
            "[{}] {} {} ({:.1}s)",
            stamp(),
            self.paint(code, &what),
            node.id,
            took.as_secs_f64()
        );
        if let Mode::Live(live) = &self.mode {
            if let Some((bar, ticker)) =
                live.running.lock().expect("progress lock").remove(&node.id)
            {
                ticker.abort();
                bar.finish_and_clear();
                live.multi.remove(&bar);
            }
            live.overall.inc(1);
        }
        self.print(line);
    }

    /// Clears the live view before the summary is printed, whatever ended the build (an
    /// interrupt included): no spinner or bar is left on the screen.
    pub fn done(&self) {
        if let Mode::Live(live) = &self.mode {
            for (_, (bar, ticker)) in live.running.lock().expect("progress lock").drain() {
                ticker.abort();
                bar.finish_and_clear();
                live.multi.remove(&bar);
            }
            live.overall.finish_and_clear();
            let _ = live.multi.clear();
        }
    }
}
