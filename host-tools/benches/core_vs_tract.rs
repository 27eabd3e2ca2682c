//! Batch-1 forward pass: the device core vs tract, side by side in one run, against the
//! memory roofline (streaming the blob's weights once, summed with the SIMD `sum`
//! kernel). Prints times, ratios and achieved GFLOP/s.
//!
//! `cargo bench -p prorepair-host --bench core_vs_tract`
//!
//! A plain `harness = false` main: rounds interleave the three measurements; the median
//! and the fastest of the 31 rounds are reported (the machine is shared and noisy).

use std::hint::black_box;
use std::time::Instant;

use prorepair_core::kernels;
use prorepair_host::compile::{AlignedBlob, compile};
use prorepair_host::import::onnx::TractModel;
use prorepair_host::model::Layer;
use prorepair_host::testing::{acasxu_nnet, acasxu_onnx, data_path};

/// Nanoseconds per call of `f`, timed over `iters` calls.
fn time_per_call(iters: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed().as_nanos() as f64 / iters as f64
}

/// Calls that take about `target_ns`.
fn calibrate(target_ns: f64, mut f: impl FnMut()) -> usize {
    let once = time_per_call(10, &mut f).max(1.0);
    ((target_ns / once) as usize).clamp(10, 10_000_000)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `onnx` runs in tract; the blob is compiled from `source` (the same network).
fn bench(label: &str, onnx: &str, source: &str) {
    let (Some(path), Some(source)) = (data_path(onnx), data_path(source)) else {
        return;
    };
    let net = match prorepair_host::import::load(&source) {
        Ok(net) => net,
        Err(e) => {
            println!("{label:<22} skipped: {e}");
            return;
        }
    };
    let blob = AlignedBlob::new(&compile(&net).expect("compile"));
    let model = blob.model().expect("blob loads");
    let tract = TractModel::load(&path).expect("tract");
    let macs: usize = net
        .layers
        .iter()
        .map(|l| match l {
            Layer::Dense(d) => d.in_dim * d.out_dim,
            _ => 0,
        })
        .sum();
    // The parameter blocks, as the matvec streams them (panel padding included).
    let data_start = 64 + 64 * model.layer_count();
    let weights: &[f32] = bytemuck::cast_slice(&blob.bytes()[data_start..]);
    let x: Vec<f32> = (0..model.input_len())
        .map(|i| ((i * 37 % 101) as f32 / 101.0) - 0.3)
        .collect();
    let mut arena = vec![0.0f32; model.required_arena_len()];
    let mut out = vec![0.0f32; model.output_len()];
    let sum = kernels::best().sum;

    let mut core_call = || {
        model.evaluate(black_box(&x), &mut arena, &mut out).unwrap();
        black_box(&out);
    };
    let core_iters = calibrate(2e6, &mut core_call);
    let mut tract_call = || {
        black_box(tract.run(black_box(&x)).unwrap());
    };
    let tract_iters = calibrate(2e6, &mut tract_call);
    let mut stream_call = || {
        black_box(sum(black_box(weights)));
    };
    let stream_iters = calibrate(2e6, &mut stream_call);

    let (mut core, mut tract_ns, mut stream) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..31 {
        core.push(time_per_call(core_iters, &mut core_call));
        tract_ns.push(time_per_call(tract_iters, &mut tract_call));
        stream.push(time_per_call(stream_iters, &mut stream_call));
    }
    // The median is the usual figure; the fastest round is what the code costs when the
    // shared machine leaves it alone (preemption only ever adds time).
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let rows = [
        (
            "median",
            median(core.clone()),
            median(tract_ns.clone()),
            median(stream.clone()),
        ),
        ("best", best(&core), best(&tract_ns), best(&stream)),
    ];
    for (kind, core, tract_ns, stream) in rows {
        let gflops = 2.0 * macs as f64 / core;
        println!(
            "{:<30} {:>9.3} us {:>9.3} us {:>9.3} us {:>8.1}x {:>8.2}x {:>7.1} {:>9} B",
            format!("{label} ({kind})"),
            core / 1e3,
            tract_ns / 1e3,
            stream / 1e3,
            tract_ns / core,
            core / stream,
            gflops,
            weights.len() * 4
        );
    }
}

fn main() {
    println!("kernels: {}", kernels::best().isa);
    println!(
        "{:<30} {:>12} {:>12} {:>12} {:>9} {:>9} {:>7} {:>11}",
        "model", "core", "tract", "stream W", "tract/core", "core/strm", "GFLOP/s", "weights"
    );
    bench("ACAS Xu N1,1", &acasxu_onnx(1, 1), &acasxu_nnet(1, 1));
    let mnist = "mnist/nets/mnist-net_256x6.onnx";
    bench("mnist-net_256x6", mnist, mnist);
}
