//! Environment overrides of [`LocalBoxOptions`] for tuning runs of the MNIST examples
//! (`PR_BOX_BUDGET`, `PR_BOX_LR`, `PR_BOX_STEPS`, `PR_BOX_BOUND_WEIGHT`, `PR_BOX_TARGET`,
//! `PR_BOX_FIDELITY_WEIGHT`, `PR_BOX_MARGIN`, `PR_BOX_LAYERS`, `PR_BOX_OUTPUT_WEIGHT`,
//! `PR_BOX_DECISION_WEIGHT`, `PR_BOX_SPLIT`, `PR_BOX_ROUNDS`), and the fidelity-image step
//! (`PR_FIDELITY_STEP`), shared by `repair_mnist` and `repair_mnistfc`.

use prorepair_host::repair::regionwise::LocalBoxOptions;

/// `o` with every `PR_BOX_*` variable that is set and parses applied.
pub fn tuned_box(mut o: LocalBoxOptions) -> LocalBoxOptions {
    let get = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
    if let Some(v) = get("PR_BOX_BUDGET") {
        o.parameter_budget = v as usize;
    }
    if let Some(v) = get("PR_BOX_LR") {
        o.learning_rate = v;
    }
    if let Some(v) = get("PR_BOX_STEPS") {
        o.repair_steps = v as usize;
    }
    if let Some(v) = get("PR_BOX_BOUND_WEIGHT") {
        o.bound_weight = v;
    }
    if let Some(v) = get("PR_BOX_TARGET") {
        o.bound_target = v;
    }
    if let Some(v) = get("PR_BOX_FIDELITY_WEIGHT") {
        o.fidelity_weight = v;
    }
    if let Some(v) = get("PR_BOX_MARGIN") {
        o.anchor_margin = v;
    }
    if let Some(v) = get("PR_BOX_LAYERS") {
        o.trainable_layers = v as usize;
    }
    if let Some(v) = get("PR_BOX_OUTPUT_WEIGHT") {
        o.output_weight = v;
    }
    if let Some(v) = get("PR_BOX_DECISION_WEIGHT") {
        o.decision_weight = v;
    }
    if let Some(v) = get("PR_BOX_SPLIT") {
        o.split_layer = prorepair_host::repair::SplitLayer::Layer(v as usize);
    }
    if let Some(v) = get("PR_BOX_ROUNDS") {
        o.rounds = v as usize;
    }
    o
}

/// `PR_FIDELITY_STEP`: every k-th mnist_5k image is a fidelity input (default 10).
pub fn fidelity_step() -> usize {
    std::env::var("PR_FIDELITY_STEP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}
