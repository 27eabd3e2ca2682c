//! OTA install/boot and the guard through the C API: storage callbacks over memory,
//! status codes for misuse, out-parameters untouched on failure, a failing storage.

use core::ffi::{c_int, c_void};

use super::api::loaded;
use super::patch::{make_patch, repaired_mlp_blob};
use super::support::*;
use crate::pr_status::*;
use crate::*;

struct Mem {
    areas: [Vec<u8>; 4],
    broken: bool,
}

fn area(ctx: *mut c_void, a: pr_area) -> &'static mut Vec<u8> {
    // SAFETY: the tests pass a live `Mem` as ctx and call one function at a time.
    let mem = unsafe { &mut *ctx.cast::<Mem>() };
    &mut mem.areas[a as usize]
}

fn broken(ctx: *mut c_void) -> bool {
    // SAFETY: as in `area`.
    unsafe { (*ctx.cast::<Mem>()).broken }
}

unsafe extern "C" fn read(
    ctx: *mut c_void,
    a: pr_area,
    off: usize,
    buf: *mut u8,
    len: usize,
) -> c_int {
    if broken(ctx) {
        return -1;
    }
    let src = &area(ctx, a)[off..off + len];
    // SAFETY: the library passes a buffer writable for `len` bytes.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), buf, len) };
    0
}

unsafe extern "C" fn erase(ctx: *mut c_void, a: pr_area) -> c_int {
    if broken(ctx) {
        return -1;
    }
    area(ctx, a).fill(0xFF);
    0
}

unsafe extern "C" fn write(
    ctx: *mut c_void,
    a: pr_area,
    off: usize,
    data: *const u8,
    len: usize,
) -> c_int {
    if broken(ctx) {
        return -1;
    }
    // SAFETY: the library passes data readable for `len` bytes.
    let src = unsafe { std::slice::from_raw_parts(data, len) };
    for (d, s) in area(ctx, a)[off..off + len].iter_mut().zip(src) {
        *d &= *s;
    }
    0
}

fn mem() -> Box<Mem> {
    Box::new(Mem {
        areas: [
            vec![0xFF; 4096],
            vec![0xFF; 4096],
            vec![0xFF; PR_OTA_RECORD_SIZE],
            vec![0xFF; PR_OTA_RECORD_SIZE],
        ],
        broken: false,
    })
}

fn storage(m: &mut Mem) -> pr_storage {
    pr_storage {
        ctx: (m as *mut Mem).cast(),
        slot_capacity: 4096,
        read: Some(read),
        erase: Some(erase),
        write: Some(write),
    }
}

fn install(
    model: &pr_model,
    st: &pr_storage,
    key: Option<&[u8; 32]>,
    patch: &[u8],
) -> (pr_status, u32) {
    let mut counter = 77;
    // SAFETY: valid pointers for the call.
    let s = unsafe {
        pr_ota_install(
            model,
            st,
            key.map_or(std::ptr::null(), |k| k.as_ptr()),
            patch.as_ptr(),
            patch.len(),
            &mut counter,
        )
    };
    (s, counter)
}

struct Booted {
    model: pr_model,
    info: pr_boot_info,
    buf: Vec<u8>,
    _ram: Vec<f32>,
}

fn boot(base: &pr_model, st: &pr_storage) -> Booted {
    let mut b = Booted {
        model: sentinel_model(),
        info: pr_boot_info {
            source: pr_boot_source::PR_BOOT_FALLBACK_BASE,
            sequence: 99,
            counter: 99,
            patch_len: 99,
        },
        buf: vec![0; 4096],
        _ram: vec![0.0; 1024],
    };
    // SAFETY: valid, disjoint buffers that outlive the booted model (in `b`).
    let s = unsafe {
        pr_ota_boot(
            base,
            st,
            std::ptr::null(),
            b.buf.as_mut_ptr(),
            b.buf.len(),
            b._ram.as_mut_ptr().cast(),
            4 * b._ram.len(),
            &mut b.model,
            &mut b.info,
        )
    };
    assert_eq!(s, PR_OK);
    b
}

#[test]
fn install_boot_and_guard_through_the_c_api() {
    let base_blob = Aligned::new(&mlp_blob());
    let repaired = Aligned::new(&repaired_mlp_blob());
    let base = loaded(&base_blob);
    let p1 = make_patch(&base_blob, &repaired, 1);
    let mut m = mem();
    let st = storage(&mut m);

    // Misuse: NULL storage or callback, NULL patch; the counter stays untouched.
    let mut no_cb = storage(&mut m);
    no_cb.write = None;
    assert_eq!(install(&base, &no_cb, None, &p1), (PR_NULL_POINTER, 77));
    // SAFETY: NULL storage and patch are the point.
    let s = unsafe {
        pr_ota_install(
            &base,
            std::ptr::null(),
            std::ptr::null(),
            p1.as_ptr(),
            p1.len(),
            std::ptr::null_mut(),
        )
    };
    assert_eq!(s, PR_NULL_POINTER);
    // A device with a key refuses the unsigned patch (and an invalid key is named).
    let key = [9u8; 32];
    let (s, c) = install(&base, &st, Some(&key), &p1);
    assert!(matches!(s, PR_UNSIGNED_PATCH | PR_BAD_PUBLIC_KEY), "{s:?}");
    assert_eq!(c, 77);

    // Unkeyed device: installs, boots slot A with the patch's sequence.
    assert_eq!(install(&base, &st, None, &p1), (PR_OK, 1));
    let b = boot(&base, &st);
    assert_eq!(b.info.source, pr_boot_source::PR_BOOT_SLOT_A);
    assert_eq!(
        (b.info.sequence, b.info.counter, b.info.patch_len),
        (1, 1, p1.len())
    );
    assert_eq!(&b.buf[..p1.len()], &p1[..]);
    assert_eq!(install(&base, &st, None, &p1), (PR_STALE_PATCH, 77));

    // The guard over the booted model and its patch.
    let mut g = pr_guard::unloaded();
    let rows = [-1.0f32, 1.0, 0.0, 0.0, 0.0, 0.0];
    // SAFETY: valid pointers; the patch and rows outlive the guard (this test).
    let init = |g: &mut pr_guard, rows: &[f32], choice: u32| unsafe {
        pr_guard_init(
            g,
            &b.model,
            b.buf.as_ptr(),
            b.info.patch_len,
            rows.as_ptr(),
            rows.len(),
            2,
            choice,
        )
    };
    assert_eq!(init(&mut g, &rows[..5], PR_CHOICE_LOWEST), PR_BAD_MONITOR);
    assert_eq!(init(&mut g, &rows, 7), PR_BAD_MONITOR);
    let mut d = pr_decision {
        inside: 9,
        tripped: 9,
        advisory: 9,
    };
    let mut y = [0.0f32; 5];
    let mut arena = vec![0.0f32; 64];
    // SAFETY: valid buffers; the zeroed guard is reported, not used.
    let run = |g: &mut pr_guard,
               x: &[f32],
               y: &mut [f32; 5],
               d: &mut pr_decision,
               arena: &mut Vec<f32>| unsafe {
        pr_guard_run(
            g,
            x.as_ptr(),
            x.len(),
            arena.as_mut_ptr().cast(),
            4 * arena.len(),
            y.as_mut_ptr(),
            5,
            d,
        )
    };
    assert_eq!(
        run(&mut g, &[0.0; 5], &mut y, &mut d, &mut arena),
        PR_MODEL_NOT_LOADED
    );
    assert_eq!((d.inside, d.tripped, d.advisory), (9, 9, 9));
    assert_eq!(init(&mut g, &rows, PR_CHOICE_LOWEST), PR_OK);
    assert_eq!(
        run(&mut g, &[0.0; 4], &mut y, &mut d, &mut arena),
        PR_INPUT_LENGTH
    );
    assert_eq!(run(&mut g, &[0.5; 5], &mut y, &mut d, &mut arena), PR_OK);
    assert_eq!(d.inside, 1);
    let tripped_inside = d.tripped;
    assert_eq!(run(&mut g, &[3.0; 5], &mut y, &mut d, &mut arena), PR_OK);
    assert_eq!(d.inside, 0);
    let tripped = d.tripped == 1;
    if tripped {
        assert_eq!(d.advisory, 2);
    }
    let mut c = pr_counters {
        inside: 0,
        outside: 0,
        monitor_trips: 0,
    };
    // SAFETY: valid pointers.
    assert_eq!(unsafe { pr_guard_counters(&g, &mut c) }, PR_OK);
    assert_eq!((c.inside, c.outside), (1, 1));
    assert_eq!(c.monitor_trips, tripped_inside + u32::from(tripped));

    // A failing storage: install reports it; boot still gives the base model.
    m.broken = true;
    let p2 = make_patch(&base_blob, &repaired, 2);
    assert_eq!(install(&base, &st, None, &p2), (PR_STORAGE_FAILURE, 77));
    let b = boot(&base, &st);
    assert_eq!(b.info.source, pr_boot_source::PR_BOOT_BASE);
    assert_eq!((b.info.sequence, b.info.patch_len), (0, 0));
    m.broken = false;
    let b = boot(&base, &st);
    assert_eq!(
        (b.info.source, b.info.sequence),
        (pr_boot_source::PR_BOOT_SLOT_A, 1)
    );
}
