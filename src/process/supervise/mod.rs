//! The per-step supervisor: every process a step starts runs under it, and it makes sure the
//! whole process tree has ended before the step counts as ended.
//!
//! kiln starts `kiln-supervise ARG0 PROGRAM ARGS...`, a small static program built with kiln
//! (`static_main.rs`, compiled by `build.rs`) and embedded in it: kiln copies it into a sealed
//! memory file once per run and executes it from there (`/proc/self/fd/N`), so nothing needs
//! installing beside kiln. Where that cannot be done (a kernel that refuses to execute memory
//! files), kiln runs itself as `kiln __supervise -- ARG0 PROGRAM ARGS...`: the same code, at the
//! price of starting kiln.
//!
//! The supervisor becomes a child subreaper (`PR_SET_CHILD_SUBREAPER`): a process of the step
//! whose parent exits is re-parented to it rather than to init, even one that left the process
//! group with `setsid`. It runs the program in a process group of its own and waits for it.
//! When it exits, the supervisor kills (`SIGKILL`) and reaps every process still left under it,
//! and only then exits itself, with the program's status (or by the signal that killed it). So
//! when kiln sees the supervisor exit, no process of the step is left to write to its outputs.
//! (`run.rs` does this; `sys.rs` makes its system calls.)
//!
//! A `SIGTERM`, `SIGINT` or `SIGHUP` sent to the supervisor (kiln's timeouts and cancellation
//! signal its process group) is passed on to the program's process group; whatever is still
//! running [`GRACE`] later is killed.

mod run;
mod sys;

use std::ffi::{CString, OsStr, OsString};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The hidden subcommand.
pub const SUBCOMMAND: &str = "__supervise";

/// How long the step's processes have after a termination signal before they are killed.
pub const GRACE: Duration = Duration::from_nanos(run::GRACE_NS);

/// The static supervisor program (`static_main.rs`), as `build.rs` compiled it.
static STATIC_PROGRAM: &[u8] = include_bytes!(env!("KILN_SUPERVISOR"));

/// The sealed memory file holding [`STATIC_PROGRAM`] and the path that executes it, or why
/// there is none.
static IN_MEMORY: LazyLock<std::io::Result<(OwnedFd, PathBuf)>> = LazyLock::new(in_memory);

/// Set once executing the memory file failed: kiln itself supervises from then on.
static FELL_BACK: AtomicBool = AtomicBool::new(false);

/// Copies the static supervisor into a memory file (`memfd_create`), sealed against any change.
/// The descriptor stays open for the whole run (close-on-exec: a child can execute it through
/// `/proc/self/fd/N`, which the kernel resolves before it closes the descriptor, and keeps no
/// copy of it).
fn in_memory() -> std::io::Result<(OwnedFd, PathBuf)> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let flags = MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING;
    // Since Linux 6.3 a memory file says whether it may be executed; older kernels reject the flag.
    let fd =
        rustix::fs::memfd_create(c"kiln-supervise", flags | MemfdFlags::EXEC).or_else(|e| {
            if e == rustix::io::Errno::INVAL {
                rustix::fs::memfd_create(c"kiln-supervise", flags)
            } else {
                Err(e)
            }
        })?;
    let mut file = std::fs::File::from(fd);
    file.write_all(STATIC_PROGRAM)?;
    let seals = SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE;
    rustix::fs::fcntl_add_seals(&file, seals)?;
    let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    Ok((file.into(), path))
}

/// The supervisor to run and whether it is kiln itself (then with the hidden subcommand): the
/// embedded program, unless it cannot be put in memory or executing it failed once.
pub fn program() -> (PathBuf, bool) {
    match &*IN_MEMORY {
        Ok((_, path)) if !FELL_BACK.load(Ordering::Relaxed) => (path.clone(), false),
        _ => ("/proc/self/exe".into(), true),
    }
}

/// After the embedded supervisor could not be started: kiln supervises its steps itself from
/// now on. Returns whether anything changed (false when kiln was already the supervisor).
pub fn fall_back() -> bool {
    IN_MEMORY.is_ok() && !FELL_BACK.swap(true, Ordering::Relaxed)
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

/// Runs `ARG0 PROGRAM ARGS...` (the subcommand's arguments) as described above, with kiln's
/// environment; never returns.
pub fn run(argv: &[OsString]) -> ! {
    fn c_string(bytes: Vec<u8>) -> CString {
        CString::new(bytes).unwrap_or_else(|_| {
            eprintln!("kiln {SUBCOMMAND}: an argument holds a NUL byte");
            std::process::exit(125)
        })
    }
    let args: Vec<CString> = argv
        .iter()
        .map(|a| c_string(a.as_bytes().to_vec()))
        .collect();
    let env: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| c_string([k.as_bytes(), b"=", v.as_bytes()].concat()))
        .collect();
    let pointers = |strings: &[CString]| -> Vec<*const u8> {
        let mut v: Vec<*const u8> = strings.iter().map(|s| s.as_ptr().cast()).collect();
        v.push(std::ptr::null());
        v
    };
    let mut arg_pointers = pointers(&args);
    let env_pointers = pointers(&env);
    // SAFETY: both are NULL-terminated arrays of NUL-terminated strings that outlive the call
    // (it never returns), and the argument array is ours to rewrite.
    unsafe { run::run(arg_pointers.as_mut_ptr(), env_pointers.as_ptr()) }
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

    /// The embedded program, started the way kiln starts it.
    fn supervised(script: &str) -> std::process::Output {
        let (path, subcommand) = program();
        assert!(!subcommand, "the embedded supervisor is in memory");
        std::process::Command::new(path)
            .args(["sh", "/bin/sh", "-c", script])
            .output()
            .unwrap()
    }

    #[test]
    fn the_embedded_supervisor_runs_the_program_and_exits_like_it() {
        let out = supervised("echo \"$0 $1\"; exit 3");
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "sh \n");
        let out = supervised("kill -TERM $$");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(libc::SIGTERM));
        // No signal blocked in the program, and those ignored are those a program started
        // without the supervisor has ignored (SIGPIPE is not: kiln ignores it, as Rust does).
        let script = "grep -E '^Sig(Blk|Ign)' /proc/self/status";
        let direct = std::process::Command::new("sh")
            .args(["-c", script])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&supervised(script).stdout).into_owned();
        assert_eq!(text, String::from_utf8_lossy(&direct.stdout));
        assert!(text.starts_with("SigBlk:\t0000000000000000\n"), "{text}");
    }

    #[test]
    fn the_embedded_supervisor_names_a_program_it_cannot_start() {
        let out = std::process::Command::new(program().0)
            .args(["tool", "/nonexistent/tool"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(127));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "kiln: cannot start `tool`: execve: No such file or directory (os error 2)\n"
        );
    }

    #[test]
    fn the_embedded_supervisor_ends_what_the_program_leaves_behind() {
        // One in the program's group, one in a session of its own.
        let out = supervised("sleep 30 & echo $!; setsid sleep 30 & echo $!");
        assert!(out.status.success());
        let pids: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
        assert_eq!(pids.len(), 2);
        for pid in pids {
            // Gone, reaped: no zombie either (a reused pid would not be a `sleep`).
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            assert_ne!(comm, "sleep\n", "{pid} outlived the supervisor");
        }
    }
}
