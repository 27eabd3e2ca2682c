//! The ACAS Xu guard controller in C (`firmware-examples/acas_guard/main.c`), built with
//! gcc -Wall -Wextra -Werror under ASan/UBSan (and run under valgrind when installed)
//! against the no_std `libprorepair.a`: a controller loop with the runtime guard that
//! receives the vendor-signed patch of the PROVEN repair of ACAS Xu N2,1 for property 2
//! in the middle of operation (a tampered and an unsigned copy refused, a power loss
//! during the install, reboot into the old model, retry, reboot into the new one).
//!
//! Every printed step is checked against the device core in Rust: the outputs bit for
//! bit (base model before the update, patched after), the region flag against
//! `Patch::covers`, the monitor against property 2's unsafe set, the advisory.
//!
//! Skips (with a message) when gcc or the ACAS Xu data are absent.

use std::process::Command;

use prorepair_core::Patch;
use prorepair_host::compile::AlignedBlob;
use prorepair_host::patch::sign;

const OTA_STEP: usize = 12;
const FALLBACK: u32 = 1;

fn have(tool: &str) -> bool {
    prorepair_tests::have_tool(tool)
}

struct Step {
    seq: u32,
    inside: bool,
    tripped: bool,
    advisory: u32,
    y: [f32; 5],
}

fn parse_steps(stdout: &str) -> Vec<Step> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("step "))
        .map(|l| {
            let (head, values) = l.split_once(':').unwrap();
            let h: Vec<u32> = head
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            let y: Vec<f32> = values
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect();
            Step {
                seq: h[1],
                inside: h[2] == 1,
                tripped: h[3] == 1,
                advisory: h[4],
                y: y.try_into().unwrap(),
            }
        })
        .collect()
}

fn argmin(y: &[f32; 5]) -> u32 {
    let mut best = 0;
    for j in 1..5 {
        if y[j] < y[best] {
            best = j;
        }
    }
    best as u32
}

#[test]
fn c_controller_guards_and_takes_a_signed_ota_patch_mid_flight() {
    if !have("gcc") {
        eprintln!("SKIP: gcc is not installed");
        return;
    }
    let Some(prorepair_tests::N21Prop2Repair {
        net,
        repaired,
        regions,
        ..
    }) = prorepair_tests::repair_n21_prop2()
    else {
        return;
    };
    let emitted = prorepair_host::patch::emit(&net, &repaired, 1, &regions).unwrap();
    let key = sign::generate().unwrap();
    let unsigned = emitted.bytes.clone();
    let mut signed = unsigned.clone();
    sign::sign_patch(&mut signed, &key).unwrap();
    // A forger's copy: one payload value changed, CRC fixed up, signature kept.
    // (The first byte from the middle on whose change passes every structural check.)
    let public = key.verifying_key().to_bytes();
    let tampered = (signed.len() / 2..signed.len() - 64)
        .map(|at| {
            let mut t = signed.clone();
            t[at] ^= 0x01;
            let crc = prorepair_core::patch::patch_crc(&t).to_le_bytes();
            t[12..16].copy_from_slice(&crc);
            t
        })
        .find(|t| {
            Patch::from_bytes(t).and_then(|p| p.check_signature(Some(&public)))
                == Err(prorepair_core::Error::BadSignature)
        })
        .expect("a payload byte to tamper with");

    // Inputs: a grid over the property-2 box (inside) with points outside in between.
    let (lo, up) = &regions[0];
    let mut rows: Vec<[f32; 5]> = Vec::new();
    for k in 0..32u32 {
        if k % 4 == 3 {
            rows.push(std::array::from_fn(|i| {
                ((((k * 5 + i as u32) as f32) * 0.618).fract() - 0.5) * 0.9
            }));
        } else {
            rows.push(std::array::from_fn(|i| {
                let t = [0.02, 0.5, 0.98][((k / 3u32.pow(i as u32 % 3)) % 3) as usize];
                (lo[i] + t * (up[i] - lo[i])) as f32
            }));
        }
    }

    let dir = prorepair_tests::c_example_dir("acas_guard", "acasxu_2_1");
    prorepair_tests::write_c_headers(
        &dir,
        &[
            ("base_model", &emitted.base_blob),
            ("patch_signed", &signed),
            ("patch_tampered", &tampered),
            ("patch_unsigned", &unsigned),
            ("public_key", &public),
        ],
        &format!("#define OTA_STEP {OTA_STEP}\n"),
        "N_STEPS",
        &rows,
    );
    let build = |exe: &str, sanitize: bool| {
        prorepair_tests::build_c_example("acas_guard", "main.c", &dir, exe, sanitize, &[])
    };
    let stdout = prorepair_tests::run_c_example(&build("acas_guard", true));
    assert!(stdout.contains("power lost at write step"), "{stdout}");
    // Boots: base, base again after the torn install (0 = PR_BOOT_BASE), then slot A.
    let boots: Vec<&str> = stdout.lines().filter(|l| l.starts_with("boot ")).collect();
    assert_eq!(
        boots,
        [
            "boot source 0 sequence 0 counter 0",
            "boot source 0 sequence 0 counter 0",
            "boot source 1 sequence 1 counter 1"
        ],
        "{stdout}"
    );

    // Every step against the core.
    let steps = parse_steps(&stdout);
    assert_eq!(steps.len(), rows.len());
    let blob = AlignedBlob::new(&emitted.base_blob);
    let base = blob.model().unwrap();
    let patch = Patch::from_bytes(&signed).unwrap();
    let mut ram = vec![0.0f32; patch.required_ram_len()];
    let patched = base.with_patch(&patch, &mut ram).unwrap();
    let mut arena = vec![0.0f32; base.required_arena_len()];
    let (mut trips_before, mut trips_after, mut inside_after) = (0, 0, 0);
    for (k, (x, s)) in rows.iter().zip(&steps).enumerate() {
        let after = k >= OTA_STEP;
        let model = if after { &patched } else { &base };
        // The firmware archive is no_std, so it runs the scalar kernels: compare with
        // those bit for bit.
        let mut want = [0.0f32; 5];
        model
            .evaluate_with(prorepair_core::kernels::generic(), x, &mut arena, &mut want)
            .unwrap();
        assert_eq!(s.y.map(f32::to_bits), want.map(f32::to_bits), "step {k}");
        assert_eq!(s.seq, u32::from(after), "step {k}");
        // Before the update nothing is verified: every input is flagged.
        assert_eq!(s.inside, after && patch.covers(x), "step {k}");
        let unsafe_ = (1..5).all(|j| want[j] <= want[0]);
        assert_eq!(s.tripped, unsafe_, "step {k}");
        let advisory = if unsafe_ { FALLBACK } else { argmin(&want) };
        assert_eq!(s.advisory, advisory, "step {k}");
        if after && s.inside {
            inside_after += 1;
            assert!(
                !s.tripped,
                "step {k}: monitor tripped inside the proven box"
            );
        }
        match (after, s.tripped) {
            (false, true) => trips_before += 1,
            (true, true) => trips_after += 1,
            _ => {}
        }
    }
    assert!(
        trips_before > 0,
        "the base model never violated property 2 here"
    );
    assert!(inside_after > 0);
    let after_steps = rows.len() - OTA_STEP;
    assert!(
        stdout.contains(&format!(
            "counters inside {inside_after} outside {} trips {trips_after}",
            after_steps - inside_after
        )),
        "{stdout}"
    );

    // The same program under valgrind (no sanitizers), when installed.
    if have("valgrind") {
        let plain = build("acas_guard_plain", false);
        let out = Command::new("valgrind")
            .args(["--error-exitcode=3", "--leak-check=full", "-q"])
            .arg(&plain)
            .output()
            .expect("valgrind runs");
        assert!(
            out.status.success(),
            "valgrind: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), stdout);
    } else {
        eprintln!("valgrind not installed: ran under ASan/UBSan only");
    }
}
