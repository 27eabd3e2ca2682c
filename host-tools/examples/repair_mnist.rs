//! ProRepair's MNIST tasks (Section 6.2): the evaluation harness behind the
//! "Repair (MNIST)" tables of BENCHMARKS.md.
//!
//! ```text
//! cargo run -p prorepair-host --example repair_mnist -- corruption [NET] [KIND...]
//!     NET: relu_3_100 (default) | relu_9_100 | relu_9_200; KIND: fog, brightness, ...
//! cargo run -p prorepair-host --example repair_mnist -- adversarial [K...] [--tasks N]
//!     [--timeout S] [--general] [--only IMAGE]
//! ```
//!
//! Adversarial: fidelity inputs are every 10th correctly classified `mnist_5k` image
//! plus, per box, the `PR_NEAR` (50) correctly classified ones nearest its centre;
//! `PR_DEBUG=1` prints where each repair's lost accuracy goes.
//!
//! Corruption: repair set = 100 misclassified corrupted images from test indices 0-999.
//! Two generalisation figures: the paper's *Gene* (Section 6.1.3 and Appendix B.1.2:
//! the share of the generalisation set, ALL 9,000 corrupted images of indices
//! 1000-9999, classified correctly after the repair; shown with its value before), and
//! the stricter share of those the network misclassified before that it now gets
//! right. Also reported: points proven, clean test accuracy before/after, time.

#[path = "support/box_knobs.rs"]
mod box_knobs;

use std::path::PathBuf;
use std::time::Instant;

use prorepair_host::repair::points::{self, PointOptions};
use prorepair_host::tasks::{self, corrupt::Corruption, mnist};

fn data(rel: &str) -> PathBuf {
    prorepair_host::testing::data_path(rel).unwrap_or_else(|| {
        eprintln!("../shared/data is absent");
        std::process::exit(2)
    })
}

fn net_path(name: &str) -> PathBuf {
    if name.ends_with(".onnx") {
        data(&format!("mnist/nets/{name}"))
    } else {
        data(&format!("mnist/nets/mnist_{name}.onnx"))
    }
}

/// Option overrides from the environment, for tuning runs (`PR_CHANGE`, `PR_OUTPUT_WEIGHT`,
/// `PR_FIDELITY_WEIGHT`, `PR_LR`, `PR_LATER_LR`, `PR_LEAKY`, `PR_LAYERS`, `PR_STEPS`, `PR_LATER_STEPS`, `PR_MARGIN`, `PR_FIDELITY_N`,
/// `PR_PER_POINT`, `PR_RADIUS`, `PR_TIMEOUT` in seconds, `PR_ROUNDS`, `PR_SPLIT` (split
/// layer K), `PR_DECISION`, `PR_FIDELITY_BATCH`, `PR_STOP_GAP`, `PR_LOCAL_MASK`, `PR_F32` (1: f32 training, 0: f64; `both`: each kind
/// twice, f64 then f32, side by side); `corruption` also reads `PR_FIDELITY_STEP`: every k-th
/// mnist_5k image is a fidelity input, default 10).
fn tuned(mut o: PointOptions) -> PointOptions {
    let get = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
    if let Some(v) = get("PR_CHANGE") {
        o.change_fraction = v;
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
    if let Some(v) = get("PR_LATER_STEPS") {
        o.later_repair_steps = v as usize;
    }
    if let Some(v) = get("PR_MARGIN") {
        o.anchor_margin = v;
    }
    if let Some(v) = get("PR_FIDELITY_N") {
        o.fidelity_inputs.truncate(v as usize);
    }
    if let Some(v) = get("PR_PER_POINT") {
        o.parameters_per_point = v as usize;
    }
    if let Some(v) = get("PR_RADIUS") {
        o.radius = v;
    }
    if let Some(v) = get("PR_TIMEOUT") {
        o.timeout = std::time::Duration::from_secs_f64(v);
    }
    if let Some(v) = get("PR_FIDELITY_BATCH") {
        o.fidelity_batch = v as usize;
    }
    if let Some(v) = get("PR_DECISION") {
        o.decision_weight = v;
    }
    if let Some(v) = get("PR_ROUNDS") {
        o.rounds = v as usize;
    }
    if let Some(v) = get("PR_LOCAL_MASK") {
        o.local_mask = v != 0.0;
    }
    if let Some(v) = get("PR_STOP_GAP") {
        o.stop_gap = v;
    }
    if let Some(v) = get("PR_F32") {
        o.f32_training = v != 0.0;
    }
    if let Some(v) = get("PR_SPLIT") {
        o.split_layer = prorepair_host::repair::SplitLayer::Layer(v as usize);
    }
    o
}

fn corruption(args: &[String]) {
    let net_name = args.first().map_or("relu_3_100", String::as_str);
    let kinds: Vec<Corruption> = if args.len() > 1 {
        args[1..]
            .iter()
            .map(|k| Corruption::from_name(k).unwrap_or_else(|| panic!("unknown kind {k}")))
            .collect()
    } else {
        Corruption::ALL.to_vec()
    };
    let net = prorepair_host::import::load(&net_path(net_name)).expect("network");
    let test = mnist::test_set(&data("mnist")).expect("MNIST test set");
    let train = mnist::read_csv_255(&data("mnist/mnist_5k.csv.gz")).expect("mnist_5k");
    let acc0 = mnist::accuracy(&net, &test);
    println!(
        "network mnist_{net_name}: clean test accuracy {:.2}%",
        100.0 * acc0
    );
    println!(
        "| kind | repair set | proven | acc. before | acc. after | drop | Gene: all corrupted 1000-9999, before -> after | fixed among the misclassified (n) | changed | time (s) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let (mut drops, mut gens, mut genes, mut times) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for kind in kinds {
        let t0 = Instant::now();
        let task = tasks::corruption_task(&net, &test, kind, 100, 2024);
        // The paper's generalisation set: every corrupted image of 1000-9999, with the
        // same corruption seeds as the task.
        let all_corrupted: Vec<points::Point> = (1000..test.len().min(10_000))
            .map(|i| points::Point {
                x: kind.apply(&test.images[i], 2024 ^ i as u64),
                label: test.labels[i],
            })
            .collect();
        let gene0 = tasks::point_accuracy(&net, &all_corrupted);
        let build = t0.elapsed().as_secs_f64();
        let fidelity_step = box_knobs::fidelity_step();
        let mut fidelity_inputs = tasks::every(&train, fidelity_step);
        if std::env::var("PR_FIDELITY_CORRUPTED").is_ok_and(|v| v == "1") {
            // The repair split's other corrupted images (indices 0-999, the repair set's
            // own pool, never the generalisation set) that the network classifies
            // correctly: keeping their features keeps them correct.
            fidelity_inputs.extend((0..1000.min(test.len())).filter_map(|i| {
                let x = kind.apply(&test.images[i], 2024 ^ i as u64);
                (mnist::argmax(&net.forward(&x)) == test.labels[i]).then_some(x)
            }));
        }
        // `PR_F32=both`: the same task with f64 then f32 training, one after the other.
        let both = std::env::var("PR_F32").is_ok_and(|v| v == "both");
        for f32_training in if both {
            vec![Some(false), Some(true)]
        } else {
            vec![None]
        } {
            let mut options = tuned(PointOptions {
                fidelity_inputs: fidelity_inputs.clone(),
                ..PointOptions::default()
            });
            if let Some(f) = f32_training {
                options.f32_training = f;
            }
            let label = match f32_training {
                Some(true) => format!("{} (f32)", kind.name()),
                Some(false) => format!("{} (f64)", kind.name()),
                None => kind.name().to_string(),
            };
            let out = points::repair_points(&net, &task.repair, &options).expect("repair");
            let proven = out.after.iter().filter(|&&b| b).count();
            if std::env::var_os("PR_DEBUG").is_some() {
                for (p, ok) in task.repair.iter().zip(&out.after) {
                    if !ok {
                        let y = out.network.forward(&p.x);
                        eprintln!(
                            "  failing: label {} y {:?} proof gap {:e}",
                            p.label,
                            y,
                            points::point_margin(&out.network, p)
                        );
                    }
                }
                if let Some(p) = task.repair.first() {
                    eprintln!(
                        "  rounding margin of the first point: {:e}",
                        points::rounding_margin(&net, p)
                    );
                }
                eprintln!(
                    "  layers: {:?}, split {}",
                    out.network
                        .layers
                        .iter()
                        .map(|l| l.kind())
                        .collect::<Vec<_>>(),
                    out.split_layer
                );
            }
            let acc1 = mnist::accuracy(&out.network, &test);
            let generalisation = tasks::point_accuracy(&out.network, &task.generalisation);
            let gene = tasks::point_accuracy(&out.network, &all_corrupted);
            println!(
                "| {} | {} | {}/{} | {:.2}% | {:.2}% | {:.2}% | {:.1}% -> {:.1}% | {:.1}% ({}) | {} | {:.2} |",
                label,
                task.repair.len(),
                proven,
                task.repair.len(),
                100.0 * acc0,
                100.0 * acc1,
                100.0 * (acc0 - acc1),
                100.0 * gene0,
                100.0 * gene,
                100.0 * generalisation,
                task.generalisation.len(),
                out.changed_parameters,
                out.time_s
            );
            eprintln!(
                "  ({label}: task built in {build:.1} s, {} rounds, {} steps)",
                out.rounds, out.steps
            );
            drops.push(acc0 - acc1);
            gens.push(generalisation);
            genes.push(gene);
            times.push(out.time_s);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "| mean | | | | | {:.2}% | {:.1}% | {:.1}% | | {:.2} |",
        100.0 * mean(&drops),
        100.0 * mean(&genes),
        100.0 * mean(&gens),
        mean(&times)
    );
}

/// Adversarial region repair (Section 6.2.3, Appendix B.1.3): for each of `tasks`
/// misclassified `mnist_5k` images (seeded random order, the same images for every `k`),
/// the box over its first `k` non-zero pixels at radius `r` (clipped to [0, 1]; the other
/// pixels fixed) must get the true label; each box is repaired alone, from the original
/// network, by `regionwise::repair_local_boxes` (or `--general`: the region-wise
/// `repair::repair`). "Proven" is verify's complete checker on the repaired network, f32
/// rounding bound over the box included. Accuracy: the 10,000 MNIST test images.
fn adversarial(args: &[String]) {
    use prorepair_host::repair::{self, RepairOptions, regionwise};
    let mut tasks_n = 50;
    let mut timeout = 10.0;
    let mut general = false;
    // `--only I`: the task of mnist_5k image I alone (tracing one repair).
    let mut only: Option<usize> = None;
    let mut settings: Vec<(usize, f64)> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--tasks" => tasks_n = it.next().and_then(|v| v.parse().ok()).expect("--tasks N"),
            "--timeout" => timeout = it.next().and_then(|v| v.parse().ok()).expect("--timeout S"),
            "--general" => general = true,
            "--only" => {
                only = it.next().and_then(|v| v.parse().ok());
                assert!(only.is_some(), "--only IMAGE_INDEX");
            }
            k => {
                let k: usize = k.parse().expect("k");
                settings.push((k, if k >= 784 { 1e-3 } else { 0.1 }));
            }
        }
    }
    if settings.is_empty() {
        settings = vec![(16, 0.1), (50, 0.1), (100, 0.1), (784, 1e-3)];
    }
    let net = prorepair_host::import::load(&net_path("relu_3_100")).expect("network");
    let test = mnist::test_set(&data("mnist")).expect("MNIST test set");
    let train = mnist::read_csv_255(&data("mnist/mnist_5k.csv.gz")).expect("mnist_5k");
    let acc0 = mnist::accuracy(&net, &test);
    // Fidelity inputs: every 10th correctly classified mnist_5k image (never a task image).
    let step = box_knobs::fidelity_step();
    // Plus, per box, the correctly classified images nearest its centre (`PR_NEAR`).
    let pool = mnist::correctly_classified(&net, &train, 1);
    let near_n = std::env::var("PR_NEAR")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(tasks::adversarial::NEAREST_FIDELITY);
    println!(
        "network mnist_relu_3_100: clean test accuracy {:.2}%",
        100.0 * acc0
    );
    println!(
        "| k | r | tasks | held before | proven | not proven | proven in < 3 s | mean time (s) | max time (s) | mean acc. drop | max acc. drop |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (k, r) in settings {
        let mut tasks = tasks::adversarial::adversarial_tasks(&net, &train, k, r, tasks_n, 2024);
        if let Some(i) = only {
            tasks.retain(|t| t.index == i);
        }
        let (mut held, mut proven, mut open, mut fast) = (0, 0, 0, 0);
        let (mut times, mut drops) = (Vec::new(), Vec::new());
        for t in &tasks {
            let out = if general {
                let options = RepairOptions {
                    timeout: std::time::Duration::from_secs_f64(timeout),
                    ..RepairOptions::default()
                };
                repair::repair(&net, std::slice::from_ref(&t.property), &options)
            } else {
                let fidelity =
                    tasks::adversarial::fidelity_inputs(&pool, &t.property.cases[0], step, near_n);
                let options = regionwise::LocalBoxOptions {
                    timeout: std::time::Duration::from_secs_f64(timeout),
                    ..box_knobs::tuned_box(tasks::adversarial::repair_options(&net, fidelity))
                };
                regionwise::repair_local_boxes(&net, std::slice::from_ref(&t.property), &options)
            }
            .expect("repair");
            let p = &out.properties[0];
            if !p.repaired && p.after == "holds" {
                held += 1;
                continue;
            }
            times.push(out.time_s);
            let drop = acc0 - mnist::accuracy(&out.network, &test);
            if std::env::var_os("PR_DEBUG").is_some() {
                // Where the lost accuracy goes: test images the repair turns from right to
                // wrong, by (true label -> new prediction).
                let mut moves = std::collections::BTreeMap::new();
                for (x, &y) in test.images.iter().zip(&test.labels) {
                    let (a, b) = (
                        mnist::argmax(&net.forward(x)),
                        mnist::argmax(&out.network.forward(x)),
                    );
                    if a == y && b != y {
                        *moves.entry((y, b)).or_insert(0usize) += 1;
                    }
                }
                eprintln!("  right -> wrong (label -> prediction: images): {moves:?}");
            }
            if out.verified {
                proven += 1;
                if out.time_s < 3.0 {
                    fast += 1;
                }
                drops.push(drop);
            } else {
                open += 1;
            }
            let share = regionwise::unstable_share(&net, &t.property.cases[0]).unwrap_or(f64::NAN);
            eprintln!(
                "  image {} (label {}, unstable ReLU share {share:.3}): before {}, after {}, {} rounds, {} changed, drop {:.2}%, {:.2} s{}",
                t.index,
                t.label,
                p.before,
                p.after,
                out.rounds,
                out.changed_parameters,
                100.0 * drop,
                out.time_s,
                p.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            );
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        println!(
            "| {k} | {r} | {} | {held} | {proven} | {open} | {fast} | {:.2} | {:.2} | {:.2}% | {:.2}% |",
            tasks.len(),
            mean(&times),
            max(&times),
            100.0 * mean(&drops),
            100.0 * max(&drops)
        );
    }
}

fn main() {
    // SAFETY: first thing in main, no other thread exists yet (candle would otherwise
    // re-read /proc/cpuinfo on every matrix product).
    unsafe { prorepair_host::verify::cache_thread_count(None) };
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("corruption") => corruption(&args[1..]),
        Some("adversarial") => adversarial(&args[1..]),
        Some("unstable") => {
            // The CLI's dispatch figure for a VNN-LIB property: CROWN's unstable ReLU
            // share over each case box.
            use prorepair_host::repair::{RepairProperty, regionwise};
            let (Some(model), Some(spec)) = (args.get(1), args.get(2)) else {
                eprintln!("usage: repair_mnist unstable MODEL SPEC.vnnlib");
                std::process::exit(2)
            };
            let net = prorepair_host::import::load(std::path::Path::new(model)).expect("model");
            let p = prorepair_host::spec::Property::from_vnnlib(std::path::Path::new(spec))
                .expect("spec");
            let p = RepairProperty::from_spec(spec, &p, &net).expect("property");
            for c in &p.cases {
                println!(
                    "{spec}: unstable share {:?}",
                    regionwise::unstable_share(&net, c)
                );
            }
        }
        _ => {
            eprintln!(
                "usage: repair_mnist corruption [NET] [KIND...] | adversarial [K...] [--tasks N] [--timeout S] [--general]"
            );
            std::process::exit(2);
        }
    }
}
