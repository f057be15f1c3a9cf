//! The Linux system calls the supervisor makes, issued directly (an instruction each), so that the
//! supervisor runs without libc: the static program kiln embeds (`static_main.rs`) has no C
//! library, no dynamic loader and no start-up work to pay for at every step's process.
//!
//! Each call returns the kernel's answer: a value, or an [`Errno`]. Nothing here allocates.
//! Numbers and layouts are the kernel's (x86-64's own table, and the generic one aarch64 uses);
//! a unit test checks them against libc's.

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("kiln's step supervisor makes its system calls for x86_64 and aarch64 Linux only");

/// A process id.
pub type Pid = i32;

/// An error number of the kernel (`ENOENT`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

pub const EINTR: Errno = Errno(4);

pub const SIGHUP: i32 = 1;
pub const SIGINT: i32 = 2;
pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;
pub const SIGCHLD: i32 = 17;

/// System call numbers.
#[cfg(target_arch = "x86_64")]
pub(crate) mod nr {
    pub const READ: usize = 0;
    pub const WRITE: usize = 1;
    pub const CLOSE: usize = 3;
    pub const RT_SIGACTION: usize = 13;
    pub const RT_SIGPROCMASK: usize = 14;
    pub const GETPID: usize = 39;
    pub const CLONE: usize = 56;
    pub const EXECVE: usize = 59;
    pub const WAIT4: usize = 61;
    pub const KILL: usize = 62;
    pub const SETPGID: usize = 109;
    pub const RT_SIGTIMEDWAIT: usize = 128;
    pub const PRCTL: usize = 157;
    pub const GETDENTS64: usize = 217;
    pub const CLOCK_GETTIME: usize = 228;
    pub const EXIT_GROUP: usize = 231;
    pub const OPENAT: usize = 257;
    pub const PRLIMIT64: usize = 302;
}

/// System call numbers.
#[cfg(target_arch = "aarch64")]
pub(crate) mod nr {
    pub const OPENAT: usize = 56;
    pub const CLOSE: usize = 57;
    pub const GETDENTS64: usize = 61;
    pub const READ: usize = 63;
    pub const WRITE: usize = 64;
    pub const EXIT_GROUP: usize = 94;
    pub const CLOCK_GETTIME: usize = 113;
    pub const KILL: usize = 129;
    pub const RT_SIGACTION: usize = 134;
    pub const RT_SIGPROCMASK: usize = 135;
    pub const RT_SIGTIMEDWAIT: usize = 137;
    pub const SETPGID: usize = 154;
    pub const PRCTL: usize = 167;
    pub const GETPID: usize = 172;
    pub const CLONE: usize = 220;
    pub const EXECVE: usize = 221;
    pub const WAIT4: usize = 260;
    pub const PRLIMIT64: usize = 261;
}

/// Makes system call `n` with six arguments (unused ones are 0).
///
/// # Safety
/// The arguments must be what call `n` expects: pointers valid for what it reads and writes.
#[inline(always)]
unsafe fn call(n: usize, a: [usize; 6]) -> Result<usize, Errno> {
    let ret: isize;
    // SAFETY: the caller passes the arguments call `n` expects; the kernel clobbers only the
    // registers named here and touches no stack.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") n as isize => ret,
            in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
            in("r10") a[3], in("r8") a[4], in("r9") a[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    // SAFETY: as above.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        core::arch::asm!(
            "svc 0",
            in("x8") n,
            inlateout("x0") a[0] as isize => ret,
            in("x1") a[1], in("x2") a[2], in("x3") a[3], in("x4") a[4], in("x5") a[5],
            options(nostack),
        );
    }
    // The kernel answers -4095..-1 for an error.
    if (-4095..0).contains(&ret) {
        Err(Errno(-ret as i32))
    } else {
        Ok(ret as usize)
    }
}

/// A set of signals, as the kernel takes it (64 bits on these architectures).
#[derive(Clone, Copy, Default)]
pub struct SigSet(u64);

impl SigSet {
    pub const EMPTY: SigSet = SigSet(0);

    pub fn of(signals: &[i32]) -> SigSet {
        SigSet(signals.iter().fold(0, |m, s| m | 1 << (s - 1)))
    }
}

const SIG_BLOCK: usize = 0;
const SIG_UNBLOCK: usize = 1;
const SIG_SETMASK: usize = 2;

fn sigprocmask(how: usize, set: SigSet) -> Result<(), Errno> {
    // SAFETY: reads one 8-byte set; no old set is asked for.
    unsafe {
        call(
            nr::RT_SIGPROCMASK,
            [how, &set.0 as *const u64 as usize, 0, 8, 0, 0],
        )
    }
    .map(drop)
}

/// Adds `set` to the signals this thread blocks.
pub fn block(set: SigSet) -> Result<(), Errno> {
    sigprocmask(SIG_BLOCK, set)
}

/// Removes `set` from the signals this thread blocks.
pub fn unblock(set: SigSet) -> Result<(), Errno> {
    sigprocmask(SIG_UNBLOCK, set)
}

/// Makes `set` the signals this thread blocks.
pub fn set_mask(set: SigSet) -> Result<(), Errno> {
    sigprocmask(SIG_SETMASK, set)
}

/// Waits for one of the signals of `set` (which must be blocked), at most `timeout_ns`
/// nanoseconds when given: the signal, or `EAGAIN` when the time ran out, `EINTR`.
pub fn sigtimedwait(set: SigSet, timeout_ns: Option<u64>) -> Result<i32, Errno> {
    let ts = timeout_ns.map(|ns| [(ns / 1_000_000_000) as i64, (ns % 1_000_000_000) as i64]);
    let ts_ptr = ts.as_ref().map_or(0, |t| t as *const [i64; 2] as usize);
    // SAFETY: reads the set and the timespec; no siginfo is asked for.
    unsafe {
        call(
            nr::RT_SIGTIMEDWAIT,
            [&set.0 as *const u64 as usize, 0, ts_ptr, 8, 0, 0],
        )
    }
    .map(|s| s as i32)
}

/// Restores the default action of `sig`.
pub fn default_action(sig: i32) -> Result<(), Errno> {
    // `struct sigaction` of the kernel: handler (SIG_DFL = 0), flags, restorer, mask.
    let act = [0usize; 4];
    // SAFETY: reads one kernel sigaction; the old one is not asked for.
    unsafe {
        call(
            nr::RT_SIGACTION,
            [sig as usize, act.as_ptr() as usize, 0, 8, 0, 0],
        )
    }
    .map(drop)
}

/// `prctl(PR_SET_CHILD_SUBREAPER, 1)`: orphaned descendants are re-parented to this process.
pub fn become_subreaper() -> Result<(), Errno> {
    const PR_SET_CHILD_SUBREAPER: usize = 36;
    // SAFETY: takes no pointer.
    unsafe { call(nr::PRCTL, [PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0, 0]) }.map(drop)
}

/// `prctl(PR_SET_NAME)`: the name `ps` shows (at most 15 bytes, NUL-terminated).
pub fn set_name(name: &core::ffi::CStr) -> Result<(), Errno> {
    const PR_SET_NAME: usize = 15;
    // SAFETY: the kernel reads at most 16 bytes of a NUL-terminated string.
    unsafe { call(nr::PRCTL, [PR_SET_NAME, name.as_ptr() as usize, 0, 0, 0, 0]) }.map(drop)
}

/// `fork()`: the child's pid in the parent, 0 in the child (a copy of this process).
pub fn fork() -> Result<Pid, Errno> {
    // clone(SIGCHLD) with no new stack: a plain fork, the same on both architectures.
    // SAFETY: takes no pointer; the child runs on its own copy of the memory.
    unsafe { call(nr::CLONE, [SIGCHLD as usize, 0, 0, 0, 0, 0]) }.map(|p| p as Pid)
}

/// `setpgid(pid, pgid)` (0 for either: this process / `pid`).
pub fn setpgid(pid: Pid, pgid: Pid) -> Result<(), Errno> {
    // SAFETY: takes no pointer.
    unsafe { call(nr::SETPGID, [pid as usize, pgid as usize, 0, 0, 0, 0]) }.map(drop)
}

/// `execve`: returns only when it fails.
///
/// # Safety
/// `path` is a NUL-terminated string, `argv` and `envp` NULL-terminated arrays of them.
pub unsafe fn execve(path: *const u8, argv: *const *const u8, envp: *const *const u8) -> Errno {
    // SAFETY: as the caller promises.
    match unsafe {
        call(
            nr::EXECVE,
            [path as usize, argv as usize, envp as usize, 0, 0, 0],
        )
    } {
        Err(e) => e,
        Ok(_) => Errno(0),
    }
}

/// `wait4(-1, …)`: a child that ended and its wait status; `None` when none has (with
/// `nohang`), `ECHILD` when there is no child left.
pub fn wait_any(nohang: bool) -> Result<Option<(Pid, i32)>, Errno> {
    const WNOHANG: usize = 1;
    let mut status: i32 = 0;
    let options = if nohang { WNOHANG } else { 0 };
    // SAFETY: writes one int; no rusage is asked for.
    let pid = unsafe {
        call(
            nr::WAIT4,
            [
                -1isize as usize,
                &mut status as *mut i32 as usize,
                options,
                0,
                0,
                0,
            ],
        )
    }?;
    Ok((pid != 0).then_some((pid as Pid, status)))
}

/// `kill(pid, sig)`; a negative `pid` is a process group.
pub fn kill(pid: Pid, sig: i32) -> Result<(), Errno> {
    // SAFETY: takes no pointer.
    unsafe { call(nr::KILL, [pid as isize as usize, sig as usize, 0, 0, 0, 0]) }.map(drop)
}

pub fn getpid() -> Pid {
    // SAFETY: takes no pointer, cannot fail.
    unsafe { call(nr::GETPID, [0; 6]) }.map_or(0, |p| p as Pid)
}

/// `CLOCK_MONOTONIC`, in nanoseconds.
pub fn now_ns() -> u64 {
    const CLOCK_MONOTONIC: usize = 1;
    let mut ts = [0i64; 2];
    // SAFETY: writes one timespec.
    let _ = unsafe {
        call(
            nr::CLOCK_GETTIME,
            [CLOCK_MONOTONIC, ts.as_mut_ptr() as usize, 0, 0, 0, 0],
        )
    };
    ts[0] as u64 * 1_000_000_000 + ts[1] as u64
}

/// Sets this process's core file size limit to 0 (no core dump).
pub fn no_core_dumps() -> Result<(), Errno> {
    const RLIMIT_CORE: usize = 4;
    let limit = [0u64; 2];
    // SAFETY: reads one rlimit; the old one is not asked for.
    unsafe {
        call(
            nr::PRLIMIT64,
            [0, RLIMIT_CORE, limit.as_ptr() as usize, 0, 0, 0],
        )
    }
    .map(drop)
}

/// Opens `path` (NUL-terminated) for reading.
pub fn open(path: &core::ffi::CStr) -> Result<i32, Errno> {
    const AT_FDCWD: isize = -100;
    const O_RDONLY_CLOEXEC: usize = 0o2000000;
    // SAFETY: the kernel reads a NUL-terminated string.
    unsafe {
        call(
            nr::OPENAT,
            [
                AT_FDCWD as usize,
                path.as_ptr() as usize,
                O_RDONLY_CLOEXEC,
                0,
                0,
                0,
            ],
        )
    }
    .map(|fd| fd as i32)
}

pub fn close(fd: i32) {
    // SAFETY: takes no pointer.
    let _ = unsafe { call(nr::CLOSE, [fd as usize, 0, 0, 0, 0, 0]) };
}

/// Reads into `buf`: the number of bytes read, 0 at the end.
pub fn read(fd: i32, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    unsafe {
        call(
            nr::READ,
            [fd as usize, buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0],
        )
    }
}

/// Reads directory entries (`struct linux_dirent64`) of `fd` into `buf`: the bytes filled, 0 at
/// the end.
pub fn getdents(fd: i32, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    unsafe {
        call(
            nr::GETDENTS64,
            [fd as usize, buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0],
        )
    }
}

/// Writes all of `bytes` to `fd`, as far as it can.
pub fn write_all(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: the kernel reads at most `bytes.len()` bytes of `bytes`.
        match unsafe {
            call(
                nr::WRITE,
                [fd as usize, bytes.as_ptr() as usize, bytes.len(), 0, 0, 0],
            )
        } {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n..],
            Err(EINTR) => {}
            Err(_) => return,
        }
    }
}

/// Ends this process with `code`.
pub fn exit(code: i32) -> ! {
    loop {
        // SAFETY: takes no pointer; does not return.
        let _ = unsafe { call(nr::EXIT_GROUP, [code as usize, 0, 0, 0, 0, 0]) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_numbers_are_the_kernels() {
        let pairs: [(usize, libc::c_long); 18] = [
            (nr::READ, libc::SYS_read),
            (nr::WRITE, libc::SYS_write),
            (nr::CLOSE, libc::SYS_close),
            (nr::RT_SIGACTION, libc::SYS_rt_sigaction),
            (nr::RT_SIGPROCMASK, libc::SYS_rt_sigprocmask),
            (nr::GETPID, libc::SYS_getpid),
            (nr::CLONE, libc::SYS_clone),
            (nr::EXECVE, libc::SYS_execve),
            (nr::WAIT4, libc::SYS_wait4),
            (nr::KILL, libc::SYS_kill),
            (nr::SETPGID, libc::SYS_setpgid),
            (nr::RT_SIGTIMEDWAIT, libc::SYS_rt_sigtimedwait),
            (nr::PRCTL, libc::SYS_prctl),
            (nr::GETDENTS64, libc::SYS_getdents64),
            (nr::CLOCK_GETTIME, libc::SYS_clock_gettime),
            (nr::EXIT_GROUP, libc::SYS_exit_group),
            (nr::OPENAT, libc::SYS_openat),
            (nr::PRLIMIT64, libc::SYS_prlimit64),
        ];
        for (mine, libc) in pairs {
            assert_eq!(mine as libc::c_long, libc);
        }
        for (mine, libc) in [
            (SIGHUP, libc::SIGHUP),
            (SIGINT, libc::SIGINT),
            (SIGKILL, libc::SIGKILL),
            (SIGTERM, libc::SIGTERM),
            (SIGCHLD, libc::SIGCHLD),
            (EINTR.0, libc::EINTR),
        ] {
            assert_eq!(mine, libc);
        }
    }

    #[test]
    fn calls_answer_like_libc() {
        assert_eq!(getpid(), std::process::id() as Pid);
        assert_eq!(kill(-1_000_000, 0), Err(Errno(libc::ESRCH)));
        assert_eq!(open(c"/nonexistent/x"), Err(Errno(libc::ENOENT)));
        let fd = open(c"/proc/self/stat").unwrap();
        let mut buf = [0u8; 64];
        let n = read(fd, &mut buf).unwrap();
        close(fd);
        let me = std::process::id().to_string();
        assert!(buf[..n].starts_with(me.as_bytes()));
        let t = now_ns();
        assert!(now_ns() >= t && t > 0);
    }
}
