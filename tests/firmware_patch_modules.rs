//! Both patch kinds over the air in C (`firmware-examples/patch_modules/main.c`), built
//! with gcc -Wall -Wextra -Werror under ASan/UBSan against the no_std `libprorepair.a`:
//! the device installs the signed weight-delta repair of ACAS Xu N2,1 for property 2
//! (kind 1), refuses a forged patch-modules patch, installs the signed patch-modules
//! repair of the same network and property (kind 2) and boots it with
//! `pr_ota_boot_any`; a weight-delta-only boot on the same flash falls back to kind 1.
//!
//! Every printed output is checked against the device core in Rust with the scalar
//! kernels the no_std archive runs, bit for bit (base, weight delta, base + modules),
//! and the kind-2 outputs against tract running the exported patch-modules ONNX graph;
//! the guard's "inside" flags against the indicator box and the verified regions.
//!
//! Skips (with a message) when gcc or the ACAS Xu data are absent.

use prorepair_core::kernels;
use prorepair_core::ota::{self, sim::SimFlash};
use prorepair_core::patch::modules::{ModulePatch, ModulesModel};
use prorepair_core::{Error, Patch};
use prorepair_host::compile::AlignedBlob;
use prorepair_host::patch::sign;
use prorepair_host::repair::patchmodules::Indicator;

/// Rows `"<tag> K: y0 .. y4"` of the program's output.
fn rows_of(stdout: &str, tag: &str) -> Vec<[f32; 5]> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(tag))
        .filter_map(|l| l.split_once(':'))
        .map(|(_, values)| {
            let v: Vec<f32> = values
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect();
            v.try_into().unwrap()
        })
        .collect()
}

fn bits(rows: &[[f32; 5]]) -> Vec<[u32; 5]> {
    rows.iter().map(|r| r.map(f32::to_bits)).collect()
}

#[test]
fn c_device_installs_and_boots_a_weight_delta_then_patch_modules() {
    if !prorepair_tests::have_tool("gcc") {
        eprintln!("SKIP: gcc is not installed");
        return;
    }
    let (Some(delta_repair), Some((net, modules))) = (
        prorepair_tests::repair_n21_prop2(),
        prorepair_tests::repair_n21_prop2_modules(),
    ) else {
        eprintln!("SKIP: ACAS Xu data not found (set PROREPAIR_DATA or add ../shared/data)");
        return;
    };
    let key = sign::generate().unwrap();
    let public = key.verifying_key().to_bytes();
    let delta_emitted =
        prorepair_host::patch::emit(&net, &delta_repair.repaired, 1, &delta_repair.regions)
            .unwrap();
    let mut delta = delta_emitted.bytes.clone();
    sign::sign_patch(&mut delta, &key).unwrap();
    let modules_emitted = prorepair_host::patch::modules::emit(
        &net,
        &modules.modules,
        2,
        &modules.outcomes[0].partition,
    )
    .unwrap();
    assert_eq!(modules_emitted.base_blob, delta_emitted.base_blob);
    let mut kind2 = modules_emitted.bytes.clone();
    sign::sign_patch(&mut kind2, &key).unwrap();
    let blob = AlignedBlob::new(&delta_emitted.base_blob);
    let base = blob.model().unwrap();
    // A forger's copy: the first payload byte from the middle whose change (CRC fixed
    // up) passes every structural check, so only the signature stops it.
    let forged = (kind2.len() / 2..kind2.len() - 64)
        .map(|at| {
            let mut t = kind2.clone();
            t[at] ^= 0x01;
            let crc = prorepair_core::patch::patch_crc(&t).to_le_bytes();
            t[12..16].copy_from_slice(&crc);
            t
        })
        .find(|t| {
            let mut flash = SimFlash::new(16 * 1024);
            ota::install(&mut flash, &base, Some(&public), t) == Err(Error::BadSignature)
        })
        .expect("a payload byte to forge");

    // Inputs: a grid over the indicator box, points just outside its faces, and points
    // from the whole domain.
    let Indicator::Box(ind) = &modules.modules.entries[0].0 else {
        panic!("a box indicator")
    };
    let (lo, up) = (&ind.lower, &ind.upper);
    let mut rows: Vec<[f32; 5]> = (0..27u32)
        .map(|k| {
            std::array::from_fn(|i| {
                let t = [0.0, 0.41, 1.0][((k / 3u32.pow(i as u32 % 3)) % 3) as usize];
                (lo[i] + t * (up[i] - lo[i])) as f32
            })
        })
        .collect();
    for i in 0..5 {
        let mut x: [f32; 5] = std::array::from_fn(|j| ((lo[j] + up[j]) / 2.0) as f32);
        x[i] = (up[i] as f32).next_up().next_up();
        rows.push(x);
        x[i] = (lo[i] as f32).next_down().next_down();
        rows.push(x);
    }
    for k in 0..8u32 {
        rows.push(std::array::from_fn(|i| {
            ((((k * 5 + i as u32) as f32) * 0.618).fract() - 0.5) * 0.9
        }));
    }

    let dir = prorepair_tests::c_example_dir("patch_modules", "acasxu_2_1");
    prorepair_tests::write_c_headers(
        &dir,
        &[
            ("base_model", &delta_emitted.base_blob),
            ("patch_delta", &delta),
            ("patch_modules", &kind2),
            ("patch_forged", &forged),
            ("public_key", &public),
        ],
        "",
        "N_INPUTS",
        &rows,
    );
    let exe = prorepair_tests::build_c_example(
        "patch_modules",
        "main.c",
        &dir,
        "patch_modules",
        true,
        &[],
    );
    let stdout = prorepair_tests::run_c_example(&exe);
    // Boots: base, weight delta (slot A), again after the refused forgery, then the
    // modules (slot B); the weight-delta-only boot falls back to slot A.
    let boots: Vec<&str> = stdout.lines().filter(|l| l.starts_with("boot ")).collect();
    assert_eq!(
        boots,
        [
            "boot kind 0 source 0 sequence 0",
            "boot kind 1 source 1 sequence 1",
            "boot kind 1 source 1 sequence 1",
            "boot kind 2 source 2 sequence 2",
        ],
        "{stdout}"
    );
    assert!(
        stdout.contains("delta-only boot source 3 sequence 1"),
        "{stdout}"
    );

    // Every output against the core with the scalar kernels, bit for bit.
    let generic = kernels::generic();
    let mut arena = vec![0.0f32; base.required_arena_len()];
    let eval = |f: &mut dyn FnMut(&[f32], &mut [f32; 5])| -> Vec<[f32; 5]> {
        rows.iter()
            .map(|x| {
                let mut y = [0.0f32; 5];
                f(x, &mut y);
                y
            })
            .collect()
    };
    let want_base = eval(&mut |x, y| base.evaluate_with(generic, x, &mut arena, y).unwrap());
    let patch = Patch::from_bytes(&delta).unwrap();
    let mut ram = vec![0.0f32; patch.required_ram_len()];
    let patched = base.with_patch(&patch, &mut ram).unwrap();
    let want_delta = eval(&mut |x, y| patched.evaluate_with(generic, x, &mut arena, y).unwrap());
    let mp = ModulePatch::from_bytes(&kind2).unwrap();
    let mut mram = vec![0.0f32; mp.required_ram_len()];
    let mm = ModulesModel::new(&base, &mp, &mut mram).unwrap();
    let mut marena = vec![0.0f32; mm.required_arena_len()];
    let want_modules = eval(&mut |x, y| mm.evaluate_with(generic, x, &mut marena, y).unwrap());
    assert_eq!(bits(&rows_of(&stdout, "base ")), bits(&want_base));
    assert_eq!(bits(&rows_of(&stdout, "delta ")), bits(&want_delta));
    let got_modules = rows_of(&stdout, "modules ");
    assert_eq!(bits(&got_modules), bits(&want_modules));
    assert!(
        stdout.contains(&format!(
            "ram {} arena {}",
            mp.required_ram_bytes(),
            mm.required_arena_bytes()
        )),
        "{stdout}"
    );

    // The guard's inside flags: in the indicator box (as f32) and a verified region.
    let (mut inside_n, mut changed) = (0, 0);
    for (k, x) in rows.iter().enumerate() {
        let in_box = x
            .iter()
            .zip(lo.iter().zip(up))
            .all(|(&v, (&l, &u))| l as f32 <= v && v <= u as f32);
        let want_inside = in_box && mp.covers(x);
        let line = format!("inside {k}: {}", u32::from(want_inside));
        assert!(stdout.contains(&line), "{line}\n{stdout}");
        inside_n += usize::from(want_inside);
        if in_box {
            changed += usize::from(want_modules[k] != want_base[k]);
        } else {
            assert_eq!(
                want_modules[k].map(f32::to_bits),
                want_base[k].map(f32::to_bits)
            );
        }
    }
    assert!(inside_n >= 27, "{inside_n} grid points inside");
    assert!(changed > 0, "the module acts inside its box");

    // Tract on the exported patch-modules graph agrees with the C device.
    let shape = prorepair_host::export::onnx::declared_input_shape(&delta_repair.onnx);
    let base_onnx = dir.join("base.onnx");
    std::fs::write(
        &base_onnx,
        prorepair_host::export::to_onnx_bytes(&net, shape.as_deref()).unwrap(),
    )
    .unwrap();
    let tract = prorepair_host::patch::modules::load_tract(&base_onnx, &kind2, "kind2").unwrap();
    for (x, c) in rows.iter().zip(&got_modules) {
        let t = tract.run(x).unwrap();
        for (g, w) in c.iter().zip(&t) {
            assert!(
                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "{x:?}: C {g} vs tract {w}"
            );
        }
    }
}
