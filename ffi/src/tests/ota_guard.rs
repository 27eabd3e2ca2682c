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
            kind: 99,
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

fn install_any(model: &pr_model, st: &pr_storage, patch: &[u8]) -> (pr_status, u32) {
    let mut counter = 77;
    // SAFETY: valid pointers for the call.
    let s = unsafe {
        pr_ota_install_any(
            model,
            st,
            std::ptr::null(),
            patch.as_ptr(),
            patch.len(),
            &mut counter,
        )
    };
    (s, counter)
}

/// A kind-2 patch for `blob` (sequence `seq`): a box module on [-0.5, 0.5]^5 and a
/// label module, with one verified region (the box's half x4 <= 0).
fn modules_patch(blob: &Aligned, seq: u32) -> Vec<u8> {
    use prorepair_core::patch::modules::encode::{self as menc, IndicatorSpec, ModuleSpec};
    let model = core_model(blob);
    let (lower, upper) = ([-0.5f32; 5], [0.5f32; 5]);
    let p1: Vec<f32> = (0..(5 * 4 + 4 + 4 * 5 + 5))
        .map(|i| ((i * 7 % 13) as f32 - 6.0) / 9.0)
        .collect();
    let p2: Vec<f32> = (0..(5 * 5 + 5)).map(|i| (i as f32 - 15.0) / 20.0).collect();
    let specs = [
        ModuleSpec {
            indicator: IndicatorSpec::Box {
                lower: &lower,
                upper: &upper,
            },
            dims: &[5, 4, 5],
            params: &p1,
        },
        ModuleSpec {
            indicator: IndicatorSpec::Label(3),
            dims: &[5, 5],
            params: &p2,
        },
    ];
    let region = [-0.5f32, -0.5, -0.5, -0.5, -0.5, 0.5, 0.5, 0.5, 0.5, 0.0];
    let mut out = vec![0u8; menc::encoded_len(&specs, &region).unwrap()];
    menc::write(&model, &specs, seq, &region, &mut out).unwrap();
    out
}

#[test]
fn patch_modules_install_boot_evaluate_and_guard_through_the_c_api() {
    let base_blob = Aligned::new(&mlp_blob());
    let repaired = Aligned::new(&repaired_mlp_blob());
    let base = loaded(&base_blob);
    let p1 = make_patch(&base_blob, &repaired, 1);
    let m2 = modules_patch(&base_blob, 2);
    let mut m = mem();
    let st = storage(&mut m);
    assert_eq!(install(&base, &st, None, &p1), (PR_OK, 1));
    // The weight-delta-only install refuses a kind-2 patch; the _any one takes it.
    assert_eq!(install(&base, &st, None, &m2), (PR_UNKNOWN_PATCH_KIND, 77));
    assert_eq!(install_any(&base, &st, &m2), (PR_OK, 2));
    assert_eq!(install_any(&base, &st, &m2), (PR_STALE_PATCH, 77));

    // RAM for either kind.
    let mut need = 0usize;
    assert_eq!(
        // SAFETY: valid buffers.
        unsafe { pr_ota_ram_bytes(m2.as_ptr(), m2.len(), &mut need) },
        PR_OK
    );
    let mut need_modules = 0usize;
    assert_eq!(
        // SAFETY: valid buffers.
        unsafe { pr_modules_ram_bytes(m2.as_ptr(), m2.len(), &mut need_modules) },
        PR_OK
    );
    assert_eq!(need, need_modules);

    // The weight-delta boot cannot run the kind-2 commit: it falls back past it to
    // the previous commit (the weight-delta patch in slot A).
    let mut buf = vec![0u8; 4096];
    let mut ram = vec![0.0f32; 1024];
    let mut out_model = sentinel_model();
    let mut info = pr_boot_info {
        source: pr_boot_source::PR_BOOT_BASE,
        sequence: 99,
        counter: 99,
        patch_len: 99,
        kind: 99,
    };
    // SAFETY: valid, disjoint buffers.
    let s = unsafe {
        pr_ota_boot(
            &base,
            &st,
            std::ptr::null(),
            buf.as_mut_ptr(),
            buf.len(),
            ram.as_mut_ptr().cast(),
            4 * ram.len(),
            &mut out_model,
            &mut info,
        )
    };
    assert_eq!(s, PR_OK);
    assert_eq!(info.source, pr_boot_source::PR_BOOT_FALLBACK_SLOT_A);
    assert_eq!((info.sequence, info.counter, info.kind), (1, 2, 1));

    let mut booted = pr_booted::unloaded();
    let mut arena_bytes = 0usize;
    assert_eq!(
        // SAFETY: valid pointers; the zeroed handle is reported, not used.
        unsafe { pr_booted_arena_bytes(&booted, &mut arena_bytes) },
        PR_MODEL_NOT_LOADED
    );
    // SAFETY: valid, disjoint buffers that outlive `booted` (this test).
    let s = unsafe {
        pr_ota_boot_any(
            &base,
            &st,
            std::ptr::null(),
            buf.as_mut_ptr(),
            buf.len(),
            ram.as_mut_ptr().cast(),
            4 * ram.len(),
            &mut booted,
            &mut info,
        )
    };
    assert_eq!(s, PR_OK);
    assert_eq!(info.source, pr_boot_source::PR_BOOT_SLOT_B);
    assert_eq!(
        (info.sequence, info.counter, info.patch_len, info.kind),
        (2, 2, m2.len(), 2)
    );
    assert_eq!(
        // SAFETY: valid pointers.
        unsafe { pr_booted_arena_bytes(&booted, &mut arena_bytes) },
        PR_OK
    );

    // pr_booted_evaluate equals pr_modules_evaluate on the same patch, bit for bit.
    let mut mods = pr_modules::unloaded();
    let mut mram = vec![0.0f32; need / 4];
    assert_eq!(
        // SAFETY: valid buffers; `m2` and `mram` outlive `mods`.
        unsafe {
            pr_modules_load(
                &base,
                m2.as_ptr(),
                m2.len(),
                mram.as_mut_ptr().cast(),
                need,
                &mut mods,
            )
        },
        PR_OK
    );
    let mut arena = vec![0.0f32; arena_bytes / 4 + 1];
    let mut g = pr_guard::unloaded();
    assert_eq!(
        // SAFETY: valid pointers; `booted`'s buffers outlive the guard.
        unsafe { pr_guard_init_booted(&mut g, &booted, std::ptr::null(), 0, 0, PR_CHOICE_HIGHEST) },
        PR_OK
    );
    let mut inside = 0;
    for k in 0..64 {
        let x: [f32; 5] =
            std::array::from_fn(|i| (((k * 5 + i) as f32 * 0.618).fract() - 0.5) * 1.1);
        let (mut y, mut want) = ([0.0f32; 5], [0.0f32; 5]);
        // SAFETY: valid, disjoint buffers.
        unsafe {
            assert_eq!(
                pr_booted_evaluate(
                    &booted,
                    x.as_ptr(),
                    5,
                    arena.as_mut_ptr().cast(),
                    arena_bytes,
                    y.as_mut_ptr(),
                    5
                ),
                PR_OK
            );
            assert_eq!(
                pr_modules_evaluate(
                    &mods,
                    x.as_ptr(),
                    5,
                    arena.as_mut_ptr().cast(),
                    arena_bytes,
                    want.as_mut_ptr(),
                    5
                ),
                PR_OK
            );
        }
        assert_eq!(y.map(f32::to_bits), want.map(f32::to_bits), "{x:?}");
        let mut d = pr_decision {
            inside: 9,
            tripped: 9,
            advisory: 9,
        };
        // SAFETY: valid, disjoint buffers.
        let s = unsafe {
            pr_guard_run(
                &mut g,
                x.as_ptr(),
                5,
                arena.as_mut_ptr().cast(),
                arena_bytes,
                y.as_mut_ptr(),
                5,
                &mut d,
            )
        };
        assert_eq!(s, PR_OK);
        let in_region = x.iter().all(|v| (-0.5..=0.5).contains(v)) && x[4] <= 0.0;
        assert_eq!(d.inside, u32::from(in_region), "{x:?}");
        inside += u32::from(in_region);
    }
    assert!(inside > 0);
    let mut c = pr_counters {
        inside: 0,
        outside: 0,
        monitor_trips: 0,
    };
    // SAFETY: valid pointers.
    assert_eq!(unsafe { pr_guard_counters(&g, &mut c) }, PR_OK);
    assert_eq!((c.inside, c.outside), (inside, 64 - inside));

    // Argument errors of pr_booted_evaluate: wrong lengths, a short arena, overlap.
    let x = [0.0f32; 5];
    let mut y = [0.0f32; 5];
    // SAFETY: valid buffers with the lengths given (the checks refuse the call).
    unsafe {
        let ev = |xl: usize, al: usize, yl: usize, out: *mut f32| {
            pr_booted_evaluate(
                &booted,
                x.as_ptr(),
                xl,
                arena.as_ptr().cast_mut().cast(),
                al,
                out,
                yl,
            )
        };
        assert_eq!(ev(4, arena_bytes, 5, y.as_mut_ptr()), PR_INPUT_LENGTH);
        assert_eq!(ev(5, arena_bytes, 4, y.as_mut_ptr()), PR_OUTPUT_LENGTH);
        assert_eq!(
            ev(5, arena_bytes - 4, 5, y.as_mut_ptr()),
            PR_ARENA_TOO_SMALL
        );
        // The output inside the patch buffer the modules are read from.
        assert_eq!(
            ev(
                5,
                arena_bytes,
                5,
                buf.as_mut_ptr()
                    .add(64 + buf.as_ptr().align_offset(4))
                    .cast()
            ),
            PR_OVERLAPPING_BUFFERS
        );
    }
}
