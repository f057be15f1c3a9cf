//! The per-step supervisor: every process a step starts runs under it, and it makes sure the
//! whole process tree has ended before the step counts as ended.
//!
//! kiln starts `kiln-supervise ARG0 PROGRAM ARGS...`, the small executable installed beside it
//! (or, when that is missing, itself as `kiln __supervise -- ARG0 PROGRAM ARGS...`). The
//! supervisor becomes a child subreaper (`PR_SET_CHILD_SUBREAPER`): a process of the step whose
//! parent exits is re-parented to it rather than to init, even one that left the process group
//! with `setsid`.
//! It runs the program in a process group of its own and waits for it. When it exits, the
//! supervisor kills (`SIGKILL`) and reaps every process still left under it, and only then exits
//! itself, with the program's status (or by the signal that killed it). So when kiln sees the
//! supervisor exit, no process of the step is left to write to its outputs.
//!
//! A `SIGTERM`, `SIGINT` or `SIGHUP` sent to the supervisor (kiln's timeouts and cancellation
//! signal its process group) is passed on to the program's process group; whatever is still
//! running [`GRACE`] later is killed.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

/// The hidden subcommand.
pub const SUBCOMMAND: &str = "__supervise";

/// How long the step's processes have after a termination signal before they are killed.
pub const GRACE: Duration = Duration::from_secs(5);

/// The supervisor's executable: `kiln-supervise` beside kiln's own (installed with it; much
/// cheaper to start than kiln), or kiln itself with the hidden subcommand when it is missing.
pub fn program() -> &'static (std::path::PathBuf, bool) {
    static FOUND: std::sync::LazyLock<(std::path::PathBuf, bool)> =
        std::sync::LazyLock::new(|| {
            let own = std::env::current_exe()
                .ok()
                .map(|exe| exe.with_file_name("kiln-supervise"))
                .filter(|p| p.is_file());
            match own {
                Some(p) => (p, false),
                None => ("/proc/self/exe".into(), true),
            }
        });
    &FOUND
}

/// The arguments that make the supervisor ([`program`]) run `program` (as `arg0`) with `args`:
/// `ARG0 PROGRAM ARGS...`, after the hidden subcommand when the supervisor is kiln itself.
pub fn command_line<'a>(
    subcommand: bool,
    arg0: &'a OsStr,
    program: &'a OsStr,
    args: impl IntoIterator<Item = &'a OsStr>,
) -> Vec<&'a OsStr> {
    let mut v = if subcommand {
        vec![OsStr::new(SUBCOMMAND), OsStr::new("--")]
    } else {
        Vec::new()
    };
    v.extend([arg0, program]);
    v.extend(args);
    v
}

/// When kiln was started as `kiln __supervise -- ARG0 PROGRAM ARGS...`, supervises the program
/// and never returns; otherwise does nothing. Called first thing in `main`, before the command
/// line is parsed: a step pays for one more exec of kiln per process, and nothing else.
pub fn run_if_asked() {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(OsStr::new(SUBCOMMAND)) {
        return;
    }
    let mut rest: Vec<OsString> = args.collect();
    if rest.first().map(OsString::as_os_str) == Some(OsStr::new("--")) {
        rest.remove(0);
    }
    run(&rest)
}

/// Runs `ARG0 PROGRAM ARGS...` (the subcommand's arguments) as described above; never returns.
pub fn run(argv: &[OsString]) -> ! {
    let [arg0, program, args @ ..] = argv else {
        eprintln!("kiln {SUBCOMMAND}: expected ARG0 PROGRAM [ARGS...]");
        std::process::exit(125);
    };
    // SAFETY: plain system calls on this process's own attributes and signal mask.
    let signals = unsafe {
        if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
            eprintln!(
                "kiln: cannot supervise `{}`: prctl(PR_SET_CHILD_SUBREAPER): {}",
                arg0.to_string_lossy(),
                std::io::Error::last_os_error()
            );
            std::process::exit(125);
        }
        // Signals are taken synchronously (sigtimedwait), so none is missed between two checks.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD] {
            libc::sigaddset(&mut set, s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let mut cmd = std::process::Command::new(program);
    cmd.arg0(arg0).args(args).process_group(0);
    // SAFETY: only async-signal-safe calls between fork and exec: the program starts with no
    // signal blocked. The hook is needed: without one std spawns with `posix_spawn`, which
    // leaves the blocked signals above blocked in the program (`SigBlk` of its status).
    unsafe {
        cmd.pre_exec(|| {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kiln: cannot start `{}`: {e}", arg0.to_string_lossy());
            std::process::exit(127);
        }
    };
    let pid = child.id() as libc::pid_t;
    let status = wait_main(pid, &signals);
    end_the_rest();
    exit_like(status)
}

/// Waits for the program `pid`, reaping any re-parented process that exits meanwhile and passing
/// termination signals on to the program's process group. Returns its wait status.
fn wait_main(pid: libc::pid_t, signals: &libc::sigset_t) -> libc::c_int {
    let mut killed_at: Option<Instant> = None;
    loop {
        loop {
            let mut status = 0;
            // SAFETY: waitpid on our own children.
            let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if r == pid {
                return status;
            }
            if r <= 0 {
                break;
            }
        }
        let timeout = killed_at.map(|t| {
            let left = (t + GRACE).saturating_duration_since(Instant::now());
            libc::timespec {
                tv_sec: left.as_secs() as libc::time_t,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            }
        });
        let timeout_ptr = timeout
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: waits for one of the signals this process blocked.
        let sig = unsafe { libc::sigtimedwait(signals, std::ptr::null_mut(), timeout_ptr) };
        match sig {
            libc::SIGTERM | libc::SIGINT | libc::SIGHUP => {
                // SAFETY: signals the process group of the program this process started (it is
                // not reaped yet, so the group id is still its own).
                unsafe { libc::kill(-pid, sig) };
                killed_at.get_or_insert_with(Instant::now);
            }
            -1 if killed_at.is_some_and(|t| t.elapsed() >= GRACE) => {
                // SAFETY: as above.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                kill_children();
                killed_at = Some(Instant::now() + Duration::from_secs(3600));
            }
            _ => {} // SIGCHLD, EINTR: reap and look again.
        }
    }
}

/// Kills and reaps every process left under this one. A killed process's own children are
/// re-parented here, so this goes on until nothing is left.
fn end_the_rest() {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own children.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if r > 0 {
            continue;
        }
        if r < 0 {
            return; // ECHILD: nothing left
        }
        kill_children();
        // SAFETY: as above; blocks until one of them is gone.
        if unsafe { libc::waitpid(-1, &mut status, 0) } < 0 {
            return;
        }
    }
}

/// Sends `SIGKILL` to every child of this process. A child is never reaped by anyone else, so
/// its pid cannot have been reused.
fn kill_children() {
    for pid in children() {
        // SAFETY: kill(2) of one of our own children.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// The pids of this process's children: from `/proc/self/task/*/children`, or by scanning
/// `/proc/*/stat` where the kernel does not offer those files.
fn children() -> Vec<libc::pid_t> {
    let mut out = Vec::new();
    let mut listed = false;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            listed = true;
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<libc::pid_t>().ok()),
            );
        }
    }
    if listed {
        return out;
    }
    let me = std::process::id();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<libc::pid_t>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(me) {
            out.push(pid);
        }
    }
    out
}

/// Exits with the program's exit code, or dies of the signal that killed it.
fn exit_like(status: libc::c_int) -> ! {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // SAFETY: restores the default action of `sig`, unblocks it and raises it on ourselves;
        // no core file for a signal that would dump one (the program's own was its business).
        unsafe {
            let limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &limit);
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(sig);
        }
        std::process::exit(128 + sig);
    }
    std::process::exit(libc::WEXITSTATUS(status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_puts_the_program_after_a_separator() {
        let args = [OsStr::new("-c"), OsStr::new("--x")];
        let line = command_line(true, OsStr::new("sh"), OsStr::new("/bin/sh"), args);
        assert_eq!(line, ["__supervise", "--", "sh", "/bin/sh", "-c", "--x"]);
        let line = command_line(false, OsStr::new("sh"), OsStr::new("/bin/sh"), args);
        assert_eq!(line, ["sh", "/bin/sh", "-c", "--x"]);
    }

    #[test]
    fn the_children_of_a_process_are_found() {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let found = children();
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&(child.id() as libc::pid_t)), "{found:?}");
    }
}
