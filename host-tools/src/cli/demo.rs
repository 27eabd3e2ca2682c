//! `prorepair-host demo`: the story so far on a built-in, deterministic example that
//! needs no files: a small collision-avoidance controller (5 sensor inputs, 5 advisory
//! scores, lowest wins) is compiled to the device blob, run by the device core exactly as
//! firmware runs it, checked against the host's f64 evaluation, bounded soundly over a
//! region of inputs (IBP vs CROWN, with a sampling check), and a corrupted blob is shown
//! to be rejected while the good model keeps running.

use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::{CliError, Outcome, report};
use crate::bounds::{self, BoxBounds, Method};
use crate::compile::{AlignedBlob, compile};
use crate::model::{Dense, Layer, Network};

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also write a machine-readable summary to FILE (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

const ADVISORIES: [&str; 5] = ["clear-of-conflict", "weak left", "weak right", "strong left", "strong right"];

/// The built-in controller: 5 -> 24 -> 24 -> 5 ReLU network with seeded weights (He
/// initialisation), so every run shows the same numbers.
pub fn builtin_controller() -> Network {
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let mut dense = |inputs: usize, outputs: usize| {
        let scale = (2.0 / inputs as f64).sqrt();
        let weight = (0..inputs * outputs).map(|_| rng.random_range(-1.0..1.0) * scale).collect();
        let bias = (0..outputs).map(|_| rng.random_range(-0.1..0.1)).collect();
        Layer::Dense(Dense::new(inputs, outputs, weight, bias).expect("consistent sizes"))
    };
    let layers = vec![dense(5, 24), Layer::Relu, dense(24, 24), Layer::Relu, dense(24, 5)];
    Network::new(vec![5], layers).expect("consistent shapes")
}

fn advisory(scores: &[f64]) -> &'static str {
    let best = scores.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
    ADVISORIES[best]
}

/// Run `demo`.
pub fn run(args: Args) -> Result<Outcome, CliError> {
    let internal = |e: &dyn std::fmt::Display| CliError::Internal(e.to_string());
    let net = builtin_controller();
    println!("1. Built-in controller: {net}");
    println!("   {} parameters; inputs are normalised sensor values, the lowest score is the advisory.", net.parameter_count());

    // Compile to the device blob and load it the way firmware does.
    let blob = AlignedBlob::new(&compile(&net).map_err(|e| internal(&e))?);
    let model = blob.model().map_err(|e| internal(&e))?;
    let sha: String = model.sha256().iter().map(|b| format!("{b:02x}")).collect();
    println!(
        "2. Compiled to a device blob: {} bytes, arena {} bytes, SHA-256 {}…",
        blob.bytes().len(),
        model.required_arena_bytes(),
        &sha[..16]
    );

    // Evaluate with the device core and compare with the host's f64 forward pass.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut arena = vec![0.0f32; model.required_arena_len()];
    let mut out = vec![0.0f32; model.output_len()];
    let mut max_rel_diff = 0.0f64;
    println!("3. Device core vs host (f64) on sample inputs:");
    for k in 0..1000 {
        let x: Vec<f64> = (0..5).map(|_| rng.random_range(-0.5..0.5)).collect();
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        model.evaluate(&x32, &mut arena, &mut out).map_err(|e| internal(&e))?;
        let host = net.forward(&x32.iter().map(|&v| f64::from(v)).collect::<Vec<_>>());
        for (d, h) in out.iter().zip(&host) {
            max_rel_diff = max_rel_diff.max((f64::from(*d) - h).abs() / (1.0 + h.abs()));
        }
        if k < 3 {
            let device: Vec<f64> = out.iter().map(|&v| f64::from(v)).collect();
            println!("   x = {x:.3?} -> device advisory {:>17}, host advisory {}", advisory(&device), advisory(&host));
        }
    }
    println!("   1000 inputs: max |device - host| / (1 + |host|) = {max_rel_diff:.2e}");

    // Sound bounds over a region, and a sampling check that they enclose the outputs.
    let region = BoxBounds::new(vec![0.2, -0.1, -0.1, 0.3, 0.3], vec![0.3, 0.1, 0.1, 0.4, 0.4]);
    let ibp = bounds::output_bounds(&net, &region, Method::Ibp).map_err(|e| internal(&e))?;
    let crown = bounds::output_bounds(&net, &region, Method::Crown).map_err(|e| internal(&e))?;
    let mut inside = true;
    for _ in 0..10_000 {
        let x: Vec<f64> = region.lower.iter().zip(&region.upper).map(|(l, u)| rng.random_range(*l..=*u)).collect();
        inside &= crown.contains(&net.forward(&x), 1e-12);
    }
    println!("4. Sound output bounds over the region {:?}..{:?}:", region.lower, region.upper);
    println!("   IBP mean width {:.4}, CROWN mean width {:.4} ({:.1}x tighter)", ibp.mean_width(), crown.mean_width(), ibp.mean_width() / crown.mean_width());
    println!("   10,000 sampled outputs inside the CROWN bounds: {}", if inside { "yes" } else { "NO" });
    if !inside {
        return Err(CliError::Internal("a sampled output lies outside the CROWN bounds".into()));
    }

    // A corrupted blob is refused; the good model keeps running.
    let mut corrupted = blob.bytes().to_vec();
    let flip = corrupted.len() / 2;
    corrupted[flip] ^= 0x10;
    let rejected = match AlignedBlob::new(&corrupted).model() {
        Ok(_) => return Err(CliError::Internal("a bit-flipped blob was accepted".into())),
        Err(e) => e,
    };
    model.evaluate(&[0.25, 0.0, 0.0, 0.35, 0.35], &mut arena, &mut out).map_err(|e| internal(&e))?;
    println!("5. One flipped bit at byte {flip}: the core refuses the blob ({rejected}); the loaded model keeps running.");

    if let Some(path) = &args.json {
        let summary = json!({
            "parameters": net.parameter_count(),
            "blob_bytes": blob.bytes().len(),
            "arena_bytes": model.required_arena_bytes(),
            "sha256": sha,
            "max_rel_diff_device_vs_host": max_rel_diff,
            "region": {"lower": region.lower, "upper": region.upper},
            "ibp": {"lower": ibp.lower, "upper": ibp.upper},
            "crown": {"lower": crown.lower, "upper": crown.upper},
            "samples_inside_crown": inside,
            "corrupted_blob_error": rejected.to_string(),
        });
        report::write_json(path, &summary)?;
    }
    Ok(Outcome::Ok)
}
