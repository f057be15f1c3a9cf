//! Running one child process for a step: its output goes to the node's log (secrets redacted),
//! it runs under kiln's supervisor (see [`supervise`]) in a process group of its own, so a
//! timeout or Ctrl-C reaches everything it started, and when it returns, every process it
//! started has ended and been reaped. The executor hands a [`Spawner`] to each step; builders
//! run their programs through it.

pub mod log;
pub mod supervise;

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::LazyLock;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::watch;

use log::NodeLog;

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

/// Why a program a step ran did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("empty command")]
    EmptyCommand,
    #[error("`{program}` is not installed or not on PATH")]
    NotFound { program: String },
    #[error("cannot start kiln's supervisor for `{program}`: {source}")]
    Supervisor {
        program: String,
        source: std::io::Error,
    },
    #[error("waiting for `{program}`: {source}")]
    Wait {
        program: String,
        source: std::io::Error,
    },
    #[error("`{program}` exited with status {code}")]
    Exited { program: String, code: i32 },
    #[error("`{program}` was killed by a signal")]
    Killed { program: String },
    /// The step's deadline passed (the program and everything it started were ended).
    #[error("timed out after {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    /// The build was cancelled (Ctrl-C, SIGTERM) while the program ran.
    #[error("cancelled")]
    Cancelled,
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

/// Where a bare program name (no `/`) is found, as `execvp` in the step's working directory
/// `cwd` would find it: on the step's `PATH` when its environment sets one, otherwise on kiln's,
/// looked up once per process (every spawn would otherwise search anew, with one failed `execve`
/// per directory before the right one). kiln's supervisor runs the path found: it does no search
/// of its own. `None` when it is not found.
fn resolve(program: &str, env: &[(String, String)], cwd: &Path) -> Option<PathBuf> {
    static FOUND: LazyLock<Mutex<HashMap<String, (OsString, PathBuf)>>> =
        LazyLock::new(Default::default);
    if let Some((_, step_path)) = env.iter().rev().find(|(k, _)| k == "PATH") {
        return search_path(program, OsStr::new(step_path), cwd);
    }
    let path_var = std::env::var_os("PATH")?;
    // A relative directory is relative to the step's working directory: not cached.
    if std::env::split_paths(&path_var).any(|d| !d.is_absolute()) {
        return search_path(program, &path_var, cwd);
    }
    let mut found = FOUND.lock().expect("program cache");
    if let Some((searched, at)) = found.get(program)
        && *searched == path_var
    {
        return Some(at.clone());
    }
    let at = search_path(program, &path_var, cwd)?;
    found.insert(program.to_string(), (path_var, at.clone()));
    Some(at)
}

/// The first executable file `dir/name` for the directories of a `PATH` value, a relative one
/// (or an empty one, meaning `.`) taken from `cwd`.
fn search_path(name: &str, path_var: &OsStr, cwd: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path_var)
        .map(|dir| cwd.join(dir).join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Logs what `reader` yields line by line; returns the lines too when `keep`.
async fn pump(reader: impl AsyncRead + Unpin, log: Arc<NodeLog>, keep: bool) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        log.line(&line);
        if keep {
            kept.extend_from_slice(line.as_bytes());
            kept.push(b'\n');
        }
    }
    kept
}

impl Spawner {
    /// Runs `argv` in `cwd` with `env` added; non-zero exit is an error naming the program.
    pub async fn run(
        &self,
        argv: &[String],
        env: &[(String, String)],
        cwd: &Path,
    ) -> Result<(), ProcessError> {
        self.run_without(argv, env, &[], cwd).await
    }

    /// [`Spawner::run`], with the variables `remove` taken out of the environment the program
    /// inherits (before `env` is added): secrets meant for other steps.
    pub async fn run_without(
        &self,
        argv: &[String],
        env: &[(String, String)],
        remove: &[String],
        cwd: &Path,
    ) -> Result<(), ProcessError> {
        let (program, out) = self.supervised(argv, env, remove, cwd, false).await?;
        let status = out.status;
        match status.code() {
            _ if status.success() => Ok(()),
            Some(code) => Err(ProcessError::Exited { program, code }),
            None => Err(ProcessError::Killed { program }),
        }
    }

    /// Runs `argv` as [`Spawner::run`] does (supervised, bounded, its standard error logged)
    /// and returns how it exited and what it printed: its standard output, which is not logged,
    /// and its standard error.
    pub async fn output(
        &self,
        argv: &[String],
        env: &[(String, String)],
        cwd: &Path,
    ) -> Result<std::process::Output, ProcessError> {
        Ok(self.supervised(argv, env, &[], cwd, true).await?.1)
    }

    /// Runs `argv` under kiln's supervisor until it exits, the deadline passes or the run is
    /// cancelled: the program's name and how it exited, with, when `capture`, its standard
    /// output (otherwise logged line by line) and its standard error (logged line by line).
    async fn supervised(
        &self,
        argv: &[String],
        env: &[(String, String)],
        remove: &[String],
        cwd: &Path,
        capture: bool,
    ) -> Result<(String, std::process::Output), ProcessError> {
        let Some((program, args)) = argv.split_first() else {
            return Err(ProcessError::EmptyCommand);
        };
        self.log.line(&format!("$ {}", argv.join(" ")));
        let not_found = || ProcessError::NotFound {
            program: program.clone(),
        };
        let at: OsString = if program.contains('/') {
            if !cwd.join(program).exists() {
                return Err(not_found());
            }
            program.into()
        } else {
            resolve(program, env, cwd).ok_or_else(not_found)?.into()
        };
        // The program runs under kiln's supervisor (see `supervise`), which ends every process
        // it leaves behind before it exits itself.
        let command = |(supervisor, subcommand): (PathBuf, bool)| {
            let mut cmd = Command::new(supervisor);
            cmd.arg0("kiln-supervise")
                .args(supervise::command_line(
                    subcommand,
                    OsStr::new(program),
                    &at,
                    args.iter().map(OsStr::new),
                ))
                .current_dir(cwd);
            for k in remove {
                cmd.env_remove(k);
            }
            cmd.envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true);
            cmd
        };
        let spawned = command(supervise::program()).spawn();
        // The embedded supervisor could not be executed (a kernel that refuses memory files):
        // kiln supervises from now on.
        let spawned = match spawned {
            Err(_) if supervise::fall_back() => command(supervise::program()).spawn(),
            other => other,
        };
        let mut child = spawned.map_err(|source| ProcessError::Supervisor {
            program: program.clone(),
            source,
        })?;
        let pgid = child.id().map(|p| p as i32);
        if let Some(p) = pgid {
            self.procs.groups.lock().expect("proc table").insert(p);
        }
        let stdout = child.stdout.take().expect("piped");
        let out = if capture {
            tokio::spawn(async move {
                let mut bytes = Vec::new();
                let mut stdout = stdout;
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut bytes).await;
                bytes
            })
        } else {
            tokio::spawn(pump(stdout, self.log.clone(), false))
        };
        let stderr = child.stderr.take().expect("piped");
        let err = tokio::spawn(pump(stderr, self.log.clone(), capture));
        let mut cancel = self.cancel.clone();
        let sleep = async {
            match self.deadline {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            status = child.wait() => Ok(status),
            _ = sleep => Err(ProcessError::TimedOut(self.deadline.map(|d| d.1).unwrap_or_default())),
            _ = cancel.wait_for(|c| *c) => Err(ProcessError::Cancelled),
        };
        if outcome.is_err()
            && let Some(p) = pgid
        {
            // SAFETY: signals the process group this step started: the supervisor passes it on,
            // and kills what is left after its grace period.
            unsafe {
                libc::kill(-p, libc::SIGTERM);
            }
            let grace = supervise::GRACE + Duration::from_secs(5);
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                unsafe {
                    libc::kill(-p, libc::SIGKILL);
                }
                let _ = child.wait().await;
            }
        }
        let stdout = out.await.unwrap_or_default();
        let stderr = err.await.unwrap_or_default();
        if let Some(p) = pgid {
            self.procs.groups.lock().expect("proc table").remove(&p);
        }
        let status = outcome?.map_err(|source| ProcessError::Wait {
            program: program.clone(),
            source,
        })?;
        Ok((
            program.clone(),
            std::process::Output {
                status,
                stdout,
                stderr,
            },
        ))
    }

    pub fn cancelled(&self) -> bool {
        *self.cancel.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_name_is_found_like_execvp_finds_it() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::TempDir::new().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        // Not executable in `a`, a directory of that name in `b`... then the real one.
        std::fs::write(a.join("tool"), "").unwrap();
        std::fs::create_dir(b.join("tool")).unwrap();
        let c = tmp.path().join("c");
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(c.join("tool"), "").unwrap();
        std::fs::set_permissions(c.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([&a, &b, &c]).unwrap();
        let elsewhere = Path::new("/nonexistent");
        assert_eq!(search_path("tool", &path, elsewhere), Some(c.join("tool")));
        assert_eq!(search_path("missing", &path, elsewhere), None);
        // A relative directory is taken from the step's working directory.
        let relative = std::env::join_paths([Path::new("c"), &a]).unwrap();
        assert_eq!(
            search_path("tool", &relative, tmp.path()),
            Some(tmp.path().join("c/tool"))
        );
        assert_eq!(search_path("tool", &relative, elsewhere), None);
    }

    #[test]
    fn a_step_path_is_searched_instead_of_kilns() {
        let cwd = Path::new("/");
        let step = |p: &str| [("PATH".to_string(), p.to_string())];
        assert_eq!(resolve("sh", &step("/bin"), cwd), Some("/bin/sh".into()));
        assert_eq!(resolve("sh", &step("/nonexistent"), cwd), None);
    }
}
