//! Progress: plain timestamped lines (CI, pipes). Every line names the node and its step.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Outcome;
use super::log::NodeLog;
use crate::graph::Node;

#[derive(Clone, Default)]
pub struct Progress {
    pub quiet: bool,
}

fn stamp() -> String {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

impl Progress {
    pub fn started(&self, node: &Node, _log: Arc<NodeLog>) {
        if !self.quiet {
            eprintln!("[{}] start  {} ({})", stamp(), node.id, node.builder);
        }
    }

    pub fn finished(&self, node: &Node, outcome: &Outcome, took: Duration) {
        if self.quiet {
            return;
        }
        let what = match outcome {
            Outcome::Built => "built ".to_string(),
            Outcome::Cutoff => "same  ".to_string(),
            Outcome::Failed(e) => format!("FAILED: {e} —"),
            Outcome::Cancelled => "cancelled".to_string(),
            Outcome::Cached | Outcome::Skipped { .. } => return,
        };
        eprintln!(
            "[{}] {what} {} ({:.1}s)",
            stamp(),
            node.id,
            took.as_secs_f64()
        );
    }
}
