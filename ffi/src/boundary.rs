//! The panic boundary around every `extern "C"` body (see the crate documentation).

/// Run `body`; if it panics, return `on_panic` instead of unwinding into C.
///
/// Host build (std): `catch_unwind`. Firmware build (no_std, `panic = "abort"`): a
/// panic reaches [`on_panic_abort`], which aborts, so `body` is called directly.
#[cfg(not(all(not(test), panic = "abort", feature = "panic-handler")))]
pub(crate) fn guard<T>(on_panic: T, body: impl FnOnce() -> T) -> T {
    // AssertUnwindSafe: after a caught panic nothing the closure touched is used again
    // by this crate; the caller only sees `on_panic` (PR_PANIC) and an untouched
    // out-parameter (out-parameters are written last, on success only).
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(on_panic)
}

/// Run `body` (firmware build: a panic aborts in [`on_panic_abort`], never unwinds).
#[cfg(all(not(test), panic = "abort", feature = "panic-handler"))]
pub(crate) fn guard<T>(_on_panic: T, body: impl FnOnce() -> T) -> T {
    body()
}

/// The firmware build's panic handler: stop the program through the C library's
/// `abort()` (newlib and picolibc provide it on bare metal too).
#[cfg(all(not(test), panic = "abort", feature = "panic-handler"))]
#[panic_handler]
fn on_panic_abort(_info: &core::panic::PanicInfo<'_>) -> ! {
    unsafe extern "C" {
        fn abort() -> !;
    }
    // SAFETY: `abort` takes no arguments, touches no Rust state and never returns; it
    // is part of every hosted C library and of the bare-metal ones firmware links.
    unsafe { abort() }
}

/// The unwinding personality that the precompiled `core` (built with `panic = "unwind"`)
/// still references from its exception tables. In the firmware build nothing ever
/// unwinds (`panic = "abort"`, and C never throws through us), so it is never called;
/// defining it lets the archive link from C without libgcc_s or std. (With LTO over a
/// staticlib-only build the reference disappears anyway; an archive that also carries
/// the rlib is not LTO'd.)
#[cfg(all(not(test), panic = "abort", feature = "panic-handler"))]
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}
