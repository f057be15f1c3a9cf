//! The supervisor as a program of its own, `kiln-supervise ARG0 PROGRAM ARGS...`: no std, no
//! libc, linked statically without start files, so that starting it costs an exec and little
//! more (a dynamically linked program pays for its loader and libc's start-up at every process
//! of every step). kiln embeds it and runs it from memory (see `mod.rs`).
//!
//! `build.rs` compiles this file with `rustc` itself, not as a `[[bin]]`: a program without std
//! cannot unwind, so it needs `panic=abort`, and cargo builds every target of a package with the
//! same panic strategy. The work is `run.rs`, the system calls `sys.rs`.

#![no_std]
#![no_main]
#![no_builtins]

mod mem;
mod run;
mod sys;

// The kernel starts a static program at `_start` with the stack pointer at `argc`, followed by
// `argv` (NULL-terminated), `envp` (NULL-terminated) and the auxiliary vector.
#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(
    ".globl _start",
    "_start:",
    "xor ebp, ebp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {start}",
    "ud2",
    start = sym start,
);

#[cfg(target_arch = "aarch64")]
core::arch::global_asm!(
    ".globl _start",
    "_start:",
    "mov x29, xzr",
    "mov x30, xzr",
    "mov x0, sp",
    "bl {start}",
    "brk #0",
    start = sym start,
);

/// The entry point: `sp` is the initial stack, `argc` then the vectors.
///
/// # Safety
/// Called once, by `_start`, with the stack the kernel laid out.
unsafe extern "C" fn start(sp: *mut usize) -> ! {
    // SAFETY: the kernel's layout: `argc`, `argc` pointers and a NULL, then the environment.
    unsafe {
        let argc = *sp;
        let argv = sp.add(1).cast::<*const u8>();
        let envp = argv.add(argc + 1);
        // argv[0] is this program; `ARG0 PROGRAM ARGS...` and the NULL follow.
        run::run(argv.add(1), envp)
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    sys::write_all(2, b"kiln-supervise: internal error\n");
    sys::exit(125)
}
