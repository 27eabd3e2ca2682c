//! The runtime guard in caller storage: verified regions, output monitor, counters.
//! `pr_guard_init` guards a `pr_model` (with its weight-delta patch);
//! `pr_guard_init_booted` guards what `pr_ota_boot_any` booted, of either patch kind.

use core::mem::{align_of, size_of};

use prorepair_core::Patch;
use prorepair_core::guard::{Choice, Guard, Monitor};

use crate::boundary::guard;
use crate::model::{eval_buffers, pr_model, read_model, span, tagged_payload};
use crate::ota::{pr_booted, read_booted};
use crate::status::pr_status::{self, *};

/// Size in bytes of `pr_guard` on every target (C: `sizeof(pr_guard)`).
pub const PR_GUARD_SIZE: usize = 512;

/// Most rows of an output monitor.
pub const PR_MAX_MONITOR_ROWS: usize = 16;

/// A runtime guard: opaque storage owned by the caller, filled by `pr_guard_init`.
///
/// Holds a copy of the model (which keeps referring to its blob and patch RAM), and
/// refers to the patch bytes and the monitor rows given to `pr_guard_init`: all of them
/// must stay valid and unmodified while the guard is used. No destructor, no heap. A
/// zeroed `pr_guard` is reported as `PR_MODEL_NOT_LOADED`.
#[repr(C)]
#[derive(Debug)]
pub struct pr_guard {
    /// Opaque: a tag word, then the guard. Do not read or write.
    _opaque: [u64; 64],
}

/// `choice` of `pr_guard_init`: the advisory is the lowest score (ACAS Xu).
pub const PR_CHOICE_LOWEST: u32 = 0;
/// `choice` of `pr_guard_init`: the advisory is the highest score (classifiers).
pub const PR_CHOICE_HIGHEST: u32 = 1;

/// What the guard decided for one input (filled by `pr_guard_run`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pr_decision {
    /// 1 when the input lies in a region the patch's proof covers, else 0 (flagged).
    pub inside: u32,
    /// 1 when the output monitor tripped (then `advisory` is the fallback), else 0.
    pub tripped: u32,
    /// The advisory to act on (an output index).
    pub advisory: u32,
}

/// The guard's counters (saturating).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct pr_counters {
    /// Inputs inside a verified region.
    pub inside: u32,
    /// Inputs outside every verified region.
    pub outside: u32,
    /// Outputs the monitor caught.
    pub monitor_trips: u32,
}

impl pr_guard {
    /// Zeroed storage, not yet initialised (what a C static or `{0}` gives).
    pub const fn unloaded() -> Self {
        pr_guard { _opaque: [0; 64] }
    }
}

/// Word 0 of an initialised `pr_guard` ("PRGUARD1").
const GUARD_TAG: u64 = u64::from_le_bytes(*b"PRGUARD1");

const _: () = {
    assert!(size_of::<pr_guard>() == PR_GUARD_SIZE);
    assert!(size_of::<u64>() + size_of::<Guard<'static>>() <= PR_GUARD_SIZE);
    assert!(align_of::<Guard<'static>>() <= align_of::<u64>());
    assert!(PR_MAX_MONITOR_ROWS == prorepair_core::guard::MAX_MONITOR_ROWS);
};

/// Initialise a guard for `model`.
///
/// - `out`: caller storage, written only on `PR_OK`.
/// - `model`: borrowed for the call; the guard keeps a copy (so the model's blob and
///   patch RAM must outlive the guard).
/// - `patch`, `patch_len`: the patch `model` runs (e.g. the first `patch_len` bytes of
///   `pr_ota_boot`'s `patch_buf`), or NULL/0 for an unpatched model (every input is
///   then flagged as outside). It must be the applied one (`PR_STALE_PATCH` otherwise)
///   and stay valid and unmodified while the guard is used.
/// - `monitor_rows`, `monitor_len`: NULL/0 for no monitor, or `monitor_len` floats: 1 to
///   16 rows of (output count + 1) values `c_0 .. c_{n-1}, d`; the monitor trips when
///   every row satisfies `c . y <= d` (the property's unsafe set, as VNN-LIB states it)
///   or an output is not finite. Kept by reference: valid while the guard is used.
/// - `fallback`: the advisory answered when the monitor trips (an output index).
/// - `choice`: `PR_CHOICE_LOWEST` or `PR_CHOICE_HIGHEST`: the advisory otherwise (the
///   lowest or highest output); any other value gives `PR_BAD_MONITOR`.
///
/// Returns `PR_OK`, `PR_NULL_POINTER`, `PR_MISALIGNED_POINTER`, `PR_MODEL_NOT_LOADED`,
/// `PR_BAD_MONITOR`, `PR_STALE_PATCH`, `PR_WRONG_BASE_MODEL`, or the patch's error.
///
/// # Safety
/// `out` NULL or writable `pr_guard` storage; `model` NULL or an initialised
/// `pr_model`; `patch` NULL or readable for `patch_len` bytes and `monitor_rows` NULL
/// or readable for `monitor_len` floats, both outliving the guard.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)] // the C signature: buffers come as (pointer, length) pairs
pub unsafe extern "C" fn pr_guard_init(
    out: *mut pr_guard,
    model: *const pr_model,
    patch: *const u8,
    patch_len: usize,
    monitor_rows: *const f32,
    monitor_len: usize,
    fallback: u32,
    choice: u32,
) -> pr_status {
    guard(PR_PANIC, || {
        if out.is_null() {
            return PR_NULL_POINTER;
        }
        if !out.is_aligned() || (!monitor_rows.is_null() && !monitor_rows.is_aligned()) {
            return PR_MISALIGNED_POINTER;
        }
        // SAFETY: contract above, passed on.
        let model = match unsafe { read_model(model) } {
            Ok(m) => m,
            Err(s) => return s,
        };
        if patch_len > isize::MAX as usize || monitor_len > isize::MAX as usize / 4 {
            return PR_OVERFLOW;
        }
        let patch = if patch.is_null() || patch_len == 0 {
            None
        } else {
            // SAFETY: non-null, readable for `patch_len` bytes and outliving the guard
            // (contract; the erased 'static).
            let bytes: &'static [u8] = unsafe { core::slice::from_raw_parts(patch, patch_len) };
            match Patch::from_bytes(bytes) {
                Ok(p) => Some(p),
                Err(e) => return e.into(),
            }
        };
        // SAFETY: contract above, passed on.
        match unsafe {
            monitor_and_choice(
                monitor_rows,
                monitor_len,
                model.output_len(),
                fallback,
                choice,
            )
        } {
            Ok((monitor, choice)) => {
                // SAFETY: contract above, passed on.
                unsafe { store(out, Guard::new(model, patch, monitor, choice)) }
            }
            Err(s) => s,
        }
    })
}

/// Initialise a guard for the model `pr_ota_boot_any` booted (either patch kind).
///
/// Arguments and results as for `pr_guard_init`, with `booted` (borrowed for the call;
/// the guard keeps a copy, so its blob, patch buffer and RAM must outlive the guard) in
/// place of the model and its patch. "Inside" means: inside a verified region of a
/// weight-delta patch; inside a box indicator and a verified region of a patch-modules
/// patch; never for the base model.
///
/// # Safety
/// `out` NULL or writable `pr_guard` storage; `booted` NULL or a `pr_booted` filled by
/// `pr_ota_boot_any` (or zeroed); `monitor_rows` NULL or readable for `monitor_len`
/// floats, outliving the guard.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_guard_init_booted(
    out: *mut pr_guard,
    booted: *const pr_booted,
    monitor_rows: *const f32,
    monitor_len: usize,
    fallback: u32,
    choice: u32,
) -> pr_status {
    guard(PR_PANIC, || {
        if out.is_null() {
            return PR_NULL_POINTER;
        }
        if !out.is_aligned() || (!monitor_rows.is_null() && !monitor_rows.is_aligned()) {
            return PR_MISALIGNED_POINTER;
        }
        // SAFETY: contract above, passed on.
        let running = match unsafe { read_booted(booted) } {
            Ok(r) => r,
            Err(s) => return s,
        };
        if monitor_len > isize::MAX as usize / 4 {
            return PR_OVERFLOW;
        }
        // SAFETY: contract above, passed on.
        match unsafe {
            monitor_and_choice(
                monitor_rows,
                monitor_len,
                running.output_len(),
                fallback,
                choice,
            )
        } {
            Ok((monitor, choice)) => {
                // SAFETY: contract above, passed on.
                unsafe { store(out, Guard::for_running(running, monitor, choice)) }
            }
            Err(s) => s,
        }
    })
}

/// The optional monitor and the advisory choice from their C arguments.
///
/// # Safety
/// `monitor_rows` is NULL or aligned, readable for `monitor_len` floats and outliving
/// the guard.
unsafe fn monitor_and_choice(
    monitor_rows: *const f32,
    monitor_len: usize,
    output_len: usize,
    fallback: u32,
    choice: u32,
) -> Result<(Option<Monitor<'static>>, Choice), pr_status> {
    let monitor = if monitor_rows.is_null() || monitor_len == 0 {
        None
    } else {
        // SAFETY: non-null, aligned, readable for `monitor_len` floats and outliving
        // the guard (contract).
        let rows: &'static [f32] =
            unsafe { core::slice::from_raw_parts(monitor_rows, monitor_len) };
        Some(Monitor::new(rows, output_len, fallback).map_err(pr_status::from)?)
    };
    // A plain integer from C (an out-of-range C enum value would be undefined in Rust).
    let choice = match choice {
        PR_CHOICE_HIGHEST => Choice::Highest,
        PR_CHOICE_LOWEST => Choice::Lowest,
        _ => return Err(PR_BAD_MONITOR),
    };
    Ok((monitor, choice))
}

/// Write a new guard (or the error) to `out`.
///
/// # Safety
/// `out` is non-null, aligned and writable for `PR_GUARD_SIZE` bytes.
unsafe fn store(out: *mut pr_guard, g: Result<Guard<'static>, prorepair_core::Error>) -> pr_status {
    match g {
        Ok(g) => {
            let words = out.cast::<u64>();
            // SAFETY: `out` non-null, aligned, writable for PR_GUARD_SIZE bytes (contract);
            // the Guard fits at word 1 (const assertions). Tag written last.
            unsafe {
                words.add(1).cast::<Guard<'static>>().write(g);
                words.write(GUARD_TAG);
            }
            PR_OK
        }
        Err(e) => e.into(),
    }
}

/// The guard in `g`, or why there is none.
///
/// # Safety
/// `g` is NULL or an initialised (zeroed or filled) `pr_guard`.
unsafe fn guard_ptr(g: *const pr_guard) -> Result<*mut Guard<'static>, pr_status> {
    // SAFETY: contract, passed on (a pr_guard is 64 u64 words, 8-aligned); the tag is
    // written only after a valid Guard at word 1.
    let payload = unsafe { tagged_payload(g, GUARD_TAG) }?;
    Ok(payload.cast::<Guard<'static>>().cast_mut())
}

/// [`guard_ptr`], then `out` checked non-null and aligned: the argument checks that
/// start both `pr_guard_evaluate` and `pr_guard_counters`.
///
/// # Safety
/// As for [`guard_ptr`].
unsafe fn guard_and_out<T>(
    g: *const pr_guard,
    out: *const T,
) -> Result<*mut Guard<'static>, pr_status> {
    // SAFETY: contract, passed on.
    let ptr = unsafe { guard_ptr(g) }?;
    if out.is_null() {
        return Err(PR_NULL_POINTER);
    }
    if !out.is_aligned() {
        return Err(PR_MISALIGNED_POINTER);
    }
    Ok(ptr)
}

/// Run one input through the guard: evaluate the model into `output`, check the
/// verified regions and the monitor, update the counters, and fill `*out`.
///
/// Arguments as for `pr_model_evaluate` (same lengths, alignment and overlap rules,
/// same errors); `out` is written on `PR_OK` only; the counters change on `PR_OK`
/// only. Not reentrant for one guard (it updates the counters).
///
/// # Safety
/// `g` NULL or a `pr_guard` initialised by `pr_guard_init` whose model, patch and
/// monitor are still valid, not used by another thread during the call; the buffers
/// as for `pr_model_evaluate`; `out` NULL or writable.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)] // the C signature: buffers come as (pointer, length) pairs
pub unsafe extern "C" fn pr_guard_run(
    g: *mut pr_guard,
    input: *const f32,
    input_len: usize,
    arena: *mut u8,
    arena_len: usize,
    output: *mut f32,
    output_len: usize,
    out: *mut pr_decision,
) -> pr_status {
    guard(PR_PANIC, || {
        // SAFETY: contract above, passed on.
        let ptr = match unsafe { guard_and_out(g, out) } {
            Ok(p) => p,
            Err(s) => return s,
        };
        // SAFETY: a valid Guard (guard_ptr); Copy, read by value.
        let mut current = unsafe { ptr.read() };
        let model = *current.model();
        // SAFETY: contract above, passed on; the guard storage is the one other buffer
        // the arena and output must not overlap.
        let (input, arena, output) = match unsafe {
            eval_buffers(
                &model,
                input,
                input_len,
                arena,
                arena_len,
                output,
                output_len,
                Some(span(g.cast_const(), 1)),
            )
        } {
            Ok(buffers) => buffers,
            Err(s) => return s,
        };
        match current.run_bytes(input, arena, output) {
            Ok(d) => {
                // SAFETY: `ptr` points into the caller's writable guard storage
                // (contract), disjoint from every buffer above; `out` non-null, aligned,
                // writable.
                unsafe {
                    ptr.write(current);
                    out.write(pr_decision {
                        inside: u32::from(d.inside),
                        tripped: u32::from(d.tripped),
                        advisory: d.advisory,
                    });
                }
                PR_OK
            }
            Err(e) => e.into(),
        }
    })
}

/// `*out` = the guard's counters.
///
/// # Safety
/// `g` NULL or an initialised `pr_guard`; `out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pr_guard_counters(g: *const pr_guard, out: *mut pr_counters) -> pr_status {
    guard(PR_PANIC, || {
        // SAFETY: contract above, passed on.
        let ptr = match unsafe { guard_and_out(g, out) } {
            Ok(p) => p,
            Err(s) => return s,
        };
        // SAFETY: a valid Guard (guard_ptr), read by value.
        let c = unsafe { ptr.read() }.counters();
        // SAFETY: non-null, aligned, writable (contract).
        unsafe {
            out.write(pr_counters {
                inside: c.inside,
                outside: c.outside,
                monitor_trips: c.monitor_trips,
            })
        };
        PR_OK
    })
}
