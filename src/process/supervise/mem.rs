//! The memory functions the compiler calls (`memcpy`, `memset`, ...) and the symbol `core`'s
//! unwind tables name, for the static supervisor, which has no libc to provide them. Plain byte
//! loops: the supervisor copies a few hundred bytes at most. The crate is `#![no_builtins]`, so
//! the compiler does not turn these loops back into calls to themselves.

/// # Safety
/// As C's `memcpy`: `n` bytes readable at `src`, writable at `dst`, not overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: as the caller promises.
    unsafe { memmove(dst, src, n) }
}

/// # Safety
/// As C's `memmove`: `n` bytes readable at `src` and writable at `dst`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: as the caller promises; copying backwards when `dst` is above `src` handles
    // overlap.
    unsafe {
        if (dst as usize) < (src as usize) {
            for i in 0..n {
                *dst.add(i) = *src.add(i);
            }
        } else {
            for i in (0..n).rev() {
                *dst.add(i) = *src.add(i);
            }
        }
    }
    dst
}

/// # Safety
/// As C's `memset`: `n` bytes writable at `dst`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: as the caller promises.
        unsafe { *dst.add(i) = c as u8 };
    }
    dst
}

/// # Safety
/// As C's `memcmp`: `n` bytes readable at `a` and at `b`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: as the caller promises.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
/// As `memcmp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: as the caller promises.
    unsafe { memcmp(a, b, n) }
}

/// # Safety
/// As C's `strlen`: a NUL-terminated string at `s`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn strlen(s: *const u8) -> usize {
    let mut n = 0;
    // SAFETY: as the caller promises, every byte up to the NUL is readable.
    while unsafe { *s.add(n) } != 0 {
        n += 1;
    }
    n
}

/// Named by the unwind tables of `core`; never called, since the supervisor aborts on a panic.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}
