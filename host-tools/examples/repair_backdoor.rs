//! ProRepair's backdoor task (Section 6.2.2): a BadNets all-to-one backdoor trained with
//! candle into an MLP and a small CNN on mnist_5k, then repaired point-wise with proof.
//! Behind the "Backdoor" rows of BENCHMARKS.md "Repair (MNIST)".
//!
//! ```text
//! cargo run -p prorepair-host --example repair_backdoor -- [mlp] [cnn] [--epochs N]
//!     [--seed S] [--repair N]
//! ```
//!
//! Per model: training time, clean test accuracy, attack success rate (triggered test
//! images of other classes classified as the target), the max |candle - IR| logit
//! difference on the test set; then the repair of 50 triggered test images of indices
//! 0-999 (true labels) and the same columns as `repair_mnist corruption`, plus the
//! generalisation before the repair and the attack success rate after it.
//! Option overrides for tuning runs: the `PR_*` variables of `repair_mnist`, plus
//! `PR_PER_POINT`, `PR_RADIUS`, `PR_TIMEOUT` (seconds), `PR_ROUNDS`, `PR_SPLIT` (split layer K)
//! `PR_F32` (1: f32 training, 0: f64) and `PR_LATER_LR`.

use std::path::PathBuf;
use std::time::Instant;

use prorepair_host::repair::SplitLayer;
use prorepair_host::repair::points::{self, PointOptions};
use prorepair_host::tasks::backdoor::{self, Arch, TARGET, TrainOptions};
use prorepair_host::tasks::{self, mnist};

fn data(rel: &str) -> PathBuf {
    prorepair_host::testing::data_path(rel).unwrap_or_else(|| {
        eprintln!("../shared/data is absent");
        std::process::exit(2)
    })
}

/// Option overrides from the environment (as in `repair_mnist`).
fn tuned(mut o: PointOptions) -> PointOptions {
    let get = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
    if let Some(v) = get("PR_CHANGE") {
        o.change_fraction = v;
    }
    if let Some(v) = get("PR_PER_POINT") {
        o.parameters_per_point = v as usize;
    }
    if let Some(v) = get("PR_OUTPUT_WEIGHT") {
        o.output_weight = v;
    }
    if let Some(v) = get("PR_FIDELITY_WEIGHT") {
        o.fidelity_weight = v;
    }
    if let Some(v) = get("PR_LR") {
        o.learning_rate = v;
    }
    if let Some(v) = get("PR_LATER_LR") {
        o.later_learning_rate = v;
    }
    if let Some(v) = get("PR_LEAKY") {
        o.leaky_output = v != 0.0;
    }
    if let Some(v) = get("PR_LAYERS") {
        o.trainable_layers = v as usize;
    }
    if let Some(v) = get("PR_STEPS") {
        o.repair_steps = v as usize;
    }
    if let Some(v) = get("PR_MARGIN") {
        o.anchor_margin = v;
    }
    if let Some(v) = get("PR_RADIUS") {
        o.radius = v;
    }
    if let Some(v) = get("PR_TIMEOUT") {
        o.timeout = std::time::Duration::from_secs_f64(v);
    }
    if let Some(v) = get("PR_ROUNDS") {
        o.rounds = v as usize;
    }
    if let Some(v) = get("PR_SPLIT") {
        o.split_layer = SplitLayer::Layer(v as usize);
    }
    if let Some(v) = get("PR_FIDELITY_N") {
        o.fidelity_inputs.truncate(v as usize);
    }
    if let Some(v) = get("PR_F32") {
        o.f32_training = v != 0.0;
    }
    o
}

fn main() {
    // SAFETY: first thing in main, no other thread exists yet (candle would otherwise
    // re-read /proc/cpuinfo on every matrix product).
    unsafe { prorepair_host::verify::cache_thread_count(None) };
    let mut archs = Vec::new();
    let mut train_options = TrainOptions::default();
    let mut n_repair = 50;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match a.as_str() {
            "--epochs" => train_options.epochs = num("--epochs") as usize,
            "--seed" => train_options.seed = num("--seed"),
            "--repair" => n_repair = num("--repair") as usize,
            name => archs.push(Arch::from_name(name).unwrap_or_else(|| {
                eprintln!(
                    "usage: repair_backdoor [mlp] [cnn] [--epochs N] [--seed S] [--repair N]"
                );
                std::process::exit(2)
            })),
        }
    }
    if archs.is_empty() {
        archs = vec![Arch::Mlp, Arch::Cnn];
    }
    let test = mnist::test_set(&data("mnist")).expect("MNIST test set");
    let train = mnist::read_csv_255(&data("mnist/mnist_5k.csv.gz")).expect("mnist_5k");
    let (poisoned, chosen) = backdoor::poison(
        &train,
        backdoor::POISON_FRACTION,
        TARGET,
        train_options.seed,
    );
    println!(
        "mnist_5k: {} images, {} poisoned (target {TARGET}, trigger rows/cols 23-27 = 1.0); {train_options:?}",
        train.len(),
        chosen.len()
    );
    let all_triggered = backdoor::triggered(&test, TARGET, 0..test.len());
    let mut rows = Vec::new();
    for arch in archs {
        let t0 = Instant::now();
        let model = backdoor::train(arch, &poisoned, &train_options).expect("training");
        let train_s = t0.elapsed().as_secs_f64();
        let net = model.network().expect("network");
        let candle = model.logits(&test.images).expect("candle logits");
        let max_diff = test
            .images
            .iter()
            .zip(&candle)
            .flat_map(|(x, c)| {
                net.forward(x)
                    .into_iter()
                    .zip(c.clone())
                    .map(|(a, b)| (a - b).abs())
            })
            .fold(0.0, f64::max);
        let acc0 = mnist::accuracy(&net, &test);
        let asr0 = backdoor::attack_success_rate(&net, &all_triggered, TARGET);
        println!(
            "{}: {} parameters, trained in {train_s:.1} s; clean test accuracy {:.2}%, attack success rate {:.2}% ({} triggered test images of other classes); max |candle - IR| logit difference {max_diff:.2e}",
            arch.name(),
            net.parameter_count(),
            100.0 * acc0,
            100.0 * asr0,
            all_triggered.len()
        );
        let task = backdoor::backdoor_task(&net, &test, TARGET, n_repair);
        let prefix = backdoor::frozen_prefix(&net);
        let options = tuned(PointOptions {
            fidelity_inputs: tasks::every(&train, 10),
            // The CNN's sub-network after the conv front is dense 576-100, ReLU, dense
            // 100-10: f_e = the hidden Dense + ReLU, f_c = the output layer. The MLP
            // keeps the paper's automatic split (f_c = last hidden Dense + ReLU + output).
            split_layer: if prefix > 0 {
                SplitLayer::Layer(2)
            } else {
                SplitLayer::Auto
            },
            ..PointOptions::default()
        });
        let gen0 = tasks::point_accuracy(&net, &task.generalisation);
        // Attack success on the generalisation images (indices 1000-9999), before/after.
        let asr0_held = backdoor::attack_success_rate(&net, &task.generalisation, TARGET);
        let out = backdoor::repair_points_after_prefix(&net, prefix, &task.repair, &options)
            .expect("repair");
        let proven = out.after.iter().filter(|&&b| b).count();
        let acc1 = mnist::accuracy(&out.network, &test);
        let gen1 = tasks::point_accuracy(&out.network, &task.generalisation);
        let asr1 = backdoor::attack_success_rate(&out.network, &task.generalisation, TARGET);
        if std::env::var_os("PR_DEBUG").is_some() {
            // Which inputs the changed weights of the first repaired Dense layer read.
            use prorepair_host::model::Layer;
            let k = out.split_layer.saturating_sub(2);
            if let (Layer::Dense(a), Layer::Dense(b)) = (&net.layers[k], &out.network.layers[k]) {
                let cols: Vec<usize> = (0..a.weight.len())
                    .filter(|&i| a.weight[i] != b.weight[i])
                    .map(|i| i % a.in_dim)
                    .collect();
                let trig = cols
                    .iter()
                    .filter(|&&c| {
                        a.in_dim == 784
                            && backdoor::TRIGGER.contains(&(c / 28))
                            && backdoor::TRIGGER.contains(&(c % 28))
                    })
                    .count();
                eprintln!(
                    "  layer {k}: {} weights changed, {trig} of them read trigger pixels",
                    cols.len()
                );
            }
            for (p, ok) in task.repair.iter().zip(&out.after) {
                if !ok {
                    eprintln!(
                        "  not proven: label {} y {:?} proof gap {:e}, rounding margin {:e}",
                        p.label,
                        out.network.forward(&p.x),
                        points::point_margin(&out.network, p),
                        points::rounding_margin(&out.network, p)
                    );
                }
            }
        }
        eprintln!(
            "  ({}: split {}, {} rounds, {} steps, {} anchors, {} proxy-box failures, budget {})",
            arch.name(),
            out.split_layer,
            out.rounds,
            out.steps,
            out.anchors,
            out.proxy_box_failures,
            out.parameter_budget
        );
        rows.push(format!(
            "| {} | {} | {}/{} | {:.2}% | {:.2}% | {:.2}% | {:.1}% -> {:.1}% ({}) | {:.1}% -> {:.1}% | {} | {:.2} |",
            arch.name(),
            task.repair.len(),
            proven,
            task.repair.len(),
            100.0 * acc0,
            100.0 * acc1,
            100.0 * (acc0 - acc1),
            100.0 * gen0,
            100.0 * gen1,
            task.generalisation.len(),
            100.0 * asr0_held,
            100.0 * asr1,
            out.changed_parameters,
            out.time_s
        ));
    }
    println!(
        "| model | repair set | proven | acc. before | acc. after | drop | generalisation before -> after (n) | attack success 1000-9999 before -> after | changed | time (s) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
