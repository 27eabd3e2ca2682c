//! The BadNets backdoor task (issue 5): models trained with candle on the poisoned
//! mnist_5k become host IR networks that compute what candle computes, the backdoor
//! works, and point-wise repair of triggered images is proven without costing clean
//! accuracy. Short fixed training schedules keep these fast; the full task is the
//! `repair_backdoor` example (BENCHMARKS.md). Skips when ../shared/data is absent.

use prorepair_host::repair::SplitLayer;
use prorepair_host::repair::points::{self, PointOptions};
use prorepair_host::tasks::backdoor::{self, Arch, TARGET, TrainOptions};
use prorepair_host::tasks::{self, mnist};

fn load() -> Option<(mnist::Dataset, mnist::Dataset)> {
    let dir = prorepair_host::testing::data_path("mnist")?;
    let train = mnist::read_csv_255(&dir.join("mnist_5k.csv.gz")).unwrap();
    let test = mnist::test_set(&dir).unwrap();
    Some((train, test))
}

fn slice(d: &mnist::Dataset, r: std::ops::Range<usize>) -> mnist::Dataset {
    mnist::Dataset {
        images: d.images[r.clone()].to_vec(),
        labels: d.labels[r].to_vec(),
    }
}

/// Our f64 forward pass of the IR built from the trained tensors equals candle's on the
/// whole test set (triggered images too), for both architectures; training is seeded
/// and deterministic.
#[test]
fn ir_forward_equals_candle_on_the_test_set() {
    let Some((train, test)) = load() else { return };
    let (poisoned, chosen) = backdoor::poison(&train, backdoor::POISON_FRACTION, TARGET, 1);
    assert_eq!(chosen.len(), 500);
    let short = TrainOptions {
        epochs: 1,
        ..TrainOptions::default()
    };
    for arch in [Arch::Mlp, Arch::Cnn] {
        let sub = slice(&poisoned, 0..1500);
        let model = backdoor::train(arch, &sub, &short).unwrap();
        let net = model.network().unwrap();
        assert_eq!(
            net,
            backdoor::train(arch, &sub, &short)
                .unwrap()
                .network()
                .unwrap(),
            "{arch:?}: training is not deterministic"
        );
        let mut inputs = test.images.clone();
        inputs.extend(test.images[..500].iter().map(|x| backdoor::add_trigger(x)));
        let candle = model.logits(&inputs).unwrap();
        for (x, c) in inputs.iter().zip(&candle) {
            let y = net.forward(x);
            for (a, b) in y.iter().zip(c) {
                assert!((a - b).abs() <= 1e-5, "{arch:?}: IR {a} vs candle {b}");
            }
        }
    }
}

/// MLP on the poisoned mnist_5k (3 epochs): the backdoor works; 5 triggered test images
/// repaired to their true labels are proven, clean accuracy on 1,000 held-out test images
/// drops by at most 2 points, and some unseen triggered images are fixed too.
#[test]
fn repairs_backdoored_mlp_points_with_proof() {
    let Some((train, test)) = load() else { return };
    let (poisoned, _) = backdoor::poison(&train, backdoor::POISON_FRACTION, TARGET, 2024);
    let options = TrainOptions {
        epochs: 3,
        ..TrainOptions::default()
    };
    let net = backdoor::train(Arch::Mlp, &poisoned, &options)
        .unwrap()
        .network()
        .unwrap();
    let held = slice(&test, 1000..2000);
    let acc0 = mnist::accuracy(&net, &held);
    assert!(acc0 >= 0.85, "clean accuracy {acc0}");
    let task = backdoor::backdoor_task(&net, &test, TARGET, 5);
    assert_eq!(task.repair.len(), 5);
    assert!(task.repair.iter().all(|p| p.label != TARGET));
    let asr = backdoor::attack_success_rate(&net, &task.generalisation, TARGET);
    assert!(asr >= 0.8, "attack success rate {asr}");
    // The MLP's repaired layer is its first (the paper's split): 45 parameters per point
    // (225 for 5 points) leave its dead ReLUs stuck (0/5 in 60 s at lr 0.1, 3/5 at the
    // current 0.01); 500 per point (2,500, under the 5% cap) repairs the 5 in one round
    // (BENCHMARKS.md, Backdoor).
    let point_options = PointOptions {
        fidelity_inputs: tasks::every(&train, 10)[..200].to_vec(),
        parameters_per_point: 500,
        ..PointOptions::default()
    };
    let out = points::repair_points(&net, &task.repair, &point_options).unwrap();
    assert!(out.before.iter().all(|&b| !b));
    assert!(out.verified, "proven: {:?}", out.after);
    for p in &task.repair {
        assert!(points::point_holds(&out.network, p));
        assert_eq!(mnist::argmax(&out.network.forward(&p.x)), p.label);
    }
    let drop = acc0 - mnist::accuracy(&out.network, &held);
    assert!(drop <= 0.02, "clean accuracy drop {drop}");
    let gen0 = tasks::point_accuracy(&net, &task.generalisation[..1000]);
    let gen1 = tasks::point_accuracy(&out.network, &task.generalisation[..1000]);
    assert!(gen1 > gen0, "generalisation {gen0} -> {gen1}");
}

/// The CNN path: the conv front stays frozen ([`backdoor::repair_points_after_prefix`]),
/// the hidden Dense layer is repaired, and the proof is checked on the whole network
/// (its f32 rounding bound covers the convolutions).
#[test]
fn repairs_backdoored_cnn_points_with_proof_on_the_whole_network() {
    let Some((train, test)) = load() else { return };
    let (poisoned, _) = backdoor::poison(&train, backdoor::POISON_FRACTION, TARGET, 2024);
    let options = TrainOptions {
        epochs: 3,
        ..TrainOptions::default()
    };
    let net = backdoor::train(Arch::Cnn, &poisoned, &options)
        .unwrap()
        .network()
        .unwrap();
    let prefix = backdoor::frozen_prefix(&net);
    assert_eq!(prefix, 5, "conv, ReLU, conv, ReLU, Flatten");
    let held = slice(&test, 1000..2000);
    let acc0 = mnist::accuracy(&net, &held);
    let task = backdoor::backdoor_task(&net, &test, TARGET, 5);
    assert_eq!(task.repair.len(), 5);
    let point_options = PointOptions {
        fidelity_inputs: tasks::every(&train, 10),
        split_layer: SplitLayer::Layer(2),
        ..PointOptions::default()
    };
    let out =
        backdoor::repair_points_after_prefix(&net, prefix, &task.repair, &point_options).unwrap();
    assert!(out.verified, "proven: {:?}", out.after);
    for p in &task.repair {
        assert!(points::point_holds(&out.network, p));
    }
    // The conv front is untouched; only the hidden Dense layer changed.
    assert_eq!(out.network.layers[..prefix], net.layers[..prefix]);
    assert_eq!(out.network.layers[prefix + 2..], net.layers[prefix + 2..]);
    let drop = acc0 - mnist::accuracy(&out.network, &held);
    assert!(drop <= 0.02, "clean accuracy drop {drop}");
}
