//! Running one child process for a step: its output goes to the node's log (secrets redacted),
//! it runs in its own process group so a timeout or Ctrl-C reaches everything it started, and it
//! is always reaped.

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::watch;

use super::log::NodeLog;

/// Process groups of running children, so a signal can be forwarded to all of them.
#[derive(Default)]
pub struct ProcTable {
    groups: Mutex<HashSet<i32>>,
}

impl ProcTable {
    pub fn signal_all(&self, sig: i32) {
        for pgid in self.groups.lock().expect("proc table").iter() {
            // SAFETY: kill(2) with a negative pid signals a process group we started.
            unsafe {
                libc::kill(-pgid, sig);
            }
        }
    }
}

/// Why a step stopped without success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepError {
    Failed(String),
    TimedOut(Duration),
    Cancelled,
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::Failed(m) => f.write_str(m),
            StepError::TimedOut(d) => {
                write!(f, "timed out after {}", humantime::format_duration(*d))
            }
            StepError::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// What a step may use to run processes.
#[derive(Clone)]
pub struct Spawner {
    pub log: Arc<NodeLog>,
    pub procs: Arc<ProcTable>,
    pub cancel: watch::Receiver<bool>,
    /// When the whole step must have finished.
    pub deadline: Option<(tokio::time::Instant, Duration)>,
}

async fn pump(reader: impl AsyncRead + Unpin, log: Arc<NodeLog>) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        log.line(&line);
    }
}

impl Spawner {
    /// Runs `argv` in `cwd` with `env` added; non-zero exit is an error naming the program.
    pub async fn run(
        &self,
        argv: &[String],
        env: &[(String, String)],
        cwd: &Path,
    ) -> Result<(), StepError> {
        let Some((program, args)) = argv.split_first() else {
            return Err(StepError::Failed("empty command".into()));
        };
        self.log.line(&format!("$ {}", argv.join(" ")));
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(cwd)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            StepError::Failed(match e.kind() {
                std::io::ErrorKind::NotFound => {
                    format!("`{program}` is not installed or not on PATH")
                }
                _ => format!("cannot start `{program}`: {e}"),
            })
        })?;
        let pgid = child.id().map(|p| p as i32);
        if let Some(p) = pgid {
            self.procs.groups.lock().expect("proc table").insert(p);
        }
        let out = tokio::spawn(pump(child.stdout.take().expect("piped"), self.log.clone()));
        let err = tokio::spawn(pump(child.stderr.take().expect("piped"), self.log.clone()));
        let mut cancel = self.cancel.clone();
        let sleep = async {
            match self.deadline {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            status = child.wait() => Ok(status),
            _ = sleep => Err(StepError::TimedOut(self.deadline.map(|d| d.1).unwrap_or_default())),
            _ = cancel.wait_for(|c| *c) => Err(StepError::Cancelled),
        };
        if outcome.is_err()
            && let Some(p) = pgid
        {
            // SAFETY: signals the process group this step started.
            unsafe {
                libc::kill(-p, libc::SIGTERM);
            }
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                unsafe {
                    libc::kill(-p, libc::SIGKILL);
                }
                let _ = child.wait().await;
            }
        }
        let _ = out.await;
        let _ = err.await;
        if let Some(p) = pgid {
            self.procs.groups.lock().expect("proc table").remove(&p);
        }
        let status =
            outcome?.map_err(|e| StepError::Failed(format!("waiting for `{program}`: {e}")))?;
        if status.success() {
            Ok(())
        } else {
            Err(StepError::Failed(match status.code() {
                Some(c) => format!("`{program}` exited with status {c}"),
                None => format!("`{program}` was killed by a signal"),
            }))
        }
    }

    pub fn cancelled(&self) -> bool {
        *self.cancel.borrow()
    }
}
