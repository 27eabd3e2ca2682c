//! Benchmark: patch modules on mnist_relu_3_100, local robustness around PGD adversarial
//! examples (AdvRepair's setting, property-guided), at r = 0.05 and 0.1 with 50, 100 and
//! 200 properties.
//!
//! Properties: the first test images (in order) that the network classifies correctly
//! and for which PGD (10 restarts, 50 steps, toward the runner-up label) finds an
//! adversarial example in `B(x, r)` clipped to [0, 1]; each property asks that the label
//! stays `l0` on that whole box. Per configuration: repair success (sound check per
//! property), time, module parameters, accuracy on the 10,000 test images before and
//! after (the drawdown), and PGD (20 restarts, 100 steps, every target label) against
//! the repaired network inside every repaired box.
//!
//! Generalisation (a second table): `PM_HELDOUT` (default 100) more adversarial
//! examples, of test images not in any repair set, are held out. For each of them the
//! table gives the share classified correctly (as the clean image's label) by the
//! repaired network as shipped (no module acts outside its box, so this is the base
//! network's answer) and with AdvRepair's patch allocation `tau`
//! ([`patchmodules::Allocation`]: same predicted label, top ten by cosine similarity),
//! allocated at the adversarial example itself and, as the paper does, at the clean
//! image and then used on all of `B(x, r)`;
//! then the share for which PGD (10 restarts, 50 steps) against the network with those
//! modules finds no adversarial example in `B(x, r)` either (AdvRepair's defence
//! generalisation, with PGD in place of AutoAttack), and the test accuracy when every
//! test image gets its allocated modules. `tau` is a host-side heuristic: nothing is
//! proven outside the boxes.
//!
//! Modules at a feature layer (`PM_FEATURE_LAYER=K`, default 0 = the input): each module
//! reads the base's K-th ReLU output (mnist_relu_3_100 has a ReLU after each of its three
//! Dense layers, the output one included, so K = 2 is the last hidden layer:
//! 100 -> 8 -> 10 = 898 parameters instead of 784 -> 8 -> 10 = 6,370). The table
//! then adds the patch bytes, and `PM_VERIFY_ONNX=N` (default 3) re-verifies the first N
//! properties with `verify` on the exported ONNX graph (read back by the piecewise
//! importer). The generalisation table is skipped at a feature layer (its module sum
//! reads the input). `PM_NET` picks another network of `mnist/nets` (default
//! mnist_relu_3_100).
//!
//! ```text
//! cargo run --release -p prorepair-host --example patchmodules_mnist -- [R,R..] [N,N..] [TIMEOUT_S]
//! PM_FEATURE_LAYER=2 cargo run -p prorepair-host --example patchmodules_mnist -- 0.05,0.1 50,100
//! ```
//! `PM_INDICATOR=label` (or `label-pair`) runs label-guided modules instead (one module
//! per label, firing on the base's prediction, proven per possible firing pattern):
//! one table with proofs, accuracy drawdown (not zero by construction: a module fires on
//! every clean input of its label), PGD in the repaired boxes against every module
//! variant, and held-out generalisation (the rule itself applies to new inputs).
//! Reads the gzip-compressed IDX files with the system `gzip -dc` (no decompressor in
//! the workspace's dependencies).

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use prorepair_host::repair::patchmodules::{
    self, Allocation, Indicator, LabelKind, ModuleOptions, PatchModules,
};
use prorepair_host::verify::falsify::{self, CandleNet};
use prorepair_host::verify::{Case, Conj};
use prorepair_host::{Network, import, testing};

fn gunzip(path: &std::path::Path) -> Vec<u8> {
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(path)
        .output()
        .expect("gzip -dc");
    assert!(out.status.success(), "gzip -dc {}", path.display());
    out.stdout
}

fn argmax(y: &[f64]) -> usize {
    (0..y.len())
        .max_by(|&a, &b| y[a].total_cmp(&y[b]))
        .unwrap_or(0)
}

/// The robustness case of `x` with label `l0` at radius `r`.
fn case(x: &[f64], l0: usize, r: f64, classes: usize) -> Case {
    let unsafe_set = (0..classes)
        .filter(|&l| l != l0)
        .map(|l| {
            let mut row = vec![0.0; classes];
            row[l0] = 1.0;
            row[l] = -1.0;
            Conj {
                rows: vec![row],
                rhs: vec![0.0],
            }
        })
        .collect();
    Case {
        lower: x.iter().map(|v| (v - r).max(0.0)).collect(),
        upper: x.iter().map(|v| (v + r).min(1.0)).collect(),
        unsafe_set,
    }
}

/// PGD toward `target` within the case box on `net`; a confirmed adversarial input.
#[allow(clippy::too_many_arguments)]
fn attack(
    cnet: &CandleNet,
    net: &Network,
    c: &Case,
    l0: usize,
    targets: &[usize],
    restarts: usize,
    steps: usize,
    seed: u64,
) -> Option<Vec<f64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for &t in targets {
        let conj = c
            .unsafe_set
            .iter()
            .find(|k| k.rows[0][t] == -1.0 && k.rows[0][l0] == 1.0)?;
        let starts: Vec<Vec<f64>> = (0..restarts)
            .map(|_| {
                c.lower
                    .iter()
                    .zip(&c.upper)
                    .map(|(&l, &u)| if u > l { rng.random_range(l..=u) } else { l })
                    .collect()
            })
            .collect();
        let a = falsify::pgd(cnet, net, &c.lower, &c.upper, conj, &starts, steps).ok()?;
        if let Some((x, _)) = a.found {
            return Some(x);
        }
    }
    None
}

/// Untargeted PGD against base + module inside the case box (one batch of `restarts`
/// descending `y_l0 - max_{l != l0} y_l` with signed-gradient steps); returns the final
/// points, which the caller confirms on the host evaluation of the repaired network.
fn pgd_patched(
    base: &CandleNet,
    module: &CandleNet,
    c: &Case,
    l0: usize,
    restarts: usize,
    steps: usize,
    seed: u64,
) -> candle_core::Result<Vec<Vec<f64>>> {
    use candle_core::{Device, Tensor, Var};
    let dev = Device::Cpu;
    let n = c.lower.len();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x: Vec<f64> = (0..restarts)
        .flat_map(|_| {
            c.lower
                .iter()
                .zip(&c.upper)
                .map(|(&l, &u)| if u > l { rng.random_range(l..=u) } else { l })
                .collect::<Vec<_>>()
        })
        .collect();
    let mut mask = vec![0.0; 10];
    mask[l0] = -1e9;
    let mask = Tensor::from_vec(mask, (1, 10), &dev)?;
    let mut pick = vec![0.0; 10];
    pick[l0] = 1.0;
    let pick = Tensor::from_vec(pick, (10, 1), &dev)?;
    for step in 0..steps {
        let xv = Var::from_tensor(&Tensor::from_vec(x.clone(), (restarts, n), &dev)?)?;
        let y = (base.forward(xv.as_tensor())? + module.forward(xv.as_tensor())?)?;
        let other = y.broadcast_add(&mask)?.max_keepdim(1)?;
        let loss = (y.matmul(&pick)? - other)?.sum_all()?;
        let grads = loss.backward()?;
        let Some(g) = grads.get(xv.as_tensor()) else {
            break;
        };
        let g: Vec<f64> = g.flatten_all()?.to_vec1()?;
        let t = step as f64 / steps as f64;
        let frac = 0.1 * (1.0 - t) * (1.0 - t) + 1e-4;
        for (idx, (xi, gi)) in x.iter_mut().zip(&g).enumerate() {
            let d = idx % n;
            let w = c.upper[d] - c.lower[d];
            *xi = (*xi - gi.signum() * frac * w * f64::from(*gi != 0.0))
                .clamp(c.lower[d], c.upper[d]);
        }
    }
    Ok(x.chunks(n).map(<[f64]>::to_vec).collect())
}

/// The sum of two-layer modules (Dense, ReLU, Dense) as one such network: hidden layers
/// stacked, output weights side by side, output biases added. `None` when a module has
/// another depth or nothing is given.
fn sum_of_modules(mods: &[&patchmodules::Module]) -> Option<Network> {
    use prorepair_host::model::Dense;
    let first = mods.first()?;
    let (n_in, n_out) = (first.input_dim(), first.output_dim());
    let (mut w1, mut b1, mut hidden) = (Vec::new(), Vec::new(), 0);
    let mut b2 = vec![0.0; n_out];
    for m in mods {
        let [l1, l2] = m.layers.as_slice() else {
            return None;
        };
        w1.extend_from_slice(&l1.weight);
        b1.extend_from_slice(&l1.bias);
        hidden += l1.out_dim;
        b2.iter_mut().zip(&l2.bias).for_each(|(a, b)| *a += b);
    }
    let mut w2 = vec![0.0; n_out * hidden];
    let mut at = 0;
    for m in mods {
        let l2 = &m.layers[1];
        for o in 0..n_out {
            w2[o * hidden + at..o * hidden + at + l2.in_dim]
                .copy_from_slice(&l2.weight[o * l2.in_dim..(o + 1) * l2.in_dim]);
        }
        at += l2.in_dim;
    }
    Network::new(
        vec![n_in],
        vec![
            prorepair_host::Layer::Dense(Dense::new(n_in, hidden, w1, b1).ok()?),
            prorepair_host::Layer::Relu,
            prorepair_host::Layer::Dense(Dense::new(hidden, n_out, w2, b2).ok()?),
        ],
    )
    .ok()
}

/// Export base + modules as ONNX, read the graph back with the piecewise importer and
/// `verify` the first `count` properties on it; "k/count holds (s)" or the failure.
fn verify_exported(
    net: &Network,
    modules: &patchmodules::PatchModules,
    chosen: &[(usize, Case, Vec<f64>)],
    count: usize,
    timeout: f64,
) -> String {
    use prorepair_host::import::piecewise;
    use prorepair_host::verify::{self, Options, piecewise::verify_piecewise};
    let t = Instant::now();
    let bytes = match prorepair_host::patch::modules::to_onnx(net, modules, None) {
        Ok(b) => b,
        Err(e) => return format!("export: {e}"),
    };
    let path = std::env::temp_dir().join(format!("pm_mnist_{}.onnx", std::process::id()));
    if let Err(e) = std::fs::write(&path, &bytes) {
        return format!("write: {e}");
    }
    let pw = match piecewise::load(&path) {
        Ok(pw) => pw,
        Err(e) => return format!("import: {e}"),
    };
    let _ = std::fs::remove_file(&path);
    let mut holds = 0;
    let n = count.min(chosen.len());
    for (_, c, _) in &chosen[..n] {
        let opts = Options {
            timeout: Duration::from_secs_f64(timeout / 4.0),
            ..Default::default()
        };
        let r = verify_piecewise(&pw, std::slice::from_ref(c), &opts, 64);
        if r.report.verdict == verify::Verdict::Holds {
            holds += 1;
        } else {
            eprintln!("verify on the exported ONNX: {:?}", r.report.verdict);
        }
    }
    format!("{holds}/{n} holds ({:.1} s)", t.elapsed().as_secs_f64())
}

/// One module as a network (Dense, ReLU, ..., Dense), for candle.
fn module_network(module: &patchmodules::Module) -> Network {
    Network::new(
        vec![module.input_dim()],
        module
            .layers
            .iter()
            .enumerate()
            .flat_map(|(i, d)| {
                let mut v = vec![prorepair_host::Layer::Dense(d.clone())];
                if i + 1 < module.layers.len() {
                    v.push(prorepair_host::Layer::Relu);
                }
                v
            })
            .collect(),
    )
    .expect("module network")
}

/// PGD against a label-guided repair inside `c`: the repaired function is `N + P_k` where
/// the base predicts module `k`'s label, so PGD runs against every `N + P_k` (and `N`
/// alone) and each end point is confirmed on the host evaluation of the repaired network.
/// True when some end point is misclassified.
#[allow(clippy::too_many_arguments)]
fn label_pgd_breaks(
    net: &Network,
    cnet: &CandleNet,
    cmods: &[CandleNet],
    modules: &PatchModules,
    c: &Case,
    l0: usize,
    restarts: usize,
    steps: usize,
    seed: u64,
) -> bool {
    let zero = module_network(&patchmodules::Module {
        layers: vec![
            prorepair_host::model::Dense::new(
                c.lower.len(),
                10,
                vec![0.0; 10 * c.lower.len()],
                vec![0.0; 10],
            )
            .expect("zero module"),
        ],
        feature_layer: 0,
    });
    let czero = CandleNet::new(&zero).expect("candle");
    cmods.iter().chain([&czero]).enumerate().any(|(k, cm)| {
        pgd_patched(cnet, cm, c, l0, restarts, steps, seed + 97 * k as u64)
            .expect("pgd")
            .iter()
            .any(|x| argmax(&modules.eval(net, x)) != l0)
    })
}

/// The label-guided configuration: repair, proof count, accuracy drawdown (the modules
/// fire on clean inputs too), PGD in the repaired boxes, and held-out generalisation
/// (the rule fires on new inputs by itself, no allocation needed).
#[allow(clippy::too_many_arguments)]
fn label_run(
    net: &Network,
    cnet: &CandleNet,
    test: &[(Vec<f64>, usize)],
    r: f64,
    chosen: &[(usize, Case, Vec<f64>)],
    held: &[(usize, Case, Vec<f64>)],
    kind: LabelKind,
    hidden: &[usize],
    timeout: f64,
    acc0: f64,
) {
    let named: Vec<(String, Case)> = chosen
        .iter()
        .map(|(i, c, _)| (format!("img{i}"), c.clone()))
        .collect();
    let options = ModuleOptions {
        hidden: hidden.to_vec(),
        auto_learning_rate: true,
        timeout: Duration::from_secs_f64(timeout),
        ..Default::default()
    };
    let rep = match patchmodules::repair_modules_label(net, &named, &options, kind) {
        Ok(rep) => rep,
        Err(e) => {
            println!("| {r} | {} | error: {e} |", chosen.len());
            return;
        }
    };
    let proven = rep.outcomes.iter().filter(|o| o.status == "holds").count();
    let subs: usize = rep.outcomes.iter().map(|o| o.sub_boxes).sum();
    let proven_subs: usize = rep.outcomes.iter().map(|o| o.proven_sub_boxes).sum();
    let t_repair = rep.time_s;
    let acc1 = test
        .iter()
        .filter(|(x, l)| argmax(&rep.modules.eval(net, x)) == *l)
        .count() as f64
        / test.len() as f64;
    let cmods: Vec<CandleNet> = rep
        .modules
        .entries
        .iter()
        .map(|(_, m)| CandleNet::new(&module_network(m)).expect("candle"))
        .collect();
    let broken = chosen
        .iter()
        .enumerate()
        .filter(|(k, (i, c, _))| {
            label_pgd_breaks(
                net,
                cnet,
                &cmods,
                &rep.modules,
                c,
                test[*i].1,
                2,
                50,
                1000 + *k as u64,
            )
        })
        .count();
    let held_ok = held
        .iter()
        .filter(|(i, _, adv)| argmax(&rep.modules.eval(net, adv)) == test[*i].1)
        .count();
    let held_robust = held
        .iter()
        .enumerate()
        .filter(|(k, (i, c, adv))| {
            argmax(&rep.modules.eval(net, adv)) == test[*i].1
                && !label_pgd_breaks(
                    net,
                    cnet,
                    &cmods,
                    &rep.modules,
                    c,
                    test[*i].1,
                    2,
                    50,
                    5000 + *k as u64,
                )
        })
        .count();
    let pct = |k: usize| 100.0 * k as f64 / held.len().max(1) as f64;
    println!(
        "| {r} | {kind:?} | {} | {proven}/{} | {proven_subs}/{subs} | {t_repair:.1} | {} | {} | {:.2}% | {:.2}% | {:.2} | {broken} | {} | {:.1}% | {:.1}% |",
        chosen.len(),
        chosen.len(),
        rep.modules.entries.len(),
        rep.modules.parameter_count(),
        100.0 * acc0,
        100.0 * acc1,
        100.0 * (acc0 - acc1),
        held.len(),
        pct(held_ok),
        pct(held_robust),
    );
    let _ = std::io::stdout().flush();
}

fn main() {
    // SAFETY: first thing in main, no other thread exists yet (candle would otherwise
    // re-read /proc/cpuinfo on every matrix product).
    unsafe { prorepair_host::verify::cache_thread_count(None) };
    let args: Vec<String> = std::env::args().collect();
    let radii: Vec<f64> = args
        .get(1)
        .map(|s| s.split(',').filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_else(|| vec![0.05, 0.1]);
    let counts: Vec<usize> = args
        .get(2)
        .map(|s| s.split(',').filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_else(|| vec![50, 100, 200]);
    let timeout: f64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(600.0);
    let hidden: Vec<usize> = std::env::var("PM_HIDDEN")
        .ok()
        .map(|s| s.split(',').filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_else(|| vec![8]);
    let feature_layer: usize = std::env::var("PM_FEATURE_LAYER")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let verify_onnx: usize = std::env::var("PM_VERIFY_ONNX")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let net_name = std::env::var("PM_NET").unwrap_or_else(|_| "mnist_relu_3_100".into());
    // PM_INDICATOR=label|label-pair: label-guided modules instead of boxes.
    let label_kind = match std::env::var("PM_INDICATOR").as_deref() {
        Ok("label") => Some(LabelKind::Label),
        Ok("label-pair") => Some(LabelKind::LabelPair),
        _ => None,
    };
    let Some(data) = testing::data_dir() else {
        eprintln!("SKIP: ../shared/data is absent");
        return;
    };
    let onnx_path = data.join(format!("mnist/nets/{net_name}.onnx"));
    let net = import::load(&onnx_path).expect("import");
    // The base's layers up to the feature layer: PGD runs on them plus the module.
    let prefix: Vec<prorepair_host::Layer> =
        match patchmodules::feature_layer_index(&net, feature_layer) {
            Some(at) => net.layers[..=at].to_vec(),
            None => Vec::new(),
        };
    let images = gunzip(&data.join("mnist/t10k-images-idx3-ubyte.gz"));
    let labels = gunzip(&data.join("mnist/t10k-labels-idx1-ubyte.gz"));
    let n_img = u32::from_be_bytes(images[4..8].try_into().unwrap()) as usize;
    let test: Vec<(Vec<f64>, usize)> = (0..n_img)
        .map(|i| {
            let px = &images[16 + 784 * i..16 + 784 * (i + 1)];
            (
                px.iter().map(|&p| f64::from(p) / 255.0).collect(),
                usize::from(labels[8 + i]),
            )
        })
        .collect();
    let accuracy = |f: &dyn Fn(&[f64]) -> Vec<f64>| -> f64 {
        test.iter().filter(|(x, l)| argmax(&f(x)) == *l).count() as f64 / test.len() as f64
    };
    let acc0 = accuracy(&|x| net.forward(x));
    println!(
        "{net_name}: test accuracy {:.2}% on {} images; module hidden {hidden:?}, feature layer {feature_layer}",
        100.0 * acc0,
        test.len()
    );
    let heldout: usize = std::env::var("PM_HELDOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if feature_layer == 0 { 100 } else { 0 });
    let mut generalisation: Vec<String> = Vec::new();
    let cnet = CandleNet::new(&net).expect("candle net");
    if label_kind.is_some() {
        println!(
            "| r | indicator | properties | proven | sub-boxes proven | time (s) | modules | module params | accuracy before | after | drawdown | boxes where PGD (2 restarts x 50 steps per module) breaks the repair | held-out adversarial x' | repaired correct at x' | and PGD finds nothing in B(x, r) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    } else {
        println!(
            "| r | properties | repaired (proven) | time (s) | sub-boxes | module params | patch bytes | accuracy before | after | drawdown | PGD (20 restarts) adversarial in repaired boxes | verify on the exported ONNX |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    }
    for &r in &radii {
        // Adversarial examples, in test-set order, as many as the largest count needs.
        let max_count = counts.iter().copied().max().unwrap_or(0);
        let need = max_count + heldout;
        let t0 = Instant::now();
        // (image index, case, the adversarial example PGD found)
        let mut props: Vec<(usize, Case, Vec<f64>)> = Vec::new();
        for (i, (x, l0)) in test.iter().enumerate() {
            if props.len() >= need {
                break;
            }
            let y = net.forward(x);
            if argmax(&y) != *l0 {
                continue;
            }
            let mut order: Vec<usize> = (0..10).filter(|&l| l != *l0).collect();
            order.sort_by(|&a, &b| y[b].total_cmp(&y[a]));
            let c = case(x, *l0, r, 10);
            if let Some(adv) = attack(&cnet, &net, &c, *l0, &order[..1], 10, 50, i as u64) {
                props.push((i, c, adv));
            }
        }
        eprintln!(
            "r = {r}: {} adversarial examples found in {:.1} s",
            props.len(),
            t0.elapsed().as_secs_f64()
        );
        // Held out: never repaired, whatever the count.
        let held = &props[max_count.min(props.len())..];
        for &n in &counts {
            let chosen = &props[..n.min(props.len())];
            if let Some(kind) = label_kind {
                label_run(
                    &net, &cnet, &test, r, chosen, held, kind, &hidden, timeout, acc0,
                );
                continue;
            }
            let named: Vec<(String, Case)> = chosen
                .iter()
                .map(|(i, c, _)| (format!("img{i}"), c.clone()))
                .collect();
            let options = ModuleOptions {
                hidden: hidden.clone(),
                auto_learning_rate: true,
                timeout: Duration::from_secs_f64(timeout),
                feature_layer,
                ..Default::default()
            };
            let rep = match patchmodules::repair_modules(&net, &named, &options) {
                Ok(rep) => rep,
                Err(e) => {
                    println!("| {r} | {n} | error: {e} | | | | | | | | | |");
                    continue;
                }
            };
            let proven = rep.outcomes.iter().filter(|o| o.status == "holds").count();
            let subs: usize = rep.outcomes.iter().map(|o| o.sub_boxes).sum();
            eprintln!(
                "r = {r}, {n} properties: repair {:.1} s, {proven} proven",
                rep.time_s
            );
            let acc1 = accuracy(&|x| rep.modules.eval(&net, x));
            // PGD against the repaired network inside every repaired box (its in-box
            // network is the combined one); confirmed on the host evaluation.
            let mut broken = 0;
            for (k, ((idx, c, _), (ind, module))) in
                chosen.iter().zip(&rep.modules.entries).enumerate()
            {
                if !matches!(ind, Indicator::Box(_)) {
                    continue;
                }
                // The module as a network on the input (after the base's prefix up to its
                // feature layer, if any).
                let mnet = Network::new(
                    vec![784],
                    prefix
                        .iter()
                        .cloned()
                        .chain(module.layers.iter().enumerate().flat_map(|(i, d)| {
                            let mut v = vec![prorepair_host::Layer::Dense(d.clone())];
                            if i + 1 < module.layers.len() {
                                v.push(prorepair_host::Layer::Relu);
                            }
                            v
                        }))
                        .collect(),
                )
                .expect("module network");
                let cmod = CandleNet::new(&mnet).expect("candle");
                let l0 = argmax(&net.forward(&test[*idx].0));
                let points =
                    pgd_patched(&cnet, &cmod, c, l0, 20, 100, 1000 + k as u64).expect("pgd");
                if points
                    .iter()
                    .any(|x| argmax(&rep.modules.eval(&net, x)) != l0)
                {
                    broken += 1;
                }
            }
            // The shipped patch (with the proven sub-boxes as its regions) and `verify` on
            // the exported ONNX graph for the first properties.
            let regions: Vec<(Vec<f64>, Vec<f64>)> = rep
                .outcomes
                .iter()
                .flat_map(|o| o.partition.iter().cloned())
                .collect();
            let patch_bytes = prorepair_host::patch::modules::emit(&net, &rep.modules, 1, &regions)
                .map_or_else(|e| format!("error: {e}"), |p| p.bytes.len().to_string());
            let verified = if rep.all_hold() && verify_onnx > 0 {
                verify_exported(&net, &rep.modules, chosen, verify_onnx, timeout)
            } else {
                "-".to_string()
            };
            println!(
                "| {r} | {} | {}/{} | {:.1} | {} | {} | {patch_bytes} | {:.2}% | {:.2}% | {:.2} | {} | {verified} |",
                chosen.len(),
                proven,
                chosen.len(),
                rep.time_s,
                subs,
                rep.modules.parameter_count(),
                100.0 * acc0,
                100.0 * acc1,
                100.0 * (acc0 - acc1),
                broken
            );
            let _ = std::io::stdout().flush();
            if feature_layer > 0 || held.is_empty() {
                continue;
            }
            // Generalisation with and without the allocation tau (anchors: the clean
            // images the modules were trained around).
            let anchors: Vec<Vec<f64>> =
                chosen.iter().map(|(i, _, _)| test[*i].0.clone()).collect();
            let alloc = Allocation::new(&net, &anchors);
            let (mut plain_ok, mut tau_ok, mut tau_robust) = (0usize, 0usize, 0usize);
            // tau allocated at the adversarial input itself (no knowledge of x).
            let mut tau_self_ok = 0usize;
            for (k, (i, c, adv)) in held.iter().enumerate() {
                let (x, l) = &test[*i];
                plain_ok += usize::from(argmax(&rep.modules.eval(&net, adv)) == *l);
                let fixed = argmax(&alloc.eval(&rep.modules, &net, adv, Some(x))) == *l;
                tau_ok += usize::from(fixed);
                tau_self_ok +=
                    usize::from(argmax(&alloc.eval(&rep.modules, &net, adv, None)) == *l);
                // PGD (10 restarts, 50 steps) against N + the modules allocated at x, in
                // B(x, r); confirmed on the host evaluation with tau.
                let mods: Vec<&patchmodules::Module> = alloc
                    .modules_for(&net, x)
                    .into_iter()
                    .map(|j| &rep.modules.entries[j].1)
                    .collect();
                let robust = fixed
                    && sum_of_modules(&mods).is_some_and(|sum| {
                        let cmod = CandleNet::new(&sum).expect("candle");
                        pgd_patched(&cnet, &cmod, c, *l, 10, 50, 5000 + k as u64)
                            .expect("pgd")
                            .iter()
                            .all(|p| argmax(&alloc.eval(&rep.modules, &net, p, Some(x))) == *l)
                    });
                tau_robust += usize::from(robust);
            }
            let acc_tau = accuracy(&|x| alloc.eval(&rep.modules, &net, x, None));
            let pct = |k: usize| 100.0 * k as f64 / held.len().max(1) as f64;
            generalisation.push(format!(
                "| {r} | {} | {} | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {:.2}% | {:.2}% |",
                chosen.len(),
                held.len(),
                pct(plain_ok),
                pct(tau_self_ok),
                pct(tau_ok),
                pct(tau_robust),
                100.0 * acc1,
                100.0 * acc_tau
            ));
        }
    }
    if label_kind.is_some() {
        return;
    }
    println!();
    println!("Generalisation to held-out adversarial examples (host-side; tau is not proven):");
    println!(
        "| r | properties | held-out adversarial examples x' | correct without tau | with tau allocated at x' | with tau allocated at the clean x | with tau at x, PGD finds nothing in B(x, r) | test accuracy without tau | with tau |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in &generalisation {
        println!("{row}");
    }
}
