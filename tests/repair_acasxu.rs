//! ProRepair region-wise repair of ACAS Xu property 2 on real networks: the repaired
//! network is proven by the same sound checker as `verify`, the counterexample found
//! before the repair is fixed, and the advisories outside the repaired box are kept.

use std::time::Duration;

use prorepair_host::bounds::BoxBounds;
use prorepair_host::repair::{self, RepairOptions, RepairProperty};
use prorepair_host::spec::Property;
use prorepair_host::verify::{self, Verdict};
use prorepair_host::{import, require_data, testing};

/// The whole ACAS Xu input domain in normalised units (`.nnet` mins/maxs, means, ranges).
fn acasxu_domain() -> BoxBounds {
    let (min, max) = (
        [
            0.0,
            -std::f64::consts::PI,
            -std::f64::consts::PI,
            100.0,
            0.0,
        ],
        [
            60760.0,
            std::f64::consts::PI,
            std::f64::consts::PI,
            1200.0,
            1200.0,
        ],
    );
    let mean = [19791.091, 0.0, 0.0, 650.0, 600.0];
    let range = [
        60261.0,
        2.0 * std::f64::consts::PI,
        2.0 * std::f64::consts::PI,
        1100.0,
        1200.0,
    ];
    BoxBounds::new(
        (0..5).map(|i| (min[i] - mean[i]) / range[i]).collect(),
        (0..5).map(|i| (max[i] - mean[i]) / range[i]).collect(),
    )
}

/// The options of the tests: the defaults, a cap for a loaded machine (unloaded a repair
/// takes a few seconds: BENCHMARKS.md), the whole ACAS Xu domain for fidelity.
fn options(complete_check: bool) -> RepairOptions {
    RepairOptions {
        timeout: Duration::from_secs(90),
        fidelity_domain: Some(acasxu_domain()),
        fidelity_eval_samples: 2000,
        complete_check,
        // The region-wise loop was tuned with 256 fidelity samples (with 1024, N2,1 runs
        // past its sub-property budget: BENCHMARKS.md, Repair).
        fidelity_train_samples: if complete_check { 1024 } else { 256 },
        ..RepairOptions::default()
    }
}

/// The benchmark harness's ACAS Xu setting (`acasxu_options` in
/// `host-tools/examples/repair_acasxu.rs`): `f_c` = the output layer alone, fidelity
/// weight 100 in the margin-driven phase, the target margin doubling, 512 first anchors
/// and 256 a round, and a 2 s first `verify`.
fn output_layer_split() -> RepairOptions {
    RepairOptions {
        split_layer: repair::SplitLayer::Layer(12),
        global_fidelity_weight: 100.0,
        global_margin_growth: 2.0,
        initial_anchors: 512,
        global_anchors_per_round: 256,
        complete_budget: Duration::from_secs(2),
        ..options(true)
    }
}

fn repair_prop2(a: u32, b: u32, complete_check: bool) {
    repair_prop2_with(a, b, options(complete_check), 0.98);
}

fn repair_prop2_with(a: u32, b: u32, options: RepairOptions, floor: f64) {
    let complete_check = options.complete_check;
    let model = require_data!(&testing::acasxu_onnx(a, b));
    let spec = require_data!("acasxu/vnnlib/prop_2.vnnlib");
    let net = import::load(&model).expect("network imports");
    let property = Property::from_vnnlib(&spec).expect("prop_2 parses");
    let rp = RepairProperty::from_spec("prop_2", &property, &net).expect("prop_2 fits the network");
    let out = repair::repair(&net, std::slice::from_ref(&rp), &options).expect("repair runs");
    eprintln!(
        "N{a},{b}: verified {} in {:.2} s, {} rounds, {} sub-properties, {} changed parameters, fidelity {:.4}",
        out.verified,
        out.time_s,
        out.rounds,
        out.subproperties,
        out.changed_parameters,
        out.fidelity.argmin_agreement
    );
    assert!(out.verified, "N{a},{b} not repaired: {:?}", out.properties);
    assert_eq!(out.properties[0].after, "holds");
    // The time of the first proof is reported, within the run.
    let proven_at = out
        .proven_at_s
        .expect("a verified repair reports its proof time");
    assert!(
        (0.0..=out.time_s).contains(&proven_at),
        "{proven_at} of {}",
        out.time_s
    );

    // The partition covers the property's box exactly: every sub-box inside it, volumes
    // summing to the box's (bisections only, so no overlap beyond shared faces). With the
    // default margin-driven phase it is the case box itself, proven by branch and bound.
    let case = &rp.cases[0];
    let volume = |l: &[f64], u: &[f64]| l.iter().zip(u).map(|(l, u)| u - l).product::<f64>();
    let mut covered = 0.0;
    for r in &out.partition {
        assert_eq!((r.property, r.case), (0, 0));
        for i in 0..5 {
            assert!(
                case.lower[i] <= r.lower[i]
                    && r.lower[i] < r.upper[i]
                    && r.upper[i] <= case.upper[i]
            );
        }
        covered += volume(&r.lower, &r.upper);
    }
    let full = volume(&case.lower, &case.upper);
    assert!(
        (covered - full).abs() <= 1e-9 * full,
        "covered {covered} of {full}"
    );

    // Region-wise mode: every sub-box passes verify's leaf test on the repaired network.
    if !complete_check {
        assert_eq!(out.partition.len(), out.subproperties);
        assert!(
            out.partition
                .iter()
                .all(|r| prorepair_host::verify::leaf_holds(
                    &out.network,
                    case,
                    &r.lower,
                    &r.upper
                )),
            "N{a},{b}: a sub-box fails the leaf test"
        );
    }

    // `verify` itself, run here from scratch on the repaired network, proves the whole
    // property (the claim the repair made must be reproducible by the public checker).
    let opts = verify::Options {
        timeout: Duration::from_secs(60),
        ..verify::Options::default()
    };
    let report = verify::verify(&out.network, &property, &opts).expect("verify runs");
    assert_eq!(
        report.verdict,
        Verdict::Holds,
        "N{a},{b}: verify does not prove the repaired network"
    );

    // The counterexample found before the repair is real on the original and fixed after.
    let cex = out.properties[0]
        .counterexample_before
        .clone()
        .expect("prop_2 is violated before repair");
    assert!(
        property.is_counterexample(&cex, &net.forward(&cex)),
        "before: not a counterexample"
    );
    assert!(
        !property.is_counterexample(&cex, &out.network.forward(&cex)),
        "after: still a counterexample"
    );

    // Small change, within the budget (2% of the parameters: a sparse patch under 5% of
    // the model blob).
    assert!(out.changed_parameters > 0 && out.changed_parameters <= out.parameter_budget);
    assert!(out.parameter_budget * 50 <= net.parameter_count());

    // Fidelity on 2,000 fresh seeded inputs of the whole domain outside the box, at least
    // `floor` (the caller's: what is reached with its options, BENCHMARKS.md, Repair).
    let cases: Vec<_> = rp.cases.iter().collect();
    let points = repair::sample_outside(&acasxu_domain(), &cases, 2000, 2024);
    assert_eq!(points.len(), 2000);
    let fid = repair::measure_fidelity(&net, &out.network, &points);
    assert!(
        fid.argmin_agreement >= floor,
        "N{a},{b}: advisory agreement {}",
        fid.argmin_agreement
    );
}

#[test]
fn repairs_n2_1_property_2() {
    repair_prop2(2, 1, true);
}

/// The region-wise loop alone (Algorithm 2, proof by the leaf test on its partition).
#[test]
fn repairs_n2_1_property_2_region_wise() {
    repair_prop2(2, 1, false);
}

/// N4,5 was not repaired within 20 s with the paper's split (the trained margin ~0.02 is
/// more than `verify` can prove quickly there); with `f_c` = the output layer it is, and
/// the polish step keeps the advisories outside the box (measured 99.1% on 10,000
/// inputs; BENCHMARKS.md, Repair, session 6).
#[test]
fn repairs_n4_5_property_2_with_the_output_layer_split() {
    repair_prop2_with(4, 5, output_layer_split(), 0.985);
}

#[test]
#[ignore = "slow: N3,5 prop_2 with the output-layer split took 16.8 s under load in the session-6 run (BENCHMARKS.md, Repair); with the paper's split it is often not proven in 20 s; run with --ignored"]
fn repairs_n3_5_property_2() {
    repair_prop2_with(3, 5, output_layer_split(), 0.98);
}

/// N3,7 was never proven in session 7 (`verify` "unknown" in 4-6 s pieces while the
/// target doubled past the score plateau of ~0.039); with the target stopped at 0.9x the
/// original's median score and one uninterrupted `verify` there, it was proven in 18 s of
/// a 20 s budget (BENCHMARKS.md, Repair, session 8).
#[test]
#[ignore = "slow: the proof of N3,7 prop_2 takes 10-20 s of branch and bound on 2 cores (BENCHMARKS.md, Repair, session 8), and the test re-verifies it from scratch; run with --ignored"]
fn repairs_n3_7_property_2_with_the_output_layer_split() {
    repair_prop2_with(3, 7, output_layer_split(), 0.985);
}
