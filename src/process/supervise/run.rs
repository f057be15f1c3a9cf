//! What the supervisor does, written against [`super::sys`] alone (no std, no allocation), so
//! that one piece of code runs both as the small static program kiln embeds (`static_main.rs`)
//! and as `kiln __supervise`.
//!
//! It becomes a child subreaper, blocks the signals it waits for, forks and runs the program in
//! a process group of its own with an empty signal mask, and waits for it, passing termination
//! signals on to its group. When the program has exited, it kills and reaps every process left
//! under it, then exits the way the program did.

use core::ffi::CStr;

use super::sys::{self, Errno, Pid, SIGCHLD, SIGHUP, SIGINT, SIGKILL, SIGTERM, SigSet};

/// How long the step's processes have after a termination signal before they are killed, in
/// nanoseconds.
pub const GRACE_NS: u64 = 5_000_000_000;

const SIGPIPE: i32 = 13;

/// Runs `ARG0 PROGRAM ARGS...` (`args`) with the environment `envp`; never returns.
///
/// # Safety
/// `args` is a writable, NULL-terminated array of NUL-terminated strings (it becomes the
/// program's argument vector in place); `envp` a NULL-terminated array of NUL-terminated strings.
pub unsafe fn run(args: *mut *const u8, envp: *const *const u8) -> ! {
    // SAFETY: `args` is NULL-terminated, so reading its second slot is valid once the first is
    // not NULL.
    let (arg0, program) = unsafe {
        let arg0 = *args;
        (arg0, if arg0.is_null() { arg0 } else { *args.add(1) })
    };
    if program.is_null() {
        sys::write_all(2, b"kiln-supervise: expected ARG0 PROGRAM [ARGS...]\n");
        sys::exit(125);
    }
    // SAFETY: a NUL-terminated string, as the caller promises.
    let arg0 = unsafe { CStr::from_ptr(arg0.cast()) };
    let _ = sys::set_name(c"kiln-supervise");
    if let Err(e) = sys::become_subreaper() {
        report(
            b"cannot supervise",
            arg0,
            b"prctl(PR_SET_CHILD_SUBREAPER)",
            e,
        );
        sys::exit(125);
    }
    // Taken synchronously (sigtimedwait), so none is missed between two checks.
    let signals = SigSet::of(&[SIGTERM, SIGINT, SIGHUP, SIGCHLD]);
    let _ = sys::block(signals);
    // The program's argument vector: ARG0 ARGS..., in the slots of `PROGRAM ARGS...`.
    // SAFETY: the second slot exists (checked above) and is writable.
    let argv = unsafe {
        *args.add(1) = arg0.as_ptr().cast();
        args.add(1)
    };
    let pid = match sys::fork() {
        Ok(0) => {
            // The child: its own process group, no signal blocked, SIGPIPE at its default (kiln
            // ignores it, as Rust programs do), then the program.
            let _ = sys::setpgid(0, 0);
            let _ = sys::default_action(SIGPIPE);
            let _ = sys::set_mask(SigSet::EMPTY);
            // SAFETY: `program`, `argv` and `envp` are as the caller promises.
            let e = unsafe { sys::execve(program, argv, envp) };
            report(b"cannot start", arg0, b"execve", e);
            sys::exit(127);
        }
        Ok(pid) => pid,
        Err(e) => {
            report(b"cannot start", arg0, b"fork", e);
            sys::exit(125);
        }
    };
    // From this side too, so that the group exists before a signal is passed on to it (this
    // fails harmlessly once the child has called exec).
    let _ = sys::setpgid(pid, pid);
    let status = wait_main(pid, signals);
    end_the_rest();
    exit_like(status)
}

/// Waits for the program `pid`, reaping any re-parented process that exits meanwhile and passing
/// termination signals on to the program's process group. Returns its wait status.
fn wait_main(pid: Pid, signals: SigSet) -> i32 {
    let mut killed_at: Option<u64> = None;
    loop {
        while let Ok(Some((p, status))) = sys::wait_any(true) {
            if p == pid {
                return status;
            }
        }
        let timeout = killed_at.map(|t| (t + GRACE_NS).saturating_sub(sys::now_ns()));
        match sys::sigtimedwait(signals, timeout) {
            Ok(sig @ (SIGTERM | SIGINT | SIGHUP)) => {
                // The program is not reaped yet, so its group id is still its own.
                let _ = sys::kill(-pid, sig);
                killed_at.get_or_insert_with(sys::now_ns);
            }
            Err(_) if killed_at.is_some_and(|t| sys::now_ns() >= t + GRACE_NS) => {
                let _ = sys::kill(-pid, SIGKILL);
                kill_children();
                killed_at = Some(sys::now_ns() + 3600 * 1_000_000_000);
            }
            _ => {} // SIGCHLD, EINTR: reap and look again.
        }
    }
}

/// Kills and reaps every process left under this one. A killed process's own children are
/// re-parented here, so this goes on until nothing is left.
fn end_the_rest() {
    loop {
        match sys::wait_any(true) {
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(_) => return, // ECHILD: nothing left
        }
        kill_children();
        // Blocks until one of them is gone.
        if sys::wait_any(false).is_err() {
            return;
        }
    }
}

/// Sends `SIGKILL` to every child of this process. A child is never reaped by anyone else, so
/// its pid cannot have been reused.
fn kill_children() {
    // The supervisor has one thread, so its children are those of `thread-self`.
    match sys::open(c"/proc/thread-self/children") {
        Ok(fd) => {
            let mut pids = PidList::default();
            let mut buf = [0u8; 1024];
            while let Ok(n @ 1..) = sys::read(fd, &mut buf) {
                buf[..n].iter().for_each(|&b| pids.push(b, kill_child));
            }
            pids.push(b' ', kill_child);
            sys::close(fd);
        }
        // A kernel without those files: every `/proc/PID/stat` whose parent is this process.
        Err(_) => scan_proc(sys::getpid()),
    }
}

fn kill_child(pid: Pid) {
    let _ = sys::kill(pid, SIGKILL);
}

/// Pids in text separated by anything else than digits, fed one byte at a time.
#[derive(Default)]
struct PidList {
    current: Option<Pid>,
}

impl PidList {
    fn push(&mut self, b: u8, each: impl FnOnce(Pid)) {
        if b.is_ascii_digit() {
            let d = Pid::from(b - b'0');
            self.current = Some(
                self.current
                    .unwrap_or(0)
                    .saturating_mul(10)
                    .saturating_add(d),
            );
        } else if let Some(pid) = self.current.take() {
            each(pid);
        }
    }
}

/// Kills every process whose `/proc/PID/stat` names `parent` as its parent.
fn scan_proc(parent: Pid) {
    let Ok(dir) = sys::open(c"/proc") else {
        return;
    };
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = sys::getdents(dir, &mut buf) {
        let mut at = 0;
        // `struct linux_dirent64`: inode (8), offset (8), record length (2), type (1), name.
        while at + 19 <= n {
            let len = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            let name = &buf[at + 19..(at + len).min(n)];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if let Some(pid) = parse_pid(name)
                && parent_of(name) == Some(parent)
            {
                kill_child(pid);
            }
            at += len.max(1);
        }
    }
    sys::close(dir);
}

/// The parent of the process whose `/proc` entry is `name`, from its `stat`:
/// `pid (comm) state ppid ...`, where `comm` may hold spaces and parentheses.
fn parent_of(name: &[u8]) -> Option<Pid> {
    let mut path = Line::default();
    path.push(b"/proc/");
    path.push(name);
    path.push(b"/stat\0");
    let fd = sys::open(CStr::from_bytes_with_nul(path.bytes()).ok()?).ok()?;
    let mut stat = [0u8; 512];
    let n = sys::read(fd, &mut stat).unwrap_or(0);
    sys::close(fd);
    let rest = &stat[stat[..n].iter().rposition(|&b| b == b')')? + 1..n];
    let mut fields = rest.split(|&b| b == b' ').filter(|f| !f.is_empty());
    parse_pid(fields.nth(1)?)
}

fn parse_pid(text: &[u8]) -> Option<Pid> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    text.iter().try_fold(0 as Pid, |n, &d| {
        n.checked_mul(10)?.checked_add(Pid::from(d - b'0'))
    })
}

/// Exits with the program's exit code, or dies of the signal that killed it.
fn exit_like(status: i32) -> ! {
    let sig = status & 0x7f;
    if sig != 0 && sig != 0x7f {
        // No core file for a signal that would dump one (the program's own was its business).
        let _ = sys::no_core_dumps();
        let _ = sys::default_action(sig);
        let _ = sys::unblock(SigSet::of(&[sig]));
        let _ = sys::kill(sys::getpid(), sig);
        sys::exit(128 + sig);
    }
    sys::exit((status >> 8) & 0xff)
}

/// Writes `kiln: WHAT `ARG0`: CALL: MESSAGE (os error N)` to standard error, in one write.
fn report(what: &[u8], arg0: &CStr, call: &[u8], e: Errno) {
    let mut line = Line::default();
    line.push(b"kiln: ");
    line.push(what);
    line.push(b" `");
    line.push(arg0.to_bytes());
    line.push(b"`: ");
    line.push(call);
    line.push(b": ");
    line.push(message(e).as_bytes());
    line.push(b" (os error ");
    line.push_number(e.0 as u64);
    line.push(b")\n");
    sys::write_all(2, line.bytes());
}

/// The text of the error numbers an exec or a fork can fail with.
fn message(e: Errno) -> &'static str {
    match e.0 {
        1 => "Operation not permitted",
        2 => "No such file or directory",
        7 => "Argument list too long",
        8 => "Exec format error",
        11 => "Resource temporarily unavailable",
        12 => "Cannot allocate memory",
        13 => "Permission denied",
        20 => "Not a directory",
        21 => "Is a directory",
        22 => "Invalid argument",
        26 => "Text file busy",
        36 => "File name too long",
        40 => "Too many levels of symbolic links",
        _ => "error",
    }
}

/// A line of at most 512 bytes built without allocating (what does not fit is left out).
struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Default for Line {
    fn default() -> Line {
        Line {
            buf: [0; 512],
            len: 0,
        }
    }
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[at..]);
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_are_read_from_the_children_file() {
        let mut list = PidList::default();
        let mut seen = Vec::new();
        for &b in b"12 3456 7 " {
            list.push(b, |p| seen.push(p));
        }
        list.push(b' ', |p| seen.push(p));
        assert_eq!(seen, [12, 3456, 7]);
    }

    #[test]
    fn the_parent_is_read_from_stat() {
        let me = std::process::id().to_string();
        assert_eq!(
            parent_of(me.as_bytes()),
            Some(std::os::unix::process::parent_id() as Pid)
        );
        assert_eq!(parse_pid(b"12x"), None);
        assert_eq!(parse_pid(b""), None);
        assert_eq!(parse_pid(b"99999999999"), None);
    }

    #[test]
    fn a_report_names_the_program_the_call_and_the_error() {
        let mut line = Line::default();
        line.push(b"x ");
        line.push_number(0);
        line.push(b" ");
        line.push_number(1234);
        assert_eq!(line.bytes(), b"x 0 1234");
        assert_eq!(message(Errno(2)), "No such file or directory");
    }
}
